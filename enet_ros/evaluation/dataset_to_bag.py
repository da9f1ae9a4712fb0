"""
Turn an image folder or a dataset split into a rosbag2 bag: a camera topic plus labels.

Layouts:

* ``camvid``: ``<root>/<split>/*.png|jpg`` with labels ``<root>/<split>annot/<stem>.png``;
* ``cityscapes``: ``<root>/leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
  ``<root>/gtFine/<split>/<city>/*_gtFine_labelTrainIds.png`` when present, else
  ``*_gtFine_labelIds.png`` mapped to the 19 train ids (255 void) with the
  official table (:data:`enet_ros.labels.CITYSCAPES_ID_TO_TRAIN_ID`);
* ``folder``: every image of a folder, optionally with ``--labels-dir`` PNGs
  named after the images;
* ``voc`` and ``plain``: a dataset of your own (Pascal VOC / CVAT
  "Segmentation mask 1.1", or ``classes.yaml`` with ``images/`` and
  ``labels/``), read and checked by :mod:`enet_ros.dataset_layouts` as
  ``enet-train`` reads it; its labels are written as class ids.

Frames go on the camera topic as ``sensor_msgs/Image`` rgb8 (or
``CompressedImage`` JPEG / PNG, on ``<topic>/compressed``) at ``--rate`` Hz with
increasing stamps and ``--frame-id``; labels go as mono8 with the same
stamps. Frames are sorted by path (time order for CamVid and Cityscapes).
The bag's metadata records each frame's file stem under ``custom_data``
(``enet_ros.frame_names``), so evaluation can find label files by name.

Arguments are checked before anything is written (argparse error, exit code
2): topics as ROS 2 checks a fully qualified topic name, a finite positive
rate of at most 1e9 Hz (distinct nanosecond stamps), a start time and a last
stamp that fit ``builtin_interfaces/Time`` (seconds are int32), ``--limit`` of
at least 1, an output path that can be written. A full disk while writing
removes the partial bag (exit code 3); so do SIGINT and SIGTERM (130, 143).

Example::

    dataset_to_bag /work/shared/data/camvid /tmp/camvid_val_bag --split val --storage mcap

Why one module: one command, from its argument checks to the last message
written; the five layouts are a few lines each and the checks are what make
the command safe to run.
"""

import argparse
from dataclasses import dataclass
import json
import math
from pathlib import Path
import re
import sys
import time
from typing import Callable, List, Optional

import cv2
import numpy as np
from tqdm import tqdm

from .bag_io import (array_to_compressed, array_to_image, BagError, BagWriter,
                     check_output_bag, COMPRESSED_IMAGE, FRAME_NAMES_KEY, IMAGE, make_header,
                     STORAGES)
from .cli import positive_int, run_stoppable
from .outputs import EXIT_OUTPUT_FAILED, EXIT_OUTPUT_REFUSED, OutputPathError, OutputWriteError
from .. import dataset_layouts
from ..labels import cityscapes_id_to_train_id

TOOL = 'dataset_to_bag'
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
LAYOUTS = ('auto', 'camvid', 'cityscapes', 'folder', 'voc', 'plain')
FORMATS = ('raw', 'jpeg', 'png')
#: Highest rate: consecutive frames stay at least 1 ns apart (distinct stamps).
MAX_RATE_HZ = 1e9
#: ``builtin_interfaces/Time.sec`` is an int32: the last stamp must be before 2038-01-19.
MAX_STAMP_S = 2 ** 31 - 1
#: A fully qualified ROS 2 topic name, used only when rclpy cannot be imported.
_FULL_TOPIC = re.compile(r'(/[A-Za-z_][A-Za-z0-9_]*)+')


class DatasetError(ValueError):
    """The source folder does not hold the expected layout or files."""


@dataclass(frozen=True)
class Sample:
    """One frame: its name (file stem), image file and optional label file."""

    name: str
    image: Path
    labels: Optional[Path] = None


