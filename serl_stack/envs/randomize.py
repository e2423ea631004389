"""Domain randomization of the MuJoCo Franka scene for sim-to-real, and per-step observation noise.

Owns: checking `RandomizationConfig` against the model (its ranges are declared in config.py); remembering,
once, the nominal model values it touches (every geom's sliding friction, the table geom's position, every
camera's pose); drawing new values at each reset from the env's seeded generator, always starting again from the
nominal ones so that draws never compound; adding Gaussian noise to a finished observation, and widening the
declared observation space so it holds the noisy values. `FrankaEnv` decides when each happens and applies the
controller's gain scale (drawn here) through `OpSpaceController.set_gain_scale`.

A term that is 0 draws nothing, so with everything off the env's random stream, model and observations are
exactly what they are without this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mujoco
import numpy as np
from gymnasium import spaces

from serl_stack.config import RandomizationConfig, check_section
from serl_stack.envs.controller import quat_from_rotvec, quat_mul
from serl_stack.envs.panda import TABLE_TOP_Z

ObsDict = dict[str, dict[str, np.ndarray]]

_POSITION_SUFFIXES = ("_pos", "_pose")
"""`task` keys whose first three entries are a position (the rest, if any, a quaternion that stays clean)."""


def check_config(cfg: RandomizationConfig, max_table_height: float = math.inf) -> None:
    """Raise ValueError naming the first field of `cfg` that is out of range: the ranges declared in config.py,
    then `max_table_height`, how far the table may rise before it hits a part of the arm that cannot move up (see
    `DomainRandomizer`), which depends on the model and so is a parameter."""
    check_section(cfg)
    if cfg.table_height > max_table_height:
        raise ValueError(
            f"env.randomization.table_height: got {cfg.table_height!r}, expected in [0, {max_table_height:.4g}] m "
            "(the robot base stays put, and a table raised further cuts into the arm's base link)"
        )


def base_clearance(model: mujoco.MjModel, body: str = "link1", table_top_z: float = TABLE_TOP_Z) -> float:
    """Height (m) above the nominal table top of the lowest collision geom of `body`, bounded by its sphere.

    Meant for the first arm link: it turns about the vertical joint-1 axis only, so this height holds in every
    configuration, and a table raised beyond it would press into the link (a contact that would brake joint 1).
    """
    data = mujoco.MjData(model)
    mujoco.mj_kinematics(model, data)
    b = model.body(body).id
    lows = [
        data.geom_xpos[g][2] - model.geom_rbound[g]
        for g in range(model.ngeom)
        if model.geom_bodyid[g] == b and (model.geom_contype[g] or model.geom_conaffinity[g])
    ]
    return float(min(lows)) - table_top_z if lows else math.inf


@dataclass(frozen=True)
class DomainDraw:
    """What one reset drew (the nominal values where a term is off)."""

    table_dz: float = 0.0
    """Table shift (m) along z."""
    friction_scale: float = 1.0
    """Factor on every geom's sliding friction."""
    gain_scale: float = 1.0
    """Factor on the controller's stiffnesses."""
    camera_pos_offset: np.ndarray | None = None
    """(ncam, 3) offsets (m) added to each camera's position in its parent body's frame; None when off."""
    camera_rotvec: np.ndarray | None = None
    """(ncam, 3) rotation vectors (rad, camera frame) applied to each camera's orientation; None when off."""


class DomainRandomizer:
    """Re-draws the randomized model values of one MjModel at every `reset`, from the nominal values."""

    def __init__(self, model: mujoco.MjModel, cfg: RandomizationConfig, table_geom: str = "table") -> None:
        check_config(cfg, base_clearance(model))
        self.model = model
        self.cfg = cfg
        self._table = model.geom(table_geom).id
        # Nominal values, remembered once: every reset restores them before drawing, so draws never compound.
        self._friction0 = model.geom_friction[:, 0].copy()
        self._table_pos0 = model.geom_pos[self._table].copy()
        self._cam_pos0 = model.cam_pos.copy()
        self._cam_quat0 = model.cam_quat.copy()
        self.table_top_z = TABLE_TOP_Z
        """Height (m, base frame) of the table top this episode; the robot base stays at the origin."""

    def reset(self, rng: np.random.Generator) -> DomainDraw:
        """Restore the nominal model values, draw this episode's from `rng` (only for terms that are on) and
        write them into the model. The caller refreshes the derived quantities (`mj_forward`)."""
        cfg, m = self.cfg, self.model
        m.geom_friction[:, 0] = self._friction0
        m.geom_pos[self._table] = self._table_pos0
        m.cam_pos[:] = self._cam_pos0
        m.cam_quat[:] = self._cam_quat0
        # A fixed draw order, each term drawing only when on: a config's draws are reproducible per seed.
        dz = float(rng.uniform(-cfg.table_height, cfg.table_height)) if cfg.table_height > 0 else 0.0
        friction = float(rng.uniform(1 - cfg.friction, 1 + cfg.friction)) if cfg.friction > 0 else 1.0
        gain = cfg.controller_gains
        gains = float(rng.uniform(1 - gain, 1 + gain)) if gain > 0 else 1.0
        cam_pos = rng.uniform(-cfg.camera_pos, cfg.camera_pos, (m.ncam, 3)) if cfg.camera_pos > 0 else None
        cam_rot = None
        if cfg.camera_rot > 0:
            axes = rng.normal(size=(m.ncam, 3))
            axes /= np.linalg.norm(axes, axis=1, keepdims=True)  # uniform directions on the sphere
            cam_rot = axes * rng.uniform(0.0, cfg.camera_rot, (m.ncam, 1))

        # The table geom moves; the bodies standing on it are placed by the task from `table_top_z`.
        m.geom_pos[self._table, 2] += dz
        self.table_top_z = TABLE_TOP_Z + dz
        # One factor for all geoms scales each contact's friction (MuJoCo takes the max of the pair) by it too.
        if friction != 1.0:
            m.geom_friction[:, 0] *= friction
        if cam_pos is not None:
            m.cam_pos += cam_pos
        if cam_rot is not None:
            for i in range(m.ncam):
                m.cam_quat[i] = quat_mul(self._cam_quat0[i], quat_from_rotvec(cam_rot[i]))
        return DomainDraw(dz, friction, gains, cam_pos, cam_rot)


