"""`ros2 launch robot_bridge franka_actor.launch.py`: the serl actor on a real Franka, next to the robot.

Owns: the actor node (`serl_actor_node`: `serl actor` with `env.kind=franka`, i.e. FrankaEnv over the bridge's
backend, RealSense cameras, the safety filter and the watchdog in one process) and the mapping of this file's
arguments onto its `--set` overrides (robot_bridge/nodes.py: `actor_arguments`). The learner runs elsewhere
(`serl learner` on a GPU box); the actor reaches it at `learner_host`.

Start the robot side first, in its own terminal: franka_ros2's bringup with the robot's FCI address and CRISP's
cartesian impedance controller (docs/real_robot.md), e.g. `ros2 launch franka_bringup franka.launch.py
robot_ip:=172.16.0.2` (its launch files and their arguments differ between franka_ros2 versions, which is why this
file does not start it by default). Or name that launch file here: `bringup_launch:=<path>` includes it, passing
`robot_ip` on to it. Either way `robot_ip` goes to franka_ros2, never to the actor: the bridge talks to the robot
only through the controller's ROS 2 topics and actions.

Arguments (empty: the config's own value):
  config          YAML config of the run (the task, the agent, `bridge.*`, `transport.*`)
  run_dir         the actor's run folder (spool, logs); relative to where `ros2 launch` runs
  actor_id        this actor's id when several feed one learner
  namespace       prefix of every bridge topic and action (`bridge.namespace`), e.g. /fr3
  domain_id       ROS domain (`bridge.domain_id`); default: $ROS_DOMAIN_ID
  learner_host    the learner's address (`transport.host`)
  transitions_port, params_port
                  the learner's ports (`transport.*_port`; `serl learner` prints them)
  backend         rclpy (default: topics and franka_ros2's actions) | dds (topics only)
  dry_run         true: targets go to `bridge.dry_run_topic` only, to watch them in RViz before arming
  wrist_serial    RealSense serial of the wrist camera (`bridge.camera_serials.wrist`)
  front_serial    RealSense serial of the front camera (`bridge.camera_serials.front`)
  robot_ip        the robot's FCI address, for franka_ros2's bringup (see above)
  bringup_launch  a launch file to include with `robot_ip` (empty: the robot side is started separately)

Example:
  ros2 launch robot_bridge franka_actor.launch.py config:=configs/real_reach.yaml learner_host:=192.168.1.20 \
      wrist_serial:=123456789012 dry_run:=true
"""

from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, LogInfo, OpaqueFunction
from launch.launch_context import LaunchContext
from launch.launch_description import LaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node

from robot_bridge.nodes import actor_arguments


def _actions(context: LaunchContext) -> list:
    """The actions, built once the arguments have values (an empty one must drop its override, which a
    substitution cannot express)."""

    def value(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    actions: list = []
    robot_ip, bringup = value("robot_ip"), value("bringup_launch")
    if bringup:
        actions.append(IncludeLaunchDescription(PythonLaunchDescriptionSource(bringup),
                                                launch_arguments=[("robot_ip", robot_ip)] if robot_ip else []))
    elif robot_ip:
        actions.append(LogInfo(msg=f"robot_ip {robot_ip} is for franka_ros2's bringup, which this launch does not "
                               "start without bringup_launch: start it yourself with robot_ip:=" + robot_ip))
    actions.append(Node(
        package="robot_bridge",
        executable="serl_actor_node",
        name="serl_actor",
        output="screen",
        emulate_tty=True,
        arguments=actor_arguments(
            config=value("config"), run_dir=value("run_dir"), actor_id=value("actor_id"),
            namespace=value("namespace"), domain_id=value("domain_id"), learner_host=value("learner_host"),
            transitions_port=value("transitions_port"), params_port=value("params_port"),
            backend=value("backend"), dry_run=value("dry_run"),
            cameras={"wrist": value("wrist_serial"), "front": value("front_serial")},
        ),
    ))
    return actions


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value="", description="YAML config of the run"),
        DeclareLaunchArgument("run_dir", default_value="runs/franka-actor",
                              description="the actor's run folder (spool, logs)"),
        DeclareLaunchArgument("actor_id", default_value="", description="this actor's id (several actors)"),
        DeclareLaunchArgument("namespace", default_value="", description="prefix of every bridge topic and action"),
        DeclareLaunchArgument("domain_id", default_value=EnvironmentVariable("ROS_DOMAIN_ID", default_value=""),
                              description="ROS domain id (bridge.domain_id)"),
        DeclareLaunchArgument("learner_host", default_value="", description="the learner's address"),
        DeclareLaunchArgument("transitions_port", default_value="", description="the learner's transitions port"),
        DeclareLaunchArgument("params_port", default_value="", description="the learner's parameters port"),
        DeclareLaunchArgument("backend", default_value="rclpy", choices=["rclpy", "dds"],
                              description="rclpy (topics and actions) | dds (topics only)"),
        DeclareLaunchArgument("dry_run", default_value="",
                              description="true: publish targets to bridge.dry_run_topic only"),
        DeclareLaunchArgument("wrist_serial", default_value="", description="RealSense serial of the wrist camera"),
        DeclareLaunchArgument("front_serial", default_value="", description="RealSense serial of the front camera"),
        DeclareLaunchArgument("robot_ip", default_value="", description="the robot's FCI address (franka_ros2)"),
        DeclareLaunchArgument("bringup_launch", default_value="",
                              description="franka_ros2/CRISP launch file to include with robot_ip (empty: none)"),
        OpaqueFunction(function=_actions),
    ])
