"""
BagWriter's metadata.yaml as the rosbag2 of ROS 2 Humble and of Jazzy parse it.

BagWriter writes rosbag2 metadata version 8 (``bag_io.BAG_VERSION``): from
version 9 on, ``offered_qos_profiles`` is a YAML list, which Humble's rosbag2
(it reads that key as a string holding YAML for every version >= 4) rejects
with "Exception on parsing info file". The decoder below follows rosbag2's
yaml-cpp decoders (rosbag2_storage/include/rosbag2_storage/yaml.hpp, humble
and jazzy branches) key by key, so these tests need no ROS installation.
"""

from io import BytesIO
import json
from pathlib import Path
import sqlite3
import struct
from typing import Any, Dict, List

from enet_ros.evaluation import bag_io
import numpy as np
import pytest
from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness, QosReliability,
                                QosTime)
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
import yaml

#: The newest metadata version each distribution's rosbag2 knows (it reads newer files too).
HUMBLE = 5
JAZZY = 9

CAMERA = '/camera/image_raw'
COMPRESSED = '/camera/image_raw/compressed'
LABELS = '/camera/labels'
START_NS = 1_700_000_000_123_456_789
PERIOD_NS = 100_000_000
RELIABLE = Qos(QosHistory.KEEP_LAST, 10, QosReliability.RELIABLE, QosDurability.VOLATILE,
               QosTime(0, 0), QosTime(0, 0), QosLiveliness.AUTOMATIC, QosTime(0, 0), False)
BEST_EFFORT = Qos(QosHistory.KEEP_LAST, 5, QosReliability.BEST_EFFORT,
                  QosDurability.TRANSIENT_LOCAL, QosTime(1, 500), QosTime(0, 0),
                  QosLiveliness.AUTOMATIC, QosTime(2, 0), False)
#: topic -> (message type, offered QoS profiles, message count)
TOPICS = {
    CAMERA: (bag_io.IMAGE, [RELIABLE, BEST_EFFORT], 3),
    COMPRESSED: (bag_io.COMPRESSED_IMAGE, [RELIABLE], 2),
    LABELS: (bag_io.IMAGE, [], 1),
}
CUSTOM_DATA = {
    bag_io.FRAME_NAMES_KEY: json.dumps({str(START_NS): 'frame_0', str(START_NS + 1): 'b'}),
    'enet_ros.note': 'two lines:\n  "quoted", # not a comment, \u00fcnicode',
    'enet_ros.number_like': '42',
    'enet_ros.bool_like': 'true',
    'enet_ros.empty': '',
}


# ---------------------------------------------------------------- bags under test

def stamps(count: int, offset: int) -> List[int]:
    """Return ``count`` log times, 100 ms apart, starting ``offset`` ns after START_NS."""
    return [START_NS + offset + i * PERIOD_NS for i in range(count)]


def make_message(topic: str, stamp: int) -> Any:
    """Build a small image message of ``topic``'s type, stamped ``stamp``."""
    rng = np.random.default_rng(stamp % 1000)
    header = bag_io.make_header(stamp, 'camera')
    if topic == LABELS:
        return bag_io.array_to_image(rng.integers(0, 12, (6, 8), dtype=np.uint8), 'mono8', header)
    rgb = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    if topic == COMPRESSED:
        return bag_io.array_to_compressed(rgb, 'png', header)
    return bag_io.array_to_image(rgb, 'rgb8', header)


def write_bag(path: Path, storage: str) -> Dict[str, List[bytes]]:
    """Write TOPICS and CUSTOM_DATA with BagWriter; return each topic's serialised messages."""
    written: Dict[str, List[bytes]] = {}
    with bag_io.BagWriter(path, storage) as writer:
        for offset, (topic, (msgtype, qos, count)) in enumerate(TOPICS.items()):
            writer.add_topic(topic, msgtype, offered_qos_profiles=qos)
            written[topic] = []
            for stamp in stamps(count, offset):
                msg = make_message(topic, stamp)
                writer.write(topic, msg, stamp)
                written[topic].append(bag_io.serialize(msg))
        for key, value in CUSTOM_DATA.items():
            writer.set_custom_data(key, value)
    assert writer.counts == {topic: count for topic, (_, _, count) in TOPICS.items()}
    return written


@pytest.fixture(scope='module', params=['sqlite3', 'mcap'])
def bag(request, tmp_path_factory):
    """(storage, bag directory, topic -> serialised messages) of a bag written by BagWriter."""
    path = tmp_path_factory.mktemp(request.param) / 'bag'
    return request.param, path, write_bag(path, request.param)


