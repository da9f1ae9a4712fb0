"""
Joint image/label augmentation (NEAREST for labels) and batching.

Images are HxWx3 uint8 RGB and labels HxW uint8 throughout; normalisation
happens on the device with the core's :func:`enet_ros.segmenter.normalize`.
"""

import random
from typing import List, Sequence, Tuple

import cv2
import numpy as np
import torch


class TrainTransform:
    """Random scale, random crop (padding with zeros / void) and horizontal flip."""

    def __init__(self, crop_size: Tuple[int, int], void_id: int,
                 scale_range: Tuple[float, float] = (0.75, 1.5), flip: bool = True):
        self.crop_width, self.crop_height = crop_size
        self.void_id = void_id
        self.scale_range = scale_range
        self.flip = flip

    def __call__(self, image: np.ndarray, label: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Augment one (HxWx3 image, HxW label) pair to the crop size."""
        low, high = self.scale_range
        scale = random.uniform(low, high)
        if scale != 1.0:
            height, width = label.shape
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
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
