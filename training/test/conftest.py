"""Fixtures for the training package's tests: markers, one thread, the CamVid path."""

import os
from pathlib import Path
import sys

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_configure(config):
    """Register markers (also when this folder runs without the core's tests)."""
    config.addinivalue_line('markers', 'slow: takes more than a few seconds on the CPU')
    config.addinivalue_line('markers', 'gpu: needs CUDA; skipped without it')


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """Use one intra-op thread: tiny tensors run fastest so, above all on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope='session')
def camvid_root() -> Path:
    """Return the CamVid folder (ENET_ROS_CAMVID or ../shared/data/camvid); skip if absent."""
    root = Path(os.environ.get('ENET_ROS_CAMVID', REPO_ROOT.parent / 'shared' / 'data' / 'camvid'))
    if not (root / 'val').is_dir():
        pytest.skip(f'CamVid data not found at {root} (set ENET_ROS_CAMVID)')
    return root
