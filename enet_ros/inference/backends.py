"""
Which runtime runs the optimised CPU path: torch or OpenVINO, and with how many threads.

``inference_backend`` (Segmenter option, node parameter; the Segmenter's
default, None, is the environment's ``ENET_ROS_BACKEND`` or else ``auto``, so
that the bag tools can be told too):

* ``torch``: the torch paths (compiled CPU, CUDA graphs, eager), as before.
* ``openvino``: :mod:`~enet_ros.inference.openvino_backend` on the CPU. A CPU
  without the instructions its plugin needs, openvino not installed, or a
  graph that fails to load: a warning, and the torch path runs instead. On
  CUDA, or with ``optimize=False`` (the eager reference), torch runs, with a
  warning.
* ``auto`` (default): torch where the CPU has AVX-512 (there torch bf16, or
  compiled fp32, was faster than OpenVINO in every run). Elsewhere, where
  OpenVINO is installed and the CPU can run it, both paths are built and
  warmed and timed: a trial at start-up (:func:`time_backends`, frames of the
  first warm-up size in turns) picks the first (torch unless OpenVINO was at
  least 15 % faster: torch kept its speed beside busy processes, OpenVINO
  did not), and while frames run the other is re-timed and takes over when
  at least 15 % faster
  (:class:`~enet_ros.inference.timed_paths.TimedPaths`). Why timed, and
  while frames run: on the same kind of 2-core Zen 3 (AVX2) OpenVINO took
  0.8x the time of compiled torch fp32 idle in one run and 1.1-1.6x in
  others, and beside busy processes torch was faster in every run
  (docs/performance.md), so no CPU-feature rule held. Without warm-up
  (nothing timed) OpenVINO alone, as before. CUDA and the eager reference:
  torch.

``cpu_threads``: None or 0 is auto: both runtimes use torch's setting for
the process (``torch.get_num_threads()``: one per core, or ``OMP_NUM_THREADS``,
unless the process chose), which torch keeps; OpenVINO, compiled for that
count and for half of it, runs frames with whichever it times faster while
they run (:class:`~enet_ros.inference.cpu_runtime.ThreadChoice`: fewer
threads won beside busy processes). A number: OpenVINO's
``INFERENCE_NUM_THREADS``, fixed, or for torch ``torch.set_num_threads``
(torch has one intra-op pool per process, so that sets it for the whole
process).
"""

from dataclasses import dataclass
import importlib
import logging
import os
import statistics
import time
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from . import cpu_runtime
from .config import SegmenterConfigError

LOGGER = logging.getLogger(__name__)

INFERENCE_BACKENDS = ('auto', 'torch', 'openvino')
#: What :func:`resolve_backend` returns when ``auto`` decides by a timed trial.
TIMED = 'timed'
#: Frames each path runs in the trial (in turns, after the warm-up).
TRIAL_FRAMES = 8
#: Environment variable: the backend where ``inference_backend`` is None.
BACKEND_ENV = 'ENET_ROS_BACKEND'


def check_backend(choice: Optional[str]) -> str:
    """Return the normalised choice (None: ``ENET_ROS_BACKEND`` or auto); raise if unknown."""
    source = 'inference_backend'
    if choice is None:
        choice = os.environ.get(BACKEND_ENV, '').strip() or 'auto'
        source = BACKEND_ENV
    value = str(choice).strip().lower()
    if value not in INFERENCE_BACKENDS:
        raise SegmenterConfigError(f"{source} '{choice}' is not one of "
                                   f"{', '.join(INFERENCE_BACKENDS)}")
    return value


def check_threads(threads: Optional[int]) -> Optional[int]:
    """Return a thread count, None for auto (None or 0); raise for a negative one."""
    if threads is None or int(threads) == 0:
        return None
    if int(threads) < 0:
        raise SegmenterConfigError(f'cpu_threads {threads} must be at least 1 (0 = auto)')
    return int(threads)


def _openvino_installed() -> bool:
    from .openvino_backend import openvino_version
    return openvino_version() is not None


def preload_openvino_modules() -> Tuple[str, ...]:
    """
    Import now the modules an OpenVINO build imports on first use; return the names imported.

    For a process that builds a Segmenter on one thread while another must
    keep answering: the node's configure transition and model swaps, beside
    its executor. Importing ``onnx`` (the ONNX exporter's first use) held the
    GIL for 0.9 s on a 2-core Zen 3, and longer on busy cores, so the node
    left ``get_state`` unanswered that long. Imports nothing where the
    OpenVINO path cannot run (not installed, or the CPU lacks what it needs).
    """
    if not _openvino_installed() or cpu_runtime.openvino_cpu_supported(
            cpu_runtime.cpu_features()):
        return ()
    imported = []
    for name in ('openvino', 'onnx'):
        try:
            importlib.import_module(name)
        except ImportError:  # the build then falls back with its own warning
            continue
        imported.append(name)
    return tuple(imported)


