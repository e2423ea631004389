"""`serl teach`: record a real-arm task's poses by guiding the arm by hand.

Owns: the teaching dialogue (move the arm, press Enter; the TCP pose the robot reports is taken) for the two
corners of the workspace box, the home pose every reset returns to and the reach goal, and the YAML file it writes
(`bridge.teach_file`, read by robot_bridge/franka_env.py: `load_teach`). Nothing is commanded: the arm is moved by
hand (the robot in its hand-guiding mode) or by its own controller, and only read. Quaternions in the file are
w, x, y, z, as everywhere in serl_stack.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from robot_bridge.backend import Backend, BackendError

STEPS = (
    ("corner_a", "one corner of the workspace box (where the TCP may go)"),
    ("corner_b", "the opposite corner of the workspace box"),
    ("home_pose", "the home pose every episode starts from (gripper pointing down)"),
    ("goal_pos", "the reach goal (skip with 's' to draw goals from env.goal_low/goal_high)"),
)


def teach(backend: Backend, out: Path, ask: Callable[[str], str] = input, say: Callable[[str], None] = print,
          state_timeout_s: float = 5.0) -> dict[str, list[float]]:
    """Walk through `STEPS`, reading the TCP pose when the user presses Enter; write `out` and return what it
    holds. `ask` and `say` are the terminal (tests answer them)."""
    backend.wait_for_state(state_timeout_s)
    taken: dict[str, np.ndarray] = {}
    for key, what in STEPS:
        answer = ask(f"Move the arm to {what}, then press Enter ('s' skips, 'q' quits): ").strip().lower()
        if answer == "q":
            raise BackendError("stopped by the user; nothing written")
        if answer == "s":
            if key != "goal_pos":
                raise BackendError(f"{key} cannot be skipped (the robot env needs it)")
            continue
        pose = backend.latest_pose()
        if pose is None or backend.now() - pose.received > state_timeout_s:
            raise BackendError("no fresh TCP pose from the robot; is the state stream running?")
        taken[key] = np.concatenate((pose.position, pose.quat)) if key == "home_pose" else np.asarray(pose.position)
        say(f"  {key}: {np.round(taken[key], 4).tolist()}")
    low, high = np.minimum(taken["corner_a"], taken["corner_b"]), np.maximum(taken["corner_a"], taken["corner_b"])
    if np.any(high - low < 0.02):
        raise BackendError(f"the corners {low.tolist()} and {high.tolist()} span less than 2 cm on some "
                           "axis; teach two opposite corners of a real box")
    data: dict[str, list[float]] = {"workspace_low": low.tolist(), "workspace_high": high.tolist(),
                                    "home_pose": taken["home_pose"].tolist()}
    if "goal_pos" in taken:
        data["goal_pos"] = taken["goal_pos"].tolist()
    for key in ("home_pose", "goal_pos"):
        if key in taken and np.any((taken[key][:3] < low) | (taken[key][:3] > high)):
            raise BackendError(f"{key} {taken[key][:3].tolist()} lies outside the taught box "
                               f"{low.tolist()}..{high.tolist()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, out)
    say(f"wrote {out}; use it with --set bridge.teach_file={out}")
    return data
