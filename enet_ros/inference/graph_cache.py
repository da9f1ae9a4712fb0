"""
A bounded cache of built objects (CUDA graph captures) that remembers failed builds per key.

Pure bookkeeping, no CUDA: :mod:`enet_ros.inference.cuda_graphs` keys it by
frame size (and channel order, confidence option); the tests drive it with
fake builders on the CPU.

* A hit returns the entry and makes it the most recently used.
* A miss builds. Only after the build succeeds is the least recently used
  entry evicted (if the cache is full) and the new one stored, so a failing
  build never costs a working capture.
* A build that raises is remembered for its key: :meth:`GraphCache.get`
  returns None for that key from then on without building again (the caller
  runs that frame size another way), while other keys still build.
"""

from collections import OrderedDict
import logging
from typing import Callable, Dict, Generic, Hashable, Optional, TypeVar

LOGGER = logging.getLogger(__name__)

Entry = TypeVar('Entry')


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ''


class GraphCache(Generic[Entry]):
    """
    At most ``capacity`` entries, least recently used evicted first; failed keys remembered.

    ``max_failures`` bounds the failure memory (oldest forgotten first), so a
    stream of ever-new frame sizes cannot grow it without limit.
    """

    def __init__(self, capacity: int = 4, max_failures: int = 64):
        if capacity < 1:
            raise ValueError(f'capacity must be at least 1, got {capacity}')
        self.capacity = capacity
        self.max_failures = max(1, max_failures)
        self._entries: 'OrderedDict[Hashable, Entry]' = OrderedDict()
        self._failures: 'OrderedDict[Hashable, str]' = OrderedDict()
        self.captures = 0

    def __len__(self) -> int:
        """Return the number of entries held."""
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        """Whether an entry for ``key`` is held."""
        return key in self._entries

    @property
    def failures(self) -> Dict[Hashable, str]:
        """Keys whose build failed, with the error (``Type: first line``); oldest first."""
        return dict(self._failures)

    def peek(self, key: Hashable) -> Optional[Entry]:
        """Return the entry for ``key`` if held (recency unchanged), else None."""
        return self._entries.get(key)

    def get(self, key: Hashable, build: Callable[[], Entry]) -> Optional[Entry]:
        """
        Return the entry for ``key``, building it on a miss; None where its build failed.

        A failure (any exception from ``build``) is logged once as a warning
        and remembered; ``build`` is not called for that key again.
        """
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry
        if key in self._failures:
            return None
        try:
            entry = build()
        except Exception as error:  # capture failures come as RuntimeError, OOM and others
            self._failures[key] = f'{type(error).__name__}: {_first_line(error)}'
            while len(self._failures) > self.max_failures:
                self._failures.popitem(last=False)
            LOGGER.warning('CUDA graph capture for %s failed, that size runs without a graph: '
                           '%s', key, self._failures[key])
            return None
        while len(self._entries) >= self.capacity:
            evicted, _ = self._entries.popitem(last=False)
            LOGGER.info('CUDA graph for %s evicted (cache holds %d)', evicted, self.capacity)
        self._entries[key] = entry
        self.captures += 1
        return entry

    def clear(self) -> None:
        """Drop every entry and every remembered failure."""
        self._entries.clear()
        self._failures.clear()
