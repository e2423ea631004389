"""Any Gymnasium env, really: `module:EnvId` ids, `env.kwargs`, `env.success_key`, `env.max_episode_steps` as a
TimeLimit, Franka-only fields refused for other envs, and `preflight`, on the real toy env in tests/toy_envs.py."""

from __future__ import annotations

import dataclasses
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

from serl_stack.config import AgentConfig, Config, ConfigError, ControllerConfig, EnvConfig, apply_overrides
from serl_stack.envs import REACH_ID, make_env, preflight
from serl_stack.envs.gym_adapter import GymAdapter

ROOT = Path(__file__).resolve().parents[1]
TOY = "tests.toy_envs:ToyGoal-v0"


@pytest.fixture(autouse=True)
def _repo_root_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # `python -m serl_stack.cli` run from the repository root has it on sys.path (so `tests` is a namespace package
    # there); the pytest script does not, so the tests put it there the same way.
    monkeypatch.syspath_prepend(str(ROOT))


def _toy(**changes: Any) -> EnvConfig:
    return dataclasses.replace(EnvConfig(id=TOY, success_key="reached"), **changes)


def _drive_to_goal(env: gym.Env, seed: int, limit: int = 60) -> list[tuple[bool, bool, dict]]:
    """Full steps straight at the goal until the episode ends: (terminated, truncated, info) per step."""
    obs, _ = env.reset(seed=seed)
    out = []
    for _ in range(limit):
        direction = obs["state"]["goal"] - obs["state"]["pos"]
        action = np.clip(direction / 0.2, -1.0, 1.0).astype(np.float32)
        obs, _, terminated, truncated, info = env.step(action)
        out.append((terminated, truncated, info))
        if terminated or truncated:
            break
    return out


# ------------------------------------------------------------------------------------------ building


def test_module_id_with_kwargs_and_success_key_builds_the_adapted_env() -> None:
    env = make_env(_toy(kwargs={"goal_radius": 0.3}))
    assert isinstance(env, GymAdapter) and type(env.unwrapped).__name__ == "ToyGoalEnv"
    assert env.unwrapped.goal_radius == 0.3  # the kwarg reached the constructor
    obs, info = env.reset(seed=0)
    assert set(obs["state"]) == {"pos", "goal"} and obs in env.observation_space
    assert info["success"] is False and info["reached"] is False  # the env's own key stays, "success" is added
    steps = _drive_to_goal(env, seed=0)
    *before, (terminated, truncated, last) = steps
    assert terminated and not truncated and last["success"] is True and last["reached"] is True
    assert before and all(info["success"] is False for _, _, info in before)
    assert all(info["success"] == info["reached"] for _, _, info in steps)
    env.close()


def test_success_follows_the_radius_the_kwarg_set() -> None:
    """The same seed and policy take more steps to reach a smaller goal: the kwarg is live, not just stored."""
    lengths = {}
    for radius in (0.05, 0.4):
        env = make_env(_toy(kwargs={"goal_radius": radius}))
        steps = _drive_to_goal(env, seed=3)
        assert steps[-1][0] and steps[-1][2]["success"] is True
        lengths[radius] = len(steps)
        env.close()
    assert lengths[0.05] > lengths[0.4], lengths


def test_no_success_key_when_the_env_never_reports_it() -> None:
    env = make_env(EnvConfig(id=TOY))  # success_key "success": the toy env reports "reached" only
    _, info = env.reset(seed=0)
    assert "success" not in info
    steps = _drive_to_goal(env, seed=0)
    assert steps[-1][0]  # it did reach the goal; still nothing is said about success
    assert all("success" not in info for _, _, info in steps)
    env.close()
    pendulum = make_env(EnvConfig(id="Pendulum-v1", success_key="is_success"))
    _, info = pendulum.reset(seed=0)
    assert "success" not in info and "success" not in pendulum.step(np.zeros(1, np.float32))[-1]
    pendulum.close()


def test_max_episode_steps_replaces_the_registered_time_limit() -> None:
    assert gym.spec("ToyGoal-v0").max_episode_steps == 50  # registered by importing tests.toy_envs
    env = make_env(_toy(max_episode_steps=5))
    assert env.spec is not None and env.spec.max_episode_steps == 5
    env.reset(seed=0)
    flags = [env.step(np.zeros(2, np.float32))[2:4] for _ in range(5)]  # standing still never reaches the goal
    assert flags == [(False, False)] * 4 + [(False, True)]
    env.close()
    pendulum = make_env(EnvConfig(id="Pendulum-v1"))  # registered 200: the config's default 100 applies
    assert pendulum.spec is not None and pendulum.spec.max_episode_steps == 100
    pendulum.close()


