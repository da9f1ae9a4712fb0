"""
Rosbag2 reading and writing, and image messages <-> numpy arrays, with rosbags only.

No rclpy and no ROS installation: messages are the dataclasses of a rosbags
typestore (ROS 2 Humble definitions; ``sensor_msgs/Image`` and
``CompressedImage`` are identical in every later distribution), serialised
as CDR. The conversions read fields by name, so they accept rclpy messages too.

Array contracts:

* a camera frame is a :class:`enet_ros.ros_io.image_msgs.CameraFrame`: an HxWx3
  uint8 array (often a view into the message buffer) plus its channel order;
* a label image is an HxW uint8 array of class ids (``mono8``).

Why one module: it is the one place that knows the bag format: reading,
writing and the message conversions share the typestore, the error types and
the metadata version, and every other evaluation module (and the tests) goes
through it instead of rosbags.

Faults it handles: message counts are those of the storage files, not of
metadata.yaml (which may lie); an MCAP bag with a chunk index is read chunk by
chunk here (the format is public, https://mcap.dev/spec), so a corrupt chunk
is skipped and reported (:class:`Unreadable`) instead of ending the read; a
bag folder whose writer never closed it is called unfinished. A bag is written
whole or not at all: :class:`BagWriter` removes it when the writing fails or
is interrupted, and ``--overwrite`` may replace only a bag, an unfinished bag
or an empty folder.
"""

from collections import Counter
from contextlib import contextmanager, suppress
from dataclasses import dataclass
import heapq
import json
import os
from pathlib import Path
import shutil
import struct
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union
import zlib

import cv2
import numpy as np
from rosbags.interfaces import Qos
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import get_typestore, Stores

