"""FrankaPegInsert-v0: push a peg held in the closed gripper into a square hole in a fixture on the table.

Owns: the peg (a free body gripped by friction between the finger pads from the start of every episode), the
fixture (four boxes around a square hole, placed uniformly in `peg_insert.hole_low..hole_high` at reset), the
grasp at reset, the 6-D action view (the gripper command is always "closed"), the `task` observation
(`hole_pos`, `peg_pose`), reward, termination and the `success` / `depth` / `xy_error` info.

Success: the peg's tip at least `success_depth` below the rim and inside the hole's square footprint. Reward:
1.0 on success (the episode terminates), else 0.0; with `dense_reward` the progress of the tip toward the goal
point (on the hole's axis, `success_depth` below the rim) this step, in units of one full translation step, is
added: `(d_prev - d) / action_scale_pos`, the difference of the potential -d / action_scale_pos (Ng et al., 1999),
so the shaping of a whole episode sums to how much closer the tip ended (bounded by the starting distance).
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np
from gymnasium import spaces

from serl_stack.config import EnvConfig, PegInsertConfig, check_section
from serl_stack.envs.controller import quat_canonical
from serl_stack.envs.franka import FrankaEnv, ObsDict, corners
from serl_stack.envs.panda import PANDA, TABLE_TOP_Z, ArmSpec
from serl_stack.safety import FilterResult

# Finger pads (panda.py): in the hand frame they span z = 0.0584 .. 0.1084 (their tips 5 mm beyond the TCP) and
# x = -0.01 .. 0.01; each inner face is a finger's joint position away from the tool axis.
_PAD_TIP_Z = 0.1084
GRIP_LENGTH = 0.02
"""Length (m) of the peg held between the pads: its top end sits this far above the pad tips, the rest sticks
out below them (so the fingers stay clear of the fixture while the tip goes down the hole)."""
FINGER_CLEARANCE = 0.005
"""Height (m) the pad tips must keep above the rim when the tip is at the success depth (validated)."""
WALL_THICKNESS = 0.02
"""Thickness (m) of the fixture's walls around the hole."""
_GRASP_HOLD_STEPS = 40
"""Physics steps the peg is held in place (kinematically) while the fingers close on it."""
_GRASP_SETTLE_STEPS = 100
"""Physics steps after release for the grasp to settle (contact forces reach equilibrium)."""
GRASP_SQUEEZE = 0.1
"""How far (m) inside the peg the gripper's width target is: far enough that the servo saturates at its force
limit (`ArmSpec.grasp_force`), so the sim grasps with the real gripper's grasp force, not kp x (width error)."""
GRASP_IMPRATIO = 10.0
"""Ratio of frictional to normal contact impedance (MuJoCo `opt.impratio`): larger = less creep in the grasp."""
PEG_RGBA = (0.95, 0.55, 0.1, 1.0)
FIXTURE_RGBA = (0.15, 0.35, 0.85, 1.0)
# Peg contacts: condim 4 adds torsional friction. Each pad touches the cylinder's side along a line (the collider
# reports about one point per pad), so without it the peg would pivot about the pad-to-pad axis whenever the rim
# pushes its tip sideways; 0.005 m x 70 N of grasp force resists 0.35 N m per pad (a 2 cm line contact's
# torsional resistance). Sliding friction 1.5 equals the pads' (MuJoCo takes the larger): 2 x 70 N x 1.5 = 210 N
# along the axis before the peg slips. solmix 100 makes the peg's solref/solimp govern its contacts with the pads
# and the fixture (MuJoCo mixes the two geoms' parameters by solmix weight); a hard solimp (0.99) and the
# shortest safe time constant (2 physics steps) keep the pads and the rim from sinking ~2 mm into the peg under
# tens of newtons (which lets it wobble and its tip dip below the rim). Density 1200 kg/m^3: a POM peg, ~14 g.
_PEG_CONTACT = (
    'condim="4" friction="1.5 0.005 0.0001" solmix="100" solref="0.004 1" solimp="0.99 0.995 0.001" density="1200"'
)
# Collision bits: the fixture is static and sits on the (static) table, so a table-fixture contact would only
# cost time. Fixture contype 0 / conaffinity 2 meets only geoms whose contype has bit 2: the arm and fingers
# (contype 2) and the peg (contype 3, which also meets the table's and the pads' conaffinity bit 1).
_FIXTURE_COLLIDE = 'contype="0" conaffinity="2"'
_PEG_COLLIDE = 'contype="3" conaffinity="3"'


