"""
``torchrun --nproc-per-node 2`` on the CPU (gloo): shards, equality with one process, resume.

A real torchrun of ``enet_training.cli train`` on a tiny VOC tree (8 train
frames of 32x24, batch 2 per process, 2 steps an epoch): epochs 1-2 (the
encoder frozen in epoch 1, so DistributedDataParallel is rebuilt when it
thaws), then ``--resume auto`` for epoch 3, both on 2 processes. It is
compared with one process training the same 3 epochs with batch 4 (the same
global batch) and the same seed.

Made equal by construction: the ranks cut their batches from one shared
order (the one process's order), and the class-weighted loss is normalised
over the global batch. Not shared between ranks on the CPU: BatchNorm batch
statistics (SyncBatchNorm needs CUDA) and dropout draws, so both runs use
``--freeze-bn --no-dropout``: each frame's forward is then its own, and what
is left is float rounding (gradients summed across ranks, in another order).
Tolerances: step losses relative 1e-5, every weight within 1e-5.
"""

import json
import os
from pathlib import Path
import re
import subprocess
import sys
from typing import Dict, List

from enet_training.cli import main
import pytest
from tiny_datasets import make_voc_tree
import torch

pytestmark = pytest.mark.integration

SIZE = (32, 24)
COMMON = ['--dataset', 'voc', '--input-size', '32', '24', '--workers', '0', '--device', 'cpu',
          '--scale', '1', '1', '--no-flip', '--freeze-bn', '--no-dropout', '--seed', '3',
          '--lr', '2e-3', '--log-interval', '1', '--log-shards', '--progress', 'off',
          '--freeze-encoder-epochs', '1']
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5
STEP_LINE = re.compile(r'^epoch (\d+)/\d+ step (\d+)/\d+ loss (\S+) ')


def _step_losses(out: Path) -> Dict[tuple, str]:
    """Return {(epoch, step): loss as logged} from a run's train.log."""
    losses = {}
    for line in (out / 'train.log').read_text().splitlines():
        match = STEP_LINE.match(line)
        if match:
            losses[int(match.group(1)), int(match.group(2))] = match.group(3)
    return losses


def _torchrun(data: Path, out: Path, logs: Path, *extra: str) -> None:
    """Run ``torchrun --standalone --nproc-per-node 2 -m enet_training.cli train ...``."""
    env = dict(os.environ, ENET_ROS_COMPILE='0')
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone',
               '--nproc-per-node', '2', '--redirects', '3', '--log-dir', str(logs),
               '-m', 'enet_training.cli', 'train', '--data', str(data), '--out', str(out),
               '--batch-size', '2', *COMMON, *extra]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _rank_output(logs: Path, rank: int) -> str:
    """Return what ``rank`` printed over all torchrun launches logged under ``logs``."""
    files = sorted(logs.glob(f'**/attempt_*/{rank}/stdout.log'))
    assert files, list(logs.rglob('*'))
    return ''.join(path.read_text() for path in files)


def _shards(out: Path) -> Dict[int, List[List[int]]]:
    """Return {epoch: [frame indices of rank 0, of rank 1, ...]} from train.log."""
    shards = {}
    for line in (out / 'train.log').read_text().splitlines():
        if ' shards: ' in line:
            head, lists = line.split(' shards: ')
            shards[int(head.split()[1])] = json.loads(lists)
    return shards


def _checkpoint(out: Path) -> dict:
    return torch.load(out / 'checkpoint.pth', map_location='cpu', weights_only=True)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """Two-process run (epochs 1-2, then resumed to 3) and the one-process run with batch 4."""
    root = tmp_path_factory.mktemp('torchrun')
    data = make_voc_tree(root / 'data', {'train': 8, 'val': 2}, size=SIZE)
    two, logs = root / 'two', root / 'logs'
    _torchrun(data, two, logs, '--epochs', '2')
    _torchrun(data, two, logs, '--epochs', '3', '--resume', 'auto')
    one = root / 'one'
    before = os.environ.get('ENET_ROS_COMPILE')
    os.environ['ENET_ROS_COMPILE'] = '0'
    try:
        assert main(['train', '--data', str(data), '--out', str(one), '--batch-size', '4',
                     '--epochs', '3', *COMMON]) == 0
    finally:
        if before is None:
            os.environ.pop('ENET_ROS_COMPILE')
        else:
            os.environ['ENET_ROS_COMPILE'] = before
    return two, one, logs


