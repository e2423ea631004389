"""FrankaReach-v0: bring the TCP within `success_radius` of a goal point sampled in a box in front of the robot.

Owns: goal sampling, the `task` observation (`goal_pos`), reward, termination and the `success` / `distance`
info. Reward: 1.0 on success, else 0.0; with `dense_reward` the progress toward the goal this step, in units of
one full translation step, is added: `(d_prev - d) / action_scale_pos` (about +1 for a full step straight at the
goal, negative when moving away). It is the difference of the potential -d / action_scale_pos (Ng et al., 1999),
so the shaping of a whole episode sums to how much closer it ended, and it tells the critic at once which way
is better.
The episode terminates on success and is truncated by the base env after `max_episode_steps`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from serl_stack.config import EnvConfig
from serl_stack.envs.franka import FrankaEnv, ObsDict, config_box
from serl_stack.envs.panda import PANDA, ArmSpec

_MAX_GOAL_DRAWS = 100


class FrankaReachEnv(FrankaEnv):
    """Reach a random point with the TCP; orientation and gripper are free."""

    def __init__(self, config: EnvConfig | None = None, render_mode: str | None = None, spec: ArmSpec = PANDA) -> None:
        cfg = config if config is not None else EnvConfig()
        self.goal_low, self.goal_high = config_box(cfg, "goal_low", "goal_high")
        if not cfg.success_radius > 0:
            raise ValueError(f"EnvConfig.success_radius: expected > 0, got {cfg.success_radius}")
        super().__init__(cfg, render_mode, spec)
        if np.any(self.goal_low < self.workspace_low) or np.any(self.goal_high > self.workspace_high):
            # A goal outside the clip box could never be reached.
            raise ValueError(
                f"EnvConfig.goal_low/goal_high {self.goal_low}..{self.goal_high} must lie inside "
                f"workspace_low/workspace_high {self.workspace_low}..{self.workspace_high}"
            )
        self.goal = (self.goal_low + self.goal_high) / 2
        self._prev_distance = 0.0

    def _task_space(self) -> spaces.Dict:
        return spaces.Dict(
            {
                "goal_pos": spaces.Box(
                    self.goal_low.astype(np.float32), self.goal_high.astype(np.float32), (3,), np.float32
                )
            }
        )

    def _reset_task(self) -> None:
        tcp = self.data.site_xpos[self._tcp]
        # A goal the TCP already touches would end the episode before the policy acts; draw again.
        for _ in range(_MAX_GOAL_DRAWS):
            self.goal = self.np_random.uniform(self.goal_low, self.goal_high)
            if np.linalg.norm(self.goal - tcp) > 2 * self.cfg.success_radius:
                break

    def _task_obs(self) -> dict[str, np.ndarray]:
        return {"goal_pos": self.goal.astype(np.float32)}

    def _evaluate(self, obs: ObsDict) -> tuple[float, bool, dict[str, Any]]:
        distance = float(np.linalg.norm(self.data.site_xpos[self._tcp] - self.goal))
        success = distance <= self.cfg.success_radius
        reward = float(success)
        if self.cfg.dense_reward:
            # The evaluation at reset (elapsed 0) only records the starting distance.
            prev = self._prev_distance if self._elapsed > 0 else distance
            reward += (prev - distance) / self.cfg.action_scale_pos
        self._prev_distance = distance
        return reward, success, {"success": success, "distance": distance}
