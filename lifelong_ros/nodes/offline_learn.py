"""`ros2 run lifelong_ros offline_learn --bag PATH --task NAME ...`: offline learning from a bag.

The same command as `lifelong-ros offline-learn` (lifelong_ros/offline.py); it needs no running
ROS graph, so it is a plain program: ROS arguments (`--ros-args ...`) are accepted and ignored.
"""
from __future__ import annotations

import sys

from ..offline import main as offline_main


def _strip_ros_args(argv: list[str]) -> list[str]:
    """Drop a `--ros-args ... [--]` section, as rclpy.utilities.remove_ros_args does."""
    out, inside = [], False
    for a in argv:
        if a == "--ros-args":
            inside = True
        elif inside and a == "--":
            inside = False
        elif not inside:
            out.append(a)
    return out


def main(args: list[str] | None = None) -> int:
    return offline_main(_strip_ros_args(sys.argv[1:] if args is None else args))


if __name__ == "__main__":
    sys.exit(main())
