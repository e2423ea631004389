"""Conservative baseline mixing (EpsMix / StepMix) after "Near-optimal Conservative Exploration in RL under
Episode-wise Constraints" (Li et al., ICML 2023): every episode k should satisfy, over the reset distribution,

    E[V^{pi_k}(s1)] >= (1 - alpha) E[V^b(s1)]    w.h.p.,

where pi_k is the policy episode k runs (a mixture of the learned policy and the baseline b).

Owns: the EpsMix probability (`epsmix_epsilon`) and StepMix's choice of a switch-step mixture (`stepmix_plan`),
the two per-episode mixers with their log fields and their `state()` / `load_state()` (everything a restarted
actor needs to continue one exactly; safety/mixer_state.py writes it to disk), and `make_mixer`, which builds one
from `MixingConfig`. The estimates they compare live in estimates.py. Nothing here steps an env: the actor asks a
mixer which policy acts (`choose`) and reports rewards back. Rewards must be >= 0 and values are discounted with
the critic's discount (see estimates.py).

Why the guarantee holds over the reset distribution. Each mixer decides its episode's mixture in
`begin_episode`, before s1 is seen, from estimates over the same distribution: U >= E[V^b(s1)] from an unbiased
sample of baseline episodes, L <= E[V^pi(s1)] from the learned policy's own whole episodes (whose s1 was drawn
independently of the choice, so they are unbiased too). A mixture chosen independently of s1 has value equal to
the mixture of its members' values averaged over resets, so the constraint is linear in the mixing weights and
the bounds can be plugged in. Deciding at s1 from a bound at s1 against an average U (what this module did
before) mixes a state-conditional bound with an average one: on two reset types it ran the learned policy where
the baseline was good and let later baseline episodes be a biased sample (docs/safety.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np

from serl_stack.config import MixingConfig, check_section
from serl_stack.safety.estimates import (
    BaselineSteps,
    BaselineValue,
    KappaCalibrator,
    LearnedValue,
    PrefixBounds,
    ValueBound,
    discounted_returns_to_go,
)

Choice = Literal["learned", "baseline"]
LEARNED: Choice = "learned"
BASELINE: Choice = "baseline"
MODES = ("off", "epsmix", "stepmix")
NEVER = -1
"""StepMix's switch step meaning "the baseline acts for the whole episode"."""
WHOLE_EPISODE_PLANS = 0.5
"""The fraction of StepMix's episodes planned by EpsMix's rule (switch at 0 with probability eps, else never).
Both plans meet the constraint, so their mixture does. Without it, a dense reward lets StepMix hand the last
steps of every episode to the learned policy on the baseline's banked reward alone, which starves L of the
whole-episode returns it is measured from; with an untrusted critic it would then never hand over more."""
SWITCH_GRID = 8
"""StepMix's switch steps per horizon (`switch_grid`): a handful, so that each collects its own calibration runs."""
STEP_WINDOW = 500
"""Whole baseline episodes StepMix keeps step by step (BaselineSteps); a bound on the saved state's size."""
SAVED_SETTINGS = ("mode", "alpha", "kappa", "calibration_runs", "cap_runs", "baseline_episodes", "confidence",
                  "baseline_run")
"""The MixingConfig fields a mixer's saved statistics and decisions depend on (baseline_run: the policy whose
returns U holds). A saved mixer is restored only under the same values: under others it would not continue what
was saved, and U or kappa would silently describe another setting."""


def _bound_state(bound: ValueBound | None) -> dict[str, float] | None:
    return None if bound is None else {"mean": float(bound.mean), "std": float(bound.std)}


def _bound_from_state(state: Mapping[str, float] | None) -> ValueBound | None:
    return None if state is None else ValueBound(float(state["mean"]), float(state["std"]))


def epsmix_epsilon(lower: float, upper: float, alpha: float) -> float:
    """EpsMix's probability of running the learned policy for a whole episode.

    Mixed value eps V^pi + (1 - eps) V^b >= (1 - alpha) V^b holds when L <= V^pi and U >= V^b: eps = 1 if
    L >= (1 - alpha) U, else alpha U / (U - L) (clipped to [0, 1]); U == 0 means any policy meets the constraint.
    (With eps > alpha the slack eps L + (alpha - eps) V^b falls as V^b grows, so U in its place is the worst case;
    with eps <= alpha it is >= 0 anyway.)
    """
    for name, value in (("lower", lower), ("upper", upper)):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name}: got {value!r}, expected a finite value >= 0 (rewards are >= 0)")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha: got {alpha!r}, expected in (0, 1)")
    if upper == 0.0 or lower >= (1.0 - alpha) * upper:
        return 1.0
    return float(np.clip(alpha * upper / (upper - lower), 0.0, 1.0))


