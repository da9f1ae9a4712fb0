"""
Which variable makes Fast DDS read config/fastdds_large_data.xml, measured per ROS 2 distro.

``test/dds_probe.py`` starts a node in a fresh process and reports the size of the
shared-memory segment Fast DDS made for it: 549,408 bytes with the default 512 KiB
segment, a little over 32 MiB with the package's profile. Measured:

    ROS 2 (Fast DDS)   neither   FASTDDS_ only       FASTRTPS_ only     both
    Jazzy (2.14)       default   default (ignored)   32 MiB             32 MiB
    Kilted (3.2)       default   32 MiB              32 MiB, warning    32 MiB, warning

(warning: rmw_fastrtps' "FASTRTPS_DEFAULT_PROFILES_FILE ... is deprecated", one per process.)

Fast DDS 2.x (Humble, Jazzy) reads only ``FASTRTPS_DEFAULT_PROFILES_FILE``; 3.x reads
``FASTDDS_DEFAULT_PROFILES_FILE``, and Kilted's rmw_fastrtps also loads the old name, with a
deprecation warning. So the package sets both. With both naming the same path string the
file is parsed once (Fast DDS skips a file name it has parsed); two different spellings of
the path make Kilted log XMLPARSER errors, and the FASTRTPS_ file, loaded first, wins.
"""

import json
import os
from pathlib import Path
import random
import subprocess
import sys
from typing import Dict, Tuple
from xml.etree import ElementTree

import pytest

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[1]
PROBE = REPO_ROOT / 'test' / 'dds_probe.py'
PROFILE = REPO_ROOT / 'config' / 'fastdds_large_data.xml'
NEW_NAME = 'FASTDDS_DEFAULT_PROFILES_FILE'  # Fast DDS 3.x (Kilted on)
OLD_NAME = 'FASTRTPS_DEFAULT_PROFILES_FILE'  # Fast DDS 2.x (Humble, Jazzy)
SEGMENT_SIZE = int(ElementTree.parse(PROFILE).find('.//{*}segment_size').text)
DEFAULT_SEGMENT_LIMIT = 1 << 20  # the default 512 KiB segment is 549,408 bytes on disk
PROBE_TIMEOUT = 60.0
JAZZY_PYTHON_VARIABLE = 'ENET_ROS_JAZZY_PYTHON'
JAZZY_DEFAULT_PYTHON = REPO_ROOT / '.venv-jazzy' / 'bin' / 'python'

SETTINGS = {
    'neither': (),
    'FASTDDS_ only': (NEW_NAME,),
    'FASTRTPS_ only': (OLD_NAME,),
    'both': (NEW_NAME, OLD_NAME),
}


def probe_environment(python: str, variables: Tuple[str, ...],
                      profile: Path = PROFILE) -> Dict[str, str]:
    """Return the probe's environment: a private domain, loopback, ``profile`` in ``variables``."""
    env = dict(os.environ)
    for name in (NEW_NAME, OLD_NAME, 'FASTDDS_BUILTIN_TRANSPORTS', 'ROS_LOCALHOST_ONLY'):
        env.pop(name, None)
    env.update({name: str(profile) for name in variables})
    env['ROS_DOMAIN_ID'] = str(random.randint(1, 100))
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env['RMW_IMPLEMENTATION'] = 'rmw_fastrtps_cpp'
    if Path(python).absolute() != Path(sys.executable).absolute():
        # ros_wheels_bootstrapper put this venv's ROS libraries on LD_LIBRARY_PATH and marked
        # the environment done; another venv would load them instead of its own.
        env.pop('_ROS_WHEELS_BOOTSTRAP_COMPLETE', None)
        parts = env.pop('LD_LIBRARY_PATH', '').split(os.pathsep)
        ours = (Path(sys.prefix), Path(sys.prefix).resolve())
        kept = [p for p in parts if p and not any(Path(p).is_relative_to(o) for o in ours)]
        if kept:
            env['LD_LIBRARY_PATH'] = os.pathsep.join(kept)
    return env


def run_probe(python: str, variables: Tuple[str, ...], cwd: Path,
              profile: Path = PROFILE) -> Tuple[dict, str]:
    """Run the probe under ``python`` with ``profile`` in ``variables``; return report, stderr."""
    # cwd: an empty folder, so no DEFAULT_FASTDDS_PROFILES.xml there is picked up.
    env = probe_environment(python, variables, profile)
    result = subprocess.run([python, str(PROBE)], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=PROBE_TIMEOUT)
    assert result.returncode == 0, f'probe failed ({result.returncode}):\n{result.stderr}'
    lines = [line for line in result.stdout.splitlines() if line.startswith('{')]
    assert lines, f'no report from the probe:\n{result.stdout}\n{result.stderr}'
    report = json.loads(lines[-1])
    assert report['segment_bytes'], f'no Fast DDS shared-memory segment found: {report}'
    return report, result.stderr


