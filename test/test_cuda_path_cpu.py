"""
The CUDA graph path's bookkeeping on the CPU: graph cache, failures, one pool, warm-up, images.

A fake capture stands in for ``CapturedFrame`` and calls the same device
pipeline on the CPU, so the path's per-size failure memory, pool sharing and
warm-up keys are checked without CUDA. The real captures, the blocking wait
and the shared pool in use are tested in ``test_gpu.py``.
"""

from typing import Dict, List, Tuple

from enet_ros.inference import cuda_graphs
from enet_ros.inference import graph_capture
from enet_ros.inference.device_images import (check_image_names, deliver_images,
                                              DEVICE_IMAGES, DeviceImages)
from enet_ros.inference.eager import EagerPath
from enet_ros.inference.frames import FramePipeline
from enet_ros.inference.graph_cache import GraphCache
from enet_ros.inference.network import prepare_network
from enet_ros.labels import CAMVID_11
from enet_ros.masks import OutputRenderer
from enet_ros.model_file import LoadedModel
from enet_ros.segmenter import Segmenter
import numpy as np
import pytest
import torch

NET_SIZE = (96, 64)  # (width, height)


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# --- GraphCache: per-key failure memory, eviction after a successful build only ---------


class _Builders:
    """Fake builders: count calls per key; keys in ``failing`` raise."""

    def __init__(self, failing=()):
        self.failing = set(failing)
        self.calls: Dict[str, int] = {}

    def __call__(self, key: str):
        def build():
            self.calls[key] = self.calls.get(key, 0) + 1
            if key in self.failing:
                raise torch.cuda.OutOfMemoryError(f'out of memory capturing {key} (simulated)')
            return ('entry', key)
        return build


def test_graph_cache_remembers_a_failure_for_its_key_only(core_logs):
    """A failed build gives None for that key from then on, unbuilt; other keys still build."""
    cache = GraphCache(capacity=4)
    builders = _Builders(failing={'big'})
    with core_logs.at_level('WARNING'):
        assert cache.get('big', builders('big')) is None
    assert 'out of memory capturing big (simulated)' in core_logs.text
    assert cache.failures == {'big': 'OutOfMemoryError: out of memory capturing big (simulated)'}
    for _ in range(3):
        assert cache.get('big', builders('big')) is None
    assert builders.calls['big'] == 1  # never retried
    assert cache.get('small', builders('small')) == ('entry', 'small')
    assert cache.get('small', builders('small')) == ('entry', 'small')
    assert builders.calls['small'] == 1 and cache.captures == 1
    assert 'big' not in cache and len(cache) == 1
    cache.clear()
    assert not cache.failures and len(cache) == 0


def test_graph_cache_evicts_only_after_a_successful_build():
    """Bounded LRU: a failing build in a full cache keeps every entry; a successful one evicts."""
    cache = GraphCache(capacity=2)
    builders = _Builders(failing={'c'})
    cache.get('a', builders('a'))
    cache.get('b', builders('b'))
    assert cache.get('c', builders('c')) is None
    assert 'a' in cache and 'b' in cache and len(cache) == 2
    assert cache.get('a', builders('a')) == ('entry', 'a')  # a is now the newest
    cache.get('d', builders('d'))
    assert 'b' not in cache and 'a' in cache and 'd' in cache
    assert builders.calls == {'a': 1, 'b': 1, 'c': 1, 'd': 1} and cache.captures == 3
    assert len(cache) == 2
    with pytest.raises(ValueError):
        GraphCache(capacity=0)


def test_graph_cache_failure_memory_is_bounded():
    """Only the newest max_failures failed keys are remembered."""
    cache = GraphCache(capacity=2, max_failures=2)
    builders = _Builders(failing={'x', 'y', 'z'})
    for key in ('x', 'y', 'z'):
        cache.get(key, builders(key))
    assert list(cache.failures) == ['y', 'z']


# --- the CUDA graph path's logic, on the CPU with a fake capture ----------------------


