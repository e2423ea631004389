"""The fake Franka over real Cyclone DDS on this machine: a client made here from `robot_bridge.msgs` types, with
plain DDS readers and writers, sees the state topics best effort at the configured rate, moves the arm with a
target pose and the gripper with a command, and reads a wrench, poses and joints that agree with the physics.

Every test runs its own fake in DDS domain 29 (no other test module uses it) under a namespace of its own, so
leftover or parallel participants never cross-talk; `CYCLONEDDS_URI` pins the loopback interface unless the user set
one (robot_bridge/dds_config.py), for this process and the fake's own.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from cyclonedds.core import Policy
from cyclonedds.domain import DomainParticipant
from cyclonedds.pub import DataWriter
from cyclonedds.qos import Qos
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic

from robot_bridge import dds_config, msgs, qos
from robot_bridge.dds_backend import dds_topic
from robot_bridge.fake_franka import FakeFranka, main
from serl_stack.config import PHYSICS_TIMESTEP, BridgeConfig, EnvConfig
from serl_stack.envs.controller import rotvec_angle
from serl_stack.envs.panda import PANDA, dh_fk

pytestmark = pytest.mark.serial  # real-time physics at 250 Hz: `make test` runs it alone

DOMAIN = 29
REPO = Path(__file__).resolve().parents[1]
_names = itertools.count()
# Best effort (matches franka_ros2's writers) with room for every sample of a test: nothing is lost to the history.
READ_ALL = qos.sensor_data() + Qos(Policy.History.KeepLast(10_000))


@pytest.fixture(autouse=True, scope="module")
def _loopback() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        if not os.environ.get(dds_config.ENV_VAR):
            mp.setenv(dds_config.ENV_VAR, dds_config.loopback_config())
        yield


def bridge_cfg(namespace: str) -> BridgeConfig:
    return dataclasses.replace(BridgeConfig(), domain_id=DOMAIN, namespace=namespace)


class Client:
    """A ROS 2 client of the fake as plain DDS: readers of the four state topics, writers of the two commands."""

    def __init__(self, cfg: BridgeConfig) -> None:
        self.dp = DomainParticipant(cfg.domain_id)
        self.cfg = cfg

        def topic(field: str, kind: type) -> Topic:
            ros = "/" + "/".join(p for p in (cfg.namespace.strip("/"), getattr(cfg, field).strip("/")) if p)
            return Topic(self.dp, dds_topic(ros), kind)

        self.pose_topic = topic("current_pose_topic", msgs.PoseStamped)
        self.readers = {
            "pose": DataReader(self.dp, self.pose_topic, qos=READ_ALL),
            "joints": DataReader(self.dp, topic("joint_states_topic", msgs.JointState), qos=READ_ALL),
            "wrench": DataReader(self.dp, topic("wrench_topic", msgs.WrenchStamped), qos=READ_ALL),
            "gripper": DataReader(self.dp, topic("gripper_state_topic", msgs.JointState), qos=READ_ALL),
        }
        self.samples: dict[str, list] = {k: [] for k in self.readers}
        self.target = DataWriter(self.dp, topic("target_pose_topic", msgs.PoseStamped), qos=qos.ros_default())
        self.gripper = DataWriter(self.dp, topic("gripper_command_topic", msgs.Float64MultiArray),
                                  qos=qos.ros_default())

    def poll(self) -> None:
        for key, reader in self.readers.items():
            self.samples[key].extend(reader.take(N=10_000))

    def wait(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
        """Poll until `predicate()` holds; the seconds it took. Fails naming `what` after `timeout_s`."""
        start = time.monotonic()
        while True:
            self.poll()
            if predicate():
                return time.monotonic() - start
            if time.monotonic() - start > timeout_s:
                pytest.fail(f"{what}: not within {timeout_s} s")
            time.sleep(0.005)

    def collect(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.poll()
            time.sleep(0.01)

    def clear(self) -> None:
        self.poll()
        for v in self.samples.values():
            v.clear()

    def pose(self) -> tuple[np.ndarray, np.ndarray]:
        return msgs.pose_of(self.samples["pose"][-1])

    def width(self) -> float:
        return float(sum(self.samples["gripper"][-1].position))

    def send_target(self, pos: np.ndarray, quat: np.ndarray) -> float:
        """Publish a target pose stamped now; its stamp."""
        stamp = time.time()
        self.target.write(msgs.pose_stamped(pos, quat, stamp, self.cfg.base_frame))
        return stamp

    def wait_for_matches(self) -> None:
        """Until the fake's readers see our writers (a command written earlier goes nowhere: volatile QoS)."""
        self.wait(lambda: all(w.get_publication_matched_status().current_count > 0
                              for w in (self.target, self.gripper)), 5.0, "the fake's command readers matching")


