"""Front end: the standalone `lifelong-ros` command line (no ROS needed)."""
