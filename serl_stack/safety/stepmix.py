"""Conservative baseline mixing (EpsMix / StepMix) after "Near-optimal Conservative Exploration in RL under
Episode-wise Constraints": every episode k should satisfy V^{pi_k}(s1) >= (1 - alpha) V^b(s1) w.h.p.

Owns: the EpsMix mixing probability, the two per-episode mixers with their log fields and their `state()` /
`load_state()` (everything a restarted actor needs to continue one exactly; safety/mixer_state.py writes it to
disk), and `make_mixer`, which builds one from `MixingConfig`. The estimates they compare (U of the baseline, L
of the learned policy) live in estimates.py. Nothing here steps an env: the actor asks a mixer which policy acts
(`choose`) and reports rewards back. Rewards must be >= 0 and values are discounted with the critic's discount
(see estimates.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np

from serl_stack.config import MixingConfig, check_section
from serl_stack.safety.estimates import (
    BaselineValue,
    KappaCalibrator,
    StepBaselineValue,
    ValueBound,
    discounted_returns_to_go,
)

Choice = Literal["learned", "baseline"]
LEARNED: Choice = "learned"
BASELINE: Choice = "baseline"
MODES = ("off", "epsmix", "stepmix")
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
    """
    for name, value in (("lower", lower), ("upper", upper)):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name}: got {value!r}, expected a finite value >= 0 (rewards are >= 0)")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha: got {alpha!r}, expected in (0, 1)")
    if upper == 0.0 or lower >= (1.0 - alpha) * upper:
        return 1.0
    return float(np.clip(alpha * upper / (upper - lower), 0.0, 1.0))


