"""Domain randomization (env.randomization): off changes nothing, each term draws in its range per seed,
observation noise has the configured size, a one-step action latency delays the arm, bad values are refused."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import mujoco
import numpy as np
import pytest

from serl_stack.config import ControllerConfig, EnvConfig, RandomizationConfig
from serl_stack.envs.controller import rotvec_angle
from serl_stack.envs.panda import PANDA, TABLE_TOP_Z, load_model
from serl_stack.envs.randomize import add_observation_noise, base_clearance, check_config
from serl_stack.envs.reach import FrankaReachEnv

# Velocity and wrench are unbounded by nature (contacts); Gymnasium warns about infinite bounds.
pytestmark = pytest.mark.filterwarnings("ignore:.*infinity.*:UserWarning")
SEEDS = range(6)


def _env(**terms: float) -> FrankaReachEnv:
    return FrankaReachEnv(EnvConfig(randomization=RandomizationConfig(**terms)))


def _nominal_model() -> mujoco.MjModel:
    """A freshly compiled model of the reach scene: every value as written in the MJCF."""
    return load_model(PANDA, FrankaReachEnv.task_xml)


def _assert_obs_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for group in a:
        assert a[group].keys() == b[group].keys()
        for key in a[group]:
            assert a[group][key].dtype == b[group][key].dtype
            np.testing.assert_array_equal(a[group][key], b[group][key], err_msg=f"{group}/{key}")


def _rollout(env: FrankaReachEnv, seed: int, steps: int = 8) -> list[tuple[dict, dict]]:
    rng = np.random.default_rng(seed + 100)
    out = [env.reset(seed=seed)]
    for _ in range(steps):
        obs, _, _, _, info = env.step(rng.uniform(-1, 1, 7).astype(np.float32))
        out.append((obs, info))
    return out


def _table_top_seen(env: FrankaReachEnv) -> float:
    """Height where a ray cast straight down hits the table: the collision geometry itself, not a number."""
    # A table corner far from the arm and from any reach goal (and its marker pole).
    start = np.array([0.9, 0.5, 1.0])
    geomid = np.array([-1], dtype=np.int32)
    dist = mujoco.mj_ray(env.model, env.data, start, np.array([0.0, 0.0, -1.0]), None, 1, -1, geomid)
    table = env.model.geom("table").id
    assert geomid[0] == table, f"ray hit geom {geomid[0]}, expected the table ({table})"
    return float(start[2] - dist)


# ------------------------------------------------------------------------------------------ all off


def test_all_off_changes_nothing() -> None:
    default = FrankaReachEnv(EnvConfig())
    explicit = _env(**{f.name: 0 for f in dataclasses.fields(RandomizationConfig)})
    for (obs_a, info_a), (obs_b, info_b) in zip(_rollout(default, 3), _rollout(explicit, 3), strict=True):
        _assert_obs_equal(obs_a, obs_b)
        assert info_a.keys() == info_b.keys()
    # Nothing in the model moved, the controller kept its configured gains, and every step executed its own action.
    nominal = _nominal_model()
    for env in (default, explicit):
        np.testing.assert_array_equal(env.model.geom_friction, nominal.geom_friction)
        np.testing.assert_array_equal(env.model.geom_pos, nominal.geom_pos)
        np.testing.assert_array_equal(env.model.cam_pos, nominal.cam_pos)
        np.testing.assert_array_equal(env.model.cam_quat, nominal.cam_quat)
        cfg = ControllerConfig()
        np.testing.assert_array_equal(env.controller.kp, [cfg.kp_pos] * 3 + [cfg.kp_rot] * 3)
        assert env.table_top_z == TABLE_TOP_Z
    # The observation is the clean state: no noise drawn.
    obs, info = _rollout(default, 5, steps=1)[-1]
    _assert_obs_equal(obs, default._get_obs())
    # Out-of-range entries are clipped to the action box; the executed action is what the arm was commanded.
    a = np.array([2.0, -0.5, 0.3, 0.1, 0.0, -3.0, 1.0], dtype=np.float32)
    _, _, _, _, info = default.step(a)
    assert info["executed_action"].dtype == np.float32 and info["executed_action"].shape == (7,)
    np.testing.assert_allclose(info["executed_action"], [1, -0.5, 0.3, 0.1, 0, -1, 1], atol=1e-6)
    assert not any(info["safety"].values())
    # A NaN anywhere holds the whole command (the safety filter's rule): no motion, the gripper stays closed.
    _, _, _, _, info = default.step(np.array([0.5, 0.0, np.nan, 0.0, 0.0, 0.0, -1.0], dtype=np.float32))
    np.testing.assert_array_equal(info["executed_action"], np.array([0, 0, 0, 0, 0, 0, 1], np.float32))
    assert info["safety"]["nonfinite"]


# ------------------------------------------------------------------------------------------ each term


Quantity = Callable[[FrankaReachEnv], object]


def _draws(env: FrankaReachEnv, quantity: Quantity, seeds: object = SEEDS) -> list[np.ndarray]:
    out = []
    for seed in seeds:
        env.reset(seed=seed)
        out.append(np.array(quantity(env), dtype=np.float64))
    return out


def _check_varies_and_reproduces(env: FrankaReachEnv, quantity: Quantity) -> list[np.ndarray]:
    """`quantity` after a reset with each seed: a different value per seed, the same again for the same seed."""
    draws = _draws(env, quantity)
    assert len({d.tobytes() for d in draws}) == len(draws), "every seed should draw a different value"
    again = _draws(env, quantity, seeds=reversed(SEEDS))[::-1]
    for a, b in zip(draws, again, strict=True):
        np.testing.assert_array_equal(a, b)
    return draws


def test_friction_draws_within_range() -> None:
    x = 0.3
    env = _env(friction=x)
    nominal = _nominal_model().geom_friction.copy()
    table = env.model.geom("table").id
    pads = [env.model.geom(n).id for n in ("left_pad", "right_pad")]
    scales = _check_varies_and_reproduces(env, lambda e: e.model.geom_friction[table, 0] / nominal[table, 0])
    assert all(1 - x <= s <= 1 + x for s in scales)
    # One factor for every surface (the pads keep their higher friction relative to the table), sliding only.
    scale = env.model.geom_friction[table, 0] / nominal[table, 0]
    assert scale != 1.0
    np.testing.assert_allclose(env.model.geom_friction[pads, 0], nominal[pads, 0] * scale)
    np.testing.assert_array_equal(env.model.geom_friction[:, 1:], nominal[:, 1:])


def test_table_height_moves_the_table_and_not_the_arm() -> None:
    x = 0.01
    env = _env(table_height=x)
    plain = FrankaReachEnv()
    tops = _check_varies_and_reproduces(env, lambda e: e.table_top_z)
    assert all(abs(t - TABLE_TOP_Z) <= x for t in tops)
    for seed in SEEDS:
        obs, _ = env.reset(seed=seed)
        ref, _ = plain.reset(seed=seed)
        # The collision geometry moved with the number the tasks place objects from.
        assert _table_top_seen(env) == pytest.approx(env.table_top_z, abs=1e-9)
        # The robot base stays at the origin: the same seed settles the arm at the same TCP height in the base
        # frame, so the TCP's height above the table drops by exactly the table's rise.
        dz = env.table_top_z - TABLE_TOP_Z
        assert dz != 0
        tcp_z, ref_z = float(obs["state"]["tcp_pose"][2]), float(ref["state"]["tcp_pose"][2])
        assert tcp_z == pytest.approx(ref_z, abs=1e-6)
        assert (tcp_z - env.table_top_z) - (ref_z - TABLE_TOP_Z) == pytest.approx(-dz, abs=1e-6)


def test_controller_gains_draw_within_range() -> None:
    x = 0.25
    env = _env(controller_gains=x)
    cfg = ControllerConfig()
    nominal = np.array([cfg.kp_pos] * 3 + [cfg.kp_rot] * 3)
    ratios = _check_varies_and_reproduces(env, lambda e: e.controller.kp / nominal)
    for r in ratios:
        assert np.all((1 - x <= r) & (r <= 1 + x))
        np.testing.assert_allclose(r, r[0])  # one scale for both stiffnesses
    # Damping follows the ratio (kd = 2 zeta sqrt(kp)), recomputed from the nominal gains (no compounding).
    np.testing.assert_allclose(env.controller.kd, 2 * cfg.damping_ratio * np.sqrt(env.controller.kp))
    np.testing.assert_allclose(env.controller.kp, nominal * env.controller.gain_scale)


def test_camera_pose_jitter_within_bounds() -> None:
    px, rx = 0.02, 0.05
    env = _env(camera_pos=px, camera_rot=rx)
    nominal = _nominal_model()
    poses = _check_varies_and_reproduces(env, lambda e: np.concatenate((e.model.cam_pos, e.model.cam_quat), 1))
    for pose in poses:
        assert np.all(np.abs(pose[:, :3] - nominal.cam_pos) <= px)
        for i in range(nominal.ncam):
            assert 0 < rotvec_angle(pose[i, 3:], nominal.cam_quat[i]) <= rx + 1e-12
    # The cameras the renderer uses (world poses) moved too: the front camera by exactly its offset.
    front = env.model.camera("front").id
    env.reset(seed=SEEDS[-1])
    np.testing.assert_allclose(env.data.cam_xpos[front] - nominal.cam_pos[front],
                               poses[-1][front, :3] - nominal.cam_pos[front], atol=1e-12)
    assert np.linalg.norm(env.data.cam_xpos[front] - nominal.cam_pos[front]) > 0


# ------------------------------------------------------------------------------------------ observation noise


def test_noise_function_keeps_dtype_quaternions_and_inputs() -> None:
    cfg = RandomizationConfig(obs_noise_pos=0.01, obs_noise_vel=0.05, obs_noise_force=2.0)
    clean = {
        "state": {"tcp_pose": np.array([0.5, 0, 0.3, 1, 0, 0, 0], np.float32), "tcp_vel": np.zeros(6, np.float32),
                  "gripper_pos": np.array([0.08], np.float32), "tcp_force": np.zeros(3, np.float32),
                  "tcp_torque": np.zeros(3, np.float32)},
        "task": {"object_pose": np.array([0.4, 0.1, 0.02, 0, 1, 0, 0], np.float32), "hole_pos": np.zeros(3),
                 "goal_width": np.array([0.03], np.float32)},
    }
    keep = {g: {k: v.copy() for k, v in d.items()} for g, d in clean.items()}
    rng = np.random.default_rng(0)
    samples = [add_observation_noise(clean, cfg, rng) for _ in range(4000)]
    _assert_obs_equal(clean, keep)  # inputs untouched
    diff = {(g, k): np.stack([s[g][k] for s in samples]) - clean[g][k] for g, k in
            [("state", "tcp_pose"), ("state", "tcp_vel"), ("state", "tcp_force"), ("state", "tcp_torque"),
             ("task", "object_pose"), ("task", "hole_pos")]}
    for group, key in diff:
        assert samples[0][group][key].dtype == clean[group][key].dtype
    expected = {"tcp_pose": 0.01, "tcp_vel": 0.05, "tcp_force": 2.0, "tcp_torque": 0.2, "object_pose": 0.01,
                "hole_pos": 0.01}
    for (_, key), d in diff.items():
        assert np.std(d[:, :3]) == pytest.approx(expected[key], rel=0.05), key
    np.testing.assert_array_equal(diff[("state", "tcp_pose")][:, 3:], 0)  # quaternions untouched
    np.testing.assert_array_equal(diff[("task", "object_pose")][:, 3:], 0)
    assert all(np.array_equal(s["state"]["gripper_pos"], clean["state"]["gripper_pos"]) for s in samples)
    assert all(np.array_equal(s["task"]["goal_width"], clean["task"]["goal_width"]) for s in samples)


def test_env_observation_noise_has_the_configured_std() -> None:
    terms = {"obs_noise_pos": 0.005, "obs_noise_vel": 0.02, "obs_noise_force": 1.5}
    env = _env(**terms)
    plain = FrankaReachEnv()
    rng = np.random.default_rng(1)
    diffs: dict[str, list[np.ndarray]] = {k: [] for k in ("tcp_pose", "tcp_vel", "tcp_force", "tcp_torque", "goal")}
    obs, _ = env.reset(seed=4)
    ref, _ = plain.reset(seed=4)
    # Noise draws come from a child generator: the task's own draws (the goal) are what they are without noise.
    assert np.array_equal(env.goal, plain.goal)
    for step in range(150):
        if step:
            obs, _, _, _, info = env.step(rng.uniform(-0.5, 0.5, 7).astype(np.float32))
            # Success is scored on the clean state.
            assert info["distance"] == pytest.approx(float(np.linalg.norm(env.data.site_xpos[env._tcp] - env.goal)))
        clean = env._get_obs()
        for key in ("tcp_pose", "tcp_vel", "tcp_force", "tcp_torque"):
            assert obs["state"][key].dtype == np.float32
            diffs[key].append(obs["state"][key].astype(np.float64) - clean["state"][key])
        diffs["goal"].append(obs["task"]["goal_pos"] - clean["task"]["goal_pos"].astype(np.float64))
        np.testing.assert_array_equal(obs["state"]["tcp_pose"][3:], clean["state"]["tcp_pose"][3:])
        np.testing.assert_array_equal(obs["state"]["gripper_pos"], clean["state"]["gripper_pos"])
    expected = {"tcp_pose": terms["obs_noise_pos"], "tcp_vel": terms["obs_noise_vel"],
                "tcp_force": terms["obs_noise_force"], "tcp_torque": terms["obs_noise_force"] / 10,
                "goal": terms["obs_noise_pos"]}
    for key, values in diffs.items():
        d = np.stack(values)[:, :3] if key == "tcp_pose" else np.stack(values)
        assert np.std(d) == pytest.approx(expected[key], rel=0.2), key
    # Same seed, same noise.
    first, _ = env.reset(seed=4)
    again, _ = env.reset(seed=4)
    _assert_obs_equal(first, again)


def test_noisy_observations_stay_in_the_declared_space() -> None:
    box = {"goal_low": (0.35, -0.15, 0.15), "goal_high": (0.36, -0.14, 0.16)}  # a 1 cm goal box, 1 cm of noise
    env = FrankaReachEnv(EnvConfig(**box, randomization=RandomizationConfig(obs_noise_pos=0.01, obs_noise_force=1.0)))
    plain = FrankaReachEnv(EnvConfig(**box))
    outside = 0
    for seed in range(10):
        obs, _ = env.reset(seed=seed)
        obs_step, *_ = env.step(np.zeros(7, np.float32))
        assert env.observation_space.contains(obs) and env.observation_space.contains(obs_step)
        outside += not plain.observation_space["task"]["goal_pos"].contains(obs["task"]["goal_pos"])
    assert outside > 0  # the task's own bounds would not have held the noisy goal
    # Only the noised entries are unbounded; without noise the space is the task's own.
    noisy_pose, pose = env.observation_space["state"]["tcp_pose"], plain.observation_space["state"]["tcp_pose"]
    assert np.all(np.isinf(noisy_pose.low[:3])) and np.array_equal(noisy_pose.low[3:], pose.low[3:])
    assert env.observation_space["state"]["gripper_pos"] == plain.observation_space["state"]["gripper_pos"]
    np.testing.assert_array_equal(plain.observation_space["task"]["goal_pos"].low, np.float32(box["goal_low"]))


# ------------------------------------------------------------------------------------------ action latency


def _x_moves(latency: int) -> tuple[list[float], list[np.ndarray]]:
    """TCP x displacement during each of 3 steps of the sequence (+x, 0, 0), and the executed actions."""
    env = FrankaReachEnv(EnvConfig(reset_joint_noise=0.0, randomization=RandomizationConfig(action_latency=latency)))
    obs, _ = env.reset(seed=0)
    actions = [np.array([1, 0, 0, 0, 0, 0, 1], np.float32)] + [np.zeros(7, np.float32)] * 2
    moves, executed, x = [], [], float(obs["state"]["tcp_pose"][0])
    for a in actions:
        obs, _, _, _, info = env.step(a)
        moves.append(float(obs["state"]["tcp_pose"][0]) - x)
        executed.append(info["executed_action"])
        x = float(obs["state"]["tcp_pose"][0])
    return moves, executed


def test_action_latency_delays_the_arm_by_one_step() -> None:
    now, executed_now = _x_moves(0)
    late, executed_late = _x_moves(1)
    step = EnvConfig().action_scale_pos
    assert now[0] > 0.5 * step and abs(late[0]) < 0.05 * step, (now, late)  # latency 1: nothing happens in step 1
    assert late[1] > 0.5 * step  # ... and step 2 moves as step 1 did without latency
    assert late[1] == pytest.approx(now[0], rel=0.05)
    # The executed action is the commanded change in action units; its gripper entry is the gripper state after
    # the step (+1 closed, -1 open), so the zero actions after "close" read +1.
    closed_then_hold = [[1, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 1]]
    for got, want in zip(executed_now, closed_then_hold, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    # Latency 1 executes the previous action; the first step of an episode holds (no motion, the gripper stays
    # open as the reset left it).
    np.testing.assert_allclose(executed_late[0], [0, 0, 0, 0, 0, 0, -1], atol=1e-6)
    for got, want in zip(executed_late[1:], closed_then_hold[:-1], strict=True):
        assert got.dtype == np.float32 and got.shape == (7,)
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_latency_restarts_with_a_hold_at_each_reset() -> None:
    env = _env(action_latency=1)
    env.reset(seed=0)
    env.step(np.ones(7, np.float32))
    env.reset(seed=0)
    _, _, _, _, info = env.step(-np.ones(7, np.float32))
    np.testing.assert_allclose(info["executed_action"], [0, 0, 0, 0, 0, 0, -1], atol=1e-6)  # hold, gripper open


# ------------------------------------------------------------------------------------------ bad values


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("table_height", -0.01),
        ("friction", -0.1),
        ("friction", 1.0),
        ("friction", 1.5),
        ("controller_gains", 1.0),
        ("camera_pos", -0.01),
        ("camera_rot", 4.0),
        ("obs_noise_pos", -1e-3),
        ("obs_noise_vel", float("nan")),
        ("obs_noise_force", -1.0),
        ("action_latency", 2),
        ("action_latency", -1),
    ],
)
def test_bad_values_raise_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"^env\.randomization\.{field}: got {re.escape(repr(value))}, expected "):
        _env(**{field: value})


def test_table_cannot_rise_into_the_arm_base() -> None:
    clearance = base_clearance(_nominal_model())
    assert 0 < clearance < 0.1
    check_config(RandomizationConfig(table_height=clearance), clearance)
    with pytest.raises(ValueError, match=r"^env\.randomization\.table_height: got .*, expected in \[0, "):
        _env(table_height=clearance + 1e-3)
