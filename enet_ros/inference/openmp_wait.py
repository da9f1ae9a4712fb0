"""
OpenMP waiting chosen while frames run: spin on idle cores, sleep soon on busy ones.

GNU OpenMP's threads wait for each other at the end of every parallel region,
and ENet's compiled network has hundreds of them a frame. Spinning (the
default, ``GOMP_SPINCOUNT`` 300000) is the fastest way to wait on cores
nobody else wants; beside other busy processes a spinning thread burns its
share of the core waiting for a partner the scheduler has not run (on the
2-core Zen 3: 4-5x the idle time, p90 over 10x). Sleeping at once
(``OMP_WAIT_POLICY=PASSIVE``) holds under load (1.1x its own idle time) but
costs 1.5-2x idle, and the environment is read once, when torch loads.

The switch at run time: GNU OpenMP spins only ``100`` times (its "throttled"
count) while it manages more threads than the process has CPUs, which the
libgomp manual documents for ``GOMP_SPINCOUNT``. :class:`ParkedTeam` makes
that so by parking one extra, idle OpenMP team on a thread of its own (its
workers sleep); releasing it ends the thread, and GNU OpenMP frees the team
and spins fully again. :class:`LoadAwareWaitPath` decides before each frame
from what the cores are doing (:class:`OtherLoad`: the machine's busy time
in ``/proc/stat`` less this process's own): other processes keeping half a
core or more busy park the team, fewer than a quarter release it. Timing
frames both ways was tried first and followed noise: beside busy processes
a frame's time moved 2x from one stretch of frames to the next whichever
way the threads waited, and 2-frame probes picked the wrong one.

With ``openmp_wait='adaptive'`` the path also confines the OpenMP team that
runs frames to the CPUs other processes leave free while they keep a core's
worth busy (:mod:`enet_ros.inference.team_placement`); ``adaptive-wait``
switches the wait only.

Only for a process that owns itself (the node): the parked team changes how
every OpenMP thread in the process waits. The Segmenter uses it where
``openmp_wait='adaptive'`` (the node's executables set
``ENET_ROS_OPENMP_WAIT=adaptive`` unless the user chose an OpenMP wait
variable: :func:`~enet_ros.inference.cpu_runtime.apply_process_defaults`).
"""

import ctypes
import logging
import os
import threading
import time
from typing import Dict, FrozenSet, List, Optional, Tuple

import torch

from .team_placement import choose_cpus, team_cpu_count, TeamPlacement

LOGGER = logging.getLogger(__name__)

#: Elements of the parked team's one parallel operation: enough for any team size.
_TEAM_ELEMENTS_PER_THREAD = 65536


def loaded_libgomp_path() -> Optional[str]:
    """Return the path of the GNU OpenMP library this process has loaded, or None."""
    try:
        with open('/proc/self/maps', encoding='utf-8', errors='replace') as maps:
            for line in maps:
                path = line.rstrip('\n').split(maxsplit=5)[-1]
                if os.path.basename(path).startswith('libgomp') and '.so' in path:
                    return path
    except OSError:
        pass
    return None


def available_cpus() -> int:
    """Return the CPUs this process may run on (what GNU OpenMP counted at start-up)."""
    if hasattr(os, 'sched_getaffinity'):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def adaptive_wait_problem(threads: int) -> Optional[str]:
    """Return None if the wait can be switched for a ``threads``-thread torch pool, else why."""
    if threads < 2:
        return 'one torch thread: no OpenMP team waits'
    if torch.__config__.parallel_info().find('OpenMP') < 0:
        return 'torch does not run on OpenMP here'
    if loaded_libgomp_path() is None:
        return 'no GNU OpenMP library (libgomp) is loaded'
    try:
        OtherLoad()
    except (OSError, ValueError, IndexError) as error:
        return f"cannot read the machine's load ({error})"
    return None


