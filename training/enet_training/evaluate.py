"""Evaluate a model on a dataset split through the node's Segmenter."""

from typing import Callable, Dict, Optional, Tuple

from enet_ros.metrics import ConfusionMatrix, Scores, scores_from_matrix
from enet_ros.segmenter import Segmenter
import numpy as np

from .datasets import SegmentationDataset, sequence_name


def evaluate_sequences(segmenter: Segmenter, dataset: SegmentationDataset,
                       progress: Optional[Callable[[int, int], None]] = None
                       ) -> Tuple[Scores, Dict[str, Scores]]:
    """
    Score ``dataset`` as a whole and per sequence (:func:`~.datasets.sequence_name`).

    Return the whole split's scores and {sequence: scores}, sorted by name;
    the whole is the sum of the sequences' confusion matrices, so it equals
    :func:`evaluate_segmenter`'s.
    """
    table = dataset.table
    matrices: Dict[str, ConfusionMatrix] = {}
    for index in range(len(dataset)):
        image, label = dataset.load(index)
        sequence = sequence_name(dataset.pairs[index][0])
        if sequence not in matrices:
            matrices[sequence] = ConfusionMatrix(table.num_classes, table.void_id)
        matrices[sequence].update(segmenter.segment(image).labels, label)
        if progress is not None:
            progress(index + 1, len(dataset))
    total = np.zeros((table.num_classes, table.num_classes), dtype=np.int64)
    unpredicted = np.zeros(table.num_classes, dtype=np.int64)
    for matrix in matrices.values():
        total += matrix.matrix
        unpredicted += matrix.unpredicted
    return (scores_from_matrix(total, unpredicted),
            {s: matrices[s].scores() for s in sorted(matrices)})


def evaluate_segmenter(segmenter: Segmenter, dataset: SegmentationDataset,
                       progress: Optional[Callable[[int, int], None]] = None) -> Scores:
    """
    Segment every untransformed image of ``dataset`` at its own size and score it.

    The labels come from :meth:`Segmenter.segment`, the same path the node uses.
    """
    return evaluate_sequences(segmenter, dataset, progress)[0]


def format_scores(scores: Scores, class_names) -> str:
    """Format a plain-text table: per-class IoU and accuracy, then the summary (in %)."""
    width = max(len(name) for name in [*class_names, 'class-average accuracy']) + 2
    lines = [f'{"class":<{width}}{"IoU":>8}{"acc":>8}']
    for name, iou, acc in zip(class_names, scores.iou, scores.class_accuracy):
        lines.append(f'{name:<{width}}{_pct(iou):>8}{_pct(acc):>8}')
    lines.append('-' * (width + 16))
    lines.append(f'{"mIoU":<{width}}{_pct(scores.mean_iou):>8}')
    lines.append(f'{"class-average accuracy":<{width}}{_pct(scores.mean_class_accuracy):>8}')
    lines.append(f'{"global accuracy":<{width}}{_pct(scores.global_accuracy):>8}')
    return '\n'.join(lines)


def _pct(value: float) -> str:
    return '   n/a' if np.isnan(value) else f'{100 * value:.2f}'
