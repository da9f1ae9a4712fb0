"""
Rosbag2 reading and writing, and image messages <-> numpy arrays, with rosbags only.

No rclpy and no ROS installation: messages are the dataclasses of a rosbags
typestore (ROS 2 Humble definitions; ``sensor_msgs/Image`` and
``CompressedImage`` are identical in every later distribution), serialised
as CDR. The conversions read fields by name, so they accept rclpy messages too.

Array contracts:

* a camera frame is a :class:`enet_ros.node.image_msgs.CameraFrame`: an HxWx3
  uint8 array (often a view into the message buffer) plus its channel order;
* a label image is an HxW uint8 array of class ids (``mono8``).

One module (a little over 350 lines) because it is the one place that knows the
bag format: reading, writing and the message conversions share the typestore,
the two error types and the metadata version, and every other evaluation
module (and the tests) goes through it instead of rosbags.
"""

from contextlib import contextmanager
from dataclasses import dataclass
import json
import os
from pathlib import Path
import shutil
from typing import Any, Dict, Iterator, Optional, Sequence, Union

import cv2
import numpy as np
from rosbags.interfaces import Qos
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import get_typestore, Stores

from ..node.image_msgs import (CameraFrame, compressed_image_to_frame, InvalidImage,
                               raw_image_to_frame)

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED_IMAGE = 'sensor_msgs/msg/CompressedImage'
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)
STORAGES = {'sqlite3': StoragePlugin.SQLITE3, 'mcap': StoragePlugin.MCAP}
#: Channels of the encodings written by :func:`array_to_image`.
OUTPUT_ENCODINGS = {'rgb8': 3, 'bgr8': 3, 'mono8': 1}
#: No size limit on bag frames (the node's ``max_pixels`` guards a live system).
MAX_PIXELS = 1 << 40
#: Encodings accepted for label images (one uint8 class id per pixel).
LABEL_ENCODINGS = ('mono8', '8uc1')
#: ``custom_data`` key of a JSON object mapping ``str(stamp_ns)`` to a frame's file stem.
FRAME_NAMES_KEY = 'enet_ros.frame_names'
#: rosbag2 metadata version of the bags :class:`BagWriter` writes: 8, not rosbags' latest (9).
#: From version 9 on, each topic's ``offered_qos_profiles`` in metadata.yaml is a YAML list with
#: policy names; ROS 2 Humble's rosbag2 (it knows versions up to 5 but accepts any) reads that
#: key as a *string* holding YAML for every version >= 4, so it cannot open a version-9 bag
#: ("Exception on parsing info file: ... bad conversion"). In version 8 the profiles are that
#: string, with integer policies, the form Humble's player decodes; rosbags writes the same
#: string into the sqlite3 ``topics`` table and the MCAP channels' ``offered_qos_profiles``
#: metadata, which Humble's storage plugins hand to the player unchanged. Humble ignores the
#: keys it does not know (``custom_data``, ``ros_distro``, ``type_description_hash``), and
#: Iron, Jazzy and later read version 8 fully (test/test_bag_metadata.py checks both), so
#: rosbags' version-8 output is used as it is.
BAG_VERSION = 8

PathLike = Union[str, os.PathLike]


class BagError(RuntimeError):
    """A bag that cannot be used at all: missing, unreadable, wrong topic or type."""


class MessageError(ValueError):
    """One message that cannot be converted (bad encoding, size or compressed data)."""


@dataclass(frozen=True)
class TopicInfo:
    """A topic of a bag: its message type and count."""

    name: str
    msgtype: str
    count: int


@dataclass(frozen=True)
class RawMessage:
    """A serialised message read from a bag, with its log time in nanoseconds."""

    topic: str
    msgtype: str
    log_time: int
    data: bytes


# ---------------------------------------------------------------- messages <-> arrays

