"""
The bag tools under real signals (issue 28, item 4), as real processes on real files.

SIGTERM does what SIGINT does: the partial output bag is removed, a node the
tool started is stopped, exit code 143 (SIGINT: 130). A bag left by SIGKILL
(as by a power cut) is called unfinished and ``--overwrite`` replaces it; the
new bag opens in rosbags' Reader and, where it is installed, Foxglove's
``mcap`` reader. To signal a tool while it writes, the test waits until the
bag file has grown, freezes the process (SIGSTOP), sends the signal and lets
it go on (SIGCONT), so the signal lands mid-write however fast the machine is.
"""

import os
from pathlib import Path
import signal
import subprocess
import sys
import time
from typing import List

from bag_helpers import HEIGHT, make_camvid, quick_cpu, subprocess_env, WIDTH
from enet_ros.evaluation import bag_io
from enet_ros.evaluation.dataset_to_bag import main as dataset_to_bag
from enet_ros.evaluation.evaluate_bag import main as evaluate_main
from enet_ros.evaluation.node_subprocess import READY_LINE
import pytest
from rosbags.rosbag2 import Reader

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures(quick_cpu.__name__)]
#: Frames of the datasets the tools are stopped in (64x48, about 12 kB a frame with labels).
FRAMES = 1500
#: Bytes a bag file has before the signal: well past the first MCAP chunk (1 MiB).
GROWN = 2 << 20


@pytest.fixture(scope='module')
def long_split(tmp_path_factory) -> Path:
    """Write a CamVid-layout split of FRAMES frames: links to two generated frames, labels."""
    root = tmp_path_factory.mktemp('long')
    source = root / 'source'
    frames = make_camvid(source, 2)
    names = sorted(frames)
    for folder in ('val', 'valannot'):
        (root / folder).mkdir()
        for index in range(FRAMES):
            (root / folder / f'0016E5_{index:05d}.png').symlink_to(
                source / folder / f'{names[index % 2]}.png')
    return root


@pytest.fixture(scope='module')
def long_bag(long_split) -> Path:
    """Write the long split as an MCAP bag."""
    bag = long_split / 'bag'
    assert dataset_to_bag([str(long_split), str(bag), '--storage', 'mcap',
                           '--no-progress']) == 0
    return bag


def tool(module: str, *args: object, env=None) -> subprocess.Popen:
    """Start a bag tool as its own process, output captured."""
    return subprocess.Popen([sys.executable, '-m', f'enet_ros.evaluation.{module}',
                             *map(str, args)], env=subprocess_env(env or dict(os.environ)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def bag_file_size(bag: Path) -> int:
    """Bytes in the bag folder's storage files (0 before the writer opened it)."""
    if not bag.is_dir():
        return 0
    return sum(p.stat().st_size for p in bag.iterdir() if p.name.endswith(('.mcap', '.db3')))


def signal_while_writing(process: subprocess.Popen, bag: Path, sig: int,
                         timeout: float = 240.0, more: int = 0):
    """
    Send ``sig`` once ``bag`` has grown to GROWN bytes, the writer frozen meanwhile.

    ``more``: send it that many times again, 2 ms apart, after the process goes on.
    """
    deadline = time.monotonic() + timeout
    while bag_file_size(bag) < GROWN:
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f'the tool ended (code {process.returncode}) before its bag grew:\n'
                        f'{out}\n{err}')
        assert time.monotonic() < deadline, 'the bag did not grow'
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGSTOP)
    try:
        assert not (bag / 'metadata.yaml').exists(), 'the bag was finished already'
        os.kill(process.pid, sig)
    finally:
        os.kill(process.pid, signal.SIGCONT)
    for _ in range(more):
        time.sleep(0.002)
        if process.poll() is None:
            os.kill(process.pid, sig)
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


@pytest.mark.parametrize('storage, sig, code, more', [('mcap', signal.SIGTERM, 143, 0),
                                                      ('sqlite3', signal.SIGTERM, 143, 0),
                                                      ('mcap', signal.SIGINT, 130, 0),
                                                      ('mcap', signal.SIGTERM, 143, 20)])
