"""Behaviour of conservative baseline mixing (serl_stack.safety.stepmix): the EpsMix probability, the value
bounds it compares, the per-episode constraint on a bandit with known values, and StepMix's switching."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serl_stack.config import AgentConfig, MixingConfig
from serl_stack.safety.estimates import (
    BaselineValue,
    KappaCalibrator,
    StepBaselineValue,
    ValueBound,
    learned_lower_bound,
)
from serl_stack.safety.stepmix import BASELINE, LEARNED, EpsMix, StepMix, epsmix_epsilon, make_mixer

values = st.floats(0.0, 1e6, allow_nan=False, allow_infinity=False)
alphas = st.floats(1e-3, 1 - 1e-3)


# ------------------------------------------------------------------------------------------------ epsilon


@settings(max_examples=300, deadline=None)
@given(values, values, alphas)
def test_epsilon_is_a_probability(lower: float, upper: float, alpha: float) -> None:
    assert 0.0 <= epsmix_epsilon(lower, upper, alpha) <= 1.0


@settings(max_examples=300, deadline=None)
@given(values, values, values, alphas)
def test_epsilon_non_decreasing_in_lower(a: float, b: float, upper: float, alpha: float) -> None:
    lo, hi = min(a, b), max(a, b)
    assert epsmix_epsilon(lo, upper, alpha) <= epsmix_epsilon(hi, upper, alpha) + 1e-12


@settings(max_examples=200, deadline=None)
@given(st.floats(1e-6, 1e6), alphas)
def test_epsilon_is_alpha_without_a_bound_and_one_above_the_threshold(upper: float, alpha: float) -> None:
    assert epsmix_epsilon(0.0, upper, alpha) == pytest.approx(alpha)
    assert epsmix_epsilon((1 - alpha) * upper, upper, alpha) == 1.0
    assert epsmix_epsilon(2 * upper, upper, alpha) == 1.0


def test_epsilon_is_one_when_the_baseline_is_worth_nothing() -> None:
    assert epsmix_epsilon(0.0, 0.0, 0.2) == 1.0


@pytest.mark.parametrize(
    ("lower", "upper", "alpha", "name"),
    [(-0.1, 1.0, 0.2, "lower"), (float("nan"), 1.0, 0.2, "lower"), (0.1, float("inf"), 0.2, "upper"),
     (0.1, -1.0, 0.2, "upper"), (0.1, 1.0, 0.0, "alpha"), (0.1, 1.0, 1.0, "alpha")],
)
def test_epsilon_rejects_invalid_inputs_by_name(lower: float, upper: float, alpha: float, name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name}: got"):
        epsmix_epsilon(lower, upper, alpha)


# ------------------------------------------------------------------------------------------ baseline value


def _coverage(make: BaselineValue.__class__, true_mean: float, trials: int, episodes: int, seed: int, **kw) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(trials):
        value = make(0.95, **kw)
        for rewards in rng.binomial(1, 0.3, size=(episodes, 10)).astype(float):
            value.add_episode(rewards)
        hits += value.upper() >= true_mean
    return hits / trials


def test_baseline_upper_bound_covers_the_true_mean() -> None:
    trials = 2000
    # Returns are Binomial(10, 0.3) sums of per-step rewards: true value 3.0.
    t_cov = _coverage(BaselineValue, 3.0, trials, episodes=30, seed=0)
    bern_cov = _coverage(BaselineValue, 3.0, trials, episodes=30, seed=1, max_return=10.0)
    # The t-bound is (close to) exact at 0.95, so its empirical coverage over `trials` seeded trials scatters by
    # one binomial SE ~0.005 around 0.95: allow 3 SE below. Empirical Bernstein is distribution-free (looser).
    se = np.sqrt(0.95 * 0.05 / trials)
    assert t_cov >= 0.95 - 3 * se, f"Student-t U covered the true mean in only {t_cov:.3f} of {trials} trials"
    assert bern_cov >= 0.95, f"empirical-Bernstein U covered the true mean in only {bern_cov:.3f} of {trials}"


def test_baseline_value_needs_two_episodes_and_non_negative_rewards() -> None:
    value = BaselineValue(0.95)
    value.add_episode([1.0, 0.0])
    with pytest.raises(ValueError, match="1 baseline episode"):
        value.upper()
    with pytest.raises(ValueError, match=r"episode 1 step 2: reward -0\.5"):
        value.add_episode([0.1, 0.2, -0.5])
    assert value.n == 1
    with pytest.raises(ValueError, match="max_return"):
        BaselineValue(0.95, max_return=1.0).add_episode([0.7, 0.7])


def test_baseline_value_discounts_returns() -> None:
    value = BaselineValue(0.95, discount=0.5)
    assert value.add_episode([1.0, 1.0, 1.0]) == pytest.approx(1.75)


# ---------------------------------------------------------------------------------------- learned bound


def test_learned_lower_bound_averages_actions_then_the_ensemble() -> None:
    q = np.array([[1.0, 3.0], [3.0, 5.0]])  # member values 2 and 4
    assert learned_lower_bound(q, 0.0) == pytest.approx(3.0)
    assert learned_lower_bound(q, 1.0) == pytest.approx(3.0 - np.std([2.0, 4.0], ddof=1))
    assert learned_lower_bound(q, 100.0) == 0.0
    with pytest.raises(ValueError, match="q_values"):
        learned_lower_bound(np.array([1.0, 2.0]), 1.0)
    with pytest.raises(ValueError, match="kappa"):
        learned_lower_bound(q, -1.0)


@pytest.mark.parametrize("num_critics", [2, 5])
def test_value_bound_fn_on_a_real_sac_agent(num_critics: int) -> None:
    import jax
    from flax import serialization

    from serl_stack.agents.networks import tanh_gaussian_sample
    from serl_stack.agents.policy import make_value_fn
    from serl_stack.agents.sac import SACAgent

    cfg = AgentConfig(hidden_dims=(16, 16), num_critics=num_critics)
    agent = SACAgent.create(0, 5, 3, cfg)
    init_params, fn = make_value_fn(5, 3, cfg, value_samples=7)
    # What the actor process does with a broadcast: restore the learner's pytree into its own template.
    wire = jax.tree.map(np.asarray, serialization.to_state_dict(agent.value_params))
    params = serialization.from_state_dict(init_params(jax.random.PRNGKey(1)), wire)
    obs = np.linspace(-1.0, 1.0, 5).astype(np.float32)
    key = jax.random.PRNGKey(3)
    q = np.asarray(fn(params, obs, key))
    assert q.shape == (num_critics, 7) and np.all(np.isfinite(q))
    # The same numbers as the learner's own critic on the same sampled actions.
    x = obs[None]
    mean, log_std = agent.actor.apply_fn({"params": agent.actor.params}, x)
    actions, _ = tanh_gaussian_sample(jax.numpy.broadcast_to(mean, (7, 3)), jax.numpy.broadcast_to(log_std, (7, 3)),
                                      key)
    expected = agent.critic.apply_fn({"params": agent.critic.params}, jax.numpy.broadcast_to(x, (7, 5)), actions)
    np.testing.assert_allclose(q, np.asarray(expected), rtol=1e-5, atol=1e-6)
    # M distinct sampled actions, not one action repeated.
    assert np.unique(np.round(q[0], 6)).size == 7
    bound = ValueBound.from_q_values(q)
    for kappa in (0.0, 1.0, 3.0):
        lower = learned_lower_bound(q, kappa)
        assert 0.0 <= lower <= max(bound.mean, 0.0)


def test_kappa_calibrator_grows_for_an_overconfident_critic_and_shrinks_for_an_honest_one() -> None:
    rng = np.random.default_rng(0)
    biased, honest = KappaCalibrator(1.0, 0.95), KappaCalibrator(1.0, 0.95)
    assert biased.kappa == honest.kappa == 1.0  # the configured start
    for _ in range(100):
        v = rng.uniform(1.0, 2.0)
        ret = v + rng.normal(0.0, 0.2)
        biased.observe(ValueBound(v + 0.5, 0.1), ret)  # overestimates by 5 stds
        honest.observe(ValueBound(v - 0.2, 0.1), ret)  # already below the value
    assert biased.kappa >= 5.0
    assert honest.kappa == 0.0


def test_an_uncalibrated_critic_is_not_trusted_by_default() -> None:
    """Default kappa = inf: L = 0 whatever the critic says, until calibration_runs runs calibrate it."""
    cal = KappaCalibrator(MixingConfig().kappa, 0.95)
    assert cal.kappa == np.inf and cal.cap == np.inf
    assert cal.lower(ValueBound(50.0, 0.0)) == 0.0
    rng = np.random.default_rng(0)
    for i in range(10):
        assert cal.lower(ValueBound(2.0, 0.5)) == 0.0, i
        v = rng.uniform(1.0, 2.0)
        cal.observe(ValueBound(v - 0.2, 0.1), v + rng.normal(0.0, 0.1))  # an honest critic
    assert cal.kappa == 0.0 and 0.5 < cal.cap < 2.0  # calibrated: now trusted, up to what returns showed
    assert cal.lower(ValueBound(1.0, 0.1)) == 1.0
    assert cal.lower(ValueBound(50.0, 0.1)) == cal.cap


def test_a_biased_critic_with_no_spread_is_capped_by_the_returns() -> None:
    """What pick-cube showed: ensemble means of 2-9 with almost no spread where every learned run returns 0. No
    kappa on the grid makes such bounds honest on the next state, so the returns' bound caps L at 0."""
    rng = np.random.default_rng(0)
    cal = KappaCalibrator(1.0, 0.95)
    for _ in range(30):
        cal.observe(ValueBound(rng.uniform(2.0, 9.0), 0.01), 0.0)
    assert cal.cap == 0.0
    assert cal.lower(ValueBound(12.0, 0.01)) == 0.0  # a fresh state the critic overrates even more


