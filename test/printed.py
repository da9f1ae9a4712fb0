"""Waiting for a child process to print a line, shared by the test harnesses."""

import subprocess
import time
from typing import Callable


def wait_for_printed(process: subprocess.Popen, log: Callable[[], str], text: str,
                     timeout: float) -> None:
    """
    Wait until ``log()`` contains ``text``.

    Fail with the whole log when ``process`` exits first or ``timeout`` seconds pass.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log():
            return
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f'{text!r} not printed (exit code {process.poll()}):\n{log()}')
