"""
The training input pipeline on the training device (``--pipeline device``).

The training frames are decoded once into two tensors on the device (CamVid
train: 367 frames, 190 MB as uint8) and each batch is augmented there in one
go: the random scale, the crop (padding with zeros / void), the horizontal
flip and the colour jitter of :class:`~.transforms.TrainTransform`, drawn
from the same distributions. The resize and the crop are one map from each
output pixel to a source pixel, so a batch costs one ``grid_sample`` for the
images (bilinear, OpenCV's half-pixel centres, edges clamped) and one gather
for the labels (OpenCV's ``INTER_NEAREST`` index, so labels gain no new ids). The
draws come from torch's global CPU generator, which training re-seeds every
epoch: the same draws on the CPU and on CUDA, and a resumed run replays.

Frames are stored at the network's input size (resized once, as the
Segmenter's resize does: area averaging when a frame shrinks), so the random
scale is relative to the network input as in the per-sample path.
``--rotate`` is not done here (the per-sample path, ``--pipeline loader``,
has it).
"""

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import Sampler

from .datasets import SegmentationDataset
from .transforms import GRAY_WEIGHTS, TrainTransform

__all__ = ['AugmentConfig', 'augment_batch', 'apply_draws', 'DecodedFrames', 'DeviceBatches',
           'Draws', 'draw_params']


@dataclass(frozen=True)
class AugmentConfig:
    """The augmentation of :class:`~.transforms.TrainTransform` without rotation."""

    crop_width: int
    crop_height: int
    void_id: int
    scale_range: Tuple[float, float] = (0.75, 1.5)
    flip: bool = True
    color_jitter: Tuple[float, float, float] = (0.0, 0.0, 0.0)

    @classmethod
    def from_transform(cls, transform: TrainTransform) -> 'AugmentConfig':
        """Return the configuration of ``transform``; a rotation is refused (ValueError)."""
        if transform.rotate:
            raise ValueError(f'--rotate {transform.rotate}: the device pipeline does not '
                             'rotate; use --pipeline loader')
        return cls(transform.crop_width, transform.crop_height, transform.void_id,
                   tuple(transform.scale_range), transform.flip, transform.color_jitter)


@dataclass
class Draws:
    """
    The random parameters of a batch of B frames (CPU tensors of length B).

    ``width``, ``height``: the scaled frame's size (``round(scale * size)``,
    at least 1); ``top``, ``left``: the crop's corner in the scaled frame,
    padded at the bottom and right to at least the crop size; ``flip``: bool;
    ``jitter``: Bx3 brightness, contrast and saturation factors (1: off).
    """

    scale: torch.Tensor
    width: torch.Tensor
    height: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    flip: torch.Tensor
    jitter: torch.Tensor


def _uniform_int(high: torch.Tensor) -> torch.Tensor:
    """Return a uniform integer in [0, high] per element of the int64 tensor ``high``."""
    return torch.minimum((torch.rand(high.shape, dtype=torch.float64) * (high + 1)).long(), high)


def draw_params(batch: int, frame_size: Tuple[int, int], config: AugmentConfig) -> Draws:
    """
    Draw the augmentation of ``batch`` frames of ``frame_size`` (width, height).

    As :class:`~.transforms.TrainTransform` draws per frame: scale uniform in
    ``scale_range``, crop corner uniform over the positions that fit, flip
    with probability 1/2 (when on), each jitter factor uniform in
    [1 - x, 1 + x] (when x > 0). Parts that are off draw nothing.
    """
    width, height = frame_size
    low, high = config.scale_range
    scale = low + (high - low) * torch.rand(batch, dtype=torch.float64)
    scaled_width = torch.clamp(torch.round(scale * width), min=1).long()
    scaled_height = torch.clamp(torch.round(scale * height), min=1).long()
    top = _uniform_int(torch.clamp(scaled_height, min=config.crop_height) - config.crop_height)
    left = _uniform_int(torch.clamp(scaled_width, min=config.crop_width) - config.crop_width)
    flip = (torch.rand(batch) < 0.5) if config.flip else torch.zeros(batch, dtype=torch.bool)
    jitter = torch.ones(batch, 3)
    for channel, amount in enumerate(config.color_jitter):
        if amount:
            jitter[:, channel] = 1 - amount + 2 * amount * torch.rand(batch)
    return Draws(scale, scaled_width, scaled_height, top, left, flip, jitter)


