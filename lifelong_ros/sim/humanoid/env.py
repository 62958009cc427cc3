"""The G1 humanoid behind the embedded simulator's interface (the same as ``MetaWorldSim``).

A task is data: a task name (``available_tasks()``) and a variation seed. ``reset(seed)`` places
the object (type, position, yaw) and target of that variation; ``step(action)`` applies joint
position targets for 50 Hz (10 physics steps of 2 ms); an episode ends ``steps_after_success``
steps after the first success, or at ``max_steps``.

Action (ACT_DIM = 17, each in [-1, 1]): position targets of the waist (yaw, roll, pitch), the
right arm (shoulder pitch/roll/yaw, elbow, wrist roll/pitch/yaw) and the right hand (thumb 0-2,
index 0-1, middle 0-1), in that order; -1 .. 1 maps linearly onto each joint's command range
(``scene.COMMAND_RANGE``, else the joint's own range). Every other joint (legs, left arm) holds
its initial pose.

Observation (OBS_DIM = 50, float32): the 17 commanded joints' positions (rad) and velocities
(rad/s), the object's position (m, world frame: x forward, y left, z up, origin on the floor under
the pelvis) and orientation (quaternion w, x, y, z with w >= 0), the target point (m), the
object's half extents (m) - what a perception stack would report - and the right hand's grasp
point (m, world frame: forward kinematics of the measured joints, what TF reports for the hand on
a ros2_control robot). For the button task the object is the button's cap.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence

import mujoco
import numpy as np

from lifelong_ros.sim.episodes import Episode, expert_episodes, record_episode, success_rate
from lifelong_ros.sim.humanoid import tasks as T
from lifelong_ros.sim.humanoid.scene import (
    BUTTON_TYPES,
    COMMANDED_JOINTS,
    OBJECT_TYPES,
    PARK_XY,
    SUBSTEPS,
    TABLE_TOP_Z,
    Indices,
    g1_model,
    home_pose,
)

N_JOINTS = len(COMMANDED_JOINTS)
OBS_DIM = 2 * N_JOINTS + 3 + 4 + 3 + 3 + 3
OBJECT_AT, TARGET_AT, HAND_AT = 2 * N_JOINTS, 2 * N_JOINTS + 7, 2 * N_JOINTS + 13  # positions in the observation
# The relative positions a new policy is given beside the observation (PolicyConfig.differences):
# the hand seen from the object, the target seen from the object. Without them an MLP has to learn
# forward kinematics and the subtraction from 50 demonstrations: place's behaviour cloning reached
# 0.30-0.55 with the hand's position alone, 0.80-0.875 with both (bench/humanoid_bc.py, README).
INPUT_DIFFERENCES = ((HAND_AT, OBJECT_AT, 3), (TARGET_AT, OBJECT_AT, 3))
ACT_DIM = N_JOINTS
ACTION_LOW = -1.0
ACTION_HIGH = 1.0


# The robot's own observation scale (``observation_scale``), per part of the observation: what a
# policy network normalises its input by, the same for every task, so that no task's observations
# fall far outside the range a first task happened to cover.
JOINT_VELOCITY_SCALE = 1.0  # rad/s
OBJECT_CENTRE = (0.38, -0.15, TABLE_TOP_Z + 0.05)  # middle of the task area, a little above the table (m)
OBJECT_SPREAD = (0.06, 0.06, 0.05)  # objects and targets stay within about 2 of these of the centre
QUATERNION_SPREAD = 0.2  # yaw within +-0.5 rad: the quaternion's z within +-0.25 of (1, 0, 0, 0)
SIZE_CENTRE, SIZE_SPREAD = 0.03, 0.01  # object half extents 0.012 - 0.045 m


def available_tasks() -> list[str]:
    return T.available_tasks()


def observation_scale() -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) [OBS_DIM] float32 of the observation, from the robot and the scene, not from data:
    joint positions centred on their command range with a quarter of its width as the std, joint
    velocities at JOINT_VELOCITY_SCALE, object, target and hand positions around the task area."""
    ix = Indices.of(g1_model())
    mean = np.concatenate(
        [
            (ix.low + ix.high) / 2,
            np.zeros(N_JOINTS),
            OBJECT_CENTRE,
            (1.0, 0.0, 0.0, 0.0),
            OBJECT_CENTRE,
            [SIZE_CENTRE] * 3,
            OBJECT_CENTRE,
        ]
    )
    std = np.concatenate(
        [
            (ix.high - ix.low) / 4,
            np.full(N_JOINTS, JOINT_VELOCITY_SCALE),
            OBJECT_SPREAD,
            [QUATERNION_SPREAD] * 4,
            OBJECT_SPREAD,
            [SIZE_SPREAD] * 3,
            OBJECT_SPREAD,
        ]
    )
    return mean.astype(np.float32), std.astype(np.float32)


