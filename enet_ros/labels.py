"""Class tables: names, colours, void id and default drivable classes of each dataset."""

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

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
