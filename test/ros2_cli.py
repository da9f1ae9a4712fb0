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
from typing import Callable, Dict, List, Optional, Tuple

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
    """
    Return ``base`` with this venv's tools first on PATH, as a sourced ROS install sets it.

    The venv stands in for ``/opt/ros/$ROS_DISTRO``, whose setup.bash also sets
    ``AMENT_PREFIX_PATH``: the ament index there is what ``ros2 interface`` and
    ``ros2 pkg`` read (the workspace's setup.bash adds its own prefix in front).
    """
    env = dict(base)
    env['PATH'] = f'{VENV_BIN}{os.pathsep}{env.get("PATH", "")}'
    env['VIRTUAL_ENV'] = str(VENV_BIN.parent)
    env.setdefault('AMENT_PREFIX_PATH', str(VENV_BIN.parent))
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


def start_daemon(workspace: Path, env: Dict[str, str]) -> None:
    """
    Start the ROS 2 daemon of ``env``'s domain as a terminal leaves it: running on its own.

    The daemon that any ``ros2`` command spawns stays in that command's process
    group, and :meth:`TerminalProcess.close` kills the group: every command would
    then meet a daemon started a moment ago, which has not discovered the node yet
    ("Node not found"). A user's daemon keeps running; stop it with ``ros2 daemon
    stop``.
    """
    result = subprocess.run(in_workspace(workspace, 'ros2 daemon start'), env=tool_env(env),
                            capture_output=True, text=True, timeout=60,
                            start_new_session=True)
    if result.returncode != 0:
        raise AssertionError(f'ros2 daemon start failed ({result.returncode}):\n'
                             f'{result.stdout}{result.stderr}')


def ros2(workspace: Path, env: Dict[str, str], arguments: str,
         timeout: float = 120.0) -> Tuple[int, str]:
    """Run ``ros2 <arguments>`` in the workspace's shell; return its exit code and output."""
    process = TerminalProcess(in_workspace(workspace, f'ros2 {arguments}'), env)
    try:
        return process.wait_exit(timeout), process.log()
    finally:
        process.close()


def ros2_until(workspace: Path, env: Dict[str, str], arguments: str, text: str,
               timeout: float = 60.0) -> str:
    """
    Run ``ros2 <arguments>`` again until its output has ``text``; return that output.

    As a user does when a command answers before the ROS 2 daemon, which the
    first ``ros2`` command in a domain starts, has discovered the node (``ros2
    lifecycle get`` then says "Node not found"): list it until it shows, then the
    other verbs find it too (see :func:`start_daemon`).
    """
    deadline = time.monotonic() + timeout
    while True:
        code, log = ros2(workspace, env, arguments)
        if code == 0 and text in log:
            return log
        if time.monotonic() > deadline:
            raise AssertionError(f'ros2 {arguments}: no {text!r} in {timeout:.0f} s; last '
                                 f'(exit {code}):\n{log}')
        time.sleep(1.0)


def ros2_on_node(workspace: Path, env: Dict[str, str], arguments: str,
                 timeout: float = 60.0) -> Tuple[int, str]:
    """
    Run ``ros2 <arguments>`` against a node, again while it answers "Node not found".

    Verbs such as ``ros2 param describe`` and ``ros2 lifecycle set`` first look the
    node up: through the daemon when it answers in time, else through a node of their
    own that listens for 0.5 s (ros2cli's ``NodeStrategy``). On a loaded machine both
    can miss a node that ``ros2 node list`` showed a moment before; the command then
    does nothing and exits 1, and a user runs it again. Any other answer is returned
    as it is, so a refusal or a wrong state still fails the test.
    """
    deadline = time.monotonic() + timeout
    while True:
        code, log = ros2(workspace, env, arguments)
        if code == 0 or 'Node not found' not in log or time.monotonic() > deadline:
            return code, log
        time.sleep(1.0)


def topic_hz(workspace: Path, env: Dict[str, str], topic: str, seconds: float,
             window: int = 30, start_timeout: float = 60.0,
             explain: Optional[Callable[[], str]] = None) -> float:
    """
    Run ``ros2 topic hz`` until it prints a rate, then ``seconds`` more; return the last average.

    The ``seconds`` count from its first rate, not from its start: on a loaded machine
    the command's own start (imports, discovery, the first two messages) can take longer
    than the measurement. It is stopped with Ctrl-C. ``explain`` adds its text (the
    publisher's log, say) to the failure when no rate comes in ``start_timeout`` s.
    """
    process = TerminalProcess(in_workspace(
        workspace, f'ros2 topic hz --window {window} {topic}'), env)
    try:
        try:
            process.wait_for_text('average rate:', start_timeout)
        except AssertionError as error:
            more = f'\n--- and:\n{explain()[-6000:]}' if explain else ''
            raise AssertionError(f'ros2 topic hz {topic}: {error}{more}') from None
        time.sleep(seconds)
        log = process.log()
    finally:
        process.press_ctrl_c(times=1)
        process.close()
    rates = [float(line.split(':')[1]) for line in log.splitlines()
             if line.startswith('average rate:')]
    return rates[-1]