from .outputs import check_folder_for, OutputPathError, OutputWriteError
from .signals import shielded
from ..ros_io.image_msgs import (CameraFrame, compressed_image_to_frame, InvalidImage,
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
#: Files a rosbag2 writer leaves in a bag folder before metadata.yaml (written last, on close).
STORAGE_SUFFIXES = ('.mcap', '.db3', '.db3-journal', '.db3-wal', '.db3-shm')

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

    The node's own conversion (:mod:`enet_ros.ros_io.image_msgs`), so a bag frame
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

def unfinished_bag_files(path: PathLike) -> List[Path]:
    """
    Storage files of a bag folder that has no metadata.yaml: a bag whose writer never closed it.

    A rosbag2 writer writes metadata.yaml (and an MCAP file's footer) when it
    closes the bag; a writer killed or cut off by a power failure leaves the
    storage file alone. Empty for anything else.
    """
    path = Path(path)
    if not path.is_dir() or (path / 'metadata.yaml').exists():
        return []
    return sorted(p for p in path.iterdir() if p.name.endswith(STORAGE_SUFFIXES))


def _unfinished_message(path: Path, files: Sequence[Path]) -> str:
    names = ', '.join(f.name for f in files)
    return (f"bag '{path}' is unfinished: it holds {names} but no metadata.yaml, so whatever "
            'wrote it was stopped before it closed the bag (killed, or a power cut); write or '
            'record it again (--overwrite replaces it)')


@contextmanager
def open_bag(path: PathLike) -> Iterator[Reader]:
    """
    Open a rosbag2 bag (a directory, or a single .db3 / .mcap file) for reading.

    Raises :class:`BagError` naming the bag and the problem (an unfinished bag,
    one whose writer never closed it, is called that).
    """
    path = Path(path)
    if not path.exists():
        raise BagError(f"bag '{path}' does not exist")
    if path.is_dir() and not (path / 'metadata.yaml').is_file():
        unfinished = unfinished_bag_files(path)
        if unfinished:
            raise BagError(_unfinished_message(path, unfinished))
        raise BagError(f"bag '{path}' cannot be read: it is a directory without metadata.yaml, "
                       'not a rosbag2 bag')
    try:
        reader = Reader(path)
        reader.open()
    except Exception as error:  # rosbags raises several types for unreadable bags
        hint = (' (an MCAP file without its footer is unfinished: whatever wrote it was '
                'stopped before it closed it)' if path.suffix == '.mcap'
                and 'end magic' in str(error) else '')
        raise BagError(f"bag '{path}' cannot be read: {error}{hint}") from None
    try:
        yield reader
    finally:
        reader.close()


def _storages(reader: Reader) -> List[Any]:
    """Return the storage readers (one per file) of an open bag."""
    storages = getattr(reader.storage, 'storages', None)
    return list(storages) if storages is not None else [reader.storage]


def stored_counts(reader: Reader) -> Dict[str, int]:
    """
    Messages per topic as the bag's storage files count them, not as metadata.yaml says.

    sqlite3 files are counted with a query, MCAP files by their own statistics
    (or a scan when they have none).
    """
    counts: Counter = Counter()
    for storage in _storages(reader):
        for connection in storage.connections:
            counts[connection.topic] += connection.msgcount
    return dict(counts)


def bag_topics(reader: Reader) -> Dict[str, TopicInfo]:
    """Return the topics of an open bag, by name, with the counts of its storage files."""
    stored = stored_counts(reader)
    return {name: TopicInfo(name, info.msgtype or 'mixed types', stored.get(name, info.msgcount))
            for name, info in reader.topics.items()}


def count_mismatches(reader: Reader) -> List[str]:
    """One line per topic whose metadata.yaml message count differs from its storage files'."""
    if getattr(reader.storage, 'storages', None) is None:
        return []  # a single file: the counts are the file's own
    stored = stored_counts(reader)
    return [f"metadata.yaml says {info.msgcount} messages on {name}, the bag's storage holds "
            f'{stored.get(name, 0)} (all stored messages are read)'
            for name, info in sorted(reader.topics.items())
            if info.msgcount != stored.get(name, 0)]


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


@dataclass(frozen=True)
class Unreadable:
    """Messages of a bag that could not be read (a corrupt chunk): where, how many, why."""

    log_time: int  # the earliest log time the unreadable part may hold, ns
    counts: Dict[str, int]  # topic -> messages lost, as the bag's index counts them
    reason: str

    def describe(self) -> str:
        """One line: what was lost and why."""
        lost = ', '.join(f'{count} on {topic}' for topic, count in sorted(self.counts.items()))
        return f"{self.reason}; messages skipped: {lost or 'an unknown number'}"


#: MCAP record opcodes (https://mcap.dev/spec): a chunk, and a message inside one.
_MCAP_CHUNK, _MCAP_MESSAGE = 0x06, 0x05


def _decompress(data: bytes, compression: str, size: int) -> bytes:
    """Chunk records, decompressed to at most ``size + 1`` bytes (a corrupt frame cannot OOM)."""
    if compression == 'zstd':
        try:
            from compression import zstd  # Python 3.14
        except ImportError:
            from backports import zstd  # a dependency of rosbags before 3.14
        return zstd.ZstdDecompressor().decompress(data, max_length=size + 1)
    return data


def _chunk_messages(bio: Any, chunk: Any) -> List[Tuple[int, int, bytes]]:
    """
    Read one MCAP chunk record at its indexed offset: its messages as (log time, channel, data).

    The header is checked against the chunk index, every size against the record
    that holds it, and the CRC when the writer stored one (rosbags stores none),
    so corrupt data raises ValueError (or struct.error, zstd's error) and never
    reads past the chunk. Sorted by log time, as rosbags' reader yields them.
    """
    bio.seek(chunk.chunk_start_offset)
    head = bio.read(9)
    if len(head) != 9 or head[0] != _MCAP_CHUNK:
        raise ValueError('no chunk record at its indexed offset')
    (length,) = struct.unpack_from('<Q', head, 1)
    if length != chunk.chunk_length - 9:
        raise ValueError(f'chunk record length {length} differs from its index')
    body = bio.read(length)
    if len(body) != length:
        raise ValueError('chunk record runs past the end of the file')
    first, last, size, crc, name_length = struct.unpack_from('<QQQII', body, 0)
    if (first, last, size) != (chunk.message_start_time, chunk.message_end_time,
                               chunk.uncompressed_size):
        raise ValueError('chunk header differs from its index')
    compression = body[32:32 + name_length].decode('utf-8')
    (compressed_size,) = struct.unpack_from('<Q', body, 32 + name_length)
    start = 40 + name_length
    if start + compressed_size > length:
        raise ValueError('chunk data runs past its record')
    data = _decompress(body[start:start + compressed_size], compression, size)
    if len(data) != size:
        raise ValueError(f'chunk holds {len(data)} bytes, its header says {size}')
    if crc and zlib.crc32(data) != crc:
        raise ValueError('chunk checksum mismatch')
    messages, position = [], 0
    while position < size:
        if position + 9 > size:
            raise ValueError('truncated record in the chunk')
        opcode = data[position]
        (record_length,) = struct.unpack_from('<Q', data, position + 1)
        position += 9
        if record_length > size - position:
            raise ValueError(f'a record of {record_length} bytes runs past the chunk')
        if opcode == _MCAP_MESSAGE:
            if record_length < 22:
                raise ValueError(f'message record of {record_length} bytes')
            channel, _, log_time = struct.unpack_from('<HIQ', data, position)
            if first <= log_time <= last:  # else not a message of this chunk (corrupt)
                messages.append((log_time, channel,
                                 data[position + 22:position + record_length]))
        position += record_length
    messages.sort(key=lambda message: message[0])
    return messages


def _readable_chunks(reader: Reader) -> Optional[List[Tuple[Any, Any]]]:
    """
    Return the (storage, chunk) pairs of an MCAP bag with a chunk index, for :func:`_chunked`.

    None when the bag cannot be read chunk by chunk here (sqlite3, no index,
    chunks compressed otherwise than zstd, messages compressed one by one).
    """
    metadata = getattr(reader.storage, 'metadata', None)
    if getattr(metadata, 'compression_mode', None) == 'message':
        return None
    pairs = []
    for storage in _storages(reader):
        chunks = getattr(storage, 'chunks', None)
        if not chunks or getattr(storage, 'bio', None) is None \
                or any(c.compression not in ('', 'zstd') for c in chunks):
            return None
        pairs += [(storage, chunk) for chunk in chunks]
    return pairs


def _chunked(pairs: List[Tuple[Any, Any]], topics: Set[str],
             on_unreadable: Callable[[Unreadable], None]) -> Iterator[RawMessage]:
    """
    Merge the chunks' messages in log-time order; a chunk that cannot be read is skipped.

    A chunk is read only when the merge reaches its first log time (it yields
    a marker at that time first), so one or two chunks are in memory at a time.
    """
    def chunk_stream(order: int, storage: Any, chunk: Any,
                     wanted: Dict[int, Any]) -> Iterator[Tuple[int, int, int, Any]]:
        yield chunk.message_start_time, order, -1, None
        try:
            messages = _chunk_messages(storage.bio, chunk)
        except Exception as error:  # corrupt data: struct.error, ValueError, zstd's errors
            counts: Counter = Counter()
            for channel, count in chunk.channel_count.items():
                if channel in wanted:
                    counts[wanted[channel].topic] += count
            name = Path(str(storage.path)).name
            on_unreadable(Unreadable(
                chunk.message_start_time, dict(counts),
                f'the chunk at byte {chunk.chunk_start_offset} of {name} cannot be read '
                f'({type(error).__name__}: {error})'))
            return
        for index, (log_time, channel, data) in enumerate(messages):
            if channel in wanted:
                yield log_time, order, index, (wanted[channel], data)

    streams = []
    for storage, chunk in pairs:
        wanted = {c.id: c for c in storage.connections if c.topic in topics}
        if chunk.channel_count and not any(c in wanted for c in chunk.channel_count):
            continue  # none of the topics read
        streams.append(chunk_stream(len(streams), storage, chunk, wanted))
    for log_time, _, _, item in heapq.merge(*streams):
        if item is not None:
            connection, data = item
            yield RawMessage(connection.topic, connection.msgtype, int(log_time), bytes(data))


def read_messages(reader: Reader, topics: Sequence[str],
                  on_unreadable: Optional[Callable[[Unreadable], None]] = None
                  ) -> Iterator[RawMessage]:
    """
    Yield the serialised messages of ``topics`` in log-time order.

    A part of the bag that cannot be read is handed to ``on_unreadable``: in an
    MCAP bag with a chunk index, a chunk whose data is corrupt (reading goes on
    with the next chunk); in other bags, the rest of the bag from the first
    error. Without ``on_unreadable`` it raises :class:`BagError`.
    """
    def unreadable(lost: Unreadable) -> None:
        if on_unreadable is None:
            raise BagError(lost.describe())
        on_unreadable(lost)

    wanted = set(topics)
    connections = [c for c in reader.connections if c.topic in wanted]
    if not connections:
        return
    pairs = _readable_chunks(reader)
    if pairs is not None:
        yield from _chunked(pairs, wanted, unreadable)
        return
    stored = {t: n for t, n in stored_counts(reader).items() if t in wanted}
    read: Counter = Counter()
    messages = reader.messages(connections=connections)
    last = 0
    while True:
        try:
            connection, log_time, data = next(messages)
        except StopIteration:
            return
        except Exception as error:  # rosbags' parsers raise many types for corrupt data
            unreadable(Unreadable(last, {t: n - read[t] for t, n in stored.items()
                                         if n > read[t]},
                                  f'the bag cannot be read past log time {last} ns '
                                  f'({type(error).__name__}: {error})'))
            return
        read[connection.topic] += 1
        last = int(log_time)
        yield RawMessage(connection.topic, connection.msgtype, last, bytes(data))


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
    """Raise :class:`OutputPathError` when bag ``output`` is, holds or sits in bag ``reading``."""
    source, target = Path(reading).resolve(), Path(output).resolve()
    if target == source or target in source.parents or source in target.parents:
        raise OutputPathError(f"output bag '{output}' would overwrite or sit inside the bag "
                              f"being read, '{reading}'; choose another path")


def replaceable_bag(path: PathLike) -> bool:
    """
    Whether ``--overwrite`` may remove ``path``: a bag, an unfinished bag or an empty folder.

    An unfinished bag (see :func:`unfinished_bag_files`) holds only storage files.
    """
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return False
    if (path / 'metadata.yaml').is_file():
        return True
    entries = list(path.iterdir())
    return all(p.is_file() and not p.is_symlink() and p.name.endswith(STORAGE_SUFFIXES)
               for p in entries)


def check_output_bag(path: PathLike, overwrite: bool = False,
                     reading: Optional[PathLike] = None, what: str = 'output bag') -> None:
    """
    Raise :class:`OutputPathError` when a new bag cannot be written at ``path``.

    Refused: the bag being read (``reading``) or a path inside it; an existing
    path without ``overwrite``, or one that is neither a bag, an unfinished bag
    nor an empty folder; a path whose folder is a file or not writable.
    """
    path = Path(path)
    if reading is not None:
        check_output_apart(path, reading)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise OutputPathError(f"{what} '{path}' exists already (use --overwrite to replace "
                                  'it)')
        if not replaceable_bag(path):
            raise OutputPathError(f"{what} '{path}' exists and is not a rosbag2 bag; refusing "
                                  'to overwrite it')
    check_folder_for(path, what)


#: Bags this process opened and has not closed or removed yet (see :func:`discard_unclosed`).
_UNCLOSED: Set[Path] = set()


def discard_unclosed() -> List[Path]:
    """
    Remove the bags this process opened for writing and never closed; return them.

    For a tool stopped by a signal: a bag it was writing is removed by its
    :class:`BagWriter` as the stack unwinds, and this catches one opened at the
    instant the signal came (before its ``with`` block was entered).
    """
    removed = []
    for path in sorted(_UNCLOSED):
        if not (path / 'metadata.yaml').exists():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    _UNCLOSED.clear()
    return removed


class BagWriter:
    """
    Writes rosbags messages to a new rosbag2 bag; use as a context manager.

    The bag has metadata version :data:`BAG_VERSION`, readable by ROS 2 Humble and later.
    A bag is either closed complete (metadata.yaml written) or removed: when the
    block raises (a signal included), or when writing fails (a full disk), in which
    case :class:`OutputWriteError` names the bag and :attr:`failure` keeps it.
    """

    def __init__(self, path: PathLike, storage: str = 'sqlite3', overwrite: bool = False,
                 reading: Optional[PathLike] = None):
        """Check ``path`` (:func:`check_output_bag`) and remove what it replaces."""
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
        self.path = Path(path)
        check_output_bag(self.path, overwrite, reading)
        if self.path.exists():
            with shielded():
                shutil.rmtree(self.path)
        self.storage = storage
        self._writer = Writer(self.path, version=BAG_VERSION, storage_plugin=STORAGES[storage])
        self._connections: Dict[str, Any] = {}
        self._open = False
        self.counts: Dict[str, int] = {}
        self.failure: Optional[OutputWriteError] = None

    def __enter__(self) -> 'BagWriter':
        """Open the bag (creates its folder)."""
        try:
            with shielded():
                _UNCLOSED.add(self.path)
                self._open = True
                self._writer.open()
        except BaseException:
            self._discard()
            raise
        return self

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        """Close the bag (writes metadata.yaml); remove it when the block raised."""
        if not self._open:
            return
        if exc_type is not None:
            self._discard()
            return
        try:
            with shielded():
                self._writer.close()
                self._open = False
                _UNCLOSED.discard(self.path)
        except Exception as error:
            raise self._fail(error) from None

    def _discard(self) -> None:
        """Abort the writer and remove the bag folder (a signal waits until it is gone)."""
        with shielded():
            if self._open:
                self._open = False
                with suppress(Exception):
                    self._writer.abort()
            shutil.rmtree(self.path, ignore_errors=True)
            _UNCLOSED.discard(self.path)

    def _fail(self, error: Exception) -> OutputWriteError:
        """Remove the bag after a failed write; the error to raise, also kept in ``failure``."""
        self._discard()
        reason = getattr(error, 'strerror', None) or str(error) or type(error).__name__
        self.failure = OutputWriteError(f"bag '{self.path}' could not be written ({reason}); "
                                        'the partial bag was removed')
        return self.failure

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
        """Write serialised CDR ``data`` on a declared ``topic``; OutputWriteError on failure."""
        if self.failure is not None:
            raise self.failure
        try:
            self._writer.write(self._connections[topic], int(log_time), data)
        except Exception as error:  # OSError, sqlite3.Error: the storage could not write
            raise self._fail(error) from None
        self.counts[topic] += 1

    def set_custom_data(self, key: str, value: str) -> None:
        """Store a string in metadata.yaml's ``custom_data``."""
        self._writer.set_custom_data(key, value)
