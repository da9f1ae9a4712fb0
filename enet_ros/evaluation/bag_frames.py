"""
A bag's camera frames, read for evaluation: the loop ``evaluate_bag`` and ``live_evaluate`` share.

:func:`resolve_image_topic` finds the camera topic; :func:`read_frames` reads
it together with the ground-truth topic in log-time order, gives every frame a
record in the :class:`~enet_ros.evaluation.scoring.Tally`, skips the frames
that cannot be used (unparsable header, a repeated stamp, a stamp not
selected, a corrupt part of the bag that cannot be read) with their reason,
hands ground-truth messages to the tally, and yields the rest for the tool to
predict (segment here, or publish to the node). It reads the bag's storage to
its end (or ``--limit``), whatever count metadata.yaml claims. No rclpy.
"""

from dataclasses import dataclass
import sys
import time
from typing import AbstractSet, Any, Callable, Iterator, Optional

from tqdm import tqdm

from .bag_io import (bag_topics, BagError, describe_topics, deserialize, IMAGE_TYPES,
                     MessageError, RawMessage, read_messages, require_topic, stamp_to_ns,
                     TopicInfo, Unreadable)
from .ground_truth import decode_truth
from .scoring import Tally

DEFAULT_IMAGE_TOPIC = '/camera/image_raw'
DUPLICATE = 'duplicate stamp (an earlier frame has the same stamp)'
NOT_SELECTED = 'stamp not selected'
#: Start of the skipped reason of camera messages in a part of the bag that cannot be read.
UNREADABLE = 'unreadable bag data'
Log = Callable[[str], None]


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


def frame_total(count: int, limit: Optional[int]) -> int:
    """How many camera frames a run should read: the topic's ``count``, at most ``limit``."""
    return min(count, limit) if limit else count


@dataclass(frozen=True)
class BagFrame:
    """A camera frame to predict: its serialised form, message, record and header stamp."""

    raw: RawMessage
    msg: Any
    record: dict
    stamp: int
    read_at: float  # time.perf_counter() before the message was deserialised


def read_frames(reader: Any, image_topic: str, truth_topic: Optional[str], tally: Tally,
                total: int, desc: str, progress: bool = True,
                selected: Optional[AbstractSet[int]] = None,
                on_raw: Optional[Callable[[RawMessage], None]] = None,
                limit: Optional[int] = None, warn: Optional[Log] = None) -> Iterator[BagFrame]:
    """
    Yield the usable frames among the camera messages, in log-time order.

    Reads every camera message the bag's storage holds, or the first ``limit``
    (``--limit``, skipped ones count); ``total`` (the expected number) only sizes
    the progress bar. A part of the bag that cannot be read (a corrupt MCAP
    chunk) is told to ``warn`` in one line (default: a warning on stderr), its
    camera messages get records skipped as :data:`UNREADABLE`, and reading goes
    on after it.

    Ground-truth messages of ``truth_topic`` go to ``tally.truth``; reading goes
    on past ``limit`` frames only while predictions wait for their ground truth.
    ``selected``: stamps to predict (others are skipped). ``on_raw`` sees every
    ground-truth message and every camera message that gets a record, before it
    is parsed (e.g. to copy it into an output bag). ``progress``: a bar on stderr
    labelled ``desc``, one step per record.
    """
    bar = tqdm(total=total, unit='frame', desc=desc, disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    seen = set()
    topics = [image_topic] + ([truth_topic] if truth_topic else [])

    def full() -> bool:
        return limit is not None and len(tally.records) >= limit

    def unreadable(lost: Unreadable) -> None:
        if warn is not None:
            warn(lost.describe())
        else:
            print(f'{desc}: warning: {lost.describe()}', file=sys.stderr)
        for _ in range(lost.counts.get(image_topic, 0)):
            if full():
                break
            bar.update()
            tally.skip(tally.new_record(lost.log_time), f'{UNREADABLE}: {lost.reason}')

    try:
        for raw in read_messages(reader, topics, on_unreadable=unreadable):
            if raw.topic == truth_topic:
                if on_raw is not None:
                    on_raw(raw)
                decoded = decode_truth(raw)
                if decoded is not None:
                    tally.truth(*decoded)
                continue
            if full():
                if not tally.waiting():
                    break
                continue
            record = tally.new_record(raw.log_time)
            bar.update()
            if on_raw is not None:
                on_raw(raw)
            read_at = time.perf_counter()
            try:
                msg = deserialize(raw.data, raw.msgtype)
                stamp = record['stamp_ns'] = stamp_to_ns(msg.header.stamp)
            except MessageError as error:
                tally.skip(record, str(error))
                continue
            if selected is not None and stamp not in selected:
                tally.abandon(record, NOT_SELECTED)
            elif stamp in seen:
                tally.skip(record, DUPLICATE)
            else:
                seen.add(stamp)
                yield BagFrame(raw, msg, record, stamp, read_at)
    finally:
        bar.close()
