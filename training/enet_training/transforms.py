"""
Joint image/label augmentation (NEAREST for labels) and batching.

Images are HxWx3 uint8 RGB and labels HxW uint8 throughout; normalisation
happens on the device with the core's :func:`enet_ros.segmenter.normalize`.
"""

import random
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch


class TrainTransform:
    """
    Network-scale resize, random scale, random crop (padding with zeros / void), flip.

    ``input_size`` (width, height) is the network input. The Segmenter shows
    the network each whole frame resized to that size, so training does the
    same first: a random scale ``s`` makes every frame ``round(s * width)`` x
    ``round(s * height)`` of the network input (one resize from the frame),
    then the crop is taken. With ``scale_range`` (1, 1) a frame arrives at the
    network size showing all of it, as at inference. A frame already at the
    network size (CamVid at 480x360), or ``input_size`` None, is scaled
    relative to itself: the augmentation as it always was.

    Images are resized bilinearly, except a frame larger than the network
    input that shrinks: that uses area averaging (antialiased, as the
    Segmenter's resize is). Labels are resized by nearest neighbour.
    """

    def __init__(self, crop_size: Tuple[int, int], void_id: int,
                 scale_range: Tuple[float, float] = (0.75, 1.5), flip: bool = True,
                 input_size: Optional[Tuple[int, int]] = None):
        self.crop_width, self.crop_height = crop_size
        self.void_id = void_id
        self.scale_range = scale_range
        self.flip = flip
        self.input_size = None if input_size is None else tuple(input_size)

    def scaled_size(self, width: int, height: int, scale: float) -> Tuple[int, int]:
        """Return the (width, height) a ``width`` x ``height`` frame has at ``scale``."""
        base_width, base_height = self.input_size or (width, height)
        return max(1, round(base_width * scale)), max(1, round(base_height * scale))

    def _image_interpolation(self, width: int, height: int, size: Tuple[int, int]) -> int:
        off_network_scale = self.input_size not in (None, (width, height))
        shrinks = size[0] < width and size[1] < height
        return cv2.INTER_AREA if off_network_scale and shrinks else cv2.INTER_LINEAR

    def __call__(self, image: np.ndarray, label: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Augment one (HxWx3 image, HxW label) pair to the crop size."""
        low, high = self.scale_range
        scale = random.uniform(low, high)
        height, width = label.shape
        size = self.scaled_size(width, height, scale)
        if size != (width, height):
            image = cv2.resize(image, size,
                               interpolation=self._image_interpolation(width, height, size))
            label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
        pad_bottom = max(0, self.crop_height - label.shape[0])
        pad_right = max(0, self.crop_width - label.shape[1])
        if pad_bottom or pad_right:
            image = cv2.copyMakeBorder(image, 0, pad_bottom, 0, pad_right, cv2.BORDER_CONSTANT,
                                       value=(0, 0, 0))
            label = cv2.copyMakeBorder(label, 0, pad_bottom, 0, pad_right, cv2.BORDER_CONSTANT,
                                       value=self.void_id)
        top = random.randint(0, label.shape[0] - self.crop_height)
        left = random.randint(0, label.shape[1] - self.crop_width)
        image = image[top:top + self.crop_height, left:left + self.crop_width]
        label = label[top:top + self.crop_height, left:left + self.crop_width]
        if self.flip and random.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(label)


def collate(samples: Sequence[Tuple[np.ndarray, np.ndarray]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack pairs into (Nx3xHxW uint8, NxHxW int64)."""
    images: List[np.ndarray] = [s[0] for s in samples]
    labels: List[np.ndarray] = [s[1] for s in samples]
    image_batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    label_batch = torch.from_numpy(np.stack(labels)).long()
    return image_batch, label_batch
