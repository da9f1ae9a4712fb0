"""
The network an execution path runs: built from the model file, folded, cast and laid out.

:func:`prepare_network` builds the eval-mode ENet, folds its BatchNorms when
asked (:mod:`enet_ros.inference.fold`), casts it to the precision, moves it
to the device and sets the activations' memory format.
"""

from dataclasses import dataclass, field
from typing import List

import torch
from torch import nn

from .fold import fold_enet
from ..model_file import LoadedModel


@dataclass
class PreparedNetwork:
    """An inference network and what was done to it (for ``describe()``)."""

    network: nn.Module
    notes: List[str] = field(default_factory=list)


def prepare_network(model: LoadedModel, device: torch.device, dtype: torch.dtype,
                    fold: bool, channels_last: bool) -> PreparedNetwork:
    """Build, optionally fold, cast, move and lay out the eval-mode network."""
    network = model.build()
    notes = []
    if fold:
        network = fold_enet(network)
        notes.append('BatchNorm folded')
    network = network.to(device, dtype)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    network = network.to(memory_format=memory_format)
    if channels_last:
        notes.append('channels_last')
    network.requires_grad_(False)
    return PreparedNetwork(network.eval(), notes)
