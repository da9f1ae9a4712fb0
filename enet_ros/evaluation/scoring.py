"""
Replay evaluation parts shared by ``evaluate_bag`` and ``live_evaluate``.

Which bag topic holds the frames, where the ground truth comes from (a label
topic of the bag, or a folder of label PNGs), pairing predictions with ground
truth by header stamp, the scores (confusion matrix, drivable-area IoU),
latency percentiles, and the terminal table. No rclpy.

Label arrays are HxW uint8 class ids; ground-truth ids equal to the model's
``void_id`` or outside ``[0, C)`` are ignored by every score.
"""

import argparse
from collections import Counter
import json
from pathlib import Path
from typing import (AbstractSet, Any, Dict, Iterable, List, Mapping, Optional, Sequence,
                    Tuple)

import cv2
import numpy as np

from .bag_io import (bag_topics, BagError, describe_topics, IMAGE_TYPES, MessageError,
                     require_topic, TopicInfo)
from ..metrics import ConfusionMatrix
from ..model_file import ModelMetadata

DEFAULT_IMAGE_TOPIC = '/camera/image_raw'
DEFAULT_LABELS_TOPIC = '/camera/labels'
NO_TRUTH = 'no ground truth for the stamp'


def resolve_image_topic(reader: Any, topic: Optional[str]) -> TopicInfo:
    """
    Find the camera topic: ``topic`` if given, else the default or the only image topic.

    Raises :class:`BagError` listing the bag's topics when there is no such topic,
    or when its type is not ``sensor_msgs/Image`` or ``CompressedImage``.
    """
    if topic:
        return require_topic(reader, topic, IMAGE_TYPES)
    topics = bag_topics(reader)
    for name in (DEFAULT_IMAGE_TOPIC, DEFAULT_IMAGE_TOPIC + '/compressed'):
        if name in topics:
            return require_topic(reader, name, IMAGE_TYPES)
    images = [t for t in topics.values() if t.msgtype in IMAGE_TYPES and 'label' not in t.name]
    if len(images) == 1:
        return images[0]
    raise BagError('no --image-topic given and no single camera topic found; '
                   f'{describe_topics(reader)}')


def parse_class_list(text: Optional[str], metadata: ModelMetadata) -> Tuple[str, ...]:
    """Comma-separated class names (empty or None: the model's default drivable classes)."""
    if not text:
        return tuple(metadata.drivable_classes)
    names = tuple(name.strip() for name in text.split(',') if name.strip())
    metadata.class_table.ids_of(names)  # raises ValueError naming unknown classes
    return names


class FolderTruth:
    """
    Ground-truth label PNGs in a folder, found by stamp or by the frame's recorded name.

    For a frame stamped ``t`` nanoseconds it tries ``<t>.png``,
    ``<sec>_<nanosec:09d>.png`` and, when the bag records the frame's source
    file (``dataset_to_bag`` does), ``<stem>.png``.
    """

    def __init__(self, folder: Path, names: Optional[Mapping[int, str]] = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise BagError(f"labels folder '{self.folder}' does not exist")
        self.names = dict(names or {})

    def describe(self) -> str:
        """Where the ground truth comes from, for reports."""
        return f'folder {self.folder}'

    def candidates(self, stamp: int) -> List[Path]:
        """Files that could hold the ground truth of ``stamp``."""
        sec, nanosec = divmod(stamp, 1_000_000_000)
        names = [str(stamp), f'{sec}_{nanosec:09d}']
        if stamp in self.names:
            names.append(self.names[stamp])
        return [self.folder / f'{name}.png' for name in names]

    def get(self, stamp: int) -> Optional[np.ndarray]:
        """Read the HxW uint8 labels of ``stamp``: None if no file matches, MessageError if bad."""
        for path in self.candidates(stamp):
            if path.is_file():
                labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
                if labels is None or labels.ndim != 2 or labels.dtype != np.uint8:
                    raise MessageError(f"'{path}' is not a single-channel 8-bit label image")
                return labels
        return None


class StampMatcher:
    """
    Pairs predictions with ground truth by header stamp, whichever arrives first.

    ``truth_stamps`` (when known) are the stamps that have ground truth, so a
    frame without any is reported at once instead of being held.
    """

    def __init__(self, truth_stamps: Optional[AbstractSet[int]] = None):
        self.truth_stamps = truth_stamps
        self._truth: Dict[int, np.ndarray] = {}
        self._predictions: Dict[int, Any] = {}

    def expects_truth(self, stamp: int) -> bool:
        """Whether ground truth for ``stamp`` exists (or may still come)."""
        return self.truth_stamps is None or stamp in self.truth_stamps

    def add_truth(self, stamp: int, labels: np.ndarray) -> Optional[Tuple[Any, np.ndarray]]:
        """Store ground truth; return (prediction, labels) if its prediction was waiting."""
        if stamp in self._predictions:
            return self._predictions.pop(stamp), labels
        self._truth[stamp] = labels
        return None

    def add_prediction(self, stamp: int, prediction: Any) -> Optional[Tuple[Any, np.ndarray]]:
        """Store a prediction; return (prediction, labels) if its ground truth was waiting."""
        if stamp in self._truth:
            return prediction, self._truth.pop(stamp)
        self._predictions[stamp] = prediction
        return None

    def discard_truth(self, stamp: int) -> None:
        """Forget the ground truth of a frame that will not be answered."""
        self._truth.pop(stamp, None)

    def unmatched_predictions(self) -> List[Any]:
        """Predictions whose ground truth never came."""
        return list(self._predictions.values())

    def unmatched_truth(self) -> List[int]:
        """Stamps of ground truth with no prediction."""
        return sorted(self._truth)


class Scoreboard:
    """Accumulates the confusion matrix and drivable-area intersection / union over frames."""

    def __init__(self, metadata: ModelMetadata, drivable_classes: Sequence[str]):
        self.metadata = metadata
        self.confusion = ConfusionMatrix(metadata.num_classes, metadata.void_id)
        self.drivable_classes = tuple(drivable_classes)
        self._drivable = np.zeros(256, dtype=bool)
        self._drivable[list(metadata.class_table.ids_of(self.drivable_classes))] = True
        self._valid = np.zeros(256, dtype=bool)
        self._valid[:metadata.num_classes] = True
        if metadata.void_id is not None and metadata.void_id < 256:
            self._valid[metadata.void_id] = False
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
        }


