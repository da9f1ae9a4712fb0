"""
The CPU at hand and the process around the Segmenter: instruction sets, cores, OpenMP waiting.

Imports nothing beyond the standard library, so that a process that owns
itself (the node's executables) can call :func:`apply_process_defaults`
before torch is imported: GNU OpenMP reads its environment once, when torch
loads it.

Why the node chooses OpenMP's wait: torch's CPU kernels run on GNU OpenMP
threads, which by default spin-wait (GOMP_SPINCOUNT 300000, milliseconds) at
the end of each parallel region for the others. On cores shared with other
busy processes a spinning thread burns its time slice waiting for a partner
that the scheduler has not run, and ENet has hundreds of parallel regions a
frame: on a 2-core Zen 3 beside two busy processes the compiled fp32 network
went from about 45 ms to 260 ms a frame, with p90 over 2 s.
``OMP_WAIT_POLICY=PASSIVE`` (never spin) holds under load but cost 1.5-1.9x
idle (every wait a futex sleep and wake-up), and a short spin for the whole
process (``GOMP_SPINCOUNT=1000``, the node's setting before) cost 1.15-1.55x
idle and still doubled beside busy processes. So the node now leaves the
spin as it is and sets :data:`NODE_OPENMP_ENVIRONMENT`
(``ENET_ROS_OPENMP_WAIT=adaptive``): its Segmenter spins fully while the
cores are otherwise idle and briefly while other processes keep them busy,
switched before each frame (:mod:`enet_ros.inference.openmp_wait`), and
runs its OpenMP team on the CPUs they leave free
(:mod:`enet_ros.inference.team_placement`).
The library never changes the environment (it does not own the process);
the node does, unless the user set any OpenMP wait variable or that one
(:data:`OPENMP_WAIT_VARIABLES`).
"""

from collections import deque
import os
import statistics
from typing import Deque, Dict, FrozenSet, Hashable, List, Mapping, MutableMapping, Optional
from typing import Sequence, Tuple

#: Variables that decide how OpenMP threads wait; if the user set any, the node sets none.
OPENMP_WAIT_VARIABLES = ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT', 'KMP_BLOCKTIME',
                         'ENET_ROS_OPENMP_WAIT')
#: What the node's executables set before torch loads (chosen by measurement; docs/performance.md
#: "Threads and OpenMP waiting"): full or brief OpenMP spinning, as the cores' load asks.
NODE_OPENMP_ENVIRONMENT: Dict[str, str] = {'ENET_ROS_OPENMP_WAIT': 'adaptive'}

#: The variables :func:`apply_process_defaults` set in this process (for describe()).
_APPLIED: Dict[str, str] = {}
_FEATURES: Optional[FrozenSet[str]] = None


def apply_process_defaults(environ: MutableMapping[str, str] = os.environ) -> Dict[str, str]:
    """
    Set the node's OpenMP wait defaults in ``environ`` unless the user chose; return them.

    For executables that own their process only, before torch is imported
    (OpenMP reads the variables once). Nothing is set, and ``{}`` returned,
    when any of :data:`OPENMP_WAIT_VARIABLES` is already in ``environ``.
    """
    if any(name in environ for name in OPENMP_WAIT_VARIABLES):
        return {}
    environ.update(NODE_OPENMP_ENVIRONMENT)
    if environ is os.environ:
        _APPLIED.update(NODE_OPENMP_ENVIRONMENT)
    return dict(NODE_OPENMP_ENVIRONMENT)


def openmp_wait_description(environ: Mapping[str, str] = os.environ) -> str:
    """
    Say how this process's OpenMP threads wait, e.g. ``OpenMP spin 1000``.

    Read from the environment, as OpenMP read it at start-up. (The node's
    load-following wait, where it runs, is described by the Segmenter.)
    """
    policy = environ.get('OMP_WAIT_POLICY', '').strip().upper()
    spin = environ.get('GOMP_SPINCOUNT', '').strip()
    if policy == 'PASSIVE':
        text = 'OpenMP passive (no spin)'
    elif spin:
        text = f'OpenMP spin {spin}'
    elif policy == 'ACTIVE':
        text = 'OpenMP active (spin)'
    else:
        text = 'OpenMP spin default'
    return text


