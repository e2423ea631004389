"""The SafetyFilter's float path against a plain numpy transcription of the same rules, on random input sequences.

filter.py computes with tuples of Python floats for speed (it runs on every control step). `ReferenceFilter` below
is the same algorithm written the obvious way with numpy arrays (it is what filter.py was before the float
rewrite). Both run on the same random sequences — ordinary steps, targets far outside the box and cone, forces
above the limit, episodes starting outside, NaN/inf/1e30/zero-quaternion inputs — and must agree on every flag,
every gripper decision and the per-episode counts exactly, and on every pose to rounding (the only differences
allowed are the order of the three or four products summed in a norm or a dot product).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from serl_stack.config import EnvConfig
from serl_stack.safety import FLAG_NAMES, SafetyFilter

DOWN = np.array([0.0, 1.0, 0.0, 0.0])
LOW, HIGH = np.array(EnvConfig().workspace_low), np.array(EnvConfig().workspace_high)
_TOL = 1e-12


# --------------------------------------------------------------------------------------------- the reference


def _norm(v: np.ndarray) -> float:
    m = float(np.max(np.abs(v)))
    return 0.0 if m == 0.0 else m * math.sqrt(float((v / m) @ (v / m)))


def _unit_quat(q: np.ndarray) -> np.ndarray | None:
    if not np.all(np.isfinite(q)) or not np.any(q):
        return None
    q = q / np.max(np.abs(q))
    q = q / math.sqrt(float(q @ q))
    return -q if q[0] < 0 else q


def _qmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw])


def _relative(a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray]:
    r = _qmul(np.array([a[0], -a[1], -a[2], -a[3]]), b)
    r = -r if r[0] < 0 else r
    s = math.sqrt(float(r[1:] @ r[1:]))
    return 2.0 * math.atan2(s, float(r[0])), (r[1:] / s if s > 0.0 else np.zeros(3))


def _rotate_toward(a: np.ndarray, b: np.ndarray, max_angle: float) -> tuple[np.ndarray, bool]:
    angle, axis = _relative(a, b)
    if angle <= max_angle:
        return b, False
    step = np.concatenate(([math.cos(0.5 * max_angle)], math.sin(0.5 * max_angle) * axis))
    q = _unit_quat(_qmul(a, step))
    assert q is not None
    return q, True


class ReferenceFilter:
    """SafetyFilter's rules with numpy arrays, no input checking (the inputs here are well-shaped)."""

    def __init__(self, f: SafetyFilter) -> None:
        self.f = f  # limits only
        self.low, self.high = np.array(f.workspace_low), np.array(f.workspace_high)
        self.nominal = np.array(f.nominal_quat)
        self.counts = dict.fromkeys(("steps", *FLAG_NAMES), 0)

    def reset(self, pos: np.ndarray, quat: np.ndarray, closed: bool, now: float) -> None:
        self.pos, self.quat, self.gripper, self.last_toggle = np.array(pos, float), _unit_quat(quat), closed, -math.inf
        self.counts = dict.fromkeys(self.counts, 0)

    def excess(self, q: np.ndarray) -> float:
        return max(_relative(self.nominal, q)[0] - self.f.orientation_cone, 0.0)

    def outside(self, p: np.ndarray, q: np.ndarray) -> bool:
        return bool(np.any(p < self.low) or np.any(p > self.high)) or self.excess(q) > _TOL

    def filter(self, tp, tq, g, mp, mq, force, t) -> tuple[np.ndarray, np.ndarray, bool, dict[str, bool]]:
        f, flags = self.f, dict.fromkeys(FLAG_NAMES, False)
        tq, mq = _unit_quat(tq), _unit_quat(mq)
        finite = all(np.all(np.isfinite(a)) for a in (tp, mp, force)) and math.isfinite(g) and math.isfinite(t)
        if not finite or tq is None or mq is None:
            flags["nonfinite"] = True
            return self.emit(self.pos, self.quat, self.gripper, flags)
        last_pos, last_quat = self.pos, self.quat
        flags["outside_recovery"] = self.outside(last_pos, last_quat) or self.outside(mp, mq)
        goal = np.clip(tp, self.low, self.high)
        flags["box"] = bool(np.any(goal != tp))
        fmag = _norm(force)
        if fmag > f.force_limit:
            flags["force_backoff"] = True
            u = force / fmag
            delta = goal - last_pos
            along = float(delta @ u)
            delta = delta + (max(along, f.force_backoff) - along) * u
            goal = np.clip(last_pos + delta, self.low, self.high)
            if float((goal - last_pos) @ u) < 0.0:
                goal = np.clip(last_pos + f.force_backoff * u, self.low, self.high)
        delta = goal - last_pos
        dist = _norm(delta)
        if dist > f.max_step_pos:
            flags["step_pos"] = True
            delta = delta * (f.max_step_pos / dist)
        pos = np.clip(last_pos + delta, np.minimum(self.low, last_pos), np.maximum(self.high, last_pos))
        goal_q, flags["cone"] = _rotate_toward(self.nominal, tq, f.orientation_cone)
        quat, flags["step_rot"] = _rotate_toward(last_quat, goal_q, f.max_step_rot)
        if self.excess(quat) > self.excess(last_quat) + _TOL:
            back, _ = _rotate_toward(self.nominal, last_quat, f.orientation_cone)
            quat, _ = _rotate_toward(last_quat, back, f.max_step_rot)
            flags["step_rot"] = True
        closed = self.gripper
        want = True if g > 0.5 else False if g < -0.5 else self.gripper
        if want != self.gripper:
            if t - self.last_toggle >= f.gripper_min_interval_s:
                closed, self.last_toggle = want, t
            else:
                flags["gripper_rate"] = True
        return self.emit(pos, quat, closed, flags)

    def emit(self, pos, quat, closed, flags):
        self.pos, self.quat, self.gripper = pos, quat, closed
        self.counts["steps"] += 1
        for name, raised in flags.items():
            self.counts[name] += int(raised)
        return pos, quat, closed, flags


