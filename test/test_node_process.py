"""How the node's process is started: parameters, the DDS environment, the parent watch."""

import os
from pathlib import Path
import subprocess
import sys

from enet_ros.evaluation.node_subprocess import node_command, NODE_MODULE, ros_arg
from enet_ros.node.signal_handling import PARENT_ENV, stop_with_parent
from enet_ros.ros_io.dds import (config_file, NEW_NAME, OLD_NAME, PROFILE_VARIABLES,
                                 profile_variables, with_large_image_transport)
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ros_arg_formats_values_for_the_command_line():
    assert ros_arg(True) == 'true' and ros_arg(False) == 'false'
    assert ros_arg(['Road', 'Pavement']) == '[Road,Pavement]'
    assert ros_arg('') == "''"
    assert ros_arg(0.5) == '0.5'


def _is_packaged(path, name: str) -> bool:
    """Whether ``path`` is config/``name``: this checkout's, or an installed share's copy."""
    path = Path(path)
    return (path.parent.name == 'config' and path.name == name
            and path.read_bytes() == (ROOT / 'config' / name).read_bytes())


def test_node_command_uses_the_packaged_parameters_file():
    command = node_command({'device': 'cpu', 'model_path': ''})
    assert _is_packaged(command[command.index('--params-file') + 1], 'segment.yaml')
    assert 'device:=cpu' in command and "model_path:=''" in command


def test_profile_variable_follows_the_fast_dds_of_each_release():
    """Humble and Jazzy (Fast DDS 2.x) read the old name, Kilted on the new; unknown: both."""
    for distro in ('humble', 'iron', 'Jazzy'):
        assert profile_variables(distro) == (OLD_NAME,)
    for distro in ('kilted', 'lyrical', 'rolling'):
        assert profile_variables(distro) == (NEW_NAME,)
    assert set(profile_variables('')) == {OLD_NAME, NEW_NAME}


def test_large_image_profile_is_added_unless_one_is_chosen():
    profile = config_file('fastdds_large_data.xml')
    assert _is_packaged(profile, 'fastdds_large_data.xml')  # under colcon test: the share's
    env = with_large_image_transport({'PATH': '/bin'})
    assert env == {'PATH': '/bin', NEW_NAME: str(profile), OLD_NAME: str(profile)}
    assert with_large_image_transport({'ROS_DISTRO': 'jazzy'}) == {
        'ROS_DISTRO': 'jazzy', OLD_NAME: str(profile)}
    assert with_large_image_transport({'ROS_DISTRO': 'kilted'}) == {
        'ROS_DISTRO': 'kilted', NEW_NAME: str(profile)}
    for name in PROFILE_VARIABLES:  # the user's profile, under either name, wins
        assert with_large_image_transport({name: '/mine.xml'}) == {name: '/mine.xml'}
    original = {'PATH': '/bin'}
    with_large_image_transport(original)
    assert original == {'PATH': '/bin'}  # the caller's mapping is not changed


def test_stop_with_parent_reads_and_removes_its_variable():
    """No variable: nothing; a value that is not a process id: removed, nothing set."""
    assert stop_with_parent({}) is None
    environ = {PARENT_ENV: 'not a pid'}
    assert stop_with_parent(environ) is None
    assert environ == {}


@pytest.mark.integration
def test_node_whose_parent_is_already_gone_stops_at_once_and_cleanly():
    """
    The parent ended before the node could ask for its SIGTERM: no signal would come.

    The node's entry point stops by itself at once, exit 0, before torch loads.
    """
    env = dict(os.environ, **{PARENT_ENV: '999999999'})  # above any pid_max: never the parent
    result = subprocess.run([sys.executable, '-m', NODE_MODULE], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert 'Traceback' not in result.stderr + result.stdout, result.stderr
    assert 'listening on' not in result.stdout + result.stderr
