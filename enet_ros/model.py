"""
ENet (Paszke et al. 2016), one module per block of the paper's Table 1.

Array contract of :class:`ENet`: input ``Nx3xHxW`` float (normalised), output
``NxCxHxW`` logits at the input resolution. Sides that are not multiples of 8
are zero-padded up to the next multiple inside ``forward`` and the logits are
cropped back, so any size works.

Choices, where the paper leaves room:

* PReLU after every BatchNorm, encoder and decoder alike, as the paper's
  Section 3 describes. The authors' released Torch code used ReLU in the
  decoder; with PReLU the decoder can learn the ReLU (slope 0) if it wants,
  and it costs 0.1% of the parameters.
* The downsampling bottleneck projects with a 2x2 stride-2 convolution and
  pads the max-pooled skip path with zero channels (Section 3).
* Every tensor made inside ``forward`` comes from its input (``F.pad``), none
  from the host, so the forward runs in fp16 and under CUDA graph capture.

Index-free pooling (``ENet(..., index_free=True)`` or :func:`set_index_free`).
The downsampling bottlenecks pass the decoder where each 2x2 window's maximum
was. By default that is ``max_pool2d(return_indices=True)``'s flat indices and
the decoder calls ``max_unpool2d`` (a scatter: MaxUnpool or ScatterND in ONNX,
which many runtimes lack). Index-free, the same information is a one-hot mask
of the first maximum among each window's four elements (the four sub-planes of
``pixel_unshuffle``, compared with the pooled maximum, first true in row-major
order; :func:`max_pool_mask`), and unpooling is ``pixel_shuffle(value *
mask)`` (:func:`max_unpool_mask`): no index arithmetic, no scatter. That is
max-pool-with-indices and max-unpool exactly, ties included (both take the
first maximum in row-major order), for inputs without NaN; the state dict is
the same, so either network loads any model file. The encoder's pooled sides
are always even (the input is padded to a multiple of 8), which the mask needs.
"""

from typing import List, Tuple

import torch
from torch import nn
import torch.nn.functional as F

#: The encoder reduces each side by 8 (initial block, 1.0 and 2.0).
OUTPUT_STRIDE = 8


