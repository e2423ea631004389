"""FrankaPickCube-v0: the cube's physics, grasping and lifting it, the scripted baseline, observation, config errors."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from env_support import check_env_strict

from serl_stack.config import EnvConfig, PickCubeConfig
from serl_stack.envs import PICK_CUBE_ID, make_env
from serl_stack.envs.panda import TABLE_TOP_Z
from serl_stack.envs.pick_cube import GRASP_BONUS, FrankaPickCubeEnv
from serl_stack.envs.scripted import PickCubeScripted, make_scripted

# Velocity, wrench and the cube's position are unbounded by nature; Gymnasium warns about infinite bounds.
pytestmark = pytest.mark.filterwarnings("ignore:.*infinity.*:UserWarning")
UNBOUNDED = ("state/tcp_force", "state/tcp_torque", "state/tcp_vel", "task/object_pose")
"""The observation leaves with infinite bounds (check_env_strict asserts exactly these)."""
ZERO = np.zeros(7, dtype=np.float32)


def _cfg(**pick_cube: object) -> EnvConfig:
    return EnvConfig(id=PICK_CUBE_ID, pick_cube=dataclasses.replace(PickCubeConfig(), **pick_cube))


@pytest.fixture(scope="module")
def env() -> FrankaPickCubeEnv:
    e = FrankaPickCubeEnv(_cfg())
    yield e
    e.close()


def _yaw(quat: np.ndarray) -> float:
    mat = np.zeros(9)
    mujoco.mju_quat2Mat(mat, np.asarray(quat, dtype=np.float64))
    return float(np.arctan2(mat[3], mat[0]))


def _potential(env: FrankaPickCubeEnv) -> float:
    """The shaping potential of the module docstring, recomputed from the simulator's state."""
    pos, _ = env.cube_pose()
    lift = env.cfg.pick_cube.lift_height
    grasped = env.grasped()
    remaining = min(max(lift - (pos[2] - env.rest_z), 0.0), lift) if grasped else lift
    distance = float(np.linalg.norm(env.data.site_xpos[env.model.site("tcp").id] - pos))
    return -(distance + remaining) / env.cfg.action_scale_pos + GRASP_BONUS * grasped


# ------------------------------------------------------------------------------------------ physics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cube_rests_on_the_table_inside_its_area_with_the_gripper_open_above(env: FrankaPickCubeEnv, seed: int) -> None:
    obs, info = env.reset(seed=seed)
    pc = env.cfg.pick_cube
    rest_z = TABLE_TOP_Z + pc.cube_size / 2
    pose = obs["task"]["object_pose"]
    assert np.all(pose[:2] >= np.float32(pc.cube_low)) and np.all(pose[:2] <= np.float32(pc.cube_high))
    assert abs(_yaw(pose[3:])) <= pc.cube_yaw + 1e-6
    assert obs["state"]["gripper_pos"][0] == pytest.approx(0.08, abs=1e-3)
    assert obs["state"]["tcp_pose"][2] > rest_z + 0.2  # the ready pose is well above the cube
    assert info == {"success": False, "lifted": pytest.approx(0.0, abs=1e-4), "grasped": False}
    for _ in range(20):  # 2 s of simulated time at 10 Hz
        obs, reward, terminated, truncated, info = env.step(ZERO)
        assert not terminated
    pos, quat = env.cube_pose()
    assert abs(pos[2] - rest_z) < 0.002
    np.testing.assert_allclose(pos[:2], pose[:2], atol=1e-3)  # it did not slide either
    assert abs(_yaw(quat) - _yaw(pose[3:])) < 1e-2
    cube_vel = env.data.qvel[env._cube_qvel : env._cube_qvel + 6]
    assert np.linalg.norm(cube_vel) < 1e-3


