"""The whole loop without a robot: lifelong.launch.py (sim:=embedded) plus the embedded simulator.

  ros2 launch lifelong_ros sim_demo.launch.py [task:=reach-v3] [controller:=policy|expert]
      [config:=FILE] [namespace:=NS] [data_dir:=DIR] [rate_hz:=50.0] [log_level:=info] [closed_loop_sim:=auto|none]

sim_bridge runs Meta-World at a fixed rate, publishes observations on sim_bridge/joint_states and
applies the actions the policy server publishes on sim_bridge/command. With controller:=expert the
scripted expert drives instead and every step is published as a demonstration, which the
experience buffer records: teach a task, then send an Adapt goal for it.
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, GroupAction, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

try:  # Jazzy and later spell it PushROSNamespace (the old name is a deprecated alias); Humble has only the old one
    from launch_ros.actions import PushROSNamespace as PushRosNamespace
except ImportError:
    from launch_ros.actions import PushRosNamespace

CONTROLLERS = ("policy", "expert")


def _share(*parts: str) -> str:
    return os.path.join(get_package_share_directory("lifelong_ros"), *parts)


def _sim_bridge(context, *args, **kwargs):
    config = LaunchConfiguration("config").perform(context) or _share("config", "lifelong.yaml")
    config = os.path.abspath(os.path.expanduser(config))
    controller = LaunchConfiguration("controller").perform(context)
    if controller not in CONTROLLERS:
        raise ValueError(f"launch argument controller:={controller!r}: expected one of {', '.join(CONTROLLERS)}")
    rate = LaunchConfiguration("rate_hz").perform(context)
    try:
        rate_hz = float(rate)
    except ValueError:
        raise ValueError(f"launch argument rate_hz:={rate!r}: expected a number of steps per second") from None
    overrides = {"config_dir": os.path.dirname(config), "controller": controller, "rate_hz": rate_hz}
    task = LaunchConfiguration("task").perform(context)
    if task:
        overrides["task"] = task
    data_dir = LaunchConfiguration("data_dir").perform(context)
    if data_dir:
        overrides["data_dir"] = os.path.abspath(os.path.expanduser(data_dir))
    node = Node(
        package="lifelong_ros",
        executable="sim_bridge",
        name="sim_bridge",
        output="screen",
        emulate_tty=True,
        parameters=[config, overrides],
        remappings=[("policy_output", "policy_server/output")],
        ros_arguments=["--log-level", LaunchConfiguration("log_level").perform(context)],
    )
    namespace = LaunchConfiguration("namespace").perform(context)
    return [GroupAction([PushRosNamespace(namespace), node])] if namespace else [node]


def generate_launch_description() -> LaunchDescription:
    passed = ("config", "namespace", "data_dir", "log_level", "autostart", "closed_loop_sim")
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "config", default_value="", description="ROS 2 params file ('' = config/lifelong.yaml)"
            ),
            DeclareLaunchArgument("namespace", default_value="", description="Namespace for every node ('' = none)"),
            DeclareLaunchArgument(
                "data_dir", default_value="", description="Store + registry directory ('' = from config)"
            ),
            DeclareLaunchArgument(
                "task", default_value="", description="Meta-World task to run ('' = sim_bridge.task from config)"
            ),
            DeclareLaunchArgument(
                "controller",
                default_value="policy",
                choices=list(CONTROLLERS),
                description="policy: actions from policy_server; expert: scripted demonstrations",
            ),
            DeclareLaunchArgument("rate_hz", default_value="50.0", description="Simulation steps per second"),
            DeclareLaunchArgument("log_level", default_value="info", description="ROS log level of every node"),
            DeclareLaunchArgument(
                "autostart", default_value="true", description="Bring the managed policy_server to active"
            ),
            DeclareLaunchArgument(
                "closed_loop_sim",
                default_value="auto",
                description="Simulator of the gate's closed-loop stage: auto (= metaworld here), metaworld or none",
            ),
            IncludeLaunchDescription(
                PythonLaunchDescriptionSource(
                    os.path.join(os.path.dirname(os.path.abspath(__file__)), "lifelong.launch.py")
                ),
                launch_arguments=[("sim", "embedded"), ("use_sim_time", "false")]
                + [(k, LaunchConfiguration(k)) for k in passed],
            ),
            OpaqueFunction(function=_sim_bridge),
        ]
    )
