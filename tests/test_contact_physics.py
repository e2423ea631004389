"""Contact physics of the sim Franka: pressing on the table reads the force the impedance law commands, and the
controller clips its pose error so a far target is no stronger than one `max_pos_error` away."""

from __future__ import annotations

import dataclasses

import mujoco
import numpy as np
import pytest

from serl_stack.config import ControllerConfig, EnvConfig, RandomizationConfig
from serl_stack.envs.controller import OpSpaceController, quat_from_rotvec, quat_mul
from serl_stack.envs.panda import PANDA, TABLE_TOP_Z, load_model
from serl_stack.envs.reach import FrankaReachEnv

# Velocity and wrench are unbounded by nature (contacts); Gymnasium warns about infinite bounds.
pytestmark = pytest.mark.filterwarnings("ignore:.*infinity.*:UserWarning")
PRESS_DEPTH = 0.01
"""How far (m) below the table surface the fingertips are commanded."""
CLOSE = np.array([0, 0, 0, 0, 0, 0, 1.0], np.float32)
"""Hold the commanded pose with the gripper closed."""


def _fingertip_depth(env: FrankaReachEnv) -> float:
    """How far (m) the lowest point of the finger pads is below the TCP (the contact point with the table)."""
    m, d = env.model, env.data
    low = min(
        d.geom_xpos[g][2] - np.abs(d.geom_xmat[g].reshape(3, 3)[2]) @ m.geom_size[g]  # lowest corner of the box
        for g in (m.geom("left_pad").id, m.geom("right_pad").id)
    )
    return float(d.site_xpos[env._tcp][2] - low)


def _hold_until_steady(env: FrankaReachEnv, max_steps: int = 200) -> dict:
    """Step with the command held until the TCP is still and the force has stopped changing."""
    obs, _, _, _, _ = env.step(CLOSE)
    for _ in range(max_steps):
        prev = obs["state"]["tcp_force"].copy()
        obs, _, _, _, _ = env.step(CLOSE)
        still = np.abs(obs["state"]["tcp_vel"]).max() < 1e-3
        if still and np.abs(obs["state"]["tcp_force"] - prev).max() < 2e-3 * max(1.0, np.abs(prev).max()):
            return obs
    raise AssertionError(f"not steady after {max_steps} steps: tcp_vel {obs['state']['tcp_vel']}")


@pytest.mark.parametrize("table_height", [0.0, 0.012])
def test_pressing_into_the_table_reads_the_commanded_impedance_force(table_height: float) -> None:
    """Close the gripper, lower it until the fingertips are 1 cm above the table, then command them 1 cm below the
    surface and hold: the F/T reading (observation, base frame) must match the force the controller pushes with.

    The controller's law is tau = J^T Lambda (kp e - kd v) + gravity + N^T (posture torque), so the stiffness is
    not kp_pos. At rest against the table, joint statics give a contact wrench at the TCP of exactly Lambda kp e
    (the posture torque is cancelled by its dynamically consistent projection N^T), i.e. the z component of
    `task_wrench` at the final state: that is the expected force, checked to 5%. We use it rather than
    Lambda_zz * kp_pos * offset because Lambda couples the axes: at this pose the z press also leaves x and
    rotation errors (the tool tilts ~0.13 rad under ~38 N, printed below), and the off-diagonal terms
    Lambda_zx kp_pos e_x and Lambda_z,ry kp_rot e_ry cancel most of Lambda_zz kp_pos e_z, which alone would
    predict ~112 N for a ~38 N press.

    With `randomization.table_height` the table has moved and the fingertips must find it at `table_top_z`.

    The issue's "stiffness x offset" form is checked too, to 20%, with the scalar effective stiffness along z
    derived in the comment at `k_z` below and the steady z offset of the TCP from its target.
    """
    # The workspace floor would stop the command at the table; lower it for this test. The ~38 N press exceeds the
    # safety filter's default force_limit (30 N), whose back-off would lift the command off the table: this test
    # measures the controller's force, so it raises the limit above the press.
    default = EnvConfig()
    cfg = dataclasses.replace(default, reset_joint_noise=0.0, workspace_low=(0.25, -0.25, -0.05),
                              randomization=RandomizationConfig(table_height=table_height),
                              safety=dataclasses.replace(default.safety, force_limit=100.0))
    env = FrankaReachEnv(cfg)
    env.reset(seed=0)
    assert (env.table_top_z != TABLE_TOP_Z) == (table_height > 0)
    for _ in range(5):
        env.step(CLOSE)
    assert env.gripper_width() < 1e-3
    # The TCP is between the fingertips' bases, not at their ends: the pads reach this far below it.
    tip = _fingertip_depth(env)
    assert 0 < tip < 0.02

    above = env.table_top_z + tip + 0.01
    while abs(env.cmd_pos[2] - above) > 1e-9:
        action = CLOSE.copy()
        action[2] = np.clip((above - env.cmd_pos[2]) / env.cfg.action_scale_pos, -1, 1)
        env.step(action)
    free = _hold_until_steady(env)
    assert np.abs(free["state"]["tcp_force"]).max() < 0.5  # no contact yet: the sensor reads ~nothing

    env.cmd_pos[2] = env.table_top_z + tip - PRESS_DEPTH  # the commanded fingertips 1 cm below the surface
    obs = _hold_until_steady(env)
    measured = float(obs["state"]["tcp_force"][2])

    ctrl, data = env.controller, env.data
    commanded = -float(ctrl.task_wrench(data)[2])  # the controller pushes down; the table pushes back up
    offset = float(data.site_xpos[env._tcp][2] - ctrl.target_pos[2])  # TCP above its target at rest
    lam = ctrl.task_inertia(data)
    # Effective stiffness along z: a pure z force F on the TCP, the other directions free, moves it by
    # e = kp^-1 Lambda^-1 F, so the arm feels k_z = kp_pos / (Lambda^-1)_zz = kp_pos * m_z, where
    # m_z = 1 / (z^T Lambda^-1 z) is the arm's effective mass along z at the TCP (~5.4 kg at this pose:
    # k_z ~ 3200 N/m, ~32 N per cm of offset; not kp_pos = 600 N/m, nor Lambda_zz kp_pos ~ 10200 N/m).
    k_z = ctrl.kp[2] / np.linalg.inv(lam)[2, 2]
    naive = lam[2, 2] * ctrl.kp[2] * offset
    print(
        f"\npress (table top {env.table_top_z * 1e3:+.1f} mm): measured Fz {measured:.2f} N; controller's commanded "
        f"{commanded:.2f} N; k_z {k_z:.0f} N/m x "
        f"offset {offset * 1e3:.2f} mm = {k_z * offset:.2f} N (nominal 1 cm: {k_z * PRESS_DEPTH:.2f} N); "
        f"Lambda_zz kp offset {naive:.1f} N; tilt {np.linalg.norm(ctrl.pose_error(data)[3:]):.3f} rad"
    )
    assert measured > 10.0  # really pressing (a sensor reading zero or the wrong sign fails here)
    # The issue asks for 20%; the statics are exact up to friction and the contact's moment, so hold it to 5%.
    assert measured == pytest.approx(commanded, rel=0.05)
    assert measured == pytest.approx(k_z * offset, rel=0.2)
    assert PRESS_DEPTH <= offset < 1.5 * PRESS_DEPTH  # the table stops the fingertips at its surface
    # The fingertips rest on the table's surface, wherever it is this episode: at most a millimetre into it (a
    # stiff contact), and no more above it than the tilted pads' lowest corner lifts their middle (~1.3 mm).
    assert env.table_top_z - 1e-3 < data.site_xpos[env._tcp][2] - tip < env.table_top_z + 3e-3


