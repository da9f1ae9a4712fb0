"""
Launch enet_ros' segmentation node, optionally with RViz showing its outputs.

ros2 launch enet_ros segment.launch.py image:=/camera/image_raw
ros2 launch enet_ros segment.launch.py image:=/camera/image_raw rviz:=true device:=cuda
ros2 launch enet_ros segment.launch.py image:=/camera/image_raw respawn:=true
ros2 launch enet_ros segment.launch.py image:=/camera/image_raw lifecycle:=true

With lifecycle:=true the managed node (segmentation_lifecycle_node) starts
unconfigured and does nothing until it is configured and activated, by a
lifecycle manager (nav2_lifecycle_manager with node_names [segmentation_node])
or by hand: ros2 lifecycle set /segmentation_node configure, then activate.
"""

import os
from typing import List

from ament_index_python.packages import get_package_prefix, get_package_share_directory
from ament_index_python.packages import PackageNotFoundError
from enet_ros.node.dds import NEW_NAME, OLD_NAME, profile_variables
from launch import LaunchContext, LaunchDescription
from launch.actions import (DeclareLaunchArgument, LogInfo, OpaqueFunction,
                            RegisterEventHandler, SetEnvironmentVariable, Shutdown)
from launch.conditions import IfCondition, UnlessCondition
from launch.event_handlers import OnProcessExit
from launch.events.process import ProcessExited
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

#: The node's exit code for bad configuration: restarting it cannot help.
EXIT_CONFIG_ERROR = 2


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
                 arguments=['-d', rviz_config], output='screen')]


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
    return [Shutdown(reason='segmentation_node exited')]


def _nodes() -> List[Node]:
    """
    Return the node's two forms; the ``lifecycle`` argument's condition picks one.

    ``segmentation_node`` (a launch_ros Node) configures and activates itself;
    ``segmentation_lifecycle_node`` (a launch_ros LifecycleNode, so launch can
    emit ChangeState events to it) waits for its transitions.
    """
    image = LaunchConfiguration('image')
    lifecycle = LaunchConfiguration('lifecycle')
    common = {
        'package': 'enet_ros',
        'name': 'segmentation_node',
        'namespace': LaunchConfiguration('namespace'),
        'parameters': [LaunchConfiguration('params_file'),
                       {'model_path': LaunchConfiguration('model_path'),
                        'device': LaunchConfiguration('device')}],
        'remappings': [('image', image), ('image/compressed', [image, '/compressed']),
                       ('camera_info', LaunchConfiguration('camera_info'))],
        'respawn': LaunchConfiguration('respawn'),
        'respawn_delay': 2.0,
        'output': 'screen',
        'emulate_tty': True,
    }
    return [Node(executable='segmentation_node', condition=UnlessCondition(lifecycle),
                 **common),
            LifecycleNode(executable='segmentation_lifecycle_node',
                          condition=IfCondition(lifecycle), **common)]


def generate_launch_description() -> LaunchDescription:
    """Describe the node with the parameters file, argument overrides and remappings."""
    share = get_package_share_directory('enet_ros')
    dds_profile = LaunchConfiguration('dds_profile')
    nodes = _nodes()
    return LaunchDescription([
        DeclareLaunchArgument('image', default_value='/camera/image_raw',
                              description='camera topic (sensor_msgs/Image); with '
                                          'input_transport compressed, <image>/compressed'),
        DeclareLaunchArgument('camera_info', default_value='/camera/camera_info',
                              description="the camera's sensor_msgs/CameraInfo topic (for "
                                          '~/drivable_grid)'),
        DeclareLaunchArgument('lifecycle', default_value='false',
                              description='true: the managed node segmentation_lifecycle_node, '
                                          'which waits unconfigured for configure and activate '
                                          '(a lifecycle manager, or ros2 lifecycle set)'),
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(share, 'config', 'segment.yaml'),
                              description='node parameters file'),
        DeclareLaunchArgument('model_path', default_value='',
                              description='ENet model file; empty = the bundled CamVid model'),
        DeclareLaunchArgument('device', default_value='auto',
                              description="'auto', 'cpu', 'cuda' or 'cuda:N'"),
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
        *[SetEnvironmentVariable(name, dds_profile) for name in profile_variables()],
        *nodes,
        *[RegisterEventHandler(OnProcessExit(target_action=node, on_exit=_on_node_exit))
          for node in nodes],
        OpaqueFunction(function=_rviz, args=[os.path.join(share, 'config', 'segment.rviz')],
                       condition=IfCondition(LaunchConfiguration('rviz'))),
    ])
