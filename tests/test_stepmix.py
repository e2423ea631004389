"""Behaviour of conservative baseline mixing (serl_stack.safety.stepmix): the EpsMix probability, the value
bounds the mixers compare, the per-episode constraint on a bandit with known values, and StepMix's switch plan.
The guarantee over random resets and the hand-over to a better learned policy: tests/test_mixer_guarantee.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serl_stack.config import AgentConfig, MixingConfig
from serl_stack.safety.estimates import (
    BaselineSteps,
    BaselineValue,
    KappaCalibrator,
    LearnedValue,
    PrefixBounds,
    ValueBound,
    learned_lower_bound,
)
from serl_stack.safety.stepmix import (
    BASELINE,
    LEARNED,
    NEVER,
    EpsMix,
    StepMix,
    epsmix_epsilon,
    make_mixer,
    stepmix_plan,
    switch_grid,
)

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


def test_epsmix_runs_the_learned_policy_alpha_of_the_time_until_its_returns_exist() -> None:
    """L comes from the learned policy's own returns: 0 (eps = alpha) until calibration_runs of them exist,
    whatever a critic would claim (EpsMix asks for no bound)."""
    cfg = MixingConfig(mode="epsmix", baseline_episodes=2, calibration_runs=3, cap_runs=3)
    mixer = make_mixer(cfg, discount=0.9, rng=np.random.default_rng(0))
    assert isinstance(mixer, EpsMix)
    for _ in range(2):
        mixer.begin_episode()
        mixer.choose(np.zeros(1))
        mixer.record_reward(1.0)
        mixer.end_episode()
    learned_returns = []
    while len(learned_returns) < 3:
        mixer.begin_episode()
        assert not mixer.needs_bound
        fields = mixer.log_fields()
        assert fields["lower"] == 0.0 and fields["epsilon"] == pytest.approx(0.2)
        assert fields["learned_runs"] == len(learned_returns)
        choice = mixer.choose(np.zeros(1))
        mixer.record_reward(2.0 if choice == LEARNED else 1.0)  # the learned policy earns more
        if choice == LEARNED:
            learned_returns.append(2.0)
        mixer.end_episode()
    mixer.begin_episode()
    assert mixer.log_fields()["lower"] == 2.0 and mixer.log_fields()["epsilon"] == 1.0  # no spread: L = 2


# ------------------------------------------------------------------------------------------------- EpsMix


def test_epsmix_keeps_the_bandit_constraint() -> None:
    """Two arms with known means; the learned arm is worse than the baseline. U from baseline samples, L from the
    learned arm's own pulls."""
    v_b, v_pi, alpha = 0.7, 0.4, 0.2
    cfg = MixingConfig(mode="epsmix", alpha=alpha, baseline_episodes=30, confidence=0.95)
    mixer = make_mixer(cfg, discount=1.0, rng=np.random.default_rng(0))
    assert isinstance(mixer, EpsMix)
    rng = np.random.default_rng(1)
    held, eps_seen = [], []
    for _ in range(1000):
        mixer.begin_episode()
        choice = mixer.choose(np.zeros(1))
        mixer.record_reward(float(rng.random() < (v_pi if choice == LEARNED else v_b)))
        fields = mixer.end_episode()
        if not fields["warmup"]:
            eps = fields["epsilon"]
            eps_seen.append(eps)
            held.append(eps * v_pi + (1 - eps) * v_b >= (1 - alpha) * v_b)
    fraction = float(np.mean(held))
    assert len(held) == 970
    assert fraction >= 0.95, f"mixed value >= (1 - alpha) V^b in only {fraction:.3f} of {len(held)} episodes"
    # It still explores: the learned arm runs in a real share of episodes, more than alpha once L > 0.
    assert np.mean(eps_seen) > alpha, f"mean eps {np.mean(eps_seen):.3f}"


