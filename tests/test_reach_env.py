"""FrankaReach-v0: Gymnasium compliance, the observation/action contract, task logic and solvability."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from env_support import check_env_strict, skip_if_egl_missing

from serl_stack.config import ControllerConfig, EnvConfig
from serl_stack.envs import REACH_ID, make_env
from serl_stack.envs.controller import quat_error, rotvec_angle
from serl_stack.envs.panda import PANDA
from serl_stack.envs.reach import FrankaReachEnv

STATE_SHAPES = {"tcp_pose": (7,), "tcp_vel": (6,), "gripper_pos": (1,), "tcp_force": (3,), "tcp_torque": (3,)}
UNBOUNDED = ("state/tcp_force", "state/tcp_torque", "state/tcp_vel")
# Velocity and wrench are unbounded by nature (contacts); Gymnasium warns about infinite bounds.
pytestmark = pytest.mark.filterwarnings("ignore:.*infinity.*:UserWarning")


def _cfg(**changes: object) -> EnvConfig:
    return dataclasses.replace(EnvConfig(), **changes)


def _toward(obs: dict, target: np.ndarray, gain: float = 1.0) -> np.ndarray:
    """The scripted proportional policy: full speed toward `target`, orientation and gripper held."""
    action = np.zeros(7, dtype=np.float32)
    action[:3] = np.clip(gain * (target - obs["state"]["tcp_pose"][:3]) / 0.02, -1, 1)
    return action


@pytest.fixture(scope="module")
def env() -> FrankaReachEnv:
    return FrankaReachEnv()


# ------------------------------------------------------------------------------------------ gymnasium


def test_check_env_passes_on_the_raw_env() -> None:
    raw = FrankaReachEnv()
    # A raw env has no spec, so the checker could not build it in another render mode; rendering is checked below
    # and, through the checker, in test_env_images.py.
    check_env_strict(raw, unbounded=UNBOUNDED, skip_render_check=True)
    raw.close()


def test_check_env_passes_through_gymnasium_make() -> None:
    made = gym.make(REACH_ID)
    assert made.spec is not None and made.spec.max_episode_steps is None  # the env truncates itself
    # The render check needs an OpenGL context; rendering has its own test below.
    check_env_strict(made.unwrapped, unbounded=UNBOUNDED, skip_render_check=True)
    check_env_strict(made, unbounded=UNBOUNDED, wrapped=True, skip_render_check=True)
    made.close()


def test_make_env_builds_the_configured_task_and_rejects_unknown_ids() -> None:
    made = make_env(_cfg(max_episode_steps=7))
    assert isinstance(made.unwrapped, FrankaReachEnv)
    assert made.unwrapped.cfg.max_episode_steps == 7
    made.close()
    with pytest.raises(ValueError, match="env.id: unknown env 'NoSuchTask-v0'"):
        make_env(_cfg(id="NoSuchTask-v0"))


def test_rgb_array_render() -> None:
    # A fresh interpreter, because MUJOCO_GL must be set before MuJoCo first makes a context.
    code = (
        "from serl_stack.envs.reach import FrankaReachEnv\n"
        "e = FrankaReachEnv(render_mode='rgb_array'); e.reset(seed=0); img = e.render()\n"
        "print(img.shape, img.dtype, int(img.std() > 5))\n"
    )
    env_vars = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    out = subprocess.run([sys.executable, "-c", code], env=env_vars, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        skip_if_egl_missing(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "")  # the final error
        pytest.fail(f"rendering failed (not for want of an EGL device):\n{out.stderr[-3000:]}")
    assert out.stdout.split() == ["(480,", "640,", "3)", "uint8", "1"]


# ------------------------------------------------------------------------------------------ contract


def test_observation_contract(env: FrankaReachEnv) -> None:
    obs, info = env.reset(seed=3)
    assert set(obs) == {"state", "task"}
    assert set(obs["state"]) == set(STATE_SHAPES)
    assert set(obs["task"]) == {"goal_pos"}
    for key, shape in STATE_SHAPES.items():
        assert obs["state"][key].shape == shape, key
        assert obs["state"][key].dtype == np.float32, key
    assert obs["task"]["goal_pos"].shape == (3,) and obs["task"]["goal_pos"].dtype == np.float32
    assert env.observation_space.contains(obs)
    assert env.action_space == gym.spaces.Box(-1, 1, (7,), np.float32)
    assert set(info) >= {"success", "distance"}
    rng = np.random.default_rng(0)
    for _ in range(20):
        obs, *_ = env.step(rng.uniform(-1, 1, 7).astype(np.float32))
        quat = obs["state"]["tcp_pose"][3:]
        assert quat[0] >= 0 and abs(np.linalg.norm(quat) - 1) < 1e-5
        assert env.observation_space.contains(obs)


def test_reset_starts_near_ready_with_the_gripper_open_and_the_command_on_the_measured_pose(
    env: FrankaReachEnv,
) -> None:
    obs, _ = env.reset(seed=11)
    q = env.data.qpos[:7]
    assert np.all(np.abs(q - PANDA.ready) <= env.cfg.reset_joint_noise + 0.02)
    assert obs["state"]["gripper_pos"][0] == pytest.approx(0.08, abs=1e-3)
    np.testing.assert_allclose(env.cmd_pos, obs["state"]["tcp_pose"][:3], atol=1e-6)
    assert np.linalg.norm(obs["state"]["tcp_vel"]) < 1e-2
    goal = obs["task"]["goal_pos"]
    assert np.all(goal >= np.float32(env.goal_low)) and np.all(goal <= np.float32(env.goal_high))


def test_equal_seeds_give_identical_episodes_and_different_seeds_differ() -> None:
    actions = np.random.default_rng(5).uniform(-1, 1, (15, 7)).astype(np.float32)

    def rollout(seed: int) -> list[np.ndarray]:
        e = FrankaReachEnv()
        obs, _ = e.reset(seed=seed)
        flat = [np.concatenate([*obs["state"].values(), *obs["task"].values()])]
        for a in actions:
            obs, reward, *_ = e.step(a)
            flat.append(np.concatenate([*obs["state"].values(), *obs["task"].values(), [reward]]))
        return flat

    first, second, other = rollout(42), rollout(42), rollout(43)
    for x, y in zip(first, second, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(first[0], other[0])


def test_translation_actions_move_the_command_by_the_scale_and_clip_to_the_workspace(env: FrankaReachEnv) -> None:
    env.reset(seed=0)
    before = env.cmd_pos.copy()
    env.step(np.array([1, 0, -0.5, 0, 0, 0, 0], dtype=np.float32))
    np.testing.assert_allclose(env.cmd_pos - before, [0.02, 0.0, -0.01], atol=1e-9)
    for _ in range(40):
        obs, *_ = env.step(np.array([1, 1, 1, 0, 0, 0, 0], dtype=np.float32))
    assert np.all(env.cmd_pos <= env.workspace_high + 1e-9)
    flange = env.cmd_pos - PANDA.tcp_offset * _tool_axis(env.cmd_quat)
    assert np.linalg.norm(flange - [0, 0, PANDA.joints[0].d]) <= env.cfg.reach_max + 1e-6
    assert np.linalg.norm(obs["state"]["tcp_pose"][:3] - env.cmd_pos) < 0.01  # and the arm got there


def _tool_axis(quat: np.ndarray) -> np.ndarray:
    w, x, y, z = quat
    return np.array([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)])


def test_rotation_actions_compose_on_the_commanded_orientation_and_stay_in_the_cone(env: FrankaReachEnv) -> None:
    env.reset(seed=1)
    start = env.cmd_quat.copy()
    env.step(np.array([0, 0, 0, 0, 0, 1, 0], dtype=np.float32))
    # A base-frame rotation about z by action_scale_rot, applied to the previous command (not the measurement).
    np.testing.assert_allclose(quat_error(env.cmd_quat, start), [0, 0, 0.1], atol=1e-9)
    for _ in range(30):
        obs, *_ = env.step(np.array([0, 0, 0, 1, 0.5, 0, 0], dtype=np.float32))
    assert rotvec_angle(env.cmd_quat, env.nominal_quat) <= env.cfg.orientation_cone + 1e-9
    measured = obs["state"]["tcp_pose"][3:].astype(np.float64)
    assert rotvec_angle(env.cmd_quat, measured) < np.radians(3)


def test_gripper_closes_above_half_opens_below_minus_half_and_holds_between(env: FrankaReachEnv) -> None:
    env.reset(seed=2)

    def width_after(g: float, steps: int = 5) -> float:
        for _ in range(steps):
            obs, *_ = env.step(np.array([0, 0, 0, 0, 0, 0, g], dtype=np.float32))
        return float(obs["state"]["gripper_pos"][0])

    assert width_after(0.9) < 0.002
    assert width_after(0.3) < 0.002  # holds closed
    assert width_after(-0.9) > 0.078
    assert width_after(-0.3) > 0.078  # holds open


def test_non_finite_actions_hold_the_command_and_wrong_shapes_are_rejected(env: FrankaReachEnv) -> None:
    env.reset(seed=4)
    before = env.cmd_pos.copy(), env.cmd_quat.copy()
    env.step(np.full(7, np.nan, dtype=np.float32))
    np.testing.assert_array_equal(env.cmd_pos, before[0])
    np.testing.assert_allclose(env.cmd_quat, before[1], atol=1e-12)
    with pytest.raises(ValueError, match=r"action: expected shape \(7,\)"):
        env.step(np.zeros(6, dtype=np.float32))


def test_step_before_reset_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="before reset"):
        FrankaReachEnv().step(np.zeros(7, dtype=np.float32))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"control_hz": 0.0}, "env.control_hz"),
        ({"control_hz": 501.0}, "env.control_hz"),  # faster than the physics
        ({"workspace_low": (0.7, -0.2, 0.0)}, "env.workspace_low"),
        ({"goal_low": (0.3, -0.1)}, "env.goal_low"),
        ({"goal_low": (0.5, 0.0, 0.3), "goal_high": (0.45, 0.1, 0.35)}, "env.goal_low"),
        ({"goal_high": (0.9, 0.15, 0.35)}, "env.goal_low/goal_high"),  # outside the workspace
        ({"success_radius": 0.0}, "env.success_radius"),
        ({"orientation_cone": 0.0}, "env.orientation_cone"),
        ({"reach_min": 0.8}, "env.reach_min"),
    ],
)
def test_bad_config_errors_name_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{re.escape(field)}: got "):
        FrankaReachEnv(_cfg(**changes))


def test_a_goal_box_of_one_point_is_a_fixed_goal() -> None:
    point = (0.5, 0.1, 0.25)  # goal_low == goal_high is allowed (goal_low <= goal_high, like the task areas)
    env = FrankaReachEnv(_cfg(goal_low=point, goal_high=point))
    for seed in (0, 1):
        obs, _ = env.reset(seed=seed)
        np.testing.assert_allclose(obs["task"]["goal_pos"], np.float32(point))
    env.close()


# ------------------------------------------------------------------------------------------ task logic


def test_success_rewards_one_and_terminates(env: FrankaReachEnv) -> None:
    for dense in (False, True):
        e = FrankaReachEnv(_cfg(dense_reward=dense))
        e.reset(seed=7)
        e.goal = e.data.site_xpos[e._tcp].copy()  # put the goal on the TCP: next step succeeds
        _, _, info0 = e._evaluate(e._get_obs())
        _, reward, terminated, truncated, info = e.step(np.zeros(7, dtype=np.float32))
        assert info["success"] and terminated and not truncated
        assert info["distance"] <= e.cfg.success_radius
        progress = (info0["distance"] - info["distance"]) / e.cfg.action_scale_pos
        assert reward == pytest.approx(1.0 + (progress if dense else 0.0))


def test_no_success_gives_zero_sparse_or_progress_dense_and_truncates_at_the_limit() -> None:
    for dense in (False, True):
        e = FrankaReachEnv(_cfg(dense_reward=dense, max_episode_steps=3))
        _, info = e.reset(seed=8)
        prev = info["distance"]
        toward = np.zeros(7, dtype=np.float32)
        toward[:3] = np.clip((e.goal - e.tcp_pose()[0]) / e.cfg.action_scale_pos, -1, 1)
        for t in range(1, 4):
            action = toward if t < 3 else -toward  # two steps toward the goal, then one away
            _, reward, terminated, truncated, info = e.step(action)
            assert not info["success"] and not terminated
            assert truncated == (t == 3)
            progress = (prev - info["distance"]) / e.cfg.action_scale_pos
            assert reward == pytest.approx(progress if dense else 0.0)
            if dense:
                assert (reward > 0.3) if t < 3 else (reward < 0), (t, reward)
            prev = info["distance"]


def test_forces_respond_to_pressing_on_the_table() -> None:
    # Let the command go 2 cm below the table so the fingers press on it.
    e = FrankaReachEnv(_cfg(workspace_low=(0.25, -0.25, -0.02)))
    obs, _ = e.reset(seed=0)
    free = np.linalg.norm(obs["state"]["tcp_force"])
    assert free < 0.5, f"{free:.3f} N on a hand at rest in free space (hand weight should be compensated)"
    for _ in range(30):
        obs, *_ = e.step(np.array([0.5, 0, -1, 0, 0, 0, 0], dtype=np.float32))
    force, torque = obs["state"]["tcp_force"], obs["state"]["tcp_torque"]
    assert force[2] > 5.0, f"table pushes up on the fingers: expected +z force, got {force}"
    assert np.linalg.norm(torque) > 0.01
    for _ in range(5):  # lift off: the reading returns to about zero
        obs, *_ = e.step(np.array([0, 0, 1, 0, 0, 0, 0], dtype=np.float32))
    for _ in range(5):
        obs, *_ = e.step(np.zeros(7, dtype=np.float32))
    assert np.linalg.norm(obs["state"]["tcp_force"]) < 1.0


def test_random_exploration_keeps_the_joints_off_their_limits() -> None:
    e = FrankaReachEnv()
    rng = np.random.default_rng(0)
    worst = np.inf
    for seed in range(6):
        e.reset(seed=seed)
        push = np.sign(rng.uniform(-1, 1, 7))  # saturated pushes reach the corners of the clip region
        for t in range(100):
            if t % 20 == 0:
                push = np.sign(rng.uniform(-1, 1, 7))
            a = push if seed % 2 else rng.uniform(-1, 1, 7)
            e.step(a.astype(np.float32))
            q = e.data.qpos[:7]
            worst = min(worst, float(np.min(np.minimum(q - PANDA.q_min, PANDA.q_max - q))))
    assert worst > 0.02, f"a joint came within {worst:.3f} rad of its limit"


def test_scripted_policy_solves_the_task(env: FrankaReachEnv) -> None:
    successes, lengths = 0, []
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        steps = 0
        while True:
            obs, _, terminated, truncated, info = env.step(_toward(obs, obs["task"]["goal_pos"]))
            steps += 1
            if terminated or truncated:
                break
        successes += bool(info["success"])
        lengths.append(steps)
    print(f"\nscripted policy: {successes}/20 successes, mean episode length {np.mean(lengths):.1f} steps")
    assert successes >= 18


def test_controller_gains_come_from_the_config() -> None:
    e = FrankaReachEnv(_cfg(controller=ControllerConfig(kp_pos=100.0)))
    assert e.controller.kp[0] == 100.0
    assert e.controller.kd[0] == pytest.approx(2 * np.sqrt(100.0))
