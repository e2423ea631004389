"""The operational-space controller reaches and holds target TCP poses in the MuJoCo Panda."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from serl_stack.config import ControllerConfig
from serl_stack.envs.controller import OpSpaceController, quat_from_rotvec, quat_mul, rotvec_angle
from serl_stack.envs.panda import PANDA, dh_fk, load_model
from serl_stack.envs.reach import FrankaReachEnv

SIM_STEPS_2S = 1000  # 2 s at the 2 ms physics step


def _ready(model: mujoco.MjModel, data: mujoco.MjData) -> None:
    mujoco.mj_resetData(model, data)
    data.qpos[:7] = PANDA.ready
    data.qpos[7:9] = PANDA.finger_stroke
    data.ctrl[7] = 2 * PANDA.finger_stroke
    mujoco.mj_forward(model, data)


def _errors(ctrl: OpSpaceController, data: mujoco.MjData, pos: np.ndarray, quat: np.ndarray) -> tuple[float, float]:
    now = np.empty(4)
    mujoco.mju_mat2Quat(now, data.site_xmat[ctrl.site_id])
    return float(np.linalg.norm(data.site_xpos[ctrl.site_id] - pos)), rotvec_angle(quat, now)


def test_twenty_random_targets_are_reached_within_two_seconds() -> None:
    # Targets are drawn from the env's workspace box and orientation cone and passed through all of the env's
    # command limits (`allowed_pose`: box, cone, reach shell, tilt-aware floor), i.e. exactly the poses a policy
    # can command.
    env = FrankaReachEnv()
    model, data, ctrl = env.model, env.data, env.controller
    start_pos, start_quat = dh_fk(PANDA.ready)
    rng = np.random.default_rng(1234)
    times, finals = [], []
    while len(times) < 20:
        rv = rng.normal(size=3)
        rv *= rng.uniform(0, env.cfg.orientation_cone) / np.linalg.norm(rv)
        pos, quat = env.allowed_pose(
            rng.uniform(env.workspace_low, env.workspace_high), quat_mul(quat_from_rotvec(rv), env.nominal_quat)
        )
        if np.linalg.norm(pos - start_pos) < 0.10:
            continue
        _ready(model, data)
        ctrl.set_target(pos, quat)
        reached_at = None
        for i in range(SIM_STEPS_2S):
            ctrl.step(data)
            e_pos, e_rot = _errors(ctrl, data, pos, quat)
            inside = e_pos <= 0.01 and e_rot <= np.radians(3)
            reached_at = (reached_at or (i + 1) * 0.002) if inside else None
        assert reached_at is not None, (
            f"target {pos.round(3)} (rot {np.degrees(np.linalg.norm(rv)):.1f} deg) not held after 2 s: "
            f"{e_pos * 1e3:.1f} mm, {np.degrees(e_rot):.2f} deg"
        )
        times.append(reached_at)
        finals.append((e_pos, e_rot))
    print(
        f"\ncontroller: 20 targets reached (<=1 cm, <=3 deg, held to 2 s) after "
        f"mean {np.mean(times):.3f} s, max {np.max(times):.3f} s; final error max "
        f"{max(f[0] for f in finals) * 1e3:.2f} mm, {np.degrees(max(f[1] for f in finals)):.3f} deg"
    )


def test_holds_the_ready_pose_without_drift() -> None:
    model = load_model()
    data = mujoco.MjData(model)
    _ready(model, data)
    ctrl = OpSpaceController(model, PANDA, ControllerConfig())
    pos, quat = dh_fk(PANDA.ready)
    ctrl.set_target(pos, quat)
    ctrl.step(data, 1000)
    e_pos, e_rot = _errors(ctrl, data, pos, quat)
    assert e_pos < 1e-4 and e_rot < 1e-3
    np.testing.assert_allclose(data.qpos[:7], PANDA.ready, atol=1e-3)


def test_torques_stay_within_the_joint_limits_for_a_far_target() -> None:
    model = load_model()
    data = mujoco.MjData(model)
    _ready(model, data)
    # Stiff gains and a far target saturate the task force; the output must still respect the torque limits.
    ctrl = OpSpaceController(model, PANDA, ControllerConfig(kp_pos=5000.0, max_pos_error=1.0))
    ctrl.set_target(np.array([0.6, 0.3, 0.1]), dh_fk(PANDA.ready)[1])
    mujoco.mj_step1(model, data)
    tau = ctrl.compute(data)
    assert np.any(np.abs(tau) == PANDA.max_torque)
    assert np.all(np.abs(tau) <= PANDA.max_torque)


def test_controller_config_errors_name_the_field() -> None:
    model = load_model()
    with pytest.raises(ValueError, match=r"env\.controller\.kp_pos: got 0\.0, expected a finite value > 0"):
        OpSpaceController(model, PANDA, ControllerConfig(kp_pos=0.0))
    with pytest.raises(ValueError, match=r"env\.controller\.joint_limit_margin: got -1\.0, expected"):
        OpSpaceController(model, PANDA, ControllerConfig(joint_limit_margin=-1.0))
    with pytest.raises(ValueError, match=r"env\.controller\.joint_limit_margin: got 2\.0, expected < 1\.5"):
        OpSpaceController(model, PANDA, ControllerConfig(joint_limit_margin=2.0))
