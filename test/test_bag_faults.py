"""
Faults around the bag tools (issue 28): lying metadata, corrupt chunks, bad arguments, output.

Real files throughout: bags written by the tools, corrupted or edited on disk,
and tool processes whose files cannot be written (RLIMIT_FSIZE in the child:
the kernel refuses a write past the limit with EFBIG, as it refuses one on a
full disk with ENOSPC). Signals are in test_bag_signals.py.
"""

import json
import os
from pathlib import Path
import re
import resource
import subprocess
import sys

from bag_helpers import (EchoSegmenterDouble, expected_stamps, make_camvid, quick_cpu,
                         subprocess_env)
from enet_ros.evaluation import bag_io
from enet_ros.evaluation.dataset_to_bag import main as dataset_to_bag
from enet_ros.evaluation.evaluate_bag import evaluate_bag, EvaluateOptions, main as evaluate_main
from enet_ros.evaluation.live_evaluate import main as live_main
import pytest
from rosbags.rosbag2 import Reader

pytestmark = pytest.mark.usefixtures(quick_cpu.__name__)


def tool_command(module: str, *args: object) -> list:
    """Command line running a bag tool's module with this interpreter."""
    return [sys.executable, '-m', f'enet_ros.evaluation.{module}', *map(str, args)]


def run_limited(command: list, max_file_bytes: int, timeout: float = 240.0):
    """Run ``command`` with files limited to ``max_file_bytes`` (writes past it: EFBIG)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    return subprocess.run(command, env=subprocess_env(dict(os.environ)), capture_output=True,
                          text=True, timeout=timeout, preexec_fn=limit)


# ------------------------------------------------------------------ 6: metadata that lies

@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_metadata_count_that_lies_does_not_truncate(tmp_path, capsys, storage):
    """metadata.yaml saying 5 of 12 frames: all 12 are evaluated, and a warning says why."""
    root = tmp_path / 'camvid'
    frames = make_camvid(root, 12)
    bag = root / 'bag'
    assert dataset_to_bag([str(root), str(bag), '--storage', storage, '--no-progress']) == 0
    metadata = bag / 'metadata.yaml'
    text = metadata.read_text()
    assert text.count('message_count: 12') == 2  # each topic
    metadata.write_text(text.replace('message_count: 12', 'message_count: 5'))

    report = evaluate_bag(EvaluateOptions(bag=bag, progress=False), EchoSegmenterDouble(frames))
    assert report['frames']['read'] == 12
    assert report['frames']['evaluated'] == 12
    assert report['accuracy']['mean_iou'] == 1.0
    assert any('metadata.yaml says 5 messages on /camera/image_raw' in w and 'holds 12' in w
               for w in report['warnings'])
    captured = capsys.readouterr()
    assert 'evaluate_bag: warning: metadata.yaml says 5 messages on /camera/image_raw' \
        in captured.err
    with bag_io.open_bag(bag) as reader:
        assert bag_io.bag_topics(reader)['/camera/image_raw'].count == 12


# ------------------------------------------------------------------ 7: a corrupt chunk

def write_chunked_bag(path: Path, count: int = 260):
    """Write an MCAP bag of ``count`` 64x48 frames with labels (several 1 MiB chunks)."""
    root = path.parent / 'frames'
    frames = make_camvid(root, 4)
    images = list(frames.values())
    stamps = expected_stamps(count)
    with bag_io.BagWriter(path, 'mcap') as writer:
        writer.add_topic('/camera/image_raw', bag_io.IMAGE)
        writer.add_topic('/camera/labels', bag_io.IMAGE)
        for index, stamp in enumerate(stamps):
            image, labels = images[index % len(images)]
            header = bag_io.make_header(stamp, 'camera')
            writer.write('/camera/image_raw', bag_io.array_to_image(image, 'rgb8', header), stamp)
            writer.write('/camera/labels', bag_io.array_to_image(labels, 'mono8', header), stamp)
    return frames


def middle_chunk(bag: Path):
    """(offset, length, camera messages) of the middle chunk of the bag's MCAP file."""
    with Reader(bag) as reader:
        storage = reader.storage.storages[0]
        chunks = sorted(storage.chunks, key=lambda c: c.chunk_start_offset)
        assert len(chunks) >= 3, 'the test bag should have several chunks'
        camera = next(c.id for c in storage.connections if c.topic == '/camera/image_raw')
        chunk = chunks[len(chunks) // 2]
        return chunk.chunk_start_offset, chunk.chunk_length, chunk.channel_count[camera]


@pytest.mark.slow
@pytest.mark.parametrize('where', ['records', 'header'])
def test_corrupt_mcap_chunk_is_skipped_counted_and_the_rest_evaluated(tmp_path, capsys,
                                                                      model_file, where):
    """64 KiB of 0xFF in a middle chunk: its frames skipped with the reason, the rest scored."""
    bag = tmp_path / 'bag'
    count = 260
    frames = write_chunked_bag(bag, count)
    offset, length, lost = middle_chunk(bag)
    at = offset + length // 2 if where == 'records' else offset + 9 + 24  # its CRC and on
    mcap = bag / 'bag.mcap'
    data = bytearray(mcap.read_bytes())
    data[at:at + 65536] = b'\xff' * min(65536, offset + length - at)
    mcap.write_bytes(bytes(data))

    report = evaluate_bag(EvaluateOptions(bag=bag, progress=False), EchoSegmenterDouble(frames))
    frame_counts = report['frames']
    assert frame_counts['read'] == count
    assert frame_counts['evaluated'] == count - lost
    reasons = frame_counts['skipped_reasons']
    unreadable = {r: n for r, n in reasons.items() if r.startswith('unreadable bag data')}
    assert sum(unreadable.values()) == lost, reasons
    assert f'the chunk at byte {offset} of bag.mcap cannot be read' in next(iter(unreadable))
    assert report['accuracy']['mean_iou'] == 1.0
    assert any(f'{lost} on /camera/image_raw' in w for w in report['warnings'])
    capsys.readouterr()

    # The command line: exit 0, the table with the skipped line, no traceback.
    code = evaluate_main([str(bag), '--model', str(model_file), '--no-progress'])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f'read {count}, segmented {count - lost}, evaluated {count - lost}' in out
    assert re.search(rf'skipped {lost}: unreadable bag data: the chunk at byte {offset}', out)
    assert 'evaluate_bag: warning: the chunk at byte' in err and 'Traceback' not in err


# ------------------------------------------------------------------ 10: dataset_to_bag args

@pytest.mark.parametrize('args, message', [
    (['--rate', 'inf'], '--rate must be a finite number'),
    (['--rate', 'nan'], '--rate must be a finite number'),
    (['--rate', '0'], '--rate must be a finite number'),
    (['--rate', '2e9'], '--rate must be a finite number'),
    (['--rate', '1e-300'], 'would be stamped'),
    (['--start-time', '1e12'], '--start-time must be seconds since the epoch'),
    (['--start-time', '-1'], '--start-time must be seconds since the epoch'),
    (['--start-time', '2147483647', '--rate', '1'], 'would be stamped'),
    (['--limit', '-3'], '--limit: must be at least 1'),
    (['--limit', '0'], '--limit: must be at least 1'),
    (['--image-topic', ''], "--image-topic '' is not a valid topic name: topic name must not "
                            'be empty'),
    (['--image-topic', 'bad//topic'], "--image-topic 'bad//topic' is not a valid topic name"),
    (['--image-topic', '/bad//topic'], 'is not a valid topic name'),
    (['--image-topic', '/camera/image raw'], 'is not a valid topic name'),
    (['--labels-topic', '/camera/1labels'], "--labels-topic '/camera/1labels' is not a valid"),
    (['--labels-topic', '/camera/image_raw'], 'are the same topic'),
    (['--format', 'jpeg', '--jpeg-quality', '101'], '--jpeg-quality must be in [0, 100]'),
])
def test_dataset_to_bag_refuses_bad_arguments(tmp_path, capsys, args, message):
    """Each is an argparse error (exit 2, one error line) and writes nothing."""
    root = tmp_path / 'camvid'
    make_camvid(root, 3)
    with pytest.raises(SystemExit) as stop:
        dataset_to_bag([str(root), str(root / 'bag'), '--no-progress', *args])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if 'error:' in line]
    assert len(errors) == 1 and message in errors[0], err
    assert not (root / 'bag').exists()


