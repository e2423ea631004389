"""Wire compatibility of the bridge's ROS 2 messages: robot_bridge/msgs.py against an independent CDR implementation.

For every message type the bridge uses, random field values (empty and odd-length strings and sequences, non-ASCII
text, negative times, the integer types' extremes, infinities) serialize with Cyclone DDS to exactly the bytes the
`rosbags` package (its ROS 2 Humble type store: field names, order and types from the standard `.msg` files)
produces, and those bytes deserialize back to the same values. The field values are generated from rosbags' field
definitions, so a renamed, reordered or mistyped field in msgs.py fails here. Also the conversions at the wire's
edge (quaternion w-first in, x, y, z, w on the wire; seconds <-> Time) and the ROS/DDS topic names.
"""

import dataclasses
import math

import numpy as np
import pytest
from cyclonedds.idl import IdlStruct
from rosbags.interfaces import Nodetype
from rosbags.typesys import Stores, get_typestore

from robot_bridge import msgs
from robot_bridge.backend import topic_name
from robot_bridge.dds_backend import dds_topic

TS = get_typestore(Stores.ROS2_HUMBLE)

# ROS 2 type -> our IDL type: every IdlStruct in msgs.py must appear here (checked below)
OURS = {
    "builtin_interfaces/msg/Time": msgs.Time,
    "std_msgs/msg/Header": msgs.Header,
    "geometry_msgs/msg/Point": msgs.Point,
    "geometry_msgs/msg/Quaternion": msgs.Quaternion,
    "geometry_msgs/msg/Pose": msgs.Pose,
    "geometry_msgs/msg/PoseStamped": msgs.PoseStamped,
    "geometry_msgs/msg/Vector3": msgs.Vector3,
    "geometry_msgs/msg/Wrench": msgs.Wrench,
    "geometry_msgs/msg/WrenchStamped": msgs.WrenchStamped,
    "sensor_msgs/msg/JointState": msgs.JointState,
    "std_msgs/msg/MultiArrayDimension": msgs.MultiArrayDimension,
    "std_msgs/msg/MultiArrayLayout": msgs.MultiArrayLayout,
    "std_msgs/msg/Float64MultiArray": msgs.Float64MultiArray,
}
DRAWS = 8
INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1)}
ALPHABET = list("abcXYZ_/019 ") + ["é", "ß", "→"]  # non-ASCII: lengths on the wire are UTF-8 bytes


def _base_value(kind: str, rng: np.random.Generator, draw: int):
    if kind in INT_RANGES:
        lo, hi = INT_RANGES[kind]
        if draw == 0:
            return 0
        if draw == 1:
            return lo  # negative times: Time.sec at its minimum
        if draw == 2:
            return hi
        return int(rng.integers(lo, hi, endpoint=True))
    if kind == "float64":
        special = [0.0, -0.0, math.inf, -math.inf, 5e-324, -1.7976931348623157e308]
        if draw < 2 or rng.random() < 0.2:
            return float(special[int(rng.integers(len(special)))])
        return float(rng.normal() * 10.0 ** int(rng.integers(-6, 6)))
    if kind == "string":
        n = 0 if draw == 0 else int(rng.choice([1, 2, 3, 5, 8, 13]))  # empty and odd lengths shift the alignment
        return "".join(rng.choice(ALPHABET, size=n))
    raise AssertionError(f"no generator for ROS base type {kind!r}: extend the test")


def _seq_len(rng: np.random.Generator, draw: int) -> int:
    return 0 if draw == 0 else int(rng.choice([1, 2, 3, 5, 7]))


def _values(ros_type: str, rng: np.random.Generator, draw: int) -> dict:
    """Random field values for `ros_type`, shaped by rosbags' field definitions: base values, dicts for nested
    messages, lists for sequences."""
    out = {}
    for name, (node, detail) in TS.fielddefs[ros_type][1]:
        if node == Nodetype.BASE:
            out[name] = _base_value(detail[0], rng, draw)
        elif node == Nodetype.NAME:
            out[name] = _values(detail, rng, draw)
        elif node == Nodetype.SEQUENCE:
            (inner_node, inner), _bound = detail
            n = _seq_len(rng, draw)
            if inner_node == Nodetype.BASE:
                out[name] = [_base_value(inner[0], rng, draw) for _ in range(n)]
            else:
                out[name] = [_values(inner, rng, draw) for _ in range(n)]
        else:
            raise AssertionError(f"{ros_type}.{name}: no generator for node type {node}: extend the test")
    return out


