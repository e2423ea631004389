"""The MJCF built from the Panda table agrees with the pure-numpy modified-DH forward kinematics."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from serl_stack.envs.controller import rotvec_angle
from serl_stack.envs.panda import PANDA, build_mjcf, dh_fk, load_model, mat_to_quat


@pytest.fixture(scope="module")
def model_data() -> tuple[mujoco.MjModel, mujoco.MjData]:
    model = load_model()
    return model, mujoco.MjData(model)


def _site_pose(model: mujoco.MjModel, data: mujoco.MjData, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    data.qpos[:7] = q
    mujoco.mj_kinematics(model, data)
    sid = model.site("tcp").id
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, data.site_xmat[sid])
    return data.site_xpos[sid].copy(), quat


def test_mjcf_tcp_matches_dh_fk_at_random_configurations(model_data: tuple[mujoco.MjModel, mujoco.MjData]) -> None:
    model, data = model_data
    rng = np.random.default_rng(0)
    worst_pos, worst_rot = 0.0, 0.0
    for _ in range(100):
        q = rng.uniform(PANDA.q_min, PANDA.q_max)
        site_pos, site_quat = _site_pose(model, data, q)
        fk_pos, fk_quat = dh_fk(q)
        worst_pos = max(worst_pos, float(np.linalg.norm(site_pos - fk_pos)))
        worst_rot = max(worst_rot, rotvec_angle(site_quat, fk_quat))
    assert worst_pos < 1e-3, f"TCP position differs by {worst_pos * 1e3:.3f} mm"
    assert worst_rot < np.radians(0.1), f"TCP orientation differs by {np.degrees(worst_rot):.4f} deg"


def test_ready_pose_points_the_tcp_down_in_front_of_the_robot() -> None:
    pos, quat = dh_fk(PANDA.ready)
    # Franka's ready pose: TCP ~0.31 m in front of the base, ~0.49 m up, z axis straight down.
    np.testing.assert_allclose(pos, [0.3069, 0.0, 0.4869], atol=1e-3)
    assert rotvec_angle(quat, np.array([0.0, 1.0, 0.0, 0.0])) < 1e-6


def test_dh_fk_quaternion_is_unit_with_nonnegative_w() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        _, quat = dh_fk(rng.uniform(PANDA.q_min, PANDA.q_max))
        assert quat[0] >= 0
        assert abs(np.linalg.norm(quat) - 1) < 1e-12


def test_mat_to_quat_round_trips_through_mujoco() -> None:
    rng = np.random.default_rng(2)
    for _ in range(50):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        mat = np.empty(9)
        mujoco.mju_quat2Mat(mat, q)
        ours = mat_to_quat(mat.reshape(3, 3))
        assert rotvec_angle(ours, q) < 1e-9


def test_dh_fk_rejects_a_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        dh_fk(np.zeros(6))


def test_model_limits_and_masses_come_from_the_table(model_data: tuple[mujoco.MjModel, mujoco.MjData]) -> None:
    model, _ = model_data
    for i, joint in enumerate(PANDA.joints):
        jid = model.joint(f"joint{i + 1}").id
        np.testing.assert_allclose(model.jnt_range[jid], [joint.q_min, joint.q_max])
        np.testing.assert_allclose(model.actuator(f"torque{i + 1}").ctrlrange, [-joint.max_torque, joint.max_torque])
        assert model.body(f"link{i + 1}").mass[0] == pytest.approx(joint.mass)
    assert model.opt.timestep == pytest.approx(0.002)
    np.testing.assert_allclose(model.actuator("gripper").ctrlrange, [0.0, 2 * PANDA.finger_stroke])
    for side in ("left", "right"):
        np.testing.assert_allclose(model.joint(f"finger_{side}").range, [0.0, PANDA.finger_stroke])


def test_build_mjcf_is_deterministic_text() -> None:
    assert build_mjcf() == build_mjcf()
    assert 'name="tcp"' in build_mjcf()