def test_dataset_to_bag_edge_arguments_still_work(tmp_path):
    """The bounds themselves are fine: 1e9 Hz gives distinct 1 ns steps, --limit 1 one frame."""
    root = tmp_path / 'camvid'
    make_camvid(root, 3)
    assert dataset_to_bag([str(root), str(root / 'bag'), '--rate', '1e9', '--start-time', '0',
                           '--no-progress']) == 0
    with bag_io.open_bag(root / 'bag') as reader:
        stamps = [raw.log_time for raw in bag_io.read_messages(reader, ['/camera/image_raw'])]
    assert stamps == [0, 1, 2]
    assert dataset_to_bag([str(root), str(root / 'one'), '--limit', '1', '--no-progress']) == 0
    with bag_io.open_bag(root / 'one') as reader:
        assert bag_io.bag_topics(reader)['/camera/image_raw'].count == 1


# ------------------------------------------------------------------ small: frame names

def test_output_bag_carries_the_frame_names(tmp_path, capsys, model_file):
    """dataset_to_bag's recorded frame names reach evaluate_bag's output bag (of its frames)."""
    root = tmp_path / 'camvid'
    frames = make_camvid(root, 4)
    assert dataset_to_bag([str(root), str(root / 'bag'), '--start-time', '7',
                           '--no-progress']) == 0
    with bag_io.open_bag(root / 'bag') as reader:
        names = bag_io.frame_names(reader)
    assert sorted(names.values()) == sorted(frames)
    assert evaluate_main([str(root / 'bag'), '--model', str(model_file), '--output-bag',
                          str(tmp_path / 'out'), '--no-progress']) == 0
    with bag_io.open_bag(tmp_path / 'out') as reader:
        assert bag_io.frame_names(reader) == names
    assert evaluate_main([str(root / 'bag'), '--model', str(model_file), '--output-bag',
                          str(tmp_path / 'two'), '--limit', '2', '--no-progress']) == 0
    with bag_io.open_bag(tmp_path / 'two') as reader:
        first_two = dict(sorted(names.items())[:2])
        assert bag_io.frame_names(reader) == first_two


