"""
Set-up of a training run: datasets, loss, model, weight average, optimizer, loader, state.

:func:`setup_run` builds everything :func:`enet_training.train.train` needs
from its arguments, in an order that keeps runs reproducible: the initial
weights are drawn right after seeding, so two runs with one ``--seed`` start
alike and a resumed run continues like the unbroken one.

Why one module: the set-up's order is what makes runs reproducible (seed,
then the initial weights, then the loaders), and it is read best in one place.
"""

import argparse
from dataclasses import dataclass, field
import math
import random
from typing import Dict, Optional, Tuple

from enet_ros.labels import ClassTable
from enet_ros.model_file import ModelMetadata
from enet_ros.segmenter import normalization_constants
import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, RandomSampler, Sampler

from .checkpoint import load_checkpoint, resume_path, TrainingState
from .class_weights import cached_enet_weights, cached_median_weights
from .datasets import (DatasetError, hold_out, LayoutOptions, make_dataset, read_image,
                       seen_splits, SegmentationDataset)
from .device_pipeline import device_batches, uses_device_pipeline
from .distributed import DistributedEnv, GlobalBatchCrossEntropy, RunLog, ShardedRandomSampler
from .finetune import count_trainable, load_init_weights, set_encoder_frozen
from .losses import CrossEntropyLovaszLoss, LovaszSoftmaxLoss, OhemCrossEntropyLoss
from .model import TrainingModel
from .transforms import collate, TrainTransform

DEFAULT_INPUT_SIZE = {'camvid': (480, 360), 'cityscapes': (1024, 512)}
#: A dataset of your own without --input-size: this wide (at most) at its frames' aspect ratio.
CUSTOM_INPUT_WIDTH = 480


@dataclass(frozen=True)
class StepOptions:
    """How a training step runs: device, precision, layout, normalisation, steps per epoch."""

    device: torch.device
    use_amp: bool
    memory_format: torch.memory_format
    mean: torch.Tensor
    inv_std: torch.Tensor
    iterations: int
    #: ``--freeze-bn`` / ``--no-dropout``: those layers in eval mode while training.
    freeze_bn: bool = False
    no_dropout: bool = False
    #: The run's processes: the logged loss is their mean.
    env: Optional[DistributedEnv] = None


@dataclass
class Run:
    """Everything a training run works with, as :func:`setup_run` builds it."""

    args: argparse.Namespace
    env: DistributedEnv
    log: RunLog
    table: ClassTable
    metadata: ModelMetadata
    val_set: SegmentationDataset
    model: TrainingModel
    network: nn.Module  # the model, wrapped in DistributedDataParallel when distributed
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loader: DataLoader
    sampler: Sampler
    sampler_generator: torch.Generator
    step: StepOptions
    state: TrainingState
    #: ``--ema``: the average of ``model`` (weights and BatchNorm buffers), else None.
    ema: Optional[AveragedModel] = None
    #: ``--holdout-sequence``: {prefix: the training frames it held out}, scored each validation.
    holdout_sets: Dict[str, SegmentationDataset] = field(default_factory=dict)
    #: ``--ema-bn recompute``: the training frames at the network's scale, in batches, that the
    #: average's BatchNorm statistics are recomputed from before each validation; else None.
    batchnorm_loader: Optional[DataLoader] = None
    #: What run.json records about the data: layout, root, splits, fingerprint.
    data_record: Dict[str, object] = field(default_factory=dict)

    def validation_model(self) -> TrainingModel:
        """Return the model whose weights validation scores and keeps: the EMA with ``--ema``."""
        return self.model if self.ema is None else self.ema.module


#: The recipe flags whose value a resumed run compares with the checkpoint's, with the value
#: a checkpoint written before the flag existed stands for.
RECIPE_DEFAULTS = {'color_jitter': [0.0, 0.0, 0.0], 'rotate': 0.0, 'class_weighting': 'enet',
                   'ema': 0.0, 'ema_bn': 'average', 'loss': 'ce', 'ohem_keep': 0.25,
                   'holdout_sequence': []}


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


