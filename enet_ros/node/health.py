"""
Frame counters, rates and latency over a sliding window, and the health verdict.

Thread-safe: the subscription callback and the inference worker both report
here; the diagnostics timer reads a :class:`HealthSnapshot`.
"""

from collections import Counter, deque
from dataclasses import dataclass, field
import threading
import time
from typing import Deque, Dict, List, Optional, Tuple

OK, WARN, ERROR = 0, 1, 2


@dataclass(frozen=True)
class HealthThresholds:
    """When the node reports WARN or ERROR."""

    stale_input_s: float = 3.0
    latency_warn_ms: float = 500.0
    max_consecutive_failures: int = 5


@dataclass(frozen=True)
class HealthSnapshot:
    """Figures over the last window plus totals since start."""

    level: int
    message: str
    input_rate_hz: float
    output_rate_hz: float
    latency_median_ms: Optional[float]
    latency_max_ms: Optional[float]
    processing_median_ms: Optional[float]
    inference_median_ms: Optional[float] = None
    totals: Dict[str, int] = field(default_factory=dict)
    rejected: Dict[str, int] = field(default_factory=dict)
    consecutive_failures: int = 0


class FrameStats:
    """Counts what happened to every frame and keeps a window of timings."""

    def __init__(self, window_s: float = 5.0, clock=time.monotonic):
        self._lock = threading.Lock()
        self._clock = clock
        self._window_s = window_s
        self._received: Deque[float] = deque()
        self._published: Deque[Tuple[float, float, float, float]] = deque()
        self.totals: Counter = Counter()
        self.rejected: Counter = Counter()
        self.consecutive_failures = 0
        self.last_input: Optional[float] = None
        self.started = clock()

    def _trim(self, now: float) -> None:
        while self._received and now - self._received[0] > self._window_s:
            self._received.popleft()
        while self._published and now - self._published[0][0] > self._window_s:
            self._published.popleft()

    def received(self) -> None:
        """Count an arriving message."""
        with self._lock:
            now = self._clock()
            self.totals['received'] += 1
            self.last_input = now
            self._received.append(now)

    def rejected_frame(self, reason: str) -> None:
        """Count a malformed message that was dropped."""
        with self._lock:
            self.totals['rejected'] += 1
            self.rejected[reason] += 1

    def count(self, key: str) -> None:
        """Increment a total (e.g. ``dropped_superseded``, ``skipped_no_subscribers``)."""
        with self._lock:
            self.totals[key] += 1

    def failed(self) -> int:
        """Count a frame whose inference or publishing failed; return the failures in a row."""
        with self._lock:
            self.totals['failed'] += 1
            self.consecutive_failures += 1
            return self.consecutive_failures

    def published(self, latency_s: Optional[float], processing_s: float,
                  inference_s: float) -> None:
        """
        Count a published frame with its timings.

        ``latency_s``: stamp to publish (None without a stamp); ``processing_s``:
        receipt in the callback to publish; ``inference_s``: the Segmenter call.
        """
        with self._lock:
            now = self._clock()
            self.totals['processed'] += 1
            self.consecutive_failures = 0
            self._published.append((now, latency_s if latency_s is not None else float('nan'),
                                    processing_s, inference_s))

    def snapshot(self, thresholds: HealthThresholds) -> HealthSnapshot:
        """Return the current figures and the OK / WARN / ERROR verdict with its reason."""
        with self._lock:
            now = self._clock()
            self._trim(now)
            span = min(self._window_s, max(now - self.started, 1e-3))
            latencies = sorted(v[1] * 1e3 for v in self._published if v[1] == v[1])
            processing = sorted(v[2] * 1e3 for v in self._published)
            inference = sorted(v[3] * 1e3 for v in self._published)
            level, reasons = OK, []
            if self.consecutive_failures >= thresholds.max_consecutive_failures:
                level = ERROR
                reasons.append(f'{self.consecutive_failures} consecutive inference failures')
            if self.last_input is None or now - self.last_input > thresholds.stale_input_s:
                level = max(level, WARN)
                reasons.append(f'no input for more than {thresholds.stale_input_s:g} s')
            if latencies and _median(latencies) > thresholds.latency_warn_ms:
                level = max(level, WARN)
                reasons.append(f'median latency {_median(latencies):.0f} ms above '
                               f'{thresholds.latency_warn_ms:g} ms')
            return HealthSnapshot(
                level=level,
                message='; '.join(reasons) if reasons else 'ok',
                input_rate_hz=len(self._received) / span,
                output_rate_hz=len(self._published) / span,
                latency_median_ms=_median(latencies),
                latency_max_ms=latencies[-1] if latencies else None,
                processing_median_ms=_median(processing),
                inference_median_ms=_median(inference),
                totals=dict(self.totals),
                rejected=dict(self.rejected),
                consecutive_failures=self.consecutive_failures,
            )


def _median(values: List[float]) -> Optional[float]:
    if not values:
        return None
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else 0.5 * (values[middle - 1] + values[middle])
