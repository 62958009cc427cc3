"""lifelong_ros: keep a robot learning after deployment without forgetting, never serving an unsafe model.

The core in this package is ROS-free (importing it never imports rclpy); ROS 2 nodes live in
``lifelong_ros.nodes`` and are thin shells over it.
"""

__version__ = "0.1.0"
