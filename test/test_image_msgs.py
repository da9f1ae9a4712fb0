"""Message validation and conversion (no ROS graph needed: messages are built in-process)."""

import cv2
from enet_ros.ros_io.image_msgs import (check_raw_image, compressed_image_size,
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


@pytest.mark.parametrize('encoding, named', [('8UC3', 'bgr8'), ('8UC4', 'bgra8'),
                                             ('8UC1', 'mono8'), ('8uc3', 'bgr8')])
def test_generic_8uc_encodings_match_their_named_twins(encoding, named):
    """cv_bridge passthrough 8UC3 / 8UC4 are BGR / BGRA (OpenCV order), 8UC1 is mono."""
    channels = {'8uc1': 1, '8uc3': 3, '8uc4': 4}[encoding.lower()]
    data = RNG.integers(0, 256, (6, 10, channels), dtype=np.uint8)
    if channels == 1:
        data = data[..., 0].copy()
    generic = make_image_msg(data, encoding, 1, step=10 * channels + 5)
    check_raw_image(generic, MAX)
    frame = raw_image_to_frame(generic, MAX)
    twin = raw_image_to_frame(make_image_msg(data, named, 1, step=10 * channels + 5), MAX)
    assert frame.bgr == twin.bgr and frame.pixels.shape == (6, 10, 3)
    np.testing.assert_array_equal(frame.rgb(), twin.rgb())
    if channels > 1:
        np.testing.assert_array_equal(frame.rgb(), data[..., 2::-1])


def _exif_orientation_app1(orientation: int) -> bytes:
    """Return a JPEG APP1 'Exif' segment whose IFD0 holds only an Orientation tag."""
    tiff = (b'MM\x00\x2a' + (8).to_bytes(4, 'big')             # big-endian TIFF, IFD0 at 8
            + (1).to_bytes(2, 'big')                           # one entry
            + (0x0112).to_bytes(2, 'big') + (3).to_bytes(2, 'big')  # Orientation, SHORT
            + (1).to_bytes(4, 'big') + orientation.to_bytes(2, 'big') + b'\x00\x00'
            + (0).to_bytes(4, 'big'))                          # no next IFD
    payload = b'Exif\x00\x00' + tiff
    return b'\xff\xe1' + (len(payload) + 2).to_bytes(2, 'big') + payload


def test_jpeg_exif_orientation_is_ignored():
    """A JPEG tagged Orientation=6 (rotate 90) keeps its stored geometry and pixels."""
    height, width = 24, 40
    bgr = np.zeros((height, width, 3), np.uint8)
    bgr[:12, :20] = (255, 0, 0)
    bgr[:12, 20:] = (0, 255, 0)
    bgr[12:, :20] = (0, 0, 255)
    bgr[12:, 20:] = (255, 255, 255)
    ok, encoded = cv2.imencode('.jpg', bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    plain = encoded.tobytes()
    tagged = plain[:2] + _exif_orientation_app1(6) + plain[2:]
    # The tag is effective: a plain IMREAD_COLOR decode rotates the image.
    rotated = cv2.imdecode(np.frombuffer(tagged, np.uint8), cv2.IMREAD_COLOR)
    assert rotated.shape == (width, height, 3)
    msg = CompressedImage(format='jpeg')
    msg.data = tagged
    assert compressed_image_size(tagged) == (width, height)
    frame = compressed_image_to_frame(msg, MAX)
    assert frame.bgr and frame.pixels.shape == (height, width, 3)
    difference = np.abs(frame.pixels.astype(int) - bgr.astype(int))
    assert difference.mean() < 8
    np.testing.assert_array_equal(
        frame.pixels, cv2.imdecode(np.frombuffer(plain, np.uint8), cv2.IMREAD_COLOR))


def _jpeg_marker_offsets(data: bytes) -> dict:
    """Return marker -> offset of the header segments of a plain (fill-free) JPEG, up to SOS."""
    offsets, position = {}, 2
    while data[position + 1] != 0xDA:
        offsets.setdefault(data[position + 1], position)
        position += 2 + int.from_bytes(data[position + 2:position + 4], 'big')
    offsets[0xDA] = position
    return offsets


def _with_fill_bytes(data: bytes, markers, count: int = 3) -> bytes:
    """Insert ``count`` 0xFF fill bytes before the first segment of each of ``markers``."""
    offsets = _jpeg_marker_offsets(data)
    for offset in sorted((offsets[marker] for marker in markers), reverse=True):
        data = data[:offset] + b'\xff' * count + data[offset:]
    return data


@pytest.mark.parametrize('markers', [[0xDB], [0xC0], [0xC4], [0xDB, 0xC0, 0xC4, 0xDA]])
def test_jpeg_fill_bytes_before_markers(markers):
    """0xFF fill bytes before a marker (T.81 B.1.1.2) still give the size and decode."""
    bgr = np.ascontiguousarray(RGB[..., ::-1])
    plain = bytes(_compressed(bgr, '.jpg').data)
    filled = _with_fill_bytes(plain, markers)
    assert len(filled) == len(plain) + 3 * len(markers)
    assert compressed_image_size(filled) == (10, 6)
    msg = CompressedImage(format='jpeg')
    msg.data = filled
    frame = compressed_image_to_frame(msg, MAX)
    np.testing.assert_array_equal(
        frame.pixels, cv2.imdecode(np.frombuffer(plain, np.uint8), cv2.IMREAD_COLOR))


@pytest.mark.parametrize('kind', ['jpeg', 'jpeg_with_fill_bytes', 'png'])
def test_truncated_compressed_data_never_raises_anything_else(kind):
    """Every prefix gives the right size or None, and a frame or InvalidImage."""
    bgr = np.ascontiguousarray(RGB[..., ::-1])
    data = bytes(_compressed(bgr, '.png' if kind == 'png' else '.jpg').data)
    if kind == 'jpeg_with_fill_bytes':
        data = _with_fill_bytes(data, [0xDB, 0xC0, 0xC4, 0xDA])
    for length in range(len(data) + 1):
        prefix = data[:length]
        assert compressed_image_size(prefix) in (None, (10, 6)), length
        msg = CompressedImage(format=kind[:4])
        msg.data = prefix
        try:
            frame = compressed_image_to_frame(msg, MAX)
        except InvalidImage:
            assert length < len(data), 'the whole data must decode'
            continue
        assert frame.pixels.shape == (6, 10, 3), length
    assert compressed_image_size(data) == (10, 6)


def test_jpeg_header_walker_survives_garbage():
    """Fill-byte runs, bad lengths, EOI / SOS before SOF and random bytes give None."""
    soi = b'\xff\xd8'
    for data in [soi, soi + b'\xff' * 1000, soi + b'\xff\xe0\x00\x00' * 50,
                 soi + b'\xff\xe0\x00\x01', soi + b'\xff\xd9', soi + b'\xff\xda\x00\x08',
                 soi + b'\xff\x00\x00\x10', soi + b'\xff\xc0\x00\x05\x08\x00\x06\x00\x0a',
                 soi + b'\xff\xc0\x00\x11\x08\x00\x06', soi + b'\x00\xff\xc0']:
        assert compressed_image_size(data) is None, data
    assert compressed_image_size(soi + b'\xff\xff\xd0\xff\xc0\x00\x11\x08\x00\x06\x00\x0a') \
        == (10, 6)
    rng = np.random.default_rng(1)
    for _ in range(2000):
        tail = rng.integers(0, 256, int(rng.integers(0, 64)), dtype=np.uint8).tobytes()
        # Bias towards marker-looking bytes so the walker goes further than the first check.
        tail = tail.replace(b'\x00', b'\xff')
        size = compressed_image_size(soi + tail)
        assert size is None or (isinstance(size, tuple) and len(size) == 2)


@pytest.mark.parametrize('form', ['array', 'bytes', 'numpy', 'memoryview', 'list'])
@pytest.mark.parametrize('extension', ['.png', '.jpg'])
def test_compressed_data_in_every_form_decodes_the_same(form, extension):
    """array('B') (rclpy), bytes, a uint8 array (rosbags), a memoryview or a list: one image."""
    import array

    bgr = np.ascontiguousarray(RGB[..., ::-1])
    encoded = bytes(_compressed(bgr, extension).data)
    reference = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR)
    data = {'array': array.array('B', encoded), 'bytes': encoded,
            'numpy': np.frombuffer(encoded, np.uint8), 'memoryview': memoryview(encoded),
            'list': list(encoded)}[form]
    assert compressed_image_size(data) == (10, 6)
    msg = CompressedImage(format=extension[1:])
    msg.data = data
    if form == 'numpy':
        msg._data = data  # as a rosbags message holds it (the setter would make an array)
    np.testing.assert_array_equal(compressed_image_to_frame(msg, MAX).pixels, reference)


@pytest.mark.parametrize('channels, encoding', [(1, 'mono8'), (3, 'rgb8')])
def test_image_buffer_publishes_what_was_drawn_frame_after_frame(channels, encoding):
    """Serialised by rclpy as a publisher does: each frame's pixels, the array never replaced."""
    from rclpy.serialization import deserialize_message, serialize_message

    buffer = ImageBuffer(Image, encoding)
    shape = (6, 10) if channels == 1 else (6, 10, 3)
    first_array = None
    for frame in range(3):
        pixels = RNG.integers(0, 256, shape, dtype=np.uint8)
        np.copyto(buffer.view(6, 10, channels), pixels)
        buffer.msg.header.stamp.sec = frame
        first_array = first_array or buffer.msg.data
        assert buffer.msg.data is first_array
        received = deserialize_message(serialize_message(buffer.msg), Image)
        assert (received.height, received.width, received.step, received.encoding) == \
            (6, 10, 10 * channels, encoding)
        assert received.header.stamp.sec == frame
        np.testing.assert_array_equal(
            np.frombuffer(received.data, np.uint8).reshape(shape), pixels)
