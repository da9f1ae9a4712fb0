"""
Train ENet: the paper's recipe by default, each part switchable by flags.

Run ``enet-train train --help``. Multi-GPU: ``torchrun --nproc-per-node N -m
enet_training.cli train ...`` (DistributedDataParallel; only rank 0 logs and
saves).
"""

import argparse
import json
import math
import os
from pathlib import Path
import random
import time
from typing import Any, Dict, Optional

from enet_ros.model import ENet
from enet_ros.model_file import LoadedModel, ModelMetadata, save_model_file
from enet_ros.segmenter import normalization_constants, normalize, Segmenter
import numpy as np
import torch
from torch import nn
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from .class_weights import cached_enet_weights
from .datasets import make_dataset
from .evaluate import evaluate_segmenter, format_scores
from .transforms import collate, TrainTransform

DEFAULT_INPUT_SIZE = {'camvid': (480, 360), 'cityscapes': (1024, 512)}
CHECKPOINT_NAME = 'checkpoint.pth'
BEST_MODEL_NAME = 'best.safetensors'


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the flags of ``enet-train train`` to ``parser`` and return it."""
    parser.add_argument('--data', required=True, type=Path, help='dataset root folder')
    parser.add_argument('--dataset', default='camvid', choices=('camvid', 'cityscapes'))
    parser.add_argument('--train-split', default='train')
    parser.add_argument('--val-split', default='val')
    parser.add_argument('--out', required=True, type=Path,
                        help='run folder: checkpoint, best model file, log')
    parser.add_argument('--epochs', type=int, default=300)
    parser.add_argument('--batch-size', type=int, default=10, help='per process')
    parser.add_argument('--lr', type=float, default=5e-4)
    parser.add_argument('--weight-decay', type=float, default=2e-4)
    parser.add_argument('--lr-schedule', choices=('step', 'poly', 'none'), default='step',
                        help='step: x lr-gamma every lr-step epochs (paper); poly: (1-t)^0.9')
    parser.add_argument('--lr-step', type=int, default=100)
    parser.add_argument('--lr-gamma', type=float, default=0.1)
    parser.add_argument('--class-weighting', choices=('enet', 'none'), default='enet',
                        help='enet: w = 1/ln(c + p) from the training labels')
    parser.add_argument('--weight-c', type=float, default=1.02)
    parser.add_argument('--encoder-epochs', type=int, default=0,
                        help='two-stage schedule: train the encoder alone against 1/8 labels '
                             'for this many epochs first (0: end-to-end only)')
    parser.add_argument('--crop', type=int, nargs=2, metavar=('WIDTH', 'HEIGHT'),
                        help='training crop; default the network input size')
    parser.add_argument('--input-size', type=int, nargs=2, metavar=('WIDTH', 'HEIGHT'),
                        help='network input size recorded in the model file')
    parser.add_argument('--scale', type=float, nargs=2, default=(0.75, 1.5),
                        metavar=('MIN', 'MAX'), help='random scale range (1 1: off)')
    parser.add_argument('--no-flip', action='store_true', help='no horizontal flips')
    parser.add_argument('--amp', choices=('auto', 'on', 'off'), default='auto',
                        help='fp16 mixed precision (auto: on for CUDA)')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:N')
    parser.add_argument('--memory-format', choices=('channels_last', 'contiguous'),
                        default='channels_last',
                        help='layout of weights and activations (channels_last: 12%% faster '
                             'per step on the 2-core CPU)')
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--deterministic', action='store_true',
                        help='deterministic algorithms where PyTorch has them')
    parser.add_argument('--resume', default='', help="checkpoint to resume, or 'auto' for "
                                                     '<out>/checkpoint.pth if present')
    parser.add_argument('--init', type=Path,
                        help='start from the weights of this model file (fine-tuning)')
    parser.add_argument('--log-interval', type=int, default=10, help='iterations per log line')
    parser.add_argument('--val-interval', type=int, default=1, help='epochs per validation')
    parser.add_argument('--max-iterations', type=int, default=0,
                        help='stop each epoch after this many iterations (tests, smoke runs)')
    return parser


class EncoderClassifier(nn.Module):
    """ENet's encoder with a 1x1 classifier, for the first stage of two-stage training."""

    def __init__(self, enet: ENet):
        super().__init__()
        self.enet = enet
        self.classifier = nn.Conv2d(128, enet.num_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Nx3xHxW to NxCx(H/8)x(W/8) logits (H, W multiples of 8)."""
        return self.classifier(self.enet.encode(x)[0])


class TrainingModel(nn.Module):
    """ENet plus the encoder head; ``forward(x, encoder_only)`` picks the stage."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.enet = ENet(num_classes)
        self.encoder_head = EncoderClassifier(self.enet)

    def forward(self, x: torch.Tensor, encoder_only: bool = False) -> torch.Tensor:
        """Logits at 1/8 resolution (encoder stage) or full resolution."""
        return self.encoder_head(x) if encoder_only else self.enet(x)


def _distributed() -> Dict[str, int]:
    return {'rank': int(os.environ.get('RANK', 0)),
            'world_size': int(os.environ.get('WORLD_SIZE', 1)),
            'local_rank': int(os.environ.get('LOCAL_RANK', 0))}


def _device(choice: str, local_rank: int) -> torch.device:
    if choice == 'auto':
        choice = 'cuda' if torch.cuda.is_available() else 'cpu'
    if choice == 'cuda':
        return torch.device('cuda', local_rank)
    return torch.device(choice)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _lr_factor(args: argparse.Namespace, epoch: int) -> float:
    if args.lr_schedule == 'step':
        return args.lr_gamma ** (epoch // args.lr_step)
    if args.lr_schedule == 'poly':
        return (1 - epoch / args.epochs) ** 0.9
    return 1.0


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + '.tmp')
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _plain_args(args: argparse.Namespace) -> Dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in vars(args).items() if k != 'func'}


