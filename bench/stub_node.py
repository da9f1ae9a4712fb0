"""
The segmentation node with a stub Segmenter that returns labels at once (benchmarks only).

``python bench/stub_node.py --ros-args ...`` runs the node's own ``main`` after
replacing :class:`enet_ros.segmenter.Segmenter` by :class:`StubSegmenter`, so
that what remains of a frame's time in the node is decoding, drawing the
output images, filling the messages and publishing them. Nothing in the
package knows about the stub: it is patched here, before the node's modules
import the Segmenter.

The stub is built like the real Segmenter (same model file, same metadata and
class table) but as the eager reference without warm-up, so the node starts
in seconds; its ``segment`` returns a fixed label map of the frame's size
(vertical bands of every class, made once per size) as a new array, as the
real one does, and an all-ones confidence map when asked.
"""

import sys
from typing import Dict, Tuple

import numpy as np


def _stub_class(real):
    from enet_ros.inference.frames import check_image, Segmentation

    class StubSegmenter(real):
        """A real Segmenter's metadata, a label map made once per size instead of inference."""

        def __init__(self, *args, **kwargs):
            kwargs.update(warmup=False, warmup_sizes=None, optimize=False,
                          inference_backend='torch')
            super().__init__(*args, **kwargs)
            self._labels: Dict[Tuple[int, int], np.ndarray] = {}

        @property
        def execution_path(self) -> str:
            """Say that frames are not segmented."""
            return 'STUB: labels returned at once, no inference'

        def segment(self, image, bgr=False, with_confidence=False, images=(), out=None):
            """Return HxW uint8 bands of every class (a new array), as fast as possible."""
            check_image(image)
            height, width = image.shape[:2]
            labels = self._labels.get((height, width))
            if labels is None:
                bands = (np.arange(width) * self.num_classes // width).astype(np.uint8)
                labels = self._labels[(height, width)] = np.broadcast_to(
                    bands, (height, width)).copy()
            labels = labels.copy()  # the node may void pixels in place
            confidence = (np.ones((height, width), dtype=np.float32)
                          if with_confidence else None)
            rendered = {}
            if images:  # only on CUDA; the stub never draws on a device
                rgb = image[..., ::-1] if bgr else image
                rendered = self.path.host_images.render(labels, rgb, images, out=out)
            return Segmentation(labels, confidence, rendered)

    return StubSegmenter


def main() -> int:
    """Patch the Segmenter, then run the node's main with this process's arguments."""
    from enet_ros.inference.cpu_runtime import apply_process_defaults

    apply_process_defaults()  # as the node's main does, before torch loads
    from enet_ros import segmenter

    segmenter.Segmenter = _stub_class(segmenter.Segmenter)
    from enet_ros.node.main import main as node_main

    return node_main()


if __name__ == '__main__':
    sys.exit(main())