def test_calibration_averages_the_clipped_bounds() -> None:
    """A state whose m - kappa s is far below 0 must not excuse an overestimate elsewhere: L is clipped at 0 there,
    so the overestimates alone set kappa."""
    cal = KappaCalibrator(1.0, 0.95)
    for _ in range(20):
        cal.observe(ValueBound(5.0, 0.1), 0.0)
        cal.observe(ValueBound(-100.0, 0.1), 0.0)
    assert cal.kappa >= 50.0  # unclipped, kappa = 0 would "fit": (5 - 100) / 2 < 0


def test_epsmix_with_the_default_kappa_runs_the_learned_policy_alpha_of_the_time() -> None:
    mixer = make_mixer(MixingConfig(mode="epsmix", baseline_episodes=2), discount=0.9, rng=np.random.default_rng(0))
    for _ in range(2):
        mixer.begin_episode()
        mixer.choose(np.zeros(1), None)
        mixer.record_reward(1.0)
        mixer.end_episode()
    mixer.begin_episode()
    mixer.choose(np.zeros(1), ValueBound(100.0, 0.0))  # a critic that claims everything
    fields = mixer.log_fields()
    assert fields["lower"] == 0.0 and fields["epsilon"] == pytest.approx(0.2)
    assert fields["kappa"] == -1.0 and fields["cap"] == -1.0  # not calibrated yet (logged as -1)


