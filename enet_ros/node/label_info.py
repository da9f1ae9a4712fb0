"""
``~/label_info`` (vision_msgs/LabelInfo): which class each id of ``~/labels`` is.

The class map that Nav2's semantic segmentation layer (and any consumer of
vision_msgs) reads beside the label image: one entry per class of the model
(``class_id`` = label id, ``class_name`` = the model's name, as the
``class_names`` parameter), and ``threshold`` = ``min_confidence``. The void
id that ``min_confidence`` writes is not a class and is not in the map, so
consumers treat those pixels as unlabelled (the semantic segmentation layer
skips ids it has no entry for).

Published reliable and transient local (latched) with depth 1, as
vision_msgs intends and that layer subscribes: a subscriber that joins
later gets the current map; it is published again when it changes (a model
swap, a new ``min_confidence``).
"""

from typing import Any, Sequence, Tuple

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from vision_msgs.msg import LabelInfo, VisionClass

#: The output's name beside each camera's labels (``~/label_info``, ``~/<camera>/label_info``).
LABEL_INFO_OUTPUT = 'label_info'


def label_info_qos() -> QoSProfile:
    """Return the QoS of ~/label_info: reliable, transient local, the newest map only."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def label_info_key(class_names: Sequence[str], threshold: float) -> Tuple[Tuple[str, ...], float]:
    """Return what the message holds, to tell whether a new state needs a new message."""
    return tuple(class_names), float(threshold)


def label_info_msg(class_names: Sequence[str], threshold: float, stamp: Any) -> LabelInfo:
    """Return the LabelInfo of a model's ``class_names`` (id = index), stamped ``stamp``."""
    msg = LabelInfo(threshold=float(threshold), class_map=[
        VisionClass(class_id=class_id, class_name=name)
        for class_id, name in enumerate(class_names)])
    msg.header.stamp = stamp
    return msg
