"""Warnings that repeat frame after frame, logged at most once per interval each."""

import time
from typing import Any, Dict

WARN_THROTTLE_S = 5.0


class ThrottledWarnings:
    """
    Log a warning once per :data:`WARN_THROTTLE_S` per key (e.g. 'reject:front:bad_step').

    Shared by the frame loop and the grid output: a bad stream warns every few
    seconds, not at the frame rate. Only the inference thread calls it.
    """

    def __init__(self, logger: Any, period_s: float = WARN_THROTTLE_S):
        self._logger = logger
        self._period_s = period_s
        self._warned: Dict[str, float] = {}

    def warn(self, key: str, message: str) -> None:
        """Log ``message`` unless a warning with ``key`` was logged within the interval."""
        now = time.monotonic()
        if now - self._warned.get(key, -1e9) >= self._period_s:
            self._warned[key] = now
            self._logger.warning(message)
