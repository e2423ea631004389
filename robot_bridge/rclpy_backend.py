"""The rclpy backend: the bridge on a robot PC with ROS 2 (Humble or Jazzy) installed and sourced.

Owns: `RclpyBackend`, a `Backend` over one rclpy node in a context of its own, spun by a single-threaded executor on
a background thread (subscription callbacks only convert and store the newest sample, so one thread keeps up); the
franka_gripper actions (`move`, `grasp`, `homing` under `bridge.gripper_action_namespace`) and franka_ros2's error
recovery (`bridge.error_recovery_action`), which ROS 2 actions make possible here and not over plain DDS.

rclpy and the message packages are imported in the constructor, never at module import, so this module (and
`make_backend`) import on a machine without ROS, and constructing the backend there is a `BackendError` that says
how to source ROS 2 or to use `bridge.backend: dds`.

Choices:
- Its own `rclpy.context.Context`: rclpy then installs no SIGINT/SIGTERM handlers (it does for the default
  context), so Ctrl-C stays with serl's CLI, which stops only at safe points; and the domain is `bridge.domain_id`
  (a `ROS_DOMAIN_ID` in the environment that differs is warned about, not followed, so the fake Franka, the DDS
  backend and this one agree on one setting).
- QoS (DESIGN.md "Bridge topics"): state subscriptions keep the last 1, best effort unless `bridge.state_reliability`
  says reliable (franka_ros2 publishes its state best effort, and a reliable reader receives nothing from such a
  writer: each subscription warns, naming the field, when the middleware reports that mismatch); the target pose is
  reliable, depth 1, as CRISP subscribes it; the gripper command likewise.
- Gripper: CRISP's topic interface (`bridge.gripper_command_topic`, Float64MultiArray 0 closed .. 1 open) unless that
  field is empty, which selects the franka_gripper actions: an opening >= 0.5 is a `Move` to that fraction of the
  hand's 8 cm stroke, below it a `Grasp` towards that width with the tolerance of the whole stroke (so it succeeds
  wherever an object stops the fingers) and a moderate force. Goals are sent without waiting (the env steps on);
  a rejected or failed goal is logged. With the actions, point `bridge.gripper_state_topic` at the gripper node's
  `joint_states` (e.g. /franka_gripper/joint_states): its two finger positions sum to the width, as CRISP's do.
- Error recovery: a franka_ros2 without the action server (or without franka_msgs) cannot recover through the
  bridge: `recover_errors` raises `BackendUnsupported`, which the env reports once and goes on (recover by hand);
  after the first miss it waits no more for the server. A recovery the robot refuses is a `BackendError`.
- The target topic must have this bridge as its only publisher (CRISP ignores a target topic with several):
  `wait_for_state` checks it once the graph has been discovered, unless it is a dry run. A dry run publishes the
  target on `bridge.dry_run_topic` and drops gripper commands (they have no shadow topic), as the DDS backend does.
- The context reads the process's `--ros-args` (launch_ros passes the node's name that way): the node is
  `serl_bridge` unless launch renames it.
"""

from __future__ import annotations

import os
import threading
import types
from typing import TYPE_CHECKING, Any

import numpy as np

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

if TYPE_CHECKING:
    from serl_stack.config import BridgeConfig

NODE_NAME = "serl_bridge"
GRIPPER_STROKE_M = 0.08
"""The Franka Hand's full opening (two fingers, 0.04 m each): opening 1.0 maps to it."""
GRIPPER_SPEED_M_S = 0.1
"""Finger speed of move and grasp goals: the whole stroke in 0.8 s, at a 10 Hz policy a few steps."""
GRASP_FORCE_N = 40.0
"""Grasp force: well inside the hand's 70 N continuous limit, enough to hold the task objects."""
GRIPPER_DISCOVERY_S = 2.0
"""How long the first gripper command waits for the franka_gripper action server to be discovered."""
SPIN_STOP_S = 2.0
"""How long `close` waits for the executor thread to finish its current callback."""

_SOURCE_ROS = ("bridge.backend: rclpy needs ROS 2 (Humble or Jazzy) installed and sourced in the shell that runs "
               "the actor: `source /opt/ros/<distro>/setup.bash` (and your workspace's install/setup.bash), run with "
               "the Python ROS 2 was built for (3.10 on Humble, 3.12 on Jazzy); without ROS 2 use "
               "`bridge.backend: dds` (Cyclone DDS, the same topics, no actions)")