def test_overrides_from_the_command_line_reach_the_env() -> None:
    cfg = apply_overrides(Config(), [f"env.id={TOY}", "env.kwargs.goal_radius=0.25", "env.success_key=reached",
                                     "env.max_episode_steps=12"])
    env = make_env(cfg.env)
    assert env.unwrapped.goal_radius == 0.25 and env.spec.max_episode_steps == 12
    _, info = env.reset(seed=1)
    assert info["success"] is False
    env.close()


def test_toy_env_passes_the_strict_checker_raw_and_adapted() -> None:
    from tests.toy_envs import ToyGoalEnv

    check_env_strict(ToyGoalEnv(), skip_render_check=True)  # no spec: it could not be rebuilt for render modes
    env = make_env(_toy(kwargs={"goal_radius": 0.2}))
    check_env_strict(env, wrapped=True)
    env.close()


def test_the_id_is_registered_only_by_importing_its_module() -> None:
    """In a fresh interpreter at the repository root: the bare id is unknown, `module:EnvId` builds it."""
    code = (
        "from serl_stack.config import ConfigError, EnvConfig\n"
        "from serl_stack.envs import make_env\n"
        "try:\n"
        "    make_env(EnvConfig(id='ToyGoal-v0'))\n"
        "except ConfigError as e:\n"
        "    print('bare:', e)\n"
        f"print('module:', type(make_env(EnvConfig(id={TOY!r})).unwrapped).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MUJOCO_GL": "egl"})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("bare: env.id: unknown env 'ToyGoal-v0'"), lines
    assert lines[1] == "module: ToyGoalEnv", lines


class _StraightToGoal:
    """A `serl_stack.inference.Policy`: full steps straight at the goal (the toy env's optimal policy)."""

    version = 1

    def act(self, obs: dict, key: Any, deterministic: bool = False) -> np.ndarray:
        return np.clip((obs["state"]["goal"] - obs["state"]["pos"]) / 0.2, -1.0, 1.0).astype(np.float32)

    def sample_actions(self, obs: dict, k: int, key: Any) -> np.ndarray:
        return np.repeat(self.act(obs, key)[None, None], k, axis=0)

    def reset(self) -> None:
        pass


