"""Class weights (1 / ln(c + p), cached) and the joint image / label transforms."""

import json
from pathlib import Path
import random
from typing import Tuple

import cv2
from enet_ros.labels import CAMVID_11, CITYSCAPES_19
import enet_training.class_weights as class_weights
from enet_training.class_weights import cached_enet_weights, class_histogram, enet_weights
from enet_training.datasets import make_dataset
from enet_training.run_setup import make_datasets, network_sizes
from enet_training.transforms import collate, TrainTransform
import numpy as np
import pytest
from tiny_datasets import make_camvid_tree, make_cityscapes_tree, scene
import torch
from train_flags import parse_train_flags

CITYSCAPES_FRAME = (2048, 1024)  # width, height of a real Cityscapes frame


def test_enet_weights_known_histogram():
    """Weights are 1 / ln(1.02 + p) with p the class's share of the pixels."""
    weights = enet_weights([50, 30, 20, 0])
    expected = [1 / np.log(1.02 + 0.5), 1 / np.log(1.02 + 0.3), 1 / np.log(1.02 + 0.2),
                1 / np.log(1.02)]
    np.testing.assert_allclose(weights, expected)
    np.testing.assert_allclose(enet_weights([1, 3], c=1.5), [1 / np.log(1.75),
                                                             1 / np.log(2.25)])
    # Rare classes weigh more, and the weights are bounded by 1 / ln(c).
    assert np.all(np.diff(weights) > 0) and weights.max() == pytest.approx(1 / np.log(1.02))


def test_enet_weights_need_pixels():
    """An all-zero histogram is an error, not a division by zero."""
    with pytest.raises(ValueError, match='no labelled pixels'):
        enet_weights([0, 0, 0])


def test_class_histogram_excludes_void(tmp_path: Path):
    """The histogram counts class pixels of the untransformed labels; void is left out."""
    root = make_camvid_tree(tmp_path / 'camvid', {'train': 3})
    dataset = make_dataset('camvid', root, 'train')
    expected = np.zeros(CAMVID_11.num_classes, np.int64)
    for seed in range(3):
        _, label = scene(seed)
        expected += np.bincount(label.ravel(), minlength=12)[:11]
    counts = class_histogram(dataset)
    np.testing.assert_array_equal(counts, expected)
    assert counts.sum() == 3 * 48 * (64 - 2)  # everything but the void strips


def test_weights_cache_reused(tmp_path: Path, monkeypatch):
    """The counts are cached by file list and read back instead of rescanning the labels."""
    root = make_camvid_tree(tmp_path / 'camvid', {'train': 3, 'val': 1})
    dataset = make_dataset('camvid', root, 'train')
    cache_dir = tmp_path / 'cache'
    first = cached_enet_weights(dataset, cache_dir)
    files = list(cache_dir.glob('class_counts_*.json'))
    assert len(files) == 1
    stored = json.loads(files[0].read_text())
    np.testing.assert_array_equal(stored['counts'], class_histogram(dataset))
    assert stored['classes'] == list(CAMVID_11.names)
    np.testing.assert_allclose(first, enet_weights(stored['counts']))

    def no_scan(_):
        raise AssertionError('the labels were scanned again')

    monkeypatch.setattr(class_weights, 'class_counts', no_scan)
    np.testing.assert_array_equal(cached_enet_weights(dataset, cache_dir), first)
    np.testing.assert_allclose(cached_enet_weights(dataset, cache_dir, c=1.1),
                               enet_weights(stored['counts'], c=1.1))
    # Another file list is another cache entry (and here needs a scan).
    with pytest.raises(AssertionError, match='scanned again'):
        cached_enet_weights(make_dataset('camvid', root, 'val'), cache_dir)


def test_train_transform_crop_flip_nearest():
    """Crops to the size, keeps label values (nearest), pads with void, flips jointly."""
    image, label = scene(0)
    transform = TrainTransform((32, 24), void_id=11, scale_range=(0.5, 1.5))
    for seed in range(20):
        random.seed(seed)
        out_image, out_label = transform(image, label)
        assert out_image.shape == (24, 32, 3) and out_label.shape == (24, 32)
        assert out_image.dtype == np.uint8 and out_label.dtype == np.uint8
        assert out_image.flags['C_CONTIGUOUS'] and out_label.flags['C_CONTIGUOUS']
        assert set(np.unique(out_label)) <= {0, 1, 3, 11}


