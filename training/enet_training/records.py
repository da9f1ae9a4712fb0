"""
What a run folder says about the run: how it was made (``run.json``) and its metrics.

``run.json`` (rank 0, rewritten at every start): the arguments, the command
line, the versions of Python and the libraries (and the enet_ros git commit
when it runs from a checkout), the processes and device, and the data: the
dataset, its root, the frames per split, the class table and a fingerprint
(:func:`enet_ros.dataset_layouts.fingerprint`). Each start (a fresh run or a
resume) is appended to ``starts``.

Metrics (rank 0): ``metrics.csv``, one row per epoch (loss, learning rate,
seconds, images per second, val mIoU and per-class IoU), and TensorBoard
event files under ``tensorboard/`` (``tensorboard --logdir runs``) when the
``tensorboard`` package is installed: the step loss, and per epoch the same
as the CSV (``--tensorboard off`` writes none, ``on`` requires it).
"""

import argparse
import csv
import datetime
import importlib.metadata
import json
import math
import os
from pathlib import Path
import platform
import socket
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence

from enet_ros.dataset_layouts import fingerprint
import torch

from .checkpoint import plain_args
from .datasets import SegmentationDataset

RUN_RECORD = 'run.json'
METRICS_CSV = 'metrics.csv'
TENSORBOARD_DIR = 'tensorboard'
PACKAGES = ('torch', 'numpy', 'opencv-python-headless', 'safetensors', 'enet_ros',
            'enet_training', 'tensorboard', 'onnx', 'onnxruntime')


def package_versions() -> Dict[str, Optional[str]]:
    """Return {package: installed version or None} for Python and the libraries a run uses."""
    versions: Dict[str, Optional[str]] = {'python': platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def source_commit() -> Optional[str]:
    """Return the git commit of the enet_ros source (``+dirty`` with local changes), or None."""
    import enet_ros

    folder = Path(enet_ros.__file__).resolve().parent
    try:
        commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=folder, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode:
            return None
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'],
                               cwd=folder, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip() + ('+dirty' if dirty.stdout.strip() else '')


def data_fingerprint(train_set: SegmentationDataset, val_set: SegmentationDataset,
                     root: Path, train_split: str, val_split: str) -> str:
    """Fingerprint of the class table, the label mapping and the split's files (paths, sizes)."""
    table = train_set.table
    key = json.dumps([table.dataset, list(table.names), [list(c) for c in table.colors],
                      table.void_id, train_set.cache_key])
    return fingerprint(Path(root), key, {f'train:{train_split}': train_set.pairs,
                                         f'val:{val_split}': val_set.pairs})


def write_run_record(out: Path, args: argparse.Namespace, data: Dict[str, Any],
                     world_size: int, device: torch.device, resumed_from: Optional[Path],
                     argv: Optional[Sequence[str]] = None) -> Path:
    """Write (or update) ``<out>/run.json``; see the module docstring."""
    path = Path(out) / RUN_RECORD
    starts: List[Dict[str, Any]] = []
    if path.exists():
        try:
            starts = list(json.loads(path.read_text()).get('starts', []))
        except (ValueError, AttributeError):
            starts = []
    starts.append({'time': datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec='seconds'), 'argv': list(sys.argv if argv is None else argv),
        'resumed_from': None if resumed_from is None else str(resumed_from),
        'host': socket.gethostname(), 'processes': world_size, 'device': str(device)})
    record = {'args': plain_args(args), 'data': data, 'versions': package_versions(),
              'enet_ros_commit': source_commit(),
              'machine': {'platform': platform.platform(), 'cpu_count': os.cpu_count(),
                          'torch_threads': torch.get_num_threads(),
                          'cuda': torch.cuda.get_device_name(device)
                          if device.type == 'cuda' else None},
              'starts': starts}
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(record, indent=2) + '\n')
    os.replace(tmp, path)
    return path


def tensorboard_writer(choice: str, folder: Path):
    """Return a ``SummaryWriter`` for ``--tensorboard`` (auto: if installed), or None."""
    if choice == 'off':
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if choice == 'on':
            raise SystemExit('--tensorboard on: the tensorboard package is not installed '
                             '(pip install tensorboard)') from None
        return None
    return SummaryWriter(str(folder))


def _number(value: Any) -> Optional[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


class MetricsWriter:
    """Per-epoch metrics to ``metrics.csv`` and TensorBoard; silent when ``out`` is None."""

    def __init__(self, out: Optional[Path], class_names: Sequence[str], tensorboard: str,
                 steps_per_epoch: int):
        self.out = out
        self.class_names = list(class_names)
        self.steps_per_epoch = steps_per_epoch
        self.columns = ['epoch', 'stage', 'loss', 'lr', 'seconds', 'images_per_second',
                        'val_miou'] + [f'iou_{name}' for name in self.class_names]
        self.writer = None if out is None else tensorboard_writer(tensorboard,
                                                                  out / TENSORBOARD_DIR)

    def step(self, epoch: int, step: int, loss: float) -> None:
        """Record one step's loss (TensorBoard only)."""
        if self.writer is not None:
            self.writer.add_scalar('train/step_loss', loss, epoch * self.steps_per_epoch + step)

    def epoch(self, record: Dict[str, Any], lr: float, images: int,
              class_iou: Optional[Sequence[float]] = None) -> None:
        """Append the epoch's row (``record`` as in the checkpoint history) and its scalars."""
        if self.out is None:
            return
        seconds = record.get('seconds') or 0.0
        row: Dict[str, Any] = {'epoch': record['epoch'], 'stage': record.get('stage', 'full'),
                               'loss': record.get('loss'), 'lr': lr, 'seconds': seconds,
                               'images_per_second': (round(images / seconds, 2) if seconds
                                                     else None),
                               'val_miou': record.get('val_miou')}
        for name, iou in zip(self.class_names, class_iou or ()):
            row[f'iou_{name}'] = iou
        path = self.out / METRICS_CSV
        new = not path.exists()
        with open(path, 'a', newline='') as stream:
            writer = csv.DictWriter(stream, fieldnames=self.columns)
            if new:
                writer.writeheader()
            writer.writerow({key: ('' if _number(v) is None and not isinstance(v, str) else v)
                             for key, v in row.items()})
        if self.writer is None:
            return
        epoch = record['epoch']
        for key in ('loss', 'lr', 'seconds', 'images_per_second', 'val_miou'):
            value = _number(row.get(key))
            if value is not None:
                group = 'val' if key == 'val_miou' else 'train'
                self.writer.add_scalar(f'{group}/{key}', value, epoch)
        for name, iou in zip(self.class_names, class_iou or ()):
            if _number(iou) is not None:
                self.writer.add_scalar(f'val_iou/{name}', iou, epoch)
        for name, miou in (record.get('holdout_miou') or {}).items():
            if _number(miou) is not None:
                self.writer.add_scalar(f'val/{name}', miou, epoch)
        self.writer.flush()

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self.writer is not None:
            self.writer.close()
