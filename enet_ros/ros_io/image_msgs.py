"""
sensor_msgs Image / CompressedImage <-> numpy, validating every field first.

cv_bridge is the reference for the semantics (encodings, ``step``,
``is_bigendian``) but validates nothing: a short ``step`` silently gives a
narrower image. Here every message is checked before a byte is interpreted,
and a bad one raises :class:`InvalidImage` with a short machine-readable
``reason`` (used as a counter key) and a human-readable message.

Frames whose sides differ more than :data:`MAX_ASPECT_RATIO` times are
refused too (``bad_shape``), after the checks of the message's layout.

Raw images are converted without copying where the encoding allows it: the
result is a view into the message's buffer (rows may be padded: ``step``
larger than ``width * channels`` gives a strided view).

The generic OpenCV encodings that cv_bridge's ``passthrough`` produces are
accepted too: ``8UC1`` is read as mono, and ``8UC3`` / ``8UC4`` follow the
cv_bridge / OpenCV convention that a 3- or 4-channel 8-bit image is in
OpenCV's BGR (BGRA) order, i.e. they are treated exactly like ``bgr8`` /
``bgra8``. Encodings are matched case-insensitively.

Compressed images are decoded as stored: an EXIF Orientation tag in a JPEG is
ignored, so the pixels keep the camera's geometry (and the size in the header).
Their data is read through a memoryview, not copied, before decoding.

Outputs: :class:`ImageBuffer` keeps one message per output whose ``data`` is
an ``array('B')`` that the node draws into through a numpy view. rclpy's C
conversion copies any buffer-protocol object (array, bytes, numpy,
memoryview) with one memcpy, equally fast (``bench/bench_publish.py``); the
generated ``data`` setter, though, copies anything but an ``array('B')``
element by element and even an array once, so the array is set only when the
size changes and filled in place every frame.
"""

from dataclasses import dataclass
import struct
from typing import Optional, Tuple

import cv2
import numpy as np

#: encoding (lower case; messages are matched case-insensitively) -> (channels,
#: bytes per channel, channel order of the 3 colours or None for mono).
#: The generic ``8UC*`` encodings (cv_bridge ``passthrough``) follow OpenCV's
#: convention: 8UC3 is BGR and 8UC4 is BGRA, 8UC1 is mono.
ENCODINGS = {
    'rgb8': (3, 1, 'rgb'),
    'bgr8': (3, 1, 'bgr'),
    'rgba8': (4, 1, 'rgb'),
    'bgra8': (4, 1, 'bgr'),
    'mono8': (1, 1, None),
    'rgb16': (3, 2, 'rgb'),
    'bgr16': (3, 2, 'bgr'),
    'mono16': (1, 2, None),
    '8uc1': (1, 1, None),
    '8uc3': (3, 1, 'bgr'),
    '8uc4': (4, 1, 'bgr'),
}
#: How many times its shorter side a frame's longer side may be (else reason ``bad_shape``).
#: The network sees every frame stretched to its own input (4:3 for the bundled model): a
#: frame over 16:1 is squeezed more than 12 times along one axis, past anything it learnt
#: from (a 360-degree panorama strip 30 degrees high is 12:1; 32:9 monitors are 3.6:1).
MAX_ASPECT_RATIO = 16


