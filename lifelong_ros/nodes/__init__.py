"""ROS 2 nodes: thin rclpy shells over the ROS-free core (one module per node).

Importing this package imports nothing from ROS; each node module imports rclpy itself, and
``messages`` (our interfaces <-> numpy) is ROS-free so it is tested without ROS.
"""
