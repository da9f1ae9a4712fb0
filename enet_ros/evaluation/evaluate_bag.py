r"""
Offline evaluation of a rosbag2 bag: segment every camera frame, score against ground truth.

Every frame of the image topic (``sensor_msgs/Image`` rgb8, bgr8, rgba8, bgra8,
mono8 or ``CompressedImage`` JPEG / PNG) goes through
:class:`enet_ros.segmenter.Segmenter`, the node's inference path. Ground truth
comes from a label topic of the bag (mono8, matched by header stamp) or from a
folder of label PNGs (matched by stamp or by the frame's recorded file name).

Reports frames read / evaluated / skipped (with reasons), mIoU and per-class
IoU, class-average and global accuracy, drivable-area IoU, segment latency
percentiles and frames per second: as a table, a JSON file, optionally a PNG
report and an output bag with the node's four topics (input headers kept).

Example::

    evaluate_bag /tmp/camvid_val_bag --json /tmp/eval.json --report /tmp/eval.png \
        --output-bag /tmp/camvid_val_seg

No rclpy: this module needs only rosbags and the core.
"""

import argparse
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
import sys
import time
from typing import (AbstractSet, Any, Callable, Dict, List, Optional, Protocol, Sequence,
                    Union)

import numpy as np
from tqdm import tqdm

from .bag_io import (array_to_image, BagError, BagWriter, deserialize, frame_names, IMAGE,
                     IMAGE_TYPES, message_to_frame, message_to_labels, MessageError, open_bag,
                     read_messages, require_topic, stamp_to_ns, storage_of, STORAGES)
from .scoring import (add_bag_arguments, DEFAULT_LABELS_TOPIC, FolderTruth, format_table,
                      latency_summary, NO_TRUTH, parse_class_list, resolve_image_topic,
                      Scoreboard, skipped_dict, StampMatcher, write_json)
from .. import masks
from ..model_file import ModelFileError, ModelMetadata
from ..segmenter import DEVICE_CHOICES, PRECISIONS, Segmenter, SegmenterConfigError

TOOL = 'evaluate_bag'
OUTPUT_TOPICS = ('labels', 'colored', 'overlay', 'drivable')


class SegmenterLike(Protocol):
    """What the evaluation needs of a segmenter (:class:`Segmenter` or a test double)."""

    metadata: ModelMetadata

    def segment(self, image: np.ndarray, bgr: bool = False) -> Any:
        """HxWx3 uint8 image to a result whose ``labels`` is an HxW uint8 array."""


@dataclass(frozen=True)
class EvaluateOptions:
    """What to evaluate and what to write; see ``evaluate_bag --help``."""

    bag: Path
    image_topic: Optional[str] = None
    labels_topic: Optional[str] = None
    labels_dir: Optional[Path] = None
    drivable_classes: Optional[str] = None
    output_bag: Optional[Path] = None
    output_storage: Optional[str] = None
    output_prefix: str = '/segmentation_node'
    copy_input: bool = True
    overlay_alpha: float = 0.5
    overwrite: bool = False
    json_path: Optional[Path] = None
    report_path: Optional[Path] = None
    report_frames: int = 4
    stamps: Optional[AbstractSet[int]] = None
    limit: Optional[int] = None
    progress: bool = True


@dataclass
class _Frame:
    """One segmented frame waiting for (or scored against) its ground truth."""

    record: Dict[str, Any]
    labels: np.ndarray
    rgb: Optional[np.ndarray] = None


@dataclass
class _ReportPicker:
    """Chooses up to ``count`` evaluated frames spread over the bag for the PNG report."""

    total: int
    count: int
    frames: List[Any] = field(default_factory=list)

    def __post_init__(self):
        count = min(self.count, self.total)
        self.targets = sorted({int(round(v)) for v in np.linspace(0, self.total - 1, count)}) \
            if count > 0 else []

    def wants(self, index: int) -> bool:
        """Whether the frame at ``index`` may go into the report (keep its image)."""
        done = len(self.frames)
        return done < len(self.targets) and index >= self.targets[done]

    def offer(self, frame: _Frame, truth: np.ndarray) -> None:
        """Keep an evaluated frame if it is the next one wanted."""
        if frame.rgb is not None and self.wants(frame.record['index']):
            from .report import ReportFrame
            self.frames.append(ReportFrame(frame.record['index'], frame.record['stamp_ns'],
                                           frame.rgb, frame.labels, truth))


