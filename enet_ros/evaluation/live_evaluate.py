"""
Live evaluation: play a bag into the running segmentation node over ROS 2 and score its output.

The camera messages of the bag are published as they are (serialised bytes,
header stamps from the bag) at the recorded rate times ``--rate``, on the
topic the node listens to; the node's ``~/labels`` are recorded and paired by
stamp with the ground truth (a label topic of the bag or a folder of PNGs).
Reports the accuracy figures of ``evaluate_bag`` over the frames the node
answered, the end-to-end latency (receipt of the labels minus the publish time
of the frame, one clock), the frames the node dropped, and its output rate.

Every published frame is accounted for: answered (then evaluated, or skipped
for a reason) or dropped. The node drops a frame when a newer one replaces it
before inference (latest frame wins), so once a later frame is answered an
earlier unanswered one is dropped; after the last frame the tool waits
``--wait`` seconds (from the last output) for the rest.

By default the node is started as a subprocess (``python -m
enet_ros.node.main`` with the package's config/segment.yaml);
``--attach`` uses one already running. Needs no ``ros2 bag play``. Unless
``FASTDDS_DEFAULT_PROFILES_FILE`` (or the Humble name) is set, this process and
the node it starts use the package's large-image Fast DDS profile.

Example::

    live_evaluate /tmp/camvid_val_bag --rate 0.5 --json /tmp/live.json
"""

import argparse
from collections import Counter, OrderedDict
import contextlib
from dataclasses import dataclass
import os
from pathlib import Path
import queue
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from tqdm import tqdm

from .bag_io import (BagError, BagWriter, COMPRESSED_IMAGE, deserialize, frame_names, IMAGE,
                     IMAGE_TYPES, message_to_labels, MessageError, open_bag, read_messages,
                     require_topic, stamp_to_ns)
from .node_process import node_command as process_command, NodeProcess
from .scoring import (add_bag_arguments, DEFAULT_LABELS_TOPIC, FolderTruth, format_table,
                      latency_summary, NO_TRUTH, parse_class_list, resolve_image_topic,
                      Scoreboard, skipped_dict, StampMatcher, write_json)
from ..model_file import load_model_file, ModelFileError
from ..node.dds import with_large_image_transport

TOOL = 'live_evaluate'
NODE_NAME = 'segmentation_node'
RECORDED_OUTPUTS = ('labels', 'colored', 'overlay', 'drivable')
DROPPED = 'dropped by the node or in transport (a later frame was answered)'


class LiveError(RuntimeError):
    """The live evaluation cannot run: the node did not start or never became ready."""


@dataclass(frozen=True)
class LiveOptions:
    """What to play and how; see ``live_evaluate --help``."""

    bag: Path
    model: str = ''
    image_topic: Optional[str] = None
    labels_topic: Optional[str] = None
    labels_dir: Optional[Path] = None
    drivable_classes: Optional[str] = None
    rate: float = 1.0
    attach: bool = False
    node_name: str = NODE_NAME
    input_topic: Optional[str] = None
    params_file: Optional[Path] = None
    node_parameters: Tuple[str, ...] = ()
    startup_timeout: float = 90.0
    settle: float = 1.0
    wait: float = 5.0
    limit: Optional[int] = None
    json_path: Optional[Path] = None
    node_log: Optional[Path] = None
    record_bag: Optional[Path] = None
    progress: bool = True


def node_command(options: LiveOptions, input_topic: str, compressed: bool) -> List[str]:
    """Build the command line that starts the node listening on ``input_topic``."""
    parameters: Dict[str, object] = {'model_path': options.model} if options.model else {}
    if compressed:
        parameters['input_transport'] = 'compressed'
        remaps = {'image/compressed': input_topic}
    else:
        remaps = {'image': input_topic}
    return process_command(parameters, remaps, options.params_file, options.node_parameters)


