"""
The node's timed choice of OpenMP waiting (``enet_ros.inference.openmp_wait``); nothing is timed.

The parked team is checked by what the kernel shows (the process's threads),
the choice with a clock the test drives, and the Segmenter by its labels,
which must not depend on how OpenMP waits.
"""

import gc
import logging
import os
import threading
import time

from enet_ros.inference import cpu_runtime, openmp_wait, team_placement
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
        self.busy = {}

    def cores(self):
        return self.value

    def per_cpu(self):
        return dict(self.busy)


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
    assert resolve_openmp_wait('adaptive-wait') == 'adaptive-wait'
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
        assert 'and the team then on the CPUs they leave free' in adaptive.describe()
        if len(os.sched_getaffinity(0)) == 2:  # two busy cores on two CPUs: one for the team
            assert adaptive.openmp_cpus.startswith('1 of 2 (CPU ')
        assert frozenset(os.sched_getaffinity(0)) == adaptive.path.placement.allowed  # freed
        wait_only = Segmenter(loaded, device='cpu', torch_compile=False,
                              inference_backend='torch', openmp_wait='adaptive-wait')
        assert wait_only.path.placement is None
        assert wait_only.openmp_cpus == f'all {len(os.sched_getaffinity(0))}'
        assert 'then on the CPUs' not in wait_only.describe()
        del wait_only
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


# ----------------------------------------------------------------- team placement


def test_team_cpu_count_leaves_the_others_their_cores_in_whole_shares_of_the_team():
    """Free CPUs (others rounded with a margin), at least one, a divisor of the team size."""
    count = team_placement.team_cpu_count
    assert count(0.0, 2, 2, margin=0.25) == 2
    assert count(0.7, 2, 2, margin=0.25) == 2
    assert count(0.75, 2, 2, margin=0.25) == 1
    assert count(2.0, 2, 2, margin=0.25) == 1
    assert count(5.0, 2, 2, margin=0.25) == 1  # never none
    assert count(0.5, 2, 2, margin=0.5) == 1 and count(0.49, 2, 2, margin=0.5) == 2
    assert count(3.0, 16, 16, margin=0.25) == 8  # 13 free: 8 CPUs hold 2 threads each
    assert count(3.0, 16, 12, margin=0.25) == 12  # 13 free: the team fits on 12 CPUs, one each
    assert count(1.0, 4, 3, margin=0.25) == 3
    assert count(2.0, 4, 3, margin=0.25) == 1  # 2 free: 3 threads share 1 CPU evenly


def test_choose_cpus_keeps_the_least_busy_and_the_lower_numbers_on_ties():
    """The CPUs with the least busy time; busy fractions within 0.05 count as equal."""
    choose = team_placement.choose_cpus
    assert choose([0, 1, 2, 3], 2, {0: 1.0, 1: 0.2, 2: 1.0, 3: 0.1}) == {1, 3}
    assert choose([0, 1], 1, {0: 1.0, 1: 0.99}) == {0}  # both saturated: CPU 0
    assert choose([4, 6], 1, {}) == {4}  # nothing known: the lowest number
    assert choose([0, 1, 2], 0, {}) == {0}  # at least one


def test_placement_problems_are_reported(monkeypatch):
    """The user's own OpenMP placement, one CPU or one thread: no confinement."""
    problem = team_placement.placement_problem
    assert problem(2, {}, allowed=[0, 1]) is None
    assert problem(2, {'OMP_PROC_BIND': 'close'}, allowed=[0, 1]) == (
        'OMP_PROC_BIND is set: the user places OpenMP threads')
    assert problem(2, {'GOMP_CPU_AFFINITY': '0 1'}, allowed=[0, 1]).startswith(
        'GOMP_CPU_AFFINITY is set')
    assert problem(2, {}, allowed=[3]) == 'the process runs on one CPU'
    assert problem(1, {}, allowed=[0, 1]) == 'one torch thread'


def _affinity(thread_id: int):
    return frozenset(os.sched_getaffinity(thread_id))


needs_two_cpus = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2 if hasattr(os, 'sched_getaffinity') else True,
    reason='confining a team to fewer CPUs needs a process with 2 CPUs or more')


@needs_libgomp
@needs_two_cpus
def test_team_placement_confines_the_callers_openmp_team_and_gives_it_back():
    """The caller and its OpenMP workers on one CPU; the caller freed between frames; all back."""
    allowed = frozenset(os.sched_getaffinity(0))
    one = frozenset([min(allowed)])
    result = {}

    def on_a_thread_of_its_own():  # a thread's affinity must not leak into the test process
        torch.set_num_threads(2)
        torch.ones(1 << 16).add_(1.0)  # this thread's OpenMP team exists
        omp = openmp_wait.ParkedTeam(threads=2).omp
        placement = team_placement.TeamPlacement(2, omp)
        assert placement.allowed == allowed and not placement.confined
        placement.place(one)
        members = placement.members
        result['confined'] = {tid: _affinity(tid) for tid in members}
        result['caller'] = threading.get_native_id()
        placement.free_caller()
        result['after_frame'] = {tid: _affinity(tid) for tid in members}
        placement.place(one)  # the team is there already: only the caller moves
        result['again'] = _affinity(0)
        result['members_again'] = placement.members
        placement.free_caller()
        placement.release()  # from any thread: every thread it confined
        result['released'] = {tid: _affinity(tid) for tid in members}
        with pytest.raises(ValueError, match='are not some of'):
            placement.place(frozenset([max(allowed) + 1]))

    errors = []

    def run():
        try:
            on_a_thread_of_its_own()
        except BaseException as error:  # reported below
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert not errors, errors
    confined = result['confined']
    assert len(confined) == 2 and result['caller'] in confined  # the caller and one worker
    assert set(confined.values()) == {one}
    workers = [tid for tid in confined if tid != result['caller']]
    assert result['after_frame'][result['caller']] == allowed
    assert all(result['after_frame'][tid] == one for tid in workers)  # idle, stay there
    assert result['again'] == one and result['members_again'] == list(confined)
    assert set(result['released'].values()) == {allowed}


