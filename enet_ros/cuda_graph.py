"""
The per-frame CUDA work captured once in a CUDA graph and replayed for every frame.

A :class:`CapturedFrame` owns, for one frame size, pinned host buffers, static
device buffers and a ``torch.cuda.CUDAGraph`` holding the whole device side of
a frame:

1. upload of the HxWx3 uint8 frame from a pinned host buffer,
2. the caller's ``pipeline`` (resize, normalisation, forward, argmax, resize
   of the labels back to HxW),
3. download of the HxW uint8 label map (and optionally the HxW float32
   confidence map) into pinned host buffers.

Per frame the host copies the image into the pinned input buffer, launches
the graph (one ``cudaGraphLaunch``), and waits once, on an event recorded
after the launch, for the download to finish. Nothing in between synchronises
with the device.

:class:`GraphCache` keeps a bounded number of captures keyed by frame size
(and any other key the caller needs), least recently used evicted first:
a camera that changes resolution gets a new capture, not a failure.

Everything here needs CUDA; the module imports without it.
"""

from collections import OrderedDict
import logging
from typing import Callable, Hashable, Optional, Tuple

import numpy as np
import torch

LOGGER = logging.getLogger(__name__)

#: Maps an HxWx3 uint8 device frame to (HxW uint8 labels, HxW float32 confidence or None).
Pipeline = Callable[[torch.Tensor], Tuple[torch.Tensor, Optional[torch.Tensor]]]


class CapturedFrame:
    """
    One CUDA graph for HxWx3 uint8 frames of one size; see the module docstring.

    ``pipeline`` must be capturable: no host synchronisation, no tensors made
    from host data, fixed shapes. It is run ``warmup_iterations`` times on a
    side stream before capture (cuDNN autotuning happens there), then captured.
    ``pool`` is a ``torch.cuda.graph_pool_handle()`` to share memory between
    captures that never run concurrently (default: a private pool).
    """

    def __init__(self, pipeline: Pipeline, frame_shape: Tuple[int, int], device: torch.device,
                 with_confidence: bool = False, warmup_iterations: int = 3,
                 pool: Optional[Tuple[int, int]] = None):
        if device.type != 'cuda':
            raise ValueError(f'CapturedFrame needs a CUDA device, got {device}')
        height, width = (int(v) for v in frame_shape)
        self.frame_shape = (height, width)
        self.device = device
        self.with_confidence = with_confidence
        with torch.cuda.device(device):
            self.host_frame = torch.empty((height, width, 3), dtype=torch.uint8,
                                          pin_memory=True)
            self.host_labels = torch.empty((height, width), dtype=torch.uint8, pin_memory=True)
            self.host_confidence = (torch.empty((height, width), dtype=torch.float32,
                                                pin_memory=True) if with_confidence else None)
            self.device_frame = torch.zeros((height, width, 3), dtype=torch.uint8,
                                            device=device)
            self._host_frame_array = self.host_frame.numpy()
            self._pipeline = pipeline
            self.done = torch.cuda.Event()
            self.host_frame.zero_()
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
        labels, confidence = self._pipeline(self.device_frame)
        self.host_labels.copy_(labels, non_blocking=True)
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

    def collect(self) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Wait for the launched frame; return copies of (HxW uint8 labels, confidence)."""
        self.done.synchronize()
        labels = self.host_labels.numpy().copy()
        confidence = (self.host_confidence.numpy().copy()
                      if self.host_confidence is not None else None)
        return labels, confidence

    def run(self, image: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """:meth:`launch` then :meth:`collect`: one frame, one wait."""
        self.launch(image)
        return self.collect()


class GraphCache:
    """At most ``capacity`` :class:`CapturedFrame` objects, least recently used evicted first."""

    def __init__(self, capacity: int = 4):
        if capacity < 1:
            raise ValueError(f'capacity must be at least 1, got {capacity}')
        self.capacity = capacity
        self._entries: 'OrderedDict[Hashable, CapturedFrame]' = OrderedDict()
        self.captures = 0

    def __len__(self) -> int:
        """Return the number of captures held."""
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        """Whether a capture for ``key`` is held."""
        return key in self._entries

    def peek(self, key: Hashable) -> Optional[CapturedFrame]:
        """Return the capture for ``key`` if held (recency unchanged), else None."""
        return self._entries.get(key)

    def get(self, key: Hashable, build: Callable[[], CapturedFrame]) -> CapturedFrame:
        """Return the capture for ``key``, built (oldest evicted if full) on a miss."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry
        while len(self._entries) >= self.capacity:
            evicted, _ = self._entries.popitem(last=False)
            LOGGER.info('CUDA graph for %s evicted (cache holds %d)', evicted, self.capacity)
        entry = build()
        self.captures += 1
        self._entries[key] = entry
        return entry

    def clear(self) -> None:
        """Drop every capture (their memory returns to the caching allocator)."""
        self._entries.clear()
