"""Fixtures for the training package's tests: one thread (markers, CamVid: ../../conftest.py)."""

from pathlib import Path
import sys

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """Use one intra-op thread: tiny tensors run fastest so, above all on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
