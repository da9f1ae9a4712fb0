"""
Launch enet_ros' segmentation node, optionally with RViz showing its outputs.

ros2 launch enet_ros segment.launch.py image:=/camera/image_raw
ros2 launch enet_ros segment.launch.py image:=/camera/image_raw rviz:=true device:=cuda
ros2 launch enet_ros segment.launch.py image:=/camera/image_raw respawn:=true
ros2 launch enet_ros segment.launch.py image:=/camera/image_raw lifecycle:=true
ros2 launch enet_ros segment.launch.py cameras:="[front, left]" \
    image_topics:="[/front_cam/image_raw, /left_cam/image_raw]"

With lifecycle:=true the managed node (segmentation_lifecycle_node) starts
unconfigured and does nothing until it is configured and activated, by a
lifecycle manager (nav2_lifecycle_manager with node_names [segmentation_node]; the node
keeps the bond the manager waits for, so its default bond_timeout works)
or by hand: ros2 lifecycle set /segmentation_node configure, then activate.
"""

import atexit
import os
import re
import signal
from typing import List, Tuple

from ament_index_python.packages import get_package_prefix, get_package_share_directory
from ament_index_python.packages import PackageNotFoundError
from enet_ros.ros_io.dds import NEW_NAME, OLD_NAME, profile_variables
from launch import LaunchContext, LaunchDescription
from launch.actions import (DeclareLaunchArgument, LogInfo, OpaqueFunction,
                            RegisterEventHandler, SetEnvironmentVariable, Shutdown)
from launch.conditions import IfCondition
from launch.event_handlers import OnProcessExit
from launch.events.process import ProcessExited
from launch.substitution import Substitution
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch.utilities import normalize_to_list_of_substitutions, perform_substitutions
from launch_ros.actions import LifecycleNode, Node
import yaml

#: The node's exit code for bad configuration: restarting it cannot help.
EXIT_CONFIG_ERROR = 2


class _RealPath(Substitution):
    """
    A path with its symbolic links resolved.

    Fast DDS 3 logs XMLPARSER errors when FASTDDS_ and FASTRTPS_DEFAULT_PROFILES_FILE
    name one file through a symbolic link (a ``colcon build --symlink-install`` share
    directory): it resolves one of the two names and then sees the file twice.
    """

    def __init__(self, path):
        super().__init__()
        self._path = normalize_to_list_of_substitutions(path)

    def perform(self, context: LaunchContext) -> str:
        """Return the resolved path."""
        return os.path.realpath(perform_substitutions(context, self._path))


def _is_true(context: LaunchContext, name: str) -> bool:
    return context.launch_configurations.get(name, 'false').strip().lower() in ('true', '1')


def _rviz(context: LaunchContext, rviz_config: str) -> List:
    """Start rviz2 if it is installed; otherwise say so and leave the node running."""
    try:
        get_package_prefix('rviz2')
    except PackageNotFoundError:
        return [LogInfo(msg='rviz:=true, but rviz2 is not installed in this environment '
                            '(package rviz2 not found): not starting it; the segmentation '
                            'node runs without it (install ros-$ROS_DISTRO-rviz2)')]
    return [Node(package='rviz2', executable='rviz2', name='rviz2',
                 arguments=['-d', rviz_config], output='screen',
                 remappings=_rviz_remappings(context))]


#: The node's topics that config/segment.rviz displays, as it names them.
RVIZ_TOPICS = ('overlay', 'colored', 'drivable', 'drivable_grid', 'drivable_grid_updates')


def _rviz_remappings(context: LaunchContext) -> List[Tuple[str, str]]:
    """
    Point segment.rviz's displays at the node's topics under namespace:= and cameras:=.

    The file names /segmentation_node/<output>; with a namespace or named
    cameras (the first one is shown) the topics are elsewhere.
    """
    namespace = context.launch_configurations.get('namespace', '').strip('/')
    cameras = _cameras(context)
    prefix = '/'.join(p for p in (namespace, 'segmentation_node', cameras[0] if cameras else '')
                      if p)
    if prefix == 'segmentation_node':
        return []
    return [(f'/segmentation_node/{topic}', f'/{prefix}/{topic}') for topic in RVIZ_TOPICS]


def _check_params_file(context: LaunchContext) -> List:
    """Refuse a params_file that does not exist (launch_ros would only warn and go on)."""
    path = context.launch_configurations['params_file']
    if not os.path.isfile(path):
        raise RuntimeError(f'params_file:={path}: no such file')
    return []


def _on_node_exit(event: ProcessExited, context: LaunchContext) -> List:
    """
    End the launch when the node ends, unless respawn:=true may restart it.

    A failed node makes ``ros2 launch`` exit 1 (launch reports an exception
    in a handler that way); a node stopped by a signal ends it with 0.
    """
    if event.returncode == EXIT_CONFIG_ERROR:
        raise RuntimeError('segmentation_node could not start: configuration error (its '
                           'message is above); not restarting it')
    if _is_true(context, 'respawn'):
        return []
    if event.returncode != 0:
        raise RuntimeError(f'segmentation_node exited with code {event.returncode}')
    if context.is_shutdown:
        # Launch is ending already (Ctrl-C): a second Shutdown would shut launch_ros' ROS
        # adapter (lifecycle:=true starts it) twice, and ros2 launch would exit 1.
        return []
    return [Shutdown(reason='segmentation_node exited')]


