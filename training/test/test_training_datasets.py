"""Dataset loaders on tiny trees in the official CamVid and Cityscapes layouts."""

from pathlib import Path

from enet_ros.labels import CAMVID_11, CITYSCAPES_19
from enet_training.datasets import (camvid_pairs, cityscapes_pairs, DatasetError, make_dataset,
                                    read_image, read_label)
import numpy as np
import pytest
from tiny_datasets import (CITYSCAPES_IDS, cityscapes_label, make_camvid_tree,
                           make_cityscapes_tree, scene, write_gray, write_rgb)


@pytest.fixture
def camvid_tree(tmp_path: Path) -> Path:
    """Build a CamVid tree: 4 train frames (2 JPEG), 2 val frames."""
    return make_camvid_tree(tmp_path / 'camvid', {'train': 4, 'val': 2}, jpeg_every=2)


@pytest.fixture
def cityscapes_tree(tmp_path: Path) -> Path:
    """Build a Cityscapes tree: train in two cities, val in one."""
    return make_cityscapes_tree(tmp_path / 'cityscapes',
                                {'train': {'aachen': 2, 'bremen': 1}, 'val': {'lindau': 2}})


def test_camvid_pairs_png_and_jpeg(camvid_tree: Path):
    """Frames of both extensions pair with the PNG label of the same stem, sorted."""
    pairs = camvid_pairs(camvid_tree, 'train')
    assert [(i.name, label.name) for i, label in pairs] == [
        ('0001TP_000000.jpg', '0001TP_000000.png'), ('0001TP_000001.png', '0001TP_000001.png'),
        ('0001TP_000002.jpg', '0001TP_000002.png'), ('0001TP_000003.png', '0001TP_000003.png')]
    assert all(label.parent.name == 'trainannot' for _, label in pairs)


def test_camvid_items(camvid_tree: Path):
    """Items are (HxWx3 uint8 RGB, HxW uint8 label) with the stored values."""
    dataset = make_dataset('camvid', camvid_tree, 'val')
    assert len(dataset) == 2 and dataset.table is CAMVID_11
    image, label = dataset[1]
    expected_image, expected_label = scene(5)  # the tree's 6th scene: val index 1
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    assert label.shape == (48, 64) and label.dtype == np.uint8
    np.testing.assert_array_equal(label, expected_label)
    np.testing.assert_array_equal(image, expected_image)  # PNG: lossless, and RGB order
    assert set(np.unique(label)) == {0, 1, 3, 11}


def test_camvid_jpeg_frame_is_rgb(camvid_tree: Path):
    """A JPEG frame reads back close to what was written, in RGB order."""
    dataset = make_dataset('camvid', camvid_tree, 'train')
    assert dataset.pairs[0][0].suffix == '.jpg'
    image, label = dataset[0]
    building = image[label == CAMVID_11.names.index('Building')].mean(axis=0)
    np.testing.assert_allclose(building, CAMVID_11.colors[1], atol=15)  # (128, 0, 0): RGB


def test_cityscapes_pairs(cityscapes_tree: Path):
    """Every *_leftImg8bit.png pairs with its city's *_gtFine_labelIds.png."""
    pairs = cityscapes_pairs(cityscapes_tree, 'train')
    assert [i.name for i, _ in pairs] == ['aachen_000000_000000_leftImg8bit.png',
                                          'aachen_000000_000001_leftImg8bit.png',
                                          'bremen_000000_000000_leftImg8bit.png']
    for image, label in pairs:
        assert label.name == image.name.replace('_leftImg8bit.png', '_gtFine_labelIds.png')
        assert label.parent == cityscapes_tree / 'gtFine' / 'train' / image.parent.name
    assert len(cityscapes_pairs(cityscapes_tree, 'val')) == 2


def test_cityscapes_items_mapped(cityscapes_tree: Path):
    """Items carry train ids: road 0, car 13, sky 10, unlabeled and ego vehicle 255."""
    dataset = make_dataset('cityscapes', cityscapes_tree, 'train')
    assert dataset.table is CITYSCAPES_19
    _, label = dataset[0]
    raw = cityscapes_label(100)
    expected = {CITYSCAPES_IDS['road']: 0, CITYSCAPES_IDS['car']: 13, CITYSCAPES_IDS['sky']: 10,
                CITYSCAPES_IDS['unlabeled']: 255, CITYSCAPES_IDS['ego vehicle']: 255}
    for label_id, train_id in expected.items():
        assert np.any(raw == label_id)
        assert np.all(label[raw == label_id] == train_id), label_id
    assert set(np.unique(label)) == {0, 10, 13, 255}


def _expect(error_fragment: str, path: Path, action):
    with pytest.raises(DatasetError) as caught:
        action()
    message = str(caught.value)
    assert str(path) in message, message
    assert error_fragment in message, message


