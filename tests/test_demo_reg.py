"""Demonstration-regularized SAC (`agent.bc.*`): lambda = 0 is plain SAC bit for bit, the KL term pulls the actor to a
known prior, dual descent holds the KL at its target, the learner loads the prior and logs lambda and the KL, and
the config names every bad field.

The prior here is a `BCLearner`'s parameters (the network `serl train-bc` trains) with chosen weights, so its
distribution is known in closed form; tests/test_bc.py trains real ones.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from serl_stack.agents.bc import BCLearner, BCPrior, BCSettings
from serl_stack.agents.losses import actor_loss, kl_regularizer
from serl_stack.agents.networks import tanh_gaussian_log_prob, tanh_gaussian_sample
from serl_stack.agents.sac import SACAgent
from serl_stack.config import AgentConfig, BCConfig, Config, ConfigError, ReplayConfig, load

OBS_DIM, ACTION_DIM = 5, 2
STATE = ("actor", "critic", "target_critic", "temp", "rng", "obs_norm")
"""Every field plain SAC has: with lambda = 0 each must be bitwise the same."""


def batch(n: int, seed: int, obs_dim: int = OBS_DIM, action_dim: int = ACTION_DIM) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (n, action_dim)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "next_observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "masks": (rng.uniform(size=n) > 0.1).astype(np.float32),
    }


def constant_prior(mean: float | list[float], std: float | list[float], obs_dim: int = OBS_DIM,
                   action_dim: int = ACTION_DIM, hidden: tuple[int, ...] = (16,)) -> BCPrior:
    """A prior that is the same tanh-Gaussian at every state: pre-tanh mean `mean`, std `std` per dimension (the
    mean head's kernel zeroed, its bias the mean; the std head's bias log std, as BC trains it)."""
    learner = BCLearner.create(BCSettings(hidden_dims=hidden, seed=3), identity_norm(obs_dim), action_dim)
    p = learner.policy_params
    head = {"kernel": jnp.zeros_like(p["actor"]["Dense_0"]["kernel"]),
            "bias": jnp.broadcast_to(jnp.asarray(mean, jnp.float32), (action_dim,))}
    std_head = {**p["actor"]["Dense_1"], "bias": jnp.log(jnp.broadcast_to(jnp.asarray(std, jnp.float32),
                                                                          (action_dim,)))}
    return BCPrior({**p, "actor": {**p["actor"], "Dense_0": head, "Dense_1": std_head}}, hidden, 0.05)


def identity_norm(obs_dim: int) -> dict[str, np.ndarray]:
    return {"mean": np.zeros(obs_dim, np.float32), "std": np.ones(obs_dim, np.float32)}


def with_bc(cfg: AgentConfig, **fields: object) -> AgentConfig:
    return dataclasses.replace(cfg, bc=BCConfig(enabled=True, prior_run="unused-here", **fields))


def differing_leaves(a: SACAgent, b: SACAgent) -> list[str]:
    out = []
    for name in STATE:
        pa, lb = jax.tree_util.tree_flatten_with_path(getattr(a, name))[0], jax.tree.leaves(getattr(b, name))
        for (path, x), y in zip(pa, lb, strict=True):
            if not np.array_equal(np.asarray(x), np.asarray(y)):
                out.append(name + jax.tree_util.keystr(path))
    return out


# ------------------------------------------------------------------------------------------ (a) lambda = 0 is SAC

SMALL = AgentConfig(hidden_dims=(32, 32), batch_size=16, utd=2, num_critics=3, critic_subset=2)


@pytest.mark.parametrize("mode", ["schedule", "dual"])
def test_lambda_zero_updates_are_bitwise_plain_sac(mode: str) -> None:
    """The regularizer on, lambda a traced 0 (schedule: lambda_init 0 times the schedule of the actor's step;
    dual: the multiplier's log at -inf), q_normalize on: after 4 updates (2 critic steps each) on the same batches
    with the same seed, every leaf of every train state, the RNG key and the statistics equal plain SAC's, and so
    do the diagnostics both report. No Python branch looks at lambda's value."""
    cfg = with_bc(SMALL, lambda_mode=mode, lambda_init=0.0 if mode == "schedule" else 1.0)
    plain = SACAgent.create(0, OBS_DIM, ACTION_DIM, SMALL)
    reg = SACAgent.create(0, OBS_DIM, ACTION_DIM, cfg, prior=constant_prior([0.5, -1.0], [0.3, 0.2]))
    if mode == "dual":
        reg = reg.replace(bc_lambda=reg.bc_lambda.replace(params={"log_lambda": jnp.float32(-jnp.inf)}))
    for i in range(4):
        plain, plain_info = plain.update(batch(32, i))
        reg, reg_info = reg.update(batch(32, i))
    assert differing_leaves(plain, reg) == []
    # The reported losses are diagnostics, reduced in whatever fusion XLA picks around the extra terms (the
    # gradients above are exact): equal to float rounding.
    for k, v in plain_info.items():
        assert float(reg_info[k]) == pytest.approx(float(v), rel=1e-6, abs=1e-9), k
    assert float(reg_info["bc_lambda"]) == 0.0 and float(reg_info["bc_kl"]) != 0.0  # it did measure a KL


def test_lambda_above_zero_changes_only_the_actor_in_the_first_update() -> None:
    """The counter-check: with lambda = 1 the same update moves the actor differently, while the critic steps,
    which run before the actor step and carry no penalty by default, are still plain SAC's."""
    plain = SACAgent.create(0, OBS_DIM, ACTION_DIM, SMALL)
    reg = SACAgent.create(0, OBS_DIM, ACTION_DIM, with_bc(SMALL, lambda_mode="schedule"),
                          prior=constant_prior([0.5, -1.0], [0.3, 0.2]))
    plain, _ = plain.update(batch(32, 0))
    reg, _ = reg.update(batch(32, 0))
    assert differing_leaves(plain, reg) and all(p.startswith(("actor", "temp")) for p in differing_leaves(plain, reg))


def test_critic_penalty_with_lambda_zero_is_sac_to_float_rounding() -> None:
    """With `critic_penalty` the TD target gains `- 0 * KL(s')`: the same numbers, but XLA:CPU fuses the target into
    the critic's loss reductions and the extra terms can change how LLVM contracts and vectorizes them, so on some
    shapes (this one) the critic's Adam moments differ in the last bits. Equal to 1e-6, not bitwise."""
    cfg = with_bc(SMALL, lambda_mode="schedule", lambda_init=0.0, critic_penalty=True)
    plain = SACAgent.create(0, OBS_DIM, ACTION_DIM, SMALL)
    reg = SACAgent.create(0, OBS_DIM, ACTION_DIM, cfg, prior=constant_prior([0.5, -1.0], [0.3, 0.2]))
    for i in range(4):
        plain, _ = plain.update(batch(32, i))
        reg, info = reg.update(batch(32, i))
    assert float(info["bc_penalty"]) == 0.0
    for name in STATE:
        for x, y in zip(jax.tree.leaves(getattr(plain, name)), jax.tree.leaves(getattr(reg, name)), strict=True):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-9)


