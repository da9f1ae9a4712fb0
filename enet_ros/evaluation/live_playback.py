"""
Playback for ``live_evaluate``: frames out on the bag's schedule, the node's answers in.

:func:`play` publishes every usable camera frame of the bag (read by
:func:`~enet_ros.evaluation.bag_frames.read_frames`) at its recorded time
divided by the rate, and hands each answer to a :class:`LiveSession`.

Every published frame is accounted for: answered (then evaluated, or skipped
for a reason, by the :class:`~enet_ros.evaluation.scoring.Tally`) or dropped.
The node drops a frame when a newer one replaces it before inference (latest
frame wins), so once a later frame is answered an earlier unanswered one is
dropped; after the last frame :func:`play` waits ``wait`` seconds (from the
last answer) for the rest. No rclpy here: the peer is passed in.
"""

from collections import OrderedDict
import queue
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from .bag_frames import read_frames
from .bag_io import BagWriter, MessageError
from .scoring import Prediction, Tally

DROPPED = 'dropped by the node or in transport (a later frame was answered)'


class LiveSession:
    """The frames published to the node and its answers: latency, drops, strangers."""

    def __init__(self, tally: Tally):
        self.tally = tally
        self.pending: 'OrderedDict[int, Tuple[Dict[str, Any], float]]' = OrderedDict()
        self.latencies: List[float] = []
        self.publish_times: List[float] = []
        self.receive_times: List[float] = []
        self.answered = 0
        self.dropped = 0
        self.unexpected = 0

    def published(self, stamp: int, record: Dict[str, Any], when: float) -> None:
        """Note that the frame ``stamp`` went out at ``when`` (time.monotonic())."""
        self.pending[stamp] = (record, when)
        self.publish_times.append(when)

    def drop(self, stamp: int, reason: str) -> None:
        """Count the published frame ``stamp`` as dropped: it will not be answered."""
        record, _ = self.pending.pop(stamp)
        self.dropped += 1
        self.tally.drop(record, stamp, reason)

    def answer(self, stamp: int, received: float, labels: Any) -> None:
        """Labels (or MessageError) for ``stamp`` received at ``received`` (time.monotonic())."""
        if stamp not in self.pending:
            self.unexpected += 1
            return
        while next(iter(self.pending)) != stamp:
            self.drop(next(iter(self.pending)), DROPPED)
        record, published = self.pending.pop(stamp)
        self.answered += 1
        self.latencies.append(received - published)
        self.receive_times.append(received)
        record['latency_ms'] = 1000.0 * (received - published)
        if isinstance(labels, MessageError):
            self.tally.skip(record, f'unreadable labels from the node: {labels}')
        else:
            self.tally.predicted(stamp, Prediction(record, labels))

    def drain(self, received: 'queue.SimpleQueue', timeout: float = 0.0) -> int:
        """Handle every answer waiting (blocking up to ``timeout`` for the first)."""
        count = 0
        try:
            item = received.get(timeout=timeout) if timeout > 0 else received.get_nowait()
            while True:
                self.answer(*item)
                count += 1
                item = received.get_nowait()
        except queue.Empty:
            return count


def rate_hz(times: List[float]) -> Optional[float]:
    """Events per second over increasing ``times`` (None for fewer than two, or no span)."""
    return (len(times) - 1) / (times[-1] - times[0]) \
        if len(times) > 1 and times[-1] > times[0] else None


def play(reader: Any, image_topic: str, truth_topic: Optional[str], total: int, peer: Any,
         session: LiveSession, rate: float, wait: float, desc: str,
         progress: bool = True, limit: Optional[int] = None,
         warn: Callable[[str], None] = lambda text: print(text, file=sys.stderr)) -> None:
    """
    Publish the frames through ``peer`` on schedule, then wait for the last answers.

    Frame ``i`` goes out ``(log_time_i - log_time_0) / rate`` seconds after the
    first; answers are handled while waiting. After the last frame, each frame
    still unanswered ``wait`` seconds after the latest answer is dropped.
    ``total``, ``limit`` and ``warn`` are :func:`~.bag_frames.read_frames`'.
    """
    clock: Optional[Tuple[int, float]] = None  # (first frame's log time, its publish time)
    for frame in read_frames(reader, image_topic, truth_topic, session.tally, total, desc,
                             progress, limit=limit, warn=warn):
        if clock is None:
            clock = (frame.raw.log_time, time.monotonic())
        due = clock[1] + (frame.raw.log_time - clock[0]) / 1e9 / rate
        while True:
            remaining = due - time.monotonic()
            if remaining <= 0:
                break
            session.drain(peer.received, min(remaining, 0.01))
        session.published(frame.stamp, frame.record, time.monotonic())
        peer.publish(frame.raw.data)
        session.drain(peer.received)
    deadline = time.monotonic() + wait
    while session.pending and time.monotonic() < deadline:
        if session.drain(peer.received, 0.05):
            deadline = time.monotonic() + wait
    for stamp in list(session.pending):
        session.drop(stamp, f'no output within {wait:g} s (dropped by the node)')


def wait_recorded(recorder: BagWriter, answered: int, timeout: float) -> None:
    """Let the outputs published after the last frame's labels reach the recording."""
    deadline = time.monotonic() + timeout
    while (recorder.failure is None
           and min(recorder.counts.values(), default=answered) < answered
           and time.monotonic() < deadline):
        time.sleep(0.05)
