"""Masks: colour, drivable and overlay images on hand-built arrays, exact values."""

from enet_ros.masks import (colorize, drivable_lut, drivable_mask, OutputRenderer, overlay,
                            palette_lut)
import numpy as np
import pytest

COLORS = ((10, 20, 30), (40, 50, 60), (70, 80, 90))
LABELS = np.array([[0, 1, 2],
                   [2, 2, 0]], dtype=np.uint8)


def test_palette_lut():
    """Row i is class i's colour; rows past the palette are black."""
    lut = palette_lut(COLORS)
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    np.testing.assert_array_equal(lut[:3], np.array(COLORS, dtype=np.uint8))
    assert not lut[3:].any()


def test_colorize_exact():
    """Each label becomes its palette colour."""
    colored = colorize(LABELS, palette_lut(COLORS))
    expected = np.array([[COLORS[0], COLORS[1], COLORS[2]],
                         [COLORS[2], COLORS[2], COLORS[0]]], dtype=np.uint8)
    assert colored.dtype == np.uint8
    np.testing.assert_array_equal(colored, expected)


def test_colorize_unknown_label_is_black():
    """A label past the palette (e.g. void 255) is drawn black."""
    colored = colorize(np.array([[1, 255]], dtype=np.uint8), palette_lut(COLORS))
    np.testing.assert_array_equal(colored, [[COLORS[1], (0, 0, 0)]])


def test_colorize_into_buffer():
    """With out= the result is written into, and returned as, the caller's buffer."""
    out = np.full((2, 3, 3), 7, dtype=np.uint8)
    result = colorize(LABELS, palette_lut(COLORS), out=out)
    assert result is out
    np.testing.assert_array_equal(out, colorize(LABELS, palette_lut(COLORS)))


def test_drivable_mask():
    """255 where the label is a drivable id, 0 elsewhere."""
    lut = drivable_lut([2])
    assert lut.dtype == np.uint8 and lut.shape == (256,)
    assert lut[2] == 255 and np.count_nonzero(lut) == 1
    np.testing.assert_array_equal(drivable_mask(LABELS, lut), [[0, 0, 255], [255, 255, 0]])
    both = drivable_lut((0, 2))
    np.testing.assert_array_equal(drivable_mask(LABELS, both), [[255, 0, 255], [255, 255, 255]])
    nothing = drivable_lut([])
    assert not drivable_mask(LABELS, nothing).any()


def test_drivable_mask_into_buffer():
    """drivable_mask writes into out= and returns it."""
    out = np.full(LABELS.shape, 9, dtype=np.uint8)
    result = drivable_mask(LABELS, drivable_lut([0]), out=out)
    assert result is out
    np.testing.assert_array_equal(out, [[255, 0, 0], [0, 0, 255]])


IMAGE = np.array([[[0, 100, 255], [1, 2, 3]]], dtype=np.uint8)
COLORED = np.array([[[255, 0, 255], [4, 6, 3]]], dtype=np.uint8)


def test_overlay_alpha_zero_and_one():
    """Give the image at alpha 0 and the colours at alpha 1, exactly."""
    np.testing.assert_array_equal(overlay(IMAGE, COLORED, 0.0), IMAGE)
    np.testing.assert_array_equal(overlay(IMAGE, COLORED, 1.0), COLORED)


def test_overlay_half():
    """Give the mean at alpha 0.5, rounded half up."""
    blended = overlay(IMAGE, COLORED, 0.5)
    assert blended.dtype == np.uint8
    # (0+255)/2=127.5->128, (100+0)/2=50, 255, (1+4)/2=2.5->3, 4, 3
    np.testing.assert_array_equal(blended, [[[128, 50, 255], [3, 4, 3]]])


