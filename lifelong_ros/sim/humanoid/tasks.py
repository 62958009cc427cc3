"""The G1 table-top tasks as data: a name, the object types it draws from, how a variation is
sampled from a seed, and when it is solved.

Every task varies the object's type and its pose on the table (and the target where there is
one), so a policy has to use the observed object pose, size and target, not memorise one scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lifelong_ros.sim.humanoid.scene import BUTTON_TRAVEL, BUTTON_TYPES, OBJECT_TYPES, TABLE_TOP_Z


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kinds: tuple[str, ...]  # object types (OBJECT_TYPES) or button types (BUTTON_TYPES) it draws from
    max_steps: int  # the episode length at 50 Hz unless the simulator is given a shorter one
    description: str

    @property
    def uses_button(self) -> bool:
        return self.kinds[0] in BUTTON_TYPES


OBJECTS = tuple(OBJECT_TYPES)
TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("g1-reach", OBJECTS, 150, "bring the open right hand to the pre-grasp pose beside the object"),
        TaskSpec("g1-lift", OBJECTS, 200, "grasp the object and lift it 8 cm off the table"),
        TaskSpec("g1-place", OBJECTS, 300, "grasp the object, set it down on the target mark and let go"),
        TaskSpec("g1-push", OBJECTS, 200, "push the object with the palm onto the target mark"),
        TaskSpec("g1-button", tuple(BUTTON_TYPES), 150, "press the button down by 1 cm"),
    )
}

# Success thresholds.
REACH_TOLERANCE = 0.03  # grasp point within 3 cm of the pre-grasp point
LIFT_HEIGHT = 0.08  # object raised 8 cm above its resting height
PLACE_TOLERANCE = 0.04  # object centre within 4 cm (x-y) of the target, resting, not held
PUSH_TOLERANCE = 0.04
PRESS_DEPTH = 0.01  # of the button's BUTTON_TRAVEL
REACH_CLEARANCE = 0.10  # the pre-grasp point is this far above the grasp height

# Where objects and buttons are placed (x forward, y left, metres; the robot's right hand side).
OBJECT_X = (0.30, 0.40)
OBJECT_Y = (-0.26, -0.10)
YAW = (-0.5, 0.5)
PLACE_X = (0.30, 0.45)  # where place targets are (further left the elbow meets the torso)
PLACE_Y = (-0.26, -0.03)
assert PRESS_DEPTH < BUTTON_TRAVEL


def available_tasks() -> list[str]:
    return sorted(TASKS)


def check_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown G1 task {name!r}; expected one of {available_tasks()}")
    return TASKS[name]


@dataclass(frozen=True)
class Variation:
    """One variation of a task: which object, where it stands (x, y, yaw), and the target point."""

    kind: str
    x: float
    y: float
    yaw: float
    target: tuple[float, float, float]

    def check(self, task: TaskSpec) -> None:
        if self.kind not in task.kinds:
            raise ValueError(f"object type {self.kind!r} is not one of {task.name}'s {list(task.kinds)}")
        ok = OBJECT_X[0] - 1e-9 <= self.x <= OBJECT_X[1] + 1e-9 and OBJECT_Y[0] - 1e-9 <= self.y <= OBJECT_Y[1] + 1e-9
        if not ok or not YAW[0] - 1e-9 <= self.yaw <= YAW[1] + 1e-9:
            raise ValueError(
                f"object pose (x={self.x}, y={self.y}, yaw={self.yaw}) is outside the table area "
                f"x {OBJECT_X}, y {OBJECT_Y}, yaw {YAW}"
            )
        if not np.isfinite(self.target).all():
            raise ValueError(f"target {self.target} is not finite")


def half_extents(kind: str) -> np.ndarray:
    """Half extents (x, y, z) of an object or button cap in its own frame (m)."""
    if kind in OBJECT_TYPES:
        shape, size = OBJECT_TYPES[kind][0], OBJECT_TYPES[kind][1]
    else:
        shape, size = BUTTON_TYPES[kind][0], BUTTON_TYPES[kind][1]
    if shape == "cylinder":
        return np.array([size[0], size[0], size[1]])
    return np.array(size[:3], dtype=np.float64)


def grasp_height(kind: str) -> float:
    """Height above the table of the hand's centre line when it grasps an object of ``kind``."""
    return min(0.048, 2 * OBJECT_TYPES[kind][2] - 0.012)


