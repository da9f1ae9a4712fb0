"""Command-line parts both bag evaluations share: the common arguments, options from them."""

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Type, TypeVar

from .ground_truth import DEFAULT_LABELS_TOPIC

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
    parser.add_argument('--limit', type=int, default=None,
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
