"""
The node's timed choice of OpenMP waiting (``enet_ros.inference.openmp_wait``); nothing is timed.

The parked team is checked by what the kernel shows (the process's threads),
the choice with a clock the test drives, and the Segmenter by its labels,
which must not depend on how OpenMP waits.
"""

import gc
import os
import threading
import time

from enet_ros.inference import cpu_runtime, openmp_wait
from enet_ros.inference.config import SegmenterConfigError
from enet_ros.segmenter import Segmenter
import numpy as np
import pytest
import torch

needs_libgomp = pytest.mark.skipif(
    openmp_wait.adaptive_wait_problem(2) is not None,
    reason=f'no switch of OpenMP waiting here: {openmp_wait.adaptive_wait_problem(2)}')


def _parked_threads() -> int:
    return sum(thread.name == 'openmp-parked-team' for thread in threading.enumerate())


def _thread_count() -> int:
    return len(os.listdir('/proc/self/task'))


def _wait_for_threads(count: int, seconds: float = 5.0) -> int:
    deadline = time.monotonic() + seconds
    while _thread_count() != count and time.monotonic() < deadline:
        time.sleep(0.01)
    return _thread_count()


@needs_libgomp
def test_a_parked_team_exists_while_parked_and_is_freed_on_release():
    """Parking starts a thread with an OpenMP team beside it; releasing ends them all."""
    team = openmp_wait.ParkedTeam(threads=2, cpus=2)
    assert team.size == 2  # frames' 2 threads + 2 > 2 CPUs: OpenMP spins briefly
    assert openmp_wait.ParkedTeam(threads=2, cpus=8).size == 8  # 2 + 8 > 8
    before = _thread_count()
    for _ in range(3):  # park and release again and again, as the choice does
        team.park()
        team.park()  # idempotent
        assert team.parked
        assert _thread_count() >= before + 2  # its own thread and at least one OpenMP worker
        team.release()
        team.release()
        assert not team.parked
        assert _wait_for_threads(before) == before


class _FakeTeam:
    def __init__(self):
        self.parked = False

    def park(self):
        self.parked = True

    def release(self):
        self.parked = False


class _FakeLoad:
    """Other processes' busy cores, as the test says."""

    def __init__(self):
        self.value = None

    def cores(self):
        return self.value


class _FakePath:
    def __init__(self, team: _FakeTeam):
        self.team = team
        self.mode = 'optimised'
        self.parked_during = []

    def run(self, image, bgr=False, with_confidence=False, images=(), out=None):
        self.parked_during.append(self.team.parked)
        return image


def test_the_wait_follows_the_other_processes_load_with_hysteresis():
    """Half a core busy elsewhere: brief spin from the next frame; under a quarter: full spin."""
    team, load = _FakeTeam(), _FakeLoad()
    inner = _FakePath(team)
    path = openmp_wait.LoadAwareWaitPath(inner, team, load)
    assert path.mode == 'optimised'  # everything else is the wrapped path's
    frame = np.zeros((2, 2, 3), np.uint8)
    for others, parked in [(None, False), (0.1, False), (0.6, True), (0.4, True), (0.3, True),
                           (0.2, False), (0.45, False), (2.0, True), (0.0, False)]:
        load.value = others
        assert path.run(frame) is frame
        assert inner.parked_during[-1] == parked, (others, inner.parked_during)
        assert path.waiting == ('brief spin' if parked else 'spin')


def test_other_load_counts_the_machine_less_this_process(tmp_path, monkeypatch):
    """Busy time of the machine from /proc/stat, minus this process's own CPU time."""
    stat = tmp_path / 'stat'
    clock = {'wall': 100.0, 'own': 5.0}
    monkeypatch.setattr(openmp_wait.time, 'monotonic', lambda: clock['wall'])
    monkeypatch.setattr(openmp_wait.time, 'process_time', lambda: clock['own'])

    def write(user, idle, iowait=0, steal=0):
        stat.write_text(f'cpu  {user} 0 0 {idle} {iowait} 0 0 {steal} 0 0\ncpu0 1 2 3\n')

    write(user=1000, idle=5000)
    load = openmp_wait.OtherLoad(window_s=0.25, stat_path=str(stat))
    load._ticks_per_s = 100
    assert load.cores() is None  # no window yet
    # 1 s later: 150 ticks (1.5 s) busy on the machine, 0.5 s of it this process's.
    clock['wall'] += 1.0
    clock['own'] += 0.5
    write(user=1150, idle=5050, iowait=30, steal=20)  # waiting and stolen time are not busy
    assert load.cores() == pytest.approx(1.0)
    clock['wall'] += 0.1  # inside the window: the last figure stands
    assert load.cores() == pytest.approx(1.0)
    with open('/proc/stat', encoding='ascii') as real:
        assert real.readline().split()[0] == 'cpu'  # the layout this reads