def test_the_disabled_agent_has_no_regularizer_state() -> None:
    """Off, nothing is added to the pytree (so nothing is traced, stored or checkpointed for it)."""
    agent = SACAgent.create(0, OBS_DIM, ACTION_DIM, SMALL)
    assert agent.prior is None and agent.bc_lambda is None and agent.bc is None
    _, info = agent.update(batch(32, 0))
    assert not [k for k in info if k.startswith("bc_")]


# ------------------------------------------------------------------------------------------ (b) toward a known prior


def gaussian_kl(m1: np.ndarray, s1: np.ndarray, m2: np.ndarray, s2: np.ndarray) -> float:
    """KL(N(m1, s1^2) || N(m2, s2^2)) summed over dimensions. tanh is a bijection, so this is also the KL between the
    two tanh-Gaussians."""
    return float(np.sum(np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5))


def test_monte_carlo_kl_matches_the_closed_form() -> None:
    """mean(log pi(a) - log pi_BC(a)) over 200k samples a ~ pi equals the Gaussian KL within 4 standard errors."""
    m1, s1 = np.array([0.3, -0.5]), np.array([0.4, 0.25])
    m2, s2 = np.array([-0.2, -0.4]), np.array([0.3, 0.5])
    n = 200_000
    actions, log_probs = tanh_gaussian_sample(jnp.broadcast_to(jnp.asarray(m1, jnp.float32), (n, 2)),
                                              jnp.broadcast_to(jnp.log(jnp.asarray(s1, jnp.float32)), (n, 2)),
                                              jax.random.PRNGKey(0))
    prior_lp = tanh_gaussian_log_prob(jnp.asarray(m2, jnp.float32), jnp.log(jnp.asarray(s2, jnp.float32)), actions)
    ratios = np.asarray(log_probs - prior_lp, np.float64)
    exact = gaussian_kl(m1, s1, m2, s2)  # = 1.3213...: the hand formula per dimension, summed
    assert exact == pytest.approx(math.log(0.3 / 0.4) + (0.16 + 0.25) / 0.18 - 0.5
                                  + math.log(0.5 / 0.25) + (0.0625 + 0.01) / 0.5 - 0.5)
    estimate, stderr = float(kl_regularizer(log_probs, prior_lp, 1.0)[1]["bc_kl"]), ratios.std() / math.sqrt(n)
    assert abs(estimate - exact) < 4 * stderr, (estimate, exact, stderr)