#: Rank r's augmentation and dropout streams are seeded this far apart (rank 0: as one process).
RANK_SEED_STRIDE = 7919


def seed_epoch(run: Run, epoch: int) -> None:
    """
    Re-seed every random stream from (seed, epoch): a resumed run replays exactly.

    The frame order is the same on every rank (they cut their batches from
    it); augmentation and dropout draws differ between ranks.
    """
    seed = run.args.seed * 100003 + epoch
    seed_everything(seed + RANK_SEED_STRIDE * run.env.rank)
    run.sampler_generator.manual_seed(seed)
    if isinstance(run.sampler, ShardedRandomSampler):
        run.sampler.set_seed(seed)


def worker_init(worker_id: int) -> None:
    """Seed a loader worker's Python and NumPy generators from its torch seed."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def lr_factor(args: argparse.Namespace, epoch: int) -> float:
    """Return the learning-rate multiplier of ``epoch`` under ``--lr-schedule``."""
    if args.lr_schedule == 'step':
        return args.lr_gamma ** (epoch // args.lr_step)
    if args.lr_schedule == 'poly':
        return (1 - epoch / args.epochs) ** 0.9
    return 1.0


def custom_input_size(width: int, height: int) -> Tuple[int, int]:
    """
    Return the default network input for ``width`` x ``height`` frames (data of your own).

    At most :data:`CUSTOM_INPUT_WIDTH` wide, the frames' width rounded down to
    a multiple of 8 below that, and the height at the frames' aspect ratio
    rounded to a multiple of 8 (1280x720 gives 480x272, 640x480 480x360).
    """
    net_width = max(8, min(CUSTOM_INPUT_WIDTH, width - width % 8))
    return net_width, max(8, 8 * round(net_width * height / width / 8))


def network_sizes(args: argparse.Namespace, train_set: Optional[SegmentationDataset] = None
                  ) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """
    Return the network input size and the training crop (width, height), checked.

    Without ``--input-size``: the dataset's default; for a dataset of your own
    :func:`custom_input_size` of ``train_set``'s first frame.
    """
    if args.input_size:
        input_size = tuple(args.input_size)
    elif args.dataset in DEFAULT_INPUT_SIZE:
        input_size = DEFAULT_INPUT_SIZE[args.dataset]
    else:
        height, width = read_image(train_set.pairs[0][0]).shape[:2]
        input_size = custom_input_size(width, height)
    crop = tuple(args.crop or input_size)
    if any(v % 8 for v in (*input_size, *crop)):
        raise SystemExit(f'--input-size {input_size} and --crop {crop} must be multiples of 8')
    return input_size, crop


def use_amp(args: argparse.Namespace, device: torch.device) -> bool:
    """Resolve ``--amp``: fp16 autocast on CUDA unless off; the CPU trains in fp32."""
    if args.amp == 'on' and device.type != 'cuda':
        raise SystemExit('--amp on needs CUDA (fp16 autocast); the CPU trains in fp32')
    return device.type == 'cuda' and args.amp != 'off'


def check_recipe(args: argparse.Namespace) -> None:
    """Refuse recipe flags out of range: jitter in [0, 1], rotation, EMA decay, OHEM fraction."""
    if len(args.color_jitter) != 3 or not all(0 <= x <= 1 for x in args.color_jitter):
        raise SystemExit(f'--color-jitter {" ".join(map(str, args.color_jitter))}: brightness, '
                         'contrast and saturation ranges must be in [0, 1]')
    if not 0 <= args.rotate <= 180:
        raise SystemExit(f'--rotate {args.rotate}: degrees must be in [0, 180]')
    if not 0 <= args.ema < 1:
        raise SystemExit(f'--ema {args.ema}: the decay must be in [0, 1) (0: off)')
    if not 0 < args.ohem_keep <= 1:
        raise SystemExit(f'--ohem-keep {args.ohem_keep}: the fraction must be in (0, 1]')


def layout_options(args: argparse.Namespace) -> LayoutOptions:
    """Return how ``--void-label`` and ``--drivable-classes`` read a dataset of your own."""
    drivable = getattr(args, 'drivable_classes', None)
    return LayoutOptions(tuple(getattr(args, 'void_label', None) or ()),
                         None if drivable is None else tuple(n for n in drivable if n))


def ignore_id(table: ClassTable) -> int:
    """Return the id the loss ignores and padding fills: void, or 255 for a table without one."""
    return table.void_id if table.void_id is not None else 255


def make_train_transform(args: argparse.Namespace, train_set: SegmentationDataset,
                         input_size: Tuple[int, int], crop: Tuple[int, int]) -> TrainTransform:
    """Return the ``--scale``, ``--rotate``, crop, flip and jitter augmentation."""
    # Frames are brought to the network's scale first (the scale the Segmenter runs at).
    return TrainTransform(crop, ignore_id(train_set.table), tuple(args.scale),
                          flip=not args.no_flip, input_size=input_size,
                          color_jitter=tuple(args.color_jitter), rotate=args.rotate)


def make_datasets(args: argparse.Namespace, input_size: Optional[Tuple[int, int]] = None,
                  crop: Optional[Tuple[int, int]] = None
                  ) -> Tuple[SegmentationDataset, SegmentationDataset]:
    """
    Return the training split and the validation split (untransformed).

    With ``input_size`` and ``crop`` the training split gets its augmentation
    (else :func:`setup_run` adds it once the sizes are known).
    """
    options = layout_options(args)
    train_set = make_dataset(args.dataset, args.data, args.train_split, options=options)
    val_set = make_dataset(args.dataset, args.data, args.val_split, options=options)
    if input_size is not None:
        train_set.transform = make_train_transform(args, train_set, input_size, crop)
    return train_set, val_set


def check_val_labels(val_set: SegmentationDataset, log: RunLog) -> None:
    """
    Decode every validation label once, before training (datasets of your own).

    Training labels are all decoded for the class weights; this finds a bad
    colour or id in a val label before the first epoch rather than after it.
    """
    for index in range(len(val_set)):
        val_set.load(index)
    log(f'checked the {len(val_set)} validation labels')


def training_class_weights(args: argparse.Namespace, train_set: SegmentationDataset) -> np.ndarray:
    """Return the ``--class-weighting`` weights of the training frames (cached in the run)."""
    if args.class_weighting == 'enet':
        return cached_enet_weights(train_set, args.out, args.weight_c)
    if args.class_weighting == 'median':
        return cached_median_weights(train_set, args.out)
    return np.ones(train_set.table.num_classes)


def make_criterion(args: argparse.Namespace, train_set: SegmentationDataset,
                   device: torch.device, log: RunLog, world_size: int = 1) -> nn.Module:
    """
    Return the ``--loss``, void ignored: cross entropy, its OHEM form, Lovasz-softmax or both.

    Cross entropy is class-weighted, ENet's weights unless ``--class-weighting``
    says median or none; Lovasz-softmax weighs each present class alike. On
    several processes plain cross entropy is normalised over the global batch
    (:class:`~.distributed.GlobalBatchCrossEntropy`); OHEM and Lovasz-softmax
    are each rank's own.
    """
    table = train_set.table
    ignore = ignore_id(table)
    if args.loss == 'lovasz':
        log('class weights: none (Lovasz-softmax weighs every class in the batch alike)')
        return LovaszSoftmaxLoss(ignore).to(device)
    weights = training_class_weights(args, train_set)
    log('class weights: ' + ', '.join(f'{n} {w:.2f}' for n, w in zip(table.names, weights)))
    weight = torch.tensor(weights, dtype=torch.float32)
    if args.loss == 'ohem':
        return OhemCrossEntropyLoss(weight, ignore, args.ohem_keep).to(device)
    if args.loss == 'ce+lovasz':
        return CrossEntropyLovaszLoss(weight, ignore).to(device)
    if world_size > 1:
        log(f'loss: cross entropy normalised over the global batch of the {world_size} '
            'processes (the gradient of one process with the whole batch)')
        return GlobalBatchCrossEntropy(weight, ignore, world_size).to(device)
    return nn.CrossEntropyLoss(weight=weight, ignore_index=ignore).to(device)


def make_ema(args: argparse.Namespace, model: nn.Module) -> Optional[AveragedModel]:
    """
    ``--ema`` DECAY > 0: torch's exponential moving average of ``model``, else None.

    Weights and BatchNorm buffers (``use_buffers``) are averaged; the first
    update copies the model, each later one moves the average by
    ``1 - DECAY`` towards it (``get_ema_multi_avg_fn``).
    """
    if not args.ema:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema), use_buffers=True)


def recipe_changes(args: argparse.Namespace, saved_args: Dict[str, object]) -> Dict[str, Tuple]:
    """Return {flag: (checkpoint's value, this run's)} for the recipe flags that differ."""
    changes = {}
    for key, default in RECIPE_DEFAULTS.items():
        if key == 'ema_bn' and not (args.ema and saved_args.get('ema', 0.0)):
            continue  # statistics of an average only differ when both runs keep one
        now = getattr(args, key)
        now = list(now) if isinstance(now, (list, tuple)) else now
        before = saved_args.get(key, default)
        if before != now:
            changes['--' + key.replace('_', '-')] = (before, now)
    return changes


def make_model(args: argparse.Namespace, table: ClassTable, device: torch.device,
               memory_format: torch.memory_format,
               log: RunLog = RunLog(None)) -> TrainingModel:
    """
    Seeded initial weights (or ``--init``'s), on the device in the chosen layout.

    ``--init`` with other classes than ``table``'s keeps the tensors that fit
    and re-initialises the classifier (:func:`~.finetune.load_init_weights`).
    """
    seed_everything(args.seed)
    model = TrainingModel(table.num_classes)
    if args.init:
        load_init_weights(model.enet, args.init, table, log)
    return model.to(device, memory_format=memory_format)


def scaled_lr(args: argparse.Namespace, world_size: int = 1) -> float:
    """
    Return ``--lr`` scaled by ``--lr-scaling`` for the global batch against ``--lr-base-batch``.

    linear: lr x batch / base; sqrt: lr x sqrt(batch / base) (Adam's rule);
    none: ``--lr`` as given. The global batch is ``--batch-size`` x processes.
    """
    ratio = args.batch_size * world_size / args.lr_base_batch
    rule = getattr(args, 'lr_scaling', 'none')
    return args.lr * {'none': 1.0, 'linear': ratio, 'sqrt': math.sqrt(ratio)}[rule]


def make_optimizer(args: argparse.Namespace, model: nn.Module, world_size: int = 1
                   ) -> Tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam with weight decay at :func:`scaled_lr`, the ``--lr-schedule`` stepped per epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=scaled_lr(args, world_size),
                                 weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(args, e))
    return optimizer, scheduler


def make_loader(args: argparse.Namespace, train_set: SegmentationDataset,
                env: DistributedEnv) -> Tuple[DataLoader, Sampler, torch.Generator]:
    """
    Shuffled full batches; when distributed, each rank's part of every global batch.

    (:class:`~.distributed.ShardedRandomSampler`: one shared order, disjoint
    shards, the global batches of one process with the whole batch.)
    """
    generator = torch.Generator()
    if env.distributed:
        sampler = ShardedRandomSampler(len(train_set), env.world_size, env.rank,
                                       args.batch_size)
    else:
        sampler = RandomSampler(train_set, generator=generator)
    if uses_device_pipeline(args, env.device):
        loader = device_batches(train_set, env.device, args.batch_size, sampler)
    else:
        loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler,
                            num_workers=args.workers, collate_fn=collate, drop_last=True,
                            pin_memory=env.device.type == 'cuda', persistent_workers=False,
                            worker_init_fn=worker_init)
    if len(loader) == 0:
        raise SystemExit(f'the training split has {len(train_set)} images, fewer than '
                         f'--batch-size {args.batch_size} x {env.world_size} processes '
                         '(batches are never partial)')
    return loader, sampler, generator


def make_batchnorm_loader(args: argparse.Namespace, train_set: SegmentationDataset,
                          env: DistributedEnv) -> Optional[DataLoader]:
    """
    With ``--ema`` and ``--ema-bn recompute`` (main process): the frames of the statistics.

    Every training frame once, in order, augmented as training augments it:
    the statistics the trained model's BatchNorm layers see. (Whole frames at
    the input scale alone fit worse: 65.03 val mIoU against 65.9 on CamVid.)
    :func:`seed_batchnorm_pass` fixes the draws before each pass.
    """
    if not args.ema or args.ema_bn != 'recompute' or not env.is_main:
        return None
    if uses_device_pipeline(args, env.device):
        return device_batches(train_set, env.device, args.batch_size, drop_last=False)
    return DataLoader(train_set, batch_size=args.batch_size, num_workers=args.workers,
                      collate_fn=collate, pin_memory=env.device.type == 'cuda',
                      worker_init_fn=worker_init, generator=torch.Generator())


def seed_batchnorm_pass(args: argparse.Namespace, loader: DataLoader) -> None:
    """
    Seed the augmentation of a :func:`make_batchnorm_loader` pass from ``--seed``.

    Every pass then draws the same frames, and training, which re-seeds at
    each epoch (:func:`seed_epoch`), is left as it would be without the pass.
    """
    seed_everything(args.seed)
    loader.generator.manual_seed(args.seed)


def wrap_distributed(model: nn.Module, env: DistributedEnv) -> nn.Module:
    """Return ``model`` in DistributedDataParallel when several processes train, else as is."""
    if not env.distributed:
        return model
    device = env.device
    # find_unused_parameters: each stage leaves the other's head (or decoder) unused.
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == 'cuda' else None,
        find_unused_parameters=True)


def setup_run(args: argparse.Namespace, env: DistributedEnv) -> Run:
    """Build a run from the arguments of ``enet-train train``, resuming if asked."""
    check_recipe(args)
    if args.freeze_encoder_epochs and args.encoder_epochs:
        raise SystemExit('--freeze-encoder-epochs and --encoder-epochs exclude each other: '
                         'the first trains the decoder alone, the second the encoder alone')
    amp = use_amp(args, env.device)
    if env.is_main:
        args.out.mkdir(parents=True, exist_ok=True)
    log = RunLog(args.out / 'train.log' if env.is_main else None)
    train_set, val_set = make_datasets(args)
    input_size, crop = network_sizes(args, train_set)
    if not args.input_size:
        args.input_size = list(input_size)  # recorded in the checkpoint, as if given
        if train_set.layout is not None:
            log(f"network input {input_size[0]}x{input_size[1]} (the first training frame's "
                'aspect ratio; --input-size to choose)')
    train_set.transform = make_train_transform(args, train_set, input_size, crop)
    if train_set.layout is not None:
        log(train_set.layout.describe())
    metadata = model_metadata(train_set, input_size)
    data_record = {'dataset': args.dataset, 'root': str(args.data),
                   'splits': {args.train_split: len(train_set), args.val_split: len(val_set)},
                   'classes': list(train_set.table.names)}
    shared = seen_splits(args.train_split, args.val_split)
    if shared:
        # A final model trained on train+val: validation is then no measure of accuracy.
        log(f"note: the validation split {'+'.join(shared)} is also trained on "
            f'(--train-split {args.train_split}): its scores are not held-out accuracy and '
            'best.safetensors is chosen on seen data; for a fixed schedule export '
            'checkpoint.pth (the last epoch)')
    holdout_sets: Dict[str, SegmentationDataset] = {}
    if args.holdout_sequence:
        train_set, holdout_sets = hold_out(train_set, args.holdout_sequence)
        log('held out of training: ' + ', '.join(f'{p} ({len(d)} frames)'
                                                 for p, d in holdout_sets.items())
            + f'; {len(train_set)} frames train')
    log(f'training on {len(train_set)} frames ({args.train_split}), validating on '
        f'{len(val_set)} ({args.val_split})')
    table = train_set.table
    criterion = make_criterion(args, train_set, env.device, log, env.world_size)
    if val_set.layout is not None and env.is_main:
        check_val_labels(val_set, log)
    memory_format = (torch.channels_last if args.memory_format == 'channels_last'
                     else torch.contiguous_format)
    model = make_model(args, table, env.device, memory_format, log)
    ema = make_ema(args, model)
    optimizer, scheduler = make_optimizer(args, model, env.world_size)
    if args.lr_scaling != 'none':
        log(f'learning rate {optimizer.param_groups[0]["lr"]:.3g}: --lr {args.lr:g} scaled '
            f'{args.lr_scaling} from batch {args.lr_base_batch} to {args.batch_size} x '
            f'{env.world_size}')
    log('input pipeline: ' + ('device (frames decoded once, batches augmented on '
                              f'{env.device.type})' if uses_device_pipeline(args, env.device)
                              else f'loader ({args.workers} workers, per-frame OpenCV)'))
    scaler = torch.amp.GradScaler('cuda', enabled=amp)
    state = TrainingState()
    checkpoint = resume_path(args.resume, args.out)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, optimizer, scheduler, scaler, ema, log)
        log(f'resumed from {checkpoint} at epoch {state.epoch}')
        saved_args = torch.load(checkpoint, map_location='cpu', weights_only=True)['args']
        for flag, (before, now) in recipe_changes(args, saved_args).items():
            log(f'note: resumed with {flag} {now}; the checkpoint was trained with {before}')
    loader, sampler, generator = make_loader(args, train_set, env)
    mean, inv_std = normalization_constants(metadata, env.device)
    iterations = min(len(loader), args.max_iterations) if args.max_iterations else len(loader)
    step = StepOptions(env.device, amp, memory_format, mean, inv_std, iterations,
                       args.freeze_bn, args.no_dropout, env)
    run = Run(args, env, log, table, metadata, val_set, model, model, criterion, optimizer,
              scheduler, scaler, loader, sampler, generator, step, state, ema, holdout_sets,
              make_batchnorm_loader(args, train_set, env), data_record)
    update_encoder_freeze(run, state.epoch)
    run.network = wrap_distributed(model, env)
    return run


def model_metadata(train_set: SegmentationDataset, input_size: Tuple[int, int]) -> ModelMetadata:
    """
    Return the model file metadata of the run's classes, checked before any training.

    A class table the model file refuses (a name it cannot carry, say) is a
    :class:`DatasetError` naming where the classes come from.
    """
    try:
        return ModelMetadata.from_class_table(train_set.table, input_size)
    except ValueError as error:
        source = train_set.layout.source if train_set.layout is not None else \
            train_set.table.dataset
        raise DatasetError(f"'{source}': its classes cannot go into a model file "
                           f'({error})') from None


def update_encoder_freeze(run: Run, epoch: int) -> bool:
    """
    Freeze the encoder for the first ``--freeze-encoder-epochs`` epochs, thaw it after.

    Returns whether the trainable parameters changed; the caller then wraps
    the model for DistributedDataParallel anew (it registers the parameters
    that take gradients when it is built).
    """
    frozen = epoch < run.args.freeze_encoder_epochs
    changed = set_encoder_frozen(run.model.enet, frozen)
    if changed:
        trainable, total = count_trainable(run.model.enet)
        run.log(f'epoch {epoch + 1}: encoder ' + (
            f'frozen until epoch {run.args.freeze_encoder_epochs} ({trainable} of {total} '
            'parameters train: the decoder and classifier)' if frozen
            else f'thawed ({trainable} of {total} parameters train)'))
    return changed
