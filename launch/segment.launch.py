"""
Launch enet_ros' segmentation node, optionally with RViz showing its outputs.

ros2 launch enet_ros segment.launch.py image:=/camera/image_raw
ros2 launch enet_ros segment.launch.py image:=/camera/image_raw rviz:=true device:=cuda
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    """Describe the node with the parameters file, argument overrides and remappings."""
    share = get_package_share_directory('enet_ros')
    image = LaunchConfiguration('image')
    params_file = LaunchConfiguration('params_file')
    model_path = LaunchConfiguration('model_path')
    device = LaunchConfiguration('device')
    namespace = LaunchConfiguration('namespace')
    rviz = LaunchConfiguration('rviz')
    dds_profile = LaunchConfiguration('dds_profile')
    # Humble's Fast DDS reads only the old name; later ones warn that it is deprecated.
    profile_variable = ('FASTRTPS_DEFAULT_PROFILES_FILE' if os.environ.get('ROS_DISTRO') ==
                        'humble' else 'FASTDDS_DEFAULT_PROFILES_FILE')
    return LaunchDescription([
        DeclareLaunchArgument('image', default_value='/camera/image_raw',
                              description='camera topic (sensor_msgs/Image); with '
                                          'input_transport compressed, <image>/compressed'),
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
                              description='start rviz2 with config/segment.rviz'),
        # Shared-memory segments big enough for 1080p rgb8 images, so large outputs
        # travel in one piece (README, "Large images and DDS"). A profile already chosen
        # in the environment wins; Humble reads FASTRTPS_..., Jazzy and later FASTDDS_...
        DeclareLaunchArgument(
            'dds_profile',
            default_value=EnvironmentVariable(
                'FASTDDS_DEFAULT_PROFILES_FILE',
                default_value=EnvironmentVariable(
                    'FASTRTPS_DEFAULT_PROFILES_FILE',
                    default_value=os.path.join(share, 'config', 'fastdds_large_data.xml'))),
            description='Fast DDS XML profile for the node (default: the one already set '
                        'in the environment, else config/fastdds_large_data.xml)'),
        SetEnvironmentVariable(profile_variable, dds_profile),
        Node(
            package='enet_ros',
            executable='segmentation_node',
            name='segmentation_node',
            namespace=namespace,
            parameters=[params_file, {'model_path': model_path, 'device': device}],
            remappings=[('image', image), ('image/compressed', [image, '/compressed'])],
            output='screen',
            emulate_tty=True,
        ),
        Node(
            package='rviz2',
            executable='rviz2',
            name='rviz2',
            arguments=['-d', os.path.join(share, 'config', 'segment.rviz')],
            condition=IfCondition(rviz),
            output='screen',
        ),
    ])