class _FakePlacement:
    """A TeamPlacement that records what it was asked for."""

    def __init__(self, cpus=(0, 1), threads=2):
        self.allowed = frozenset(cpus)
        self.threads = threads
        self.placed = []
        self.freed = 0

    def place(self, cpus):
        self.placed.append(frozenset(cpus))

    def free_caller(self):
        self.freed += 1


def test_the_team_runs_on_the_cpus_other_processes_leave_free_with_hysteresis():
    """Two busy cores on two CPUs: one CPU for the team; back to both once the others stop."""
    team, load, placement = _FakeTeam(), _FakeLoad(), _FakePlacement()
    path = openmp_wait.LoadAwareWaitPath(_FakePath(team), team, load, placement=placement)
    frame = np.zeros((2, 2, 3), np.uint8)
    load.busy = {0: 1.0, 1: 0.6}
    expected = [(None, None), (0.2, None), (0.8, {1}), (0.6, {1}), (1.0, {1}), (2.0, {1}),
                (0.45, None), (0.7, None), (0.75, {1})]
    for others, cpus in expected:
        load.value = others
        freed = placement.freed
        path.run(frame)
        assert path.team_cpus == (frozenset(cpus) if cpus else None), (others, path.team_cpus)
        assert placement.placed[-1] == (frozenset(cpus) if cpus else placement.allowed)
        assert placement.freed == freed + (1 if cpus else 0)  # the caller freed after the frame
    assert path.cpus_text == '1 of 2 (CPU 1)'
    load.value = 0.0
    path.run(frame)
    assert path.cpus_text == 'all 2'


def test_other_load_reads_each_cpus_busy_time(tmp_path, monkeypatch):
    """The per-CPU lines of /proc/stat: each CPU's busy fraction over the window."""
    stat = tmp_path / 'stat'
    clock = {'wall': 10.0}
    monkeypatch.setattr(openmp_wait.time, 'monotonic', lambda: clock['wall'])

    def write(cpu0_user, cpu1_user):
        stat.write_text(f'cpu  {cpu0_user + cpu1_user} 0 0 100 0 0 0 0 0 0\n'
                        f'cpu0 {cpu0_user} 0 0 50 0 0 0 0 0 0\n'
                        f'cpu1 {cpu1_user} 0 0 50 0 0 0 0 0 0\nintr 1 2 3\n')

    write(0, 0)
    load = openmp_wait.OtherLoad(window_s=0.25, stat_path=str(stat))
    load._ticks_per_s = 100
    assert load.per_cpu() == {}
    clock['wall'] += 1.0
    write(100, 30)
    load.cores()
    assert load.per_cpu() == pytest.approx({0: 1.0, 1: 0.3})


def test_a_cpu_affinity_that_cannot_be_set_stops_the_placing_and_not_the_frame():
    """Take CPUs away at run time (a cpuset): a warning, all CPUs from then on, frames go on."""
    class _Refusing(_FakePlacement):
        released = False

        def place(self, cpus):
            if cpus != self.allowed:
                raise OSError(22, 'Invalid argument')
            super().place(cpus)

        def release(self):
            self.released = True

    team, load, placement = _FakeTeam(), _FakeLoad(), _Refusing()
    inner = _FakePath(team)
    path = openmp_wait.LoadAwareWaitPath(inner, team, load, placement=placement)
    frame = np.zeros((2, 2, 3), np.uint8)
    load.value = 2.0
    warnings = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    # On the module's logger itself: earlier tests' loggers may stop propagation to caplog.
    level = openmp_wait.LOGGER.level
    openmp_wait.LOGGER.addHandler(handler)
    openmp_wait.LOGGER.setLevel(logging.WARNING)
    try:
        assert path.run(frame) is frame
        assert path.run(frame) is frame
    finally:
        openmp_wait.LOGGER.removeHandler(handler)
        openmp_wait.LOGGER.setLevel(level)
    assert len(inner.parked_during) == 2 and placement.released
    assert path.placement is None and path.team_cpus is None
    assert path.cpus_text == f'all {openmp_wait.available_cpus()}'
    assert warnings == [
        'openmp_wait adaptive: the OpenMP team keeps all CPUs from now on '
        '([Errno 22] Invalid argument)']


@needs_libgomp
@needs_two_cpus
def test_a_user_who_places_openmp_threads_keeps_the_team_on_all_cpus(random_model_file,
                                                                     monkeypatch):
    """OMP_PROC_BIND (or OMP_PLACES, GOMP_CPU_AFFINITY) set: the wait follows, the CPUs not."""
    from enet_ros.model_file import load_model_file

    monkeypatch.setenv('OMP_PROC_BIND', 'close')
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        segmenter = Segmenter(load_model_file(random_model_file), device='cpu',
                              torch_compile=False, inference_backend='torch',
                              openmp_wait='adaptive')
        assert segmenter.openmp_wait == 'spin' and segmenter.path.placement is None
        assert segmenter.team_placement_note == (
            'OMP_PROC_BIND is set: the user places OpenMP threads')
        assert segmenter.openmp_cpus == f'all {len(os.sched_getaffinity(0))}'
    finally:
        torch.set_num_threads(previous)
