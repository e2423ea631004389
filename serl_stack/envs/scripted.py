"""Scripted baseline policies for the sim tasks (demonstrations, conservative-mixing baselines, smoke tests).

Owns: `ReachScripted`, a proportional controller for FrankaReach-v0, `PickCubeScripted`, a top-down grasp
state machine for FrankaPickCube-v0, `PegInsertScripted`, an align-then-descend controller for
FrankaPegInsert-v0, and `make_scripted`, which picks the scripted policy for a config's `env.id` from the
`SCRIPTED` table (so callers never test env names). A policy here is a callable `policy(obs) -> action` on the
DESIGN.md observation dict, returning an action of the env's action shape (7-D; 6-D where the task keeps the
gripper closed), with its action noise if it has any; each also follows the inference module's `Policy` protocol
(`act(obs, key, deterministic)` — the noise-free action when deterministic —, `sample_actions(obs, k, key)`,
`reset()`), so it can be a conservative-mixing baseline or a steering base policy like any learned policy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import mujoco
import numpy as np

from serl_stack.config import EnvConfig
from serl_stack.envs import PEG_INSERT_ID, PICK_CUBE_ID, REACH_ID
from serl_stack.envs.controller import quat_error, quat_from_rotvec, quat_mul
from serl_stack.envs.panda import PANDA, ArmSpec, dh_fk


class ScriptedPolicy(Protocol):
    """What the scripted policies share: called on one observation, an action float32 in [-1, 1] of the env's
    action shape (noise included); and the `serl_stack.inference.Policy` methods."""

    def __call__(self, obs: Mapping[str, Any]) -> np.ndarray: ...

    def act(self, obs: Mapping[str, Any], key: Any = None, deterministic: bool = False) -> np.ndarray: ...

    def sample_actions(self, obs: Mapping[str, Any], k: int, key: Any = None) -> np.ndarray: ...

    def reset(self) -> None: ...


class _ScriptedActing:
    """The `Policy` protocol for a scripted controller: subclasses write `_act(obs, rng)`, which adds their
    action noise only when `rng` is given, and keep `noise` and `rng`. Stateless: `reset()` has nothing to do."""

    noise: float
    rng: np.random.Generator | None
    chunk = 1

    def _act(self, obs: Mapping[str, Any], rng: np.random.Generator | None) -> np.ndarray:
        raise NotImplementedError

    def _noise_rng(self) -> np.random.Generator | None:
        return self.rng if self.noise > 0 else None

    def __call__(self, obs: Mapping[str, Any]) -> np.ndarray:
        return self._act(obs, self._noise_rng())

    def act(self, obs: Mapping[str, Any], key: Any = None, deterministic: bool = False) -> np.ndarray:
        """The controller's action; with `deterministic`, without its noise. The noise comes from the policy's
        own generator (`key` is not used: the scripted controllers need no JAX)."""
        return self._act(obs, None if deterministic else self._noise_rng())

    def sample_actions(self, obs: Mapping[str, Any], k: int, key: Any = None) -> np.ndarray:
        """(k, 1, A): k noisy actions drawn from a generator seeded by `key`'s bits (k copies without noise)."""
        if self.noise <= 0:
            action = self._act(obs, None)
            return np.repeat(action[None, None], k, axis=0)
        rng = self.rng if key is None else np.random.default_rng([int(v) for v in np.asarray(key).reshape(-1)])
        return np.stack([self._act(obs, rng) for _ in range(k)])[:, None, :]

    def reset(self) -> None:
        """A new episode: the scripted controllers read everything off each observation."""


def _check_noise(noise: float, rng: np.random.Generator | None) -> None:
    """What every scripted policy requires of its action noise: a std >= 0, drawn from an explicit generator."""
    if not noise >= 0:
        raise ValueError(f"noise: got {noise!r}, expected >= 0 (std of the action noise)")
    if noise > 0 and rng is None:
        raise ValueError("rng: got None, expected a numpy Generator when noise > 0 (no hidden randomness)")