def load_info(path: Path) -> Dict[str, Any]:
    """Return metadata.yaml's ``rosbag2_bagfile_information``, parsed with yaml.safe_load."""
    document = yaml.safe_load((path / 'metadata.yaml').read_text(encoding='utf-8'))
    return document['rosbag2_bagfile_information']


def all_stamps() -> List[int]:
    """Every log time written, in any order."""
    return [s for offset, (_, _, count) in enumerate(TOPICS.values())
            for s in stamps(count, offset)]


# ---------------------------------------------------------------- rosbag2's decoders, mimicked

class BadConversion(Exception):
    """What yaml-cpp throws (rosbag2: "Exception on parsing info file: ... bad conversion")."""


def get(node: Any, key: str) -> Any:
    """yaml-cpp ``node[key]`` then ``as<T>()``: a missing key or a non-map node fails."""
    if not isinstance(node, dict) or key not in node:
        raise BadConversion(f'no key {key!r} in {node!r}')
    return node[key]


def as_string(node: Any) -> str:
    """yaml-cpp ``as<std::string>()``: any scalar, but not null, a sequence or a map."""
    if node is None or isinstance(node, (list, dict)):
        raise BadConversion(f'{node!r} is not a string scalar')
    return node if isinstance(node, str) else str(node)


def as_int(node: Any, bits: int = 32, signed: bool = True) -> int:
    """yaml-cpp ``as<int>()`` / ``as<uint64_t>()``: an integer scalar in range."""
    low, high = (-(1 << bits - 1), 1 << bits - 1) if signed else (0, 1 << bits)
    if isinstance(node, bool) or not isinstance(node, int) or not low <= node < high:
        raise BadConversion(f'{node!r} is not an int{bits}')
    return node


def as_uint64(node: Any) -> int:
    """yaml-cpp ``as<uint64_t>()``."""
    return as_int(node, 64, signed=False)


def as_bool(node: Any) -> bool:
    """yaml-cpp ``as<bool>()``."""
    if not isinstance(node, bool):
        raise BadConversion(f'{node!r} is not a bool')
    return node


def as_sequence(node: Any) -> List[Any]:
    """yaml-cpp ``as<std::vector<T>>()`` (and rosbag2's own vector decoders): a sequence."""
    if not isinstance(node, list):
        raise BadConversion(f'{node!r} is not a sequence')
    return node


def decode_qos(node: Any, known: int) -> Dict[str, Any]:
    """
    Decode one QoS profile as the ``ros2 bag play`` of a distribution knowing ``known`` does.

    Humble (rosbag2_transport/qos.cpp) reads the policies with ``as<int>()``;
    Jazzy (rosbag2_storage/qos.cpp) detects integers (version 8) or names (version 9).
    """
    def policy(key: str) -> Any:
        value = get(node, key)
        if known >= 9 and isinstance(value, str):
            return value
        return as_int(value)

    def duration(key: str) -> Any:
        value = get(node, key)
        return as_uint64(get(value, 'sec')), as_uint64(get(value, 'nsec'))

    return {
        'history': policy('history'), 'depth': as_int(get(node, 'depth')),
        'reliability': policy('reliability'), 'durability': policy('durability'),
        'liveliness': policy('liveliness'), 'deadline': duration('deadline'),
        'lifespan': duration('lifespan'),
        'liveliness_lease_duration': duration('liveliness_lease_duration'),
        'avoid_ros_namespace_conventions': as_bool(get(node, 'avoid_ros_namespace_conventions')),
    }


def decode_qos_string(text: str, known: int) -> List[Dict[str, Any]]:
    """Decode a serialised profile list as rosbag2 does: empty string = none, else YAML."""
    if not text:
        return []
    return [decode_qos(item, known) for item in as_sequence(yaml.safe_load(text))]


def decode_topic(node: Any, version: int, known: int) -> Dict[str, Any]:
    """``convert<TopicInformation>`` / ``convert<TopicMetadata>::decode``."""
    meta = get(node, 'topic_metadata')
    topic = {'name': as_string(get(meta, 'name')), 'type': as_string(get(meta, 'type')),
             'serialization_format': as_string(get(meta, 'serialization_format')),
             'offered_qos_profiles': []}
    if version >= 9 and known >= 9:
        topic['offered_qos_profiles'] = [
            decode_qos(item, known) for item in as_sequence(get(meta, 'offered_qos_profiles'))]
    elif version >= 4:
        topic['offered_qos_profiles'] = decode_qos_string(
            as_string(get(meta, 'offered_qos_profiles')), known)
    if version >= 7 and known >= 7:
        topic['type_description_hash'] = as_string(get(meta, 'type_description_hash'))
    topic['message_count'] = as_uint64(get(node, 'message_count'))
    return topic