class _Peer:
    """The rclpy side: a publisher of camera frames and a recorder of the node's labels."""

    def __init__(self, input_topic: str, msgtype: str, labels_topic: str,
                 recorder: Optional[BagWriter] = None):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image

        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('enet_live_evaluate', context=self.context)
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                              reliability=ReliabilityPolicy.RELIABLE)
        self.publisher = self.node.create_publisher(
            CompressedImage if msgtype == COMPRESSED_IMAGE else Image, input_topic, reliable)
        self.labels_topic = labels_topic
        self.received: 'queue.SimpleQueue[Tuple[int, float, Any]]' = queue.SimpleQueue()
        record = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                            reliability=ReliabilityPolicy.RELIABLE)
        self.subscriptions = [
            self.node.create_subscription(Image, labels_topic, self._on_labels, record)]
        if recorder is not None:
            for output in RECORDED_OUTPUTS:
                topic = labels_topic.rsplit('/', 1)[0] + '/' + output
                recorder.add_topic(topic, IMAGE)
                self.subscriptions.append(self.node.create_subscription(
                    Image, topic, lambda data, topic=topic: recorder.write_raw(
                        topic, data, time.time_ns()), record, raw=True))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name='ros', daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except ExternalShutdownException:  # close() shut the context down
            pass

    def _on_labels(self, msg: Any) -> None:
        received = time.monotonic()
        try:
            labels: Any = message_to_labels(msg, IMAGE).copy()
        except MessageError as error:
            labels = error
        self.received.put((stamp_to_ns(msg.header.stamp), received, labels))

    def ready(self) -> bool:
        """Whether the node subscribes to our frames and is matched with our recorders."""
        return (self.publisher.get_subscription_count() > 0
                and all(s.get_publisher_count() > 0 for s in self.subscriptions))

    def publish(self, data: bytes) -> None:
        """Publish one serialised camera message."""
        self.publisher.publish(data)

    def close(self) -> None:
        """
        End the spin, then tear the executor and the node down.

        Shutting the context down wakes the spinning executor; only after its
        thread has ended are the executor and node destroyed (tearing them down
        under a running spin can crash the process).
        """
        self._rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=10.0)
        if self._thread.is_alive():
            return  # a daemon thread: left to the interpreter's exit
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()


class _Session:
    """Book-keeping of one playback: published frames, answers, scores."""

    def __init__(self, scoreboard: Scoreboard, matcher: Optional[StampMatcher],
                 folder: Optional[FolderTruth]):
        self.scoreboard = scoreboard
        self.matcher = matcher
        self.folder = folder
        self.records: List[Dict[str, Any]] = []
        self.pending: 'OrderedDict[int, Tuple[Dict[str, Any], float]]' = OrderedDict()
        self.skipped: Counter = Counter()
        self.latencies: List[float] = []
        self.publish_times: List[float] = []
        self.receive_times: List[float] = []
        self.answered = 0
        self.dropped = 0
        self.unexpected = 0

    def skip(self, record: Dict[str, Any], reason: str) -> None:
        record['status'] = reason
        self.skipped[reason] += 1

    def score(self, record: Dict[str, Any], labels: np.ndarray, truth: Any) -> None:
        if isinstance(truth, MessageError):
            self.skip(record, f'unreadable ground truth: {truth}')
            return
        try:
            self.scoreboard.add(labels, truth)
        except MessageError as error:
            self.skip(record, f'ground truth size differs: {error}')
            return
        record['status'] = 'evaluated'

    def truth(self, stamp: int, labels: Any) -> None:
        pair = self.matcher.add_truth(stamp, labels)
        if pair:
            (record, prediction), truth = pair
            self.score(record, prediction, truth)

    def drop(self, stamp: int, reason: str) -> None:
        record, _ = self.pending.pop(stamp)
        self.dropped += 1
        record['status'] = reason
        if self.matcher:
            self.matcher.discard_truth(stamp)

    def answer(self, stamp: int, received: float, labels: Any) -> None:
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
            self.skip(record, f'unreadable labels from the node: {labels}')
        elif self.folder is not None:
            try:
                truth = self.folder.get(stamp)
            except MessageError as error:
                truth = error
            if truth is None:
                self.skip(record, NO_TRUTH)
            else:
                self.score(record, labels, truth)
        elif self.matcher is not None and self.matcher.expects_truth(stamp):
            pair = self.matcher.add_prediction(stamp, (record, labels))
            if pair:
                (record, prediction), truth = pair
                self.score(record, prediction, truth)
        else:
            self.skip(record, NO_TRUTH)

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


