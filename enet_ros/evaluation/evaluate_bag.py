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
report and an output bag with the node's four topics (input headers kept, and
the frame names ``dataset_to_bag`` recorded carried over into its metadata).

Output paths are checked before any frame is read; the table is printed before
the files are written, so a file that cannot be written (a full disk) loses
nothing else, and the tool ends with one line naming it (exit code 3). A full
disk while the output bag is written removes that bag and the evaluation goes
on. SIGINT and SIGTERM remove a partial output bag (exit codes 130 and 143).

Example::

    evaluate_bag /tmp/camvid_val_bag --json /tmp/eval.json --report /tmp/eval.png \
        --output-bag /tmp/camvid_val_seg

Shared with ``live_evaluate``: the frame loop (:mod:`.bag_frames`), the ground
truth (:mod:`.ground_truth`), the scores and per-frame accounting
(:class:`.scoring.Tally`) and the report (:mod:`.report`); the output images
are built by the node's :class:`enet_ros.masks.OutputRenderer`. No rclpy: this
module needs only rosbags and the core.

Why one module: one command (its options, the frame loop's outputs, the
output bag and the report files) whose parts run in one order that decides
what a failure loses; the shared parts are already in their own modules.
"""

import argparse
from contextlib import ExitStack
from dataclasses import dataclass, field
import json
from pathlib import Path
import sys
import time
from typing import (AbstractSet, Any, Callable, Dict, Iterable, List, Optional, Protocol,
                    Sequence, Union)

import numpy as np

from .bag_frames import BagFrame, frame_total, read_frames, resolve_image_topic
from .bag_io import (array_to_image, BagError, BagWriter, check_output_bag, count_mismatches,
                     frame_names, FRAME_NAMES_KEY, IMAGE, message_to_frame, MessageError,
                     open_bag, RawMessage, storage_of, STORAGES, TopicInfo)
from .cli import bag_parser, options_from_args, run_stoppable
from .ground_truth import GroundTruth
from .outputs import (check_distinct, check_output_file, OutputWriteError, ResultsNotWritten,
                      run_reporting)
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
    """
    Writes the node's four output topics (and optionally the inputs) to a bag.

    A context manager around the :class:`BagWriter`. When the bag cannot be
    written (a full disk), the writer removes it, :attr:`failure` keeps the
    error, ``log`` says so once and later frames are evaluated without outputs.
    """

    def __init__(self, writer: BagWriter, prefix: str, renderer: masks.OutputRenderer,
                 log: Callable[[str], None]):
        self.writer = writer
        self.renderer = renderer
        self.log = log
        self.failure: Optional[OutputWriteError] = None
        self.names: Dict[int, str] = {}
        self.topics = {name: f"{prefix.rstrip('/')}/{name}" for name in masks.LABEL_IMAGES}

    def __enter__(self) -> '_Outputs':
        """Open the bag and declare the output topics."""
        self.writer.__enter__()
        try:
            for topic in self.topics.values():
                self.writer.add_topic(topic, IMAGE)
        except BaseException:
            self.writer.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        """Close the bag with the frame names; remove it when the block raised."""
        if exc_type is None and self.failure is None and self.names:
            self.writer.set_custom_data(FRAME_NAMES_KEY, json.dumps(
                {str(stamp): name for stamp, name in sorted(self.names.items())}))
        try:
            self.writer.__exit__(exc_type, *exc_info)
        except OutputWriteError as error:
            self._failed(error)

    def _failed(self, error: OutputWriteError) -> None:
        self.failure = error
        self.log(f'{TOOL}: error: {error}; the evaluation goes on without it')

    def write(self, header: Any, log_time: int, labels: np.ndarray, rgb: np.ndarray) -> None:
        """Write labels, colour, overlay and drivable images, rendered as the node does."""
        if self.failure is not None:
            return
        images = self.renderer.render(labels, rgb)
        try:
            for name in masks.LABEL_IMAGES:
                encoding = ENCODINGS[masks.OUTPUT_CHANNELS[name]]
                self.writer.write(self.topics[name],
                                  array_to_image(images[name], encoding, header), log_time)
        except OutputWriteError as error:
            self._failed(error)

    def copy(self, raw: RawMessage) -> None:
        """Copy an input message (camera or ground truth) as it is."""
        if self.failure is not None:
            return
        try:
            self.writer.write_raw(raw.topic, raw.data, raw.log_time)
        except OutputWriteError as error:
            self._failed(error)


def _open_outputs(stack: ExitStack, options: EvaluateOptions, reader: Any,
                  metadata: ModelMetadata, drivable: Sequence[str],
                  input_topics: Sequence[Optional[str]],
                  log: Callable[[str], None]) -> Optional[_Outputs]:
    """Open the output bag (closed by ``stack``) when ``options`` ask for one."""
    if not options.output_bag:
        return None
    writer = BagWriter(options.output_bag, options.output_storage or storage_of(options.bag),
                       overwrite=options.overwrite, reading=options.bag)
    renderer = masks.OutputRenderer(metadata.colors, metadata.class_table.ids_of(drivable),
                                    options.overlay_alpha)
    outputs = stack.enter_context(_Outputs(writer, options.output_prefix, renderer, log))
    if options.copy_input:
        for topic in filter(None, input_topics):
            writer.add_topic(topic, reader.topics[topic].msgtype)
    return outputs


def check_outputs(options: EvaluateOptions) -> None:
    """Raise :class:`OutputPathError` for an output path that cannot be written; before work."""
    if options.output_bag:
        check_output_bag(options.output_bag, options.overwrite, options.bag)
    if options.json_path:
        check_output_file(options.json_path, '--json')
    if options.report_path:
        check_output_file(options.report_path, '--report')
    given = {'--output-bag': options.output_bag, '--json': options.json_path,
             '--report': options.report_path}
    check_distinct({option: path for option, path in given.items() if path}, ['--output-bag'])


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
                 log: Callable[[str], None] = lambda text: print(text, file=sys.stderr),
                 show: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """
    Evaluate ``options.bag`` and return the report (also written where options say).

    ``segmenter`` is a :class:`Segmenter` (or a test double with its
    ``metadata`` and ``segment``), or a function making one, called only after
    the output paths, the bag and its topics have been checked. ``show(report)``
    runs before the files are written. Raises :class:`OutputPathError` for an
    output path that cannot be written (before any work), :class:`BagError` for
    a bag that cannot be evaluated at all, and :class:`ResultsNotWritten` (with
    the report) when an output could not be written.
    """
    check_outputs(options)
    warnings: List[str] = []

    def warn(text: str) -> None:
        warnings.append(text)
        log(f'{TOOL}: warning: {text}')

    with open_bag(options.bag) as reader, ExitStack() as stack:
        image = resolve_image_topic(reader, options.image_topic)
        truth = GroundTruth.resolve(reader, image.name, options.labels_topic, options.labels_dir)
        for line in count_mismatches(reader):
            warn(line)
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
                                (image.name, truth.topic), log)
        frames = read_frames(reader, image.name, truth.topic, tally, total, TOOL,
                             options.progress, selected=options.stamps,
                             on_raw=outputs.copy if outputs and options.copy_input else None,
                             limit=options.limit, warn=warn)
        timing = _segment_frames(frames, segmenter, tally, outputs, picker)
        tally.finish()
        if outputs:
            names = frame_names(reader)
            outputs.names = {r['stamp_ns']: names[r['stamp_ns']] for r in tally.records
                             if r['stamp_ns'] in names}
    report = _report(options, image, truth, segmenter, tally, timing, warnings, outputs)
    if show is not None:
        show(report)
    failures = [outputs.failure] if outputs and outputs.failure else []
    if options.json_path:
        try:
            write_json(options.json_path, report)
        except OutputWriteError as error:
            failures.append(error)
    if options.report_path:
        try:
            write_report(options.report_path, picker.frames, report['accuracy'], metadata,
                         title=f'{options.bag} ({image.name})')
        except OSError as error:
            failures.append(OutputWriteError(f"--report '{options.report_path}' could not be "
                                             f'written: {error.strerror or error}'))
    if failures:
        raise ResultsNotWritten(report, failures)
    return report


def _report(options: EvaluateOptions, image: TopicInfo, truth: GroundTruth,
            segmenter: Any, tally: Tally, timing: _Timing, warnings: List[str],
            outputs: Optional[_Outputs]) -> Dict[str, Any]:
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
        'output_bag': str(options.output_bag) if outputs and not outputs.failure else None,
        'output_bag_error': str(outputs.failure) if outputs and outputs.failure else None,
        'warnings': warnings,
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
    """
    Run ``evaluate_bag``; the exit codes are the bag tools' (README, "Bad input and faults").

    0 done; 1 bad input or nothing evaluated; 2 bad argument or refused output
    path; 3 an output could not be written (the table was printed); 130 / 143
    stopped by SIGINT / SIGTERM.
    """
    args = get_args_parser().parse_args(argv)
    options = options_from_args(EvaluateOptions, args)

    def make_segmenter() -> Segmenter:
        return Segmenter.from_file(args.model or None, device=args.device,
                                   precision=args.precision)

    def run() -> int:
        report = evaluate_bag(options, make_segmenter,
                              show=lambda report: print(format_table(report), flush=True))
        if report['ground_truth'] != 'none' and not report['frames']['evaluated']:
            print(f'{TOOL}: error: no frame could be evaluated (see the skipped reasons)',
                  file=sys.stderr)
            return 1
        return 0

    return run_stoppable(TOOL, lambda: run_reporting(
        TOOL, run, (BagError, ModelFileError, SegmenterConfigError, ValueError)))


if __name__ == '__main__':
    sys.exit(main())
