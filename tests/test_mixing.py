"""Conservative mixing in the actor (serl_stack/mixing.py) on the real pick-cube env and a real PolicyRunner.

What is checked: `check_mixing` refuses configs the mixers cannot keep their guarantee under (naming the field);
`MixedActing` runs the baseline while no learned parameters exist, and the learned policy (the runner's own
inference, value bound from the broadcast critic) once the bound holds; the mixer's state survives an actor
restart; snapshots store the policy an episode ran, frozen against later changes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import msgpack
import numpy as np
import pytest
from flax import serialization

from serl_stack.agents.sac import SACAgent
from serl_stack.config import AgentConfig, Config, ConfigError, EnvConfig, MixingConfig, dump
from serl_stack.envs import make_env
from serl_stack.inference import PolicyRunner
from serl_stack.mixing import (
    MIXER_STATE,
    MixedActing,
    check_mixing,
    load_snapshot,
    save_snapshot,
    snapshots,
    state_vector,
)
from serl_stack.safety.estimates import ValueBound
from serl_stack.safety.mixer_state import MixerStateError
from serl_stack.safety.stepmix import EpsMix, StepMix, make_mixer

pytestmark = pytest.mark.filterwarnings("ignore:.*infinity.*:UserWarning")

PICK = "FrankaPickCube-v0"


def _cfg(mode: str = "stepmix", **mixing: object) -> Config:
    return Config(
        env=EnvConfig(id=PICK, dense_reward=False, max_episode_steps=12),
        agent=AgentConfig(hidden_dims=(16, 16), num_critics=2),
        mixing=MixingConfig(**{"mode": mode, "baseline_episodes": 2, "value_samples": 3, **mixing}),
    )


class Still:
    """A baseline `Policy` that never moves (so pick-cube's sparse reward stays 0) and counts its actions."""

    def __init__(self, action_dim: int) -> None:
        self.calls = 0
        self.resets = 0
        self.action = np.zeros(action_dim, np.float32)

    def act(self, obs: object, key: object, deterministic: bool = False) -> np.ndarray:
        self.calls += 1
        return self.action

    def sample_actions(self, obs: object, k: int, key: object) -> np.ndarray:
        return np.repeat(self.action[None, None], k, axis=0)

    def reset(self) -> None:
        self.resets += 1


@pytest.fixture(scope="module")
def env():
    e = make_env(_cfg().env)
    yield e
    e.close()


def _example(env) -> tuple[dict, int]:
    obs, _ = env.reset(seed=0)
    return obs, env.action_space.shape[0]


def _runner(env, cfg: Config) -> tuple[PolicyRunner, SACAgent]:
    """The actor's runner for `cfg` (with the critic when mixing is on, as the actor builds it) and an agent whose
    parameters it can be given."""
    obs, _ = env.reset(seed=0)
    samples = cfg.mixing.value_samples if cfg.mixing.mode != "off" else 0
    runner = PolicyRunner(obs, env.action_space.shape[0], cfg.agent, critic_samples=samples)
    agent = SACAgent.create(0, runner.observe(obs).shape[-1], env.action_space.shape[0], cfg.agent)
    return runner, agent


def _broadcast(runner: PolicyRunner, agent: SACAgent, version: int = 1) -> None:
    """What the actor does with the learner's params message (value_params when mixing is on)."""
    runner.load(version, jax.tree.map(np.asarray, serialization.to_state_dict(agent.value_params)))


def _acting(cfg: Config, baseline, runner: PolicyRunner, deterministic: bool = False) -> MixedActing:
    """MixedActing with a fresh mixer for `cfg.mixing` (discount 0.96, seed 0)."""
    mixer = make_mixer(cfg.mixing, discount=0.96, rng=np.random.default_rng(0))
    return MixedActing(mixer, baseline, runner, deterministic)


def _past_warmup(env, acting: MixedActing, runner: PolicyRunner, agent: SACAgent) -> None:
    """The mixer's baseline_episodes (2) warm-up episodes, then the learner's first parameters arrive."""
    for seed in range(2):
        _episode(env, acting, seed)
    _broadcast(runner, agent)


def _episode(env, acting: MixedActing, seed: int) -> dict[str, float]:
    obs, _ = env.reset(seed=seed)
    acting.begin_episode()
    key = jax.random.PRNGKey(seed)
    done = False
    while not done:
        key, sub = jax.random.split(key)
        action = acting.act(obs, sub)
        assert action.shape == env.action_space.shape and np.all(np.isfinite(action))
        obs, reward, terminated, truncated, _ = env.step(action)
        acting.record_reward(float(reward))
        done = terminated or truncated
    return acting.end_episode()


# ----------------------------------------------------------------------------------------------- configs


def test_check_mixing_accepts_off_and_a_sparse_scripted_task() -> None:
    check_mixing(Config())  # mode off: dense reward is fine
    check_mixing(_cfg("epsmix"))
    check_mixing(_cfg("stepmix", snapshot_every=10))


def test_check_mixing_names_a_task_without_a_baseline() -> None:
    with pytest.raises(ConfigError, match="env.id 'Pendulum-v1' has no scripted one"):
        check_mixing(dataclasses.replace(_cfg("stepmix"), env=EnvConfig(id="Pendulum-v1", dense_reward=False)))


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        (dataclasses.replace(_cfg("epsmix"), env=EnvConfig(id=PICK, dense_reward=True)), "env.dense_reward"),
        (_cfg("epsmix", alpha=1.5), "mixing.alpha"),
        (_cfg("stepmix", baseline_episodes=1), "mixing.baseline_episodes"),
        (_cfg("stepmix", snapshot_every=-1), "mixing.snapshot_every"),
    ],
)
def test_the_config_validation_names_mixing_fields(cfg: Config, match: str) -> None:
    """Ranges and the rewards >= 0 rule are the config's own checks (config.validate), not check_mixing's."""
    from serl_stack.config import validate

    with pytest.raises(ConfigError, match=match):
        validate(cfg)