def latency_summary(seconds: Iterable[float]) -> Dict[str, Optional[float]]:
    """Count, mean, p50, p90, p99 and max of durations, in milliseconds (None when empty)."""
    values = np.asarray(list(seconds), dtype=np.float64) * 1000.0
    if values.size == 0:
        return {'count': 0, 'mean_ms': None, 'p50_ms': None, 'p90_ms': None, 'p99_ms': None,
                'max_ms': None}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {'count': int(values.size), 'mean_ms': float(values.mean()), 'p50_ms': float(p50),
            'p90_ms': float(p90), 'p99_ms': float(p99), 'max_ms': float(values.max())}


def skipped_dict(skipped: Counter) -> Dict[str, int]:
    """Reasons for skipped frames, most frequent first."""
    return dict(skipped.most_common())


def _percent(value: Optional[float]) -> str:
    return '   n/a' if value is None else f'{100.0 * value:6.2f}'


def _ms(value: Optional[float]) -> str:
    return 'n/a' if value is None else f'{value:.1f}'


def format_table(report: Mapping[str, Any]) -> str:
    """Format the report of either tool as a plain-text table for the terminal."""
    lines = [f"{report['tool']}: {report['bag']}",
             f"  frames: {report['image_topic']} ({report['image_type']}); "
             f"ground truth: {report['ground_truth']}",
             f"  model: {report['model']}"]
    frames = report['frames']
    counts = ', '.join(f'{key} {value}' for key, value in frames.items()
                       if key != 'skipped_reasons')
    lines.append(f'  frames {counts}')
    for reason, count in frames.get('skipped_reasons', {}).items():
        lines.append(f'    skipped {count}: {reason}')
    accuracy = report.get('accuracy')
    if accuracy and accuracy['frames']:
        width = max(len(name) for name in accuracy['per_class_iou'])
        width = max(width, len('drivable IoU'), len('class-avg accuracy'))
        lines.append(f"  {'class':<{width}}  IoU %  acc %")
        for name, iou in accuracy['per_class_iou'].items():
            lines.append(f'  {name:<{width}} {_percent(iou)} '
                         f"{_percent(accuracy['per_class_accuracy'][name])}")
        lines.append(f"  {'mIoU':<{width}} {_percent(accuracy['mean_iou'])}")
        lines.append(f"  {'class-avg accuracy':<{width}} "
                     f"{_percent(accuracy['mean_class_accuracy'])}")
        lines.append(f"  {'global accuracy':<{width}} {_percent(accuracy['global_accuracy'])}")
        drivable = accuracy['drivable']
        lines.append(f"  {'drivable IoU':<{width}} {_percent(drivable['iou'])}  "
                     f"({', '.join(drivable['classes']) or 'no classes'})")
    else:
        lines.append('  accuracy: no frame had ground truth')
    for key, title in (('latency', 'latency (decode + segment)'),
                       ('segment_latency', 'latency (segment only)'),
                       ('end_to_end_latency', 'end-to-end latency')):
        if key in report:
            latency = report[key]
            lines.append(f"  {title} ms: p50 {_ms(latency['p50_ms'])}  "
                         f"p90 {_ms(latency['p90_ms'])}  p99 {_ms(latency['p99_ms'])}  "
                         f"(n={latency['count']})")
    for key, title in (('fps', 'frames per second'), ('output_rate_hz', 'output rate Hz'),
                       ('input_rate_hz', 'input rate Hz')):
        if report.get(key) is not None:
            lines.append(f'  {title}: {report[key]:.2f}')
    return '\n'.join(lines)


def add_bag_arguments(parser: argparse.ArgumentParser, action: str) -> None:
    """Add the arguments both bag evaluations share: the bag, its topics, model, outputs."""
    parser.add_argument('bag', type=Path, help='rosbag2 bag (directory, .db3 or .mcap)')
    parser.add_argument('--image-topic', default=None,
                        help='camera topic, sensor_msgs/Image or CompressedImage '
                        '(default: /camera/image_raw[/compressed] or the only image topic)')
    truth = parser.add_mutually_exclusive_group()
    truth.add_argument('--labels-topic', default=None,
                       help=f'ground-truth mono8 topic (default: {DEFAULT_LABELS_TOPIC} '
                       'when present)')
    truth.add_argument('--labels-dir', type=Path, default=None,
                       help='folder of label PNGs named <stamp_ns>.png, <sec>_<nanosec>.png '
                       'or after the source frame recorded by dataset_to_bag')
    parser.add_argument('--model', default='',
                        help='model file (empty: the bundled enet_camvid.safetensors); its '
                        'classes are used for scoring')
    parser.add_argument('--drivable-classes', default='',
                        help="comma-separated class names (default: the model's)")
    parser.add_argument('--limit', type=int, default=None, help=f'{action} the first N frames')
    parser.add_argument('--json', type=Path, default=None, help='write every figure here')
    parser.add_argument('--no-progress', dest='progress', action='store_false',
                        help='no progress bar')


def write_json(path: Path, report: Mapping[str, Any]) -> None:
    """Write ``report`` as indented JSON, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + '\n')