class _Mixer:
    """What both mixers share: the warm-up of pure baseline episodes that feeds U, the calibrated kappa, and the
    per-episode log record. Actor protocol: `begin_episode()`; per step `choose(obs, bound if needs_bound else
    None)` then `record_reward(r)`; `end_episode()` returns the log fields."""

    MODE: ClassVar[str]
    """The `mixing.mode` that builds this mixer (also the tag of its saved state)."""

    def __init__(self, cfg: MixingConfig, baseline: BaselineValue) -> None:
        self.cfg, self.baseline = cfg, baseline
        self.calibrator = KappaCalibrator(cfg.kappa, cfg.confidence, min_runs=cfg.calibration_runs,
                                         cap_window=cfg.cap_runs)
        self.episode = -1
        self.learned_available = True
        """False while no learned policy exists yet (an actor before the learner's first parameters): episodes
        that begin then are warm-up episodes, whatever U's count. The choice depends only on time, never on how
        an episode goes, so these baseline episodes stay an iid sample for U."""
        self._warmup: bool | None = None
        self._rewards: list[float] = []
        self._states: list[np.ndarray] = []
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
        self._rewards, self._states = [], []
        self._fields = {"episode": float(self.episode), "warmup": float(self._warmup)}

    def record_reward(self, reward: float) -> None:
        if not (np.isfinite(reward) and reward >= 0):
            raise ValueError(f"{type(self).__name__}: episode {self.episode} step {len(self._rewards)}: reward "
                             f"{reward!r}, expected a finite reward >= 0")
        self._rewards.append(float(reward))

    def _calibration(self) -> dict[str, float]:
        """kappa and the returns' cap on L for the log (inf, i.e. not yet calibrated, is logged as -1)."""
        c = self.calibrator
        return {"kappa": c.kappa if np.isfinite(c.kappa) else -1.0, "cap": c.cap if np.isfinite(c.cap) else -1.0}

    def log_fields(self) -> dict[str, float]:
        """This episode's record: eps / switch step, L, U, kappa and (after `end_episode`) the return."""
        return dict(self._fields)

    def _finish(self, ret: float) -> dict[str, float]:
        """End of `end_episode`: record the return; between episodes `warming_up` says what the next one is."""
        self._fields["return"] = ret
        self._warmup = None
        return self.log_fields()

    # ------------------------------------------------------------------------------------------ saved state

    def state(self) -> dict[str, Any]:
        """Everything a restored mixer needs to continue exactly like this one: its config, the episode counter,
        U's and kappa's data and the current episode's progress (so a state taken mid-episode or between
        episodes both continue; the actor saves between episodes). Plain values and numpy arrays, copies."""
        return {
            "mode": self.MODE,
            "config": dataclasses.asdict(self.cfg),
            "episode": self.episode,
            "learned_available": self.learned_available,
            "warmup": self._warmup,
            "rewards": np.array(self._rewards, np.float64),
            "states": [np.array(s) for s in self._states],
            "fields": {k: float(v) for k, v in self._fields.items()},
            "baseline": self.baseline.state(),
            "calibrator": self.calibrator.state(),
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Continue from `state()` of a mixer of this mode with the same `SAVED_SETTINGS` (ValueError naming the
        first that differs). Meant for a freshly built mixer: after a ValueError it is half restored."""
        if state["mode"] != self.MODE:
            raise ValueError(f"mode: the saved mixer is {state['mode']!r}, this one is {self.MODE!r}")
        for name in SAVED_SETTINGS:
            saved, mine = state["config"][name], getattr(self.cfg, name)
            if saved != mine:
                raise ValueError(f"mixing.{name}: the saved mixer ran with {saved!r}, this config has {mine!r}; "
                                 "start a new run folder or restore the setting")
        episode, rewards = int(state["episode"]), np.asarray(state["rewards"], np.float64)
        if episode < -1:
            raise ValueError(f"episode: got {episode}, expected >= -1 (-1: none begun yet)")
        if rewards.ndim != 1 or not np.all(np.isfinite(rewards) & (rewards >= 0)):
            raise ValueError(f"rewards: got shape {rewards.shape}, expected a 1-D array of finite rewards >= 0")
        n_states = len(state["states"])
        if not len(rewards) <= n_states <= len(rewards) + 1:  # choose then record_reward, once per step
            raise ValueError(f"states: {n_states} for {len(rewards)} rewards, expected as many or one more")
        self.baseline.load_state(state["baseline"])
        self.calibrator.load_state(state["calibrator"])
        self.episode, self.learned_available = episode, bool(state["learned_available"])
        self._warmup = None if state["warmup"] is None else bool(state["warmup"])
        self._rewards = [float(r) for r in rewards]
        self._states = [np.array(s) for s in state["states"]]
        self._fields = {str(k): float(v) for k, v in state["fields"].items()}


class EpsMix(_Mixer):
    """Per episode: the learned policy with probability eps_k (drawn from an explicit Generator), else the
    baseline; the first `baseline_episodes` episodes are baseline-only to estimate U. Baseline episodes keep
    feeding U afterwards (the coin is independent of the outcome, so they stay an iid sample)."""

    MODE = "epsmix"

    def __init__(self, cfg: MixingConfig, baseline: BaselineValue, rng: np.random.Generator) -> None:
        super().__init__(cfg, baseline)
        self.rng = rng
        self.choice: Choice = BASELINE
        self._bound: ValueBound | None = None

    @property
    def needs_bound(self) -> bool:
        return not self._states and not self.warming_up  # only at s1

    def decide(self, bound: ValueBound) -> tuple[Choice, float, float, float]:
        """(choice, eps_k, L, U) for one episode, using the calibrated kappa."""
        lower, upper = self.calibrator.lower(bound), self.baseline.upper()
        eps = epsmix_epsilon(lower, upper, self.cfg.alpha)
        return (LEARNED if self.rng.random() < eps else BASELINE), eps, lower, upper

    def choose(self, obs: np.ndarray, bound: ValueBound | None) -> Choice:
        if not self._states:
            if self.warming_up:
                self.choice, self._bound = BASELINE, None
                self._fields.update(epsilon=0.0)
            else:
                if bound is None:
                    raise ValueError(f"EpsMix.choose: episode {self.episode} step 0 got bound None, expected the "
                                     "learned policy's ValueBound at s1 (needs_bound is True)")
                self.choice, eps, lower, upper = self.decide(bound)
                self._bound = bound
                self._fields.update(epsilon=eps, lower=lower, upper=upper, **self._calibration())
            self._fields["learned"] = float(self.choice == LEARNED)
        self._states.append(np.asarray(obs))
        return self.choice

    def end_episode(self) -> dict[str, float]:
        r = np.asarray(self._rewards)
        ret = float(discounted_returns_to_go(r, self.baseline.discount)[0]) if r.size else 0.0
        if self.choice == BASELINE:
            self.baseline.add_episode(r)
        elif self._bound is not None:
            self.calibrator.observe(self._bound, ret)
        return self._finish(ret)

    def state(self) -> dict[str, Any]:
        """`_Mixer.state()` plus the coin's generator state (its coin stream continues after a restore), this
        episode's choice and the bound at its s1 (for calibration at `end_episode`)."""
        return {**super().state(), "rng": self.rng.bit_generator.state, "choice": self.choice,
                "bound": _bound_state(self._bound)}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """`_Mixer.load_state`; the generator passed at construction takes the saved generator state (ValueError
        from numpy when it is not the saved kind of bit generator)."""
        if state["choice"] not in (LEARNED, BASELINE):
            raise ValueError(f"choice: got {state['choice']!r}, expected {LEARNED!r} or {BASELINE!r}")
        super().load_state(state)
        self.rng.bit_generator.state = state["rng"]
        self.choice = LEARNED if state["choice"] == LEARNED else BASELINE
        self._bound = _bound_from_state(state["bound"])


class StepMix(_Mixer):
    """Start each episode with the baseline; switch to the learned policy at the first step t where

        G_t + g^t L(s_t) >= (1 - alpha) (G_t + g^t Û^b(s_t, t)),   G_t = sum_{s<t} g^s r_s (collected so far),

    (g = discount) and stay switched for the rest of the episode. Why this rule: G_t + g^t V^b(s_t) is a
    martingale under the baseline with expectation V^b(s1). If L <= V^pi and Û^b >= V^b, every path has return
    expectation >= (1 - alpha) (G_tau + g^tau V^b(s_tau)) at its switch time tau (and G_H >= (1 - alpha) G_H
    when it never switches: rewards >= 0), so by optional stopping the episode's value is >= (1 - alpha) V^b(s1).
    At t = 0 it is EpsMix's eps = 1 test with Û^b(s1) for U.
    The tempting "G_t + g^t L(s_t) >= (1 - alpha) U(s1)" is unsafe: if the baseline succeeds on some resets and
    fails on others, it switches only on the good ones, once they banked (1 - alpha) U, and keeps the failures:
    value about P(good) (1 - alpha) U. Only the warm-up's pure baseline episodes feed U and Û^b (a never-switched
    later episode is selected on its future, so its returns-to-go are biased).
    """

    MODE = "stepmix"

    def __init__(self, cfg: MixingConfig, baseline: BaselineValue, step_baseline: StepBaselineValue) -> None:
        super().__init__(cfg, baseline)
        self.step_baseline = step_baseline
        self.switch_step: int | None = None
        self._switch_bound: ValueBound | None = None
        self._banked = 0.0  # G_t

    @property
    def needs_bound(self) -> bool:
        return self.switch_step is None and not self.warming_up

    def begin_episode(self) -> None:
        super().begin_episode()
        self.switch_step, self._switch_bound, self._banked = None, None, 0.0
        self._fields["switch_step"] = -1.0

    def record_reward(self, reward: float) -> None:
        super().record_reward(reward)
        self._banked += self.baseline.discount ** (len(self._rewards) - 1) * float(reward)

    def choose(self, obs: np.ndarray, bound: ValueBound | None) -> Choice:
        t = len(self._states)
        if len(self._rewards) != t:
            raise ValueError(f"StepMix.choose: episode {self.episode} step {t} after {len(self._rewards)} "
                             "record_reward calls, expected one record_reward per step")
        self._states.append(np.asarray(obs, np.float64).reshape(-1))
        if self.switch_step is not None:
            return LEARNED
        if self.warming_up:
            return BASELINE
        if bound is None:
            raise ValueError(f"StepMix.choose: episode {self.episode} step {t} got bound None, expected the learned "
                             "policy's ValueBound at this state (needs_bound is True)")
        g_t = self.baseline.discount**t
        lower, upper_here = self.calibrator.lower(bound), self.step_baseline.upper(self._states[-1], t)
        if t == 0:
            self._fields.update(lower=lower, upper=self.baseline.upper(), upper_s1=upper_here, **self._calibration())
        if self._banked + g_t * lower >= (1.0 - self.cfg.alpha) * (self._banked + g_t * upper_here):
            self.switch_step, self._switch_bound = t, bound
            self._fields.update(switch_step=float(t), lower_at_switch=lower, upper_at_switch=upper_here)
            return LEARNED
        return BASELINE

    def end_episode(self) -> dict[str, float]:
        r = np.asarray(self._rewards)
        rtg = discounted_returns_to_go(r, self.baseline.discount) if r.size else np.zeros(1)
        if self.warming_up and self.switch_step is None:
            self.baseline.add_episode(r)
            if r.size:
                self.step_baseline.add_episode(np.stack(self._states[: len(r)]), r)
        elif self.switch_step is not None and self._switch_bound is not None and self.switch_step < len(r):
            self.calibrator.observe(self._switch_bound, float(rtg[self.switch_step]))
        return self._finish(float(rtg[0]))

    def state(self) -> dict[str, Any]:
        """`_Mixer.state()` plus Û^b's episodes and this episode's switch (step, bound there) and banked G_t."""
        return {**super().state(), "step_baseline": self.step_baseline.state(), "switch_step": self.switch_step,
                "switch_bound": _bound_state(self._switch_bound), "banked": self._banked}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """`_Mixer.load_state` plus Û^b's episodes and this episode's switch."""
        switch_step, banked = state["switch_step"], float(state["banked"])
        if switch_step is not None and not 0 <= switch_step < len(state["states"]):
            raise ValueError(f"switch_step: got {switch_step!r}, expected None or a step of this episode "
                             f"(0 to {len(state['states']) - 1})")
        if not (np.isfinite(banked) and banked >= 0):
            raise ValueError(f"banked: got {banked!r}, expected a finite discounted reward sum >= 0")
        super().load_state(state)
        self.step_baseline.load_state(state["step_baseline"])
        self.switch_step = None if switch_step is None else int(switch_step)
        self._switch_bound = _bound_from_state(state["switch_bound"])
        self._banked = banked


def make_mixer(
    cfg: MixingConfig, *, discount: float, rng: np.random.Generator, max_return: float | None = None
) -> EpsMix | StepMix | None:
    """The mixer `cfg.mode` names (None for "off": the learned policy always acts). `discount` must be the
    critic's (agent.discount) so U and L measure the same value; `max_return` switches U to empirical Bernstein."""
    check_section(cfg)  # the mixing fields' declared ranges and rules (config.py), for a config built in code too
    if cfg.mode == "off":
        return None
    baseline = BaselineValue(cfg.confidence, discount, max_return)
    if cfg.mode == "epsmix":
        return EpsMix(cfg, baseline, rng)
    return StepMix(cfg, baseline, StepBaselineValue(cfg.confidence, discount))