def test_timed_choice_probes_every_other_candidate_and_backs_off():
    """Probe each other name in turn, ever more rarely while they lose (ThreadChoice)."""
    choice = cpu_runtime.ThreadChoice(('torch', 'openvino', 'other'))
    speed = {'torch': 50.0, 'openvino': 80.0, 'other': 60.0}
    probes = []
    for frame in range(800):
        name = choice.next_threads()
        if name != choice.current:
            probes.append((frame, name))
        choice.record(name, speed[name])
    assert choice.current == 'torch' and choice.switches == 0
    starts = [frame for frame, name in probes if name == 'openvino'][::2]
    assert [b - a for a, b in zip(starts, starts[1:])][:3] == [104, 204, 204]  # 100, 200, 200
    assert {name for _, name in probes} == {'openvino', 'other'}
    speed['other'] = 20.0  # the next probe finds it 15 % faster or more: it takes over
    for _ in range(250):
        name = choice.next_threads()
        choice.record(name, speed[name])
    assert choice.current == 'other' and choice.switches == 1


def test_openmp_wait_option_is_checked_and_read_from_the_environment(monkeypatch):
    """``openmp_wait``: fixed or adaptive; None reads ENET_ROS_OPENMP_WAIT; else an error."""
    from enet_ros.inference.config import resolve_openmp_wait

    monkeypatch.delenv('ENET_ROS_OPENMP_WAIT', raising=False)
    assert resolve_openmp_wait(None) == 'fixed'
    assert resolve_openmp_wait('Adaptive') == 'adaptive'
    monkeypatch.setenv('ENET_ROS_OPENMP_WAIT', 'adaptive')
    assert resolve_openmp_wait(None) == 'adaptive'
    monkeypatch.setenv('ENET_ROS_OPENMP_WAIT', 'sometimes')
    with pytest.raises(SegmenterConfigError, match="ENET_ROS_OPENMP_WAIT 'sometimes'"):
        resolve_openmp_wait(None)
    with pytest.raises(SegmenterConfigError, match="openmp_wait 'spin'"):
        resolve_openmp_wait('spin')


@needs_libgomp
def test_segmenter_labels_do_not_depend_on_how_openmp_waits(random_model_file):
    """Adaptive wait on the torch path: the same labels spinning or sleeping; 1 thread: fixed."""
    from enet_ros.model_file import load_model_file

    loaded = load_model_file(random_model_file)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fixed = Segmenter(loaded, device='cpu', torch_compile=False, inference_backend='torch',
                          openmp_wait='fixed')
        adaptive = Segmenter(loaded, device='cpu', torch_compile=False,
                             inference_backend='torch', openmp_wait='adaptive')
        assert fixed.openmp_wait == 'fixed' and adaptive.openmp_wait == 'spin'
        assert 'OpenMP spin default, brief while other processes keep the cores busy' in \
            adaptive.describe()
        load = _FakeLoad()
        adaptive.path.load = load
        rng = np.random.default_rng(3)
        width, height = adaptive.input_size
        waits = set()
        for index in range(6):
            load.value = 2.0 if index % 2 else 0.0  # busy neighbours every other frame
            image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            got = adaptive.segment(image)
            waits.add(adaptive.openmp_wait)
            assert np.array_equal(got.labels, fixed.segment(image).labels)
        assert waits == {'spin', 'brief spin'} and adaptive.backend == 'torch'
        load.value = 2.0
        if not adaptive._parked_team.parked:
            adaptive.segment(image)  # the next frame parks
        assert _parked_threads() == 1
        del adaptive, got
        gc.collect()
        assert _parked_threads() == 0  # released with its Segmenter
        torch.set_num_threads(1)
        single = Segmenter(loaded, device='cpu', torch_compile=False,
                           inference_backend='torch', openmp_wait='adaptive')
        assert single.openmp_wait == 'fixed'
        assert single.openmp_wait_note == 'one torch thread: no OpenMP team waits'
    finally:
        torch.set_num_threads(previous)