class ReachScripted(_ScriptedActing):
    """Full speed toward the goal: `a[:3] = clip((goal - tcp) / action_scale_pos (+ noise), -1, 1)`.

    Rotation and gripper are 0 (orientation held, gripper unchanged). With `noise > 0`, Gaussian noise of that
    standard deviation (in action units) is added to the translation before clipping, drawn from `rng`.
    """

    def __init__(self, action_scale_pos: float = 0.02, noise: float = 0.0, rng: np.random.Generator | None = None):
        if not action_scale_pos > 0:
            raise ValueError(f"action_scale_pos: got {action_scale_pos!r}, expected > 0 (metres per unit action)")
        _check_noise(noise, rng)
        self.action_scale_pos = float(action_scale_pos)
        self.noise = float(noise)
        self.rng = rng

    @classmethod
    def from_config(cls, cfg: EnvConfig, noise: float = 0.0, rng: np.random.Generator | None = None) -> ReachScripted:
        """The policy for an env built from `cfg` (its `action_scale_pos`)."""
        return cls(cfg.action_scale_pos, noise, rng)

    def _act(self, obs: Mapping[str, Any], rng: np.random.Generator | None) -> np.ndarray:
        goal = np.asarray(obs["task"]["goal_pos"], np.float64)
        tcp = np.asarray(obs["state"]["tcp_pose"], np.float64)[:3]
        delta = (goal - tcp) / self.action_scale_pos
        if rng is not None:
            delta = delta + rng.normal(0.0, self.noise, 3)
        action = np.zeros(7, np.float32)
        action[:3] = np.clip(delta, -1.0, 1.0)
        return action