def decode_custom_data(node: Any) -> Dict[str, str]:
    """rosbag2's ``convert<unordered_map<string, string>>``: iterates the node (null: empty)."""
    if node is None:
        return {}
    if not isinstance(node, dict):
        raise BadConversion(f'custom_data {node!r} is not a map')
    return {as_string(key): as_string(value) for key, value in node.items()}


def rosbag2_decode(info: Any, known: int) -> Dict[str, Any]:
    """
    ``convert<BagMetadata>::decode`` of a rosbag2 that knows metadata versions up to ``known``.

    It reads the keys of the file's version that it knows; it ignores other keys.
    """
    version = as_int(get(info, 'version'))
    result = {
        'version': version,
        'storage_identifier': as_string(get(info, 'storage_identifier')),
        'duration': as_uint64(get(get(info, 'duration'), 'nanoseconds')),
        'starting_time': as_uint64(get(get(info, 'starting_time'), 'nanoseconds_since_epoch')),
        'message_count': as_uint64(get(info, 'message_count')),
        'topics': [decode_topic(topic, version, known)
                   for topic in as_sequence(get(info, 'topics_with_message_count'))],
        'relative_file_paths': [as_string(p)
                                for p in as_sequence(get(info, 'relative_file_paths'))],
    }
    if version >= 3:
        result['compression_format'] = as_string(get(info, 'compression_format'))
        result['compression_mode'] = as_string(get(info, 'compression_mode'))
    if version >= 5:
        result['files'] = [{
            'path': as_string(get(item, 'path')),
            'starting_time': as_uint64(get(get(item, 'starting_time'),
                                           'nanoseconds_since_epoch')),
            'duration': as_uint64(get(get(item, 'duration'), 'nanoseconds')),
            'message_count': as_uint64(get(item, 'message_count')),
        } for item in as_sequence(get(info, 'files'))]
    if version >= 6 and known >= 6:
        result['custom_data'] = decode_custom_data(get(info, 'custom_data'))
    if version >= 8 and known >= 8:
        result['ros_distro'] = as_string(get(info, 'ros_distro'))
    return result


#: rmw's integer policy values (rmw/types.h), which version-8 metadata and Humble use.
RMW_POLICIES = {
    QosHistory.KEEP_LAST: 1, QosReliability.RELIABLE: 1, QosReliability.BEST_EFFORT: 2,
    QosDurability.TRANSIENT_LOCAL: 1, QosDurability.VOLATILE: 2, QosLiveliness.AUTOMATIC: 1,
}


def expected_qos(profiles: List[Qos]) -> List[Dict[str, Any]]:
    """Return the decoded form of rosbags Qos tuples in version-8 (integer) serialisation."""
    return [{
        'history': RMW_POLICIES[q.history], 'depth': q.depth,
        'reliability': RMW_POLICIES[q.reliability], 'durability': RMW_POLICIES[q.durability],
        'liveliness': RMW_POLICIES[q.liveliness],
        'deadline': (q.deadline.sec, q.deadline.nsec),
        'lifespan': (q.lifespan.sec, q.lifespan.nsec),
        'liveliness_lease_duration': (q.liveliness_lease_duration.sec,
                                      q.liveliness_lease_duration.nsec),
        'avoid_ros_namespace_conventions': q.avoid_ros_namespace_conventions,
    } for q in profiles]


# ---------------------------------------------------------------- metadata.yaml

