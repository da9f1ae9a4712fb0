"""
ROS message conversion and the DDS profile, shared by the node, the bag tools and the launch file.

:mod:`~enet_ros.ros_io.image_msgs`: sensor_msgs images to frames and back;
:mod:`~enet_ros.ros_io.dds`: the Fast DDS profile for large images.
"""