def test_kl_steps_with_q_zero_move_the_actor_to_the_prior() -> None:
    """Q = 0, temperature 0, lambda 1: gradient steps on `actor_loss + kl_regularizer` (reparameterized samples, a
    fresh key each step) take a Gaussian from mean (0.8, -0.6), std (1, 1) to the prior's (-0.3, 0.4), (0.2, 0.5):
    within 0.05 in mean and in log std, with the closed-form KL from 5.0 down to < 0.01 nats."""
    prior_mean, prior_log_std = jnp.array([-0.3, 0.4]), jnp.log(jnp.array([0.2, 0.5]))

    def loss(params: dict[str, jax.Array], key: jax.Array) -> jax.Array:
        mean = jnp.broadcast_to(params["mean"], (512, 2))
        log_std = jnp.broadcast_to(params["log_std"], (512, 2))
        actions, log_probs = tanh_gaussian_sample(mean, log_std, key)
        sac, _ = actor_loss(log_probs, jnp.zeros((2, 512)), 0.0)
        reg, _ = kl_regularizer(log_probs, tanh_gaussian_log_prob(prior_mean, prior_log_std, actions), 1.0)
        return sac + reg

    @jax.jit
    def step(params: dict[str, jax.Array], key: jax.Array) -> dict[str, jax.Array]:
        return jax.tree.map(lambda p, g: p - 0.05 * g, params, jax.grad(loss)(params, key))

    params = {"mean": jnp.array([0.8, -0.6]), "log_std": jnp.zeros(2)}
    kl = lambda p: gaussian_kl(np.asarray(p["mean"]), np.exp(p["log_std"]), np.asarray(prior_mean),  # noqa: E731
                               np.exp(prior_log_std))
    before = kl(params)
    for key in jax.random.split(jax.random.PRNGKey(1), 1500):
        params = step(params, key)
    np.testing.assert_allclose(params["mean"], prior_mean, atol=0.05)
    np.testing.assert_allclose(params["log_std"], prior_log_std, atol=0.05)
    assert before > 5.0 and kl(params) < 0.01


# ------------------------------------------------------------------------------------------ (c) dual descent