def _rgba(c: tuple[float, ...]) -> str:
    return " ".join(map(str, c))


def peg_insert_xml(cfg: PegInsertConfig) -> str:
    """`<worldbody>` XML of the peg (a free body) and the fixture (a static body at z = its base)."""
    half_in = cfg.peg_radius + cfg.clearance / 2  # inner half-width of the square hole
    mid = half_in + WALL_THICKNESS / 2  # wall centre distance from the hole axis
    half_long = half_in + WALL_THICKNESS  # walls along x span the whole block; walls along y fit between them
    hz = cfg.hole_depth / 2
    walls = "".join(
        f'\n      <geom name="fixture_wall{i}" type="box" pos="{px} {py} {hz}" size="{sx} {sy} {hz}" '
        f'rgba="{_rgba(FIXTURE_RGBA)}" {_FIXTURE_COLLIDE}/>'
        for i, (px, py, sx, sy) in enumerate(
            (
                (mid, 0.0, WALL_THICKNESS / 2, half_long),
                (-mid, 0.0, WALL_THICKNESS / 2, half_long),
                (0.0, mid, half_in, WALL_THICKNESS / 2),
                (0.0, -mid, half_in, WALL_THICKNESS / 2),
            )
        )
    )
    half_len = cfg.peg_length / 2
    # The peg's local +z points toward its tip (down the tool axis once gripped). Parked upright on the table off
    # to the side until the reset puts it in the hand.
    return f"""
    <body name="fixture" pos="0.5 0 {TABLE_TOP_Z}">{walls}
    </body>
    <body name="peg" pos="0 0.5 {TABLE_TOP_Z + half_len}" quat="0 1 0 0">
      <freejoint name="peg_joint"/>
      <geom name="peg" type="cylinder" size="{cfg.peg_radius} {half_len}" rgba="{_rgba(PEG_RGBA)}"
            {_PEG_CONTACT} {_PEG_COLLIDE}/>
      <site name="peg_tip" pos="0 0 {half_len}" size="0.003" rgba="1 0 0 1" group="4"/>
    </body>"""


def _check_config(cfg: EnvConfig, spec: ArmSpec) -> tuple[np.ndarray, np.ndarray]:
    """The hole placement area (low, high) as (x, y) arrays, checked: the declared ranges and rules of env.*
    (config.py; success_depth < hole_depth among them), then what depends on the arm and this task's geometry."""
    check_section(cfg)
    p = cfg.peg_insert
    if not 2 * p.peg_radius < 2 * spec.finger_stroke:
        raise ValueError(
            f"env.peg_insert.peg_radius: got {p.peg_radius}, expected < {spec.finger_stroke} m (the peg must fit "
            "between the open fingers)"
        )
    min_length = GRIP_LENGTH + p.success_depth + FINGER_CLEARANCE
    if p.peg_length < min_length:
        raise ValueError(
            f"env.peg_insert.peg_length: got {p.peg_length}, expected >= {min_length:.4f} m ({GRIP_LENGTH} m gripped "
            f"+ success_depth + {FINGER_CLEARANCE} m so the fingers stay above the rim)"
        )
    return corners(p, "hole_low", "hole_high")