def test_from_config_is_none_when_off_and_uses_the_scripted_baseline(env) -> None:
    off = _cfg("off")
    runner, _ = _runner(env, off)
    assert MixedActing.from_config(off, runner, seed=0, example=_example(env)) is None
    cfg = _cfg("epsmix")
    runner, _ = _runner(env, cfg)
    acting = MixedActing.from_config(cfg, runner, seed=0, example=_example(env))
    assert isinstance(acting.mixer, EpsMix) and acting.mixer.cfg.baseline_episodes == 2
    # The task's scripted controller: it succeeds at pick-cube, so warm-up episodes earn reward.
    long_env = make_env(dataclasses.replace(cfg.env, max_episode_steps=100))
    try:
        record = _episode(long_env, acting, seed=3)
    finally:
        long_env.close()
    assert record["warmup"] == 1.0 and record["return"] > 0.0 and record["learned_steps"] == 0.0


def test_state_vector_flattens_the_state_part() -> None:
    assert state_vector({"state": np.ones((2, 3), np.float32), "image/wrist": np.zeros((4, 4, 3))}).shape == (6,)
    assert state_vector(np.arange(4.0)).dtype == np.float64


# ---------------------------------------------------------------------------------------------- acting


def test_baseline_acts_until_the_first_parameters_arrive(env) -> None:
    cfg = _cfg("stepmix")
    runner, _ = _runner(env, cfg)
    baseline = Still(env.action_space.shape[0])
    acting = _acting(cfg, baseline, runner)
    # More than baseline_episodes: U is ready, but with no learned policy every episode stays a warm-up one.
    for seed in range(4):
        record = _episode(env, acting, seed)
        assert record["warmup"] == 1.0 and record["learned_steps"] == 0.0 and record["switch_step"] == -1.0
    assert baseline.calls == 4 * cfg.env.max_episode_steps and baseline.resets == 4
    assert acting.mixer.baseline.n == 4  # every warm-up episode fed U