def test_dual_descent_holds_the_measured_kl_at_its_target() -> None:
    """A critic trained (discount 0) on rewards -5 |a - (0.8, -0.8)|^2 pulls the actor away from a prior fixed at
    tanh(N(0, 0.3^2)) everywhere. Unregularized (lambda 0) the measured KL ends far above the target (measured:
    119 nats over updates 500-1,000); with dual descent toward kl_target 1 nat per action dimension (2 nats), the
    KL measured over the last 1,000 of 3,000 updates averages within 15 % of 2 (measured here: 2.04), with lambda
    held away from 0 (0.29-0.35)."""
    n = 128
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (n, ACTION_DIM)).astype(np.float32)
    data = {**batch(n, 1), "actions": actions, "masks": np.ones(n, np.float32),
            "rewards": (-5.0 * ((actions - np.array([0.8, -0.8])) ** 2).sum(-1)).astype(np.float32)}
    base = AgentConfig(hidden_dims=(32, 32), batch_size=n, discount=0.0)
    prior = constant_prior(0.0, 0.3)

    def run(bc: AgentConfig, updates: int) -> tuple[np.ndarray, np.ndarray]:
        agent = SACAgent.create(0, OBS_DIM, ACTION_DIM, bc, prior=prior)
        kls, lams = [], []
        for _ in range(updates):
            agent, info = agent.update(data)
            kls.append(float(info["bc_kl"]))
            lams.append(float(info["bc_lambda"]))
        return np.asarray(kls), np.asarray(lams)

    free, _ = run(with_bc(base, lambda_mode="schedule", lambda_init=0.0), 1000)
    kls, lams = run(with_bc(base, kl_target=1.0, lambda_lr=0.02), 3000)
    target = 1.0 * ACTION_DIM
    assert free[-500:].mean() > 10 * target
    assert abs(kls[-1000:].mean() - target) < 0.15 * target, kls[-1000:].mean()
    assert lams[-1000:].min() > 0.1


# ------------------------------------------------------------------------------------------ BC initialization


def test_bc_initialization_starts_the_actor_at_the_prior_under_the_agents_standardization() -> None:
    """`init_actor_from_bc`: the prior's weights, folded into the agent's observation statistics, give the prior's
    mean and std at every state (KL 0 on the first actor step), though the two standardize differently."""
    learner = BCLearner.create(BCSettings(hidden_dims=(32, 32), seed=5),
                               {"mean": np.full(OBS_DIM, 0.3, np.float32), "std": np.full(OBS_DIM, 2.0, np.float32)},
                               ACTION_DIM)
    prior = BCPrior(learner.policy_params, (32, 32), 0.05)
    agent_norm = {"mean": np.linspace(-1, 1, OBS_DIM).astype(np.float32), "std": np.full(OBS_DIM, 0.7, np.float32)}
    agent = SACAgent.create(0, OBS_DIM, ACTION_DIM, with_bc(AgentConfig(hidden_dims=(32, 32), batch_size=16),
                                                             init_actor_from_bc=True), agent_norm, prior=prior)
    _, info = agent.actor_step(batch(16, 0))
    assert abs(float(info["bc_kl"])) < 1e-4
    with pytest.raises(ValueError, match=r"agent.bc.init_actor_from_bc: the prior's hidden dims are \[32, 32\]"):
        SACAgent.create(0, OBS_DIM, ACTION_DIM, with_bc(AgentConfig(hidden_dims=(64, 64)), init_actor_from_bc=True),
                        prior=prior)


# ------------------------------------------------------------------------------------------ the prior's entropy


