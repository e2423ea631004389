"""Every serl_stack task passes Gymnasium's env checker, with state observations and with camera images.

Parametrized over `serl_task_ids()` (every registered id whose env lives in serl_stack), so a new task is checked
as soon as it is registered; a task whose module is missing or broken fails here, it is never skipped (the
images view skips only on a machine without an EGL device).
Gymnasium's checker reports many problems as warnings (an observation outside its space after `step`, a wrong
dtype, ...): they are errors here (`check_env_strict`), except the note about infinite bounds, which is allowed
only for the observation leaves listed in UNBOUNDED (asserted to be exactly the unbounded ones).
"""

from __future__ import annotations

import os

# MuJoCo picks its GL backend at import; this only helps when this module is the first to import it (run alone).
os.environ.setdefault("MUJOCO_GL", "egl")

from collections.abc import Mapping  # noqa: E402
from typing import Any  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from env_support import check_env_strict, require_egl  # noqa: E402

from serl_stack.config import EnvConfig  # noqa: E402
from serl_stack.envs import make_env, serl_task_ids  # noqa: E402

TASKS = serl_task_ids()
CAMERAS = ("wrist", "front")
IMAGE_SIZE = 64
VIEWS = {"state": {}, "images": {"cameras": CAMERAS, "image_size": IMAGE_SIZE}}
ROBOT_UNBOUNDED = ("state/tcp_force", "state/tcp_torque", "state/tcp_vel")
"""Velocity and wrench are unbounded by nature (contacts)."""
UNBOUNDED = {task: ROBOT_UNBOUNDED for task in TASKS} | {
    "FrankaPickCube-v0": (*ROBOT_UNBOUNDED, "task/object_pose"),  # a free cube: its pose has no bound either
}
"""Per task, the observation leaves whose Box has an infinite bound (a new task starts with the robot's)."""
pytestmark = pytest.mark.filterwarnings("error")


def _make(task: str, view: str) -> gym.Env:
    if VIEWS[view].get("cameras"):
        require_egl()  # skips only where the machine has no EGL device; any other rendering error fails
    return make_env(EnvConfig(id=task, **VIEWS[view]))


def _outside(space: gym.Space, obs: Any, path: str = "obs") -> list[str]:
    """Where `obs` leaves `space`: key paths with the value's shape/dtype/range against the space's."""
    if isinstance(space, gym.spaces.Dict):
        if not isinstance(obs, Mapping) or set(obs) != set(space.spaces):
            return [f"{path}: keys {sorted(obs) if isinstance(obs, Mapping) else type(obs)}, "
                    f"expected {sorted(space.spaces)}"]
        return [p for k, sub in space.spaces.items() for p in _outside(sub, obs[k], f"{path}[{k!r}]")]
    if space.contains(obs):
        return []
    a = np.asarray(obs)
    detail = f"range [{a.min():.4g}, {a.max():.4g}]" if a.size and np.issubdtype(a.dtype, np.number) else ""
    return [f"{path}: {a.dtype}{a.shape} {detail}, expected {space}"]


def test_every_design_task_is_registered() -> None:
    """The three DESIGN.md tasks are in the parametrization below (a task missing from it would go unchecked)."""
    assert {"FrankaReach-v0", "FrankaPickCube-v0", "FrankaPegInsert-v0"} <= set(TASKS), TASKS


@pytest.mark.parametrize("view", list(VIEWS))
@pytest.mark.parametrize("task", TASKS)
def test_check_env_passes(task: str, view: str) -> None:
    env = _make(task, view)
    try:
        # The render check needs the front camera at 480x640; rendering has its own tests (test_env_images.py).
        check_env_strict(env.unwrapped, unbounded=UNBOUNDED[task], skip_render_check=True)
    finally:
        env.close()


@pytest.mark.parametrize("view", list(VIEWS))
@pytest.mark.parametrize("task", TASKS)
def test_observations_stay_in_the_observation_space(task: str, view: str) -> None:
    """After reset and after each of a few random steps; images when asked for, of the configured size."""
    env = _make(task, view)
    try:
        env.action_space.seed(0)
        obs, _ = env.reset(seed=0)
        if view == "images":
            assert set(obs["images"]) == set(CAMERAS)
            for image in obs["images"].values():
                assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and image.dtype == np.uint8
        else:
            assert "images" not in obs
        assert _outside(env.observation_space, obs) == [], "after reset"
        for step in range(25):
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            assert _outside(env.observation_space, obs) == [], f"after step {step}"
            if terminated or truncated:
                obs, _ = env.reset()
                assert _outside(env.observation_space, obs) == [], f"after reset following step {step}"
    finally:
        env.close()