# --------------------------------------------------------------------------------------------- random inputs


def random_quat(rng: np.random.Generator, near: np.ndarray, spread: float) -> np.ndarray:
    """Mostly a rotation of `near` by up to `spread` rad (unnormalized, either sign), sometimes anything."""
    if rng.random() < 0.2:
        return rng.normal(size=4) * 10.0 ** rng.integers(-3, 4)
    rv = rng.normal(size=3)
    rv *= rng.uniform(0, spread) / np.linalg.norm(rv)
    angle = np.linalg.norm(rv)
    r = np.concatenate(([math.cos(angle / 2)], math.sin(angle / 2) * rv / angle))
    return _qmul(near, r) * rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 2.0)


def random_step(rng: np.random.Generator, last: np.ndarray) -> list:
    tp = last + rng.normal(scale=rng.choice([0.005, 0.05, 0.5]), size=3)
    mp = last + rng.normal(scale=0.01, size=3)
    force = rng.normal(scale=rng.choice([5.0, 40.0]), size=3)
    step = [tp, random_quat(rng, DOWN, rng.choice([0.2, 1.0, 3.0])), float(rng.uniform(-1.5, 1.5)), mp,
            random_quat(rng, DOWN, 0.3), force]
    if rng.random() < 0.15:  # one corrupted or extreme input
        i = int(rng.integers(0, 6))
        bad = rng.choice([math.nan, math.inf, -math.inf, 1e30, -1e30, 0.0])
        if i == 2:
            step[2] = float(bad)
        elif bad == 0.0 and i in (1, 4):
            step[i] = np.zeros(4)
        else:
            step[i] = step[i].copy()
            step[i][int(rng.integers(0, len(step[i])))] = bad
    return step


@pytest.mark.parametrize("seed", range(4))
def test_float_path_matches_the_numpy_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    agreed_exactly = compared = 0
    raised = dict.fromkeys(FLAG_NAMES, 0)
    for episode in range(60):
        f = SafetyFilter(LOW, HIGH, random_quat(rng, DOWN, 0.1), orientation_cone=float(rng.uniform(0.05, math.pi / 2)),
                         max_step_pos=float(rng.uniform(1e-3, 0.1)), max_step_rot=float(rng.uniform(1e-3, 1.0)),
                         gripper_min_interval_s=float(rng.uniform(0.0, 0.5)), force_limit=float(rng.uniform(5, 50)),
                         force_backoff=float(rng.uniform(0.0, 0.02)))
        ref = ReferenceFilter(f)
        # A third of the episodes start outside the box or the cone (they walk back at the step limit).
        start = rng.uniform(LOW, HIGH) + (rng.normal(scale=0.2, size=3) if episode % 3 == 0 else 0.0)
        start_q = random_quat(rng, f.nominal_quat, 2.5 if episode % 3 == 1 else 0.3)
        closed = bool(rng.random() < 0.5)
        f.reset(start, start_q, closed, 0.0)
        ref.reset(start, start_q, closed, 0.0)
        t = 0.0
        for _ in range(40):
            t += float(rng.uniform(0.0, 0.2))
            tp, tq, g, mp, mq, force = random_step(rng, ref.pos)
            now = t if rng.random() > 0.02 else math.nan
            got = f.filter(tp, tq, g, mp, mq, force, now)
            pos, quat, want_closed, flags = ref.filter(tp, tq, g, mp, mq, force, now)
            assert got.flags() == flags and got.gripper_closed == want_closed
            np.testing.assert_allclose(got.pos, pos, rtol=0, atol=1e-12)
            np.testing.assert_allclose(got.quat, quat, rtol=0, atol=1e-12)
            compared += 1
            agreed_exactly += bool(np.array_equal(got.pos, pos) and np.array_equal(got.quat, quat))
            # Rounding differences must not accumulate: carry on from the same command on both sides.
            ref.pos, ref.quat = np.array(got.pos), np.array(got.quat)
        assert f.episode_counts() == ref.counts
        raised = {k: n + ref.counts[k] for k, n in raised.items()}
    assert compared == 60 * 40 and agreed_exactly > compared // 2  # most steps agree to the last bit
    assert all(n > 20 for n in raised.values()), raised  # the inputs exercised every rule
