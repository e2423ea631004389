"""`NumpyActor` and `PolicyRunner`'s numpy path: the state policy the actor's control step runs without a JAX
dispatch must be the network the learner trains (the jitted `make_policy_fn`), and its stochastic actions a
deterministic function of (parameters, observation, key) with the policy's own Gaussian."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import serialization

from serl_stack.agents.networks import LOG_STD_MAX, LOG_STD_MIN, OBS_NORM_CLIP, OBS_NORM_MIN_STD
from serl_stack.agents.policy import NumpyActor, make_policy_fn
from serl_stack.config import AgentConfig
from serl_stack.inference import KeyStream, PolicyRunner, step_noise

OBS_DIM, ACTION_DIM = 11, 7


def random_params(seed: int, hidden: tuple[int, ...] = (64, 64)) -> tuple[dict, object]:
    """Parameters far from the initialization: every weight perturbed, statistics with some std below the floor,
    and head biases that push log_std past both clips."""
    cfg = AgentConfig(hidden_dims=hidden)
    init, policy = make_policy_fn(OBS_DIM, ACTION_DIM, cfg)
    rng = np.random.default_rng(seed)
    sd = jax.tree.map(lambda a: np.asarray(a) + rng.normal(0, 0.3, np.shape(a)).astype(np.float32),
                      serialization.to_state_dict(init(jax.random.PRNGKey(seed))))
    sd["obs_norm"]["mean"] = rng.normal(0, 2, OBS_DIM).astype(np.float32)
    sd["obs_norm"]["std"] = np.abs(rng.normal(0, 1, OBS_DIM)).astype(np.float32)
    sd["obs_norm"]["std"][:2] = OBS_NORM_MIN_STD / 10  # floored
    bias = sd["actor"]["Dense_1"]["bias"]
    bias[0], bias[1] = 1e4, -1e4  # log_std clipped above and below
    return sd, policy


def reference(sd: dict, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, log_std) from the Flax module itself, on the normalized input."""
    from serl_stack.agents.networks import make_actor, normalize_obs

    x = normalize_obs(obs, jax.tree.map(np.asarray, sd["obs_norm"]))
    mean, log_std = make_actor(ACTION_DIM, (64, 64)).apply({"params": sd["actor"]}, x)
    return np.asarray(mean), np.asarray(log_std)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_numpy_actor_is_the_flax_actor_up_to_float32_rounding(seed: int) -> None:
    sd, _ = random_params(seed)
    rng = np.random.default_rng(seed + 10)
    obs = rng.normal(0, 3, (64, OBS_DIM)).astype(np.float32)
    obs[:4] *= 1e4  # far outside the statistics: the +-OBS_NORM_CLIP clip acts
    mean, log_std = NumpyActor(sd)(obs)
    ref_mean, ref_log_std = reference(sd, obs)
    assert mean.dtype == log_std.dtype == np.float32 and mean.shape == log_std.shape == (64, ACTION_DIM)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_std, ref_log_std, rtol=1e-5, atol=1e-5)
    assert np.all(log_std[:, 0] == LOG_STD_MAX) and np.all(log_std[:, 1] == LOG_STD_MIN)  # the clips are exercised
    assert OBS_NORM_CLIP > 0  # (the clip constant the actor shares with networks.normalize_obs)
    one_mean, one_log_std = NumpyActor(sd)(obs[5])  # one unbatched observation, as the control step has
    # (a matrix-vector product rounds differently: float32 rounding, as against the Flax module above)
    np.testing.assert_allclose(one_mean, mean[5], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(one_log_std, log_std[5], rtol=1e-5, atol=1e-5)


def runner_with(sd: dict) -> PolicyRunner:
    runner = PolicyRunner({"state": {"x": np.zeros(OBS_DIM, np.float32)}}, ACTION_DIM,
                          AgentConfig(hidden_dims=(64, 64), obs_keys=("state/x",)))
    runner.load(0, sd)
    return runner


def test_a_deterministic_action_is_the_jitted_policys() -> None:
    sd, policy = random_params(2)
    runner = runner_with(sd)
    for o in np.random.default_rng(3).normal(0, 2, (20, OBS_DIM)).astype(np.float32):
        got = runner.act({"state": {"x": o}}, None, deterministic=True)
        want = np.asarray(policy(runner.params, o, None, True))
        assert got.dtype == np.float32 and got.shape == (ACTION_DIM,)
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_stochastic_action_is_the_policys_gaussian_drawn_with_the_keys_noise() -> None:
    sd, policy = random_params(4)
    for head, bias in (("Dense_0", 0.3), ("Dense_1", -1.0)):  # moderate means and stds: no dimension saturated
        sd["actor"][head]["kernel"] *= 1e-3
        sd["actor"][head]["bias"][:] = bias
    runner = runner_with(sd)
    obs = {"state": {"x": np.random.default_rng(5).normal(0, 1, OBS_DIM).astype(np.float32)}}
    x = runner.observe(obs)
    mean, log_std = NumpyActor(runner.params)(x)
    keys = KeyStream(7)
    key = next(keys)
    a = runner.act(obs, key)
    np.testing.assert_allclose(a, np.tanh(mean + np.exp(log_std) * step_noise(key, (ACTION_DIM,))), atol=1e-6)
    np.testing.assert_array_equal(runner.act(obs, key), a)  # a function of the key
    assert not np.array_equal(runner.act(obs, next(keys)), a)
    # The same distribution as the jitted policy's samples: pre-tanh moments over many keys, per dimension.
    n = 4000
    ours = np.arctanh(np.clip(np.stack([runner.act(obs, next(keys)) for _ in range(n)]), -1 + 1e-6, 1 - 1e-6))
    jitted = np.arctanh(np.clip(np.stack([np.asarray(policy(runner.params, x, next(keys), False))
                                          for _ in range(n)]), -1 + 1e-6, 1 - 1e-6))
    std = np.exp(log_std)
    for u in (ours, jitted):
        np.testing.assert_allclose(u.mean(0), mean, atol=5 * std.max() / np.sqrt(n) + 1e-3)
        np.testing.assert_allclose(u.std(0), std, rtol=0.08)


def test_new_parameters_are_used_from_the_next_step_on() -> None:
    sd, policy = random_params(6)
    runner = runner_with(sd)
    obs = {"state": {"x": np.ones(OBS_DIM, np.float32)}}
    before = runner.act(obs, None, deterministic=True)
    sd2, _ = random_params(8)
    runner.load(1, sd2)
    after = runner.act(obs, None, deterministic=True)
    np.testing.assert_allclose(after, np.asarray(policy(runner.params, runner.observe(obs), None, True)), atol=1e-5)
    assert not np.allclose(after, before)


def test_a_stochastic_action_without_a_key_is_refused() -> None:
    runner = runner_with(random_params(9)[0])
    with pytest.raises(ValueError, match="key: got None"):
        runner.act({"state": {"x": np.zeros(OBS_DIM, np.float32)}}, None, deterministic=False)


def test_step_noise_is_the_same_for_a_key_in_any_of_its_forms() -> None:
    raw = jax.random.PRNGKey(3)
    typed = jax.random.wrap_key_data(raw)
    host = np.asarray(raw)
    a = step_noise(host, (5,))
    np.testing.assert_array_equal(step_noise(raw, (5,)), a)
    np.testing.assert_array_equal(step_noise(typed, (5,)), a)
    assert a.dtype == np.float32 and not np.array_equal(step_noise(np.asarray(jax.random.PRNGKey(4)), (5,)), a)