def test_metadata_yaml_is_version_8_with_string_qos(bag):
    storage, path, _ = bag
    info = load_info(path)
    assert bag_io.BAG_VERSION == 8
    assert info['version'] == 8
    assert info['storage_identifier'] == storage
    files = sorted(p.name for p in path.iterdir() if p.name != 'metadata.yaml')
    assert len(files) == 1 and files[0].endswith('.mcap' if storage == 'mcap' else '.db3')
    assert info['relative_file_paths'] == files
    total = sum(count for _, _, count in TOPICS.values())
    start, end = min(all_stamps()), max(all_stamps())
    assert info['message_count'] == total
    assert info['starting_time'] == {'nanoseconds_since_epoch': start}
    assert info['duration'] == {'nanoseconds': end - start}
    assert info['files'] == [{'path': files[0],
                              'starting_time': {'nanoseconds_since_epoch': start},
                              'duration': {'nanoseconds': end - start}, 'message_count': total}]
    assert info['compression_format'] == '' and info['compression_mode'] == ''
    assert info['custom_data'] == CUSTOM_DATA
    assert isinstance(info['ros_distro'], str)

    topics = {t['topic_metadata']['name']: t for t in info['topics_with_message_count']}
    assert set(topics) == set(TOPICS)
    for name, (msgtype, qos, count) in TOPICS.items():
        meta = topics[name]['topic_metadata']
        assert topics[name]['message_count'] == count
        assert meta['type'] == msgtype and meta['serialization_format'] == 'cdr'
        assert meta['type_description_hash'] == bag_io.TYPESTORE.hash_rihs01(msgtype)
        text = meta['offered_qos_profiles']
        assert isinstance(text, str), f'{name}: offered_qos_profiles must be a YAML string'
        if not qos:
            assert text == ''
            continue
        profiles = yaml.safe_load(text)
        assert isinstance(profiles, list) and all(isinstance(p, dict) for p in profiles)
        assert len(profiles) == len(qos)
        assert decode_qos_string(text, HUMBLE) == expected_qos(qos)


@pytest.mark.parametrize('known', [HUMBLE, JAZZY], ids=['humble', 'jazzy'])
def test_rosbag2_of_humble_and_jazzy_decode_the_metadata(bag, known):
    storage, path, _ = bag
    decoded = rosbag2_decode(load_info(path), known)
    assert decoded['version'] == 8 and decoded['storage_identifier'] == storage
    assert decoded['message_count'] == sum(count for _, _, count in TOPICS.values())
    assert [f['path'] for f in decoded['files']] == decoded['relative_file_paths']
    assert {t['name']: (t['type'], t['offered_qos_profiles'], t['message_count'])
            for t in decoded['topics']} == {
        name: (msgtype, expected_qos(qos), count)
        for name, (msgtype, qos, count) in TOPICS.items()}
    if known >= 8:
        assert decoded['custom_data'] == CUSTOM_DATA
        assert all(t['type_description_hash'].startswith('RIHS01_') for t in decoded['topics'])
    else:  # Humble ignores the keys of versions 6 to 8
        assert 'custom_data' not in decoded and 'ros_distro' not in decoded


