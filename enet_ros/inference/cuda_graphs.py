"""
The CUDA graph execution path: the whole per-frame device work captured once per frame size.

:class:`CudaGraphPath` is what the Segmenter runs on CUDA with
``optimize=True`` (and ``cuda_graphs=True``, the default): a folded network in
the Segmenter's precision (fp16 by default), cuDNN autotuning (see
:func:`enable_cudnn_autotuning`), and per frame a :class:`CapturedFrame` from
a :class:`~enet_ros.inference.graph_cache.GraphCache` keyed by (height,
width, bgr, with_confidence).

A :class:`CapturedFrame` owns, for one frame size, pinned host buffers, static
device buffers and a ``torch.cuda.CUDAGraph`` holding the whole device side of
a frame:

1. upload of the HxWx3 uint8 frame from a pinned host buffer,
2. the caller's ``pipeline`` (resize, normalisation, forward, argmax, resize
   of the labels back to HxW),
3. download of the HxW uint8 label map (and optionally the HxW float32
   confidence map, and the colour, overlay and drivable images that
   :class:`~enet_ros.inference.device_images.DeviceImages` computes in the
   same graph) into pinned host buffers.

Per frame the host copies the image into the pinned input buffer, launches
the graph (one ``cudaGraphLaunch``), and waits once, on an event recorded
after the launch, for the download to finish. Nothing in between synchronises
with the device. The event is a blocking one (``blocking=True``): the waiting
thread sleeps instead of spinning a CPU core for the whole GPU frame.

Batches (:meth:`CudaGraphPath.run_batch`): N frames of one size go through
one :class:`CapturedBatch`, the same work for an NxHxWx3 frame stack with one
forward of batch N, captured once per (N, size, channel orders, confidence,
images) and kept in a cache of its own (so batches do not evict the
single-frame graphs).

All captures share one graph memory pool (``torch.cuda.graph_pool_handle()``):
they never run concurrently (all replay on the caller's one stream, in
order) and every tensor a capture allocates in the pool is freed by the end
of the capture (outputs go to pinned host buffers, inputs and index maps are
allocated outside), so one pool holds the intermediates of the largest frame
instead of one pool per size.

A capture that fails (out of memory on one large frame, a kernel limit on an
odd size) is remembered for its key: that frame size runs eagerly (same
network, same pre- and post-processing, no graph) and other sizes still get
graphs. ``describe()`` names the sizes that failed.

Everything here needs CUDA to run; the module imports without it.
"""

import logging
from typing import Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .config import cudnn_benchmark_wanted
from .device_images import check_image_names, deliver_images, DeviceImages, ImageBuffers
from .eager import EagerPath, size_groups
from .frames import check_image, FramePipeline, Segmentation
from .graph_cache import GraphCache
from ..masks import OUTPUT_CHANNELS

LOGGER = logging.getLogger(__name__)

#: Maps an HxWx3 uint8 device frame to (HxW uint8 labels, HxW float32 confidence or None,
#: {name: image} for the capture's ``images``).
Pipeline = Callable[[torch.Tensor],
                    Tuple[torch.Tensor, Optional[torch.Tensor], Dict[str, torch.Tensor]]]
#: A frame's host results: labels, confidence or None, {name: image}.
HostResults = Tuple[np.ndarray, Optional[np.ndarray], Dict[str, np.ndarray]]