def _ready() -> tuple[mujoco.MjModel, mujoco.MjData, OpSpaceController]:
    model = load_model()
    data = mujoco.MjData(model)
    data.qpos[:7] = PANDA.ready
    data.qpos[7:9] = PANDA.finger_stroke
    data.qvel[:7] = [0.1, -0.2, 0.1, 0.3, -0.1, 0.2, 0.1]  # moving: the damping term must not be clipped away
    mujoco.mj_forward(model, data)
    return model, data, OpSpaceController(model, PANDA, ControllerConfig())


def test_controller_clips_the_pose_error() -> None:
    model, data, ctrl = _ready()
    cfg = ctrl.cfg
    pos = data.site_xpos[ctrl.site_id].copy()
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, data.site_xmat[ctrl.site_id])
    u = np.array([0.6, -0.3, -0.74])
    u /= np.linalg.norm(u)
    axis = np.array([0.2, 0.9, -0.4])
    axis /= np.linalg.norm(axis)

    def command(distance: float, angle: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ctrl.set_target(pos + distance * u, quat_mul(quat_from_rotvec(angle * axis), quat))
        return ctrl.pose_error(data), ctrl.task_wrench(data), ctrl.compute(data).copy()

    far_err, far_wrench, far_tau = command(0.5, 2.0)
    edge_err, edge_wrench, edge_tau = command(cfg.max_pos_error, cfg.max_rot_error)
    np.testing.assert_allclose(far_err[:3], cfg.max_pos_error * u, atol=1e-12)  # same direction, clipped length
    np.testing.assert_allclose(np.linalg.norm(far_err[3:]), cfg.max_rot_error, atol=1e-12)
    np.testing.assert_allclose(far_err, edge_err, atol=1e-9)
    # The commanded task-space force and the joint torques are those of the target at the clip distance.
    np.testing.assert_allclose(far_wrench, edge_wrench, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(far_tau, edge_tau, rtol=1e-7, atol=1e-7)

    # Inside the clip the law is linear: half the distance, half the stiffness force (the test can tell).
    moving = ctrl.task_wrench(data) - ctrl.task_inertia(data) @ (ctrl.kp * ctrl.pose_error(data))  # damping part
    _, half_wrench, _ = command(cfg.max_pos_error / 2, cfg.max_rot_error / 2)
    np.testing.assert_allclose(half_wrench - moving, (edge_wrench - moving) / 2, rtol=1e-6, atol=1e-6)
    assert np.linalg.norm(half_wrench - far_wrench) > 1.0
