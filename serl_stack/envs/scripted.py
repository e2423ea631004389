"""Scripted baseline policies for the sim tasks (demonstrations, conservative-mixing baselines, smoke tests).

Owns: `ReachScripted`, a proportional controller for FrankaReach-v0, and `make_scripted`, which picks the
scripted policy for a config's `env.id` from the `SCRIPTED` table (so callers never test env names).
A policy here is a callable `policy(obs) -> action` on the DESIGN.md observation dict and 7-D action contract.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from serl_stack.config import EnvConfig
from serl_stack.envs import REACH_ID


class ScriptedPolicy(Protocol):
    """What the scripted policies share: an action (7,) float32 in [-1, 1] for one observation."""

    def __call__(self, obs: Mapping[str, Any]) -> np.ndarray: ...


class ReachScripted:
    """Full speed toward the goal: `a[:3] = clip((goal - tcp) / action_scale_pos (+ noise), -1, 1)`.

    Rotation and gripper are 0 (orientation held, gripper unchanged). With `noise > 0`, Gaussian noise of that
    standard deviation (in action units) is added to the translation before clipping, drawn from `rng`.
    """

    def __init__(self, action_scale_pos: float = 0.02, noise: float = 0.0, rng: np.random.Generator | None = None):
        if not action_scale_pos > 0:
            raise ValueError(f"action_scale_pos: got {action_scale_pos!r}, expected > 0 (metres per unit action)")
        if not noise >= 0:
            raise ValueError(f"noise: got {noise!r}, expected >= 0 (std of the action noise)")
        if noise > 0 and rng is None:
            raise ValueError("rng: got None, expected a numpy Generator when noise > 0 (no hidden randomness)")
        self.action_scale_pos = float(action_scale_pos)
        self.noise = float(noise)
        self.rng = rng

    @classmethod
    def from_config(cls, cfg: EnvConfig, noise: float = 0.0, rng: np.random.Generator | None = None) -> ReachScripted:
        """The policy for an env built from `cfg` (its `action_scale_pos`)."""
        return cls(cfg.action_scale_pos, noise, rng)

    def __call__(self, obs: Mapping[str, Any]) -> np.ndarray:
        goal = np.asarray(obs["task"]["goal_pos"], np.float64)
        tcp = np.asarray(obs["state"]["tcp_pose"], np.float64)[:3]
        delta = (goal - tcp) / self.action_scale_pos
        if self.noise > 0:
            assert self.rng is not None  # checked in __init__
            delta = delta + self.rng.normal(0.0, self.noise, 3)
        action = np.zeros(7, np.float32)
        action[:3] = np.clip(delta, -1.0, 1.0)
        return action


SCRIPTED: dict[str, Callable[[EnvConfig, float, np.random.Generator | None], ScriptedPolicy]] = {
    REACH_ID: ReachScripted.from_config,
}
"""Env id -> factory `(env config, noise, rng) -> scripted policy`."""


def make_scripted(cfg: EnvConfig, noise: float = 0.0, rng: np.random.Generator | None = None) -> ScriptedPolicy:
    """The scripted policy for `cfg.id`, or a ValueError naming `env.id` and the ids that have one."""
    if cfg.id not in SCRIPTED:
        raise ValueError(f"env.id: no scripted policy for {cfg.id!r}; expected one of {sorted(SCRIPTED)}")
    return SCRIPTED[cfg.id](cfg, noise, rng)


__all__ = ["SCRIPTED", "ReachScripted", "ScriptedPolicy", "make_scripted"]