def test_epsmix_log_fields_and_negative_rewards() -> None:
    mixer = make_mixer(MixingConfig(mode="epsmix", baseline_episodes=2), discount=0.9, rng=np.random.default_rng(0))
    assert isinstance(mixer, EpsMix)
    for rewards in ([1.0, 0.0], [0.0, 1.0]):
        mixer.begin_episode()
        assert mixer.log_fields()["warmup"] == 1.0
        for r in rewards:
            assert mixer.choose(np.zeros(2)) == BASELINE
            mixer.record_reward(r)
        assert mixer.end_episode()["warmup"] == 1.0
    mixer.begin_episode()
    fields = mixer.log_fields()
    assert {"epsilon", "lower", "upper", "learned", "learned_runs"} <= fields.keys()
    assert fields["upper"] > 0.9 and fields["epsilon"] == pytest.approx(0.2)
    mixer.choose(np.zeros(2))
    with pytest.raises(ValueError, match="one record_reward per step"):
        mixer.choose(np.zeros(2))
    with pytest.raises(ValueError, match=r"episode 2 step 0: reward -1\.0"):
        mixer.record_reward(-1.0)
    mixer.record_reward(0.5)
    assert mixer.end_episode()["return"] == 0.5


def test_learned_value_and_prefix_bounds_refuse_bad_data() -> None:
    with pytest.raises(ValueError, match="min_runs"):
        LearnedValue(0.95, window=5, min_runs=10)
    learned = LearnedValue(0.95, window=3, min_runs=2)
    with pytest.raises(ValueError, match="realized_return: got -1"):
        learned.observe(-1.0)
    for r in (1.0, 3.0, 5.0, 7.0):
        learned.observe(r)
    assert learned.n == 3 and 0.0 < learned.lower() < 5.0  # the window keeps the newest three: mean 5
    prefixes = PrefixBounds(0.95, discount=1.0, window=4)
    with pytest.raises(ValueError, match="planned switch step 0"):
        prefixes.add_episode([ValueBound(1.0, 0.0)] * 2, planned=0)
    steps = BaselineSteps(0.95)
    with pytest.raises(ValueError, match="1 baseline episode"):
        steps.add_episode([1.0]) or steps.slack_upper(0.2)


def test_prefix_bounds_count_an_ended_episode_as_no_tail() -> None:
    """Episodes planned to switch at 3: one reached it (bounds at steps 0-3), one ended after 2 steps (no learned
    tail at steps 2 and 3: 0 there), both unknown beyond 3."""
    prefixes = PrefixBounds(0.95, discount=1.0)
    prefixes.add_episode([ValueBound(2.0, 0.0)] * 4, planned=3)
    prefixes.add_episode([ValueBound(2.0, 0.0)] * 2, planned=3)
    tails = prefixes.tail_lower(6, kappa=0.0, cap=np.inf)
    assert tails[0] == tails[1] == 2.0
    assert 0.0 <= tails[2] < 1.0  # the mean of 2 and 0 with its t-bound
    assert tails[4] == tails[5] == 0.0  # nobody reached step 4 under the baseline
    assert np.all(prefixes.tail_lower(6, kappa=np.inf, cap=np.inf) == 0.0)  # an untrusted critic: no tails


def test_prefix_bounds_take_a_kappa_and_a_cap_per_step() -> None:
    """Per-step kappa and cap (StepMix's per-switch-step calibration): each step's bound is the one its own kappa
    and cap give, and a step whose kappa is inf gets 0 even where the critic's spread is 0."""
    prefixes = PrefixBounds(0.95, discount=0.9)
    for mean in (1.0, 1.5, 2.0):
        prefixes.add_episode([ValueBound(mean, 0.0 if t == 1 else 0.2) for t in range(4)], planned=3)
    kappa, cap = np.array([0.0, np.inf, 1.0, 2.0]), np.array([np.inf, np.inf, 0.5, np.inf])
    tails = prefixes.tail_lower(4, kappa, cap)
    for t in (0, 2, 3):
        assert tails[t] == prefixes.tail_lower(4, kappa[t], cap[t])[t]
    assert tails[1] == 0.0 and prefixes.tail_lower(4, 0.0, np.inf)[1] > 0.0
    assert tails[2] <= 0.5 * 0.9**2  # the cap of step 2, discounted


