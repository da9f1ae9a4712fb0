"""
Class tables: names, colours, void id and default drivable classes of each dataset.

Also Cityscapes' label id -> train id table, for reading its ``*_gtFine_labelIds.png``
files (training and the bag tools share it).
"""

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Optional, Sequence, Tuple
import unicodedata

import numpy as np

Color = Tuple[int, int, int]


@dataclass(frozen=True)
class ClassTable:
    """
    The classes a network predicts, ids ``0 .. len(names) - 1``.

    ``void_id`` is the ground-truth id that metrics and the loss ignore; it is
    never predicted (it lies outside ``[0, num_classes)``) and may be ``None``.
    """

    dataset: str
    names: Tuple[str, ...]
    colors: Tuple[Color, ...]
    void_id: Optional[int]
    drivable: Tuple[str, ...]

    @property
    def num_classes(self) -> int:
        """Return the number of predicted classes C."""
        return len(self.names)

    def ids_of(self, names: Sequence[str]) -> Tuple[int, ...]:
        """Return the ids of class ``names``; raise ValueError naming any unknown one."""
        unknown = [name for name in names if name not in self.names]
        if unknown:
            raise ValueError(
                f'unknown class name(s) {unknown}; this model knows {list(self.names)}')
        return tuple(self.names.index(name) for name in names)


CAMVID_11 = ClassTable(
    dataset='camvid',
    names=('Sky', 'Building', 'Pole', 'Road', 'Pavement', 'Tree', 'SignSymbol', 'Fence',
           'Car', 'Pedestrian', 'Bicyclist'),
    colors=((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
            (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
            (0, 128, 192)),
    void_id=11,
    drivable=('Road',),
)

#: The 19 Cityscapes train ids (the official ``labels.py`` table), void is 255.
CITYSCAPES_19 = ClassTable(
    dataset='cityscapes',
    names=('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
           'traffic sign', 'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck',
           'bus', 'train', 'motorcycle', 'bicycle'),
    colors=((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
            (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
            (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
            (0, 80, 100), (0, 0, 230), (119, 11, 32)),
    void_id=255,
    drivable=('road',),
)

CLASS_TABLES = {table.dataset: table for table in (CAMVID_11, CITYSCAPES_19)}

#: Cityscapes' official label id -> train id table (``cityscapesscripts.helpers.labels``)
#: for the 34 ids a ``*_gtFine_labelIds.png`` may hold; 255 (``CITYSCAPES_19.void_id``)
#: for the classes ignored in evaluation. License plate (id -1) is in no labelIds image.
#: ``test/test_labels.py`` checks it against cityscapesscripts.
CITYSCAPES_ID_TO_TRAIN_ID: Mapping[int, int] = MappingProxyType({
    0: 255,   # unlabeled
    1: 255,   # ego vehicle
    2: 255,   # rectification border
    3: 255,   # out of roi
    4: 255,   # static
    5: 255,   # dynamic
    6: 255,   # ground
    7: 0,     # road
    8: 1,     # sidewalk
    9: 255,   # parking
    10: 255,  # rail track
    11: 2,    # building
    12: 3,    # wall
    13: 4,    # fence
    14: 255,  # guard rail
    15: 255,  # bridge
    16: 255,  # tunnel
    17: 5,    # pole
    18: 255,  # polegroup
    19: 6,    # traffic light
    20: 7,    # traffic sign
    21: 8,    # vegetation
    22: 9,    # terrain
    23: 10,   # sky
    24: 11,   # person
    25: 12,   # rider
    26: 13,   # car
    27: 14,   # truck
    28: 15,   # bus
    29: 255,  # caravan
    30: 255,  # trailer
    31: 16,   # train
    32: 17,   # motorcycle
    33: 18,   # bicycle
})

#: The label ids a ``*_gtFine_labelIds.png`` may hold; any other value means a wrong file.
CITYSCAPES_LABEL_IDS: Tuple[int, ...] = tuple(sorted(CITYSCAPES_ID_TO_TRAIN_ID))


def cityscapes_id_to_train_id() -> np.ndarray:
    """
    Return a new 256-entry uint8 lookup table from Cityscapes label ids to train ids.

    ``table[label_ids]`` maps a labelIds image to train ids; ids outside the
    official table map to void (255) too.
    """
    table = np.full(256, CITYSCAPES_19.void_id, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_ID_TO_TRAIN_ID.items():
        table[label_id] = train_id
    return table


def name_problem(name: str) -> Optional[str]:
    """
    Say why ``name`` cannot be a class or dataset name, or return None if it can.

    Names travel as ROS string parameters and diagnostics values: a control
    character (a NUL ends a C string: the node's ``class_names`` showed '')
    or a lone surrogate (not encodable as UTF-8) would arrive changed or not
    at all.
    """
    for index, char in enumerate(name):
        category = unicodedata.category(char)
        if category == 'Cc':
            return f'has a control character ({char!r} at index {index})'
        if category == 'Cs':
            return f'has an unpaired surrogate ({char!r} at index {index})'
    return None