def enable_cudnn_autotuning(choice: Optional[bool]) -> Optional[str]:
    """
    Turn ``torch.backends.cudnn.benchmark`` on for a CUDA path unless told otherwise.

    ``choice`` is the Segmenter's ``cudnn_benchmark`` option: None (default)
    or True turns it on, False leaves it as the process set it; a
    deterministic process is never switched (see
    :func:`~enet_ros.inference.config.cudnn_benchmark_wanted`). The switch is
    process-wide, which is why only CUDA paths call this. Returns a note for
    ``describe()``: ``cuDNN autotuning`` when it is on, else why not, or None.
    """
    turn_on, note = cudnn_benchmark_wanted(choice)
    if note:
        LOGGER.info('%s: torch.backends.cudnn.benchmark left %s', note,
                    torch.backends.cudnn.benchmark)
    if turn_on:
        torch.backends.cudnn.benchmark = True
    return 'cuDNN autotuning' if torch.backends.cudnn.benchmark else note


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
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(max(1, warmup_iterations)):
                    self._step()
            torch.cuda.current_stream(device).wait_stream(side)
            torch.cuda.synchronize(device)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool):
                self._step()
            torch.cuda.synchronize(device)

    def _step(self) -> None:
        """Do the captured work: upload, pipeline, download (all stream-ordered, no sync)."""
        self.device_frame.copy_(self.host_frame, non_blocking=True)
        labels, confidence, images = self._pipeline(self.device_frame)
        self.host_labels.copy_(labels, non_blocking=True)
        for name, buffer in self.host_images.items():
            buffer.copy_(images[name], non_blocking=True)
        if self.host_confidence is not None:
            if confidence is None:
                raise ValueError('pipeline returned no confidence map but one was requested')
            self.host_confidence.copy_(confidence, non_blocking=True)

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
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(max(1, warmup_iterations)):
                    self._step()
            torch.cuda.current_stream(device).wait_stream(side)
            torch.cuda.synchronize(device)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool):
                self._step()
            torch.cuda.synchronize(device)

    def _step(self) -> None:
        """Do the captured work: upload N frames, pipeline, download (stream-ordered)."""
        self.device_frames.copy_(self.host_frames, non_blocking=True)
        labels, confidence, images = self._pipeline(self.device_frames)
        self.host_labels.copy_(labels, non_blocking=True)
        for name, buffer in self.host_images.items():
            buffer.copy_(images[name], non_blocking=True)
        if self.host_confidence is not None:
            if confidence is None:
                raise ValueError('pipeline returned no confidence map but one was requested')
            self.host_confidence.copy_(confidence, non_blocking=True)

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


def key_text(key: Hashable) -> str:
    """``(height, width, bgr, with_confidence, images)`` as ``WxH`` plus what was asked."""
    height, width, bgr, with_confidence, images = key
    return (f'{width}x{height}{" bgr" if bgr else ""}'
            f'{" with confidence" if with_confidence else ""}'
            f'{" with " + " ".join(images) if images else ""}')


