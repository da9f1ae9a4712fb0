"""
Test harness for the real ROS 2 tools: a colcon workspace and commands run in its shell.

The package is copied into ``<workspace>/src/enet_ros`` as a ``git clone``
would leave it, built with the real ``colcon``, and commands such as ``ros2
launch`` run in a bash that sourced ``install/setup.bash``, each in its own
process group as a terminal starts them. The tools come from
``../shared/ros2-tools`` and the package index (``make venv``); without them
:func:`tools_missing` gives the reason to skip.
"""

import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

from printed import wait_for_printed

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
#: What a clone holds besides the package's own files is left out of the copy.
_NOT_IN_A_CLONE = ('.git', '.venv*', '__pycache__', '*.egg-info', 'build', 'install', 'log',
                   'demo_output', 'runs', '.pytest_cache', 'data', '.whl')


def tools_missing() -> Optional[str]:
    """Return why the real tools cannot be used here, or None when they can."""
    for tool in ('colcon', 'ros2'):
        if not (VENV_BIN / tool).exists() and shutil.which(tool) is None:
            return (f'{tool} is not installed (make venv installs colcon and the ROS 2 tools '
                    'from ../shared/ros2-tools when that folder exists)')
    try:
        import launch_ros  # noqa: F401
    except ImportError as error:
        return f'launch_ros is not importable ({error}); see ../shared/ros2-tools/README.md'
    return None


def tool_env(base: Dict[str, str]) -> Dict[str, str]:
    """Return ``base`` with this venv's tools first on PATH."""
    env = dict(base)
    env['PATH'] = f'{VENV_BIN}{os.pathsep}{env.get("PATH", "")}'
    env['VIRTUAL_ENV'] = str(VENV_BIN.parent)
    return env


def build_workspace(root: Path, env: Dict[str, str], symlink_install: bool = False) -> Path:
    """Copy the package into ``root/src/enet_ros``, ``colcon build`` it; return ``root``."""
    source = root / 'src' / 'enet_ros'
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(*_NOT_IN_A_CLONE))
    command = ['colcon', 'build'] + (['--symlink-install'] if symlink_install else [])
    result = subprocess.run(command, cwd=root, env=tool_env(env), capture_output=True,
                            text=True, timeout=600)
    if result.returncode != 0:
        raise AssertionError(f'{" ".join(command)} failed ({result.returncode}):\n'
                             f'{result.stdout[-4000:]}\n{result.stderr[-4000:]}')
    return root


def in_workspace(workspace: Path, command: str, replace_shell: bool = True) -> List[str]:
    """
    Return argv that runs ``command`` in the workspace's folder, in a bash that sourced it.

    ``replace_shell``: ``exec`` the command (one command; signals reach it directly).
    """
    run = f'exec {command}' if replace_shell else command
    return ['bash', '-c', f'cd {workspace} && source install/setup.bash && {run}']


class TerminalProcess:
    """A command started as a terminal starts it: its own process group, output to a log."""

    def __init__(self, argv: List[str], env: Dict[str, str], cwd: Optional[Path] = None):
        handle, name = tempfile.mkstemp(prefix='ros2_cli_', suffix='.log')
        os.close(handle)
        self.log_path = Path(name)
        self._log = open(self.log_path, 'w')
        self.process = subprocess.Popen(argv, env=tool_env(env), cwd=cwd, stdout=self._log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        self.pgid = self.process.pid

    def log(self) -> str:
        """Everything printed so far."""
        self._log.flush()
        return self.log_path.read_text(errors='replace')

    def wait_for_text(self, text: str, timeout: float = 120.0) -> None:
        """Wait until ``text`` is printed; fail with the log if the process ends first."""
        wait_for_printed(self.process, self.log, text, timeout)

    def press_ctrl_c(self, times: int = 2, interval_s: float = 0.3) -> None:
        """Send SIGINT to the whole process group ``times`` times, as Ctrl-C in a terminal."""
        for index in range(times):
            if index:
                time.sleep(interval_s)
            try:
                os.killpg(self.pgid, signal.SIGINT)
            except ProcessLookupError:
                return

    def wait_exit(self, timeout: float = 60.0) -> int:
        """Wait for the process to end; kill the group and fail if it does not."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise AssertionError(f'still running after {timeout} s:\n{self.log()}') from None

    def group_alive(self) -> List[str]:
        """Command lines of processes still in the group (empty when all have ended)."""
        result = subprocess.run(['ps', '-o', 'pid=,pgid=,args=', '-e'], capture_output=True,
                                text=True)
        left = []
        for line in result.stdout.splitlines():
            fields = line.split(None, 2)
            if len(fields) == 3 and fields[1] == str(self.pgid):
                left.append(line.strip())
        return left

    def wait_group_gone(self, timeout: float = 10.0) -> List[str]:
        """Wait until no process of the group is left; return those still there."""
        deadline = time.monotonic() + timeout
        while self.group_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.group_alive()

    def kill_group(self) -> None:
        """SIGKILL whatever is left of the group (test clean-up)."""
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)

    def close(self) -> None:
        """Kill anything left, close and remove the log (assertion messages quote it)."""
        if self.process.poll() is None or self.group_alive():
            self.kill_group()
        self._log.close()
        self.log_path.unlink(missing_ok=True)
