"""Value estimates for conservative baseline mixing (see stepmix.py): what the mixers compare.

Owns: `BaselineValue` (an upper confidence estimate U of the baseline's value over the reset distribution, from
Monte-Carlo returns of an unbiased sample of its episodes), `BaselineSteps` (the same episodes step by step, for
StepMix's switch family), `LearnedValue` (the lower bound L of the learned policy's value over the reset
distribution, from the realized returns of its own whole episodes), the critic-ensemble bound at one state
(`ValueBound`, `learned_lower_bound`; the critic's Q-values come from `agents.policy.make_value_fn`), its
online-calibrated kappa and cap (`KappaCalibrator`) and the bounds at the baseline's states (`PrefixBounds`).
The stateful ones have `state()` / `load_state()` (their settings and data as plain values and numpy arrays) so
a mixer survives an actor restart; the on-disk form of that state is safety/mixer_state.py's. Pure numpy.

Conventions. Rewards must be >= 0 (the paper's V in [0, H]; the bound arguments need it). Values and returns are
discounted with the critic's `discount`, because L comes from that critic: U and L must measure the same
quantity. s1 is drawn from the reset distribution, so "V(s1)" is its expectation over resets, which is what
Monte-Carlo returns of episodes estimate, provided the choice of which episodes enter an estimate does not depend
on s1 or on how the episode goes (docs/safety.md).
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
    return float(_t_bound(np.asarray(x, np.float64)[:, None], confidence, +1.0)[0])


def _t_bound(x: np.ndarray, confidence: float, sign: float) -> np.ndarray:
    """Per column of `x` (n, k): the one-sided Student-t upper (sign +1) or lower (sign -1) bound of the mean."""
    n = x.shape[0]
    return x.mean(0) + sign * stats.t.ppf(confidence, n - 1) * x.std(0, ddof=1) / np.sqrt(n)


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


class BaselineSteps:
    """The per-step returns of whole baseline episodes, for StepMix's switch family (stepmix.py).

    Each episode is kept as its discounted return-to-go g_t (g_0 = its return). For a switch step tau (baseline
    for steps t < tau, learned from tau on) the episode gives R_tau = g^tau g_tau, the part of the return the
    baseline earns from tau on, and G_tau = g_0 - R_tau, what it banked before (g = discount; both 0 / g_0 past
    the episode's end). `slack_upper` bounds the mean of Z_tau = (1 - alpha) R_tau - alpha G_tau from above: the
    baseline's share of the constraint that a learned tail must cover (module docstring of stepmix.py).
    Only episodes whose length the mixer did not select on may enter (warm-up and never-switch episodes): then
    they are iid draws of the baseline's episode. The newest `window` are kept (a FIFO of iid draws stays iid;
    it bounds the saved state).
    """

    def __init__(self, confidence: float, discount: float = 1.0, window: int = 500) -> None:
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"mixing.confidence: got {confidence!r}, expected in (0, 1)")
        if window < 2:
            raise ValueError(f"window: got {window!r}, expected >= 2 episodes")
        self.confidence, self.discount, self.window = confidence, discount, window
        self._episodes: deque[np.ndarray] = deque(maxlen=window)

    @property
    def n(self) -> int:
        return len(self._episodes)

    @property
    def horizon(self) -> int:
        """The longest stored episode (the switch family's steps are 0 .. horizon - 1, then "never")."""
        return max((len(g) for g in self._episodes), default=0)

    def add_episode(self, rewards: Sequence[float] | np.ndarray) -> None:
        r = check_rewards(rewards, f"BaselineSteps: episode {self.n}")
        self._episodes.append(discounted_returns_to_go(r, self.discount))

    def slack_upper(self, alpha: float) -> tuple[np.ndarray, float]:
        """(upper bounds of E[Z_tau] for tau = 0 .. horizon - 1, lower bound of E[return] clipped at 0)."""
        if self.n < 2:
            raise ValueError(f"BaselineSteps.slack_upper: {self.n} baseline episode(s), expected >= 2")
        h = self.horizon
        g = np.zeros((self.n, h + 1))
        for i, rtg in enumerate(self._episodes):
            g[i, : len(rtg)] = rtg
        tail = g[:, :h] * self.discount ** np.arange(h)  # R_tau
        z = (1.0 - alpha) * tail - alpha * (g[:, :1] - tail)
        return _t_bound(z, self.confidence, +1.0), max(_t_bound(g[:, :1], self.confidence, -1.0)[0], 0.0)

    def state(self) -> dict[str, Any]:
        return {"confidence": self.confidence, "discount": self.discount, "window": self.window,
                "returns_to_go": [g.copy() for g in self._episodes]}

    def load_state(self, state: Mapping[str, Any]) -> None:
        check_saved_settings("BaselineSteps", state, confidence=self.confidence, discount=self.discount,
                             window=self.window)
        episodes = [np.array(g, np.float64) for g in state["returns_to_go"]]
        for i, g in enumerate(episodes):
            if g.ndim != 1 or not np.all(np.isfinite(g) & (g >= 0)):
                raise ValueError(f"BaselineSteps.returns_to_go[{i}]: got shape {g.shape}, expected a 1-D array of "
                                 "finite returns-to-go >= 0")
        if len(episodes) > self.window:
            raise ValueError(f"BaselineSteps.returns_to_go: {len(episodes)} episodes, expected <= {self.window}")
        self._episodes = deque(episodes, maxlen=self.window)


class LearnedValue:
    """L of the learned policy over the reset distribution: the one-sided `confidence` lower bound (Student-t,
    clipped at 0) of the realized discounted returns of its last `window` whole episodes from s1.

    Valid when those episodes began at s1 drawn from the reset distribution independently of the choice to run
    the learned policy (EpsMix's coin and StepMix's switch step are drawn before s1 is seen), so each return is
    an unbiased sample of E[V^pi(s1)] of the policy that ran it. 0 until `min_runs` returns exist: the mixers
    then run the learned policy in about alpha of the episodes, which is what gathers them (no deadlock, sparse
    or dense reward). The window forgets older policies; a policy that just got worse is overrated until its
    returns fill the window (docs/safety.md).
    """

    def __init__(self, confidence: float, window: int = 20, min_runs: int = 10) -> None:
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"mixing.confidence: got {confidence!r}, expected in (0, 1)")
        if min_runs < 2 or window < min_runs:
            raise ValueError(f"LearnedValue: window {window!r} and min_runs {min_runs!r}, expected "
                             "2 <= min_runs <= window")
        self.confidence, self.window, self.min_runs = confidence, window, min_runs
        self._returns: deque[float] = deque(maxlen=window)

    @property
    def n(self) -> int:
        return len(self._returns)

    def observe(self, realized_return: float) -> None:
        if not (np.isfinite(realized_return) and realized_return >= 0):
            raise ValueError(f"realized_return: got {realized_return!r}, expected a finite return >= 0")
        self._returns.append(float(realized_return))

    def lower(self) -> float:
        if self.n < self.min_runs:
            return 0.0
        return max(_t_bound(np.array(self._returns)[:, None], self.confidence, -1.0)[0], 0.0)

    def state(self) -> dict[str, Any]:
        return {"confidence": self.confidence, "window": self.window, "min_runs": self.min_runs,
                "returns": np.array(self._returns, np.float64)}

    def load_state(self, state: Mapping[str, Any]) -> None:
        check_saved_settings("LearnedValue", state, confidence=self.confidence, window=self.window,
                             min_runs=self.min_runs)
        returns = np.asarray(state["returns"], np.float64)
        if returns.ndim != 1 or len(returns) > self.window or not np.all(np.isfinite(returns) & (returns >= 0)):
            raise ValueError(f"LearnedValue.returns: got shape {returns.shape}, expected at most {self.window} "
                             "finite returns >= 0")
        self._returns = deque((float(x) for x in returns), maxlen=self.window)


