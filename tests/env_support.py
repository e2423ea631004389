"""Shared honesty rules for the env tests: when a rendering test may skip, and Gymnasium's checker with warnings
as errors.

Owns: `egl_missing` / `skip_if_egl_missing` / `require_egl` (a rendering test skips only when the machine has no
EGL device or library, with MuJoCo's own message as the reason; any other rendering error fails the test) and
`check_env_strict` (`gymnasium.utils.env_checker.check_env` with every warning an error, except the two notes
that a test opts into by name and that are checked here instead of silenced).
Imported by the test modules as `env_support` (pytest puts `tests/` on sys.path, it has no `__init__.py`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

EGL_MISSING_SIGNS = (
    # mujoco.egl: libEGL loaded, but no driver exposes a device to render on (e.g. no GPU and no Mesa vendor).
    "Cannot initialize a EGL device display",
    # mujoco.egl: the EGL library lacks device enumeration, so there is no headless device to pick.
    "eglQueryDevicesEXT is not available",
    # PyOpenGL's EGL platform: no libEGL on this machine at all.
    "Unable to load EGL library",
)
"""Substrings of the errors MuJoCo (with MUJOCO_GL=egl) and PyOpenGL raise when there is no EGL device or library.
Anything else (a bad MUJOCO_EGL_DEVICE_ID, another GL backend failing, a bug) is not a reason to skip."""


def _error_text(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    parts = []
    e: BaseException | None = error
    while e is not None:  # MuJoCo wraps the backend's ImportError: look through the whole chain
        parts.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    return " <- ".join(parts)


def egl_missing(error: BaseException | str) -> bool:
    """Whether `error` (an exception from making a MuJoCo GL context, or the last line of a child process's
    traceback) says the machine has no EGL device or library."""
    text = _error_text(error)
    return any(sign in text for sign in EGL_MISSING_SIGNS)


def skip_if_egl_missing(error: BaseException | str) -> None:
    """Skip the calling test, with MuJoCo's message as the reason, when `error` says EGL is missing; otherwise
    return, and the caller fails the test with the error."""
    if egl_missing(error):
        pytest.skip(f"no EGL device on this machine (rendering needs one with MUJOCO_GL=egl): {_error_text(error)}")


def require_egl() -> None:
    """Make one tiny offscreen MuJoCo context in this process: skip when EGL is missing, raise on any other error."""
    import mujoco  # here, not at the top: importing MuJoCo fixes its GL backend from MUJOCO_GL

    try:
        mujoco.Renderer(mujoco.MjModel.from_xml_string("<mujoco/>"), 8, 8).close()
    except Exception as e:
        skip_if_egl_missing(e)
        raise


def infinite_leaves(space: gym.Space, path: str = "") -> set[str]:
    """Key paths (`state/tcp_vel`) of the Box leaves of `space` with an infinite bound."""
    if isinstance(space, gym.spaces.Dict):
        return {p for k, sub in space.spaces.items() for p in infinite_leaves(sub, f"{path}/{k}" if path else k)}
    if isinstance(space, gym.spaces.Box) and not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        return {path}
    return set()


def check_env_strict(env: gym.Env, *, unbounded: Iterable[str] = (), wrapped: bool = False,
                     skip_render_check: bool = False) -> None:
    """`check_env(env)` with every warning an error.

    Two of Gymnasium's notes are let through only when the test names what they are about, and then that is
    asserted instead: `unbounded` lists the observation leaves that may have infinite bounds (physical readings
    such as velocity and wrench), and they must be exactly the leaves with infinite bounds; `wrapped=True` says
    the test checks the wrapper stack on purpose (an adapter, or what `gymnasium.make` adds).
    """
    unbounded = set(unbounded)
    assert infinite_leaves(env.observation_space) == unbounded, "observation leaves with infinite bounds"
    assert (env is not env.unwrapped) == wrapped, f"{env} is{'' if env is not env.unwrapped else ' not'} wrapped"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if unbounded:
            warnings.filterwarnings("ignore", message=r".*Box observation space (minimum|maximum) value is -?infinity")
        if wrapped:
            warnings.filterwarnings("ignore", message=r".*is different from the unwrapped version")
        check_env(env, skip_render_check=skip_render_check)
