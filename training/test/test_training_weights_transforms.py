"""Class weights (1 / ln(c + p), cached) and the joint image / label transforms."""

import json
from pathlib import Path
import random

from enet_ros.labels import CAMVID_11
import enet_training.class_weights as class_weights
from enet_training.class_weights import cached_enet_weights, class_histogram, enet_weights
from enet_training.datasets import make_dataset
from enet_training.transforms import collate, TrainTransform
import numpy as np
import pytest
from tiny_datasets import make_camvid_tree, scene
import torch


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

    monkeypatch.setattr(class_weights, 'class_histogram', no_scan)
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