class PickCubeScripted(_ScriptedActing):
    """Top-down grasp for FrankaPickCube-v0: a state machine read off each observation alone.

    It keeps no memory between calls, so the phase is recomputed every step from the cube's position in the TCP
    frame and the gripper width, and a cube that slips out is simply approached again:

    - approach (gripper open): move over the cube while turning the gripper to the cube's yaw. A cube looks the
      same every 90 degrees, so the target yaw is the equivalent closest to the nominal one (within +-45 deg),
      clipped a hair inside the orientation cone; a cube turned further is grasped at the clipped yaw anyway (the
      closing pads turn it square). The height target funnels down to the cube's centre as the horizontal and yaw
      errors shrink, so the fingers come down around the cube only once they are over it; while the gripper is
      still opening the TCP does not descend.
    - close: the cube's centre is at the TCP (within `_CLOSE_TOL`): hold there and close.
    - lift: the cube is between the fingers and they are closed on it (width below the cube size plus a margin):
      go up at full speed, gripper closing, until the env ends the episode.

    Translation and rotation are proportional steps toward the targets, in action units and clipped to [-1, 1].
    With `noise > 0`, Gaussian noise of that standard deviation (action units) is added to the six pose
    components before clipping, drawn from `rng`; the gripper command stays binary.
    """

    _CLOSE_TOL = 0.006
    """Largest offset (m, per TCP axis) of the cube's centre from the TCP at which the gripper starts closing."""
    _CLOSED_MARGIN = 0.006
    """The fingers count as closed on the cube below this width (m) beyond the cube size."""
    _FUNNEL_SLOPE = 3.0
    """Height (m) above the cube kept per metre of horizontal error (and per radian of orientation error)."""
    _HOVER = 0.12
    """Highest the funnel holds the TCP above the cube's centre (m)."""

    def __init__(self, action_scale_pos: float = 0.02, action_scale_rot: float = 0.1, orientation_cone: float = 0.35,
                 cube_size: float = 0.04, noise: float = 0.0, rng: np.random.Generator | None = None,
                 spec: ArmSpec = PANDA) -> None:
        for name, value in (("action_scale_pos", action_scale_pos), ("action_scale_rot", action_scale_rot),
                            ("orientation_cone", orientation_cone), ("cube_size", cube_size)):
            if not value > 0:
                raise ValueError(f"{name}: got {value!r}, expected > 0")
        _check_noise(noise, rng)
        self.action_scale_pos = float(action_scale_pos)
        self.action_scale_rot = float(action_scale_rot)
        self.max_yaw = 0.95 * float(orientation_cone)  # inside the cone, so the env's clip never fights the target
        self.cube_size = float(cube_size)
        self.open_width = 2 * spec.finger_stroke
        self.noise = float(noise)
        self.rng = rng
        self.nominal = dh_fk(spec.ready, spec)[1]
        self._mat = np.zeros(9)
        self._nominal_yaw = self._yaw(self.nominal)

    @classmethod
    def from_config(cls, cfg: EnvConfig, noise: float = 0.0,
                    rng: np.random.Generator | None = None) -> PickCubeScripted:
        """The policy for an env built from `cfg` (action scales, orientation cone, cube size)."""
        return cls(cfg.action_scale_pos, cfg.action_scale_rot, cfg.orientation_cone, cfg.pick_cube.cube_size,
                   noise, rng)

    def _yaw(self, quat: np.ndarray) -> float:
        """Heading (rad) of the frame's x axis in the base xy plane."""
        mujoco.mju_quat2Mat(self._mat, quat)
        return float(np.arctan2(self._mat[3], self._mat[0]))

    def _act(self, obs: Mapping[str, Any], rng: np.random.Generator | None) -> np.ndarray:
        tcp = np.asarray(obs["state"]["tcp_pose"], np.float64)
        pos, quat = tcp[:3], tcp[3:] / np.linalg.norm(tcp[3:])
        width = float(np.asarray(obs["state"]["gripper_pos"]).reshape(-1)[0])
        cube = np.asarray(obs["task"]["object_pose"], np.float64)
        cube_pos, cube_quat = cube[:3], cube[3:] / np.linalg.norm(cube[3:])

        quarter = np.pi / 2
        rel_yaw = (self._yaw(cube_quat) - self._nominal_yaw + quarter / 2) % quarter - quarter / 2
        yaw = float(np.clip(rel_yaw, -self.max_yaw, self.max_yaw))
        target_quat = quat_mul(quat_from_rotvec(np.array([0.0, 0.0, yaw])), self.nominal)
        rot_err = quat_error(target_quat, quat)

        mujoco.mju_quat2Mat(self._mat, quat)
        local = self._mat.reshape(3, 3).T @ (cube_pos - pos)  # cube centre in the TCP frame (y: closing axis)
        half = self.cube_size / 2
        between = abs(local[0]) < 0.6 * half and abs(local[1]) < width / 2 + 0.005 and abs(local[2]) < 0.6 * half
        grip = -1.0
        if between and width < self.cube_size + self._CLOSED_MARGIN:  # lift
            target = np.array([cube_pos[0], cube_pos[1], pos[2] + self.action_scale_pos])
            grip = 1.0
        elif between and np.all(np.abs(local) < self._CLOSE_TOL):  # close
            target = cube_pos
            grip = 1.0
        else:  # approach
            xy_err = float(np.linalg.norm(cube_pos[:2] - pos[:2]))
            off = max(xy_err - 0.5 * self._CLOSE_TOL, 0.0) + max(float(np.linalg.norm(rot_err)) - 0.05, 0.0)
            target = cube_pos + np.array([0.0, 0.0, min(self._HOVER, self._FUNNEL_SLOPE * off)])
            if width < self.open_width - 0.01:
                target[2] = max(target[2], pos[2])
        action = np.zeros(7)
        action[:3] = (target - pos) / self.action_scale_pos
        action[3:6] = rot_err / self.action_scale_rot
        if rng is not None:
            action[:6] += rng.normal(0.0, self.noise, 6)
        action[:6] = np.clip(action[:6], -1.0, 1.0)
        action[6] = grip
        return action.astype(np.float32)


