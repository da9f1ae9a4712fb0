"""
The network an execution path runs: built from the model file, folded, cast and laid out.

:func:`prepare_network` builds the eval-mode ENet, switches it to index-free
pooling when asked (:func:`enet_ros.model.set_index_free`), folds its
BatchNorms when asked (:mod:`enet_ros.inference.fold`), casts it to the
precision (fp32, fp16 or bf16), moves it to the device and sets the
activations' memory format.

Precision guard. Before the cast every layer's weights are checked:

* Not finite (NaN or infinity) in fp32, which only folding can cause (model
  files are checked finite when they load, and folding divides by
  ``sqrt(running_var + eps)``): :class:`NonFiniteWeightsError`, naming the
  layer. Nothing sensible can run; ``optimize=False`` (no folding) can.
* Finite in fp32 but beyond the target precision's range (fp16: ``|w| >
  65504``; a BatchNorm with a tiny ``running_var`` and a large ``gamma``
  folds into such weights while the unfolded layer's outputs are ordinary
  numbers): the layer stays in fp32, wrapped in :class:`Float32Layer` (inputs
  cast up, outputs cast back), and a warning names it. The network keeps
  working instead of producing infinities and then NaNs.
"""

from dataclasses import dataclass, field
import logging
from typing import List

import torch
from torch import nn

from .config import SegmenterConfigError
from .fold import fold_enet
from ..model import set_index_free
from ..model_file import LoadedModel

LOGGER = logging.getLogger(__name__)


class NonFiniteWeightsError(SegmenterConfigError):
    """A layer's weights are NaN or infinite after BatchNorm folding."""


class Float32Layer(nn.Module):
    """
    Run ``layer`` in fp32 inside a lower-precision network.

    Floating-point tensor inputs are cast to fp32, the output is cast back to
    the first input's dtype. :func:`cast_network` leaves the wrapped layer's
    weights in fp32.
    """

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, *inputs):
        """Run the layer in fp32; return its output in the first input's dtype."""
        dtype = inputs[0].dtype
        widened = [t.float() if torch.is_tensor(t) and t.is_floating_point() else t
                   for t in inputs]
        return self.layer(*widened).to(dtype)


def _own_tensors(module: nn.Module) -> List[torch.Tensor]:
    """Floating-point parameters and buffers of ``module`` itself (not of its children)."""
    tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
    return [t for t in tensors if t.is_floating_point()]


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted path ``name`` under ``root``."""
    parent_name, _, attribute = name.rpartition('.')
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attribute, module)


def _cast_outside_float32_layers(module: nn.Module, dtype: torch.dtype) -> None:
    if isinstance(module, Float32Layer):
        return
    module._apply(lambda t: t.to(dtype) if t.is_floating_point() else t, recurse=False)
    for child in module.children():
        _cast_outside_float32_layers(child, dtype)


@torch.no_grad()
def cast_network(network: nn.Module, dtype: torch.dtype) -> List[str]:
    """
    Cast ``network`` (fp32) to ``dtype`` in place, guarding the range; return fp32 layers.

    See the module docstring: raises :class:`NonFiniteWeightsError` for a
    layer with non-finite weights; a layer whose weights exceed ``dtype``'s
    range is wrapped in :class:`Float32Layer` and named in the returned list.
    The root module itself is never wrapped (ENet has no weights of its own).
    """
    limit = torch.finfo(dtype).max
    too_large = []
    for name, module in network.named_modules():
        tensors = _own_tensors(module)
        if not tensors:
            continue
        if not all(bool(torch.isfinite(t).all()) for t in tensors):
            raise NonFiniteWeightsError(
                f"layer '{name or type(module).__name__}' ({type(module).__name__}) has NaN or "
                'infinite weights after folding BatchNorm (a tiny running_var with a tiny eps?); '
                'run the unfolded network with optimize=False')
        largest = max((float(t.abs().max()) for t in tensors if t.numel()), default=0.0)
        if largest > limit and name:
            too_large.append((name, type(module).__name__, largest))
    # Deepest first, so that the dotted names of the rest stay valid.
    for name, _, _ in sorted(too_large, key=lambda item: -item[0].count('.')):
        _replace(network, name, Float32Layer(network.get_submodule(name)))
    if too_large:
        LOGGER.warning('%d layer(s) kept in fp32, their weights exceed the %s range (%g): %s',
                       len(too_large), str(dtype).replace('torch.', ''), limit,
                       ', '.join(f'{name} ({kind}, max |w| {largest:.3g})'
                                 for name, kind, largest in too_large))
    _cast_outside_float32_layers(network, dtype)
    return [name for name, _, _ in too_large]


@dataclass
class PreparedNetwork:
    """An inference network and what was done to it (for ``describe()``)."""

    network: nn.Module
    notes: List[str] = field(default_factory=list)
    float32_layers: List[str] = field(default_factory=list)


def prepare_network(model: LoadedModel, device: torch.device, dtype: torch.dtype,
                    fold: bool, channels_last: bool, index_free: bool = False) -> PreparedNetwork:
    """Build, optionally make index-free and fold, cast (guarded), move and lay out the network."""
    network = model.build()
    notes = []
    if index_free:
        set_index_free(network)
        notes.append('index-free pooling')
    if fold:
        network = fold_enet(network)
        notes.append('BatchNorm folded')
    float32_layers = cast_network(network, dtype)  # on the CPU: no device syncs per tensor
    network = network.to(device)
    if float32_layers:
        notes.append(f'{len(float32_layers)} layer(s) in fp32')

    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    network = network.to(memory_format=memory_format)
    if channels_last:
        notes.append('channels_last')
    network.requires_grad_(False)
    return PreparedNetwork(network.eval(), notes, float32_layers)