def fast_dds_major(report: dict) -> int:
    """Return 2 or 3 from the segment file names (fastrtps_... in 2.x, fastdds_... in 3.x)."""
    prefixes = {name.split('_')[0] for name in report['segments']}
    assert len(prefixes) == 1, report
    return {'fastrtps': 2, 'fastdds': 3}[prefixes.pop()]


def assert_large(report: dict, stderr: str) -> None:
    """Assert the profile's segment was made, and that loading it logged no error."""
    assert report['segment_bytes'] >= SEGMENT_SIZE, (report, stderr)
    assert 'Error' not in stderr, stderr  # e.g. XMLPARSER errors from a second load


def assert_default(report: dict, stderr: str) -> None:
    """Assert only Fast DDS' default-sized segment was made."""
    assert report['segment_bytes'] < DEFAULT_SEGMENT_LIMIT, (report, stderr)


def test_this_venv_uses_the_profile_with_both_variables(tmp_path):
    """The package sets both names; this venv's Fast DDS then makes the 32 MiB segment."""
    report, stderr = run_probe(sys.executable, SETTINGS['both'], tmp_path)
    assert_large(report, stderr)


def test_a_profile_through_a_symbolic_link_is_resolved_first(tmp_path, monkeypatch):
    """
    Both variables naming the profile through a symlink make Fast DDS 3 log XMLPARSER errors.

    (A ``colcon build --symlink-install`` share directory is such a link; ``ros2 launch``
    printed them.) The package hands out the resolved path, which loads cleanly.
    """
    from enet_ros.ros_io import dds

    link = tmp_path / 'share' / 'fastdds_large_data.xml'
    link.parent.mkdir()
    link.symlink_to(PROFILE)
    probe_dir = tmp_path / 'probe'
    probe_dir.mkdir()
    report, stderr = run_probe(sys.executable, SETTINGS['both'], probe_dir, profile=link)
    if fast_dds_major(report) == 3:
        assert 'XMLPARSER' in stderr, stderr  # the defect the resolution avoids
    monkeypatch.setattr(dds, 'config_file', lambda name: link)
    env = dds.with_large_image_transport({'ROS_DISTRO': ''})
    assert {env[NEW_NAME], env[OLD_NAME]} == {str(PROFILE.resolve())}
    report, stderr = run_probe(sys.executable, SETTINGS['both'], probe_dir,
                               profile=Path(env[NEW_NAME]))
    assert_large(report, stderr)


def test_this_venv_uses_the_default_segment_without_a_profile(tmp_path):
    """Without either variable, Fast DDS' default segment: the probe tells the cases apart."""
    report, stderr = run_probe(sys.executable, SETTINGS['neither'], tmp_path)
    assert_default(report, stderr)


def test_this_venv_reads_the_name_of_its_fast_dds_version(tmp_path):
    """Fast DDS 3.x takes FASTDDS_DEFAULT_PROFILES_FILE, 2.x FASTRTPS_DEFAULT_PROFILES_FILE."""
    report, _ = run_probe(sys.executable, SETTINGS['neither'], tmp_path)
    own_name = NEW_NAME if fast_dds_major(report) >= 3 else OLD_NAME
    report, stderr = run_probe(sys.executable, (own_name,), tmp_path)
    assert_large(report, stderr)


@pytest.fixture(scope='module')
def jazzy_python() -> str:
    """Return the python of a ROS 2 Jazzy venv (ENET_ROS_JAZZY_PYTHON or .venv-jazzy); skip."""
    python = os.environ.get(JAZZY_PYTHON_VARIABLE) or str(JAZZY_DEFAULT_PYTHON)
    if not Path(python).is_file():
        pytest.skip(f'no ROS 2 Jazzy venv at {python} (make venv-jazzy, or set '
                    f'{JAZZY_PYTHON_VARIABLE} to the python of one with ros-jazzy-rclpy, '
                    'ros-jazzy-sensor-msgs and ros-jazzy-rmw-fastrtps-cpp)')
    return python


@pytest.mark.parametrize('setting, large', [
    ('FASTRTPS_ only', True),
    ('both', True),
    ('FASTDDS_ only', False),  # Fast DDS 2.14 ignores the new name: why the package sets both
])
def test_jazzy_reads_only_the_fastrtps_name(jazzy_python, tmp_path, setting: str,
                                            large: bool):
    """Jazzy's Fast DDS 2.14 takes the profile from FASTRTPS_DEFAULT_PROFILES_FILE only."""
    report, stderr = run_probe(jazzy_python, SETTINGS[setting], tmp_path)
    assert fast_dds_major(report) == 2, f'{jazzy_python} does not run Fast DDS 2.x: {report}'
    if large:
        assert_large(report, stderr)
    else:
        assert_default(report, stderr)
