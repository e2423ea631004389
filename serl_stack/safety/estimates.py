"""Value estimates for conservative baseline mixing (see stepmix.py): what the mixers compare.

Owns: `BaselineValue` (an upper confidence estimate U of the baseline's value from Monte-Carlo returns of its
episodes), `StepBaselineValue` (the same for mid-episode states), the critic-ensemble lower bound L of the learned
policy's value (`ValueBound`, `learned_lower_bound`; the critic's Q-values come from
`agents.policy.make_value_fn`) and its online-calibrated kappa (`KappaCalibrator`). The stateful ones have
`state()` / `load_state()` (their settings and data as plain values and numpy arrays) so a mixer survives an
actor restart; the on-disk form of that state is safety/mixer_state.py's. Pure numpy.

Conventions. Rewards must be >= 0 (the paper's V in [0, H]; the bound arguments need it). Values and returns are
discounted with the critic's `discount`, because L comes from that critic: U and L must measure the same
quantity. s1 is drawn from the reset distribution, so "V(s1)" is its expectation over resets, which is what
Monte-Carlo returns of baseline episodes estimate.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats


def check_rewards(rewards: Sequence[float] | np.ndarray, where: str) -> np.ndarray:
    r = np.asarray(rewards, np.float64).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(r) | (r < 0))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{where} step {i}: reward {float(r[i])!r}, expected a finite reward >= 0 (conservative "
                         "mixing bounds values in [0, max return]; shift the task's rewards to be non-negative)")
    return r


def discounted_returns_to_go(rewards: np.ndarray, discount: float) -> np.ndarray:
    """G_t = sum_{s >= t} discount^(s - t) r_s for every t (G_0 is the episode's return)."""
    out = np.zeros(len(rewards) + 1)
    for t in range(len(rewards) - 1, -1, -1):
        out[t] = rewards[t] + discount * out[t + 1]
    return out[:-1]


def check_saved_settings(owner: str, state: Mapping[str, Any], **mine: Any) -> None:
    """ValueError naming the first setting whose saved value differs from the live object's: saved data only
    means the same thing under the settings it was gathered with (returns discounted with one discount, ...)."""
    for name, value in mine.items():
        if state[name] != value:
            raise ValueError(f"{owner}.{name}: saved {state[name]!r}, this one has {value!r}")


def _t_upper(x: np.ndarray, confidence: float) -> float:
    """One-sided Student-t upper bound of the mean of `x` at `confidence`."""
    n = len(x)
    return float(x.mean() + stats.t.ppf(confidence, n - 1) * x.std(ddof=1) / np.sqrt(n))


# --------------------------------------------------------------------------------------------- baseline value


class BaselineValue:
    """U: a one-sided upper confidence bound at `confidence` of the baseline's value V^b(s1) from the
    (discounted) Monte-Carlo returns of whole baseline episodes.

    Bound. Without `max_return`: Student-t, mean + t_{n-1, conf} * std / sqrt(n). It needs no return range (the
    robot tasks' dense shaping has none in the config) and is tight; it assumes the mean of n returns is close to
    normal (CLT; fine for n ~ 100 and returns that are not wildly skewed). With `max_return` R (returns in
    [0, R], checked): the empirical-Bernstein bound of Maurer & Pontil (2009, Thm 4), mean + sqrt(2 V ln(2/d) / n)
    + 7 R ln(2/d) / (3 (n - 1)) with d = 1 - confidence: valid for any distribution, looser for small n.
    An upper bound is the conservative side: EpsMix/StepMix hold when U >= V^b and L <= V^pi.
    """

    def __init__(self, confidence: float, discount: float = 1.0, max_return: float | None = None) -> None:
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"mixing.confidence: got {confidence!r}, expected in (0, 1)")
        if not 0.0 <= discount <= 1.0:
            raise ValueError(f"discount: got {discount!r}, expected in [0, 1]")
        if max_return is not None and not (np.isfinite(max_return) and max_return > 0):
            raise ValueError(f"max_return: got {max_return!r}, expected a finite value > 0 or None")
        self.confidence, self.discount, self.max_return = confidence, discount, max_return
        self._returns: list[float] = []

    @property
    def n(self) -> int:
        return len(self._returns)

    def add_episode(self, rewards: Sequence[float] | np.ndarray) -> float:
        """Add one baseline episode (its per-step rewards, from s1); returns its discounted return."""
        r = check_rewards(rewards, f"BaselineValue: episode {self.n}")
        ret = float(discounted_returns_to_go(r, self.discount)[0]) if r.size else 0.0
        if self.max_return is not None and ret > self.max_return:
            raise ValueError(f"BaselineValue: episode {self.n} return {ret!r}, expected <= max_return "
                             f"{self.max_return!r}")
        self._returns.append(ret)
        return ret

    def mean(self) -> float:
        return float(np.mean(self._returns)) if self._returns else float("nan")

    def upper(self) -> float:
        """U >= V^b(s1) with probability `confidence` (see the class docstring for the assumption)."""
        if self.n < 2:
            raise ValueError(f"BaselineValue.upper: {self.n} baseline episode(s), expected >= 2 (a spread is needed)")
        x = np.asarray(self._returns)
        if self.max_return is None:
            return max(_t_upper(x, self.confidence), 0.0)
        log_term = np.log(2.0 / (1.0 - self.confidence))
        n = self.n
        bound = np.sqrt(2.0 * x.var(ddof=1) * log_term / n) + 7.0 * self.max_return * log_term / (3.0 * (n - 1))
        return float(min(x.mean() + bound, self.max_return))

    def state(self) -> dict[str, Any]:
        """Settings and returns, for saving (safety/mixer_state.py owns the on-disk form)."""
        return {"confidence": self.confidence, "discount": self.discount, "max_return": self.max_return,
                "returns": np.array(self._returns, np.float64)}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Take the returns of `state()` from an estimate with the same settings (ValueError otherwise)."""
        check_saved_settings("BaselineValue", state, confidence=self.confidence, discount=self.discount,
                             max_return=self.max_return)
        returns = np.asarray(state["returns"], np.float64)
        high = np.inf if self.max_return is None else self.max_return
        if returns.ndim != 1 or not np.all(np.isfinite(returns) & (returns >= 0) & (returns <= high)):
            raise ValueError(f"BaselineValue.returns: got shape {returns.shape} with values in "
                             f"[{returns.min(initial=0.0)!r}, {returns.max(initial=0.0)!r}], expected a 1-D array "
                             f"of finite returns in [0, {high!r}]")
        self._returns = [float(x) for x in returns]


class StepBaselineValue:
    """Û^b(s, t): an upper estimate of the baseline's value (discounted return-to-go) at a mid-episode state.

    Choice: per-episode nearest neighbours, numpy only. Each stored baseline episode contributes its state
    nearest to the query (features: states standardized per dimension, plus t / longest episode, because on a
    finite horizon the return-to-go depends on the steps left); the `k` episodes whose nearest states are
    closest give k returns-to-go, and Û = their mean + t_{k-1, conf} * std / sqrt(k). Taking one neighbour per
    episode keeps the k samples independent (consecutive states of one episode are not), so the t-bound means
    something. No model class to pick, exact on states it has seen; it degrades far from the baseline's data,
    which is where StepMix keeps running the baseline anyway (the baseline visits those states).
    """

    def __init__(self, confidence: float, discount: float = 1.0, k: int = 10) -> None:
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"mixing.confidence: got {confidence!r}, expected in (0, 1)")
        if k < 2:
            raise ValueError(f"k: got {k!r}, expected >= 2 neighbours")
        self.confidence, self.discount, self.k = confidence, discount, k
        self._episodes: list[tuple[np.ndarray, np.ndarray]] = []
        self._cache: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float] | None = None

    @property
    def n(self) -> int:
        return len(self._episodes)

    def add_episode(self, states: np.ndarray, rewards: Sequence[float] | np.ndarray) -> None:
        """One baseline episode: `states` (T, D) where each action was taken, `rewards` (T,)."""
        s = np.asarray(states, np.float64)
        r = check_rewards(rewards, f"StepBaselineValue: episode {self.n}")
        if s.ndim != 2 or len(s) != len(r) or len(s) == 0:
            raise ValueError(f"StepBaselineValue.add_episode: states shape {s.shape} with {len(r)} rewards, "
                             "expected (T, D) states with T = len(rewards) >= 1")
        if self._episodes and s.shape[1] != self._episodes[0][0].shape[1]:
            raise ValueError(f"StepBaselineValue.add_episode: state dim {s.shape[1]}, expected "
                             f"{self._episodes[0][0].shape[1]} like the earlier episodes")
        self._episodes.append((s, discounted_returns_to_go(r, self.discount)))
        self._cache = None

    def _tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
        # Padded (episodes, T_max, D+1) features: one vectorized distance computation per query.
        if self._cache is None:
            all_states = np.concatenate([s for s, _ in self._episodes])
            mean, std = all_states.mean(0), np.maximum(all_states.std(0), 1e-8)
            horizon = float(max(len(s) for s, _ in self._episodes))
            t_max = int(horizon)
            feats = np.full((self.n, t_max, all_states.shape[1] + 1), np.inf)
            rtg = np.zeros((self.n, t_max))
            for i, (s, g) in enumerate(self._episodes):
                feats[i, : len(s), :-1] = (s - mean) / std
                feats[i, : len(s), -1] = np.arange(len(s)) / horizon
                rtg[i, : len(s)] = g
            self._cache = (feats, rtg, mean, std, horizon)
        return self._cache

    def upper(self, state: np.ndarray, t: int) -> float:
        """Û^b(state, t) (see the class docstring); needs >= 2 baseline episodes."""
        if self.n < 2:
            raise ValueError(f"StepBaselineValue.upper: {self.n} baseline episode(s), expected >= 2")
        feats, rtg, mean, std, horizon = self._tables()
        q = np.append((np.asarray(state, np.float64).reshape(-1) - mean) / std, t / horizon)
        d = np.sum((feats - q) ** 2, axis=-1)  # padding is inf: never the nearest
        nearest = np.argmin(d, axis=1)
        rows = np.arange(self.n)
        k = min(self.k, self.n)
        pick = np.argsort(d[rows, nearest], kind="stable")[:k]
        return max(_t_upper(rtg[pick, nearest[pick]], self.confidence), 0.0)

    def state(self) -> dict[str, Any]:
        """Settings and the stored episodes (states (T, D), discounted returns-to-go (T,)), for saving."""
        return {"confidence": self.confidence, "discount": self.discount, "k": self.k,
                "states": [s.copy() for s, _ in self._episodes],
                "returns_to_go": [g.copy() for _, g in self._episodes]}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Take the episodes of `state()` from an estimate with the same settings (ValueError otherwise)."""
        check_saved_settings("StepBaselineValue", state, confidence=self.confidence, discount=self.discount,
                             k=self.k)
        states, rtgs = list(state["states"]), list(state["returns_to_go"])
        if len(states) != len(rtgs):
            raise ValueError(f"StepBaselineValue: {len(states)} state arrays and {len(rtgs)} returns-to-go arrays, "
                             "expected one of each per episode")
        episodes = []
        for i, (s_, g_) in enumerate(zip(states, rtgs, strict=True)):
            s, g = np.array(s_, np.float64), np.array(g_, np.float64)
            dim = episodes[0][0].shape[1] if episodes else "D"  # every episode has the first one's state dim
            if s.ndim != 2 or len(s) == 0 or (episodes and s.shape[1] != dim) or g.shape != (len(s),):
                raise ValueError(f"StepBaselineValue: episode {i} states shape {s.shape}, returns-to-go shape "
                                 f"{g.shape}, expected (T, {dim}) and (T,) with T >= 1")
            if not (np.all(np.isfinite(s)) and np.all(np.isfinite(g) & (g >= 0))):
                raise ValueError(f"StepBaselineValue: episode {i} holds non-finite states or returns-to-go < 0, "
                                 "expected finite states and returns-to-go >= 0")
            episodes.append((s, g))
        self._episodes, self._cache = episodes, None