def test_train_transform_pads_with_void_and_black():
    """A crop larger than the (unscaled) image is padded: label void, image black."""
    image = np.full((8, 8, 3), 200, np.uint8)
    label = np.full((8, 8), 3, np.uint8)
    out_image, out_label = TrainTransform((16, 8), void_id=11, scale_range=(1, 1),
                                          flip=False)(image, label)
    np.testing.assert_array_equal(out_label[:, :8], 3)
    np.testing.assert_array_equal(out_label[:, 8:], 11)
    assert np.all(out_image[:, 8:] == 0) and np.all(out_image[:, :8] == 200)


def test_train_transform_flip_is_joint():
    """Image and label flip together: the class stays attached to its colour."""
    image, label = scene(1)
    palette = np.array(CAMVID_11.colors, dtype=float)
    for seed in range(6):
        random.seed(seed)
        out_image, out_label = TrainTransform((64, 48), 11, (1, 1))(image, label)
        labelled = out_label < 11
        distance = np.abs(out_image[labelled] - palette[out_label[labelled]]).mean()
        assert distance < 12


def test_collate():
    """Pairs stack into Nx3xHxW uint8 and NxHxW int64 tensors."""
    samples = [scene(0), scene(1)]
    images, labels = collate(samples)
    assert images.shape == (2, 3, 48, 64) and images.dtype == torch.uint8
    assert labels.shape == (2, 48, 64) and labels.dtype == torch.int64
    assert torch.equal(images[1].permute(1, 2, 0), torch.from_numpy(samples[1][0]))
    assert torch.equal(labels[0], torch.from_numpy(samples[0][1]).long())


def _previous_train_transform(image: np.ndarray, label: np.ndarray, crop: Tuple[int, int],
                              void_id: int, scale_range: Tuple[float, float], flip: bool = True
                              ) -> Tuple[np.ndarray, np.ndarray]:
    """Return the pair as TrainTransform augmented it before the network-scale resize."""
    scale = random.uniform(*scale_range)
    if scale != 1.0:
        height, width = label.shape
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
    pad_bottom, pad_right = max(0, crop[1] - label.shape[0]), max(0, crop[0] - label.shape[1])
    if pad_bottom or pad_right:
        image = cv2.copyMakeBorder(image, 0, pad_bottom, 0, pad_right, cv2.BORDER_CONSTANT,
                                   value=(0, 0, 0))
        label = cv2.copyMakeBorder(label, 0, pad_bottom, 0, pad_right, cv2.BORDER_CONSTANT,
                                   value=void_id)
    top = random.randint(0, label.shape[0] - crop[1])
    left = random.randint(0, label.shape[1] - crop[0])
    image = image[top:top + crop[1], left:left + crop[0]]
    label = label[top:top + crop[1], left:left + crop[0]]
    if flip and random.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def _assert_same_as_before(transform: TrainTransform, samples, seeds=range(12)):
    crop = (transform.crop_width, transform.crop_height)
    for image, label in samples:
        for seed in seeds:
            random.seed(seed)
            expected = _previous_train_transform(image, label, crop, transform.void_id,
                                                 transform.scale_range, transform.flip)
            random.seed(seed)
            got = transform(image, label)
            np.testing.assert_array_equal(got[0], expected[0])
            np.testing.assert_array_equal(got[1], expected[1])


@pytest.mark.parametrize('crop', [(64, 48), (32, 24)])
def test_train_transform_frame_at_network_size_as_before(crop):
    """A frame already at the network size (CamVid) is augmented exactly as before."""
    for input_size in ((64, 48), None):
        transform = TrainTransform(crop, 11, (0.5, 1.5), input_size=input_size)
        _assert_same_as_before(transform, [scene(0), scene(1)], seeds=range(20))


def test_train_transform_camvid_data_as_before(camvid_root: Path):
    """Real CamVid (480x360) with the default flags trains on exactly the old crops."""
    args = parse_train_flags(data=str(camvid_root))
    input_size, crop = network_sizes(args)
    train_set, _ = make_datasets(args, input_size, crop)
    transform = train_set.transform
    assert transform.input_size == (480, 360) and (transform.crop_width, transform.crop_height) \
        == (480, 360) and transform.scale_range == (0.75, 1.5)
    _assert_same_as_before(transform, [train_set.load(i) for i in (0, 100)], seeds=range(4))


