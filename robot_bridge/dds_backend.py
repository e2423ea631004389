"""The Cyclone DDS backend: the ROS 2 wire protocol without a ROS install, topics only.

Owns: `DdsBackend`, a `Backend` over one Cyclone DDS participant in `bridge.domain_id` — the target pose writer
(reliable, depth 1, or the dry-run shadow topic), the gripper command writer, one reader per state topic (TCP pose,
joint state, external wrench, gripper joint state) drained by a listener so `latest_*` never block and the newest
sample wins, and the QoS-mismatch warning (a reliable reader next to franka_ros2's best-effort writers receives
nothing, silently, unless someone says so).

A ROS 2 topic `/a/b` is the DDS topic `rt/a/b`; types and QoS come from `msgs` and `qos`. ROS 2 actions (error
recovery, the franka_gripper actions) are not interoperable between DDS vendors on the wire, so `recover_errors`
raises `BackendUnsupported` naming the rclpy backend and the manual way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from cyclonedds.core import DDSException, Listener
from cyclonedds.domain import DomainParticipant
from cyclonedds.pub import DataWriter
from cyclonedds.qos import Qos
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic

from robot_bridge import msgs, qos
from robot_bridge.backend import (
    Backend,
    BackendError,
    BackendUnsupported,
    GripperSample,
    JointSample,
    PoseSample,
    WrenchSample,
    check_opening,
    topic_name,
)
from serl_stack.config import BridgeConfig, check_section

log = logging.getLogger(__name__)

# DDS QosPolicyId_t values (DDS 1.4 spec, 2.2.3) that a status reports as the policy that made a match fail.
_POLICY_NAMES = {1: "USER_DATA", 2: "DURABILITY", 3: "PRESENTATION", 4: "DEADLINE", 5: "LATENCY_BUDGET",
                 6: "OWNERSHIP", 7: "OWNERSHIP_STRENGTH", 8: "LIVELINESS", 9: "TIME_BASED_FILTER", 10: "PARTITION",
                 11: "RELIABILITY", 12: "DESTINATION_ORDER", 13: "HISTORY", 14: "RESOURCE_LIMITS",
                 21: "LIFESPAN", 23: "DATA_REPRESENTATION", 24: "TYPE_CONSISTENCY"}
_RELIABILITY = 11
# More than one sample can be queued between two listener calls; take them all so only the newest survives.
_TAKE_MAX = 64


def dds_topic(ros_name: str) -> str:
    """The DDS topic that carries the ROS 2 topic `ros_name` (`/fr3/target_pose` -> `rt/fr3/target_pose`)."""
    return "rt" + ros_name


class DdsBackend(Backend):
    """A Franka over Cyclone DDS. Construction creates the participant, the writers and the readers; state then
    arrives on Cyclone's threads. `close()` releases all of it (also on garbage collection)."""

    def __init__(self, cfg: BridgeConfig) -> None:
        check_section(cfg)  # a domain id or reliability out of range is a ConfigError naming the field
        if not cfg.gripper_command_topic.strip("/"):
            raise BackendUnsupported("bridge.gripper_command_topic is empty, which selects the franka_gripper actions, "
                                     "and the DDS backend does topics only; expected a gripper command topic (CRISP's: "
                                     "/gripper/gripper_position_controller/commands) or bridge.backend: rclpy")
        self._cfg = cfg
        self._lock = threading.Lock()
        self._closed = False
        self._mismatches: dict[str, set[str]] = {}  # topic -> the QoS policies a peer failed to match on
        self._logged: set[tuple[str, str]] = set()  # (topic, problem) already logged
        self._dry_run_gripper_noted = False
        ns = cfg.namespace
        self.target_topic = topic_name(ns, cfg.dry_run_topic if cfg.dry_run else cfg.target_pose_topic)
        self.gripper_command_topic = topic_name(ns, cfg.gripper_command_topic)
        # state kind -> full ROS topic name; the order is the one `state_topics` and error messages use
        self._state_names = {"pose": topic_name(ns, cfg.current_pose_topic),
                             "joints": topic_name(ns, cfg.joint_states_topic),
                             "wrench": topic_name(ns, cfg.wrench_topic),
                             "gripper": topic_name(ns, cfg.gripper_state_topic)}
        self._latest: dict[str, Any] = dict.fromkeys(self._state_names)
        try:
            self._dp: DomainParticipant | None = DomainParticipant(cfg.domain_id)
        except DDSException as e:  # it carries only a C return code: say what usually causes it
            raise BackendError(f"bridge.domain_id {cfg.domain_id}: cannot create a DDS participant ({e}); check "
                               "CYCLONEDDS_URI (its network interface must exist here)") from e
        self._target_writer = self._writer(self.target_topic, msgs.PoseStamped, qos.command())
        self._gripper_writer = self._writer(self.gripper_command_topic, msgs.Float64MultiArray, qos.command())
        reader_qos = qos.state_reader_qos(cfg.state_reliability)
        convert: dict[str, tuple[type, Callable[[Any, float], Any]]] = {
            "pose": (msgs.PoseStamped, _pose_sample), "joints": (msgs.JointState, _joint_sample),
            "wrench": (msgs.WrenchStamped, _wrench_sample), "gripper": (msgs.JointState, _gripper_sample)}
        self._readers = [self._reader(kind, self._state_names[kind], typ, fn, reader_qos)
                         for kind, (typ, fn) in convert.items()]

    # -- wiring ---------------------------------------------------------------------------------------------------

    def _writer(self, ros_name: str, typ: type, wqos: Qos) -> DataWriter:
        topic = Topic(self._dp, dds_topic(ros_name), typ)
        listener = Listener(on_offered_incompatible_qos=lambda _w, status: self._on_incompatible(
            ros_name, status.last_policy_id, writer=True))
        return DataWriter(self._dp, topic, wqos, listener=listener)

    def _reader(self, kind: str, ros_name: str, typ: type, convert: Callable[[Any, float], Any],
                rqos: Qos) -> DataReader:
        def on_data(reader: DataReader | None) -> None:
            received = self.now()  # the listener runs as the sample arrives: the closest this process sees it
            if self._closed or reader is None:  # a sample in flight while close() tears the reader down
                return
            try:
                samples = [s for s in reader.take(N=_TAKE_MAX) if isinstance(s, typ)]  # skips dispose/unregister
                if samples and not self._closed:
                    sample = convert(samples[-1], received)
                    if sample is not None:
                        self._latest[kind] = sample
            except Exception:  # a listener must not raise into Cyclone's thread; say (once) why the topic went quiet
                if self._first(ros_name, "undecodable"):
                    log.exception("dropped a sample on %s (further failures on this topic are not logged)", ros_name)

        topic = Topic(self._dp, dds_topic(ros_name), typ)
        listener = Listener(on_data_available=on_data, on_requested_incompatible_qos=lambda _r, status:
                            self._on_incompatible(ros_name, status.last_policy_id, writer=False))
        return DataReader(self._dp, topic, rqos, listener=listener)

    def _first(self, ros_name: str, what: str) -> bool:
        """True the first time `what` happens on `ros_name`: each problem is logged once, not at the topic's rate."""
        with self._lock:
            if (ros_name, what) in self._logged:
                return False
            self._logged.add((ros_name, what))
            return True

    def _on_incompatible(self, ros_name: str, policy_id: int, writer: bool) -> None:
        policy = _POLICY_NAMES.get(policy_id, f"policy {policy_id}")
        with self._lock:
            self._mismatches.setdefault(ros_name, set()).add(policy)
        if not self._first(ros_name, policy):
            return
        if writer:
            log.warning("%s: a subscriber requests QoS this publisher does not offer (%s), so it receives nothing "
                        "from the bridge; the bridge publishes reliable, keep last 1, volatile", ros_name, policy)
        elif policy_id == _RELIABILITY:
            log.warning("%s: a publisher offers only best-effort delivery and this subscription requests reliable "
                        "(bridge.state_reliability: %s), so nothing from it is received; franka_ros2 publishes its "
                        "state best effort: set bridge.state_reliability: best_effort", ros_name,
                        self._cfg.state_reliability)
        else:
            log.warning("%s: a publisher's QoS is incompatible with this subscription (%s), so nothing from it is "
                        "received; the bridge subscribes %s, keep last 1, volatile", ros_name, policy,
                        self._cfg.state_reliability)

    # -- Backend --------------------------------------------------------------------------------------------------

    def publish_target_pose(self, position: np.ndarray, quat: np.ndarray) -> None:
        writer = self._live()
        msg = msgs.pose_stamped(position, quat, time.time(), self._cfg.base_frame)  # checks the shapes
        if not (np.all(np.isfinite(position)) and np.all(np.isfinite(quat))):
            raise ValueError(f"target pose: expected finite values, got position {position!r} quat {quat!r}")
        writer.write(msg)

    def latest_pose(self) -> PoseSample | None:
        return self._latest["pose"]

    def latest_joints(self) -> JointSample | None:
        return self._latest["joints"]

    def latest_wrench(self) -> WrenchSample | None:
        return self._latest["wrench"]

    def latest_gripper(self) -> GripperSample | None:
        return self._latest["gripper"]

    def command_gripper(self, opening: float) -> None:
        opening = check_opening(opening)
        self._live()
        if self._cfg.dry_run:
            # a dry run moves nothing: the gripper target has no shadow topic, so it is dropped (said once)
            if not self._dry_run_gripper_noted:
                self._dry_run_gripper_noted = True
                log.info("dry run: gripper commands are not sent (%s)", self.gripper_command_topic)
            return
        self._gripper_writer.write(msgs.float64_array([opening]))

    def recover_errors(self, timeout_s: float) -> None:
        action = topic_name(self._cfg.namespace, self._cfg.error_recovery_action)
        raise BackendUnsupported(
            f"error recovery is the ROS 2 action {action} (franka_msgs/action/ErrorRecovery), and ROS 2 actions do "
            "not interoperate between DDS implementations, so the DDS backend (bridge.backend: dds) cannot call it. "
            "Use the rclpy backend (bridge.backend: rclpy) on a machine with ROS 2, or recover by hand: release the "
            f"user stop, then on the robot PC run `ros2 action send_goal {action} "
            "franka_msgs/action/ErrorRecovery {}`, and start the episode again")

    def state_topics(self) -> dict[str, object]:
        return {self._state_names[kind]: sample for kind, sample in self._latest.items()}

    def wait_for_state(self, timeout_s: float) -> None:
        try:
            super().wait_for_state(timeout_s)
        except BackendError as e:
            # a QoS mismatch is the one cause the bridge can see: name it next to the silent topics
            with self._lock:
                notes = [f"{name} ({', '.join(sorted(p))})" for name, p in self._mismatches.items()
                         if name in self._state_names.values()]
            if not notes:
                raise
            raise BackendError(f"{e}; publishers with incompatible QoS were seen on {', '.join(notes)} (see "
                               "bridge.state_reliability)") from None

    def close(self) -> None:
        """Delete the readers, writers and the participant (idempotent). Cyclone waits for a running listener."""
        if self._closed:
            return
        self._closed = True
        # cyclonedds deletes an entity when its last Python reference goes; the listeners' closures point back at
        # this object, so the references are dropped here rather than left to the cycle collector
        self._readers = []
        self._target_writer = self._gripper_writer = None
        self._dp = None

    def __del__(self) -> None:
        if hasattr(self, "_closed"):
            self.close()

    def _live(self) -> DataWriter:
        if self._closed or self._target_writer is None:
            raise BackendError("DdsBackend: used after close()")
        return self._target_writer


def _header_s(msg: Any) -> float:
    return msgs.seconds_of(msg.header.stamp)


def _pose_sample(msg: msgs.PoseStamped, received: float) -> PoseSample:
    position, quat = msgs.pose_of(msg)
    return PoseSample(position=position, quat=quat, stamp=_header_s(msg), received=received)


def _joint_sample(msg: msgs.JointState, received: float) -> JointSample:
    return JointSample(names=tuple(msg.name), position=np.asarray(msg.position, dtype=np.float64),
                       velocity=np.asarray(msg.velocity, dtype=np.float64),
                       effort=np.asarray(msg.effort, dtype=np.float64), stamp=_header_s(msg), received=received)


def _wrench_sample(msg: msgs.WrenchStamped, received: float) -> WrenchSample:
    force, torque = msgs.wrench_of(msg)
    return WrenchSample(force=force, torque=torque, stamp=_header_s(msg), received=received)


def _gripper_sample(msg: msgs.JointState, received: float) -> GripperSample | None:
    if not msg.position:  # a joint state without positions says nothing about the opening
        return None
    return GripperSample(width=float(sum(msg.position)), stamp=_header_s(msg), received=received)
