"""
The node process's SIGINT / SIGTERM handling: the first signal stops, later ones are ignored.

Standard library only: :mod:`enet_ros.node.main` installs it before the heavy
imports (torch, rclpy), and :mod:`enet_ros.node.os_process` hands it the node.
"""

import signal
from typing import Any, Optional


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