def sample(task: TaskSpec, seed: int) -> Variation:
    """The variation of ``task`` that ``seed`` stands for (the same seed always gives the same one)."""
    rng = np.random.default_rng([seed, sum(map(ord, task.name))])
    kind = task.kinds[int(rng.integers(len(task.kinds)))]
    x, y = rng.uniform(*OBJECT_X), rng.uniform(*OBJECT_Y)
    yaw = 0.0 if kind == "cylinder" or task.uses_button else float(rng.uniform(*YAW))
    if task.name == "g1-reach":
        target = (x, y, TABLE_TOP_Z + grasp_height(kind) + REACH_CLEARANCE)
    elif task.name == "g1-place":
        # Anywhere in the place area at least 10 cm from the object (redrawn until it is; the same
        # seed always redraws the same way, and the area always has such points).
        while True:
            tx, ty = rng.uniform(*PLACE_X), rng.uniform(*PLACE_Y)
            if math.hypot(tx - x, ty - y) >= 0.10:
                break
        target = (tx, ty, TABLE_TOP_Z)
    elif task.name == "g1-push":
        # The palm faces left, so pushes go left, up to ±0.4 rad off, 10 to 14 cm.
        d, ang = rng.uniform(0.10, 0.14), rng.uniform(math.pi / 2 - 0.4, math.pi / 2 + 0.4)
        target = (x + d * math.cos(ang), y + d * math.sin(ang), TABLE_TOP_Z)
    else:
        target = (x, y, TABLE_TOP_Z)
    return Variation(kind, float(x), float(y), float(yaw), tuple(float(v) for v in target))  # type: ignore[arg-type]


@dataclass
class State:
    """What success and reward are computed from, after a control step."""

    object_pos: np.ndarray  # object (or button cap) centre
    rest_z: float  # the object's centre height when it rests on the table
    target: np.ndarray
    grasp_point: np.ndarray  # the hand's grasp point (site)
    touching: bool  # any contact between the right hand and the object
    press: float  # how far the button is pressed (m), 0 for other tasks


def success(task: TaskSpec, s: State) -> bool:
    name = task.name
    if name == "g1-reach":
        return bool(np.linalg.norm(s.grasp_point - s.target) < REACH_TOLERANCE)
    if name == "g1-lift":
        return bool(s.object_pos[2] > s.rest_z + LIFT_HEIGHT)
    if name == "g1-place":
        near = np.linalg.norm(s.object_pos[:2] - s.target[:2]) < PLACE_TOLERANCE
        return bool(near and abs(s.object_pos[2] - s.rest_z) < 0.01 and not s.touching)
    if name == "g1-push":
        return bool(np.linalg.norm(s.object_pos[:2] - s.target[:2]) < PUSH_TOLERANCE)
    return bool(s.press > PRESS_DEPTH)


def reward(task: TaskSpec, s: State) -> float:
    """A dense shaping term (negative distances, metres) plus 1 on success; for the record only."""
    to_object = float(np.linalg.norm(s.grasp_point - s.object_pos))
    name = task.name
    if name == "g1-reach":
        r = -float(np.linalg.norm(s.grasp_point - s.target))
    elif name == "g1-lift":
        r = -to_object - max(0.0, s.rest_z + LIFT_HEIGHT - float(s.object_pos[2]))
    elif name in ("g1-place", "g1-push"):
        r = -to_object - float(np.linalg.norm(s.object_pos[:2] - s.target[:2]))
    else:
        r = -to_object - (PRESS_DEPTH - s.press)
    return r + (1.0 if success(task, s) else 0.0)
