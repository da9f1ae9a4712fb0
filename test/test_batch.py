"""
Segmenter.segment_batch on the CPU: every frame's result equals its own segment() call.

Batching runs the network once on the frames stacked; pre- and
post-processing stay per frame, so on the CPU the labels are identical (the
batched convolutions compute each sample as the single ones do on these
networks; checked exactly here, for the eager reference, the folded network,
the compiled one and OpenVINO, which loops). Mixed sizes are split into
groups of one size, results come back in the callers' order. The CUDA
captured batches are tested in ``test_gpu.py``.
"""

from enet_ros.inference.eager import size_groups
from enet_ros.inference.openvino_backend import openvino_version
from enet_ros.model_file import load_model_file
from enet_ros.segmenter import Segmenter
import numpy as np
import pytest

NET_SIZE = (96, 64)  # (width, height): small so that the CPU tests stay fast
COLORS = [(i * 20, 255 - i * 20, i * 7) for i in range(11)]


def _scene(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    image = np.stack([rows * 255 // max(1, height - 1), cols * 255 // max(1, width - 1),
                      ((rows // (5 + seed) + cols // 7) % 3) * 100], axis=-1).astype(np.int32)
    image += rng.integers(-20, 21, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def loaded(random_model_file):
    """Load the shared random model file."""
    return load_model_file(random_model_file)


def _segmenter(loaded, mode: str, batch_frames=True) -> Segmenter:
    kwargs = {'eager': {'optimize': False}, 'folded': {'torch_compile': False},
              'compiled': {}, 'openvino': {'inference_backend': 'openvino'}}[mode]
    kwargs.setdefault('inference_backend', 'torch')
    segmenter = Segmenter(loaded, device='cpu', input_size=NET_SIZE, batch_frames=batch_frames,
                          **kwargs)
    segmenter.configure_images(COLORS, [3, 4], 0.4)
    return segmenter


def _assert_same(batched, singles) -> None:
    assert len(batched) == len(singles)
    for got, expected in zip(batched, singles):
        assert got.labels.dtype == np.uint8 and got.labels.shape == expected.labels.shape
        np.testing.assert_array_equal(got.labels, expected.labels)
        if expected.confidence is None:
            assert got.confidence is None
        else:
            np.testing.assert_allclose(got.confidence, expected.confidence, atol=1e-6)
        assert sorted(got.images) == sorted(expected.images)
        for name, image in expected.images.items():
            np.testing.assert_array_equal(got.images[name], image)


@pytest.mark.parametrize('mode', ['eager', 'folded',
                                  pytest.param('compiled', marks=pytest.mark.slow), 'openvino'])
def test_batch_equals_one_at_a_time(loaded, mode):
    """Four frames of one size (network size and resized, RGB and BGR): segment()'s labels."""
    if mode == 'openvino' and openvino_version() is None:
        pytest.skip('openvino not installed')
    segmenter = _segmenter(loaded, mode)
    assert segmenter.batches == (mode != 'openvino')  # OpenVINO's graph has batch 1: it loops
    for height, width in ((64, 96), (90, 120)):
        frames = [_scene(height, width, seed) for seed in range(4)]
        bgr = [False, True, False, True]
        singles = [segmenter.segment(frame, bgr=flag) for frame, flag in zip(frames, bgr)]
        _assert_same(segmenter.segment_batch(frames, bgr=bgr), singles)


def test_batch_with_confidence_images_and_buffers(loaded):
    """Confidence, the drawn images and caller buffers per frame, as segment() gives them."""
    segmenter = _segmenter(loaded, 'folded')
    frames = [_scene(70, 100, seed) for seed in range(3)]
    names = ('colored', 'drivable', 'overlay')
    singles = [segmenter.segment(frame, with_confidence=True, images=names) for frame in frames]
    out = [None, {'overlay': np.zeros((70, 100, 3), np.uint8)}, None]
    batched = segmenter.segment_batch(frames, with_confidence=True, images=names, out=out)
    _assert_same(batched, singles)
    assert batched[1].images['overlay'] is out[1]['overlay']


def test_mixed_sizes_are_split_and_keep_their_order(loaded):
    """Frames of three sizes, interleaved: each size one group, results in the input order."""
    segmenter = _segmenter(loaded, 'folded')
    shapes = [(64, 96), (50, 80), (64, 96), (33, 41), (50, 80), (64, 96)]
    frames = [_scene(h, w, seed) for seed, (h, w) in enumerate(shapes)]
    assert size_groups(frames) == [[0, 2, 5], [1, 4], [3]]
    batched = segmenter.segment_batch(frames)
    assert [r.labels.shape for r in batched] == shapes
    _assert_same(batched, [segmenter.segment(frame) for frame in frames])


def test_batch_of_one_and_none(loaded):
    """One frame is segment()'s result; no frames give an empty list; bad arguments raise."""
    segmenter = _segmenter(loaded, 'folded')
    frame = _scene(64, 96, 0)
    _assert_same(segmenter.segment_batch([frame], bgr=True), [segmenter.segment(frame, bgr=True)])
    assert segmenter.segment_batch([]) == []
    with pytest.raises(ValueError, match='bgr flags'):
        segmenter.segment_batch([frame, frame], bgr=[True])
    with pytest.raises(ValueError, match='HxWx3 uint8'):
        segmenter.segment_batch([frame, frame[..., 0].copy()])


def test_batch_frames_off_loops_with_the_same_results(loaded, monkeypatch):
    """batch_frames=False: every frame through segment's path, one forward each."""
    segmenter = _segmenter(loaded, 'folded', batch_frames=False)
    assert not segmenter.batches
    calls = []
    forward = segmenter.path.forward
    monkeypatch.setattr(segmenter.path, 'forward',
                        lambda x: calls.append(x.shape[0]) or forward(x))
    frames = [_scene(64, 96, seed) for seed in range(3)]
    batched = segmenter.segment_batch(frames)
    assert calls == [1, 1, 1]
    calls.clear()
    batching = _segmenter(loaded, 'folded')
    forward_b = batching.path.forward
    monkeypatch.setattr(batching.path, 'forward',
                        lambda x: calls.append(x.shape[0]) or forward_b(x))
    _assert_same(batching.segment_batch(frames), batched)
    assert calls == [3]


def test_cpu_default_follows_the_measurement(loaded):
    """batch_frames=None on the CPU: CPU_BATCH_DEFAULT (off: not measured faster here)."""
    from enet_ros import segmenter as module

    segmenter = _segmenter(loaded, 'folded', batch_frames=None)
    assert segmenter.batches is module.CPU_BATCH_DEFAULT
