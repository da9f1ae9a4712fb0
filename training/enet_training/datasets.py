"""
CamVid (SegNet 11-class layout), Cityscapes (official layout) and datasets of your own.

Each item is ``(image, label)``: HxWx3 uint8 RGB and HxW uint8 class ids in
``[0, C)`` or the table's void id. Files are checked as they are read: an
unreadable file, an image and label of different sizes, or a label id that is
neither a class nor void raises :class:`DatasetError` naming the file.

Your own data comes in the VOC / CVAT layout (``voc``) or the plain layout
(``plain``), read by :mod:`enet_ros.dataset_layouts` (the bag tools read them
there too). Their splits are checked when listed, before any training:
missing counterparts, empty splits, sizes, label PNG formats.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
from enet_ros.dataset_layouts import DatasetError, Layout, LAYOUTS, list_pairs, load_layout
from enet_ros.labels import (CAMVID_11, CITYSCAPES_19, cityscapes_id_to_train_id,
                             CITYSCAPES_LABEL_IDS, ClassTable)
import numpy as np
from torch.utils.data import Dataset

__all__ = ['DATASETS', 'DatasetError', 'LayoutOptions', 'make_dataset', 'SegmentationDataset']

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
#: The ``--dataset`` choices: the two public layouts and the two of your own.
DATASETS = ('camvid', 'cityscapes', *LAYOUTS)
Sample = Tuple[np.ndarray, np.ndarray]
Transform = Callable[[np.ndarray, np.ndarray], Sample]


def read_image(path: Path) -> np.ndarray:
    """
    Read an HxWx3 uint8 RGB image; raise DatasetError naming the file.

    EXIF orientation is ignored: label PNGs are never rotated, and the node
    ignores it too.
    """
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise DatasetError(f"cannot read image '{path}' (missing, unreadable or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label(path: Path) -> np.ndarray:
    """Read an HxW uint8 single-channel label image; raise DatasetError naming the file."""
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise DatasetError(f"cannot read label '{path}' (missing, unreadable or not an image)")
    if label.ndim != 2 or label.dtype != np.uint8:
        raise DatasetError(f"label '{path}' must be single-channel 8-bit, got "
                           f'{label.dtype} with shape {label.shape}')
    return label


def check_label_ids(label: np.ndarray, table: ClassTable, path: Path) -> None:
    """Raise DatasetError if ``label`` holds ids other than classes and void."""
    values = np.unique(label)
    bad = [int(v) for v in values if v >= table.num_classes and v != table.void_id]
    if bad:
        raise DatasetError(f"label '{path}' has ids {bad[:10]} outside the "
                           f'{table.num_classes} classes of {table.dataset} and void '
                           f'{table.void_id}')


class SegmentationDataset(Dataset):
    """
    Pairs of (image path, label path) read, checked and transformed on access.

    ``label_map`` (256 entries) maps the ids stored in the label files to class
    ids; ``raw_ids`` lists the ids a label file may hold before that mapping
    (default: any). Cityscapes uses both: its ``labelIds`` images hold the 34
    official ids, and anything else means a wrong or corrupt file.
    """

    def __init__(self, pairs: Sequence[Tuple[Path, Path]], table: ClassTable,
                 transform: Optional[Transform] = None,
                 label_map: Optional[np.ndarray] = None,
                 raw_ids: Optional[Sequence[int]] = None,
                 layout: Optional[Layout] = None):
        self.pairs = list(pairs)
        self.table = table
        self.transform = transform
        self.label_map = label_map
        self.raw_ids = None if raw_ids is None else np.asarray(sorted(raw_ids))
        #: A dataset of your own: its layout decodes the label files (colours or ids to ids).
        self.layout = layout

    @property
    def cache_key(self) -> str:
        """Return a text that changes when label files map to ids differently ('': public sets)."""
        return '' if self.layout is None else self.layout.cache_key()

    def __len__(self) -> int:
        """Return the number of samples."""
        return len(self.pairs)

    def load(self, index: int) -> Sample:
        """Read and check sample ``index`` without the transform."""
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        label = (read_label(label_path) if self.layout is None
                 else self.layout.decode_label(label_path))
        if image.shape[:2] != label.shape:
            raise DatasetError(f"image '{image_path}' is {image.shape[1]}x{image.shape[0]} but "
                               f"label '{label_path}' is {label.shape[1]}x{label.shape[0]}")
        if self.raw_ids is not None:
            unknown = np.setdiff1d(np.unique(label), self.raw_ids)
            if unknown.size:
                raise DatasetError(f"label '{label_path}' has ids {unknown[:10].tolist()} that "
                                   f'are not {self.table.dataset} label ids')
        if self.label_map is not None:
            label = self.label_map[label]
        check_label_ids(label, self.table, label_path)
        return image, label

    def __getitem__(self, index: int) -> Sample:
        """Sample ``index``, transformed."""
        image, label = self.load(index)
        if self.transform is not None:
            image, label = self.transform(image, label)
        return image, label


def sequence_name(image_path: Path) -> str:
    """
    Return the sequence (drive) of a frame: its file name up to the first '_'.

    CamVid names start with the sequence (``0016E5_07959.png``), Cityscapes
    names with the city (``aachen_000000_000019_leftImg8bit.png``).
    """
    return Path(image_path).name.split('_', 1)[0]


def subset(dataset: SegmentationDataset, indices: Sequence[int],
           transform: Optional[Transform] = None) -> SegmentationDataset:
    """Return the samples ``indices`` of ``dataset`` (same table and label map) as a dataset."""
    return SegmentationDataset([dataset.pairs[i] for i in indices], dataset.table, transform,
                               dataset.label_map, dataset.raw_ids, dataset.layout)


def hold_out(dataset: SegmentationDataset, prefixes: Sequence[str]
             ) -> Tuple[SegmentationDataset, Dict[str, SegmentationDataset]]:
    """
    Split off the frames whose file names start with each of ``prefixes``.

    Return the rest (with ``dataset``'s transform) and {prefix: its frames,
    untransformed}. A prefix that matches no frame, or prefixes that match
    every frame, raise :class:`DatasetError`.
    """
    names = [Path(image).name for image, _ in dataset.pairs]
    held: Dict[str, SegmentationDataset] = {}
    taken = set()
    for prefix in prefixes:
        if not prefix:
            raise DatasetError('a held-out sequence prefix must not be empty')
        indices = [i for i, name in enumerate(names) if name.startswith(prefix)]
        if not indices:
            found = sorted({sequence_name(name) for name in names})
            raise DatasetError(f"held-out sequence '{prefix}' matches no frame of the "
                               f"{len(names)} training frames (sequences: {', '.join(found)})")
        held[prefix] = subset(dataset, indices)
        taken.update(indices)
    if len(taken) == len(names):
        raise DatasetError(f'held-out sequences {list(prefixes)} match all {len(names)} '
                           'training frames: nothing is left to train on')
    rest = [i for i in range(len(names)) if i not in taken]
    return subset(dataset, rest, dataset.transform), held


def _images_in(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def camvid_pairs(root: Path, split: str) -> List[Tuple[Path, Path]]:
    """
    (image, label) paths of a CamVid split: ``<split>/`` frames, ``<split>annot/`` labels.

    Frames may be PNG or JPEG; labels are PNG with the frame's stem.
    """
    root = Path(root)
    image_dir, label_dir = root / split, root / f'{split}annot'
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise DatasetError(f"CamVid split '{split}': folder '{folder}' does not exist")
    pairs = []
    for image_path in _images_in(image_dir):
        label_path = label_dir / f'{image_path.stem}.png'
        if not label_path.exists():
            raise DatasetError(f"image '{image_path}' has no label '{label_path}'")
        pairs.append((image_path, label_path))
    if not pairs:
        raise DatasetError(f"CamVid split '{split}': no images in '{image_dir}'")
    return pairs


def cityscapes_pairs(root: Path, split: str) -> List[Tuple[Path, Path]]:
    """(image, labelIds) paths of a Cityscapes split in the official layout."""
    root = Path(root)
    image_root = root / 'leftImg8bit' / split
    if not image_root.is_dir():
        raise DatasetError(f"Cityscapes split '{split}': folder '{image_root}' does not exist")
    pairs = []
    for image_path in sorted(image_root.glob('*/*_leftImg8bit.png')):
        stem = image_path.name[:-len('_leftImg8bit.png')]
        label_path = (root / 'gtFine' / split / image_path.parent.name
                      / f'{stem}_gtFine_labelIds.png')
        if not label_path.exists():
            raise DatasetError(f"image '{image_path}' has no label '{label_path}'")
        pairs.append((image_path, label_path))
    if not pairs:
        raise DatasetError(f"Cityscapes split '{split}': no *_leftImg8bit.png under "
                           f"'{image_root}'")
    return pairs


def split_names(split: str) -> List[str]:
    """Return the splits of ``split``: one name, or several joined by '+' (``train+val``)."""
    names = [part.strip() for part in split.split('+')]
    if not all(names):
        raise DatasetError(f"split '{split}': expected a name or names joined by '+', "
                           "e.g. 'train' or 'train+val'")
    if len(set(names)) != len(names):
        raise DatasetError(f"split '{split}' names a split twice")
    return names


def seen_splits(train_split: str, val_split: str) -> List[str]:
    """Return the splits of ``val_split`` that ``train_split`` also trains on (sorted)."""
    return sorted(set(split_names(train_split)) & set(split_names(val_split)))


@dataclass(frozen=True)
class LayoutOptions:
    """
    How a dataset of your own is read (``enet-train --void-label``, ``--drivable-classes``).

    ``void_labels``: VOC label map entries that are void besides ``void`` /
    ``ignore`` / ``ignored``; ``drivable``: the default drivable classes
    recorded in the model (None: the layout's own; see
    :mod:`enet_ros.dataset_layouts`).
    """

    void_labels: Tuple[str, ...] = ()
    drivable: Optional[Tuple[str, ...]] = None


def make_dataset(name: str, root: Path, split: str,
                 transform: Optional[Transform] = None,
                 options: LayoutOptions = LayoutOptions()) -> SegmentationDataset:
    """
    Return the ``name`` split at ``root`` (``a+b``: both, in order).

    ``name``: ``camvid``, ``cityscapes``, or a layout of your own, ``voc`` or
    ``plain`` (read with ``options``; its files are checked as they are listed).
    """
    if name in LAYOUTS:
        layout = load_layout(name, root, options.void_labels, options.drivable)
        split_names(split)
        return SegmentationDataset(list_pairs(layout, split), layout.table, transform,
                                   layout=layout)
    if options != LayoutOptions():
        raise DatasetError(f'--void-label and --drivable-classes are for the voc and plain '
                           f'layouts; the {name} classes are fixed')
    if name == 'camvid':
        pairs_of, table, extra = camvid_pairs, CAMVID_11, {}
    elif name == 'cityscapes':
        pairs_of, table = cityscapes_pairs, CITYSCAPES_19
        extra = {'label_map': cityscapes_id_to_train_id(), 'raw_ids': CITYSCAPES_LABEL_IDS}
    else:
        raise DatasetError(f"unknown dataset '{name}' ({', '.join(DATASETS)})")
    pairs = [pair for part in split_names(split) for pair in pairs_of(root, part)]
    return SegmentationDataset(pairs, table, transform, **extra)