def set_by_node(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether :func:`apply_process_defaults` set this process's OpenMP wait choice."""
    return bool(_APPLIED) and all(environ.get(k) == v for k, v in _APPLIED.items())


def threads_text(count: int) -> str:
    """``1 thread``, ``2 threads``."""
    return f'{count} thread' + ('' if count == 1 else 's')


def cpu_features() -> FrozenSet[str]:
    """
    Return the CPU's instruction-set flags, lower case (``/proc/cpuinfo``; empty if unknown).

    x86 lists e.g. ``sse4_2``, ``avx2``, ``avx512f``, ``avx512_bf16``, ``amx_tile``;
    ARM lists e.g. ``asimd``. Read once. Tests monkeypatch this function to
    stand for another CPU.
    """
    global _FEATURES
    if _FEATURES is None:
        flags: FrozenSet[str] = frozenset()
        try:
            with open('/proc/cpuinfo', encoding='ascii', errors='replace') as info:
                for line in info:
                    key, _, value = line.partition(':')
                    if key.strip().lower() in ('flags', 'features'):
                        flags = frozenset(value.lower().split())
                        break
        except OSError:
            pass
        _FEATURES = flags
    return _FEATURES


def has_avx512(features: FrozenSet[str]) -> bool:
    """Whether the flags include AVX-512 (``avx512f``)."""
    return 'avx512f' in features


def openvino_cpu_supported(features: FrozenSet[str]) -> Optional[str]:
    """
    Return None if OpenVINO's CPU plugin can run on a CPU with ``features``, else why not.

    Its minimum on x86 is SSE4.2, on ARM NEON (``asimd``). Unknown flags (an
    empty set: no ``/proc/cpuinfo``) are let through; loading then decides.
    """
    if not features:
        return None
    if 'sse4_2' in features or 'asimd' in features:
        return None
    return "this CPU has neither SSE4.2 nor NEON, which OpenVINO's CPU plugin needs"


def thread_candidates(threads: int) -> Tuple[int, ...]:
    """
    Return the thread counts a timed choice tries for an auto count ``threads``: all, or half.

    ``(2, 1)`` on 2 cores, ``(8, 4)`` on 8; ``(1,)`` (no choice) for one.
    """
    threads = max(1, int(threads))
    return (threads,) if threads == 1 else (threads, max(1, threads // 2))


#: A candidate takes over when its median frame time is under this fraction of the current
#: one's (0.85: 15 % faster), so that noise between near-equal candidates moves nothing.
SWITCH_MARGIN = 0.85


class ThreadChoice:
    """
    Pick the fastest of a few candidates by timing frames as they run; the first one to start.

    Candidates are thread counts (OpenVINO's pool) or names (execution
    paths, :class:`~enet_ros.inference.timed_paths.TimedPaths`). Why: on
    cores shared with other busy processes a runtime whose threads meet at a
    barrier after every layer (OpenVINO's TBB pool, OpenMP) waits for a
    partner the scheduler has not run, and fewer threads, or threads that
    sleep sooner, were faster there; on idle cores the others were. Load on a
    vehicle comes and goes, so the choice is made while frames run, not once
    at start-up: every ``probe_every`` frames each other candidate runs
    ``probe_frames`` frames in turn; when the best of their medians beats the
    median of the current one's last ``window`` frames by ``margin`` (0.85:
    15 % faster), it becomes the current one. A probe that loses doubles the
    interval to the next one, up to ``max_probe_every`` (a win resets it): on
    steady load or steady idle the probes become rare (2 frames a candidate
    in 200), so the median and p90 are those of the chosen one. (Probing
    at once when frames suddenly slowed down was tried and taken out: beside
    busy processes a frame's time moved 2x between stretches of frames on
    every path, and the early probes moved to the slower path on that
    noise.) Not thread-safe; the caller runs one frame at a time.
    """

    def __init__(self, candidates: Sequence[Hashable], probe_every: int = 50,
                 probe_frames: int = 2, window: int = 16, margin: float = SWITCH_MARGIN,
                 max_probe_every: int = 200):
        self.candidates = tuple(candidates)
        self.current = self.candidates[0]
        self.probe_every = int(probe_every)
        self.max_probe_every = max(self.probe_every, int(max_probe_every))
        self.probe_frames = max(1, int(probe_frames))
        self.margin = float(margin)
        self.switches = 0
        self._interval = self.probe_every
        self._recent: Deque[float] = deque(maxlen=int(window))
        self._frames = 0
        #: While probing: the candidates still to run, and each probed one's frame times.
        self._queue: List[Hashable] = []
        self._probed: Dict[Hashable, List[float]] = {}

    @property
    def adaptive(self) -> bool:
        """Whether there is more than one candidate to choose from."""
        return len(self.candidates) > 1

    def next_threads(self) -> Hashable:
        """Return the candidate to run the next frame with."""
        enough = len(self._recent) >= min(3, self._recent.maxlen or 3)
        if self.adaptive and not self._queue and enough and self._frames >= self._interval:
            index = self.candidates.index(self.current)
            count = len(self.candidates)
            self._queue = [self.candidates[(index + k) % count] for k in range(1, count)]
            self._probed = {}
            self._frames = 0
        return self._queue[0] if self._queue else self.current

    def record(self, threads: Hashable, milliseconds: float) -> None:
        """Record that a frame run with ``threads`` took ``milliseconds``; maybe switch."""
        if not self.adaptive:
            return
        if self._queue and threads == self._queue[0]:
            times = self._probed.setdefault(threads, [])
            times.append(milliseconds)
            if len(times) >= self.probe_frames:
                self._queue.pop(0)
                if not self._queue:
                    self._decide()
        elif threads == self.current and not self._queue:
            self._recent.append(milliseconds)
            self._frames += 1

    def _decide(self) -> None:
        """After a probe: move to the fastest probed candidate if it beats the baseline."""
        medians = {name: statistics.median(times) for name, times in self._probed.items()}
        best = min(medians, key=medians.get)
        beat = self.margin * statistics.median(self._recent)  # the window holds no probe frames
        self._recent.clear()
        if medians[best] < beat:
            self.current = best
            self.switches += 1
            self._recent.extend(self._probed[best])
            self._interval = self.probe_every
        else:
            self._interval = min(2 * self._interval, self.max_probe_every)

    def describe(self) -> str:
        """``2 threads`` or ``2 threads, or 1 when timed faster (now 2)``."""
        text = threads_text(self.candidates[0])
        if self.adaptive:
            others = ', '.join(str(c) for c in self.candidates[1:])
            text += f', or {others} when timed faster (now {self.current})'
        return text
