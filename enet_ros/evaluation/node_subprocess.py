"""
Start the segmentation node as its own process, as a user would without ``ros2 launch``.

Used by the live bag evaluation, the demo, the node benchmark and the tests:
``python -m enet_ros.node.main --ros-args --params-file
config/segment.yaml -p name:=value -r from:=to``, with its output in a log file.
"""

import os
from pathlib import Path
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Mapping, Optional, Sequence

from .signals import shielded
from ..node.signal_handling import PARENT_ENV
from ..ros_io.dds import config_file

READY_LINE = 'listening on'
#: The modules ``python -m`` runs: the node, and the managed (lifecycle) node.
NODE_MODULE = 'enet_ros.node.main'
LIFECYCLE_NODE_MODULE = 'enet_ros.node.lifecycle_main'


def default_params_file() -> Optional[Path]:
    """Find the package's config/segment.yaml."""
    return config_file('segment.yaml')


def ros_arg(value: object) -> str:
    """Format a Python value for ``-p name:=value``."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (list, tuple)):
        return '[' + ','.join(ros_arg(v) for v in value) + ']'
    if value == '':
        return "''"  # YAML for the empty string; a bare 'name:=' does not parse
    return str(value)


def node_command(parameters: Optional[Mapping[str, object]] = None,
                 remaps: Optional[Mapping[str, str]] = None,
                 params_file: Optional[Path] = None,
                 extra_assignments: Sequence[str] = (),
                 module: str = NODE_MODULE) -> List[str]:
    """
    Build the node's command line: the parameters file, then overrides and remappings.

    ``module``: :data:`LIFECYCLE_NODE_MODULE` for the managed node.
    """
    command = [sys.executable, '-m', module, '--ros-args']
    params_file = params_file or default_params_file()
    if params_file:
        command += ['--params-file', str(params_file)]
    for name, value in (parameters or {}).items():
        command += ['-p', f'{name}:={ros_arg(value)}']
    for assignment in extra_assignments:
        command += ['-p', assignment]
    for source, target in (remaps or {}).items():
        command += ['-r', f'{source}:={target}']
    return command


class NodeProcess:
    """The segmentation node in a child process, its output captured in a log file."""

    def __init__(self, command: Sequence[str], env: Optional[Dict[str, str]] = None,
                 log_path: Optional[Path] = None):
        self.temporary_log = log_path is None
        if log_path is None:
            handle, name = tempfile.mkstemp(prefix='segmentation_node_', suffix='.log')
            os.close(handle)
            log_path = Path(name)
        self.log_path = Path(log_path)
        self.command = list(command)
        self._log = open(self.log_path, 'w')
        # The node stops by itself when this process ends, even by SIGKILL (the node's
        # stop_with_parent); NodeProcess must be created on the main thread for that.
        env = dict(os.environ if env is None else env)
        env[PARENT_ENV] = str(os.getpid())
        self.process = subprocess.Popen(self.command, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT)

    def log(self) -> str:
        """Everything the node printed so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors='replace')

    def tail(self, lines: int = 30) -> str:
        """Return the last lines the node printed."""
        return '\n'.join(self.log().splitlines()[-lines:])

    def exited(self) -> Optional[int]:
        """Return the exit code if the process has ended, else None."""
        return self.process.poll()

    def wait_ready(self, timeout: float = 90.0) -> bool:
        """Wait for the node's ready line; False if it exited or timed out first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY_LINE in self.log():
                return True
            if self.process.poll() is not None:
                return False
            time.sleep(0.1)
        return False

    def wait_exit(self, timeout: float = 60.0) -> int:
        """Wait for the process to end by itself; return its exit code."""
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def stop(self, first_signal: int = signal.SIGINT, timeout: float = 10.0) -> int:
        """
        Send ``first_signal``, then SIGTERM, then SIGKILL, each after ``timeout``.

        Returns the exit code. A temporary log of a clean (exit 0) run is removed.
        A SIGINT / SIGTERM to a bag tool arriving meanwhile waits until the node
        has stopped (:func:`~enet_ros.evaluation.signals.shielded`).
        """
        signals = [first_signal] + [s for s in (signal.SIGTERM, signal.SIGKILL)
                                    if s != first_signal]
        with shielded():
            for sig in signals:
                if self.process.poll() is not None:
                    break
                self.process.send_signal(sig)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    continue
        self._log.close()
        if self.temporary_log and self.process.returncode == 0:
            self.log_path.unlink(missing_ok=True)
        return self.process.returncode

    @property
    def kept_log(self) -> Optional[str]:
        """Path of the log file while it exists (a clean run's temporary log is removed)."""
        return str(self.log_path) if self.log_path.exists() else None
