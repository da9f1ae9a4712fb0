"""
launch/segment.launch.py built and evaluated with the real ``launch`` / ``launch_ros`` API.

The package is found through a real ament index: a temporary prefix whose
``share/enet_ros`` is this checkout. Running it with ``ros2 launch`` from a
colcon workspace is in test_ros2_tools.py. Skipped, with the reason, where
launch_ros is not installed (make venv installs it from ../shared/ros2-tools).
"""

import importlib.util
from pathlib import Path
import xml.etree.ElementTree as ElementTree

from enet_ros.ros_io.dds import NEW_NAME, OLD_NAME, profile_variables
import pytest
from ros2_cli import tools_missing
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILE = ROOT / 'launch' / 'segment.launch.py'
DOCUMENTED_ARGUMENTS = {'image', 'camera_info', 'cameras', 'image_topics', 'params_file',
                        'model_path', 'device', 'namespace', 'rviz', 'respawn', 'dds_profile',
                        'lifecycle'}


def _ament_prefix(root: Path, packages=('enet_ros',)) -> Path:
    """Make an install prefix whose ament index lists ``packages``; enet_ros is this checkout."""
    index = root / 'share' / 'ament_index' / 'resource_index' / 'packages'
    index.mkdir(parents=True)
    for name in packages:
        (index / name).write_text('')
    (root / 'share' / 'enet_ros').symlink_to(ROOT)
    return root