@pytest.fixture
def fake_and_client() -> Iterator[tuple[FakeFranka, Client]]:
    cfg = bridge_cfg(f"/fake_test_{os.getpid()}_{next(_names)}")
    with FakeFranka(EnvConfig(), cfg, rate_hz=250.0) as fake:
        client = Client(cfg)
        client.wait_for_matches()
        client.wait(lambda: len(client.samples["pose"]) > 0 and len(client.samples["gripper"]) > 0, 5.0,
                    "the first state samples")
        yield fake, client
        fake.check()


def test_state_is_best_effort_at_the_configured_rate(fake_and_client: tuple[FakeFranka, Client]) -> None:
    fake, client = fake_and_client
    # A reliable reader of a best-effort writer receives nothing, as from franka_ros2.
    reliable = DataReader(client.dp, client.pose_topic, qos=qos.state_reader_qos("reliable"))
    client.clear()
    client.collect(1.0)
    for key, samples in client.samples.items():
        stamps = np.array([msgs.seconds_of(s.header.stamp) for s in samples])
        assert len(stamps) > 100, key
        assert np.all(np.diff(stamps) > 0), f"{key}: stamps must increase"
        # The schedule, not the machine's load: the typical spacing is one period (a loaded 2-core CI box wakes
        # the loop late now and then, which drops a sample there but never shortens or stretches the period),
        # and the fake never publishes faster than the configured rate.
        gaps = np.diff(stamps)
        assert abs(np.median(gaps) - 1 / 250) < 0.1 / 250, f"{key}: median spacing {1e3 * np.median(gaps):.2f} ms"
        rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
        assert rate < 250 * 1.05, f"{key}: {rate:.1f} Hz is faster than configured"
        assert np.mean(np.abs(gaps - 1 / 250) < 0.5 / 250) > 0.5, f"{key}: most gaps are one period"
        assert abs(stamps[-1] - time.time()) < 0.1, f"{key}: stamps are the wall clock"
    assert reliable.take(N=100) == []
    handle = client.readers["pose"].get_matched_publications()[0]
    writer_qos = client.readers["pose"].get_matched_publication_data(handle).qos
    assert writer_qos[Policy.Reliability] == Policy.Reliability.BestEffort
    assert writer_qos[Policy.History] == Policy.History.KeepLast(1)
    joints = client.samples["joints"][-1]
    assert list(joints.name) == [f"fr3_joint{i}" for i in range(1, 8)]
    assert len(joints.position) == len(joints.velocity) == len(joints.effort) == 7
    assert client.samples["pose"][-1].header.frame_id == "base"
    s = fake.stats()
    assert s.sim_s <= s.wall_s, "physics never runs ahead of the wall clock"
    assert s.sim_s + s.slipped_s > s.wall_s - 0.05, "physics keeps up with the wall clock"


def test_target_5cm_away_is_reached_within_1s_and_held(fake_and_client: tuple[FakeFranka, Client]) -> None:
    fake, client = fake_and_client
    start_pos, start_quat = client.pose()
    offset = np.array([0.6, -0.6, -0.4])
    target = start_pos + 0.05 * offset / np.linalg.norm(offset)  # 5 cm forward, right and down
    sent = client.send_target(target, start_quat)
    took = client.wait(lambda: np.linalg.norm(client.pose()[0] - target) < 0.002, 1.0, "reaching the target")
    # The fake names the first state it computed after taking the target, and that state came over the wire.
    (applied,) = fake.applied_targets()
    assert applied.stamp == pytest.approx(sent, abs=1e-9)
    assert sent <= applied.applied <= applied.state_stamp < sent + 0.05
    assert applied.state_stamp in [msgs.seconds_of(s.header.stamp) for s in client.samples["pose"]]
    client.clear()
    client.collect(0.5)  # no new target: the controller holds the last one
    held = np.array([msgs.pose_of(s)[0] for s in client.samples["pose"]])
    assert len(held) > 50
    assert np.max(np.linalg.norm(held - target, axis=1)) < 0.002, f"reached in {took:.2f} s but not held"
    assert rotvec_angle(client.pose()[1], start_quat) < 0.01
    assert fake.stats().targets_applied == 1


def test_gripper_closes_and_opens(fake_and_client: tuple[FakeFranka, Client]) -> None:
    _, client = fake_and_client
    stroke = 2 * PANDA.finger_stroke
    assert client.width() == pytest.approx(stroke, abs=1e-3), "starts open"
    assert list(client.samples["gripper"][-1].name) == ["fr3_finger_joint1", "fr3_finger_joint2"]
    for opening in (0.0, 0.5, 1.0):
        client.gripper.write(msgs.float64_array([opening]))
        client.wait(lambda o=opening: abs(client.width() - o * stroke) < 0.002, 1.5, f"gripper at {opening}")
        fingers = client.samples["gripper"][-1].position
        assert fingers[0] == pytest.approx(fingers[1], abs=1e-3), "the fingers move together"