# --------------------------------------------------------------------------------------- learned lower bound


@dataclass(frozen=True)
class ValueBound:
    """The critic ensemble's view of the learned policy's value at one state: mean and spread over members of
    each member's value estimate V_e(s) = mean over M sampled actions a ~ pi(.|s) of Q_e(s, a)."""

    mean: float
    std: float

    @classmethod
    def from_q_values(cls, q_values: np.ndarray) -> ValueBound:
        q = np.asarray(q_values, np.float64)
        if q.ndim != 2 or q.size == 0 or not np.all(np.isfinite(q)):
            raise ValueError(f"q_values: got shape {q.shape} (finite: {bool(np.all(np.isfinite(q)))}), expected "
                             "finite (E, M) Q-values: E ensemble members x M sampled actions")
        v = q.mean(axis=1)  # Monte-Carlo V_e(s) per member: averages out action sampling, keeps model spread
        # ddof=1: with the default E = 2 critics the population std would understate the spread by sqrt(2).
        return cls(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)

    def lower(self, kappa: float) -> float:
        """L = max(0, mean - kappa * std): values are >= 0 when rewards are, so 0 is always a valid bound.
        An infinite kappa (the calibrator found none that fits) gives 0 whatever the spread."""
        if not np.isfinite(kappa):
            return 0.0
        return max(self.mean - kappa * self.std, 0.0)