def tanh_gaussian_entropy(mean: float, std: float) -> float:
    """Entropy (nats) of tanh(u), u ~ N(mean, std), by quadrature: H(u) + E[log(1 - tanh(u)^2)]."""
    u = np.linspace(mean - 12 * std, mean + 12 * std, 200_001)
    density = np.exp(-0.5 * ((u - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))
    log_jacobian = 2 * (math.log(2) - u - np.logaddexp(0, -2 * u))  # log(1 - tanh(u)^2), stable
    return 0.5 * math.log(2 * math.pi * math.e * std**2) + float(np.trapezoid(density * log_jacobian, u))


@pytest.mark.parametrize(("mean", "std"), [([0.0, 0.0], [0.3, 0.3]), ([1.5, -0.5], [0.8, 0.1])])
def test_prior_entropy_matches_the_tanh_gaussians_by_quadrature(mean: list[float], std: list[float]) -> None:
    from serl_stack.agents.bc import prior_entropy

    prior = constant_prior(mean, std)
    states = np.random.default_rng(0).normal(size=(500, OBS_DIM)).astype(np.float32)
    exact = sum(tanh_gaussian_entropy(m, s) for m, s in zip(mean, std, strict=True))
    # 500 states x 16 draws of a constant prior: 8,000 samples, the estimate's std ~ 0.01 nats.
    assert prior_entropy(prior, states, seed=1) == pytest.approx(exact, abs=0.05)
    assert prior_entropy(prior, states, seed=1) == prior_entropy(prior, states, seed=1)  # a function of its inputs
    with pytest.raises(ValueError, match=r"observations: got shape \(0, 5\), expected \(N >= 1, D\) finite"):
        prior_entropy(prior, states[:0])


def test_target_entropy_prior_holds_an_actor_started_from_the_prior_at_its_own_entropy() -> None:
    """`agent.bc.target_entropy: prior` with `init_actor_from_bc`: SAC's target is the prior's entropy, which the
    actor starts at, so the temperature has nothing to push it toward; the default keeps -scale * |A|."""
    import dataclasses as dc

    from serl_stack.agents.bc import prior_entropy

    states = np.random.default_rng(0).normal(size=(256, OBS_DIM)).astype(np.float32)
    prior = constant_prior([0.2, -0.4], [0.1, 0.2], hidden=(32, 32))
    prior = dc.replace(prior, entropy=prior_entropy(prior, states))
    cfg = with_bc(AgentConfig(hidden_dims=(32, 32), batch_size=256, target_entropy_scale=0.5),
                  init_actor_from_bc=True, target_entropy="prior")
    agent = SACAgent.create(0, OBS_DIM, ACTION_DIM, cfg, identity_norm(OBS_DIM), prior=prior)
    assert agent.target_entropy == prior.entropy < -1.0  # the prior is much narrower than -|A|/2 = -1
    b = batch(256, 0)
    b["observations"] = states
    _, info = agent.actor_step(b)
    assert float(info["entropy"]) == pytest.approx(prior.entropy, abs=0.1)
    default = SACAgent.create(0, OBS_DIM, ACTION_DIM, dc.replace(cfg, bc=dc.replace(cfg.bc, target_entropy="agent")),
                              identity_norm(OBS_DIM), prior=prior)
    assert default.target_entropy == -0.5 * ACTION_DIM
    with pytest.raises(ValueError, match="agent.bc.target_entropy: got 'prior', expected a BCPrior with its entropy"):
        SACAgent.create(0, OBS_DIM, ACTION_DIM, cfg, identity_norm(OBS_DIM), prior=dc.replace(prior, entropy=None))


def test_a_prior_of_other_sizes_or_none_is_refused_by_name() -> None:
    cfg = with_bc(SMALL)
    with pytest.raises(ValueError, match="agent.bc.enabled: got true, expected a BCPrior"):
        SACAgent.create(0, OBS_DIM, ACTION_DIM, cfg)
    with pytest.raises(ValueError, match=r"agent.bc.prior_run: the prior's observation size is \(4,\), expected "):
        SACAgent.create(0, OBS_DIM, ACTION_DIM, cfg, prior=constant_prior(0.0, 0.3, obs_dim=4))
    with pytest.raises(ValueError, match=r"agent.bc.prior_run: the prior's action size is \(3,\)"):
        SACAgent.create(0, OBS_DIM, ACTION_DIM, cfg, prior=constant_prior(0.0, 0.3, action_dim=3))


# ------------------------------------------------------------------------------------------ (f) configuration


@pytest.mark.parametrize(("overrides", "message"), [
    (["agent.bc.enabled=true"],
     "agent.bc.prior_run: got '', expected a `serl train-bc --out` folder while agent.bc.enabled is true"),
    (["agent.bc.init_actor_from_bc=true"],
     "agent.bc.init_actor_from_bc: got true, expected false while agent.bc.enabled is false"),
    (["agent.bc.lambda_init=0"],
     "agent.bc.lambda_init: got 0.0, expected > 0 while agent.bc.lambda_mode is dual"),
    (["agent.bc.enabled=true", "agent.bc.prior_run=p", "agent.image_keys=[images/front]"],
     "agent.bc.enabled: got true, expected false while agent.image_keys is ('images/front',)"),
    (["agent.bc.lambda_mode=anneal"], "agent.bc.lambda_mode: expected one of dual, schedule, got 'anneal'"),
    (["agent.bc.kl_target=0"], "agent.bc.kl_target: got 0.0, expected a finite value > 0"),
    (["agent.bc.schedule_updates=0"], "agent.bc.schedule_updates: got 0, expected a value >= 1"),
    (["agent.bc.lambda_lr=-1e-3"], "agent.bc.lambda_lr: got -0.001, expected a finite value > 0"),
    (["agent.bc.q_normalize=maybe"], "agent.bc.q_normalize: expected bool (true/false), got 'maybe'"),
    (["agent.bc.target_entropy=bc"], "agent.bc.target_entropy: expected one of agent, prior, got 'bc'"),
    (["agent.bc.target_entropy=prior"],
     "agent.bc.target_entropy: got 'prior', expected 'agent' while agent.bc.enabled is false"),
    (["agent.bc.target_entropy=prior", "agent.bc.enabled=true", "agent.bc.prior_run=p"],
     "replay.demo_dir: got '', expected a folder of demonstrations while agent.bc.target_entropy is 'prior'"),
])
def test_bad_bc_settings_name_the_field(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(None, overrides)
    assert str(e.value).startswith(message), str(e.value)


def test_bc_settings_that_are_valid_load() -> None:
    cfg = load(None, ["agent.bc.enabled=true", "agent.bc.prior_run=runs/bc", "agent.bc.lambda_mode=schedule",
                      "agent.bc.lambda_init=0", "agent.bc.init_actor_from_bc=true", "agent.bc.critic_penalty=true"])
    bc = cfg.agent.bc
    assert (bc.enabled, bc.prior_run, bc.lambda_mode, bc.lambda_init) == (True, "runs/bc", "schedule", 0.0)
    assert Config().agent.bc == BCConfig() and not BCConfig().enabled  # off unless asked for
    hash(cfg.agent)  # a static field of the jitted agent: it must hash


# ------------------------------------------------------------------------------------------ the learner side


def fake_bc_folder(tmp_path: Path, keys: list[str], obs_dim: int, action_dim: int) -> Path:
    """A `serl train-bc` folder as the learner reads it (bc.json + the checkpoint's policy item), without training."""
    import json

    from serl_stack.checkpoint import Checkpointer
    from serl_stack.rundir import BC_KIND

    learner = BCLearner.create(BCSettings(hidden_dims=(16,)), identity_norm(obs_dim), action_dim)
    folder = tmp_path / "bc"
    checkpoints = Checkpointer(folder / "checkpoints")
    checkpoints.save(0, learner, {"updates": 0}, policy=learner.policy_params)
    checkpoints.close()
    (folder / "bc.json").write_text(json.dumps({"kind": BC_KIND, "obs_keys": keys, "obs_dim": obs_dim,
                                                "action_dim": action_dim, "hidden_dims": [16], "std_floor": 0.05}))
    return folder


def updater_config(prior_run: str) -> Config:
    agent = with_bc(AgentConfig(hidden_dims=(32, 32), batch_size=16, utd=2), lambda_mode="dual")
    agent = dataclasses.replace(agent, bc=dataclasses.replace(agent.bc, prior_run=prior_run))
    return dataclasses.replace(Config(), agent=agent, replay=ReplayConfig(capacity=500))


def test_the_updater_loads_the_prior_and_reports_lambda_and_the_kl(tmp_path: Path) -> None:
    """What the learner logs as `learner/bc_lambda` and `learner/bc_kl` (it writes every key of an update's info)."""
    from serl_stack.updater import Updater

    folder = fake_bc_folder(tmp_path, ["state/x"], OBS_DIM, ACTION_DIM)
    rng = np.random.default_rng(0)
    obs = lambda: {"state/x": rng.normal(size=OBS_DIM).astype(np.float32)}  # noqa: E731
    updater = Updater(updater_config(str(folder)), obs(), np.zeros(ACTION_DIM, np.float32))
    for _ in range(64):
        updater.insert(obs(), rng.uniform(-1, 1, ACTION_DIM).astype(np.float32), 0.0, obs(), False, False)
    updater.init_agent()
    info = jax.device_get(updater.step())
    assert float(info["bc_lambda"]) == pytest.approx(1.0) and np.isfinite(info["bc_kl"])
    assert updater.agent.prior is not None


def test_the_updater_measures_the_priors_entropy_at_the_demonstrations_for_the_target(tmp_path: Path) -> None:
    from serl_stack.agents.bc import prior_entropy
    from serl_stack.data.demos import Episode, replay_from_demos, save_episode
    from serl_stack.updater import Updater

    folder = fake_bc_folder(tmp_path, ["state/x"], OBS_DIM, ACTION_DIM)
    rng = np.random.default_rng(0)
    for _ in range(2):
        episode = Episode({"state/x": rng.normal(2.0, 1.0, (11, OBS_DIM)).astype(np.float32)},
                          rng.uniform(-1, 1, (10, ACTION_DIM)).astype(np.float32), np.zeros(10, np.float32),
                          np.zeros(10, bool), np.eye(10, dtype=bool)[9])
        save_episode(tmp_path / "demos", episode, env_id="X")
    cfg = updater_config(str(folder))
    bc = dataclasses.replace(cfg.agent.bc, target_entropy="prior")
    cfg = dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, bc=bc),
                              replay=dataclasses.replace(cfg.replay, demo_dir=str(tmp_path / "demos")))
    updater = Updater(cfg, {"state/x": np.zeros(OBS_DIM, np.float32)}, np.zeros(ACTION_DIM, np.float32))
    demo_states = replay_from_demos(tmp_path / "demos").vectors(("state/x",))
    assert updater.prior.entropy == prior_entropy(updater.prior, demo_states, seed=cfg.train.seed)
    for _ in range(16):
        updater.insert({"state/x": rng.normal(size=OBS_DIM).astype(np.float32)}, np.zeros(ACTION_DIM, np.float32),
                       0.0, {"state/x": rng.normal(size=OBS_DIM).astype(np.float32)}, False, False)
    updater.init_agent()
    assert updater.agent.target_entropy == updater.prior.entropy