def test_wrench_is_zero_in_free_space_and_reads_a_push(fake_and_client: tuple[FakeFranka, Client]) -> None:
    _, client = fake_and_client
    client.clear()
    client.collect(0.3)
    free = np.array([np.concatenate(msgs.wrench_of(s)) for s in client.samples["wrench"]])
    assert np.max(np.abs(free[:, :3])) < 0.2, "the hand's weight is compensated: ~0 N at rest in free space"
    assert np.max(np.abs(free[:, 3:])) < 0.02
    assert client.samples["wrench"][-1].header.frame_id == "base"
    # Pressed 3 cm into the table, the fingers meet it: the table pushes the hand up.
    pos, quat = client.pose()
    client.send_target(np.array([pos[0], pos[1], -0.03]), quat)
    client.wait(lambda: msgs.wrench_of(client.samples["wrench"][-1])[0][2] > 5.0, 2.0, "an upward contact force")
    assert client.pose()[0][2] > 0.0, "the table stops the fingertips"


@pytest.mark.parametrize("prefix", ["fr3", "panda"])
def test_published_pose_is_the_forward_kinematics_of_the_joints(prefix: str) -> None:
    cfg = bridge_cfg(f"/fake_test_{os.getpid()}_{next(_names)}")
    with FakeFranka(EnvConfig(), cfg, rate_hz=250.0, joint_prefix=prefix):
        client = Client(cfg)
        client.wait_for_matches()
        client.wait(lambda: len(client.samples["pose"]) > 0, 5.0, "the first pose")
        pos, quat = client.pose()
        client.send_target(pos + np.array([0.05, 0.05, 0.0]), quat)  # compare while moving, not only at rest
        client.collect(0.4)
    by_stamp = {(s.header.stamp.sec, s.header.stamp.nanosec): s for s in client.samples["joints"]}
    pairs = [(p, by_stamp[k]) for p in client.samples["pose"]
             if (k := (p.header.stamp.sec, p.header.stamp.nanosec)) in by_stamp]
    assert len(pairs) > 50
    moved = 0.0
    for pose, joints in pairs:
        assert list(joints.name) == [f"{prefix}_joint{i}" for i in range(1, 8)]
        fk_pos, fk_quat = dh_fk(np.array(joints.position))
        p, q = msgs.pose_of(pose)
        np.testing.assert_allclose(p, fk_pos, atol=1e-6)
        assert rotvec_angle(q, fk_quat) < 1e-5  # the MJCF writes the DH rotations to 6 digits
        moved = max(moved, float(np.linalg.norm(p - pos)))
    assert moved > 0.03, "the comparison covered a moving arm"


def test_targets_out_of_reach_keep_the_sim_finite(fake_and_client: tuple[FakeFranka, Client]) -> None:
    fake, client = fake_and_client
    home, quat = client.pose()
    # A metre past the arm's reach: it stretches toward the target (the clipped error bounds the force), and comes
    # back when the target does.
    client.send_target(np.array([1.5, 0.0, 0.3]), quat)
    client.wait(lambda: client.pose()[0][0] > home[0] + 0.2, 1.0, "stretching toward the target")
    client.send_target(home, quat)
    client.wait(lambda: np.linalg.norm(client.pose()[0] - home) < 0.005, 2.0, "coming back")
    # Two metres up and away, turned upside down: past the reach and every joint's range at once.
    client.send_target(np.array([2.0, -1.5, 2.0]), np.array([0.0, 0.0, 0.0, 1.0]))
    client.clear()
    client.collect(1.0)
    for key in ("pose", "joints", "wrench"):
        assert len(client.samples[key]) > 100, f"{key}: the loop keeps publishing"
    values = [np.concatenate(msgs.pose_of(s)) for s in client.samples["pose"]]
    values += [np.concatenate(msgs.wrench_of(s)) for s in client.samples["wrench"]]
    values += [np.concatenate((s.position, s.velocity, s.effort)) for s in client.samples["joints"]]
    assert np.all(np.isfinite(np.concatenate(values)))
    q = np.array([s.position for s in client.samples["joints"]])
    # MuJoCo's joint limits are soft: a joint driven hard into one overshoots it by a few hundredths of a radian.
    assert np.all(q >= PANDA.q_min - 0.1) and np.all(q <= PANDA.q_max + 0.1), "joints stay at their limits"
    assert fake.running


