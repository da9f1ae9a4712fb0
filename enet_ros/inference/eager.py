"""
The eager execution path: the network called frame by frame, no compilation, no graphs.

:class:`EagerPath` is also the interface every execution path has (the
compiled CPU and CUDA graph paths extend it):

* ``run(image, bgr=False, with_confidence=False) -> Segmentation``: one frame,
  array contract in :mod:`enet_ros.inference.frames`;
* ``run_batch(images, bgr, with_confidence=False) -> [Segmentation]``: several
  frames, grouped by size; with ``batch_forward`` each group of two or more
  goes through the network as one batch, else frame by frame through ``run``
  (the same labels either way: ``test/test_batch.py``);
* ``forward(x)``: 1x3xhxw normalised input to 1xCxhxw logits, as ``run`` computes them;
* ``warm_up(sizes)``: run (compile, capture) frames at construction;
* ``describe()``: which path runs and what was done to the network;
* ``network``, ``pipeline`` (:class:`~enet_ros.inference.frames.FramePipeline`),
  and the flags ``compiled`` and ``cuda_graphs``.

The Segmenter uses it for ``optimize=False`` (the network as trained, the
reference the other paths are tested against; ``mode='eager'``), and with
``mode='optimised'`` for a folded network where no faster path applies:
``torch_compile=False`` on the CPU, ``cuda_graphs=False`` on CUDA.
"""

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .device_images import check_image_names, ImageBuffers
from .frames import check_image, FramePipeline, Segmentation
from .. import masks


def size_groups(images: Sequence[np.ndarray]) -> List[List[int]]:
    """Group the indices of ``images`` by (height, width), groups in order of first appearance."""
    groups: Dict[Tuple[int, int], List[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(tuple(image.shape[:2]), []).append(index)
    return list(groups.values())


class EagerPath:
    """Run ``network`` eagerly on every frame; see the module docstring."""

    compiled = False
    cuda_graphs = False
    images_on_device = False
    #: Whether :meth:`run_batch` runs frames of one size as one forward (the Segmenter sets it).
    batch_forward = False

    def __init__(self, network: nn.Module, pipeline: FramePipeline, mode: str = 'eager',
                 notes: Sequence[str] = ()):
        self.network = network
        self.pipeline = pipeline
        self.mode = mode
        self.notes = list(notes)
        self.host_images: Optional[masks.OutputRenderer] = None

    def forward(self, network_input: torch.Tensor) -> torch.Tensor:
        """Map a 1x3xhxw normalised input to 1xCxhxw logits."""
        return self.network(network_input)

    def segment_frame(self, image: np.ndarray, bgr: bool = False,
                      with_confidence: bool = False) -> Segmentation:
        """Label one HxWx3 uint8 image: pre-processing, ``forward``, post-processing."""
        return self.pipeline.segment(image, self.forward, bgr, with_confidence)

    def configure_images(self, colors: Sequence[Tuple[int, int, int]],
                         drivable_ids: Sequence[int], overlay_alpha: float) -> None:
        """Set the palette, drivable classes and overlay weight of ``run``'s ``images``."""
        self.host_images = masks.OutputRenderer(colors, drivable_ids, overlay_alpha)

    def checked_images(self, images: Sequence[str]) -> Tuple[str, ...]:
        """Return the image names as a sorted tuple; raise ValueError if unknown or unset."""
        images = check_image_names(images)
        if images and self.host_images is None:
            raise ValueError(f'images {list(images)} asked for before configure_images')
        return images

    def run(self, image: np.ndarray, bgr: bool = False, with_confidence: bool = False,
            images: Sequence[str] = (), out: ImageBuffers = None) -> Segmentation:
        """Label one HxWx3 uint8 image (call under inference mode); ``images`` on the host."""
        images = self.checked_images(images)
        result = self.segment_frame(image, bgr, with_confidence)
        if not images:
            return result
        rgb = image[..., ::-1] if bgr else image
        rendered = self.host_images.render(result.labels, rgb, images, out=out)
        return Segmentation(result.labels, result.confidence, rendered)

    def run_batch(self, images: Sequence[np.ndarray], bgr: Sequence[bool],
                  with_confidence: bool = False, names: Sequence[str] = (),
                  out: Optional[Sequence[ImageBuffers]] = None) -> List[Segmentation]:
        """
        Label several HxWx3 uint8 images (call under inference mode); results in their order.

        ``bgr``: one flag per image; ``names``: the images to draw for every
        frame (as :meth:`run`'s ``images``); ``out``: one buffer mapping (or
        None) per frame. Frames are grouped by size; see the module docstring.
        """
        names = self.checked_images(names)
        out = list(out) if out is not None else [None] * len(images)
        results: List[Optional[Segmentation]] = [None] * len(images)
        for group in size_groups(images):
            if not self.batch_forward or len(group) == 1:
                for index in group:
                    results[index] = self.run(images[index], bgr[index], with_confidence, names,
                                              out[index])
                continue
            for index in group:
                check_image(images[index])
            batch = self.pipeline.segment_batch([images[index] for index in group],
                                                self.forward, [bgr[index] for index in group],
                                                with_confidence)
            for index, result in zip(group, batch):
                if names:
                    rgb = images[index][..., ::-1] if bgr[index] else images[index]
                    rendered = self.host_images.render(result.labels, rgb, names,
                                                       out=out[index])
                    result = Segmentation(result.labels, result.confidence, rendered)
                results[index] = result
        return results

    def default_warmup_frames(self) -> Iterable[Tuple[int, int]]:
        """
        Frame shapes (height, width) run at construction when no camera size is given.

        Two frames at the network size, then one that needs a resize: a frame at
        the network size and a resized one reach the network with different
        memory layouts, which ``torch.compile`` compiles separately.
        """
        width, height = self.pipeline.input_size
        return ((height, width), (height, width), (height + 2, width + 2))

    def warm_up(self, sizes: Optional[Sequence[Tuple[int, int]]] = None) -> None:
        """
        Run frames before the first camera frame: one per ``(width, height)`` in ``sizes``.

        Without sizes, :meth:`default_warmup_frames`.
        """
        shapes = ([(height, width) for width, height in sizes] if sizes
                  else self.default_warmup_frames())
        with torch.inference_mode():
            for height, width in shapes:
                self.run(np.zeros((height, width, 3), dtype=np.uint8))

    def path_notes(self) -> Sequence[str]:
        """Return the notes after the network's, e.g. ``torch.compile`` (for subclasses)."""
        return ()

    def describe(self) -> str:
        """Which path runs, e.g. ``optimised (BatchNorm folded, channels_last, torch.compile)``."""
        notes = list(self.notes) + list(self.path_notes())
        return f'{self.mode} ({", ".join(notes)})' if notes else self.mode