def test_camvid_bad_label_id(camvid_tree: Path):
    """A CamVid label with an id that is neither a class nor void names the file."""
    label_path = camvid_tree / 'valannot' / '0001TP_000001.png'
    label = np.zeros((48, 64), np.uint8)
    label[3, 4] = 12
    label[5, 6] = 200
    write_gray(label_path, label)
    dataset = make_dataset('camvid', camvid_tree, 'val')
    _expect('[12, 200]', label_path, lambda: dataset[1])
    dataset[0]  # the other file is fine


def test_cityscapes_unknown_label_id(cityscapes_tree: Path):
    """A labelIds file with an id outside the official table (e.g. a trainIds image) fails."""
    label_path = cityscapes_tree / 'gtFine' / 'val' / 'lindau' / \
        'lindau_000000_000000_gtFine_labelIds.png'
    label = cityscapes_label(0)
    label[0, 0] = 255
    write_gray(label_path, label)
    dataset = make_dataset('cityscapes', cityscapes_tree, 'val')
    _expect('[255]', label_path, lambda: dataset[0])


def test_size_mismatch(camvid_tree: Path):
    """An image and a label of different sizes name both files."""
    label_path = camvid_tree / 'trainannot' / '0001TP_000001.png'
    write_gray(label_path, np.zeros((40, 64), np.uint8))
    dataset = make_dataset('camvid', camvid_tree, 'train')
    _expect('64x40', label_path, lambda: dataset[1])
    _expect('64x48', camvid_tree / 'train' / '0001TP_000001.png', lambda: dataset[1])


def test_unreadable_image(camvid_tree: Path):
    """A frame that is not an image names the file."""
    image_path = camvid_tree / 'train' / '0001TP_000003.png'
    image_path.write_bytes(b'not a png at all')
    dataset = make_dataset('camvid', camvid_tree, 'train')
    _expect('cannot read image', image_path, lambda: dataset[3])


def test_unreadable_label(camvid_tree: Path):
    """A truncated label PNG names the file."""
    label_path = camvid_tree / 'trainannot' / '0001TP_000001.png'
    label_path.write_bytes(label_path.read_bytes()[:40])
    dataset = make_dataset('camvid', camvid_tree, 'train')
    _expect('cannot read label', label_path, lambda: dataset[1])


def test_colour_label_refused(tmp_path: Path):
    """A 3-channel label (a colour rendering) is not a label image."""
    path = write_rgb(tmp_path / 'label.png', np.zeros((4, 5, 3), np.uint8))
    _expect('single-channel', path, lambda: read_label(path))


def test_missing_files_and_folders(tmp_path: Path, camvid_tree: Path, cityscapes_tree: Path):
    """Missing folders, missing labels and empty splits are DatasetErrors naming the path."""
    _expect('does not exist', tmp_path / 'nowhere' / 'train',
            lambda: camvid_pairs(tmp_path / 'nowhere', 'train'))
    label_path = camvid_tree / 'trainannot' / '0001TP_000002.png'
    label_path.unlink()
    _expect('has no label', label_path, lambda: camvid_pairs(camvid_tree, 'train'))
    (tmp_path / 'empty' / 'test').mkdir(parents=True)
    (tmp_path / 'empty' / 'testannot').mkdir()
    _expect('no images', tmp_path / 'empty' / 'test',
            lambda: camvid_pairs(tmp_path / 'empty', 'test'))
    _expect('does not exist', cityscapes_tree / 'leftImg8bit' / 'test',
            lambda: cityscapes_pairs(cityscapes_tree, 'test'))
    label_path = cityscapes_tree / 'gtFine' / 'val' / 'lindau' / \
        'lindau_000000_000001_gtFine_labelIds.png'
    label_path.unlink()
    _expect('has no label', label_path, lambda: cityscapes_pairs(cityscapes_tree, 'val'))
    _expect('cannot read image', tmp_path / 'x.png', lambda: read_image(tmp_path / 'x.png'))
    with pytest.raises(DatasetError, match='unknown dataset'):
        make_dataset('kitti', camvid_tree, 'train')


def test_joined_splits(camvid_tree: Path, cityscapes_tree: Path):
    """'train+val' is both splits' frames in that order, for CamVid and Cityscapes alike."""
    joined = make_dataset('camvid', camvid_tree, 'train+val')
    assert joined.pairs == camvid_pairs(camvid_tree, 'train') + camvid_pairs(camvid_tree, 'val')
    assert len(joined) == 6 and joined.table is CAMVID_11
    cities = make_dataset('cityscapes', cityscapes_tree, 'val+train')
    assert cities.pairs == (cityscapes_pairs(cityscapes_tree, 'val')
                            + cityscapes_pairs(cityscapes_tree, 'train'))
    assert cities.label_map is not None and cities.table is CITYSCAPES_19
    for bad in ('train+', 'train+train', '+val'):
        with pytest.raises(DatasetError, match='split'):
            make_dataset('camvid', camvid_tree, bad)
    with pytest.raises(DatasetError, match="'test'"):
        make_dataset('camvid', camvid_tree, 'train+test')
