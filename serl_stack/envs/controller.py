"""Operational-space (cartesian impedance) controller that tracks a target TCP pose in MuJoCo.

Owns: `OpSpaceController`, which turns a target pose (position + quaternion wxyz, base frame) into arm joint
torques every physics step:

    tau = J^T Lambda (kp e - kd v) + qfrc_bias + N^T (kp_null (q_ready - q) - kd_null qdot)

with Lambda = (J M^-1 J^T)^-1 the task-space inertia (so the gains give unit-mass, gain-independent dynamics:
kd = 2 zeta sqrt(kp)), qfrc_bias the gravity + Coriolis compensation, and N^T the dynamically consistent
null-space projector that keeps the posture term from disturbing the TCP. The pose error is clipped like
the real CRISP controller clips it, and the torques are clipped to the arm's limits. Because kp acts through
Lambda, the stiffness a contact feels along an axis is Lambda's row times kp (`task_wrench` gives that force);
`set_gain_scale` rescales the stiffnesses for domain randomization.

It must be called between `mj_step1` (which computes kinematics, the inertia matrix and its factorisation
for the current state) and `mj_step2`; `step` does exactly that. Arrays are preallocated because it runs
500 times per second of sim time.
"""

from __future__ import annotations

import math

import mujoco
import numpy as np

from serl_stack.config import ControllerConfig, check_section
from serl_stack.envs.panda import ArmSpec


def quat_canonical(q: np.ndarray) -> np.ndarray:
    """The same rotation with w >= 0 (the observation contract's hemisphere)."""
    return -q if q[0] < 0 else q


def vec_norm(v: np.ndarray) -> np.floating:
    """`np.linalg.norm` of a 1-D vector, bit for bit (it computes sqrt(v . v) too), without its ~3 us of argument
    handling: the command path of every control step calls it several times."""
    return np.sqrt(v.dot(v))


def quat_from_rotvec(rv: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle) -> quaternion wxyz."""
    angle = float(vec_norm(rv))
    if angle < 1e-12:
        return np.array([1.0, 0.0, 0.0, 0.0])
    return np.concatenate(([np.cos(angle / 2)], np.sin(angle / 2) * rv / angle))


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b (apply b, then a)."""
    out = np.empty(4)
    mujoco.mju_mulQuat(out, a, b)
    return out


