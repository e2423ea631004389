"""SafetyFilter: its invariants hold for any input sequence (hypothesis), and each rule does what it says."""

from __future__ import annotations

import copy
import dataclasses
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serl_stack.config import EnvConfig, SafetyConfig
from serl_stack.safety import FLAG_NAMES, FilterResult, SafetyFilter

TOL = 1e-9
DOWN = np.array([0.0, 1.0, 0.0, 0.0])  # TCP z pointing down: 180 degrees about base x
LOW, HIGH = np.array(EnvConfig().workspace_low), np.array(EnvConfig().workspace_high)
INSIDE = np.array([0.45, 0.0, 0.3])


# --------------------------------------------------------------------------------------------- independent math
# Written separately from filter.py's helpers so a shared bug cannot hide.


def quat_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Rotation angle between unit quaternions, stable near 0 (acos of the dot product is not)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a @ b < 0:
        b = -b
    return 4.0 * math.atan2(float(np.linalg.norm(a - b)), float(np.linalg.norm(a + b)))


def unit(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    q = q / np.max(np.abs(q))
    return q / np.linalg.norm(q)


def rotvec_quat(rv: np.ndarray) -> np.ndarray:
    angle = float(np.linalg.norm(rv))
    if angle == 0:
        return np.array([1.0, 0.0, 0.0, 0.0])
    return np.concatenate(([math.cos(angle / 2)], math.sin(angle / 2) * np.asarray(rv) / angle))


def qmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aw, av, bw, bv = a[0], a[1:], b[0], b[1:]
    return np.concatenate(([aw * bw - av @ bv], aw * bv + bw * av + np.cross(av, bv)))


def box_distance(p: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    return float(np.linalg.norm(p - np.clip(p, low, high)))


def make_filter(**safety: float) -> SafetyFilter:
    return SafetyFilter.from_config(EnvConfig(safety=SafetyConfig(**safety)), DOWN)


# --------------------------------------------------------------------------------------------- strategies

SPECIAL = [math.nan, math.inf, -math.inf]
HUGE = st.sampled_from([1e30, -1e30])


def coords(scale: float) -> st.SearchStrategy[float]:
    """Mostly ordinary numbers, some far away, some 1e30 (finite: must be handled, not held)."""
    return st.one_of(
        st.floats(-scale, scale, allow_nan=False), st.floats(-100.0, 100.0, allow_nan=False), HUGE
    )


def positions() -> st.SearchStrategy[np.ndarray]:
    near = st.tuples(st.floats(0.0, 0.9), st.floats(-0.5, 0.5), st.floats(-0.2, 0.8))
    return st.one_of(near, near, st.tuples(coords(1.0), coords(1.0), coords(1.0))).map(np.array)


def quats() -> st.SearchStrategy[np.ndarray]:
    """Any non-zero quaternion: near the nominal, anywhere, or with huge components (not normalized)."""
    small = st.tuples(*[st.floats(-0.6, 0.6)] * 3).map(lambda rv: qmul(DOWN, rotvec_quat(np.array(rv))))
    anywhere = st.tuples(*[st.floats(-2.0, 2.0)] * 4).map(lambda q: np.array(q) if max(map(abs, q)) > 1e-6 else DOWN)
    huge = st.tuples(HUGE, st.floats(-1.0, 1.0), HUGE, st.floats(-1.0, 1.0)).map(np.array)
    return st.one_of(small, small, anywhere, huge)


def forces() -> st.SearchStrategy[np.ndarray]:
    return st.one_of(
        st.tuples(*[st.floats(-60.0, 60.0)] * 3), st.tuples(coords(60.0), coords(60.0), coords(60.0))
    ).map(np.array)


@st.composite
def filters(draw: st.DrawFn) -> SafetyFilter:
    """A filter with drawn limits (the cone up to its largest allowed half-angle, pi/2)."""
    return SafetyFilter(
        LOW,
        HIGH,
        draw(quats()),
        orientation_cone=draw(st.floats(0.01, math.pi / 2)),
        max_step_pos=draw(st.floats(1e-3, 0.2)),
        max_step_rot=draw(st.floats(1e-3, 3.5)),
        gripper_min_interval_s=draw(st.floats(0.0, 1.0)),
        force_limit=draw(st.floats(1.0, 50.0)),
        force_backoff=draw(st.floats(0.0, 0.05)),
    )


@st.composite
def steps(draw: st.DrawFn) -> dict:
    step = {
        "target_pos": draw(positions()),
        "target_quat": draw(quats()),
        "gripper": draw(st.floats(-1.5, 1.5)),
        "measured_pos": draw(positions()),
        "measured_quat": draw(quats()),
        "measured_force": draw(forces()),
        "dt": draw(st.floats(0.0, 0.4)),
    }
    # About one step in five has one corrupted input: NaN/inf in any field, or an all-zero quaternion.
    if draw(st.integers(0, 4)) == 0:
        name = draw(st.sampled_from(["target_pos", "target_quat", "gripper", "measured_pos", "measured_quat",
                                     "measured_force", "dt"]))
        bad = draw(st.sampled_from(SPECIAL + ["zero"] if name.endswith("quat") else SPECIAL))
        if bad == "zero":
            step[name] = np.zeros(4)
        elif isinstance(step[name], np.ndarray):
            step[name] = step[name].copy()
            step[name][draw(st.integers(0, len(step[name]) - 1))] = bad
        else:
            step[name] = bad
    return step


def is_corrupt(step: dict) -> bool:
    arrays = [step[k] for k in ("target_pos", "target_quat", "measured_pos", "measured_quat", "measured_force")]
    finite = all(np.all(np.isfinite(a)) for a in arrays) and math.isfinite(step["gripper"])
    return not (finite and math.isfinite(step["dt"])) or not np.any(step["target_quat"]) or not np.any(
        step["measured_quat"]
    )


# --------------------------------------------------------------------------------------------- properties


@settings(max_examples=300, deadline=None)
@given(
    f=filters(),
    start_pos=st.one_of(positions(), st.tuples(coords(1.0), coords(1.0), coords(1.0)).map(np.array)),
    start_quat=quats(),
    start_closed=st.booleans(),
    sequence=st.lists(steps(), min_size=1, max_size=30),
)
def test_invariants_hold_for_any_input_sequence(
    f: SafetyFilter, start_pos: np.ndarray, start_quat: np.ndarray, start_closed: bool, sequence: list[dict]
) -> None:
    t = 100.0
    f.reset(start_pos, start_quat, start_closed, t)
    prev_pos, prev_quat, prev_closed = start_pos.astype(np.float64), unit(start_quat), start_closed
    low, high, nominal, cone = f.workspace_low, f.workspace_high, f.nominal_quat, f.orientation_cone
    last_toggle = -math.inf
    flag_totals = dict.fromkeys(FLAG_NAMES, 0)
    for step in sequence:
        now = t + step["dt"]
        r = f.filter(step["target_pos"], step["target_quat"], step["gripper"], step["measured_pos"],
                     step["measured_quat"], step["measured_force"], now)
        if math.isfinite(now):
            t = now
        for name in FLAG_NAMES:
            flag_totals[name] += getattr(r, name)

        # Outputs: finite, unit quaternion on the w >= 0 hemisphere.
        assert r.pos.shape == (3,) and r.quat.shape == (4,)
        assert np.all(np.isfinite(r.pos)) and np.all(np.isfinite(r.quat))
        assert abs(np.linalg.norm(r.quat) - 1.0) < TOL and r.quat[0] >= 0.0

        # Non-finite input holds everything exactly; finite input is never reported as non-finite.
        assert r.nonfinite == is_corrupt(step)
        if r.nonfinite:
            assert np.array_equal(r.pos, prev_pos) and r.gripper_closed == prev_closed
            assert quat_angle(r.quat, prev_quat) < TOL

        # Step limits from the previous command.
        assert np.linalg.norm(r.pos - prev_pos) <= f.max_step_pos + TOL
        assert quat_angle(r.quat, prev_quat) <= f.max_step_rot + TOL

        # Box: inside once inside; outside, the distance never grows.
        d_prev, d_now = box_distance(prev_pos, low, high), box_distance(r.pos, low, high)
        if d_prev <= TOL:
            assert d_now <= TOL
        else:
            assert d_now <= d_prev + TOL
            assert r.outside_recovery or r.nonfinite

        # Cone: inside once inside; outside, the excess angle never grows.
        e_prev = max(quat_angle(nominal, prev_quat) - cone, 0.0)
        e_now = max(quat_angle(nominal, r.quat) - cone, 0.0)
        assert e_now <= (TOL if e_prev <= TOL else e_prev + TOL)

        # Force backoff from inside the box never moves the command into the contact.
        force = step["measured_force"]
        if r.force_backoff and d_prev <= TOL:
            direction = force / np.max(np.abs(force))
            direction = direction / np.linalg.norm(direction)
            assert (r.pos - prev_pos) @ direction >= -TOL

        # Gripper: toggles only on a request beyond the threshold, never twice within the interval.
        if r.gripper_closed != prev_closed:
            assert step["gripper"] > 0.5 if r.gripper_closed else step["gripper"] < -0.5
            assert now - last_toggle >= f.gripper_min_interval_s
            last_toggle = now
        prev_pos, prev_quat, prev_closed = r.pos, r.quat, r.gripper_closed

    counts = f.episode_counts()
    assert counts == {"steps": len(sequence), **flag_totals}


@settings(max_examples=150, deadline=None)
@given(f=filters(), start_pos=positions(), start_quat=quats(), sequence=st.lists(steps(), min_size=1, max_size=20))
def test_a_preview_is_the_step_it_previews_and_changes_nothing(
    f: SafetyFilter, start_pos: np.ndarray, start_quat: np.ndarray, sequence: list[dict]
) -> None:
    # commit=False (a control loop's cache warm-up): the same result as the real step, and the filter afterwards
    # is as if the preview had not run: same command, counts and gripper toggle time.
    t = 100.0
    f.reset(start_pos, start_quat, False, t)
    twin = copy.deepcopy(f)
    for step in sequence:
        t += step["dt"] if math.isfinite(step["dt"]) else 0.0
        args = (step["target_pos"], step["target_quat"], step["gripper"], step["measured_pos"],
                step["measured_quat"], step["measured_force"], t)
        before = (f.command, f.episode_counts())
        preview = f.filter(*args, commit=False)
        after = (f.command, f.episode_counts())
        assert np.array_equal(before[0][0], after[0][0]) and np.array_equal(before[0][1], after[0][1])
        assert before[0][2] == after[0][2] and before[1] == after[1]
        real, reference = f.filter(*args), twin.filter(*args)  # twin: the same sequence, never previewed
        for r in (real, reference):
            assert np.array_equal(preview.pos, r.pos) and np.array_equal(preview.quat, r.quat)
            assert preview.gripper_closed == r.gripper_closed and preview.flags() == r.flags()


# --------------------------------------------------------------------------------------------- examples


def test_nan_target_holds_last_command_and_counts_nonfinite() -> None:
    f = make_filter()
    f.reset(INSIDE, DOWN, False, 0.0)
    first = f.filter(INSIDE + [0.01, 0, 0], DOWN, 1.0, INSIDE, DOWN, np.zeros(3), 1.0)
    assert first.gripper_closed and not first.nonfinite
    held = f.filter([math.nan, 0.0, 0.3], DOWN, -1.0, INSIDE, DOWN, np.zeros(3), 2.0)
    assert held.nonfinite
    assert np.array_equal(held.pos, first.pos) and np.array_equal(held.quat, first.quat)
    assert held.gripper_closed  # the open request came with a NaN target: not trusted either
    inf_force = f.filter(INSIDE, DOWN, 0.0, INSIDE, DOWN, [0.0, math.inf, 0.0], 3.0)
    assert inf_force.nonfinite and np.array_equal(inf_force.pos, first.pos)
    assert f.episode_counts()["nonfinite"] == 2 and f.episode_counts()["steps"] == 3


def test_force_above_limit_backs_off_along_the_force() -> None:
    f = make_filter(force_limit=30.0, force_backoff=0.005)
    f.reset(INSIDE, DOWN, False, 0.0)
    # Pressing on the table: the external force is +z; the policy still asks to go down by 1 cm.
    r = f.filter(INSIDE - [0, 0, 0.01], DOWN, 0.0, INSIDE, DOWN, [0.0, 0.0, 45.0], 0.1)
    assert r.force_backoff
    np.testing.assert_allclose(r.pos, INSIDE + [0, 0, 0.005], atol=1e-12)
    # Sideways motion across the force is kept; only the push into it is removed.
    r2 = f.filter(r.pos + [0.01, 0, -0.01], DOWN, 0.0, r.pos, DOWN, [0.0, 0.0, 45.0], 0.2)
    np.testing.assert_allclose(r2.pos, r.pos + [0.01, 0, 0.005], atol=1e-12)
    # Below the limit the target is followed.
    r3 = f.filter(r2.pos - [0, 0, 0.01], DOWN, 0.0, r2.pos, DOWN, [0.0, 0.0, 29.0], 0.3)
    assert not r3.force_backoff
    np.testing.assert_allclose(r3.pos, r2.pos - [0, 0, 0.01], atol=1e-12)
    # An oblique force: the command moves along it.
    force = np.array([30.0, -30.0, 10.0])
    r4 = f.filter(r3.pos, DOWN, 0.0, r3.pos, DOWN, force, 0.4)
    np.testing.assert_allclose(r4.pos - r3.pos, 0.005 * force / np.linalg.norm(force), atol=1e-12)


def test_force_backoff_stays_inside_the_box() -> None:
    f = make_filter(force_limit=30.0, force_backoff=0.005)
    top = np.array([0.45, 0.0, HIGH[2]])
    f.reset(top, DOWN, False, 0.0)
    r = f.filter(top, DOWN, 0.0, top, DOWN, [0.0, 0.0, 100.0], 0.1)
    assert r.force_backoff and r.pos[2] <= HIGH[2]


def test_counts_reset_on_reset() -> None:
    f = make_filter()
    f.reset(INSIDE, DOWN, False, 0.0)
    f.filter([5.0, 0.0, 0.3], DOWN, 0.0, INSIDE, DOWN, np.zeros(3), 0.1)
    f.filter([math.nan] * 3, DOWN, 0.0, INSIDE, DOWN, np.zeros(3), 0.2)
    counts = f.episode_counts()
    assert counts["steps"] == 2 and counts["box"] == 1 and counts["step_pos"] == 1 and counts["nonfinite"] == 1
    f.reset(INSIDE, DOWN, False, 1.0)
    assert f.episode_counts() == dict.fromkeys(("steps", *FLAG_NAMES), 0)


def test_episode_starting_outside_the_box_walks_back_at_the_step_limit() -> None:
    f = make_filter(max_step_pos=0.03)
    start = np.array([0.45, 0.0, HIGH[2] + 0.1])  # 10 cm above the box
    f.reset(start, DOWN, False, 0.0)
    zs = []
    for i in range(6):
        r = f.filter([0.45, 0.0, 1.0], DOWN, 0.0, start, DOWN, np.zeros(3), 0.1 * (i + 1))  # target above too
        zs.append(r.pos[2])
        assert r.outside_recovery
    np.testing.assert_allclose(zs[:3], HIGH[2] + np.array([0.07, 0.04, 0.01]), atol=1e-12)
    assert zs[3] == pytest.approx(HIGH[2]) and zs[4] == pytest.approx(HIGH[2])


def test_episode_starting_outside_the_cone_walks_back_at_the_step_limit() -> None:
    f = make_filter(max_step_rot=0.1)
    cone = EnvConfig().orientation_cone
    tilted = qmul(DOWN, rotvec_quat(np.array([cone + 0.35, 0.0, 0.0])))
    f.reset(INSIDE, tilted, False, 0.0)
    angles = [quat_angle(DOWN, tilted)]
    for i in range(8):  # 0.70 rad away: seven steps of 0.1, then there
        r = f.filter(INSIDE, DOWN, 0.0, INSIDE, tilted, np.zeros(3), 0.1 * (i + 1))
        angles.append(quat_angle(DOWN, r.quat))
    np.testing.assert_allclose(np.diff(angles)[:7], -0.1, atol=1e-9)
    assert angles[-1] == pytest.approx(0.0, abs=1e-9)


def test_target_outside_the_cone_is_clipped_to_its_rim() -> None:
    f = make_filter(max_step_rot=3.0)
    f.reset(INSIDE, DOWN, False, 0.0)
    cone = EnvConfig().orientation_cone
    r = f.filter(INSIDE, qmul(DOWN, rotvec_quat(np.array([0.0, 1.0, 0.0]))), 0.0, INSIDE, DOWN, np.zeros(3), 0.1)
    assert r.cone and not r.step_rot
    assert quat_angle(DOWN, r.quat) == pytest.approx(cone, abs=1e-12)


def test_gripper_toggles_are_rate_limited_by_the_injected_clock() -> None:
    f = make_filter(gripper_min_interval_s=0.5)
    f.reset(INSIDE, DOWN, False, 10.0)
    step = lambda g, now: f.filter(INSIDE, DOWN, g, INSIDE, DOWN, np.zeros(3), now)  # noqa: E731
    assert step(1.0, 10.0).gripper_closed  # the first toggle of an episode is allowed at once
    r = step(-1.0, 10.2)
    assert r.gripper_closed and r.gripper_rate
    assert step(0.0, 10.3).gripper_closed  # in the dead band: keep, no toggle requested
    r = step(-1.0, 10.5)
    assert not r.gripper_closed and not r.gripper_rate
    assert f.episode_counts()["gripper_rate"] == 1


def test_huge_values_are_clipped_without_overflow() -> None:
    f = make_filter(max_step_pos=1.0)
    f.reset(INSIDE, DOWN, False, 0.0)
    r = f.filter([1e30, -1e30, 1e308], [1e30, 1e30, 0.0, 0.0], 0.0, [1e30] * 3, DOWN, [0.0, 0.0, 1e308], 0.1)
    assert np.all(np.isfinite(r.pos)) and np.all(np.isfinite(r.quat))
    assert np.all(r.pos >= LOW) and np.all(r.pos <= HIGH)
    assert r.box and r.force_backoff and r.outside_recovery and not r.nonfinite
    assert abs(np.linalg.norm(r.quat) - 1.0) < 1e-12


def test_result_is_immutable() -> None:
    f = make_filter()
    f.reset(INSIDE, DOWN, False, 0.0)
    r = f.filter(INSIDE, DOWN, 0.0, INSIDE, DOWN, np.zeros(3), 0.1)
    assert isinstance(r, FilterResult) and not r.clipped
    with pytest.raises(ValueError):
        r.pos[0] = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.gripper_closed = True  # type: ignore[misc]


def test_filter_before_reset_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="reset"):
        make_filter().filter(INSIDE, DOWN, 0.0, INSIDE, DOWN, np.zeros(3), 0.0)


def test_reset_rejects_a_nonfinite_pose() -> None:
    f = make_filter()
    with pytest.raises(ValueError, match="measured_pos"):
        f.reset([math.nan, 0.0, 0.3], DOWN, False, 0.0)
    with pytest.raises(ValueError, match="measured_quat"):
        f.reset(INSIDE, np.zeros(4), False, 0.0)


def test_wrong_shapes_name_the_argument() -> None:
    f = make_filter()
    f.reset(INSIDE, DOWN, False, 0.0)
    with pytest.raises(ValueError, match=r"target_quat: expected shape \(4,\), got shape \(3,\)"):
        f.filter(INSIDE, [1.0, 0.0, 0.0], 0.0, INSIDE, DOWN, np.zeros(3), 0.1)


@pytest.mark.parametrize(
    ("cfg", "field", "seen"),
    [
        (EnvConfig(workspace_low=(0.7, -0.25, 0.0)), "env.workspace_low", "0.7"),
        (EnvConfig(workspace_high=(0.65, math.inf, 0.5)), "env.workspace_high", "inf"),
        (EnvConfig(workspace_low=(0.25, 0.0)), "env.workspace_low", "(0.25, 0.0)"),
        (EnvConfig(orientation_cone=2.0), "env.orientation_cone", "2.0"),
        (EnvConfig(orientation_cone=0.0), "env.orientation_cone", "0.0"),
        (EnvConfig(safety=SafetyConfig(max_step_pos=0.0)), "env.safety.max_step_pos", "0.0"),
        (EnvConfig(safety=SafetyConfig(max_step_rot=math.nan)), "env.safety.max_step_rot", "nan"),
        (EnvConfig(safety=SafetyConfig(gripper_min_interval_s=-1.0)), "env.safety.gripper_min_interval_s",
         "-1.0"),
        (EnvConfig(safety=SafetyConfig(force_limit=-5.0)), "env.safety.force_limit", "-5.0"),
        (EnvConfig(safety=SafetyConfig(force_backoff=math.inf)), "env.safety.force_backoff", "inf"),
    ],
)
def test_bad_limits_name_the_config_field(cfg: EnvConfig, field: str, seen: str) -> None:
    with pytest.raises(ValueError) as e:
        SafetyFilter.from_config(cfg, DOWN)
    assert field in str(e.value) and seen in str(e.value)
    # Built from plain arguments (as the robot bridge may), the filter still refuses the same limit.
    s = cfg.safety
    with pytest.raises(ValueError, match=field.rpartition(".")[2]) as plain:
        SafetyFilter(cfg.workspace_low, cfg.workspace_high, DOWN, orientation_cone=cfg.orientation_cone,
                     max_step_pos=s.max_step_pos, max_step_rot=s.max_step_rot,
                     gripper_min_interval_s=s.gripper_min_interval_s, force_limit=s.force_limit,
                     force_backoff=s.force_backoff)
    assert seen.strip("()").split(",")[0] in str(plain.value) or "shape (2,)" in str(plain.value)


def test_bad_nominal_quat_is_an_error() -> None:
    with pytest.raises(ValueError, match="nominal_quat"):
        SafetyFilter.from_config(EnvConfig(), np.zeros(4))


def test_safety_imports_neither_mujoco_nor_jax() -> None:
    code = "import sys, serl_stack.safety; assert not {'mujoco', 'jax'} & set(sys.modules), sys.modules.keys()"
    subprocess.run([sys.executable, "-c", code], check=True)