def noise_enabled(cfg: RandomizationConfig) -> bool:
    """Whether any observation noise term is on."""
    return cfg.obs_noise_pos > 0 or cfg.obs_noise_vel > 0 or cfg.obs_noise_force > 0


def _noisy(arr: np.ndarray, std: float, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """A copy of `arr` (its dtype kept) with N(0, std) added to its first `n` entries (all when None)."""
    out = arr.copy()
    k = out.shape[0] if n is None else n
    out[:k] += rng.normal(0.0, std, k).astype(out.dtype)
    return out


def add_observation_noise(obs: ObsDict, cfg: RandomizationConfig, rng: np.random.Generator) -> ObsDict:
    """A copy of `obs` with Gaussian sensor noise; the input and its arrays are left untouched.

    Positions (tcp_pose xyz, and xyz of every `task` key ending in `_pos` / `_pose`) get `obs_noise_pos`,
    tcp_vel `obs_noise_vel`, tcp_force `obs_noise_force` and tcp_torque a tenth of it. Quaternions, the gripper
    width and images stay clean. Noised arrays are fresh copies; the others are shared with `obs`.
    """
    out = {group: dict(values) for group, values in obs.items()}
    state, task = out.get("state", {}), out.get("task", {})
    if cfg.obs_noise_pos > 0:
        if "tcp_pose" in state:
            state["tcp_pose"] = _noisy(state["tcp_pose"], cfg.obs_noise_pos, rng, 3)
        for key, value in task.items():
            if key.endswith(_POSITION_SUFFIXES):
                task[key] = _noisy(value, cfg.obs_noise_pos, rng, 3)
    if cfg.obs_noise_vel > 0 and "tcp_vel" in state:
        state["tcp_vel"] = _noisy(state["tcp_vel"], cfg.obs_noise_vel, rng)
    if cfg.obs_noise_force > 0:
        if "tcp_force" in state:
            state["tcp_force"] = _noisy(state["tcp_force"], cfg.obs_noise_force, rng)
        if "tcp_torque" in state:
            state["tcp_torque"] = _noisy(state["tcp_torque"], cfg.obs_noise_force / 10, rng)
    return out


def noisy_observation_space(space: spaces.Dict, cfg: RandomizationConfig) -> spaces.Dict:
    """`space` with the entries that `add_observation_noise` perturbs unbounded (Gaussian noise has no bound), so
    a noisy observation still lies in it; `space` itself when no noise term is on."""
    if not noise_enabled(cfg):
        return space

    def widened(box: spaces.Box, n: int | None = None) -> spaces.Box:
        low, high = box.low.copy(), box.high.copy()
        low[:n], high[:n] = -np.inf, np.inf
        return spaces.Box(low, high, box.shape, box.dtype)

    groups = {name: dict(group.spaces) for name, group in space.spaces.items()}
    state, task = groups.get("state", {}), groups.get("task", {})
    if cfg.obs_noise_pos > 0:
        if "tcp_pose" in state:
            state["tcp_pose"] = widened(state["tcp_pose"], 3)
        for key, box in task.items():
            if key.endswith(_POSITION_SUFFIXES):
                task[key] = widened(box, 3)
    for key, std in (("tcp_vel", cfg.obs_noise_vel), ("tcp_force", cfg.obs_noise_force),
                     ("tcp_torque", cfg.obs_noise_force)):
        if std > 0 and key in state:
            state[key] = widened(state[key])
    return spaces.Dict({name: spaces.Dict(group) for name, group in groups.items()})