def test_stepmix_switches_to_the_runners_policy_when_the_bound_holds(env) -> None:
    """A baseline worth nothing (U = 0) makes every plan switch at step 0: the learned policy then acts for the
    whole episode, with exactly the runner's actions, and the bound at the switch state (which calibrates kappa)
    came from the broadcast critic (trusted here: kappa = 1 before any calibration)."""
    cfg = _cfg("stepmix", kappa=1.0)
    runner, agent = _runner(env, cfg)
    baseline = Still(env.action_space.shape[0])
    acting = _acting(cfg, baseline, runner, deterministic=True)
    _past_warmup(env, acting, runner, agent)
    calls = baseline.calls
    obs, _ = env.reset(seed=7)
    acting.begin_episode()
    action = acting.act(obs, jax.random.PRNGKey(0))
    np.testing.assert_allclose(action, runner.act(obs, jax.random.PRNGKey(5), True), atol=1e-6)
    assert acting.mixer.switch_step == 0 and baseline.calls == calls
    fields = acting.mixer.log_fields()
    # L is the broadcast critic's bound at s1, with the value half of the step's key.
    _, value_key = jax.random.split(jax.random.PRNGKey(0))
    expected = ValueBound.from_q_values(runner.q_values(runner.observe(obs), value_key)).lower(1.0)
    assert fields["kappa"] == 1.0 and fields["upper"] == 0.0 and fields["planned_switch"] == 0.0
    assert fields["lower_at_switch"] == pytest.approx(expected, abs=1e-6)  # what calibrates kappa at the end
    env.step(action)
    acting.record_reward(0.0)
    record = acting.end_episode()
    assert record["switch_step"] == 0.0 and record["learned_steps"] == 1.0 and record["warmup"] == 0.0


def test_epsmix_with_a_worthless_baseline_runs_the_learned_policy_all_episode(env) -> None:
    cfg = _cfg("epsmix")
    runner, agent = _runner(env, cfg)
    baseline = Still(env.action_space.shape[0])
    acting = _acting(cfg, baseline, runner)
    _past_warmup(env, acting, runner, agent)
    calls = baseline.calls
    record = _episode(env, acting, seed=9)
    assert record["epsilon"] == 1.0 and record["learned_steps"] == cfg.env.max_episode_steps
    assert baseline.calls == calls


def test_value_bound_needs_a_critic(env) -> None:
    runner, agent = _runner(env, _cfg("off"))
    runner.load(1, serialization.to_state_dict(agent.actor_params))
    obs, _ = env.reset(seed=0)
    with pytest.raises(RuntimeError, match="built without critic_samples"):
        runner.q_values(runner.observe(obs), jax.random.PRNGKey(0))


# ------------------------------------------------------------------------------------------ persistence


def test_mixer_state_survives_a_restart(env, tmp_path: Path) -> None:
    cfg = _cfg("epsmix")
    runner, _ = _runner(env, cfg)
    first = _acting(cfg, Still(7), runner)
    for seed in range(3):
        _episode(env, first, seed)
    path = tmp_path / MIXER_STATE.format(actor_id="actor-0")
    first.save_state(path)
    assert not path.with_suffix(".tmp").exists()

    restarted = _acting(cfg, Still(7), runner)
    assert restarted.restore_state(path, dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent,
                                                                                             discount=0.96)))
    assert restarted.mixer.episode == 2 and restarted.mixer.baseline.n == 3
    # The coin stream continues where it was, not from the seed again.
    assert restarted.mixer.rng.bit_generator.state == first.mixer.rng.bit_generator.state
    assert not restarted.restore_state(tmp_path / "missing.msgpack", cfg)

    stepmix = _acting(_cfg("stepmix"), Still(7), runner)
    with pytest.raises(MixerStateError, match="holds an epsmix mixer, but mixing.mode asks for stepmix"):
        stepmix.restore_state(path, _cfg("stepmix"))