class _Outputs:
    """Writes the node's four output topics (and optionally the inputs) to a bag."""

    def __init__(self, writer: BagWriter, prefix: str, metadata: ModelMetadata,
                 drivable_ids: Sequence[int], alpha: float):
        self.writer = writer
        self.topics = {name: f"{prefix.rstrip('/')}/{name}" for name in OUTPUT_TOPICS}
        for topic in self.topics.values():
            writer.add_topic(topic, IMAGE)
        self.palette = masks.palette_lut(metadata.colors)
        self.drivable = masks.drivable_lut(drivable_ids)
        self.alpha = alpha

    def write(self, header: Any, log_time: int, labels: np.ndarray, rgb: np.ndarray) -> None:
        """Write labels (mono8), colour and overlay (rgb8), drivable (mono8 0/255)."""
        colored = masks.colorize(labels, self.palette)
        images = {'labels': (labels, 'mono8'), 'colored': (colored, 'rgb8'),
                  'overlay': (masks.overlay(rgb, colored, self.alpha), 'rgb8'),
                  'drivable': (masks.drivable_mask(labels, self.drivable), 'mono8')}
        for name, (array, encoding) in images.items():
            self.writer.write(self.topics[name], array_to_image(array, encoding, header),
                              log_time)


def _truth_stamps(reader: Any, topic: str) -> set:
    """Header stamps of every readable message of the ground-truth topic (first pass)."""
    stamps = set()
    for raw in read_messages(reader, [topic]):
        try:
            stamps.add(stamp_to_ns(deserialize(raw.data, raw.msgtype).header.stamp))
        except MessageError:
            continue
    return stamps


def _ground_truth(reader: Any, options: EvaluateOptions, image_topic: str):
    """(labels topic or None, FolderTruth or None, description) from the options and bag."""
    if options.labels_dir:
        folder = FolderTruth(options.labels_dir, frame_names(reader))
        return None, folder, folder.describe()
    topic = options.labels_topic
    if not topic:
        if DEFAULT_LABELS_TOPIC not in reader.topics:
            return None, None, 'none'
        topic = DEFAULT_LABELS_TOPIC
    require_topic(reader, topic, IMAGE_TYPES)
    if topic == image_topic:
        raise BagError(f"the labels topic '{topic}' is the image topic")
    return topic, None, f'topic {topic}'