class _FakeCapture:
    """Stands in for CapturedFrame: runs the pipeline on the CPU; fails for some shapes."""

    failing: Tuple = ()
    made: List['_FakeCapture'] = []

    def __init__(self, pipeline, frame_shape, device, with_confidence=False,
                 warmup_iterations=3, pool=None, images=()):
        if tuple(frame_shape) in self.failing:
            raise RuntimeError(f'capture of {frame_shape} failed (simulated)')
        self.pipeline = pipeline
        self.frame_shape = tuple(frame_shape)
        self.pool = pool
        self.with_confidence = with_confidence
        self.runs = 0
        _FakeCapture.made.append(self)

    def run(self, image: np.ndarray, out=None):
        self.runs += 1
        labels, confidence, images = self.pipeline(
            torch.from_numpy(np.ascontiguousarray(image)))
        return (labels.numpy(), None if confidence is None else confidence.numpy(),
                deliver_images({name: value.numpy() for name, value in images.items()}, out))


@pytest.fixture
def fake_cuda(monkeypatch):
    """Let CudaGraphPath run on the CPU: fake capture, fake pool handle, no synchronize."""
    pool = object()
    monkeypatch.setattr(torch.cuda, 'graph_pool_handle', lambda: pool)
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda *args, **kwargs: None)
    monkeypatch.setattr(cuda_graphs, 'CapturedFrame', _FakeCapture)
    monkeypatch.setattr(_FakeCapture, 'made', [])
    monkeypatch.setattr(_FakeCapture, 'failing', ())
    return pool


def _paths(loaded: LoadedModel, max_graphs: int = 4):
    """Build a CudaGraphPath and an EagerPath on one folded CPU network and pipeline."""
    network = prepare_network(loaded, torch.device('cpu'), torch.float32, fold=True,
                              channels_last=False).network
    pipeline = FramePipeline(loaded.metadata, NET_SIZE, torch.device('cpu'), torch.float32)
    graphs = cuda_graphs.CudaGraphPath(network, pipeline, ['BatchNorm folded'],
                                       max_graphs=max_graphs)
    return graphs, EagerPath(network, pipeline, 'optimised')


@torch.inference_mode()
def test_cuda_path_failed_size_runs_eagerly_others_get_graphs(loaded, fake_cuda, core_logs):
    """One size's capture fails: it runs eagerly (same labels), unretried; others capture."""
    _FakeCapture.failing = ((70, 90),)
    path, eager = _paths(loaded)
    odd, fine = _image(70, 90, seed=1), _image(50, 60, seed=2)
    with core_logs.at_level('WARNING'):
        for _ in range(3):
            got = path.run(odd, with_confidence=True)
            expected = eager.run(odd, with_confidence=True)
            np.testing.assert_array_equal(got.labels, expected.labels)
            np.testing.assert_array_equal(got.confidence, expected.confidence)
    assert core_logs.text.count('capture of (70, 90) failed (simulated)') == 1
    assert list(path.graphs.failures) == [(70, 90, False, True, ())]
    for _ in range(2):
        got = path.run(fine)
        np.testing.assert_array_equal(got.labels, eager.run(fine).labels)
    assert [capture.frame_shape for capture in _FakeCapture.made] == [(50, 60)]
    assert _FakeCapture.made[0].runs == 2
    assert path.cuda_graphs
    text = path.describe()
    assert text.startswith('optimised (BatchNorm folded, CUDA graphs')
    assert 'CUDA graph capture failed for 90x70 with confidence' in text


@torch.inference_mode()
def test_cuda_path_captures_share_one_pool_and_key_on_bgr_confidence(loaded, fake_cuda):
    """Every capture gets the path's one pool; bgr and confidence are their own captures."""
    path, _ = _paths(loaded)
    image = _image(64, 96)
    path.run(image)
    path.run(image, bgr=True)
    path.run(image, with_confidence=True)
    path.run(image)
    assert path.pool is fake_cuda
    assert [capture.pool for capture in _FakeCapture.made] == [fake_cuda] * 3
    assert path.graphs.captures == 3 and (64, 96, True, False, ()) in path.graphs


