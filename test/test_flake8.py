"""ament_flake8 (ROS 2 style: 99 columns, single quotes, google import order) as a test."""

from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ['enet_ros', 'launch', 'test', 'training', 'bench', 'scripts', 'setup.py', 'conftest.py']
#: ament_flake8's own entry point, run as its console script would run it.
RUN_AMENT_FLAKE8 = 'import sys; from ament_flake8.main import main; sys.exit(main(sys.argv[1:]))'


def ament_flake8(paths: list) -> subprocess.CompletedProcess:
    """
    Run ament_flake8 on ``paths`` in a process of its own; return the finished process.

    Not in the test process: flake8 forks a pool of workers, and a fork of this process,
    which earlier tests leave holding ROS contexts and DDS threads, can crash when its
    garbage collector frees them; the pool then waits for the dead worker for ever.
    """
    return subprocess.run([sys.executable, '-c', RUN_AMENT_FLAKE8, *paths],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8():
    """The package, launch files, tests, training and benchmarks pass ament_flake8."""
    result = ament_flake8([str(ROOT / p) for p in CHECKED if (ROOT / p).exists()])
    assert result.returncode == 0, f'{result.stdout[-20000:]}\n{result.stderr[-4000:]}'


def test_ament_flake8_reports_a_style_error(tmp_path):
    """The runner fails on a file with errors and prints them (so the test above can fail)."""
    bad = tmp_path / 'bad.py'
    bad.write_text('x = "double quotes"\n')
    result = ament_flake8([str(bad)])
    assert result.returncode != 0
    assert 'Q000' in result.stdout and 'bad.py:1' in result.stdout, result.stdout