def test_the_gripper_grasps_the_cube_and_carries_it_up() -> None:
    e = FrankaPickCubeEnv(_cfg())
    policy = make_scripted(e.cfg)
    assert isinstance(policy, PickCubeScripted)
    obs, _ = e.reset(seed=7)
    start = obs["task"]["object_pose"][:3].copy()
    for _ in range(e.cfg.max_episode_steps):
        obs, _, terminated, truncated, info = e.step(policy(obs))
        if terminated or truncated:
            break
    assert info["success"] and info["grasped"] and terminated
    cube = obs["task"]["object_pose"][:3]
    assert cube[2] - start[2] >= 0.05
    size = e.cfg.pick_cube.cube_size
    # The fingers rest on the cube's faces: the width is the cube's size (less a millimetre or two of contact
    # penetration under the grasp force), not open and not shut.
    assert abs(obs["state"]["gripper_pos"][0] - size) < 0.003
    assert np.linalg.norm(cube[:2] - obs["state"]["tcp_pose"][:2]) < 0.01
    # Held, not tossed: past the end of the episode the cube keeps rising with the hand, step by step.
    lift = np.array([0, 0, 1, 0, 0, 0, 1], dtype=np.float32)
    for _ in range(5):
        before_tcp, before_cube = obs["state"]["tcp_pose"][2], obs["task"]["object_pose"][2]
        obs, *_, info = e.step(lift)
        assert info["grasped"]
        rise_tcp, rise_cube = obs["state"]["tcp_pose"][2] - before_tcp, obs["task"]["object_pose"][2] - before_cube
        assert rise_cube > 0.01 and abs(rise_cube - rise_tcp) < 0.003
    e.close()


@pytest.mark.parametrize("dense", [False, True])
def test_a_cube_in_the_air_but_not_in_the_hand_is_no_success(dense: bool) -> None:
    e = FrankaPickCubeEnv(dataclasses.replace(_cfg(), dense_reward=dense))
    e.reset(seed=3)
    tcp = e.data.site_xpos[e.model.site("tcp").id]
    before = np.linalg.norm(tcp - e.cube_pose()[0])
    # As if flung: far above the table, nowhere near the fingers, and (after falling for a step) no nearer the TCP
    # than it was.
    e.data.qpos[e._cube_qpos : e._cube_qpos + 3] = tcp + [0.0, 0.0, before + 0.1]
    mujoco.mj_forward(e.model, e.data)
    _, reward, terminated, _, info = e.step(ZERO)
    assert info["lifted"] > e.cfg.pick_cube.lift_height
    assert not info["grasped"] and not info["success"] and not terminated
    # Sparse: nothing. Dense: the lift term only counts in hand, and the cube is no nearer, so no reward either.
    assert reward <= 0.0
    e.close()


def test_sparse_reward_is_one_exactly_at_success_and_dense_shaping_sums_to_the_potential_change() -> None:
    for dense in (False, True):
        e = FrankaPickCubeEnv(dataclasses.replace(_cfg(), dense_reward=dense))
        policy = PickCubeScripted.from_config(e.cfg)
        obs, _ = e.reset(seed=11)
        start = _potential(e)
        rewards, successes = [], []
        for _ in range(e.cfg.max_episode_steps):
            obs, reward, terminated, truncated, info = e.step(policy(obs))
            rewards.append(reward)
            successes.append(info["success"])
            if terminated or truncated:
                break
        assert successes[-1] and not any(successes[:-1])
        if not dense:
            assert rewards == [0.0] * (len(rewards) - 1) + [1.0]
        else:
            assert sum(rewards) == pytest.approx(1.0 + _potential(e) - start, abs=1e-6)
            assert rewards[0] > 0.5  # the first full step toward the cube pays about one unit
        e.close()


# ------------------------------------------------------------------------------------------ scripted baseline


def test_scripted_baseline_succeeds_on_at_least_80_percent_of_50_seeded_episodes(env: FrankaPickCubeEnv) -> None:
    policy = PickCubeScripted.from_config(env.cfg)
    results, lengths = [], []
    for seed in range(50):
        obs, _ = env.reset(seed=seed)
        for t in range(env.cfg.max_episode_steps):  # noqa: B007 (t is the episode length)
            obs, _, terminated, truncated, info = env.step(policy(obs))
            if terminated or truncated:
                break
        results.append(info["success"])
        lengths.append(t + 1)
    rate = float(np.mean(results))
    failed = [s for s, ok in enumerate(results) if not ok]
    assert rate >= 0.8, f"scripted success rate {rate:.0%} over seeds 0..49 (failed: {failed}), expected >= 80%"
    assert max(lengths) < env.cfg.max_episode_steps, f"episode lengths {lengths}: too close to the time limit"