def test_the_updater_refuses_a_prior_of_other_keys_or_a_missing_one_by_name(tmp_path: Path) -> None:
    from serl_stack.updater import Updater

    example = ({"state/x": np.zeros(OBS_DIM, np.float32)}, np.zeros(ACTION_DIM, np.float32))
    folder = fake_bc_folder(tmp_path, ["state/y"], OBS_DIM, ACTION_DIM)
    with pytest.raises(ConfigError, match=r"agent.bc.prior_run: .* sees the observation keys \['state/y'\], "
                                          r"expected this agent's \['state/x'\]"):
        Updater(updater_config(str(folder)), *example)
    with pytest.raises(ConfigError, match=r"agent.bc.prior_run: .*nowhere is not a folder; expected the --out "
                                          r"folder of `serl train-bc`"):
        Updater(updater_config(str(tmp_path / "nowhere")), *example)


def test_preflight_refuses_a_missing_prior_or_one_of_another_task_before_any_process_starts(tmp_path: Path) -> None:
    """`serl train` / `serl learner` run preflight in the parent, before a learner process is spawned."""
    import json

    from serl_stack.config import load
    from serl_stack.preflight import check_bc_prior, preflight

    keys = ["state/gripper_pos", "state/tcp_pose"]  # as `serl train-bc` writes them: sorted
    base = ["agent.bc.enabled=true", "agent.obs_keys=[state/tcp_pose, state/gripper_pos]"]  # the config's order
    with pytest.raises(ConfigError, match=r"agent.bc.prior_run: .*nowhere is not a folder"):
        preflight(load(None, [*base, f"agent.bc.prior_run={tmp_path / 'nowhere'}"]), "learner")
    folder = fake_bc_folder(tmp_path, keys, OBS_DIM, ACTION_DIM)
    check_bc_prior(load(None, [*base, f"agent.bc.prior_run={folder}"]))  # the folder fits: no error
    with pytest.raises(ConfigError, match=r"sees the observation keys \['state/gripper_pos', 'state/tcp_pose'\], "
                                          r"expected this agent's \['state/tcp_pose'\]"):
        check_bc_prior(load(None, ["agent.bc.enabled=true", "agent.obs_keys=[state/tcp_pose]",
                                   f"agent.bc.prior_run={folder}"]))
    summary = json.loads((folder / "bc.json").read_text())
    (folder / "bc.json").write_text(json.dumps({**summary, "env_id": "FrankaPegInsert-v0"}))
    with pytest.raises(ConfigError, match=r"was cloned on env.id 'FrankaPegInsert-v0', expected this run's env.id"):
        check_bc_prior(load(None, [*base, f"agent.bc.prior_run={folder}"]))


