"""ament_pep257 (docstring conventions as ROS 2 applies them) as a test."""

from pathlib import Path

from ament_pep257.main import main
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ['enet_ros', 'launch', 'test', 'training', 'bench', 'scripts', 'setup.py', 'conftest.py']


@pytest.mark.linter
@pytest.mark.pep257
def test_pep257():
    """The package, launch files, tests, training and benchmarks pass ament_pep257."""
    paths = [str(ROOT / p) for p in CHECKED if (ROOT / p).exists()]
    assert main(argv=paths) == 0, 'Found code style errors / warnings'
