"""
The package's Fast DDS profile for large images, and the variable each ROS 2 release reads.

Fast DDS takes an XML profile from an environment variable:
``FASTRTPS_DEFAULT_PROFILES_FILE`` in 2.x (Humble 2.6, Jazzy 2.14; the new name
is ignored there) and ``FASTDDS_DEFAULT_PROFILES_FILE`` in 3.x (Kilted on,
where the old name still works but warns that it is deprecated). Measured
with ``test/dds_probe.py`` on the Kilted and Jazzy wheels
(``test/test_dds_profile.py``). Used by the launch file and by every process
the package starts (node, live evaluation, demo, tests, benchmarks).
"""

import os
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

#: Fast DDS profile with shared-memory segments large enough for 1080p rgb8 images.
FASTDDS_PROFILE = 'fastdds_large_data.xml'
OLD_NAME, NEW_NAME = 'FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_DEFAULT_PROFILES_FILE'
#: Both names; a profile set under either is the user's choice.
PROFILE_VARIABLES = (NEW_NAME, OLD_NAME)
#: Releases whose Fast DDS (2.x) reads only the old name.
FAST_DDS_2_DISTROS = ('humble', 'iron', 'jazzy')


def profile_variables(distro: Optional[str] = None) -> Tuple[str, ...]:
    """
    Return the variable(s) to set for ROS 2 release ``distro`` (default: ``$ROS_DISTRO``).

    Humble to Jazzy: the old name; a later named release: the new name; unknown
    (no ``ROS_DISTRO``, as in a venv of ROS wheels): both, holding the same path
    string (two different spellings of one file make Fast DDS 3 log errors).
    """
    distro = (os.environ.get('ROS_DISTRO', '') if distro is None else distro).strip().lower()
    if not distro:
        return (NEW_NAME, OLD_NAME)
    return (OLD_NAME,) if distro in FAST_DDS_2_DISTROS else (NEW_NAME,)


def config_file(name: str) -> Optional[Path]:
    """Find the package's config/<name>: installed share directory, else source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory
        installed = Path(get_package_share_directory('enet_ros')) / 'config' / name
        if installed.is_file():
            return installed
    except Exception:  # noqa: B902 - not installed as a ROS package (e.g. pip -e)
        pass
    source = Path(__file__).resolve().parents[2] / 'config' / name
    return source if source.is_file() else None


def with_large_image_transport(env: Mapping[str, str]) -> Dict[str, str]:
    """
    Return ``env`` plus the package's Fast DDS profile, unless a profile is already chosen.

    The profile replaces Fast DDS' built-in transports with shared memory in 32 MiB
    segments plus UDP: on one machine, images up to 1080p rgb8 then travel in one piece.
    Measured with ``bench/bench_node.py`` (README, "Large images and DDS"), it beats
    ``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA``. Every process that sends big images
    (camera, node, bag player) needs it; receivers need shared memory enabled.
    """
    result = dict(env)
    profile = config_file(FASTDDS_PROFILE)
    if profile is not None and not any(result.get(name) for name in PROFILE_VARIABLES):
        for name in profile_variables(result.get('ROS_DISTRO', '')):
            # Resolved: through a symbolic link (a symlink-install share directory) Fast DDS 3
            # sees one file under two names and logs XMLPARSER errors.
            result[name] = str(profile.resolve())
    return result