def test_broken_commands_are_ignored_and_the_arm_holds(fake_and_client: tuple[FakeFranka, Client]) -> None:
    fake, client = fake_and_client
    home, quat = client.pose()
    # One at a time: the fake acts on the newest command only, as CRISP does (its target reader keeps one).
    for n, target in enumerate(((np.array([np.nan, 0.0, 0.3]), quat), (home + 0.05, np.zeros(4))), start=1):
        client.send_target(*target)
        client.wait(lambda n=n: fake.stats().targets_rejected == n, 2.0, f"broken target {n} counted")
    for n, command in enumerate(([], [np.inf]), start=1):
        client.gripper.write(msgs.float64_array(command))
        client.wait(lambda n=n: fake.stats().gripper_rejected == n, 2.0, f"broken gripper command {n} counted")
    client.clear()
    client.collect(0.3)
    assert np.linalg.norm(client.pose()[0] - home) < 0.001
    assert client.width() == pytest.approx(2 * PANDA.finger_stroke, abs=1e-3)
    assert fake.stats().targets_applied == 0


def test_a_client_that_leaves_does_not_stop_the_fake(fake_and_client: tuple[FakeFranka, Client]) -> None:
    fake, client = fake_and_client
    home, quat = client.pose()
    other = Client(client.cfg)
    other.wait_for_matches()
    other.send_target(home + np.array([0.0, 0.02, 0.0]), quat)
    other.gripper.write(msgs.float64_array([0.0]))
    client.wait(lambda: fake.stats().targets_applied == 1 and fake.stats().gripper_commands == 1, 2.0,
                "the other client's commands")
    # Its writers go with it: the fake's readers see their instances disposed (samples without data).
    del other
    client.collect(0.3)
    assert fake.running, fake.check()
    client.send_target(home, quat)
    client.wait(lambda: np.linalg.norm(client.pose()[0] - home) < 0.002, 1.0, "moving on the remaining client")


def test_stop_leaves_the_domain_and_keeps_real_time() -> None:
    cfg = bridge_cfg(f"/fake_test_{os.getpid()}_{next(_names)}")
    client = Client(cfg)
    fake = FakeFranka(EnvConfig(), cfg, rate_hz=100.0)
    with fake:
        client.wait(lambda: len(client.samples["pose"]) > 0, 5.0, "the first pose")
        with pytest.raises(RuntimeError, match="already started"):
            fake.start()
        time.sleep(1.0)
    s = fake.stats()
    assert not fake.running
    assert s.sim_s <= s.wall_s and s.sim_s + s.slipped_s == pytest.approx(s.wall_s, abs=3 * PHYSICS_TIMESTEP)
    assert s.sim_s > 0.9 * s.wall_s, f"physics kept up: {s}"
    # One state per 1/rate of sim time (the wall-clock rate also pays for any time the loaded machine slipped).
    assert s.states_published == pytest.approx(100.0 * s.sim_s, rel=0.05), s
    client.wait(lambda: client.readers["pose"].get_subscription_matched_status().current_count == 0, 2.0,
                "the fake's writers leaving the domain")
    client.clear()
    time.sleep(0.1)
    client.poll()
    assert client.samples["pose"] == []
    fake.stop()  # idempotent


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_main_runs_as_a_process_and_stops_on_a_signal(sig: signal.Signals) -> None:
    namespace = f"/fake_test_{os.getpid()}_{next(_names)}"
    client = Client(bridge_cfg(namespace))
    proc = subprocess.Popen(
        [sys.executable, "-m", "robot_bridge.fake_franka", "--domain-id", str(DOMAIN), "--namespace", namespace,
         "--rate", "100"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "MUJOCO_GL": "egl"})
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert f"{namespace}/target_pose" in banner and f"{namespace}/current_pose" in banner, banner
        client.wait(lambda: len(client.samples["pose"]) > 10, 10.0, "poses from the process")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped after" in out, out


@pytest.mark.parametrize("task, body", [("FrankaPickCube-v0", "cube"), ("FrankaPegInsert-v0", "peg")])
def test_a_task_world_brings_its_objects(task: str, body: str) -> None:
    env_cfg = dataclasses.replace(EnvConfig(), id=task)
    bare = FakeFranka(env_cfg, bridge_cfg("/unused"))
    with pytest.raises(KeyError):
        bare.env.model.body(body)
    fake = FakeFranka(env_cfg, bridge_cfg("/unused"), world="task")
    assert fake.env.model.body(body).id > 0
    with pytest.raises(ValueError, match="serl_stack Franka task"):
        FakeFranka(dataclasses.replace(EnvConfig(), id="Pendulum-v1"), bridge_cfg("/unused"), world="task")


@pytest.mark.parametrize("args, named", [(["--rate", "1000"], "rate_hz: got 1000.0"),
                                         (["--domain-id", "300"], "bridge.domain_id: got 300")])
def test_main_refuses_a_bad_argument_by_name(args: list[str], named: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err
