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

Shared with ``live_evaluate``: the frame loop (:mod:`.bag_frames`), the ground
truth (:mod:`.ground_truth`), the scores and per-frame accounting
(:class:`.scoring.Tally`) and the report (:mod:`.report`); the output images
are built by the node's :class:`enet_ros.masks.OutputRenderer`. No rclpy: this
module needs only rosbags and the core.
"""

import argparse
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
import sys
import time
from typing import (AbstractSet, Any, Callable, Dict, Iterable, List, Optional, Protocol,
                    Sequence, Union)

import numpy as np

from .bag_frames import BagFrame, frame_total, read_frames, resolve_image_topic
from .bag_io import (array_to_image, BagError, BagWriter, IMAGE, message_to_frame, MessageError,
                     open_bag, RawMessage, storage_of, STORAGES, TopicInfo)
from .cli import bag_parser, options_from_args
from .ground_truth import GroundTruth
from .report import format_table, report_head, ReportFrame, write_json, write_report
from .scoring import latency_summary, parse_class_list, Prediction, Scoreboard, Tally
from .. import masks
from ..model_file import ModelFileError, ModelMetadata
from ..segmenter import DEVICE_CHOICES, PRECISIONS, Segmenter, SegmenterConfigError

TOOL = 'evaluate_bag'
#: Encoding of an output image by its channel count (:data:`enet_ros.masks.OUTPUT_CHANNELS`).
ENCODINGS = {1: 'mono8', 3: 'rgb8'}


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
class _ReportPicker:
    """Chooses up to ``count`` evaluated frames spread over the bag for the PNG report."""

    total: int
    count: int
    frames: List[ReportFrame] = field(default_factory=list)

    def __post_init__(self):
        count = min(self.count, self.total)
        self.targets = sorted({int(round(v)) for v in np.linspace(0, self.total - 1, count)}) \
            if count > 0 else []

    def wants(self, index: int) -> bool:
        """Whether the frame at ``index`` may go into the report (keep its image)."""
        done = len(self.frames)
        return done < len(self.targets) and index >= self.targets[done]

    def offer(self, prediction: Prediction, truth: np.ndarray) -> None:
        """Keep an evaluated frame if it is the next one wanted (:class:`Tally`'s on_scored)."""
        record = prediction.record
        if prediction.image is not None and self.wants(record['index']):
            self.frames.append(ReportFrame(record['index'], record['stamp_ns'],
                                           prediction.image, prediction.labels, truth))


class _Outputs:
    """Writes the node's four output topics (and optionally the inputs) to a bag."""

    def __init__(self, writer: BagWriter, prefix: str, renderer: masks.OutputRenderer):
        self.writer = writer
        self.renderer = renderer
        self.topics = {name: f"{prefix.rstrip('/')}/{name}" for name in masks.LABEL_IMAGES}
        for topic in self.topics.values():
            writer.add_topic(topic, IMAGE)

    def write(self, header: Any, log_time: int, labels: np.ndarray, rgb: np.ndarray) -> None:
        """Write labels, colour, overlay and drivable images, rendered as the node does."""
        images = self.renderer.render(labels, rgb)
        for name in masks.LABEL_IMAGES:
            encoding = ENCODINGS[masks.OUTPUT_CHANNELS[name]]
            self.writer.write(self.topics[name], array_to_image(images[name], encoding, header),
                              log_time)

    def copy(self, raw: RawMessage) -> None:
        """Copy an input message (camera or ground truth) as it is."""
        self.writer.write_raw(raw.topic, raw.data, raw.log_time)


def _open_outputs(stack: ExitStack, options: EvaluateOptions, reader: Any,
                  metadata: ModelMetadata, drivable: Sequence[str],
                  input_topics: Sequence[Optional[str]]) -> Optional[_Outputs]:
    """Open the output bag (closed by ``stack``) when ``options`` ask for one."""
    if not options.output_bag:
        return None
    writer = stack.enter_context(BagWriter(
        options.output_bag, options.output_storage or storage_of(options.bag),
        overwrite=options.overwrite, reading=options.bag))
    renderer = masks.OutputRenderer(metadata.colors, metadata.class_table.ids_of(drivable),
                                    options.overlay_alpha)
    outputs = _Outputs(writer, options.output_prefix, renderer)
    if options.copy_input:
        for topic in filter(None, input_topics):
            writer.add_topic(topic, reader.topics[topic].msgtype)
    return outputs


@dataclass
class _Timing:
    """Per-frame durations in seconds, and the wall time of the whole pass."""

    segment_s: List[float] = field(default_factory=list)
    frame_s: List[float] = field(default_factory=list)
    wall_s: float = 0.0


def _segment_frames(frames: Iterable[BagFrame], segmenter: SegmenterLike, tally: Tally,
                    outputs: Optional[_Outputs], picker: _ReportPicker) -> _Timing:
    """Segment every frame, write its outputs and hand its labels to ``tally``."""
    timing = _Timing()
    started = time.perf_counter()
    for frame in frames:
        record = frame.record
        try:
            camera = message_to_frame(frame.msg, frame.raw.msgtype)
        except MessageError as error:
            tally.abandon(record, str(error))  # its stamp is seen: no later frame predicts it
            continue
        inference = time.perf_counter()
        labels = segmenter.segment(camera.pixels, bgr=camera.bgr).labels
        done = time.perf_counter()
        timing.segment_s.append(done - inference)
        timing.frame_s.append(done - frame.read_at)
        record['segment_ms'] = 1000.0 * (done - inference)
        record['latency_ms'] = 1000.0 * (done - frame.read_at)
        keep = picker.wants(record['index'])
        rgb = camera.rgb() if outputs or keep else None
        if outputs:
            outputs.write(frame.msg.header, frame.raw.log_time, labels, rgb)
        tally.predicted(frame.stamp, Prediction(record, labels,
                                                np.ascontiguousarray(rgb) if keep else None))
    timing.wall_s = time.perf_counter() - started
    return timing


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
        truth = GroundTruth.resolve(reader, image.name, options.labels_topic, options.labels_dir)
        warning = truth.warning(TOOL, 'latency')
        if warning:
            log(warning)
        if not hasattr(segmenter, 'segment'):
            segmenter = segmenter()
        metadata = segmenter.metadata
        drivable = parse_class_list(options.drivable_classes, metadata)
        total = frame_total(image.count, options.limit)
        picker = _ReportPicker(total, options.report_frames if options.report_path else 0)
        tally = Tally(Scoreboard(metadata, drivable), truth.folder, truth.matcher(reader),
                      on_scored=picker.offer)
        outputs = _open_outputs(stack, options, reader, metadata, drivable,
                                (image.name, truth.topic))
        frames = read_frames(reader, image.name, truth.topic, tally, total, TOOL,
                             options.progress, selected=options.stamps,
                             on_raw=outputs.copy if outputs and options.copy_input else None)
        timing = _segment_frames(frames, segmenter, tally, outputs, picker)
        tally.finish()
    report = _report(options, image, truth, segmenter, tally, timing)
    if options.json_path:
        write_json(options.json_path, report)
    if options.report_path:
        write_report(options.report_path, picker.frames, report['accuracy'], metadata,
                     title=f'{options.bag} ({image.name})')
    return report


def _report(options: EvaluateOptions, image: TopicInfo, truth: GroundTruth,
            segmenter: Any, tally: Tally, timing: _Timing) -> Dict[str, Any]:
    describe = getattr(segmenter, 'describe', None)
    segmented = len(timing.segment_s)
    return {
        **report_head(TOOL, options.bag, image, truth,
                      describe() if describe else type(segmenter).__name__),
        'frames': tally.frame_counts(segmented=segmented, evaluated=tally.scoreboard.frames),
        'accuracy': tally.scoreboard.as_dict(),
        'latency': latency_summary(timing.frame_s),
        'segment_latency': latency_summary(timing.segment_s),
        'fps': segmented / timing.wall_s if segmented and timing.wall_s > 0 else None,
        'wall_s': timing.wall_s,
        'output_bag': str(options.output_bag) if options.output_bag else None,
        'per_frame': tally.records,
    }


def get_args_parser() -> argparse.ArgumentParser:
    """Build the command-line interface of ``evaluate_bag``."""
    parser = bag_parser(TOOL, "Segment every frame of a rosbag2 bag with the node's "
                        'inference path and score it against ground truth.', 'evaluate')
    parser.add_argument('--device', default='auto', help=f"one of {', '.join(DEVICE_CHOICES)}")
    parser.add_argument('--precision', default='auto', choices=PRECISIONS)
    parser.add_argument('--report', dest='report_path', metavar='REPORT', type=Path,
                        default=None, help='write a PNG report here')
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
    options = options_from_args(EvaluateOptions, args)

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