def _wait_ready(peer: _Peer, node: Optional[NodeProcess], options: LiveOptions,
                input_topic: str) -> None:
    deadline = time.monotonic() + options.startup_timeout
    while not peer.ready():
        if node is not None and node.exited() is not None:
            raise LiveError(f'the segmentation node exited with code {node.exited()} before '
                            f'it was ready; its log ({node.log_path}):\n{node.tail()}')
        if time.monotonic() > deadline:
            log = f'; its log ({node.log_path}):\n{node.tail()}' if node else ''
            raise LiveError(
                f'the segmentation node was not ready within {options.startup_timeout:.0f} s '
                f'(subscribers of {input_topic}: {peer.publisher.get_subscription_count()}, '
                f'publishers of {peer.labels_topic}: '
                f'{peer.node.count_publishers(peer.labels_topic)}){log}')
        time.sleep(0.1)
    time.sleep(options.settle)  # discovery completes on both sides


def live_evaluate(options: LiveOptions,
                  log=lambda text: print(text, file=sys.stderr)) -> Dict[str, Any]:
    """
    Play ``options.bag`` into the node and return the report; see the module docstring.

    Raises :class:`BagError` for a bag that cannot be played, :class:`LiveError`
    when the node does not come up, ModelFileError for a bad model.
    """
    if options.rate <= 0:
        raise ValueError(f'rate must be positive, got {options.rate}')
    metadata = load_model_file(options.model or None).metadata
    drivable = parse_class_list(options.drivable_classes, metadata)
    node = None
    with open_bag(options.bag) as reader:
        image = resolve_image_topic(reader, options.image_topic)
        folder, truth_topic, truth_text = None, None, 'none'
        if options.labels_dir:
            folder = FolderTruth(options.labels_dir, frame_names(reader))
            truth_text = folder.describe()
        elif options.labels_topic or DEFAULT_LABELS_TOPIC in reader.topics:
            truth_topic = options.labels_topic or DEFAULT_LABELS_TOPIC
            require_topic(reader, truth_topic, IMAGE_TYPES)
            truth_text = f'topic {truth_topic}'
        else:
            log(f"{TOOL}: warning: no ground truth (no '{DEFAULT_LABELS_TOPIC}' topic; give "
                '--labels-topic or --labels-dir); reporting latency and drops only')
        matcher = None
        if truth_topic:
            stamps = set()
            for raw in read_messages(reader, [truth_topic]):
                try:
                    stamps.add(stamp_to_ns(deserialize(raw.data, raw.msgtype).header.stamp))
                except MessageError:
                    continue
            matcher = StampMatcher(stamps)
        compressed = image.msgtype == COMPRESSED_IMAGE
        input_topic = options.input_topic or image.name
        labels_topic = f"/{options.node_name.strip('/')}/labels"
        session = _Session(Scoreboard(metadata, drivable), matcher, folder)
        total = min(image.count, options.limit) if options.limit else image.count
        # This process sends the frames and the node the outputs: both use the package's
        # large-image Fast DDS profile unless one is chosen (before any participant starts).
        os.environ.update(with_large_image_transport(os.environ))
        try:
            if not options.attach:
                node = NodeProcess(node_command(options, input_topic, compressed),
                                   log_path=options.node_log)
                log(f"{TOOL}: started the node: {' '.join(node.command)} (log {node.log_path})")
            recorder = (BagWriter(options.record_bag, 'mcap', overwrite=True)
                        if options.record_bag else None)
            with recorder if recorder is not None else contextlib.nullcontext():
                peer = _Peer(input_topic, image.msgtype, labels_topic, recorder)
                try:
                    _wait_ready(peer, node, options, input_topic)
                    _play(reader, image.name, truth_topic, total, options, peer, session)
                    if recorder is not None:
                        _wait_recorded(recorder, session.answered, options.wait)
                finally:
                    peer.close()
        finally:
            node_exit = node.stop() if node is not None else None
    for record, _ in session.matcher.unmatched_predictions() if session.matcher else []:
        session.skip(record, NO_TRUTH)
    report = _report(options, image, truth_text, session, node, node_exit, input_topic,
                     labels_topic)
    if options.json_path:
        write_json(options.json_path, report)
    return report


