"""Inverse kinematics by damped least squares on MuJoCo's site Jacobian.

Solves for joint positions that put a site at a desired position and orientation, moving only
the chosen joints (here the waist and the right arm), with a posture term in the Jacobian's null
space that keeps the redundant degrees of freedom near a comfortable pose. Runs on its own
``MjData`` (kinematics only), so it never disturbs the simulation it plans for.
"""

from __future__ import annotations

import mujoco
import numpy as np


def orientation_error(current: np.ndarray, desired: np.ndarray) -> np.ndarray:
    """Rotation vector (world frame, rad) that turns ``current`` into ``desired`` (3×3 matrices)."""
    q_cur, q_des, q_err = np.empty(4), np.empty(4), np.empty(4)
    mujoco.mju_mat2Quat(q_cur, current.reshape(9))
    mujoco.mju_mat2Quat(q_des, desired.reshape(9))
    neg = np.empty(4)
    mujoco.mju_negQuat(neg, q_cur)
    mujoco.mju_mulQuat(q_err, q_des, neg)
    vel = np.empty(3)
    mujoco.mju_quat2Vel(vel, q_err, 1.0)
    return vel


class DampedLeastSquaresIK:
    """Position + orientation IK for one site over a subset of (hinge/slide) joints.

    ``limits`` (low, high) bound the solution (default: the joints' ranges); ``cost`` weights the
    joints (dq = W⁻¹Jᵀ(JW⁻¹Jᵀ + λ²I)⁻¹e), so costly joints (the waist) move only where they must.
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        site: int,
        joints: list[int],
        posture: np.ndarray,
        damping: float = 0.05,
        rotation_weight: float = 0.5,
        posture_gain: float = 0.05,
        limits: tuple[np.ndarray, np.ndarray] | None = None,
        cost: np.ndarray | None = None,
    ):
        self.model = model
        self.data = mujoco.MjData(model)
        self.site = site
        self.qpos = np.array([model.jnt_qposadr[j] for j in joints])
        self.dofs = np.array([model.jnt_dofadr[j] for j in joints])
        self.low = model.jnt_range[joints, 0].copy() if limits is None else np.asarray(limits[0], dtype=np.float64)
        self.high = model.jnt_range[joints, 1].copy() if limits is None else np.asarray(limits[1], dtype=np.float64)
        # Weighted least squares: a joint with cost c moves 1/c as readily (e.g. the waist vs the arm).
        self.inv_cost = 1.0 / (np.ones(len(joints)) if cost is None else np.asarray(cost, dtype=np.float64))
        self.posture = np.asarray(posture, dtype=np.float64)
        self.damping = damping
        self.rotation_weight = rotation_weight
        self.posture_gain = posture_gain
        self._jp = np.zeros((3, model.nv))
        self._jr = np.zeros((3, model.nv))

    def forward(self, qpos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Site position and rotation matrix at the full configuration ``qpos``."""
        self.data.qpos[:] = qpos
        mujoco.mj_kinematics(self.model, self.data)
        return self.data.site_xpos[self.site].copy(), self.data.site_xmat[self.site].reshape(3, 3).copy()

    def solve(
        self,
        qpos: np.ndarray,
        pos: np.ndarray,
        rot: np.ndarray | None,
        iterations: int = 20,
        tolerance: float = 1e-4,
    ) -> np.ndarray:
        """Joint values (for ``joints``) reaching ``pos``/``rot`` from the full configuration ``qpos``."""
        m, d = self.model, self.data
        d.qpos[:] = qpos
        q = d.qpos[self.qpos].copy()
        n = len(q)
        for _ in range(iterations):
            d.qpos[self.qpos] = q
            mujoco.mj_kinematics(m, d)
            mujoco.mj_comPos(m, d)
            err_p = pos - d.site_xpos[self.site]
            mujoco.mj_jacSite(m, d, self._jp, self._jr, self.site)
            if rot is None:
                jac, err = self._jp[:, self.dofs], err_p
            else:
                err_r = orientation_error(d.site_xmat[self.site], rot) * self.rotation_weight
                jac = np.vstack([self._jp[:, self.dofs], self._jr[:, self.dofs] * self.rotation_weight])
                err = np.concatenate([err_p, err_r])
            if np.linalg.norm(err) < tolerance:
                break
            jw = jac * self.inv_cost  # J W^-1
            jpinv = jw.T @ np.linalg.inv(jw @ jac.T + (self.damping**2) * np.eye(len(err)))
            dq = jpinv @ err + (np.eye(n) - jpinv @ jac) @ (self.posture_gain * (self.posture - q))
            step = np.abs(dq).max()
            if step > 0.2:  # at most 0.2 rad per iteration: the linearisation holds
                dq *= 0.2 / step
            q = np.clip(q + dq, self.low, self.high)
        return q
