"""Command-line parts the bag tools share: common arguments and checks, options, stopping."""

import argparse
from dataclasses import fields
from pathlib import Path
import sys
from typing import Callable, Type, TypeVar

from .bag_io import discard_unclosed
from .ground_truth import DEFAULT_LABELS_TOPIC
from .signals import stop_on_signals, Stopped

Options = TypeVar('Options')


def bag_parser(prog: str, description: str, action: str) -> argparse.ArgumentParser:
    """Start a tool's parser with the arguments both share; ``action``: 'evaluate' or 'play'."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_bag_arguments(parser, action)
    return parser


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
    parser.add_argument('--limit', type=positive_int, default=None,
                        help=f'{action} the first N camera messages (skipped ones count)')
    parser.add_argument('--json', dest='json_path', metavar='JSON', type=Path, default=None,
                        help='write every figure here')
    parser.add_argument('--no-progress', dest='progress', action='store_false',
                        help='no progress bar')


def options_from_args(cls: Type[Options], args: argparse.Namespace) -> Options:
    """
    Build the options dataclass ``cls`` from parsed arguments of the same names.

    Fields without an argument keep their defaults; lists become tuples (frozen options).
    """
    values = {}
    for field in fields(cls):
        if hasattr(args, field.name):
            value = getattr(args, field.name)
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def positive_int(text: str) -> int:
    """Argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a whole number, got {text!r}') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be at least 1, got {value}')
    return value


def run_stoppable(tool: str, body: Callable[[], int]) -> int:
    """
    Run a tool's ``body`` with SIGINT and SIGTERM turned into :class:`Stopped`; its exit code.

    A stop anywhere, also while ``body`` handles an error, ends in
    :func:`report_stopped`.
    """
    with stop_on_signals():
        try:
            return body()
        except Stopped as stop:
            return report_stopped(tool, stop)


def report_stopped(tool: str, stop: Stopped) -> int:
    """
    Say that ``tool`` was stopped by a signal; return its exit code (130 / 143).

    Removes a bag still open for writing (one opened as the signal came, or one
    whose ``__exit__`` the signal cut off; the others were removed as the stack
    unwound).
    """
    discard_unclosed()
    print(f'{tool}: stopped by {stop.name}: the work was not finished, no results were written '
          'and a partial output bag was removed', file=sys.stderr)
    return stop.exit_code