def _wait_recorded(recorder: BagWriter, answered: int, timeout: float) -> None:
    """Let the outputs published after the last frame's labels reach the recording."""
    deadline = time.monotonic() + timeout
    while (min(recorder.counts.values(), default=answered) < answered
           and time.monotonic() < deadline):
        time.sleep(0.05)


def _play(reader: Any, image_topic: str, truth_topic: Optional[str], total: int,
          options: LiveOptions, peer: _Peer, session: _Session) -> None:
    """Publish the frames on schedule, then wait for the last answers."""
    progress = tqdm(total=total, unit='frame', desc=TOOL, disable=not options.progress,
                    file=sys.stderr, dynamic_ncols=True)
    first_log = None
    start = 0.0
    seen = set()
    topics = [image_topic] + ([truth_topic] if truth_topic else [])
    for raw in read_messages(reader, topics):
        if raw.topic == truth_topic:
            try:
                msg = deserialize(raw.data, raw.msgtype)
            except MessageError:
                continue
            try:
                labels: Any = message_to_labels(msg, raw.msgtype)
            except MessageError as error:
                labels = error
            session.truth(stamp_to_ns(msg.header.stamp), labels)
            continue
        if len(session.records) >= total:
            if session.matcher is None or not session.matcher.unmatched_predictions():
                break
            continue
        record = {'index': len(session.records), 'log_time_ns': raw.log_time,
                  'stamp_ns': None, 'status': None}
        session.records.append(record)
        try:
            stamp = stamp_to_ns(deserialize(raw.data, raw.msgtype).header.stamp)
        except MessageError as error:
            session.skip(record, str(error))
            continue
        record['stamp_ns'] = stamp
        if stamp in seen:
            session.skip(record, 'duplicate stamp (an earlier frame has the same stamp)')
            continue
        seen.add(stamp)
        if first_log is None:
            first_log, start = raw.log_time, time.monotonic()
        due = start + (raw.log_time - first_log) / 1e9 / options.rate
        while True:
            remaining = due - time.monotonic()
            if remaining <= 0:
                break
            session.drain(peer.received, min(remaining, 0.01))
        published = time.monotonic()
        session.pending[stamp] = (record, published)
        session.publish_times.append(published)
        peer.publish(raw.data)
        progress.update()
        session.drain(peer.received)
    progress.close()
    deadline = time.monotonic() + options.wait
    while session.pending and time.monotonic() < deadline:
        if session.drain(peer.received, 0.05):
            deadline = time.monotonic() + options.wait
    for stamp in list(session.pending):
        session.drop(stamp, f'no output within {options.wait:g} s (dropped by the node)')