@pytest.fixture(scope='module')
def cityscapes_frames(tmp_path_factory) -> Path:
    """Build a Cityscapes tree of full-size 2048x1024 frames: one train, one val."""
    return make_cityscapes_tree(tmp_path_factory.mktemp('data') / 'cityscapes',
                                {'train': {'aachen': 1}, 'val': {'lindau': 1}},
                                size=CITYSCAPES_FRAME)


def test_cityscapes_frame_arrives_whole_at_network_size(cityscapes_frames: Path):
    """With --scale 1 1 a 2048x1024 frame becomes the network input: all of it, at its size."""
    args = parse_train_flags('--dataset', 'cityscapes', '--input-size', '256', '128',
                             '--scale', '1', '1', data=str(cityscapes_frames))
    input_size, crop = network_sizes(args)
    train_set, _ = make_datasets(args, input_size, crop)
    frame, frame_label = train_set.load(0)
    assert frame_label.shape == (1024, 2048)
    # The whole frame resized as the Segmenter does (antialiased), labels by nearest neighbour.
    whole = cv2.resize(frame, (256, 128), interpolation=cv2.INTER_AREA)
    whole_label = cv2.resize(frame_label, (256, 128), interpolation=cv2.INTER_NEAREST)
    flips = set()
    for seed in range(8):
        random.seed(seed)
        image, label = train_set[0]
        assert image.shape == (128, 256, 3) and label.shape == (128, 256)
        flipped = not np.array_equal(image, whole)
        flips.add(flipped)
        if flipped:
            image, label = image[:, ::-1], label[:, ::-1]
        np.testing.assert_array_equal(image, whole)
        np.testing.assert_array_equal(label, whole_label)
    assert flips == {False, True}
    # Train ids: road, sky, car and the unlabeled strip's void, which starts column 0.
    assert set(np.unique(whole_label)) == {0, 10, 13, CITYSCAPES_19.void_id}


@pytest.mark.parametrize('scale', [0.5, 2.0])
def test_cityscapes_scale_is_relative_to_network_size(scale: float, cityscapes_frames: Path,
                                                      monkeypatch):
    """Scale s shows the frame at s times the network input: 0.5 all of it in a quarter."""
    dataset = make_dataset('cityscapes', cityscapes_frames, 'train')
    frame, frame_label = dataset.load(0)
    transform = TrainTransform((256, 128), CITYSCAPES_19.void_id, (0.5, 2.0), flip=False,
                               input_size=(256, 128))
    size = (round(256 * scale), round(128 * scale))
    assert transform.scaled_size(*CITYSCAPES_FRAME, scale) == size
    # The previous transform scaled the 2048x1024 frame itself: 8x the network's scale.
    assert TrainTransform((256, 128), 255, flip=False).scaled_size(*CITYSCAPES_FRAME, scale) \
        == (round(2048 * scale), round(1024 * scale))
    monkeypatch.setattr(random, 'uniform', lambda low, high: scale)
    monkeypatch.setattr(random, 'randint', lambda low, high: low)  # the top-left crop
    image, label = transform(frame, frame_label)
    assert image.shape == (128, 256, 3) and label.shape == (128, 256)
    scaled = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    scaled_label = cv2.resize(frame_label, size, interpolation=cv2.INTER_NEAREST)
    shown = (min(128, size[1]), min(256, size[0]))
    np.testing.assert_array_equal(image[:shown[0], :shown[1]], scaled[:shown[0], :shown[1]])
    np.testing.assert_array_equal(label[:shown[0], :shown[1]],
                                  scaled_label[:shown[0], :shown[1]])
    if scale < 1:  # the whole frame in the top-left quarter, padded with void and black
        assert np.all(label[64:] == 255) and np.all(label[:, 128:] == 255)
        assert np.all(image[64:] == 0) and np.all(image[:, 128:] == 0)


def test_train_transform_enlarges_bilinearly():
    """A frame smaller than the network input is enlarged bilinearly, labels by nearest."""
    image, label = scene(4, (32, 24))
    transform = TrainTransform((64, 48), 11, (1, 1), flip=False, input_size=(64, 48))
    out_image, out_label = transform(image, label)
    np.testing.assert_array_equal(out_image, cv2.resize(image, (64, 48),
                                                        interpolation=cv2.INTER_LINEAR))
    np.testing.assert_array_equal(out_label, cv2.resize(label, (64, 48),
                                                        interpolation=cv2.INTER_NEAREST))
