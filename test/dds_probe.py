"""
Report the size of the Fast DDS shared-memory segment this process creates, as one JSON line.

Run as ``python test/dds_probe.py`` under the environment to check (``ROS_DOMAIN_ID``,
``FASTDDS_DEFAULT_PROFILES_FILE``, ``FASTRTPS_DEFAULT_PROFILES_FILE`` ...). It starts an
rclpy node with one ``sensor_msgs/Image`` publisher, publishes one message, and prints e.g.
``{"segment_bytes": 549408, ...}`` before it shuts down (Fast DDS removes its files then).

How a segment is found: Fast DDS (2.x: prefix ``fastrtps_``, 3.x: ``fastdds_``) keeps each
participant's data segment in ``/dev/shm/<prefix>_<16 hex digits>`` and holds an exclusive
``flock`` on ``/dev/shm/<prefix>_<16 hex digits>_el`` while the segment's owner lives; the
port files (``<prefix>_port<N>``) are shared between processes. The probe takes the segments
whose ``_el`` lock ``/proc/locks`` shows held by this process, and, should that find none,
the segment files this process maps (``/proc/self/maps``) that were not there before it
started. The file size is the segment size plus Fast DDS' bookkeeping: 549,408 bytes for the
default 512 KiB segment, a little over 32 MiB for ``<segment_size>33554432</segment_size>``.
"""

import json
import os
import re
import sys
import time
from typing import Dict, Set, Tuple

SHM_DIR = '/dev/shm'
SEGMENT_NAME = re.compile(r'^(fastdds|fastrtps)_[0-9a-f]{16}$')


def _locked_inodes(pid: int) -> Set[Tuple[int, int, int]]:
    """Return (major, minor, inode) of the files ``pid`` holds a lock on, from /proc/locks."""
    held = set()
    try:
        with open('/proc/locks') as locks:
            for line in locks:
                fields = line.split()
                # '1: FLOCK  ADVISORY  WRITE 6306 00:1b:97 0 EOF' ('->' marks a waiter)
                if len(fields) < 6 or fields[1] == '->' or fields[4] != str(pid):
                    continue
                major, minor, inode = fields[5].split(':')
                held.add((int(major, 16), int(minor, 16), int(inode)))
    except OSError:
        pass
    return held


def _file_key(path: str) -> Tuple[int, int, int]:
    st = os.stat(path)
    return os.major(st.st_dev), os.minor(st.st_dev), st.st_ino


def owned_segments() -> Dict[str, int]:
    """Return {name: file size} of the segments whose owner lock this process holds."""
    held = _locked_inodes(os.getpid())
    found = {}
    for name in os.listdir(SHM_DIR):
        if not name.endswith('_el') or not SEGMENT_NAME.match(name[:-3]):
            continue
        try:
            if _file_key(os.path.join(SHM_DIR, name)) in held:
                found[name[:-3]] = os.stat(os.path.join(SHM_DIR, name[:-3])).st_size
        except OSError:
            continue  # another process' segment that went away meanwhile
    return found


def mapped_new_segments(before: Set[str]) -> Dict[str, int]:
    """Return {name: file size} of segment files this process maps that are new since start."""
    found = {}
    with open('/proc/self/maps') as maps:
        for line in maps:
            fields = line.split()
            if len(fields) < 6 or not fields[5].startswith(SHM_DIR + '/'):
                continue
            name = os.path.basename(fields[5])
            if SEGMENT_NAME.match(name) and name not in before:
                try:
                    found[name] = os.stat(fields[5]).st_size
                except OSError:
                    continue
    return found


def main() -> int:
    """Start a node, publish one image, print the segment report as JSON."""
    before = set(os.listdir(SHM_DIR)) if os.path.isdir(SHM_DIR) else set()
    started = time.monotonic()

    import rclpy
    from rclpy.context import Context
    from sensor_msgs.msg import Image

    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node(f'dds_probe_{os.getpid()}', context=context)
    try:
        publisher = node.create_publisher(Image, 'dds_probe_image', 1)
        image = Image(height=48, width=64, encoding='mono8', step=64)
        image.data = bytes(48 * 64)
        publisher.publish(image)

        segments = owned_segments()
        method = 'flock'
        if not segments:
            segments = mapped_new_segments(before)
            method = 'maps'
        report = {
            'segment_bytes': max(segments.values()) if segments else None,
            'segments': segments,
            'method': method,
            'rmw': rclpy.get_rmw_implementation_identifier(),
            'profile_variables': {
                name: os.environ.get(name)
                for name in ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE')
            },
            'seconds': round(time.monotonic() - started, 3),
        }
        print(json.dumps(report), flush=True)
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)
    return 0


if __name__ == '__main__':
    sys.exit(main())