def test_scripted_policy_checks_its_arguments_and_its_noise_is_seeded() -> None:
    with pytest.raises(ValueError, match="cube_size"):
        PickCubeScripted(cube_size=0.0)
    with pytest.raises(ValueError, match="rng"):
        PickCubeScripted(noise=0.1)
    e = FrankaPickCubeEnv(_cfg())
    obs, _ = e.reset(seed=0)
    a = PickCubeScripted.from_config(e.cfg, 0.3, np.random.default_rng(1))(obs)
    b = PickCubeScripted.from_config(e.cfg, 0.3, np.random.default_rng(1))(obs)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (7,) and a.dtype == np.float32 and np.all(np.abs(a) <= 1.0)
    e.close()


# ------------------------------------------------------------------------------------------ observation


def test_object_pose_is_the_cubes_true_pose(env: FrankaPickCubeEnv) -> None:
    obs, _ = env.reset(seed=5)
    policy = PickCubeScripted.from_config(env.cfg)
    body = env.model.body("cube").id
    for step in range(30):
        pose = obs["task"]["object_pose"]
        assert pose.shape == (7,) and pose.dtype == np.float32
        assert set(obs["task"]) == {"object_pose"}
        np.testing.assert_allclose(pose[:3], env.data.xpos[body], atol=1e-6)
        quat = env.data.xquat[body] * np.sign(env.data.xquat[body][0])
        assert pose[3] >= 0 and abs(np.linalg.norm(pose[3:]) - 1) < 1e-5
        np.testing.assert_allclose(pose[3:], quat, atol=1e-6)
        assert env.observation_space.contains(obs), step
        obs, _, terminated, _, _ = env.step(policy(obs))
        if terminated:
            break


# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"cube_size": 0.0}, "cube_size"),
        ({"cube_size": -0.01}, "cube_size"),
        ({"cube_size": 0.09}, "cube_size"),  # wider than the open gripper (0.08 m)
        ({"cube_mass": 0.0}, "cube_mass"),
        ({"lift_height": 0.0}, "lift_height"),
        ({"lift_height": 1.0}, "lift_height"),  # the TCP cannot rise that far
        ({"cube_yaw": -0.1}, "cube_yaw"),
        ({"cube_low": (0.4,)}, "cube_low"),
        ({"cube_high": (0.5, float("nan"))}, "cube_high"),
        ({"cube_low": (0.5, 0.0), "cube_high": (0.45, 0.1)}, "cube_low"),
        ({"cube_low": (0.1, -0.1)}, "cube_low"),  # outside the workspace box
        ({"cube_high": (0.55, 0.4)}, "cube_high"),
    ],
)
def test_bad_config_values_raise_value_error_naming_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^env\.pick_cube\.[a-z_/]*{field}[a-z_/]*(\[\d\])?: got "):
        FrankaPickCubeEnv(_cfg(**changes))


def test_cube_size_and_mass_reach_the_model() -> None:
    e = FrankaPickCubeEnv(_cfg(cube_size=0.03, cube_mass=0.1))
    np.testing.assert_allclose(e.model.geom("cube").size, [0.015] * 3)
    assert e.model.body("cube").mass[0] == pytest.approx(0.1)
    e.reset(seed=0)
    assert e.cube_pose()[0][2] == pytest.approx(TABLE_TOP_Z + 0.015, abs=1e-6)
    e.close()


# ------------------------------------------------------------------------------------------ gymnasium


def test_check_env_passes_for_the_state_only_env() -> None:
    made = make_env(_cfg())
    assert isinstance(made.unwrapped, FrankaPickCubeEnv)
    check_env_strict(made.unwrapped, unbounded=UNBOUNDED, skip_render_check=True)
    made.close()
    raw = gym.make(PICK_CUBE_ID)
    check_env_strict(raw.unwrapped, unbounded=UNBOUNDED, skip_render_check=True)
    raw.close()
