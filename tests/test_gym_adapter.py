"""Any Gymnasium env with Box / Dict-of-Box observations and a Box action trains through the serl_stack contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from env_support import check_env_strict
from gymnasium import spaces

from serl_stack.config import EnvConfig
from serl_stack.data.obs import flatten_keys, to_vector, vector_keys
from serl_stack.envs import REACH_ID, make_env
from serl_stack.envs.gym_adapter import GymAdapter
from serl_stack.inference import evaluate
from serl_stack.transport.protocol import check_transition, make_spec

ROOT = Path(__file__).resolve().parents[1]


class TinyDictEnv(gym.Env):
    """Nested Dict-of-Box float64 observations, an asymmetric float64 Box action; records what it was sent."""

    metadata = {"render_modes": []}

    def __init__(self, action_low: Any = (0.0, -3.0), action_high: Any = (10.0, 3.0)) -> None:
        self.observation_space = spaces.Dict({
            "pos": spaces.Box(-5.0, 5.0, (2,), np.float64),
            "inner": spaces.Dict({"vel": spaces.Box(-100.0, 100.0, (1,), np.float64)}),
        })
        self.action_space = spaces.Box(np.asarray(action_low, np.float64), np.asarray(action_high, np.float64),
                                       dtype=np.float64)
        self.received: list[np.ndarray] = []
        self._pos = np.zeros(2)
        self._t = 0

    def _obs(self) -> dict[str, Any]:
        return {"pos": self._pos.copy(), "inner": {"vel": np.array([0.1 * self._t])}}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self._pos = self.np_random.uniform(-1.0, 1.0, 2)
        self._t = 0
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        self.received.append(np.array(action))
        self._t += 1
        self._pos = np.clip(self._pos + 0.01 * (action - self.action_space.low), -5.0, 5.0)
        return self._obs(), -float(np.sum(self._pos**2)), False, self._t >= 10, {"marker": self._t}


def test_box_env_gets_float32_state_observation_and_unit_actions() -> None:
    env = make_env(EnvConfig(id="Pendulum-v1", max_episode_steps=200))
    assert isinstance(env, GymAdapter)
    assert env.spec is not None and env.spec.max_episode_steps == 200  # env.max_episode_steps is the TimeLimit
    assert env.action_space == spaces.Box(-1.0, 1.0, (1,), np.float32)
    obs, _ = env.reset(seed=3)
    assert list(obs) == ["state"] and list(obs["state"]) == ["observation"]
    assert obs["state"]["observation"].dtype == np.float32 and obs["state"]["observation"].shape == (3,)
    assert obs in env.observation_space
    flat = flatten_keys(obs)
    keys = vector_keys(flat)
    assert keys == ("state/observation",) and to_vector(flat, keys).shape == (3,)
    # The wire fixes its spec from the first observation; every later one must match it.
    spec = make_spec(obs, np.zeros(1, np.float32))
    steps = 0
    truncated = terminated = False
    while not (terminated or truncated):
        next_obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        check_transition({"observation": obs, "action": np.zeros(1, np.float32), "executed_action":
                          np.zeros(1, np.float32), "reward": float(reward), "next_observation": next_obs,
                          "terminated": terminated, "truncated": truncated, "episode": 0}, spec)
        obs, steps = next_obs, steps + 1
    assert truncated and steps == 200
    # Pendulum's rgb_array render needs pygame, not the adapter's business.
    check_env_strict(env, wrapped=True, skip_render_check=True)
    env.close()


def test_mujoco_env_halfcheetah() -> None:
    # Gymnasium's MuJoCo envs import imageio (the `gymnasium[mujoco]` extra), which serl_stack does not require.
    pytest.importorskip("imageio", reason="HalfCheetah-v5 needs gymnasium[mujoco] (imageio)")
    # benchmarks/gym_parity.py runs Gymnasium's 1000-step episodes: they need env.max_episode_steps=1000.
    env = make_env(EnvConfig(id="HalfCheetah-v5", max_episode_steps=1000))
    assert env.action_space.shape == (6,) and env.spec is not None and env.spec.max_episode_steps == 1000
    obs, _ = env.reset(seed=0)
    assert obs["state"]["observation"].dtype == np.float32 and obs["state"]["observation"].shape == (17,)
    obs, *_ = env.step(env.action_space.sample())
    assert obs in env.observation_space
    env.close()


def test_dict_env_keeps_nested_keys_under_state() -> None:
    env = GymAdapter(TinyDictEnv())
    obs, _ = env.reset(seed=0)
    assert obs in env.observation_space
    assert set(flatten_keys(obs)) == {"state/pos", "state/inner/vel"}
    assert all(v.dtype == np.float32 for v in flatten_keys(obs).values())
    obs, reward, terminated, truncated, info = env.step(np.zeros(2, np.float32))
    assert info == {"marker": 1} and not terminated and not truncated  # info and flags pass through untouched
    assert obs["state"]["inner"]["vel"].tolist() == [pytest.approx(0.1)]
    check_env_strict(env, wrapped=True, skip_render_check=True)  # no spec: nothing to rebuild in a render mode


def test_action_rescaling_is_exact() -> None:
    inner = TinyDictEnv(action_low=(0.0, -3.0), action_high=(10.0, 3.0))
    env = GymAdapter(inner)
    env.reset(seed=0)
    for a, expected in [((-1, -1), (0.0, -3.0)), ((1, 1), (10.0, 3.0)), ((0, 0), (5.0, 0.0)),
                        ((0.5, -0.5), (7.5, -1.5)), ((-1, 1), (0.0, 3.0))]:
        env.step(np.asarray(a, np.float32))
        assert inner.received[-1].tolist() == list(expected), (a, inner.received[-1])
        assert inner.received[-1].dtype == np.float64  # the env's own action dtype
    env.step(np.asarray([7.0, -7.0], np.float32))  # out of [-1, 1]: clipped, never outside the env's bounds
    assert inner.received[-1].tolist() == [10.0, -3.0]


def test_unsupported_spaces_are_rejected_with_what_is_supported() -> None:
    with pytest.raises(ValueError, match=r"CartPole-v1.*action_space.*Discrete\(2\).*supported: observation: Box"):
        make_env(EnvConfig(id="CartPole-v1"))
    with pytest.raises(ValueError, match=r"action_space: bounds .*inf.*expected finite bounds"):
        GymAdapter(TinyDictEnv(action_low=(0.0, -np.inf), action_high=(1.0, np.inf)))
    bad = TinyDictEnv()
    bad.observation_space = spaces.Dict({"pos": spaces.Discrete(3)})
    with pytest.raises(ValueError, match=r"observation_space\.pos: unsupported space Discrete\(3\)"):
        GymAdapter(bad)
    with pytest.raises(ValueError, match=rf"env.id: unknown env 'NoSuchEnv-v0'.*{REACH_ID}.*an id registered with "
                                         "Gymnasium"):
        make_env(EnvConfig(id="NoSuchEnv-v0"))


class _TwoFlagsEnv(TinyDictEnv):
    """Reports its own `"success"` at every step, and `"goal_hit"` (a numpy bool) from the second step on."""

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        obs, reward, terminated, truncated, _ = super().step(action)
        hit = {"goal_hit": np.bool_(self._t >= 3)} if self._t >= 2 else {}
        return obs, reward, terminated, truncated, {"success": "the env's own", "grid": np.ones(2), **hit}


def test_success_key_is_reported_as_success_and_only_where_the_env_gives_it() -> None:
    env = GymAdapter(_TwoFlagsEnv(), success_key="goal_hit")
    _, info = env.reset(seed=0)
    assert "success" not in info
    infos = [env.step(np.zeros(2, np.float32))[-1] for _ in range(3)]
    # Step 1 has no goal_hit: the env's own "success" does not stand in for it.
    assert "success" not in infos[0] and infos[0]["grid"].tolist() == [1.0, 1.0]
    assert infos[1]["success"] is False and infos[2]["success"] is True  # bool, not numpy.bool_
    assert infos[2]["goal_hit"] is not None  # the env's own key stays
    own = GymAdapter(_TwoFlagsEnv())  # success_key "success": the env's own value, as a bool
    own.reset(seed=0)
    assert own.step(np.zeros(2, np.float32))[-1]["success"] is True
    grid = GymAdapter(_TwoFlagsEnv(), success_key="grid")
    grid.reset(seed=0)
    with pytest.raises(ValueError, match=r"info\['grid'\] \(env.success_key\): got array\(\[1., 1.\]\), expected a "
                                         "bool-like scalar"):
        grid.step(np.zeros(2, np.float32))


def test_serl_tasks_are_still_built_from_their_config() -> None:
    env = make_env(EnvConfig(max_episode_steps=7))
    assert not isinstance(env, GymAdapter) and env.unwrapped.__class__.__name__ == "FrankaReachEnv"
    env.close()


class _ZeroPolicy:
    """A `serl_stack.inference.Policy` that always applies zero torque."""

    version = 1

    def act(self, obs: dict, key: Any, deterministic: bool = False) -> np.ndarray:
        return np.zeros(1, np.float32)

    def sample_actions(self, obs: dict, k: int, key: Any) -> np.ndarray:
        return np.zeros((k, 1, 1), np.float32)

    def reset(self) -> None:
        pass


def test_evaluate_reports_null_success_for_envs_without_success() -> None:
    env = make_env(EnvConfig(id="Pendulum-v1"))
    result = evaluate(env, _ZeroPolicy(), episodes=2, first_seed=5)
    assert result["success_rate"] is None and result["length_mean"] == 100.0  # env.max_episode_steps' default
    env.close()


def _random_return(episodes: int, first_seed: int) -> float:
    env = make_env(EnvConfig(id="Pendulum-v1", max_episode_steps=200))
    env.action_space.seed(0)
    returns = []
    for i in range(episodes):
        env.reset(seed=first_seed + i)
        ret, done = 0.0, False
        while not done:
            _, r, terminated, truncated, _ = env.step(env.action_space.sample())
            ret, done = ret + float(r), terminated or truncated
        returns.append(ret)
    env.close()
    return float(np.mean(returns))


@pytest.mark.slow
def test_serl_train_learns_pendulum(tmp_path: Path) -> None:
    """The product path (learner + actor processes over ZeroMQ) on a standard task: the policy swings up.

    8000 env steps (7500 updates at UTD 1) with small nets and lr 1e-3: about 60 s on 2 busy cores. Training
    returns reach about -150 after ~4000 steps; shorter runs sometimes end in a still-unstable policy.
    """
    run = tmp_path / "run"
    settings = {
        "env.id": "Pendulum-v1", "env.max_episode_steps": 200, "agent.discount": 0.99, "agent.init_temperature": 1.0,
        "agent.hidden_dims": "[64, 64]", "agent.batch_size": 128, "agent.actor_lr": 0.001,
        "agent.critic_lr": 0.001, "agent.temp_lr": 0.001, "train.total_env_steps": 8000,
        "train.start_steps": 500, "train.eval_episodes": 5, "train.log_every": 500,
        "train.checkpoint_every": 100000,
    }
    overrides = [arg for k, v in settings.items() for arg in ("--set", f"{k}={v}")]
    proc = subprocess.run(
        [sys.executable, "-m", "serl_stack.cli", "train", "--run-dir", str(run), *overrides],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "MUJOCO_GL": "egl"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + (run / "learner.log").read_text()
    assert "success n/a" in proc.stdout
    result = json.loads((run / "eval.json").read_text())
    assert result["success_rate"] is None and result["length_mean"] == 200.0
    random = _random_return(result["episodes"], result["first_seed"])
    assert random < -900, random  # the seeds are not trivially easy
    assert result["return_mean"] > -600 and result["return_mean"] > random + 500, (result, random)
