"""
Label images to colour, overlay and drivable-area images (lookup tables, fixed-point blend).

Lookup tables are built once (at start-up or on a parameter change) and the
per-frame functions only index them, optionally into caller-owned buffers.

The pixel rules are numpy's (:func:`colorize`, :func:`drivable_mask` and
:func:`overlay` with ``fast=False``). Where OpenCV is importable and the arrays
are C-contiguous uint8 the same pixels come from ``cv2.LUT`` (one table per
channel, then ``cv2.merge``) and ``cv2.addWeighted`` (see :func:`overlay` for
why its float blend gives the fixed-point result exactly): at 1280x720 on a
2-core Zen 3 the colour image takes about 1.2 ms instead of 7-13 and the
overlay's blend 0.7 instead of 6 (bench/README.md, "Publishing the node's
images"). OpenCV is optional for the core (the node and the bag tools have it).
"""

import sys
import threading
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np

try:
    import cv2
except ImportError:  # the core needs numpy only; OpenCV is a speed-up
    cv2 = None

#: Added in the OpenCV overlay blend so that its round-half-to-even rounds ties up
#: (see :func:`overlay`); a power of two, exact in float32.
_TIE_BREAK = 1.0 / 1024

#: Index of the high byte of a native uint16 viewed as two uint8 (see :func:`overlay`).
_HIGH_BYTE = 1 if sys.byteorder == 'little' else 0


def _take_mode(labels: np.ndarray) -> str:
    """
    ``np.take`` mode for a 256-entry table: ``clip`` for uint8 ids, else ``raise``.

    uint8 ids always lie in the table, so clipping never changes one; and numpy
    copies the result through a temporary buffer when ``out`` is given with
    ``mode='raise'`` (1.2-1.3x slower at 1280x720 here).
    """
    return 'clip' if labels.dtype == np.uint8 else 'raise'


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


def _cv2_ready(*arrays: Optional[np.ndarray]) -> bool:
    """Whether OpenCV can read (and write in place) these arrays: C-contiguous uint8, or None."""
    return cv2 is not None and all(
        array is None or (array.dtype == np.uint8 and array.flags.c_contiguous)
        for array in arrays)


