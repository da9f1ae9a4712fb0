"""
The compiled CPU execution path: the folded channels_last network through ``torch.compile``.

The Segmenter picks it on the CPU with ``optimize=True`` unless compilation
is turned off (``torch_compile=False`` or ``ENET_ROS_COMPILE=0``). The
network comes folded (:mod:`enet_ros.inference.fold`) and channels_last;
``torch.compile`` (inductor, C++ kernels, ``dynamic=False``) compiles it on
the first frame of each input layout, so the default warm-up runs a frame at
the network size and a resized one (see
:meth:`~enet_ros.inference.eager.EagerPath.default_warmup_frames`). Argmax
runs over the contiguous channel axis. Labels agree with the eager path to
float32 rounding (see ``test/test_fast_path.py``).

Weight freezing (``freezing=True``, the Segmenter's default): inductor treats
the weights as constants, prepacks them for oneDNN and fuses convolutions with
the additions after them (``torch._inductor.config.freezing``; it needs grad
off, which the Segmenter's inference mode gives). The flag is not left set
for the process: :class:`FrozenCompiled` sets it with ``config.patch`` only
around calls that can compile (the first call with each input layout), under a
lock, because inductor's config is one per process, not per thread (a model
being swapped in compiles on another thread while frames run). The compiled
code holds this network's weights, so it cannot be shared: each path gets a
forward function with a code object of its own (dynamo keeps compiled code
per code object), compiles once per input layout, and its code goes when the
path does. The price is set-up time: every frozen Segmenter compiles anew
(inductor does not cache graphs with frozen weights across processes either),
where unfrozen Segmenters of one network size share the compiled code
(weights are graph inputs) and a second one is ready in a fraction of a
second. Changing ``network``'s weights after the first frame does not reach
frozen code.

Compilation needs a C++ compiler. If the first compiled call fails, a
warning is logged and the folded network runs eagerly from then on; a
failure after a compiled call succeeded (a recompilation for a new layout) is
raised. The switch replaces :meth:`CompiledCpuPath.forward` once, so frames
do not check which one runs.
"""

import logging
import threading
from typing import Callable, Sequence, Set, Tuple

import torch
from torch import nn

from .eager import EagerPath
from .frames import FramePipeline

LOGGER = logging.getLogger(__name__)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ''


def _forward_of_its_own(network: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return ``network``'s forward as a function with a code object no other function has."""
    def forward(network_input: torch.Tensor) -> torch.Tensor:
        return network(network_input)

    forward.__code__ = forward.__code__.replace()  # a copy: dynamo caches per code object
    return forward


#: Held while a frozen compilation may run: inductor's config is process-wide.
_FREEZING_LOCK = threading.Lock()


class FrozenCompiled:
    """``torch.compile`` of ``network`` with its weights frozen; see the module docstring."""

    def __init__(self, network: nn.Module):
        import torch._inductor.config as inductor_config  # loaded by torch.compile anyway

        self._inductor_config = inductor_config
        self._compiled = torch.compile(_forward_of_its_own(network), dynamic=False,
                                       fullgraph=True)
        self._compiled_for: Set[Tuple] = set()

    def __call__(self, network_input: torch.Tensor) -> torch.Tensor:
        """Run the compiled network; compile (frozen) first for an input layout not seen yet."""
        key = (tuple(network_input.shape), network_input.stride(), network_input.dtype,
               torch.is_grad_enabled())
        if key in self._compiled_for:
            return self._compiled(network_input)
        with _FREEZING_LOCK, self._inductor_config.patch(freezing=True):
            logits = self._compiled(network_input)
        self._compiled_for.add(key)
        return logits


class CompiledCpuPath(EagerPath):
    """Run the network compiled by ``torch.compile``, falling back to eager if that fails."""

    def __init__(self, network: nn.Module, pipeline: FramePipeline, notes: Sequence[str] = (),
                 freezing: bool = False):
        super().__init__(network, pipeline, 'optimised', notes)
        self.freezing = bool(freezing)
        self._compiled_network = (FrozenCompiled(network) if self.freezing
                                  else torch.compile(network, dynamic=False))
        self._state = 'torch.compile (not yet run)'
        self.forward = self._first_forward

    @property
    def compiled(self) -> bool:
        """Return whether frames run compiled; False after a compilation failure."""
        return self._compiled_network is not None

    def _first_forward(self, network_input: torch.Tensor) -> torch.Tensor:
        """Compile and run; on success the compiled network, on failure the eager one, stays."""
        try:
            logits = self._compiled_network(network_input)
        except Exception as error:  # inductor raises many types (no compiler, ...)
            LOGGER.warning('torch.compile of ENet failed, running it eagerly instead: %s: %s',
                           type(error).__name__, _first_line(error))
            self._compiled_network = None
            self._state = 'torch.compile failed'
            self.forward = self.network
            return self.network(network_input)
        self._state = 'torch.compile'
        self.forward = self._compiled_network
        return logits

    def path_notes(self) -> Sequence[str]:
        """``torch.compile``, ``... (not yet run)``, ``... failed``; then ``frozen weights``."""
        return (self._state, 'frozen weights') if self.freezing else (self._state,)
