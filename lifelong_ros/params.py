"""The one schema of lifelong_ros parameters: every parameter each node declares (name, default,
description, range, choices), and the check of a whole params file against it.

ROS-free on purpose: the nodes declare these with descriptors (nodes/_common.py); `check_sections`
refuses a params file that names a parameter no node declares (ROS itself would ignore it
silently), a misspelled node section, a wrong type, a value out of range, before any work starts:
the CLI checks the file it reads, the launch files check theirs before starting a node, and each
node refuses undeclared overrides at start-up. Shared keys live in the `/**: ros__parameters:`
block, which the standalone CLI reads too.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifelong_ros.config import ConfigError, check_value, did_you_mean, load_sections
from lifelong_ros.experience.sources import GROUND_TRUTH_SOURCES, TEACHER_SOURCES


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
    choices: tuple[str, ...] | None = None

    def check(self, value: Any, where: str) -> Any:
        """``value`` if it fits this parameter (type of the default, range, choices), else ConfigError
        naming it and what was expected. Ints are accepted for float parameters (YAML ``1``)."""
        default = self.default
        if default is None or isinstance(default, list):
            if not isinstance(value, list):
                raise ConfigError(f"{where}: {self.name}={value!r}: expected a list")
            kind = type(default[0]) if default else str
            for item in value:
                if kind is float and isinstance(item, float) and math.isinf(item):
                    continue  # -.inf / .inf: unbounded
                check_value(self.name, item, kind, where=where)
            return value
        value = check_value(self.name, value, type(default), min=self.min, max=self.max, where=where)
        if self.choices is not None and value not in self.choices:
            raise ConfigError(
                f"{where}: {self.name}={value!r}{did_you_mean(value, self.choices)}: "
                f"expected one of {', '.join(self.choices)}"
            )
        return value


EXECUTORS = ("events", "single", "multi")

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
        choices=EXECUTORS,
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
        choices=("hold", "zero"),
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
    Param(
        "raw_source",
        "correction",
        "Source tag of raw-topic records: demonstration, correction or bag",
        choices=TEACHER_SOURCES,
    ),
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
    Param("executor", "events", "Executor the node spins in: events, single or multi (2 threads)", choices=EXECUTORS),
    Param("batch_size", 256, "Records per store transaction", min=1, max=1_000_000),
    Param("flush_period_s", 0.2, "Longest time a received record waits before it is written (s)", min=0.001, max=60.0),
    Param(
        "durability",
        "process",
        "Store durability: 'process' (survives kill -9) or 'power' (fsync per commit)",
        choices=("process", "power"),
    ),
]

LEARNER = [
    DATA_DIR,
    DIAGNOSTICS_PERIOD,
    Param("default_method", "ewc_replay", "Recipe used when an Adapt goal leaves `method` empty"),
    Param(
        "gate_action",
        "safety_monitor/gate",
        "The safety monitor's Gate action the learner sends candidates to (relative: in the learner's "
        "namespace); a parameter, not a remapping: rcl 9.2.0's action clients ignore remap rules",
    ),
    Param(
        "robot",
        "none",
        "The robot whose input scale, prior action and relative positions a first model (no active "
        "version) takes (sim/backends.py: g1 = joint ranges and workspace, a residual hold-the-joints "
        "action, hand and target relative to the object); none or metaworld = fitted to the first "
        "task's data, absolute actions",
        choices=("none", "metaworld", "g1"),
    ),
    Param("default_steps", 1500, "Optimiser steps when an Adapt goal leaves `max_steps` at 0", min=1, max=10_000_000),
    Param("seed", 0, "Seed of every adaptation (runs are deterministic under it)", min=0, max=2**31 - 1),
    Param("threads", 1, "Torch threads of the worker process (keeps the policy server's cores free)", min=1, max=256),
    Param("nice", 5, "Scheduling niceness added to the worker process", min=0, max=19),
    Param("gate_timeout_s", 300.0, "How long to wait for the safety monitor's verdict (s)", min=1.0, max=86400.0),
    Param("feedback_period_s", 0.2, "Minimum time between two Adapt feedback messages (s)", min=0.0, max=10.0),
    Param(
        "retries",
        2,
        "Retry an adaptation the gate rejected this many times, each with a stronger recipe (more steps, "
        "stronger EWC, task-balanced replay: orchestration.RetryPolicy); every attempt is in the Adapt result",
        min=0,
        max=10,
    ),
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
    Param(
        "closed_loop_sim",
        "none",
        "Simulator of the gate's closed-loop stage (paired candidate/active episodes, gate.closed_loop_*): "
        "metaworld or g1 = the embedded Meta-World arm or Unitree G1 (the launch files set it with the embedded "
        "simulator); none = no simulator (a real robot: held-out BC error, output sanity, the shadow stage "
        "and the watchdog gate instead)",
        choices=("none", "metaworld", "g1"),
    ),
    Param(
        "closed_loop_workers",
        0,
        "Worker processes of the closed-loop stage, niced (0 = cores - 1: one core stays with serving)",
        min=0,
        max=256,
    ),
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
        "scripted expert acts and each step is published on ~/demonstrations; 'correction': the policy "
        "acts and each step is published on ~/demonstrations with the expert's action (source correction)",
        read_only=False,
        choices=("policy", "expert", "correction"),
    ),
    Param(
        "takeover_after",
        60,
        "With controller 'correction': steps without a new best reward before the expert takes over and "
        "finishes the episode (0: never; lifelong_ros/corrections.py:TAKEOVER_AFTER offline)",
        min=0,
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
    names = {p.name for p in NODES[node]} | {"use_sim_time"}
    for section, (module, cls) in SECTIONS.get(node, {}).items():
        config_cls = getattr(importlib.import_module(module), cls)
        names |= {f"{section}.{f.name}" for f in dataclasses.fields(config_cls)}
    return names


def known_names() -> set[str]:
    """Every parameter name some lifelong_ros node declares, and the shared keys only the CLI reads."""
    return set().union(*(declared_names(n) for n in NODES)) | CLI_ONLY


def _param(node: str, name: str) -> Param | None:
    for p in NODES.get(node, SHARED):
        if p.name == name:
            return p
    return None


def _node_of(section: str, where: str) -> str | None:
    """The lifelong_ros node a params-file section configures; None for another package's node (one
    file may configure a whole robot), ConfigError for a name that looks like a misspelled one of ours."""
    if section in NODES:
        return section
    hint = did_you_mean(section, list(NODES) + sorted(CLI_SECTIONS))
    if hint:
        raise ConfigError(f"{where}: section {section!r} names no lifelong_ros node{hint}; nodes: {', '.join(NODES)}")
    return None


def check_sections(sections: dict[str, dict[str, Any]], where: str) -> None:
    """Check the sections of a params file (config.load_sections) against the schema: ConfigError
    naming the first unknown key (with a did-you-mean), wrong type, out-of-range value or invalid
    gate.*/watchdog.* section. CLI-only sections (``demo``) are checked by their own reader."""
    known = known_names()
    for section, values in sections.items():
        if section == "/**":
            for key, value in values.items():
                if key not in known:
                    raise ConfigError(
                        f"{where}: shared key {key!r} is a parameter of no lifelong_ros node{did_you_mean(key, known)}"
                    )
                for owner in ["/**", *NODES]:
                    p = _param(owner, key)
                    if p is not None:
                        p.check(value, f"{where} [/**]")
                        break
            continue
        if section in CLI_SECTIONS:
            continue
        found = _node_of(section, where)
        if found is None:
            continue
        node = found
        declared = declared_names(node)
        for key, value in values.items():
            if key not in declared:
                raise ConfigError(
                    f"{where} [{section}]: {node} declares no parameter {key!r}{did_you_mean(key, declared)}"
                )
            p = _param(node, key)
            if p is not None:
                p.check(value, f"{where} [{section}]")
    shared = sections.get("/**", {})
    for node, nested in SECTIONS.items():  # gate.*, watchdog.*: from /** and the node's own section
        merged = {**shared, **sections.get(node, {})}
        for prefix, (module, cls) in nested.items():
            config_cls = getattr(importlib.import_module(module), cls)
            sub = {k[len(prefix) + 1 :]: v for k, v in merged.items() if k.startswith(prefix + ".")}
            try:
                config_cls.from_dict(sub)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{where} [{node}] {prefix}.*: {exc}") from None


def check_params_file(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Load a params file (default: the package's config/lifelong.yaml) and check it against the
    schema; return its sections (config.load_sections). One ConfigError line for anything wrong."""
    sections = load_sections(path)
    check_sections(sections, str(path) if path else "config/lifelong.yaml")
    return sections


def check_overrides(node: str, overrides: Any) -> None:
    """ConfigError for a parameter given to a running ``node`` (``--params-file``, ``-p``) that no
    lifelong_ros node declares: rclpy would ignore it silently. Keys of the shared ``/**`` block reach
    every node, so a key another node declares is allowed here; the file-level check is exact."""
    known = known_names() | declared_names(node)
    for key in overrides:
        if key not in known:
            raise ConfigError(
                f"{node}: parameter {key!r} is declared by no lifelong_ros node"
                f"{did_you_mean(key, declared_names(node))}; `ros2 param list /{node}` shows what it declares"
            )
