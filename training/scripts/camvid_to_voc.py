"""
Write CamVid train/val as a small dataset of your own in the Pascal VOC / CVAT layout.

What a team would get from CVAT's "Segmentation mask 1.1" export after labelling
road, sidewalk and vehicle on their frames: ``labelmap.txt`` (background first,
as CVAT writes it), ``JPEGImages/`` (the frames), ``SegmentationClass/`` colour
masks and ``ImageSets/Segmentation/{train,val}.txt``. CamVid's 11 classes map to
4: road (Road), sidewalk (Pavement), vehicle (Car, Bicyclist) and background
(everything else); CamVid's void becomes VOC's void colour 224,224,192.

Used for the fine-tuning measurement in training/README.md; writes no data into
the repository::

    python training/scripts/camvid_to_voc.py ../shared/data/camvid /tmp/camvid4
"""

import argparse
from pathlib import Path
import shutil
import sys
from typing import List, Optional

import cv2
from enet_ros.labels import CAMVID_11
import numpy as np

#: The 4 classes: (name, RGB colour, CamVid classes).
CLASSES = (('background', (0, 0, 0), ()),
           ('road', (128, 64, 128), ('Road',)),
           ('sidewalk', (244, 35, 232), ('Pavement',)),
           ('vehicle', (0, 0, 142), ('Car', 'Bicyclist')))
VOID_COLOR = (224, 224, 192)


def colour_table() -> np.ndarray:
    """Return the 256x3 uint8 RGB colour of each CamVid label id (void and unknown: void)."""
    table = np.tile(np.array(VOID_COLOR, dtype=np.uint8), (256, 1))
    for class_id, name in enumerate(CAMVID_11.names):
        colour = next((c for _, c, members in CLASSES if name in members), CLASSES[0][1])
        table[class_id] = colour
    return table


def convert(camvid: Path, out: Path, splits=('train', 'val'), limit: Optional[int] = None,
            overwrite: bool = False) -> List[int]:
    """Write the VOC tree; return the number of frames per split."""
    if out.exists():
        if not overwrite:
            raise SystemExit(f"'{out}' exists (--overwrite to replace it)")
        shutil.rmtree(out)
    for folder in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'):
        (out / folder).mkdir(parents=True)
    lines = ['# label:color_rgb:parts:actions']
    lines += [f"{name}:{','.join(map(str, colour))}::" for name, colour, _ in CLASSES]
    (out / 'labelmap.txt').write_text('\n'.join(lines) + '\n')
    table = colour_table()
    counts = []
    for split in splits:
        frames = sorted((camvid / split).glob('*.png'))[:limit]
        if not frames:
            raise SystemExit(f"no frames in '{camvid / split}'")
        for frame in frames:
            ids = cv2.imread(str(camvid / f'{split}annot' / frame.name), cv2.IMREAD_UNCHANGED)
            if ids is None or ids.ndim != 2:
                raise SystemExit(f"cannot read the label of '{frame}'")
            shutil.copyfile(frame, out / 'JPEGImages' / frame.name)
            mask = cv2.cvtColor(table[ids], cv2.COLOR_RGB2BGR)
            cv2.imwrite(str(out / 'SegmentationClass' / frame.name), mask)
        (out / 'ImageSets' / 'Segmentation' / f'{split}.txt').write_text(
            '\n'.join(frame.stem for frame in frames) + '\n')
        counts.append(len(frames))
    return counts


def main(argv: Optional[List[str]] = None) -> int:
    """Convert; print what was written."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('camvid', type=Path, help='CamVid root (train/, trainannot/, val/, ...)')
    parser.add_argument('out', type=Path, help='folder to create')
    parser.add_argument('--limit', type=int, help='only the first N frames of each split')
    parser.add_argument('--overwrite', action='store_true')
    args = parser.parse_args(argv)
    counts = convert(args.camvid, args.out, limit=args.limit, overwrite=args.overwrite)
    print(f"wrote '{args.out}': {counts[0]} train and {counts[1]} val frames, classes "
          + ', '.join(name for name, _, _ in CLASSES))
    return 0


if __name__ == '__main__':
    sys.exit(main())
