"""The whole loop without a robot: lifelong.launch.py (sim:=embedded) plus the embedded simulator.

  ros2 launch lifelong_ros sim_demo.launch.py [robot:=metaworld|g1] [task:=reach-v3] [controller:=policy|expert|correction]
      [config:=FILE] [namespace:=NS] [data_dir:=DIR] [rate_hz:=50.0] [camera_rate_hz:=10.0] [log_level:=info]
      [closed_loop_sim:=auto|none]

sim_bridge runs the robot's simulator at a fixed rate, publishes the observation on the spec's topics
and applies the actions the policy server publishes on the spec's action topics. robot:=metaworld
(the default) is Meta-World's arm (config/lifelong.yaml, spec_metaworld.yaml); robot:=g1 the Unitree
G1 with hands with a ros2_control robot's topics (config/g1.yaml, spec_g1.yaml) and its head camera.
With controller:=expert the scripted expert drives instead and every step is published as a
demonstration, which the experience buffer records: teach a task, then send an Adapt goal for it.
With controller:=correction the policy drives and every step is published with the expert's action
(source correction, DAgger): after an adaptation, a few corrected episodes, then Adapt again.
"""

from __future__ import annotations

import os
import tempfile

import yaml
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

CONTROLLERS = ("policy", "expert", "correction")
ROBOTS = ("metaworld", "g1")
DEFAULT_CONFIG = {"metaworld": "lifelong.yaml", "g1": "g1.yaml"}  # as lifelong.launch.py's


def _share(*parts: str) -> str:
    return os.path.join(get_package_share_directory("lifelong_ros"), *parts)


def _node_params_file(node: str, values: dict) -> str:
    """``values`` as a params file under ``/**/<node>``, the config's own key for the node's block.

    rcl merges every params file and ``-p`` into one table keyed by node pattern and applies the patterns in
    the order they first appeared: a launch-time dict (written under ``/**``) or ``-p`` lands in the config's
    ``/**`` block, which its ``/**/sim_bridge`` block then overrides, so ``controller:=expert`` was ignored.
    Under the node's own pattern, the later file wins."""
    with tempfile.NamedTemporaryFile("w", prefix=f"lifelong_ros_{node}_", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({f"/**/{node}": {"ros__parameters": values}}, f)
    return f.name


def _sim_bridge(context, *args, **kwargs):
    robot = LaunchConfiguration("robot").perform(context)
    if robot not in ROBOTS:
        raise ValueError(f"launch argument robot:={robot!r}: expected one of {', '.join(ROBOTS)}")
    config = LaunchConfiguration("config").perform(context) or _share("config", DEFAULT_CONFIG[robot])
    config = os.path.abspath(os.path.expanduser(config))
    controller = LaunchConfiguration("controller").perform(context)
    if controller not in CONTROLLERS:
        raise ValueError(f"launch argument controller:={controller!r}: expected one of {', '.join(CONTROLLERS)}")
    rate = LaunchConfiguration("rate_hz").perform(context)
    try:
        rate_hz = float(rate)
    except ValueError:
        raise ValueError(f"launch argument rate_hz:={rate!r}: expected a number of steps per second") from None
    overrides = {"config_dir": os.path.dirname(config), "controller": controller, "rate_hz": rate_hz, "robot": robot}
    camera = LaunchConfiguration("camera_rate_hz").perform(context)
    if camera:
        try:
            overrides["camera_rate_hz"] = float(camera)
        except ValueError:
            raise ValueError(f"launch argument camera_rate_hz:={camera!r}: expected frames per second") from None
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
        parameters=[config, _node_params_file("sim_bridge", overrides)],
        remappings=[("policy_output", "policy_server/output")],
        ros_arguments=["--log-level", LaunchConfiguration("log_level").perform(context)],
    )
    namespace = LaunchConfiguration("namespace").perform(context)
    return [GroupAction([PushRosNamespace(namespace), node])] if namespace else [node]


def generate_launch_description() -> LaunchDescription:
    passed = ("config", "namespace", "data_dir", "log_level", "autostart", "robot", "closed_loop_sim")
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
                "robot",
                default_value="metaworld",
                choices=list(ROBOTS),
                description="metaworld: Meta-World's arm; g1: the Unitree G1 with hands (config/g1.yaml)",
            ),
            DeclareLaunchArgument(
                "task", default_value="", description="Task to run ('' = sim_bridge.task from the config)"
            ),
            DeclareLaunchArgument(
                "controller",
                default_value="policy",
                choices=list(CONTROLLERS),
                description="policy: actions from policy_server; expert: scripted demonstrations; "
                "correction: the policy acts, the expert labels each step",
            ),
            DeclareLaunchArgument("rate_hz", default_value="50.0", description="Simulation steps per second"),
            DeclareLaunchArgument(
                "camera_rate_hz",
                default_value="",
                description="G1 head camera frames per second (0 = off; '' = sim_bridge.camera_rate_hz from the config)",
            ),
            DeclareLaunchArgument("log_level", default_value="info", description="ROS log level of every node"),
            DeclareLaunchArgument(
                "autostart", default_value="true", description="Bring the managed policy_server to active"
            ),
            DeclareLaunchArgument(
                "closed_loop_sim",
                default_value="auto",
                description="Simulator of the gate's closed-loop stage: auto (= the robot's own here), metaworld, g1 "
                "or none",
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
