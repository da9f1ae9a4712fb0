"""
How the bag tools stop on SIGINT and SIGTERM: as an exception, so that their clean-up runs.

Python turns SIGINT into KeyboardInterrupt, which unwinds every ``with`` and
``finally`` (a partial output bag is removed, a started node is stopped), but
SIGTERM's default action ends the process at once: an unfinished bag stays on
disk and a child node keeps running with PPID 1. While a tool's ``main()`` runs
inside :func:`stop_on_signals`, both signals raise :class:`Stopped` (a
KeyboardInterrupt, so code that handles Ctrl-C handles SIGTERM alike), and the
tool exits with ``128 + signal number`` (130, 143). Clean-up that must not be
cut short (closing or removing a bag, stopping the node) runs in
:func:`shielded`: a first signal arriving there is held back until it ends, and
signals after the first are ignored while the tool stops.

No rclpy; handlers are installed only by the tools' ``main()`` (main thread).
"""

from contextlib import contextmanager
import signal
import threading
from typing import Dict, Iterator, Optional

#: The signals the bag tools stop on.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; unwinds like Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def name(self) -> str:
        """``SIGINT`` or ``SIGTERM``."""
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """Return the exit code of a process ended by the signal: 130 (SIGINT), 143 (SIGTERM)."""
        return 128 + self.signum


class _State:
    """What the handler knows: stopping already, inside a shielded block, a held signal."""

    def __init__(self) -> None:
        self.stopping = False
        self.shield_depth = 0
        self.pending: Optional[int] = None


_STATE = _State()


def _handler(signum: int, _frame: object) -> None:
    if _STATE.stopping:
        return  # already unwinding: let the clean-up finish
    if _STATE.shield_depth:
        _STATE.pending = signum
        return
    _STATE.stopping = True
    raise Stopped(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """
    Turn SIGINT and SIGTERM into :class:`Stopped` while the block runs (main thread only).

    After a stop both signals are ignored (SIG_IGN) for the rest of the process, which is
    ending: a second SIGTERM must not turn exit code 143 into death by the signal.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # Python handles signals in the main thread only; a tool run in a thread
        return  # leaves them to its caller
    previous: Dict[int, object] = {sig: signal.signal(sig, _handler) for sig in STOP_SIGNALS}
    _STATE.stopping, _STATE.pending = False, None
    try:
        yield
    finally:
        for sig, handler in previous.items():
            # Stopping: more signals (a burst of SIGTERM) are ignored until the process exits,
            # so that it ends with the tool's exit code; SIG_IGN, unlike a Python handler,
            # stays in force while the interpreter shuts down.
            signal.signal(sig, signal.SIG_IGN if _STATE.stopping else handler)
        _STATE.pending = None


@contextmanager
def shielded() -> Iterator[None]:
    """
    Hold a first SIGINT / SIGTERM back until the block ends, then raise :class:`Stopped`.

    For clean-up that a signal must not cut in half. Without :func:`stop_on_signals`
    (a library caller), or in another thread than the main one (where signals are
    handled), it changes nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _STATE.shield_depth += 1
    try:
        yield
    finally:
        _STATE.shield_depth -= 1
    if not _STATE.shield_depth and _STATE.pending is not None and not _STATE.stopping:
        signum, _STATE.pending = _STATE.pending, None
        _STATE.stopping = True
        raise Stopped(signum)