def test_cuda_path_warm_up_captures_camera_sizes(loaded, fake_cuda):
    """warm_up(sizes) captures each (width, height) for RGB and BGR; default: network size."""
    path, _ = _paths(loaded)
    path.warm_up([(128, 72), (96, 64)])
    assert set(path.graphs._entries) == {(72, 128, False, False, ()), (72, 128, True, False, ()),
                                         (64, 96, False, False, ()), (64, 96, True, False, ())}
    default, _ = _paths(loaded)
    default.warm_up()
    assert list(default.graphs._entries) == [(64, 96, False, False, ())]  # no (h+2, w+2) capture


def test_completion_event_is_blocking(monkeypatch):
    """The per-frame wait uses a blocking event (the thread sleeps, no spinning core)."""
    made = []
    monkeypatch.setattr(torch.cuda, 'Event', lambda **kwargs: made.append(kwargs) or 'event')
    assert graph_capture.completion_event() == 'event'
    assert made == [{'blocking': True}]


# --- the node's images in the frame's graph: DeviceImages against the numpy renderer ----


@pytest.mark.parametrize('alpha', [0.0, 0.37, 0.5, 1.0])
def test_device_images_equal_the_numpy_renderer_bit_for_bit(alpha):
    """Colour, overlay and drivable from torch equal OutputRenderer's, ids past the palette too."""
    rng = np.random.default_rng(int(alpha * 100))
    labels = rng.integers(0, 14, (37, 53), dtype=np.uint8)  # 11 classes, 11-13 unpaletted
    labels[0, :3] = (255, 11, 0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    colors = CAMVID_11.colors
    expected = OutputRenderer(colors, [3, 4], alpha).render(labels, rgb, DEVICE_IMAGES)
    device_images = DeviceImages(torch.device('cpu'))
    device_images.configure(colors, [3, 4], alpha)
    got = device_images.render(torch.from_numpy(labels), torch.from_numpy(rgb), DEVICE_IMAGES)
    assert set(got) == set(DEVICE_IMAGES)
    for name in DEVICE_IMAGES:
        assert got[name].dtype == torch.uint8
        np.testing.assert_array_equal(got[name].numpy(), expected[name], err_msg=name)
    only = device_images.render(torch.from_numpy(labels), torch.from_numpy(rgb), ('drivable',))
    assert list(only) == ['drivable']


def test_device_images_reject_a_bad_alpha_and_unknown_names():
    """configure() checks alpha; image names outside DEVICE_IMAGES are a ValueError."""
    with pytest.raises(ValueError, match='overlay_alpha'):
        DeviceImages(torch.device('cpu')).configure(CAMVID_11.colors, [3], 1.5)
    with pytest.raises(ValueError, match="unknown image.*'labels'"):
        check_image_names(['labels', 'colored'])
    assert check_image_names(['overlay', 'colored', 'overlay']) == ('colored', 'overlay')


@torch.inference_mode()
def test_cuda_path_images_come_from_the_graph_and_follow_reconfiguration(loaded, fake_cuda):
    """
    Images asked of the CUDA path are made in its capture, equal the eager path's host ones.

    BGR frames too; a new configure_images() changes them without a new capture.
    """
    path, eager = _paths(loaded)
    for candidate in (path, eager):
        candidate.configure_images(CAMVID_11.colors, [3], 0.5)
    image = _image(48, 80, seed=4)
    for bgr in (False, True):
        got = path.run(image, bgr=bgr, images=('overlay', 'drivable'))
        expected = eager.run(image, bgr=bgr, images=('overlay', 'drivable'))
        assert set(got.images) == {'overlay', 'drivable'}
        for name in got.images:
            np.testing.assert_array_equal(got.images[name], expected.images[name])
    assert (48, 80, True, False, ('drivable', 'overlay')) in path.graphs
    captures = path.graphs.captures
    path.configure_images(CAMVID_11.colors, [3, 4, 5], 1.0)
    got = path.run(image, images=('overlay', 'drivable'))
    assert path.graphs.captures == captures
    np.testing.assert_array_equal(got.images['drivable'], (np.isin(got.labels, [3, 4, 5]) * 255))
    palette = np.asarray(CAMVID_11.colors, dtype=np.uint8)
    np.testing.assert_array_equal(got.images['overlay'], palette[got.labels])


def test_segmenter_images_need_configuration_and_known_names(loaded):
    """segment(images=...) before configure_images, or with an unknown name, is a ValueError."""
    segmenter = Segmenter(loaded, device='cpu', optimize=False, warmup=False)
    image = _image(64, 96)
    with pytest.raises(ValueError, match='before configure_images'):
        segmenter.segment(image, images=('colored',))
    segmenter.configure_images(CAMVID_11.colors, [3], 0.5)
    with pytest.raises(ValueError, match="unknown image.*'confidence'"):
        segmenter.segment(image, images=('confidence',))
    assert not segmenter.images_on_device
    result = segmenter.segment(image, images=('colored',))
    palette = np.asarray(CAMVID_11.colors, dtype=np.uint8)
    np.testing.assert_array_equal(result.images['colored'], palette[result.labels])


def test_deliver_images_copies_once_into_buffers_or_fresh_arrays():
    """Images with a buffer are written into it (returned as is); the others are copies."""
    pinned = {'colored': np.full((2, 3, 3), 7, np.uint8),
              'drivable': np.full((2, 3), 255, np.uint8)}
    buffer = np.zeros((2, 3), np.uint8)
    got = deliver_images(pinned, {'drivable': buffer})
    assert got['drivable'] is buffer and (buffer == 255).all()
    assert got['colored'] is not pinned['colored']
    np.testing.assert_array_equal(got['colored'], pinned['colored'])
    pinned['colored'][:] = 0  # the next frame overwrites the pinned buffer
    assert (got['colored'] == 7).all()
    assert deliver_images(pinned, None)['drivable'] is not pinned['drivable']


@torch.inference_mode()
def test_images_land_in_caller_buffers_on_both_paths(loaded, fake_cuda):
    """segment(out=...) writes the asked images into the caller's buffers on both paths."""
    path, eager = _paths(loaded)
    image = _image(48, 80, seed=6)
    results = []
    for candidate in (path, eager):
        candidate.configure_images(CAMVID_11.colors, [3], 0.5)
        out = {'overlay': np.zeros((48, 80, 3), np.uint8),
               'drivable': np.zeros((48, 80), np.uint8)}
        got = candidate.run(image, images=('overlay', 'drivable', 'colored'), out=out)
        assert got.images['overlay'] is out['overlay']
        assert got.images['drivable'] is out['drivable']
        assert got.images['colored'].shape == (48, 80, 3)
        results.append(got)
    for name in ('overlay', 'drivable', 'colored'):
        np.testing.assert_array_equal(results[0].images[name], results[1].images[name])


@torch.inference_mode()
def test_node_state_sets_device_tables_on_the_inference_thread_only(loaded, fake_cuda):
    """
    A parameter change builds a NodeState on the executor thread: it must not touch the device.

    The tables reach the device when the inference thread prepares the state
    for its next frame, once per state.
    """
    from enet_ros.node.parameter_table import PARAMETERS
    from enet_ros.node.settings import runtime_settings
    from enet_ros.node.frame_setup import FrameSetup as NodeState

    segmenter = Segmenter(loaded, device='cpu', optimize=False, warmup=False)
    segmenter.path, _ = _paths(loaded)
    assert segmenter.images_on_device
    calls = []
    configure = segmenter.configure_images
    segmenter.configure_images = lambda *args: (calls.append(args), configure(*args))
    values = {name: default for name, (default, _) in PARAMETERS.items()}
    values.update(drivable_classes=['Road', 'Pavement'], overlay_alpha=0.25)
    state = NodeState(segmenter, runtime_settings(values, CAMVID_11.names))
    assert calls == []
    state.prepare_device_images()
    state.prepare_device_images()
    assert calls == [(CAMVID_11.colors, [3, 4], 0.25)]
    got = segmenter.segment(_image(48, 80), images=('drivable',))
    np.testing.assert_array_equal(got.images['drivable'], np.isin(got.labels, [3, 4]) * 255)
    values.update(min_confidence=0.5)  # labels voided on the host: images drawn there too
    host = NodeState(segmenter, runtime_settings(values, CAMVID_11.names))
    host.prepare_device_images()
    assert not host.images_on_device and len(calls) == 1


class _FakeBatchCapture:
    """Stands in for CapturedBatch: runs the batch pipeline on the CPU; fails for some batches."""

    failing: Tuple = ()
    made: List['_FakeBatchCapture'] = []

    def __init__(self, pipeline, batch, frame_shape, device, with_confidence=False,
                 warmup_iterations=3, pool=None, images=()):
        if (batch, tuple(frame_shape)) in self.failing:
            raise RuntimeError(f'capture of {batch} x {frame_shape} failed (simulated)')
        self.pipeline, self.batch, self.frame_shape = pipeline, batch, tuple(frame_shape)
        self.pool = pool
        self.runs = 0
        _FakeBatchCapture.made.append(self)

    def run(self, images, out=None):
        assert len(images) == self.batch
        self.runs += 1
        frames = torch.from_numpy(np.stack([np.ascontiguousarray(i) for i in images]))
        labels, confidence, rendered = self.pipeline(frames)
        out = out or [None] * self.batch
        return [(labels[i].numpy().copy(),
                 None if confidence is None else confidence[i].numpy().copy(),
                 deliver_images({name: value[i].numpy() for name, value in rendered.items()},
                                out[i]))
                for i in range(self.batch)]


@torch.inference_mode()
def test_cuda_path_batches_run_the_batch_pipeline_and_split_sizes(
        loaded, fake_cuda, monkeypatch, core_logs):
    """
    run_batch: a group of one size is one batch capture running device_pipeline_batch.

    Its labels, confidence and images equal the eager path's frame by frame (on the CPU);
    a group of one runs the single-frame graph; a failed batch capture runs frame by frame.
    """
    monkeypatch.setattr(cuda_graphs, 'CapturedBatch', _FakeBatchCapture)
    monkeypatch.setattr(_FakeBatchCapture, 'made', [])
    monkeypatch.setattr(_FakeBatchCapture, 'failing', ((2, (50, 60)),))
    path, eager = _paths(loaded)
    assert path.batch_forward and not eager.batch_forward
    for each in (path, eager):
        each.configure_images(CAMVID_11.colors, [3, 4], 0.4)
    names = ('colored', 'drivable', 'overlay')
    frames = [_image(70, 90, 1), _image(50, 60, 2), _image(70, 90, 3), _image(33, 41, 4),
              _image(50, 60, 5), _image(70, 90, 6)]
    bgr = [False, True, True, False, False, True]
    inputs = [frame[..., ::-1] if flag else frame for frame, flag in zip(frames, bgr)]
    with core_logs.at_level('WARNING'):
        results = path.run_batch(inputs, bgr, with_confidence=True, names=names)
    for image, flag, got in zip(inputs, bgr, results):
        expected = eager.run(image, flag, with_confidence=True, images=names)
        np.testing.assert_array_equal(got.labels, expected.labels)
        np.testing.assert_allclose(got.confidence, expected.confidence, atol=1e-6)
        for name in names:
            np.testing.assert_array_equal(got.images[name], expected.images[name], err_msg=name)
    assert [(c.batch, c.frame_shape) for c in _FakeBatchCapture.made] == [(3, (70, 90))]
    assert _FakeBatchCapture.made[0].pool is fake_cuda
    assert list(path.batch_graphs.failures) == [(2, 50, 60, (True, False), True, names)]
    assert core_logs.text.count('failed (simulated)') == 1
    # the failed pair and the lone 33x41 frame ran the single-frame graphs
    assert sorted(c.frame_shape for c in _FakeCapture.made) == [(33, 41), (50, 60), (50, 60)]
