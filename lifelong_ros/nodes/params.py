"""Every parameter each lifelong_ros node declares: name, default, description, range.

ROS-free on purpose: the nodes declare these with descriptors (nodes/_common.py), and plain tests
check that config/*.yaml names only parameters a node really declares (ROS ignores unknown ones
silently). Shared keys live in the `/**: ros__parameters:` block, which the standalone CLI reads too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lifelong_ros.experience.sources import GROUND_TRUTH_SOURCES


@dataclass(frozen=True)
class Param:
    """A declared parameter. ``read_only`` ones are read once at start-up; the others may be changed
    at run time with `ros2 param set`. ``default=None`` declares a string list with no default."""

    name: str
    default: Any
    description: str
    read_only: bool = True
    min: float | None = None
    max: float | None = None


DEFAULT_TASKS = ["reach-v3", "push-v3", "pick-place-v3", "button-press-topdown-v3", "drawer-open-v3"]

# ----------------------------------------------------------------------------- shared (/**)
DATA_DIR = Param(
    "data_dir",
    "",
    "Directory of the experience store (experience.sqlite3) and model registry "
    "(registry/); '' = $LIFELONG_ROS_DATA or ~/.local/share/lifelong_ros",
)
CONFIG_DIR = Param(
    "config_dir",
    "",
    "Directory relative spec paths are resolved against; '' = the package's "
    "config/ (the launch files set it to the params file's folder)",
)
SPEC = Param(
    "spec",
    "spec_metaworld.yaml",
    "Observation/action spec YAML (spec.py): which topics and fields "
    "make the observation vector and how the action vector is published; relative = under config_dir",
)
TASKS = Param("tasks", DEFAULT_TASKS, "Ordered task names (index = task id / model head)")
DIAGNOSTICS_PERIOD = Param(
    "diagnostics_period_s", 1.0, "Period of the node's /diagnostics status (s)", min=0.05, max=60.0
)
SHARED = [DATA_DIR, CONFIG_DIR, SPEC, TASKS, DIAGNOSTICS_PERIOD]
# Shared keys only the standalone CLI reads (the demo's task sequence); no node declares them.
CLI_ONLY = {TASKS.name}
# Params-file sections for the standalone CLI only (no node has these names; ROS ignores them).
CLI_SECTIONS = {"demo"}

# ----------------------------------------------------------------------------- per node
POLICY_SERVER = [
    DATA_DIR,
    CONFIG_DIR,
    SPEC,
    DIAGNOSTICS_PERIOD,
    Param(
        "task",
        "reach-v3",
        "Task the policy acts for (selects the model head); a message on the `task` topic "
        "(std_msgs/String) changes it too",
        read_only=False,
    ),
    Param(
        "enabled",
        True,
        "Publish actions; false = observe only (the operator's switch, e.g. while a bag is "
        "replayed on the same topics)",
        read_only=False,
    ),
    Param(
        "control_rate_hz",
        0.0,
        "Act at this fixed rate (Hz); 0 = act on every message of the observation spec's first stream",
        min=0.0,
        max=10_000.0,
    ),
    Param(
        "episode_gap_s",
        1.0,
        "Observations arriving after a pause longer than this start a new experience episode (s)",
        min=0.0,
        max=3600.0,
    ),
    Param("publish_experience", True, "Publish every served (observation, action) pair on ~/experience"),
    Param("intra_op_threads", 1, "onnxruntime intra-op threads (1 = lowest single-observation latency)", min=1, max=64),
    Param(
        "autostart",
        False,
        "Configure and activate at start-up (a standalone `ros2 run`); false = wait for the lifecycle "
        "transitions (the launch files drive them: configure, then activate)",
    ),
    Param(
        "executor",
        "events",
        "Executor the node spins in: events (rclpy.experimental.EventsExecutor, lowest latency; "
        "bench/ros_latency.py), single (SingleThreadedExecutor) or multi (MultiThreadedExecutor, 2 threads)",
    ),
    # The output guard (serving/runtime.py OutputGuard): an action that is NaN/Inf or beyond these
    # bounds (+ slack) is never published; the safe action is, and the guarded output is counted.
    Param(
        "action_low",
        [float("-inf")],
        "Lowest allowed action value: one value for every element or one per action element; -.inf = unbounded",
    ),
    Param(
        "action_high",
        [float("inf")],
        "Highest allowed action value: one value for every element or one per action element; .inf = unbounded",
    ),
    Param(
        "action_bounds_slack",
        0.0,
        "Tolerance beyond action_low/action_high before an action is refused",
        min=0.0,
        max=1e9,
    ),
    Param(
        "safe_action",
        "hold",
        "Published instead of a refused action: hold (the last good action for the task; zero before "
        "the first) or zero (zeros, clipped into the bounds)",
    ),
]

EXPERIENCE_BUFFER = [
    DATA_DIR,
    CONFIG_DIR,
    SPEC,
    DIAGNOSTICS_PERIOD,
    Param(
        "experience_topics",
        ["policy_server/experience", "sim_bridge/demonstrations"],
        "ExperienceRecord topics to record (relative names resolve in the node's namespace)",
    ),
    Param("recording", True, "Record from start-up (~/set_recording switches it at run time)"),
    Param(
        "raw_topics",
        False,
        "Also record the specs' raw observation/action topics from start-up (teleop streams, `ros2 bag play`)",
    ),
    Param("raw_task", "reach-v3", "Task tag of raw-topic records"),
    Param("raw_source", "correction", "Source tag of raw-topic records: demonstration, correction or bag"),
    Param(
        "episode_gap_s",
        2.0,
        "Raw topics without the bag's /lifelong_ros/experience info: a pause longer than this starts a new episode (s)",
        min=0.0,
        max=3600.0,
    ),
    Param(
        "raw_pair_window_s",
        0.5,
        "Raw topics with the bag's /lifelong_ros/experience info (a bag written by `lifelong-ros export-bag`): an "
        "action and an info message arriving further apart than this are not one step (s)",
        min=0.0001,
        max=60.0,
    ),
    Param("executor", "events", "Executor the node spins in: events, single or multi (2 threads)"),
    Param("batch_size", 256, "Records per store transaction", min=1, max=1_000_000),
    Param("flush_period_s", 0.2, "Longest time a received record waits before it is written (s)", min=0.001, max=60.0),
    Param("durability", "process", "Store durability: 'process' (survives kill -9) or 'power' (fsync per commit)"),
]

LEARNER = [
    DATA_DIR,
    DIAGNOSTICS_PERIOD,
    Param("default_method", "ewc_replay", "Recipe used when an Adapt goal leaves `method` empty"),
    Param("default_steps", 1500, "Optimiser steps when an Adapt goal leaves `max_steps` at 0", min=1, max=10_000_000),
    Param("seed", 0, "Seed of every adaptation (runs are deterministic under it)", min=0, max=2**31 - 1),
    Param("threads", 1, "Torch threads of the worker process (keeps the policy server's cores free)", min=1, max=256),
    Param("nice", 5, "Scheduling niceness added to the worker process", min=0, max=19),
    Param("gate_timeout_s", 300.0, "How long to wait for the safety monitor's verdict (s)", min=1.0, max=86400.0),
    Param("feedback_period_s", 0.2, "Minimum time between two Adapt feedback messages (s)", min=0.0, max=10.0),
]

SAFETY_MONITOR = [
    DATA_DIR,
    DIAGNOSTICS_PERIOD,
    Param(
        "auto_activate",
        True,
        "Activate an approved candidate when the ~/gate request asks for it; false = "
        "never activate from ~/gate (rollback still works)",
    ),
    Param(
        "suite_sources",
        list(GROUND_TRUTH_SOURCES),
        "Experience sources whose held-out episodes form the regression suites (actions the policy "
        "produced itself are no ground truth)",
    ),
    Param("watchdog_enabled", True, "Roll back automatically when online signals breach the watchdog limits"),
    Param(
        "registry_poll_period_s",
        1.0,
        "How often to look for active-version changes made outside this node, "
        "e.g. by `lifelong-ros registry rollback` (s)",
        min=0.05,
        max=60.0,
    ),
    Param("gate_feedback_period_s", 0.5, "Period of the Gate action's feedback (s)", min=0.05, max=10.0),
]
# Sections declared field by field from a core config dataclass: `gate.<field>`, `watchdog.<field>`.
SAFETY_MONITOR_SECTIONS = {
    "gate": ("lifelong_ros.safety.gate", "GateConfig"),
    "watchdog": ("lifelong_ros.safety.watchdog", "WatchdogConfig"),
}

SIM_BRIDGE = [
    CONFIG_DIR,
    SPEC,
    DIAGNOSTICS_PERIOD,
    Param(
        "robot",
        "metaworld",
        "Embedded simulator (sim/backends.py): 'metaworld' (Sawyer arm, spec_metaworld.yaml) or 'g1' "
        "(Unitree G1 with hands, spec_g1.yaml)",
    ),
    Param(
        "task",
        "reach-v3",
        "Task to simulate (of the robot's); a change takes effect at the next episode",
        read_only=False,
    ),
    Param(
        "controller",
        "policy",
        "'policy': apply actions from the command topic; 'expert': the robot's "
        "scripted expert acts and each step is published on ~/demonstrations",
        read_only=False,
    ),
    Param(
        "publish_expert_commands",
        False,
        "With controller 'expert', also publish the expert's actions on the spec's action topics, as a "
        "teleoperator's commands to the controller would appear (for recording bags; deactivate the "
        "policy server, which publishes there too)",
        read_only=False,
    ),
    Param("paused", False, "Stop stepping (observations stop too) until set back to false", read_only=False),
    Param("rate_hz", 50.0, "Simulation steps per second", min=0.1, max=2000.0),
    Param("seed", 0, "Variation seed of the first episode; episode k uses seed + k", min=0, max=2**31 - 1),
    Param("max_steps", 200, "Steps after which an episode ends (0 = the task's own length)", min=0, max=500),
    Param("steps_after_success", 10, "Steps an episode continues after the first success", min=0, max=500),
    Param(
        "command_timeout_s",
        0.5,
        "Republish the observation when no command arrived for this long (s)",
        min=0.01,
        max=60.0,
    ),
    Param(
        "camera_rate_hz",
        0.0,
        "G1 head camera frames per second on camera_topic (0 = off); rendered on a thread of its own, "
        "never on the control loop (sim/humanoid/camera.py)",
        min=0.0,
        max=120.0,
    ),
    Param("camera_topic", "/head_camera/image_raw", "sensor_msgs/Image topic of the head camera (rgb8)"),
    Param("camera_width", 128, "Head camera image width (pixels)", min=1, max=4096),
    Param("camera_height", 96, "Head camera image height (pixels)", min=1, max=4096),
    Param(
        "camera_geom_groups",
        [0, 5],
        "MuJoCo geom groups the camera draws: 0 table, objects, floor; 5 low-poly proxies of the arms "
        "and hands (fast); 2 the robot's visual meshes (~10x slower on a CPU)",
    ),
    Param("camera_shadows", False, "Draw shadows (slow on a CPU renderer)"),
    Param("camera_gl", "", "OpenGL backend: osmesa | egl | glfw ('' = $MUJOCO_GL, else osmesa)"),
]

NODES = {
    "policy_server": POLICY_SERVER,
    "experience_buffer": EXPERIENCE_BUFFER,
    "learner": LEARNER,
    "safety_monitor": SAFETY_MONITOR,
    "sim_bridge": SIM_BRIDGE,
}
SECTIONS = {"safety_monitor": SAFETY_MONITOR_SECTIONS}


def declared_names(node: str) -> set[str]:
    """Every parameter name ``node`` declares (sections expanded from their dataclass fields), plus
    use_sim_time, which rclpy declares on every node."""
    import dataclasses
    import importlib

    names = {p.name for p in NODES[node]} | {"use_sim_time"}
    for section, (module, cls) in SECTIONS.get(node, {}).items():
        config_cls = getattr(importlib.import_module(module), cls)
        names |= {f"{section}.{f.name}" for f in dataclasses.fields(config_cls)}
    return names
