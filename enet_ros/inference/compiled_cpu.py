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

Compilation needs a C++ compiler. If the first compiled call fails, a
warning is logged and the folded network runs eagerly from then on; a
failure after a compiled call succeeded (a recompilation for a new layout) is
raised. The switch replaces :meth:`CompiledCpuPath.forward` once, so frames
do not check which one runs.
"""

import logging
from typing import Sequence

import torch
from torch import nn

from .eager import EagerPath
from .frames import FramePipeline

LOGGER = logging.getLogger(__name__)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ''


class CompiledCpuPath(EagerPath):
    """Run the network compiled by ``torch.compile``, falling back to eager if that fails."""

    def __init__(self, network: nn.Module, pipeline: FramePipeline, notes: Sequence[str] = ()):
        super().__init__(network, pipeline, 'optimised', notes)
        self._compiled_network = torch.compile(network, dynamic=False)
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
        """``torch.compile``, ``torch.compile (not yet run)`` or ``torch.compile failed``."""
        return (self._state,)
