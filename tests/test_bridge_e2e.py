"""The real-robot path end to end on loopback, through ROS 2 messages over Cyclone DDS: the MuJoCo-backed fake
Franka in its own process, the robot env (robot_bridge/franka_env.py) in this one or in a `serl actor` process,
and a `serl learner`. What is checked: the robot env's observation is the sim task's (a policy cannot tell them
apart) and a scripted policy solves reach through it; a 1 s stall of whoever steps the env makes the robot hold
within `watchdog_s` + one control period; a command outside the box is clipped on the wire; a frozen state stream
stops stepping with an error naming the topic; and actor + learner train through the whole path at 50 Hz."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from robot_bridge.dds_config import loopback_config
from serl_stack.config import BridgeConfig, EnvConfig

pytestmark = pytest.mark.serial  # real-time control through the fake Franka: `make test` runs it alone

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = 41
ENV = {**os.environ, "MUJOCO_GL": "egl", "CYCLONEDDS_URI": os.environ.get("CYCLONEDDS_URI") or loopback_config()}
os.environ.setdefault("CYCLONEDDS_URI", ENV["CYCLONEDDS_URI"])  # this process's participants stay on loopback too
HZ = 50.0
SCALE = 10.0 / HZ
"""The sim tasks' action sizes and step limits are per 0.1 s; at 50 Hz they shrink so the arm moves as fast."""
FAST = {"action_scale_pos": 0.02 * SCALE, "action_scale_rot": 0.1 * SCALE}


def _fake(namespace: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "robot_bridge.fake_franka", "--domain-id", str(DOMAIN),
                             "--namespace", namespace], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT, env=ENV)
    return proc


@pytest.fixture
def fake(request: pytest.FixtureRequest) -> Iterator[tuple[subprocess.Popen, str]]:
    namespace = f"/e2e{os.getpid()}_{request.node.name[-12:].strip('_[]')}".replace("-", "_")
    proc = _fake(namespace)
    try:
        yield proc, namespace
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            proc.wait(10)


def _env(namespace: str, hz: float = HZ, **env_changes: object):
    from robot_bridge.franka_env import make_robot_env
    from serl_stack.config import SafetyConfig

    if hz == HZ:
        env_changes = {**FAST, "safety": SafetyConfig(max_step_pos=0.04 * SCALE, max_step_rot=0.2 * SCALE),
                       **env_changes}
    cfg = EnvConfig(kind="franka", control_hz=hz, max_episode_steps=60, **env_changes)
    return make_robot_env(cfg, BridgeConfig(domain_id=DOMAIN, namespace=namespace, reset_duration_s=1.0))


class TargetLog:
    """Every target pose on the wire, as a plain DDS reader sees it: (header stamp, position). The stamp is when
    the bridge sent it (delivery on loopback adds well under a millisecond)."""

    def __init__(self, namespace: str) -> None:
        from cyclonedds.core import Policy
        from cyclonedds.domain import DomainParticipant
        from cyclonedds.qos import Qos
        from cyclonedds.sub import DataReader
        from cyclonedds.topic import Topic

        from robot_bridge import msgs
        from robot_bridge.dds_backend import dds_topic

        self._dp = DomainParticipant(DOMAIN)
        topic = Topic(self._dp, dds_topic(f"{namespace}/target_pose"), msgs.PoseStamped)
        # Reliable like ROS 2's default, with room for every target of a test between two drains.
        self._reader = DataReader(self._dp, topic, Qos(Policy.Reliability.Reliable(0), Policy.History.KeepLast(10_000)))
        self.poses: list[tuple[float, np.ndarray]] = []

    def drain(self) -> list[tuple[float, np.ndarray]]:
        from robot_bridge import msgs

        for sample in self._reader.take(N=10_000):
            if isinstance(sample, msgs.PoseStamped):
                self.poses.append((msgs.seconds_of(sample.header.stamp), msgs.pose_of(sample)[0]))
        return self.poses


