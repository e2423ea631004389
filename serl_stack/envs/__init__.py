"""MuJoCo Franka tasks on the DESIGN.md observation/action contract, and any Gymnasium env adapted to it.

Owns: the Gymnasium registration of the sim tasks and `make_env`, the one way the rest of serl_stack builds
an env from an `EnvConfig`. Importing this module registers `FrankaReach-v0`, `FrankaPickCube-v0` and
`FrankaPegInsert-v0`; each env truncates itself from `EnvConfig.max_episode_steps`, so the registration adds no
TimeLimit wrapper. Any other registered Gymnasium id
is built as registered and wrapped by `GymAdapter` (see gym_adapter.py).
"""

from __future__ import annotations

import gymnasium as gym

from serl_stack.config import EnvConfig
from serl_stack.envs.gym_adapter import GymAdapter

REACH_ID = "FrankaReach-v0"
PICK_CUBE_ID = "FrankaPickCube-v0"
PEG_INSERT_ID = "FrankaPegInsert-v0"

_TASKS = {
    REACH_ID: "serl_stack.envs.reach:FrankaReachEnv",
    PICK_CUBE_ID: "serl_stack.envs.pick_cube:FrankaPickCubeEnv",
    PEG_INSERT_ID: "serl_stack.envs.peg_insert:FrankaPegInsertEnv",
}
for _id, _entry_point in _TASKS.items():
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_entry_point)


def serl_task_ids() -> list[str]:
    """The registered ids whose env lives in serl_stack (they take an `EnvConfig`)."""
    return sorted(i for i, spec in gym.registry.items()
                  if isinstance(spec.entry_point, str) and spec.entry_point.startswith("serl_stack."))


def make_env(cfg: EnvConfig, render_mode: str | None = None) -> gym.Env:
    """Build the env `cfg.id` through `gymnasium.make` (so it carries Gymnasium's checkers).

    A serl_stack task gets `cfg` and follows DESIGN.md as is. Any other registered Gymnasium id (e.g.
    `Pendulum-v1`, `HalfCheetah-v5`) is made with its registered defaults, its own time limit included, and
    wrapped by `GymAdapter` (Box or Dict-of-Box observations, Box actions); the Franka-specific fields of `cfg`
    do not apply to it and are ignored. Raises ValueError for an unknown id or an env whose spaces do not fit.
    """
    tasks = serl_task_ids()
    if cfg.id in tasks:
        return gym.make(cfg.id, config=cfg, render_mode=render_mode)
    if cfg.id not in gym.registry:
        raise ValueError(f"EnvConfig.id: unknown env {cfg.id!r}; expected a serl_stack task ({', '.join(tasks)}) "
                         "or any id registered with Gymnasium (e.g. Pendulum-v1, HalfCheetah-v5)")
    env = gym.make(cfg.id, render_mode=render_mode)
    try:
        return GymAdapter(env)
    except ValueError as e:
        env.close()
        raise ValueError(f"EnvConfig.id={cfg.id!r}: {e}") from e


__all__ = ["PEG_INSERT_ID", "PICK_CUBE_ID", "REACH_ID", "make_env", "serl_task_ids"]
