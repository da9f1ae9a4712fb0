"""
Train ENet: the paper's recipe by default, each part switchable by flags.

Run ``enet-train train --help``. Multi-GPU: ``torchrun --nproc-per-node N -m
enet_training.cli train ...`` (DistributedDataParallel; only rank 0 logs and
saves).

Laid out as torchvision's ``references/segmentation/train.py``: the flags
(:func:`add_train_arguments`), :func:`train_one_epoch`, :func:`evaluate`
(through the node's :class:`~enet_ros.segmenter.Segmenter`) and a thin
:func:`train`. The set-up is in :mod:`.run_setup`, processes and devices in
:mod:`.distributed`, checkpoints in :mod:`.checkpoint`.

Why one module: the training loop, its evaluation and its flags are
torchvision's reference layout, which readers of training scripts know; the
set-up, the processes and the checkpoints are already apart.
"""

import argparse
import json
import math
import os
from pathlib import Path
import sys
import time
from typing import Any, Dict, List, Optional

from enet_ros.metrics import Scores
from enet_ros.model_file import LoadedModel, ModelMetadata
from enet_ros.segmenter import normalize, Segmenter
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader
from tqdm import tqdm

from .batchnorm import recompute_batchnorm
from .checkpoint import (BEST_MODEL_NAME, CHECKPOINT_NAME, resume_path, save_best_model,
                         save_checkpoint)
from .datasets import DATASETS, SegmentationDataset
from .distributed import average_over_ranks, cleanup_distributed, init_distributed, RunLog
from .evaluate import evaluate_segmenter, evaluate_sequences, format_scores
from .finetune import apply_frozen_modes
from .records import data_fingerprint, MetricsWriter, write_run_record
from .run_setup import (DEFAULT_INPUT_SIZE, Run, seed_batchnorm_pass, seed_epoch, setup_run,
                        StepOptions, update_encoder_freeze, wrap_distributed)