def switch_grid(horizon: int) -> np.ndarray:
    """StepMix's switch steps for a horizon: `SWITCH_GRID` evenly spaced steps from 0 (every step when the horizon
    is shorter). Each one's tail bound is calibrated only against the realized returns of tails run from that very
    step, which is what makes it a bound at that step: one kappa calibrated on tails from every step let late tails
    that the critic underrated excuse an overrated start (issue 18's benchmark: B(0) = 0.42 for a learned policy
    worth 0, against a line of 0.14)."""
    if horizon < 1:
        raise ValueError(f"horizon: got {horizon}, expected >= 1 step")
    return np.unique(np.arange(min(SWITCH_GRID, horizon)) * horizon // min(SWITCH_GRID, horizon))


def stepmix_plan(tail_lower: np.ndarray, slack_upper: np.ndarray, baseline_lower: float, upper: float,
                 alpha: float, allowed: np.ndarray | None = None) -> tuple[int, int, float]:
    """StepMix's mixture for one episode: switch at step `a` with probability `p`, else at `b` (NEVER: the
    baseline acts all episode). Member tau runs the baseline for steps t < tau and the learned policy from tau.

    Its value minus (1 - alpha) V^b is S(tau) = B(tau) - E[Z_tau] (B: the learned tail's value, Z_tau: see
    estimates.BaselineSteps), and S(NEVER) = alpha V^b. With the lower bound `tail_lower` of B, the upper bound
    `slack_upper` of E[Z], and `baseline_lower` of V^b, S_hat(tau) <= S(tau), and a mixture meets the constraint
    when its S_hat-average is >= 0 (S is linear in the mixing weights because the switch step is drawn before s1).
    Among such mixtures this takes the one with the most learned steps, (horizon - tau) per member: a linear
    program with one constraint, whose optimum is one member or two, one on each side of S_hat = 0, with the
    average exactly 0. When S_hat rises with tau these are two neighbouring switch steps, the paper's StepMix;
    where it does not (the critic not yet trusted: B_hat = 0 before the baseline's last reward) the pair can be
    (0, NEVER), which is EpsMix, and for that pair EpsMix's exact rule (`epsmix_epsilon`) is used.
    `allowed` (bool, (horizon,); default every step) restricts the members to those switch steps (NEVER and step 0
    are always allowed): StepMix plans on `switch_grid` so that each switch step collects its own calibration runs.
    Returns (a, b, p) with a == b and p == 1 for a single member.
    """
    tail_lower, slack_upper = np.asarray(tail_lower, np.float64), np.asarray(slack_upper, np.float64)
    h = len(tail_lower)
    if h == 0 or slack_upper.shape != (h,):
        raise ValueError(f"stepmix_plan: tail_lower shape {tail_lower.shape}, slack_upper shape {slack_upper.shape}, "
                         "expected the same shape (horizon,) with horizon >= 1")
    member = np.ones(h + 1, bool) if allowed is None else np.append(np.asarray(allowed, bool), True)
    if member.shape != (h + 1,):
        raise ValueError(f"stepmix_plan: allowed shape {np.shape(allowed)}, expected ({h},) like tail_lower")
    member[0] = True
    eps = epsmix_epsilon(float(tail_lower[0]), upper, alpha)
    best: tuple[float, int, int, float] = (eps * h, 0, NEVER, eps)
    s = np.append(tail_lower - slack_upper, alpha * max(baseline_lower, 0.0))  # index h: NEVER
    steps_learned = np.append(h - np.arange(h), 0.0)
    feasible = np.flatnonzero((s >= 0.0) & member)
    first = int(feasible[0])
    if first < h and steps_learned[first] > best[0]:
        best = (float(steps_learned[first]), first, first, 1.0)
    bad = np.flatnonzero((s < 0.0) & member)
    if bad.size:
        sa, sb = s[bad][:, None], s[feasible][None, :]
        p = sb / (sb - sa)  # the weight of the infeasible member that makes the average exactly 0
        share = p * steps_learned[bad][:, None] + (1.0 - p) * steps_learned[feasible][None, :]
        # Ties (S_hat linear in tau makes every straddling pair equal) go to the closest pair: the paper's.
        gap = np.abs(bad[:, None] - feasible[None, :])
        i, j = np.unravel_index(int(np.argmax(share - 1e-9 * gap)), share.shape)
        if share[i, j] > best[0]:
            best = (float(share[i, j]), int(bad[i]), int(feasible[j]), float(p[i, j]))
    _, a, b, p_a = best
    if p_a >= 1.0:
        return a, a, 1.0
    return a, (NEVER if b == h else b), p_a


class _Mixer:
    """What both mixers share: the warm-up of pure baseline episodes that feeds U, L from the learned policy's
    own episodes, the coin generator, and the per-episode log record. Actor protocol: `begin_episode()` (the
    episode's mixture is drawn here, before s1 is seen); per step `choose(obs, bound if needs_bound else None)`
    then `record_reward(r)`; `end_episode()` returns the log fields."""

    MODE: ClassVar[str]
    """The `mixing.mode` that builds this mixer (also the tag of its saved state)."""

    def __init__(self, cfg: MixingConfig, baseline: BaselineValue, rng: np.random.Generator) -> None:
        self.cfg, self.baseline, self.rng = cfg, baseline, rng
        self.learned = LearnedValue(cfg.confidence, window=cfg.cap_runs, min_runs=cfg.calibration_runs)
        self.episode = -1
        self.learned_available = True
        """False while no learned policy exists yet (an actor before the learner's first parameters): episodes
        that begin then are warm-up episodes, whatever U's count. The choice depends only on time, never on how
        an episode goes, so these baseline episodes stay an iid sample for U."""
        self._warmup: bool | None = None
        self._rewards: list[float] = []
        self._steps = 0
        self._fields: dict[str, float] = {}

    @property
    def warming_up(self) -> bool:
        """Whether this episode is a pure baseline episode that feeds U: decided once, at `begin_episode`."""
        if self._warmup is None:
            return self._warmup_now()
        return self._warmup

    def _warmup_now(self) -> bool:
        return self.baseline.n < self.cfg.baseline_episodes or not self.learned_available

    def begin_episode(self) -> None:
        self.episode += 1
        self._warmup = self._warmup_now()
        self._rewards, self._steps = [], 0
        self._fields = {"episode": float(self.episode), "warmup": float(self._warmup)}
        self._plan()

    def _plan(self) -> None:
        raise NotImplementedError

    def _step(self, where: str) -> int:
        """The step `choose` is at; ValueError unless each earlier step had its `record_reward`."""
        if len(self._rewards) != self._steps:
            raise ValueError(f"{where}: episode {self.episode} step {self._steps} after {len(self._rewards)} "
                             "record_reward calls, expected one record_reward per step")
        self._steps += 1
        return self._steps - 1

    def record_reward(self, reward: float) -> None:
        if not (np.isfinite(reward) and reward >= 0):
            raise ValueError(f"{type(self).__name__}: episode {self.episode} step {len(self._rewards)}: reward "
                             f"{reward!r}, expected a finite reward >= 0")
        self._rewards.append(float(reward))

    def _returns_to_go(self) -> np.ndarray:
        r = np.asarray(self._rewards, np.float64)
        return discounted_returns_to_go(r, self.baseline.discount) if r.size else np.zeros(1)

    def log_fields(self) -> dict[str, float]:
        """This episode's record: eps / switch plan, L, U and (after `end_episode`) the return."""
        return dict(self._fields)

    def _finish(self, ret: float) -> dict[str, float]:
        """End of `end_episode`: record the return; between episodes `warming_up` says what the next one is."""
        self._fields["return"] = ret
        self._warmup = None
        return self.log_fields()

    # ------------------------------------------------------------------------------------------ saved state

    def state(self) -> dict[str, Any]:
        """Everything a restored mixer needs to continue exactly like this one: its config, the episode counter,
        the estimates' data, the coin generator and the current episode's progress (so a state taken mid-episode
        or between episodes both continue; the actor saves between episodes). Plain values and numpy arrays."""
        return {
            "mode": self.MODE,
            "config": dataclasses.asdict(self.cfg),
            "episode": self.episode,
            "learned_available": self.learned_available,
            "warmup": self._warmup,
            "rewards": np.array(self._rewards, np.float64),
            "steps": self._steps,
            "fields": {k: float(v) for k, v in self._fields.items()},
            "baseline": self.baseline.state(),
            "learned": self.learned.state(),
            "rng": self.rng.bit_generator.state,
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Continue from `state()` of a mixer of this mode with the same `SAVED_SETTINGS` (ValueError naming the
        first that differs). Meant for a freshly built mixer: after a ValueError it is half restored. The
        generator passed at construction takes the saved generator state (ValueError from numpy when it is not
        the saved kind of bit generator)."""
        if state["mode"] != self.MODE:
            raise ValueError(f"mode: the saved mixer is {state['mode']!r}, this one is {self.MODE!r}")
        for name in SAVED_SETTINGS:
            saved, mine = state["config"][name], getattr(self.cfg, name)
            if saved != mine:
                raise ValueError(f"mixing.{name}: the saved mixer ran with {saved!r}, this config has {mine!r}; "
                                 "start a new run folder or restore the setting")
        episode, rewards, steps = int(state["episode"]), np.asarray(state["rewards"], np.float64), int(state["steps"])
        if episode < -1:
            raise ValueError(f"episode: got {episode}, expected >= -1 (-1: none begun yet)")
        if rewards.ndim != 1 or not np.all(np.isfinite(rewards) & (rewards >= 0)):
            raise ValueError(f"rewards: got shape {rewards.shape}, expected a 1-D array of finite rewards >= 0")
        if not len(rewards) <= steps <= len(rewards) + 1:  # choose then record_reward, once per step
            raise ValueError(f"steps: {steps} for {len(rewards)} rewards, expected as many or one more")
        self.baseline.load_state(state["baseline"])
        self.learned.load_state(state["learned"])
        self.rng.bit_generator.state = state["rng"]
        self.episode, self.learned_available = episode, bool(state["learned_available"])
        self._warmup = None if state["warmup"] is None else bool(state["warmup"])
        self._rewards, self._steps = [float(r) for r in rewards], steps
        self._fields = {str(k): float(v) for k, v in state["fields"].items()}


class EpsMix(_Mixer):
    """Per episode, drawn at `begin_episode` (before s1): the learned policy with probability
    eps_k = epsmix_epsilon(L, U, alpha), else the baseline. L = `LearnedValue` (the lower confidence bound of the
    learned policy's recent whole-episode returns), U = `BaselineValue` (all baseline episodes: the first
    `baseline_episodes` are baseline-only, and every later one the coin picked stays an iid sample because the
    coin is independent of s1 and of the outcome). Needs no critic."""

    MODE = "epsmix"

    def __init__(self, cfg: MixingConfig, baseline: BaselineValue, rng: np.random.Generator) -> None:
        super().__init__(cfg, baseline, rng)
        self.choice: Choice = BASELINE

    @property
    def needs_bound(self) -> bool:
        return False  # L comes from realized returns, not from the critic at s1

    def _plan(self) -> None:
        if self.warming_up:
            self.choice = BASELINE
            self._fields.update(epsilon=0.0, learned=0.0)
            return
        lower, upper = self.learned.lower(), self.baseline.upper()
        eps = epsmix_epsilon(lower, upper, self.cfg.alpha)
        self.choice = LEARNED if self.rng.random() < eps else BASELINE
        self._fields.update(epsilon=eps, lower=lower, upper=upper, learned_runs=float(self.learned.n),
                            learned=float(self.choice == LEARNED))

    def choose(self, obs: np.ndarray, bound: ValueBound | None = None) -> Choice:
        self._step("EpsMix.choose")
        return self.choice

    def end_episode(self) -> dict[str, float]:
        rtg = self._returns_to_go()
        if self.choice == BASELINE:
            self.baseline.add_episode(self._rewards)
        else:
            self.learned.observe(float(rtg[0]))
        return self._finish(float(rtg[0]))

    def state(self) -> dict[str, Any]:
        """`_Mixer.state()` plus this episode's choice."""
        return {**super().state(), "choice": self.choice}

    def load_state(self, state: Mapping[str, Any]) -> None:
        if state["choice"] not in (LEARNED, BASELINE):
            raise ValueError(f"choice: got {state['choice']!r}, expected {LEARNED!r} or {BASELINE!r}")
        super().load_state(state)
        self.choice = LEARNED if state["choice"] == LEARNED else BASELINE


class StepMix(_Mixer):
    """Per episode, drawn at `begin_episode` (before s1): a switch step tau from `stepmix_plan`'s two-member
    mixture over the steps of `switch_grid`; the baseline acts for steps t < tau and the learned policy from tau on
    (NEVER: baseline all episode).

    The bounds it plans with, all over the reset distribution: U and the baseline's per-step slack from whole
    baseline episodes (warm-up and NEVER episodes, whose selection ignores how they go; `BaselineSteps`); the
    learned tail after a grid step tau from the critic's bounds at the states the baseline reached at tau in recent
    episodes (`PrefixBounds`), with the kappa and cap of tau's own `KappaCalibrator`, calibrated only against the
    realized returns of tails run from tau (those tails start from iid draws of the very states the bound
    averages over); at tau = 0 also from the learned policy's realized whole-episode returns (`LearnedValue`).
    With an untrusted critic (kappa = inf, the default) a step's tail bound is 0 until that step has
    `calibration_runs` calibration runs, and the plan is EpsMix's (0, NEVER) pair or a switch after the baseline
    banked enough, so the learned policy still runs whole episodes and takes over once its returns show it is
    good: no deadlock on a sparse reward.
    """

    MODE = "stepmix"

    def __init__(self, cfg: MixingConfig, baseline: BaselineValue, rng: np.random.Generator,
                 steps: BaselineSteps, prefixes: PrefixBounds) -> None:
        super().__init__(cfg, baseline, rng)
        self.steps, self.prefixes = steps, prefixes
        self.calibrators: dict[int, KappaCalibrator] = {}
        """One per switch step StepMix has planned with (keyed by the step; the grid's steps); see `calibrator`."""
        self.planned = NEVER
        self.switch_step: int | None = None
        self._bounds: list[ValueBound] = []
        self._switch_bound: ValueBound | None = None

    def calibrator(self, tau: int) -> KappaCalibrator:
        """Switch step tau's kappa and cap, from the tails run from tau alone (a fresh one, at the configured
        kappa, before any)."""
        if tau not in self.calibrators:
            self.calibrators[tau] = KappaCalibrator(self.cfg.kappa, self.cfg.confidence,
                                                    min_runs=self.cfg.calibration_runs, cap_window=self.cfg.cap_runs)
        return self.calibrators[tau]

    @property
    def needs_bound(self) -> bool:
        """The critic's bound at each state the baseline reaches, up to and including the switch state."""
        return not self.warming_up and (self.planned == NEVER or self._steps <= self.planned)

    def _plan(self) -> None:
        self.planned, self.switch_step, self._bounds, self._switch_bound = NEVER, None, [], None
        self._fields["switch_step"] = -1.0
        if self.warming_up:
            return
        slack, baseline_lower = self.steps.slack_upper(self.cfg.alpha)
        h = len(slack)
        grid = switch_grid(h)
        kappa, cap = np.full(h, np.inf), np.full(h, np.inf)  # off the grid: no switch, no tail bound
        for tau in grid:
            c = self.calibrator(int(tau))
            kappa[tau], cap[tau] = c.kappa, c.cap
        tail = self.prefixes.tail_lower(h, kappa, cap)
        learned_lower = self.learned.lower()
        tail[0] = max(tail[0], learned_lower)
        upper = self.baseline.upper()
        whole = bool(self.rng.random() < WHOLE_EPISODE_PLANS)
        if whole:
            a, b, p_a = 0, NEVER, epsmix_epsilon(float(tail[0]), upper, self.cfg.alpha)
        else:
            allowed = np.zeros(h, bool)
            allowed[grid] = True
            a, b, p_a = stepmix_plan(tail, slack, baseline_lower, upper, self.cfg.alpha, allowed)
        self.planned = a if self.rng.random() < p_a else b

        def share(tau: int) -> float:
            return 0.0 if tau == NEVER else (h - tau) / h

        c = self.calibrator(0 if self.planned == NEVER else self.planned)
        self._fields.update(whole_episode_plan=float(whole), switch_a=float(a), switch_b=float(b), p_a=p_a,
                            planned_switch=float(self.planned),
                            planned_share=p_a * share(a) + (1 - p_a) * share(b), lower=float(tail[0]),
                            learned_lower=learned_lower, upper=upper, horizon=float(h),
                            kappa=c.kappa if np.isfinite(c.kappa) else -1.0, cap=c.cap if np.isfinite(c.cap) else -1.0)

    def choose(self, obs: np.ndarray, bound: ValueBound | None = None) -> Choice:
        needs = self.needs_bound
        t = self._step("StepMix.choose")
        if self.warming_up:
            return BASELINE
        if needs:
            if bound is None:
                raise ValueError(f"StepMix.choose: episode {self.episode} step {t} got bound None, expected the "
                                 "learned policy's ValueBound at this state (needs_bound is True)")
            self._bounds.append(bound)
        if self.planned == NEVER or t < self.planned:
            return BASELINE
        if t == self.planned:
            self.switch_step, self._switch_bound = t, bound
            self._fields.update(switch_step=float(t), lower_at_switch=self.calibrator(t).lower(bound))
        return LEARNED

    def end_episode(self) -> dict[str, float]:
        rtg = self._returns_to_go()
        if self.warming_up or self.planned == NEVER:
            # Whole baseline episodes chosen before s1: iid samples of the baseline's episode (U and the slack).
            self.baseline.add_episode(self._rewards)
            self.steps.add_episode(self._rewards)
        if not self.warming_up:
            self.prefixes.add_episode(self._bounds, 2**62 if self.planned == NEVER else self.planned)
        if self.switch_step is not None and self._switch_bound is not None:
            self.calibrator(self.switch_step).observe(self._switch_bound, float(rtg[self.switch_step]))
            if self.switch_step == 0:
                self.learned.observe(float(rtg[0]))
        return self._finish(float(rtg[0]))

    def state(self) -> dict[str, Any]:
        """`_Mixer.state()` plus the step-wise baseline episodes, the prefix bounds, each switch step's kappa
        calibration and this episode's plan (switch step, bounds so far, bound at the switch)."""
        taus = sorted(self.calibrators)
        return {**super().state(), "baseline_steps": self.steps.state(), "prefixes": self.prefixes.state(),
                "calibrator_steps": np.array(taus, np.int64),
                "calibrators": [self.calibrators[tau].state() for tau in taus], "planned": self.planned,
                "switch_step": self.switch_step,
                "bounds": np.array([(b.mean, b.std) for b in self._bounds], np.float64).reshape(-1, 2),
                "switch_bound": _bound_state(self._switch_bound)}

    def load_state(self, state: Mapping[str, Any]) -> None:
        planned, switch_step = int(state["planned"]), state["switch_step"]
        bounds = np.asarray(state["bounds"], np.float64)
        taus = [int(t) for t in np.asarray(state["calibrator_steps"]).reshape(-1)]
        if planned < NEVER:
            raise ValueError(f"planned: got {planned}, expected a step >= 0 or {NEVER} (never)")
        if switch_step is not None and switch_step != planned:
            raise ValueError(f"switch_step: got {switch_step!r}, expected None or the planned step {planned}")
        if bounds.ndim != 2 or bounds.shape[1] != 2 or not np.all(np.isfinite(bounds)):
            raise ValueError(f"bounds: got shape {bounds.shape}, expected finite (n, 2) bounds (mean, std)")
        if len(taus) != len(state["calibrators"]) or len(set(taus)) != len(taus) or any(t < 0 for t in taus):
            raise ValueError(f"calibrator_steps: got {taus}, expected distinct steps >= 0, one per calibrator "
                             f"({len(state['calibrators'])})")
        super().load_state(state)
        self.steps.load_state(state["baseline_steps"])
        self.prefixes.load_state(state["prefixes"])
        self.calibrators = {}
        for tau, saved in zip(taus, state["calibrators"], strict=True):
            self.calibrator(tau).load_state(saved)
        self.planned, self.switch_step = planned, None if switch_step is None else int(switch_step)
        self._bounds = [ValueBound(float(m), float(s)) for m, s in bounds]
        self._switch_bound = _bound_from_state(state["switch_bound"])


def make_mixer(
    cfg: MixingConfig, *, discount: float, rng: np.random.Generator, max_return: float | None = None
) -> EpsMix | StepMix | None:
    """The mixer `cfg.mode` names (None for "off": the learned policy always acts). `discount` must be the
    critic's (agent.discount) so U and L measure the same value; `max_return` switches U to empirical Bernstein.
    `rng` draws EpsMix's coin and StepMix's switch step."""
    check_section(cfg)  # the mixing fields' declared ranges and rules (config.py), for a config built in code too
    if cfg.mode == "off":
        return None
    baseline = BaselineValue(cfg.confidence, discount, max_return)
    if cfg.mode == "epsmix":
        return EpsMix(cfg, baseline, rng)
    return StepMix(cfg, baseline, rng, BaselineSteps(cfg.confidence, discount, STEP_WINDOW),
                   PrefixBounds(cfg.confidence, discount, cfg.baseline_episodes))
