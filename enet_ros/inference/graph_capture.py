"""
Captured CUDA graphs: one frame (:class:`CapturedFrame`) or a batch (:class:`CapturedBatch`).

:class:`~enet_ros.inference.cuda_graphs.CudaGraphPath` keeps these in its
caches and launches them; what a capture holds and why the host waits on a
blocking event is described in that module's docstring. Everything here needs
CUDA to run; the module imports without it.
"""

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .device_images import check_image_names, deliver_images, ImageBuffers
from ..masks import OUTPUT_CHANNELS

#: Maps an HxWx3 uint8 device frame to (HxW uint8 labels, HxW float32 confidence or None,
#: {name: image} for the capture's ``images``).
Pipeline = Callable[[torch.Tensor],
                    Tuple[torch.Tensor, Optional[torch.Tensor], Dict[str, torch.Tensor]]]
#: A frame's host results: labels, confidence or None, {name: image}.
HostResults = Tuple[np.ndarray, Optional[np.ndarray], Dict[str, np.ndarray]]


def capture(step: Callable[[], None], device: torch.device, warmup_iterations: int,
            pool: Optional[Tuple[int, int]]) -> 'torch.cuda.CUDAGraph':
    """
    Run ``step`` ``warmup_iterations`` times on a side stream, then capture it as a graph.

    The warm-up runs where cuDNN autotuning and the caching allocator settle,
    outside the capture; the graph's memory comes from ``pool`` (None: a
    private pool).
    """
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(max(1, warmup_iterations)):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        step()
    torch.cuda.synchronize(device)
    return graph


def run_step(pipeline: Pipeline, host_in: torch.Tensor, device_in: torch.Tensor,
             host_labels: torch.Tensor, host_confidence: Optional[torch.Tensor],
             host_images: Dict[str, torch.Tensor]) -> None:
    """
    Do a capture's work: upload, pipeline, download (all stream-ordered, no sync).

    Works for one frame (HxWx3 in, HxW labels) and for a batch (a leading N on
    every buffer) alike.
    """
    device_in.copy_(host_in, non_blocking=True)
    labels, confidence, images = pipeline(device_in)
    host_labels.copy_(labels, non_blocking=True)
    for name, buffer in host_images.items():
        buffer.copy_(images[name], non_blocking=True)
    if host_confidence is not None:
        if confidence is None:
            raise ValueError('pipeline returned no confidence map but one was requested')
        host_confidence.copy_(confidence, non_blocking=True)


def completion_event() -> 'torch.cuda.Event':
    """Return the event a frame waits on: blocking, so the waiting thread sleeps."""
    return torch.cuda.Event(blocking=True)


class CapturedFrame:
    """
    One CUDA graph for HxWx3 uint8 frames of one size; see the module docstring.

    ``pipeline`` must be capturable: no host synchronisation, no tensors made
    from host data, fixed shapes. It is run ``warmup_iterations`` times on a
    side stream before capture (cuDNN autotuning happens there), then captured.
    ``pool`` is a ``torch.cuda.graph_pool_handle()`` to share memory between
    captures that never run concurrently (default: a private pool).
    ``images``: the names of the extra images the pipeline returns
    (:data:`~enet_ros.inference.device_images.DEVICE_IMAGES`), each
    downloaded into a pinned buffer of its own.
    """

    def __init__(self, pipeline: Pipeline, frame_shape: Tuple[int, int], device: torch.device,
                 with_confidence: bool = False, warmup_iterations: int = 3,
                 pool: Optional[Tuple[int, int]] = None, images: Sequence[str] = ()):
        if device.type != 'cuda':
            raise ValueError(f'CapturedFrame needs a CUDA device, got {device}')
        height, width = (int(v) for v in frame_shape)
        self.frame_shape = (height, width)
        self.device = device
        self.with_confidence = with_confidence
        self.pool = pool
        with torch.cuda.device(device):
            self.host_frame = torch.zeros((height, width, 3), dtype=torch.uint8,
                                          pin_memory=True)
            self.host_labels = torch.empty((height, width), dtype=torch.uint8, pin_memory=True)
            self.host_confidence = (torch.empty((height, width), dtype=torch.float32,
                                                pin_memory=True) if with_confidence else None)
            self.host_images = {
                name: torch.empty((height, width, 3) if OUTPUT_CHANNELS[name] == 3
                                  else (height, width), dtype=torch.uint8, pin_memory=True)
                for name in check_image_names(images)}
            self.device_frame = torch.zeros((height, width, 3), dtype=torch.uint8,
                                            device=device)
            self._host_frame_array = self.host_frame.numpy()
            self._pipeline = pipeline
            self.done = completion_event()
            self.graph = capture(self._step, device, warmup_iterations, pool)

    def _step(self) -> None:
        """Do the captured work: upload, pipeline, download (all stream-ordered, no sync)."""
        run_step(self._pipeline, self.host_frame, self.device_frame, self.host_labels,
                 self.host_confidence, self.host_images)

    def launch(self, image: np.ndarray) -> None:
        """
        Copy ``image`` (HxWx3 uint8, any strides) to pinned memory and launch the graph.

        Returns without waiting for the device; :meth:`collect` waits.
        """
        if image.shape[:2] != self.frame_shape:
            raise ValueError(f'frame {image.shape[:2]} does not match the capture '
                             f'{self.frame_shape}')
        np.copyto(self._host_frame_array, image)
        self.graph.replay()
        self.done.record(torch.cuda.current_stream(self.device))

    def collect(self, out: ImageBuffers = None) -> HostResults:
        """
        Wait (sleeping) for the launched frame; return copies of its results.

        Images with a buffer in ``out`` are copied into it instead (see
        :func:`~enet_ros.inference.device_images.deliver_images`).
        """
        self.done.synchronize()
        labels = self.host_labels.numpy().copy()
        confidence = (self.host_confidence.numpy().copy()
                      if self.host_confidence is not None else None)
        images = deliver_images(
            {name: buffer.numpy() for name, buffer in self.host_images.items()}, out)
        return labels, confidence, images

    def run(self, image: np.ndarray, out: ImageBuffers = None) -> HostResults:
        """:meth:`launch` then :meth:`collect`: one frame, one wait."""
        self.launch(image)
        return self.collect(out)