def _yaml_list(context: LaunchContext, name: str) -> List[str]:
    """Parse a list argument such as '[front, left]' (empty: [])."""
    text = context.launch_configurations.get(name, '').strip()
    value = yaml.safe_load(text) if text else []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RuntimeError(f"{name}:={text}: expected a list of names such as '[front, left]'")
    return value


def _node_name_pattern(key: str) -> re.Pattern:
    """Return a parameters file's node key (``/**``, ``/car/*``, ``name``) as a regex."""
    pattern = ''
    for token in key.strip('/').split('/'):
        if token == '**':  # any number of names
            pattern += '(?:/[^/]+)*'
        else:  # '*' within a name: any characters but '/'
            pattern += '/' + '[^/]*'.join(re.escape(part) for part in token.split('*'))
    return re.compile(pattern)


def _file_cameras(context: LaunchContext) -> List[str]:
    """
    Return the ``cameras`` parameter that params_file gives this node ([] for none).

    Entries are matched to the node's fully qualified name as rcl matches them
    (``/**``, wildcards, the plain name); a later matching entry wins.
    """
    path = context.launch_configurations.get('params_file', '')
    if not path:
        return []
    namespace = context.launch_configurations.get('namespace', '').strip('/')
    full_name = '/' + '/'.join(p for p in (namespace, 'segmentation_node') if p)
    try:
        with open(path, encoding='utf-8') as stream:
            document = yaml.safe_load(stream)
    except (OSError, yaml.YAMLError) as error:
        raise RuntimeError(f'params_file:={path}: {error}') from None
    cameras = []
    for key, parameters in _parameter_entries(document):
        if 'cameras' in parameters and _node_name_pattern(key).fullmatch(full_name):
            cameras = parameters['cameras']
    if not isinstance(cameras, list) or not all(isinstance(c, str) and c for c in cameras):
        raise RuntimeError(f'params_file:={path}: cameras: {cameras!r} is not a list of names')
    return cameras


def _parameter_entries(document: object, key: str = ''):
    """Yield (node key, ros__parameters) of a parameters file, nested namespaces joined."""
    if not isinstance(document, dict):
        return
    for name, entry in document.items():
        if name == 'ros__parameters':
            if isinstance(entry, dict):
                yield key, entry
        else:
            yield from _parameter_entries(entry, f"{key}/{str(name).strip('/')}")


def _cameras(context: LaunchContext) -> List[str]:
    """Return the camera names: cameras:= where given, else the params_file's ([]: one)."""
    return _yaml_list(context, 'cameras') or _file_cameras(context)


def _camera_info_beside(image_topic: str) -> str:
    """Return the CameraInfo topic beside an image topic (image_transport's convention)."""
    return f"{image_topic.rsplit('/', 1)[0]}/camera_info" if '/' in image_topic.strip('/') \
        else 'camera_info'


def _remappings(context: LaunchContext, cameras: List[str]) -> List[Tuple[str, str]]:
    """
    Topic remappings: image:= (and camera_info:=) for one camera, image_topics:= for several.

    A camera's CameraInfo (for ~/drivable_grid) is the topic beside its image
    (``/cam/image_raw`` -> ``/cam/camera_info``) unless camera_info:= names it.
    """
    if not cameras:
        if _yaml_list(context, 'image_topics'):
            raise RuntimeError('image_topics:= needs camera names: give cameras:= (or cameras '
                               'in params_file), one per topic, in the same order')
        image = context.launch_configurations['image']
        info = context.launch_configurations.get('camera_info') or _camera_info_beside(image)
        return [('image', image), ('image/compressed', f'{image}/compressed'),
                ('camera_info', info)]
    topics = _yaml_list(context, 'image_topics')
    if not topics:
        return []
    if len(topics) != len(cameras):
        raise RuntimeError(f'image_topics:= names {len(topics)} topics for {len(cameras)} '
                           'cameras; give one per camera, in the same order')
    remappings = []
    for camera, topic in zip(cameras, topics):
        remappings += [(f'{camera}/image', topic),
                       (f'{camera}/image/compressed', f'{topic}/compressed'),
                       (f'{camera}/camera_info', _camera_info_beside(topic))]
    return remappings


