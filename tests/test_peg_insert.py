"""FrankaPegInsert-v0: contact physics of peg and hole, the grasp, the scripted baseline, config checks, the
Gymnasium contract and the 6-D action view."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
from env_support import check_env_strict

from serl_stack.config import EnvConfig, PegInsertConfig, RandomizationConfig
from serl_stack.envs import PEG_INSERT_ID
from serl_stack.envs.peg_insert import FrankaPegInsertEnv
from serl_stack.envs.scripted import PegInsertScripted, make_scripted

# Velocity and wrench are unbounded by nature (contacts); Gymnasium warns about infinite bounds.
pytestmark = pytest.mark.filterwarnings("ignore:.*infinity.*:UserWarning")
UNBOUNDED = ("state/tcp_force", "state/tcp_torque", "state/tcp_vel")
"""The observation leaves with infinite bounds (check_env_strict asserts exactly these)."""


def _cfg(**peg: object) -> EnvConfig:
    return EnvConfig(id=PEG_INSERT_ID, peg_insert=dataclasses.replace(PegInsertConfig(), **peg))


@pytest.fixture(scope="module")
def env() -> FrankaPegInsertEnv:
    e = FrankaPegInsertEnv(_cfg())
    yield e
    e.close()


def _above_hole(env: FrankaPegInsertEnv, seed: int, dx: float) -> tuple[dict, dict]:
    """Reset, then bring the peg's tip 10 mm above the rim, `dx` off the hole's axis in x, peg vertical."""
    obs, info = env.reset(seed=seed)
    hole = obs["task"]["hole_pos"].astype(np.float64)
    target = hole + np.array([dx, 0.0, 0.01])
    steer = PegInsertScripted.from_config(env.cfg)  # only its rotation (axis toward straight down) is used
    for _ in range(80):
        tip = obs["task"]["peg_pose"][:3].astype(np.float64)
        action = steer(obs)
        action[:3] = np.clip((target - tip) / env.cfg.action_scale_pos, -1, 1)
        obs, _, _, _, info = env.step(action)
        if np.linalg.norm(target - obs["task"]["peg_pose"][:3]) < 2e-4 and np.abs(obs["state"]["tcp_vel"]).max() < 1e-3:
            break
    tip = obs["task"]["peg_pose"][:3]
    assert np.linalg.norm(tip - target) < 5e-4, f"could not place the tip above the hole: {tip} vs {target}"
    return obs, info


def _descend(env: FrankaPegInsertEnv, steps: int) -> tuple[float, bool]:
    """Command the TCP straight down (no x, y or rotation action); return the deepest tip depth and success."""
    deepest, success = -np.inf, False
    for i in range(steps):
        dz = -0.25 if i < 8 else 0.0  # 8 steps x 5 mm: the command ends at the hole's bottom, then holds
        _, _, terminated, _, info = env.step(np.array([0, 0, dz, 0, 0, 0], np.float32))
        deepest, success = max(deepest, info["depth"]), success or info["success"]
        if terminated:
            break
    return deepest, success


# ------------------------------------------------------------------------------------------ physics


def test_aligned_peg_goes_into_the_hole(env: FrankaPegInsertEnv) -> None:
    _above_hole(env, seed=3, dx=0.0)
    depth, success = _descend(env, 14)
    assert success and depth >= env.cfg.peg_insert.success_depth, f"aligned peg reached depth {depth * 1e3:.1f} mm"


def test_peg_5mm_off_axis_stays_on_the_rim(env: FrankaPegInsertEnv) -> None:
    _above_hole(env, seed=3, dx=0.005)
    depth, success = _descend(env, 14)
    assert not success and depth < 0.001, f"peg 5 mm off the axis went {depth * 1e3:.2f} mm below the rim"


def test_peg_stays_in_the_grasp_during_free_motion(env: FrankaPegInsertEnv) -> None:
    env.reset(seed=7)
    assert env.gripper_width() < 2 * env.cfg.peg_insert.peg_radius, "fingers are not squeezing the peg"
    pos0, axis0 = env.peg_in_hand()
    rng = np.random.default_rng(0)
    for _ in range(30):
        env.step(rng.uniform(-1, 1, 6).astype(np.float32))
    pos, axis = env.peg_in_hand()
    slip = float(np.linalg.norm(pos - pos0))
    tilt = float(np.arccos(np.clip(axis @ axis0, -1, 1)))
    assert slip < 0.005, f"peg slipped {slip * 1e3:.2f} mm in the hand"
    assert tilt < 0.05, f"peg tilted {tilt:.3f} rad in the hand"


def test_fixture_follows_the_table_height() -> None:
    cfg = dataclasses.replace(_cfg(), randomization=RandomizationConfig(table_height=0.01))
    e = FrankaPegInsertEnv(cfg)
    rims = []
    for seed in range(3):
        obs, _ = e.reset(seed=seed)
        rim = float(obs["task"]["hole_pos"][2])
        assert rim == pytest.approx(e.table_top_z + cfg.peg_insert.hole_depth, abs=1e-6)
        rims.append(rim)
    e.close()
    assert len(set(rims)) == 3, f"table height was not randomized: rims {rims}"


# ------------------------------------------------------------------------------------------ baseline and reward


@pytest.mark.slow
def test_scripted_policy_inserts_the_peg() -> None:
    cfg = _cfg()
    e = FrankaPegInsertEnv(cfg)
    policy = make_scripted(cfg)
    successes, lengths = 0, []
    for seed in range(50):
        obs, _ = e.reset(seed=seed)
        steps = 0
        for steps in range(1, cfg.max_episode_steps + 1):  # noqa: B007 (its last value is the episode length)
            action = policy(obs)
            assert action.shape == (6,)
            obs, _, terminated, truncated, info = e.step(action)
            if terminated or truncated:
                break
        successes += info["success"]
        lengths.append(steps)
    e.close()
    rate = successes / 50
    assert rate >= 0.8, f"scripted success rate {rate:.2f} (mean length {np.mean(lengths):.1f} steps)"


def test_dense_reward_sums_to_progress_plus_success(env: FrankaPegInsertEnv) -> None:
    obs, _ = env.reset(seed=11)
    hole, tip0 = obs["task"]["hole_pos"].astype(np.float64), obs["task"]["peg_pose"][:3].astype(np.float64)
    goal = hole - np.array([0.0, 0.0, env.cfg.peg_insert.success_depth])
    policy = make_scripted(env.cfg)
    total = 0.0
    for _ in range(env.cfg.max_episode_steps):
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        total += reward
        if terminated or truncated:
            break
    assert terminated and info["success"]
    tip = obs["task"]["peg_pose"][:3].astype(np.float64)
    progress = (np.linalg.norm(tip0 - goal) - np.linalg.norm(tip - goal)) / env.cfg.action_scale_pos
    assert total == pytest.approx(1.0 + progress, abs=1e-3)


# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"peg_radius": -0.001}, "peg_radius"),
        ({"peg_radius": 0.05}, "peg_radius"),  # wider than the open gripper
        ({"peg_length": 0.0}, "peg_length"),
        ({"peg_length": 0.03}, "peg_length"),  # too short to reach success_depth with the fingers above the rim
        ({"clearance": 0.0}, "clearance"),
        ({"clearance": float("nan")}, "clearance"),
        ({"hole_depth": -0.01}, "hole_depth"),
        ({"success_depth": 0.0}, "success_depth"),
        ({"success_depth": 0.03}, "success_depth"),  # as deep as the hole: the table is in the way
        ({"hole_low": (0.9, 0.0), "hole_high": (0.95, 0.1)}, "hole_low/hole_high"),  # outside the workspace
        ({"hole_low": (0.5, 0.0), "hole_high": (0.45, 0.1)}, "hole_low"),
        ({"hole_low": (0.5,)}, "hole_low"),
    ],
)
def test_bad_config_raises_naming_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^env\.peg_insert\.{field}: "):
        FrankaPegInsertEnv(_cfg(**changes))


# ------------------------------------------------------------------------------------------ gymnasium


def test_check_env_passes() -> None:
    made = gym.make(PEG_INSERT_ID, config=_cfg())
    check_env_strict(made.unwrapped, unbounded=UNBOUNDED, skip_render_check=True)
    made.close()


def test_action_space_is_6d_and_7d_actions_are_rejected(env: FrankaPegInsertEnv) -> None:
    assert env.action_space.shape == (6,)
    obs, _ = env.reset(seed=0)
    assert set(obs["task"]) == {"hole_pos", "peg_pose"}
    assert all(v.dtype == np.float32 for v in obs["task"].values())
    assert obs["task"]["peg_pose"][3] >= 0  # w-first, w >= 0
    _, _, _, _, info = env.step(np.zeros(6, np.float32))
    assert info["executed_action"].shape == (6,)
    with pytest.raises(ValueError, match=r"action: expected shape \(6,\).*got \(7,\)"):
        env.step(np.zeros(7, np.float32))