def _conv_bn_prelu(in_channels: int, out_channels: int, kernel_size, stride=1,
                   padding=0, dilation=1) -> List[nn.Module]:
    """Convolution (no bias), BatchNorm and PReLU, as a list of modules."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                  dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.PReLU(out_channels),
    ]


class InitialBlock(nn.Module):
    """13-filter 3x3 stride-2 convolution beside a 2x2 max-pool, concatenated to 16."""

    def __init__(self, in_channels: int = 3, out_channels: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1,
                              bias=False)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(out_channels)
        self.prelu = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map Nx3xHxW to Nx16x(H/2)x(W/2)."""
        return self.prelu(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


class RegularBottleneck(nn.Module):
    """Bottleneck with a regular, dilated or asymmetric (5x1 then 1x5) middle convolution."""

    def __init__(self, channels: int, dilation: int = 1, asymmetric: bool = False,
                 dropout: float = 0.1, projection_ratio: int = 4):
        super().__init__()
        internal = channels // projection_ratio
        if asymmetric:
            middle = [
                nn.Conv2d(internal, internal, (5, 1), padding=(2, 0), bias=False),
                nn.Conv2d(internal, internal, (1, 5), padding=(0, 2), bias=False),
                nn.BatchNorm2d(internal),
                nn.PReLU(internal),
            ]
        else:
            middle = _conv_bn_prelu(internal, internal, 3, padding=dilation, dilation=dilation)
        self.branch = nn.Sequential(
            *_conv_bn_prelu(channels, internal, 1),
            *middle,
            nn.Conv2d(internal, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.Dropout2d(dropout),
        )
        self.prelu = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block: shape preserved."""
        return self.prelu(x + self.branch(x))


def max_pool_mask(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    2x2 stride-2 max-pool of NxCxHxW ``x``: (NxCx(H/2)x(W/2) maxima, the same-sized mask).

    The mask says, for each window, which of its four elements holds the
    first maximum in row-major order (0 top left, 1 top right, 2 bottom left,
    3 bottom right): the element ``max_pool2d(return_indices=True)`` points
    at. It is the one-hot mask over the four sub-planes of
    ``pixel_unshuffle(x, 2)`` stored as the position of its one (uint8, one
    byte a window; :func:`max_unpool_mask` expands it). H and W must be even
    (ENet's always are); odd sides raise ValueError. Exact for inputs without
    NaN.
    """
    height, width = x.shape[-2:]
    if height % 2 or width % 2:
        raise ValueError(f'index-free max-pool needs even sides, got {height}x{width}')
    pooled = F.max_pool2d(x, 2, stride=2)
    # The four sub-planes of pixel_unshuffle(x, 2), as strided views (no copy).
    top_left, top_right, bottom_left = x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2]
    # First true of (top_left, top_right, bottom_left, bottom_right) == pooled.
    position = torch.where(top_left == pooled, 0, torch.where(
        top_right == pooled, 1, torch.where(bottom_left == pooled, 2, 3)))
    return pooled, position.to(torch.uint8)


def max_unpool_mask(value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """
    Max-unpool NxCxhxw ``value`` with a :func:`max_pool_mask` mask: NxCx2hx2w.

    ``pixel_shuffle(value * one_hot(mask))``: each value goes to its window's
    position, zeros elsewhere, like ``max_unpool2d`` with the matching indices.
    """
    sub_planes = [torch.where(mask == position, value, 0.0) for position in range(4)]
    return F.pixel_shuffle(torch.stack(sub_planes, dim=2).flatten(1, 2), 2)


class DownsamplingBottleneck(nn.Module):
    """
    Bottleneck that halves the resolution and returns where the max-pool's maxima were.

    That is the max-pool indices, or with ``index_free`` a one-hot mask
    (:func:`max_pool_mask`); the matching :class:`UpsamplingBottleneck` must
    use the same form.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.1,
                 projection_ratio: int = 4, index_free: bool = False):
        super().__init__()
        internal = in_channels // projection_ratio
        self.extra_channels = out_channels - in_channels
        self.index_free = index_free
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)
        self.branch = nn.Sequential(
            *_conv_bn_prelu(in_channels, internal, 2, stride=2),
            *_conv_bn_prelu(internal, internal, 3, padding=1),
            nn.Conv2d(internal, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.Dropout2d(dropout),
        )
        self.prelu = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Map NxCinxHxW to (NxCoutx(H/2)x(W/2), max-pool indices or mask)."""
        if self.index_free:
            main, indices = max_pool_mask(x)
        else:
            main, indices = self.pool(x)
        # Zero channels appended on the skip path (F.pad: no host tensor, capture-safe).
        main = F.pad(main, (0, 0, 0, 0, 0, self.extra_channels))
        return self.prelu(main + self.branch(x)), indices


class UpsamplingBottleneck(nn.Module):
    """Bottleneck that doubles the resolution, max-unpooling with the encoder's indices or mask."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.1,
                 projection_ratio: int = 4, index_free: bool = False):
        super().__init__()
        internal = in_channels // projection_ratio
        self.index_free = index_free
        self.main_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.branch = nn.Sequential(
            *_conv_bn_prelu(in_channels, internal, 1),
            nn.ConvTranspose2d(internal, internal, 3, stride=2, padding=1, output_padding=1,
                               bias=False),
            nn.BatchNorm2d(internal),
            nn.PReLU(internal),
            nn.Conv2d(internal, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.Dropout2d(dropout),
        )
        self.prelu = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Map NxCinxHxW to NxCoutx2Hx2W; ``indices`` (or mask) from the matching downsampling."""
        # Inputs are padded to a multiple of 8, so every unpool exactly doubles the size.
        if self.index_free:
            main = max_unpool_mask(self.main_conv(x), indices)
        else:
            main = F.max_unpool2d(self.main_conv(x), indices, kernel_size=2, stride=2)
        return self.prelu(main + self.branch(x))


class ENet(nn.Module):
    """
    ENet for ``num_classes`` classes; attribute names follow the paper's Table 1.

    ``index_free``: pool and unpool with one-hot masks instead of indices
    (module docstring); same weights, same logits.
    """

    def __init__(self, num_classes: int, index_free: bool = False):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f'num_classes must be at least 1, got {num_classes}')
        self.num_classes = num_classes
        self.initial = InitialBlock(3, 16)
        # Stage 1
        self.downsample1_0 = DownsamplingBottleneck(16, 64, dropout=0.01)
        self.regular1_1 = RegularBottleneck(64, dropout=0.01)
        self.regular1_2 = RegularBottleneck(64, dropout=0.01)
        self.regular1_3 = RegularBottleneck(64, dropout=0.01)
        self.regular1_4 = RegularBottleneck(64, dropout=0.01)
        # Stage 2
        self.downsample2_0 = DownsamplingBottleneck(64, 128, dropout=0.1)
        self.regular2_1 = RegularBottleneck(128)
        self.dilated2_2 = RegularBottleneck(128, dilation=2)
        self.asymmetric2_3 = RegularBottleneck(128, asymmetric=True)
        self.dilated2_4 = RegularBottleneck(128, dilation=4)
        self.regular2_5 = RegularBottleneck(128)
        self.dilated2_6 = RegularBottleneck(128, dilation=8)
        self.asymmetric2_7 = RegularBottleneck(128, asymmetric=True)
        self.dilated2_8 = RegularBottleneck(128, dilation=16)
        # Stage 3: stage 2 without the downsampling
        self.regular3_1 = RegularBottleneck(128)
        self.dilated3_2 = RegularBottleneck(128, dilation=2)
        self.asymmetric3_3 = RegularBottleneck(128, asymmetric=True)
        self.dilated3_4 = RegularBottleneck(128, dilation=4)
        self.regular3_5 = RegularBottleneck(128)
        self.dilated3_6 = RegularBottleneck(128, dilation=8)
        self.asymmetric3_7 = RegularBottleneck(128, asymmetric=True)
        self.dilated3_8 = RegularBottleneck(128, dilation=16)
        # Stage 4 (decoder)
        self.upsample4_0 = UpsamplingBottleneck(128, 64, dropout=0.1)
        self.regular4_1 = RegularBottleneck(64)
        self.regular4_2 = RegularBottleneck(64)
        # Stage 5
        self.upsample5_0 = UpsamplingBottleneck(64, 16, dropout=0.1)
        self.regular5_1 = RegularBottleneck(16)
        self.fullconv = nn.ConvTranspose2d(16, num_classes, 3, stride=2, padding=1,
                                           output_padding=1, bias=False)
        set_index_free(self, index_free)

    @property
    def index_free(self) -> bool:
        """Whether pooling passes one-hot masks instead of indices (see :func:`set_index_free`)."""
        return self.downsample1_0.index_free

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run stages 0-3 on padded input: (Nx128x(H/8)x(W/8), indices 1.0, indices 2.0)."""
        x = self.initial(x)
        x, indices1 = self.downsample1_0(x)
        x = self.regular1_4(self.regular1_3(self.regular1_2(self.regular1_1(x))))
        x, indices2 = self.downsample2_0(x)
        for block in (self.regular2_1, self.dilated2_2, self.asymmetric2_3, self.dilated2_4,
                      self.regular2_5, self.dilated2_6, self.asymmetric2_7, self.dilated2_8,
                      self.regular3_1, self.dilated3_2, self.asymmetric3_3, self.dilated3_4,
                      self.regular3_5, self.dilated3_6, self.asymmetric3_7, self.dilated3_8):
            x = block(x)
        return x, indices1, indices2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map Nx3xHxW normalised images to NxCxHxW logits."""
        height, width = x.shape[-2:]
        pad_bottom = -height % OUTPUT_STRIDE
        pad_right = -width % OUTPUT_STRIDE
        if pad_bottom or pad_right:
            x = F.pad(x, (0, pad_right, 0, pad_bottom))
        x, indices1, indices2 = self.encode(x)
        x = self.regular4_2(self.regular4_1(self.upsample4_0(x, indices2)))
        x = self.regular5_1(self.upsample5_0(x, indices1))
        x = self.fullconv(x)
        if pad_bottom or pad_right:
            x = x[..., :height, :width]
        return x


def set_index_free(model: nn.Module, index_free: bool = True) -> nn.Module:
    """
    Switch every down- and upsampling bottleneck of ``model`` to masks (or back) in place.

    Works on a built, loaded or folded ENet (the weights are untouched);
    returns ``model``.
    """
    for module in model.modules():
        if isinstance(module, (DownsamplingBottleneck, UpsamplingBottleneck)):
            module.index_free = bool(index_free)
    return model


def count_parameters(model: nn.Module) -> int:
    """Return the number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
