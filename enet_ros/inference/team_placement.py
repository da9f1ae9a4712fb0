"""
Where torch's OpenMP team runs while other processes keep cores busy: on fewer CPUs, whole.

ENet's compiled network has hundreds of parallel regions a frame, and each
ends when the team's slowest thread gets there. On cores shared with other
busy processes, a team spread over all of them waits at every region for a
thread that the scheduler has not run: on the 2-vCPU Zen 3 beside two busy
processes, frames ran in stretches of about 90 ms and 200 ms, and the slow
stretches were those where the two torch threads sat on different CPUs
(120-150 ms of CPU time a frame, each thread waiting for the other). With
both threads on one CPU the frame took its CPU time and no more (65-100 ms),
and the kernel's load balancer moved the busy processes to the other CPU.

So while other processes keep cores busy, :class:`TeamPlacement` confines
the calling thread's OpenMP team (the thread that runs frames and its
workers, nothing else in the process) to as many CPUs as the others leave
free, rounded down to a divisor of the team size so that every CPU holds
the same share of the team (:func:`team_cpu_count`), and gives it all of
the process's CPUs back when they are idle again. The team's threads are
reached from inside one parallel region of the same team (GNU OpenMP keeps
a master thread's workers from one region to the next), where each sets its
own CPU affinity; between frames the calling thread gets all CPUs back
(:meth:`TeamPlacement.free_caller`), so that threads it starts are not
confined. The CPUs kept are those with the least busy time in the last
window (:func:`choose_cpus`; where all are saturated, the lowest numbers),
and the load balancer moves the others' movable threads away from them;
threads pinned to those CPUs stay, and the team shares with them.

Used by :class:`~enet_ros.inference.openmp_wait.LoadAwareWaitPath` with
``openmp_wait='adaptive'`` (the node's default); ``adaptive-wait`` switches
the wait only. Not used where the user places OpenMP threads
(:data:`PLACEMENT_VARIABLES`) or the process has one CPU.
"""

import ctypes
import os
import threading
from typing import Dict, FrozenSet, List, Mapping, Optional, Sequence, Set

#: OpenMP variables that place threads on CPUs; where any is set the user places them.
PLACEMENT_VARIABLES = ('OMP_PROC_BIND', 'OMP_PLACES', 'GOMP_CPU_AFFINITY', 'KMP_AFFINITY')

_MEMBER_FUNCTION = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def placement_problem(threads: int, environ: Mapping[str, str] = os.environ,
                      allowed: Optional[Sequence[int]] = None) -> Optional[str]:
    """Return None if a ``threads``-thread team can be confined to fewer CPUs here, else why."""
    if not hasattr(os, 'sched_setaffinity'):
        return 'this system cannot set CPU affinity'
    chosen = [name for name in PLACEMENT_VARIABLES if name in environ]
    if chosen:
        return f'{chosen[0]} is set: the user places OpenMP threads'
    cpus = len(allowed if allowed is not None else os.sched_getaffinity(0))
    if cpus < 2:
        return 'the process runs on one CPU'
    if threads < 2:
        return 'one torch thread'
    return None


def team_cpu_count(others: float, cpus: int, threads: int, margin: float) -> int:
    """
    Return how many of ``cpus`` CPUs a ``threads``-thread team runs on beside ``others`` cores.

    The CPUs that other processes leave free (``cpus - floor(others +
    margin)``), at least one, rounded down to a divisor of ``threads`` (2
    threads on 1 CPU share it evenly; 2 threads on 3 of 4 CPUs would not
    help). ``cpus`` itself where that is all of them.
    """
    free = cpus - int(others + margin)
    if free >= cpus:
        return cpus
    for count in range(max(1, free), 0, -1):
        if threads % count == 0:
            return count
    return 1