def evaluate_bag(options: EvaluateOptions,
                 segmenter: Union[SegmenterLike, Callable[[], SegmenterLike]],
                 log: Callable[[str], None] = lambda text: print(text, file=sys.stderr)
                 ) -> Dict[str, Any]:
    """
    Evaluate ``options.bag`` and return the report (also written where options say).

    ``segmenter`` is a :class:`Segmenter` (or a test double with its
    ``metadata`` and ``segment``), or a function making one, called only after
    the bag and its topics have been checked. Raises :class:`BagError` for a
    bag that cannot be evaluated at all.
    """
    with open_bag(options.bag) as reader, ExitStack() as stack:
        image = resolve_image_topic(reader, options.image_topic)
        truth_topic, folder, truth_text = _ground_truth(reader, options, image.name)
        if truth_text == 'none':
            log(f"{TOOL}: warning: no ground truth (the bag has no '{DEFAULT_LABELS_TOPIC}' "
                'topic; give --labels-topic or --labels-dir); reporting latency only')
        if not hasattr(segmenter, 'segment'):
            segmenter = segmenter()
        metadata = segmenter.metadata
        drivable = parse_class_list(options.drivable_classes, metadata)
        scoreboard = Scoreboard(metadata, drivable)
        matcher = StampMatcher(_truth_stamps(reader, truth_topic)) if truth_topic else None
        outputs = None
        if options.output_bag:
            writer = stack.enter_context(BagWriter(
                options.output_bag, options.output_storage or storage_of(options.bag),
                overwrite=options.overwrite))
            outputs = _Outputs(writer, options.output_prefix, metadata,
                               metadata.class_table.ids_of(drivable), options.overlay_alpha)
            if options.copy_input:
                for topic in filter(None, (image.name, truth_topic)):
                    writer.add_topic(topic, reader.topics[topic].msgtype)
        total = min(image.count, options.limit) if options.limit else image.count
        picker = _ReportPicker(total, options.report_frames if options.report_path else 0)
        skipped: Counter = Counter()
        records: List[Dict[str, Any]] = []
        seen = set()
        segment_s: List[float] = []
        frame_s: List[float] = []

        def skip(record: Dict[str, Any], reason: str) -> None:
            record['status'] = reason
            skipped[reason] += 1

        def score(frame: _Frame, truth: Union[np.ndarray, MessageError]) -> None:
            if isinstance(truth, MessageError):
                skip(frame.record, f'unreadable ground truth: {truth}')
                return
            try:
                scoreboard.add(frame.labels, truth)
            except MessageError as error:
                skip(frame.record, f'ground truth size differs: {error}')
                return
            frame.record['status'] = 'evaluated'
            picker.offer(frame, truth)

        progress = tqdm(total=total, unit='frame', desc=TOOL, disable=not options.progress,
                        file=sys.stderr, dynamic_ncols=True)
        started = time.perf_counter()
        topics = [image.name] + ([truth_topic] if truth_topic else [])
        for raw in read_messages(reader, topics):
            if raw.topic == truth_topic:
                if outputs and options.copy_input:
                    outputs.writer.write_raw(raw.topic, raw.data, raw.log_time)
                try:
                    msg = deserialize(raw.data, raw.msgtype)
                    stamp = stamp_to_ns(msg.header.stamp)
                except MessageError:
                    continue
                try:
                    labels = message_to_labels(msg, raw.msgtype)
                except MessageError as error:
                    labels = error
                pair = matcher.add_truth(stamp, labels)
                if pair:
                    score(*pair)
                continue
            if len(records) >= total:
                if matcher is None or not matcher.unmatched_predictions():
                    break
                continue
            record = {'index': len(records), 'log_time_ns': raw.log_time, 'stamp_ns': None,
                      'status': None}
            records.append(record)
            progress.update()
            if outputs and options.copy_input:
                outputs.writer.write_raw(raw.topic, raw.data, raw.log_time)
            begin = time.perf_counter()
            try:
                msg = deserialize(raw.data, raw.msgtype)
                stamp = stamp_to_ns(msg.header.stamp)
                record['stamp_ns'] = stamp
                if options.stamps is not None and stamp not in options.stamps:
                    skip(record, 'stamp not selected')
                    continue
                if stamp in seen:
                    skip(record, 'duplicate stamp (an earlier frame has the same stamp)')
                    continue
                seen.add(stamp)
                camera = message_to_frame(msg, raw.msgtype)
            except MessageError as error:
                skip(record, str(error))
                continue
            inference = time.perf_counter()
            labels = segmenter.segment(camera.pixels, bgr=camera.bgr).labels
            done = time.perf_counter()
            segment_s.append(done - inference)
            frame_s.append(done - begin)
            record['segment_ms'] = 1000.0 * (done - inference)
            record['latency_ms'] = 1000.0 * (done - begin)
            rgb = camera.rgb() if outputs or picker.wants(record['index']) else None
            if outputs:
                outputs.write(msg.header, raw.log_time, labels, rgb)
            frame = _Frame(record, labels, np.ascontiguousarray(rgb)
                           if picker.wants(record['index']) else None)
            if folder is not None:
                try:
                    truth = folder.get(stamp)
                except MessageError as error:
                    truth = error
                if truth is None:
                    skip(record, NO_TRUTH)
                else:
                    score(frame, truth)
            elif matcher is not None and matcher.expects_truth(stamp):
                pair = matcher.add_prediction(stamp, frame)
                if pair:
                    score(*pair)
            else:
                skip(record, NO_TRUTH)
        progress.close()
        wall = time.perf_counter() - started
        for frame in (matcher.unmatched_predictions() if matcher else []):
            skip(frame.record, NO_TRUTH)

    report = _report(options, image, truth_text, segmenter, scoreboard, records, skipped,
                     segment_s, frame_s, wall)
    if options.json_path:
        write_json(options.json_path, report)
    if options.report_path:
        from .report import write_report
        write_report(options.report_path, picker.frames, report['accuracy'], metadata,
                     title=f'{options.bag} ({image.name})')
    return report