# ------------------------------------------------------------------------------------------------- EpsMix


def test_epsmix_keeps_the_bandit_constraint() -> None:
    """Two arms with known means; the learned arm is worse than the baseline. U from baseline samples, L from a
    noisy LCB (an estimate with Gaussian error, minus kappa times its std)."""
    v_b, v_pi, alpha, noise = 0.7, 0.4, 0.2, 0.05
    cfg = MixingConfig(mode="epsmix", alpha=alpha, kappa=2.0, baseline_episodes=30, confidence=0.95)
    mixer = make_mixer(cfg, discount=1.0, rng=np.random.default_rng(0))
    assert isinstance(mixer, EpsMix)
    rng = np.random.default_rng(1)
    held, eps_seen = [], []
    for _ in range(1000):
        mixer.begin_episode()
        bound = ValueBound(v_pi + rng.normal(0.0, noise), noise) if mixer.needs_bound else None
        choice = mixer.choose(np.zeros(1), bound)
        mixer.record_reward(float(rng.random() < (v_pi if choice == LEARNED else v_b)))
        fields = mixer.end_episode()
        if not fields["warmup"]:
            eps = fields["epsilon"]
            eps_seen.append(eps)
            held.append(eps * v_pi + (1 - eps) * v_b >= (1 - alpha) * v_b)
    fraction = float(np.mean(held))
    assert len(held) == 970
    assert fraction >= 0.95, f"mixed value >= (1 - alpha) V^b in only {fraction:.3f} of {len(held)} episodes"
    # It still explores: the learned arm runs in a real share of episodes.
    assert np.mean(eps_seen) > 0.1, f"mean eps {np.mean(eps_seen):.3f}"