def test_version_9_metadata_is_what_humble_cannot_parse(tmp_path):
    """The defect BAG_VERSION avoids: rosbags' version 9 writes the profiles as a YAML list."""
    path = tmp_path / 'v9'
    with Writer(path, version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        connection = writer.add_connection(CAMERA, bag_io.IMAGE, typestore=bag_io.TYPESTORE,
                                           offered_qos_profiles=[RELIABLE])
        writer.write(connection, START_NS, bag_io.serialize(make_message(CAMERA, START_NS)))
    info = load_info(path)
    assert isinstance(info['topics_with_message_count'][0]['topic_metadata'][
        'offered_qos_profiles'], list)
    with pytest.raises(BadConversion):
        rosbag2_decode(info, HUMBLE)
    assert rosbag2_decode(info, JAZZY)['topics'][0]['offered_qos_profiles'][0]['depth'] == 10


def test_humble_decoder_requires_the_keys_of_the_version(bag):
    _, path, _ = bag
    info = load_info(path)
    for key in ('files', 'compression_mode', 'relative_file_paths', 'storage_identifier'):
        broken = {k: v for k, v in info.items() if k != key}
        with pytest.raises(BadConversion):
            rosbag2_decode(broken, HUMBLE)
    # keys Humble does not know are ignored
    extra = {k: v for k, v in info.items() if k not in ('custom_data', 'ros_distro')}
    assert rosbag2_decode(dict(extra, unknown_key=[1, 2]), HUMBLE)['version'] == 8


# ---------------------------------------------------------------- storage files

def read_string(bio: BytesIO) -> str:
    """Read an MCAP string (uint32 length, UTF-8 bytes)."""
    (length,) = struct.unpack('<I', bio.read(4))
    return bio.read(length).decode('utf-8')


def read_map(bio: BytesIO) -> Dict[str, str]:
    """Read an MCAP Map<string, string> (uint32 byte length, then key/value strings)."""
    (length,) = struct.unpack('<I', bio.read(4))
    sub = BytesIO(bio.read(length))
    result = {}
    while sub.tell() < length:
        key = read_string(sub)
        result[key] = read_string(sub)
    return result


def mcap_records(path: Path) -> Dict[str, Any]:
    """Channel metadata by topic, and metadata records by name, of an MCAP file (top level)."""
    data = path.read_bytes()
    assert data[:8] == b'\x89MCAP0\r\n'
    channels: Dict[str, Dict[str, str]] = {}
    metadata: Dict[str, Dict[str, str]] = {}
    offset = 8
    while offset < len(data) - 8:
        opcode, length = struct.unpack_from('<BQ', data, offset)
        record = BytesIO(data[offset + 9:offset + 9 + length])
        offset += 9 + length
        if opcode == 0x04:  # Channel: id, schema id, topic, message encoding, metadata
            record.read(4)
            topic = read_string(record)
            read_string(record)
            channels[topic] = read_map(record)
        elif opcode == 0x0C:  # Metadata: name, metadata
            name = read_string(record)
            metadata[name] = read_map(record)
        elif opcode == 0x02:  # Footer
            break
    return {'channels': channels, 'metadata': metadata}


def test_storage_holds_the_profiles_in_humbles_form(bag):
    """sqlite3 ``topics`` rows and MCAP channel metadata: the same version-8 string."""
    storage, path, _ = bag
    info = load_info(path)
    in_yaml = {t['topic_metadata']['name']: t['topic_metadata']['offered_qos_profiles']
               for t in info['topics_with_message_count']}
    storage_file = path / info['relative_file_paths'][0]
    if storage == 'sqlite3':
        with sqlite3.connect(storage_file) as db:
            in_storage = dict(db.execute('SELECT name, offered_qos_profiles FROM topics'))
    else:
        records = mcap_records(storage_file)
        in_storage = {topic: meta['offered_qos_profiles']
                      for topic, meta in records['channels'].items()}
        # the rosbag2 metadata record (what Jazzy's MCAP plugin reads without metadata.yaml)
        serialized = yaml.safe_load(records['metadata']['rosbag2']['serialized_metadata'])
        assert rosbag2_decode(serialized, HUMBLE)['version'] == 8
        assert rosbag2_decode(serialized, JAZZY)['custom_data'] == CUSTOM_DATA
    assert set(in_storage) == set(TOPICS)
    for topic, (_, qos, _) in TOPICS.items():
        assert isinstance(in_storage[topic], str)
        assert decode_qos_string(in_storage[topic], HUMBLE) == expected_qos(qos)
        assert yaml.safe_load(in_storage[topic] or '[]') == yaml.safe_load(in_yaml[topic] or '[]')


# ---------------------------------------------------------------- reading back

def test_bag_reads_back_with_open_bag(bag):
    _, path, written = bag
    with bag_io.open_bag(path) as reader:
        topics = bag_io.bag_topics(reader)
        assert {name: (t.msgtype, t.count) for name, t in topics.items()} == {
            name: (msgtype, count) for name, (msgtype, _, count) in TOPICS.items()}
        assert bag_io.bag_custom_data(reader) == CUSTOM_DATA
        assert bag_io.frame_names(reader) == {START_NS: 'frame_0', START_NS + 1: 'b'}
        read: Dict[str, List[bytes]] = {topic: [] for topic in TOPICS}
        times = []
        for raw in bag_io.read_messages(reader, list(TOPICS)):
            read[raw.topic].append(raw.data)
            times.append(raw.log_time)
            msg = bag_io.deserialize(raw.data, raw.msgtype)
            assert bag_io.stamp_to_ns(msg.header.stamp) == raw.log_time
        assert read == written
        assert times == sorted(all_stamps())


def test_bag_reads_back_with_rosbags_reader(bag):
    storage, path, written = bag
    with Reader(path) as reader:
        assert reader.message_count == sum(count for _, _, count in TOPICS.values())
        assert {c.topic: list(c.ext.offered_qos_profiles) for c in reader.connections} == {
            topic: qos for topic, (_, qos, _) in TOPICS.items()}
        read: Dict[str, List[bytes]] = {topic: [] for topic in TOPICS}
        for connection, _, data in reader.messages():
            read[connection.topic].append(bytes(data))
        assert read == written
    # the storage file alone (no metadata.yaml): its own records must describe the topics
    single = path / load_info(path)['relative_file_paths'][0]
    with Reader(single) as reader:
        assert {c.topic: (c.msgtype, list(c.ext.offered_qos_profiles))
                for c in reader.connections} == {
            topic: (msgtype, qos) for topic, (msgtype, qos, _) in TOPICS.items()}
        assert reader.message_count == sum(count for _, _, count in TOPICS.values())