class InvalidImage(ValueError):
    """A message that cannot be turned into an image; ``reason`` is a counter key."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class CameraFrame:
    """An image ready for the Segmenter: HxWx3 uint8 (possibly a strided view)."""

    pixels: np.ndarray
    bgr: bool

    @property
    def height(self) -> int:
        """Rows."""
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        """Columns."""
        return self.pixels.shape[1]

    def rgb(self) -> np.ndarray:
        """HxWx3 uint8 RGB (a view when already RGB, else a reordered view)."""
        return self.pixels[..., ::-1] if self.bgr else self.pixels


def check_frame_shape(width: int, height: int, what: str = 'image') -> None:
    """Raise :class:`InvalidImage` (``bad_shape``) if one side is over 16 times the other."""
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise InvalidImage('bad_shape', f'{what} is {width}x{height}: one side is more than '
                                        f'{MAX_ASPECT_RATIO} times the other')


def check_raw_image(msg, max_pixels: int) -> None:
    """Validate a sensor_msgs/Image's fields; raise :class:`InvalidImage` if unusable."""
    encoding = msg.encoding.lower()
    if encoding not in ENCODINGS:
        raise InvalidImage('unsupported_encoding',
                           f"encoding '{msg.encoding}' is not supported "
                           f"(supported: {', '.join(ENCODINGS)})")
    if msg.width == 0 or msg.height == 0:
        raise InvalidImage('zero_size', f'image is {msg.width}x{msg.height}')
    if msg.width * msg.height > max_pixels:
        raise InvalidImage('too_large', f'image is {msg.width}x{msg.height}, more than '
                                        f'max_pixels {max_pixels}')
    channels, depth, _ = ENCODINGS[encoding]
    row_bytes = msg.width * channels * depth
    if msg.step < row_bytes:
        raise InvalidImage('bad_step', f'step {msg.step} < width {msg.width} x {channels * depth}'
                                       f' bytes per pixel ({encoding})')
    if len(msg.data) != msg.height * msg.step:
        raise InvalidImage('bad_data_length', f'data is {len(msg.data)} bytes, expected height '
                                              f'{msg.height} x step {msg.step} = '
                                              f'{msg.height * msg.step}')
    check_frame_shape(msg.width, msg.height)


def raw_image_to_frame(msg, max_pixels: int) -> CameraFrame:
    """
    Validate and convert a sensor_msgs/Image to a :class:`CameraFrame`.

    8-bit colour encodings give a view into ``msg.data`` (no copy); mono is
    expanded to three channels and 16-bit encodings are reduced to their high
    byte, honouring ``is_bigendian`` (both copy).
    """
    check_raw_image(msg, max_pixels)
    encoding = msg.encoding.lower()
    channels, depth, order = ENCODINGS[encoding]
    buffer = np.frombuffer(msg.data, dtype=np.uint8)
    rows = buffer.reshape(msg.height, msg.step)[:, :msg.width * channels * depth]
    if depth == 2:
        dtype = np.dtype('>u2' if msg.is_bigendian else '<u2')
        rows = (np.ascontiguousarray(rows).view(dtype) >> 8).astype(np.uint8)
    pixels = rows.reshape(msg.height, msg.width, channels)
    if order is None:
        return CameraFrame(cv2.cvtColor(pixels[..., 0], cv2.COLOR_GRAY2RGB), bgr=False)
    return CameraFrame(pixels[..., :3], bgr=order == 'bgr')


def _bytes_view(data) -> memoryview:
    """Return a flat uint8 memoryview of ``data`` (bytes, array('B'), numpy), copying if needed."""
    try:
        view = memoryview(data)
        if view.c_contiguous and view.itemsize == 1:
            return view.cast('B')
    except TypeError:  # a list of ints
        pass
    return memoryview(bytes(data))


def compressed_image_size(data) -> Optional[Tuple[int, int]]:
    """
    (width, height) from a PNG or JPEG header without decoding, or None if not found.

    ``data``: bytes or anything with the buffer protocol (array('B'), memoryview).

    Never raises on truncated or garbage data: anything that is not a
    well-formed PNG IHDR or JPEG marker sequence up to a SOF segment gives None.
    """
    data = _bytes_view(data)
    if data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) >= 24 and data[12:16] == b'IHDR':
        width, height = struct.unpack('>II', data[16:24])
        return width, height
    if data[:2] == b'\xff\xd8':
        return _jpeg_size(data)
    return None


