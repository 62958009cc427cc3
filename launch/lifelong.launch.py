"""Bring up lifelong_ros: policy_server, experience_buffer, learner and safety_monitor.

  ros2 launch lifelong_ros lifelong.launch.py [robot:=metaworld|g1] [config:=FILE] [namespace:=NS]
      [sim:=embedded|gazebo|none] [use_sim_time:=true|false|auto] [data_dir:=DIR] [log_level:=info]
      [autostart:=true|false] [closed_loop_sim:=auto|metaworld|g1|none]

policy_server is a managed (lifecycle) node: with autostart:=true (the default) the launch file
configures it and, once configured, activates it; `ros2 lifecycle set /policy_server deactivate`
stops actuation at once.

robot:=g1      the Unitree G1 with hands (config defaults to config/g1.yaml: spec_g1.yaml's ros2_control
               topics); robot:=metaworld (the default) Meta-World's arm (config/lifelong.yaml)
sim:=embedded  wire the nodes to the embedded simulator's topics (sim_demo.launch.py also starts
               sim_bridge; or `ros2 run lifelong_ros sim_bridge` yourself)
sim:=gazebo    the G1 in Gazebo: starts ros_gz_bridge with gz_bridge_config (config/g1_gz_bridge.yaml),
               config defaults to config/g1.yaml and use_sim_time to true
sim:=none      a real robot: topics exactly as named in the config's observation/action specs
The G1's topics are the same in all three, so moving from the embedded G1 to Gazebo or the robot
changes only sim:=.

Every node reads the same params file (ROS 2 format; the standalone CLI reads it too). Relative
spec paths in it are resolved against the config file's folder.
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, EmitEvent, GroupAction, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from launch import LaunchDescription
from lifelong_ros.params import check_params_file

try:  # Jazzy and later spell it PushROSNamespace (the old name is a deprecated alias); Humble has only the old one
    from launch_ros.actions import PushROSNamespace as PushRosNamespace
except ImportError:
    from launch_ros.actions import PushRosNamespace

SIM_MODES = ("embedded", "gazebo", "none")
ROBOTS = ("metaworld", "g1")
DEFAULT_CONFIG = {"metaworld": "lifelong.yaml", "g1": "g1.yaml"}  # per robot; sim:=gazebo is the G1


def default_config(robot: str, sim: str) -> str:
    """The params file (in config/) a launch uses when config:= is not given."""
    if robot not in ROBOTS:
        raise ValueError(f"launch argument robot:={robot!r}: expected one of {', '.join(ROBOTS)}")
    return DEFAULT_CONFIG["g1" if sim == "gazebo" else robot]


def _share(*parts: str) -> str:
    return os.path.join(get_package_share_directory("lifelong_ros"), *parts)


def _bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"launch argument {name}:={value!r}: expected true or false")


def _nodes(context, *args, **kwargs):
    sim = LaunchConfiguration("sim").perform(context)
    if sim not in SIM_MODES:
        raise ValueError(f"launch argument sim:={sim!r}: expected one of {', '.join(SIM_MODES)}")
    robot = LaunchConfiguration("robot").perform(context)
    config = LaunchConfiguration("config").perform(context) or _share("config", default_config(robot, sim))
    config = os.path.abspath(os.path.expanduser(config))
    if not os.path.isfile(config):
        raise FileNotFoundError(f"launch argument config:={config}: no such params file")
    check_params_file(config)  # an unknown key, a misspelled section, a bad value: refused before any node starts
    ust = LaunchConfiguration("use_sim_time").perform(context)
    use_sim_time = (sim == "gazebo") if ust == "auto" else _bool("use_sim_time", ust)
    data_dir = LaunchConfiguration("data_dir").perform(context)
    log_level = LaunchConfiguration("log_level").perform(context)

    overrides = {"config_dir": os.path.dirname(config), "use_sim_time": use_sim_time}
    if data_dir:
        overrides["data_dir"] = os.path.abspath(os.path.expanduser(data_dir))
    params = [config, overrides]
    common = dict(
        package="lifelong_ros",
        parameters=params,
        output="screen",
        emulate_tty=True,
        ros_arguments=["--log-level", log_level],
    )

    # The gate's closed-loop stage needs a simulator of the robot: the embedded one when there is one.
    closed_loop = LaunchConfiguration("closed_loop_sim").perform(context)
    if closed_loop == "auto":
        monitor_params = params + ([{"closed_loop_sim": robot}] if sim == "embedded" else [])
    else:
        monitor_params = [*params, {"closed_loop_sim": closed_loop}]

    policy_remaps = [("active_version", "safety_monitor/active")]
    if sim == "embedded":
        policy_remaps.append(("task", "sim_bridge/task"))
    # The policy server is a managed node: configure it at start, activate it once configured
    # (only after `configuring`, so a later operator `deactivate` is not undone).
    policy_server = LifecycleNode(
        executable="policy_server", name="policy_server", namespace="", remappings=policy_remaps, **common
    )
    lifecycle = []
    if _bool("autostart", LaunchConfiguration("autostart").perform(context)):
        lifecycle = [
            RegisterEventHandler(
                OnStateTransition(
                    target_lifecycle_node=policy_server,
                    start_state="configuring",
                    goal_state="inactive",
                    entities=[_transition(policy_server, Transition.TRANSITION_ACTIVATE)],
                )
            ),
            _transition(policy_server, Transition.TRANSITION_CONFIGURE),
        ]
    actions = [
        Node(
            executable="safety_monitor",
            name="safety_monitor",
            remappings=[
                ("policy_output", "policy_server/output"),
                ("experience", "policy_server/experience"),
                ("episode_result", "sim_bridge/episode_result"),
            ],
            **{**common, "parameters": monitor_params},
        ),
        policy_server,
        Node(executable="experience_buffer", name="experience_buffer", **common),
        Node(executable="learner", name="learner", **common),
    ]
    if sim == "gazebo":
        bridge_config = LaunchConfiguration("gz_bridge_config").perform(context) or _share(
            "config", "g1_gz_bridge.yaml"
        )
        actions.append(
            Node(
                package="ros_gz_bridge",
                executable="parameter_bridge",
                name="gz_bridge",
                output="screen",
                parameters=[{"config_file": bridge_config, "use_sim_time": use_sim_time}],
            )
        )
    actions += lifecycle
    namespace = LaunchConfiguration("namespace").perform(context)
    return [GroupAction([PushRosNamespace(namespace), *actions])] if namespace else actions


def _transition(node: LifecycleNode, transition_id: int) -> EmitEvent:
    return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition_id))


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "config",
                default_value="",
                description="ROS 2 params file; '' = config/lifelong.yaml (g1.yaml for robot:=g1 or sim:=gazebo)",
            ),
            DeclareLaunchArgument(
                "robot",
                default_value="metaworld",
                choices=list(ROBOTS),
                description="metaworld: Meta-World's arm; g1: the Unitree G1 (config/g1.yaml, spec_g1.yaml)",
            ),
            DeclareLaunchArgument("namespace", default_value="", description="Namespace for every node ('' = none)"),
            DeclareLaunchArgument(
                "sim",
                default_value="embedded",
                choices=list(SIM_MODES),
                description="embedded: sim_bridge's topics; gazebo: the G1 in gz sim via ros_gz_bridge; none: hardware",
            ),
            DeclareLaunchArgument(
                "use_sim_time", default_value="auto", description="true/false; auto = true for sim:=gazebo, else false"
            ),
            DeclareLaunchArgument(
                "data_dir",
                default_value="",
                description="Experience store + model registry directory ('' = the config's data_dir)",
            ),
            DeclareLaunchArgument(
                "gz_bridge_config",
                default_value="",
                description="ros_gz_bridge YAML for sim:=gazebo ('' = config/g1_gz_bridge.yaml)",
            ),
            DeclareLaunchArgument("log_level", default_value="info", description="ROS log level of every node"),
            DeclareLaunchArgument(
                "closed_loop_sim",
                default_value="auto",
                description="Simulator of the gate's closed-loop stage: auto (the robot's own for sim:=embedded, "
                "else the config's safety_monitor.closed_loop_sim), metaworld, g1 or none",
            ),
            DeclareLaunchArgument(
                "autostart",
                default_value="true",
                description="Bring the managed policy_server to active (false = leave it unconfigured)",
            ),
            OpaqueFunction(function=_nodes),
        ]
    )
