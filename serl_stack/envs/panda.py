"""Franka Panda as data: the modified-DH table, limits, masses, ready pose, flange and hand offsets.

Owns: `ArmSpec` (one table per arm, so an FR3 is another instance, not another code path), `PANDA`,
`dh_fk` (pure-numpy forward kinematics of the hand TCP, the reference the MJCF is tested against), and
`build_mjcf` / `load_model`, which write the MuJoCo model from the same numbers — the spec is the one source of
truth; there is no hand-edited XML to drift from it — together with the scene the cameras see (the `wrist` and
`front` camera placements, the table) and a slot for a task's own world XML.

Frames: the robot base sits at the world origin on top of a table whose surface is z = 0; x points forward,
z up. Quaternions are w-first. Numbers come from /work/shared/REFERENCE.md (Franka's published parameters);
link centres of mass are approximate (they only need to be plausible for a sim stand-in).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import mujoco
import numpy as np

from serl_stack.config import PHYSICS_TIMESTEP


@dataclass(frozen=True)
class Joint:
    """One row of the modified-DH (Craig) table plus that joint's limits and its link's mass."""

    a: float
    d: float
    alpha: float
    q_min: float
    q_max: float
    max_vel: float
    max_torque: float
    mass: float
    com: tuple[float, float, float]
    """Approximate centre of mass of the link, in the link frame (metres)."""


@dataclass(frozen=True)
class ArmSpec:
    """Everything that distinguishes one 7-DoF Franka arm + hand from another."""

    name: str
    joints: tuple[Joint, ...]
    flange_d: float
    """Distance from joint 7's origin to the flange along joint 7's z (metres)."""
    tcp_offset: float
    """Distance from the flange to the hand TCP along the flange z (metres)."""
    tcp_rot_z: float
    """Rotation of the hand (and TCP) frame about the flange z (radians)."""
    ready_q: tuple[float, ...]
    hand_mass: float
    finger_mass: float
    finger_stroke: float
    """Travel of one finger (metres); the opening width is twice this at most."""
    grasp_force: float
    """Largest continuous grasp force (N)."""

    @property
    def q_min(self) -> np.ndarray:
        return np.array([j.q_min for j in self.joints])

    @property
    def q_max(self) -> np.ndarray:
        return np.array([j.q_max for j in self.joints])

    @property
    def max_torque(self) -> np.ndarray:
        return np.array([j.max_torque for j in self.joints])

    @property
    def ready(self) -> np.ndarray:
        return np.array(self.ready_q)


_PI = np.pi
PANDA = ArmSpec(
    name="panda",
    joints=(
        Joint(0.0, 0.333, 0.0, -2.8973, 2.8973, 2.175, 87.0, 4.97, (0.0039, 0.0021, -0.175)),
        Joint(0.0, 0.0, -_PI / 2, -1.7628, 1.7628, 2.175, 87.0, 0.65, (-0.0031, -0.0287, 0.0035)),
        Joint(0.0, 0.316, _PI / 2, -2.8973, 2.8973, 2.175, 87.0, 3.23, (0.0275, 0.0393, -0.0665)),
        Joint(0.0825, 0.0, _PI / 2, -3.0718, -0.0698, 2.175, 87.0, 3.59, (-0.0532, 0.1044, 0.0275)),
        Joint(-0.0825, 0.384, -_PI / 2, -2.8973, 2.8973, 2.61, 12.0, 1.23, (-0.0120, 0.0411, -0.0384)),
        Joint(0.0, 0.0, _PI / 2, -0.0175, 3.7525, 2.61, 12.0, 1.67, (0.0601, -0.0141, -0.0105)),
        Joint(0.088, 0.0, _PI / 2, -2.8973, 2.8973, 2.61, 12.0, 0.74, (0.0105, -0.0043, 0.0616)),
    ),
    flange_d=0.107,
    tcp_offset=0.1034,
    tcp_rot_z=-_PI / 4,
    ready_q=(0.0, -_PI / 4, 0.0, -3 * _PI / 4, 0.0, _PI / 2, _PI / 4),
    hand_mass=0.73,
    finger_mass=0.015,
    finger_stroke=0.04,
    grasp_force=70.0,
)


# ------------------------------------------------------------------------------------------ kinematics


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0, 0.0], [0.0, c, -s, 0.0], [0.0, s, c, 0.0], [0.0, 0.0, 0.0, 1.0]])


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0, 0.0], [s, c, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def _trans(x: float, y: float, z: float) -> np.ndarray:
    t = np.eye(4)
    t[:3, 3] = (x, y, z)
    return t


def mat_to_quat(r: np.ndarray) -> np.ndarray:
    """Rotation matrix -> unit quaternion (w, x, y, z) with w >= 0 (Shepperd's method, numerically stable)."""
    tr = r[0, 0] + r[1, 1] + r[2, 2]
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = np.array([0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s])
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = 2.0 * np.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
        q = np.array([(r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s])
    elif r[1, 1] > r[2, 2]:
        s = 2.0 * np.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
        q = np.array([(r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s])
    else:
        s = 2.0 * np.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
        q = np.array([(r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s])
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


def dh_fk(q: np.ndarray, spec: ArmSpec = PANDA) -> tuple[np.ndarray, np.ndarray]:
    """Pose of the hand TCP in the base frame: (position (3,), quaternion wxyz (4,) with w >= 0).

    Franka's modified-DH convention per joint: T_i = RotX(alpha_i) TransX(a_i) RotZ(q_i) TransZ(d_i).
    """
    q = np.asarray(q, dtype=np.float64)
    if q.shape != (len(spec.joints),):
        raise ValueError(f"dh_fk: q must have shape ({len(spec.joints)},), got {q.shape}")
    t = np.eye(4)
    for j, qi in zip(spec.joints, q, strict=True):
        t = t @ _rot_x(j.alpha) @ _trans(j.a, 0.0, 0.0) @ _rot_z(qi) @ _trans(0.0, 0.0, j.d)
    t = t @ _trans(0.0, 0.0, spec.flange_d) @ _rot_z(spec.tcp_rot_z) @ _trans(0.0, 0.0, spec.tcp_offset)
    return t[:3, 3].copy(), mat_to_quat(t[:3, :3])


# ------------------------------------------------------------------------------------------ MJCF

# Collision capsules per link, in the link frame: (from xyz, to xyz, radius). Coarse on purpose: they keep the
# arm out of the table and objects; the arm does not collide with itself (see contype/conaffinity below).
_LINK_CAPSULES: tuple[tuple[tuple[float, ...], ...], ...] = (
    ((0, 0, -0.26, 0, 0, -0.06, 0.06),),
    ((0, 0, -0.06, 0, 0, 0.06, 0.06), (0, 0, 0, 0, -0.15, 0, 0.06)),
    ((0, 0, -0.16, 0, 0, -0.02, 0.06), (0, 0, 0, 0.0825, 0, 0, 0.055)),
    ((0, 0, -0.05, 0, 0, 0.05, 0.055), (0, 0, 0, -0.0825, 0.12, 0, 0.055)),
    ((0, 0, -0.25, 0, 0, -0.06, 0.05), (0, 0.07, -0.24, 0, 0.07, -0.12, 0.03)),
    ((0, 0, -0.05, 0, 0, 0.03, 0.05), (0, 0, 0, 0.088, 0, 0, 0.045)),
    ((0, 0, -0.03, 0, 0, 0.07, 0.045),),
)
# Joint damping (N m s/rad) and armature (kg m^2): not Franka data, they stand in for the motor and gear
# dynamics the controller would otherwise excite at a 2 ms physics step.
_DAMPING = (1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5)
_ARMATURE = (0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05)
TABLE_TOP_Z = 0.0
TIMESTEP = PHYSICS_TIMESTEP  # the one number lives in config.py (env.control_hz's range needs it)
# Arm and fingers: contype 2 / conaffinity 1 -> they hit the world and objects (contype 1) but not each other.
_ARM_COLLIDE = 'contype="2" conaffinity="1"'


def _f(*xs: float) -> str:
    return " ".join(f"{x:.6g}" for x in xs)


def _link_inertia(mass: float) -> tuple[float, float, float]:
    """Diagonal inertia of a link modelled as a 0.06 m radius, 0.2 m long cylinder along its local z."""
    r, h = 0.06, 0.2
    ixx = mass * (3 * r * r + h * h) / 12
    return ixx, ixx, 0.5 * mass * r * r


# Wrist camera, in the hand frame (z along the fingers, x toward the robot's front at the ready pose): on the back
# of the hand (like a wrist-mounted RealSense), looking along the fingers tilted forward so that its optical axis
# crosses the tool axis ~0.1 m beyond the fingertips. The fingertips sit at the bottom edge of the image, the
# space below and ahead of them fills the rest; image up is the hand's -x.
WRIST_CAMERA_POS = (-0.07, 0.0, 0.02)
WRIST_CAMERA_TILT = 0.35
"""Angle (rad) between the wrist camera's optical axis and the tool axis, toward the hand's +x."""
WRIST_CAMERA_FOVY = 70.0


def _wrist_xyaxes() -> str:
    c, s = np.cos(WRIST_CAMERA_TILT), np.sin(WRIST_CAMERA_TILT)
    # Looking along (s, 0, c) means the camera's z is -(s, 0, c); x = hand -y, y = z cross x = (-c, 0, s), which
    # puts the fingers at the bottom of the image (as on the real wrist cameras) rather than at its top.
    return _f(0.0, -1.0, 0.0, -c, 0.0, s)


def _arm_xml(spec: ArmSpec) -> str:
    """The nested body chain link1 .. link7 -> hand -> fingers, innermost written first."""
    so = spec.finger_stroke
    fm = spec.finger_mass
    fingers = "".join(
        f"""
          <body name="{side}_finger" pos="0 0 0.0584">
            <inertial pos="0 {sign * 0.01} 0.025" mass="{fm}" diaginertia="2e-6 2e-6 1e-6"/>
            <joint name="finger_{side}" type="slide" axis="0 {sign} 0" range="0 {so}" damping="2"
                   armature="0.1"/>
            <geom name="{side}_pad" type="box" pos="0 {sign * 0.01} 0.025" size="0.01 0.01 0.025"
                  rgba="0.2 0.2 0.2 1" friction="1.5 0.01 0.001" {_ARM_COLLIDE}/>
          </body>"""
        for side, sign in (("left", 1), ("right", -1))
    )
    half = spec.tcp_rot_z / 2
    inner = f"""
        <body name="hand" pos="0 0 {spec.flange_d}" quat="{_f(np.cos(half), 0, 0, np.sin(half))}">
          <inertial pos="0 0 0.03" mass="{spec.hand_mass}" diaginertia="0.003 0.0005 0.003"/>
          <site name="ft_sensor" size="0.01" rgba="1 0 0 1" group="4"/>
          <site name="tcp" pos="0 0 {spec.tcp_offset}" size="0.008" rgba="0 1 0 1" group="4"/>
          <camera name="wrist" pos="{_f(*WRIST_CAMERA_POS)}" xyaxes="{_wrist_xyaxes()}" fovy="{WRIST_CAMERA_FOVY:g}"/>
          <geom name="hand_box" type="box" pos="0 0 0.03" size="0.03 0.1 0.03" rgba="0.9 0.9 0.9 1"
                {_ARM_COLLIDE}/>{fingers}
        </body>"""
    for i in reversed(range(len(spec.joints))):
        j = spec.joints[i]
        pos = (j.a, -np.sin(j.alpha) * j.d, np.cos(j.alpha) * j.d)
        quat = (np.cos(j.alpha / 2), np.sin(j.alpha / 2), 0.0, 0.0)
        geoms = "".join(
            f'\n        <geom type="capsule" fromto="{_f(*c[:6])}" size="{c[6]}" rgba="0.95 0.95 0.95 1" '
            f"{_ARM_COLLIDE}/>"
            for c in _LINK_CAPSULES[i]
        )
        inner = f"""
      <body name="link{i + 1}" pos="{_f(*pos)}" quat="{_f(*quat)}">
        <inertial pos="{_f(*j.com)}" mass="{j.mass}" diaginertia="{_f(*_link_inertia(j.mass))}"/>
        <joint name="joint{i + 1}" range="{_f(j.q_min, j.q_max)}" damping="{_DAMPING[i]}"
               armature="{_ARMATURE[i]}" actuatorfrcrange="{_f(-j.max_torque, j.max_torque)}"/>{geoms}{inner}
      </body>"""
    return inner


def look_at(pos: tuple[float, float, float], target: tuple[float, float, float]) -> str:
    """MJCF `xyaxes` of a camera at `pos` looking at `target` with the image's up direction toward world +z.

    A camera looks along its -z; x is the image's right, y its up (which is what `xyaxes` lists).
    """
    forward = np.subtract(target, pos, dtype=np.float64)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, (0.0, 0.0, 1.0))
    right /= np.linalg.norm(right)
    return _f(*right, *np.cross(right, forward))


# Front camera: in front of the robot, to its right and above, looking at the middle of the reach goal box. The
# oblique view (not straight down the x axis) turns the goal's depth into image position, and it frames the
# whole goal box, the gripper over the workspace and the table plane under both.
FRONT_CAMERA_POS = (1.5, -0.7, 1.0)
FRONT_CAMERA_TARGET = (0.44, 0.0, 0.28)
FRONT_CAMERA_FOVY = 44.0


def build_mjcf(spec: ArmSpec = PANDA, world: str = "") -> str:
    """MJCF text of the arm, its hand, a table in front of it, cameras, the F/T sensor and the actuators.

    `world` is extra `<worldbody>` XML a task adds (goal markers, objects); the arm's XML does not depend on it.
    """
    motors = "\n".join(
        f'    <motor name="torque{i + 1}" joint="joint{i + 1}" ctrlrange="{_f(-j.max_torque, j.max_torque)}"/>'
        for i, j in enumerate(spec.joints)
    )
    width = 2 * spec.finger_stroke
    return f"""<mujoco model="{spec.name}">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{TIMESTEP}" integrator="implicitfast"/>
  <visual><global offwidth="640" offheight="480"/></visual>
  <asset>
    <!-- 5 cm checks of two close browns: texture the cameras can see the arm move over (a plain table looks
         the same from everywhere), and a metric scale on the table in every image. -->
    <texture name="table_checker" type="2d" builtin="checker" width="64" height="64" rgb1="0.62 0.52 0.42"
             rgb2="0.52 0.43 0.34"/>
    <material name="table" texture="table_checker" texuniform="true" texrepeat="10 10"/>
  </asset>
  <default><geom solref="0.005 1" condim="3"/></default>
  <worldbody>
    <light pos="0.5 0 2" dir="0 0 -1" directional="true"/>
    <camera name="front" pos="{_f(*FRONT_CAMERA_POS)}" xyaxes="{look_at(FRONT_CAMERA_POS, FRONT_CAMERA_TARGET)}"
            fovy="{FRONT_CAMERA_FOVY:g}"/>
    <!-- A plane's third size is its rendering grid spacing: 1 m keeps the floor at 36 quads instead of 3600,
         a quarter of a 128 px front camera frame's cost on a software GL. -->
    <geom name="floor" type="plane" pos="0 0 -0.75" size="3 3 1" rgba="0.3 0.3 0.35 1" contype="0"
          conaffinity="0"/>
    <geom name="table" type="box" pos="0.35 0 {TABLE_TOP_Z - 0.025}" size="0.65 0.7 0.025"
          material="table" contype="1" conaffinity="3"/>
    <body name="link0">
      <inertial pos="-0.04 0 0.06" mass="2.8" diaginertia="0.01 0.01 0.01"/>
      <geom type="cylinder" pos="-0.03 0 0.07" size="0.08 0.07" rgba="0.95 0.95 0.95 1" contype="0"
            conaffinity="0"/>{_arm_xml(spec)}
    </body>{world}
  </worldbody>
  <tendon>
    <fixed name="gripper_width"><joint joint="finger_left" coef="1"/><joint joint="finger_right" coef="1"/></fixed>
  </tendon>
  <equality><joint joint1="finger_left" joint2="finger_right"/></equality>
  <actuator>
{motors}
    <position name="gripper" tendon="gripper_width" kp="1000" kv="50" ctrlrange="0 {width}"
              forcerange="{_f(-spec.grasp_force, spec.grasp_force)}"/>
  </actuator>
  <sensor>
    <force name="ft_force" site="ft_sensor"/>
    <torque name="ft_torque" site="ft_sensor"/>
  </sensor>
</mujoco>
"""


@lru_cache(maxsize=4)
def _compiled(spec: ArmSpec, world: str) -> mujoco.MjModel:
    return mujoco.MjModel.from_xml_string(build_mjcf(spec, world))


def load_model(spec: ArmSpec = PANDA, world: str = "") -> mujoco.MjModel:
    """A fresh MjModel for `spec` plus the task's `world` XML (compiled once per pair and copied, so envs never
    share mutable state)."""
    return _compiled(spec, world).__copy__()
