"""
Checkpoint (save, resume) and best model file of a training run.

``checkpoint.pth`` is torchvision's dict (model, optimizer, lr_scheduler,
epoch, args as plain data) plus the AMP scaler, the best val mIoU, the
per-epoch history and, with ``--ema``, the weight average (``ema``: the
state of its ``AveragedModel``). It is written atomically every epoch and read with
``weights_only=True`` (tensors and plain data: nothing in the file runs).
``best.safetensors`` is a model file the node loads, with its val scores.
"""

import argparse
from dataclasses import dataclass, field
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from enet_ros.labels import ClassTable
from enet_ros.metrics import Scores
from enet_ros.model_file import ModelMetadata, save_model_file
import torch
from torch import nn

from .datasets import seen_splits

CHECKPOINT_NAME = 'checkpoint.pth'
BEST_MODEL_NAME = 'best.safetensors'


@dataclass
class TrainingState:
    """What a run carries across epochs (and resumes): epochs done, best val mIoU, records."""

    epoch: int = 0
    best_miou: float = -1.0
    history: List[Dict[str, Any]] = field(default_factory=list)


def plain_args(args: argparse.Namespace) -> Dict[str, Any]:
    """Return the arguments as plain data (paths as strings, tuples as lists)."""
    return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in vars(args).items() if k != 'func'}


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves half a file."""
    tmp = path.with_name(path.name + '.tmp')
    torch.save(obj, tmp)
    os.replace(tmp, path)


def resume_path(resume: str, out: Path) -> Optional[Path]:
    """
    Resolve ``--resume``: a checkpoint file, 'auto' or '' (a fresh start).

    'auto' is ``<out>/checkpoint.pth`` if it exists, else a fresh start; a
    named file that does not exist is an error, not a fresh start.
    """
    if resume == 'auto':
        return out / CHECKPOINT_NAME if (out / CHECKPOINT_NAME).exists() else None
    if not resume:
        return None
    if not Path(resume).is_file():
        raise SystemExit(f"--resume '{resume}': no such checkpoint file")
    return Path(resume)


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler,
                    scaler: torch.amp.GradScaler, state: TrainingState,
                    args: argparse.Namespace, ema: Optional[nn.Module] = None,
                    table: Optional[ClassTable] = None) -> None:
    """
    Write the checkpoint of ``state.epoch`` epochs atomically (with ``ema``'s state if any).

    ``table``, the classes trained, is kept as plain data (``class_table``) so
    that ``enet-train export`` of the checkpoint knows a dataset of your own's
    classes.
    """
    checkpoint = {'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                  'lr_scheduler': scheduler.state_dict(), 'scaler': scaler.state_dict(),
                  'epoch': state.epoch, 'best_miou': state.best_miou, 'history': state.history,
                  'args': plain_args(args)}
    if ema is not None:
        checkpoint['ema'] = ema.state_dict()
    if table is not None:
        checkpoint['class_table'] = table_record(table)
    atomic_save(checkpoint, path)


def table_record(table: ClassTable) -> Dict[str, Any]:
    """Return ``table`` as plain data (the checkpoint's ``class_table``)."""
    return {'dataset': table.dataset, 'names': list(table.names),
            'colors': [list(c) for c in table.colors], 'void_id': table.void_id,
            'drivable': list(table.drivable)}


def table_from_record(record: Dict[str, Any]) -> ClassTable:
    """Inverse of :func:`table_record`."""
    return ClassTable(str(record['dataset']), tuple(record['names']),
                      tuple(tuple(int(v) for v in c) for c in record['colors']),
                      record['void_id'], tuple(record['drivable']))


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler,
                    scaler: torch.amp.GradScaler, ema: Optional[nn.Module] = None,
                    log: Callable[[str], None] = print) -> TrainingState:
    """
    Load a checkpoint into the model, optimizer, scheduler and scaler; return its state.

    ``ema`` (the run's weight average, if on) gets the checkpoint's average;
    from a checkpoint without one it starts afresh from the next step's
    weights, which ``log`` reports. Likewise an enabled ``scaler`` (AMP on
    CUDA) resuming a run trained without AMP (on the CPU) starts afresh.
    """
    # weights_only: a checkpoint holds tensors and plain data, nothing that runs code.
    saved = torch.load(path, map_location='cpu', weights_only=True)
    model.load_state_dict(saved['model'])
    optimizer.load_state_dict(saved['optimizer'])
    scheduler.load_state_dict(saved['lr_scheduler'])
    if saved['scaler'] or not scaler.is_enabled():
        scaler.load_state_dict(saved['scaler'])  # a disabled scaler ignores it
    else:
        log(f'{path} was trained without AMP (no loss-scaler state): the loss scale starts '
            'afresh')
    if ema is not None:
        if 'ema' in saved:
            ema.load_state_dict(saved['ema'])
        else:
            log(f'{path} holds no weight average (trained without --ema): the average '
                'starts from the weights after the next step')
    return TrainingState(saved['epoch'], saved['best_miou'], saved['history'])


def checkpoint_enet_weights(saved: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """
    Return the ENet weights a loaded checkpoint dict stands for.

    Those of the weight average when the run kept one (``--ema``): the
    weights its validation scored; else the model's.
    """
    if 'ema' in saved:
        prefix, state = 'module.enet.', saved['ema']
    else:
        prefix, state = 'enet.', saved['model']
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def held_out_val_miou(val_miou: Optional[float], train_split: str, val_split: str
                      ) -> Tuple[Optional[float], Dict[str, Any]]:
    """
    Split a validation mIoU into the model file's ``val_miou`` and training-record keys.

    A model trained on its validation split too (``--train-split train+val``)
    has no held-out val score: ``val_miou`` is then None and the score on the
    seen split is recorded as ``seen_val_miou`` beside ``val_seen_in_training``.
    """
    seen = seen_splits(train_split, val_split)
    if val_miou is None or not math.isfinite(val_miou):
        return None, {'val_seen_in_training': seen} if seen else {}
    if seen:
        return None, {'val_seen_in_training': seen, 'seen_val_miou': round(val_miou, 6)}
    return round(val_miou, 6), {}


def save_best_model(path: Path, weights: Dict[str, torch.Tensor], table: ClassTable,
                    input_size: Tuple[int, int], scores: Scores, epoch: int,
                    args: argparse.Namespace,
                    extra: Optional[Dict[str, Any]] = None) -> None:
    """
    Write ENet ``weights`` as a model file recording the epoch, arguments and val scores.

    ``extra`` (plain data: per-sequence and held-out scores) joins the training record.
    """
    val_miou, seen = held_out_val_miou(scores.mean_iou, args.train_split, args.val_split)
    metadata = ModelMetadata.from_class_table(
        table, input_size, val_miou=val_miou,
        training={'epoch': epoch, 'args': plain_args(args), 'val': scores.as_dict(table.names),
                  **seen, **(extra or {})})
    save_model_file(path, weights, metadata)
