"""ament_flake8 (ROS 2 style: 99 columns, single quotes, google import order) as a test."""

from pathlib import Path

from ament_flake8.main import main_with_errors
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ['enet_ros', 'launch', 'test', 'training', 'bench', 'scripts', 'setup.py', 'conftest.py']


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8():
    """The package, launch files, tests, training and benchmarks pass ament_flake8."""
    paths = [str(ROOT / p) for p in CHECKED if (ROOT / p).exists()]
    rc, errors = main_with_errors(argv=paths)
    assert rc == 0, f'Found {len(errors)} code style errors / warnings:\n' + '\n'.join(errors)
