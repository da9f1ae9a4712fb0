"""
The node's colour, overlay and drivable images computed with torch, on the frame's device.

:class:`DeviceImages` is :class:`enet_ros.masks.OutputRenderer` for tensors:
the same lookup tables and the same 8-bit fixed-point overlay, so its images
equal the numpy ones bit for bit. The CUDA graph path runs it inside the
frame's graph (measured on an H100 host at 1280x720: numpy took 14.8 ms for
the three images, five times the 2.7 ms frame). The tables are device
tensors updated in place (:meth:`DeviceImages.configure`), so captured graphs
read the new ones without a recapture.
"""

from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .. import masks

#: The images computed from the labels (and the camera frame for 'overlay').
DEVICE_IMAGES = ('colored', 'overlay', 'drivable')


def check_image_names(names: Iterable[str]) -> Tuple[str, ...]:
    """Return ``names`` as a sorted tuple; raise ValueError naming any not in DEVICE_IMAGES."""
    names = tuple(sorted(set(names)))
    unknown = [name for name in names if name not in DEVICE_IMAGES]
    if unknown:
        raise ValueError(f'unknown image(s) {unknown}; the Segmenter computes '
                         f'{list(DEVICE_IMAGES)}')
    return names


#: Caller-owned buffers for images, by name (HxWx3 or HxW uint8), e.g. views into messages.
ImageBuffers = Optional[Mapping[str, np.ndarray]]


def deliver_images(images: Mapping[str, np.ndarray], out: ImageBuffers) -> Dict[str, np.ndarray]:
    """
    Hand out ``images`` (arrays the caller must not keep, e.g. pinned buffers) once each.

    An image with a buffer in ``out`` is copied into it and the buffer returned;
    the others are returned as copies. One host copy per image either way.
    """
    delivered = {}
    for name, image in images.items():
        target = out.get(name) if out else None
        if target is None:
            delivered[name] = image.copy()
        else:
            np.copyto(target, image)
            delivered[name] = target
    return delivered


class DeviceImages:
    """Lookup tables on ``device`` and the per-frame images; see the module docstring."""

    def __init__(self, device: torch.device):
        self.palette = torch.zeros((256, 3), dtype=torch.uint8, device=device)
        self.drivable = torch.zeros(256, dtype=torch.uint8, device=device)
        self.weight = torch.zeros((), dtype=torch.int32, device=device)

    def configure(self, colors: Sequence[Tuple[int, int, int]], drivable_ids: Iterable[int],
                  overlay_alpha: float) -> None:
        """Set the palette, the drivable classes and the overlay weight (in place)."""
        if not 0.0 <= overlay_alpha <= 1.0:
            raise ValueError(f'overlay_alpha must be in [0, 1], got {overlay_alpha}')
        self.palette.copy_(torch.from_numpy(masks.palette_lut(colors)))
        self.drivable.copy_(torch.from_numpy(masks.drivable_lut(drivable_ids)))
        self.weight.fill_(int(round(overlay_alpha * 256)))

    def render(self, labels: torch.Tensor, frame_rgb: torch.Tensor,
               names: Sequence[str]) -> Dict[str, torch.Tensor]:
        """
        Map HxW uint8 ``labels`` to the ``names`` images, by name.

        ``frame_rgb``: the HxWx3 uint8 RGB camera frame (read for 'overlay'
        only). 'colored' and 'overlay' are HxWx3 uint8 RGB, 'drivable' HxW
        uint8 (255 drivable, 0 not). Device work only: capturable.
        """
        height, width = labels.shape
        index = labels.reshape(-1).long()
        images: Dict[str, torch.Tensor] = {}
        colored = None
        if 'colored' in names or 'overlay' in names:
            colored = self.palette.index_select(0, index).view(height, width, 3)
        if 'colored' in names:
            images['colored'] = colored
        if 'drivable' in names:
            images['drivable'] = self.drivable.index_select(0, index).view(height, width)
        if 'overlay' in names:
            blended = frame_rgb.int() * (256 - self.weight) + colored.int() * self.weight
            images['overlay'] = ((blended + 128) >> 8).to(torch.uint8)
        return images
