"""
The Segmenter: one inference path for the node, bag evaluation and training evaluation.

Array contract of :meth:`Segmenter.segment`: input an HxWx3 uint8 image, RGB
unless ``bgr=True`` (any strides: a view into a message buffer works); output
an HxW uint8 label map at the input resolution, values in ``[0, C)``, and on
request an HxW float32 confidence map (softmax probability of the chosen
class).

Per frame: upload, resize to the network input (bilinear, antialiased),
normalise, forward, argmax on the device, nearest-neighbour resize of the
labels back to HxW, download. Everything that does not depend on the frame
(model, normalisation constants, index maps per input size, compiled code,
CUDA graphs) is built once.

Execution paths (``optimize=True``, the default, picks the fast one for the
device; :meth:`Segmenter.describe` says which one runs):

* CPU, optimised: BatchNorm folded into the convolutions
  (:mod:`enet_ros.fuse`), channels_last activations, the network compiled
  with ``torch.compile`` (inductor, C++ kernels; needs a C++ compiler, falls
  back to the folded eager network if compilation fails), argmax over the
  contiguous channel axis. Labels agree with the eager path to float32
  rounding (see ``test/test_fast_path.py``).
* CUDA, optimised: BatchNorm folded, fp16 (``precision='auto'``), cuDNN
  autotuning (``torch.backends.cudnn.benchmark``, a process-wide switch), and
  the whole per-frame device work, pinned upload to pinned download,
  captured in a CUDA graph per frame size (:mod:`enet_ros.cuda_graph`).
  channels_last is off by default on CUDA (max-unpool wants NCHW); pass
  ``channels_last=True`` where it measures faster.
* Eager (``optimize=False``): the model as trained, NCHW, no compilation, no
  graphs; the reference the optimised paths are tested against.

CPU threads are torch's (``torch.set_num_threads``, one per core by default).
Where other processes keep the cores busy, GNU OpenMP's spin-waiting makes
multi-threaded inference several times slower (measured on 2 busy cores: up
to 100x on small inputs); ``OMP_WAIT_POLICY=PASSIVE`` in the environment of
the process (set before it starts) or a single thread avoids that.
"""

from dataclasses import dataclass
import logging
import os
from typing import Callable, Dict, Optional, Tuple, Union
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from .cuda_graph import CapturedFrame, GraphCache
from .fuse import fold_enet
from .model_file import load_model_file, LoadedModel, ModelMetadata

LOGGER = logging.getLogger(__name__)
DEVICE_CHOICES = ('auto', 'cpu', 'cuda', 'cuda:N')
PRECISIONS = ('auto', 'fp16', 'fp32')
#: Environment variable: ``0`` turns ``torch.compile`` off where ``torch_compile`` is None.
COMPILE_ENV = 'ENET_ROS_COMPILE'


class SegmenterConfigError(ValueError):
    """The requested device, precision or input size cannot be used."""


@dataclass(frozen=True)
class Segmentation:
    """Result for one frame: HxW uint8 labels, optional HxW float32 confidence."""

    labels: np.ndarray
    confidence: Optional[np.ndarray] = None


def resolve_device(choice: str) -> Tuple[torch.device, Optional[str]]:
    """
    Map ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` to a device and an optional log note.

    Raises :class:`SegmenterConfigError` for an unknown choice or missing CUDA.
    """
    choice = choice.strip().lower()
    if choice == 'auto':
        if torch.cuda.is_available():
            return torch.device('cuda', torch.cuda.current_device()), None
        return (torch.device('cpu'),
                'device auto: CUDA is not available, running on the CPU in fp32')
    if choice == 'cpu':
        return torch.device('cpu'), None
    if choice == 'cuda' or choice.startswith('cuda:'):
        if not torch.cuda.is_available():
            raise SegmenterConfigError(
                f"device '{choice}' requested but CUDA is not available on this machine "
                "(use 'auto' or 'cpu')")
        index_text = choice[5:] if choice.startswith('cuda:') else str(torch.cuda.current_device())
        if not index_text.isdigit():
            raise SegmenterConfigError(f"device '{choice}': expected cuda:N with N an integer")
        count = torch.cuda.device_count()
        if int(index_text) >= count:
            raise SegmenterConfigError(
                f"device '{choice}': only {count} CUDA device(s) present (0..{count - 1})")
        return torch.device('cuda', int(index_text)), None
    raise SegmenterConfigError(f"device '{choice}' is not one of {', '.join(DEVICE_CHOICES)}")


