"""The Franka as a Gymnasium env over a ROS 2 backend: the same observation/action contract as the sim tasks.

Owns: `RobotFrankaEnv` (`env.kind: franka`; the reach task: its reward needs only the TCP pose and a goal, drawn
from `env.goal_low/high` or taught; peg insertion on the robot is planned), which turns the
DESIGN.md action into a target pose composed on the last *commanded* pose, passes every command through the
`SafetyFilter` (the same box, cone, step, force and gripper rules as in sim), publishes it through a `Backend`, and
paces itself by the wall clock at `env.control_hz` (measuring its jitter); reads the robot's state streams into the
observation, checking each for staleness; runs the `Watchdog` on its own thread, so a stall of the actor (a jit
compile, a garbage-collector pause, a slow learner link) makes the robot hold its pose instead of running on a stale
target; resets by error recovery (where the backend can) and an interpolated move to the home pose; and computes the
task's reward and success from configured or taught poses (`serl teach`). Camera images come from RealSense
(robot_bridge/realsense.py) when `bridge.camera_serials` names cameras.

The policy cannot tell this env from the sim one: the observation keys, shapes, dtypes, quaternion convention (w
first, w >= 0) and the action semantics are the same (tests/test_bridge_e2e.py drives both with one policy).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import yaml
from gymnasium import spaces

from robot_bridge import make_backend
from robot_bridge.backend import Backend, BackendError, BackendUnsupported
from robot_bridge.operator_keys import ABORT, SUCCESS, OperatorKeys, operator_keys_if_terminal
from robot_bridge.realtime import use_realtime, wait_until
from serl_stack.config import SERL_TASK_IDS, BridgeConfig, ConfigError, EnvConfig, check_section
from serl_stack.envs.controller import quat_canonical, quat_error, quat_from_rotvec, quat_mul
from serl_stack.envs.franka import CommandLimits, clip_finite_action, executed_action, state_space
from serl_stack.envs.panda import PANDA
from serl_stack.safety import FilterResult, SafetyFilter, StaleStateError, Watchdog, WatchdogThread

REACH_ID = SERL_TASK_IDS[0]
TASKS = (REACH_ID,)
"""The tasks the robot env runs: reach, whose reward needs only the TCP pose and a goal. Pick-cube needs the cube's
pose (perception, which the bridge does not have); peg insertion needs the held peg's tip pose (planned)."""
STATE_WAIT_S = 5.0
"""How long a reset waits for the first state of every stream before naming the silent ones."""
RESET_SETTLE_S = 2.0
"""How long a reset's move may take beyond `bridge.reset_duration_s` for the arm to arrive home."""
WATCHDOG_PERIOD_S = 0.01
"""How often the watchdog thread checks (well inside any sensible `env.safety.watchdog_s`)."""
TEACH_KEYS = ("workspace_low", "workspace_high", "home_pose", "goal_pos")


@dataclass
class Jitter:
    """How far each control period ended from its deadline (s, >= 0: late), for the info and the benchmarks."""

    last: float = 0.0
    count: int = 0
    worst: float = 0.0

    def add(self, late: float) -> None:
        self.last = late
        self.count += 1
        self.worst = max(self.worst, late)