def quat_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Rotation vector in the base frame that turns `current` into `target` (shortest way round)."""
    local = np.empty(3)
    mujoco.mju_subQuat(local, target, current)  # current * quat(local) = target, `local` in current's frame
    out = np.empty(3)
    mujoco.mju_rotVecQuat(out, local, current)
    return out


def rotvec_angle(target: np.ndarray, current: np.ndarray) -> float:
    """Angle (radians) between two orientations."""
    return float(vec_norm(quat_error(target, current)))


class OpSpaceController:
    """Cartesian impedance control of the `site` pose via the 7 arm joints (dofs 0..6 of the model)."""

    def __init__(self, model: mujoco.MjModel, spec: ArmSpec, config: ControllerConfig, site: str = "tcp") -> None:
        check_section(config)  # the ranges declared in config.py; the bound below depends on the arm
        half_range = float(np.min(spec.q_max - spec.q_min)) / 2
        if config.joint_limit_margin >= half_range:
            raise ValueError(
                f"env.controller.joint_limit_margin: got {config.joint_limit_margin}, expected < {half_range:.3f} "
                "rad (half the narrowest joint range)"
            )
        self.model = model
        self.cfg = config
        self.n = len(spec.joints)
        self.site_id = model.site(site).id
        self._kp_nominal = np.array([config.kp_pos] * 3 + [config.kp_rot] * 3)
        self.kp = self._kp_nominal.copy()
        self.kd = 2.0 * config.damping_ratio * np.sqrt(self.kp)
        self.gain_scale = 1.0
        """Factor on the configured stiffnesses (domain randomization); see `set_gain_scale`."""
        self.kd_null = 2.0 * config.damping_ratio * np.sqrt(config.kp_null)
        self.q_ready = spec.ready.copy()
        self.tau_max = spec.max_torque.copy()
        self._lim_lo = spec.q_min + config.joint_limit_margin
        self._lim_hi = spec.q_max - config.joint_limit_margin
        # Damping of the limit spring, critical for ~0.1 kg m^2 of joint inertia.
        self._lim_kd = 2.0 * np.sqrt(config.joint_limit_stiffness * 0.1)
        nv = model.nv
        self._jac = np.zeros((6, nv))
        self._minv_jt = np.zeros((6, nv))
        self._quat = np.zeros(4)
        self._err = np.zeros(6)
        self._local = np.zeros(3)
        self._tau0 = np.zeros(nv)
        self._y = np.zeros(6)
        self._depth = np.zeros(self.n)
        self.target_pos = np.zeros(3)
        self.target_quat = np.array([1.0, 0.0, 0.0, 0.0])
        self.last_tau = np.zeros(self.n)

    def set_target(self, pos: np.ndarray, quat: np.ndarray) -> None:
        """Track this pose from now on (base frame, quaternion wxyz; normalised here)."""
        self.target_pos[:] = pos
        self.target_quat[:] = np.asarray(quat) / np.linalg.norm(quat)

    def set_gain_scale(self, scale: float) -> None:
        """Scale the configured stiffnesses (kp_pos, kp_rot) by `scale`; damping follows the damping ratio.

        Always relative to the configured gains, so repeated calls (one per reset) never compound. The
        null-space and joint-limit gains are left alone: they shape the posture, not the task-space impedance.
        """
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"OpSpaceController.set_gain_scale: expected a finite scale > 0, got {scale!r}")
        self.gain_scale = float(scale)
        np.multiply(self._kp_nominal, scale, out=self.kp)
        self.kd[:] = 2.0 * self.cfg.damping_ratio * np.sqrt(self.kp)

    def _pose_error(self, data: mujoco.MjData) -> np.ndarray:
        """Fill and return `self._err`: the clipped (target - current) pose error, position then rotation vector."""
        sid, err = self.site_id, self._err
        np.subtract(self.target_pos, data.site_xpos[sid], out=err[:3])
        mujoco.mju_mat2Quat(self._quat, data.site_xmat[sid])
        mujoco.mju_subQuat(self._local, self.target_quat, self._quat)  # in the current TCP frame
        mujoco.mju_rotVecQuat(err[3:], self._local, self._quat)
        # Clip like the real controller does: a far target must not become a huge force.
        e = err.tolist()
        pos_norm, rot_norm = math.hypot(e[0], e[1], e[2]), math.hypot(e[3], e[4], e[5])
        if pos_norm > self.cfg.max_pos_error:
            err[:3] *= self.cfg.max_pos_error / pos_norm
        if rot_norm > self.cfg.max_rot_error:
            err[3:] *= self.cfg.max_rot_error / rot_norm
        return err

    def pose_error(self, data: mujoco.MjData) -> np.ndarray:
        """The pose error (6,) the gains act on: target minus current (m, then a base-frame rotation vector in
        rad), each half clipped to max_pos_error / max_rot_error. Needs the kinematics of `data`."""
        return self._pose_error(data).copy()

    def task_wrench(self, data: mujoco.MjData) -> np.ndarray:
        """The impedance wrench (6,) `Lambda (kp e - kd v)` at the site, base frame (N, then N m).

        This is the part of `compute`'s torque that acts in task space (gravity compensation and the null-space
        posture term excluded). At rest against a contact it is what the contact must push back with, so the
        effective stiffness along an axis is Lambda's row for it times kp, not kp alone. Needs the kinematics
        and the factorised inertia of `data` (after `mj_forward` or `mj_step1`).
        """
        lam = self.task_inertia(data)  # also leaves the site Jacobian of `data` in self._jac
        return lam @ (self.kp * self._pose_error(data) - self.kd * (self._jac @ data.qvel))

    def task_inertia(self, data: mujoco.MjData) -> np.ndarray:
        """Lambda = (J M^-1 J^T)^-1 (6, 6) at the site: the arm's apparent mass (kg) / inertia (kg m^2) there.
        Needs the kinematics and the factorised inertia of `data`."""
        m, jac, minv_jt = self.model, self._jac, self._minv_jt
        mujoco.mj_jacSite(m, data, jac[:3], jac[3:], self.site_id)
        mujoco.mj_solveM(m, data, minv_jt, jac)
        return np.linalg.inv(jac @ minv_jt.T)

    def compute(self, data: mujoco.MjData) -> np.ndarray:
        """Joint torques (n,) for the state in `data`; needs kinematics and the factorised M of that state."""
        m, n, sid = self.model, self.n, self.site_id
        jac, minv_jt = self._jac, self._minv_jt
        mujoco.mj_jacSite(m, data, jac[:3], jac[3:], sid)
        err = self._pose_error(data)

        qvel = data.qvel
        tau0 = self._tau0
        tau0[:n] = self.cfg.kp_null * (self.q_ready - data.qpos[:n]) - self.kd_null * qvel[:n]
        mujoco.mj_solveM(m, data, minv_jt, jac)  # rows of M^-1 J^T
        # One solve serves both terms: J^T Lambda (f - J M^-1 tau0) + tau0 is the task force plus the
        # dynamically consistent null-space projection (I - J^T Lambda J M^-1) tau0 of the posture torque.
        rhs = self.kp * err - self.kd * (jac @ qvel) - minv_jt @ tau0
        chol = jac @ minv_jt.T  # Lambda^-1 = J M^-1 J^T
        # mindiag floors tiny pivots, which keeps Lambda bounded near singular configurations.
        mujoco.mju_cholFactor(chol, 1e-8)
        mujoco.mju_cholSolve(self._y, chol, rhs)
        out = (jac.T @ self._y)[:n]
        out += tau0[:n]
        out += data.qfrc_bias[:n]
        out += self._limit_torque(data.qpos[:n], qvel[:n])
        np.clip(out, -self.tau_max, self.tau_max, out=out)
        self.last_tau = out
        return out

    def _limit_torque(self, q: np.ndarray, qdot: np.ndarray) -> np.ndarray | float:
        """Spring-damper that pushes each joint out of the last `joint_limit_margin` before its limit.

        Applied in full joint space (not projected), so near a limit the arm gives up tracking rather than
        pressing into the stop — the sim stand-in for the real robot's joint-limit reflex.
        """
        depth = np.clip(q, self._lim_lo, self._lim_hi, out=self._depth)
        depth -= q  # > 0 inside the lower zone, < 0 inside the upper zone, 0 elsewhere
        if not depth.any():  # the common case: skip the rest
            return 0.0
        return self.cfg.joint_limit_stiffness * depth - (depth != 0) * self._lim_kd * qdot

    def step(self, data: mujoco.MjData, n_steps: int = 1) -> None:
        """Advance the physics `n_steps`, recomputing the torques at every step from the fresh state."""
        m, n = self.model, self.n
        for _ in range(n_steps):
            mujoco.mj_step1(m, data)
            data.ctrl[:n] = self.compute(data)
            mujoco.mj_step2(m, data)
