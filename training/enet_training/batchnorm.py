"""
BatchNorm statistics recomputed for averaged weights (``--ema-bn recompute``).

An average of weights taken along training is a network nobody trained: the
running means and variances its BatchNorm layers need are those of the
average's own activations, not the average of the trained model's. Early in a
run from scratch the two differ enough that a good average scores near chance
with averaged statistics (CamVid, epoch 33 of a 300-epoch run: 4 % val mIoU;
56.3 % with the statistics recomputed). The remedy is SWA's: run training
frames through the averaged weights and keep the statistics they produce.
"""

from typing import Iterable, Tuple

from enet_ros.segmenter import normalize
import torch
from torch import nn

__all__ = ['recompute_batchnorm']


def recompute_batchnorm(network: nn.Module, batches: Iterable[Tuple[torch.Tensor, ...]],
                        device: torch.device, memory_format: torch.memory_format,
                        mean: torch.Tensor, inv_std: torch.Tensor) -> None:
    """
    Replace ``network``'s BatchNorm running statistics by those of ``batches``.

    ``batches`` yields (Nx3xHxW uint8 RGB images, ...) tuples, as the training
    loader's collate builds them; the images are normalised as in training
    (``mean``, ``inv_std``: 1x3x1x1 on the 0-255 scale). Each layer's mean and
    variance become the plain average over all batches (momentum None), as
    :func:`torch.optim.swa_utils.update_bn` computes them, but with dropout
    off: the statistics of the activations inference produces. The network's
    modes and the layers' momenta are restored.
    """
    layers = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    modes = {m: m.training for m in network.modules()}
    momenta = {m: m.momentum for m in layers}
    network.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
        layer.train()
    try:
        with torch.no_grad():
            for images, *_ in batches:
                images = images.to(device, non_blocking=True).contiguous(
                    memory_format=memory_format)
                network(normalize(images, mean, inv_std))
    finally:
        for module, training in modes.items():
            module.training = training
        for layer, momentum in momenta.items():
            layer.momentum = momentum
