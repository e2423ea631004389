"""The executables of the ROS 2 package (`ros2 run robot_bridge <name>`, started by the launch files in launch/).

Owns: the console-script entry points `serl_actor_node` (the serl actor on the real env: `serl actor` with
`env.kind=franka`), `fake_franka` (robot_bridge/fake_franka.py) and `serl_teach` (`serl teach`); `strip_ros_args`,
which drops the `--ros-args ... [--]` sections launch_ros appends to every node's command line; and the mapping from
the launch files' arguments to these executables' arguments (`actor_arguments`, `fake_franka_arguments`), kept here,
importable without ROS, so it is tested where the launch files themselves cannot run.

Each wrapper is thin on purpose: all behaviour lives behind the `serl` CLI, which is the one place that turns
errors into messages and exit codes. Everything is imported inside the function that needs it, so this module
loads nothing heavy, and the actor node loads only what `serl actor` loads: the inference side, never the learner's
machinery (tests/test_bridge_package.py checks it in a fresh interpreter).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence

ROS_ARGS = "--ros-args"
"""Starts a section of ROS arguments (remappings, parameters, the node's name), up to `--` or the end."""

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def strip_ros_args(argv: Sequence[str]) -> list[str]:
    """`argv` without its ROS sections: each `--ros-args` and what follows it up to a lone `--` (dropped too) or
    the end, as rclpy's own `remove_ros_args` reads them (`ros2 run` and launch_ros add such sections)."""
    kept: list[str] = []
    in_ros = False
    for arg in argv:
        if in_ros:
            in_ros = arg != "--"
        elif arg == ROS_ARGS:
            in_ros = True
        else:
            kept.append(arg)
    return kept


def _set(key: str, value: object) -> list[str]:
    # JSON is YAML, so the CLI reads a string back as a string even when it looks like a number (a serial
    # "123456789012", a host "10"), and true/false as booleans.
    return ["--set", f"{key}={json.dumps(value)}"]


def _flag(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(f"launch argument {name}: got {value!r}, expected true or false")


def _number(name: str, value: str, expected: str) -> int:
    if not value.strip().isdigit():
        raise ValueError(f"launch argument {name}: got {value!r}, expected {expected}")
    return int(value)


def actor_arguments(*, config: str = "", run_dir: str = "", actor_id: str = "", namespace: str = "",
                    domain_id: str = "", learner_host: str = "", transitions_port: str = "", params_port: str = "",
                    backend: str = "", dry_run: str = "", cameras: Mapping[str, str] | None = None) -> list[str]:
    """`serl_actor_node`'s arguments from the values of franka_actor.launch.py's arguments (strings, as launch
    gives them). An empty value leaves the config's own setting alone; `cameras` maps an image name to a RealSense
    serial (`bridge.camera_serials.<name>`), empty serials skipped."""
    args: list[str] = []
    if config:
        args += ["--config", config]
    if run_dir:
        args += ["--run-dir", run_dir]
    if actor_id:
        args += ["--actor-id", actor_id]
    if namespace:
        args += _set("bridge.namespace", namespace)
    if domain_id:
        args += _set("bridge.domain_id", _number("domain_id", domain_id, "a ROS domain id (0..232)"))
    if learner_host:
        args += _set("transport.host", learner_host)
    if transitions_port:
        args += _set("transport.transitions_port", _number("transitions_port", transitions_port, "a TCP port"))
    if params_port:
        args += _set("transport.params_port", _number("params_port", params_port, "a TCP port"))
    if backend:
        args += _set("bridge.backend", backend)
    if dry_run:
        args += _set("bridge.dry_run", _flag("dry_run", dry_run))
    for name, serial in (cameras or {}).items():
        if serial:
            args += _set(f"bridge.camera_serials.{name}", serial)
    return args


def fake_franka_arguments(*, namespace: str = "", domain_id: str = "", rate: str = "") -> list[str]:
    """`fake_franka`'s arguments from fake_franka.launch.py's (empty: the fake Franka's default)."""
    args: list[str] = []
    for flag, value in (("--namespace", namespace), ("--domain-id", domain_id), ("--rate", rate)):
        if value:
            args += [flag, value]
    return args


def _argv(argv: Sequence[str] | None) -> list[str]:
    return strip_ros_args(sys.argv[1:] if argv is None else argv)


def serl_actor_node(argv: Sequence[str] | None = None) -> int:
    """`serl actor` on the real Franka: the arguments given (`--run-dir`, `--config`, `--set ...`) and then
    `env.kind=franka`, last so that no config can turn this node into a sim actor."""
    from serl_stack.cli import main

    return main(["actor", *_argv(argv), "--set", "env.kind=franka"])


def fake_franka(argv: Sequence[str] | None = None) -> int:
    """The MuJoCo-backed fake Franka behind franka_ros2 + CRISP's topics (robot_bridge/fake_franka.py)."""
    from robot_bridge.fake_franka import main

    return main(_argv(argv))


def serl_teach(argv: Sequence[str] | None = None) -> int:
    """`serl teach`: record the workspace corners, the home pose and the goal by guiding the arm by hand."""
    from serl_stack.cli import main

    return main(["teach", *_argv(argv)])