# ------------------------------------------------------------------ 9: results not lost

@pytest.fixture(scope='module')
def small_bag(tmp_path_factory) -> Path:
    """Write a 40-frame sqlite3 bag (with labels) from a generated CamVid split."""
    root = tmp_path_factory.mktemp('camvid40')
    make_camvid(root, 40)
    assert dataset_to_bag([str(root), str(root / 'bag'), '--start-time', '3',
                           '--no-progress']) == 0
    return root / 'bag'


@pytest.mark.integration
def test_unwritable_output_paths_are_refused_before_any_work(tmp_path, capsys, small_bag,
                                                             model_file):
    """A path under a file, or a folder for a file: exit 2 and one line, before any frame."""
    afile = tmp_path / 'afile'
    afile.write_text('not a folder')
    (tmp_path / 'adir').mkdir()
    out_bag = tmp_path / 'out'
    for args, path in ((['--json', afile / 'x.json'], afile / 'x.json'),
                       (['--report', afile / 'r.png'], afile / 'r.png'),
                       (['--json', tmp_path / 'adir'], tmp_path / 'adir'),
                       (['--output-bag', afile / 'out'], afile / 'out'),
                       (['--output-bag', out_bag, '--json', out_bag], out_bag),
                       (['--output-bag', out_bag, '--json', out_bag / 'x.json'],
                        out_bag / 'x.json'),
                       (['--json', tmp_path / 'x', '--report', tmp_path / 'x'], tmp_path / 'x')):
        code = evaluate_main([str(small_bag), '--model', str(model_file), *map(str, args),
                              '--no-progress'])
        out, err = capsys.readouterr()
        assert code == 2, err
        assert out == ''  # no evaluation ran: no table
        assert err.count('\n') == 1 and f"'{path}'" in err, err
        assert not out_bag.exists()
    from enet_ros.evaluation.outputs import OutputPathError

    built = []
    with pytest.raises(OutputPathError, match="--json '.*afile/x.json' cannot be written: "
                                              ".*afile' is not a folder"):
        evaluate_bag(EvaluateOptions(bag=small_bag, json_path=afile / 'x.json'),
                     lambda: built.append(1))
    assert built == []  # the segmenter (the model) was not even built

    code = live_main([str(small_bag), '--model', str(model_file), '--json',
                      str(afile / 'x.json'), '--no-progress'])
    assert code == 2 and "--json '" in capsys.readouterr().err
    assert dataset_to_bag([str(small_bag.parent), str(afile / 'bag'), '--no-progress']) == 2
    assert "output bag '" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_disk_full_while_writing_the_output_bag_keeps_the_results(tmp_path, small_bag,
                                                                  model_file, storage):
    """The bag write fails (EFBIG): bag removed, table printed, JSON written, one line, exit 3."""
    out, report_path = tmp_path / 'out', tmp_path / 'eval.json'
    result = run_limited(tool_command(
        'evaluate_bag', small_bag, '--model', model_file, '--output-bag', out,
        '--output-storage', storage, '--json', report_path, '--no-progress'), 300_000)
    assert result.returncode == 3, result.stdout + result.stderr
    assert 'Traceback' not in result.stderr
    assert 'mIoU' in result.stdout and 'frames read 40, segmented 40, evaluated 40' \
        in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"evaluate_bag: error: bag '{out}' could not be written ("), last
    assert 'the partial bag was removed' in last
    assert not out.exists()
    report = json.loads(report_path.read_text())
    assert report['frames']['evaluated'] == 40
    assert report['output_bag'] is None and 'could not be written' in report['output_bag_error']


