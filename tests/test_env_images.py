"""Camera observations: Gymnasium compliance with images, their shape and content, the goal marker, config errors."""

from __future__ import annotations

import dataclasses
import os

# MuJoCo picks its GL backend at import; this only helps when this module is the first to import it (run alone).
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from env_support import check_env_strict, require_egl  # noqa: E402

from serl_stack.config import EnvConfig  # noqa: E402
from serl_stack.envs import make_env  # noqa: E402
from serl_stack.envs.reach import GOAL_MARKER_RADIUS, FrankaReachEnv  # noqa: E402

CAMERAS = ("wrist", "front")
S = 64  # smaller than the default 128 to keep the file fast; the size is a parameter like any other
UNBOUNDED = ("state/tcp_force", "state/tcp_torque", "state/tcp_vel")
"""Velocity and wrench are unbounded by nature (contacts): the only observation leaves with infinite bounds."""


def _cfg(**changes: object) -> EnvConfig:
    return dataclasses.replace(EnvConfig(), **changes)


@pytest.fixture(scope="module")
def egl() -> None:
    """Every test that renders asks for this: it skips only where the machine has no EGL device."""
    require_egl()


@pytest.fixture(scope="module")
def env(egl: None) -> FrankaReachEnv:
    e = FrankaReachEnv(_cfg(cameras=CAMERAS, image_size=S))
    yield e
    e.close()


def _project(env: FrankaReachEnv, camera: str, point: np.ndarray, size: int) -> tuple[int, int]:
    """Pixel (row, col) where the world `point` lands in `camera`'s (size x size) image (pinhole model)."""
    cam = env.model.camera(camera).id
    local = env.data.cam_xmat[cam].reshape(3, 3).T @ (point - env.data.cam_xpos[cam])
    focal = size / 2 / np.tan(np.deg2rad(env.model.cam_fovy[cam]) / 2)
    # The camera looks along its -z, with x to the image's right and y up.
    col = size / 2 + focal * local[0] / -local[2]
    row = size / 2 - focal * local[1] / -local[2]
    return int(row), int(col)


def _green(image: np.ndarray) -> np.ndarray:
    """Mask of the marker's saturated green (nothing else in the scene is green)."""
    rgb = image.astype(np.int16)
    return (rgb[..., 1] > 120) & (rgb[..., 1] > 2 * rgb[..., 0]) & (rgb[..., 1] > 2 * rgb[..., 2])


# ------------------------------------------------------------------------------------------ gymnasium


def test_check_env_passes_with_cameras_render_check_included(egl: None) -> None:
    # Made through gymnasium.make, the env has a spec, so the checker also builds it with render_mode="rgb_array"
    # and checks the rendered frame.
    made = make_env(_cfg(cameras=CAMERAS, image_size=S))
    check_env_strict(made.unwrapped, unbounded=UNBOUNDED)
    made.close()


def test_check_env_passes_through_make_env_with_cameras(egl: None) -> None:
    made = make_env(_cfg(cameras=("front",)))
    check_env_strict(made, unbounded=UNBOUNDED, wrapped=True, skip_render_check=True)
    made.close()


# ------------------------------------------------------------------------------------------ contract


def test_images_follow_the_observation_contract(env: FrankaReachEnv) -> None:
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"state", "task", "images"}
    assert set(obs["images"]) == set(CAMERAS)
    for name in CAMERAS:
        assert obs["images"][name].shape == (S, S, 3) and obs["images"][name].dtype == np.uint8, name
        assert obs["images"][name].std() > 5, f"{name} renders a flat image"
    assert env.observation_space.contains(obs)
    assert env.observation_space["images"][CAMERAS[0]].shape == (S, S, 3)


def test_no_images_key_without_cameras() -> None:
    plain = FrankaReachEnv()
    obs, _ = plain.reset(seed=0)
    assert "images" not in obs and "images" not in plain.observation_space.spaces
    plain.close()


def test_images_show_the_arm_move_and_are_fresh_arrays(env: FrankaReachEnv) -> None:
    obs, _ = env.reset(seed=1)
    before = {k: v.copy() for k, v in obs["images"].items()}
    for _ in range(5):
        obs, *_ = env.step(np.array([1.0, 1.0, -1.0, 0, 0, 0, 0], dtype=np.float32))  # 10 cm sideways and down
    for name in CAMERAS:
        changed = np.abs(obs["images"][name].astype(int) - before[name]).max(axis=-1) > 20
        assert changed.mean() > 0.02, f"{name}: only {changed.mean():.1%} of pixels changed after the arm moved"
    # Each observation owns its images (a replay buffer keeps them), the next step must not overwrite them.
    kept = obs["images"]["front"].copy()
    env.step(np.zeros(7, dtype=np.float32))
    assert np.array_equal(obs["images"]["front"], kept)


# ------------------------------------------------------------------------------------------ goal marker


def test_goal_marker_shows_in_the_front_image_where_the_goal_projects(env: FrankaReachEnv) -> None:
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        goal = obs["task"]["goal_pos"].astype(np.float64)
        green = _green(obs["images"]["front"])
        row, col = _project(env, "front", goal, S)
        assert green[max(row - 2, 0) : row + 3, max(col - 2, 0) : col + 3].any(), (seed, goal, (row, col))
        # The pole below the sphere is green too; the topmost green pixel is the sphere's top.
        top = _project(env, "front", goal + np.array([0.0, 0.0, GOAL_MARKER_RADIUS]), S)[0]
        assert abs(np.argwhere(green)[:, 0].min() - top) <= 2, (seed, top)


def test_goal_marker_moves_with_the_goal(env: FrankaReachEnv) -> None:
    obs, _ = env.reset(seed=0)
    first, goal0 = _green(obs["images"]["front"]), env.goal.copy()
    obs, _ = env.reset(seed=1)
    assert np.linalg.norm(env.goal - goal0) > 0.05
    assert (first != _green(obs["images"]["front"])).sum() >= 4


# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"cameras": ("front", "top")}, r"env.cameras: unknown camera.*'top'.*available: \['front', 'wrist'\]"),
        ({"cameras": "front"}, "env.cameras: expected a list"),
        ({"cameras": ("front", "front")}, "env.cameras: got .*expected each camera at most once"),
        ({"cameras": ("front",), "image_size": 0}, "env.image_size: got 0, expected a value >= 1"),
        ({"cameras": ("front",), "image_size": 1000}, "env.image_size"),
    ],
)
def test_bad_camera_config_is_a_value_error_naming_the_field(changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FrankaReachEnv(_cfg(**changes))


def test_close_releases_the_renderer_and_render_still_works(egl: None) -> None:
    e = FrankaReachEnv(_cfg(cameras=("front",), image_size=S), render_mode="rgb_array")
    e.reset(seed=0)
    frame = e.render()
    assert frame is not None and frame.shape == (480, 640, 3) and frame.dtype == np.uint8
    e.close()
    e.close()  # idempotent, as Gymnasium expects
    with pytest.raises(RuntimeError, match="after close"):
        e.reset(seed=0)