class CapturedBatch:
    """
    One CUDA graph for N HxWx3 uint8 frames of one size: :class:`CapturedFrame` for a batch.

    ``pipeline`` maps the NxHxWx3 device frames to (NxHxW uint8 labels, NxHxW
    float32 confidence or None, {name: NxHxWx3 or NxHxW image}); capturable
    as :class:`CapturedFrame`'s. Host and device buffers have a leading N.
    """

    def __init__(self, pipeline: Pipeline, batch: int, frame_shape: Tuple[int, int],
                 device: torch.device, with_confidence: bool = False,
                 warmup_iterations: int = 3, pool: Optional[Tuple[int, int]] = None,
                 images: Sequence[str] = ()):
        if device.type != 'cuda':
            raise ValueError(f'CapturedBatch needs a CUDA device, got {device}')
        if batch < 1:
            raise ValueError(f'batch must be at least 1, got {batch}')
        height, width = (int(v) for v in frame_shape)
        self.batch = int(batch)
        self.frame_shape = (height, width)
        self.device = device
        self.with_confidence = with_confidence
        shape = (self.batch, height, width)
        with torch.cuda.device(device):
            self.host_frames = torch.zeros(shape + (3,), dtype=torch.uint8, pin_memory=True)
            self.host_labels = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
            self.host_confidence = (torch.empty(shape, dtype=torch.float32, pin_memory=True)
                                    if with_confidence else None)
            self.host_images = {
                name: torch.empty(shape + ((3,) if OUTPUT_CHANNELS[name] == 3 else ()),
                                  dtype=torch.uint8, pin_memory=True)
                for name in check_image_names(images)}
            self.device_frames = torch.zeros(shape + (3,), dtype=torch.uint8, device=device)
            self._host_frames_array = self.host_frames.numpy()
            self._pipeline = pipeline
            self.done = completion_event()
            self.graph = capture(self._step, device, warmup_iterations, pool)

    def _step(self) -> None:
        """Do the captured work: upload N frames, pipeline, download (stream-ordered)."""
        run_step(self._pipeline, self.host_frames, self.device_frames, self.host_labels,
                 self.host_confidence, self.host_images)

    def launch(self, images: Sequence[np.ndarray]) -> None:
        """Copy N HxWx3 uint8 images (any strides) to pinned memory and launch the graph."""
        if len(images) != self.batch:
            raise ValueError(f'{len(images)} frames for a capture of {self.batch}')
        for index, image in enumerate(images):
            if image.shape[:2] != self.frame_shape:
                raise ValueError(f'frame {image.shape[:2]} does not match the capture '
                                 f'{self.frame_shape}')
            np.copyto(self._host_frames_array[index], image)
        self.graph.replay()
        self.done.record(torch.cuda.current_stream(self.device))

    def collect(self, out: Optional[Sequence[ImageBuffers]] = None) -> List[HostResults]:
        """Wait (sleeping) for the launched batch; return each frame's results as copies."""
        self.done.synchronize()
        out = list(out) if out is not None else [None] * self.batch
        labels = self.host_labels.numpy()
        confidence = self.host_confidence.numpy() if self.host_confidence is not None else None
        images = {name: buffer.numpy() for name, buffer in self.host_images.items()}
        return [(labels[index].copy(),
                 confidence[index].copy() if confidence is not None else None,
                 deliver_images({name: image[index] for name, image in images.items()},
                                out[index]))
                for index in range(self.batch)]

    def run(self, images: Sequence[np.ndarray],
            out: Optional[Sequence[ImageBuffers]] = None) -> List[HostResults]:
        """:meth:`launch` then :meth:`collect`: one batch, one launch, one wait."""
        self.launch(images)
        return self.collect(out)
