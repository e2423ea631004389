"""MuJoCo Franka tasks on the DESIGN.md observation/action contract.

Owns: the Gymnasium registration of the sim tasks and `make_env`, the one way the rest of serl_stack builds
an env from an `EnvConfig`. Importing this module registers `FrankaReach-v0`; the env truncates itself from
`EnvConfig.max_episode_steps`, so the registration adds no TimeLimit wrapper.
"""

from __future__ import annotations

import gymnasium as gym

from serl_stack.config import EnvConfig

REACH_ID = "FrankaReach-v0"

if REACH_ID not in gym.registry:
    gym.register(id=REACH_ID, entry_point="serl_stack.envs.reach:FrankaReachEnv")


def make_env(cfg: EnvConfig, render_mode: str | None = None) -> gym.Env:
    """Build the task `cfg.id` with `cfg` through `gymnasium.make` (so it carries Gymnasium's checkers)."""
    if cfg.id not in gym.registry:
        raise ValueError(f"EnvConfig.id: unknown env {cfg.id!r}; registered serl_stack tasks: {REACH_ID}")
    return gym.make(cfg.id, config=cfg, render_mode=render_mode)


__all__ = ["REACH_ID", "make_env"]
