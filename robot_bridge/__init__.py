"""ROS 2 bridge to a Franka arm: a `Backend` over rclpy or Cyclone DDS, the robot env, RealSense cameras, a
MuJoCo-backed fake Franka, the teaching dialogue, and the nodes `ros2 launch` starts (docs/real_robot.md).

Owns: `make_backend`, which picks the backend `bridge.backend` names; each imports its library only here, so either
runs without the other (rclpy on the robot PC, Cyclone DDS anywhere).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from robot_bridge.backend import Backend
    from serl_stack.config import BridgeConfig


def make_backend(cfg: BridgeConfig) -> Backend:
    """The backend `bridge.backend` names, connected (subscriptions started)."""
    if cfg.backend == "rclpy":
        from robot_bridge.rclpy_backend import RclpyBackend

        return RclpyBackend(cfg)
    from robot_bridge.dds_backend import DdsBackend

    return DdsBackend(cfg)