def _source_axis(start: torch.Tensor, size: int, scaled: torch.Tensor,
                 flip: Optional[torch.Tensor], source: int, device: torch.device
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Map ``size`` output positions per frame to the source axis of length ``source``.

    Returns (inside: BxS bool, the position lies in the scaled frame, not the
    padding; nearest: BxS int64 source index, OpenCV's ``INTER_NEAREST``;
    grid: BxS float32, the position's centre in ``grid_sample``'s [-1, 1]
    frame coordinates, i.e. source pixel (p + 0.5) * source / scaled - 0.5).
    """
    steps = torch.arange(size, dtype=torch.int64)
    if flip is not None:
        steps = torch.where(flip[:, None], size - 1 - steps, steps)
    position = start[:, None] + steps  # in the scaled (and padded) frame
    scaled = scaled[:, None]
    inside = position < scaled
    # OpenCV's INTER_NEAREST index, in its double arithmetic: floor(x * (1 / (scaled / source))).
    inverse = 1.0 / (scaled.double() / source)
    nearest = torch.clamp((position.double() * inverse).floor().long(), max=source - 1)
    grid = (2 * (position.double() + 0.5) / scaled - 1).float()
    return inside.to(device), nearest.to(device), grid.to(device)


def apply_draws(images: torch.Tensor, labels: torch.Tensor, draws: Draws, config: AugmentConfig
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Augment BxHxWx3 uint8 RGB frames and BxHxW uint8 labels as ``draws`` say.

    Returns (Bx3xCHxCW uint8 in channels_last layout, BxCHxCW int64) at the crop size:
    images resized bilinearly and rounded, as ``cv2.resize`` does, labels by
    nearest neighbour; padding is 0 in images and ``void_id`` in labels; the
    colour jitter follows :func:`~.transforms.adjust_colors` (brightness,
    contrast, saturation, each clipped, rounded at the end).
    """
    batch, height, width = labels.shape
    device = images.device
    rows = torch.arange(batch, device=device)[:, None]
    y_in, y_near, y_grid = _source_axis(draws.top, config.crop_height, draws.height, None,
                                        height, device)
    x_in, x_near, x_grid = _source_axis(draws.left, config.crop_width, draws.width, draws.flip,
                                        width, device)
    inside = y_in[:, :, None] & x_in[:, None, :]
    out_labels = labels[rows[:, :, None], y_near[:, :, None], x_near[:, None, :]].long()
    out_labels = torch.where(inside, out_labels, torch.full_like(out_labels, config.void_id))
    # Bilinear with OpenCV's half-pixel centres, the coordinates clamped to the frame (border).
    grid = torch.stack((x_grid[:, None, :].expand(-1, config.crop_height, -1),
                        y_grid[:, :, None].expand(-1, -1, config.crop_width)), dim=-1)
    out = torch.nn.functional.grid_sample(images.permute(0, 3, 1, 2).float(), grid,
                                          mode='bilinear', padding_mode='border',
                                          align_corners=False)
    out = out.permute(0, 2, 3, 1).round_() * inside[..., None]
    if bool((draws.jitter != 1).any()):
        out = _jitter(out, draws.jitter.to(device))
    out = out.to(torch.uint8)
    return out.permute(0, 3, 1, 2), out_labels


def _jitter(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation of BxHxWx3 float RGB (0-255) by Bx3 ``factors``."""
    weights = torch.as_tensor(GRAY_WEIGHTS, device=images.device)
    brightness, contrast, saturation = (factors[:, i, None, None, None] for i in range(3))
    out = torch.clamp(images * brightness, 0, 255)
    mean = (out @ weights).mean(dim=(1, 2))[:, None, None, None]
    out = torch.clamp((out - mean) * contrast + mean, 0, 255)
    luma = (out @ weights)[..., None]
    out = torch.clamp((out - luma) * saturation + luma, 0, 255)
    return out.round_()


def augment_batch(images: torch.Tensor, labels: torch.Tensor, config: AugmentConfig
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Draw (:func:`draw_params`) and apply (:func:`apply_draws`) one batch's augmentation."""
    draws = draw_params(labels.shape[0], (labels.shape[2], labels.shape[1]), config)
    return apply_draws(images, labels, draws, config)


class DecodedFrames:
    """
    A dataset's frames decoded once: NxHxWx3 uint8 RGB and NxHxW uint8 labels on ``device``.

    Every frame is brought to ``input_size`` (width, height) first, as the
    per-sample path brings it there before scaling: bilinear, or area
    averaging when it shrinks; labels by nearest neighbour. A frame already
    at that size is kept as it is.
    """

    def __init__(self, dataset: SegmentationDataset, input_size: Tuple[int, int],
                 device: torch.device):
        width, height = input_size
        images = torch.empty((len(dataset), height, width, 3), dtype=torch.uint8)
        labels = torch.empty((len(dataset), height, width), dtype=torch.uint8)
        for index in range(len(dataset)):
            image, label = dataset.load(index)
            if label.shape != (height, width):
                shrinks = label.shape[0] > height and label.shape[1] > width
                image = cv2.resize(image, input_size, interpolation=cv2.INTER_AREA if shrinks
                                   else cv2.INTER_LINEAR)
                label = cv2.resize(label, input_size, interpolation=cv2.INTER_NEAREST)
            images[index] = torch.from_numpy(image)
            labels[index] = torch.from_numpy(label)
        self.images = images.to(device)
        self.labels = labels.to(device)

    def __len__(self) -> int:
        """Return the number of frames."""
        return self.labels.shape[0]


class DeviceBatches:
    """
    Augmented batches on the device, in the order of ``sampler`` (else 0, 1, ...).

    A drop-in for the training DataLoader: ``len()`` batches, each (Bx3xHxW
    uint8 RGB, BxHxW int64 labels) on the frames' device; ``dataset`` is the
    dataset the frames came from; ``generator`` the sampler's generator.
    """

    def __init__(self, frames: DecodedFrames, config: AugmentConfig, batch_size: int,
                 dataset: SegmentationDataset, sampler: Optional[Sampler] = None,
                 drop_last: bool = True, generator: Optional[torch.Generator] = None):
        self.frames, self.config, self.batch_size = frames, config, batch_size
        self.dataset, self.sampler, self.drop_last = dataset, sampler, drop_last
        self.generator = generator if generator is not None else torch.Generator()

    def _order(self) -> Sequence[int]:
        return list(self.sampler) if self.sampler is not None else range(len(self.frames))

    def __len__(self) -> int:
        """Return the number of batches an iteration yields."""
        count = len(self.sampler) if self.sampler is not None else len(self.frames)
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Yield the batches of one pass."""
        order = self._order()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            chosen = torch.as_tensor(np.asarray(order[start:start + self.batch_size]),
                                     device=self.frames.labels.device)
            yield augment_batch(self.frames.images[chosen], self.frames.labels[chosen],
                                self.config)


def uses_device_pipeline(args, device: torch.device) -> bool:
    """
    Resolve ``--pipeline``: device, loader, or auto (device on CUDA unless ``--rotate``).

    ``--pipeline device`` with ``--rotate`` stops with an error.
    """
    choice = getattr(args, 'pipeline', 'loader')
    if choice == 'device' and args.rotate:
        raise SystemExit(f'--pipeline device does not rotate (--rotate {args.rotate}); use '
                         '--pipeline loader')
    if choice == 'auto':
        return device.type == 'cuda' and not args.rotate
    return choice == 'device'


def device_batches(train_set: SegmentationDataset, device: torch.device, batch_size: int,
                   sampler: Optional[Sampler] = None, drop_last: bool = True,
                   generator: Optional[torch.Generator] = None) -> DeviceBatches:
    """
    Return :class:`DeviceBatches` of ``train_set`` augmented as its TrainTransform says.

    The frames are decoded once per dataset and device and shared by every
    batcher of it (training and the BatchNorm pass).
    """
    transform = train_set.transform
    if not isinstance(transform, TrainTransform):
        raise ValueError('the device pipeline needs the training split with its TrainTransform')
    cache = train_set.__dict__.setdefault('_decoded_frames', {})
    if device not in cache:
        size = transform.input_size or tuple(reversed(train_set.load(0)[1].shape))
        cache[device] = DecodedFrames(train_set, size, device)
    return DeviceBatches(cache[device], AugmentConfig.from_transform(transform), batch_size,
                         train_set, sampler, drop_last, generator)
