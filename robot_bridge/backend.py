"""The seam between the robot env and ROS 2: what a backend does, whatever speaks the wire.

Owns: `Backend`, the interface `FrankaEnv` (robot_bridge/franka_env.py) drives — publish the target pose, read the
newest TCP pose, joint state, external wrench and gripper width, command the gripper, recover from errors, tell
the time — the samples it returns, `topic_name` (namespace + topic, as `bridge.*` configures them) and the
backend errors. Implementations: `dds_backend.DdsBackend` (Cyclone DDS, the ROS 2 wire protocol without a ROS
install, topics only) and `rclpy_backend.RclpyBackend` (a ROS 2 install on the robot PC, actions too);
`robot_bridge.make_backend` picks one from `bridge.backend`.

Conventions (DESIGN.md): quaternions are w-first here (ROS messages carry x, y, z, w; the backends convert at
their edge); positions in metres and forces in newtons, in the robot's base frame. Every sample carries
`received`, the time it arrived on this process's monotonic clock (`Backend.now()`), which is what staleness is
judged by, and `stamp`, the sender's header stamp in seconds (ROS time), kept for the logs.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass

import numpy as np

from serl_stack.errors import SerlError


class BackendError(SerlError):
    """The robot link failed: a backend that cannot start, a topic that never delivers, a recovery that failed."""


class BackendUnsupported(BackendError):
    """The backend cannot do what was asked (e.g. a ROS 2 action over DDS); the message names the one that can."""

    exit_code = 2


@dataclass(frozen=True)
class PoseSample:
    """The TCP pose: `position` (3,) m and `quat` (4,) w, x, y, z in the base frame."""

    position: np.ndarray
    quat: np.ndarray
    stamp: float
    received: float


@dataclass(frozen=True)
class JointSample:
    """A joint state: names and, per joint, position (rad or m), velocity and effort (may be empty)."""

    names: tuple[str, ...]
    position: np.ndarray
    velocity: np.ndarray
    effort: np.ndarray
    stamp: float
    received: float


@dataclass(frozen=True)
class WrenchSample:
    """The external wrench at the TCP in the base frame: `force` (3,) N and `torque` (3,) N m."""

    force: np.ndarray
    torque: np.ndarray
    stamp: float
    received: float


@dataclass(frozen=True)
class GripperSample:
    """The gripper's opening width (m): the sum of the finger positions of its joint state."""

    width: float
    stamp: float
    received: float


def check_opening(opening: float) -> float:
    """A gripper target as a float in [0, 1] (0 closed, 1 open), or a ValueError (NaN included)."""
    opening = float(opening)
    if not 0.0 <= opening <= 1.0:
        raise ValueError(f"gripper opening: expected a value in [0, 1] (0 closed, 1 open), got {opening!r}")
    return opening


def topic_name(namespace: str, topic: str) -> str:
    """`namespace` + `topic` as one absolute ROS name (`/fr3` + `/target_pose` -> `/fr3/target_pose`)."""
    parts = [p for p in (namespace.strip("/"), topic.strip("/")) if p]
    return "/" + "/".join(parts)


class Backend(abc.ABC):
    """One connection to a Franka through ROS 2. Subscriptions start in the constructor; `latest_*` return the
    newest sample received (None before the first) without blocking; publishing never blocks on the network."""

    @abc.abstractmethod
    def publish_target_pose(self, position: np.ndarray, quat: np.ndarray) -> None:
        """Send the controller's next target: `position` (3,) m, `quat` (4,) w, x, y, z, in the base frame."""

    @abc.abstractmethod
    def latest_pose(self) -> PoseSample | None: ...

    @abc.abstractmethod
    def latest_joints(self) -> JointSample | None: ...

    @abc.abstractmethod
    def latest_wrench(self) -> WrenchSample | None: ...

    @abc.abstractmethod
    def latest_gripper(self) -> GripperSample | None: ...

    @abc.abstractmethod
    def command_gripper(self, opening: float) -> None:
        """Send the gripper target, normalized 0 (closed) .. 1 (open)."""

    @abc.abstractmethod
    def recover_errors(self, timeout_s: float) -> None:
        """Clear the robot's error state (a reflex, a user stop) before moving again; `BackendUnsupported` where
        the backend cannot, naming what to do instead."""

    def now(self) -> float:
        """This process's monotonic clock (s): what `received` stamps and staleness are measured on."""
        return time.monotonic()

    def wait_for_state(self, timeout_s: float) -> None:
        """Block until every state topic (`state_topics`) has delivered; `BackendError` naming the topics that
        stayed silent (a typo in a topic name, another domain, a QoS mismatch) after `timeout_s`."""
        deadline = self.now() + timeout_s
        while self.now() < deadline:
            if all(s is not None for s in self.state_topics().values()):
                return
            time.sleep(0.01)
        silent = [name for name, s in self.state_topics().items() if s is None]
        raise BackendError(f"no state from the robot after {timeout_s:g} s on {', '.join(silent)}; check the topic "
                           "names (bridge.*_topic, bridge.namespace), bridge.domain_id and that the controller runs")

    @abc.abstractmethod
    def state_topics(self) -> dict[str, object]:
        """Each state topic's full name -> its newest sample (None while it has delivered nothing)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the subscriptions and release the connection."""