def _report(options: EvaluateOptions, image: Any, truth_text: str, segmenter: Any,
            scoreboard: Scoreboard, records: List[Dict[str, Any]], skipped: Counter,
            segment_s: List[float], frame_s: List[float], wall: float) -> Dict[str, Any]:
    describe = getattr(segmenter, 'describe', None)
    segmented = len(segment_s)
    return {
        'tool': TOOL,
        'bag': str(options.bag),
        'image_topic': image.name,
        'image_type': image.msgtype,
        'ground_truth': truth_text,
        'model': describe() if describe else type(segmenter).__name__,
        'frames': {'read': len(records), 'segmented': segmented,
                   'evaluated': scoreboard.frames, 'skipped': sum(skipped.values()),
                   'skipped_reasons': skipped_dict(skipped)},
        'accuracy': scoreboard.as_dict(),
        'latency': latency_summary(frame_s),
        'segment_latency': latency_summary(segment_s),
        'fps': segmented / wall if segmented and wall > 0 else None,
        'wall_s': wall,
        'output_bag': str(options.output_bag) if options.output_bag else None,
        'per_frame': records,
    }


def get_args_parser() -> argparse.ArgumentParser:
    """Build the command-line interface of ``evaluate_bag``."""
    parser = argparse.ArgumentParser(
        prog=TOOL, description="Segment every frame of a rosbag2 bag with the node's "
        'inference path and score it against ground truth.')
    add_bag_arguments(parser, 'evaluate')
    parser.add_argument('--device', default='auto', help=f"one of {', '.join(DEVICE_CHOICES)}")
    parser.add_argument('--precision', default='auto', choices=PRECISIONS)
    parser.add_argument('--report', type=Path, default=None, help='write a PNG report here')
    parser.add_argument('--report-frames', type=int, default=4,
                        help='frames shown in the PNG report')
    parser.add_argument('--output-bag', type=Path, default=None,
                        help='write labels / colored / overlay / drivable topics to this bag')
    parser.add_argument('--output-storage', choices=sorted(STORAGES), default=None,
                        help='storage of the output bag (default: that of the input)')
    parser.add_argument('--output-prefix', default='/segmentation_node',
                        help="namespace of the output topics (the node's by default)")
    parser.add_argument('--no-copy-input', dest='copy_input', action='store_false',
                        help='do not copy the camera and label topics into the output bag')
    parser.add_argument('--overlay-alpha', type=float, default=0.5)
    parser.add_argument('--overwrite', action='store_true',
                        help='replace an existing output bag')
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``evaluate_bag``; 0 on success, 1 when nothing could be evaluated or on bad input."""
    args = get_args_parser().parse_args(argv)
    options = EvaluateOptions(
        bag=args.bag, image_topic=args.image_topic, labels_topic=args.labels_topic,
        labels_dir=args.labels_dir, drivable_classes=args.drivable_classes,
        output_bag=args.output_bag, output_storage=args.output_storage,
        output_prefix=args.output_prefix, copy_input=args.copy_input,
        overlay_alpha=args.overlay_alpha, overwrite=args.overwrite, json_path=args.json,
        report_path=args.report, report_frames=args.report_frames, limit=args.limit,
        progress=args.progress)

    def make_segmenter() -> Segmenter:
        return Segmenter.from_file(args.model or None, device=args.device,
                                   precision=args.precision)

    try:
        report = evaluate_bag(options, make_segmenter)
    except (BagError, ModelFileError, SegmenterConfigError, ValueError) as error:
        print(f'{TOOL}: error: {error}', file=sys.stderr)
        return 1
    print(format_table(report))
    if report['ground_truth'] != 'none' and not report['frames']['evaluated']:
        print(f'{TOOL}: error: no frame could be evaluated (see the skipped reasons)',
              file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