class FrankaPegInsertEnv(FrankaEnv):
    """Insert a gripped cylindrical peg into a square hole whose position is drawn at every reset.

    The action is 6-D (`[dx, dy, dz, drx, dry, drz]`, the DESIGN.md action without its gripper entry): the env
    appends a constant "close" command, so the gripper keeps squeezing the peg.
    """

    gripper_closed_at_reset = True  # the reset's grasp closes it on the peg

    def __init__(self, config: EnvConfig | None = None, render_mode: str | None = None, spec: ArmSpec = PANDA) -> None:
        cfg = config if config is not None else EnvConfig()
        self.hole_low, self.hole_high = _check_config(cfg, spec)
        p = cfg.peg_insert
        # The world XML depends on the config (peg and hole sizes); FrankaEnv reads it from this attribute, and the
        # instance attribute shadows the class hook.
        self.task_xml = peg_insert_xml(p)
        super().__init__(cfg, render_mode, spec)
        self.action_space = spaces.Box(-1.0, 1.0, (6,), np.float32)
        # Elliptic friction cones with impratio 10 (MuJoCo's advice for grasping; this env's own model copy): with
        # the default pyramidal cones and impratio 1, soft frictional contacts creep, and the held peg (16 N grasp)
        # slid 4 mm down the pads in 5 s of standing still and tilted 0.1 rad in 30 steps of random motion; with
        # these, 0.2 mm and 0.003 rad, and with the 70 N grasp below as well, 0.02 mm and 0.0004 rad.
        self.model.opt.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
        self.model.opt.impratio = GRASP_IMPRATIO
        # The gripper's position servo (kp 1000 N/m) closing on a 16 mm peg with a target of 0 squeezes with only
        # 16 N; the real gripper's grasp action squeezes with a set force (up to 70 N). A target inside the peg
        # (allowed by this env's own model copy's ctrlrange) saturates the servo at its force limit instead.
        self._grasp_ctrl = -GRASP_SQUEEZE
        self.model.actuator_ctrlrange[self._gripper_act, 0] = self._grasp_ctrl
        self.half_width = p.peg_radius + p.clearance / 2
        """Half the hole's inner width (m): the footprint the tip must be inside."""
        # Where the grasp puts the peg in the hand (TCP) frame: centred on the tool axis, top GRIP_LENGTH above
        # the pad tips. Tip offset below the TCP along the tool axis:
        self.tip_below_tcp = (_PAD_TIP_Z - spec.tcp_offset) - GRIP_LENGTH + p.peg_length
        self._check_reachable()
        self._fixture = self.model.body("fixture").id
        self._peg_body = self.model.body("peg").id
        self._peg_tip = self.model.site("peg_tip").id
        joint = self.model.joint("peg_joint").id
        self._peg_qpos = slice(self.model.jnt_qposadr[joint], self.model.jnt_qposadr[joint] + 7)
        self._peg_qvel = slice(self.model.jnt_dofadr[joint], self.model.jnt_dofadr[joint] + 6)
        self.hole_xy = (self.hole_low + self.hole_high) / 2
        self.rim_z = TABLE_TOP_Z + p.hole_depth
        self._prev_distance = 0.0
        self._action7 = np.zeros(7)
        self._action7[6] = 1.0  # > 0.5: close

    def _check_reachable(self) -> None:
        """Every hole position must be reachable at the success depth, with the tool pointing down."""
        p = self.cfg.peg_insert
        tcp_z = TABLE_TOP_Z + p.hole_depth - p.success_depth + self.tip_below_tcp
        for x in (self.hole_low[0], self.hole_high[0]):
            for y in (self.hole_low[1], self.hole_high[1]):
                want = np.array([x, y, tcp_z])
                got, _ = self.allowed_pose(want, self.nominal_quat)
                if np.linalg.norm(got - want) > 1e-6:
                    raise ValueError(
                        f"env.peg_insert.hole_low/hole_high: the TCP must reach {want.round(4).tolist()} to "
                        f"insert the peg there, but the workspace limits (workspace_low/high, reach_min/max) clip it "
                        f"to {got.round(4).tolist()}; expected a hole area inside the workspace"
                    )

    # ------------------------------------------------------------------------------------ gym API

    def step(self, action: np.ndarray) -> tuple[ObsDict, float, bool, bool, dict[str, Any]]:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (6,):
            raise ValueError(
                f"action: expected shape (6,) [dx, dy, dz, drx, dry, drz] (FrankaPegInsert-v0 keeps the gripper "
                f"closed itself), got {a.shape}"
            )
        self._action7[:6] = a
        obs, reward, terminated, truncated, info = super().step(self._action7.copy())
        if "executed_action" in info:  # in this env's (6-D) action space, like `action`
            info["executed_action"] = info["executed_action"][:6]
        return obs, reward, terminated, truncated, info

    def preview_action(self, action: np.ndarray) -> FilterResult:
        a7 = self._action7.copy()
        a7[:6] = np.asarray(action, dtype=np.float64).reshape(-1)[:6]
        return super().preview_action(a7)

    def _gripper_ctrl(self, closed: bool) -> float:
        return self._grasp_ctrl if closed else self._gripper_open  # "close" here means: grasp with the full force

    # ------------------------------------------------------------------------------------ task hooks

    def _task_space(self) -> spaces.Dict:
        lo = np.array([*self.hole_low, -2.0], dtype=np.float32)
        hi = np.array([*self.hole_high, 2.0], dtype=np.float32)
        pose_bound = np.array([2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0], dtype=np.float32)
        return spaces.Dict(
            {
                "hole_pos": spaces.Box(lo, hi, (3,), np.float32),
                "peg_pose": spaces.Box(-pose_bound, pose_bound, (7,), np.float32),
            }
        )

    def _reset_task(self) -> None:
        m, p = self.model, self.cfg.peg_insert
        table_z = float(getattr(self, "table_top_z", TABLE_TOP_Z))
        self.hole_xy = self.np_random.uniform(self.hole_low, self.hole_high)
        self.rim_z = table_z + p.hole_depth
        # A static body: its pose is recomputed from model.body_pos at every mj_kinematics (the model is this
        # env's own copy, see panda.load_model).
        m.body_pos[self._fixture] = (*self.hole_xy, table_z)
        self._grasp_peg()

    def _grasp_peg(self) -> None:
        """Put the peg between the open fingers, aligned with the tool axis, and close the gripper on it."""
        m, d = self.model, self.data
        mujoco.mj_forward(m, d)
        tcp = d.site_xpos[self._tcp]
        rot = d.site_xmat[self._tcp].reshape(3, 3)
        centre = tcp + rot[:, 2] * (self.tip_below_tcp - self.cfg.peg_insert.peg_length / 2)
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, d.site_xmat[self._tcp])
        pose = np.concatenate((centre, quat))
        d.ctrl[self._gripper_act] = self._grasp_ctrl
        # Fingers start a hair outside the peg, so the grasp closes within the hold below.
        d.qpos[self._fingers] = self.cfg.peg_insert.peg_radius + 0.0005
        # Held in place while the fingers close, so it cannot fall before they touch it; then released for the
        # contacts alone to hold it (the controller keeps holding the settled arm pose throughout).
        for _ in range(_GRASP_HOLD_STEPS):
            d.qpos[self._peg_qpos] = pose
            d.qvel[self._peg_qvel] = 0.0
            self.controller.step(d, 1)
        self.controller.step(d, _GRASP_SETTLE_STEPS)
        mujoco.mj_forward(m, d)
        # The arm drifted a hair while settling: command where it is, so the first action starts from rest.
        self.cmd_pos, self.cmd_quat = self.tcp_pose()
        self.controller.set_target(self.cmd_pos, self.cmd_quat)

    def peg_tip(self) -> np.ndarray:
        """Position (3,) of the peg's tip (the end that goes into the hole), base frame."""
        return self.data.site_xpos[self._peg_tip].copy()

    def peg_in_hand(self) -> tuple[np.ndarray, np.ndarray]:
        """The peg's centre position and axis in the TCP frame (to measure slip in the grasp)."""
        rot = self.data.site_xmat[self._tcp].reshape(3, 3)
        rel = rot.T @ (self.data.xpos[self._peg_body] - self.data.site_xpos[self._tcp])
        axis = rot.T @ self.data.xmat[self._peg_body].reshape(3, 3)[:, 2]
        return rel, axis

    def _task_obs(self) -> dict[str, np.ndarray]:
        quat = quat_canonical(self.data.xquat[self._peg_body].copy())
        return {
            "hole_pos": np.array([*self.hole_xy, self.rim_z], dtype=np.float32),
            "peg_pose": np.concatenate((self.data.site_xpos[self._peg_tip], quat)).astype(np.float32),
        }

    def _evaluate(self, obs: ObsDict) -> tuple[float, bool, dict[str, Any]]:
        tip = self.data.site_xpos[self._peg_tip]
        offset = tip[:2] - self.hole_xy
        depth = float(self.rim_z - tip[2])
        inside = bool(np.max(np.abs(offset)) <= self.half_width)
        success = inside and depth >= self.cfg.peg_insert.success_depth
        goal = np.array([*self.hole_xy, self.rim_z - self.cfg.peg_insert.success_depth])
        distance = float(np.linalg.norm(tip - goal))
        reward = float(success)
        if self.cfg.dense_reward:
            # The evaluation at reset (elapsed 0) only records the starting distance.
            prev = self._prev_distance if self._elapsed > 0 else distance
            reward += (prev - distance) / self.cfg.action_scale_pos
        self._prev_distance = distance
        info = {"success": success, "depth": depth, "xy_error": float(np.linalg.norm(offset))}
        return reward, success, info