def test_ranks_train_on_disjoint_shards_of_the_one_process_order(runs):
    """Each epoch the two ranks take disjoint halves of every global batch of one order."""
    two, one, _ = runs
    shards, single = _shards(two), _shards(one)
    assert sorted(shards) == [1, 2, 3] and sorted(single) == [1, 2, 3]
    for epoch in (1, 2, 3):
        rank0, rank1 = shards[epoch]
        assert len(rank0) == len(rank1) == 4
        assert not set(rank0) & set(rank1)
        assert sorted(rank0 + rank1) == list(range(8))
        order = single[epoch][0]
        for step in range(2):  # global batch k = rank 0's k-th batch + rank 1's k-th batch
            assert rank0[2 * step:2 * step + 2] + rank1[2 * step:2 * step + 2] == \
                order[4 * step:4 * step + 4]
    assert shards[1] != shards[2]  # a new order each epoch


def test_losses_and_weights_equal_one_process_with_the_global_batch(runs):
    """Step losses, epoch losses, val mIoU and the final weights equal the one-process run's."""
    two, one, _ = runs
    steps_two, steps_one = _step_losses(two), _step_losses(one)
    assert sorted(steps_two) == sorted(steps_one) == [(e, s) for e in (1, 2, 3) for s in (1, 2)]
    for key in steps_one:
        assert float(steps_two[key]) == pytest.approx(float(steps_one[key]), rel=LOSS_RTOL,
                                                      abs=1e-4)  # logged with 4 decimals
    history_two, history_one = _checkpoint(two)['history'], _checkpoint(one)['history']
    for a, b in zip(history_two, history_one):
        assert a['loss'] == pytest.approx(b['loss'], rel=LOSS_RTOL)
        assert a['val_miou'] == pytest.approx(b['val_miou'], abs=1e-6)
    model_two, model_one = _checkpoint(two)['model'], _checkpoint(one)['model']
    assert model_two.keys() == model_one.keys()
    worst = max(float((model_two[k].float() - model_one[k].float()).abs().max())
                for k in model_one if model_one[k].is_floating_point())
    assert worst <= WEIGHT_ATOL, worst
    # The weights did move: the comparison is not of two untouched initialisations.
    from enet_training.model import TrainingModel
    from enet_training.run_setup import seed_everything
    seed_everything(3)
    initial = TrainingModel(3).state_dict()
    assert float((model_one['enet.fullconv.weight'] - initial['enet.fullconv.weight'])
                 .abs().max()) > 100 * WEIGHT_ATOL


def test_only_rank_0_logs_and_writes(runs):
    """Rank 1 prints nothing; the log, metrics and run record hold each start and epoch once."""
    two, _, logs = runs
    assert _rank_output(logs, 1).strip() == ''
    assert 'validation after epoch 3' in _rank_output(logs, 0)
    log = (two / 'train.log').read_text()
    assert log.count('training on 8 frames') == 2  # two launches, one writer each
    assert log.count('validation after epoch 1') == 1
    assert log.count('normalised over the global batch of the 2 processes') == 2
    assert log.count('epoch 1: encoder frozen') == log.count('epoch 2: encoder thawed') == 1
    metrics = (two / 'metrics.csv').read_text().splitlines()
    assert [row.split(',')[0] for row in metrics] == ['epoch', '1', '2', '3']
    record = json.loads((two / 'run.json').read_text())
    assert [start['processes'] for start in record['starts']] == [2, 2]
    assert record['starts'][1]['resumed_from'] == str(two / 'checkpoint.pth')
    events = list((two / 'tensorboard').glob('events.out.tfevents.*'))
    assert len(events) in (0, 2)  # none without tensorboard installed; else one per launch
    assert sorted(p.name for p in two.iterdir() if p.suffix in ('.pth', '.safetensors')) == \
        ['best.safetensors', 'checkpoint.pth']


def test_resume_continues_the_two_process_run(runs):
    """The resumed launch starts at epoch 3 from the checkpoint and finishes the run."""
    two, _, _ = runs
    log = (two / 'train.log').read_text()
    assert f"resumed from {two / 'checkpoint.pth'} at epoch 2" in log
    assert [record['epoch'] for record in _checkpoint(two)['history']] == [1, 2, 3]
    assert _checkpoint(two)['epoch'] == 3
    assert _checkpoint(two)['args']['resume'] == 'auto'
