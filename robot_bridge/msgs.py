"""The ROS 2 messages the bridge speaks, as Cyclone DDS IDL types, and the conversions at the wire's edge.

Owns: one `IdlStruct` per ROS 2 message the bridge uses (`builtin_interfaces/Time`, `std_msgs/Header`,
`geometry_msgs/{Point, Quaternion, Pose, PoseStamped, Vector3, Wrench, WrenchStamped}`, `sensor_msgs/JointState`,
`std_msgs/{MultiArrayDimension, MultiArrayLayout, Float64MultiArray}`), each registered under the DDS type name
ROS 2 gives it (`pkg/msg/T` -> `pkg::msg::dds_::T_`) with the standard `.msg` fields in their order, so the bytes on
the wire are ROS 2's CDR and any ROS 2 node matches them; and the helpers that build and read them from numpy.

Conventions: quaternions are w, x, y, z everywhere in this project and x, y, z, w in ROS messages; `pose_stamped`
and `pose_of` are the only places that convert. Times are seconds (float) here and `Time(sec, nanosec)` on the
wire, with `nanosec` in [0, 1e9) also for negative times (ROS's convention).

No `from __future__ import annotations` here: cyclonedds resolves the field types from the live annotations.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from cyclonedds.idl import IdlStruct
from cyclonedds.idl.annotations import final
from cyclonedds.idl.types import float64, int32, sequence, uint32

_NS_PER_S = 1_000_000_000


@final
@dataclass
class Time(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
    """builtin_interfaces/Time: seconds and nanoseconds (ROS time)."""

    sec: int32 = 0
    nanosec: uint32 = 0


@final
@dataclass
class Header(IdlStruct, typename="std_msgs::msg::dds_::Header_"):
    """std_msgs/Header: the stamp and the frame the data is expressed in."""

    stamp: Time = field(default_factory=Time)
    frame_id: str = ""


@final
@dataclass
class Point(IdlStruct, typename="geometry_msgs::msg::dds_::Point_"):
    """geometry_msgs/Point (m)."""

    x: float64 = 0.0
    y: float64 = 0.0
    z: float64 = 0.0


@final
@dataclass
class Quaternion(IdlStruct, typename="geometry_msgs::msg::dds_::Quaternion_"):
    """geometry_msgs/Quaternion: x, y, z, w in this order on the wire (identity by default, as in ROS)."""

    x: float64 = 0.0
    y: float64 = 0.0
    z: float64 = 0.0
    w: float64 = 1.0


@final
@dataclass
class Pose(IdlStruct, typename="geometry_msgs::msg::dds_::Pose_"):
    """geometry_msgs/Pose."""

    position: Point = field(default_factory=Point)
    orientation: Quaternion = field(default_factory=Quaternion)


@final
@dataclass
class PoseStamped(IdlStruct, typename="geometry_msgs::msg::dds_::PoseStamped_"):
    """geometry_msgs/PoseStamped: the target pose (CRISP) and the TCP pose (pose broadcaster)."""

    header: Header = field(default_factory=Header)
    pose: Pose = field(default_factory=Pose)


@final
@dataclass
class Vector3(IdlStruct, typename="geometry_msgs::msg::dds_::Vector3_"):
    """geometry_msgs/Vector3."""

    x: float64 = 0.0
    y: float64 = 0.0
    z: float64 = 0.0


@final
@dataclass
class Wrench(IdlStruct, typename="geometry_msgs::msg::dds_::Wrench_"):
    """geometry_msgs/Wrench: force (N) and torque (N m)."""

    force: Vector3 = field(default_factory=Vector3)
    torque: Vector3 = field(default_factory=Vector3)


@final
@dataclass
class WrenchStamped(IdlStruct, typename="geometry_msgs::msg::dds_::WrenchStamped_"):
    """geometry_msgs/WrenchStamped: the external wrench franka_ros2 publishes."""

    header: Header = field(default_factory=Header)
    wrench: Wrench = field(default_factory=Wrench)


@final
@dataclass
class JointState(IdlStruct, typename="sensor_msgs::msg::dds_::JointState_"):
    """sensor_msgs/JointState: per joint name, position, velocity and effort (the last three may be empty)."""

    header: Header = field(default_factory=Header)
    name: sequence[str] = field(default_factory=list)
    position: sequence[float64] = field(default_factory=list)
    velocity: sequence[float64] = field(default_factory=list)
    effort: sequence[float64] = field(default_factory=list)


@final
@dataclass
class MultiArrayDimension(IdlStruct, typename="std_msgs::msg::dds_::MultiArrayDimension_"):
    """std_msgs/MultiArrayDimension."""

    label: str = ""
    size: uint32 = 0
    stride: uint32 = 0


@final
@dataclass
class MultiArrayLayout(IdlStruct, typename="std_msgs::msg::dds_::MultiArrayLayout_"):
    """std_msgs/MultiArrayLayout."""

    dim: sequence[MultiArrayDimension] = field(default_factory=list)
    data_offset: uint32 = 0


@final
@dataclass
class Float64MultiArray(IdlStruct, typename="std_msgs::msg::dds_::Float64MultiArray_"):
    """std_msgs/Float64MultiArray: the gripper command of CRISP's topic interface."""

    layout: MultiArrayLayout = field(default_factory=MultiArrayLayout)
    data: sequence[float64] = field(default_factory=list)


