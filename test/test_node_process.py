"""How the node's process is started: parameter formatting and the DDS environment."""

from pathlib import Path

from enet_ros.ros.node_process import (config_file, node_command, PROFILE_VARIABLES, ros_arg,
                                       with_large_image_transport)

ROOT = Path(__file__).resolve().parents[1]


def test_ros_arg_formats_values_for_the_command_line():
    assert ros_arg(True) == 'true' and ros_arg(False) == 'false'
    assert ros_arg(['Road', 'Pavement']) == '[Road,Pavement]'
    assert ros_arg('') == "''"
    assert ros_arg(0.5) == '0.5'


def test_node_command_uses_the_packaged_parameters_file():
    command = node_command({'device': 'cpu', 'model_path': ''})
    assert command[command.index('--params-file') + 1] == str(ROOT / 'config' / 'segment.yaml')
    assert 'device:=cpu' in command and "model_path:=''" in command


def test_large_image_profile_is_added_unless_one_is_chosen():
    profile = config_file('fastdds_large_data.xml')
    assert profile == ROOT / 'config' / 'fastdds_large_data.xml'
    env = with_large_image_transport({'PATH': '/bin'})
    assert env == {'PATH': '/bin', 'FASTDDS_DEFAULT_PROFILES_FILE': str(profile)}
    for name in PROFILE_VARIABLES:  # the user's profile, under either name, wins
        assert with_large_image_transport({name: '/mine.xml'}) == {name: '/mine.xml'}
    original = {'PATH': '/bin'}
    with_large_image_transport(original)
    assert original == {'PATH': '/bin'}  # the caller's mapping is not changed
