"""
Shared by test/ and training/test: the CamVid path and the ``integration`` marker's guard.

A test that starts a process (a node, the ros2 CLI, launch, a bag tool as a
subprocess, torchrun, a multiprocessing worker ...) carries
``@pytest.mark.integration`` (``make test-fast`` deselects them). The guard
below makes the marker hard to forget: while an unmarked test runs (its
set-up, call and teardown, so module-scoped fixtures count too), every way
Python starts a process raises, and the test fails naming the marker and the
caller. Short helper processes that libraries start on their own (below, in
``INCIDENTAL``, each with its reason) are let through: they are not what the
test is about and are short (milliseconds; the style check, seconds).
"""

import _posixsubprocess
import os
from pathlib import Path
import subprocess
import sysconfig
import traceback
from typing import List

import pytest

REPO_ROOT = Path(__file__).resolve().parent
#: Where processes are started: the function (owner, attribute) each start goes through.
_PROCESS_STARTS = (
    (subprocess.Popen, '_execute_child'),  # subprocess.run / Popen / check_output, asyncio
    (_posixsubprocess, 'fork_exec'),  # multiprocessing's spawn and forkserver
    (os, 'fork'),  # multiprocessing's fork, os.spawn*, pty.fork
    (os, 'forkpty'),
    (os, 'posix_spawn'),
    (os, 'posix_spawnp'),
    (os, 'system'),
)
#: Callers (a path fragment of a frame on the stack) whose process starts are incidental.
INCIDENTAL = (
    # git rev-parse / status for the run record's source commit (milliseconds).
    'enet_training/records.py',
    # ament_flake8, run in a process of its own (see test/test_flake8.py for why); seconds.
    'test/test_flake8.py',
    # torch.compile's C++ compiler and compile workers.
    'torch/_inductor/',
    # OpenVINO's usage statistics, sent from a forked process (offline here: it fails quietly).
    'openvino_telemetry/',
)


def _started_from() -> str:
    """Return the innermost three calls outside the standard library: who starts the process."""
    stdlib = sysconfig.get_paths()['stdlib']
    frames = [f for f in traceback.extract_stack()[:-2]
              if not f.filename.startswith(stdlib) and f.filename != __file__]
    return ' <- '.join(f'{Path(f.filename).name}:{f.lineno} {f.name}' for f in frames[:-4:-1])


def _refuse(item: pytest.Item, started: List[str], name: str, start):
    def refused(*args, **kwargs):
        if any(part in frame.filename for frame in traceback.extract_stack()
               for part in INCIDENTAL):
            return start(*args, **kwargs)
        started.append(f'{name} from {_started_from()}')
        pytest.fail(f'{item.nodeid} starts a process ({started[-1]}) but is not marked '
                    'integration: add @pytest.mark.integration (or pytestmark in the module)',
                    pytrace=False)
    return refused


def _guarded(item: pytest.Item):
    """Run one phase of ``item``; refuse process starts there unless it is an integration test."""
    if item.get_closest_marker('integration') is not None:
        yield
        return
    started: List[str] = []
    with pytest.MonkeyPatch.context() as patch:
        for owner, name in _PROCESS_STARTS:
            if hasattr(owner, name):
                start = getattr(owner, name)
                patch.setattr(owner, name,
                              _refuse(item, started, f'{owner.__name__}.{name}', start))
        outcome = yield
    if started and outcome.excinfo is None:
        # The refusal was caught by the code under test (or raised in another thread).
        outcome.force_exception(pytest.fail.Exception(
            f'{item.nodeid} started a process ({", ".join(started)}) but is not marked '
            'integration', pytrace=False))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    """Guard the set-up (fixtures of any scope are built here)."""
    yield from _guarded(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """Guard the test itself."""
    yield from _guarded(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """Guard the teardown."""
    yield from _guarded(item)


@pytest.fixture(scope='session')
def camvid_root() -> Path:
    """Return the CamVid folder (ENET_ROS_CAMVID or ../shared/data/camvid); skip if absent."""
    root = Path(os.environ.get('ENET_ROS_CAMVID', REPO_ROOT.parent / 'shared' / 'data' / 'camvid'))
    if not (root / 'val').is_dir():
        pytest.skip(f'CamVid data not found at {root} (set ENET_ROS_CAMVID)')
    return root