def channel_luts(palette: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a 256x3 :func:`palette_lut` table into three contiguous 256-entry tables."""
    return tuple(np.ascontiguousarray(palette[:, channel]) for channel in range(3))


def colorize(labels: np.ndarray, palette: np.ndarray,
             out: Optional[np.ndarray] = None, fast: bool = True,
             channels: Optional[Sequence[np.ndarray]] = None,
             scratch: Optional[Sequence[np.ndarray]] = None) -> np.ndarray:
    """
    Map HxW uint8 labels to HxWx3 uint8 RGB through a :func:`palette_lut` table.

    ``fast`` (and OpenCV, and contiguous uint8 arrays): one ``cv2.LUT`` per
    channel into ``scratch`` (three HxW uint8 arrays, else allocated), merged
    into ``out``; ``channels``: :func:`channel_luts` of ``palette``, made once
    by the caller (else here). The same pixels as ``np.take`` either way.
    """
    if fast and _cv2_ready(labels, out) and labels.ndim == 2 and (
            out is None or out.shape == labels.shape + (3,)):
        channels = channels if channels is not None else channel_luts(palette)
        if scratch is None:
            scratch = [np.empty(labels.shape, np.uint8) for _ in range(3)]
        planes = [cv2.LUT(labels, table, dst=plane) for table, plane in zip(channels, scratch)]
        if out is None:
            return cv2.merge(planes)
        cv2.merge(planes, dst=out)
        return out
    return np.take(palette, labels, axis=0, out=out, mode=_take_mode(labels))


def drivable_mask(labels: np.ndarray, lut: np.ndarray,
                  out: Optional[np.ndarray] = None, fast: bool = True) -> np.ndarray:
    """
    Map HxW uint8 labels to an HxW uint8 mask, 255 where drivable (:func:`drivable_lut`).

    ``fast``: ``cv2.LUT`` where it can (see :func:`colorize`); the same pixels.
    """
    if fast and _cv2_ready(labels, out) and labels.ndim == 2 and (
            out is None or out.shape == labels.shape):
        if out is None:
            return cv2.LUT(labels, lut)
        cv2.LUT(labels, lut, dst=out)
        return out
    return np.take(lut, labels, out=out, mode=_take_mode(labels))


def overlay(image: np.ndarray, colored: np.ndarray, alpha: float,
            out: Optional[np.ndarray] = None,
            scratch: Optional[Tuple[np.ndarray, np.ndarray]] = None,
            fast: bool = True) -> np.ndarray:
    """
    Blend HxWx3 uint8 ``colored`` over HxWx3 uint8 ``image``.

    The result is ``(1 - alpha) * image + alpha * colored``, computed in 8-bit
    fixed point (weights in 1/256 steps) and rounded to nearest:
    ``(image * (256 - w) + colored * w + 128) >> 8`` with ``w = round(alpha *
    256)`` (the sum never exceeds 65408, so uint16 holds it). ``scratch``:
    two C-contiguous HxWx3 uint16 arrays to compute in (else allocated); the
    shift is the high byte of each uint16, read as a view.

    ``fast`` (and OpenCV, and contiguous uint8 arrays): ``cv2.addWeighted``
    with weights ``(256 - w) / 256`` and ``w / 256`` and ``1 / 1024`` added.
    It blends in float32 and rounds half to even; every term here is a
    multiple of 1/1024 below 256, so float32 holds the sum exactly, and the
    1/1024 turns the fixed-point rule's ties (x.5, rounded up) into values
    just above them while moving no other value across a rounding boundary
    (those lie at least 1/256 from x.5). The same pixels, checked for every
    weight and every pair of values (test_masks.py).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f'alpha must be in [0, 1], got {alpha}')
    weight = int(round(alpha * 256))
    if fast and _cv2_ready(image, colored, out) and image.shape == colored.shape and (
            out is None or out.shape == image.shape):
        if out is None:
            return cv2.addWeighted(image, (256 - weight) / 256, colored, weight / 256,
                                   _TIE_BREAK)
        cv2.addWeighted(image, (256 - weight) / 256, colored, weight / 256, _TIE_BREAK,
                        dst=out)
        return out
    if scratch is None:
        scratch = (np.empty(image.shape, np.uint16), np.empty(image.shape, np.uint16))
    blended, other = scratch
    np.multiply(image, np.uint16(256 - weight), out=blended, dtype=np.uint16)
    np.multiply(colored, np.uint16(weight), out=other, dtype=np.uint16)
    np.add(blended, other, out=blended)
    np.add(blended, np.uint16(128), out=blended)
    high = blended.view(np.uint8)[..., _HIGH_BYTE::2]
    if out is None:
        return high.copy()
    np.copyto(out, high)
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
    construction; :meth:`render` does only per-frame indexing and blending, in
    working buffers kept for the last frame size (calls are serialised by a lock).
    """

    def __init__(self, colors: Sequence[Tuple[int, int, int]], drivable_ids: Iterable[int],
                 overlay_alpha: float):
        if not 0.0 <= overlay_alpha <= 1.0:
            raise ValueError(f'overlay_alpha must be in [0, 1], got {overlay_alpha}')
        self.palette = palette_lut(colors)
        self._channels = channel_luts(self.palette)
        self.drivable = drivable_lut(drivable_ids)
        self.overlay_alpha = overlay_alpha
        self._lock = threading.Lock()
        self._scratch: Dict[str, np.ndarray] = {}

    def _buffer(self, name: str, shape: Tuple[int, ...], dtype) -> np.ndarray:
        """Return the working array ``name`` of ``shape`` (reallocated when the size changes)."""
        array = self._scratch.get(name)
        if array is None or array.shape != shape:
            array = self._scratch[name] = np.empty(shape, dtype)
        return array

    def _planes(self, shape: Tuple[int, int]) -> Tuple[np.ndarray, ...]:
        """Three HxW uint8 working planes for :func:`colorize`."""
        return tuple(self._buffer(f'plane{channel}', shape, np.uint8) for channel in range(3))

    def _contiguous_rgb(self, rgb: np.ndarray) -> np.ndarray:
        """
        Return HxWx3 ``rgb`` itself, or a contiguous copy when it is a BGR image's reversed view.

        (``CameraFrame.rgb`` of a bgr8 or decoded frame.) OpenCV cannot read a
        negative-stride view, and numpy copies one in about 20 ms at 1280x720;
        ``cv2.cvtColor`` of the BGR array takes 0.1 ms.
        """
        if cv2 is None or rgb.flags.c_contiguous or rgb.dtype != np.uint8 or rgb.ndim != 3:
            return rgb
        bgr = rgb[..., ::-1]
        if not bgr.flags.c_contiguous:
            return rgb
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB,
                            dst=self._buffer('rgb', rgb.shape, np.uint8))

    def render(self, labels: np.ndarray, rgb: Optional[np.ndarray],
               wanted: Iterable[str] = LABEL_IMAGES,
               out: Optional[Mapping[str, np.ndarray]] = None,
               confidence: Optional[np.ndarray] = None,
               colored: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
        """
        Return the ``wanted`` images of HxW uint8 ``labels``, by name (:data:`OUTPUT_IMAGES`).

        ``rgb``: the HxWx3 uint8 RGB camera image (needed for 'overlay' only);
        ``confidence``: the HxW float32 probability map (for 'confidence' only).
        ``out``: optional caller-owned buffers by name (HxW for mono, HxWx3 for
        rgb; e.g. views into reused messages), written in place and returned.
        'labels' is the label map itself unless a buffer is given. The colour
        image is computed once when both 'colored' and 'overlay' are wanted.
        Images returned without a buffer in ``out`` are new arrays.
        ``colored``: the colour image of these ``labels`` drawn earlier (e.g.
        by a call for 'colored' alone, published before the overlay is drawn):
        the overlay blends it instead of drawing it again.
        """
        with self._lock:
            return self._render(labels, rgb, set(wanted), out or {}, confidence, colored)

    def _render(self, labels: np.ndarray, rgb: Optional[np.ndarray], wanted: set,
                out: Mapping[str, np.ndarray], confidence: Optional[np.ndarray],
                colored: Optional[np.ndarray]) -> Dict[str, np.ndarray]:
        unknown = wanted - set(OUTPUT_IMAGES)
        if unknown:
            raise ValueError(f'unknown output image(s) {sorted(unknown)}; '
                             f'choose from {list(OUTPUT_IMAGES)}')
        images: Dict[str, np.ndarray] = {}
        if 'labels' in wanted:
            images['labels'] = labels
            if 'labels' in out:
                images['labels'] = out['labels']
                np.copyto(out['labels'], labels)
        if 'drivable' in wanted:
            images['drivable'] = drivable_mask(labels, self.drivable, out=out.get('drivable'))
        shape = labels.shape + (3,)
        if 'colored' in wanted:
            colored = images['colored'] = colorize(labels, self.palette, out=out.get('colored'),
                                                   channels=self._channels,
                                                   scratch=self._planes(labels.shape))
        if 'overlay' in wanted:
            if rgb is None:
                raise ValueError("the 'overlay' image needs the camera image")
            if colored is None:
                colored = colorize(labels, self.palette,
                                   out=self._buffer('colored', shape, np.uint8),
                                   channels=self._channels, scratch=self._planes(labels.shape))
            rgb = self._contiguous_rgb(rgb)
            scratch = (self._buffer('blend', shape, np.uint16),
                       self._buffer('blend2', shape, np.uint16))
            images['overlay'] = overlay(rgb, colored, self.overlay_alpha, out=out.get('overlay'),
                                        scratch=scratch)
        if 'confidence' in wanted:
            if confidence is None:
                raise ValueError("the 'confidence' image needs the confidence map")
            images['confidence'] = confidence_image(confidence, out=out.get('confidence'))
        return images