__all__ = ['add_train_arguments', 'BEST_MODEL_NAME', 'CHECKPOINT_NAME', 'DEFAULT_INPUT_SIZE',
           'evaluate', 'Progress', 'train', 'train_one_epoch']


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the flags of ``enet-train train`` to ``parser`` and return it."""
    parser.add_argument('--data', required=True, type=Path, help='dataset root folder')
    parser.add_argument('--dataset', default='camvid', choices=DATASETS,
                        help='camvid, cityscapes, or your own data: voc (Pascal VOC / CVAT '
                             '"Segmentation mask 1.1": labelmap.txt, JPEGImages/, '
                             'SegmentationClass/, ImageSets/Segmentation/) or plain '
                             '(classes.yaml, images/<split>/, labels/<split>/)')
    parser.add_argument('--void-label', action='append', default=[], metavar='NAME',
                        help='voc: a label map entry that is void (ignored) rather than a class, '
                             'e.g. background for sparse annotation (repeatable; entries named '
                             'void, ignore or ignored are void anyway)')
    parser.add_argument('--drivable-classes', nargs='*', metavar='NAME',
                        help="the model's default drivable classes (voc default: classes named "
                             "road or drivable; plain default: classes.yaml's drivable)")
    parser.add_argument('--train-split', default='train',
                        help="split(s) to train on; several joined by '+', e.g. train+val "
                             'for a final model once the recipe is fixed')
    parser.add_argument('--val-split', default='val')
    parser.add_argument('--out', required=True, type=Path,
                        help='run folder: checkpoint, best model file, log')
    parser.add_argument('--epochs', type=int, default=300)
    parser.add_argument('--batch-size', type=int, default=10, help='per process')
    parser.add_argument('--lr', type=float, default=5e-4)
    parser.add_argument('--lr-scaling', choices=('none', 'linear', 'sqrt'), default='none',
                        help='scale --lr for the global batch (--batch-size x processes) '
                             'against --lr-base-batch: linear (lr x batch/base) or sqrt (lr x '
                             'sqrt(batch/base), the rule for Adam); none: --lr as given')
    parser.add_argument('--lr-base-batch', type=int, default=5, metavar='BATCH',
                        help='the batch --lr was tuned for (5: the CamVid recipes of '
                             'training/README.md)')
    parser.add_argument('--weight-decay', type=float, default=2e-4)
    parser.add_argument('--lr-schedule', choices=('step', 'poly', 'none'), default='step',
                        help='step: x lr-gamma every lr-step epochs (paper); poly: (1-t)^0.9')
    parser.add_argument('--lr-step', type=int, default=100)
    parser.add_argument('--lr-gamma', type=float, default=0.1)
    parser.add_argument('--class-weighting', choices=('enet', 'median', 'none'),
                        default='enet',
                        help='enet: w = 1/ln(c + p) from the training labels; median: '
                             'median-frequency balancing, w = median(f)/f with f the pixels '
                             'of the class over all pixels of the images it appears in')
    parser.add_argument('--weight-c', type=float, default=1.02)
    parser.add_argument('--loss', choices=('ce', 'ohem', 'lovasz', 'ce+lovasz'), default='ce',
                        help='ce: class-weighted cross entropy over the labelled pixels; ohem: '
                             'the same averaged over only the hardest --ohem-keep of them; '
                             'lovasz: Lovasz-softmax, a surrogate of 1 - IoU averaged over the '
                             'classes in the batch; ce+lovasz: the sum of ce and lovasz')
    parser.add_argument('--ohem-keep', type=float, default=0.25, metavar='FRACTION',
                        help="--loss ohem: fraction of the batch's labelled pixels, those "
                             'of highest loss, that the loss averages (at least one pixel)')
    parser.add_argument('--encoder-epochs', type=int, default=0,
                        help='two-stage schedule: train the encoder alone against 1/8 labels '
                             'for this many epochs first (0: end-to-end only)')
    parser.add_argument('--crop', type=int, nargs=2, metavar=('WIDTH', 'HEIGHT'),
                        help='training crop; default the network input size')
    parser.add_argument('--input-size', type=int, nargs=2, metavar=('WIDTH', 'HEIGHT'),
                        help='network input size recorded in the model file')
    parser.add_argument('--scale', type=float, nargs=2, default=(0.75, 1.5),
                        metavar=('MIN', 'MAX'),
                        help='random scale range around the network input scale: each frame '
                             'is resized to --input-size, as at inference, times a random '
                             'factor, then cropped (1 1 and the default crop: whole frames at '
                             'the input size)')
    parser.add_argument('--no-flip', action='store_true', help='no horizontal flips')
    parser.add_argument('--rotate', type=float, default=0.0, metavar='DEG',
                        help='random rotation in [-DEG, DEG] degrees about the centre before '
                             'the crop (bilinear, black border; labels nearest, void border)')
    parser.add_argument('--color-jitter', type=float, nargs=3, default=(0.0, 0.0, 0.0),
                        metavar=('B', 'C', 'S'),
                        help='random brightness, contrast and saturation factors in '
                             '[1-B, 1+B], [1-C, 1+C], [1-S, 1+S] (0: off)')
    parser.add_argument('--ema', type=float, default=0.0, metavar='DECAY',
                        help='keep an exponential moving average of the weights and BatchNorm '
                             'buffers (torch AveragedModel), updated every step; validation, '
                             'the best model and export use it (0: off; e.g. 0.999)')
    parser.add_argument('--ema-bn', choices=('recompute', 'average'), default='recompute',
                        help="with --ema, the average's BatchNorm statistics: recompute: "
                             'before each validation, those of one pass of the training frames, '
                             'augmented as in training from --seed, through the averaged '
                             'weights (dropout off); average: the average of the trained '
                             "model's, right only once the weights have settled")
    parser.add_argument('--holdout-sequence', action='append', default=[], metavar='PREFIX',
                        help='leave the training frames whose names start with PREFIX out of '
                             "training and score them each validation as 'holdout:PREFIX' "
                             '(repeatable)')
    parser.add_argument('--amp', choices=('auto', 'on', 'off'), default='auto',
                        help='fp16 mixed precision (auto: on for CUDA)')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:N')
    parser.add_argument('--memory-format', choices=('channels_last', 'contiguous'),
                        default='channels_last',
                        help='layout of weights and activations (channels_last: 12%% faster '
                             'per step on the 2-core CPU)')
    parser.add_argument('--pipeline', choices=('auto', 'device', 'loader'), default='auto',
                        help='device: the training frames decoded once into memory (on the GPU '
                             'with CUDA) and each batch augmented there in one go; loader: a '
                             'DataLoader decoding and augmenting each frame with OpenCV in '
                             '--workers processes (the only one with --rotate); auto: device on '
                             'CUDA, loader on the CPU')
    parser.add_argument('--compile', choices=('auto', 'on', 'off'), default='auto',
                        help="torch.compile the network's training forward (auto: on CUDA; "
                             'ENET_ROS_COMPILE=0 turns it off whatever this says)')
    parser.add_argument('--time-limit', type=float, default=0, metavar='SECONDS',
                        help='stop cleanly, after a whole epoch and its checkpoint, before this '
                             'many seconds from the start would be passed by one more epoch '
                             '(0: no limit); --resume auto continues')
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--deterministic', action='store_true',
                        help='deterministic algorithms where PyTorch has them')
    parser.add_argument('--resume', default='', help="checkpoint to resume, or 'auto' for "
                                                     '<out>/checkpoint.pth if present')
    parser.add_argument('--init', type=Path, metavar='MODEL',
                        help="start from this model file's weights ('bundled': the model that "
                             'ships with enet_ros); with other classes every tensor but the '
                             'classifier is kept (fine-tuning into new classes)')
    parser.add_argument('--freeze-encoder-epochs', type=int, default=0, metavar='N',
                        help='fine-tuning: keep the encoder fixed for the first N epochs, so the '
                             'new classifier settles first (0: off)')
    parser.add_argument('--freeze-bn', action='store_true',
                        help='BatchNorm layers normalise with their running statistics and keep '
                             'them (for small per-process batches and fine-tuning)')
    parser.add_argument('--no-dropout', action='store_true',
                        help="turn ENet's spatial dropout off (with --freeze-bn a frame's "
                             'forward no longer depends on its batch or the random streams)')
    parser.add_argument('--progress', choices=('auto', 'on', 'off'), default='auto',
                        help='progress bar with ETA per epoch on stderr (auto: when stderr is '
                             'a terminal)')
    parser.add_argument('--tensorboard', choices=('auto', 'on', 'off'), default='auto',
                        help='TensorBoard event files in <out>/tensorboard (auto: when the '
                             'tensorboard package is installed); metrics.csv is always written')
    parser.add_argument('--log-shards', action='store_true',
                        help='log, per epoch, the frame indices each process trains on '
                             '(gathered on rank 0)')
    parser.add_argument('--log-interval', type=int, default=10, help='iterations per log line')
    parser.add_argument('--val-interval', type=int, default=1, help='epochs per validation')
    parser.add_argument('--max-iterations', type=int, default=0,
                        help='stop each epoch after this many iterations (tests, smoke runs)')
    return parser


class Progress:
    """
    Step log lines (loss, learning rate, images per second, the run's ETA) and a progress bar.

    ``bar``: a tqdm bar per epoch on stderr with the epoch's ETA and loss;
    ``metrics`` gets each step's loss.
    """

    def __init__(self, log: RunLog, epochs: int, start_epoch: int, iterations: int,
                 interval: int, world_size: int, bar: bool = False,
                 metrics: Optional[MetricsWriter] = None):
        self.log, self.epochs, self.start_epoch = log, epochs, start_epoch
        self.iterations, self.interval, self.world_size = iterations, interval, world_size
        self.start, self.images = time.time(), 0
        self.show_bar, self.bar, self.metrics = bar, None, metrics

    def start_epoch_bar(self, epoch: int) -> None:
        """Open the epoch's progress bar (when shown)."""
        if self.show_bar:
            self.bar = tqdm(total=self.iterations, desc=f'epoch {epoch + 1}/{self.epochs}',
                            unit='step', file=sys.stderr, dynamic_ncols=True, leave=True)

    def end_epoch_bar(self) -> None:
        """Close the epoch's progress bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def step(self, epoch: int, step: int, loss: float, lr: float, batch_size: int) -> None:
        """Count a finished step of ``batch_size`` images per process; log every interval."""
        self.images += batch_size * self.world_size
        if self.bar is not None:
            self.bar.set_postfix_str(f'loss {loss:.4f}', refresh=False)
            self.bar.update(1)
        if self.metrics is not None:
            self.metrics.step(epoch, step, loss)
        if (step + 1) % self.interval:
            return
        elapsed = time.time() - self.start
        done = (epoch - self.start_epoch) * self.iterations + step + 1
        remaining = (self.epochs - self.start_epoch) * self.iterations - done
        self.log(f'epoch {epoch + 1}/{self.epochs} step {step + 1}/{self.iterations} '
                 f'loss {loss:.4f} lr {lr:.2e} {self.images / elapsed:.1f} img/s '
                 f'ETA {remaining * elapsed / done / 60:.1f} min')


def train_step(network: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, images: torch.Tensor, labels: torch.Tensor,
               options: StepOptions, encoder_only: bool,
               ema: Optional[AveragedModel] = None) -> torch.Tensor:
    """
    One optimiser step on a uint8 image batch and its labels; return the loss.

    ``ema``, an average of ``network``'s weights, is updated after the step.
    """
    images = images.to(options.device, non_blocking=True).contiguous(
        memory_format=options.memory_format)
    labels = labels.to(options.device, non_blocking=True)
    if encoder_only:
        labels = labels[:, 4::8, 4::8]
    with torch.autocast(options.device.type, dtype=torch.float16, enabled=options.use_amp):
        logits = network(normalize(images, options.mean, options.inv_std), encoder_only)
        loss = criterion(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    if ema is not None:
        ema.update_parameters(network)
    return loss.detach()


def train_one_epoch(network: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, loader: DataLoader, epoch: int,
                    options: StepOptions, progress: Progress,
                    encoder_only: bool = False, ema: Optional[AveragedModel] = None) -> float:
    """
    Train ``options.iterations`` steps of ``epoch`` (updating ``ema``); return the mean loss.

    Each step's loss is the mean over the processes (one process: its own).
    """
    network.train()
    apply_frozen_modes(network, options.freeze_bn, options.no_dropout)
    total = 0.0
    progress.start_epoch_bar(epoch)
    try:
        for step, (images, labels) in enumerate(loader):
            if step >= options.iterations:
                break
            loss = train_step(network, criterion, optimizer, scaler, images, labels, options,
                              encoder_only, ema)
            if options.env is not None:
                loss = average_over_ranks(loss, options.env)
            loss = float(loss)
            if not math.isfinite(loss):
                raise SystemExit(f'loss became {loss} at epoch {epoch} step {step}')
            total += loss
            progress.step(epoch, step, loss, optimizer.param_groups[0]['lr'], images.shape[0])
    finally:
        progress.end_epoch_bar()
    return total / max(1, options.iterations)


def evaluate(weights: Dict[str, torch.Tensor], metadata: ModelMetadata,
             dataset: SegmentationDataset, device: torch.device,
             name: str = '<training>') -> Scores:
    """
    Score ENet ``weights`` on every image of ``dataset`` through the node's Segmenter.

    fp32 on the training device, each image at its own size: the number the
    node would measure with these weights saved as a model file.
    """
    return evaluate_segmenter(training_segmenter(weights, metadata, device, name), dataset)


def training_segmenter(weights: Dict[str, torch.Tensor], metadata: ModelMetadata,
                       device: torch.device, name: str = '<training>') -> Segmenter:
    """Return the node's Segmenter for ENet ``weights``: fp32 on ``device``, no warm-up."""
    return Segmenter(LoadedModel(name, metadata, weights), device=str(device),
                     precision='fp32', warmup=False)


def _plain(value: float) -> Optional[float]:
    """Return ``value`` as a float for JSON records; NaN (no score) as None."""
    return None if math.isnan(value) else float(value)


def _percent(value: float) -> str:
    return 'n/a' if math.isnan(value) else f'{100 * value:.1f}'


#: History keys with per-class detail: kept in the checkpoint, left out of the epoch log line.
DETAIL_KEYS = ('holdout_class_iou', 'val_class_iou')


def validate(run: Run, epoch: int, record: Dict[str, Any]) -> None:
    """
    Score the weights after ``epoch``; keep them as the best model file if they lead.

    The weights are the average with ``--ema``, its BatchNorm statistics first
    recomputed with ``--ema-bn recompute`` (kept in the average, so the
    checkpoint written after this holds them). ``record`` gets the val mIoU,
    the val mIoU per sequence and, per held-out sequence, its mIoU and
    per-class IoU. The best model is chosen on the val mIoU alone.
    """
    enet = run.validation_model().enet
    if run.batchnorm_loader is not None:
        step = run.step
        seed_batchnorm_pass(run.args, run.batchnorm_loader)
        recompute_batchnorm(enet, run.batchnorm_loader, step.device, step.memory_format,
                            step.mean, step.inv_std)
    weights = {k: v.detach().cpu() for k, v in enet.state_dict().items()}
    segmenter = training_segmenter(weights, run.metadata, run.env.device, f'<epoch {epoch + 1}>')
    scores, sequences = evaluate_sequences(segmenter, run.val_set)
    record['val_miou'] = scores.mean_iou
    record['val_class_iou'] = [_plain(v) for v in scores.iou]
    per_class = zip(run.table.names, scores.iou)
    run.log(f'validation after epoch {epoch + 1}: mIoU {100 * scores.mean_iou:.2f}; IoU '
            + ', '.join(f'{name} {_percent(iou)}' for name, iou in per_class))
    record['val_sequence_miou'] = {name: _plain(s.mean_iou) for name, s in sequences.items()}
    if run.holdout_sets:
        record['holdout_miou'], record['holdout_class_iou'] = {}, {}
    for prefix, dataset in run.holdout_sets.items():
        held = evaluate_segmenter(segmenter, dataset)
        record['holdout_miou'][f'holdout:{prefix}'] = _plain(held.mean_iou)
        record['holdout_class_iou'][f'holdout:{prefix}'] = \
            held.as_dict(run.table.names)['per_class_iou']
    if scores.mean_iou > run.state.best_miou:
        run.state.best_miou = scores.mean_iou
        extra = {k: record[k] for k in ('val_sequence_miou', 'holdout_miou', 'holdout_class_iou')
                 if k in record}
        save_best_model(run.args.out / BEST_MODEL_NAME, weights, run.table,
                        run.metadata.input_size, scores, epoch + 1, run.args, extra)
        run.log(format_scores(scores, run.table.names))


def log_shards(run: Run, epoch: int) -> None:
    """``--log-shards``: gather the frame indices each process trains on; rank 0 logs them."""
    state = run.sampler_generator.get_state()  # listing must not move the loader's order
    taken = list(run.sampler)[:run.step.iterations * run.args.batch_size]
    run.sampler_generator.set_state(state)
    shards: List[List[int]] = [taken]
    if run.env.distributed:
        shards = [[] for _ in range(run.env.world_size)]
        torch.distributed.all_gather_object(shards, taken)
    run.log(f'epoch {epoch + 1} shards: ' + json.dumps(shards))


def run_epoch(run: Run, epoch: int, progress: Progress,
              metrics: Optional[MetricsWriter] = None) -> None:
    """Train one epoch, validate when due (rank 0), record it and write the checkpoint."""
    args = run.args
    seed_epoch(run, epoch)
    if update_encoder_freeze(run, epoch):
        run.network = wrap_distributed(run.model, run.env)
    if args.log_shards:
        log_shards(run, epoch)
    encoder_only = epoch < args.encoder_epochs
    lr = run.optimizer.param_groups[0]['lr']
    images_before = progress.images
    start = time.time()
    loss = train_one_epoch(run.network, run.criterion, run.optimizer, run.scaler, run.loader,
                           epoch, run.step, progress, encoder_only, run.ema)
    run.scheduler.step()
    record = {'epoch': epoch + 1, 'stage': 'encoder' if encoder_only else 'full',
              'loss': loss, 'seconds': round(time.time() - start, 1)}
    due = (epoch + 1) % args.val_interval == 0 or epoch + 1 == args.epochs
    if run.env.is_main and not encoder_only and due:
        validate(run, epoch, record)
    run.state.history.append(record)
    run.state.epoch = epoch + 1
    if run.env.is_main:
        run.log(json.dumps({k: v for k, v in record.items() if k not in DETAIL_KEYS}))
        save_checkpoint(args.out / CHECKPOINT_NAME, run.model, run.optimizer, run.scheduler,
                        run.scaler, run.state, args, run.ema, run.table)
        if metrics is not None:
            metrics.epoch(record, lr, progress.images - images_before,
                          record.get('val_class_iou'))


def compile_network(run: Run, args: argparse.Namespace) -> None:
    """
    ``--compile``: wrap ``run.network`` in ``torch.compile`` (auto: on CUDA).

    Only the training forward is compiled; validation runs the Segmenter on a
    copy of the weights. ENET_ROS_COMPILE=0 keeps it off (tests).
    """
    wanted = args.compile == 'on' or (args.compile == 'auto' and run.env.device.type == 'cuda')
    if not wanted or os.environ.get('ENET_ROS_COMPILE', '1') == '0':
        return
    # A graph the compiler cannot build runs eagerly rather than ending the run.
    torch._dynamo.config.suppress_errors = True
    run.network = torch.compile(run.network)
    run.log('training forward compiled (torch.compile; the first steps include compiling)')


def out_of_time(args: argparse.Namespace, start: float, last_epoch: float) -> bool:
    """Whether one more epoch as long as the longest so far (+10 %) would pass the limit."""
    if not args.time_limit:
        return False
    return time.time() - start + 1.1 * last_epoch > args.time_limit


def train(args: argparse.Namespace) -> Dict[str, Any]:
    """Run training as configured by :func:`add_train_arguments`; return the final history."""
    started = time.time()
    env = init_distributed(args.device, args.deterministic)
    metrics = None
    try:
        run = setup_run(args, env)
        if env.is_main:
            record = dict(run.data_record)
            record['fingerprint'] = data_fingerprint(
                run.loader.dataset, run.val_set, args.data, args.train_split, args.val_split)
            write_run_record(args.out, args, record, env.world_size, env.device,
                             resume_path(args.resume, args.out))
            metrics = MetricsWriter(args.out, run.table.names, args.tensorboard,
                                    run.step.iterations)
        bar = env.is_main and (args.progress == 'on' or
                               (args.progress == 'auto' and sys.stderr.isatty()))
        progress = Progress(run.log, args.epochs, run.state.epoch, run.step.iterations,
                            args.log_interval, env.world_size, bar, metrics)
        compile_network(run, args)
        longest = 0.0
        for epoch in range(run.state.epoch, args.epochs):
            epoch_start = time.time()
            run_epoch(run, epoch, progress, metrics)
            longest = max(longest, time.time() - epoch_start)
            if out_of_time(args, started, longest):
                run.log(f'stopping after epoch {epoch + 1} of {args.epochs}: one more would '
                        f'pass --time-limit {args.time_limit:g} s (resume with --resume auto)')
                break
        return {'history': run.state.history, 'best_miou': run.state.best_miou}
    finally:
        if metrics is not None:
            metrics.close()
        cleanup_distributed(env)
