"""The env tests' honesty helpers (tests/env_support.py): only a missing EGL device makes a rendering test skip,
and the strict env checker fails on Gymnasium's warnings. Each case is a real failure made in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from env_support import check_env_strict, egl_missing

ROOT = Path(__file__).resolve().parents[1]
PROBE = (
    "import mujoco\n"
    "mujoco.Renderer(mujoco.MjModel.from_xml_string('<mujoco/>'), 8, 8).close()\n"
    "print('rendered')\n"
)


def _probe(**env: str) -> tuple[int, str]:
    """Make a tiny MuJoCo context in a fresh interpreter (MUJOCO_GL is read at import): (exit code, last error line)."""
    base = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "DISPLAY", "WAYLAND_DISPLAY")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**base, **env}, capture_output=True, text=True,
                         timeout=120)
    lines = out.stderr.strip().splitlines()
    return out.returncode, lines[-1] if lines else ""


def test_a_machine_without_an_egl_device_is_recognized(tmp_path: Path) -> None:
    # glvnd's libEGL loads its drivers from this list: pointing it at nothing is a machine with no EGL device.
    rc, error = _probe(MUJOCO_GL="egl", __EGL_VENDOR_LIBRARY_FILENAMES=str(tmp_path / "no-vendor.json"))
    if rc == 0:
        pytest.skip("cannot simulate a missing EGL device here: this libEGL ignores __EGL_VENDOR_LIBRARY_FILENAMES")
    assert egl_missing(error), error


def test_other_rendering_errors_are_not_taken_for_a_missing_device() -> None:
    rc, plain = _probe(MUJOCO_GL="egl")
    if rc != 0:
        # Without a device every EGL error may read as "missing"; only a machine with one can tell them apart.
        assert egl_missing(plain), plain
        pytest.skip(f"no EGL device on this machine: {plain}")
    rc, error = _probe(MUJOCO_GL="egl", MUJOCO_EGL_DEVICE_ID="99")  # a misconfiguration, not a missing device
    assert rc != 0 and "MUJOCO_EGL_DEVICE_ID" in error and not egl_missing(error), error
    rc, error = _probe(MUJOCO_GL="glfw")  # another backend with no display to open
    assert rc != 0 and error and not egl_missing(error), error


def test_strict_checker_fails_on_a_warning_and_on_undeclared_unbounded_leaves(monkeypatch: pytest.MonkeyPatch
                                                                               ) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from tests.toy_envs import ToyGoalEnv

    class Float64Obs(ToyGoalEnv):
        """`step` returns float64 observations while the space says float32: Gymnasium only warns about it."""

        def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
            obs, *rest = super().step(action)
            return {k: v.astype(np.float64) for k, v in obs.items()}, *rest

    with pytest.raises(UserWarning, match="float64"):
        check_env_strict(Float64Obs(), skip_render_check=True)
    with pytest.raises(AssertionError, match="infinite bounds"):
        check_env_strict(ToyGoalEnv(), unbounded=("pos",), skip_render_check=True)
    check_env_strict(ToyGoalEnv(), skip_render_check=True)
