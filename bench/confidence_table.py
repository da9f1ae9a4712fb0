"""
What ``min_confidence`` costs and buys on CamVid val: mIoU over the kept pixels, fraction kept.

Runs the bundled model (or ``--model``) through the node's Segmenter with
confidence on every val frame once, then for each threshold voids the pixels
whose probability is at most the threshold (as the node does) and scores the
rest against the ground truth (void ground truth ignored, as everywhere).

    python bench/confidence_table.py --data ../shared/data/camvid
"""

import argparse
from pathlib import Path
from typing import List, Optional

import cv2
from enet_ros import masks
from enet_ros.metrics import ConfusionMatrix
from enet_ros.segmenter import Segmenter
import numpy as np

THRESHOLDS = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


def main(argv: Optional[List[str]] = None) -> int:
    """Print the table of thresholds for the val split."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', type=Path, default=Path('../shared/data/camvid'))
    parser.add_argument('--split', default='val')
    parser.add_argument('--model', default='')
    parser.add_argument('--thresholds', type=float, nargs='+', default=list(THRESHOLDS))
    args = parser.parse_args(argv)

    segmenter = Segmenter.from_file(args.model or None, device='cpu')
    metadata = segmenter.metadata
    void = metadata.void_id
    matrices = {t: ConfusionMatrix(segmenter.num_classes, void) for t in args.thresholds}
    kept = dict.fromkeys(args.thresholds, 0)
    valid_total = 0
    images = sorted((args.data / args.split).glob('*.png')) + sorted(
        (args.data / args.split).glob('*.jpg'))
    for path in images:
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        truth = cv2.imread(str(args.data / f'{args.split}annot' / f'{path.stem}.png'),
                           cv2.IMREAD_GRAYSCALE)
        result = segmenter.segment(rgb, with_confidence=True)
        valid = truth != void if void is not None else np.ones_like(truth, bool)
        valid_total += int(valid.sum())
        for threshold in args.thresholds:
            labels = masks.void_low_confidence(result.labels.copy(), result.confidence,
                                               threshold, 255 if void is None else void)
            kept[threshold] += int((valid & (labels != (255 if void is None else void))).sum())
            matrices[threshold].update(labels, truth)
    print(f'\n{metadata.dataset} {args.split} ({len(images)} frames), model '
          f'{segmenter.model_path}\n')
    print('| min_confidence | pixels kept | mIoU over kept pixels | global accuracy, kept |')
    print('| ---: | ---: | ---: | ---: |')
    for threshold in args.thresholds:
        scores = matrices[threshold].scores(kept_only=True)
        print(f'| {threshold:g} | {100 * kept[threshold] / valid_total:.1f} % | '
              f'{100 * scores.mean_iou:.2f} | {100 * scores.global_accuracy:.2f} |')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
