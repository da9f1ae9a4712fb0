"""
The CPU at hand and the process around the Segmenter: instruction sets, cores, OpenMP waiting.

Imports nothing beyond the standard library, so that a process that owns
itself (the node's executables) can call :func:`apply_process_defaults`
before torch is imported: GNU OpenMP reads its environment once, when torch
loads it.

Why the node sets OpenMP's wait: torch's CPU kernels run on GNU OpenMP
threads, which by default spin-wait (GOMP_SPINCOUNT 300000, milliseconds) at
the end of each parallel region for the others. On cores shared with other
busy processes a spinning thread burns its time slice waiting for a partner
that the scheduler has not run, and ENet has hundreds of parallel regions a
frame: on a 2-core Zen 3 beside two busy processes the compiled fp32 network
went from about 45 ms to 260 ms a frame, with p90 over 2 s.
``OMP_WAIT_POLICY=PASSIVE`` (never spin) holds under load but cost 1.5-1.9x
idle (every wait a futex sleep and wake-up). A short spin
(:data:`NODE_OPENMP_ENVIRONMENT`, tens of microseconds) covers the short
waits of an idle machine and sleeps before a descheduled partner would be
waited for: on the shared 2-core Zen 3, with other jobs running, 1000 spins
ran as fast as PASSIVE beside two busy processes (248 / 233 ms) and 2.9x and
15x faster than 10000 spins and the default (README, "Threads and OpenMP
waiting", which says how to re-measure it on a quiet machine). The library
never changes the environment (it does not own the process); the node does,
unless the user set any OpenMP wait variable (:data:`OPENMP_WAIT_VARIABLES`).
"""

from collections import deque
import os
import statistics
from typing import Deque, Dict, FrozenSet, List, Mapping, MutableMapping, Optional, Sequence
from typing import Tuple

#: Variables that decide how OpenMP threads wait; if the user set any, the node sets none.
OPENMP_WAIT_VARIABLES = ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT', 'KMP_BLOCKTIME')
#: What the node's executables set before torch loads (chosen by measurement; README,
#: "Threads and OpenMP waiting"): spin this many iterations, then sleep.
NODE_OPENMP_ENVIRONMENT: Dict[str, str] = {'GOMP_SPINCOUNT': '1000'}

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
    Say how this process's OpenMP threads wait, e.g. ``OpenMP spin 1000 (set by the node)``.

    Read from the environment, as OpenMP read it at start-up.
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
    if _APPLIED and all(environ.get(k) == v for k, v in _APPLIED.items()):
        text += ' (set by the node)'
    return text


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


class ThreadChoice:
    """
    Pick the faster of a few thread counts by timing frames as they run; the first one to start.

    Why: on cores shared with other busy processes a runtime whose threads
    meet at a barrier after every layer (OpenVINO's TBB pool, OpenMP) waits
    for a partner the scheduler has not run, and fewer threads than cores
    were faster there; on idle cores all of them were. Load on a vehicle
    comes and goes, so the choice is made while frames run, not once at
    start-up: every ``probe_every`` frames the other count runs
    ``probe_frames`` frames; when their median beats the median of the
    current count's last ``window`` frames by ``margin`` (0.85: 15 %
    faster), it becomes the current count. The probes are about 4 % of the
    frames (2 of 50): the median and p90 are those of the chosen count.
    Not thread-safe; the caller runs one frame at a time.
    """

    def __init__(self, candidates: Sequence[int], probe_every: int = 50, probe_frames: int = 2,
                 window: int = 16, margin: float = 0.85):
        self.candidates = tuple(candidates)
        self.current = self.candidates[0]
        self.probe_every = int(probe_every)
        self.probe_frames = int(probe_frames)
        self.margin = float(margin)
        self.switches = 0
        self._recent: Deque[float] = deque(maxlen=int(window))
        self._probe: List[float] = []
        self._frames = 0
        self._probing: Optional[int] = None

    @property
    def adaptive(self) -> bool:
        """Whether there is more than one count to choose from."""
        return len(self.candidates) > 1

    def next_threads(self) -> int:
        """Return the thread count to run the next frame with."""
        enough = len(self._recent) >= min(3, self._recent.maxlen or 3)
        if self.adaptive and self._probing is None and enough and \
                self._frames >= self.probe_every:
            index = self.candidates.index(self.current)
            self._probing = self.candidates[(index + 1) % len(self.candidates)]
            self._probe = []
            self._frames = 0
        return self.current if self._probing is None else self._probing

    def record(self, threads: int, milliseconds: float) -> None:
        """Record that a frame run with ``threads`` took ``milliseconds``; maybe switch."""
        if not self.adaptive:
            return
        if threads == self._probing:
            self._probe.append(milliseconds)
            if len(self._probe) >= self.probe_frames:
                probed, self._probing = self._probe, None
                if statistics.median(probed) < self.margin * statistics.median(self._recent):
                    self.current = threads
                    self.switches += 1
                    self._recent.clear()
                    self._recent.extend(probed)
        elif threads == self.current:
            self._recent.append(milliseconds)
            self._frames += 1

    def describe(self) -> str:
        """``2 threads`` or ``2 threads, or 1 when timed faster (now 2)``."""
        text = threads_text(self.candidates[0])
        if self.adaptive:
            others = ', '.join(str(c) for c in self.candidates[1:])
            text += f', or {others} when timed faster (now {self.current})'
        return text
