"""FrankaReach-v0: bring the TCP within `success_radius` of a goal point sampled in a box in front of the robot.

Owns: goal sampling, the goal marker the cameras see, the `task` observation (`goal_pos`), reward, termination and
the `success` / `distance` info. Reward: 1.0 on success, else 0.0; with `dense_reward` the progress toward the goal
this step, in units of one full translation step, is added: `(d_prev - d) / action_scale_pos` (about +1 for a full
step straight at the goal, negative when moving away). It is the difference of the potential -d / action_scale_pos
(Ng et al., 1999), so the shaping of a whole episode sums to how much closer it ended, and it tells the critic at
once which way is better.
The episode terminates on success and is truncated by the base env after `max_episode_steps`.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np
from gymnasium import spaces

from serl_stack.config import EnvConfig, check_section
from serl_stack.envs.franka import FrankaEnv, ObsDict, corners
from serl_stack.envs.panda import PANDA, ArmSpec

_MAX_GOAL_DRAWS = 100
GOAL_MARKER_RADIUS = 0.02
"""Radius (m) of the goal sphere the cameras see (the default success radius, so "TCP inside the ball" reads)."""
GOAL_MARKER_RGBA = (0.1, 0.95, 0.1, 1.0)
"""Saturated green: no other surface in the scene (white arm, brown table, grey floor) comes close to it."""
# The marker is a mocap body, so moving it is a write to data.mocap_pos with no physics in the way; its geoms
# collide with nothing (contype = conaffinity = 0), so it cannot disturb the arm. The thin pole hanging from the
# sphere down through the table top (which hides the rest of it) makes the goal's height readable from one image:
# where the pole meets the table is the goal's (x, y), its visible length is the height. Without it, a single
# oblique view cannot tell a high goal far away from a low goal nearby. The sphere's shadow would tell, but the
# camera images are rendered without shadows (their cost on a CPU, see FrankaEnv), and shadows are faint at 128 px
# and lost whenever the arm shades them anyway. 0.6 m of pole reaches the table from any goal in the workspace.
_POLE_RADIUS, _POLE_HALF_LENGTH = 0.005, 0.3
_GOAL_MARKER_XML = f"""
    <body name="goal_marker" mocap="true" pos="0.5 0 0.25">
      <geom name="goal_sphere" type="sphere" size="{GOAL_MARKER_RADIUS}" rgba="{" ".join(map(str, GOAL_MARKER_RGBA))}"
            contype="0" conaffinity="0"/>
      <geom name="goal_pole" type="cylinder" pos="0 0 {-_POLE_HALF_LENGTH}" size="{_POLE_RADIUS} {_POLE_HALF_LENGTH}"
            rgba="0.05 0.6 0.05 1" contype="0" conaffinity="0"/>
    </body>"""


class FrankaReachEnv(FrankaEnv):
    """Reach a random point with the TCP; orientation and gripper are free."""

    task_xml = _GOAL_MARKER_XML

    def __init__(self, config: EnvConfig | None = None, render_mode: str | None = None, spec: ArmSpec = PANDA) -> None:
        cfg = config if config is not None else EnvConfig()
        check_section(cfg)  # before the goal box is read (FrankaEnv checks again, for every task)
        self.goal_low, self.goal_high = corners(cfg, "goal_low", "goal_high")
        super().__init__(cfg, render_mode, spec)
        if np.any(self.goal_low < self.workspace_low) or np.any(self.goal_high > self.workspace_high):
            # A goal outside the clip box could never be reached. A rule of this task (other tasks ignore the goal
            # box), so it is checked here and not in config.py.
            raise ValueError(
                f"env.goal_low/goal_high: got {self.goal_low.tolist()}..{self.goal_high.tolist()}, expected a box "
                f"inside env.workspace_low/workspace_high {self.workspace_low.tolist()}..{self.workspace_high.tolist()}"
            )
        self.goal = (self.goal_low + self.goal_high) / 2
        self._prev_distance = 0.0
        self._marker = int(self.model.body("goal_marker").mocapid[0])

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
        self.data.mocap_pos[self._marker] = self.goal
        # Geom poses are derived quantities: refresh them so the reset observation's images show the new goal.
        mujoco.mj_kinematics(self.model, self.data)

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