class PrefixBounds:
    """The critic's bound at the states the baseline reaches at each step, for StepMix's learned tails.

    Per episode: the ValueBound (mean, std) at each state the baseline acted in or handed over at, up to the
    episode's planned switch step `planned` (drawn before s1), and that step. For a switch step tau, the episodes
    with planned >= tau give iid samples of the baseline's state at tau (0 if the episode had ended before tau:
    no learned tail there). `tail_lower` turns them, with the calibrator's current kappa and cap, into a lower
    bound of E_b[g^tau V^pi(s_tau)]: Student-t over the per-episode g^tau L(s_tau), clipped at 0, and 0 where
    fewer than 2 episodes reach tau. The bounds were computed by the critic of their episode's time, so this is
    as good as the calibration; 0 (no trust) is always a valid value of it. The newest `window` episodes are kept.
    """

    def __init__(self, confidence: float, discount: float = 1.0, window: int = 100) -> None:
        if window < 2:
            raise ValueError(f"window: got {window!r}, expected >= 2 episodes")
        self.confidence, self.discount, self.window = confidence, discount, window
        self._episodes: deque[tuple[np.ndarray, int]] = deque(maxlen=window)

    @property
    def n(self) -> int:
        return len(self._episodes)

    def add_episode(self, bounds: Sequence[ValueBound], planned: int) -> None:
        """`bounds` at steps 0, 1, ... of one episode (as far as it reached, at most planned + 1 of them)."""
        if planned < 0 or len(bounds) > planned + 1:
            raise ValueError(f"PrefixBounds.add_episode: {len(bounds)} bounds for planned switch step {planned}, "
                             "expected planned >= 0 and at most planned + 1 bounds")
        arr = np.array([(b.mean, b.std) for b in bounds], np.float64).reshape(-1, 2)
        self._episodes.append((arr, int(planned)))

    def tail_lower(self, horizon: int, kappa: float | np.ndarray, cap: float | np.ndarray) -> np.ndarray:
        """Lower bounds of E_b[g^tau V^pi(s_tau)] for tau = 0 .. horizon - 1. `kappa` and `cap` are one value for
        every step or one per step ((horizon,): StepMix calibrates each switch step on its own); 0 at a step whose
        kappa is inf (an untrusted critic there), which is always a valid lower bound."""
        out = np.zeros(horizon)
        kappa = np.broadcast_to(np.asarray(kappa, np.float64), (horizon,))
        cap = np.broadcast_to(np.asarray(cap, np.float64), (horizon,))
        finite = np.isfinite(kappa)
        trusted = np.flatnonzero(finite)
        if self.n < 2 or horizon == 0 or not trusted.size:
            return out
        k = np.where(finite, kappa, 0.0)  # untrusted steps are computed with 0 and never read
        x = np.full((self.n, horizon), np.nan)
        for i, (b, planned) in enumerate(self._episodes):
            reach = min(len(b), horizon)
            x[i, : min(planned + 1, horizon)] = 0.0  # ended before tau: no tail
            x[i, :reach] = np.minimum(np.maximum(b[:reach, 0] - k[:reach] * b[:reach, 1], 0.0), cap[:reach])
        x *= self.discount ** np.arange(horizon)
        for tau in trusted:
            col = x[~np.isnan(x[:, tau]), tau]
            if len(col) >= 2:
                out[tau] = max(_t_bound(col[:, None], self.confidence, -1.0)[0], 0.0)
        return out

    def state(self) -> dict[str, Any]:
        return {"confidence": self.confidence, "discount": self.discount, "window": self.window,
                "bounds": [b.copy() for b, _ in self._episodes],
                "planned": np.array([p for _, p in self._episodes], np.int64)}

    def load_state(self, state: Mapping[str, Any]) -> None:
        check_saved_settings("PrefixBounds", state, confidence=self.confidence, discount=self.discount,
                             window=self.window)
        bounds, planned = list(state["bounds"]), np.asarray(state["planned"]).reshape(-1)
        if len(bounds) != len(planned) or len(bounds) > self.window:
            raise ValueError(f"PrefixBounds: {len(bounds)} bound arrays and {len(planned)} planned steps, expected "
                             f"one of each per episode, at most {self.window}")
        episodes = []
        for i, (b_, p) in enumerate(zip(bounds, planned, strict=True)):
            b = np.array(b_, np.float64)
            if b.ndim != 2 or b.shape[1] != 2 or not np.all(np.isfinite(b)) or p < 0 or len(b) > p + 1:
                raise ValueError(f"PrefixBounds: episode {i} bounds shape {b.shape} with planned step {p}, expected "
                                 "finite (T, 2) bounds with T <= planned + 1")
            episodes.append((b, int(p)))
        self._episodes = deque(episodes, maxlen=self.window)


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