def test_evaluation_reads_the_mapped_success() -> None:
    """Downstream code reads only info["success"]: the success rate comes from the env's own key through it."""
    from serl_stack.inference import evaluate

    env = make_env(_toy(max_episode_steps=4))  # too short for some starts: a rate strictly between 0 and 1
    result = evaluate(env, _StraightToGoal(), episodes=10, first_seed=0)
    assert result["success_rate"] is not None and 0.0 < result["success_rate"] < 1.0, result
    env.close()
    env = make_env(EnvConfig(id=TOY, max_episode_steps=4))  # the env's key not named: no notion of success
    assert evaluate(env, _StraightToGoal(), episodes=3, first_seed=0)["success_rate"] is None
    env.close()


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        (EnvConfig(id="tests.no_such_module:ToyGoal-v0"),
         r"env.id: 'tests.no_such_module:ToyGoal-v0': importing module 'tests.no_such_module' failed "
         r"\(ModuleNotFoundError: No module named 'tests.no_such_module'\)"),
        (EnvConfig(id="tests.toy_envs:NoSuchGoal-v0"),
         r"env.id: 'tests.toy_envs:NoSuchGoal-v0': module 'tests.toy_envs' imported but registered no env "
         r"'NoSuchGoal-v0'; expected one of the ids it registers: \['ToyGoal-v0'\]"),
        (EnvConfig(id="Pendulm-v1"), r"env.id: unknown env 'Pendulm-v1' \(close: Pendulum-v1.*expected a serl_stack "
                                     r"task .*FrankaReach-v0.*module:EnvId"),
        (EnvConfig(id=":ToyGoal-v0"), r"env.id: ':ToyGoal-v0' is not a usable id; expected .*module:EnvId"),
        (_toy(kwargs={"radius": 0.2}), r"env.kwargs: \['radius'\] not taken by 'ToyGoal-v0' .*expected some of "
                                       r"\['goal_radius', 'step_size'\]"),
        (_toy(kwargs={"goal_radius": -1.0}), r"env.kwargs: building .* failed \(ValueError: goal_radius: got -1.0, "
                                             r"expected > 0\)"),
        (_toy(kwargs={"max_episode_steps": 9}), r"env.kwargs.max_episode_steps: got 9, expected no such entry: set "
                                                r"env.max_episode_steps"),
        (_toy(dense_reward=False), r"^env.dense_reward=False \(default True\): this applies only to the serl_stack "
                                   r"tasks .*env.id='tests.toy_envs:ToyGoal-v0' is not one of them"),
        (EnvConfig(id="Pendulum-v1", control_hz=5.0, controller=ControllerConfig(kp_pos=100.0), cameras=("front",)),
         r"^env.control_hz=5.0 \(default 10.0\), env.cameras=\('front',\) \(default \(\)\), env.controller.kp_pos="
         r"100.0 \(default 600.0\): these apply only to the serl_stack tasks"),
        (_toy(success_key=""), r"env.success_key: got '', expected the name of the info key"),
        (EnvConfig(kwargs={"goal_radius": 0.1}), rf"env.kwargs: got \{{'goal_radius': 0.1\}} for the serl_stack task "
                                                 rf"'{REACH_ID}', expected \{{\}}"),
        (EnvConfig(success_key="reached"), rf"env.success_key: got 'reached' for the serl_stack task '{REACH_ID}', "
                                           r"expected 'success'"),
        (EnvConfig(id="CartPole-v1"), r"env.id='CartPole-v1': action_space: unsupported space Discrete\(2\)"),
    ],
)
def test_config_errors_name_the_field(cfg: EnvConfig, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_env(cfg)


def test_a_module_that_fails_to_import_is_named_with_its_error(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken_envs.py").write_text("raise RuntimeError('the robot driver is not installed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"env.id: 'broken_envs:Broken-v0': importing module 'broken_envs' failed "
                                          r"\(RuntimeError: the robot driver is not installed\)"):
        make_env(EnvConfig(id="broken_envs:Broken-v0"))


def test_render_mode_from_kwargs_and_from_the_caller_must_agree() -> None:
    cfg = EnvConfig(id="Pendulum-v1", kwargs={"render_mode": "rgb_array"})
    env = make_env(cfg)
    assert env.render_mode == "rgb_array"
    env.close()
    make_env(cfg, render_mode="rgb_array").close()
    with pytest.raises(ConfigError, match=r"env.kwargs.render_mode: got 'rgb_array', but this env is built to "
                                          r"render 'human'"):
        make_env(cfg, render_mode="human")


# ------------------------------------------------------------------------------------------ preflight


def test_preflight_accepts_runnable_configs() -> None:
    preflight(Config())
    preflight(Config(env=_toy(kwargs={"goal_radius": 0.2}), agent=AgentConfig(obs_keys=("state/pos", "state/goal"))))


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        (Config(env=_toy(), agent=AgentConfig(obs_keys=("state/pos", "state/velocity"))),
         r"agent.obs_keys: \['state/velocity'\] not in the observation; expected some of \['state/goal', "
         r"'state/pos'\] \(the observation of env.id='tests.toy_envs:ToyGoal-v0'\)"),
        (Config(env=_toy(), agent=AgentConfig(image_keys=("images/front",))),
         r"agent.image_keys: 'images/front' is not an image of the observation"),
        (Config(agent=AgentConfig(obs_keys=("task/goal",), image_keys=("images/wrist",))),
         r"agent.obs_keys: \['task/goal'\] not in .*; agent.image_keys: 'images/wrist' is not an image"),
        (Config(env=_toy(dense_reward=False)), r"env.dense_reward=False"),
        (Config(env=EnvConfig(id="tests.toy_envs:Nope-v0")), r"env.id: 'tests.toy_envs:Nope-v0'"),
    ],
)
def test_preflight_names_the_field(cfg: Config, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        preflight(cfg)


def test_preflight_imports_no_jax() -> None:
    """The CLI runs it before the learner and actor start; importing JAX would cost seconds there."""
    code = (
        "import sys\n"
        "from serl_stack.config import Config, EnvConfig\n"
        "from serl_stack.envs import preflight\n"
        f"preflight(Config(env=EnvConfig(id={TOY!r})))\n"
        "print(sorted(m for m in ('jax', 'flax', 'optax') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MUJOCO_GL": "egl"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_serl_train_learns_an_env_defined_outside_serl_stack(tmp_path: Path) -> None:
    """The product path on a third party's env: `tests/toy_envs.py` registers its id only when imported, takes a
    constructor kwarg and reports success under its own info key. `serl train` reaches it through
    `module:EnvId`, passes the kwarg, logs success from that key, and the policy learns the task."""
    from serl_stack.runlog import event_files, read_scalars

    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "serl_stack.cli", "train", "--run-dir", str(run), "--set", f"env.id={TOY}",
         "--set", "env.kwargs.goal_radius=0.1", "--set", "env.success_key=reached",
         "--set", "env.max_episode_steps=20", "--set", "train.total_env_steps=3000", "--set", "train.start_steps=500",
         "--set", "train.eval_episodes=20", "--set", "agent.hidden_dims=[64, 64]"],
        capture_output=True, text=True, timeout=900, cwd=ROOT, env={**os.environ, "MUJOCO_GL": "egl"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((run / "eval.json").read_text())
    assert result["episodes"] == 20 and result["success_rate"] >= 0.8, result
    successes = [v for f in event_files(run) for tag, _, v in read_scalars(f) if tag == "episode/success"]
    assert len(successes) > 50 and 0.0 < np.mean(successes) < 1.0  # logged from info["reached"], every episode
    assert np.mean(successes[-20:]) > np.mean(successes[:20])  # and it learned while training