def load_teach(path: str | Path) -> dict[str, np.ndarray]:
    """The poses `serl teach` wrote (YAML of `TEACH_KEYS`, each a list of numbers), checked by name."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"bridge.teach_file: {p} not found; record it with `serl teach --out {p}`")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"bridge.teach_file: {p} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"bridge.teach_file: {p} holds {type(data).__name__}, expected a mapping of {TEACH_KEYS}")
    sizes = {"workspace_low": 3, "workspace_high": 3, "home_pose": 7, "goal_pos": 3}
    out = {}
    for key, value in data.items():
        if key not in sizes:
            raise ConfigError(f"bridge.teach_file: {p}: unknown key {key!r}, expected some of {list(TEACH_KEYS)}")
        arr = np.asarray(value, dtype=np.float64)
        if arr.shape != (sizes[key],) or not np.all(np.isfinite(arr)):
            raise ConfigError(f"bridge.teach_file: {p}: {key} is {value!r}, expected {sizes[key]} finite numbers")
        out[key] = arr
    return out


class RobotFrankaEnv(gym.Env):
    """A Franka behind a ROS 2 backend, on the sim's observation/action contract (see the module docstring)."""

    metadata = {"render_modes": []}

    def __init__(self, config: EnvConfig, bridge: BridgeConfig, backend: Backend | None = None,
                 cameras: Any = None, operator: OperatorKeys | None = None) -> None:
        check_section(config)
        check_section(bridge)
        if config.id not in TASKS:
            raise ConfigError(f"env.id: got {config.id!r} with env.kind franka, expected one of {list(TASKS)} (their "
                              "reward needs only the TCP pose and taught poses)")
        self.cfg, self.bridge = config, bridge
        self.warm: Callable[[], object] | None = None
        """Called once in each period's wait, just before its deadline (`wait_until`): the actor sets its
        `Actor.warm_step`, so the step after the wait finds its code and data in the caches."""
        self.idle: Callable[[], object] | None = None
        """Called once late in each period's sleep (`wait_until`, `IDLE_S` before the spin window): the actor sets
        its `Actor.idle_step`, so receiving and adopting the learner's parameters happens while the loop would
        sleep, not between an observation and its command."""
        taught = load_teach(bridge.teach_file) if bridge.teach_file else {}
        self.workspace_low = taught.get("workspace_low", np.asarray(config.workspace_low, np.float64))
        self.workspace_high = taught.get("workspace_high", np.asarray(config.workspace_high, np.float64))
        if np.any(self.workspace_low >= self.workspace_high):
            raise ConfigError(f"bridge.teach_file: workspace_low {self.workspace_low.tolist()} must be below "
                              f"workspace_high {self.workspace_high.tolist()} on every axis")
        home = taught.get("home_pose", np.asarray(bridge.home_pose, np.float64))
        self.home_pos, self.home_quat = home[:3].copy(), quat_canonical(home[3:] / np.linalg.norm(home[3:]))
        self.goal_fixed = taught.get("goal_pos")
        # Goals are drawn where the arm may go: env.goal_low/high inside the (taught) workspace box.
        self.goal_low = np.maximum(np.asarray(config.goal_low, np.float64), self.workspace_low)
        self.goal_high = np.minimum(np.asarray(config.goal_high, np.float64), self.workspace_high)
        if np.any(self.goal_low > self.goal_high):
            raise ConfigError(f"env.goal_low/goal_high: {list(config.goal_low)}..{list(config.goal_high)} does not "
                              f"overlap the workspace box {self.workspace_low.tolist()}..{self.workspace_high.tolist()}"
                              "; expected goals the arm may reach")
        s = config.safety
        # The orientation cone is centred on the home orientation: where the policy starts every episode.
        self.safety = SafetyFilter(self.workspace_low, self.workspace_high, self.home_quat,
                                   orientation_cone=config.orientation_cone, max_step_pos=s.max_step_pos,
                                   max_step_rot=s.max_step_rot, gripper_min_interval_s=s.gripper_min_interval_s,
                                   force_limit=s.force_limit, force_backoff=s.force_backoff)
        if backend is None:
            use_realtime(bridge.realtime_priority)  # before the backend: its DDS threads inherit the policy
        self.backend = backend if backend is not None else make_backend(bridge)
        # The arm's own limits on a command (the reach shell around the shoulder, the floor a tilted gripper needs),
        # the same the sim task applies before the safety filter.
        self.limits = CommandLimits(config, PANDA, self.home_quat, self.workspace_low, self.workspace_high)
        self.cameras = cameras
        if self.cameras is None and bridge.camera_serials:
            from robot_bridge.realsense import Cameras

            self.cameras = Cameras(dict(bridge.camera_serials), bridge.camera_width, bridge.camera_height,
                                   bridge.camera_fps, config.image_size, bridge.camera_timeout_s)
            self.cameras.start()
        self.operator = operator
        """The operator's keys (s: success, a: abort), when someone types at the actor's terminal."""
        self.period = 1.0 / config.control_hz
        self.watchdog = Watchdog.from_config(s, clock=self.backend.now)
        self._lock = threading.Lock()  # the control loop and the watchdog thread both publish
        self._watchdog_thread: WatchdogThread | None = None
        self.jitter = Jitter()
        self._deadline = 0.0
        self._elapsed = -1
        self._recovery_noted = False
        self.goal = (self.goal_low + self.goal_high) / 2 if self.goal_fixed is None else self.goal_fixed
        self._prev_distance = 0.0
        self._prev_pose: tuple[np.ndarray, np.ndarray, float] | None = None
        self._gripper_sent: float | None = None

        obs_space: dict[str, spaces.Space] = {"state": state_space(PANDA), "task": spaces.Dict(self._task_space())}
        if bridge.camera_serials:
            image = spaces.Box(0, 255, (config.image_size, config.image_size, 3), np.uint8)
            obs_space["images"] = spaces.Dict({name: image for name in bridge.camera_serials})
        self.observation_space = spaces.Dict(obs_space)
        self.action_space = spaces.Box(-1.0, 1.0, (7,), np.float32)

    # ------------------------------------------------------------------------------------------- task

    def _task_space(self) -> dict[str, spaces.Box]:
        return {"goal_pos": spaces.Box(self.goal_low.astype(np.float32), self.goal_high.astype(np.float32), (3,),
                                       np.float32)}

    def _task_obs(self) -> dict[str, np.ndarray]:
        return {"goal_pos": self.goal.astype(np.float32)}

    def _evaluate(self, tcp: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        """Reward, termination and info from the TCP position, as the sim reach task computes them."""
        cfg = self.cfg
        distance = float(np.linalg.norm(tcp - self.goal))
        success = distance <= cfg.success_radius
        reward = float(success)
        if cfg.dense_reward:
            prev = self._prev_distance if self._elapsed > 0 else distance
            reward += (prev - distance) / cfg.action_scale_pos
        self._prev_distance = distance
        return reward, success, {"success": success, "distance": distance}

    def _draw_goal(self, tcp: np.ndarray) -> None:
        if self.goal_fixed is not None:
            return
        for _ in range(100):  # a goal the TCP already touches would end the episode before the policy acts
            self.goal = self.np_random.uniform(self.goal_low, self.goal_high)
            if np.linalg.norm(self.goal - tcp) > 2 * self.cfg.success_radius:
                break

    # ------------------------------------------------------------------------------------------- state

    def _fresh_state(self, now: float) -> tuple[Any, Any, Any, Any]:
        """The newest pose, joints, wrench and gripper samples, each younger than `env.safety.state_timeout_s`;
        `StaleStateError` naming the first stream that is not (acting on it would be acting blind)."""
        limit = self.cfg.safety.state_timeout_s
        samples = {name: sample for name, sample in self.backend.state_topics().items()}
        for name, sample in samples.items():
            if sample is None:
                raise BackendError(f"{name}: no message yet; the robot's state stream is missing (is the controller "
                                   "running, are bridge.namespace and bridge.domain_id right?)")
            age = now - sample.received
            if age > limit:
                raise StaleStateError(age, limit, what=name)
        return (self.backend.latest_pose(), self.backend.latest_joints(), self.backend.latest_wrench(),
                self.backend.latest_gripper())

    def _observe(self, now: float) -> tuple[dict[str, Any], np.ndarray]:
        pose, _, wrench, gripper = self._fresh_state(now)
        pos, quat = np.asarray(pose.position, np.float64), quat_canonical(np.asarray(pose.quat, np.float64))
        vel = np.zeros(6)
        if self._prev_pose is not None and pose.received > self._prev_pose[2]:
            # The state topics carry poses, not twists: differentiate over the samples' arrival times.
            dt = pose.received - self._prev_pose[2]
            vel[:3] = (pos - self._prev_pose[0]) / dt
            vel[3:] = quat_error(quat, self._prev_pose[1]) / dt
        self._prev_pose = (pos, quat, pose.received)
        width = 0.0 if gripper is None else float(gripper.width)
        obs: dict[str, Any] = {
            "state": {
                "tcp_pose": np.concatenate((pos, quat)).astype(np.float32),
                "tcp_vel": vel.astype(np.float32),
                "gripper_pos": np.array([width], np.float32),
                "tcp_force": np.asarray(wrench.force, np.float32),
                "tcp_torque": np.asarray(wrench.torque, np.float32),
            },
            "task": self._task_obs(),
        }
        if self.cameras is not None:
            obs["images"] = {name: image for name, (image, _) in self.cameras.latest().items()}
        return obs, pos

    # ------------------------------------------------------------------------------------------- commands

    def _publish(self, pos: np.ndarray, quat: np.ndarray) -> None:
        with self._lock:
            self.backend.publish_target_pose(pos, quat)

    def _send_gripper(self, closed: bool) -> None:
        opening = 0.0 if closed else 1.0
        if opening != self._gripper_sent:
            self.backend.command_gripper(opening)
            self._gripper_sent = opening

    def _hold(self) -> None:
        """The watchdog's command (on its thread): hold the pose the robot is at now. Always safe, and what the
        real arm's controller then tracks until a new command arrives."""
        pose = self.backend.latest_pose()
        if pose is not None:
            self._publish(np.asarray(pose.position), np.asarray(pose.quat))

    def _poll_streams(self) -> None:
        """On the watchdog thread: report the state streams' arrivals (the oldest newest-sample counts)."""
        received = [s.received for s in self.backend.state_topics().values() if s is not None]
        if received:
            self.watchdog.state_received(min(received))

    def _start_watchdog(self) -> None:
        if self._watchdog_thread is None:
            self._watchdog_thread = WatchdogThread(self.watchdog, self._hold, WATCHDOG_PERIOD_S,
                                                   poll=self._poll_streams).start()

    @property
    def watchdog_holds(self) -> int:
        """Hold episodes the watchdog commanded so far (a stalled actor, a lost link)."""
        return 0 if self._watchdog_thread is None else self._watchdog_thread.holds

    def _wait_period(self) -> None:
        """Wait until this control period's deadline (`wait_until`: the last `SPIN_S` spun for precision), then
        start the next; a step that overran restarts the schedule from now instead of bursting to catch up."""
        now = wait_until(self._deadline, self.backend.now, warm=self.warm, idle=self.idle)
        self.jitter.add(now - self._deadline)
        self._deadline = max(self._deadline + self.period, now)

    # ------------------------------------------------------------------------------------------- gym API

    def _recover(self) -> None:
        try:
            self.backend.recover_errors(timeout_s=5.0)
        except BackendUnsupported as e:
            if not self._recovery_noted:  # over DDS recovery is manual: say so once, then go on
                print(f"robot env: {e}", flush=True)
                self._recovery_noted = True

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self._recover()
        self.backend.wait_for_state(STATE_WAIT_S)
        now = self.backend.now()
        self.watchdog.reset(now)
        self._start_watchdog()
        pose, _, _, _ = self._fresh_state(now)
        start_pos, start_quat = np.asarray(pose.position, np.float64), np.asarray(pose.quat, np.float64)
        closed = False
        self._send_gripper(closed)
        # An interpolated move home through the safety filter, at the control rate: the target slides from where the
        # arm is to the home pose over reset_duration_s (the filter's step limits may slow it further), then stays
        # there until the arm has arrived or the settle time is over.
        self.safety.reset(start_pos, start_quat, gripper_closed=closed, now=now)
        steps = max(1, int(round(self.bridge.reset_duration_s / self.period)))
        give_up = steps + int(round(RESET_SETTLE_S / self.period))
        self._deadline = self.backend.now() + self.period
        error = float("inf")
        for i in range(1, give_up + 1):
            f = min(1.0, i / steps)
            target = start_pos + f * (self.home_pos - start_pos)
            quat = _slerp(start_quat, self.home_quat, f)
            result = self.safety.filter(target, quat, 1.0 if closed else -1.0, *self._measured(), self.backend.now())
            self._publish(result.pos, result.quat)
            self.watchdog.command_received()
            self._wait_period()
            error = float(np.linalg.norm(np.asarray(self.backend.latest_pose().position) - self.home_pos))
            if i >= steps and error <= self.bridge.reset_tolerance:
                break
        if error > self.bridge.reset_tolerance:
            pos = np.round(np.asarray(self.backend.latest_pose().position), 3).tolist()
            raise BackendError(f"reset: the TCP stopped {error * 1000:.0f} mm from the home pose (at {pos}, home "
                               f"bridge.home_pose; tolerance bridge.reset_tolerance={self.bridge.reset_tolerance} m); "
                               "is the arm blocked or the controller not tracking the target pose topic?")
        now = self.backend.now()
        pose, _, _, _ = self._fresh_state(now)
        self.safety.reset(np.asarray(pose.position), np.asarray(pose.quat), gripper_closed=closed, now=now)
        self._prev_pose = None
        self._elapsed = 0
        obs, tcp = self._observe(now)
        self._draw_goal(tcp)
        obs["task"] = self._task_obs()
        _, _, info = self._evaluate(tcp)
        self._deadline = self.backend.now() + self.period
        return obs, info

    def _measured(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pose, wrench = self.backend.latest_pose(), self.backend.latest_wrench()
        return np.asarray(pose.position), np.asarray(pose.quat), np.asarray(wrench.force)

    @staticmethod
    def _checked_action(action: np.ndarray) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (7,):
            raise ValueError(f"action: expected shape (7,) [dx, dy, dz, drx, dry, drz, gripper], got {a.shape}")
        return clip_finite_action(a)

    def _target(self, a: np.ndarray, prev_pos: np.ndarray, prev_quat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pose a (checked) action asks for from the last command, with the arm's command limits applied."""
        cfg = self.cfg
        if np.all(np.isfinite(a[:6])):
            return self.limits.clip_command(
                prev_pos + a[:3] * cfg.action_scale_pos, quat_mul(quat_from_rotvec(a[3:6] * cfg.action_scale_rot),
                                                                  prev_quat))
        # nothing can be composed from a NaN: the filter holds the last command and says so
        return np.full(3, np.nan), np.full(4, np.nan)

    def preview_action(self, action: np.ndarray) -> FilterResult:
        """What the safety filter would command for `action` now, on the latest state samples, with nothing
        changed and nothing sent: the command path of `step` run for the control loop's cache warm-up (`warm`)."""
        a = self._checked_action(action)
        prev_pos, prev_quat, _ = self.safety.command
        target_pos, target_quat = self._target(a, prev_pos, prev_quat)
        return self.safety.filter(target_pos, target_quat, a[6], *self._measured(), self.backend.now(), commit=False)

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict[str, Any]]:
        if self._elapsed < 0:
            raise RuntimeError("RobotFrankaEnv.step called before reset()")
        if self._watchdog_thread is not None:
            self._watchdog_thread.raise_if_failed()  # a stale stream seen while we were away stops the run
        a = self._checked_action(action)
        cfg = self.cfg
        prev_pos, prev_quat, _ = self.safety.command
        target_pos, target_quat = self._target(a, prev_pos, prev_quat)
        now = self.backend.now()
        self._fresh_state(now)
        result = self.safety.filter(target_pos, target_quat, a[6], *self._measured(), now)
        self._publish(result.pos, result.quat)
        self._send_gripper(result.gripper_closed)
        if not result.flags().get("nonfinite", False):
            self.watchdog.command_received()
        self._wait_period()
        self._elapsed += 1
        obs, tcp = self._observe(self.backend.now())
        reward, terminated, info = self._evaluate(tcp)
        info["executed_action"] = executed_action(cfg, prev_pos, prev_quat, result)
        info["safety"] = result.flags()
        info["jitter_s"] = self.jitter.last
        truncated = self._elapsed >= cfg.max_episode_steps
        key = self.operator.take() if self.operator is not None else None
        if key == SUCCESS:  # the operator's word: the episode ends a success, with the success reward
            reward += 0.0 if info["success"] else 1.0
            info["success"], info["operator"], terminated = True, key, True
        elif key == ABORT:  # cut short, not failed: truncation, so nothing is learned as if it ended here
            info["operator"], truncated = key, True
        if terminated or truncated:
            info["safety_counts"] = self.safety.episode_counts()
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        if self._watchdog_thread is not None:
            self._watchdog_thread.stop()
            self._watchdog_thread = None
        if self.cameras is not None:
            self.cameras.stop()
        self.backend.close()


def _slerp(a: np.ndarray, b: np.ndarray, f: float) -> np.ndarray:
    """The unit quaternion a fraction `f` of the way from `a` to `b` (shortest arc)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if float(a @ b) < 0:
        b = -b
    return quat_mul(quat_from_rotvec(f * quat_error(b, a)), a)


def make_robot_env(config: EnvConfig, bridge: BridgeConfig | None = None) -> gym.Env:
    """`env.kind: franka`: the task `config.id` on the Franka the bridge reaches, with Gymnasium's checks."""
    env = RobotFrankaEnv(config, bridge if bridge is not None else BridgeConfig(),
                         operator=operator_keys_if_terminal())
    return gym.wrappers.PassiveEnvChecker(env)
