"""The SafetyFilter: the last word on every TCP pose and gripper command before it reaches a robot, sim or real.

Owns: the workspace box, the orientation cone, the per-step change limits, holding on non-finite input, the
gripper toggle rate, backing off under excessive contact force, recovering (at the step limit, never by a jump)
when an episode starts outside the limits, and reporting every decision (`FilterResult` flags, per-episode
counts). Pure Python math with explicit state and an injected time (`now`), so it is the same code in sim, on
the real arm and in the property tests; it never reads a clock and never depends on MuJoCo. It runs on every
control step, so vectors and quaternions are tuples of floats inside (numpy on 3- and 4-element arrays cost ~5x:
0.1 ms a step against 0.02 ms); arrays only at the edges. tests/test_safety_filter_reference.py checks it against
a numpy transcription of the same rules.

Invariants (checked by tests/test_safety_filter.py for arbitrary input sequences, NaN/inf/1e30 included):
- every output is finite and the quaternion is unit-norm (w >= 0);
- each step moves the command by at most `max_step_pos` (m) and `max_step_rot` (rad) from the previous one;
- the command is inside the box and the cone, or (when the episode started outside) its distance to them does
  not grow;
- the gripper command never toggles twice within `gripper_min_interval_s`.

Quaternions are w-first (wxyz), base frame, like everywhere in serl_stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from serl_stack.config import EnvConfig, check_section

FLAG_NAMES: tuple[str, ...] = (
    "box",
    "cone",
    "step_pos",
    "step_rot",
    "gripper_rate",
    "force_backoff",
    "nonfinite",
    "outside_recovery",
)
"""What `FilterResult` reports per step and `SafetyFilter.episode_counts` counts per episode."""

_GRIPPER_CLOSE, _GRIPPER_OPEN = 0.5, -0.5  # DESIGN.md action contract: > 0.5 closes, < -0.5 opens, else holds
_TOL = 1e-12
"""Rounding slack (rad) when checking a candidate orientation against the cone; far below any physical effect."""

Vec3 = tuple[float, float, float]
Quat = tuple[float, float, float, float]


# ------------------------------------------------------------------------------------------- vector helpers
# Private, on tuples of floats: serl_stack.envs.controller has quaternion helpers, but importing it pulls in MuJoCo.


def _norm(x: float, y: float, z: float) -> float:
    """Euclidean norm that cannot overflow for finite input (1e200 squared would be inf)."""
    m = max(abs(x), abs(y), abs(z))
    if m == 0.0:
        return 0.0
    x, y, z = x / m, y / m, z / m
    return m * math.sqrt(x * x + y * y + z * z)


def _unit_quat(q: Quat) -> Quat | None:
    """`q` scaled to unit norm with w >= 0, or None when it is not finite or is zero (no rotation it could mean)."""
    w, x, y, z = q
    if not (math.isfinite(w) and math.isfinite(x) and math.isfinite(y) and math.isfinite(z)):
        return None
    m = max(abs(w), abs(x), abs(y), abs(z))
    if m == 0.0:
        return None
    w, x, y, z = w / m, x / m, y / m, z / m  # rescale first so huge or subnormal components neither over- nor underflow
    n = math.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / n, x / n, y / n, z / n
    return (-w, -x, -y, -z) if w < 0 else (w, x, y, z)


def _qmul(a: Quat, b: Quat) -> Quat:
    """Hamilton product a * b (apply b, then a), wxyz."""
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return (
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    )


def _relative(a: Quat, b: Quat) -> tuple[float, Vec3]:
    """(angle in [0, pi], unit axis in a's frame) of the shortest rotation r with a * r = b."""
    rw, rx, ry, rz = _qmul((a[0], -a[1], -a[2], -a[3]), b)
    if rw < 0:
        rw, rx, ry, rz = -rw, -rx, -ry, -rz  # the other cover of the same rotation: the short way round
    s = math.sqrt(rx * rx + ry * ry + rz * rz)
    # atan2 of both parts stays accurate near 0 and near pi, where acos(w) would lose digits.
    angle = 2.0 * math.atan2(s, rw)
    return angle, ((rx / s, ry / s, rz / s) if s > 0.0 else (0.0, 0.0, 0.0))


def _angle(a: Quat, b: Quat) -> float:
    """Rotation angle (rad) between two unit quaternions."""
    return _relative(a, b)[0]


def _rotate_toward(a: Quat, b: Quat, max_angle: float) -> tuple[Quat, bool]:
    """Slerp from `a` toward `b` by at most `max_angle` (rad); returns (quaternion, whether it was limited)."""
    angle, (x, y, z) = _relative(a, b)
    if angle <= max_angle:
        return b, False
    half = 0.5 * max_angle
    s = math.sin(half)
    q = _unit_quat(_qmul(a, (math.cos(half), s * x, s * y, s * z)))
    assert q is not None  # product of two unit quaternions
    return q, True


def _clip(p: Vec3, low: Vec3, high: Vec3) -> Vec3:
    """`p` clipped into [low, high] per axis (np.clip for finite input)."""
    return (min(max(p[0], low[0]), high[0]), min(max(p[1], low[1]), high[1]), min(max(p[2], low[2]), high[2]))


# ------------------------------------------------------------------------------------------- validation


def _finite(value: Any, name: str, low: float, *, strict: bool = True) -> float:
    """`value` as a float that is finite and > low (or >= low when not strict); the error names the field."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a finite number, got {value!r}") from None
    ok = math.isfinite(v) and (v > low if strict else v >= low)
    if not ok:
        raise ValueError(f"{name}: expected a finite number {'>' if strict else '>='} {low:g}, got {value!r}")
    return v


def _floats(value: Any, n: int, name: str) -> tuple[float, ...]:
    """`value` as n Python floats (float64; any values, finite or not); wrong shapes are errors."""
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {n} numbers, got {value!r}") from None
    if a.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got shape {a.shape}")
    return tuple(a.tolist())


def _vec3(value: Any, name: str) -> Vec3:
    x, y, z = _floats(value, 3, name)
    return x, y, z


def _quat(value: Any, name: str) -> Quat:
    w, x, y, z = _floats(value, 4, name)
    return w, x, y, z


def _frozen(values: tuple[float, ...]) -> np.ndarray:
    a = np.array(values)
    a.setflags(write=False)
    return a


# ------------------------------------------------------------------------------------------- the filter


@dataclass(frozen=True)
class FilterResult:
    """One filtered command and what the filter did to produce it (each flag True when that rule acted)."""

    pos: np.ndarray
    """Commanded TCP position (3,), metres, base frame (read-only)."""
    quat: np.ndarray
    """Commanded TCP orientation (4,) wxyz, unit norm, w >= 0 (read-only)."""
    gripper_closed: bool
    """Commanded gripper state: True = closed."""
    box: bool = False
    """The target position was outside the workspace box and was clipped to it."""
    cone: bool = False
    """The target orientation was outside the orientation cone and was clipped to it."""
    step_pos: bool = False
    """The position change was limited to max_step_pos."""
    step_rot: bool = False
    """The orientation change was limited to max_step_rot."""
    gripper_rate: bool = False
    """A gripper toggle came sooner than gripper_min_interval_s after the last one and was held."""
    force_backoff: bool = False
    """The measured force exceeded force_limit, so the command backed off along it."""
    nonfinite: bool = False
    """An input was NaN/inf (or a zero quaternion): the last safe command was held unchanged."""
    outside_recovery: bool = False
    """The last command or the measured pose was outside the box or cone; the command is moving back."""

    def flags(self) -> dict[str, bool]:
        return {name: getattr(self, name) for name in FLAG_NAMES}

    @property
    def clipped(self) -> bool:
        """Whether any rule acted on this step."""
        return any(self.flags().values())


class SafetyFilter:
    """Turns a requested TCP pose and gripper request into the command that is safe to send.

    Per step, in order: non-finite input anywhere holds the last command; the target is clipped into the box
    and the cone; under excessive force the position target is replaced by one that does not push into the
    contact and backs off along the force; the change from the last command is limited to the step limits
    (position along the straight line, orientation by slerp); gripper toggles are rate-limited. The last command
    is the reference for every limit, so an episode that starts outside the box or cone walks back at the step
    limit instead of jumping.
    """

    def __init__(
        self,
        workspace_low: Any,
        workspace_high: Any,
        nominal_quat: Any,
        *,
        orientation_cone: float,
        max_step_pos: float,
        max_step_rot: float,
        gripper_min_interval_s: float,
        force_limit: float,
        force_backoff: float,
    ) -> None:
        low = _vec3(workspace_low, "workspace_low")
        high = _vec3(workspace_high, "workspace_high")
        for name, v in (("workspace_low", low), ("workspace_high", high)):
            if not all(map(math.isfinite, v)):
                raise ValueError(f"{name}: expected 3 finite numbers (x, y, z), got {list(v)}")
        if any(lo >= hi for lo, hi in zip(low, high, strict=True)):
            raise ValueError(
                f"workspace_low must be below workspace_high on every axis, got {list(low)} and {list(high)}"
            )
        nominal = _unit_quat(_quat(nominal_quat, "nominal_quat"))
        if nominal is None:
            raise ValueError(f"nominal_quat: expected a finite, non-zero quaternion (w, x, y, z), got {nominal_quat!r}")
        cone = _finite(orientation_cone, "orientation_cone", 0.0)
        # Within a cone of at most 90 degrees any two orientations are joined by a short slerp that stays inside
        # it (a cap of radius <= pi/4 on the unit-quaternion sphere is convex), so step limiting cannot leave it.
        if cone > math.pi / 2:
            raise ValueError(f"orientation_cone: expected at most pi/2 rad for the safety filter, got {cone}")
        self._low, self._high, self._nominal = low, high, nominal
        self.workspace_low, self.workspace_high = _frozen(low), _frozen(high)
        """The box (read-only arrays; the filter computes with float copies)."""
        self.nominal_quat = _frozen(nominal)
        self.orientation_cone = cone
        self.max_step_pos = _finite(max_step_pos, "max_step_pos", 0.0)
        self.max_step_rot = _finite(max_step_rot, "max_step_rot", 0.0)
        self.gripper_min_interval_s = _finite(
            gripper_min_interval_s, "gripper_min_interval_s", 0.0, strict=False
        )
        self.force_limit = _finite(force_limit, "force_limit", 0.0)
        self.force_backoff = _finite(force_backoff, "force_backoff", 0.0, strict=False)

        self._pos: Vec3 | None = None  # last command; None until reset()
        self._quat: Quat = nominal
        self._gripper = False
        self._last_toggle = -math.inf
        self._counts: dict[str, int] = dict.fromkeys(("steps", *FLAG_NAMES), 0)

    @classmethod
    def from_config(cls, env_cfg: EnvConfig, nominal_quat: Any) -> SafetyFilter:
        """The filter for an env config: its box, its cone around `nominal_quat` and `env_cfg.safety` limits. The
        config is checked by its own declarations first (`config.check_section`), so a bad limit is named as the
        config field; the constructor's checks below guard filters built from plain arguments (the robot bridge)."""
        check_section(env_cfg)
        s = env_cfg.safety
        return cls(
            env_cfg.workspace_low,
            env_cfg.workspace_high,
            nominal_quat,
            orientation_cone=env_cfg.orientation_cone,
            max_step_pos=s.max_step_pos,
            max_step_rot=s.max_step_rot,
            gripper_min_interval_s=s.gripper_min_interval_s,
            force_limit=s.force_limit,
            force_backoff=s.force_backoff,
        )

    # --------------------------------------------------------------------------------------- state

    def reset(self, measured_pos: Any, measured_quat: Any, gripper_closed: bool, now: float) -> None:
        """Start an episode from the measured pose (even one outside the box or cone: the next commands walk
        back at the step limit). The gripper rate limit starts fresh; the env's reset settles the gripper."""
        pos = _vec3(measured_pos, "measured_pos")
        if not all(map(math.isfinite, pos)):
            raise ValueError(f"measured_pos: expected 3 finite numbers at reset, got {list(pos)}")
        quat = _unit_quat(_quat(measured_quat, "measured_quat"))
        if quat is None:
            raise ValueError(f"measured_quat: expected a finite, non-zero quaternion at reset, got {measured_quat!r}")
        if not math.isfinite(float(now)):
            raise ValueError(f"now: expected a finite time at reset, got {now!r}")
        self._pos, self._quat, self._gripper = pos, quat, bool(gripper_closed)
        self._last_toggle = -math.inf
        self._counts = dict.fromkeys(self._counts, 0)

    def episode_counts(self) -> dict[str, int]:
        """Steps filtered this episode and, per flag in FLAG_NAMES, how many of them raised it."""
        return dict(self._counts)

    @property
    def command(self) -> tuple[np.ndarray, np.ndarray, bool]:
        """The last command (pos, quat, gripper closed): what "hold" sends (fresh arrays, the caller's to keep)."""
        pos = self._require_reset()
        return np.array(pos), np.array(self._quat), self._gripper

    def _require_reset(self) -> Vec3:
        if self._pos is None:
            raise RuntimeError("SafetyFilter: reset(measured_pos, measured_quat, gripper_closed, now) must come first")
        return self._pos

    def _cone_excess(self, q: Quat) -> float:
        return max(_angle(self._nominal, q) - self.orientation_cone, 0.0)

    def _outside(self, pos: Vec3, quat: Quat) -> bool:
        (x, y, z), (lx, ly, lz), (hx, hy, hz) = pos, self._low, self._high
        return x < lx or y < ly or z < lz or x > hx or y > hy or z > hz or self._cone_excess(quat) > _TOL

    def _emit(self, pos: Vec3, quat: Quat, gripper: bool, flags: dict[str, bool], commit: bool) -> FilterResult:
        if not commit:
            return FilterResult(_frozen(pos), _frozen(quat), gripper, **flags)
        self._pos, self._quat, self._gripper = pos, quat, gripper
        counts = self._counts
        counts["steps"] += 1
        for name, raised in flags.items():
            if raised:
                counts[name] += 1
        return FilterResult(_frozen(pos), _frozen(quat), gripper, **flags)

    # --------------------------------------------------------------------------------------- the step

    def filter(
        self,
        target_pos: Any,
        target_quat: Any,
        gripper: float,
        measured_pos: Any,
        measured_quat: Any,
        measured_force: Any,
        now: float,
        commit: bool = True,
    ) -> FilterResult:
        """The safe command for a requested target pose and gripper request, given the measured state.

        `gripper` follows the action contract (> 0.5 close, < -0.5 open, else keep); `measured_force` is the
        external force on the hand in the base frame (N; pressing down on the table reads +z); `now` is the time
        (s) on any monotonic clock, used only for the gripper rate limit. `commit=False` computes the same result
        and changes nothing (no command, toggle time or count is kept): a control loop's cache warm-up
        (`robot_bridge.realtime.wait_until`'s `warm`).
        """
        last_pos = self._require_reset()
        last_quat = self._quat
        tp = _vec3(target_pos, "target_pos")
        mp = _vec3(measured_pos, "measured_pos")
        force = _vec3(measured_force, "measured_force")
        tq = _unit_quat(_quat(target_quat, "target_quat"))
        mq = _unit_quat(_quat(measured_quat, "measured_quat"))
        g, t = float(gripper), float(now)
        flags = dict.fromkeys(FLAG_NAMES, False)

        finite = all(map(math.isfinite, (*tp, *mp, *force, g, t)))
        if not finite or tq is None or mq is None:
            # Nothing computed from a NaN can be trusted, not even the parts that look fine: hold everything.
            flags["nonfinite"] = True
            return self._emit(last_pos, last_quat, self._gripper, flags, commit)

        low, high = self._low, self._high
        flags["outside_recovery"] = self._outside(last_pos, last_quat) or self._outside(mp, mq)

        # Position: the box first (so later steps only aim at allowed points), then force, then the step limit.
        goal = _clip(tp, low, high)
        flags["box"] = goal != tp
        fmag = _norm(*force)
        if fmag > self.force_limit:
            flags["force_backoff"] = True
            goal = self._backoff_goal(last_pos, goal, (force[0] / fmag, force[1] / fmag, force[2] / fmag))
        lx, ly, lz = last_pos
        dx, dy, dz = goal[0] - lx, goal[1] - ly, goal[2] - lz
        dist = _norm(dx, dy, dz)
        if dist > self.max_step_pos:
            flags["step_pos"] = True
            scale = self.max_step_pos / dist
            dx, dy, dz = dx * scale, dy * scale, dz * scale
        # The segment from the last command to `goal` (inside the box) lies in the box enlarged to hold the last
        # command, so this clip only removes rounding; it is also the backstop that keeps a command inside the
        # box (or, per axis, no further out than the last one) whatever the lines above computed.
        pos = _clip((lx + dx, ly + dy, lz + dz), (min(low[0], lx), min(low[1], ly), min(low[2], lz)),
                    (max(high[0], lx), max(high[1], ly), max(high[2], lz)))

        # Orientation: the cone, then slerp by at most max_step_rot.
        goal_q, flags["cone"] = _rotate_toward(self._nominal, tq, self.orientation_cone)
        quat, flags["step_rot"] = _rotate_toward(last_quat, goal_q, self.max_step_rot)
        if self._cone_excess(quat) > self._cone_excess(last_quat) + _TOL:
            # The short slerp toward the goal can bend away from a cone the command is recovering into; walking
            # straight toward the nominal orientation always closes the gap (inside the cone this holds still).
            back, _ = _rotate_toward(self._nominal, last_quat, self.orientation_cone)
            quat, _ = _rotate_toward(last_quat, back, self.max_step_rot)
            flags["step_rot"] = True

        gripper_closed = self._gripper
        want = True if g > _GRIPPER_CLOSE else False if g < _GRIPPER_OPEN else self._gripper
        if want != self._gripper:
            if t - self._last_toggle >= self.gripper_min_interval_s:
                gripper_closed = want
                if commit:
                    self._last_toggle = t
            else:
                flags["gripper_rate"] = True
        return self._emit(pos, quat, gripper_closed, flags, commit)

    def _backoff_goal(self, last_pos: Vec3, goal: Vec3, direction: Vec3) -> Vec3:
        """A position goal that backs off along the measured force (unit `direction`) while it exceeds the limit.

        The policy keeps its motion across the force, loses any motion into it, and the goal moves at least
        force_backoff along it. If the box clips that into a net push against the force, only the backoff is
        kept: per axis, clipping a move that starts inside the box can only shorten it, never reverse it.
        """
        (lx, ly, lz), (ux, uy, uz) = last_pos, direction
        dx, dy, dz = goal[0] - lx, goal[1] - ly, goal[2] - lz
        along = dx * ux + dy * uy + dz * uz
        push = max(along, self.force_backoff) - along
        candidate = _clip((lx + (dx + push * ux), ly + (dy + push * uy), lz + (dz + push * uz)), self._low, self._high)
        if (candidate[0] - lx) * ux + (candidate[1] - ly) * uy + (candidate[2] - lz) * uz >= 0.0:
            return candidate
        b = self.force_backoff
        return _clip((lx + b * ux, ly + b * uy, lz + b * uz), self._low, self._high)
