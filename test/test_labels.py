"""Class tables: Cityscapes against the official table, CamVid against the dataset's README."""

from cityscapesscripts.helpers.labels import labels as cityscapes_labels
from enet_ros.labels import CAMVID_11, CITYSCAPES_19, CLASS_TABLES
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