def _segmentation_node(context: LaunchContext) -> List:
    """Return the node (parameters file, argument overrides, remappings) and its exit handler."""
    # Only the arguments given: an empty one leaves the parameters file's value alone (launch_ros
    # passes this dict as node-specific overrides, which win over the file's entries).
    overrides = {name: context.launch_configurations[name] for name in ('model_path', 'device')
                 if context.launch_configurations.get(name)}
    cameras_argument = _yaml_list(context, 'cameras')
    if cameras_argument:
        overrides['cameras'] = cameras_argument
    # lifecycle:=true: the managed node, as a launch_ros LifecycleNode (so launch can emit
    # ChangeState events to it); it waits unconfigured for configure and activate.
    managed = _is_true(context, 'lifecycle')
    node = (LifecycleNode if managed else Node)(
        package='enet_ros',
        executable='segmentation_lifecycle_node' if managed else 'segmentation_node',
        name='segmentation_node',
        namespace=LaunchConfiguration('namespace'),
        parameters=[LaunchConfiguration('params_file'), overrides],
        remappings=_remappings(context, _cameras(context)),
        respawn=LaunchConfiguration('respawn'),
        respawn_delay=2.0,
        output='screen',
        emulate_tty=True,
    )
    return [node, RegisterEventHandler(OnProcessExit(target_action=node, on_exit=_on_node_exit))]


def _ignore_ctrl_c_at_exit() -> None:
    """
    Ignore SIGINT while ``ros2 launch`` runs its exit handlers.

    A terminal's Ctrl-C pressed twice reaches the whole process group; when the
    node stops between the presses, the second one finds ``ros2 launch``
    finishing, with Python's default handler back, and interrupts the logging
    module's exit handler: a "KeyboardInterrupt" traceback after a clean stop.
    At that point there is nothing left for a Ctrl-C to stop.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def generate_launch_description() -> LaunchDescription:
    """Describe the node with the parameters file, argument overrides and remappings."""
    # Exit handlers run last registered first: this one before logging's.
    atexit.register(_ignore_ctrl_c_at_exit)
    share = get_package_share_directory('enet_ros')
    dds_profile = LaunchConfiguration('dds_profile')
    return LaunchDescription([
        DeclareLaunchArgument('image', default_value='/camera/image_raw',
                              description='camera topic (sensor_msgs/Image); with '
                                          'input_transport compressed, <image>/compressed'),
        DeclareLaunchArgument('cameras', default_value='',
                              description="camera names, e.g. '[front, left]': one node, one "
                                          "model; camera <name> listens on '<name>/image' "
                                          '(in the namespace) unless image_topics says '
                                          'otherwise'),
        DeclareLaunchArgument('image_topics', default_value='',
                              description='with cameras (the argument, or cameras in '
                                          'params_file): their topics in the same order, e.g. '
                                          "'[/cam_front/image_raw, /cam_left/image_raw]'"),
        DeclareLaunchArgument('camera_info', default_value='',
                              description="the camera's sensor_msgs/CameraInfo topic (for "
                                          '~/drivable_grid); empty = beside image:= '
                                          '(/camera/image_raw -> /camera/camera_info)'),
        DeclareLaunchArgument('lifecycle', default_value='false',
                              description='true: the managed node segmentation_lifecycle_node, '
                                          'which waits unconfigured for configure and activate '
                                          '(a lifecycle manager, or ros2 lifecycle set)'),
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(share, 'config', 'segment.yaml'),
                              description='node parameters file'),
        DeclareLaunchArgument('model_path', default_value='',
                              description="ENet model file; empty = params_file's model_path "
                                          '(in the packaged file: empty, the bundled CamVid '
                                          'model)'),
        DeclareLaunchArgument('device', default_value='',
                              description="'auto', 'cpu', 'cuda' or 'cuda:N'; empty = "
                                          "params_file's device (in the packaged file: auto)"),
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of the node and its outputs'),
        DeclareLaunchArgument('rviz', default_value='false',
                              description='start rviz2 with config/segment.rviz (skipped with '
                                          'a message where rviz2 is not installed)'),
        DeclareLaunchArgument('respawn', default_value='false',
                              description='restart the node 2 s after it exits (e.g. with '
                                          'exit_on_failure: true after a dead GPU); never '
                                          'after a configuration error'),
        # Shared-memory segments big enough for 1080p rgb8 images, so large outputs
        # travel in one piece (README, "Large images and DDS"). A profile already chosen
        # in the environment wins.
        DeclareLaunchArgument(
            'dds_profile',
            default_value=EnvironmentVariable(
                NEW_NAME,
                default_value=EnvironmentVariable(
                    OLD_NAME,
                    default_value=os.path.join(share, 'config', 'fastdds_large_data.xml'))),
            description='Fast DDS XML profile for the node (default: the one already set '
                        'in the environment, else config/fastdds_large_data.xml)'),
        OpaqueFunction(function=_check_params_file),
        # The name this release's Fast DDS reads (both where $ROS_DISTRO is not set).
        *[SetEnvironmentVariable(name, _RealPath(dds_profile)) for name in profile_variables()],
        OpaqueFunction(function=_segmentation_node),
        OpaqueFunction(function=_rviz, args=[os.path.join(share, 'config', 'segment.rviz')],
                       condition=IfCondition(LaunchConfiguration('rviz'))),
    ])
