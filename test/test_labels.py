"""Class tables: Cityscapes against the official table, CamVid against the dataset's README."""

from cityscapesscripts.helpers.labels import labels as cityscapes_labels
from enet_ros.labels import (CAMVID_11, CITYSCAPES_19, CITYSCAPES_ID_TO_TRAIN_ID,
                             cityscapes_id_to_train_id, CITYSCAPES_LABEL_IDS, CLASS_TABLES)
import numpy as np
import pytest


def test_cityscapes_19_matches_official_table():
    """Names and colours in train-id order equal cityscapesscripts' labels table."""
    official = sorted((label for label in cityscapes_labels
                       if 0 <= label.trainId < 255 and not label.ignoreInEval),
                      key=lambda label: label.trainId)
    assert [label.trainId for label in official] == list(range(19))
    assert CITYSCAPES_19.names == tuple(label.name for label in official)
    assert CITYSCAPES_19.colors == tuple(tuple(label.color) for label in official)
    assert CITYSCAPES_19.void_id == 255
    assert CITYSCAPES_19.drivable == ('road',)


def test_camvid_11_matches_dataset_readme():
    """The CamVid ids, names and colours of the dataset's README (void 11)."""
    readme = [('Sky', (128, 128, 128)), ('Building', (128, 0, 0)), ('Pole', (192, 192, 128)),
              ('Road', (128, 64, 128)), ('Pavement', (60, 40, 222)), ('Tree', (128, 128, 0)),
              ('SignSymbol', (192, 128, 128)), ('Fence', (64, 64, 128)), ('Car', (64, 0, 128)),
              ('Pedestrian', (64, 64, 0)), ('Bicyclist', (0, 128, 192))]
    assert CAMVID_11.names == tuple(name for name, _ in readme)
    assert CAMVID_11.colors == tuple(color for _, color in readme)
    assert CAMVID_11.void_id == 11
    assert CAMVID_11.drivable == ('Road',)


@pytest.mark.parametrize('table', [CAMVID_11, CITYSCAPES_19])
def test_tables_are_consistent(table):
    """Colours per class, void outside [0, C), drivable classes known, registered by name."""
    assert table.num_classes == len(table.names) == len(table.colors)
    assert len(set(table.names)) == table.num_classes
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in table.colors)
    assert table.void_id >= table.num_classes
    assert set(table.drivable) <= set(table.names)
    assert CLASS_TABLES[table.dataset] is table


def test_ids_of():
    """ids_of maps names to ids and names the unknown ones."""
    assert CAMVID_11.ids_of(['Road', 'Sky']) == (3, 0)
    assert CITYSCAPES_19.ids_of(['road', 'car']) == (0, 13)
    with pytest.raises(ValueError, match='Runway'):
        CAMVID_11.ids_of(['Road', 'Runway'])


def test_cityscapes_id_to_train_id_matches_official_table():
    """The core's id -> train id pairs equal cityscapesscripts' (ignored in eval: void 255)."""
    official = {label.id: label.trainId if not label.ignoreInEval else 255
                for label in cityscapes_labels if 0 <= label.id < 256}
    assert len(official) == 34
    assert dict(CITYSCAPES_ID_TO_TRAIN_ID) == official
    assert CITYSCAPES_LABEL_IDS == tuple(range(34)) == tuple(sorted(official))
    # Each train id comes from exactly one label id, whose official name is the class name.
    names = {label.id: label.name for label in cityscapes_labels}
    train_ids = {t: i for i, t in CITYSCAPES_ID_TO_TRAIN_ID.items() if t != 255}
    assert sorted(train_ids) == list(range(CITYSCAPES_19.num_classes))
    assert sum(t != 255 for t in CITYSCAPES_ID_TO_TRAIN_ID.values()) == 19
    assert tuple(names[train_ids[t]] for t in range(19)) == CITYSCAPES_19.names


def test_cityscapes_lookup_table():
    """A fresh 256-entry uint8 table: official ids mapped, every other value void."""
    table = cityscapes_id_to_train_id()
    assert table.shape == (256,) and table.dtype == np.uint8
    for label in cityscapes_labels:
        if 0 <= label.id < 256:
            expected = label.trainId if 0 <= label.trainId < 19 and not label.ignoreInEval \
                else 255
            assert table[label.id] == expected, label.name
    assert np.all(table[34:] == CITYSCAPES_19.void_id)
    table[7] = 99  # a caller's change stays its own
    assert cityscapes_id_to_train_id()[7] == 0
    label_ids = np.array([[7, 26, 23], [0, 1, 33]], np.uint8)
    np.testing.assert_array_equal(cityscapes_id_to_train_id()[label_ids],
                                  [[0, 13, 10], [255, 255, 18]])


@pytest.mark.parametrize('label_id, train_id', [(7, 0), (8, 1), (11, 2), (23, 10), (24, 11),
                                                (26, 13), (33, 18), (0, 255), (1, 255),
                                                (4, 255), (9, 255), (29, 255), (30, 255)])
def test_cityscapes_id_to_train_id(label_id: int, train_id: int):
    """The official label id -> train id mapping, void 255 (moved from the training tests)."""
    assert cityscapes_id_to_train_id()[label_id] == train_id