#: JPEG markers without a length field: TEM, RST0-RST7 and SOI.
_JPEG_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD9)])
#: SOF markers C0-CF except DHT (C4), JPG (C8) and DAC (CC) carry the frame size.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: memoryview) -> Optional[Tuple[int, int]]:
    """
    (width, height) from the first SOF segment of a JPEG (after SOI), or None.

    Walks the marker segments; any marker may be preceded by any number of
    0xFF fill bytes (ITU T.81 B.1.1.2). Each step advances at least two bytes
    and every read is bounds-checked, so garbage ends the walk with None.
    """
    end = len(data)
    position = 2
    while position < end:
        if data[position] != 0xFF:
            return None
        while position + 1 < end and data[position + 1] == 0xFF:
            position += 1  # fill byte
        if position + 1 >= end:
            return None
        marker = data[position + 1]
        position += 2
        if marker in _JPEG_STANDALONE_MARKERS:
            continue
        if marker in (0x00, 0xD9, 0xDA):  # not a marker, EOI or SOS: no SOF before the scan
            return None
        if position + 2 > end:
            return None
        length = struct.unpack_from('>H', data, position)[0]
        if length < 2:
            return None
        if marker in _JPEG_SOF_MARKERS:
            # Lf (2), P (1), Y (2), X (2), Nf (1), ...
            if length < 8 or position + 7 > end:
                return None
            height, width = struct.unpack_from('>HH', data, position + 3)
            return width, height
        position += length
    return None


def compressed_image_to_frame(msg, max_pixels: int) -> CameraFrame:
    """
    Validate, size-check from the header, and decode a JPEG / PNG CompressedImage.

    The frame is HxWx3 uint8 BGR in the stored orientation (a JPEG's EXIF
    Orientation tag is ignored), so its size is the header's.
    """
    data = _bytes_view(msg.data)
    size = compressed_image_size(data)
    if size is None:
        raise InvalidImage('bad_compressed_format',
                           f"format '{msg.format}': data is neither PNG nor JPEG "
                           f'({len(data)} bytes)')
    width, height = size
    if width == 0 or height == 0:
        raise InvalidImage('zero_size', f'compressed image header says {width}x{height}')
    if width * height > max_pixels:
        raise InvalidImage('too_large', f'compressed image is {width}x{height}, more than '
                                        f'max_pixels {max_pixels}')
    check_frame_shape(width, height, 'compressed image')
    # IMREAD_COLOR: 3-channel BGR, 8-bit (grey, alpha and 16-bit input are converted);
    # IGNORE_ORIENTATION: keep the stored geometry, ignoring a JPEG EXIF Orientation tag.
    try:
        decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8),
                               cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:  # a codec that throws on corrupt data instead of returning None
        decoded = None
    if decoded is None or decoded.shape[:2] != (height, width):
        raise InvalidImage('decode_failed', f"format '{msg.format}': {len(data)} bytes do not "
                                            f'decode to a {width}x{height} image')
    return CameraFrame(decoded, bgr=True)


class ImageBuffer:
    """
    A reusable sensor_msgs/Image whose data buffer is filled in place each frame.

    ``view(height, width, channels)`` returns a numpy view of the message's
    ``array('B')`` data to compute into; the array is only reallocated when
    the size changes. Publishing serialises the message, so reuse is safe.
    """

    def __init__(self, image_type, encoding: str):
        import array

        self._array_type = array.array
        self.msg = image_type()
        self.msg.encoding = encoding
        self.msg.is_bigendian = 0
        self._shape: Tuple[int, ...] = ()
        self._view: Optional[np.ndarray] = None

    def view(self, height: int, width: int, channels: int) -> np.ndarray:
        """Return an HxW (channels 1) or HxWxC uint8 view of the data, to write pixels into."""
        shape = (height, width) if channels == 1 else (height, width, channels)
        if shape != self._shape:
            self._view = None  # release the buffer export before replacing the array
            self.msg.data = self._array_type('B', bytes(height * width * channels))
            self.msg.height, self.msg.width, self.msg.step = height, width, width * channels
            self._view = np.frombuffer(self.msg.data, dtype=np.uint8).reshape(shape)
            self._shape = shape
        return self._view
