"""
The node process's SIGINT / SIGTERM handling: the first signal stops, later ones are ignored.

Standard library only: :mod:`enet_ros.node.main` installs it before the heavy
imports (torch, rclpy), and :mod:`enet_ros.node.os_process` hands it the node.
A node that a tool started (:class:`enet_ros.evaluation.node_subprocess.NodeProcess`)
is also told to stop by a SIGTERM when that tool ends, even by SIGKILL
(:func:`stop_with_parent`).
"""

import ctypes
import os
import signal
from typing import Any, Optional

#: Set by the tool that starts the node to its own process id: the node stops when it ends.
PARENT_ENV = 'ENET_ROS_STOP_WITH_PARENT'
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class StopOnSignal:
    """SIGINT / SIGTERM handler: the first signal stops ``target``; later ones are ignored."""

    def __init__(self):
        self.target: Optional[Any] = None  # anything with a stop() method, once running
        self.received: Optional[int] = None

    def install(self) -> None:
        """Handle SIGINT and SIGTERM in this process (call from the main thread)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self)

    def __call__(self, signum: int, frame: Any) -> None:
        """Stop the target, or abort start-up, on the first signal only."""
        if self.received is not None:
            return
        self.received = signum
        if self.target is None:
            raise KeyboardInterrupt
        self.target.stop()

    def ignore_from_now(self) -> None:
        """
        Ignore SIGINT and SIGTERM for the rest of the process.

        Python resets the handlers it installed to the default while the
        interpreter exits, so a late signal (launch forwarding its own) would
        still kill the process with code -2; an ignored signal stays ignored.
        """
        self.received = self.received or signal.SIGINT
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def stop_with_parent(environ=os.environ) -> Optional[int]:
    """
    Have the kernel send this process SIGTERM when the tool that started it ends.

    Only where ``ENET_ROS_STOP_WITH_PARENT`` names the parent's process id
    (the variable is then removed, so that processes this one starts do not
    inherit it). A tool killed with SIGKILL has no chance to stop its node,
    which otherwise kept running, orphaned. Call after :meth:`StopOnSignal.install`:
    the SIGTERM is then a clean stop. If the parent has already gone, the
    SIGTERM is sent at once. Linux only (``prctl``); elsewhere nothing is done.
    Return the parent's process id that is watched, or None.
    """
    value = environ.pop(PARENT_ENV, None)
    if not value:
        return None
    try:
        parent = int(value)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            return None
    except (ValueError, OSError, AttributeError):  # not a pid; no libc prctl (not Linux)
        return None
    if os.getppid() != parent:  # it ended before prctl: no signal would come
        os.kill(os.getpid(), signal.SIGTERM)
    return parent