def test_epsmix_log_fields_and_negative_rewards() -> None:
    mixer = make_mixer(MixingConfig(mode="epsmix", baseline_episodes=2, kappa=1.0), discount=0.9,
                       rng=np.random.default_rng(0))
    assert isinstance(mixer, EpsMix)
    for rewards in ([1.0, 0.0], [0.0, 1.0]):
        mixer.begin_episode()
        assert not mixer.needs_bound
        for r in rewards:
            assert mixer.choose(np.zeros(2), None) == BASELINE
            mixer.record_reward(r)
        assert mixer.end_episode()["warmup"] == 1.0
    mixer.begin_episode()
    assert mixer.needs_bound
    with pytest.raises(ValueError, match="bound None"):
        mixer.choose(np.zeros(2), None)
    mixer.choose(np.zeros(2), ValueBound(5.0, 0.1))
    assert not mixer.needs_bound
    with pytest.raises(ValueError, match=r"episode 2 step 0: reward -1\.0"):
        mixer.record_reward(-1.0)
    mixer.record_reward(0.5)
    fields = mixer.end_episode()
    assert fields["epsilon"] == 1.0 and fields["learned"] == 1.0 and fields["return"] == 0.5
    assert {"lower", "upper", "kappa"} <= fields.keys()


# ------------------------------------------------------------------------------------------------ StepMix


def _warm_stepmix(cfg: MixingConfig, episodes: list[tuple[np.ndarray, list[float]]]) -> StepMix:
    mixer = make_mixer(cfg, discount=1.0, rng=np.random.default_rng(0))
    assert isinstance(mixer, StepMix)
    for states, rewards in episodes:
        mixer.begin_episode()
        for s, r in zip(states, rewards, strict=True):
            assert mixer.choose(s, None) == BASELINE
            mixer.record_reward(r)
        mixer.end_episode()
    assert not mixer.warming_up
    return mixer


def _run(mixer: StepMix, states: np.ndarray, rewards: list[float], bounds: list[ValueBound | None]) -> list[str]:
    mixer.begin_episode()
    choices = []
    for s, r, b in zip(states, rewards, bounds, strict=True):
        choices.append(mixer.choose(s, b if mixer.needs_bound else None))
        mixer.record_reward(r)
    mixer.end_episode()
    return choices


def test_stepmix_never_switches_when_the_bound_never_holds_and_at_once_when_it_always_does() -> None:
    horizon = 10
    states = np.stack([np.full(2, t, float) for t in range(horizon)])
    cfg = MixingConfig(mode="stepmix", alpha=0.2, baseline_episodes=3, kappa=1.0)  # a critic we trust
    mixer = _warm_stepmix(cfg, [(states, [1.0] * horizon)] * 3)

    choices = _run(mixer, states, [0.0] * horizon, [ValueBound(0.0, 0.0)] * horizon)
    assert choices == [BASELINE] * horizon and mixer.log_fields()["switch_step"] == -1.0

    # Holds from step 0, then the bound collapses: the switch happened once and persists.
    bounds = [ValueBound(100.0, 0.0)] + [ValueBound(0.0, 0.0)] * (horizon - 1)
    choices = _run(mixer, states, [0.0] * horizon, bounds)
    assert choices == [LEARNED] * horizon
    fields = mixer.log_fields()
    assert fields["switch_step"] == 0.0 and fields["lower_at_switch"] == 100.0
    assert {"lower", "upper", "upper_s1", "kappa", "return"} <= fields.keys()