def choose_cpus(allowed: Sequence[int], count: int,
                busy: Optional[Mapping[int, float]] = None) -> FrozenSet[int]:
    """
    Return ``count`` CPUs of ``allowed``: the least busy (``busy``: CPU to busy fraction).

    Busy fractions within 0.05 of each other count as equal; then the lower
    CPU numbers are kept (a stable choice when every CPU is saturated).
    """
    busy = busy or {}
    ranked = sorted(allowed, key=lambda cpu: (round(busy.get(cpu, 0.0) / 0.05), cpu))
    return frozenset(ranked[:max(1, count)])


class TeamPlacement:
    """
    The CPUs of the calling thread's OpenMP team of ``threads`` threads, changed at run time.

    :meth:`place` sets them from the thread that runs frames (once per thread
    and CPU set: each master thread has a team of its own). ``omp``: GNU
    OpenMP as loaded in this process (a ``ctypes.CDLL``). Not thread-safe:
    one caller at a time.
    """

    def __init__(self, threads: int, omp: ctypes.CDLL,
                 allowed: Optional[Sequence[int]] = None):
        self.threads = int(threads)
        #: The process's CPUs when the placement was made: what "all" means.
        self.allowed: FrozenSet[int] = frozenset(
            allowed if allowed is not None else os.sched_getaffinity(0))
        self._parallel = omp.GOMP_parallel
        self._parallel.restype = None
        self._parallel.argtypes = [_MEMBER_FUNCTION, ctypes.c_void_p, ctypes.c_uint,
                                   ctypes.c_uint]
        self._target: FrozenSet[int] = self.allowed
        self._members: List[int] = []
        self._errors: List[OSError] = []
        self._placed: Dict[int, FrozenSet[int]] = {}
        self._known: Set[int] = set()
        # Kept on the object: ctypes frees a callback whose Python object goes.
        self._member_callback = _MEMBER_FUNCTION(self._place_member)

    @property
    def confined(self) -> bool:
        """Whether the team was last asked onto fewer CPUs than the process has."""
        return self._target != self.allowed

    def _place_member(self, _data) -> None:
        """Run by every thread of the team, inside the parallel region."""
        try:
            os.sched_setaffinity(0, self._target)
            self._members.append(threading.get_native_id())
        except OSError as error:
            self._errors.append(error)

    def place(self, cpus: FrozenSet[int]) -> None:
        """
        Put the calling thread and its team on ``cpus`` (a subset of :attr:`allowed`).

        The workers are reached through a parallel region once per caller and
        CPU set; after that only the caller's own affinity is set again (see
        :meth:`free_caller`).
        """
        cpus = frozenset(cpus)
        if not cpus or not cpus <= self.allowed:
            raise ValueError(f'CPUs {sorted(cpus)} are not some of {sorted(self.allowed)}')
        caller = threading.get_native_id()
        self._target = cpus
        if self._placed.get(caller) == cpus:
            if cpus != self.allowed:
                os.sched_setaffinity(0, cpus)
            return
        self._members, self._errors = [], []
        self._parallel(self._member_callback, None, self.threads, 0)
        self._known.update(self._members)
        if self._errors:
            raise OSError(f"could not set the OpenMP threads' CPUs: {self._errors[0]}")
        self._placed[caller] = cpus

    def free_caller(self) -> None:
        """
        Give the calling thread all of :attr:`allowed` again (its workers stay where they are).

        Between frames the caller does other work and may start threads,
        which would inherit a confined affinity.
        """
        os.sched_setaffinity(0, self.allowed)

    def release(self) -> None:
        """Give every thread this placement confined all of :attr:`allowed`; from any thread."""
        for thread_id in sorted(self._known):
            try:
                os.sched_setaffinity(thread_id, self.allowed)
            except OSError:  # the thread has ended
                pass
        self._known.clear()
        self._placed.clear()
        self._target = self.allowed

    def __del__(self) -> None:
        """Give the threads back their CPUs with the placement (a dropped Segmenter)."""
        if self.__dict__.get('_known'):
            self.release()

    @property
    def members(self) -> List[int]:
        """Native thread ids of the team placed last (the caller among them)."""
        return list(self._members)
