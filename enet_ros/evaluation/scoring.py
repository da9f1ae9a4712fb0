"""
Scores and per-frame accounting, shared by ``evaluate_bag`` and ``live_evaluate``.

* :class:`Scoreboard`: the confusion matrix (:mod:`enet_ros.metrics`, as in
  training) and the drivable-area intersection / union over all frames.
* :class:`Tally`: every frame of a run and what became of it: a record each
  (index, log time, stamp, status), predictions paired with their ground truth
  (:mod:`.ground_truth`) and scored, skipped frames counted with their reasons.
  Both tools feed it; only how a prediction is made differs (the Segmenter in
  this process, or the node over ROS 2).
* :func:`latency_summary`: percentiles of durations.

Label arrays are HxW uint8 class ids; ground-truth ids equal to the model's
``void_id`` or outside ``[0, C)`` are ignored by every score. No rclpy.
"""

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .bag_io import MessageError
from .ground_truth import FolderTruth, Labels, NO_TRUTH, StampMatcher
from .. import masks
from ..metrics import ConfusionMatrix
from ..model_file import ModelMetadata


def parse_class_list(text: Optional[str], metadata: ModelMetadata) -> Tuple[str, ...]:
    """Comma-separated class names (empty or None: the model's default drivable classes)."""
    if not text:
        return tuple(metadata.drivable_classes)
    names = tuple(name.strip() for name in text.split(',') if name.strip())
    metadata.class_table.ids_of(names)  # raises ValueError naming unknown classes
    return names