@pytest.mark.integration
def test_json_that_cannot_be_written_comes_after_the_table(tmp_path, small_bag, model_file):
    """The JSON write fails (EFBIG): the table is printed first, then one line naming it."""
    report_path = tmp_path / 'eval.json'
    result = run_limited(tool_command('evaluate_bag', small_bag, '--model', model_file,
                                      '--json', report_path, '--no-progress'), 4096)
    assert result.returncode == 3, result.stdout + result.stderr
    assert 'Traceback' not in result.stderr
    assert 'mIoU' in result.stdout and 'evaluated 40' in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"evaluate_bag: error: --json '{report_path}' could not be written: " \
                   'File too large', last
    assert not report_path.exists()  # no truncated JSON left behind


@pytest.mark.integration
def test_dataset_to_bag_disk_full_removes_the_partial_bag(tmp_path):
    """dataset_to_bag whose bag cannot be written: one line naming it, exit 3, nothing left."""
    root = tmp_path / 'camvid'
    make_camvid(root, 40)
    out = tmp_path / 'bag'
    result = run_limited(tool_command('dataset_to_bag', root, out, '--storage', 'mcap',
                                      '--no-progress'), 200_000)
    assert result.returncode == 3, result.stdout + result.stderr
    assert 'Traceback' not in result.stderr
    assert result.stderr.strip() == (f"dataset_to_bag: error: bag '{out}' could not be written "
                                     '(File too large); the partial bag was removed')
    assert not out.exists()
