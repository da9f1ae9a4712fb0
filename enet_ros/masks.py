"""
Label images to colour, overlay and drivable-area images (numpy, lookup tables).

Lookup tables are built once (at start-up or on a parameter change) and the
per-frame functions only index them, optionally into caller-owned buffers.
"""

from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple

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


#: The images built from a label map alone (what the bag tools record).
LABEL_IMAGES = ('labels', 'colored', 'overlay', 'drivable')
#: Every output image of the node: those and the confidence image.
OUTPUT_IMAGES = LABEL_IMAGES + ('confidence',)
#: Channels of each output image (rgb8: colored and overlay; mono8: the others).
OUTPUT_CHANNELS = {'labels': 1, 'colored': 3, 'overlay': 3, 'drivable': 1, 'confidence': 1}


def confidence_image(confidence: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Map an HxW float32 probability map in [0, 1] to HxW uint8, ``round(p * 255)``."""
    scaled = np.rint(np.multiply(confidence, 255.0, dtype=np.float32))
    if out is None:
        return scaled.astype(np.uint8)
    np.copyto(out, scaled, casting='unsafe')
    return out


def void_low_confidence(labels: np.ndarray, confidence: np.ndarray, min_confidence: float,
                        void_id: int) -> np.ndarray:
    """
    Set, in place, HxW uint8 ``labels`` to ``void_id`` where ``confidence <= min_confidence``.

    ``min_confidence`` 0 changes nothing (a softmax maximum is never 0); 1 voids
    every pixel (equality counts as too low, so a saturated probability of
    exactly 1.0 is voided too). Returns ``labels``.
    """
    if min_confidence > 0.0:
        labels[confidence <= min_confidence] = void_id
    return labels


class OutputRenderer:
    """
    Builds the output images from a label map: one place for the node and the bag writer.

    The tables (palette, drivable classes) and the overlay weight are fixed at
    construction; :meth:`render` does only per-frame indexing and blending.
    """

    def __init__(self, colors: Sequence[Tuple[int, int, int]], drivable_ids: Iterable[int],
                 overlay_alpha: float):
        if not 0.0 <= overlay_alpha <= 1.0:
            raise ValueError(f'overlay_alpha must be in [0, 1], got {overlay_alpha}')
        self.palette = palette_lut(colors)
        self.drivable = drivable_lut(drivable_ids)
        self.overlay_alpha = overlay_alpha

    def render(self, labels: np.ndarray, rgb: Optional[np.ndarray],
               wanted: Iterable[str] = LABEL_IMAGES,
               out: Optional[Mapping[str, np.ndarray]] = None,
               confidence: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
        """
        Return the ``wanted`` images of HxW uint8 ``labels``, by name (:data:`OUTPUT_IMAGES`).

        ``rgb``: the HxWx3 uint8 RGB camera image (needed for 'overlay' only);
        ``confidence``: the HxW float32 probability map (for 'confidence' only).
        ``out``: optional caller-owned buffers by name (HxW for mono, HxWx3 for
        rgb; e.g. views into reused messages), written in place and returned.
        'labels' is the label map itself unless a buffer is given. The colour
        image is computed once when both 'colored' and 'overlay' are wanted.
        """
        wanted = set(wanted)
        unknown = wanted - set(OUTPUT_IMAGES)
        if unknown:
            raise ValueError(f'unknown output image(s) {sorted(unknown)}; '
                             f'choose from {list(OUTPUT_IMAGES)}')
        out = out or {}
        images: Dict[str, np.ndarray] = {}
        if 'labels' in wanted:
            images['labels'] = labels
            if 'labels' in out:
                images['labels'] = out['labels']
                np.copyto(out['labels'], labels)
        if 'drivable' in wanted:
            images['drivable'] = drivable_mask(labels, self.drivable, out=out.get('drivable'))
        colored = None
        if 'colored' in wanted:
            colored = images['colored'] = colorize(labels, self.palette, out=out.get('colored'))
        if 'overlay' in wanted:
            if rgb is None:
                raise ValueError("the 'overlay' image needs the camera image")
            if colored is None:
                colored = colorize(labels, self.palette)
            images['overlay'] = overlay(rgb, colored, self.overlay_alpha, out=out.get('overlay'))
        if 'confidence' in wanted:
            if confidence is None:
                raise ValueError("the 'confidence' image needs the confidence map")
            images['confidence'] = confidence_image(confidence, out=out.get('confidence'))
        return images
