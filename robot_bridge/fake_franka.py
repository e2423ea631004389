"""The fake Franka: our MuJoCo Panda and its cartesian impedance controller, run in real time behind the topics
franka_ros2 + CRISP speak, so the robot env, the actor and any ROS 2 client can drive a Franka on one machine.

Owns: `FakeFranka` (the real-time physics loop on its own thread, the DDS readers of the target pose and the gripper
command, the best-effort writers of the TCP pose, the joint state, the external wrench and the gripper's joint
state), `FakeFrankaStats` (what it achieved: rates, real-time lag, CPU) and `main(argv)` (run it as a process
until SIGINT/SIGTERM).

The physics is the sim's own (serl_stack/envs/franka.py): the same model, the same `OpSpaceController` (its pose
error clip stands in for CRISP's) and the same F/T reading in the base frame with the hand's weight compensated.
It is stepped here directly, without the sim env's action contract or safety filter: on the real arm those live in
the bridge's `FrankaEnv`, upstream of the wire, and the controller tracks whatever target arrives last, holding it
until a new one comes. Topic names, types and QoS are DESIGN.md's "Bridge topics" under `bridge.namespace`:
`target_pose` (PoseStamped, read reliable depth 1 as CRISP does), the gripper command (Float64MultiArray,
0 closed .. 1 open, read with ROS 2's default QoS), and the state topics written best effort depth 1 as
franka_ros2 writes them (a reliable reader receives nothing, exactly as from the real robot).

Real time: physics steps at PHYSICS_HZ (500 Hz) are taken in chunks so that sim time follows the wall clock and
never runs ahead of it; the loop wakes every physics step (so a new target is applied within one step of arriving),
and a state sample goes out every 1/rate of sim time. When the loop falls more than `max_catchup_s` behind (the
process was descheduled), it takes that many steps and gives up the rest (`slipped_s`): a real controller does not
replay the time it missed either. Header stamps are the wall clock (`time.time`, ROS time without sim time), read
once per state sample, so every topic of one sample carries the same stamp.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import mujoco
import numpy as np
from cyclonedds.domain import DomainParticipant
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic

from robot_bridge import msgs, qos
from robot_bridge.backend import topic_name
from robot_bridge.dds_backend import dds_topic
from serl_stack.config import PHYSICS_HZ, PHYSICS_TIMESTEP, BridgeConfig, EnvConfig, check_section
from serl_stack.envs.franka import FrankaEnv

JOINT_PREFIXES = ("fr3", "panda")
"""How franka_ros2 names the joints: `fr3_joint1..7` / `fr3_finger_joint1..2` on an FR3, `panda_*` on a Panda."""
WORLDS = ("bare", "task")
"""bare: the arm on the table | task: also the world of the `env.id` task (its markers and objects)."""


@dataclass(frozen=True)
class FakeFrankaStats:
    """What the real-time loop has achieved since `start()` (a snapshot)."""

    wall_s: float
    """Wall-clock time since the loop started (s)."""
    sim_s: float
    """Physics time advanced since then (s); wall_s - sim_s - slipped_s is the lag at the snapshot (about a step)."""
    slipped_s: float
    """Wall time the physics gave up after falling more than `max_catchup_s` behind (0 on an unloaded machine)."""
    max_lag_s: float
    """Largest lag of sim time behind the wall clock seen at a wake-up, after catching up (s)."""
    physics_steps: int
    states_published: int
    """State samples sent (each one message on every state topic)."""
    state_rate_hz: float
    """states_published / wall_s."""
    targets_applied: int
    targets_rejected: int
    """Target poses ignored because they were not finite or had a zero quaternion."""
    gripper_commands: int
    gripper_rejected: int
    """Gripper commands ignored (no value, or not finite)."""
    cpu_fraction: float
    """CPU time of the loop thread / wall time (1.0 = one core busy)."""


@dataclass(frozen=True)
class AppliedTarget:
    """One target pose the controller took: what a round-trip measurement needs to find the first state sample
    that physics computed after it (stamps on the fake's clock, seconds)."""

    stamp: float
    """The target's own header stamp (as its publisher set it)."""
    applied: float
    """When it was handed to the controller."""
    state_stamp: float
    """The stamp of the first state sample computed after that (on every state topic)."""


class FakeFranka:
    """A MuJoCo Panda behind franka_ros2 + CRISP's topics: `start()` it (or use it as a context manager), drive it
    with target poses and gripper commands over DDS, read its state over DDS, `stop()` it."""

    def __init__(self, env_cfg: EnvConfig, bridge_cfg: BridgeConfig, *, rate_hz: float = 250.0,
                 joint_prefix: Literal["fr3", "panda"] = "fr3", world: Literal["bare", "task"] = "bare",
                 seed: int = 0, max_catchup_s: float = 0.05, clock: Callable[[], float] = time.time) -> None:
        check_section(bridge_cfg)  # the ranges config.py declares (domain id, ...); the env's are checked by the env
        if not (math.isfinite(rate_hz) and 0 < rate_hz <= PHYSICS_HZ):
            raise ValueError(f"rate_hz: got {rate_hz!r}, expected a state rate in (0, {PHYSICS_HZ:g}] Hz (the physics "
                             "rate)")
        if joint_prefix not in JOINT_PREFIXES:
            raise ValueError(f"joint_prefix: got {joint_prefix!r}, expected one of {JOINT_PREFIXES}")
        if world not in WORLDS:
            raise ValueError(f"world: got {world!r}, expected one of {WORLDS}")
        if not (math.isfinite(max_catchup_s) and max_catchup_s >= PHYSICS_TIMESTEP):
            raise ValueError(f"max_catchup_s: got {max_catchup_s!r}, expected at least one physics step "
                             f"({PHYSICS_TIMESTEP} s)")
        self.bridge_cfg = bridge_cfg
        self.rate_hz = float(rate_hz)
        self._clock = clock
        self._max_catchup = max(1, round(max_catchup_s / PHYSICS_TIMESTEP))
        # No cameras: the fake serves state topics only (the RealSense path is separate), and a renderer would cost
        # a GL context for nothing. No joint noise: it starts like a robot homed to its ready pose.
        self.env = _make_env(dataclasses.replace(env_cfg, cameras=(), reset_joint_noise=0.0), world)
        self.env.reset(seed=seed)  # the ready pose, settled, the target on it: the arm holds still from the start
        self.env.controller.set_target(*self.env.tcp_pose())
        self.arm_joints = tuple(f"{joint_prefix}_joint{i + 1}" for i in range(len(self.env.arm.joints)))
        self.finger_joints = (f"{joint_prefix}_finger_joint1", f"{joint_prefix}_finger_joint2")
        self.topics = {
            key: topic_name(bridge_cfg.namespace, getattr(bridge_cfg, f"{key}_topic"))
            for key in ("target_pose", "gripper_command", "current_pose", "joint_states", "wrench", "gripper_state")
        }
        """Each role -> its full ROS 2 topic name (namespace + the `bridge.*_topic` name)."""
        self._model, self._data = self.env.model, self.env.data
        self._n = len(self.env.arm.joints)
        self._fingers = [self._model.jnt_qposadr[self._model.joint(f"finger_{s}").id] for s in ("left", "right")]
        self._finger_dofs = [self._model.jnt_dofadr[self._model.joint(f"finger_{s}").id] for s in ("left", "right")]
        self._gripper_act = self._model.actuator("gripper").id
        self._gripper_open = float(self._model.actuator_ctrlrange[self._gripper_act][1])
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._dds: dict[str, Any] = {}
        self._stats_lock = threading.Lock()
        self._stats = FakeFrankaStats(0.0, 0.0, 0.0, 0.0, 0, 0, 0.0, 0, 0, 0, 0, 0.0)
        self._failure: BaseException | None = None
        self._applied: deque[AppliedTarget] = deque(maxlen=100_000)
        self._unpublished: list[tuple[float, float]] = []  # (stamp, applied) of targets no state has followed yet

    # ------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Join the DDS domain, create the readers and writers and start the real-time loop."""
        if self._thread is not None:
            raise RuntimeError("FakeFranka.start: already started (a FakeFranka runs once; make a new one)")
        dp = DomainParticipant(self.bridge_cfg.domain_id)
        t = {key: Topic(dp, dds_topic(name), _TYPES[key]) for key, name in self.topics.items()}
        self._dds = {
            "participant": dp,
            "topics": t,
            "target_pose": DataReader(dp, t["target_pose"], qos=qos.command()),
            # rclcpp's default QoS (reliable, keep last 10): what a ROS 2 client publishes the command with.
            "gripper_command": DataReader(dp, t["gripper_command"], qos=qos.ros_default()),
            **{key: DataWriter(dp, t[key], qos=qos.franka_state())
               for key in ("current_pose", "joint_states", "wrench", "gripper_state")},
        }
        self._thread = threading.Thread(target=self._run, name="fake-franka", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the loop and leave the DDS domain (its readers and writers unmatch at once). Idempotent."""
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise RuntimeError(f"FakeFranka.stop: the physics loop did not stop within {timeout_s:g} s")
        # Cyclone DDS deletes an entity (and its children) when its Python object goes: drop every reference.
        self._dds.clear()
        self.env.close()

    def __enter__(self) -> FakeFranka:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the loop is running (False before `start`, after `stop`, or once it failed: see `check`)."""
        return self._thread is not None and self._thread.is_alive()

    def check(self) -> None:
        """Raise what the loop died of, if it did (the loop thread cannot raise into its owner)."""
        if self._failure is not None:
            raise RuntimeError(f"FakeFranka: the physics loop failed: {self._failure!r}") from self._failure

    def stats(self) -> FakeFrankaStats:
        """What the loop has achieved so far (see `FakeFrankaStats`)."""
        with self._stats_lock:
            return self._stats

    def applied_targets(self) -> list[AppliedTarget]:
        """The targets applied so far (the newest 100,000), oldest first, each with the stamp of the first state
        sample that followed it: a client that stamped its target finds the state it caused without guessing."""
        with self._stats_lock:
            return list(self._applied)

    # ------------------------------------------------------------------------------------ the loop

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # noqa: BLE001 -- kept for `check`; the thread has no caller to raise to
            self._failure = e
            print(f"fake franka: the physics loop failed: {e!r}", file=sys.stderr, flush=True)

    def _loop(self) -> None:
        dt, data, controller = PHYSICS_TIMESTEP, self._data, self.env.controller
        state_period = 1.0 / self.rate_hz
        wall0 = anchor = time.perf_counter()
        cpu0 = time.thread_time()
        sim0 = data.time
        steps = 0  # physics steps since `anchor` (re-anchored when time is given up)
        next_state = data.time  # sim time of the next state sample: the first goes out at once
        slipped, max_lag = 0.0, 0.0
        counts = {"steps": 0, "states": 0}
        while not self._stop.is_set():
            now = time.perf_counter()
            due = int((now - anchor) / dt) - steps
            if due <= 0:
                # Sleep to the next step's wall time: sim time never runs ahead of the wall clock.
                self._stop.wait(anchor + (steps + 1) * dt - now)
                continue
            if due > self._max_catchup:
                lost = due - self._max_catchup
                anchor += lost * dt
                slipped += lost * dt
                due = self._max_catchup
            self._take_commands()
            controller.step(data, due)
            steps += due
            counts["steps"] += due
            max_lag = max(max_lag, time.perf_counter() - anchor - steps * dt)
            if data.time >= next_state - 0.5 * dt:
                self._publish_state()
                counts["states"] += 1
                # On schedule in sim time; after a slip the schedule restarts from now rather than bursting.
                next_state = max(next_state + state_period, data.time + 0.5 * dt)
                self._update_stats(wall0, cpu0, data.time - sim0, slipped, max_lag, counts)
        self._update_stats(wall0, cpu0, data.time - sim0, slipped, max_lag, counts)

    def _update_stats(self, wall0: float, cpu0: float, sim_s: float, slipped: float, max_lag: float,
                      counts: dict[str, int]) -> None:
        wall = time.perf_counter() - wall0
        with self._stats_lock:
            s = self._stats
            self._stats = dataclasses.replace(
                s, wall_s=wall, sim_s=sim_s, slipped_s=slipped, max_lag_s=max_lag, physics_steps=counts["steps"],
                states_published=counts["states"], state_rate_hz=counts["states"] / wall if wall > 0 else 0.0,
                cpu_fraction=(time.thread_time() - cpu0) / wall if wall > 0 else 0.0)

    def _bump(self, **deltas: int) -> None:
        with self._stats_lock:
            s = self._stats
            self._stats = dataclasses.replace(s, **{k: getattr(s, k) + v for k, v in deltas.items()})

    def _take_commands(self) -> None:
        """Apply the newest target pose and gripper command that arrived since the last physics step."""
        # A writer that leaves (a client stops) delivers an invalid sample (no data, only the instance's new state):
        # only real messages count.
        targets = [m for m in self._dds["target_pose"].take(N=16) if isinstance(m, msgs.PoseStamped)]
        if targets:
            pos, quat = msgs.pose_of(targets[-1])
            norm = float(np.linalg.norm(quat))
            if np.all(np.isfinite(pos)) and math.isfinite(norm) and norm > 1e-9:
                self.env.controller.set_target(pos, quat / norm)
                self._unpublished.append((msgs.seconds_of(targets[-1].header.stamp), self._clock()))
                self._bump(targets_applied=1)
            else:
                # What the robot would do with a broken target is not ours to guess: hold the last good one.
                self._bump(targets_rejected=1)
        commands = [m for m in self._dds["gripper_command"].take(N=16) if isinstance(m, msgs.Float64MultiArray)]
        if commands:
            values = commands[-1].data
            if len(values) >= 1 and math.isfinite(values[0]):
                opening = min(max(float(values[0]), 0.0), 1.0)
                self._data.ctrl[self._gripper_act] = opening * self._gripper_open
                self._bump(gripper_commands=1)
            else:
                self._bump(gripper_rejected=1)

    def _publish_state(self) -> None:
        """One state sample: the physics state as it is now, one stamp on every topic."""
        m, d, n = self._model, self._data, self._n
        # mj_step leaves kinematics and sensors at the start of the step just taken; bring them to the present.
        mujoco.mj_forward(m, d)
        stamp = self._clock()
        frame = self.bridge_cfg.base_frame
        pos, quat = self.env.tcp_pose()
        force, torque = self.env.wrench()
        w = self._dds
        w["current_pose"].write(msgs.pose_stamped(pos, quat, stamp, frame))
        w["joint_states"].write(msgs.joint_state(self.arm_joints, d.qpos[:n], d.qvel[:n], d.actuator_force[:n],
                                                 stamp))
        w["wrench"].write(msgs.wrench_stamped(force, torque, stamp, frame))
        w["gripper_state"].write(msgs.joint_state(self.finger_joints, d.qpos[self._fingers],
                                                  d.qvel[self._finger_dofs], (), stamp))
        if self._unpublished:
            with self._stats_lock:
                self._applied.extend(AppliedTarget(t, applied, stamp) for t, applied in self._unpublished)
            self._unpublished.clear()


_TYPES: dict[str, type] = {
    "target_pose": msgs.PoseStamped,
    "gripper_command": msgs.Float64MultiArray,
    "current_pose": msgs.PoseStamped,
    "joint_states": msgs.JointState,
    "wrench": msgs.WrenchStamped,
    "gripper_state": msgs.JointState,
}


def _make_env(cfg: EnvConfig, world: str) -> FrankaEnv:
    """The sim env whose model, data and controller the fake runs: the bare arm, or the `env.id` task's world."""
    if world == "bare":
        return FrankaEnv(cfg)
    import gymnasium as gym

    import serl_stack.envs  # noqa: F401 -- registers the serl_stack tasks

    spec = gym.spec(cfg.id)
    env_cls = gym.envs.registration.load_env_creator(spec.entry_point) if isinstance(spec.entry_point, str) \
        else spec.entry_point
    if not (isinstance(env_cls, type) and issubclass(env_cls, FrankaEnv)):
        raise ValueError(f"env.id: got {cfg.id!r} with world='task', expected a serl_stack Franka task "
                         "(its world is MuJoCo XML the fake can load)")
    return env_cls(cfg)


# ---------------------------------------------------------------------------------------------- process


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fake-franka", description=__doc__.split("\n\n")[0])
    d = BridgeConfig()
    p.add_argument("--domain-id", type=int, default=d.domain_id, help="ROS_DOMAIN_ID (bridge.domain_id)")
    p.add_argument("--namespace", default=d.namespace, help="prefix of every topic (bridge.namespace), e.g. /fr3")
    p.add_argument("--rate", type=float, default=250.0, help="state rate (Hz), at most the physics rate")
    p.add_argument("--joint-prefix", choices=JOINT_PREFIXES, default="fr3", help="joint names: fr3_* or panda_*")
    p.add_argument("--world", choices=WORLDS, default="bare", help="the bare arm, or the env.id task's world")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: at SIGINT/SIGTERM)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake Franka until SIGINT/SIGTERM (or `--duration`); print where it publishes and what it achieved."""
    parser = _parser()
    args = parser.parse_args(argv)
    bridge_cfg = dataclasses.replace(BridgeConfig(), domain_id=args.domain_id, namespace=args.namespace)
    done = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        done.set()

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    cpu0 = time.process_time()
    try:
        try:
            fake = FakeFranka(EnvConfig(), bridge_cfg, rate_hz=args.rate, joint_prefix=args.joint_prefix,
                              world=args.world)
        except ValueError as e:  # a bad argument, named by the check that refused it
            parser.error(str(e))
        with fake:
            print(f"fake franka: domain {bridge_cfg.domain_id}, state at {fake.rate_hz:g} Hz; reads "
                  f"{fake.topics['target_pose']}, {fake.topics['gripper_command']}; publishes "
                  f"{fake.topics['current_pose']}, {fake.topics['joint_states']}, {fake.topics['wrench']}, "
                  f"{fake.topics['gripper_state']}", flush=True)
            deadline = time.monotonic() + args.duration if args.duration > 0 else math.inf
            while not done.is_set() and fake.running and time.monotonic() < deadline:
                done.wait(min(0.2, max(0.0, deadline - time.monotonic())))
        s = fake.stats()
        fake.check()
    except RuntimeError as e:  # the loop's failure, named by `check`
        print(f"fake franka: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    process_cpu = (time.process_time() - cpu0) / s.wall_s if s.wall_s > 0 else 0.0
    print(f"fake franka: stopped after {s.wall_s:.1f} s: physics {s.sim_s:.2f} s ({s.slipped_s:.3f} s given up, "
          f"max lag {1e3 * s.max_lag_s:.1f} ms), {s.state_rate_hz:.1f} states/s, {s.targets_applied} targets; CPU "
          f"{100 * s.cpu_fraction:.0f} % of a core in the loop, {100 * process_cpu:.0f} % in the process (DDS "
          "threads included)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