def _rosbags_msg(ros_type: str, values: dict):
    kwargs = {}
    for name, (node, detail) in TS.fielddefs[ros_type][1]:
        v = values[name]
        if node == Nodetype.NAME:
            kwargs[name] = _rosbags_msg(detail, v)
        elif node == Nodetype.SEQUENCE:
            (inner_node, inner), _bound = detail
            if inner_node == Nodetype.NAME:
                kwargs[name] = [_rosbags_msg(inner, x) for x in v]
            elif inner[0] == "string":
                kwargs[name] = list(v)
            else:
                kwargs[name] = np.array(v, dtype=np.dtype(inner[0]))  # rosbags takes numeric sequences as arrays
        else:
            kwargs[name] = v
    return TS.types[ros_type](**kwargs)


def _our_msg(ros_type: str, values: dict) -> IdlStruct:
    kwargs = {}
    for name, (node, detail) in TS.fielddefs[ros_type][1]:
        v = values[name]
        if node == Nodetype.NAME:
            kwargs[name] = _our_msg(detail, v)
        elif node == Nodetype.SEQUENCE and detail[0][0] == Nodetype.NAME:
            kwargs[name] = [_our_msg(detail[0][1], x) for x in v]
        else:
            kwargs[name] = v
    return OURS[ros_type](**kwargs)


def test_every_idl_type_in_msgs_is_checked_here():
    defined = {obj for obj in vars(msgs).values()
               if isinstance(obj, type) and issubclass(obj, IdlStruct) and obj is not IdlStruct}
    assert defined == set(OURS.values())


@pytest.mark.parametrize("ros_type", sorted(OURS))
def test_type_name_and_fields_match_ros(ros_type):
    cls = OURS[ros_type]
    pkg, _msg, name = ros_type.split("/")
    assert cls.__idl_typename__ == f"{pkg}::msg::dds_::{name}_"
    assert cls.__idl_annotations__.get("extensibility") == "final"
    assert [f.name for f in dataclasses.fields(cls)] == [n for n, _ in TS.fielddefs[ros_type][1]]


@pytest.mark.parametrize("draw", range(DRAWS))
@pytest.mark.parametrize("ros_type", sorted(OURS))
def test_cdr_bytes_equal_rosbags(ros_type, draw):
    rng = np.random.default_rng([draw, sorted(OURS).index(ros_type)])
    values = _values(ros_type, rng, draw)
    ours = _our_msg(ros_type, values)
    expected = TS.serialize_cdr(_rosbags_msg(ros_type, values), ros_type)
    assert ours.serialize() == expected
    assert OURS[ros_type].deserialize(expected) == ours


def test_draws_cover_the_edge_cases():
    """The draws above do include what the wire test claims to cover (the generator is not vacuous)."""
    seen = {"empty_str": False, "odd_str": False, "empty_seq": False, "odd_seq": False, "negative_sec": False}
    for draw in range(DRAWS):
        rng = np.random.default_rng([draw, 0])
        js = _values("sensor_msgs/msg/JointState", rng, draw)
        lengths = [len(s.encode()) for s in js["name"]] + [len(js["header"]["frame_id"].encode())]
        seen["empty_str"] |= 0 in lengths
        seen["odd_str"] |= any(n % 2 for n in lengths)
        seen["empty_seq"] |= len(js["position"]) == 0
        seen["odd_seq"] |= len(js["position"]) % 2 == 1
        seen["negative_sec"] |= js["header"]["stamp"]["sec"] < 0
    assert all(seen.values()), seen


def _rosbags_pose(xyz, xyzw, sec, nanosec, frame):
    t = TS.types
    return t["geometry_msgs/msg/PoseStamped"](
        header=t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
                                        frame_id=frame),
        pose=t["geometry_msgs/msg/Pose"](position=t["geometry_msgs/msg/Point"](x=xyz[0], y=xyz[1], z=xyz[2]),
                                         orientation=t["geometry_msgs/msg/Quaternion"](
                                             x=xyzw[0], y=xyzw[1], z=xyzw[2], w=xyzw[3])))