def stamp_to_ns(stamp: Any) -> int:
    """``builtin_interfaces/Time`` to integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def make_header(stamp_ns: int, frame_id: str) -> Any:
    """Make a ``std_msgs/Header`` (rosbags dataclass) stamped ``stamp_ns`` ns, ``frame_id``."""
    time_type = TYPESTORE.types['builtin_interfaces/msg/Time']
    header_type = TYPESTORE.types['std_msgs/msg/Header']
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return header_type(stamp=time_type(sec=sec, nanosec=nanosec), frame_id=frame_id)


def _message_bytes(data: Any) -> np.ndarray:
    """View a message's uint8[] field (ndarray, bytes or array.array) as flat uint8."""
    return np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) \
        else data.reshape(-1).view(np.uint8)


def _pixel_rows(msg: Any, channels: int) -> np.ndarray:
    """View an ``Image``'s data as HxWxchannels uint8; MessageError if sizes disagree."""
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise MessageError(f'empty image ({width}x{height})')
    if step < width * channels:
        raise MessageError(f'step {step} is less than width {width} x {channels} channel(s)')
    data = _message_bytes(msg.data)
    if data.size != step * height:
        raise MessageError(f'data has {data.size} bytes, expected step x height = '
                           f'{step} x {height} = {step * height}')
    return data.reshape(height, step)[:, :width * channels].reshape(height, width, channels)


def message_to_frame(msg: Any, msgtype: str) -> CameraFrame:
    """
    Convert a camera message of either image type to a :class:`CameraFrame`.

    The node's own conversion (:mod:`enet_ros.node.image_msgs`), so a bag frame
    reaches the Segmenter exactly as a live one does. Raises
    :class:`MessageError` for an unsupported encoding, inconsistent sizes or
    undecodable compressed data.
    """
    try:
        if msgtype == COMPRESSED_IMAGE:
            return compressed_image_to_frame(msg, MAX_PIXELS)
        if msgtype == IMAGE:
            return raw_image_to_frame(msg, MAX_PIXELS)
    except InvalidImage as error:
        raise MessageError(str(error)) from None
    raise MessageError(f'unsupported message type {msgtype}')


def message_to_labels(msg: Any, msgtype: str) -> np.ndarray:
    """
    Convert a label message to an HxW uint8 class-id array.

    Accepts ``Image`` mono8 / 8UC1 and lossless (PNG) single-channel
    ``CompressedImage``; raises :class:`MessageError` otherwise.
    """
    if msgtype == IMAGE:
        if str(msg.encoding).lower() not in LABEL_ENCODINGS:
            raise MessageError(f"label image has encoding '{msg.encoding}', expected mono8")
        return _pixel_rows(msg, 1)[:, :, 0]
    if msgtype == COMPRESSED_IMAGE:
        if 'jpeg' in str(msg.format).lower() or 'jpg' in str(msg.format).lower():
            raise MessageError('JPEG label images are lossy and cannot hold class ids')
        labels = cv2.imdecode(_message_bytes(msg.data), cv2.IMREAD_UNCHANGED)
        if labels is None or labels.ndim != 2 or labels.dtype != np.uint8:
            raise MessageError('compressed label image is not a single-channel 8-bit PNG')
        return labels
    raise MessageError(f'unsupported label message type {msgtype}')


def array_to_image(array: np.ndarray, encoding: str, header: Any) -> Any:
    """HxWx3 (rgb8 / bgr8) or HxW (mono8) uint8 array to a ``sensor_msgs/Image``."""
    channels = 1 if array.ndim == 2 else array.shape[2]
    if array.dtype != np.uint8 or channels != OUTPUT_ENCODINGS.get(encoding, -1):
        raise ValueError(f'{array.dtype} array of shape {array.shape} does not match '
                         f'encoding {encoding}')
    height, width = array.shape[:2]
    return TYPESTORE.types[IMAGE](
        header=header, height=height, width=width, encoding=encoding, is_bigendian=0,
        step=width * channels, data=np.ascontiguousarray(array).reshape(-1))


