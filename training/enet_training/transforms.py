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


GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # RGB to luma (ITU-R 601)


def gray(image: np.ndarray) -> np.ndarray:
    """Return the HxW float32 luma of an HxWx3 RGB image (uint8 or float32)."""
    return image.astype(np.float32, copy=False) @ GRAY_WEIGHTS


def adjust_colors(image: np.ndarray, brightness: float = 1.0, contrast: float = 1.0,
                  saturation: float = 1.0) -> np.ndarray:
    """
    Scale brightness, contrast and saturation of an HxWx3 uint8 RGB image, in that order.

    As torchvision's ``ColorJitter`` does on tensors: brightness multiplies the
    pixels, contrast blends with the image's mean luma, saturation with each
    pixel's luma; the values are clipped to [0, 255] after each step and
    rounded to uint8 at the end. Factors of 1 return the image unchanged.
    """
    if brightness == contrast == saturation == 1.0:
        return image
    out = image.astype(np.float32)
    if brightness != 1.0:
        out = np.clip(out * brightness, 0, 255)
    if contrast != 1.0:
        mean = float(gray(out).mean())
        out = np.clip((out - mean) * contrast + mean, 0, 255)
    if saturation != 1.0:
        luma = gray(out)[..., None]
        out = np.clip((out - luma) * saturation + luma, 0, 255)
    return np.rint(out).astype(np.uint8)


def rotate_pair(image: np.ndarray, label: np.ndarray, degrees: float,
                void_id: int) -> Tuple[np.ndarray, np.ndarray]:
    """
    Rotate an (HxWx3 uint8 image, HxW uint8 label) pair ``degrees`` anticlockwise about the centre.

    The size stays; the image is interpolated bilinearly with a black border,
    the label by nearest neighbour with ``void_id`` where no pixel maps.
    """
    height, width = label.shape
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), degrees, 1.0)
    image = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    label = cv2.warpAffine(label, matrix, (width, height), flags=cv2.INTER_NEAREST,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=void_id)
    return image, label


class TrainTransform:
    """
    Network-scale resize, random scale and rotation, crop (padding with zeros / void), flip.

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

    ``rotate`` D > 0 turns the scaled pair by a random angle in [-D, D]
    degrees about its centre before the crop (:func:`rotate_pair`: black
    image border, void label border). ``color_jitter`` (B, C, S) scales the
    cropped image's brightness, contrast and saturation by random factors in
    [1 - B, 1 + B], [1 - C, 1 + C], [1 - S, 1 + S] (:func:`adjust_colors`);
    labels are untouched. All draws come from Python's ``random``, which
    training re-seeds every epoch; a part that is off draws nothing, so the
    defaults augment exactly as before these options existed.
    """

    def __init__(self, crop_size: Tuple[int, int], void_id: int,
                 scale_range: Tuple[float, float] = (0.75, 1.5), flip: bool = True,
                 input_size: Optional[Tuple[int, int]] = None,
                 color_jitter: Tuple[float, float, float] = (0.0, 0.0, 0.0),
                 rotate: float = 0.0):
        self.crop_width, self.crop_height = crop_size
        self.void_id = void_id
        self.scale_range = scale_range
        self.flip = flip
        self.input_size = None if input_size is None else tuple(input_size)
        if len(color_jitter) != 3 or not all(0 <= x <= 1 for x in color_jitter):
            raise ValueError(f'color jitter {tuple(color_jitter)}: three values in [0, 1] '
                             '(brightness, contrast, saturation)')
        if not 0 <= rotate <= 180:
            raise ValueError(f'rotation range {rotate} degrees: must be in [0, 180]')
        self.color_jitter = tuple(float(x) for x in color_jitter)
        self.rotate = float(rotate)

    def scaled_size(self, width: int, height: int, scale: float) -> Tuple[int, int]:
        """Return the (width, height) a ``width`` x ``height`` frame has at ``scale``."""
        base_width, base_height = self.input_size or (width, height)
        return max(1, round(base_width * scale)), max(1, round(base_height * scale))

    def _image_interpolation(self, width: int, height: int, size: Tuple[int, int]) -> int:
        off_network_scale = self.input_size not in (None, (width, height))
        shrinks = size[0] < width and size[1] < height
        return cv2.INTER_AREA if off_network_scale and shrinks else cv2.INTER_LINEAR

    def __call__(self, image: np.ndarray, label: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Augment one (HxWx3 uint8 RGB image, HxW uint8 label) pair to the crop size."""
        low, high = self.scale_range
        scale = random.uniform(low, high)
        height, width = label.shape
        size = self.scaled_size(width, height, scale)
        if size != (width, height):
            image = cv2.resize(image, size,
                               interpolation=self._image_interpolation(width, height, size))
            label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
        if self.rotate:
            image, label = rotate_pair(image, label, random.uniform(-self.rotate, self.rotate),
                                       self.void_id)
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
        if any(self.color_jitter):
            image = adjust_colors(image, *(random.uniform(1 - x, 1 + x) if x else 1.0
                                           for x in self.color_jitter))
        return np.ascontiguousarray(image), np.ascontiguousarray(label)


def collate(samples: Sequence[Tuple[np.ndarray, np.ndarray]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack pairs into (Nx3xHxW uint8, NxHxW int64)."""
    images: List[np.ndarray] = [s[0] for s in samples]
    labels: List[np.ndarray] = [s[1] for s in samples]
    image_batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    label_batch = torch.from_numpy(np.stack(labels)).long()
    return image_batch, label_batch
