"""
BatchNorm folding: an inference copy of :class:`~enet_ros.model.ENet` with fewer layers.

Used by the optimised execution paths (compiled CPU, CUDA graphs); the eager
reference runs the network as trained.

In eval mode a BatchNorm is a per-channel affine map ``y = x * scale + shift``
with ``scale = gamma / sqrt(running_var + eps)`` and
``shift = beta - running_mean * scale``. When it directly follows a
convolution, the affine map is folded into that convolution's weights and
bias, and the BatchNorm disappears:

* ``Conv2d`` weights ``OxIxkhxkw``: row ``o`` is multiplied by ``scale[o]``.
* ``ConvTranspose2d`` weights ``IxOxkhxkw``: column ``o`` is multiplied by ``scale[o]``.
* The asymmetric middle convolution (5x1 then 1x5, then BatchNorm) folds into
  the second (1x5) convolution only.
* The initial block's BatchNorm follows a concatenation of 13 convolution
  channels and 3 max-pool channels: the first 13 channels fold into the
  convolution; the 3 pool channels keep their affine map, applied to the
  quarter-size pooled image (cheap).

``Dropout2d`` is the identity in eval mode and is dropped too. Folding is done
in float64 and stored in float32, so the folded network differs from the
original only by float32 rounding (a few ulps of the logits); see
``test/test_fast_path.py`` for the label agreement. Folded weights can exceed
fp16's range where the unfolded ones do not; :mod:`enet_ros.inference.network`
checks them before casting.

The folded network is for inference only: it has no BatchNorm to train and
its ``state_dict`` is not a model file's.
"""

import copy
from typing import List, Tuple

import torch
from torch import nn

from ..model import ENet, InitialBlock


def batchnorm_affine(bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return (scale, shift), float64 vectors of length C, of an eval-mode BatchNorm."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError('cannot fold a BatchNorm without running statistics')
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    return scale, shift


def _folded_conv(conv: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> nn.Module:
    """Copy ``conv`` (Conv2d or ConvTranspose2d, groups 1) with the affine map folded in."""
    if conv.groups != 1:
        raise ValueError('folding supports groups=1 convolutions only')
    folded = copy.deepcopy(conv)
    weight = conv.weight.detach().double()
    if isinstance(conv, nn.ConvTranspose2d):
        weight = weight * scale.view(1, -1, 1, 1)
    elif isinstance(conv, nn.Conv2d):
        weight = weight * scale.view(-1, 1, 1, 1)
    else:
        raise TypeError(f'cannot fold a BatchNorm into {type(conv).__name__}')
    bias = shift if conv.bias is None else conv.bias.detach().double() * scale + shift
    dtype = conv.weight.dtype
    folded.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    folded.bias = nn.Parameter(bias.to(dtype), requires_grad=False)
    return folded


def fold_sequential(sequence: nn.Sequential) -> nn.Sequential:
    """
    Fold every ``(Conv2d | ConvTranspose2d, BatchNorm2d)`` pair; drop ``Dropout2d``.

    Other modules (PReLU, convolutions not followed by a BatchNorm) are kept in
    order. A BatchNorm that does not follow a convolution is kept as it is.
    """
    modules: List[nn.Module] = list(sequence)
    out: List[nn.Module] = []
    index = 0
    while index < len(modules):
        module = modules[index]
        following = modules[index + 1] if index + 1 < len(modules) else None
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) \
                and isinstance(following, nn.BatchNorm2d):
            out.append(_folded_conv(module, *batchnorm_affine(following)))
            index += 2
            continue
        if not isinstance(module, nn.Dropout2d):
            out.append(copy.deepcopy(module))
        index += 1
    return nn.Sequential(*out)


class FoldedInitialBlock(nn.Module):
    """
    The initial block with its BatchNorm folded (see the module docstring).

    Maps Nx3xHxW to Nx16x(H/2)x(W/2), like :class:`~enet_ros.model.InitialBlock`.
    """

    def __init__(self, block: InitialBlock):
        super().__init__()
        scale, shift = batchnorm_affine(block.bn)
        conv_channels = block.conv.out_channels
        dtype = block.conv.weight.dtype
        self.conv = _folded_conv(block.conv, scale[:conv_channels], shift[:conv_channels])
        self.pool = copy.deepcopy(block.pool)
        self.register_buffer('pool_scale', scale[conv_channels:].to(dtype).view(1, -1, 1, 1))
        self.register_buffer('pool_shift', shift[conv_channels:].to(dtype).view(1, -1, 1, 1))
        self.prelu = copy.deepcopy(block.prelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map Nx3xHxW to Nx16x(H/2)x(W/2)."""
        pooled = torch.addcmul(self.pool_shift, self.pool(x), self.pool_scale)
        return self.prelu(torch.cat([self.conv(x), pooled], dim=1))


def fold_enet(model: ENet) -> ENet:
    """
    Return an eval-mode copy of ``model`` with every BatchNorm folded; ``model`` is unchanged.

    The copy has the same ``forward`` and array contract as ``model``.
    """
    if model.training:
        raise ValueError('fold_enet needs a model in eval mode (BatchNorm running statistics)')
    folded = copy.deepcopy(model)
    for name, child in list(folded.named_children()):
        if isinstance(child, InitialBlock):
            setattr(folded, name, FoldedInitialBlock(child))
            continue
        for attribute in ('branch', 'main_conv'):
            sequence = getattr(child, attribute, None)
            if isinstance(sequence, nn.Sequential):
                setattr(child, attribute, fold_sequential(sequence))
    folded.requires_grad_(False)
    return folded.eval()


def count_batchnorms(model: nn.Module) -> int:
    """Count the BatchNorm2d modules in ``model`` (0 after :func:`fold_enet`)."""
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