def learned_lower_bound(q_values: np.ndarray, kappa: float) -> float:
    """L from (E, M) Q-values: over the ensemble, mean - kappa * std of the per-member mean over the M actions
    sampled from the learned policy at that state; clipped at 0."""
    if not (np.isfinite(kappa) and kappa >= 0):
        raise ValueError(f"kappa: got {kappa!r}, expected a finite value >= 0")
    return ValueBound.from_q_values(q_values).lower(kappa)


class KappaCalibrator:
    """kappa, calibrated online against realized returns of episodes (or episode tails) the learned policy ran,
    and the cap those returns put on L.

    Each such run leaves the bound's (mean m, std s) at its start state and the realized return R, an unbiased
    sample of V^pi there. kappa is the smallest value on a grid (step 0.01 up to 10, then geometric to 1000)
    whose bounds L_i = max(0, m_i - kappa s_i) are not above the returns on average, with confidence `target`:
    the one-sided Student-t upper bound of mean_i(L_i - R_i) over the last `window` runs is <= 0. Until
    `min_runs` runs exist it is the configured kappa (default inf: no trust in an uncalibrated critic, L = 0); if
    no kappa fits (a biased critic with no spread) it is inf, so L = 0 and the mixers fall back to the baseline's
    share.
    Why the average and not "L_i <= R_i in a target fraction of runs": one return is a noisy sample of V^pi, and
    with bimodal (success / failure) returns that per-run test asks L to sit below the failures, i.e. L = 0
    forever. The average tests what EpsMix needs (L <= V^pi) while the return noise averages out. It averages
    the clipped L_i (what the mixers use): otherwise a state where m - kappa s is far below 0 would excuse an
    overestimate elsewhere. The soft-Q critic includes future entropy bonuses and bootstraps past truncation:
    biases this calibration absorbs. The window forgets the runs of older critics.

    A critic can be biased with almost no spread between its members (measured on pick-cube: ensemble means of
    2-9 where no return exceeds 0.35, kappa past 100 and still L > 1). So L is also capped by the evidence
    itself: `cap` is the one-sided `target` lower confidence bound of the realized returns of the last
    `cap_window` runs (0 while the learned policy keeps failing). The cap is state-independent: it says what
    the learned policy has recently achieved from the states it was handed, whatever the critic thinks.
    """

    GRID = np.concatenate([np.linspace(0.0, 10.0, 1001), np.geomspace(10.0, 1000.0, 201)[1:]])

    def __init__(self, kappa: float, target: float, window: int = 100, min_runs: int = 10,
                 cap_window: int = 20) -> None:
        if not kappa >= 0:  # inf allowed (no trust before calibration); NaN fails here too
            raise ValueError(f"mixing.kappa: got {kappa!r}, expected >= 0 (inf: no trust until calibrated)")
        if not 0.0 < target < 1.0:
            raise ValueError(f"target: got {target!r}, expected in (0, 1)")
        if min_runs < 2:
            raise ValueError(f"min_runs: got {min_runs!r}, expected >= 2 (a spread is needed)")
        if cap_window < min_runs:
            raise ValueError(f"cap_window: got {cap_window!r}, expected >= min_runs ({min_runs})")
        self.initial, self.target, self.min_runs, self.cap_window = kappa, target, min_runs, cap_window
        self._runs: deque[tuple[float, float, float]] = deque(maxlen=max(window, cap_window))
        self.window = window
        self._kappa = kappa
        self._cap = float("inf")

    def observe(self, bound: ValueBound, realized_return: float) -> None:
        if not np.isfinite(realized_return):
            raise ValueError(f"realized_return: got {realized_return!r}, expected a finite return")
        self._runs.append((bound.mean, bound.std, float(realized_return)))
        if len(self._runs) < self.min_runs:
            return
        runs = list(self._runs)[-self.window:]
        m, s, r = (np.asarray(c)[:, None] for c in zip(*runs, strict=True))
        gaps = np.maximum(m - self.GRID[None, :] * s, 0.0) - r  # (runs, kappas)
        n = len(runs)
        upper = gaps.mean(0) + stats.t.ppf(self.target, n - 1) * gaps.std(0, ddof=1) / np.sqrt(n)
        ok = np.flatnonzero(upper <= 0.0)
        self._kappa = float(self.GRID[ok[0]]) if ok.size else float("inf")
        recent = np.array([run[2] for run in list(self._runs)[-self.cap_window:]])
        k = len(recent)
        lcb = recent.mean() - stats.t.ppf(self.target, k - 1) * recent.std(ddof=1) / np.sqrt(k)
        self._cap = max(float(lcb), 0.0)

    @property
    def kappa(self) -> float:
        return self._kappa

    @property
    def cap(self) -> float:
        """The cap on L from the learned policy's realized returns; inf until `min_runs` runs exist."""
        return self._cap

    def lower(self, bound: ValueBound) -> float:
        """L at a state: the critic's bound with the calibrated kappa, capped by the realized returns."""
        return min(bound.lower(self._kappa), self._cap)

    def state(self) -> dict[str, Any]:
        """Settings, the runs window ((n, 3): bound mean, bound std, realized return) and the current kappa and
        cap, for saving. kappa and cap are stored, not refitted on load, so a restored calibrator gives the very
        same floats whatever scipy version reads it."""
        return {"initial": self.initial, "target": self.target, "window": self.window, "min_runs": self.min_runs,
                "cap_window": self.cap_window, "runs": np.array(list(self._runs), np.float64).reshape(-1, 3),
                "kappa": self._kappa, "cap": self._cap}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Take the runs, kappa and cap of `state()` from a calibrator with the same settings (ValueError
        otherwise)."""
        check_saved_settings("KappaCalibrator", state, initial=self.initial, target=self.target, window=self.window,
                             min_runs=self.min_runs, cap_window=self.cap_window)
        runs = np.asarray(state["runs"], np.float64)
        maxlen = self._runs.maxlen
        if runs.ndim != 2 or runs.shape[1] != 3 or len(runs) > maxlen or not np.all(np.isfinite(runs)):
            raise ValueError(f"KappaCalibrator.runs: got shape {runs.shape}, expected finite (n, 3) runs (bound "
                             f"mean, bound std, realized return) with n <= {maxlen}")
        kappa, cap = float(state["kappa"]), float(state["cap"])
        for name, value in (("kappa", kappa), ("cap", cap)):
            if not value >= 0:  # inf is allowed (uncalibrated / no kappa fits); NaN fails here
                raise ValueError(f"KappaCalibrator.{name}: got {value!r}, expected >= 0 (inf allowed)")
        self._runs = deque((tuple(float(x) for x in run) for run in runs), maxlen=maxlen)
        self._kappa, self._cap = kappa, cap


# ----------------------------------------------------------------------------------------------- mixing


