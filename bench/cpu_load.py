"""
Busy processes beside a benchmark: what a vehicle's CPU sees (drivers, localisation, planning).

:class:`BusyLoad` starts N processes that each spin a pure-Python loop (one
core each, no memory traffic to speak of, no threads) and stops them when the
``with`` block ends, on an exception or Ctrl-C too. Three guards keep them
from outliving the benchmark:

* each loop ends by itself after ``max_seconds`` (the deadline is its
  argument);
* on Linux each child asks the kernel for SIGKILL when its parent dies
  (``prctl(PR_SET_PDEATHSIG)``), so even a SIGKILLed benchmark takes them along;
* ``stop()`` (the ``with`` block's exit, and ``atexit``) kills them by PID
  and reaps them; SIGTERM to the benchmark is turned into SystemExit while a
  load runs, so the ``with`` block's exit runs then too.

Shared by ``bench_segmenter.py --load N`` and ``bench_node.py --load N``.
"""

import atexit
import ctypes
import os
import signal
import subprocess
import sys
import time
from typing import List, Optional

#: The busy loop: spin until the deadline (seconds since the epoch) given as argv[1].
_SPIN = 'import sys, time\nend = float(sys.argv[1])\nwhile time.time() < end:\n    pass\n'
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
    except (AttributeError, OSError):
        pass


class BusyLoad:
    """N busy-looping processes for at most ``max_seconds``; a context manager."""

    def __init__(self, processes: int, max_seconds: float = 900.0, nice: int = 0):
        if processes < 0:
            raise ValueError(f'--load: {processes} busy processes is not a count')
        if nice < 0:
            raise ValueError(f'--load-nice: {nice}; the busy processes can only be lowered')
        self.count = processes
        self.max_seconds = max_seconds
        #: The busy processes' niceness (0: the benchmark's own priority; 10: well below it).
        self.nice = int(nice)
        self.children: List[subprocess.Popen] = []
        self._previous_sigterm: Optional[object] = None

    def start(self) -> 'BusyLoad':
        """Start the processes (idempotent); returns self."""
        if self.children or not self.count:
            return self
        deadline = time.time() + self.max_seconds
        preexec = _die_with_parent if sys.platform.startswith('linux') else None
        if self.nice:
            nice, parent_guard = self.nice, preexec

            def preexec() -> None:  # pragma: no cover - runs in the child before exec
                os.nice(nice)
                if parent_guard is not None:
                    parent_guard()
        for _ in range(self.count):
            self.children.append(subprocess.Popen(
                [sys.executable, '-c', _SPIN, repr(deadline)], stdin=subprocess.DEVNULL,
                preexec_fn=preexec))
        atexit.register(self.stop)
        try:
            self._previous_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_exit)
        except ValueError:  # not the main thread: the other guards still hold
            self._previous_sigterm = None
        time.sleep(0.2)  # let the loops get going before the first timed frame
        return self

    def stop(self) -> None:
        """Kill and reap the processes this object started (only those, by PID)."""
        children, self.children = self.children, []
        for child in children:
            if child.poll() is None:
                child.kill()
        for child in children:
            child.wait()
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def running(self) -> int:
        """Return how many of the processes are still alive."""
        return sum(child.poll() is None for child in self.children)

    def __enter__(self) -> 'BusyLoad':
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f'BusyLoad({self.count} processes, pids {[c.pid for c in self.children]})'


def _sigterm_to_exit(signum, frame) -> None:
    raise SystemExit(128 + signum)


def describe_load(processes: int) -> str:
    """Say what ``--load N`` means, for table headers."""
    if not processes:
        return 'idle (no busy processes started)'
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    return (f'beside {processes} busy process(es) (pure-Python spin loops) on {cores} '
            'core(s)')
