#!/usr/bin/env python3
"""
fp16 on CUDA against fp32: label agreement and mIoU over a dataset split.

Runs the bundled (or ``--model``) model through two Segmenters on the same
device, the default optimised one (fp16, folded, CUDA graphs) and the eager
fp32 reference, over every image of the split, and prints the share of
pixels whose labels agree and each one's mIoU (the same scoring as
``enet-train evaluate``). Needs the training package (``training/``) on the
path for the dataset reader.

    python bench/fp16_agreement.py --data ../shared/data/camvid --split val --device cuda
"""

import argparse
import json
from pathlib import Path
import sys
import time

from enet_ros.metrics import ConfusionMatrix
from enet_ros.model_file import load_model_file
from enet_ros.segmenter import Segmenter
from enet_training.datasets import make_dataset
import numpy as np


def main() -> int:
    """Score both Segmenters over the split and print the agreement table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--data', type=Path, required=True, help='dataset root')
    parser.add_argument('--split', default='val')
    parser.add_argument('--model', default=None, help='model file (default: bundled)')
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--json', type=Path, default=None, help='also write the figures here')
    args = parser.parse_args()
    model = load_model_file(args.model)
    fast = Segmenter(model, device=args.device)
    reference = Segmenter(model, device=args.device, precision='fp32', optimize=False)
    dataset = make_dataset(model.metadata.dataset, args.data, args.split)
    table = dataset.table
    matrices = {'fast': ConfusionMatrix(table.num_classes, table.void_id),
                'reference': ConfusionMatrix(table.num_classes, table.void_id)}
    equal = total = 0
    worst = 1.0
    start = time.perf_counter()
    for index in range(len(dataset)):
        image, label = dataset.load(index)
        got = fast.segment(image).labels
        expected = reference.segment(image).labels
        matrices['fast'].update(got, label)
        matrices['reference'].update(expected, label)
        same = int((got == expected).sum())
        equal += same
        total += got.size
        worst = min(worst, same / got.size)
    scores = {name: matrix.scores() for name, matrix in matrices.items()}
    figures = {
        'images': len(dataset), 'pixels': total, 'agreement': equal / total,
        'worst_image_agreement': worst,
        'fast': fast.describe(), 'reference': reference.describe(),
        'fast_miou': scores['fast'].mean_iou, 'reference_miou': scores['reference'].mean_iou,
        'seconds': time.perf_counter() - start,
    }
    print(f'{len(dataset)} {args.split} images, {total} pixels')
    print(f'fast:      {fast.describe()}')
    print(f'reference: {reference.describe()}')
    print(f'labels agree on {100 * equal / total:.3f} % of pixels '
          f'(worst image {100 * worst:.3f} %)')
    print(f'mIoU fast {100 * figures["fast_miou"]:.2f}, '
          f'reference {100 * figures["reference_miou"]:.2f}, '
          f'difference {100 * (figures["fast_miou"] - figures["reference_miou"]):+.3f}')
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if np.isfinite(figures['agreement']) else 1


if __name__ == '__main__':
    sys.exit(main())