def test_stepmix_keeps_the_constraint_where_switching_on_banked_reward_alone_would_not() -> None:
    """The baseline succeeds (0.2 per step) on half the resets and earns nothing on the others: V^b = 1. The
    learned policy earns nothing anywhere (L = 0 is exact). Switching once G_t >= (1 - alpha) U would bank 0.8
    on good resets and keep the failures: value 0.4 < 0.75. StepMix's rule gives 0.8."""
    horizon, alpha = 10, 0.25
    good = (np.ones((horizon, 1)), [0.2] * horizon)
    bad = (np.zeros((horizon, 1)), [0.0] * horizon)
    mixer = _warm_stepmix(MixingConfig(mode="stepmix", alpha=alpha, baseline_episodes=40), [good, bad] * 20)
    zero = [ValueBound(0.0, 0.0)] * horizon
    returns = {}
    for name, (states, baseline_rewards) in (("good", good), ("bad", bad)):
        mixer.begin_episode()
        for t, s in enumerate(states):
            choice = mixer.choose(s, zero[t] if mixer.needs_bound else None)
            mixer.record_reward(baseline_rewards[t] if choice == BASELINE else 0.0)
        returns[name] = (mixer.end_episode()["return"], mixer.log_fields()["switch_step"])
    assert returns["good"] == (pytest.approx(1.6), 8.0)
    assert returns["bad"] == (0.0, 0.0)
    value = 0.5 * returns["good"][0] + 0.5 * returns["bad"][0]
    assert value >= (1 - alpha) * 1.0


def test_step_baseline_value_needs_data_and_matching_shapes() -> None:
    value = StepBaselineValue(0.95)
    with pytest.raises(ValueError, match="0 baseline episode"):
        value.upper(np.zeros(2), 0)
    with pytest.raises(ValueError, match="states shape"):
        value.add_episode(np.zeros((3, 2)), [1.0, 1.0])
    with pytest.raises(ValueError, match=r"episode 0 step 1: reward -2\.0"):
        value.add_episode(np.zeros((2, 2)), [1.0, -2.0])


# --------------------------------------------------------------------------------------------- make_mixer


def test_make_mixer_builds_each_mode_and_names_bad_fields() -> None:
    rng = np.random.default_rng(0)
    assert make_mixer(MixingConfig(mode="off"), discount=0.99, rng=rng) is None
    assert isinstance(make_mixer(MixingConfig(mode="epsmix"), discount=0.99, rng=rng), EpsMix)
    assert isinstance(make_mixer(MixingConfig(mode="stepmix"), discount=0.99, rng=rng), StepMix)
    with pytest.raises(ValueError, match=r"mixing\.mode: got 'eps'.*off, epsmix, stepmix"):
        make_mixer(MixingConfig(mode="eps"), discount=0.99, rng=rng)
    with pytest.raises(ValueError, match=r"mixing\.alpha: got 1\.5"):
        make_mixer(MixingConfig(mode="epsmix", alpha=1.5), discount=0.99, rng=rng)
    with pytest.raises(ValueError, match=r"mixing\.baseline_episodes: got 1"):
        make_mixer(MixingConfig(mode="stepmix", baseline_episodes=1), discount=0.99, rng=rng)
    with pytest.raises(ValueError, match=r"mixing\.kappa: got nan"):
        make_mixer(MixingConfig(mode="epsmix", kappa=float("nan")), discount=0.99, rng=rng)
    with pytest.raises(ValueError, match=r"mixing\.calibration_runs: got 1"):
        make_mixer(MixingConfig(mode="epsmix", calibration_runs=1), discount=0.99, rng=rng)
    with pytest.raises(ValueError, match=r"mixing\.cap_runs: got 5, expected >= mixing\.calibration_runs"):
        make_mixer(MixingConfig(mode="stepmix", cap_runs=5), discount=0.99, rng=rng)
