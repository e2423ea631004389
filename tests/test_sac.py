"""Tests of the SAC agent: distribution math, the jitted UTD update, the actor-process policy, and learning."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import time

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from serl_stack.agents.losses import critic_loss, td_target
from serl_stack.agents.networks import tanh_gaussian_log_prob, tanh_gaussian_mode, tanh_gaussian_sample
from serl_stack.agents.policy import make_policy_fn
from serl_stack.agents.sac import SACAgent
from serl_stack.config import AgentConfig, ReplayConfig
from serl_stack.data.obs import vector_keys
from serl_stack.data.replay import ReplayBuffer, to_agent_batch

OBS_DIM, ACTION_DIM = 5, 2
SMALL = AgentConfig(hidden_dims=(32, 32), batch_size=16)


def random_batch(n: int, seed: int = 0, obs_dim: int = OBS_DIM, action_dim: int = ACTION_DIM) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (n, action_dim)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "next_observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "masks": (rng.uniform(size=n) > 0.1).astype(np.float32),
    }


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def trees_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


# ------------------------------------------------------------------------------------------ (a) distribution


def _reference_log_prob(a: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Change of variables done independently in float64: p_A(a) = p_U(atanh a) * d(atanh a)/da, the
    derivative taken by central finite differences."""
    h = 1e-6
    u = np.arctanh(a)
    du_da = (np.arctanh(a + h) - np.arctanh(a - h)) / (2 * h)
    log_pu = -0.5 * ((u - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)
    return log_pu + np.log(du_da)


@pytest.mark.parametrize(("mean", "log_std"), [(0.0, 0.0), (0.7, -1.0), (-1.5, 0.5)])
def test_tanh_gaussian_log_prob_matches_change_of_variables(mean, log_std):
    a = np.linspace(-0.99, 0.99, 199)
    ours = tanh_gaussian_log_prob(jnp.full((199, 1), mean), jnp.full((199, 1), log_std), jnp.asarray(a)[:, None])
    np.testing.assert_allclose(np.asarray(ours), _reference_log_prob(a, mean, math.exp(log_std)), atol=2e-4)


@pytest.mark.parametrize(("mean", "log_std"), [(0.0, -0.5), (0.5, -1.0)])
def test_tanh_gaussian_density_integrates_to_one(mean, log_std):
    a = np.linspace(-1 + 1e-7, 1 - 1e-7, 400_001)
    lp = tanh_gaussian_log_prob(
        jnp.full((a.size, 1), mean), jnp.full((a.size, 1), log_std), jnp.asarray(a)[:, None]
    )
    assert np.trapezoid(np.exp(np.asarray(lp, np.float64)), a) == pytest.approx(1.0, abs=2e-3)


def test_sampled_log_prob_agrees_with_scoring_the_sample():
    mean = jnp.array([[0.3, -0.2, 0.0]] * 512)
    log_std = jnp.array([[-0.5, -1.0, -2.0]] * 512)
    actions, lp_sample = tanh_gaussian_sample(mean, log_std, jax.random.PRNGKey(0))
    assert actions.shape == (512, 3) and lp_sample.shape == (512,)
    assert float(jnp.abs(actions).max()) < 1.0
    # Multi-dimensional log-probs are the sum over independent action dimensions.
    np.testing.assert_allclose(lp_sample, tanh_gaussian_log_prob(mean, log_std, actions), rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(tanh_gaussian_mode(mean[0]), jnp.tanh(mean[0]))


# ------------------------------------------------------------------------------------------ (b) update


def test_update_compiles_once_and_changes_every_train_state():
    cfg = dataclasses.replace(SMALL, utd=2)
    agent = SACAgent.create(0, OBS_DIM, ACTION_DIM, cfg)
    new, info = agent.update(random_batch(cfg.utd * cfg.batch_size, seed=0))
    compiled = SACAgent.update._cache_size()
    for i in range(1, 3):
        new, info = new.update(random_batch(cfg.utd * cfg.batch_size, seed=i))
    # The agent returned by update must have the same pytree signature (dtypes, weak types) as the one passed
    # in, or every training step after the first would compile again.
    assert SACAgent.update._cache_size() == compiled, "update re-traced for same-shaped batches"

    assert int(new.critic.step) == 3 * cfg.utd and int(new.actor.step) == 3 and int(new.temp.step) == 3
    for name in ("actor", "critic", "target_critic", "temp"):
        assert not trees_equal(getattr(agent, name).params, getattr(new, name).params), f"{name} did not change"
    expected = {"critic_loss", "q", "target_q", "actor_loss", "entropy", "temperature", "temperature_loss"}
    assert expected <= set(info)
    for key, value in info.items():
        assert value.shape == () and np.isfinite(value), f"info[{key!r}] = {value!r}"


def test_layer_norm_ensemble_has_one_parameter_set_per_critic():
    cfg = dataclasses.replace(SMALL, num_critics=4, critic_layer_norm=True)
    agent = SACAgent.create(0, OBS_DIM, ACTION_DIM, cfg)
    leaves = jax.tree_util.tree_leaves_with_path(agent.critic.params)
    assert all(leaf.shape[0] == 4 for _, leaf in leaves)
    assert any("LayerNorm" in jax.tree_util.keystr(path) for path, _ in leaves)
    kernels = [leaf for path, leaf in leaves if "kernel" in jax.tree_util.keystr(path)]
    assert not np.array_equal(kernels[0][0], kernels[0][1]), "ensemble members share their initialization"
    qs = agent.critic.apply_fn(
        {"params": agent.critic.params}, jnp.zeros((3, OBS_DIM)), jnp.zeros((3, ACTION_DIM))
    )
    assert qs.shape == (4, 3)
    _, info = agent.update(random_batch(cfg.batch_size))
    assert np.isfinite(info["critic_loss"])


def test_utd_update_equals_sequential_critic_steps_then_one_actor_step():
    k = 3
    cfg = dataclasses.replace(SMALL, utd=k)
    agent = SACAgent.create(1, OBS_DIM, ACTION_DIM, cfg)
    batch = random_batch(k * cfg.batch_size, seed=7)
    scanned, _ = agent.update(batch)

    looped = agent
    minibatches = [
        {key: v[i * cfg.batch_size : (i + 1) * cfg.batch_size] for key, v in batch.items()} for i in range(k)
    ]
    for mb in minibatches:
        looped, _ = looped.critic_step(mb)
    looped, _ = looped.actor_step(minibatches[-1])
    assert_trees_close(scanned, looped)


def _independent_td_target(agent: SACAgent, batch: dict, subset: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The TD target and critic loss of one critic step, recomputed outside the agent from the same rng:
    the min over the critics `jax.random.choice` picks (`subset` of them), or over all when `subset` is None.
    The formulas are `losses.py`'s (checked against hand-computed values in `test_losses.py`); this checks what
    the agent feeds them: the keys, the sampled next actions, the chosen critics, the temperature, the discount."""
    if subset is None:
        _, key = jax.random.split(agent.rng)
    else:
        _, key, subset_key = jax.random.split(agent.rng, 3)
    mean, log_std = agent.actor.apply_fn({"params": agent.actor.params}, batch["next_observations"])
    next_actions, next_log_probs = tanh_gaussian_sample(mean, log_std, key)
    next_qs = np.asarray(agent.target_critic.apply_fn(
        {"params": agent.target_critic.params}, batch["next_observations"], next_actions
    ))
    chosen = None
    if subset is not None:
        chosen = np.asarray(jax.random.choice(subset_key, next_qs.shape[0], (subset,), replace=False))
        assert len(set(chosen.tolist())) == subset
    temperature = float(agent.temp.apply_fn({"params": agent.temp.params}))
    target = td_target(
        batch["rewards"], batch["masks"], next_qs, next_log_probs, temperature, agent.discount, subset_idx=chosen
    )
    qs = agent.critic.apply_fn({"params": agent.critic.params}, batch["observations"], batch["actions"])
    return np.asarray(target), np.asarray(critic_loss(qs, target)[0])


@pytest.mark.parametrize("subset", [2, 0])
def test_td_target_is_min_over_random_critic_subset(subset):
    cfg = dataclasses.replace(SMALL, num_critics=10, critic_subset=subset, critic_layer_norm=True)
    agent = SACAgent.create(0, OBS_DIM, ACTION_DIM, cfg)
    batch = random_batch(cfg.batch_size, seed=3)
    batch["masks"] = np.ones(cfg.batch_size, np.float32)  # every target bootstraps through the critics
    _, info = agent.critic_step(batch)
    target, loss = _independent_td_target(agent, batch, subset or None)
    np.testing.assert_allclose(info["target_q"], target.mean(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(info["critic_loss"], loss, rtol=1e-5, atol=1e-6)
    if subset:
        # A 2-of-10 min is less pessimistic than the min over all 10 (the two differ at this init).
        all_min, _ = _independent_td_target(agent, batch, None)
        assert np.all(target >= all_min - 1e-6) and target.mean() > all_min.mean() + 1e-4


def test_critic_subset_of_all_critics_is_clipped_double_q_and_bad_subset_is_named():
    full = dataclasses.replace(SMALL, num_critics=4, critic_subset=4)
    a, _ = SACAgent.create(0, OBS_DIM, ACTION_DIM, full).update(random_batch(SMALL.batch_size))
    b, _ = SACAgent.create(0, OBS_DIM, ACTION_DIM, dataclasses.replace(full, critic_subset=0)).update(
        random_batch(SMALL.batch_size)
    )
    assert trees_equal(a, b)
    with pytest.raises(ValueError, match=r"agent.critic_subset: got 5, expected <= agent.num_critics \(4\)"):
        SACAgent.create(0, OBS_DIM, ACTION_DIM, dataclasses.replace(full, critic_subset=5))


def test_terminal_transitions_do_not_bootstrap():
    # With masks all 0 the target is the reward alone, whatever the critics and the actor say.
    agent = SACAgent.create(0, OBS_DIM, ACTION_DIM, SMALL)
    batch = random_batch(SMALL.batch_size)
    batch["masks"] = np.zeros(SMALL.batch_size, np.float32)
    _, info = agent.critic_step(batch)
    assert float(info["target_q"]) == pytest.approx(float(batch["rewards"].mean()), rel=1e-5)


def test_bad_batch_and_config_are_named():
    agent = SACAgent.create(0, OBS_DIM, ACTION_DIM, dataclasses.replace(SMALL, utd=3))
    with pytest.raises(ValueError, match=r"got 32 transitions, expected a multiple of utd=3"):
        agent.update(random_batch(32))
    bad = random_batch(48)
    del bad["masks"]
    with pytest.raises(ValueError, match=r"missing \['masks'\]"):
        agent.update(bad)
    with pytest.raises(ValueError, match=r"agent.tau: got 0.0, expected a value in \(0, 1\]"):
        SACAgent.create(0, OBS_DIM, ACTION_DIM, dataclasses.replace(SMALL, tau=0.0))


def test_eval_and_sample_actions_accept_single_and_batched_observations():
    agent = SACAgent.create(0, OBS_DIM, ACTION_DIM, SMALL)
    key = jax.random.PRNGKey(3)
    single = np.zeros(OBS_DIM, np.float32)
    batched = np.zeros((4, OBS_DIM), np.float32)
    assert agent.eval_actions(single).shape == (ACTION_DIM,)
    assert agent.eval_actions(batched).shape == (4, ACTION_DIM)
    assert agent.sample_actions(single, key).shape == (ACTION_DIM,)
    sampled = agent.sample_actions(batched, key)
    assert sampled.shape == (4, ACTION_DIM) and float(jnp.abs(sampled).max()) <= 1.0


# ------------------------------------------------------------------------------------------ (c) actor process


def test_actor_params_round_trip_and_policy_fn_matches_agent():
    agent = SACAgent.create(0, OBS_DIM, ACTION_DIM, SMALL)
    for i in range(3):  # trained parameters, so a mix-up with freshly initialized ones cannot pass
        agent, _ = agent.update(random_batch(SMALL.batch_size, seed=i))

    # What crosses the wire: a nested dict of plain numpy arrays.
    wire = jax.tree.map(np.asarray, flax.serialization.to_state_dict(agent.actor_params))
    assert all(type(leaf) is np.ndarray for leaf in jax.tree.leaves(wire))

    init_params_fn, policy_fn = make_policy_fn(OBS_DIM, ACTION_DIM, SMALL)
    template = init_params_fn(jax.random.PRNGKey(123))
    assert jax.tree.structure(template) == jax.tree.structure(agent.actor_params)
    params = flax.serialization.from_state_dict(template, wire)
    assert trees_equal(params, agent.actor_params)

    obs = np.random.default_rng(0).normal(size=(6, OBS_DIM)).astype(np.float32)
    key = jax.random.PRNGKey(9)
    np.testing.assert_array_equal(policy_fn(params, obs, None, deterministic=True), agent.eval_actions(obs))
    np.testing.assert_array_equal(policy_fn(params, obs[0], None, deterministic=True), agent.eval_actions(obs[0]))
    np.testing.assert_array_equal(policy_fn(params, obs, key), agent.sample_actions(obs, key))


def test_policy_module_imports_no_learner_code():
    code = (
        "import sys, serl_stack.agents.policy; "
        "bad = [m for m in ('optax', 'serl_stack.agents.sac', 'flax.training') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------ (d) learning

PENDULUM_START_STEPS = 1_000
PENDULUM_UPDATES = 3_000
PENDULUM_EVAL_EPISODES = 10
PENDULUM_EVAL_SEED = 10_000


def _evaluate(env, act, episodes: int) -> float:
    returns = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=PENDULUM_EVAL_SEED + ep)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def _train_pendulum(seed: int) -> tuple[float, float, float]:
    """Train SAC on Pendulum-v1 through the real ReplayBuffer.

    Returns (deterministic agent return, random policy return, learning-phase env steps (= updates) per second).
    """
    import gymnasium as gym

    env = gym.make("Pendulum-v1")
    high = float(env.action_space.high[0])  # the agent acts in [-1, 1]; Pendulum's torque limit is +-2
    # Standard SAC settings for Pendulum's 200-step episodes (the package defaults are tuned for 10 Hz reach).
    cfg = AgentConfig(discount=0.99, init_temperature=1.0)
    example = {"state": np.zeros(3, np.float32)}
    keys = vector_keys(example)
    buffer = ReplayBuffer.from_example(example, np.zeros(1, np.float32), ReplayConfig(capacity=10_000))
    agent = SACAgent.create(seed, 3, 1, cfg)
    _, policy_fn = make_policy_fn(3, 1, cfg)
    rng = np.random.default_rng(seed)
    # Keys split up front and kept on the host: one jax.random.split per env step costs more than the policy.
    sample_keys = np.asarray(jax.random.split(jax.random.PRNGKey(seed), PENDULUM_UPDATES))

    obs, _ = env.reset(seed=seed)
    for step in range(PENDULUM_START_STEPS + PENDULUM_UPDATES):
        if step < PENDULUM_START_STEPS:
            action = rng.uniform(-1.0, 1.0, size=1).astype(np.float32)
        else:
            key = sample_keys[step - PENDULUM_START_STEPS]
            action = np.asarray(policy_fn(agent.actor_params, obs, key))
        next_obs, reward, terminated, truncated, _ = env.step(high * action)
        buffer.insert({"state": obs}, action, reward, {"state": next_obs}, terminated, truncated)
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
        if step == PENDULUM_START_STEPS:
            t0 = time.perf_counter()
        if step >= PENDULUM_START_STEPS:
            agent, _ = agent.update(to_agent_batch(buffer.sample(cfg.batch_size, rng), keys))
    jax.block_until_ready(agent)
    steps_per_s = PENDULUM_UPDATES / (time.perf_counter() - t0)

    params = agent.actor_params
    trained = _evaluate(
        env, lambda o: high * np.asarray(policy_fn(params, o, None, deterministic=True)), PENDULUM_EVAL_EPISODES
    )
    eval_rng = np.random.default_rng(0)
    random = _evaluate(
        env, lambda o: high * eval_rng.uniform(-1.0, 1.0, 1).astype(np.float32), PENDULUM_EVAL_EPISODES
    )
    return trained, random, steps_per_s


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sac_learns_pendulum(seed):
    trained, random, updates_per_s = _train_pendulum(seed)
    print(f"seed {seed}: trained {trained:.3f}, random {random:.3f}, {updates_per_s:.0f} env steps + updates/s")
    assert trained >= random + 300, f"seed {seed}: trained return {trained:.1f} vs random {random:.1f}"


# ------------------------------------------------------------------------------------------ observation norm


def test_observation_normalization_equals_training_on_standardized_data():
    rng = np.random.default_rng(5)
    mean = rng.normal(size=OBS_DIM).astype(np.float32) * 3
    std = rng.uniform(0.01, 2.0, size=OBS_DIM).astype(np.float32)
    raw = random_batch(SMALL.batch_size, seed=6)
    raw["observations"] = raw["observations"] * std + mean
    raw["next_observations"] = raw["next_observations"] * std + mean
    pre = {**raw, "observations": (raw["observations"] - mean) / std,
           "next_observations": (raw["next_observations"] - mean) / std}
    normed = SACAgent.create(0, OBS_DIM, ACTION_DIM, SMALL, {"mean": mean, "std": std})
    plain = SACAgent.create(0, OBS_DIM, ACTION_DIM, SMALL)
    a, _ = normed.update(raw)
    b, _ = plain.update(pre)
    assert_trees_close(a.actor.params, b.actor.params, rtol=1e-4, atol=1e-5)
    assert_trees_close(a.critic.params, b.critic.params, rtol=1e-4, atol=1e-5)
    # The policy the actor process runs applies the same statistics.
    _, policy_fn = make_policy_fn(OBS_DIM, ACTION_DIM, SMALL)
    wire = jax.tree.map(np.asarray, flax.serialization.to_state_dict(a.actor_params))
    np.testing.assert_array_equal(policy_fn(wire, raw["observations"], None, deterministic=True),
                                  a.eval_actions(raw["observations"]))
    np.testing.assert_allclose(a.eval_actions(raw["observations"]), b.eval_actions(pre["observations"]),
                               rtol=1e-4, atol=1e-5)


def test_observation_normalization_rejects_bad_statistics():
    with pytest.raises(ValueError, match=r"obs_norm\['std'\]"):
        SACAgent.create(0, OBS_DIM, ACTION_DIM, SMALL, {"mean": np.zeros(OBS_DIM), "std": np.full(OBS_DIM, np.nan)})
    with pytest.raises(ValueError, match=r"obs_norm\['mean'\]: expected 5"):
        SACAgent.create(0, OBS_DIM, ACTION_DIM, SMALL, {"mean": np.zeros(3), "std": np.ones(OBS_DIM)})