def array_to_compressed(rgb: np.ndarray, fmt: str, header: Any,
                        jpeg_quality: int = 95) -> Any:
    """HxWx3 uint8 RGB to a ``sensor_msgs/CompressedImage`` in ``fmt`` ``jpeg`` or ``png``."""
    if fmt not in ('jpeg', 'png'):
        raise ValueError(f"compressed format must be 'jpeg' or 'png', got {fmt!r}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if fmt == 'jpeg' else []
    ok, encoded = cv2.imencode('.jpg' if fmt == 'jpeg' else '.png',
                               np.ascontiguousarray(rgb[:, :, ::-1]), params)
    if not ok:
        raise ValueError(f'OpenCV could not encode a {rgb.shape} image as {fmt}')
    return TYPESTORE.types[COMPRESSED_IMAGE](
        header=header, format=f'rgb8; {fmt} compressed bgr8', data=encoded.reshape(-1))


def serialize(msg: Any) -> bytes:
    """Serialise a rosbags message to CDR bytes (the rmw wire format)."""
    return bytes(TYPESTORE.serialize_cdr(msg, msg.__msgtype__))


def deserialize(data: bytes, msgtype: str) -> Any:
    """
    CDR bytes to a rosbags message with writable arrays; MessageError when they do not parse.

    The data is copied first: arrays of the message view the copy, so they are
    writable (torch refuses read-only numpy arrays without a warning).
    """
    try:
        return TYPESTORE.deserialize_cdr(bytearray(data), msgtype)
    except Exception as error:  # rosbags raises several types for corrupt data
        raise MessageError(f'cannot deserialise {msgtype} ({error})') from None


# ---------------------------------------------------------------- reading

@contextmanager
def open_bag(path: PathLike) -> Iterator[Reader]:
    """
    Open a rosbag2 bag (a directory, or a single .db3 / .mcap file) for reading.

    Raises :class:`BagError` naming the bag and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise BagError(f"bag '{path}' does not exist")
    if path.is_dir() and not (path / 'metadata.yaml').is_file():
        raise BagError(f"bag '{path}' cannot be read: it is a directory without metadata.yaml, "
                       'not a rosbag2 bag')
    try:
        reader = Reader(path)
        reader.open()
    except Exception as error:  # rosbags raises several types for unreadable bags
        raise BagError(f"bag '{path}' cannot be read: {error}") from None
    try:
        yield reader
    finally:
        reader.close()


def bag_topics(reader: Reader) -> Dict[str, TopicInfo]:
    """Return the topics of an open bag, by name."""
    return {name: TopicInfo(name, info.msgtype or 'mixed types', info.msgcount)
            for name, info in reader.topics.items()}


def describe_topics(reader: Reader) -> str:
    """One line listing the bag's topics with type and count, for error messages."""
    topics = bag_topics(reader).values()
    if not topics:
        return 'the bag has no topics'
    return 'its topics are: ' + ', '.join(
        f'{t.name} ({t.msgtype}, {t.count} messages)' for t in topics)


def require_topic(reader: Reader, topic: str, msgtypes: Sequence[str]) -> TopicInfo:
    """Check ``topic`` exists with one of ``msgtypes``; raise :class:`BagError` otherwise."""
    topics = bag_topics(reader)
    if topic not in topics:
        raise BagError(f"topic '{topic}' is not in the bag; {describe_topics(reader)}")
    info = topics[topic]
    if info.msgtype not in msgtypes:
        raise BagError(f"topic '{topic}' has type {info.msgtype}, which is not supported "
                       f"(expected {' or '.join(msgtypes)})")
    return info


def read_messages(reader: Reader, topics: Sequence[str]) -> Iterator[RawMessage]:
    """Yield the serialised messages of ``topics`` in log-time order."""
    connections = [c for c in reader.connections if c.topic in topics]
    if not connections:
        return
    for connection, log_time, data in reader.messages(connections=connections):
        yield RawMessage(connection.topic, connection.msgtype, int(log_time), bytes(data))


def bag_custom_data(reader: Reader) -> Dict[str, str]:
    """Return the ``custom_data`` of a bag directory's metadata.yaml (empty when absent)."""
    metadata = getattr(reader.storage, 'metadata', None)
    return dict(getattr(metadata, 'custom', None) or {})


def frame_names(reader: Reader) -> Dict[int, str]:
    """Stamp (ns) -> source file stem, as recorded by ``dataset_to_bag`` (may be empty)."""
    text = bag_custom_data(reader).get(FRAME_NAMES_KEY)
    if not text:
        return {}
    try:
        return {int(stamp): str(name) for stamp, name in json.loads(text).items()}
    except (ValueError, AttributeError):
        return {}


def storage_of(path: PathLike) -> str:
    """``mcap`` or ``sqlite3``: the storage of an existing bag (a guess from file names)."""
    path = Path(path)
    files = [path] if path.is_file() else list(path.iterdir()) if path.is_dir() else []
    return 'mcap' if any(f.suffix == '.mcap' for f in files) else 'sqlite3'


# ---------------------------------------------------------------- writing

def check_output_apart(output: PathLike, reading: PathLike) -> None:
    """Raise :class:`BagError` when bag ``output`` is, holds or sits in bag ``reading``."""
    source, target = Path(reading).resolve(), Path(output).resolve()
    if target == source or target in source.parents or source in target.parents:
        raise BagError(f"output bag '{output}' would overwrite or sit inside the bag being "
                       f"read, '{reading}'; choose another path")


class BagWriter:
    """
    Writes rosbags messages to a new rosbag2 bag; use as a context manager.

    The bag has metadata version :data:`BAG_VERSION`, readable by ROS 2 Humble and later.
    """

    def __init__(self, path: PathLike, storage: str = 'sqlite3', overwrite: bool = False,
                 reading: Optional[PathLike] = None):
        """Check ``path`` (refused when it is or holds ``reading``, the bag being read)."""
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
        self.path = Path(path)
        if reading is not None:
            check_output_apart(self.path, reading)
        if self.path.exists():
            if not overwrite:
                raise BagError(f"output bag '{self.path}' exists already "
                               '(use --overwrite to replace it)')
            if not (self.path / 'metadata.yaml').is_file():
                raise BagError(f"'{self.path}' exists and is not a rosbag2 bag; "
                               'refusing to overwrite it')
            shutil.rmtree(self.path)
        self.storage = storage
        self._writer = Writer(self.path, version=BAG_VERSION, storage_plugin=STORAGES[storage])
        self._connections: Dict[str, Any] = {}
        self.counts: Dict[str, int] = {}

    def __enter__(self) -> 'BagWriter':
        """Open the bag."""
        self._writer.open()
        return self

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        """Close the bag (writes metadata.yaml); remove it when the block raised."""
        try:
            self._writer.close()
        finally:
            if exc_type is not None:
                shutil.rmtree(self.path, ignore_errors=True)

    def add_topic(self, topic: str, msgtype: str,
                  offered_qos_profiles: Sequence[Qos] = ()) -> None:
        """
        Declare ``topic`` with ``msgtype`` (a type of the Humble typestore).

        ``offered_qos_profiles`` (rosbags ``Qos`` tuples) are recorded for ``ros2 bag play``;
        without them rosbag2 plays the topic with its default QoS.
        """
        if topic not in self._connections:
            self._connections[topic] = self._writer.add_connection(
                topic, msgtype, typestore=TYPESTORE,
                offered_qos_profiles=tuple(offered_qos_profiles))
            self.counts[topic] = 0

    def write(self, topic: str, msg: Any, log_time: int) -> None:
        """Serialise and write ``msg`` on ``topic`` at ``log_time`` nanoseconds."""
        self.write_raw(topic, serialize(msg), log_time)

    def write_raw(self, topic: str, data: bytes, log_time: int) -> None:
        """Write already serialised CDR ``data`` on a declared ``topic``."""
        self._writer.write(self._connections[topic], int(log_time), data)
        self.counts[topic] += 1

    def set_custom_data(self, key: str, value: str) -> None:
        """Store a string in metadata.yaml's ``custom_data``."""
        self._writer.set_custom_data(key, value)
