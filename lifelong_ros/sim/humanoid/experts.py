"""Scripted experts for the G1 tasks: waypoints for the hand, inverse kinematics, a grasp sequence.

Every expert keeps the right hand in one orientation per episode (palm facing left, fingers
forward, turned about the vertical to the object's yaw), moves the hand's grasp point through a
task's waypoints in straight lines at a bounded speed, solves damped-least-squares IK for the
waist and arm at each control step, and opens or closes the hand between waypoints. It reads the
simulator's state (object pose, its own commands), as a scripted expert may; a learned policy
gets only the observation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import mujoco
import numpy as np

from lifelong_ros.sim.humanoid import tasks as T
from lifelong_ros.sim.humanoid.scene import (
    ARM_JOINTS,
    CONTROL_HZ,
    HAND_OPEN,
    TABLE_TOP_Z,
    WAIST_JOINTS,
    Indices,
    ik_solver,
    yaw_rotation,
)


class Sim(Protocol):
    """What an expert reads from the simulator it drives (G1Sim)."""

    model: mujoco.MjModel
    data: mujoco.MjData
    ix: Indices
    spec: T.TaskSpec
    variation: T.Variation | None
    episode: int
    t: int

    def joint_positions(self) -> np.ndarray: ...

    def grasp_point(self) -> np.ndarray: ...

    def object_pose(self) -> tuple[np.ndarray, np.ndarray]: ...


N_BODY = len(WAIST_JOINTS) + len(ARM_JOINTS)
HAND_FLAT = np.array([0.0, 0.72, 0.0, 0.0, 0.0, 0.0, 0.0])  # thumb folded back as far as it goes
HAND_CLOSED = np.array([0.0, -0.9, -1.7, 1.5, 1.7, 1.5, 1.7])  # beyond contact: the grip saturates
PALM_OFFSET = 0.028  # the grasp point is this far in front of the palm surface
GRASP_X = 0.0  # the grasp point's offset along the fingers from the object centre
PALM_TO_BOTTOM = 0.044  # the palm's lower edge below the grasp point (hand frame z)
PALM_CENTRE_Y = 0.049  # palm centre behind the grasp point (hand frame y)
SAG_GAIN = 0.2  # integral gain of the sag correction (per control step)


@dataclass
class Waypoint:
    goal: Callable[[], np.ndarray]  # where the grasp point goes (re-evaluated every step)
    hand: np.ndarray  # hand joint targets held while moving there
    speed: float = 0.4  # m/s
    min_steps: int = 0  # stay at least this long (e.g. for the grip to close)


def _wrap(angle: float, period: float) -> float:
    """``angle`` folded into [-period/2, period/2)."""
    return (angle + period / 2) % period - period / 2


class ScriptedExpert:
    """Callable ``obs -> action`` for one G1Sim; restarts its script whenever the sim resets."""

    def __init__(self, sim: Sim):
        self.sim = sim
        self.ik = ik_solver(sim.model)  # never commands beyond the command range
        self._episode = -1
        self.dt = 1.0 / CONTROL_HZ

    # -- geometry of the variation ----------------------------------------------------------------
    def _start(self) -> None:
        sim = self.sim
        var = sim.variation
        assert var is not None
        self._episode = sim.episode
        self.q = sim.joint_positions()[:N_BODY]
        self.hand = sim.joint_positions()[N_BODY:]
        self.point = sim.grasp_point()
        self.k = 0
        self.index = 0
        self.bias = np.zeros(3)  # integral of the grasp point's tracking error (sag under load)
        kind = var.kind
        if kind == "cylinder" or sim.spec.uses_button:
            yaw = 0.0
        elif kind == "cube":
            yaw = _wrap(var.yaw, math.pi / 2)
        else:
            yaw = _wrap(var.yaw, math.pi)
        if sim.spec.name == "g1-push":
            u = np.subtract(var.target[:2], (var.x, var.y))
            yaw = math.atan2(u[1], u[0]) - math.pi / 2  # the palm faces the push direction
        self.yaw = yaw
        self.rot = yaw_rotation(yaw)
        self.plan = getattr(self, "_plan_" + sim.spec.name.removeprefix("g1-"))()

    def _side(self) -> np.ndarray:
        """Unit vector of the palm's normal (hand y) in the world."""
        return self.rot[:, 1]

    def _grasp_xy(self, obj: np.ndarray) -> np.ndarray:
        """Where the grasp point goes so that the object sits against the palm, between thumb and fingers."""
        var = self.sim.variation
        assert var is not None
        half = T.half_extents(var.kind)
        # the object's half extent along the palm normal
        rel = self.yaw - var.yaw
        w = abs(math.cos(rel)) * half[1] + abs(math.sin(rel)) * half[0] if var.kind != "cylinder" else half[0]
        return obj[:2] - self._side()[:2] * (w + 0.004 - PALM_OFFSET) + self.rot[:2, 0] * GRASP_X

    def _obj(self) -> np.ndarray:
        return self.sim.object_pose()[0]

    # -- plans --------------------------------------------------------------------------------------
    def _grasp_z(self) -> float:
        var = self.sim.variation
        assert var is not None
        return TABLE_TOP_Z + T.grasp_height(var.kind)

    def _approach_and_grip(self) -> list[Waypoint]:
        z = self._grasp_z()
        xy = self._grasp_xy(self._obj())
        pre = xy - self._side()[:2] * 0.035  # come down beside the object, then move the palm onto it
        return [
            Waypoint(lambda: np.array([*pre, z + 0.10]), HAND_OPEN, speed=0.4),
            Waypoint(lambda: np.array([*pre, z]), HAND_OPEN, speed=0.25),
            Waypoint(lambda: np.array([*xy, z]), HAND_OPEN, speed=0.25),
            Waypoint(lambda: np.array([*xy, z]), HAND_CLOSED, min_steps=12),
        ]

    def _plan_reach(self) -> list[Waypoint]:
        var = self.sim.variation
        assert var is not None
        target = np.asarray(var.target)
        return [Waypoint(lambda: target, HAND_OPEN, speed=0.4), Waypoint(lambda: target, HAND_OPEN, min_steps=50)]

    def _plan_lift(self) -> list[Waypoint]:
        z = self._grasp_z()
        plan = self._approach_and_grip()
        xy = plan[-1].goal()[:2]
        return [*plan, Waypoint(lambda: np.array([*xy, z + 0.15]), HAND_CLOSED, speed=0.2, min_steps=60)]

    def _plan_place(self) -> list[Waypoint]:
        var = self.sim.variation
        assert var is not None
        z = self._grasp_z()
        plan = self._approach_and_grip()
        xy = plan[-1].goal()[:2]
        target = np.asarray(var.target[:2])
        carry = target - (self._obj()[:2] - xy)  # keeps the object's offset from the grasp point
        away = -self._side() * 0.07
        return [
            *plan,
            Waypoint(lambda: np.array([*xy, z + 0.06]), HAND_CLOSED, speed=0.2),
            Waypoint(lambda: np.array([*carry, z + 0.06]), HAND_CLOSED, speed=0.25),
            Waypoint(lambda: np.array([*carry, z + 0.004]), HAND_CLOSED, speed=0.25),
            Waypoint(lambda: np.array([*carry, z + 0.004]), HAND_OPEN, min_steps=10),
            Waypoint(lambda: np.array([carry[0] + away[0], carry[1] + away[1], z + 0.01]), HAND_OPEN, speed=0.2),
            Waypoint(lambda: np.array([carry[0] + away[0], carry[1] + away[1], z + 0.10]), HAND_OPEN, min_steps=40),
        ]

    def _plan_push(self) -> list[Waypoint]:
        var = self.sim.variation
        assert var is not None
        z = self._grasp_z()
        u = self._side()
        obj = self._obj()
        target = np.asarray(var.target[:2])
        half = T.half_extents(var.kind)
        rel = self.yaw - var.yaw
        w = abs(math.cos(rel)) * half[1] + abs(math.sin(rel)) * half[0] if var.kind != "cylinder" else half[0]
        touch = PALM_OFFSET - w  # grasp point relative to the object centre when the palm touches it
        start = obj[:2] + u[:2] * (touch - 0.05)
        end = target + u[:2] * (touch + 0.004)
        back = end - u[:2] * 0.05
        return [
            Waypoint(lambda: np.array([*start, z + 0.10]), HAND_FLAT, speed=0.5),
            Waypoint(lambda: np.array([*start, z]), HAND_FLAT, speed=0.25),
            Waypoint(lambda: np.array([*end, z]), HAND_FLAT, speed=0.25),
            Waypoint(lambda: np.array([*back, z]), HAND_FLAT, speed=0.2, min_steps=40),
        ]

    def _plan_button(self) -> list[Waypoint]:
        cap = self._obj()
        half = T.half_extents(self.sim.variation.kind)  # type: ignore[union-attr]
        xy = cap[:2] + self._side()[:2] * PALM_CENTRE_Y
        top = cap[2] + half[2]
        return [
            Waypoint(lambda: np.array([*xy, top + PALM_TO_BOTTOM + 0.06]), HAND_FLAT, speed=0.5),
            Waypoint(lambda: np.array([*xy, top + PALM_TO_BOTTOM - 0.014]), HAND_FLAT, speed=0.1),
            Waypoint(lambda: np.array([*xy, top + PALM_TO_BOTTOM - 0.014]), HAND_FLAT, min_steps=40),
        ]

    # -- the control step ---------------------------------------------------------------------------
    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if self.sim.episode != self._episode or self.sim.t == 0:
            self._start()
        wp = self.plan[self.index]
        goal = wp.goal()
        delta = goal - self.point
        dist = float(np.linalg.norm(delta))
        stride = wp.speed * self.dt
        self.point = goal.copy() if dist <= stride else self.point + delta * (stride / dist)
        self.hand = self.hand + np.clip(wp.hand - self.hand, -0.15, 0.15)
        self.k += 1
        arrived = dist <= stride and np.abs(wp.hand - self.hand).max() < 1e-6
        if arrived and self.k >= wp.min_steps and self.index < len(self.plan) - 1:
            self.index += 1
            self.k = 0
        # The arm sags under gravity and load: aim past the setpoint by the integrated error.
        self.bias = np.clip(self.bias + SAG_GAIN * (self.point - self.sim.grasp_point()), -0.04, 0.04)
        full = self.sim.data.qpos.copy()
        full[self.sim.ix.qpos[:N_BODY]] = self.q
        self.q = self.ik.solve(full, self.point + self.bias, self.rot, iterations=8)
        return self.sim.ix.to_action(np.concatenate([self.q, self.hand]))