class PegInsertScripted(_ScriptedActing):
    """Bring the peg's tip above the hole, line it up, then lower it straight in, the peg's axis held vertical.

    Stateless (a function of the observation alone, so it can take over mid-episode). Off-axis distances are per
    axis (the hole is square). The tip's target is on the hole's axis: `hover` above the rim while the tip is more
    than `near` off it; `low` above the rim once within `near` (so one step down enters the hole as soon as noise
    or tracking lines it up); the hole's bottom once within `align_tol` of the axis or already inside the hole,
    approached at most `descend_speed` (action units) per step. A tip that is far off the axis and below half
    the hover height is first lifted straight up, so it never drags across the fixture. Rotation turns the peg's
    axis toward straight down. The action is 6-D (the env keeps the gripper closed). With `noise > 0`, Gaussian
    noise of that standard deviation (action units) is added to all six entries before clipping, drawn from `rng`.
    Noise rarely hurts: the tip waits `low` above the rim, so a random step that lines it up drops it in.
    """

    def __init__(
        self,
        align_tol: float,
        hole_depth: float,
        action_scale_pos: float = 0.02,
        action_scale_rot: float = 0.1,
        noise: float = 0.0,
        rng: np.random.Generator | None = None,
        hover: float = 0.015,
        near: float = 0.01,
        low: float = 0.002,
        descend_speed: float = 0.25,
    ):
        checks = (("align_tol", align_tol), ("hole_depth", hole_depth), ("hover", hover), ("near", near), ("low", low),
                  ("action_scale_pos", action_scale_pos), ("action_scale_rot", action_scale_rot))
        for name, value in checks:
            if not value > 0:
                raise ValueError(f"{name}: got {value!r}, expected > 0 (metres, or units per unit action)")
        if not 0 < descend_speed <= 1:
            raise ValueError(f"descend_speed: got {descend_speed!r}, expected in (0, 1] (action units)")
        _check_noise(noise, rng)
        self.align_tol, self.hole_depth = float(align_tol), float(hole_depth)
        self.hover, self.near, self.low = float(hover), float(near), float(low)
        self.action_scale_pos, self.action_scale_rot = float(action_scale_pos), float(action_scale_rot)
        self.descend_speed = float(descend_speed)
        self.noise = float(noise)
        self.rng = rng

    @classmethod
    def from_config(
        cls, cfg: EnvConfig, noise: float = 0.0, rng: np.random.Generator | None = None
    ) -> PegInsertScripted:
        """The policy for an env built from `cfg`: lined up to within 3/4 of the tip's play in the hole per axis."""
        p = cfg.peg_insert
        return cls(0.375 * p.clearance, p.hole_depth, cfg.action_scale_pos, cfg.action_scale_rot, noise, rng)

    def _act(self, obs: Mapping[str, Any], rng: np.random.Generator | None) -> np.ndarray:
        hole = np.asarray(obs["task"]["hole_pos"], np.float64)
        peg = np.asarray(obs["task"]["peg_pose"], np.float64)
        tip, (w, x, y, z) = peg[:3], peg[3:]
        axis = np.array([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)])  # peg's z: to the tip
        offset = hole[:2] - tip[:2]
        off_axis = float(np.max(np.abs(offset)))
        # Below the rim this close to the axis, the tip can only be in the hole (the walls are everywhere else).
        inside = tip[2] < hole[2] and off_axis < 2 * self.align_tol
        target = hole.copy()
        speed = 1.0
        if inside or off_axis <= self.align_tol:
            target[2] = hole[2] - self.hole_depth
            speed = self.descend_speed
        elif off_axis <= self.near:
            target[2] = hole[2] + self.low
        elif tip[2] < hole[2] + 0.5 * self.hover:
            target[:2] = tip[:2]  # too low to cross the rim: straight up first
            target[2] = hole[2] + self.hover
        else:
            target[2] = hole[2] + self.hover
        action = np.zeros(6)
        action[:3] = (target - tip) / self.action_scale_pos
        action[2] = max(action[2], -speed)
        # Rotation vector turning the peg's axis onto straight down: axis x down, by the angle between them.
        down = np.array([0.0, 0.0, -1.0])
        cross = np.cross(axis, down)
        sin, cos = float(np.linalg.norm(cross)), float(axis @ down)
        if sin > 1e-9:
            action[3:6] = cross / sin * np.arctan2(sin, cos) / self.action_scale_rot
        if rng is not None:
            action += rng.normal(0.0, self.noise, 6)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


SCRIPTED: dict[str, Callable[[EnvConfig, float, np.random.Generator | None], ScriptedPolicy]] = {
    REACH_ID: ReachScripted.from_config,
    PICK_CUBE_ID: PickCubeScripted.from_config,
    PEG_INSERT_ID: PegInsertScripted.from_config,
}
"""Env id -> factory `(env config, noise, rng) -> scripted policy`."""


def make_scripted(cfg: EnvConfig, noise: float = 0.0, rng: np.random.Generator | None = None) -> ScriptedPolicy:
    """The scripted policy for `cfg.id`, or a ValueError naming `env.id` and the ids that have one."""
    if cfg.id not in SCRIPTED:
        raise ValueError(f"env.id: no scripted policy for {cfg.id!r}; expected one of {sorted(SCRIPTED)}")
    return SCRIPTED[cfg.id](cfg, noise, rng)


__all__ = ["SCRIPTED", "PegInsertScripted", "PickCubeScripted", "ReachScripted", "ScriptedPolicy", "make_scripted"]
