"""`serl teach` against the fake Franka: the arm is moved to each pose (here by commanding it, on the real arm by
hand), Enter takes the TCP pose the robot reports, and the robot env then uses the taught box and home pose."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from robot_bridge.dds_config import loopback_config
from serl_stack.config import BridgeConfig, ConfigError, EnvConfig

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = 53
os.environ.setdefault("CYCLONEDDS_URI", loopback_config())
ENV = {**os.environ, "MUJOCO_GL": "egl"}


@pytest.fixture
def fake_ns():
    ns = f"/teach{os.getpid()}"
    proc = subprocess.Popen([sys.executable, "-m", "robot_bridge.fake_franka", "--domain-id", str(DOMAIN),
                             "--namespace", ns], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=ROOT,
                            env=ENV)
    try:
        yield ns
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


@pytest.mark.slow
def test_teach_records_the_poses_the_robot_reports_and_the_env_uses_them(fake_ns: str, tmp_path: Path) -> None:
    from robot_bridge import make_backend
    from robot_bridge.franka_env import make_robot_env
    from robot_bridge.teach import teach

    bridge = BridgeConfig(domain_id=DOMAIN, namespace=fake_ns, reset_duration_s=1.0)
    backend = make_backend(bridge)
    down = np.array([0.0, 1.0, 0.0, 0.0])
    poses = iter([(0.35, -0.15, 0.2), (0.6, 0.15, 0.45), (0.5, 0.05, 0.3), None])
    prompts: list[str] = []

    def ask(prompt: str) -> str:  # the user guides the arm there, then presses Enter
        prompts.append(prompt)
        pose = next(poses)
        if pose is None:
            return "s"  # no fixed goal: goals are drawn from env.goal_low/high
        for _ in range(100):
            backend.publish_target_pose(np.array(pose), down)
            time.sleep(0.02)
        return ""

    out = tmp_path / "taught.yaml"
    try:
        data = teach(backend, out, ask=ask, say=lambda _: None)
    finally:
        backend.close()
    assert len(prompts) == 4 and "corner" in prompts[0] and "home" in prompts[2]
    saved = yaml.safe_load(out.read_text())
    assert saved == data and "goal_pos" not in saved
    np.testing.assert_allclose(saved["workspace_low"], [0.35, -0.15, 0.2], atol=0.003)
    np.testing.assert_allclose(saved["workspace_high"], [0.6, 0.15, 0.45], atol=0.003)
    np.testing.assert_allclose(saved["home_pose"][:3], [0.5, 0.05, 0.3], atol=0.003)

    env = make_robot_env(EnvConfig(kind="franka"), BridgeConfig(domain_id=DOMAIN, namespace=fake_ns,
                                                                 reset_duration_s=1.0, teach_file=str(out)))
    try:
        obs, _ = env.reset(seed=0)
        np.testing.assert_allclose(obs["state"]["tcp_pose"][:3], saved["home_pose"][:3], atol=0.01)
        inner = env.unwrapped
        np.testing.assert_allclose(inner.safety.workspace_high, saved["workspace_high"])
        for _ in range(30):  # +x all the way: the taught box's edge, not the config's, stops it
            obs, *_ = env.step(np.array([1.0, 0, 0, 0, 0, 0, 0], np.float32))
        assert inner.safety.command[0][0] == pytest.approx(saved["workspace_high"][0], abs=1e-6)
    finally:
        env.close()


def test_a_teach_file_that_is_wrong_is_named(tmp_path: Path) -> None:
    from robot_bridge.franka_env import load_teach

    with pytest.raises(ConfigError, match="bridge.teach_file: .* not found; record it with `serl teach"):
        load_teach(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("home_pose: [0.5, 0.0]\n")
    with pytest.raises(ConfigError, match="home_pose is \\[0.5, 0.0\\], expected 7 finite numbers"):
        load_teach(bad)
    bad.write_text("hole: [1, 2, 3]\n")
    with pytest.raises(ConfigError, match="unknown key 'hole'"):
        load_teach(bad)
