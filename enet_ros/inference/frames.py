"""
Per-frame pre- and post-processing shared by every execution path.

Array contract (what :meth:`FramePipeline.segment` and every path's ``run``
implement): input an HxWx3 uint8 image, RGB unless ``bgr=True`` (any strides:
a view into a message buffer works); output an HxW uint8 label map at the
input resolution, values in ``[0, C)``, and on request an HxW float32
confidence map (softmax probability of the chosen class).

Per frame: upload, resize to the network input (bilinear, antialiased; its
working memory bounded by the frame's and the network input's size, whatever
the aspect ratio), normalise, forward (the path's), argmax on the device, nearest-neighbour
resize of the labels back to HxW, download. On the CPU the label resize runs
in numpy after the download (about 4x faster there); the device version
(:meth:`FramePipeline.device_pipeline`) has no host synchronisation and no
host tensors, so CUDA graphs capture it whole.
"""

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from ..model_file import ModelMetadata

#: A network forward: 1x3xhxw normalised input to 1xCxhxw logits.
Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Segmentation:
    """
    Result for one frame: HxW uint8 labels, optional HxW float32 confidence, images.

    ``images``: the colour, overlay and drivable images asked for, by name
    (HxWx3 uint8 RGB, HxWx3 uint8 RGB, HxW uint8), as
    :class:`enet_ros.masks.OutputRenderer` makes them.
    """

    labels: np.ndarray
    confidence: Optional[np.ndarray] = None
    images: Mapping[str, np.ndarray] = field(default_factory=dict)


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


