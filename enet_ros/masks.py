"""
Label images to colour, overlay and drivable-area images (numpy, lookup tables).

Lookup tables are built once (at start-up or on a parameter change) and the
per-frame functions only index them, optionally into caller-owned buffers.
"""

from typing import Iterable, Optional, Sequence, Tuple

import numpy as np


def palette_lut(colors: Sequence[Tuple[int, int, int]]) -> np.ndarray:
    """256x3 uint8 RGB table: row i is the colour of class i, black past the palette."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:len(colors)] = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    return lut


def drivable_lut(drivable_ids: Iterable[int]) -> np.ndarray:
    """256 uint8 table: 255 for the drivable class ids, else 0."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[list(drivable_ids)] = 255
    return lut


def colorize(labels: np.ndarray, palette: np.ndarray,
             out: Optional[np.ndarray] = None) -> np.ndarray:
    """Map HxW uint8 labels to HxWx3 uint8 RGB through a :func:`palette_lut` table."""
    return np.take(palette, labels, axis=0, out=out)


def drivable_mask(labels: np.ndarray, lut: np.ndarray,
                  out: Optional[np.ndarray] = None) -> np.ndarray:
    """Map HxW uint8 labels to an HxW uint8 mask, 255 where drivable (:func:`drivable_lut`)."""
    return np.take(lut, labels, out=out)


def overlay(image: np.ndarray, colored: np.ndarray, alpha: float,
            out: Optional[np.ndarray] = None) -> np.ndarray:
    """
    Blend HxWx3 uint8 ``colored`` over HxWx3 uint8 ``image``.

    The result is ``(1 - alpha) * image + alpha * colored``, computed in 8-bit
    fixed point (weights in 1/256 steps) and rounded to nearest.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f'alpha must be in [0, 1], got {alpha}')
    weight = int(round(alpha * 256))
    blended = image.astype(np.uint16) * (256 - weight)
    blended += colored.astype(np.uint16) * weight
    blended += 128
    blended >>= 8
    if out is None:
        return blended.astype(np.uint8)
    np.copyto(out, blended, casting='unsafe')
    return out
