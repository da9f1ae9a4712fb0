"""
The Segmenter: one inference path for the node, bag evaluation and training evaluation.

Array contract of :meth:`Segmenter.segment`: input an HxWx3 uint8 image, RGB
unless ``bgr=True`` (any strides: a view into a message buffer works); output
an HxW uint8 label map at the input resolution, values in ``[0, C)``, and on
request an HxW float32 confidence map (softmax probability of the chosen
class).

This module is a facade. The work lives in :mod:`enet_ros.inference`:

* ``config``: device, precision and size choices, ``SegmenterConfigError``;
* ``network``: the network built from the model file, folded (``fold``),
  cast with a range check, laid out;
* ``frames``: pre- and post-processing shared by every path (upload, resize,
  normalise, argmax, label resize, download);
* one module per execution path, each an object with the same interface
  (``run``, ``forward``, ``warm_up``, ``describe``), chosen once when the
  Segmenter is built (:meth:`Segmenter.describe` says which one runs):

  - ``eager``: ``optimize=False``, the model as trained, NCHW, no
    compilation, no graphs; the reference the other paths are tested against.
  - ``compiled_cpu``: the CPU with ``optimize=True`` (default): BatchNorm
    folded, channels_last, ``torch.compile`` (inductor); bf16 where the CPU
    has it (``precision='auto'``, see
    :func:`~enet_ros.inference.config.resolve_precision`), and then with the
    weights frozen into the compiled code (``freezing``); falls back to the
    folded eager network if compilation fails. ``torch_compile=False`` runs
    the folded channels_last network eagerly instead.
  - ``cuda_graphs``: CUDA with ``optimize=True`` (default): BatchNorm folded,
    fp16 (``precision='auto'``), cuDNN autotuning, the whole per-frame device
    work, pinned upload to pinned download, captured in a CUDA graph per frame
    size (``graph_cache`` keeps them), and on request the node's colour,
    overlay and drivable images in the same graph (``device_images``).
    ``cuda_graphs=False`` runs the folded network eagerly instead.
    channels_last is off by default on CUDA (slower at every size measured on
    an H100: max-unpool and the concatenations run NCHW).
  - ``openvino_backend``: the CPU with ``inference_backend`` ``openvino``, or
    ``auto`` on a CPU without AVX-512 where openvino is installed
    (``backends``): the folded, index-free network exported once and compiled
    by OpenVINO's CPU plugin, normalisation and argmax in its graph; a failure
    to load falls back to the torch paths above with a warning.

CPU threads: ``cpu_threads`` (auto: torch's, one per core by default). Where
other processes keep the cores busy, GNU OpenMP's spin-waiting makes
multi-threaded torch inference several times slower (measured on 2 busy
cores: up to 100x on small inputs); the node has its Segmenter spin
briefly while other processes keep the cores busy, and run its OpenMP team
on the CPUs they leave free (``openmp_wait``,
:mod:`enet_ros.inference.openmp_wait`,
:mod:`enet_ros.inference.team_placement`). The Segmenter never changes the
environment; in a process of your own, set ``GOMP_SPINCOUNT`` or
``OMP_WAIT_POLICY`` before it starts, or pass ``openmp_wait='adaptive'``.

Why one module: :class:`Segmenter` is the one public entry point; its body is
choosing a path from the options and forwarding ``segment``/``segment_batch``
to it, and most of its lines are the option checks and docstrings of that API.
"""

import logging
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .inference import cpu_runtime
from .inference.backends import (apply_torch_threads, BackendTrial, check_threads,
                                 INFERENCE_BACKENDS, open_openvino_path, resolve_backend,
                                 time_backends, TIMED)
from .inference.compiled_cpu import CompiledCpuPath
from .inference.config import (check_input_size, compile_enabled, COMPILE_ENV,
                               cpu_supports_bf16, DEVICE_CHOICES, FrameSize, freezing_enabled,
                               INDEX_FREE_DEFAULT, parse_frame_sizes, precision_name, PRECISIONS,
                               resolve_device, resolve_openmp_wait, resolve_precision,
                               SegmenterConfigError)
from .inference.cuda_graphs import CudaGraphPath, enable_cudnn_autotuning
from .inference.eager import EagerPath
from .inference.frames import (argmax_classes, FramePipeline, labels_from_logits,
                               normalization_constants, normalize, Segmentation)
