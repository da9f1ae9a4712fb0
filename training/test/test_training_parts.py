"""The parts of train.py's split: checkpoint helpers, lr schedule, evaluate, one epoch."""

import argparse
from pathlib import Path

from enet_ros.labels import CAMVID_11
from enet_ros.model_file import LoadedModel, ModelMetadata
from enet_ros.segmenter import normalization_constants, Segmenter
from enet_training.checkpoint import (CHECKPOINT_NAME, load_checkpoint, resume_path,
                                      save_checkpoint, TrainingState)
from enet_training.datasets import make_dataset
from enet_training.distributed import RunLog
from enet_training.evaluate import evaluate_segmenter
from enet_training.model import TrainingModel
from enet_training.run_setup import lr_factor, StepOptions
from enet_training.train import evaluate, Progress, train_one_epoch
from enet_training.transforms import collate
import numpy as np
import pytest
from tiny_datasets import make_camvid_tree
import torch
from torch import nn
from torch.utils.data import DataLoader


def test_resume_path(tmp_path: Path):
    """'' and 'auto' without a checkpoint start afresh; a missing named file is an error."""
    assert resume_path('', tmp_path) is None
    assert resume_path('auto', tmp_path) is None
    (tmp_path / CHECKPOINT_NAME).write_bytes(b'')
    assert resume_path('auto', tmp_path) == tmp_path / CHECKPOINT_NAME
    assert resume_path(str(tmp_path / CHECKPOINT_NAME), tmp_path) == tmp_path / CHECKPOINT_NAME
    with pytest.raises(SystemExit, match='no such checkpoint'):
        resume_path(str(tmp_path / 'none.pth'), tmp_path)


@pytest.mark.slow
def test_checkpoint_round_trip(tmp_path: Path):
    """save_checkpoint then load_checkpoint restores weights, optimizer and state."""
    torch.manual_seed(0)
    model = TrainingModel(CAMVID_11.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.5 ** e)
    scaler = torch.amp.GradScaler('cuda', enabled=False)
    optimizer.step()  # no gradients: changes nothing, but comes before the scheduler's step
    scheduler.step()
    state = TrainingState(4, 0.25, [{'epoch': 4, 'loss': 1.0}])
    path = tmp_path / CHECKPOINT_NAME
    args = argparse.Namespace(data=tmp_path, scale=(1.0, 1.0), func=print)
    save_checkpoint(path, model, optimizer, scheduler, scaler, state, args)
    assert not list(tmp_path.glob('*.tmp'))
    assert torch.load(path, weights_only=True)['args'] == {'data': str(tmp_path),
                                                           'scale': [1.0, 1.0]}
    torch.manual_seed(1)
    other = TrainingModel(CAMVID_11.num_classes)
    other_optimizer = torch.optim.Adam(other.parameters(), lr=1e-3)
    other_scheduler = torch.optim.lr_scheduler.LambdaLR(other_optimizer, lambda e: 0.5 ** e)
    loaded = load_checkpoint(path, other, other_optimizer, other_scheduler, scaler)
    assert loaded == state
    assert other_optimizer.param_groups[0]['lr'] == pytest.approx(5e-4)
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key


def test_amp_resumes_a_checkpoint_trained_without_it(tmp_path: Path):
    """A CPU (AMP off) checkpoint resumed with AMP on: the loss scale starts afresh, logged."""
    model = TrainingModel(CAMVID_11.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0)
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, model, optimizer, scheduler, torch.amp.GradScaler('cpu', enabled=False),
                    TrainingState(3, 0.5, []), argparse.Namespace())
    enabled = torch.amp.GradScaler('cpu', enabled=True, init_scale=1024.0)
    logged = []
    loaded = load_checkpoint(path, model, optimizer, scheduler, enabled, log=logged.append)
    assert loaded.epoch == 3
    assert enabled.get_scale() == 1024.0
    assert len(logged) == 1 and 'without AMP' in logged[0]
    save_checkpoint(path, model, optimizer, scheduler, enabled, TrainingState(4, 0.5, []),
                    argparse.Namespace())
    assert load_checkpoint(path, model, optimizer, scheduler,
                           torch.amp.GradScaler('cpu', enabled=False)).epoch == 4


def test_lr_factor():
    """step: x gamma every lr-step epochs; poly: (1 - t)^0.9; none: 1."""
    args = argparse.Namespace(lr_schedule='step', lr_gamma=0.1, lr_step=100, epochs=300)
    assert [lr_factor(args, e) for e in (0, 99, 100, 250)] == pytest.approx([1, 1, 0.1, 0.01])
    args.lr_schedule = 'poly'
    assert lr_factor(args, 150) == pytest.approx(0.5 ** 0.9)
    args.lr_schedule = 'none'
    assert lr_factor(args, 299) == 1.0


@pytest.mark.slow
def test_train_one_epoch_and_evaluate(tmp_path: Path, capsys):
    """One epoch stops at the iteration limit and logs each step; evaluate is the Segmenter's."""
    root = make_camvid_tree(tmp_path / 'camvid', {'train': 4, 'val': 1})
    dataset = make_dataset('camvid', root, 'train')
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate)
    torch.manual_seed(0)
    model = TrainingModel(CAMVID_11.num_classes)
    metadata = ModelMetadata.from_class_table(CAMVID_11, (64, 48))
    device = torch.device('cpu')
    mean, inv_std = normalization_constants(metadata, device)
    options = StepOptions(device, False, torch.contiguous_format, mean, inv_std, iterations=1)
    progress = Progress(RunLog(tmp_path / 'log'), 1, 0, 1, 1, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = train_one_epoch(model, nn.CrossEntropyLoss(ignore_index=11), optimizer,
                           torch.amp.GradScaler('cuda', enabled=False), loader, 0, options,
                           progress)
    assert np.isfinite(loss) and progress.images == 2
    assert (tmp_path / 'log').read_text().startswith(f'epoch 1/1 step 1/1 loss {loss:.4f} ')
    assert capsys.readouterr().out.startswith('epoch 1/1 step 1/1')
    weights = {k: v.detach().clone() for k, v in model.enet.state_dict().items()}
    val = make_dataset('camvid', root, 'val')
    scores = evaluate(weights, metadata, val, device)
    expected = evaluate_segmenter(Segmenter(LoadedModel('x', metadata, weights), device='cpu',
                                            precision='fp32', warmup=False), val)
    assert scores.pixels == expected.pixels == 48 * 62
    np.testing.assert_array_equal(scores.iou, expected.iou)
    assert scores.global_accuracy == expected.global_accuracy