def action_prior() -> tuple[np.ndarray, np.ndarray]:
    """(gain, bias) [ACT_DIM] float32 with ``gain * obs[:ACT_DIM] + bias`` the action that holds the
    commanded joints where they are (``Indices.to_action`` of their positions, unclipped): the prior a
    residual policy predicts its change to (learning.model.PolicyConfig.residual)."""
    ix = Indices.of(g1_model())
    gain = 2.0 / (ix.high - ix.low)
    return gain.astype(np.float32), (-ix.low * gain - 1.0).astype(np.float32)


class G1Sim:
    """One G1 table-top task; ``reset(seed)`` picks the variation deterministically."""

    def __init__(self, task: str, steps_after_success: int = 10, max_steps: int | None = None):
        self.spec = T.check_task(task)
        if steps_after_success < 0 or (max_steps is not None and max_steps < 1):
            raise ValueError(
                f"need steps_after_success >= 0 and max_steps >= 1, got {steps_after_success}, {max_steps}"
            )
        self.env_name = task
        self.steps_after_success = steps_after_success
        self.max_steps = self.spec.max_steps if max_steps is None else min(max_steps, 500)
        self.model = copy.copy(g1_model())  # its own: reset() switches the unused objects off
        self.data = mujoco.MjData(self.model)
        self.ix = Indices.of(self.model)
        self.variation: T.Variation | None = None
        self.t = 0
        self.episode = 0  # counts resets; experts use it to notice a new episode
        self._success_at: int | None = None
        self._home = home_pose()  # the start pose (scene.home_pose)
        m = self.model
        self._obj = {k: (m.body(f"object_{k}").id, m.joint(f"object_{k}_joint").id) for k in OBJECT_TYPES}
        self._obj_geom = {k: m.geom(f"object_{k}_geom").id for k in OBJECT_TYPES}
        self._btn = {
            k: (m.body(f"button_{k}").mocapid[0], m.body(f"button_{k}_cap").id, m.joint(f"button_{k}_joint").id)
            for k in BUTTON_TYPES
        }
        self._btn_geom = {k: m.geom(f"button_{k}_geom").id for k in BUTTON_TYPES}
        self._target_mocap = m.body("target").mocapid[0]

    # -- episodes ---------------------------------------------------------------------------------
    def reset(self, seed: int, placement: T.Variation | None = None) -> np.ndarray:
        """Start an episode of variation ``seed`` (or of the explicit ``placement``); first observation."""
        var = T.sample(self.spec, int(seed)) if placement is None else placement
        var.check(self.spec)
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        d.qpos[:] = self._home
        d.ctrl[:] = [self._home[m.jnt_qposadr[m.actuator_trnid[a, 0]]] for a in range(m.nu)]
        for i, (k, (_, jnt)) in enumerate(self._obj.items()):  # every object waits behind the robot...
            adr = m.jnt_qposadr[jnt]
            d.qpos[adr : adr + 7] = [PARK_XY[0] - 0.2 * i, PARK_XY[1], OBJECT_TYPES[k][2], 1.0, 0.0, 0.0, 0.0]
        for i, (mocap, _, _) in enumerate(self._btn.values()):
            d.mocap_pos[mocap] = [PARK_XY[0] - 0.2 * i, PARK_XY[1] + 0.5, 0.0]
        for k, (body, _) in self._obj.items():  # parked objects float, untouchable, until used
            used = not self.spec.uses_button and k == var.kind
            m.geom_contype[self._obj_geom[k]] = m.geom_conaffinity[self._obj_geom[k]] = int(used)
            m.body_gravcomp[body] = 0.0 if used else 1.0
        for k in self._btn:
            used = self.spec.uses_button and k == var.kind
            m.geom_contype[self._btn_geom[k]] = m.geom_conaffinity[self._btn_geom[k]] = int(used)
        if self.spec.uses_button:  # ... except the one this variation uses
            d.mocap_pos[self._btn[var.kind][0]] = [var.x, var.y, TABLE_TOP_Z]
        else:
            adr = m.jnt_qposadr[self._obj[var.kind][1]]
            half = np.array([math.cos(var.yaw / 2), 0.0, 0.0, math.sin(var.yaw / 2)])
            d.qpos[adr : adr + 7] = [var.x, var.y, TABLE_TOP_Z + OBJECT_TYPES[var.kind][2] + 0.0005, *half]
        d.mocap_pos[self._target_mocap] = var.target if self.spec.name in ("g1-place", "g1-push") else (*PARK_XY, -1.0)
        mujoco.mj_forward(m, d)
        for _ in range(SUBSTEPS):  # let the object settle on the table
            mujoco.mj_step(m, d)
        self.variation = var
        self._rest_z = float(self._object_pos()[2])
        self.t = 0
        self.episode += 1
        self._success_at = None
        return self.observation()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, dict]:
        """Apply ``action`` (clipped to [-1, 1]); ``done`` once max_steps or success + grace elapsed."""
        if self.variation is None:
            raise RuntimeError("step() before reset(): call reset(seed) first")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (ACT_DIM,) or not np.isfinite(a).all():
            raise ValueError(f"action {a.tolist()} is invalid; expected {ACT_DIM} finite values in [-1, 1]")
        self.data.ctrl[self.ix.ctrl] = self.ix.to_target(a)
        for _ in range(SUBSTEPS):
            mujoco.mj_step(self.model, self.data)
        self.t += 1
        state = self.state()
        if self._success_at is None and T.success(self.spec, state):
            self._success_at = self.t
        ok = self._success_at is not None
        done = self.t >= self.max_steps or (ok and self.t - self._success_at >= self.steps_after_success)  # type: ignore[operator]
        return self.observation(), T.reward(self.spec, state), done, {"success": ok}

    # -- what the robot and the task see ----------------------------------------------------------
    def _object_body(self) -> int:
        assert self.variation is not None
        if self.spec.uses_button:
            return self._btn[self.variation.kind][1]
        return self._obj[self.variation.kind][0]

    def _object_geom(self) -> int:
        assert self.variation is not None
        kind = self.variation.kind
        return self._btn_geom[kind] if self.spec.uses_button else self._obj_geom[kind]

    def _object_pos(self) -> np.ndarray:
        return self.data.xpos[self._object_body()].copy()

    def object_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """The object's (or button cap's) position and quaternion (w, x, y, z; w >= 0)."""
        b = self._object_body()
        quat = self.data.xquat[b].copy()
        return self.data.xpos[b].copy(), quat if quat[0] >= 0 else -quat

    def grasp_point(self) -> np.ndarray:
        return self.data.site_xpos[self.ix.site].copy()

    def touching(self) -> bool:
        geom, hand = self._object_geom(), self.ix.robot_geoms
        d = self.data
        for c in d.contact[: d.ncon]:
            if (c.geom1 == geom and c.geom2 in hand) or (c.geom2 == geom and c.geom1 in hand):
                return True
        return False

    def state(self) -> T.State:
        assert self.variation is not None
        press = 0.0
        if self.spec.uses_button:
            press = -float(self.data.qpos[self.model.jnt_qposadr[self._btn[self.variation.kind][2]]])
        return T.State(
            object_pos=self._object_pos(),
            rest_z=self._rest_z,
            target=np.asarray(self.variation.target),
            grasp_point=self.grasp_point(),
            touching=self.touching(),
            press=press,
        )

    def joint_positions(self) -> np.ndarray:
        return self.data.qpos[self.ix.qpos].copy()

    def observation(self) -> np.ndarray:
        assert self.variation is not None
        pos, quat = self.object_pose()
        return np.concatenate(
            [
                self.data.qpos[self.ix.qpos],
                self.data.qvel[self.ix.qvel],
                pos,
                quat,
                self.variation.target,
                T.half_extents(self.variation.kind),
                self.grasp_point(),
            ]
        ).astype(np.float32)

    # -- experts and episodes ---------------------------------------------------------------------
    def expert(self) -> Callable[[np.ndarray], np.ndarray]:
        """The scripted expert for this task (inverse kinematics + a grasp sequence)."""
        from lifelong_ros.sim.humanoid.experts import ScriptedExpert

        return ScriptedExpert(self)

    def run_episode(
        self,
        policy: Callable[[np.ndarray], np.ndarray],
        seed: int,
        placement: T.Variation | None = None,
        noise: float = 0.0,
        *,
        label: Callable[[np.ndarray], np.ndarray] | None = None,
        takeover_after: int | None = None,
    ) -> Episode:
        """One episode of variation ``seed``. ``noise`` > 0: Gaussian noise of that standard deviation
        is added to every action before it is executed, and the policy's own (noise-free) action is
        recorded (DART: demonstrations that show how the expert recovers from small deviations).
        ``label`` (the scripted expert): each step records ``label``'s action (DAgger corrections), and
        with ``takeover_after`` it drives once the policy stalls (see record_episode)."""
        return record_episode(
            self, policy, seed, (ACTION_LOW, ACTION_HIGH, ACT_DIM), placement, noise, label, takeover_after
        )

    def close(self) -> None:
        """Nothing to release (the compiled model is shared); for parity with MetaWorldSim."""


def collect_demonstrations(
    task: str,
    seeds: Iterable[int],
    steps_after_success: int = 10,
    max_steps: int | None = None,
    only_successful: bool = True,
    sim: G1Sim | None = None,
    progress: bool = False,
    noise: float = 0.0,
) -> list[Episode]:
    """Expert episodes for each seed (failed expert episodes dropped unless ``only_successful`` is False);
    ``noise``: see ``G1Sim.run_episode``."""
    return expert_episodes(
        sim or G1Sim(task, steps_after_success, max_steps), seeds, only_successful, progress, noise=noise
    )


def evaluate(
    policy: Callable[[np.ndarray], np.ndarray],
    task: str,
    seeds: Sequence[int],
    steps_after_success: int = 0,
    max_steps: int | None = None,
    sim: G1Sim | None = None,
) -> float:
    """Closed-loop success rate of ``policy`` over the variations ``seeds``."""
    return success_rate(sim or G1Sim(task, steps_after_success, max_steps), policy, seeds)