def stamp_of(seconds: float) -> Time:
    """`seconds` (ROS time, may be negative) as a `Time`, rounded to the nanosecond, nanosec in [0, 1e9)."""
    if not math.isfinite(seconds):
        raise ValueError(f"stamp: seconds must be finite, got {seconds!r}")
    # split before scaling: seconds * 1e9 of a wall-clock time (~1.7e18) is past float64's exact integers
    sec = math.floor(seconds)  # floor, not trunc: nanosec stays non-negative for negative times
    nanosec = round((seconds - sec) * _NS_PER_S)  # seconds - sec is exact for a float
    if nanosec == _NS_PER_S:
        sec, nanosec = sec + 1, 0
    if not -(2**31) <= sec < 2**31:
        raise ValueError(f"stamp: {seconds!r} s does not fit builtin_interfaces/Time (int32 seconds)")
    return Time(sec=sec, nanosec=nanosec)


def seconds_of(stamp: Time) -> float:
    """A `Time` as seconds."""
    return stamp.sec + stamp.nanosec / _NS_PER_S


def _vec(values: Sequence[float] | np.ndarray, n: int, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.shape != (n,):
        raise ValueError(f"{what}: expected {n} values, got shape {np.shape(values)}")
    return arr


def pose_stamped(position: Sequence[float] | np.ndarray, quat_wxyz: Sequence[float] | np.ndarray, stamp_s: float,
                 frame_id: str) -> PoseStamped:
    """A `PoseStamped` from `position` (3,) m and `quat_wxyz` (4,) w, x, y, z (written x, y, z, w)."""
    p = _vec(position, 3, "pose position")
    w, x, y, z = _vec(quat_wxyz, 4, "pose quaternion (w, x, y, z)")
    return PoseStamped(header=Header(stamp=stamp_of(stamp_s), frame_id=frame_id),
                       pose=Pose(position=Point(x=float(p[0]), y=float(p[1]), z=float(p[2])),
                                 orientation=Quaternion(x=float(x), y=float(y), z=float(z), w=float(w))))


def pose_of(msg: PoseStamped) -> tuple[np.ndarray, np.ndarray]:
    """`(position (3,), quat (4,) w, x, y, z)` of a `PoseStamped` (which carries x, y, z, w)."""
    p, q = msg.pose.position, msg.pose.orientation
    return np.array([p.x, p.y, p.z]), np.array([q.w, q.x, q.y, q.z])


def wrench_stamped(force: Sequence[float] | np.ndarray, torque: Sequence[float] | np.ndarray, stamp_s: float,
                   frame_id: str) -> WrenchStamped:
    """A `WrenchStamped` from `force` (3,) N and `torque` (3,) N m."""
    f = _vec(force, 3, "wrench force")
    t = _vec(torque, 3, "wrench torque")
    return WrenchStamped(header=Header(stamp=stamp_of(stamp_s), frame_id=frame_id),
                         wrench=Wrench(force=Vector3(x=float(f[0]), y=float(f[1]), z=float(f[2])),
                                       torque=Vector3(x=float(t[0]), y=float(t[1]), z=float(t[2]))))


def wrench_of(msg: WrenchStamped) -> tuple[np.ndarray, np.ndarray]:
    """`(force (3,), torque (3,))` of a `WrenchStamped`."""
    f, t = msg.wrench.force, msg.wrench.torque
    return np.array([f.x, f.y, f.z]), np.array([t.x, t.y, t.z])


def joint_state(names: Sequence[str], position: Sequence[float] | np.ndarray,
                velocity: Sequence[float] | np.ndarray = (), effort: Sequence[float] | np.ndarray = (),
                stamp_s: float = 0.0) -> JointState:
    """A `JointState`; `position`, and `velocity`/`effort` unless empty, have one value per name (ROS's rule)."""
    names = [str(n) for n in names]
    cols = {"position": position, "velocity": velocity, "effort": effort}
    out: dict[str, list[float]] = {}
    for key, values in cols.items():
        vals = [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]
        if vals and len(vals) != len(names):
            raise ValueError(f"joint_state {key}: expected {len(names)} values (one per name) or none, got {len(vals)}")
        out[key] = vals
    return JointState(header=Header(stamp=stamp_of(stamp_s), frame_id=""), name=names, **out)


def float64_array(values: Sequence[float] | np.ndarray) -> Float64MultiArray:
    """A one-dimensional `Float64MultiArray` with an empty layout (how ROS 2 forward command controllers take it)."""
    return Float64MultiArray(layout=MultiArrayLayout(dim=[], data_offset=0),
                             data=[float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)])