class ParkedTeam:
    """
    An idle OpenMP team on a thread of its own: while parked, OpenMP threads spin briefly.

    ``threads``: the size of the torch pool that runs frames; the parked team
    has enough threads that the process's OpenMP threads outnumber its CPUs.
    :meth:`park` and :meth:`release` are idempotent; call them from one
    thread. The team is released when this object goes (a dropped Segmenter
    must not leave the next one's threads throttled).
    """

    def __init__(self, threads: int, cpus: Optional[int] = None):
        self.threads = int(threads)
        self.cpus = int(cpus or available_cpus())
        #: Threads in the parked team (its own thread included): frames' pool + these > CPUs.
        self.size = max(2, self.cpus - self.threads + 2)
        #: GNU OpenMP as loaded in this process.
        self.omp = ctypes.CDLL(loaded_libgomp_path() or 'libgomp.so.1')
        self._thread: Optional[threading.Thread] = None
        self._release: Optional[threading.Event] = None

    @property
    def parked(self) -> bool:
        """Whether the team is parked now."""
        return self._thread is not None

    def park(self) -> None:
        """Start the team's thread and wait until its team exists (a millisecond or so)."""
        if self._thread is not None:
            return
        ready, release, errors = threading.Event(), threading.Event(), []
        thread = threading.Thread(target=_hold_team, name='openmp-parked-team', daemon=True,
                                  args=(self.omp, self.size, ready, release, errors))
        thread.start()
        ready.wait()
        self._thread, self._release = thread, release
        if errors:
            self.release()
            raise RuntimeError(f'could not park an OpenMP team: {errors[0]}')

    def release(self) -> None:
        """End the team's thread; GNU OpenMP frees its team as the thread ends."""
        thread, release = self._thread, self._release
        self._thread = self._release = None
        if thread is not None:
            release.set()
            thread.join()

    def __del__(self) -> None:
        """Release the team with its owner."""
        if self.__dict__.get('_thread') is not None:
            self.release()


def _hold_team(omp, size: int, ready: threading.Event, release: threading.Event,
               errors: list) -> None:
    """Make this thread's OpenMP team of ``size`` threads, then wait, idle, for ``release``."""
    try:
        torch.get_num_threads()  # torch's per-thread set-up first, then this team's size
        omp.omp_set_num_threads(ctypes.c_int(size))
        values = torch.zeros(size * _TEAM_ELEMENTS_PER_THREAD)
        values.add_(1.0)  # one parallel region: this thread's team now exists
    except Exception as error:  # reported by park() on the caller's thread
        errors.append(error)
    finally:
        ready.set()
    release.wait()


class OtherLoad:
    """
    How many cores other processes keep busy, from ``/proc/stat`` and this process's CPU time.

    :meth:`cores` returns the busy CPU time of the whole machine minus this
    process's own (its spinning threads included), per second of wall time,
    over the last ``window_s`` seconds or more; None before the first window.
    """

    def __init__(self, window_s: float = 0.25, stat_path: str = '/proc/stat'):
        self.window_s = float(window_s)
        self.stat_path = stat_path
        self._ticks_per_s = os.sysconf('SC_CLK_TCK') if hasattr(os, 'sysconf') else 100
        self._last = self._sample()
        self._cores: Optional[float] = None
        self._per_cpu: Dict[int, float] = {}

    def _sample(self) -> Tuple[float, float, float, Dict[int, float]]:
        """(wall s, machine busy CPU s, this process's CPU s, busy CPU s per CPU number)."""
        per_cpu = {}
        # Only the cpu lines, which come first: the rest (interrupt counts) can be long.
        with open(self.stat_path, encoding='ascii') as stat:
            busy = _busy_ticks(stat.readline().split()[1:]) / self._ticks_per_s
            for line in stat:
                name, _, rest = line.partition(' ')
                if not name.startswith('cpu') or not name[3:].isdigit():
                    break
                per_cpu[int(name[3:])] = _busy_ticks(rest.split()) / self._ticks_per_s
        return time.monotonic(), busy, time.process_time(), per_cpu

    def cores(self) -> Optional[float]:
        """Return the cores other processes kept busy lately (updated every ``window_s``)."""
        now = time.monotonic()
        if now - self._last[0] >= self.window_s:
            sample = self._sample()
            wall = sample[0] - self._last[0]
            others = (sample[1] - self._last[1]) - (sample[2] - self._last[2])
            self._cores = max(0.0, others / wall)
            self._per_cpu = {cpu: min(1.0, max(0.0, (busy - self._last[3].get(cpu, busy)) / wall))
                             for cpu, busy in sample[3].items()}
            self._last = sample
        return self._cores

    def per_cpu(self) -> Dict[int, float]:
        """Return each CPU's busy fraction in the last window (this process's threads too)."""
        return dict(self._per_cpu)


def _busy_ticks(ticks: List[str]) -> int:
    """Busy ticks of a ``/proc/stat`` cpu line's numbers: all but idle, iowait and steal."""
    values = [int(value) for value in ticks[:8]]
    values += [0] * (8 - len(values))  # kernels before 2.6.11 have fewer fields
    return sum(values) - values[3] - values[4] - values[7]