# ------------------------------------------------------------------------------------------------ StepMix


def test_stepmix_plan_meets_the_line_exactly_between_neighbouring_steps() -> None:
    """S_hat rising with the switch step (the learned tail worth less than the baseline's): the plan is the two
    neighbours around S_hat = 0, weighted so the average is exactly 0."""
    h, alpha, upper = 10, 0.2, 1.0
    slack = (1 - alpha) * np.linspace(1.0, 0.1, h) - alpha * np.linspace(0.0, 0.9, h)
    steps = np.arange(h) / h
    for tail in (0.5 * (1 - steps), 0.5 * (1 - steps**2)):  # S_hat linear (all pairs tie), then concave
        a, b, p = stepmix_plan(tail, slack, baseline_lower=0.9, upper=upper, alpha=alpha)
        s = tail - slack
        assert abs(a - b) == 1 and s[a] < 0 <= s[b], (a, b)
        assert p * s[a] + (1 - p) * s[b] == pytest.approx(0.0, abs=1e-12)
        assert p * (h - a) + (1 - p) * (h - b) > epsmix_epsilon(float(tail[0]), upper, alpha) * h


def test_stepmix_plan_runs_the_learned_policy_when_its_bound_covers_the_line() -> None:
    slack = np.array([0.8, 0.5, 0.2])
    assert stepmix_plan(np.array([0.85, 0.0, 0.0]), slack, 0.9, 1.0, 0.2) == (0, 0, 1.0)
    # A baseline worth nothing: any policy meets the line.
    assert stepmix_plan(np.zeros(3), np.zeros(3), 0.0, 0.0, 0.2) == (0, 0, 1.0)


def test_stepmix_plan_without_a_trusted_critic_on_a_sparse_task_is_epsmix() -> None:
    """Terminal reward: nothing is banked before the last step, so with L = 0 no switch step is feasible on its
    own. The best mixture is EpsMix's: the learned policy from step 0 with probability eps, else never."""
    h, alpha, upper = 10, 0.2, 0.5
    slack = np.full(h, (1 - alpha) * upper)
    a, b, p = stepmix_plan(np.zeros(h), slack, baseline_lower=0.45, upper=upper, alpha=alpha)
    assert (a, b) == (0, NEVER) and p == pytest.approx(epsmix_epsilon(0.0, upper, alpha))


def test_stepmix_plan_keeps_to_the_allowed_switch_steps() -> None:
    """The line falls between steps 4 and 5; on a grid without them the pair straddles it with the nearest allowed
    steps (3 and 6), still meeting the line exactly; step 0 and never stay members whatever the mask says."""
    h, upper, alpha = 10, 1.0, 0.2
    slack = 0.9 - 0.2 * np.arange(h)  # S(tau) = -0.9 + 0.2 tau: 0 at tau = 4.5
    assert stepmix_plan(np.zeros(h), slack, 0.9, upper, alpha)[:2] == (4, 5)
    allowed = np.isin(np.arange(h), switch_grid(h)) & ~np.isin(np.arange(h), [4, 5])
    a, b, p = stepmix_plan(np.zeros(h), slack, 0.9, upper, alpha, allowed)
    s = -slack
    assert (a, b) == (3, 6) and p * s[a] + (1 - p) * s[b] == pytest.approx(0.0)
    a, b, p = stepmix_plan(np.zeros(h), np.full(h, 0.5), 0.9, upper, alpha, np.zeros(h, bool))
    assert (a, b) == (0, NEVER)  # nothing allowed but 0 and never: EpsMix's pair
    with pytest.raises(ValueError, match="allowed shape"):
        stepmix_plan(np.zeros(h), slack, 0.9, upper, alpha, np.ones(3, bool))


def test_switch_grid_spaces_eight_steps_from_zero() -> None:
    assert switch_grid(10).tolist() == [0, 1, 2, 3, 5, 6, 7, 8]
    assert switch_grid(100).tolist() == [0, 12, 25, 37, 50, 62, 75, 87]
    assert switch_grid(3).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="horizon"):
        switch_grid(0)