def _import_ros() -> types.SimpleNamespace:
    """rclpy and the standard message types, or a `BackendError` naming what is missing and what to do."""
    try:
        import rclpy
        from action_msgs.msg import GoalStatus
        from geometry_msgs.msg import PoseStamped, WrenchStamped
        from rclpy.action import ActionClient
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import (
            DurabilityPolicy,
            HistoryPolicy,
            QoSProfile,
            ReliabilityPolicy,
            qos_policy_name_from_kind,
        )
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray
    except ImportError as e:
        raise BackendError(f"{_SOURCE_ROS} (import failed: {e})") from e
    try:  # Iron and later; Humble has the same class in qos_event (Jazzy still has it, deprecated with a warning)
        from rclpy.event_handler import SubscriptionEventCallbacks
    except ImportError:
        from rclpy.qos_event import SubscriptionEventCallbacks
    try:  # franka_ros2's action types; only the actions need them, CRISP's topics do not
        from franka_msgs import action as franka_actions
    except ImportError:
        franka_actions = None
    return types.SimpleNamespace(
        rclpy=rclpy, Context=Context, Node=Node, SingleThreadedExecutor=SingleThreadedExecutor,
        ActionClient=ActionClient, QoSProfile=QoSProfile, ReliabilityPolicy=ReliabilityPolicy,
        HistoryPolicy=HistoryPolicy, DurabilityPolicy=DurabilityPolicy, policy_name=qos_policy_name_from_kind,
        SubscriptionEventCallbacks=SubscriptionEventCallbacks, GoalStatus=GoalStatus, PoseStamped=PoseStamped,
        WrenchStamped=WrenchStamped, JointState=JointState, Float64MultiArray=Float64MultiArray,
        franka=franka_actions,
    )


def _seconds(stamp: Any) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def _vec(v: Any) -> np.ndarray:
    return np.array((v.x, v.y, v.z), dtype=np.float64)