class LoadAwareWaitPath:
    """
    A torch CPU path whose OpenMP team waits and runs as the other processes' load asks.

    Before each frame: where other processes keep at least ``busy_cores``
    (0.5) cores busy the team is parked (brief spin), where they keep fewer
    than ``idle_cores`` (0.25) it is released (full spin); in between it
    stays as it was. With a ``placement``
    (:class:`~enet_ros.inference.team_placement.TeamPlacement`) the frame's
    OpenMP team also runs on only the CPUs the others leave free
    (:func:`~enet_ros.inference.team_placement.team_cpu_count` with a margin
    of 0.25 cores to take CPUs away and 0.5 to give them back: on 2 CPUs one
    from 0.75 busy cores on, both again below 0.5). The calling thread gets
    all CPUs back after each frame (threads it starts are not confined); its
    idle OpenMP workers stay where they are until the load drops or the
    placement goes with its Segmenter. A CPU affinity that cannot be set
    (CPUs taken away at run time) ends the placing with a warning, never a
    frame. Everything but :meth:`run` is the wrapped path's. Not
    thread-safe: one frame at a time.
    """

    def __init__(self, path, team: ParkedTeam, load: Optional[OtherLoad] = None,
                 busy_cores: float = 0.5, idle_cores: float = 0.25,
                 placement: Optional[TeamPlacement] = None):
        self.path = path
        self.team = team
        self.load = load or OtherLoad()
        self.busy_cores = float(busy_cores)
        self.idle_cores = float(idle_cores)
        self.placement = placement
        #: CPUs the team runs frames on while confined (None: all of the process's).
        self.team_cpus: Optional[FrozenSet[int]] = None

    def __getattr__(self, name: str):
        if name in ('path', 'team', 'load', 'placement'):  # not set yet (copy, pickle)
            raise AttributeError(name)
        return getattr(self.path, name)

    def run(self, image, bgr: bool = False, with_confidence: bool = False, images=(),
            out=None):
        """Segment one frame (the EagerPath ``run`` contract), waiting as the load asks."""
        others = self.load.cores()
        if others is not None:
            if others >= self.busy_cores:
                self.team.park()
            elif others < self.idle_cores:
                self.team.release()
            if self.placement is not None:
                self._choose_team_cpus(others)
        confined = self._place_team()
        try:
            return self.path.run(image, bgr, with_confidence, images, out)
        finally:
            if confined:
                self._free_caller()

    def _place_team(self) -> bool:
        """Put the team where :attr:`team_cpus` says; return whether it is confined."""
        if self.placement is None:
            return False
        try:
            self.placement.place(self.team_cpus or self.placement.allowed)
        except OSError as error:
            self._stop_placing(error)
            return False
        return self.team_cpus is not None

    def _free_caller(self) -> None:
        """Give the calling thread all CPUs again after a confined frame."""
        try:
            self.placement.free_caller()
        except OSError as error:
            self._stop_placing(error)

    def _stop_placing(self, error: OSError) -> None:
        """Stop placing the team (an affinity that cannot be set): all CPUs from now on."""
        LOGGER.warning('openmp_wait adaptive: the OpenMP team keeps all CPUs from now on (%s)',
                       error)
        placement, self.placement, self.team_cpus = self.placement, None, None
        try:
            placement.release()
        except OSError:
            pass

    def _choose_team_cpus(self, others: float) -> None:
        """Confine the team, or free it, for ``others`` busy cores (with hysteresis)."""
        allowed = self.placement.allowed
        current = len(self.team_cpus) if self.team_cpus else len(allowed)
        threads = self.placement.threads
        fewer = team_cpu_count(others, len(allowed), threads, margin=0.25)
        more = team_cpu_count(others, len(allowed), threads, margin=0.5)
        count = fewer if fewer < current else more if more > current else current
        if count == current:
            return
        if count >= len(allowed):
            self.team_cpus = None
        else:
            self.team_cpus = choose_cpus(sorted(allowed), count, self.load.per_cpu())

    @property
    def waiting(self) -> str:
        """``spin`` or ``brief spin``: how the next frame's OpenMP threads wait."""
        return 'brief spin' if self.team.parked else 'spin'

    @property
    def cpus_text(self) -> str:
        """Say on which CPUs the team runs the next frame, e.g. ``all 2`` or ``1 of 2 (CPU 0)``."""
        total = len(self.placement.allowed) if self.placement else available_cpus()
        if not self.team_cpus:
            return f'all {total}'
        listed = ', '.join(str(cpu) for cpu in sorted(self.team_cpus))
        return f'{len(self.team_cpus)} of {total} (CPU {listed})'