def test_stepmix_plan_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="expected the same shape"):
        stepmix_plan(np.zeros(3), np.zeros(2), 0.0, 1.0, 0.2)


def test_stepmix_keeps_the_constraint_where_switching_on_banked_reward_alone_would_not() -> None:
    """The baseline earns 0.2 per step on half the resets and nothing on the others: V^b = 1. The learned policy
    earns nothing anywhere (the critic says so exactly, and is trusted: kappa = 0). Switching once this episode's
    own banked reward covers (1 - alpha) U would keep the failures and switch only on good resets: value 0.4.
    StepMix plans before s1 from averages; each plan's exact value meets (1 - alpha) V^b = 0.75."""
    horizon, alpha = 10, 0.25
    cfg = MixingConfig(mode="stepmix", alpha=alpha, baseline_episodes=40, kappa=0.0)
    mixer = make_mixer(cfg, discount=1.0, rng=np.random.default_rng(0))
    assert isinstance(mixer, StepMix)
    world = np.random.default_rng(1)

    def value(tau: int) -> float:  # baseline for steps < tau on both reset types, then nothing
        return 0.5 * 0.2 * (horizon if tau == NEVER else min(tau, horizon))

    values: list[float] = []
    switches: set[float] = set()
    for _ in range(300):
        good = bool(world.random() < 0.5)
        mixer.begin_episode()
        fields = mixer.log_fields()
        if not fields["warmup"]:
            a, b, p = int(fields["switch_a"]), int(fields["switch_b"]), fields["p_a"]
            values.append(p * value(a) + (1 - p) * value(b))
        for t in range(horizon):
            bound = ValueBound(0.0, 0.0) if mixer.needs_bound else None
            choice = mixer.choose(np.array([float(good), t]), bound)
            mixer.record_reward(0.2 if (good and choice == BASELINE) else 0.0)
        switches.add(mixer.end_episode()["switch_step"])
    assert len(values) == 260 and min(values) >= (1 - alpha) * 1.0 - 1e-9, min(values)
    assert 0.0 in switches  # the learned policy did act (here EpsMix's pair is StepMix's best plan)


def test_stepmix_needs_a_bound_up_to_its_switch_and_logs_its_plan() -> None:
    cfg = MixingConfig(mode="stepmix", baseline_episodes=2, kappa=1.0)
    mixer = make_mixer(cfg, discount=1.0, rng=np.random.default_rng(0))
    assert isinstance(mixer, StepMix)
    for _ in range(2):
        mixer.begin_episode()
        for _t in range(4):
            assert not mixer.needs_bound and mixer.choose(np.zeros(1), None) == BASELINE
            mixer.record_reward(0.0)
        mixer.end_episode()
    mixer.begin_episode()  # a worthless baseline: U = 0, the learned policy from step 0
    fields = mixer.log_fields()
    assert fields["planned_switch"] == 0.0 and fields["upper"] == 0.0
    assert {"switch_a", "switch_b", "p_a", "lower", "learned_lower", "kappa", "horizon"} <= fields.keys()
    assert mixer.needs_bound
    with pytest.raises(ValueError, match="bound None"):
        mixer.choose(np.zeros(1), None)
    fresh = make_mixer(cfg, discount=1.0, rng=np.random.default_rng(0))
    fresh.load_state(mixer.state())
    fresh._steps = 0  # the refused call above had counted its step
    assert fresh.choose(np.zeros(1), ValueBound(3.0, 0.5)) == LEARNED
    assert not fresh.needs_bound
    fresh.record_reward(1.0)
    assert fresh.choose(np.zeros(1), None) == LEARNED
    fresh.record_reward(1.0)
    record = fresh.end_episode()
    assert record["switch_step"] == 0.0 and record["return"] == 2.0
    assert fresh.learned.n == 1  # a whole learned episode: its return feeds L


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