def check_image(image: np.ndarray) -> None:
    """Raise ValueError unless ``image`` is a non-empty HxWx3 uint8 array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError('expected an HxWx3 uint8 array, got '
                         f'{getattr(image, "dtype", type(image))} '
                         f'{getattr(image, "shape", "")}')


def as_tensor(image: np.ndarray) -> torch.Tensor:
    """Check an HxWx3 uint8 image and wrap it as a CPU tensor (no copy unless needed)."""
    check_image(image)
    if any(stride < 0 for stride in image.strides):  # e.g. image[..., ::-1]
        image = np.ascontiguousarray(image)
    if not image.flags.writeable:  # a message buffer: read, never written
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='The given NumPy array is not writ')
            return torch.from_numpy(image)
    return torch.from_numpy(image)


def _resize(frame: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """
    Resize a 1x3xHxW float frame to 1x3x``height``x``width``: bilinear, antialiased.

    torch's antialiased resize is separable and on the CPU resizes the columns
    first, through a ``H x width`` intermediate: for a frame much taller than
    wide that is far larger than the frame (a 1x8294400 frame and a 480-wide
    network: 48 GB). :meth:`FramePipeline.network_input` therefore resizes
    the rows first (a one-axis resize skips the other pass) whenever the
    columns-first intermediate would be the larger; the intermediate is then
    never larger than the frame or the network input, whatever the aspect
    ratio, and the work grows with the frame's pixels only. The separable
    passes are the same either way (up to float rounding).
    """
    return F.interpolate(frame, size=(height, width), mode='bilinear', align_corners=False,
                         antialias=True)


def _take_nearest(grid, rows, cols):
    """
    Return ``grid[rows][:, cols]``: an hxw map (tensor or array) picked out to HxW.

    One axis at a time, in the order whose intermediate is the smaller (H x w
    rows first, h x W columns first): rows first always made a 1x8294400
    frame's intermediate 4 GB (labels; confidence: 16 GB). Either order picks
    the same pixels.
    """
    height, width = grid.shape[:2]
    if isinstance(grid, torch.Tensor):
        if len(rows) * width <= height * len(cols):
            return grid.index_select(0, rows).index_select(1, cols)
        return grid.index_select(1, cols).index_select(0, rows)
    if len(rows) * width <= height * len(cols):
        return grid[rows][:, cols]
    return grid[:, cols][rows]


class FramePipeline:
    """
    Pre- and post-processing around a forward, for one network input size and device.

    ``input_size`` is the network input ``(width, height)``; ``dtype`` and
    ``memory_format`` are those the network runs in. Everything that does not
    depend on the frame (normalisation constants, index maps per frame size)
    is built once and kept.
    """

    def __init__(self, metadata: ModelMetadata, input_size: Tuple[int, int],
                 device: torch.device, dtype: torch.dtype,
                 memory_format: torch.memory_format = torch.contiguous_format):
        self.input_size = input_size
        self.device = device
        self.dtype = dtype
        self.memory_format = memory_format
        self.host_label_resize = device.type == 'cpu'
        self._mean, self._inv_std = normalization_constants(metadata, device)
        self._index_maps: Dict[Tuple[int, int], Tuple[torch.Tensor, torch.Tensor]] = {}

    def label_index(self, height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Row (length H) and column (length W) indices into the network grid (nearest).

        Output pixel ``(r, c)`` takes the label of the network pixel whose area
        contains the output pixel's centre. Built once per size, on the device.
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

    def network_input(self, frame: torch.Tensor, bgr: bool) -> torch.Tensor:
        """HxWx3 uint8 device frame to the 1x3xhxw normalised input (dtype, memory format)."""
        frame = frame.permute(2, 0, 1).unsqueeze(0)
        if bgr:
            frame = frame.flip(1)
        frame = frame.float()
        net_width, net_height = self.input_size
        height, width = frame.shape[-2:]
        if (height, width) != (net_height, net_width):
            if height * net_width > net_height * width:
                frame = _resize(frame, net_height, width)  # rows first: see _resize
            frame = _resize(frame, net_height, net_width)
        normalised = normalize(frame, self._mean, self._inv_std)
        # A permuted HWC frame is channels_last in memory; make it what the network runs.
        return normalised.to(self.dtype).contiguous(memory_format=self.memory_format)

    def preprocess(self, image: np.ndarray, bgr: bool = False) -> torch.Tensor:
        """HxWx3 uint8 to the normalised 1x3xhxw network input on the device."""
        frame = as_tensor(image).to(self.device, non_blocking=True)
        return self.network_input(frame, bgr)

    def device_pipeline(self, frame: torch.Tensor, forward: Forward, bgr: bool,
                        with_confidence: bool, resize_labels: bool = True
                        ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Map an HxWx3 uint8 device frame to (HxW uint8 labels, HxW float32 confidence or None).

        Device work only (no host synchronisation, no host tensors), so it
        can be captured in a CUDA graph once :meth:`label_index` has built the
        frame size's index maps. With ``resize_labels=False`` the maps stay at
        the network size (hxw) for the caller to resize.
        """
        height, width = frame.shape[:2]
        logits = forward(self.network_input(frame, bgr))
        labels = labels_from_logits(logits)[0]
        confidence = None
        if with_confidence:
            confidence = torch.softmax(logits.float(), dim=1).amax(dim=1)[0]
        if resize_labels and labels.shape != (height, width):
            rows, cols = self.label_index(height, width)
            labels = _take_nearest(labels, rows, cols)
            if confidence is not None:
                confidence = _take_nearest(confidence, rows, cols)
        return labels, confidence

    def batch_input(self, frames: Sequence[torch.Tensor], bgr: Sequence[bool]) -> torch.Tensor:
        """
        N HxWx3 uint8 device frames (each its own channel order) to the Nx3xhxw input.

        Each frame is resized and normalised exactly as :meth:`network_input`
        does it alone, then stacked (device work only: capturable).
        """
        inputs = [self.network_input(frame, flag) for frame, flag in zip(frames, bgr)]
        return torch.cat(inputs).contiguous(memory_format=self.memory_format)

    def device_pipeline_batch(self, frames: torch.Tensor, forward: Forward,
                              bgr: Sequence[bool], with_confidence: bool
                              ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        NxHxWx3 uint8 device frames to (NxHxW uint8 labels, NxHxW float32 confidence or None).

        :meth:`device_pipeline` for N frames of one size with one ``forward``;
        device work only (capturable once :meth:`label_index` has built the
        size's maps).
        """
        count, height, width = frames.shape[:3]
        logits = forward(self.batch_input([frames[index] for index in range(count)], bgr))
        labels = labels_from_logits(logits)
        confidence = (torch.softmax(logits.float(), dim=1).amax(dim=1)
                      if with_confidence else None)
        if labels.shape[1:] != (height, width):
            rows, cols = self.label_index(height, width)
            labels = torch.stack([_take_nearest(labels[index], rows, cols)
                                  for index in range(count)])
            if confidence is not None:
                confidence = torch.stack([_take_nearest(confidence[index], rows, cols)
                                          for index in range(count)])
        return labels, confidence

    def segment_batch(self, images: Sequence[np.ndarray], forward: Forward,
                      bgr: Sequence[bool], with_confidence: bool = False) -> List[Segmentation]:
        """
        Label N HxWx3 uint8 images of one size with one ``forward`` (call under inference mode).

        Pre- and post-processing are :meth:`segment`'s, frame by frame; only
        the network runs once, on the N frames stacked.
        """
        frames = [as_tensor(image).to(self.device, non_blocking=True) for image in images]
        logits = forward(self.batch_input(frames, bgr))
        labels = labels_from_logits(logits).cpu().numpy()
        confidence = (torch.softmax(logits.float(), dim=1).amax(dim=1).cpu().numpy()
                      if with_confidence else None)
        height, width = images[0].shape[:2]
        rows = cols = None
        if labels.shape[1:] != (height, width):
            rows, cols = (index.cpu().numpy() for index in self.label_index(height, width))
        results = []
        for index in range(len(images)):
            frame_labels = labels[index]
            frame_confidence = None if confidence is None else confidence[index]
            if rows is not None:
                frame_labels = _take_nearest(frame_labels, rows, cols)
                if frame_confidence is not None:
                    frame_confidence = _take_nearest(frame_confidence, rows, cols)
            else:
                frame_labels = frame_labels.copy()
                if frame_confidence is not None:
                    frame_confidence = frame_confidence.copy()
            results.append(Segmentation(frame_labels, frame_confidence))
        return results

    def segment(self, image: np.ndarray, forward: Forward, bgr: bool = False,
                with_confidence: bool = False) -> Segmentation:
        """Label one HxWx3 uint8 image with ``forward`` (call under inference mode)."""
        frame = as_tensor(image).to(self.device, non_blocking=True)
        on_host = self.host_label_resize
        labels, confidence = self.device_pipeline(frame, forward, bgr, with_confidence,
                                                  resize_labels=not on_host)
        labels = labels.cpu().numpy()
        confidence = None if confidence is None else confidence.cpu().numpy()
        if on_host and labels.shape != image.shape[:2]:
            # Same nearest map as on the device; numpy's fancy indexing is ~4x faster here.
            rows, cols = (index.numpy() for index in self.label_index(*image.shape[:2]))
            labels = _take_nearest(labels, rows, cols)
            if confidence is not None:
                confidence = _take_nearest(confidence, rows, cols)
        return Segmentation(labels, confidence)