def test_snapshots_freeze_the_policy_an_episode_ran(env, tmp_path: Path) -> None:
    cfg = _cfg("stepmix")
    runner, agent = _runner(env, cfg)
    acting = _acting(cfg, Still(7), runner)
    _episode(env, acting, 0)
    params = jax.tree.map(np.asarray, serialization.to_state_dict(agent.value_params))
    later = save_snapshot(tmp_path, 10, params, acting.mixer)
    first = save_snapshot(tmp_path, 0, None, None)
    assert snapshots(tmp_path) == [first, later]
    _episode(env, acting, 1)  # the live mixer moves on; the snapshot must not
    body = load_snapshot(later)
    assert body["episode"] == 10 and isinstance(body["mixer"], StepMix)
    assert body["mixer"].baseline.n == 1 and acting.mixer.baseline.n == 2
    jax.tree.map(np.testing.assert_array_equal, body["params"], params)
    assert load_snapshot(first) == {"episode": 0, "params": None, "mixer": None}

    bogus = tmp_path / "bogus.msgpack"
    bogus.write_bytes(msgpack.packb({"episode": 1}))
    with pytest.raises(MixerStateError, match="bogus.msgpack"):
        load_snapshot(bogus)


# ------------------------------------------------------------------------------------ a checkpointed baseline


def test_a_checkpointed_policy_can_be_the_baseline(env, tmp_path: Path) -> None:
    """mixing.baseline_run: a run folder's latest checkpoint acts as the baseline, deterministically, with exactly
    the actions `serl eval` would take; a folder of another task, without a checkpoint or missing is refused by
    name before anything runs."""
    from test_eval_cli import _write_run

    from serl_stack.inference import load_policy
    from serl_stack.mixing import make_baseline

    baseline_cfg = dataclasses.replace(_cfg("off"), agent=AgentConfig(hidden_dims=(16, 16), batch_size=16),
                                       replay=dataclasses.replace(Config().replay, on_device=False))
    run = tmp_path / "bc-run"
    _write_run(run, baseline_cfg, updates=2, transitions=30)
    cfg = dataclasses.replace(_cfg("epsmix"), mixing=dataclasses.replace(_cfg("epsmix").mixing,
                                                                          baseline_run=str(run)))
    check_mixing(cfg)
    baseline = make_baseline(cfg, _example(env))
    _, runner, _ = load_policy(run)
    obs, _ = env.reset(seed=11)
    for _ in range(3):
        action = baseline.act(obs, jax.random.PRNGKey(1), True)
        np.testing.assert_array_equal(action, runner.act(obs, jax.random.PRNGKey(9), True))
        obs, *_ = env.step(action)
    runner_cfg = _cfg("epsmix")
    policy_runner, _ = _runner(env, runner_cfg)
    acting = MixedActing.from_config(cfg, policy_runner, seed=0, example=_example(env))
    obs, _ = env.reset(seed=11)
    acting.begin_episode()
    # Warm-up: the baseline acts, deterministically.
    np.testing.assert_array_equal(acting.act(obs, jax.random.PRNGKey(0)), baseline.act(obs, None, True))

    def refused(path: Path) -> str:
        bad = dataclasses.replace(cfg, mixing=dataclasses.replace(cfg.mixing, baseline_run=str(path)))
        with pytest.raises(ConfigError, match="mixing.baseline_run") as e:
            check_mixing(bad)
        return str(e.value)

    assert "not a folder" in refused(tmp_path / "missing")
    empty = tmp_path / "no-checkpoint"
    empty.mkdir()
    (empty / "config.yaml").write_text((run / "config.yaml").read_text())
    assert "has no checkpoint" in refused(empty)
    other = tmp_path / "reach-run"
    other.mkdir()
    (other / "config.yaml").write_text(dump(Config()))
    assert "FrankaReach-v0" in refused(other)