def test_dataset_to_bag_stopped_removes_its_partial_bag(tmp_path, long_split, storage, sig,
                                                        code, more):
    """SIGTERM as SIGINT: partial bag removed, one line, 128 + signal (also after a burst)."""
    out = tmp_path / 'bag'
    process = tool('dataset_to_bag', long_split, out, '--storage', storage, '--no-progress')
    returncode, _, err = signal_while_writing(process, out, sig, more=more)
    assert returncode == code, err
    assert err.strip() == (f'dataset_to_bag: stopped by {signal.Signals(sig).name}: the work '
                           'was not finished, no results were written and a partial output bag '
                           'was removed')
    assert not out.exists()


@pytest.mark.parametrize('storage, sig, code', [('mcap', signal.SIGTERM, 143),
                                                ('sqlite3', signal.SIGTERM, 143),
                                                ('sqlite3', signal.SIGINT, 130)])
def test_evaluate_bag_stopped_removes_its_partial_output_bag(tmp_path, long_bag, model_file,
                                                             storage, sig, code):
    """evaluate_bag stopped mid-run: no table, no JSON, no output bag; the input untouched."""
    out = tmp_path / 'out'
    process = tool('evaluate_bag', long_bag, '--model', model_file, '--output-bag', out,
                   '--output-storage', storage, '--json', tmp_path / 'eval.json',
                   '--no-progress')
    returncode, stdout, err = signal_while_writing(process, out, sig)
    assert returncode == code, err
    assert f'evaluate_bag: stopped by {signal.Signals(sig).name}' in err
    assert 'Traceback' not in err and stdout == ''
    assert not out.exists() and not (tmp_path / 'eval.json').exists()
    with bag_io.open_bag(long_bag) as reader:  # the input is untouched
        assert bag_io.bag_topics(reader)['/camera/image_raw'].count == FRAMES


