"""`ros2 launch robot_bridge fake_franka.launch.py`: the MuJoCo-backed fake Franka, for the whole ROS path on one
machine.

Owns: the `fake_franka` node (robot_bridge/fake_franka.py: our MuJoCo Panda and its cartesian impedance controller
in real time, behind the topics, types and QoS of franka_ros2 + CRISP) and the mapping of this file's arguments onto
its flags (robot_bridge/nodes.py: `fake_franka_arguments`). It speaks Cyclone DDS directly, so it needs the
`cyclonedds` Python package, not rclpy; any ROS 2 node on the same domain sees its topics.

Arguments (empty: the fake Franka's default):
  namespace  prefix of every topic, e.g. /fr3 (the actor's `bridge.namespace` must match)
  domain_id  ROS domain (the actor's `bridge.domain_id` must match); default: $ROS_DOMAIN_ID, else 0
  rate       state publishing rate (Hz), at most the physics rate

Example (then `ros2 launch robot_bridge franka_actor.launch.py` with the same namespace and domain):
  ros2 launch robot_bridge fake_franka.launch.py namespace:=/fr3 rate:=250
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.launch_context import LaunchContext
from launch.launch_description import LaunchDescription
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node

from robot_bridge.nodes import fake_franka_arguments


def _actions(context: LaunchContext) -> list:
    """The node, built once the arguments have values (an empty one must drop its flag)."""

    def value(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    return [Node(
        package="robot_bridge",
        executable="fake_franka",
        name="fake_franka",
        output="screen",
        emulate_tty=True,
        arguments=fake_franka_arguments(namespace=value("namespace"), domain_id=value("domain_id"),
                                        rate=value("rate")),
    )]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="", description="prefix of every topic, e.g. /fr3"),
        DeclareLaunchArgument("domain_id", default_value=EnvironmentVariable("ROS_DOMAIN_ID", default_value="0"),
                              description="ROS domain id"),
        DeclareLaunchArgument("rate", default_value="", description="state publishing rate (Hz)"),
        OpaqueFunction(function=_actions),
    ])
