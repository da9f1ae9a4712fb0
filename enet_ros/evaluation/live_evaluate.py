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
for a reason) or dropped (:mod:`.live_playback`).

By default the node is started as a subprocess (``python -m
enet_ros.node.main`` with the package's config/segment.yaml);
``--attach`` uses one already running. Needs no ``ros2 bag play``.
SIGINT and SIGTERM stop the started node and remove a partial recording
(exit codes 130, 143); output paths are checked before the node starts, and
the table is printed before the JSON is written.

The parts, one job each: this module starts and stops the node and builds the
report; :mod:`.live_peer` is the rclpy side (publisher, recorder);
:mod:`.live_playback` publishes on schedule and accounts for the answers; the
ground truth, scores and skipped frames are those of ``evaluate_bag``
(:mod:`.ground_truth`, :class:`.scoring.Tally`, :mod:`.bag_frames`).

Fast DDS and large images: Fast DDS reads its XML profile from the environment
once, when the process's first participant starts, so the profile is process
state. :func:`main` owns its process and sets the package's large-image profile
(unless ``FASTDDS_DEFAULT_PROFILES_FILE`` or the Humble name is set) before
anything else. :func:`live_evaluate`, a library call, leaves ``os.environ``
alone: it gives the node it starts the profile in that child's own environment,
and this process's participant uses whatever the caller's environment holds
(it logs a note when no profile or transport is chosen). A caller that plays
large frames sets the profile first, e.g.
``os.environ.update(with_large_image_transport(os.environ))`` from
:mod:`enet_ros.ros_io.dds`, as ``scripts/demo.py`` does.

Example::

    live_evaluate /tmp/camvid_val_bag --rate 0.5 --json /tmp/live.json
"""

import argparse
from contextlib import contextmanager, ExitStack
from dataclasses import dataclass
import json
import os
from pathlib import Path
import sys
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

from .bag_frames import frame_total, resolve_image_topic
from .bag_io import (BagError, BagWriter, check_output_bag, COMPRESSED_IMAGE, count_mismatches,
                     frame_names, FRAME_NAMES_KEY, open_bag, TopicInfo)
from .cli import bag_parser, options_from_args, run_stoppable
from .ground_truth import GroundTruth
from .live_peer import LiveError, LivePeer, wait_ready
from .live_playback import LiveSession, play, rate_hz, wait_recorded
from .node_subprocess import node_command as process_command, NodeProcess
from .outputs import (check_distinct, check_output_file, OutputWriteError, ResultsNotWritten,
                      run_reporting)
from .report import format_table, report_head, write_json
from .scoring import latency_summary, parse_class_list, Scoreboard, Tally
from .signals import shielded
from ..model_file import load_model_file, ModelFileError
from ..ros_io.dds import PROFILE_VARIABLES, with_large_image_transport

TOOL = 'live_evaluate'
NODE_NAME = 'segmentation_node'
#: Variables by which a process chooses its Fast DDS transports (a profile, or built-ins).
TRANSPORT_VARIABLES = PROFILE_VARIABLES + ('FASTDDS_BUILTIN_TRANSPORTS',)
Log = Callable[[str], None]


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


class _Topics(NamedTuple):
    """The topic frames are published on, and the node's labels topic."""

    frames: str
    labels: str


def _start_node(options: LiveOptions, topics: _Topics, compressed: bool,
                log: Log) -> Optional[NodeProcess]:
    """Start the node with the large-image profile in its environment (None with --attach)."""
    if options.attach:
        return None
    node = NodeProcess(node_command(options, topics.frames, compressed),
                       env=with_large_image_transport(os.environ), log_path=options.node_log)
    log(f"{TOOL}: started the node: {' '.join(node.command)} (log {node.log_path})")
    return node


@contextmanager
def _recording(recorder: BagWriter) -> Iterator[BagWriter]:
    """Open ``recorder``; a bag that cannot be closed is kept in its ``failure``, not raised."""
    try:
        with recorder:
            yield recorder
    except OutputWriteError as error:
        if error is not recorder.failure:
            raise


def _run_node(reader: Any, image: TopicInfo, truth_topic: Optional[str], options: LiveOptions,
              session: LiveSession, topics: _Topics, log: Log,
              warn: Log) -> Tuple[Optional[NodeProcess], Optional[int], Optional[BagWriter]]:
    """
    Start the node (unless attached), play the bag into it, stop it.

    Returns the node, its exit code and the recorder (whose ``failure`` says
    whether the recording could be written).
    """
    node = None
    recorder = None
    try:
        with shielded():  # a signal now waits until ``node`` is set, so finally stops it
            node = _start_node(options, topics, image.msgtype == COMPRESSED_IMAGE, log)
        with ExitStack() as stack:
            recorder = (stack.enter_context(_recording(BagWriter(
                options.record_bag, 'mcap', overwrite=True, reading=options.bag)))
                if options.record_bag else None)
            peer = LivePeer(topics.frames, image.msgtype, topics.labels, recorder)
            stack.callback(peer.close)
            wait_ready(peer, node, options.startup_timeout, options.settle)
            play(reader, image.name, truth_topic, frame_total(image.count, options.limit), peer,
                 session, options.rate, options.wait, TOOL, options.progress,
                 limit=options.limit, warn=warn)
            if recorder is not None:
                wait_recorded(recorder, session.answered, options.wait)
                names = frame_names(reader)  # those of the frames played, answered or not
                played = {r['stamp_ns'] for r in session.tally.records if r['stamp_ns'] in names}
                if played and recorder.failure is None:
                    recorder.set_custom_data(FRAME_NAMES_KEY, json.dumps(
                        {str(stamp): names[stamp] for stamp in sorted(played)}))
    finally:
        node_exit = node.stop() if node is not None else None
    return node, node_exit, recorder


def _note_transport(log: Log) -> None:
    """Say so when this process's frames go out with Fast DDS' default transports."""
    if not any(os.environ.get(name) for name in TRANSPORT_VARIABLES):
        log(f"{TOOL}: note: no Fast DDS profile in this process's environment, so frames go "
            'out with the default transports (large frames may stall); set one before the '
            'first ROS 2 participant starts (see enet_ros.ros_io.dds.with_large_image_transport)')


def check_outputs(options: LiveOptions) -> None:
    """Raise :class:`OutputPathError` for an output path that cannot be written; before work."""
    if options.record_bag:
        check_output_bag(options.record_bag, True, options.bag, '--record-bag')
    if options.json_path:
        check_output_file(options.json_path, '--json')
    if options.node_log:
        check_output_file(options.node_log, '--node-log')
    given = {'--record-bag': options.record_bag, '--json': options.json_path,
             '--node-log': options.node_log}
    check_distinct({option: path for option, path in given.items() if path}, ['--record-bag'])


def live_evaluate(options: LiveOptions,
                  log: Log = lambda text: print(text, file=sys.stderr),
                  show: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """
    Play ``options.bag`` into the node and return the report; see the module docstring.

    Does not change ``os.environ``: the Fast DDS profile of this process is the
    caller's to set before its first ROS 2 participant (the module docstring
    says why and how). ``show(report)`` runs before the JSON is written. Raises
    :class:`OutputPathError` for an output path that cannot be written (before
    the node starts), :class:`BagError` for a bag that cannot be played,
    :class:`LiveError` when the node does not come up, ModelFileError for a bad
    model, :class:`ResultsNotWritten` (with the report) when an output could not
    be written.
    """
    if options.rate <= 0:
        raise ValueError(f'rate must be positive, got {options.rate}')
    check_outputs(options)
    warnings: List[str] = []

    def warn(text: str) -> None:
        warnings.append(text)
        log(f'{TOOL}: warning: {text}')

    metadata = load_model_file(options.model or None).metadata
    scoreboard = Scoreboard(metadata, parse_class_list(options.drivable_classes, metadata))
    _note_transport(log)
    with open_bag(options.bag) as reader:
        image = resolve_image_topic(reader, options.image_topic)
        truth = GroundTruth.resolve(reader, image.name, options.labels_topic, options.labels_dir)
        for line in count_mismatches(reader):
            warn(line)
        warning = truth.warning(TOOL, 'latency and drops')
        if warning:
            log(warning)
        session = LiveSession(Tally(scoreboard, truth.folder, truth.matcher(reader)))
        topics = _Topics(options.input_topic or image.name,
                         f"/{options.node_name.strip('/')}/labels")
        node, node_exit, recorder = _run_node(reader, image, truth.topic, options, session,
                                              topics, log, warn)
    session.tally.finish()
    failures = [recorder.failure] if recorder is not None and recorder.failure else []
    report = _report(options, image, truth, session, node, node_exit, topics, warnings,
                     failures)
    if show is not None:
        show(report)
    if options.json_path:
        try:
            write_json(options.json_path, report)
        except OutputWriteError as error:
            failures.append(error)
    if failures:
        raise ResultsNotWritten(report, failures)
    return report


def _report(options: LiveOptions, image: TopicInfo, truth: GroundTruth, session: LiveSession,
            node: Optional[NodeProcess], node_exit: Optional[int], topics: _Topics,
            warnings: List[str], failures: List[OutputWriteError]) -> Dict[str, Any]:
    tally = session.tally
    return {
        **report_head(TOOL, options.bag, image, truth, options.model or 'bundled default'),
        'node': {'command': node.command if node else None, 'attached': node is None,
                 'exit_code': node_exit, 'log': node.kept_log if node else None,
                 'input_topic': topics.frames, 'labels_topic': topics.labels},
        'rate': options.rate,
        'frames': tally.frame_counts(published=len(session.publish_times),
                                     answered=session.answered,
                                     evaluated=tally.scoreboard.frames, dropped=session.dropped),
        'unexpected_outputs': session.unexpected,
        'accuracy': tally.scoreboard.as_dict(),
        'end_to_end_latency': latency_summary(session.latencies),
        'input_rate_hz': rate_hz(session.publish_times),
        'output_rate_hz': rate_hz(session.receive_times),
        'record_bag': str(options.record_bag) if options.record_bag and not failures else None,
        'record_bag_error': str(failures[0]) if failures else None,
        'warnings': warnings,
        'per_frame': tally.records,
    }


def get_args_parser() -> argparse.ArgumentParser:
    """Build the command-line interface of ``live_evaluate``."""
    parser = bag_parser(TOOL, 'Play a rosbag2 bag into the segmentation node over ROS 2, '
                        'record its labels and score them (accuracy, end-to-end latency, '
                        'drops).', 'play')
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
    """
    Run ``live_evaluate``; the exit codes are the bag tools' (README, "Bad input and faults").

    0 done; 1 bad input, the node did not come up or answered nothing; 2 bad
    argument or refused output path; 3 an output could not be written (the
    table was printed); 130 / 143 stopped by SIGINT / SIGTERM (node stopped).
    """
    # This process is ours: choose the large-image Fast DDS profile before any participant
    # starts (frames go out from here, outputs come from the node; see the module docstring).
    os.environ.update(with_large_image_transport(os.environ))
    args = get_args_parser().parse_args(argv)
    options = options_from_args(LiveOptions, args)

    def run() -> int:
        report = live_evaluate(options,
                               show=lambda report: print(format_table(report), flush=True))
        if not report['frames']['answered']:
            print(f'{TOOL}: error: the node answered none of the '
                  f"{report['frames']['published']} frames", file=sys.stderr)
            return 1
        return 0

    return run_stoppable(TOOL, lambda: run_reporting(
        TOOL, run, (BagError, LiveError, ModelFileError, ValueError)))


if __name__ == '__main__':
    sys.exit(main())