@pytest.mark.slow
def test_serl_train_with_the_regularizer_logs_lambda_and_the_kl(tmp_path: Path) -> None:
    """The product path on reach: `serl record-demos`, `serl train-bc`, then `serl train` with the demonstrations,
    the regularizer and BC initialization; its TensorBoard scalars hold lambda and the KL."""
    from serl_stack.runlog import event_files, read_scalars

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "MUJOCO_GL": "egl"}
    serl = [sys.executable, "-m", "serl_stack.cli"]
    small = ["--set", "agent.hidden_dims=[64, 64]", "--set", "agent.batch_size=64"]
    for argv in (["record-demos", "--out", str(tmp_path / "demos"), "--episodes", "6"],
                 ["train-bc", "--demos", str(tmp_path / "demos"), "--out", str(tmp_path / "bc"), "--steps", "200",
                  "--episodes", "0", *small],
                 ["train", "--run-dir", str(tmp_path / "run"), *small, "--set", f"replay.demo_dir={tmp_path / 'demos'}",
                  "--set", "agent.bc.enabled=true", "--set", f"agent.bc.prior_run={tmp_path / 'bc'}",
                  "--set", "agent.bc.init_actor_from_bc=true", "--set", "train.total_env_steps=600",
                  "--set", "train.start_steps=200", "--set", "train.log_every=50", "--set", "train.eval_episodes=2"]):
        done = subprocess.run([*serl, *argv], cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "regularized toward the BC prior" in (tmp_path / "run" / "learner.log").read_text()
    scalars = [row for f in event_files(tmp_path / "run") for row in read_scalars(f)]
    lam = [v for tag, _, v in scalars if tag == "learner/bc_lambda"]
    kl = [v for tag, _, v in scalars if tag == "learner/bc_kl"]
    assert len(lam) >= 5 and len(kl) == len(lam) and all(np.isfinite(kl)) and lam[0] > 0