def _log(message: str, log_file: Optional[Path]) -> None:
    print(message, flush=True)
    if log_file is not None:
        with open(log_file, 'a') as stream:
            stream.write(message + '\n')


def train(args: argparse.Namespace) -> Dict[str, Any]:
    """Run training as configured by :func:`add_train_arguments`; return the final history."""
    env = _distributed()
    is_main = env['rank'] == 0
    device = _device(args.device, env['local_rank'])
    if env['world_size'] > 1:
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    if device.type == 'cuda':
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = not args.deterministic
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    use_amp = device.type == 'cuda' and args.amp != 'off'
    if args.amp == 'on' and device.type != 'cuda':
        raise SystemExit('--amp on needs CUDA (fp16 autocast); the CPU trains in fp32')

    out: Path = args.out
    log_file = out / 'train.log' if is_main else None
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    input_size = tuple(args.input_size or DEFAULT_INPUT_SIZE[args.dataset])
    crop = tuple(args.crop or input_size)
    if any(v % 8 for v in (*input_size, *crop)):
        raise SystemExit(f'--input-size {input_size} and --crop {crop} must be multiples of 8')

    train_set = make_dataset(args.dataset, args.data, args.train_split)
    val_set = make_dataset(args.dataset, args.data, args.val_split)
    table = train_set.table
    train_set.transform = TrainTransform(crop, table.void_id, tuple(args.scale),
                                         flip=not args.no_flip)
    metadata = ModelMetadata.from_class_table(table, input_size)

    if args.class_weighting == 'enet':
        weights = cached_enet_weights(train_set, out, args.weight_c)
    else:
        weights = np.ones(table.num_classes)
    if is_main:
        _log('class weights: ' + ', '.join(f'{n} {w:.2f}' for n, w in zip(table.names, weights)),
             log_file)
    criterion = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32),
                                    ignore_index=table.void_id).to(device)

    # Seeded initial weights: two runs with one --seed start alike (and so resume alike).
    _seed_everything(args.seed)
    model = TrainingModel(table.num_classes)
    if args.init:
        from enet_ros.model_file import load_model_file
        model.enet.load_state_dict(load_model_file(args.init).state_dict)
    memory_format = (torch.channels_last if args.memory_format == 'channels_last'
                     else torch.contiguous_format)
    model.to(device, memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: _lr_factor(args, e))
    scaler = torch.amp.GradScaler('cuda', enabled=use_amp)
    start_epoch, best_miou, history = 0, -1.0, []

    resume = args.resume
    if resume == 'auto':
        resume = str(out / CHECKPOINT_NAME) if (out / CHECKPOINT_NAME).exists() else ''
    if resume:
        if not Path(resume).is_file():
            raise SystemExit(f"--resume '{resume}': no such checkpoint file")
        # weights_only: a checkpoint holds tensors and plain data, nothing that runs code.
        state = torch.load(resume, map_location='cpu', weights_only=True)
        model.load_state_dict(state['model'])
        optimizer.load_state_dict(state['optimizer'])
        scheduler.load_state_dict(state['lr_scheduler'])
        scaler.load_state_dict(state['scaler'])
        start_epoch, best_miou, history = state['epoch'], state['best_miou'], state['history']
        if is_main:
            _log(f'resumed from {resume} at epoch {start_epoch}', log_file)

    network = model
    if env['world_size'] > 1:
        network = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == 'cuda' else None,
            find_unused_parameters=True)
    mean, inv_std = normalization_constants(metadata, device)

    sampler_generator = torch.Generator()
    if env['world_size'] > 1:
        sampler = DistributedSampler(train_set, env['world_size'], env['rank'],
                                     shuffle=True, seed=args.seed)
    else:
        sampler = RandomSampler(train_set, generator=sampler_generator)
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler,
                        num_workers=args.workers, collate_fn=collate, drop_last=True,
                        pin_memory=device.type == 'cuda', persistent_workers=False,
                        worker_init_fn=_worker_init)
    if len(loader) == 0:
        raise SystemExit(f'the training split has {len(sampler)} images per process, fewer '
                         f'than --batch-size {args.batch_size} (batches are never partial)')
    iterations = min(len(loader), args.max_iterations) if args.max_iterations else len(loader)
    run_start = time.time()
    images_seen = 0
    for epoch in range(start_epoch, args.epochs):
        # Every random stream is re-seeded from (seed, epoch): a resumed run replays exactly.
        _seed_everything(args.seed * 100003 + epoch)
        sampler_generator.manual_seed(args.seed * 100003 + epoch)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        encoder_only = epoch < args.encoder_epochs
        network.train()
        epoch_loss, epoch_start = 0.0, time.time()
        for step, (images, labels) in enumerate(loader):
            if step >= iterations:
                break
            images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            labels = labels.to(device, non_blocking=True)
            if encoder_only:
                labels = labels[:, 4::8, 4::8]
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = network(normalize(images, mean, inv_std), encoder_only)
                loss = criterion(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise SystemExit(f'loss became {loss_value} at epoch {epoch} step {step}')
            epoch_loss += loss_value
            images_seen += images.shape[0] * env['world_size']
            if is_main and (step + 1) % args.log_interval == 0:
                elapsed = time.time() - run_start
                done = (epoch - start_epoch) * iterations + step + 1
                remaining = (args.epochs - start_epoch) * iterations - done
                _log(f'epoch {epoch + 1}/{args.epochs} step {step + 1}/{iterations} '
                     f'loss {loss_value:.4f} lr {optimizer.param_groups[0]["lr"]:.2e} '
                     f'{images_seen / elapsed:.1f} img/s '
                     f'ETA {remaining * elapsed / done / 60:.1f} min', log_file)
        scheduler.step()
        record = {'epoch': epoch + 1, 'stage': 'encoder' if encoder_only else 'full',
                  'loss': epoch_loss / max(1, iterations),
                  'seconds': round(time.time() - epoch_start, 1)}
        if is_main and not encoder_only and ((epoch + 1) % args.val_interval == 0
                                             or epoch + 1 == args.epochs):
            candidate = LoadedModel(f'<epoch {epoch + 1}>', metadata,
                                    {k: v.detach().cpu() for k, v in
                                     model.enet.state_dict().items()})
            segmenter = Segmenter(candidate, device=str(device), precision='fp32',
                                  warmup=False)
            scores = evaluate_segmenter(segmenter, val_set)
            record['val_miou'] = scores.mean_iou
            if scores.mean_iou > best_miou:
                best_miou = scores.mean_iou
                best_meta = ModelMetadata.from_class_table(
                    table, input_size, val_miou=round(scores.mean_iou, 6),
                    training={'epoch': epoch + 1, 'args': _plain_args(args),
                              'val': scores.as_dict(table.names)})
                save_model_file(out / BEST_MODEL_NAME, candidate.state_dict, best_meta)
                _log(format_scores(scores, table.names), log_file)
        history.append(record)
        if is_main:
            _log(json.dumps(record), log_file)
            _atomic_save({'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                          'lr_scheduler': scheduler.state_dict(),
                          'scaler': scaler.state_dict(), 'epoch': epoch + 1,
                          'best_miou': best_miou, 'history': history,
                          'args': _plain_args(args)}, out / CHECKPOINT_NAME)
    if env['world_size'] > 1:
        dist.destroy_process_group()
    return {'history': history, 'best_miou': best_miou}


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
