"""
Static checks of launch/segment.launch.py and the files it names.

``launch`` and ``launch_ros`` cannot be installed here (no ROS apt repository),
so the launch file is parsed, and also executed against small stand-ins for
the launch classes that record what the file builds.
"""

import ast
import configparser
import importlib.util
import os
from pathlib import Path
import sys
import types

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILE = ROOT / 'launch' / 'segment.launch.py'
DOCUMENTED_ARGUMENTS = {'image', 'params_file', 'model_path', 'device', 'namespace', 'rviz',
                        'dds_profile'}


class _Recorded:
    """Stand-in for a launch class: keeps its positional and keyword arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _stub_launch_modules(monkeypatch, share: Path):
    modules = {}
    for name in ('launch', 'launch.actions', 'launch.conditions', 'launch.substitutions',
                 'launch_ros', 'launch_ros.actions', 'ament_index_python',
                 'ament_index_python.packages'):
        modules[name] = types.ModuleType(name)
        monkeypatch.setitem(sys.modules, name, modules[name])
    kinds = {'launch': ['LaunchDescription'],
             'launch.actions': ['DeclareLaunchArgument', 'SetEnvironmentVariable'],
             'launch.conditions': ['IfCondition'],
             'launch.substitutions': ['EnvironmentVariable', 'LaunchConfiguration'],
             'launch_ros.actions': ['Node']}
    for module, names in kinds.items():
        for name in names:
            setattr(modules[module], name, type(name, (_Recorded,), {}))
    modules['ament_index_python.packages'].get_package_share_directory = lambda _: str(share)


@pytest.fixture
def description(monkeypatch):
    """Build the launch description against the stand-ins."""
    _stub_launch_modules(monkeypatch, ROOT)
    spec = importlib.util.spec_from_file_location('segment_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


def _by_type(description, name):
    return [a for a in description.args[0] if type(a).__name__ == name]


def test_launch_file_parses():
    """The file is valid Python with a typed generate_launch_description()."""
    tree = ast.parse(LAUNCH_FILE.read_text())
    functions = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    assert 'generate_launch_description' in functions
    assert functions['generate_launch_description'].returns is not None


def test_declares_the_documented_arguments(description):
    """Every documented argument is declared once, with a description and a default."""
    declared = _by_type(description, 'DeclareLaunchArgument')
    names = [a.args[0] for a in declared]
    assert sorted(names) == sorted(DOCUMENTED_ARGUMENTS)
    for argument in declared:
        assert argument.kwargs.get('description'), argument.args[0]
        assert 'default_value' in argument.kwargs, argument.args[0]
    readme = (ROOT / 'README.md').read_text()
    for name in DOCUMENTED_ARGUMENTS:
        assert f'{name}:=' in readme, f'launch argument {name} is not documented in README.md'


def test_node_names_an_installed_executable_and_existing_files(description):
    """The node is enet_ros/segmentation_node, a console script; config files exist."""
    nodes = _by_type(description, 'Node')
    segmentation = [n for n in nodes if n.kwargs['package'] == 'enet_ros']
    assert len(segmentation) == 1
    node = segmentation[0].kwargs
    assert node['executable'] == 'segmentation_node'
    setup_source = (ROOT / 'setup.py').read_text()
    assert "'segmentation_node = enet_ros.ros.segmentation_node:main'" in setup_source
    assert (ROOT / 'resource' / 'enet_ros').exists()
    config = configparser.ConfigParser()
    config.read(ROOT / 'setup.cfg')
    assert config['install']['install_scripts'] == '$base/lib/enet_ros'
    params_default = next(a for a in _by_type(description, 'DeclareLaunchArgument')
                          if a.args[0] == 'params_file').kwargs['default_value']
    assert Path(params_default) == ROOT / 'config' / 'segment.yaml'
    assert Path(params_default).is_file()
    remapped = dict(node['remappings'])
    assert 'image' in remapped and 'image/compressed' in remapped
    rviz = [n for n in nodes if n.kwargs['package'] == 'rviz2'][0]
    rviz_config = Path(rviz.kwargs['arguments'][1])
    assert rviz_config.is_file()
    topics = {d['Topic']['Value'] for d in
              yaml.safe_load(rviz_config.read_text())['Visualization Manager']['Displays']}
    assert topics == {'/segmentation_node/overlay', '/segmentation_node/colored',
                      '/segmentation_node/drivable'}


def test_dds_profile_defaults_to_the_environment_then_the_package_profile(description):
    """The profile variable gets dds_profile: the user's profile if set, else ours."""
    argument = next(a for a in _by_type(description, 'DeclareLaunchArgument')
                    if a.args[0] == 'dds_profile')
    outer = argument.kwargs['default_value']
    assert outer.args == ('FASTDDS_DEFAULT_PROFILES_FILE',)
    inner = outer.kwargs['default_value']
    assert inner.args == ('FASTRTPS_DEFAULT_PROFILES_FILE',)
    profile = Path(inner.kwargs['default_value'])
    assert profile == ROOT / 'config' / 'fastdds_large_data.xml' and profile.is_file()
    assert '<segment_size>33554432</segment_size>' in profile.read_text()
    setters = _by_type(description, 'SetEnvironmentVariable')
    set_variables = {a.args[0]: a.args[1] for a in setters}
    expected = ('FASTRTPS_DEFAULT_PROFILES_FILE' if os.environ.get('ROS_DISTRO') == 'humble'
                else 'FASTDDS_DEFAULT_PROFILES_FILE')
    assert list(set_variables) == [expected]
    assert set_variables[expected].args == ('dds_profile',)


def test_parameters_file_names_only_declared_parameters():
    """config/segment.yaml sets only parameters the node declares, with their types."""
    from enet_ros.ros.node_config import PARAMETERS

    parameters = yaml.safe_load((ROOT / 'config' / 'segment.yaml').read_text())[
        '/**']['ros__parameters']
    unknown = set(parameters) - set(PARAMETERS) - {'drivable_classes'}
    assert not unknown
    for name, value in parameters.items():
        default, _ = PARAMETERS[name]
        assert type(value) is type(default), (name, value, default)


def test_package_xml_declares_the_runtime_dependencies():
    """package.xml (format 3) lists the ROS and system dependencies."""
    import xml.etree.ElementTree as ElementTree

    root = ElementTree.parse(ROOT / 'package.xml').getroot()
    assert root.get('format') == '3'
    assert root.findtext('name') == 'enet_ros'
    exec_depends = {e.text for e in root.findall('exec_depend')}
    assert {'rclpy', 'sensor_msgs', 'std_msgs', 'diagnostic_msgs', 'cv_bridge',
            'python3-numpy', 'python3-opencv'} <= exec_depends
    assert root.find('export/build_type').text == 'ament_python'