def _images(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def camvid_samples(root: Path, split: str) -> List[Sample]:
    """Frames of ``<root>/<split>`` with labels from ``<root>/<split>annot`` (by stem)."""
    images, annot = root / split, root / f'{split}annot'
    if not images.is_dir():
        raise DatasetError(f"CamVid split folder '{images}' does not exist")
    labels = annot if annot.is_dir() else None
    return [Sample(p.stem, p, labels / f'{p.stem}.png' if labels else None)
            for p in _images(images)]


def cityscapes_samples(root: Path, split: str) -> List[Sample]:
    """Frames of ``leftImg8bit/<split>/<city>`` with gtFine label files (train ids or ids)."""
    images = root / 'leftImg8bit' / split
    if not images.is_dir():
        raise DatasetError(f"Cityscapes folder '{images}' does not exist")
    samples = []
    for path in sorted(images.glob('*/*_leftImg8bit.png')):
        prefix = path.name[:-len('_leftImg8bit.png')]
        gt = root / 'gtFine' / split / path.parent.name
        train_ids, ids = (gt / f'{prefix}_gtFine_labelTrainIds.png',
                          gt / f'{prefix}_gtFine_labelIds.png')
        labels = train_ids if train_ids.is_file() else ids if ids.is_file() else None
        samples.append(Sample(path.stem, path, labels))
    return samples


def folder_samples(folder: Path, labels_dir: Optional[Path] = None) -> List[Sample]:
    """Every image of ``folder``; labels ``<labels_dir>/<stem>.png`` when given."""
    if not folder.is_dir():
        raise DatasetError(f"image folder '{folder}' does not exist")
    if labels_dir is not None and not labels_dir.is_dir():
        raise DatasetError(f"labels folder '{labels_dir}' does not exist")
    return [Sample(p.stem, p, labels_dir / f'{p.stem}.png' if labels_dir else None)
            for p in _images(folder)]


def detect_layout(root: Path, split: str) -> str:
    """``voc``, ``plain``, ``cityscapes``, ``camvid`` or ``folder`` from what ``root`` holds."""
    own = dataset_layouts.detect_layout(root)
    if own:
        return own
    if (root / 'leftImg8bit' / split).is_dir():
        return 'cityscapes'
    if (root / split).is_dir():
        return 'camvid'
    return 'folder'


def cityscapes_label_mapping(path: Path) -> Optional[np.ndarray]:
    """Id table for a gtFine file: None for ``*_labelTrainIds.png``, else ids to train ids."""
    return None if path.name.endswith('_labelTrainIds.png') else cityscapes_id_to_train_id()


def read_rgb(path: Path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB, EXIF orientation ignored (as the node does)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise DatasetError(f"cannot read image '{path}'")
    return np.ascontiguousarray(image[:, :, ::-1])


def read_labels(path: Path, mapping: Optional[np.ndarray] = None) -> np.ndarray:
    """Read a single-channel 8-bit label PNG as HxW uint8, through ``mapping`` when given."""
    labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if labels is None or labels.ndim != 2 or labels.dtype != np.uint8:
        raise DatasetError(f"'{path}' is not a single-channel 8-bit label image")
    return mapping[labels] if mapping is not None else labels


@dataclass(frozen=True)
class BagOptions:
    """How frames are written; see ``dataset_to_bag --help``."""

    storage: str = 'sqlite3'
    image_format: str = 'raw'
    jpeg_quality: int = 95
    rate_hz: float = 10.0
    start_time_s: Optional[float] = None
    frame_id: str = 'camera'
    image_topic: str = '/camera/image_raw'
    labels_topic: str = '/camera/labels'
    overwrite: bool = False
    progress: bool = False


def topic_problem(name: str) -> Optional[str]:
    """Why ``name`` is not a fully qualified ROS 2 topic name (rclpy's own check), or None."""
    try:
        from rclpy.exceptions import InvalidTopicNameException
        from rclpy.validate_full_topic_name import validate_full_topic_name
    except ImportError:  # no ROS 2 Python here: the same rules, less detail
        return None if _FULL_TOPIC.fullmatch(name) else (
            "a topic name is '/' and tokens of letters, digits and '_', not starting with a "
            'digit')
    try:
        validate_full_topic_name(name)
    except InvalidTopicNameException as error:
        text = str(error).splitlines()[0]
        return text.split(': ', 1)[1] if ': ' in text else text
    return None


def check_options(options: BagOptions, frames: int) -> None:
    """
    Raise :class:`DatasetError` (one line) for options that would write a wrong bag.

    Topics: fully qualified ROS 2 names, and distinct; rate: finite, in (0,
    :data:`MAX_RATE_HZ`]; start time: finite, >= 0; the last of ``frames``
    stamps within ``builtin_interfaces/Time`` (:data:`MAX_STAMP_S`).
    """
    topics = {'--image-topic': camera_topic(options)}
    if options.labels_topic:
        topics['--labels-topic'] = options.labels_topic
    for option, topic in topics.items():
        problem = topic_problem(topic)
        if problem:
            raise DatasetError(f'{option} {topic!r} is not a valid topic name: {problem}')
    if len(set(topics.values())) < len(topics):
        raise DatasetError(f'--image-topic and --labels-topic are the same topic '
                           f"'{options.labels_topic}'")
    if not (math.isfinite(options.rate_hz) and 0 < options.rate_hz <= MAX_RATE_HZ):
        raise DatasetError(f'--rate must be a finite number of frames per second in (0, '
                           f'{MAX_RATE_HZ:g}], got {options.rate_hz:g}')
    start = options.start_time_s
    if start is not None and not (math.isfinite(start) and 0 <= start <= MAX_STAMP_S):
        raise DatasetError(f'--start-time must be seconds since the epoch in [0, {MAX_STAMP_S}] '
                           f'(builtin_interfaces/Time), got {start:g}')
    last = (start if start is not None else time.time()) + (frames - 1) / options.rate_hz
    if not last <= MAX_STAMP_S:
        raise DatasetError(f'the last of {frames} frames at --rate {options.rate_hz:g} Hz would '
                           f'be stamped {last:g} s, after the last time builtin_interfaces/Time '
                           f'holds ({MAX_STAMP_S} s); raise --rate or lower --start-time')
    if not 0 <= options.jpeg_quality <= 100:
        raise DatasetError(f'--jpeg-quality must be in [0, 100], got {options.jpeg_quality}')


def camera_topic(options: BagOptions) -> str:
    """Return the image topic written: ``<topic>/compressed`` for compressed frames."""
    topic = options.image_topic
    if options.image_format != 'raw' and not topic.endswith('/compressed'):
        topic = f'{topic}/compressed'
    return topic


def write_bag(samples: List[Sample], output: Path, options: BagOptions,
              label_mapping: Optional[Callable[[Path], Optional[np.ndarray]]] = None,
              label_reader: Optional[Callable[[Path], np.ndarray]] = None) -> dict:
    """
    Write ``samples`` to a new bag at ``output``; return a summary (counts, stamps, topics).

    ``label_mapping(path)`` gives the id mapping table for a label file (or
    None); ``label_reader(path)`` replaces :func:`read_labels` (HxW uint8 ids).
    Raises :class:`DatasetError` for bad options (:func:`check_options`) or input,
    OutputPathError / OutputWriteError when the bag cannot be written.
    """
    if not samples:
        raise DatasetError('no frames to write')
    check_options(options, len(samples))
    start = options.start_time_s if options.start_time_s is not None else time.time()
    start_ns = int(round(start * 1e9))
    topic = camera_topic(options)
    with_labels = bool(options.labels_topic) and any(s.labels for s in samples)
    stamps, names, labelled = [], {}, 0
    with BagWriter(output, options.storage, overwrite=options.overwrite) as writer:
        writer.add_topic(topic, IMAGE if options.image_format == 'raw' else COMPRESSED_IMAGE)
        if with_labels:
            writer.add_topic(options.labels_topic, IMAGE)
        for index, sample in enumerate(tqdm(samples, unit='frame', desc=TOOL,
                                            disable=not options.progress, file=sys.stderr)):
            stamp = start_ns + int(round(index * 1e9 / options.rate_hz))
            header = make_header(stamp, options.frame_id)
            rgb = read_rgb(sample.image)
            if options.image_format == 'raw':
                msg = array_to_image(rgb, 'rgb8', header)
            else:
                msg = array_to_compressed(rgb, options.image_format, header,
                                          options.jpeg_quality)
            writer.write(topic, msg, stamp)
            if with_labels and sample.labels is not None and sample.labels.is_file():
                if label_reader is not None:
                    labels = label_reader(sample.labels)
                else:
                    labels = read_labels(sample.labels,
                                         label_mapping(sample.labels) if label_mapping else None)
                if labels.shape != rgb.shape[:2]:
                    raise DatasetError(f"labels '{sample.labels}' are {labels.shape[1]}x"
                                       f'{labels.shape[0]}, the image {rgb.shape[1]}x'
                                       f'{rgb.shape[0]}')
                writer.write(options.labels_topic, array_to_image(labels, 'mono8', header),
                             stamp)
                labelled += 1
            stamps.append(stamp)
            names[str(stamp)] = sample.name
        writer.set_custom_data(FRAME_NAMES_KEY, json.dumps(names))
    return {'bag': str(output), 'storage': options.storage, 'image_topic': topic,
            'labels_topic': options.labels_topic if with_labels else None,
            'frames': len(stamps), 'labelled': labelled, 'stamps': stamps}


def get_args_parser() -> argparse.ArgumentParser:
    """Build the command-line interface of ``dataset_to_bag``."""
    parser = argparse.ArgumentParser(
        prog=TOOL, description='Write an image folder or a CamVid / Cityscapes split to a '
        'rosbag2 bag: camera frames and ground-truth labels with matching stamps.')
    parser.add_argument('source', type=Path, help='dataset root or image folder')
    parser.add_argument('output', type=Path, help='bag to create (a directory)')
    parser.add_argument('--layout', choices=LAYOUTS, default='auto',
                        help='source layout (default: detected)')
    parser.add_argument('--split', default='val',
                        help='dataset split (camvid, cityscapes, voc, plain)')
    parser.add_argument('--labels-dir', type=Path, default=None,
                        help='folder layout: label PNGs named after the images')
    parser.add_argument('--storage', choices=sorted(STORAGES), default='sqlite3')
    parser.add_argument('--format', dest='image_format', choices=FORMATS, default='raw',
                        help='raw sensor_msgs/Image rgb8, or CompressedImage jpeg / png')
    parser.add_argument('--jpeg-quality', type=int, default=95)
    parser.add_argument('--rate', type=float, default=10.0, help='frames per second')
    parser.add_argument('--start-time', type=float, default=None,
                        help='stamp of the first frame, seconds since the epoch (default: now)')
    parser.add_argument('--frame-id', default='camera')
    parser.add_argument('--image-topic', default='/camera/image_raw',
                        help='camera topic (/compressed is appended for compressed frames)')
    parser.add_argument('--labels-topic', default='/camera/labels',
                        help='ground-truth topic (empty: no labels)')
    parser.add_argument('--limit', type=positive_int, default=None,
                        help='only the first N frames')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing bag')
    parser.add_argument('--no-progress', dest='progress', action='store_false')
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """
    Run ``dataset_to_bag``; the exit codes are the bag tools' (README, "Bad input and faults").

    0 written; 1 bad input; 2 bad argument or refused output path; 3 the bag
    could not be written (removed); 130 / 143 stopped by SIGINT / SIGTERM (removed).
    """
    parser = get_args_parser()
    args = parser.parse_args(argv)
    return run_stoppable(TOOL, lambda: _run(parser, args))


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        check_output_bag(args.output, args.overwrite)
        layout = detect_layout(args.source, args.split) if args.layout == 'auto' \
            else args.layout
        mapping = reader = None
        if layout in ('voc', 'plain'):
            own = dataset_layouts.load_layout(layout, args.source)
            samples = [Sample(image.stem, image, label)
                       for image, label in dataset_layouts.list_pairs(own, args.split)]
            reader = own.decode_label
        elif layout == 'camvid':
            samples = camvid_samples(args.source, args.split)
        elif layout == 'cityscapes':
            samples = cityscapes_samples(args.source, args.split)
            mapping = cityscapes_label_mapping
        else:
            samples = folder_samples(args.source, args.labels_dir)
        if args.limit is not None:
            samples = samples[:args.limit]
        if not samples:
            raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found for layout "
                               f"'{layout}' in '{args.source}'")
        options = BagOptions(
            storage=args.storage, image_format=args.image_format,
            jpeg_quality=args.jpeg_quality, rate_hz=args.rate, start_time_s=args.start_time,
            frame_id=args.frame_id, image_topic=args.image_topic,
            labels_topic=args.labels_topic, overwrite=args.overwrite, progress=args.progress)
        try:
            check_options(options, len(samples))
        except DatasetError as error:
            parser.error(str(error))
        summary = write_bag(samples, args.output, options, mapping, reader)
    except OutputPathError as error:
        print(f'{TOOL}: error: {error}', file=sys.stderr)
        return EXIT_OUTPUT_REFUSED
    except OutputWriteError as error:
        print(f'{TOOL}: error: {error}', file=sys.stderr)
        return EXIT_OUTPUT_FAILED
    except (DatasetError, BagError, ValueError) as error:
        print(f'{TOOL}: error: {error}', file=sys.stderr)
        return 1
    print(f"{TOOL}: wrote {summary['frames']} frames ({summary['labelled']} with labels) "
          f"from {layout} '{args.source}' to {summary['bag']} ({summary['storage']}): "
          f"{summary['image_topic']}"
          + (f", {summary['labels_topic']}" if summary['labels_topic'] else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