@pytest.mark.slow
def test_the_robot_env_looks_like_the_sim_and_a_scripted_policy_solves_reach(fake) -> None:
    from serl_stack.envs import make_env
    from serl_stack.envs.scripted import make_scripted

    _, namespace = fake
    env = _env(namespace, hz=10.0)  # the sim tasks' rate: the scripted controller is tuned to 2 cm per 0.1 s
    sim = make_env(EnvConfig())
    try:
        assert env.observation_space == sim.observation_space and env.action_space == sim.action_space
        obs, _ = env.reset(seed=3)
        sim_obs, _ = sim.reset(seed=3)
        for group in ("state", "task"):
            for key, value in obs[group].items():
                assert value.shape == sim_obs[group][key].shape and value.dtype == sim_obs[group][key].dtype, key
        assert obs["state"]["tcp_pose"][3] >= 0  # w first, w >= 0, as in sim
        # Home within the reset's own tolerance (the move ends once it is inside it; how much closer depends on how
        # fast the fake arm keeps up, which a loaded machine slows: 1.2 cm once at a 1 cm bound).
        bridge = BridgeConfig()
        assert np.linalg.norm(obs["state"]["tcp_pose"][:3] - np.asarray(bridge.home_pose[:3])) <= bridge.reset_tolerance
        policy = make_scripted(EnvConfig())
        successes = 0
        for episode in range(3):
            if episode:
                obs, _ = env.reset()
            done = False
            while not done:
                obs, _, terminated, truncated, info = env.step(policy(obs))
                done = terminated or truncated
            successes += bool(info["success"])
            assert np.isfinite(info["distance"]) and info["jitter_s"] < 0.05
        assert successes == 3
    finally:
        env.close()
        sim.close()


@pytest.mark.slow
def test_a_stalled_caller_makes_the_robot_hold_and_commands_stay_in_the_box(fake) -> None:
    _, namespace = fake
    env = _env(namespace)
    wire = TargetLog(namespace)
    inner = env.unwrapped
    try:
        env.reset(seed=0)
        push_x = np.array([1.0, 0, 0, 0, 0, 0, 0], np.float32)
        for _ in range(60):  # 60 full steps of +x: 0.24 m asked, the box ends 0.2 m away
            env.step(push_x)
            wire.drain()
        high = np.asarray(EnvConfig().workspace_high)
        sent = np.array([p for _, p in wire.drain()])
        assert len(sent) >= 60 and np.all(sent <= high + 1e-9), sent.max(axis=0)
        assert sent[-1][0] == pytest.approx(high[0], abs=1e-6)  # it did reach the edge: clipped, not just short
        # Stall: nobody steps for 1 s. The watchdog thread must command a hold within watchdog_s + one period.
        last_sent = wire.drain()[-1][0]
        holds_before = inner.watchdog_holds
        time.sleep(1.0)
        after = [t for t, _ in wire.drain() if t > last_sent]
        watchdog_s = EnvConfig().safety.watchdog_s
        assert after, "no hold command during the stall"
        assert after[0] - last_sent <= watchdog_s + 1 / HZ + 0.02, after[0] - last_sent
        assert inner.watchdog_holds == holds_before + 1
        pose = inner.backend.latest_pose()
        time.sleep(0.2)
        moved = np.linalg.norm(inner.backend.latest_pose().position - pose.position)
        assert moved < 0.002, moved  # the arm holds still
        env.step(np.zeros(7, np.float32))  # and stepping goes on afterwards
    finally:
        env.close()


@pytest.mark.slow
def test_a_frozen_state_stream_stops_stepping_naming_it(fake) -> None:
    from serl_stack.safety import StaleStateError

    proc, namespace = fake
    env = _env(namespace)
    try:
        env.reset(seed=0)
        env.step(np.zeros(7, np.float32))
        proc.send_signal(signal.SIGSTOP)  # the robot's state stops arriving (a dead controller, a cut link)
        with pytest.raises(StaleStateError, match=rf"{namespace}/\S+ is stale: .*env.safety.state_timeout_s = 0.5"):
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                env.step(np.zeros(7, np.float32))
    finally:
        proc.send_signal(signal.SIGCONT)
        env.close()


def _serl(*args: str) -> list[str]:
    return [sys.executable, "-m", "serl_stack.cli", *args]


