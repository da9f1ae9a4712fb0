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
from typing import Hashable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .config import cudnn_benchmark_wanted
from .device_images import DeviceImages, ImageBuffers
from .eager import EagerPath, size_groups
from .frames import check_image, FramePipeline, Segmentation
from .graph_cache import GraphCache
from .graph_capture import CapturedBatch, CapturedFrame

LOGGER = logging.getLogger(__name__)


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
