"""A small real Gymnasium env for the tests of "any Gymnasium env": a point on a plane that must reach a goal.

Owns: `ToyGoalEnv` and its registration as `ToyGoal-v0`. The registration happens when this module is imported
and nowhere else, so the env is reachable only through Gymnasium's `module:EnvId` convention,
`tests.toy_envs:ToyGoal-v0` (from the repository root, where `tests` is a namespace package). It is built to
exercise what a foreign env brings: a constructor keyword (`goal_radius`), success under its own info key
(`info["reached"]`), a Dict observation (keys `pos`, `goal`), no `render_mode` argument, and a registered time
limit (50) that `env.max_episode_steps` replaces. Dense reward and ~10-step episodes make it learnable by SAC in a
few thousand env steps on a CPU.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

TOY_GOAL_ID = "ToyGoal-v0"
SUCCESS_KEY = "reached"
"""The info key this env reports success under (not "success": that is the point of `env.success_key`)."""
REGISTERED_MAX_EPISODE_STEPS = 50

GOAL_BOX = 0.8
"""Goals are drawn uniformly in [-GOAL_BOX, GOAL_BOX]^2; the point lives in [-1, 1]^2."""


class ToyGoalEnv(gym.Env):
    """Move a point in [-1, 1]^2 by up to `step_size` per axis per step; reach the goal within `goal_radius`.

    Reward: the distance gained this step in units of `step_size` (about +1 for a full step straight at the goal),
    plus 1 on reaching it, which terminates the episode.
    """

    metadata = {"render_modes": []}

    def __init__(self, goal_radius: float = 0.1, step_size: float = 0.2) -> None:
        if not goal_radius > 0:
            raise ValueError(f"goal_radius: got {goal_radius!r}, expected > 0")
        if not step_size > 0:
            raise ValueError(f"step_size: got {step_size!r}, expected > 0")
        self.goal_radius = float(goal_radius)
        self.step_size = float(step_size)
        self.observation_space = spaces.Dict({
            "pos": spaces.Box(-1.0, 1.0, (2,), np.float32),
            "goal": spaces.Box(-GOAL_BOX, GOAL_BOX, (2,), np.float32),
        })
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._pos = np.zeros(2)
        self._goal = np.zeros(2)

    def _obs(self) -> dict[str, np.ndarray]:
        return {"pos": self._pos.astype(np.float32), "goal": self._goal.astype(np.float32)}

    def _distance(self) -> float:
        return float(np.linalg.norm(self._pos - self._goal))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        self._goal = self.np_random.uniform(-GOAL_BOX, GOAL_BOX, 2)
        self._pos = self.np_random.uniform(-1.0, 1.0, 2)
        while self._distance() < 2 * self.goal_radius:  # never start on the goal
            self._pos = self.np_random.uniform(-1.0, 1.0, 2)
        return self._obs(), {SUCCESS_KEY: False, "distance": self._distance()}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        before = self._distance()
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self._pos = np.clip(self._pos + self.step_size * a, -1.0, 1.0)
        after = self._distance()
        reached = after < self.goal_radius
        reward = (before - after) / self.step_size + (1.0 if reached else 0.0)
        return self._obs(), float(reward), reached, False, {SUCCESS_KEY: reached, "distance": after}


if TOY_GOAL_ID not in gym.registry:
    gym.register(id=TOY_GOAL_ID, entry_point="tests.toy_envs:ToyGoalEnv",
                 max_episode_steps=REGISTERED_MAX_EPISODE_STEPS)
