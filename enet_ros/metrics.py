"""
Confusion matrix and the segmentation scores derived from it.

Conventions (shared by training, bag evaluation and the tests):

* Ground-truth pixels equal to ``void_id`` (or outside ``[0, C)``) are ignored.
* A labelled pixel whose prediction names no class (the void id a node with
  ``min_confidence`` publishes, or any value outside ``[0, C)``) is a miss of
  its true class: it counts in that class's ground truth and union, and in
  the total of global accuracy; ``Scores.unpredicted`` says how many there
  were. (``ConfusionMatrix.scores(kept_only=True)`` leaves them out instead.)
* A class with no ground-truth pixel and no prediction has no IoU (NaN) and
  is left out of the mean; a class predicted but absent from the ground truth
  has IoU 0 and counts.
* Scores are fractions in [0, 1]; reports multiply by 100.
"""

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]


@dataclass(frozen=True)
class Scores:
    """Scores of one confusion matrix; per-class arrays have length C."""

    iou: np.ndarray
    class_accuracy: np.ndarray
    mean_iou: float
    mean_class_accuracy: float
    global_accuracy: float
    pixels: int
    #: Labelled pixels (counted in ``pixels``) whose prediction named no class.
    unpredicted: int = 0

    def as_dict(self, class_names: Optional[Sequence[str]] = None) -> Dict[str, object]:
        """Plain-data form (NaN becomes None) for JSON reports."""
        names = list(class_names) if class_names is not None else [
            str(i) for i in range(len(self.iou))]

        def clean(value: float) -> Optional[float]:
            return None if np.isnan(value) else float(value)

        return {
            'mean_iou': clean(self.mean_iou),
            'mean_class_accuracy': clean(self.mean_class_accuracy),
            'global_accuracy': clean(self.global_accuracy),
            'pixels': self.pixels,
            'unpredicted_pixels': self.unpredicted,
            'per_class_iou': {name: clean(v) for name, v in zip(names, self.iou)},
            'per_class_accuracy': {name: clean(v) for name, v in zip(names, self.class_accuracy)},
        }


class ConfusionMatrix:
    """
    Accumulates a CxC matrix, rows ground truth, columns prediction.

    Beside it, ``unpredicted``: C int64, per true class the labelled pixels
    whose prediction named no class (void or outside ``[0, C)``).
    """

    def __init__(self, num_classes: int, void_id: Optional[int] = None):
        if num_classes < 1:
            raise ValueError(f'num_classes must be positive, got {num_classes}')
        self.num_classes = num_classes
        self.void_id = void_id
        # A void id inside [0, C) needs its own mask; one outside falls out with the range check.
        self._void_in_range = void_id is not None and 0 <= void_id < num_classes
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.unpredicted = np.zeros(num_classes, dtype=np.int64)

    def update(self, prediction: ArrayLike, target: ArrayLike) -> None:
        """
        Add a batch: ``prediction`` and ``target`` are integer arrays of one shape.

        Torch tensors are counted on their own device (no per-pixel host copy).
        """
        if tuple(prediction.shape) != tuple(target.shape):
            raise ValueError(
                f'prediction shape {tuple(prediction.shape)} != target {tuple(target.shape)}')
        n = self.num_classes
        if isinstance(prediction, torch.Tensor) or isinstance(target, torch.Tensor):
            pred = torch.as_tensor(prediction).reshape(-1).long()
            true = torch.as_tensor(target, device=pred.device).reshape(-1).long()
            bincount = torch.bincount
        else:
            pred = np.asarray(prediction).reshape(-1).astype(np.int64)
            true = np.asarray(target).reshape(-1).astype(np.int64)
            bincount = np.bincount
        labelled, predicted = self._names_a_class(true), self._names_a_class(pred)
        valid = labelled & predicted
        counts = bincount(true[valid] * n + pred[valid], minlength=n * n)
        missed = bincount(true[labelled & ~predicted], minlength=n)
        if isinstance(counts, torch.Tensor):  # counted on the tensors' device
            counts, missed = counts.cpu().numpy(), missed.cpu().numpy()
        self.matrix += counts.reshape(n, n)
        self.unpredicted += missed

    def _names_a_class(self, ids: ArrayLike) -> ArrayLike:
        """Return where the int64 ``ids`` (array or tensor) name a class: in [0, C), not void."""
        names = (ids >= 0) & (ids < self.num_classes)
        if self._void_in_range:
            names &= ids != self.void_id
        return names

    def scores(self, kept_only: bool = False) -> Scores:
        """
        IoU, accuracies and their means, following the module's conventions.

        ``kept_only``: over the pixels that got a class only (unpredicted
        ones left out of every score, as if unlabelled).
        """
        return scores_from_matrix(self.matrix, None if kept_only else self.unpredicted)


def scores_from_matrix(matrix: np.ndarray, unpredicted: Optional[np.ndarray] = None) -> Scores:
    """
    Compute :class:`Scores` from a CxC confusion matrix (rows ground truth).

    ``unpredicted``: C, per true class the labelled pixels predicted as no
    class (misses of that class); None for none.
    """
    matrix = matrix.astype(np.float64)
    missed = (np.zeros(len(matrix)) if unpredicted is None
              else np.asarray(unpredicted, dtype=np.float64))
    true_positive = np.diag(matrix)
    ground_truth = matrix.sum(axis=1) + missed
    predicted = matrix.sum(axis=0)
    union = ground_truth + predicted - true_positive
    with np.errstate(divide='ignore', invalid='ignore'):
        iou = np.where(union > 0, true_positive / union, np.nan)
        class_accuracy = np.where(ground_truth > 0, true_positive / ground_truth, np.nan)
    total = matrix.sum() + missed.sum()

    def nanmean(values: np.ndarray) -> float:
        return float(np.nanmean(values)) if np.any(~np.isnan(values)) else float('nan')

    return Scores(
        iou=iou,
        class_accuracy=class_accuracy,
        mean_iou=nanmean(iou),
        mean_class_accuracy=nanmean(class_accuracy),
        global_accuracy=float(true_positive.sum() / total) if total else float('nan'),
        pixels=int(total),
        unpredicted=int(missed.sum()),
    )
