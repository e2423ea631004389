"""Any ROS 2 client can drive the fake Franka: one that knows only the standard message definitions (the `.msg`
text below, as in the ROS 2 message packages) and the topic names in DESIGN.md, and imports nothing from
robot_bridge. Its DDS types are generated here from that text, their bytes checked against `rosbags`' CDR; it
publishes a target with ROS 2's default QoS and reads the state with the sensor-data QoS, as `ros2 topic` would."""

import dataclasses
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
from cyclonedds.core import Policy
from cyclonedds.domain import DomainParticipant
from cyclonedds.idl import IdlStruct
from cyclonedds.idl import annotations as annotate
from cyclonedds.idl import types as idl
from cyclonedds.pub import DataWriter
from cyclonedds.qos import Qos
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = 47
LOOPBACK = ('<CycloneDDS><Domain Id="any"><General><Interfaces><NetworkInterface address="127.0.0.1"/>'
            '</Interfaces></General></Domain></CycloneDDS>')
os.environ.setdefault("CYCLONEDDS_URI", LOOPBACK)

# The standard definitions (comments and constants dropped), keyed by their ROS 2 names.
MSG = {
    "builtin_interfaces/msg/Time": "int32 sec\nuint32 nanosec",
    "std_msgs/msg/Header": "builtin_interfaces/Time stamp\nstring frame_id",
    "geometry_msgs/msg/Point": "float64 x\nfloat64 y\nfloat64 z",
    "geometry_msgs/msg/Quaternion": "float64 x 0\nfloat64 y 0\nfloat64 z 0\nfloat64 w 1",
    "geometry_msgs/msg/Pose": "Point position\nQuaternion orientation",
    "geometry_msgs/msg/PoseStamped": "std_msgs/Header header\nPose pose",
}
PRIMITIVES = {"int32": idl.int32, "uint32": idl.uint32, "float64": idl.float64, "string": str}


def generate(definitions: dict[str, str]) -> dict[str, type]:
    """IdlStruct classes for `definitions`, with the DDS names ROS 2 uses (`pkg::msg::dds_::T_`)."""
    out: dict[str, type] = {}

    def resolve(name: str, package: str) -> object:
        if name in PRIMITIVES:
            return PRIMITIVES[name]
        full = f"{name.split('/')[0]}/msg/{name.split('/')[1]}" if "/" in name else f"{package}/msg/{name}"
        if full not in out:
            build(full)
        return out[full]

    def build(full: str) -> None:
        package, _, name = full.split("/")
        fields = []
        for line in definitions[full].splitlines():
            type_name, field_name = line.split()[:2]
            fields.append((field_name, resolve(type_name, package)))

        def body(ns: dict) -> None:
            ns["__annotations__"] = dict(fields)

        cls = types.new_class(name, (IdlStruct,), {"typename": f"{package}::msg::dds_::{name}_"}, body)
        out[full] = annotate.final(dataclasses.dataclass(cls))

    for full in definitions:
        if full not in out:
            build(full)
    return out


T = generate(MSG)


def pose_stamped(x: float, y: float, z: float, q_xyzw: tuple[float, float, float, float]) -> object:
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]
    Point, Quaternion = T["geometry_msgs/msg/Point"], T["geometry_msgs/msg/Quaternion"]
    Pose, PoseStamped = T["geometry_msgs/msg/Pose"], T["geometry_msgs/msg/PoseStamped"]
    now = time.time()
    return PoseStamped(Header(Time(int(now), int((now % 1) * 1e9)), "base"),
                       Pose(Point(x, y, z), Quaternion(*q_xyzw)))


def test_the_generated_types_serialize_like_rosbags() -> None:
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    msg = pose_stamped(0.4, -0.1, 0.3, (1.0, 0.0, 0.0, 0.0))
    r = store.types
    ref = r["geometry_msgs/msg/PoseStamped"](
        header=r["std_msgs/msg/Header"](stamp=r["builtin_interfaces/msg/Time"](sec=msg.header.stamp.sec,
                                                                               nanosec=msg.header.stamp.nanosec),
                                        frame_id="base"),
        pose=r["geometry_msgs/msg/Pose"](position=r["geometry_msgs/msg/Point"](x=0.4, y=-0.1, z=0.3),
                                         orientation=r["geometry_msgs/msg/Quaternion"](x=1.0, y=0.0, z=0.0, w=0.0)))
    assert msg.serialize() == bytes(store.serialize_cdr(ref, "geometry_msgs/msg/PoseStamped"))


def ros_default() -> Qos:  # rclcpp/rclpy's default: reliable, keep last 10, volatile
    return Qos(Policy.Reliability.Reliable(0), Policy.History.KeepLast(10), Policy.Durability.Volatile)


def sensor_data() -> Qos:  # rmw_qos_profile_sensor_data: best effort, keep last 5, volatile
    return Qos(Policy.Reliability.BestEffort, Policy.History.KeepLast(5), Policy.Durability.Volatile)


@pytest.mark.slow
def test_a_standard_ros2_client_reads_the_fake_franka_and_moves_it() -> None:
    ns = f"/client{os.getpid()}"
    fake = subprocess.Popen([sys.executable, "-m", "robot_bridge.fake_franka", "--domain-id", str(DOMAIN),
                             "--namespace", ns], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "MUJOCO_GL": "egl"})
    try:
        dp = DomainParticipant(DOMAIN)
        PoseStamped = T["geometry_msgs/msg/PoseStamped"]
        state = DataReader(dp, Topic(dp, f"rt{ns}/current_pose", PoseStamped), sensor_data())
        target = DataWriter(dp, Topic(dp, f"rt{ns}/target_pose", PoseStamped), ros_default())

        def newest(timeout_s: float = 5.0) -> object:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                got = [s for s in state.take(N=100) if isinstance(s, PoseStamped)]
                if got:
                    return got[-1]
                time.sleep(0.005)
            raise AssertionError(f"no pose on rt{ns}/current_pose within {timeout_s} s")

        start = newest()
        p, q = start.pose.position, start.pose.orientation
        goal = np.array([p.x, p.y - 0.05, p.z])
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            target.write(pose_stamped(*goal, (q.x, q.y, q.z, q.w)))  # x, y, z, w: the ROS order
            time.sleep(0.02)
        end = newest()
        reached = np.array([end.pose.position.x, end.pose.position.y, end.pose.position.z])
        assert np.linalg.norm(reached - goal) < 0.005, (reached, goal)
        assert end.header.frame_id == "base"
    finally:
        fake.send_signal(signal.SIGINT)
        fake.wait(10)