@pytest.mark.slow
def test_actor_and_learner_train_through_the_fake_franka_at_50_hz(fake, tmp_path: Path) -> None:
    from serl_stack.orchestrate import free_port
    from serl_stack.transport.log import TransitionLog

    _, namespace = fake
    run = tmp_path / "run"
    ports = [free_port("127.0.0.1") for _ in range(2)]
    total = 300
    common = ["--set", "env.kind=franka", "--set", f"env.control_hz={HZ}", "--set", "env.max_episode_steps=75",
              "--set", f"env.action_scale_pos={FAST['action_scale_pos']}",
              "--set", f"env.action_scale_rot={FAST['action_scale_rot']}",
              "--set", f"env.safety.max_step_pos={0.04 * SCALE}", "--set", f"env.safety.max_step_rot={0.2 * SCALE}",
              "--set", f"bridge.domain_id={DOMAIN}", "--set", f"bridge.namespace={namespace}",
              "--set", "bridge.reset_duration_s=1.0", "--set", f"train.total_env_steps={total}",
              "--set", "train.start_steps=100", "--set", "train.eval_episodes=1", "--set", "agent.hidden_dims=[64, 64]",
              "--set", "agent.batch_size=64", "--set", "transport.params_every=20",
              "--set", f"transport.transitions_port={ports[0]}", "--set", f"transport.params_port={ports[1]}"]
    learner = subprocess.Popen(_serl("learner", "--run-dir", str(run), *common), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=ENV)
    try:
        actor = subprocess.run(_serl("actor", "--run-dir", str(run), *common), capture_output=True, text=True,
                               timeout=600, cwd=ROOT, env=ENV)
        learner_out, _ = learner.communicate(timeout=120)
    finally:
        if learner.poll() is None:
            learner.kill()
    assert actor.returncode == 0, actor.stdout[-3000:] + actor.stderr[-3000:]
    assert learner.returncode == 0, learner_out[-3000:]
    log = TransitionLog(run / "transitions")
    try:
        logged = sum(1 for _ in log.replay())
        acked = log.durable_seq("actor-0")
    finally:
        log.close()
    assert logged == acked == total  # every env step acknowledged, durable, once
    adopted = int(actor.stdout.split("adopted ")[1].split()[0])
    assert adopted >= 2, actor.stdout[-2000:]
    result = json.loads((run / "eval.json").read_text())
    assert result["episodes"] == 1 and result["params_version"] >= 2
    from serl_stack.runlog import event_files, read_scalars

    jitter = [v for f in event_files(run) for tag, _, v in read_scalars(f) if tag == "robot/jitter_max_ms"]
    assert jitter and max(jitter) < 50, jitter  # every training episode paced, none late by a whole period


@pytest.mark.slow
def test_the_operators_keys_end_an_episode(fake) -> None:
    """`s` + Enter at the actor's terminal ends the episode a success; `a` + Enter aborts it (a truncation)."""
    from robot_bridge.franka_env import RobotFrankaEnv
    from robot_bridge.operator_keys import OperatorKeys

    _, namespace = fake
    read_end, write_end = os.pipe()
    keys = OperatorKeys(os.fdopen(read_end)).start()
    typed = os.fdopen(write_end, "w")
    env = RobotFrankaEnv(EnvConfig(kind="franka", control_hz=HZ, **FAST),
                         BridgeConfig(domain_id=DOMAIN, namespace=namespace, reset_duration_s=1.0), operator=keys)
    try:
        env.reset(seed=0)
        _, _, terminated, truncated, info = env.step(np.zeros(7, np.float32))
        assert not (terminated or truncated) and "operator" not in info
        for key, want in (("a", (False, True)), ("s", (True, False))):
            typed.write(f"{key}\n")
            typed.flush()
            time.sleep(0.1)
            _, reward, terminated, truncated, info = env.step(np.zeros(7, np.float32))
            assert (terminated, truncated) == want and info["operator"] == {"a": "abort", "s": "success"}[key]
            if key == "s":
                assert info["success"] and reward > 0.5  # the success reward (and ~0 shaping: the arm held still)
            env.reset()
    finally:
        typed.close()
        env.close()