def resolve_precision(choice: str, device: torch.device) -> torch.dtype:
    """``auto`` is fp16 on CUDA and fp32 on the CPU; fp16 on the CPU is refused."""
    choice = choice.strip().lower()
    if choice not in PRECISIONS:
        raise SegmenterConfigError(f"precision '{choice}' is not one of {', '.join(PRECISIONS)}")
    if choice == 'auto':
        return torch.float16 if device.type == 'cuda' else torch.float32
    if choice == 'fp16' and device.type != 'cuda':
        raise SegmenterConfigError('precision fp16 needs a CUDA device; the CPU runs fp32')
    return torch.float16 if choice == 'fp16' else torch.float32


def normalization_constants(metadata: ModelMetadata,
                            device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """1x3x1x1 fp32 (mean, 1/std) on the 0-255 pixel scale, for :func:`normalize`."""
    mean = torch.tensor(metadata.mean, dtype=torch.float32) * 255.0
    std = torch.tensor(metadata.std, dtype=torch.float32) * 255.0
    return mean.view(1, 3, 1, 1).to(device), (1.0 / std).view(1, 3, 1, 1).to(device)


def normalize(frames: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor) -> torch.Tensor:
    """Nx3xHxW RGB pixels (any dtype, 0-255) to the normalised fp32 network input."""
    return (frames.float() - mean) * inv_std


def argmax_classes(logits: torch.Tensor) -> torch.Tensor:
    """
    Map NxCxHxW logits to NxHxW uint8 ids of the largest logit (first one on ties).

    A running maximum over the C channel planes: on the CPU this is 6-7x faster
    than ``argmax(dim=1)`` on NCHW logits, whose reduction strides across
    planes, and it gives identical ids. (On channels_last logits the channel
    axis is contiguous and ``argmax(dim=1)`` is the fast one; see
    :func:`labels_from_logits`.)
    """
    best = logits[:, 0].clone()
    labels = torch.zeros(best.shape, dtype=torch.uint8, device=logits.device)
    for class_id in range(1, logits.shape[1]):
        plane = logits[:, class_id]
        labels.masked_fill_(plane > best, class_id)
        torch.maximum(best, plane, out=best)
    return labels


def labels_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """
    Map NxCxHxW logits to NxHxW uint8 class ids (first largest logit), the fastest way.

    ``argmax(dim=1)`` on CUDA and on channels_last CPU logits; :func:`argmax_classes`
    on NCHW CPU logits. Both pick the first of tied maxima, so the ids are identical.
    """
    channels_last = logits.dim() == 4 and logits.stride(1) == 1 and logits.shape[1] > 1
    if logits.device.type == 'cpu' and not channels_last:
        return argmax_classes(logits)
    return logits.argmax(dim=1).to(torch.uint8)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ''


def _compile_enabled(choice: Optional[bool]) -> bool:
    if choice is not None:
        return bool(choice)
    return os.environ.get(COMPILE_ENV, '1').strip().lower() not in ('0', 'false', 'no', 'off')


class Segmenter:
    """
    ENet inference from uint8 images to label maps; see the module docstring.

    Arguments beyond the model, device, precision, network input size
    (``(width, height)``, multiples of 8; default from the model file) and
    ``warmup`` (run two frames, compile and capture, at construction):

    * ``optimize``: the fast path for the device (default) or the eager reference.
    * ``torch_compile``: ``torch.compile`` the CPU network when optimising (``None``:
      yes unless the environment sets ``ENET_ROS_COMPILE=0``). Compilation
      happens on the first frame (at construction with ``warmup``).
    * ``channels_last``: memory format of activations (``None``: on the CPU
      when optimising, never on CUDA).
    * ``cuda_graphs``: capture the per-frame CUDA work when optimising on CUDA.
    * ``max_graphs``: captures kept, one per frame size (and bgr / confidence
      option), least recently used evicted first.
    """

    def __init__(self, model: LoadedModel, device: str = 'auto', precision: str = 'auto',
                 input_size: Optional[Tuple[int, int]] = None, warmup: bool = True,
                 optimize: bool = True, torch_compile: Optional[bool] = None,
                 channels_last: Optional[bool] = None, cuda_graphs: bool = True,
                 max_graphs: int = 4):
        self.device, note = resolve_device(device)
        if note:
            LOGGER.warning(note)
        self.fallback_note = note
        self.dtype = resolve_precision(precision, self.device)
        self.metadata: ModelMetadata = model.metadata
        self.model_path = model.path
        self.input_size = self._check_input_size(input_size or model.metadata.input_size)
        self.optimized = bool(optimize)
        on_cuda = self.device.type == 'cuda'
        if channels_last is None:
            channels_last = self.optimized and not on_cuda
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        net = model.build()
        if self.optimized:
            net = fold_enet(net)
        net = net.to(self.device, self.dtype).to(memory_format=self.memory_format)
        net.requires_grad_(False)
        self.network = net.eval()
        self._mean, self._inv_std = normalization_constants(model.metadata, self.device)
        self._index_maps: Dict[Tuple[int, int], Tuple[torch.Tensor, torch.Tensor]] = {}
        self._compiled: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
        self._compile_verified = False
        self._graphs: Optional[GraphCache] = None
        self._notes = []
        if self.optimized:
            self._notes.append('BatchNorm folded')
        if channels_last:
            self._notes.append('channels_last')
        if self.optimized and not on_cuda and _compile_enabled(torch_compile):
            self._compiled = torch.compile(self.network, dynamic=False)
        elif self.optimized and not on_cuda:
            self._notes.append('torch.compile off')
        if self.optimized and on_cuda:
            torch.backends.cudnn.benchmark = True
            self._notes.append('cuDNN autotuning')
            if cuda_graphs:
                self._graphs = GraphCache(max_graphs)
        if warmup:
            width, height = self.input_size
            # A frame at the network size and a resized one reach the compiled network
            # with different layouts, so both are compiled here, not on a camera frame.
            for shape in ((height, width, 3), (height, width, 3), (height + 2, width + 2, 3)):
                self.segment(np.zeros(shape, dtype=np.uint8))

    @classmethod
    def from_file(cls, path: Union[str, None], **kwargs) -> 'Segmenter':
        """Load ``path`` (empty or None: the bundled default) and build a Segmenter."""
        return cls(load_model_file(path), **kwargs)

    @staticmethod
    def _check_input_size(size: Tuple[int, int]) -> Tuple[int, int]:
        width, height = (int(v) for v in size)
        if width <= 0 or height <= 0 or width % 8 or height % 8:
            raise SegmenterConfigError(
                f'network input size {width}x{height} must be positive multiples of 8')
        return width, height

    @property
    def num_classes(self) -> int:
        """Return the number of classes C; labels lie in ``[0, C)``."""
        return self.metadata.num_classes

    @property
    def precision(self) -> str:
        """``fp16`` or ``fp32``."""
        return 'fp16' if self.dtype == torch.float16 else 'fp32'

    @property
    def compiled(self) -> bool:
        """Whether the network runs through ``torch.compile`` (CPU optimised path)."""
        return self._compiled is not None

    @property
    def cuda_graphs(self) -> bool:
        """Whether frames run as captured CUDA graphs (CUDA optimised path)."""
        return self._graphs is not None

    @property
    def execution_path(self) -> str:
        """Which path runs, e.g. ``optimised (BatchNorm folded, channels_last, torch.compile)``."""
        notes = list(self._notes)
        if self._compiled is not None:
            notes.append('torch.compile' + ('' if self._compile_verified else ' (not yet run)'))
        if self._graphs is not None:
            notes.append('CUDA graphs')
        mode = 'optimised' if self.optimized else 'eager'
        return f'{mode} ({", ".join(notes)})' if notes else mode

    def describe(self) -> str:
        """One line for logs: device, precision, input size, execution path, model."""
        width, height = self.input_size
        return (f'ENet {self.num_classes} classes ({self.metadata.dataset}) on {self.device} '
                f'{self.precision}, network input {width}x{height}, {self.execution_path}, '
                f'model {self.model_path}')

    def _label_index(self, height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Row (length H) and column (length W) indices into the network grid (nearest).

        Output pixel ``(r, c)`` takes the label of the network pixel whose area
        contains the output pixel's centre.
        """
        key = (height, width)
        if key not in self._index_maps:
            net_width, net_height = self.input_size
            rows = ((torch.arange(height, dtype=torch.float64) + 0.5) * net_height / height)
            cols = ((torch.arange(width, dtype=torch.float64) + 0.5) * net_width / width)
            rows = rows.floor().clamp_(max=net_height - 1).long().to(self.device)
            cols = cols.floor().clamp_(max=net_width - 1).long().to(self.device)
            self._index_maps[key] = (rows, cols)
        return self._index_maps[key]

    @staticmethod
    def _check_image(image: np.ndarray) -> None:
        """Raise ValueError unless ``image`` is a non-empty HxWx3 uint8 array."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
                or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError('expected an HxWx3 uint8 array, got '
                             f'{getattr(image, "dtype", type(image))} '
                             f'{getattr(image, "shape", "")}')

    @classmethod
    def _as_tensor(cls, image: np.ndarray) -> torch.Tensor:
        """Check an HxWx3 uint8 image and wrap it as a CPU tensor (no copy unless needed)."""
        cls._check_image(image)
        if any(stride < 0 for stride in image.strides):  # e.g. image[..., ::-1]
            image = np.ascontiguousarray(image)
        if not image.flags.writeable:  # a message buffer: read, never written
            with warnings.catch_warnings():
                warnings.filterwarnings('ignore', message='The given NumPy array is not writ')
                return torch.from_numpy(image)
        return torch.from_numpy(image)

    def _network_input(self, frame: torch.Tensor, bgr: bool) -> torch.Tensor:
        """HxWx3 uint8 device frame to the 1x3xhxw normalised input (dtype, memory format)."""
        frame = frame.permute(2, 0, 1).unsqueeze(0)
        if bgr:
            frame = frame.flip(1)
        frame = frame.float()
        net_width, net_height = self.input_size
        if frame.shape[-2:] != (net_height, net_width):
            frame = F.interpolate(frame, size=(net_height, net_width), mode='bilinear',
                                  align_corners=False, antialias=True)
        normalised = normalize(frame, self._mean, self._inv_std)
        # A permuted HWC frame is channels_last in memory; make it what the network runs.
        return normalised.to(self.dtype).contiguous(memory_format=self.memory_format)

    def preprocess(self, image: np.ndarray, bgr: bool = False) -> torch.Tensor:
        """
        HxWx3 uint8 to the normalised 1x3xhxw network input on the device.

        The tensor has the Segmenter's dtype and memory format (channels_last
        on the optimised CPU path); its shape is ``1x3xhxw`` either way.
        """
        frame = self._as_tensor(image).to(self.device, non_blocking=True)
        return self._network_input(frame, bgr)

    @torch.inference_mode()
    def logits(self, network_input: torch.Tensor) -> torch.Tensor:
        """
        Run the network as :meth:`segment` does: 1x3xhxw input to 1xCxhxw logits.

        ``network_input`` comes from :meth:`preprocess`. On the compiled CPU
        path the compiled network runs; a compilation failure on the first call
        logs a warning and falls back to the (folded) eager network for good.
        """
        if self._compiled is not None:
            try:
                logits = self._compiled(network_input)
            except Exception as error:  # inductor raises many types (no compiler, ...)
                if self._compile_verified:
                    raise
                LOGGER.warning('torch.compile of ENet failed, running it eagerly instead: '
                               '%s: %s', type(error).__name__, _first_line(error))
                self._compiled = None
                self._notes.append('torch.compile failed')
            else:
                self._compile_verified = True
                return logits
        return self.network(network_input)

    def _device_pipeline(self, frame: torch.Tensor, bgr: bool, with_confidence: bool,
                         resize_labels: bool = True
                         ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Map an HxWx3 uint8 device frame to (HxW uint8 labels, HxW float32 confidence or None).

        Device work only (no host synchronisation, no host tensors), so it
        can be captured in a CUDA graph. With ``resize_labels=False`` the maps
        stay at the network size (hxw) for the caller to resize.
        """
        height, width = frame.shape[:2]
        logits = self.logits(self._network_input(frame, bgr))
        labels = labels_from_logits(logits)[0]
        confidence = None
        if with_confidence:
            confidence = torch.softmax(logits.float(), dim=1).amax(dim=1)[0]
        if resize_labels and labels.shape != (height, width):
            rows, cols = self._label_index(height, width)
            labels = labels.index_select(0, rows).index_select(1, cols)
            if confidence is not None:
                confidence = confidence.index_select(0, rows).index_select(1, cols)
        return labels, confidence

    def _capture(self, shape: Tuple[int, int], bgr: bool,
                 with_confidence: bool) -> CapturedFrame:
        self._label_index(*shape)  # index maps are built outside the capture

        def pipeline(frame: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
            return self._device_pipeline(frame, bgr, with_confidence)

        LOGGER.info('capturing a CUDA graph for %dx%d frames', shape[1], shape[0])
        return CapturedFrame(pipeline, shape, self.device, with_confidence=with_confidence)

    def _segment_captured(self, image: np.ndarray, bgr: bool,
                          with_confidence: bool) -> Optional[Segmentation]:
        """Segment through a CUDA graph; None (and graphs off for good) if capture fails."""
        key = (image.shape[0], image.shape[1], bool(bgr), bool(with_confidence))
        try:
            runner = self._graphs.get(key, lambda: self._capture(key[:2], bgr, with_confidence))
        except Exception as error:  # capture failures come as RuntimeError and others
            LOGGER.warning('CUDA graph capture failed, running frames eagerly instead: '
                           '%s: %s', type(error).__name__, error)
            self._graphs = None
            self._notes.append('CUDA graph capture failed')
            torch.cuda.synchronize(self.device)
            return None
        labels, confidence = runner.run(image)
        return Segmentation(labels, confidence)

    @torch.inference_mode()
    def segment(self, image: np.ndarray, bgr: bool = False,
                with_confidence: bool = False) -> Segmentation:
        """Label one HxWx3 uint8 image; see the module docstring for the contract."""
        if self._graphs is not None:
            self._check_image(image)
            result = self._segment_captured(image, bgr, with_confidence)
            if result is not None:
                return result
        frame = self._as_tensor(image)
        on_cpu = self.device.type == 'cpu'
        frame = frame.to(self.device, non_blocking=True)
        labels, confidence = self._device_pipeline(frame, bgr, with_confidence,
                                                   resize_labels=not on_cpu)
        labels = labels.cpu().numpy()
        confidence = None if confidence is None else confidence.cpu().numpy()
        if on_cpu and labels.shape != image.shape[:2]:
            # Same nearest map as on the device; numpy's fancy indexing is ~4x faster here.
            rows, cols = (index.numpy() for index in self._label_index(*image.shape[:2]))
            labels = labels[rows][:, cols]
            if confidence is not None:
                confidence = confidence[rows][:, cols]
        return Segmentation(labels, confidence)