def resolve_backend(choice: Optional[str], device: torch.device, dtype: torch.dtype,
                    optimized: bool) -> Tuple[str, Optional[str]]:
    """
    Return ``('torch' | 'openvino' | TIMED, note)`` for a choice; see the module docstring.

    ``note``: None, or why an explicit ``openvino`` gets torch (logged as a
    warning by the caller). Loading can still fail later; the caller falls
    back then too.
    """
    choice = check_backend(choice)
    if choice == 'torch':
        return 'torch', None
    explicit = choice == 'openvino'
    if device.type != 'cpu' or not optimized:
        why = 'runs on the CPU only' if device.type != 'cpu' else 'is not the eager reference'
        return 'torch', (f'inference_backend openvino {why}; running torch'
                         if explicit else None)
    features = cpu_runtime.cpu_features()
    unsupported = cpu_runtime.openvino_cpu_supported(features)
    if unsupported:
        return 'torch', (f'inference_backend openvino: {unsupported}; running torch'
                         if explicit else None)
    if explicit:
        return 'openvino', None
    if dtype == torch.bfloat16 or cpu_runtime.has_avx512(features):
        return 'torch', None  # measured faster there
    return (TIMED, None) if _openvino_installed() else ('torch', None)


def apply_torch_threads(threads: Optional[int]) -> None:
    """Set torch's intra-op threads (process-wide) when a count was asked for."""
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def open_openvino_path(model, input_size, dtype: torch.dtype, threads: Optional[int]):
    """
    Build the OpenVINO path for ``model``, or return None after a warning saying why not.

    Never raises for a runtime that is missing or fails to load the graph.
    """
    from .frames import FramePipeline
    from .network import prepare_network

    try:
        from .openvino_backend import OpenVinoPath

        prepared = prepare_network(model, torch.device('cpu'), torch.float32, fold=True,
                                   channels_last=False, index_free=True)
        pipeline = FramePipeline(model.metadata, input_size, torch.device('cpu'), dtype)
        precision = 'bf16' if dtype == torch.bfloat16 else 'fp32'
        return OpenVinoPath(prepared.network, pipeline, model.metadata,
                            threads or torch.get_num_threads(), precision,
                            prepared.notes, adaptive=threads is None)
    except SegmenterConfigError:
        raise
    except Exception as error:  # ImportError, the exporter's or the plugin's errors
        lines = str(error).strip().splitlines()
        LOGGER.warning('inference_backend openvino failed to load, running torch instead: '
                       '%s: %s', type(error).__name__, lines[0][:300] if lines else '')
        return None


@dataclass(frozen=True)
class BackendTrial:
    """The start-up trial of ``auto``: median milliseconds per frame of each path, by name."""

    medians_ms: Mapping[str, float]
    frame_size: Tuple[int, int]
    frames: int
    #: The name that starts unless another's median is under ``margin`` times its own.
    preferred: Optional[str] = None
    margin: float = cpu_runtime.SWITCH_MARGIN

    @property
    def winner(self) -> str:
        """
        Return the name to start with: the smallest median (the first given on a tie).

        With ``preferred``, that one unless the fastest is faster by the margin that
        a move while frames run needs too (the two choices agree).
        """
        fastest = min(self.medians_ms, key=self.medians_ms.__getitem__)
        if self.preferred not in self.medians_ms:
            return fastest
        preferred_ms = self.medians_ms[self.preferred]
        return fastest if self.medians_ms[fastest] < self.margin * preferred_ms \
            else self.preferred

    def describe(self) -> str:
        """``auto, timed at start-up: torch 45.1 ms, openvino 52.3 ms a 480x360 frame``."""
        width, height = self.frame_size
        timings = ', '.join(f'{name} {ms:.1f} ms' for name, ms in self.medians_ms.items())
        return f'auto, timed at start-up: {timings} a {width}x{height} frame'


def time_backends(paths: Mapping[str, object], frame_size: Tuple[int, int],
                  frames: int = TRIAL_FRAMES, preferred: Optional[str] = None) -> BackendTrial:
    """
    Time warmed execution paths on the same frame, in turns; return their medians.

    ``paths``: name to an execution path (``run(image)`` takes an HxWx3
    uint8 RGB frame), already warmed at ``frame_size`` (``(width, height)``).
    In turns (A, B, A, B, ...) so that load that comes and goes during the
    trial falls on both; a fixed pseudo-random frame, as a camera's.
    ``preferred``: see :attr:`BackendTrial.winner`.
    """
    width, height = frame_size
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    times: Dict[str, list] = {name: [] for name in paths}
    with torch.inference_mode():
        for _ in range(max(1, int(frames))):
            for name, path in paths.items():
                start = time.perf_counter()
                path.run(image)
                times[name].append((time.perf_counter() - start) * 1e3)
    return BackendTrial({name: statistics.median(values) for name, values in times.items()},
                        (width, height), max(1, int(frames)), preferred)
