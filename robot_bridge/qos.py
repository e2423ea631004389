"""The DDS QoS profiles the bridge uses, named after the ROS 2 profiles and franka_ros2 publishers they mirror.

Owns: `ros_default()` (rclcpp's default: reliable, keep last 10, volatile), `sensor_data()` (best effort, keep last
5), `franka_state()` (best effort, keep last 1: franka_ros2's state and convenience topics), `command()` (reliable,
keep last 1: the target pose CRISP tracks) and `state_reader_qos` for `bridge.state_reliability`.

Matching rules that matter here (REFERENCE.md "ROS 2 facts"): a reliable reader never matches a best-effort writer,
so state is read best effort unless the user says otherwise; a best-effort reader matches either. Every profile
also fixes the data representation to what rmw_cyclonedds uses (plain CDR, XCDR1 first) so a ROS 2 node matches
our readers and writers, while XCDR2 writers are still accepted.
"""

from __future__ import annotations

from cyclonedds.qos import Policy, Qos
from cyclonedds.util import duration

# A reliable writer blocks at most this long when its history is full; with keep-last it practically never is,
# and the control loop must not stall on the network, so keep it short.
_MAX_BLOCKING = duration(milliseconds=100)
# XCDR1 first: a writer serializes with the first representation, and ROS 2 (rmw_cyclonedds) readers accept XCDR1.
_DATA_REPRESENTATION = Policy.DataRepresentation(use_cdrv0_representation=True, use_xcdrv2_representation=True)

STATE_RELIABILITIES = ("best_effort", "reliable")


def _qos(reliable: bool, depth: int) -> Qos:
    reliability = Policy.Reliability.Reliable(max_blocking_time=_MAX_BLOCKING) if reliable \
        else Policy.Reliability.BestEffort
    return Qos(reliability, Policy.History.KeepLast(depth=depth), Policy.Durability.Volatile, _DATA_REPRESENTATION)


def ros_default() -> Qos:
    """ROS 2's default profile (rclcpp/rclpy `QoSProfile(depth=10)`): reliable, keep last 10, volatile."""
    return _qos(reliable=True, depth=10)


def sensor_data() -> Qos:
    """ROS 2's `qos_profile_sensor_data`: best effort, keep last 5, volatile."""
    return _qos(reliable=False, depth=5)


def franka_state() -> Qos:
    """How franka_ros2 publishes its state and convenience topics (current pose, external wrench, joint states):
    best effort, keep last 1, volatile."""
    return _qos(reliable=False, depth=1)


def command() -> Qos:
    """The target pose topic (CRISP subscribes with depth 1): reliable, keep last 1, volatile."""
    return _qos(reliable=True, depth=1)


def state_reader_qos(reliability: str) -> Qos:
    """The QoS of a state subscription for `bridge.state_reliability` (best_effort | reliable), keep last 1 (only
    the newest sample matters). A reliable reader receives nothing from franka_ros2's best-effort writers."""
    if reliability not in STATE_RELIABILITIES:
        raise ValueError(f"bridge.state_reliability: got {reliability!r}, expected one of {STATE_RELIABILITIES}")
    return _qos(reliable=reliability == "reliable", depth=1)