def class_tables(metadata: ModelMetadata,
                 drivable_classes: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    """
    256-entry boolean tables over class ids: (drivable, valid ground truth).

    Valid: ``[0, C)`` less the void id. The scores and the PNG report use the same tables.
    """
    drivable = masks.drivable_lut(metadata.class_table.ids_of(tuple(drivable_classes))) > 0
    valid = np.zeros(256, dtype=bool)
    valid[:metadata.num_classes] = True
    if metadata.void_id is not None and 0 <= metadata.void_id < 256:
        valid[metadata.void_id] = False
    return drivable, valid


class Scoreboard:
    """Accumulates the confusion matrix and drivable-area intersection / union over frames."""

    def __init__(self, metadata: ModelMetadata, drivable_classes: Sequence[str]):
        self.metadata = metadata
        self.confusion = ConfusionMatrix(metadata.num_classes, metadata.void_id)
        self.drivable_classes = tuple(drivable_classes)
        self._drivable, self._valid = class_tables(metadata, self.drivable_classes)
        self.drivable_intersection = 0
        self.drivable_union = 0
        self.frames = 0

    def add(self, prediction: np.ndarray, truth: np.ndarray) -> None:
        """
        Count one frame: HxW uint8 prediction and HxW uint8 ground truth.

        Raises :class:`MessageError` when the sizes differ.
        """
        if prediction.shape != truth.shape:
            raise MessageError(f'ground truth is {truth.shape[1]}x{truth.shape[0]}, '
                               f'the frame {prediction.shape[1]}x{prediction.shape[0]}')
        self.confusion.update(prediction, truth)
        valid = self._valid[truth]
        predicted = self._drivable[prediction] & valid
        actual = self._drivable[truth] & valid
        self.drivable_intersection += int(np.count_nonzero(predicted & actual))
        self.drivable_union += int(np.count_nonzero(predicted | actual))
        self.frames += 1

    @property
    def drivable_iou(self) -> float:
        """Drivable-area IoU over all frames' pixels (NaN when both masks are empty)."""
        if not self.drivable_union:
            return float('nan')
        return self.drivable_intersection / self.drivable_union

    def as_dict(self) -> Dict[str, Any]:
        """Scores as plain data: fractions in [0, 1], None for undefined values."""
        scores = self.confusion.scores().as_dict(self.metadata.class_names)
        iou = self.drivable_iou
        return {
            'frames': self.frames,
            **scores,
            'drivable': {
                'classes': list(self.drivable_classes),
                'iou': None if np.isnan(iou) else iou,
                'intersection_pixels': self.drivable_intersection,
                'union_pixels': self.drivable_union,
            },
            'confusion_matrix': self.confusion.matrix.tolist(),
            'unpredicted_per_class': self.confusion.unpredicted.tolist(),
        }


@dataclass
class Prediction:
    """A frame's predicted labels, waiting for (or scored against) its ground truth."""

    record: Dict[str, Any]
    labels: np.ndarray
    image: Optional[np.ndarray] = None  # HxWx3 RGB camera frame, kept for the PNG report


class Tally:
    """
    Every frame of one run: its record, its ground truth, its score or why it was skipped.

    A frame gets a record (:meth:`new_record`) when it is read; its status ends
    as ``'evaluated'``, a skipped reason (counted) or a drop reason (the live
    node never answered it). Ground truth comes from ``folder`` (looked up
    when the prediction arrives) or ``matcher`` (a labels topic read alongside
    the frames: :meth:`truth`); with neither, a prediction is skipped with
    :data:`NO_TRUTH`. ``on_scored(prediction, truth)`` is called for each
    evaluated frame.
    """

    def __init__(self, scoreboard: Scoreboard, folder: Optional[FolderTruth] = None,
                 matcher: Optional[StampMatcher] = None,
                 on_scored: Optional[Callable[[Prediction, np.ndarray], None]] = None):
        self.scoreboard = scoreboard
        self.folder = folder
        self.matcher = matcher
        self.on_scored = on_scored
        self.records: List[Dict[str, Any]] = []
        self.skipped: Counter = Counter()

    def new_record(self, log_time_ns: int) -> Dict[str, Any]:
        """Add and return the record of the next frame read (stamp and status still unknown)."""
        record = {'index': len(self.records), 'log_time_ns': log_time_ns, 'stamp_ns': None,
                  'status': None}
        self.records.append(record)
        return record

    def skip(self, record: Dict[str, Any], reason: str) -> None:
        """Mark the frame as not scored, for ``reason`` (counted)."""
        record['status'] = reason
        self.skipped[reason] += 1

    def abandon(self, record: Dict[str, Any], reason: str) -> None:
        """
        Skip a frame whose stamp will get no prediction at all (counted as a skip).

        Its ground truth, read or still to come, is not kept: a long bag whose
        frames cannot be used does not hold every label image until the end.
        Not for a duplicate stamp, whose first frame still wants that truth.
        """
        self.skip(record, reason)
        if self.matcher is not None and record.get('stamp_ns') is not None:
            self.matcher.abandon(record['stamp_ns'])

    def drop(self, record: Dict[str, Any], stamp: int, reason: str) -> None:
        """Mark a frame that never got a prediction (not a skip: the caller counts drops)."""
        record['status'] = reason
        if self.matcher is not None:
            self.matcher.discard_truth(stamp)

    def predicted(self, stamp: int, prediction: Prediction) -> None:
        """Score ``prediction`` against its ground truth now, or hold it until that is read."""
        if self.folder is not None:
            try:
                truth: Optional[Labels] = self.folder.get(stamp)
            except MessageError as error:
                truth = error
            if truth is None:
                self.skip(prediction.record, NO_TRUTH)
            else:
                self._score(prediction, truth)
        elif self.matcher is not None and self.matcher.expects_truth(stamp):
            pair = self.matcher.add_prediction(stamp, prediction)
            if pair:
                self._score(*pair)
        else:
            self.skip(prediction.record, NO_TRUTH)

    def truth(self, stamp: int, labels: Labels) -> None:
        """Ground truth read from the labels topic: score its prediction if that is waiting."""
        pair = self.matcher.add_truth(stamp, labels)
        if pair:
            self._score(*pair)

    def waiting(self) -> bool:
        """Whether predictions wait for ground truth still to be read."""
        return self.matcher is not None and bool(self.matcher.unmatched_predictions())

    def finish(self) -> None:
        """Skip the predictions whose ground truth never came."""
        for prediction in self.matcher.unmatched_predictions() if self.matcher else []:
            self.skip(prediction.record, NO_TRUTH)

    def frame_counts(self, **counts: int) -> Dict[str, Any]:
        """Return the report's ``frames``: read, ``counts`` in order, skipped and reasons."""
        return {'read': len(self.records), **counts, 'skipped': sum(self.skipped.values()),
                'skipped_reasons': dict(self.skipped.most_common())}

    def _score(self, prediction: Prediction, truth: Labels) -> None:
        if isinstance(truth, MessageError):
            self.skip(prediction.record, f'unreadable ground truth: {truth}')
            return
        try:
            self.scoreboard.add(prediction.labels, truth)
        except MessageError as error:
            self.skip(prediction.record, f'ground truth size differs: {error}')
            return
        prediction.record['status'] = 'evaluated'
        if self.on_scored is not None:
            self.on_scored(prediction, truth)


def latency_summary(seconds: Iterable[float]) -> Dict[str, Optional[float]]:
    """Count, mean, p50, p90, p99 and max of durations, in milliseconds (None when empty)."""
    values = np.asarray(list(seconds), dtype=np.float64) * 1000.0
    if values.size == 0:
        return {'count': 0, 'mean_ms': None, 'p50_ms': None, 'p90_ms': None, 'p99_ms': None,
                'max_ms': None}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {'count': int(values.size), 'mean_ms': float(values.mean()), 'p50_ms': float(p50),
            'p90_ms': float(p90), 'p99_ms': float(p99), 'max_ms': float(values.max())}