from .inference.network import NonFiniteWeightsError, prepare_network
from .inference.openmp_wait import adaptive_wait_problem, available_cpus, LoadAwareWaitPath
from .inference.openmp_wait import ParkedTeam
from .inference.team_placement import placement_problem, TeamPlacement
from .inference.timed_paths import TimedPaths
from .model_file import input_size_problem, load_model_file, LoadedModel, ModelMetadata

__all__ = [
    'argmax_classes', 'COMPILE_ENV', 'cpu_supports_bf16', 'DEVICE_CHOICES', 'INFERENCE_BACKENDS',
    'labels_from_logits',
    'normalization_constants', 'normalize', 'NonFiniteWeightsError', 'PRECISIONS',
    'resolve_device', 'resolve_precision', 'Segmentation', 'Segmenter', 'SegmenterConfigError',
]

LOGGER = logging.getLogger(__name__)

#: Whether the torch CPU paths batch frames by default (``batch_frames=None``). Measured with
#: ``bench/bench_batch.py`` (bench/README.md, "Batched frames").
CPU_BATCH_DEFAULT = False


class Segmenter:
    """
    ENet inference from uint8 images to label maps; see the module docstring.

    Arguments beyond the model, device, precision and network input size
    (``(width, height)``, multiples of 8, at most
    :data:`~enet_ros.model_file.MAX_INPUT_SIDE` a side and
    :data:`~enet_ros.model_file.MAX_INPUT_PIXELS` pixels; default from the
    model file):

    * ``warmup``: run frames at construction, so that compilation and graph
      capture happen here and not on the first camera frame.
    * ``warmup_sizes``: the camera frame sizes to warm up with, a sequence of
      ``(width, height)`` pairs or ``'WIDTHxHEIGHT'`` strings (None or empty:
      the path's default frames, which on the CPU compile both the
      network-size and the resized input layout, and on the CUDA graph path
      capture a frame at the network size). Each size is run once, or, on the
      CUDA graph path, captured for RGB and for BGR frames without confidence
      (``max_graphs`` is raised to hold them all). Needs ``warmup=True``; a
      malformed size raises :class:`SegmenterConfigError`.
    * ``optimize``: the fast path for the device (default) or the eager reference.
    * ``precision``: ``auto`` (fp16 on CUDA; on the CPU fp32, or bf16 where
      :data:`~enet_ros.inference.config.AUTO_CPU_BF16` is on, the CPU has bf16
      and ``optimize`` is on), ``fp32``, ``fp16`` (CUDA only), ``bf16``
      (CPUs with AVX-512 BF16 or AMX only; elsewhere
      :class:`SegmenterConfigError`).
    * ``torch_compile``: ``torch.compile`` the CPU network when optimising (``None``:
      yes unless the environment sets ``ENET_ROS_COMPILE=0``).
    * ``freezing``: with ``torch.compile``, freeze the weights into the compiled
      code (inductor weight prepacking; see
      :mod:`~enet_ros.inference.compiled_cpu`). ``None``: in bf16 yes, in fp32
      no (measured), unless the environment sets ``ENET_ROS_FREEZE`` (``0``
      never, ``1`` always).
    * ``index_free``: pool and unpool with masks instead of indices
      (:func:`enet_ros.model.set_index_free`; the same labels). ``None``:
      the path's default (``INDEX_FREE_DEFAULT`` on the compiled CPU path,
      off elsewhere).
    * ``channels_last``: memory format of activations (``None``: on the CPU
      when optimising, never on CUDA).
    * ``cuda_graphs``: capture the per-frame CUDA work when optimising on CUDA.
    * ``max_graphs``: captures kept, one per frame size (and bgr / confidence
      option), least recently used evicted first.
    * ``cudnn_benchmark``: cuDNN autotuning, a process-wide switch
      (``torch.backends.cudnn.benchmark``). None (default): turned on by the
      optimised CUDA path only. True: turned on by any CUDA path. False: left
      as the process set it. Never turned on in a process that asked for
      deterministic algorithms (``torch.backends.cudnn.deterministic`` or
      ``torch.use_deterministic_algorithms``), and never touched on the CPU.
      The Segmenter never turns it off.

    * ``inference_backend``: ``auto``, ``torch`` or ``openvino``: which runtime
      runs the optimised CPU path (:mod:`enet_ros.inference.backends`; auto
      decides by CPU features; None: ``ENET_ROS_BACKEND`` or auto). OpenVINO
      that cannot run (not installed, a CPU without its instructions, a graph
      it fails to load) logs a warning and torch runs instead. :attr:`backend` says which one runs.
    * ``batch_frames``: whether :meth:`segment_batch` sends frames of one size
      through the network as one batch (else one :meth:`segment` each; the
      same labels either way). None: on with CUDA graphs (a graph per batch
      size and frame size), off on the CPU (see :data:`CPU_BATCH_DEFAULT`)
      and on CUDA without graphs; OpenVINO always runs one frame at a time
      (its graph has batch 1).
    * ``cpu_threads``: None or 0 auto (torch's setting for the process, one per
      core or ``OMP_NUM_THREADS``, for either runtime), else OpenVINO's threads
      or, for torch, ``torch.set_num_threads`` (process-wide: torch has one pool).

    * ``openmp_wait``: ``fixed`` (default), ``adaptive`` or ``adaptive-wait``:
      whether GNU OpenMP's threads on the torch CPU path spin fully while the
      cores are otherwise idle and briefly while other processes keep them
      busy (:mod:`enet_ros.inference.openmp_wait`; it parks an idle OpenMP
      team, which changes how every OpenMP thread of the process waits, so
      only a process that owns itself asks for it); ``adaptive`` also confines
      the team that runs frames to the CPUs the others leave free while they
      keep a core busy (:mod:`enet_ros.inference.team_placement`). None:
      ``ENET_ROS_OPENMP_WAIT``, which the node's executables set to
      ``adaptive`` unless the user chose an OpenMP wait variable. Where it
      cannot work (one torch thread, no GNU OpenMP) the wait stays fixed.

    The Segmenter never changes the process environment (e.g. OpenMP's wait
    policy); :mod:`enet_ros.inference.cpu_runtime` has what the node sets.

    fp16 range check: a layer whose (folded) weights exceed fp16's range stays
    in fp32 with a warning naming it; non-finite folded weights raise
    :class:`NonFiniteWeightsError` (see :mod:`enet_ros.inference.network`).
    """

    def __init__(self, model: LoadedModel, device: str = 'auto', precision: str = 'auto',
                 input_size: Optional[Tuple[int, int]] = None, warmup: bool = True,
                 optimize: bool = True, torch_compile: Optional[bool] = None,
                 channels_last: Optional[bool] = None, cuda_graphs: bool = True,
                 max_graphs: int = 4, cudnn_benchmark: Optional[bool] = None,
                 warmup_sizes: Optional[Sequence[FrameSize]] = None,
                 freezing: Optional[bool] = None, index_free: Optional[bool] = None,
                 inference_backend: Optional[str] = None, cpu_threads: Optional[int] = None,
                 batch_frames: Optional[bool] = None, openmp_wait: Optional[str] = None):
        self.device, note = resolve_device(device)
        if note:
            LOGGER.warning(note)
        self.fallback_note = note
        on_cuda = self.device.type == 'cuda'
        compiled_cpu = bool(optimize) and not on_cuda and compile_enabled(torch_compile)
        dtype = resolve_precision(precision, self.device, optimized=bool(optimize))
        backend, backend_note = resolve_backend(inference_backend, self.device, dtype,
                                                bool(optimize))
        threads = check_threads(cpu_threads)
        wait_choice = resolve_openmp_wait(openmp_wait)
        self.metadata: ModelMetadata = model.metadata
        self.model_path = model.path
        self.input_size = check_input_size(input_size or model.metadata.input_size)
        too_large = input_size_problem(self.input_size)
        if too_large:
            raise SegmenterConfigError('network input size {}x{} {}'.format(*self.input_size,
                                                                            too_large))
        sizes = parse_frame_sizes(warmup_sizes)
        if sizes and not warmup:
            raise SegmenterConfigError('warmup_sizes given with warmup=False')
        if max_graphs < 1:
            raise SegmenterConfigError(f'max_graphs must be at least 1, got {max_graphs}')
        self.optimized = bool(optimize)
        if index_free is None:
            index_free = INDEX_FREE_DEFAULT and compiled_cpu
        if channels_last is None:
            channels_last = self.optimized and not on_cuda
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        prepared = prepare_network(model, self.device, dtype, fold=self.optimized,
                                   channels_last=bool(channels_last),
                                   index_free=bool(index_free))
        pipeline = FramePipeline(model.metadata, self.input_size, self.device, dtype,
                                 self.memory_format)
        notes = list(prepared.notes)
        if on_cuda and (self.optimized or cudnn_benchmark):
            autotuning = enable_cudnn_autotuning(cudnn_benchmark)
            notes += [autotuning] if autotuning else []
        if not self.optimized:
            self.path = EagerPath(prepared.network, pipeline, 'eager', notes)
        elif on_cuda and cuda_graphs:
            self.path = CudaGraphPath(prepared.network, pipeline, notes,
                                      max_graphs=max(max_graphs, 2 * len(sizes)))
        elif on_cuda:
            self.path = EagerPath(prepared.network, pipeline, 'optimised', notes)
        elif compiled_cpu:
            self.path = CompiledCpuPath(prepared.network, pipeline, notes,
                                        freezing=freezing_enabled(freezing, dtype))
        else:
            self.path = EagerPath(prepared.network, pipeline, 'optimised',
                                  notes + ['torch.compile off'])
        if backend_note:
            LOGGER.warning(backend_note)
        if backend == TIMED and not warmup:
            backend = 'openvino'  # no frames to time: OpenVINO, as before the trial
        openvino_path = (open_openvino_path(model, self.input_size, dtype, threads)
                         if backend in ('openvino', TIMED) else None)
        torch_path = self.path
        if (openvino_path is None or backend == TIMED) and not on_cuda:
            apply_torch_threads(threads)
        if batch_frames is not None:  # OpenVINO's graph has batch 1: it always loops
            torch_path.batch_forward = bool(batch_frames)
        elif not on_cuda:
            torch_path.batch_forward = CPU_BATCH_DEFAULT
        #: Why ``openmp_wait='adaptive'`` was not used (None where used or not asked for).
        self.openmp_wait_note: Optional[str] = None
        #: The parked OpenMP team of ``openmp_wait='adaptive'``, or None (the wait is fixed).
        self._parked_team: Optional[ParkedTeam] = None
        #: Why the team is not confined to fewer CPUs under load with ``adaptive`` (or None).
        self.team_placement_note: Optional[str] = None
        if wait_choice != 'fixed' and not on_cuda and (openvino_path is None
                                                       or backend == TIMED):
            torch_path = self._load_aware(torch_path, wait_choice)
            self.path = torch_path
        #: ``auto``'s start-up trial (CPUs without AVX-512, OpenVINO installed), or None.
        self.backend_trial: Optional[BackendTrial] = None
        if openvino_path is not None and backend == TIMED:
            paths = {'openvino': openvino_path, 'torch': torch_path}
            for path in paths.values():
                path.warm_up(sizes)
            warmup = False  # both are warm
            # torch unless OpenVINO is clearly faster: within a few percent the trial is a
            # coin toss, and beside two busy processes torch (its wait and placement above)
            # took 1.3-1.5x torch's idle frame time, OpenVINO 3.8x (docs/performance.md).
            self.backend_trial = time_backends(paths, sizes[0] if sizes else self.input_size,
                                               preferred='torch')
            LOGGER.info('inference_backend %s: starting with %s, both kept warm and re-timed '
                        'while frames run', self.backend_trial.describe(),
                        self.backend_trial.winner)
            self.path = TimedPaths(paths, self.backend_trial.winner,
                                   self.backend_trial.medians_ms)
        else:
            self.path = torch_path if openvino_path is None else openvino_path
        if warmup:
            self.path.warm_up(sizes)

    @classmethod
    def from_file(cls, path: Union[str, None], **kwargs) -> 'Segmenter':
        """Load ``path`` (empty or None: the bundled default) and build a Segmenter."""
        return cls(load_model_file(path), **kwargs)

    @property
    def backend(self) -> str:
        """Return which runtime runs the next frame: ``'torch'`` or ``'openvino'``."""
        if isinstance(self.path, TimedPaths):
            return self.path.current_name
        return 'openvino' if self.path.mode == 'openvino' else 'torch'

    @property
    def network(self) -> nn.Module:
        """Return the network the execution path runs (folded when optimised)."""
        return self.path.network

    @property
    def num_classes(self) -> int:
        """Return the number of classes C; labels lie in ``[0, C)``."""
        return self.metadata.num_classes

    @property
    def dtype(self) -> torch.dtype:
        """Return the network's dtype: float32, float16 or bfloat16."""
        return self.path.pipeline.dtype

    @property
    def precision(self) -> str:
        """``fp16``, ``bf16`` or ``fp32``."""
        return precision_name(self.dtype)

    @property
    def compiled(self) -> bool:
        """Whether the network runs through ``torch.compile`` (CPU optimised path)."""
        return self.path.compiled

    @property
    def cuda_graphs(self) -> bool:
        """Whether frames run as captured CUDA graphs (CUDA optimised path)."""
        return self.path.cuda_graphs

    @property
    def execution_path(self) -> str:
        """Which path runs, e.g. ``optimised (BatchNorm folded, channels_last, torch.compile)``."""
        return self.path.describe()

    def describe(self) -> str:
        """One line for logs: device, precision, input size, path, backend and threads, model."""
        width, height = self.input_size
        return (f'ENet {self.num_classes} classes ({self.metadata.dataset}) on {self.device} '
                f'{self.precision}, network input {width}x{height}, {self.execution_path}, '
                f'{self.runtime_description}model {self.model_path}')

    def _load_aware(self, torch_path, wait_choice: str):
        """Wrap the torch CPU path so that its OpenMP team follows the load, where it can."""
        threads = torch.get_num_threads()
        self.openmp_wait_note = adaptive_wait_problem(threads)
        if self.openmp_wait_note is not None:
            LOGGER.info('openmp_wait %s: not used (%s)', wait_choice, self.openmp_wait_note)
            return torch_path
        self._parked_team = ParkedTeam(threads)
        placement = None
        if wait_choice == 'adaptive':
            self.team_placement_note = placement_problem(threads)
            if self.team_placement_note is None:
                try:
                    placement = TeamPlacement(threads, self._parked_team.omp)
                except (AttributeError, OSError) as error:  # a libgomp without GOMP_parallel
                    self.team_placement_note = f'cannot reach the OpenMP team ({error})'
            if self.team_placement_note is not None:
                LOGGER.info('openmp_wait adaptive: the OpenMP team keeps all CPUs under load '
                            '(%s)', self.team_placement_note)
        return LoadAwareWaitPath(torch_path, self._parked_team, placement=placement)

    @property
    def runtime_description(self) -> str:
        """Backend, threads and OpenMP wait, e.g. ``backend openvino (2 threads; ...), ``."""
        if self.device.type != 'cpu':
            return ''
        wait = cpu_runtime.openmp_wait_description()
        if self._parked_team is not None:
            wait += ', brief while other processes keep the cores busy'
            load_aware = self._load_aware_path()
            if load_aware is not None and load_aware.placement is not None:
                wait += ', and the team then on the CPUs they leave free'
            wait += ' (set by the node)' if cpu_runtime.set_by_node() else ''
        torch_part = f'{cpu_runtime.threads_text(torch.get_num_threads())}, {wait}'
        timed = self.path.describe_choice() if isinstance(self.path, TimedPaths) else ''
        trial = f'; {timed}' if timed else ''
        if self.backend == 'openvino':
            return (f'backend openvino ({self.path.thread_choice.describe()}; torch '
                    f'pre-processing {torch_part}{trial}), ')
        return f'backend torch ({torch_part}{trial}), '

    @property
    def openmp_wait(self) -> str:
        """How torch's OpenMP threads wait: ``spin``, ``brief spin`` (adaptive) or ``fixed``."""
        if self._parked_team is None:
            return 'fixed'
        return 'brief spin' if self._parked_team.parked else 'spin'

    @property
    def openmp_cpus(self) -> str:
        """Say on which CPUs torch's OpenMP team runs frames: ``all 2``, ``1 of 2 (CPU 0)``."""
        path = self._load_aware_path()
        return path.cpus_text if path is not None else f'all {available_cpus()}'

    def _load_aware_path(self) -> Optional[LoadAwareWaitPath]:
        """Return the torch path that follows the load (within a timed choice too), or None."""
        if isinstance(self.path, LoadAwareWaitPath):
            return self.path
        for path in getattr(self.path, 'paths', {}).values():
            if isinstance(path, LoadAwareWaitPath):
                return path
        return None

    def preprocess(self, image: np.ndarray, bgr: bool = False) -> torch.Tensor:
        """
        HxWx3 uint8 to the normalised 1x3xhxw network input on the device.

        The tensor has the Segmenter's dtype and memory format (channels_last
        on the optimised CPU path); its shape is ``1x3xhxw`` either way.
        """
        return self.path.pipeline.preprocess(image, bgr)

    @torch.inference_mode()
    def logits(self, network_input: torch.Tensor) -> torch.Tensor:
        """
        Run the network as :meth:`segment` does: 1x3xhxw input to 1xCxhxw logits.

        ``network_input`` comes from :meth:`preprocess`. On the compiled CPU
        path the compiled network runs; a compilation failure on the first call
        logs a warning and falls back to the (folded) eager network for good.
        """
        return self.path.forward(network_input)

    @property
    def batches(self) -> bool:
        """Whether :meth:`segment_batch` runs frames of one size as one forward."""
        return self.path.batch_forward

    @torch.inference_mode()
    def segment_batch(self, frames: Sequence[np.ndarray], bgr: Union[bool, Sequence[bool]] = False,
                      with_confidence: bool = False, images: Sequence[str] = (),
                      out: Optional[Sequence[Optional[Mapping[str, np.ndarray]]]] = None
                      ) -> List[Segmentation]:
        """
        Label several HxWx3 uint8 frames (e.g. one per camera); results in their order.

        Each result is what :meth:`segment` gives for that frame with the same
        arguments. Frames are grouped by size; where :attr:`batches`, a group
        of two or more runs through the network as one batch (CUDA: one
        captured graph per batch and frame size), else frame by frame.
        ``bgr``: one flag for all or one per frame; ``images``: drawn for every
        frame; ``out``: one buffer mapping (or None) per frame.
        """
        frames = list(frames)
        if isinstance(bgr, (bool, np.bool_)):
            flags = [bool(bgr)] * len(frames)
        else:
            flags = [bool(flag) for flag in bgr]
        if len(flags) != len(frames):
            raise ValueError(f'{len(flags)} bgr flags for {len(frames)} frames')
        if out is not None and len(out) != len(frames):
            raise ValueError(f'{len(out)} out mappings for {len(frames)} frames')
        if not frames:
            return []
        return self.path.run_batch(frames, flags, with_confidence, images, out)

    @property
    def images_on_device(self) -> bool:
        """Whether :meth:`segment`'s ``images`` are made on the device, in the frame's graph."""
        return self.path.images_on_device

    def configure_images(self, colors: Sequence[Tuple[int, int, int]],
                         drivable_ids: Sequence[int], overlay_alpha: float) -> None:
        """
        Set how :meth:`segment` draws ``images`` (as :class:`~enet_ros.masks.OutputRenderer`).

        ``colors``: RGB per class id; ``drivable_ids``: the class ids that are
        drivable; ``overlay_alpha`` in [0, 1]: the colour's weight over the
        camera image. May be called again at any time (on CUDA the tables are
        updated in place; captured graphs read the new ones).
        """
        self.path.configure_images(colors, drivable_ids, overlay_alpha)

    @torch.inference_mode()
    def segment(self, image: np.ndarray, bgr: bool = False, with_confidence: bool = False,
                images: Sequence[str] = (),
                out: Optional[Mapping[str, np.ndarray]] = None) -> Segmentation:
        """
        Label one HxWx3 uint8 image; see the module docstring for the contract.

        ``images``: any of ``'colored'``, ``'overlay'``, ``'drivable'``
        (:data:`~enet_ros.inference.device_images.DEVICE_IMAGES`), returned in
        ``Segmentation.images`` after :meth:`configure_images`. On the CUDA
        graph path they are computed in the frame's graph (:attr:`images_on_device`),
        elsewhere with numpy on the host; the same pixels either way. ``out``:
        optional caller-owned buffers by image name (HxWx3 or HxW uint8, e.g.
        views into reused messages), written in place and returned in
        ``Segmentation.images`` (saves a copy of each image a frame).
        """
        return self.path.run(image, bgr, with_confidence, images, out)