def test_pose_stamped_takes_w_first_and_writes_xyzw():
    quat_wxyz = np.array([0.1, 0.2, 0.3, 0.4])
    msg = msgs.pose_stamped([0.5, -0.25, 0.75], quat_wxyz, -1.25, "base")
    expected = TS.serialize_cdr(_rosbags_pose([0.5, -0.25, 0.75], [0.2, 0.3, 0.4, 0.1], -2, 750_000_000, "base"),
                                "geometry_msgs/msg/PoseStamped")
    assert msg.serialize() == expected
    position, quat = msgs.pose_of(msgs.PoseStamped.deserialize(expected))
    np.testing.assert_array_equal(position, [0.5, -0.25, 0.75])
    np.testing.assert_array_equal(quat, quat_wxyz)


def test_wrench_joint_state_and_array_helpers_round_trip():
    w = msgs.wrench_stamped([1.0, -2.0, 3.0], [-0.1, 0.2, -0.3], 12.5, "base")
    force, torque = msgs.wrench_of(msgs.WrenchStamped.deserialize(w.serialize()))
    np.testing.assert_array_equal(force, [1.0, -2.0, 3.0])
    np.testing.assert_array_equal(torque, [-0.1, 0.2, -0.3])
    assert w.header.frame_id == "base" and msgs.seconds_of(w.header.stamp) == 12.5

    js = msgs.joint_state(["j1", "j2", "j3"], np.array([0.1, 0.2, 0.3]), effort=[1.0, 2.0, 3.0], stamp_s=3.0)
    back = msgs.JointState.deserialize(js.serialize())
    assert back.name == ["j1", "j2", "j3"] and back.position == [0.1, 0.2, 0.3]
    assert back.velocity == [] and back.effort == [1.0, 2.0, 3.0]

    arr = msgs.Float64MultiArray.deserialize(msgs.float64_array(np.array([0.25])).serialize())
    assert arr.data == [0.25] and arr.layout.dim == [] and arr.layout.data_offset == 0


@pytest.mark.parametrize(("seconds", "sec", "nanosec"), [
    (0.0, 0, 0), (1.5, 1, 500_000_000), (-1.5, -2, 500_000_000), (-0.000000001, -1, 999_999_999),
    (0.9999999999, 1, 0), (1_700_000_000.25, 1_700_000_000, 250_000_000), (-(2.0**31), -(2**31), 0),
])
def test_stamp_of_keeps_nanosec_non_negative(seconds, sec, nanosec):
    t = msgs.stamp_of(seconds)
    assert (t.sec, t.nanosec) == (sec, nanosec)
    assert 0 <= t.nanosec < 1_000_000_000
    assert msgs.seconds_of(t) == pytest.approx(seconds, abs=1e-9 * max(1.0, abs(seconds)))


def test_helpers_reject_bad_values_by_name():
    with pytest.raises(ValueError, match="finite"):
        msgs.stamp_of(math.nan)
    with pytest.raises(ValueError, match="int32"):
        msgs.stamp_of(2.0**31)
    with pytest.raises(ValueError, match=r"quaternion.*4 values"):
        msgs.pose_stamped([0, 0, 0], [1, 0, 0], 0.0, "base")
    with pytest.raises(ValueError, match=r"velocity: expected 2 values"):
        msgs.joint_state(["a", "b"], [0.0, 0.0], velocity=[1.0])


@pytest.mark.parametrize(("namespace", "topic", "ros", "dds"), [
    ("", "/target_pose", "/target_pose", "rt/target_pose"),
    ("/fr3", "/target_pose", "/fr3/target_pose", "rt/fr3/target_pose"),
    ("fr3/", "gripper/joint_states", "/fr3/gripper/joint_states", "rt/fr3/gripper/joint_states"),
    ("/", "/franka_robot_state_broadcaster/current_pose", "/franka_robot_state_broadcaster/current_pose",
     "rt/franka_robot_state_broadcaster/current_pose"),
])
def test_topic_names(namespace, topic, ros, dds):
    assert topic_name(namespace, topic) == ros
    assert dds_topic(topic_name(namespace, topic)) == dds
