"""The Segmenter: one inference path for the node, bag evaluation and training evaluation.

Array contract of :meth:`Segmenter.segment`: input an HxWx3 uint8 image, RGB
unless ``bgr=True`` (any strides: a view into a message buffer works); output
an HxW uint8 label map at the input resolution, values in ``[0, C)``, and on
request an HxW float32 confidence map (softmax probability of the chosen
class).

Per frame: upload, resize to the network input (bilinear, antialiased),
normalise, forward, argmax on the device, nearest-neighbour resize of the
labels back to HxW, download. Everything that does not depend on the frame
(model, normalisation constants, index maps per input size) is built once.
"""

from dataclasses import dataclass
import logging
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .model_file import LoadedModel, load_model_file, ModelMetadata

LOGGER = logging.getLogger(__name__)
DEVICE_CHOICES = ('auto', 'cpu', 'cuda', 'cuda:N')
PRECISIONS = ('auto', 'fp16', 'fp32')


class SegmenterConfigError(ValueError):
    """The requested device, precision or input size cannot be used."""


@dataclass(frozen=True)
class Segmentation:
    """Result for one frame: HxW uint8 labels, optional HxW float32 confidence."""

    labels: np.ndarray
    confidence: Optional[np.ndarray] = None


def resolve_device(choice: str) -> Tuple[torch.device, Optional[str]]:
    """Map ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` to a device and an optional log note.

    Raises :class:`SegmenterConfigError` for an unknown choice or missing CUDA.
    """
    choice = choice.strip().lower()
    if choice == 'auto':
        if torch.cuda.is_available():
            return torch.device('cuda', torch.cuda.current_device()), None
        return torch.device('cpu'), 'device auto: CUDA is not available, running on the CPU in fp32'
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
    """NxCxHxW logits to NxHxW uint8 ids of the largest logit (first one on ties).

    A running maximum over the C channel planes: on the CPU this is 6-7x faster
    than ``argmax(dim=1)``, whose reduction strides across planes, and it gives
    identical ids.
    """
    best = logits[:, 0].clone()
    labels = torch.zeros(best.shape, dtype=torch.uint8, device=logits.device)
    for class_id in range(1, logits.shape[1]):
        plane = logits[:, class_id]
        labels.masked_fill_(plane > best, class_id)
        torch.maximum(best, plane, out=best)
    return labels


class Segmenter:
    """ENet inference from uint8 images to label maps; see the module docstring."""

    def __init__(self, model: LoadedModel, device: str = 'auto', precision: str = 'auto',
                 input_size: Optional[Tuple[int, int]] = None, warmup: bool = True):
        self.device, note = resolve_device(device)
        if note:
            LOGGER.warning(note)
        self.fallback_note = note
        self.dtype = resolve_precision(precision, self.device)
        self.metadata: ModelMetadata = model.metadata
        self.model_path = model.path
        self.input_size = self._check_input_size(input_size or model.metadata.input_size)
        net = model.build().to(self.device, self.dtype)
        net.requires_grad_(False)
        self.network = net.eval()
        self._mean, self._inv_std = normalization_constants(model.metadata, self.device)
        self._bgr_to_rgb = torch.tensor([2, 1, 0], device=self.device)
        self._index_maps: Dict[Tuple[int, int], Tuple[torch.Tensor, torch.Tensor]] = {}
        if warmup:
            width, height = self.input_size
            for _ in range(2):
                self.segment(np.zeros((height, width, 3), dtype=np.uint8))

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
        """Number of classes C; labels lie in ``[0, C)``."""
        return self.metadata.num_classes

    @property
    def precision(self) -> str:
        """``fp16`` or ``fp32``."""
        return 'fp16' if self.dtype == torch.float16 else 'fp32'

    def describe(self) -> str:
        """One line for logs: device, precision, input size, model."""
        width, height = self.input_size
        return (f'ENet {self.num_classes} classes ({self.metadata.dataset}) on {self.device} '
                f'{self.precision}, network input {width}x{height}, model {self.model_path}')

    def _label_index(self, height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Row and column indices mapping an HxW output to the network grid (nearest)."""
        key = (height, width)
        if key not in self._index_maps:
            net_width, net_height = self.input_size
            rows = ((torch.arange(height, dtype=torch.float64) + 0.5) * net_height / height)
            cols = ((torch.arange(width, dtype=torch.float64) + 0.5) * net_width / width)
            rows = rows.floor().clamp_(max=net_height - 1).long().to(self.device)
            cols = cols.floor().clamp_(max=net_width - 1).long().to(self.device)
            self._index_maps[key] = (rows[:, None], cols[None, :])
        return self._index_maps[key]

    def preprocess(self, image: np.ndarray, bgr: bool = False) -> torch.Tensor:
        """HxWx3 uint8 to the normalised 1x3xhxw network input on the device."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
                or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError('expected an HxWx3 uint8 array, got '
                             f'{getattr(image, "dtype", type(image))} '
                             f'{getattr(image, "shape", "")}')
        frame = torch.from_numpy(image).to(self.device, non_blocking=True)
        frame = frame.permute(2, 0, 1).unsqueeze(0)
        if bgr:
            frame = frame.index_select(1, self._bgr_to_rgb)
        frame = frame.float()
        net_width, net_height = self.input_size
        if frame.shape[-2:] != (net_height, net_width):
            frame = F.interpolate(frame, size=(net_height, net_width), mode='bilinear',
                                  align_corners=False, antialias=True)
        normalised = normalize(frame, self._mean, self._inv_std)
        # A permuted HWC frame is channels_last in memory; the network runs NCHW.
        return normalised.to(self.dtype).contiguous()

    @torch.inference_mode()
    def segment(self, image: np.ndarray, bgr: bool = False,
                with_confidence: bool = False) -> Segmentation:
        """Label one HxWx3 uint8 image; see the module docstring for the contract."""
        height, width = image.shape[:2]
        logits = self.network(self.preprocess(image, bgr))
        rows, cols = self._label_index(height, width)
        labels = argmax_classes(logits)[0][rows, cols]
        confidence = None
        if with_confidence:
            probability = torch.softmax(logits.float(), dim=1).amax(dim=1)[0]
            confidence = probability[rows, cols].cpu().numpy()
        return Segmentation(labels.cpu().numpy(), confidence)