def test_overlay_quarter():
    """Give (3 * image + colour) / 4 at alpha 0.25, rounded to nearest."""
    blended = overlay(IMAGE, COLORED, 0.25)
    expected = np.floor((3 * IMAGE.astype(float) + COLORED) / 4 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(blended, expected)


def test_overlay_within_one_of_float_blend():
    """On random images the fixed-point blend is within 1 of the float blend."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    colored = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    for alpha in (0.1, 0.3, 0.5, 0.77, 0.999):
        exact = (1 - alpha) * image + alpha * colored
        assert np.abs(overlay(image, colored, alpha).astype(float) - exact).max() <= 1.0


def test_overlay_into_buffer():
    """With out= the blend lands in the caller's buffer, which is returned."""
    out = np.zeros_like(IMAGE)
    result = overlay(IMAGE, COLORED, 0.5, out=out)
    assert result is out
    np.testing.assert_array_equal(out, [[[128, 50, 255], [3, 4, 3]]])


@pytest.mark.parametrize('alpha', [-0.1, 1.5, float('nan')])
def test_overlay_bad_alpha(alpha: float):
    """An alpha outside [0, 1] is refused."""
    with pytest.raises(ValueError, match='alpha'):
        overlay(IMAGE, COLORED, alpha)


def test_output_renderer_builds_every_image_once_and_into_buffers():
    """OutputRenderer: the four images as the single functions give them, buffers honoured."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 11, (6, 8), dtype=np.uint8)
    rgb = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    colors = [(i * 20, 255 - i * 20, i * 7) for i in range(11)]
    renderer = OutputRenderer(colors, [3, 4], 0.25)
    images = renderer.render(labels, rgb)
    palette = palette_lut(colors)
    assert np.array_equal(images['labels'], labels)
    assert np.array_equal(images['colored'], colorize(labels, palette))
    assert np.array_equal(images['overlay'],
                          overlay(rgb, colorize(labels, palette), 0.25))
    assert np.array_equal(images['drivable'],
                          drivable_mask(labels, drivable_lut([3, 4])))
    buffers = {'labels': np.zeros((6, 8), np.uint8), 'overlay': np.zeros((6, 8, 3), np.uint8)}
    only = renderer.render(labels, rgb, wanted=['labels', 'overlay'], out=buffers)
    assert set(only) == {'labels', 'overlay'}
    assert only['overlay'] is buffers['overlay'] and only['labels'] is buffers['labels']
    assert np.array_equal(buffers['overlay'], images['overlay'])
    assert np.array_equal(buffers['labels'], labels)
    with pytest.raises(ValueError, match='camera image'):
        renderer.render(labels, None, wanted=['overlay'])
    with pytest.raises(ValueError, match='unknown output'):
        renderer.render(labels, rgb, wanted=['depth'])
    with pytest.raises(ValueError, match='overlay_alpha'):
        OutputRenderer(colors, [], 1.5)


def test_confidence_image_and_voiding():
    """Confidence as round(p * 255); voiding at and below the threshold, none at 0."""
    from enet_ros.masks import confidence_image, void_low_confidence

    confidence = np.array([[0.0, 0.5, 1.0], [0.1, 0.2, 0.999]], dtype=np.float32)
    assert confidence_image(confidence).tolist() == [[0, 128, 255], [26, 51, 255]]
    labels = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8)
    assert void_low_confidence(labels.copy(), confidence, 0.0, 11).tolist() == labels.tolist()
    assert void_low_confidence(labels.copy(), confidence, 0.2, 11).tolist() == [
        [11, 2, 3], [11, 11, 6]]
    assert (void_low_confidence(labels.copy(), confidence, 1.0, 11) == 11).all()
    renderer = OutputRenderer([(1, 2, 3)] * 7, [3], 0.5)
    images = renderer.render(labels, None, wanted=['confidence'], confidence=confidence)
    assert images['confidence'].tolist() == confidence_image(confidence).tolist()
    with pytest.raises(ValueError, match='confidence map'):
        renderer.render(labels, None, wanted=['confidence'])


def _reference_overlay(image: np.ndarray, colored: np.ndarray, alpha: float) -> np.ndarray:
    """Compute the fixed-point formula in int64: (i * (256 - w) + c * w + 128) >> 8."""
    weight = int(round(alpha * 256))
    total = image.astype(np.int64) * (256 - weight) + colored.astype(np.int64) * weight + 128
    return (total >> 8).astype(np.uint8)


def test_overlay_equals_the_fixed_point_formula_for_every_weight():
    """Every weight 0-256 on every pixel pair, strided and padded inputs: the formula exactly."""
    values = np.arange(256, dtype=np.uint8)
    image = np.repeat(values, 256).reshape(256, 256, 1).repeat(3, axis=2)
    colored = np.tile(values, 256).reshape(256, 256, 1).repeat(3, axis=2)
    padded = np.zeros((256, 300, 4), np.uint8)
    padded[:, :256, :3] = image[..., ::-1]
    strided = padded[:, :256, 2::-1]  # a BGR view of a padded message buffer, reversed
    for weight in range(257):
        alpha = weight / 256
        expected = _reference_overlay(image, colored, alpha)
        np.testing.assert_array_equal(overlay(image, colored, alpha), expected)
        out = np.zeros_like(image)
        np.testing.assert_array_equal(overlay(strided, colored, alpha, out=out), expected)


def test_renderer_reuses_its_working_buffers_without_leaking_them():
    """Overlay alone, frame after frame and size after size: the single functions' images."""
    rng = np.random.default_rng(5)
    colors = [(i * 20, 255 - i * 20, i * 7) for i in range(11)]
    renderer = OutputRenderer(colors, [3, 4], 0.3)
    palette = palette_lut(colors)
    kept = []
    for height, width in ((6, 8), (6, 8), (9, 5), (6, 8)):
        labels = rng.integers(0, 11, (height, width), dtype=np.uint8)
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        images = renderer.render(labels, rgb, wanted=['overlay', 'drivable'])
        expected = overlay(rgb, colorize(labels, palette), 0.3)
        np.testing.assert_array_equal(images['overlay'], expected)
        kept.append((images['overlay'], expected))
    for image, expected in kept:  # a returned image is never a working buffer reused later
        np.testing.assert_array_equal(image, expected)


def test_colorize_and_drivable_with_wider_ids_still_check_the_range():
    """uint8 ids take the fast path; wider ids outside the table still raise."""
    palette = palette_lut(COLORS)
    with pytest.raises(IndexError):
        colorize(np.array([[300]], dtype=np.int64), palette)
    with pytest.raises(IndexError):
        drivable_mask(np.array([[256]], dtype=np.int64), drivable_lut([1]))


def test_overlay_reuses_a_colour_image_drawn_before(monkeypatch):
    """Colour first (to publish it), then the overlay from it: no second colorize, same pixels."""
    import enet_ros.masks as masks_module

    rng = np.random.default_rng(7)
    labels = rng.integers(0, 11, (6, 8), dtype=np.uint8)
    rgb = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    colors = [(i * 20, 255 - i * 20, i * 7) for i in range(11)]
    renderer = OutputRenderer(colors, [3, 4], 0.25)
    together = renderer.render(labels, rgb, wanted=['colored', 'overlay'])
    buffer = np.zeros((6, 8, 3), np.uint8)
    renderer.render(labels, rgb, wanted=['colored'], out={'colored': buffer})
    calls = []
    real = masks_module.colorize
    monkeypatch.setattr(masks_module, 'colorize', lambda *a, **k: calls.append(1) or real(*a, **k))
    later = renderer.render(labels, rgb, wanted=['overlay'], colored=buffer)
    assert calls == []
    np.testing.assert_array_equal(buffer, together['colored'])
    np.testing.assert_array_equal(later['overlay'], together['overlay'])


def test_opencv_overlay_equals_the_fixed_point_rule_for_every_weight_and_value_pair():
    """cv2.addWeighted (+1/1024) is the fixed-point blend exactly: all weights, all pairs."""
    pytest.importorskip('cv2')
    first = np.repeat(np.arange(256, dtype=np.uint8), 256).reshape(256, 256)
    second = first.T.copy()
    image = np.ascontiguousarray(np.stack([first, second, first], axis=-1))
    colored = np.ascontiguousarray(np.stack([second, first, second], axis=-1))
    narrow_image, narrow_colored = image[:, :251].copy(), colored[:, :251].copy()  # SIMD tails
    for weight in range(257):
        alpha = weight / 256
        expected = _reference_overlay(image, colored, alpha)
        fast = overlay(image, colored, alpha)
        assert np.array_equal(fast, expected), f'weight {weight}'
        assert np.array_equal(overlay(image, colored, alpha, fast=False), expected)
        out = np.zeros_like(narrow_image)
        assert overlay(narrow_image, narrow_colored, alpha, out=out) is out
        assert np.array_equal(out, expected[:, :251]), f'weight {weight}, odd width'
    for alpha in (0.3, 0.4, 0.7, 0.123):  # weights between the 1/256 steps round the same way
        assert np.array_equal(overlay(image, colored, alpha), _reference_overlay(image, colored,
                                                                                 alpha))


def test_opencv_tables_equal_numpy_for_every_id_and_odd_sizes():
    """Colour and drivable through cv2.LUT: numpy's pixels, every id 0-255, in place in out=."""
    pytest.importorskip('cv2')
    rng = np.random.default_rng(11)
    colors = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(19)]
    palette = palette_lut(colors)
    lut = drivable_lut([0, 3, 18])
    for height, width in ((1, 1), (7, 13), (720, 1280), (3, 257)):
        labels = rng.integers(0, 256, (height, width), dtype=np.uint8)
        labels.flat[:min(256, labels.size)] = np.arange(min(256, labels.size))
        expected = np.take(palette, labels, axis=0)
        np.testing.assert_array_equal(colorize(labels, palette), expected)
        np.testing.assert_array_equal(colorize(labels, palette, fast=False), expected)
        out = np.zeros((height, width, 3), np.uint8)
        assert colorize(labels, palette, out=out) is out
        np.testing.assert_array_equal(out, expected)
        mask = np.zeros((height, width), np.uint8)
        assert drivable_mask(labels, lut, out=mask) is mask
        np.testing.assert_array_equal(mask, np.take(lut, labels))


def test_renderer_overlay_of_a_bgr_view_and_of_strided_buffers():
    """A BGR frame's reversed view (CameraFrame.rgb) and a strided out= give the rule's pixels."""
    rng = np.random.default_rng(12)
    colors = [(i * 20, 255 - i * 20, i * 7) for i in range(11)]
    renderer = OutputRenderer(colors, [3, 4], 0.4)
    labels = rng.integers(0, 11, (9, 14), dtype=np.uint8)
    bgr = rng.integers(0, 256, (9, 14, 3), dtype=np.uint8)
    rgb_view = bgr[..., ::-1]
    expected_colored = np.take(palette_lut(colors), labels, axis=0)
    expected = _reference_overlay(rgb_view, expected_colored, 0.4)
    wide = np.zeros((9, 20, 3), np.uint8)  # a row step past the width: not contiguous
    images = renderer.render(labels, rgb_view, ['colored', 'overlay'],
                             out={'overlay': wide[:, :14]})
    np.testing.assert_array_equal(images['colored'], expected_colored)
    np.testing.assert_array_equal(wide[:, :14], expected)
    assert not wide[:, 14:].any()