class RclpyBackend(Backend):
    """The bridge as one rclpy node: `bridge.*` names the topics and actions (all below `bridge.namespace`)."""

    def __init__(self, cfg: BridgeConfig, node_name: str = NODE_NAME) -> None:
        ros = _import_ros()
        self.cfg = cfg
        self._ros = ros
        self._pose: PoseSample | None = None
        self._joints: JointSample | None = None
        self._wrench: WrenchSample | None = None
        self._gripper: GripperSample | None = None
        self._closed = False
        self._recovery_missing = False
        self._gripper_waited = False
        self._dry_run_gripper_noted = False
        self._mismatched: set[str] = set()
        self._spin_error: BaseException | None = None
        self.names = {
            "target": topic_name(cfg.namespace, cfg.dry_run_topic if cfg.dry_run else cfg.target_pose_topic),
            "pose": topic_name(cfg.namespace, cfg.current_pose_topic),
            "joints": topic_name(cfg.namespace, cfg.joint_states_topic),
            "wrench": topic_name(cfg.namespace, cfg.wrench_topic),
            "gripper_state": topic_name(cfg.namespace, cfg.gripper_state_topic),
            "recovery": topic_name(cfg.namespace, cfg.error_recovery_action),
        }
        """Full ROS names of what this backend publishes, reads and calls."""
        self._context = ros.Context()
        ros.rclpy.init(context=self._context, domain_id=cfg.domain_id)
        try:
            self._node = ros.Node(node_name, context=self._context)
            self._make_entities()
        except Exception:
            self._context.try_shutdown()
            raise
        env_domain = os.environ.get("ROS_DOMAIN_ID", "").strip()
        if env_domain and env_domain != str(cfg.domain_id):
            self._node.get_logger().warning(
                f"ROS_DOMAIN_ID={env_domain} in the environment, bridge.domain_id={cfg.domain_id}: this node joins "
                f"domain {cfg.domain_id} (set bridge.domain_id to the robot's domain)")
        self._executor = ros.SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        self._spinner = threading.Thread(target=self._spin, name="rclpy-backend", daemon=True)
        self._spinner.start()

    # ------------------------------------------------------------------------------------------- set-up

    def _make_entities(self) -> None:
        ros, cfg, node = self._ros, self.cfg, self._node
        reliability = (ros.ReliabilityPolicy.RELIABLE if cfg.state_reliability == "reliable"
                       else ros.ReliabilityPolicy.BEST_EFFORT)
        state_qos = ros.QoSProfile(history=ros.HistoryPolicy.KEEP_LAST, depth=1, reliability=reliability,
                                   durability=ros.DurabilityPolicy.VOLATILE)
        command_qos = ros.QoSProfile(history=ros.HistoryPolicy.KEEP_LAST, depth=1,
                                     reliability=ros.ReliabilityPolicy.RELIABLE,
                                     durability=ros.DurabilityPolicy.VOLATILE)
        self._target_pub = node.create_publisher(ros.PoseStamped, self.names["target"], command_qos)
        subscribed = (
            (ros.PoseStamped, "pose", self._on_pose),
            (ros.JointState, "joints", self._on_joints),
            (ros.WrenchStamped, "wrench", self._on_wrench),
            (ros.JointState, "gripper_state", self._on_gripper),
        )
        self._subscriptions = [
            node.create_subscription(msg_type, self.names[key], callback, state_qos,
                                     event_callbacks=ros.SubscriptionEventCallbacks(
                                         incompatible_qos=self._qos_warning(self.names[key])))
            for msg_type, key, callback in subscribed
        ]
        self._gripper_pub = None
        self._gripper_clients: dict[str, Any] = {}
        if cfg.gripper_command_topic:
            self.names["gripper_command"] = topic_name(cfg.namespace, cfg.gripper_command_topic)
            self._gripper_pub = node.create_publisher(ros.Float64MultiArray, self.names["gripper_command"],
                                                      command_qos)
        else:
            if ros.franka is None:
                raise BackendError("bridge.gripper_command_topic is empty, which selects the franka_gripper actions, "
                                   "but franka_msgs is not importable: source the workspace that holds franka_ros2, "
                                   "or name CRISP's gripper command topic")
            action_types = {"move": ros.franka.Move, "grasp": ros.franka.Grasp, "homing": ros.franka.Homing}
            for name, action_type in action_types.items():
                full = topic_name(cfg.namespace, f"{cfg.gripper_action_namespace.rstrip('/')}/{name}")
                self.names[f"gripper_{name}"] = full
                self._gripper_clients[name] = ros.ActionClient(node, action_type, full)
        self._recovery_client = (None if ros.franka is None
                                 else ros.ActionClient(node, ros.franka.ErrorRecovery, self.names["recovery"]))

    def _qos_warning(self, topic: str) -> Any:
        if self.cfg.state_reliability == "reliable":
            advice = ("franka_ros2 publishes its state best effort, which a reliable reader never receives: set "
                      "bridge.state_reliability: best_effort")
        else:
            advice = f"compare the publisher's QoS: `ros2 topic info -v {topic}`"

        def warn(info: Any) -> None:
            self._mismatched.add(topic)
            self._node.get_logger().warning(
                f"{topic}: a publisher offers QoS this subscription cannot match (policy "
                f"{self._ros.policy_name(info.last_policy_kind)}), so nothing arrives from it; {advice}")

        return warn

    def _spin(self) -> None:
        try:
            self._executor.spin()
        except Exception as e:  # kept for wait_for_state; the env sees the streams go stale meanwhile
            if not self._closed:
                self._spin_error = e
                self._node.get_logger().error(f"rclpy backend: the executor thread stopped: {e!r}")

    # ------------------------------------------------------------------------------------------- callbacks

    def _on_pose(self, msg: Any) -> None:
        q = msg.pose.orientation
        self._pose = PoseSample(position=_vec(msg.pose.position),
                                quat=np.array((q.w, q.x, q.y, q.z), dtype=np.float64),  # ROS x, y, z, w -> w first
                                stamp=_seconds(msg.header.stamp), received=self.now())

    def _on_joints(self, msg: Any) -> None:
        self._joints = JointSample(names=tuple(msg.name), position=np.array(msg.position, dtype=np.float64),
                                   velocity=np.array(msg.velocity, dtype=np.float64),
                                   effort=np.array(msg.effort, dtype=np.float64),
                                   stamp=_seconds(msg.header.stamp), received=self.now())

    def _on_wrench(self, msg: Any) -> None:
        self._wrench = WrenchSample(force=_vec(msg.wrench.force), torque=_vec(msg.wrench.torque),
                                    stamp=_seconds(msg.header.stamp), received=self.now())

    def _on_gripper(self, msg: Any) -> None:
        if not msg.position:  # a joint state without positions says nothing about the opening
            return
        self._gripper = GripperSample(width=float(sum(msg.position)), stamp=_seconds(msg.header.stamp),
                                      received=self.now())

    # ------------------------------------------------------------------------------------------- Backend

    def publish_target_pose(self, position: np.ndarray, quat: np.ndarray) -> None:
        self._live()
        msg = self._ros.PoseStamped()
        msg.header.frame_id = self.cfg.base_frame
        msg.header.stamp = self._node.get_clock().now().to_msg()
        p, q = msg.pose.position, msg.pose.orientation
        p.x, p.y, p.z = (float(v) for v in position)
        q.w, q.x, q.y, q.z = (float(v) for v in quat)  # w first here, x, y, z, w on the wire: named fields convert
        self._target_pub.publish(msg)

    def latest_pose(self) -> PoseSample | None:
        return self._pose

    def latest_joints(self) -> JointSample | None:
        return self._joints

    def latest_wrench(self) -> WrenchSample | None:
        return self._wrench

    def latest_gripper(self) -> GripperSample | None:
        return self._gripper

    def state_topics(self) -> dict[str, object]:
        return {self.names["pose"]: self._pose, self.names["joints"]: self._joints,
                self.names["wrench"]: self._wrench, self.names["gripper_state"]: self._gripper}

    def command_gripper(self, opening: float) -> None:
        opening = check_opening(opening)
        self._live()
        if self.cfg.dry_run:
            # a dry run moves nothing, and the gripper has no shadow topic: the command is dropped (said once)
            if not self._dry_run_gripper_noted:
                self._dry_run_gripper_noted = True
                self._node.get_logger().info("dry run: gripper commands are not sent")
            return
        if self._gripper_pub is not None:
            msg = self._ros.Float64MultiArray()
            msg.data = [opening]
            self._gripper_pub.publish(msg)
            return
        franka = self._ros.franka
        width = opening * GRIPPER_STROKE_M
        if opening >= 0.5:
            name, goal = "move", franka.Move.Goal()
            goal.width, goal.speed = width, GRIPPER_SPEED_M_S
        else:
            name, goal = "grasp", franka.Grasp.Goal()
            goal.width, goal.speed, goal.force = width, GRIPPER_SPEED_M_S, GRASP_FORCE_N
            goal.epsilon.inner = goal.epsilon.outer = GRIPPER_STROKE_M
        client = self._gripper_clients[name]
        if not client.server_is_ready():
            waited = client.wait_for_server(timeout_sec=0.0 if self._gripper_waited else GRIPPER_DISCOVERY_S)
            self._gripper_waited = True
            if not waited:
                raise BackendError(f"{self.names['gripper_' + name]}: no franka_gripper action server; check "
                                   "bridge.gripper_action_namespace (/franka_gripper, or /fr3_gripper, /panda_gripper "
                                   "on older franka_ros2: `ros2 action list`), or name CRISP's gripper topic in "
                                   "bridge.gripper_command_topic")
        self._executor.create_task(self._send_gripper_goal, client, goal, self.names["gripper_" + name])

    def _send_gripper_goal(self, client: Any, goal: Any, action: str) -> None:
        """On the executor thread (see `_run_action`): send a gripper goal; log a rejection or a failure, nothing
        else (an exception here would stop the executor)."""
        log = self._node.get_logger()

        def on_result(future: Any) -> None:
            failure = self._failure(future.result())
            if failure:
                log.warning(f"{action}: the gripper goal {failure}")

        def on_answer(future: Any) -> None:
            handle = future.result()
            if not handle.accepted:
                log.warning(f"{action}: the gripper rejected the goal")
                return
            handle.get_result_async().add_done_callback(on_result)

        try:
            client.send_goal_async(goal).add_done_callback(on_answer)
        except Exception as e:  # a goal the server's type rejects, a client destroyed by close()
            log.error(f"{action}: sending the gripper goal failed: {e!r}")

    def home_gripper(self, timeout_s: float = 30.0) -> None:
        """Run franka_gripper's homing (the fingers close and open fully to calibrate the width) and wait for it;
        needs the actions (`bridge.gripper_command_topic` empty). Not part of a reset: it drops what is held."""
        if "homing" not in self._gripper_clients:
            raise BackendUnsupported("homing the gripper needs the franka_gripper actions: set "
                                     "bridge.gripper_command_topic to empty (CRISP's gripper topic has no homing)")
        self._run_action(self._gripper_clients["homing"], self._ros.franka.Homing.Goal(), self.names["gripper_homing"],
                         timeout_s, wait_for_server_s=timeout_s)

    def recover_errors(self, timeout_s: float) -> None:
        if self._recovery_client is None:
            raise BackendUnsupported("error recovery needs franka_msgs (franka_ros2's messages), which is not "
                                     "importable: source franka_ros2's workspace, or recover by hand (Desk, or "
                                     f"`ros2 action send_goal {self.names['recovery']} "
                                     "franka_msgs/action/ErrorRecovery {}`)")
        client = self._recovery_client
        wait_s = 0.0 if self._recovery_missing else timeout_s
        if not client.server_is_ready() and not client.wait_for_server(timeout_sec=wait_s):
            self._recovery_missing = True
            raise BackendUnsupported(f"{self.names['recovery']}: no franka_msgs/action/ErrorRecovery server (waited "
                                     f"{wait_s:g} s): recover by hand, or set bridge.error_recovery_action to the "
                                     "server's name (`ros2 action list`; /action_server/error_recovery on "
                                     "franka_ros2 v1+)")
        self._recovery_missing = False
        self._run_action(client, self._ros.franka.ErrorRecovery.Goal(), self.names["recovery"], timeout_s,
                         wait_for_server_s=0.0)

    def _run_action(self, client: Any, goal: Any, action: str, timeout_s: float, wait_for_server_s: float) -> None:
        """Send `goal` and wait for its result within `timeout_s`; `BackendError` naming `action` unless it
        succeeded."""
        if not client.server_is_ready() and not client.wait_for_server(timeout_sec=wait_for_server_s):
            raise BackendError(f"{action}: no action server after {wait_for_server_s:g} s (`ros2 action list`)")
        deadline = self.now() + timeout_s
        # Requests go out from the executor thread: Humble's ActionClient files a request's future only after
        # sending it, so an answer taken by the executor in between would be dropped and the wait never end.
        sent = self._wait(self._executor.create_task(client.send_goal_async, goal), deadline, f"{action}: sending")
        handle = self._wait(sent, deadline, f"{action}: the goal's acceptance")
        if not handle.accepted:
            raise BackendError(f"{action}: the goal was rejected")
        asked = self._wait(self._executor.create_task(handle.get_result_async), deadline, f"{action}: asking")
        failure = self._failure(self._wait(asked, deadline, f"{action}: the result"))
        if failure:
            raise BackendError(f"{action}: the goal {failure}; is the user stop still pressed, or is the robot in a "
                               "state only Desk can clear?")

    def _failure(self, response: Any) -> str:
        """'' for a goal that succeeded, else how it ended (its status and the server's reason)."""
        status = self._ros.GoalStatus
        success = getattr(response.result, "success", True)  # franka_gripper's results say; ErrorRecovery's don't
        if response.status == status.STATUS_SUCCEEDED and success:
            return ""
        names = {getattr(status, n): n.removeprefix("STATUS_").lower() for n in dir(status) if n.startswith("STATUS_")}
        reason = getattr(response.result, "error", "") or "no reason given"
        return f"ended {names.get(response.status, response.status)}: {reason}"

    def _wait(self, future: Any, deadline: float, what: str) -> Any:
        """The future's result, set on the executor thread; `BackendError` when the deadline passes first."""
        done = threading.Event()
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(max(0.0, deadline - self.now())):
            raise BackendError(f"{what} did not arrive in time (is the action server alive?)")
        return future.result()

    def wait_for_state(self, timeout_s: float) -> None:
        if self._spin_error is not None:
            raise BackendError(f"rclpy backend: its executor thread stopped: {self._spin_error!r}")
        try:
            super().wait_for_state(timeout_s)
        except BackendError as e:
            # a QoS mismatch is the one cause the bridge can see: name it next to the silent topics
            seen = sorted(self._mismatched)
            if not seen:
                raise
            raise BackendError(f"{e}; publishers with incompatible QoS were seen on {', '.join(seen)} (see "
                               "bridge.state_reliability)") from None
        if not self.cfg.dry_run:
            publishers = self._node.count_publishers(self.names["target"])
            if publishers > 1:
                raise BackendError(f"{self.names['target']}: {publishers} publishers, this bridge and "
                                   f"{publishers - 1} other(s) (`ros2 topic info -v {self.names['target']}`); CRISP "
                                   "ignores a target topic with more than one publisher: stop the other one")

    def _live(self) -> None:
        if self._closed:
            raise BackendError("RclpyBackend: used after close()")

    def close(self) -> None:
        """Stop the executor thread, destroy the action clients and the node, shut the context down (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(timeout_sec=SPIN_STOP_S)
        self._spinner.join(timeout=SPIN_STOP_S)
        for client in [*self._gripper_clients.values(), self._recovery_client]:
            if client is not None:
                client.destroy()
        self._node.destroy_node()
        self._context.try_shutdown()