class CudaGraphPath(EagerPath):
    """
    Run each frame size as a captured CUDA graph (eagerly where its capture failed).

    ``max_graphs`` captures are kept, least recently used evicted first.
    """

    cuda_graphs = True
    images_on_device = True
    batch_forward = True

    def __init__(self, network: nn.Module, pipeline: FramePipeline, notes: Sequence[str] = (),
                 max_graphs: int = 4):
        super().__init__(network, pipeline, 'optimised', notes)
        self.device = pipeline.device
        self.graphs: GraphCache[CapturedFrame] = GraphCache(max_graphs)
        #: Batch captures, keyed by (N, height, width, bgr flags, with_confidence, images).
        self.batch_graphs: GraphCache[CapturedBatch] = GraphCache(max_graphs)
        self.pool = torch.cuda.graph_pool_handle()
        self.device_images = DeviceImages(self.device)

    def configure_images(self, colors: Sequence[Tuple[int, int, int]],
                         drivable_ids: Sequence[int], overlay_alpha: float) -> None:
        """Set the image tables on the device (captured graphs read them) and on the host."""
        drivable_ids = list(drivable_ids)
        super().configure_images(colors, drivable_ids, overlay_alpha)
        self.device_images.configure(colors, drivable_ids, overlay_alpha)

    def run(self, image: np.ndarray, bgr: bool = False, with_confidence: bool = False,
            images: Sequence[str] = (), out: ImageBuffers = None) -> Segmentation:
        """Label one frame through its size's graph (captured on first use)."""
        check_image(image)
        images = self.checked_images(images)
        key = (image.shape[0], image.shape[1], bool(bgr), bool(with_confidence), images)
        runner = self.graphs.get(key, lambda: self._capture(key))
        if runner is None:  # this size's capture failed: run it eagerly
            return super().run(image, bgr, with_confidence, images, out)
        labels, confidence, rendered = runner.run(image, out)
        return Segmentation(labels, confidence, rendered)

    def run_batch(self, images: Sequence[np.ndarray], bgr: Sequence[bool],
                  with_confidence: bool = False, names: Sequence[str] = (),
                  out: Optional[Sequence[ImageBuffers]] = None) -> List[Segmentation]:
        """
        Label several frames; each size's group of two or more is one captured batch.

        A group whose batch capture failed, or ``batch_forward`` off, runs
        frame by frame through :meth:`run`.
        """
        names = self.checked_images(names)
        out = list(out) if out is not None else [None] * len(images)
        results: List[Optional[Segmentation]] = [None] * len(images)
        for group in size_groups(images):
            runner = None
            if self.batch_forward and len(group) > 1:
                for index in group:
                    check_image(images[index])
                height, width = images[group[0]].shape[:2]
                key = (len(group), height, width, tuple(bool(bgr[i]) for i in group),
                       bool(with_confidence), names)
                runner = self.batch_graphs.get(key, lambda: self._capture_batch(key))
            if runner is None:
                for index in group:
                    results[index] = self.run(images[index], bgr[index], with_confidence,
                                              names, out[index])
                continue
            frames = runner.run([images[index] for index in group],
                                [out[index] for index in group])
            for index, (labels, confidence, rendered) in zip(group, frames):
                results[index] = Segmentation(labels, confidence, rendered)
        return results

    def _capture_batch(self, key) -> CapturedBatch:
        count, height, width, bgr, with_confidence, images = key
        self.pipeline.label_index(height, width)  # index maps are built outside the capture

        def pipeline(frames: torch.Tensor):
            labels, confidence = self.pipeline.device_pipeline_batch(frames, self.forward, bgr,
                                                                     with_confidence)
            rendered = {}
            if images:
                per_frame = [self.device_images.render(
                    labels[index], frames[index].flip(-1) if bgr[index] else frames[index],
                    images) for index in range(count)]
                rendered = {name: torch.stack([frame[name] for frame in per_frame])
                            for name in images}
            return labels, confidence, rendered

        LOGGER.info('capturing a CUDA graph for batches of %d %s frames', count,
                    key_text((height, width, False, with_confidence, images)))
        try:
            return CapturedBatch(pipeline, count, (height, width), self.device,
                                 with_confidence=with_confidence, pool=self.pool, images=images)
        except Exception:
            torch.cuda.synchronize(self.device)
            raise

    def _capture(self, key: Tuple[int, int, bool, bool, Tuple[str, ...]]) -> CapturedFrame:
        height, width, bgr, with_confidence, images = key
        self.pipeline.label_index(height, width)  # index maps are built outside the capture

        def pipeline(frame: torch.Tensor):
            labels, confidence = self.pipeline.device_pipeline(frame, self.forward, bgr,
                                                               with_confidence)
            rendered = (self.device_images.render(labels, frame.flip(-1) if bgr else frame,
                                                  images) if images else {})
            return labels, confidence, rendered

        LOGGER.info('capturing a CUDA graph for %s frames', key_text(key))
        try:
            return CapturedFrame(pipeline, (height, width), self.device,
                                 with_confidence=with_confidence, pool=self.pool, images=images)
        except Exception:
            torch.cuda.synchronize(self.device)  # let the failed work drain before eager frames
            raise

    def default_warmup_frames(self):
        """One frame at the network size (the CPU compiler's resized frame would be a capture)."""
        width, height = self.pipeline.input_size
        return ((height, width),)

    def warm_up(self, sizes: Optional[Sequence[Tuple[int, int]]] = None) -> None:
        """Capture each ``(width, height)`` in ``sizes`` for RGB and BGR (none: the default)."""
        if not sizes:
            super().warm_up()
            return
        with torch.inference_mode():
            for width, height in sizes:
                for bgr in (False, True):
                    self.run(np.zeros((height, width, 3), dtype=np.uint8), bgr=bgr)

    def path_notes(self) -> Sequence[str]:
        """``CUDA graphs``, and the frame sizes whose capture failed."""
        failed = self.graphs.failures
        if not failed:
            return ('CUDA graphs',)
        return ('CUDA graphs', 'CUDA graph capture failed for '
                + ', '.join(key_text(key) for key in failed))
