"""
Where the ground truth of a bag's frames comes from, and how it is paired with predictions.

Three sources, chosen once per run by :meth:`GroundTruth.resolve` (the same
rules and messages for ``evaluate_bag`` and ``live_evaluate``):

* a label topic of the bag (``--labels-topic``, or ``/camera/labels`` when the
  bag has it): mono8 images paired with the frames by header stamp
  (:class:`StampMatcher`), whichever of the two is read first;
* a folder of label PNGs (``--labels-dir``, :class:`FolderTruth`), found by
  stamp or by the frame's recorded file name;
* none: the tools report latency (and drops) only.

What is done with a pair (scores, skipped reasons) is
:class:`enet_ros.evaluation.scoring.Tally`'s job. No rclpy.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import AbstractSet, Any, Dict, List, Mapping, Optional, Set, Tuple, Union

import cv2
import numpy as np

from .bag_io import (BagError, deserialize, frame_names, IMAGE_TYPES, message_to_labels,
                     MessageError, RawMessage, read_messages, require_topic, stamp_to_ns)

DEFAULT_LABELS_TOPIC = '/camera/labels'
NO_TRUTH = 'no ground truth for the stamp'

#: Ground-truth labels as read: an HxW uint8 array, or the error that made them unreadable.
Labels = Union[np.ndarray, MessageError]


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
        self._truth: Dict[int, Labels] = {}
        self._predictions: Dict[int, Any] = {}
        self._abandoned: Set[int] = set()  # stamps that will get no prediction

    def expects_truth(self, stamp: int) -> bool:
        """Whether ground truth for ``stamp`` exists (or may still come)."""
        return self.truth_stamps is None or stamp in self.truth_stamps

    def add_truth(self, stamp: int, labels: Labels) -> Optional[Tuple[Any, Labels]]:
        """Store ground truth; return (prediction, labels) if its prediction was waiting."""
        if stamp in self._predictions:
            return self._predictions.pop(stamp), labels
        if stamp not in self._abandoned:
            self._truth[stamp] = labels
        return None

    def add_prediction(self, stamp: int, prediction: Any) -> Optional[Tuple[Any, Labels]]:
        """Store a prediction; return (prediction, labels) if its ground truth was waiting."""
        if stamp in self._truth:
            return prediction, self._truth.pop(stamp)
        self._predictions[stamp] = prediction
        return None

    def discard_truth(self, stamp: int) -> None:
        """Forget the ground truth of a frame that will not be answered."""
        self._truth.pop(stamp, None)

    def abandon(self, stamp: int) -> None:
        """No prediction will come for ``stamp``: forget its ground truth, now and later."""
        self._truth.pop(stamp, None)
        self._abandoned.add(stamp)

    def unmatched_predictions(self) -> List[Any]:
        """Predictions whose ground truth never came."""
        return list(self._predictions.values())

    def unmatched_truth(self) -> List[int]:
        """Stamps of ground truth with no prediction."""
        return sorted(self._truth)


def _stamp(raw: RawMessage) -> Optional[Tuple[Any, int]]:
    """(message, header stamp in ns) of a serialised message; None when it does not parse."""
    try:
        msg = deserialize(raw.data, raw.msgtype)
        return msg, stamp_to_ns(msg.header.stamp)
    except MessageError:
        return None


def decode_truth(raw: RawMessage) -> Optional[Tuple[int, Labels]]:
    """
    (stamp, labels) of a ground-truth message; None when even its header cannot be read.

    A message whose header reads but whose pixels do not gives the MessageError as
    its labels, so the frame with that stamp is skipped with the reason.
    """
    decoded = _stamp(raw)
    if decoded is None:
        return None
    msg, stamp = decoded
    try:
        return stamp, message_to_labels(msg, raw.msgtype)
    except MessageError as error:
        return stamp, error


@dataclass(frozen=True)
class GroundTruth:
    """The ground-truth source of one run: a topic of the bag, a folder, or none."""

    topic: Optional[str] = None
    folder: Optional[FolderTruth] = None

    @classmethod
    def resolve(cls, reader: Any, image_topic: str, labels_topic: Optional[str] = None,
                labels_dir: Optional[Path] = None) -> 'GroundTruth':
        """
        Choose ``labels_dir``, else ``labels_topic``, else the default topic if in the bag.

        Raises :class:`BagError` for a missing folder, a labels topic that is not
        in the bag, has another type than an image, or is the image topic.
        """
        if labels_dir:
            return cls(folder=FolderTruth(labels_dir, frame_names(reader)))
        topic = labels_topic
        if not topic:
            if DEFAULT_LABELS_TOPIC not in reader.topics:
                return cls()
            topic = DEFAULT_LABELS_TOPIC
        require_topic(reader, topic, IMAGE_TYPES)
        if topic == image_topic:
            raise BagError(f"the labels topic '{topic}' is the image topic")
        return cls(topic=topic)

    def describe(self) -> str:
        """``topic <name>``, ``folder <path>`` or ``none``, for reports."""
        if self.folder is not None:
            return self.folder.describe()
        return f'topic {self.topic}' if self.topic else 'none'

    def warning(self, tool: str, reporting: str) -> Optional[str]:
        """Return the warning to print when there is no ground truth (None when there is)."""
        if self.folder is not None or self.topic:
            return None
        return (f"{tool}: warning: no ground truth (the bag has no '{DEFAULT_LABELS_TOPIC}' "
                f'topic; give --labels-topic or --labels-dir); reporting {reporting} only')

    def matcher(self, reader: Any) -> Optional[StampMatcher]:
        """
        Return a :class:`StampMatcher` for the labels topic (None for a folder or none).

        Reads the topic once for its stamps, so a frame without ground truth is
        reported at once instead of waiting for labels that never come.
        """
        if not self.topic:
            return None
        stamps = set()
        # A corrupt part is reported by the frame loop, which reads it again; its labels are
        # not expected here, so its frames are skipped as having no ground truth.
        for raw in read_messages(reader, [self.topic], on_unreadable=lambda lost: None):
            decoded = _stamp(raw)
            if decoded is not None:
                stamps.add(decoded[1])
        return StampMatcher(stamps)