@pytest.fixture
def launch_module(tmp_path, monkeypatch):
    """Import the launch file with the real launch API and a real ament index."""
    missing = tools_missing()
    if missing:
        pytest.skip(missing)
    monkeypatch.setenv('AMENT_PREFIX_PATH', str(_ament_prefix(tmp_path / 'prefix')))
    for name in (NEW_NAME, OLD_NAME, 'ROS_DISTRO'):
        monkeypatch.delenv(name, raising=False)
    spec = importlib.util.spec_from_file_location('segment_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _entities(description, kind):
    return [e for e in description.entities if isinstance(e, kind)]


def _context(**arguments):
    from launch import LaunchContext

    context = LaunchContext()
    context.launch_configurations.update(arguments)
    return context


def _text(context, substitutions) -> str:
    from launch.utilities import perform_substitutions

    return perform_substitutions(context, substitutions)


def test_declares_the_documented_arguments(launch_module):
    """
    Every documented argument is declared once, with a description and a default.

    That docs/node.md lists every argument, and that the README and docs name no other,
    is test_docs.py's check.
    """
    from launch.actions import DeclareLaunchArgument

    declared = _entities(launch_module.generate_launch_description(), DeclareLaunchArgument)
    assert sorted(a.name for a in declared) == sorted(DOCUMENTED_ARGUMENTS)
    for argument in declared:
        assert argument.description, argument.name
        assert argument.default_value is not None, argument.name


def test_defaults_name_the_packaged_files(launch_module, monkeypatch):
    """params_file and dds_profile default to the package's files; a user's profile wins."""
    from launch.actions import DeclareLaunchArgument

    declared = {a.name: a for a in _entities(launch_module.generate_launch_description(),
                                             DeclareLaunchArgument)}
    context = _context()
    params = Path(_text(context, declared['params_file'].default_value))
    assert params.resolve() == ROOT / 'config' / 'segment.yaml'
    profile = Path(_text(context, declared['dds_profile'].default_value))
    assert profile.resolve() == ROOT / 'config' / 'fastdds_large_data.xml'
    assert '<segment_size>33554432</segment_size>' in profile.read_text()
    for name in (OLD_NAME, NEW_NAME):  # either name; with both, the one Fast DDS 3 reads
        monkeypatch.setenv(name, f'/mine/{name}.xml')
        assert _text(context, declared['dds_profile'].default_value) == f'/mine/{name}.xml'


@pytest.mark.parametrize('distro, expected', [
    ('', {OLD_NAME, NEW_NAME}), ('humble', {OLD_NAME}), ('jazzy', {OLD_NAME}),
    ('kilted', {NEW_NAME})])
def test_sets_the_profile_variable_this_release_reads(tmp_path, monkeypatch, distro,
                                                      expected):
    """Fast DDS 2.x (Humble, Jazzy) gets FASTRTPS_..., 3.x FASTDDS_..., unknown both."""
    missing = tools_missing()
    if missing:
        pytest.skip(missing)
    from launch.actions import SetEnvironmentVariable

    monkeypatch.setenv('AMENT_PREFIX_PATH', str(_ament_prefix(tmp_path / 'prefix')))
    monkeypatch.setenv('ROS_DISTRO', distro)
    spec = importlib.util.spec_from_file_location('segment_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    setters = _entities(module.generate_launch_description(), SetEnvironmentVariable)
    context = _context(dds_profile='/the/profile.xml')
    assert {_text(context, s.name) for s in setters} == expected == set(profile_variables())
    assert {_text(context, s.value) for s in setters} == {'/the/profile.xml'}
    # Through a symbolic link (a symlink-install share directory), the resolved file.
    link = tmp_path / 'linked.xml'
    link.symlink_to(ROOT / 'config' / 'fastdds_large_data.xml')
    context = _context(dds_profile=str(link))
    assert {_text(context, s.value) for s in setters} == {
        str((ROOT / 'config' / 'fastdds_large_data.xml').resolve())}


def _node(launch_module, **arguments):
    """Return the launch_ros Node the launch file makes for ``arguments``, and its handler."""
    from launch.actions import RegisterEventHandler
    from launch_ros.actions import Node

    defaults = {'image': '/camera/image_raw', 'cameras': '', 'image_topics': '',
                'camera_info': '', 'lifecycle': 'false'}
    node, handler = launch_module._segmentation_node(_context(**{**defaults, **arguments}))
    assert isinstance(node, Node) and isinstance(handler, RegisterEventHandler)
    return node


@pytest.mark.parametrize('lifecycle, executable', [
    ('false', 'segmentation_node'), ('true', 'segmentation_lifecycle_node')])
def test_node_action_runs_the_installed_executable(launch_module, lifecycle, executable):
    """lifecycle:=false starts segmentation_node, true the managed one as a LifecycleNode."""
    from launch_ros.actions import LifecycleNode

    node = _node(launch_module, lifecycle=lifecycle)
    assert (node.node_package, node.node_executable) == ('enet_ros', executable)
    assert isinstance(node, LifecycleNode) == (lifecycle == 'true')


def test_camera_list_and_topics_become_parameters_and_remappings(launch_module):
    """cameras:= sets the parameter; image_topics:= remaps each camera's input in order."""
    assert launch_module._remappings(_context(image='/cam/image'), []) == [
        ('image', '/cam/image'), ('image/compressed', '/cam/image/compressed'),
        ('camera_info', '/cam/camera_info')]
    assert launch_module._remappings(_context(image='/a/b', camera_info='/info'), [])[-1] == (
        'camera_info', '/info')
    context = _context(image_topics='[/a/image_raw, /b/image_raw]')
    assert launch_module._remappings(context, ['front', 'left']) == [
        ('front/image', '/a/image_raw'), ('front/image/compressed', '/a/image_raw/compressed'),
        ('front/camera_info', '/a/camera_info'),
        ('left/image', '/b/image_raw'), ('left/image/compressed', '/b/image_raw/compressed'),
        ('left/camera_info', '/b/camera_info')]
    assert launch_module._remappings(_context(image_topics=''), ['front']) == []
    with pytest.raises(RuntimeError, match='2 topics for 1 cameras'):
        launch_module._remappings(context, ['front'])
    assert launch_module._yaml_list(_context(cameras='[front, left]'), 'cameras') == [
        'front', 'left']
    with pytest.raises(RuntimeError, match='expected a list'):
        launch_module._yaml_list(_context(cameras='front'), 'cameras')
    _node(launch_module, cameras='[front, left]')


def test_cameras_of_the_params_file_take_image_topics(launch_module, tmp_path):
    """Cameras set in params_file (not at launch): image_topics:= and RViz follow them."""
    params = tmp_path / 'vehicle.yaml'
    params.write_text('/**:\n  ros__parameters:\n    cameras: [front, left]\n')
    context = _context(params_file=str(params), cameras='', namespace='',
                       image_topics='[/a/image_raw, /b/image_raw]')
    assert launch_module._cameras(context) == ['front', 'left']
    node = _node(launch_module, params_file=str(params),
                 image_topics='[/a/image_raw, /b/image_raw]')
    remappings = {_text(context, k): _text(context, v) for k, v in node._Node__remappings}
    assert remappings['front/image'] == '/a/image_raw'
    assert remappings['left/camera_info'] == '/b/camera_info'
    assert 'image' not in remappings
    assert dict(launch_module._rviz_remappings(context))[
        '/segmentation_node/overlay'] == '/segmentation_node/front/overlay'
    # cameras:= wins over the file.
    assert launch_module._cameras(_context(params_file=str(params), cameras='[rear]')) == [
        'rear']
    # image_topics:= with no camera names anywhere is an error, not ignored.
    with pytest.raises(RuntimeError, match='image_topics:= needs camera names'):
        _node(launch_module, params_file=str(ROOT / 'config' / 'segment.yaml'),
              image_topics='[/a/image_raw]')
    params.write_text('/**:\n  ros__parameters:\n    cameras: front\n')
    with pytest.raises(RuntimeError, match='not a list of names'):
        launch_module._cameras(context)


@pytest.mark.parametrize('document, namespace, expected', [
    ({'/**': ['a']}, '', ['a']),
    ({'segmentation_node': ['a']}, '', ['a']),
    ({'/segmentation_node': ['a']}, 'car', []),
    ({'/car/segmentation_node': ['a']}, 'car', ['a']),
    ({'/**/segmentation_node': ['a']}, 'car/left', ['a']),
    ({'/**/segmentation_node': ['a']}, '', ['a']),
    ({'/car/*': ['a']}, 'car', ['a']),
    ({'/car/*': ['a']}, '', []),
    ({'/segmentation_*': ['a']}, '', ['a']),
    ({'other_node': ['a']}, '', []),
    ({'/**': ['a'], 'segmentation_node': ['b']}, '', ['b']),
    ({'car': {'segmentation_node': ['a']}}, 'car', ['a']),
])
def test_params_file_entries_match_the_node_as_rcl_does(
        launch_module, tmp_path, document, namespace, expected):
    """The node key of a params_file entry: /**, wildcards, plain and nested names."""
    def with_parameters(entry):
        if isinstance(entry, dict):
            return {k: with_parameters(v) for k, v in entry.items()}
        return {'ros__parameters': {'cameras': entry}}

    params = tmp_path / 'params.yaml'
    params.write_text(yaml.safe_dump(with_parameters(document)))
    context = _context(params_file=str(params), namespace=namespace)
    assert launch_module._file_cameras(context) == expected


def test_rviz_only_where_rviz2_is_installed(launch_module, tmp_path, monkeypatch):
    """rviz:=true without rviz2: a message, no Node; with rviz2: rviz2 on segment.rviz."""
    from launch.actions import LogInfo
    from launch_ros.actions import Node

    rviz_config = str(ROOT / 'config' / 'segment.rviz')
    [message] = launch_module._rviz(_context(), rviz_config)
    assert isinstance(message, LogInfo)
    assert 'rviz2 is not installed' in _text(_context(), message.msg)
    prefix = _ament_prefix(tmp_path / 'with_rviz', packages=('enet_ros', 'rviz2'))
    monkeypatch.setenv('AMENT_PREFIX_PATH', str(prefix))
    [rviz] = launch_module._rviz(_context(), rviz_config)
    assert isinstance(rviz, Node) and rviz.node_package == 'rviz2'
    topics = {d['Topic']['Value'] for d in
              yaml.safe_load(Path(rviz_config).read_text())['Visualization Manager']['Displays']}
    assert topics == {'/segmentation_node/overlay', '/segmentation_node/colored',
                      '/segmentation_node/drivable', '/segmentation_node/drivable_grid'}
    assert {f'/segmentation_node/{t}' for t in launch_module.RVIZ_TOPICS} >= topics
    remap = launch_module._rviz_remappings
    assert remap(_context(namespace='', cameras='')) == []
    assert dict(remap(_context(namespace='/car', cameras='')))[
        '/segmentation_node/overlay'] == '/car/segmentation_node/overlay'
    assert dict(remap(_context(namespace='car', cameras='[front, left]')))[
        '/segmentation_node/drivable_grid'] == '/car/segmentation_node/front/drivable_grid'


def test_node_exit_ends_the_launch_unless_respawn(launch_module):
    """Config error: launch fails (never respawned); other exits: fail or respawn; 0: end."""
    from launch.actions import Shutdown
    from launch.events.process import ProcessExited

    def exited(code):
        return ProcessExited(returncode=code, action=None, name='segmentation_node-1', cmd=[],
                             cwd=None, env=None, pid=1)

    for respawn in ('false', 'true'):
        with pytest.raises(RuntimeError, match='configuration error'):
            launch_module._on_node_exit(exited(2), _context(respawn=respawn))
    with pytest.raises(RuntimeError, match='exited with code 3'):
        launch_module._on_node_exit(exited(3), _context(respawn='false'))
    assert launch_module._on_node_exit(exited(3), _context(respawn='true')) == []
    [shutdown] = launch_module._on_node_exit(exited(0), _context(respawn='false'))
    assert isinstance(shutdown, Shutdown)
    ending = _context(respawn='false')
    ending._set_is_shutdown(True)  # Ctrl-C: launch is shutting down already
    assert launch_module._on_node_exit(exited(0), ending) == []


def test_missing_params_file_is_refused(launch_module, tmp_path):
    """A params_file that does not exist stops the launch (launch_ros would only warn)."""
    with pytest.raises(RuntimeError, match='no such file'):
        launch_module._check_params_file(_context(params_file=str(tmp_path / 'none.yaml')))
    assert launch_module._check_params_file(
        _context(params_file=str(ROOT / 'config' / 'segment.yaml'))) == []


def test_parameters_file_names_only_declared_parameters():
    """config/segment.yaml sets only parameters the node declares, with their types."""
    from enet_ros.node.parameter_table import PARAMETERS

    parameters = yaml.safe_load((ROOT / 'config' / 'segment.yaml').read_text())[
        '/**']['ros__parameters']
    unknown = set(parameters) - set(PARAMETERS) - {'drivable_classes'}
    assert not unknown
    for name, value in parameters.items():
        default, _ = PARAMETERS[name]
        assert type(value) is type(default), (name, value, default)


def test_package_xml_is_format_3_ament_python():
    """package.xml (format 3) names the package and its build type."""
    root = ElementTree.parse(ROOT / 'package.xml').getroot()
    assert root.get('format') == '3'
    assert root.findtext('name') == 'enet_ros'
    assert root.find('export/build_type').text == 'ament_python'
