"""Message validation and conversion (no ROS graph needed: messages are built in-process)."""

import cv2
from enet_ros.ros.image_msgs import (check_raw_image, compressed_image_size,
                                     compressed_image_to_frame, ImageBuffer, InvalidImage,
                                     raw_image_to_frame)
import numpy as np
import pytest
from ros_harness import make_image_msg
from sensor_msgs.msg import CompressedImage, Image

MAX = 4096 * 4096
RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 10, 3), dtype=np.uint8)


def _reason(msg, max_pixels=MAX) -> str:
    with pytest.raises(InvalidImage) as caught:
        raw_image_to_frame(msg, max_pixels)
    return caught.value.reason


def test_rgb8_is_a_zero_copy_view():
    """rgb8 converts to a view into the message buffer, RGB order."""
    msg = make_image_msg(RGB, 'rgb8', 1)
    frame = raw_image_to_frame(msg, MAX)
    assert not frame.bgr
    np.testing.assert_array_equal(frame.pixels, RGB)
    assert np.shares_memory(frame.pixels, np.frombuffer(msg.data, dtype=np.uint8))


@pytest.mark.parametrize('encoding', ['bgr8', 'rgba8', 'bgra8'])
def test_colour_encodings(encoding):
    """BGR and alpha encodings give the RGB pixels back through frame.rgb()."""
    pixels = RGB[..., ::-1] if encoding.startswith('bgr') else RGB
    if encoding.endswith('a8'):
        pixels = np.concatenate([pixels, np.zeros((6, 10, 1), np.uint8)], axis=2)
    frame = raw_image_to_frame(make_image_msg(np.ascontiguousarray(pixels), encoding, 1), MAX)
    assert frame.bgr == encoding.startswith('bgr')
    np.testing.assert_array_equal(frame.rgb(), RGB)


def test_mono8_expands_to_three_channels():
    """mono8 becomes three equal channels."""
    gray = RGB[..., 1].copy()
    frame = raw_image_to_frame(make_image_msg(gray, 'mono8', 1), MAX)
    np.testing.assert_array_equal(frame.rgb(), np.repeat(gray[..., None], 3, axis=2))


@pytest.mark.parametrize('bigendian', [0, 1])
def test_16_bit_encodings_honour_endianness(bigendian):
    """rgb16 / mono16 keep the high byte, read in the declared byte order."""
    values = RGB.astype(np.uint16) * 256 + 17
    raw = values.astype('>u2' if bigendian else '<u2').view(np.uint8).reshape(6, -1)
    msg = make_image_msg(raw, 'rgb16', 1)
    msg.width, msg.is_bigendian = 10, bigendian
    np.testing.assert_array_equal(raw_image_to_frame(msg, MAX).rgb(), RGB)


@pytest.mark.parametrize('step_padding', [3, 3 * 4, 1, 7])
def test_padded_step(step_padding):
    """Whole-pixel and odd row padding give the unpadded pixels."""
    msg = make_image_msg(RGB, 'rgb8', 1, step=10 * 3 + step_padding)
    np.testing.assert_array_equal(raw_image_to_frame(msg, MAX).pixels, RGB)


def test_each_malformed_field_has_its_reason():
    """Unknown encoding, zero size, short step, wrong length and too many pixels."""
    msg = make_image_msg(RGB, 'rgb8', 1)
    msg.encoding = 'yuv422_weird'
    assert _reason(msg) == 'unsupported_encoding'
    msg = make_image_msg(RGB, 'rgb8', 1)
    msg.width = 0
    assert _reason(msg) == 'zero_size'
    msg = make_image_msg(RGB, 'rgb8', 1)
    msg.step = 29
    assert _reason(msg) == 'bad_step'
    msg = make_image_msg(RGB, 'rgb8', 1)
    msg.data = msg.data[:-1]
    assert _reason(msg) == 'bad_data_length'
    msg = make_image_msg(RGB, 'rgb8', 1)
    msg.height = 7
    assert _reason(msg) == 'bad_data_length'
    assert _reason(make_image_msg(RGB, 'rgb8', 1), max_pixels=59) == 'too_large'
    check_raw_image(make_image_msg(RGB, 'rgb8', 1), 60)


def _compressed(pixels_bgr: np.ndarray, extension: str) -> CompressedImage:
    ok, encoded = cv2.imencode(extension, pixels_bgr)
    assert ok
    msg = CompressedImage(format=extension[1:])
    msg.data = encoded.tobytes()
    return msg


@pytest.mark.parametrize('extension', ['.png', '.jpg'])
def test_compressed_size_from_header_and_decode(extension):
    """PNG and JPEG sizes come from the header; PNG decodes exactly."""
    bgr = np.ascontiguousarray(RGB[..., ::-1])
    msg = _compressed(bgr, extension)
    assert compressed_image_size(bytes(msg.data)) == (10, 6)
    frame = compressed_image_to_frame(msg, MAX)
    assert frame.bgr and frame.pixels.shape == (6, 10, 3)
    if extension == '.png':
        np.testing.assert_array_equal(frame.rgb(), RGB)


def test_compressed_rejections():
    """Random bytes, a too-large header and a truncated body are rejected with reasons."""
    msg = CompressedImage(format='jpeg')
    msg.data = bytes(RNG.integers(0, 256, 200, dtype=np.uint8))
    with pytest.raises(InvalidImage) as caught:
        compressed_image_to_frame(msg, MAX)
    assert caught.value.reason == 'bad_compressed_format'
    big = _compressed(np.zeros((600, 800, 3), np.uint8), '.png')
    with pytest.raises(InvalidImage) as caught:
        compressed_image_to_frame(big, 800 * 600 - 1)
    assert caught.value.reason == 'too_large'
    truncated = _compressed(np.ascontiguousarray(RGB[..., ::-1]), '.png')
    truncated.data = bytes(truncated.data)[:40]
    with pytest.raises(InvalidImage) as caught:
        compressed_image_to_frame(truncated, MAX)
    assert caught.value.reason == 'decode_failed'


def test_image_buffer_reuses_its_array_until_the_size_changes():
    """The output message's buffer is filled in place and reallocated only on resize."""
    buffer = ImageBuffer(Image, 'mono8')
    view = buffer.view(4, 5, 1)
    view[:] = 7
    first = buffer.msg.data
    assert bytes(first) == bytes([7]) * 20
    assert buffer.view(4, 5, 1) is view and buffer.msg.data is first
    bigger = buffer.view(6, 5, 3)
    assert bigger.shape == (6, 5, 3)
    assert (buffer.msg.height, buffer.msg.width, buffer.msg.step) == (6, 5, 15)
    assert len(buffer.msg.data) == 90
