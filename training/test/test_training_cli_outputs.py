"""``enet-train evaluate --json``: the path checked before the work, the table before the file."""

import json
import os
from pathlib import Path
import resource
import subprocess
import sys

from enet_ros.labels import CAMVID_11
from enet_ros.model import ENet
from enet_ros.model_file import ModelMetadata, save_model_file
from enet_training.cli import EXIT_OUTPUT_FAILED, main
import pytest
from tiny_datasets import make_camvid_tree, TINY_SIZE
import torch


@pytest.fixture(scope='module')
def tree(tmp_path_factory) -> Path:
    """Build a tiny CamVid tree with 2 val images of 64x48."""
    return make_camvid_tree(tmp_path_factory.mktemp('data') / 'camvid', {'val': 2})


@pytest.fixture(scope='module')
def model(tmp_path_factory) -> Path:
    """Write a random CamVid model file with a 64x48 input."""
    torch.manual_seed(0)
    metadata = ModelMetadata.from_class_table(CAMVID_11, TINY_SIZE)
    return save_model_file(tmp_path_factory.mktemp('model') / 'm.safetensors',
                           ENet(CAMVID_11.num_classes).eval(), metadata)


def _argv(model: Path, tree: Path, json_path: Path) -> list:
    return ['evaluate', '--model', str(model), '--data', str(tree), '--split', 'val',
            '--device', 'cpu', '--precision', 'fp32', '--json', str(json_path)]


def test_json_path_that_cannot_be_written_is_refused_before_the_work(tmp_path, tree, model,
                                                                     capsys):
    """--json under a file, or naming a folder: exit 2, one line naming it, no table."""
    afile = tmp_path / 'afile'
    afile.write_text('a file')
    for path in (afile / 'x.json', tmp_path):
        assert main(_argv(model, tree, path)) == 2
        captured = capsys.readouterr()
        assert captured.out == ''  # refused before the evaluation
        assert captured.err.count('\n') == 1 and f"--json '{path}'" in captured.err


@pytest.mark.integration
def test_json_that_cannot_be_written_comes_after_the_table(tmp_path, tree, model):
    """The write fails (files limited to 64 bytes: EFBIG): table printed, one line, exit 3."""
    json_path = tmp_path / 'scores.json'

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))

    result = subprocess.run(
        [sys.executable, '-m', 'enet_training.cli', *_argv(model, tree, json_path)],
        env=dict(os.environ, OMP_NUM_THREADS='1', ENET_ROS_COMPILE='0'), capture_output=True,
        text=True, timeout=300, preexec_fn=limit)
    assert result.returncode == EXIT_OUTPUT_FAILED, result.stdout + result.stderr
    assert 'mIoU' in result.stdout and 'val: 2 images' in result.stdout
    assert 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"enet-train: error: --json '{json_path}' could not be written: File too large")
    assert not json_path.exists()
    # Without the limit the same command writes the scores.
    assert main(_argv(model, tree, json_path)) == 0
    assert 'mean_iou' in json.loads(json_path.read_text())