def count_with_mcap_reader(bag: Path) -> int:
    """Messages in the bag's MCAP file as Foxglove's reader decodes them (requirements-dev)."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    count = 0
    with open(next(bag.glob('*.mcap')), 'rb') as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        for _, _, _, msg in reader.iter_decoded_messages():
            assert (msg.width, msg.height) == (WIDTH, HEIGHT)
            count += 1
    return count


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_bag_left_by_sigkill_is_unfinished_and_replaceable(tmp_path, capsys, long_split,
                                                           model_file, storage):
    """A writer killed outright (as by a power cut) leaves a bag the tools name and replace."""
    left = tmp_path / 'bag'
    process = tool('dataset_to_bag', long_split, left, '--storage', storage, '--no-progress')
    returncode, _, _ = signal_while_writing(process, left, signal.SIGKILL)
    assert returncode == -signal.SIGKILL
    files = sorted(p for p in left.iterdir() if p.suffix in ('.mcap', '.db3'))
    assert files and not (left / 'metadata.yaml').exists()
    copy = tmp_path / 'copy'
    copy.mkdir()
    for path in files:
        (copy / path.name).write_bytes(path.read_bytes())

    assert evaluate_main([str(left), '--model', str(model_file), '--no-progress']) == 1
    err = capsys.readouterr().err
    assert f"bag '{left}' is unfinished: it holds {files[0].name}" in err
    assert 'no metadata.yaml' in err and '--overwrite replaces it' in err

    assert dataset_to_bag([str(long_split), str(left), '--limit', '20', '--storage', storage,
                           '--no-progress']) == 2
    assert 'exists already (use --overwrite' in capsys.readouterr().err
    assert dataset_to_bag([str(long_split), str(left), '--limit', '20', '--storage', storage,
                           '--overwrite', '--no-progress']) == 0
    with Reader(left) as reader:
        assert reader.topics['/camera/image_raw'].msgcount == 20
        assert sum(1 for _ in reader.messages()) == 40
    if storage == 'mcap':
        assert count_with_mcap_reader(left) == 40

    # evaluate_bag --output-bag replaces an unfinished bag too, and only with --overwrite.
    args = [str(left), '--model', str(model_file), '--output-bag', str(copy), '--no-progress']
    assert evaluate_main(args) == 2
    assert evaluate_main(args + ['--overwrite']) == 0
    with Reader(copy) as reader:
        assert reader.topics['/segmentation_node/labels'].msgcount == 20


def child_pids(pid: int) -> List[int]:
    """Return the PIDs of the live processes whose parent is ``pid``."""
    children = []
    for entry in Path('/proc').iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / 'stat').read_text()
            except OSError:
                continue
            if int(stat.rsplit(')', 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return children


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        stat = Path(f'/proc/{pid}/stat').read_text()
    except OSError:
        return False
    return stat.rsplit(')', 1)[1].split()[0] != 'Z'


def _live_evaluate_with_its_node(tmp_path, ros_env, model_file):
    """
    Start live_evaluate on a slow replay (a frame every 20 s) and wait for its node.

    Return the tool's process, the node's process ids, the recording's and the node log's
    paths; the recording has started.
    """
    root = tmp_path / 'camvid'
    make_camvid(root, 6)
    bag, record, node_log = root / 'bag', tmp_path / 'record', tmp_path / 'node.log'
    assert dataset_to_bag([str(root), str(bag), '--storage', 'mcap', '--no-progress']) == 0
    process = tool('live_evaluate', bag, '--model', model_file, '-p', 'device:=cpu', '--rate',
                   '0.05', '--record-bag', record, '--node-log', node_log, '--no-progress',
                   env=ros_env)
    deadline = time.monotonic() + 150
    while not (node_log.is_file() and READY_LINE in node_log.read_text(errors='replace')):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, 'the node did not come up'
        time.sleep(0.1)
    children = child_pids(process.pid)
    assert children, 'live_evaluate started no node process'
    assert bag_file_size(record) > 0 or record.is_dir()
    return process, children, record, node_log


def _wait_gone(pids: List[int], timeout: float) -> bool:
    """Wait up to ``timeout`` s for every process in ``pids`` to end; return whether they did."""
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(alive(pid) for pid in pids)


def _kill_left(process: subprocess.Popen, children: List[int]) -> None:
    for pid in children + [process.pid]:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    if process.poll() is None:
        process.wait(10)


def test_live_evaluate_sigterm_stops_the_node_and_removes_the_recording(tmp_path, ros_env,
                                                                        model_file):
    """SIGTERM to live_evaluate: its node stopped (no orphan), no recording left, exit 143."""
    process, children, record, _ = _live_evaluate_with_its_node(tmp_path, ros_env, model_file)
    try:
        time.sleep(2.0)  # the playback is under way
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=90)
        assert _wait_gone(children, 10), 'the node outlived live_evaluate'
        assert process.returncode == 143, err
        assert 'live_evaluate: stopped by SIGTERM' in err and 'Traceback' not in err
        assert not record.exists()
    finally:
        _kill_left(process, children)


def test_live_evaluate_sigkill_still_stops_its_node(tmp_path, ros_env, model_file):
    """
    SIGKILL to live_evaluate (no chance to clean up): its node stops by itself, cleanly.

    The kernel sends the node SIGTERM when the process that started it dies
    (``ENET_ROS_STOP_WITH_PARENT``, set by NodeProcess); before, it kept running, orphaned.
    """
    process, children, _, node_log = _live_evaluate_with_its_node(tmp_path, ros_env,
                                                                  model_file)
    try:
        process.kill()
        process.wait(10)
        assert _wait_gone(children, 30), (
            f'the node outlived live_evaluate:\n{node_log.read_text()}')
        log = node_log.read_text(errors='replace')
        assert 'stopped cleanly' in log and 'Traceback' not in log, log
    finally:
        _kill_left(process, children)
