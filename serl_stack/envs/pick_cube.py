"""FrankaPickCube-v0: grasp a cube lying at a random pose on the table and lift it `lift_height` off the table.

Owns: the cube (its MJCF, contact and friction settings), its seeded placement at reset, the `task` observation
(`object_pose`), the grasp and success predicates, reward, termination and the `success` / `lifted` / `grasped`
info.

Success: the cube's centre is at least `EnvConfig.pick_cube.lift_height` above its resting height *and* it is
grasped, i.e. both finger pads touch it, so a cube flung or knocked upward does not count. The episode terminates
on success and is truncated by the base env after `max_episode_steps`.

Reward: 1.0 on success, else 0.0. With `dense_reward`, the change of the potential

    phi = -(|tcp - cube| + remaining lift) / action_scale_pos + GRASP_BONUS * grasped

since the previous step is added (Ng et al., 1999): `remaining lift = clip(lift_height - lifted, 0, lift_height)`
while grasped and the whole `lift_height` otherwise (a cube pushed or tossed up earns nothing), distances in units
of one full translation step, so a full step toward the cube or upward with it in hand is worth about +1, and
closing the fingers on the cube is worth `GRASP_BONUS` (taken back if it is dropped). Being a difference
of potentials, the shaping of a whole episode sums to phi(end) - phi(start), which is bounded; it does not change
which policy is optimal, it only tells the critic early which way is better.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np
from gymnasium import spaces

from serl_stack.config import EnvConfig, PickCubeConfig, check_section
from serl_stack.envs.controller import quat_canonical, quat_from_rotvec
from serl_stack.envs.franka import FrankaEnv, ObsDict, corners
from serl_stack.envs.panda import PANDA, TABLE_TOP_Z, ArmSpec

GRASP_BONUS = 1.0
"""Potential (in units of a full step) of having both finger pads on the cube; see the module docstring."""
CUBE_RGBA = (0.9, 0.08, 0.08, 1.0)
"""Saturated red: nothing else in the scene (white arm, brown table, grey floor, green reach marker) is red."""


def _cube_xml(cfg: PickCubeConfig) -> str:
    """The free-jointed cube, resting in the middle of its placement area (reset moves it at once).

    Contacts: contype 1 / conaffinity 3 like the table, so the cube hits the table, the arm and the finger pads
    (contype 2) and any other object. condim 4 adds torsional friction about the contact normal, which keeps the
    cube from spinning between the pads when the arm rotates or accelerates; a pad-cube contact takes the larger
    of the two geoms' coefficients per column, so it gets the pads' sliding friction 1.5 against the cube's 1.0
    (a rubber pad on a painted block), torsional 0.01 m, rolling 1e-4 m. The gripper servo (kp 1000 N/m on the
    width, closed target 0) squeezes a 4 cm cube with ~40 N, below its 70 N limit: 2 pads x 1.5 x 40 N of friction
    hold a 50 g cube by two orders of magnitude, so the default pyramidal cones suffice. The cube keeps the default
    stiff contact (solref 0.005 s, critically damped): the pads sink ~1 mm into it under that squeeze, and it rests
    on the table without creeping. Its inertia follows from `mass` and the box shape.
    """
    half = cfg.cube_size / 2
    x, y = (np.asarray(cfg.cube_low, dtype=np.float64) + np.asarray(cfg.cube_high, dtype=np.float64)) / 2
    return f"""
    <body name="cube" pos="{x:.6g} {y:.6g} {TABLE_TOP_Z + half:.6g}">
      <freejoint name="cube_joint"/>
      <geom name="cube" type="box" size="{half:.6g} {half:.6g} {half:.6g}" mass="{cfg.cube_mass:.6g}"
            rgba="{" ".join(map(str, CUBE_RGBA))}" contype="1" conaffinity="3" condim="4"
            friction="1.0 0.005 0.0001"/>
    </body>"""


def _check_config(cfg: EnvConfig, spec: ArmSpec) -> tuple[np.ndarray, np.ndarray]:
    """The placement area (low (2,), high (2,)) of `cfg.pick_cube`, checked: the declared ranges and rules of env.*
    (config.py), then what this task adds, which depends on the arm and on the task using the workspace."""
    check_section(cfg)
    pc = cfg.pick_cube
    width = 2 * spec.finger_stroke
    if pc.cube_size >= width:
        raise ValueError(
            f"env.pick_cube.cube_size: got {pc.cube_size!r}, expected < {width:g} m (the open gripper's width, "
            "2 * finger_stroke)"
        )
    low, high = corners(pc, "cube_low", "cube_high")
    ws_low = np.asarray(cfg.workspace_low, dtype=np.float64)[:2]
    ws_high = np.asarray(cfg.workspace_high, dtype=np.float64)[:2]
    if np.any(low < ws_low) or np.any(high > ws_high):
        # The TCP cannot be commanded outside the workspace box, so a cube there could never be grasped.
        raise ValueError(
            f"env.pick_cube.cube_low/cube_high: got the placement area {low.tolist()}..{high.tolist()}, expected it "
            f"inside the workspace box's (x, y) extent {ws_low.tolist()}..{ws_high.tolist()} "
            "(env.workspace_low/workspace_high)"
        )
    return low, high


class FrankaPickCubeEnv(FrankaEnv):
    """Pick up a cube placed at a random position and yaw on the table; the gripper starts open above it."""

    task_xml = _cube_xml(PickCubeConfig())

    def __init__(self, config: EnvConfig | None = None, render_mode: str | None = None, spec: ArmSpec = PANDA) -> None:
        cfg = config if config is not None else EnvConfig()
        self.cube_low, self.cube_high = _check_config(cfg, spec)
        # The cube's size and mass are compiled into the model, so each config gets its own world XML.
        self.task_xml = _cube_xml(cfg.pick_cube)
        super().__init__(cfg, render_mode, spec)
        pc = cfg.pick_cube
        top_z = float(self.workspace_high[2])
        if TABLE_TOP_Z + cfg.randomization.table_height + pc.cube_size / 2 + pc.lift_height > top_z:
            # The grasped cube's centre sits about at the TCP, which cannot be commanded above the workspace top.
            raise ValueError(
                f"env.pick_cube.lift_height: got {pc.lift_height!r}, expected the lifted cube's centre (table top + "
                f"cube_size/2 + lift_height, table raised by up to randomization.table_height) <= workspace_high z "
                f"{top_z:g} m"
            )
        self.half_size = pc.cube_size / 2
        self._cube_qpos = int(self.model.jnt_qposadr[self.model.joint("cube_joint").id])
        self._cube_qvel = int(self.model.jnt_dofadr[self.model.joint("cube_joint").id])
        self._cube_body = self.model.body("cube").id
        self._cube_geom = self.model.geom("cube").id
        self._pads = (self.model.geom("left_pad").id, self.model.geom("right_pad").id)
        self.rest_z = TABLE_TOP_Z + self.half_size
        """Height of the cube's centre resting on the table this episode."""
        self._prev_potential = 0.0

    def _task_space(self) -> spaces.Dict:
        # Position unbounded: a cube pushed off the table falls without a floor to stop it (the floor plane is
        # visual only). Quaternion components of a unit quaternion with w >= 0.
        low = np.array([-np.inf] * 3 + [0.0, -1.0, -1.0, -1.0], dtype=np.float32)
        high = np.array([np.inf] * 3 + [1.0] * 4, dtype=np.float32)
        return spaces.Dict({"object_pose": spaces.Box(low, high, (7,), np.float32)})

    def _reset_task(self) -> None:
        table_top = float(getattr(self, "table_top_z", TABLE_TOP_Z))
        self.rest_z = table_top + self.half_size
        x, y = self.np_random.uniform(self.cube_low, self.cube_high)
        yaw = self.np_random.uniform(-self.cfg.pick_cube.cube_yaw, self.cfg.pick_cube.cube_yaw)
        q = self._cube_qpos
        self.data.qpos[q : q + 3] = (x, y, self.rest_z)
        self.data.qpos[q + 3 : q + 7] = quat_from_rotvec(np.array([0.0, 0.0, yaw]))
        self.data.qvel[self._cube_qvel : self._cube_qvel + 6] = 0.0
        # Poses, contacts (for the grasp predicate) and the images of the reset observation must show the cube
        # where it is now.
        mujoco.mj_forward(self.model, self.data)

    def cube_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """True cube (position (3,), quaternion wxyz (4,) with w >= 0), float64, base frame."""
        q = self._cube_qpos
        quat = self.data.qpos[q + 3 : q + 7]
        return self.data.qpos[q : q + 3].copy(), quat_canonical(quat / np.linalg.norm(quat))

    def grasped(self) -> bool:
        """Whether both finger pads touch the cube (contacts of the last physics step)."""
        touching = set()
        d, cube = self.data, self._cube_geom
        for i in range(d.ncon):
            g1, g2 = int(d.contact.geom1[i]), int(d.contact.geom2[i])
            if g1 == cube and g2 in self._pads:
                touching.add(g2)
            elif g2 == cube and g1 in self._pads:
                touching.add(g1)
        return len(touching) == 2

    def _task_obs(self) -> dict[str, np.ndarray]:
        pos, quat = self.cube_pose()
        return {"object_pose": np.concatenate((pos, quat)).astype(np.float32)}

    def _evaluate(self, obs: ObsDict) -> tuple[float, bool, dict[str, Any]]:
        pos, _ = self.cube_pose()
        lifted = float(pos[2] - self.rest_z)
        grasped = self.grasped()
        success = grasped and lifted >= self.cfg.pick_cube.lift_height
        reward = float(success)
        if self.cfg.dense_reward:
            lift = self.cfg.pick_cube.lift_height
            remaining = min(max(lift - lifted, 0.0), lift) if grasped else lift
            distance = float(np.linalg.norm(self.data.site_xpos[self._tcp] - pos))
            potential = -(distance + remaining) / self.cfg.action_scale_pos + GRASP_BONUS * grasped
            # The evaluation at reset (elapsed 0) only records the starting potential.
            prev = self._prev_potential if self._elapsed > 0 else potential
            reward += potential - prev
            self._prev_potential = potential
        return reward, success, {"success": success, "lifted": lifted, "grasped": grasped}
