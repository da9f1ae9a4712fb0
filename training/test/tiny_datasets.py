"""Test helper: tiny CamVid and Cityscapes trees in the official layouts."""

from pathlib import Path
from typing import Dict, Iterable, Sequence, Tuple

import cv2
from enet_ros.labels import CAMVID_11
import numpy as np

TINY_SIZE = (64, 48)  # width, height of the tiny images


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    """Write an HxWx3 RGB uint8 image (PNG or JPEG by suffix), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def write_gray(path: Path, label: np.ndarray) -> Path:
    """Write an HxW uint8 label PNG, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), label)
    return path


def scene(seed: int, size: Tuple[int, int] = TINY_SIZE,
          classes: Tuple[int, int, int] = (0, 1, 3), void: int = 11,
          colors: Iterable[Tuple[int, int, int]] = CAMVID_11.colors
          ) -> Tuple[np.ndarray, np.ndarray]:
    """
    Make a learnable (image, label) pair: three horizontal bands and a void strip.

    Each band's pixels have the colour of its class plus noise, so the class
    follows from the colour; band boundaries move with ``seed``.
    """
    rng = np.random.default_rng(seed)
    width, height = size
    palette = list(colors)
    top = int(rng.integers(height // 5, 2 * height // 5))
    bottom = int(rng.integers(3 * height // 5, 4 * height // 5))
    label = np.empty((height, width), dtype=np.uint8)
    label[:top] = classes[0]
    label[top:bottom] = classes[1]
    label[bottom:] = classes[2]
    label[:, :2] = void
    image = np.zeros((height, width, 3), dtype=np.float64)
    for class_id in np.unique(label):
        color = palette[class_id] if class_id < len(palette) else (0, 0, 0)
        image[label == class_id] = color
    image += rng.normal(0, 10, image.shape)
    return np.clip(image, 0, 255).round().astype(np.uint8), label


def make_camvid_tree(root: Path, counts: Dict[str, int], size: Tuple[int, int] = TINY_SIZE,
                     jpeg_every: int = 0, sequences: Sequence[str] = ('0001TP',)) -> Path:
    """
    Build a CamVid tree: ``<split>/`` frames and ``<split>annot/`` PNG labels.

    With ``jpeg_every`` n, every n-th frame is a JPEG instead of a PNG. Frame
    ``index`` of a split is named ``<sequence>_<index>`` with the sequences
    taken in turn (``0001TP_000000``, ... with the default one).
    """
    seed = 0
    for split, count in counts.items():
        for index in range(count):
            image, label = scene(seed, size)
            seed += 1
            suffix = '.jpg' if jpeg_every and index % jpeg_every == 0 else '.png'
            name = f'{sequences[index % len(sequences)]}_{index:06d}'
            write_rgb(root / split / f'{name}{suffix}', image)
            write_gray(root / f'{split}annot' / f'{name}.png', label)
    return root


#: Cityscapes label ids used by the tiny tree: road, car, sky, unlabeled, ego vehicle.
CITYSCAPES_IDS = {'road': 7, 'car': 26, 'sky': 23, 'unlabeled': 0, 'ego vehicle': 1}


def cityscapes_label(seed: int, size: Tuple[int, int] = TINY_SIZE) -> np.ndarray:
    """Make a labelIds image: sky, car and road bands, an unlabeled and an ego-vehicle strip."""
    _, bands = scene(seed, size, classes=(0, 1, 2), void=3)
    label_ids = np.array([CITYSCAPES_IDS['sky'], CITYSCAPES_IDS['car'], CITYSCAPES_IDS['road'],
                          CITYSCAPES_IDS['unlabeled']], dtype=np.uint8)[bands]
    label_ids[-3:] = CITYSCAPES_IDS['ego vehicle']
    return label_ids


def make_cityscapes_tree(root: Path, cities: Dict[str, Dict[str, int]],
                         size: Tuple[int, int] = TINY_SIZE) -> Path:
    """
    Build a Cityscapes tree in the official layout.

    ``leftImg8bit/<split>/<city>/<city>_000000_0000NN_leftImg8bit.png`` and
    ``gtFine/<split>/<city>/<city>_000000_0000NN_gtFine_labelIds.png``;
    ``cities`` maps each split to {city: number of frames}.
    """
    seed = 100
    for split, per_city in cities.items():
        for city, count in per_city.items():
            for index in range(count):
                stem = f'{city}_000000_{index:06d}'
                label_ids = cityscapes_label(seed, size)
                rng = np.random.default_rng(seed)
                image = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                seed += 1
                write_rgb(root / 'leftImg8bit' / split / city / f'{stem}_leftImg8bit.png', image)
                write_gray(root / 'gtFine' / split / city / f'{stem}_gtFine_labelIds.png',
                           label_ids)
    return root


#: The tiny VOC / CVAT tree's label map: CVAT's background first, then two classes.
VOC_ENTRIES = (('background', (0, 0, 0)), ('road', (128, 64, 128)), ('vehicle', (0, 0, 142)))
VOC_VOID = (224, 224, 192)


def color_mask(ids: np.ndarray, colors: Sequence[Tuple[int, int, int]],
               void_color: Tuple[int, int, int] = VOC_VOID) -> np.ndarray:
    """Paint HxW ids as an HxWx3 RGB mask: id i in ``colors[i]``, other ids in the void colour."""
    palette = np.array([*colors] + [void_color] * (256 - len(colors)), dtype=np.uint8)
    return palette[ids]


def make_voc_tree(root: Path, counts: Dict[str, int], size: Tuple[int, int] = TINY_SIZE,
                  entries=VOC_ENTRIES, extra_lines: Sequence[str] = ()) -> Path:
    """
    Build a Pascal VOC / CVAT "Segmentation mask 1.1" tree.

    ``labelmap.txt`` (``entries`` then ``extra_lines``), ``JPEGImages/<id>.jpg``,
    colour masks ``SegmentationClass/<id>.png`` (void in VOC's 224,224,192) and
    ``ImageSets/Segmentation/<split>.txt``; frame ``k`` of a split is
    ``<split>_<k>``, its scene bands classes 0, 1, 2 of the label map.
    """
    lines = ['# label:color_rgb:parts:actions']
    lines += [f"{name}:{','.join(map(str, color))}::" for name, color in entries]
    (root / 'ImageSets' / 'Segmentation').mkdir(parents=True, exist_ok=True)
    (root / 'labelmap.txt').write_text('\n'.join([*lines, *extra_lines]) + '\n')
    colors = [color for _, color in entries]
    seed = 200
    for split, count in counts.items():
        names = []
        for index in range(count):
            image, ids = scene(seed, size, classes=(0, 1, 2), void=255, colors=colors)
            seed += 1
            name = f'{split}_{index:04d}'
            write_rgb(root / 'JPEGImages' / f'{name}.jpg', image)
            write_rgb(root / 'SegmentationClass' / f'{name}.png', color_mask(ids, colors))
            names.append(name)
        (root / 'ImageSets' / 'Segmentation' / f'{split}.txt').write_text(
            '\n'.join(names) + '\n')
    return root


#: The tiny plain tree's classes.
PLAIN_CLASSES = (('road', (128, 64, 128)), ('grass', (0, 200, 0)), ('sky', (70, 130, 180)))


def make_plain_tree(root: Path, counts: Dict[str, int], size: Tuple[int, int] = TINY_SIZE,
                    classes=PLAIN_CLASSES, void_id: int = 255,
                    drivable: Sequence[str] = ('road',)) -> Path:
    """Build a plain tree: ``classes.yaml``, ``images/<split>/*.png``, ``labels/<split>/*.png``."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    (root / 'classes.yaml').write_text(yaml.safe_dump({
        'name': 'tiny_plain',
        'classes': [{'name': name, 'color': list(color)} for name, color in classes],
        'void_id': void_id, 'drivable': list(drivable)}, sort_keys=False))
    colors = [color for _, color in classes]
    seed = 300
    for split, count in counts.items():
        for index in range(count):
            image, ids = scene(seed, size, classes=(0, 1, 2), void=void_id, colors=colors)
            seed += 1
            write_rgb(root / 'images' / split / f'frame_{index:04d}.png', image)
            write_gray(root / 'labels' / split / f'frame_{index:04d}.png', ids)
    return root