def _report(options: LiveOptions, image: Any, truth_text: str, session: _Session,
            node: Optional[NodeProcess], node_exit: Optional[int], input_topic: str,
            labels_topic: str) -> Dict[str, Any]:
    published = len(session.publish_times)

    def rate(times: List[float]) -> Optional[float]:
        return (len(times) - 1) / (times[-1] - times[0]) \
            if len(times) > 1 and times[-1] > times[0] else None

    return {
        'tool': TOOL,
        'bag': str(options.bag),
        'image_topic': image.name,
        'image_type': image.msgtype,
        'ground_truth': truth_text,
        'model': options.model or 'bundled default',
        'node': {'command': node.command if node else None, 'attached': node is None,
                 'exit_code': node_exit, 'log': node.kept_log if node else None,
                 'input_topic': input_topic, 'labels_topic': labels_topic},
        'rate': options.rate,
        'frames': {'read': len(session.records), 'published': published,
                   'answered': session.answered, 'evaluated': session.scoreboard.frames,
                   'dropped': session.dropped, 'skipped': sum(session.skipped.values()),
                   'skipped_reasons': skipped_dict(session.skipped)},
        'unexpected_outputs': session.unexpected,
        'accuracy': session.scoreboard.as_dict(),
        'end_to_end_latency': latency_summary(session.latencies),
        'input_rate_hz': rate(session.publish_times),
        'output_rate_hz': rate(session.receive_times),
        'per_frame': session.records,
    }


def get_args_parser() -> argparse.ArgumentParser:
    """Build the command-line interface of ``live_evaluate``."""
    parser = argparse.ArgumentParser(
        prog=TOOL, description='Play a rosbag2 bag into the segmentation node over ROS 2, '
        'record its labels and score them (accuracy, end-to-end latency, drops).')
    add_bag_arguments(parser, 'play')
    parser.add_argument('--rate', type=float, default=1.0,
                        help='playback speed as a multiple of the recorded rate')
    parser.add_argument('--attach', action='store_true',
                        help='use a running node instead of starting one')
    parser.add_argument('--node-name', default=NODE_NAME,
                        help='name of the node whose ~/labels are recorded')
    parser.add_argument('--input-topic', default=None,
                        help="topic to publish frames on (default: the bag's camera topic; "
                        'with --attach, the topic the node subscribes to)')
    parser.add_argument('--params-file', type=Path, default=None,
                        help='parameters file for the started node '
                        "(default: the package's config/segment.yaml)")
    parser.add_argument('-p', '--node-param', dest='node_parameters', action='append',
                        default=[], metavar='NAME:=VALUE',
                        help='extra parameter for the started node (repeatable), e.g. '
                        'device:=cpu')
    parser.add_argument('--startup-timeout', type=float, default=90.0,
                        help='seconds to wait for the node to come up')
    parser.add_argument('--wait', type=float, default=5.0,
                        help='seconds to wait for outputs after the last one received')
    parser.add_argument('--node-log', type=Path, default=None,
                        help="write the started node's output here (default: a temp file)")
    parser.add_argument('--record-bag', type=Path, default=None,
                        help="record the node's four outputs into this MCAP bag (a folder, "
                        'replaced if it is a bag), to view beside the camera in Foxglove')
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``live_evaluate``; 0 on success, 1 on bad input or when the node answered nothing."""
    args = get_args_parser().parse_args(argv)
    options = LiveOptions(
        bag=args.bag, model=args.model, image_topic=args.image_topic,
        labels_topic=args.labels_topic, labels_dir=args.labels_dir,
        drivable_classes=args.drivable_classes, rate=args.rate, attach=args.attach,
        node_name=args.node_name, input_topic=args.input_topic, params_file=args.params_file,
        node_parameters=tuple(args.node_parameters), startup_timeout=args.startup_timeout,
        wait=args.wait, limit=args.limit, json_path=args.json, node_log=args.node_log,
        record_bag=args.record_bag, progress=args.progress)
    try:
        report = live_evaluate(options)
    except KeyboardInterrupt:
        print(f'{TOOL}: interrupted', file=sys.stderr)
        return 130
    except (BagError, LiveError, ModelFileError, ValueError) as error:
        print(f'{TOOL}: error: {error}', file=sys.stderr)
        return 1
    print(format_table(report))
    if not report['frames']['answered']:
        print(f'{TOOL}: error: the node answered none of the '
              f"{report['frames']['published']} frames", file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
