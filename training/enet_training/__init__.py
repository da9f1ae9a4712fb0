"""Training, evaluation and export of ENet model files for enet_ros (no ROS needed)."""
