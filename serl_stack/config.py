"""Typed configuration for every serl_stack component.

Owns: the dataclasses (one per component, every number that matters is a named field with a one-line
docstring), loading them from YAML, and overriding any field by its dotted path from the command line.
Unknown keys and values of the wrong type are errors that name the key, the value seen and the type expected.

Also the one place that says which values are valid: each field declares its range in its own metadata
(`ranged(...)`), constraints between fields are the named `RULES`, and `validate` / `check_section` check both,
raising a one-line `ConfigError` ("agent.tau: got 5.0, expected a value in (0, 1]"). Every path from user input
(`load`, `from_dict`, `apply_overrides`) validates, so a bad value stops a command before anything starts;
components built straight from a section call `check_section` instead of re-implementing the checks.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import re
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or override that does not match the schema."""


SERL_TASK_IDS = ("FrankaReach-v0", "FrankaPickCube-v0", "FrankaPegInsert-v0")
"""The sim tasks serl_stack registers (envs/__init__.py): they take an `EnvConfig` and have `env.dense_reward`."""
PHYSICS_TIMESTEP = 0.002
"""MuJoCo step (s) of the sim (envs/panda.py writes it into the model; tests/test_config.py checks they agree)."""
PHYSICS_HZ = 1.0 / PHYSICS_TIMESTEP
"""The physics rate (Hz): the fastest policy rate `env.control_hz` may ask for (one physics step per action)."""

# --------------------------------------------------------------------------------------------------- ranges

RANGE = "serl_range"
"""The `dataclasses.field` metadata key under which a field's `Range` is declared."""

_NAMED_BOUNDS = {math.pi: "pi", math.pi / 2: "pi/2"}


def _num(x: float) -> str:
    if x in _NAMED_BOUNDS:
        return _NAMED_BOUNDS[x]
    if isinstance(x, int) or (math.isfinite(x) and x == int(x) and abs(x) < 1e15):
        return str(int(x))
    return f"{x:g}"


@dataclass(frozen=True)
class Range:
    """The values a config field accepts, declared once in the field's metadata by `ranged`. For a tuple field the
    bounds, `finite` and `choices` apply to every item and `min_len`/`max_len` to the tuple."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    finite: bool = True
    """Refuse inf as well as NaN (NaN is always refused)."""
    choices: tuple[Any, ...] = ()
    """The only values allowed (instead of bounds)."""
    min_len: int | None = None
    max_len: int | None = None
    note: str = ""
    """Unit or meaning appended to the expected text, e.g. "(0 = never)"."""

    def accepts(self, v: Any) -> bool:
        """Whether one value (a scalar, or one item of a tuple field) is in range."""
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            return False
        if self.choices:
            return v in self.choices
        if v != v or (self.finite and v in (math.inf, -math.inf)):  # v != v: NaN
            return False
        return ((self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
                and (self.le is None or v <= self.le) and (self.lt is None or v < self.lt))

    def expected(self, floating: bool = True) -> str:
        """What `accepts` accepts, in words; `floating` says the field holds floats (so inf needs a mention)."""
        if self.choices:
            text = "one of " + ", ".join(map(str, self.choices))
        else:
            low = ("[", self.ge) if self.ge is not None else ("(", self.gt) if self.gt is not None else None
            high = ("]", self.le) if self.le is not None else (")", self.lt) if self.lt is not None else None
            finite = "finite " if self.finite and floating and not (low and high) else ""
            if low and high:
                text = f"a value in {low[0]}{_num(low[1])}, {_num(high[1])}{high[0]}"
            elif low:
                text = f"a {finite}value {'>=' if low[0] == '[' else '>'} {_num(low[1])}"
            elif high:
                text = f"a {finite}value {'<=' if high[0] == ']' else '<'} {_num(high[1])}"
            else:
                text = "a finite value" if self.finite else "a number"
        return f"{text} {self.note}" if self.note else text

    def length_ok(self, n: int) -> bool:
        return (self.min_len is None or n >= self.min_len) and (self.max_len is None or n <= self.max_len)

    def expected_length(self) -> str:
        if self.min_len == self.max_len:
            return f"{self.min_len} items"
        if self.max_len is None:
            return f"at least {self.min_len} item{'s' if self.min_len != 1 else ''}"
        return f"{self.min_len or 0} to {self.max_len} items"


def ranged(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    finite: bool = True,
    choices: tuple[Any, ...] = (),
    min_len: int | None = None,
    max_len: int | None = None,
    length: int | None = None,
    note: str = "",
) -> Any:
    """A dataclass field with default `default` whose accepted values are declared here, once: `validate` and
    `check_section` check them, tests/test_config_ranges.py tries a value just outside each. For a tuple field
    the bounds apply to each item and `length` (or `min_len`/`max_len`) to the number of items. Floats must be
    finite unless `finite=False`."""
    if length is not None:
        min_len = max_len = length
    spec = Range(ge, gt, le, lt, finite, tuple(choices), min_len, max_len, note)
    values = default if isinstance(default, tuple) else (default,)
    assert all(map(spec.accepts, values)) and (not isinstance(default, tuple) or spec.length_ok(len(default))), (
        f"default {default!r} outside its own range {spec}")
    return field(default=default, metadata={RANGE: spec})


# --------------------------------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class ControllerConfig:
    """Cartesian impedance / operational-space controller that tracks a target TCP pose in sim."""

    kp_pos: float = ranged(600.0, gt=0)
    """Translational stiffness (N/m-equivalent, applied through the task-space inertia), per axis."""
    kp_rot: float = ranged(300.0, gt=0)
    """Rotational stiffness per axis."""
    damping_ratio: float = ranged(1.0, gt=0)
    """Damping as a fraction of critical damping (kd = 2 * ratio * sqrt(kp))."""
    kp_null: float = ranged(10.0, ge=0)
    """Null-space stiffness pulling the joints toward the ready posture."""
    max_pos_error: float = ranged(0.1, gt=0)
    """Clip on the translational pose error fed to the controller, metres (the real CRISP controller clips too)."""
    max_rot_error: float = ranged(0.5, gt=0)
    """Clip on the rotational pose error fed to the controller, radians."""
    joint_limit_margin: float = ranged(0.15, ge=0)
    """Width (rad) of the zone before each joint limit where a spring pushes the joint back out."""
    joint_limit_stiffness: float = ranged(400.0, ge=0)
    """Stiffness (N m/rad) of that joint-limit spring (0 disables it); torques are still clipped to limits."""


@dataclass(frozen=True)
class RandomizationConfig:
    """Domain randomization for sim-to-real, drawn at every reset from the env's seeded RNG; 0 turns a term off.

    The task's own object placement (cube pose, hole position) is randomized by the task's config section.
    """

    table_height: float = ranged(0.0, ge=0, note="(0 = off)")
    """Table top (and everything resting on it) shifted by uniform(-x, +x) metres in z."""
    friction: float = ranged(0.0, ge=0, lt=1, note="(the scale 1 - x stays > 0)")
    """Sliding friction of every contact surface scaled by uniform(1 - x, 1 + x)."""
    controller_gains: float = ranged(0.0, ge=0, lt=1, note="(the scale 1 - x stays > 0)")
    """Controller stiffnesses (kp_pos, kp_rot) scaled by uniform(1 - x, 1 + x); damping follows the ratio."""
    camera_pos: float = ranged(0.0, ge=0, note="(0 = off)")
    """Each camera's position jittered by uniform(-x, +x) metres per axis."""
    camera_rot: float = ranged(0.0, ge=0, le=math.pi, note="rad")
    """Each camera's orientation jittered by a rotation of up to x radians about a random axis."""
    obs_noise_pos: float = ranged(0.0, ge=0, note="(0 = off)")
    """Std (m) of Gaussian noise on observed positions: tcp_pose xyz and task positions (per step)."""
    obs_noise_vel: float = ranged(0.0, ge=0, note="(0 = off)")
    """Std (m/s, rad/s) of Gaussian noise on the observed tcp_vel (per step)."""
    obs_noise_force: float = ranged(0.0, ge=0, note="(0 = off)")
    """Std (N) of Gaussian noise on the observed tcp_force; tcp_torque gets x/10 N m (per step)."""
    action_latency: int = ranged(0, choices=(0, 1), note="(control steps)")
    """Control steps between the policy's action and its execution (0 or 1): with 1, each step executes the
    previous step's action, as on a real arm whose command arrives one cycle late."""


@dataclass(frozen=True)
class PickCubeConfig:
    """FrankaPickCube-v0: lift a cube lying at a random pose on the table."""

    cube_size: float = ranged(0.04, gt=0)
    """Edge length (m) of the cube."""
    cube_mass: float = ranged(0.05, gt=0)
    """Mass (kg) of the cube."""
    cube_low: tuple[float, ...] = ranged((0.40, -0.10), length=2)
    """Lower corner (base frame x, y in m) of the area the cube's centre is placed in at reset."""
    cube_high: tuple[float, ...] = ranged((0.55, 0.10), length=2)
    """Upper corner (x, y in m) of the cube placement area."""
    cube_yaw: float = ranged(0.785, ge=0, le=math.pi, note="rad (the yaw is drawn from +-cube_yaw)")
    """The cube's yaw at reset is uniform(-x, +x) radians."""
    lift_height: float = ranged(0.05, gt=0)
    """Success: the cube's centre at least this far (m) above its resting height."""


@dataclass(frozen=True)
class PegInsertConfig:
    """FrankaPegInsert-v0: a peg held in the closed gripper goes into a hole in a fixture on the table."""

    peg_radius: float = ranged(0.008, gt=0)
    """Radius (m) of the cylindrical peg."""
    peg_length: float = ranged(0.06, gt=0)
    """Length (m) of the peg."""
    clearance: float = ranged(0.002, gt=0)
    """Hole diameter minus peg diameter (m)."""
    hole_depth: float = ranged(0.03, gt=0)
    """Depth (m) of the hole."""
    hole_low: tuple[float, ...] = ranged((0.45, -0.08), length=2)
    """Lower corner (base frame x, y in m) of the area the hole's axis is placed in at reset."""
    hole_high: tuple[float, ...] = ranged((0.55, 0.08), length=2)
    """Upper corner (x, y in m) of the hole placement area."""
    success_depth: float = ranged(0.02, gt=0)
    """Success: the peg's tip at least this far (m) below the hole's rim, inside the hole."""


@dataclass(frozen=True)
class SafetyConfig:
    """The SafetyFilter's limits and the watchdog's timeouts (per task). The workspace box and orientation cone
    are `EnvConfig.workspace_low/high` and `EnvConfig.orientation_cone`."""

    max_step_pos: float = ranged(0.04, gt=0)
    """Largest change (m) of the commanded TCP position between two control steps (above a full diagonal action,
    0.02 x sqrt(3) = 0.035 m, so it catches faults, not legal actions)."""
    max_step_rot: float = ranged(0.2, gt=0)
    """Largest change (rad) of the commanded TCP orientation between two control steps (above a full diagonal
    rotation action, 0.1 x sqrt(3) = 0.17 rad)."""
    gripper_min_interval_s: float = ranged(0.5, ge=0)
    """Shortest time (s) between two gripper toggles (open <-> close); faster requests are held."""
    force_limit: float = ranged(30.0, gt=0)
    """Measured TCP force (N) above which the command backs off along the force direction."""
    force_backoff: float = ranged(0.005, ge=0)
    """How far (m) per control step the command moves along the measured force while it exceeds force_limit."""
    watchdog_s: float = ranged(0.5, gt=0)
    """No valid command for this long (s) -> command "hold the current pose"."""
    state_timeout_s: float = ranged(0.5, gt=0)
    """Robot state older than this (s) -> stop stepping and raise (the state stream is stale)."""


@dataclass(frozen=True)
class BridgeConfig:
    """The ROS 2 bridge between the actor and a Franka (the real arm, or the MuJoCo-backed fake one), used when
    `env.kind` is franka: the backend, the topic names (DESIGN.md "Bridge topics": franka_ros2 v2.x + CRISP's
    cartesian impedance controller; every name below `namespace`), QoS, the reset and the RealSense cameras."""

    backend: Literal["dds", "rclpy"] = "dds"
    """dds: Cyclone DDS speaking the ROS 2 wire protocol without a ROS install (topics only) | rclpy: a ROS 2
    install on the robot PC (also the franka_gripper and error-recovery actions)."""
    namespace: str = ""
    """Prefix of every topic and action name, e.g. /fr3 (empty: none)."""
    domain_id: int = ranged(0, ge=0, le=232)
    """ROS_DOMAIN_ID of the DDS domain (the fake Franka and the bridge must agree)."""
    target_pose_topic: str = "/target_pose"
    """geometry_msgs/PoseStamped the controller tracks (CRISP); the bridge must be its only publisher."""
    current_pose_topic: str = "/current_pose"
    """geometry_msgs/PoseStamped of the TCP (CRISP's pose broadcaster; or
    /franka_robot_state_broadcaster/current_pose)."""
    joint_states_topic: str = "/joint_states"
    """sensor_msgs/JointState of the arm."""
    wrench_topic: str = "/franka_robot_state_broadcaster/external_wrench_in_base_frame"
    """geometry_msgs/WrenchStamped: the external wrench at the TCP in the base frame."""
    gripper_command_topic: str = "/gripper/gripper_position_controller/commands"
    """std_msgs/Float64MultiArray gripper target, normalized 0 (closed) .. 1 (open) (CRISP's topic interface);
    empty: the franka_gripper actions (rclpy backend only; point gripper_state_topic at e.g.
    /franka_gripper/joint_states)."""
    gripper_state_topic: str = "/gripper/joint_states"
    """sensor_msgs/JointState of the gripper's fingers (their positions sum to the opening width)."""
    error_recovery_action: str = "/action_server/error_recovery"
    """franka_msgs/action/ErrorRecovery (rclpy backend only: DDS vendors do not interoperate on actions)."""
    gripper_action_namespace: str = "/franka_gripper"
    """Namespace of the franka_gripper move/grasp/homing actions (rclpy backend; /fr3_gripper or /panda_gripper
    on older franka_ros2)."""
    base_frame: str = "base"
    """frame_id of the commanded pose."""
    state_reliability: Literal["best_effort", "reliable"] = "best_effort"
    """QoS of the state subscriptions: franka_ros2 publishes its state topics best effort, and a reliable reader
    receives nothing from a best-effort writer (the bridge warns when it sees that mismatch)."""
    home_pose: tuple[float, ...] = ranged((0.45, 0.0, 0.35, 0.0, 1.0, 0.0, 0.0), length=7)
    """Where every reset moves the TCP: x, y, z (m, base frame) and the quaternion w, x, y, z (pointing down)."""
    reset_duration_s: float = ranged(1.5, gt=0)
    """The reset's interpolated move to the home pose takes this long (SERL: 1.5 s)."""
    reset_tolerance: float = ranged(0.02, gt=0)
    """After the move the TCP must be within this distance (m) of the home pose, else the reset fails by name (an
    impedance controller without integral action stops a few mm short under gravity and friction)."""
    dry_run: bool = False
    """Publish every target on `dry_run_topic` instead of `target_pose_topic`, to watch it (RViz) before arming."""
    dry_run_topic: str = "/target_pose_dry_run"
    """Where targets go in a dry run."""
    camera_serials: dict[str, Any] = field(default_factory=dict)
    """RealSense cameras: image name (obs["images"][name]) -> serial number; empty: no cameras."""
    camera_width: int = ranged(640, ge=1)
    """Width (pixels) each RealSense streams; the centre square is cropped and resized to env.image_size."""
    camera_height: int = ranged(480, ge=1)
    """Height (pixels) each RealSense streams."""
    camera_fps: int = ranged(15, ge=1)
    """Frame rate each RealSense streams (SERL: 15)."""
    camera_timeout_s: float = ranged(0.5, gt=0)
    """A camera whose newest frame is older than this is frozen: stepping stops with an error naming it."""
    teach_file: str = ""
    """YAML written by `serl teach` (workspace corners, home pose, reach goal); empty: the config's own."""
    realtime_priority: int = ranged(0, ge=0, le=99)
    """SCHED_FIFO priority of the robot-side process (the actor stepping the arm, the fake Franka), so a learner on
    the same machine cannot delay a control period; 0 = normal scheduling (needs root or CAP_SYS_NICE)."""


@dataclass(frozen=True)
class MixingConfig:
    """Conservative baseline mixing (StepMix / EpsMix): keep each episode's value near a trusted baseline's."""

    mode: Literal["off", "epsmix", "stepmix"] = "off"
    """off | epsmix (learned policy for a whole episode with probability eps_k, else the baseline) | stepmix (the
    baseline for the first tau steps, then the learned policy, tau drawn before s1 from a two-member mixture that
    meets the constraint exactly; docs/safety.md). Both decide before the episode's first observation."""
    alpha: float = ranged(0.2, gt=0, lt=1)
    """Allowed fraction of the baseline's value to lose: V^{pi_k}(s1) >= (1 - alpha) V^b(s1)."""
    kappa: float = ranged(math.inf, ge=0, finite=False, note="(inf: no trust until calibrated)")
    """StepMix only: the learned tail's bound from the critic ensemble, mean - kappa * std, at each switch step
    until that step's kappa is calibrated online against the realized returns of the tails StepMix ran from it
    (after `calibration_runs` of them). inf (the default): no trust in an uncalibrated critic, so a step's tail
    bound is 0 until then; set a finite value only for a critic you have checked. EpsMix does not use the critic."""
    calibration_runs: int = ranged(10, ge=2, note="(a spread is needed)")
    """Whole learned episodes before L (the learned policy's value bound) is above 0, for both mixers; and, for
    StepMix, learned tails from a switch step before that step's kappa is calibrated against their returns."""
    cap_runs: int = ranged(20, ge=2)
    """L is the one-sided `confidence` lower bound of the discounted returns of this many most recent whole
    learned episodes (a window: the learned policy changes as it trains)."""
    value_samples: int = ranged(10, ge=1)
    """Actions sampled from the learned policy at a state to estimate its value from the critic ensemble."""
    baseline_episodes: int = ranged(100, ge=2, note="(U needs a spread)")
    """Baseline rollouts whose Monte-Carlo returns give the baseline's value estimate U."""
    confidence: float = ranged(0.95, gt=0, lt=1)
    """One-sided confidence of the upper estimate U of the baseline's value."""
    baseline_run: str = ""
    """The baseline policy: empty = the task's scripted controller; or a run folder (`serl train` output, e.g. a
    behaviour-cloned or earlier RL policy on the same task) whose latest checkpoint acts deterministically."""
    snapshot_every: int = ranged(0, ge=0, note="(0 = never)")
    """Every this many training episodes the actor saves the policy that episode runs (frozen parameters and
    the mixer as it stood at the episode's start) to `<run>/mixing-snapshots/`, so its value can be measured
    offline (benchmarks/conservative.py); 0 = never."""


@dataclass(frozen=True)
class SteeringConfig:
    """Value-guided steering (V-GPS, docs/steering.md): each step the actor draws `k` actions from a base policy and
    a critic picks one. Off by default."""

    enabled: bool = False
    """Rerank the acting policy's proposals with the critic of `critic_run` (training episodes; evaluations too)."""
    k: int = ranged(32, ge=1)
    """Proposals per decision (V-GPS: 10-50)."""
    temperature: float = ranged(0.0, ge=0, note="(0 = argmax)")
    """0: the critic's argmax; > 0: sample softmax(Q / temperature) (training episodes; evaluations take the argmax)."""
    critic_run: str = ""
    """A run folder whose latest checkpoint's critic scores the proposals (same env and observation keys): a `serl
    train` run or a `serl train-critic --out` folder (with `online`: the latter only)."""
    base: Literal["policy", "bc", "generalist", "remote"] = "policy"
    """policy: the learner's SAC policy (its samples) | bc: the `serl train-bc` policy in `base_dir` | generalist: the
    `serl train-generalist` stand-in in `base_dir`, acting on this env's task | remote: the policy a `serl
    serve-policy` hosts at `remote_endpoint`."""
    base_dir: str = ""
    """base: bc / generalist — the `serl train-bc --out` / `serl train-generalist --out` folder."""
    remote_endpoint: str = ""
    """base: remote — e.g. tcp://gpu-box:5600."""
    remote_timeout_s: float = ranged(0.08, gt=0)
    """base: remote — the longest a proposal request may take; must fit in one control period (1 / env.control_hz).
    A slower answer stops the actor with a message naming the endpoint (the spool keeps every transition)."""
    online: bool = False
    """Fine-tune the critic online (`serl train`; V-GPS's online phase, Cal-QL's fine-tuning): the learner starts from
    the Cal-QL state of `critic_run` (a `serl train-critic` folder), updates it once per env step on minibatches
    half from this run's transitions (V-GPS labels, given when each episode ends) and half from `replay.demo_dir`
    (the share is `replay.demo_fraction`), with the steered policy in the TD target (the best of `k` base samples at
    s'), and broadcasts it every `transport.params_every` updates; the actors rerank with the newest (ours: the
    issue 19 design; docs/steering.md). Needs a base the learner can sample itself (`base: bc` or `generalist`) and
    `mixing.mode: off`; the agent.* settings are not used (the critic's own are `critic_run`'s)."""
    target_k: int = ranged(0, ge=0, note="(0 = k)")
    """With `online`: base samples at s' in the critic's TD target (the best of them by the target critics); 0: `k`,
    as many as the actor draws. Each update values all of them, so its cost grows with this (docs/steering.md has
    the measured rates); fewer samples make the target the value of a slightly weaker steered policy."""


@dataclass(frozen=True)
class EnvConfig:
    """The env: a MuJoCo Franka task on the DESIGN.md observation/action contract, or any Gymnasium env. The
    fields id, kwargs, success_key and max_episode_steps apply to every env; the others configure the serl_stack
    tasks only, and a foreign env refuses a non-default value of them (docs/envs.md)."""

    id: str = "FrankaReach-v0"
    """Gymnasium id of the task: a serl_stack task, any registered id, or `module:EnvId` (Gymnasium imports
    `module` first, which registers the env)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments passed to `gymnasium.make` for an env that is not a serl_stack task (those take this
    config instead)."""
    success_key: str = "success"
    """The `info` key the env reports success under; the adapter reports it as `info["success"]` (bool) at each
    step that has it. An env that never reports it has no success rate (not 0). Must be "success" for the
    serl_stack tasks."""
    kind: Literal["sim", "franka"] = "sim"
    """sim: the MuJoCo task | franka: the same task on a Franka through the ROS 2 bridge (`bridge.*`; the real arm,
    or the fake one `serl fake-franka` runs), paced by the wall clock at env.control_hz."""
    max_episode_steps: int = ranged(100, ge=1)
    """Episode length before truncation. The serl_stack tasks truncate themselves; any other env gets a TimeLimit
    of this many steps, replacing its registered limit (the default 100 shortens e.g. HalfCheetah-v5's 1000: set
    it)."""
    control_hz: float = ranged(10.0, gt=0, le=PHYSICS_HZ, note="Hz (the physics rate)")
    """Policy rate; the controller runs at the physics rate below it."""
    dense_reward: bool = True
    """Add a dense distance-shaping term to the sparse success reward."""
    action_scale_pos: float = ranged(0.02, gt=0)
    """Metres per step for a unit translation action."""
    action_scale_rot: float = ranged(0.1, gt=0)
    """Radians per step for a unit rotation action."""
    reset_joint_noise: float = ranged(0.05, ge=0)
    """Uniform joint perturbation (radians) around the ready pose at reset."""
    workspace_low: tuple[float, ...] = ranged((0.25, -0.25, 0.005), length=3)
    """Lower corner (base frame, m) of the box the commanded TCP position is clipped to (stand-in for safety)."""
    workspace_high: tuple[float, ...] = ranged((0.65, 0.25, 0.55), length=3)
    """Upper corner (base frame, m) of the box the commanded TCP position is clipped to."""
    orientation_cone: float = ranged(0.35, gt=0, le=math.pi / 2, note="rad (the safety filter's limit)")
    """Largest rotation (rad, about any axis) of the commanded TCP frame away from the nominal downward one."""
    reach_min: float = ranged(0.35, ge=0)
    """Commanded flange position at least this far (m) from the shoulder (elbow not folded into its limit)."""
    reach_max: float = ranged(0.7, gt=0)
    """Commanded flange position at most this far (m) from the shoulder (arm not stretched to a singularity)."""
    goal_low: tuple[float, ...] = ranged((0.35, -0.15, 0.15), length=3)
    """Reach task: lower corner (base frame, m) of the box goals are sampled from uniformly."""
    goal_high: tuple[float, ...] = ranged((0.65, 0.15, 0.35), length=3)
    """Reach task: upper corner (base frame, m) of the goal box."""
    success_radius: float = ranged(0.02, gt=0)
    """Reach task: the TCP within this distance (m) of the goal is a success."""
    cameras: tuple[str, ...] = ()
    """Cameras rendered into obs["images"] (sim: wrist, front); empty = no images."""
    image_size: int = ranged(128, ge=1, note="(pixels)")
    """Side (pixels) of the square RGB images the cameras render."""
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    """Sim controller gains."""
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    """SafetyFilter limits and watchdog timeouts."""
    randomization: RandomizationConfig = field(default_factory=RandomizationConfig)
    """Domain randomization (all off by default)."""
    pick_cube: PickCubeConfig = field(default_factory=PickCubeConfig)
    """FrankaPickCube-v0 task settings."""
    peg_insert: PegInsertConfig = field(default_factory=PegInsertConfig)
    """FrankaPegInsert-v0 task settings."""


@dataclass(frozen=True)
class BCConfig:
    """Demonstration-regularized actor updates (docs/learner.md): the SAC actor loss gains
    `lambda * q_scale * (log pi(a|s) - log pi_BC(a|s))` on its own samples, a Monte-Carlo KL(pi || pi_BC) to a
    behaviour-cloned prior trained by `serl train-bc`. Off by default; with lambda = 0 it is plain SAC."""

    enabled: bool = False
    """Regularize the actor toward the prior in `prior_run` (state-only agents)."""
    prior_run: str = ""
    """The prior: a `serl train-bc --out` folder (its observation keys and action size must be this agent's)."""
    lambda_mode: Literal["dual", "schedule"] = "dual"
    """dual: lambda follows dual descent toward `kl_target` | schedule: lambda decays linearly from `lambda_init`
    to 0 over `schedule_updates` updates."""
    kl_target: float = ranged(10.0, gt=0, note="(nats per action dimension)")
    """dual: the KL(pi || pi_BC) lambda steers toward, in nats per action dimension (the target is
    kl_target * |A|, as SAC's target entropy scales with |A|); measured over whole minibatches, online rows too
    (docs/learner.md: why 10)."""
    lambda_init: float = ranged(1.0, ge=0)
    """lambda at the first update (dual: the multiplier's starting value, > 0; schedule: where the decay starts)."""
    lambda_lr: float = ranged(1e-3, gt=0)
    """dual: Adam learning rate of log lambda."""
    schedule_updates: int = ranged(10_000, ge=1)
    """schedule: learner updates over which lambda falls linearly from `lambda_init` to 0."""
    init_actor_from_bc: bool = False
    """Start the actor from the prior's weights (needs the prior's hidden dims to equal `agent.hidden_dims`)."""
    target_entropy: Literal["agent", "prior"] = "agent"
    """SAC's target entropy. agent: -agent.target_entropy_scale * |A|. prior: the prior's own mean entropy at the
    demonstrations' states (measured when the learner starts; needs replay.demo_dir), so the temperature does not
    widen an actor started from the prior past it (docs/learner.md: the late collapse it prevents)."""
    critic_penalty: bool = False
    """Also subtract lambda * scale * KL at s' from the TD target's next-state value (BRAC's value penalty)."""
    q_normalize: bool = True
    """Scale the KL term by the batch's mean |Q| (stop-gradient), TD3+BC's normalization, so lambda weighs the KL
    against Q / mean|Q| the same way on every task."""


@dataclass(frozen=True)
class AgentConfig:
    """Soft actor-critic hyperparameters (defaults sized for a CPU learner)."""

    hidden_dims: tuple[int, ...] = ranged((256, 256), ge=1, min_len=1)
    """Hidden layer widths of actor and critic MLPs."""
    num_critics: int = ranged(2, ge=1)
    """Critic ensemble size (RLPD: 10)."""
    critic_subset: int = ranged(0, ge=0, note="(0 = all critics)")
    """Critics in the random subset whose min forms the TD target (RLPD: 2); 0 = all (clipped double-Q)."""
    actor_lr: float = ranged(3e-4, gt=0)
    """Actor Adam learning rate."""
    critic_lr: float = ranged(3e-4, gt=0)
    """Critic Adam learning rate."""
    temp_lr: float = ranged(3e-4, gt=0)
    """Temperature Adam learning rate."""
    discount: float = ranged(0.9, ge=0, le=1)
    """Discount factor gamma (0.9 suits the 10 Hz reach task's ~15-step horizon; use 0.99 for long tasks)."""
    tau: float = ranged(0.005, gt=0, le=1)
    """Polyak averaging rate of the target critics."""
    init_temperature: float = ranged(0.01, gt=0)
    """Initial entropy temperature (SERL: 1e-2; a large one drowns small per-step rewards in entropy bonus)."""
    target_entropy_scale: float = ranged(1.0)
    """Target entropy = -scale * |A| (SAC: 1.0; RLPD: 0.5)."""
    batch_size: int = ranged(256, ge=1)
    """Minibatch size of one update."""
    utd: int = ranged(1, ge=1)
    """Critic updates per env step (update-to-data ratio); scanned inside one jitted step."""
    obs_keys: tuple[str, ...] = ()
    """Observation key paths the agent sees, e.g. [state/tcp_pose, task/goal_pos] (empty: all state and task)."""
    normalize_observations: bool = True
    """Standardize observations with the mean/std of the warm-up data and demos (shipped with the policy)."""
    obs_norm_refresh: int = ranged(1000, ge=0, note="(0 = frozen after the warm-up)")
    """Recompute the standardization from all data every this many updates (a feature the warm-up never moved
    would otherwise saturate at the clip); 0 = frozen after the warm-up, the behaviour of the sim_*.yaml figures."""
    critic_layer_norm: bool = False
    """LayerNorm in the critic MLPs (RLPD: true; keeps Q values bounded at high UTD)."""
    image_keys: tuple[str, ...] = ()
    """Image key paths the agent sees through its conv encoder, e.g. [images/front] (empty: state only)."""
    encoder_channels: tuple[int, ...] = ranged((32, 64), ge=1, min_len=1)
    """Conv encoder: output channels of each conv layer."""
    encoder_kernels: tuple[int, ...] = ranged((4, 2), ge=1, min_len=1)
    """Conv encoder: kernel size of each layer (kernel = stride tiles the image; XLA's CPU convs run ~10x slower
    with overlapping 3x3 kernels)."""
    encoder_strides: tuple[int, ...] = ranged((4, 2), ge=1, min_len=1)
    """Conv encoder: stride of each layer."""
    encoder_features: int = ranged(50, ge=1)
    """Conv encoder: size of each camera's feature vector (DrQ: 50)."""
    drq_pad: int = ranged(4, ge=0, note="(0 = off)")
    """DrQ random-shift augmentation: pad by this many pixels and crop back at a random offset (SERL: 4; 0 = off)."""
    bc: BCConfig = field(default_factory=BCConfig)
    """Demonstration-regularized actor updates toward a behaviour-cloned prior (off by default)."""


@dataclass(frozen=True)
class ReplayConfig:
    """Replay buffer."""

    capacity: int = ranged(200_000, ge=1)
    """Transitions kept in the ring buffer."""
    on_device: bool = True
    """Mirror the buffer's agent vectors into device memory and sample inside the jitted update (no host round
    trip per update); false samples on the host and copies each batch to the device."""
    demo_dir: str = ""
    """Folder of demonstrations (docs/demos.md) mixed into every batch; empty = no demonstrations."""
    demo_fraction: float = ranged(0.5, ge=0, le=1)
    """Share of every minibatch drawn from the demonstrations when `demo_dir` is set (RLPD/SERL: 0.5)."""
    action_source: Literal["executed", "policy"] = "policy"
    """Which action the replay buffer learns from: `policy` (the command that entered the safety filter: the
    learned policy's, the mixing baseline's, later a human operator's; as SERL and HIL-SERL store it) or
    `executed` (what the filter let through, in action units). The transition log keeps both. Why `policy` is
    the default: the filter is part of the environment, and labels that the filter projected hide from the critic
    the commands the actor keeps proposing (reach: 95 % vs 5 % success at 10k env steps; docs/learner.md)."""


@dataclass(frozen=True)
class TransportConfig:
    """ZeroMQ link between actor and learner."""

    host: str = "127.0.0.1"
    """Interface the learner binds and the actor connects to (loopback unless set)."""
    transitions_port: int = ranged(0, ge=0, le=65535, note="(0: `serl train` picks a free one)")
    """Port for actor -> learner transitions (0: `serl train` picks a free one; set it for separate machines)."""
    params_port: int = ranged(0, ge=0, le=65535, note="(0: `serl train` picks a free one)")
    """Port for learner -> actor parameters and status (0: `serl train` picks a free one)."""
    params_every: int = ranged(50, ge=1)
    """Broadcast policy parameters every this many learner updates."""
    max_message_bytes: int = ranged(64 << 20, ge=1 << 20, note="(1 MiB: a policy's parameters must fit)")
    """Largest message accepted from a peer."""
    curve: bool = False
    """Encrypt and authenticate the link with CurveZMQ (docs/security.md); needs the key paths below."""
    learner_secret_key: str = ""
    """Learner, with curve: path of its secret certificate (the `.key_secret` file from `serl keys`)."""
    allowed_actors_dir: str = ""
    """Learner, with curve: folder of authorized actors' public `.key` files (each binds one actor id to one key)."""
    actor_secret_key: str = ""
    """Actor, with curve: path of its own secret certificate (`serl keys --actor-id ...`, the `.key_secret` file)."""
    learner_public_key: str = ""
    """Actor, with curve: path of the learner's public certificate (the learner's `.key` file)."""
    actor_id: str = "actor-0"
    """This actor's id (with curve it must equal the actor_id bound to its key); the learner keys logs by it."""
    heartbeat_s: float = ranged(1.0, gt=0)
    """An idle actor pings the learner this often; the learner's status broadcast is its heartbeat back."""
    learner_silent_warn_s: float = ranged(10.0, gt=0)
    """The actor warns (and keeps acting on its last parameters) when the learner is silent this long."""
    ledger: bool = False
    """Actor keeps `<run>/ledger-<actor id>.txt`: seq and SHA-256 of every transition it spools (audit trail)."""
    spool_max_bytes: int = ranged(4 << 30, ge=1 << 20, note="(1 MiB)")
    """Largest size (bytes) of an actor's spool of unacknowledged transitions; at the cap the actor stops stepping
    with an error instead of filling the robot PC's disk while the learner is away (4 GiB: about 20 minutes of
    two-camera data at 10 Hz, weeks of state-only data)."""


@dataclass(frozen=True)
class TrainConfig:
    """The training run: both processes' loop settings."""

    seed: int = ranged(0, ge=0, lt=1 << 32, note="(a 32-bit seed)")
    """Seed for the agent, the env and the sampling."""
    num_actors: int = ranged(1, ge=1)
    """Actor processes feeding the learner (ids `actor-0` .. `actor-<n-1>`, each with its own env seed, spool and
    mixer); `serl train` starts them all, on two machines start each with `serl actor --actor-id actor-<i>`."""
    total_env_steps: int = ranged(20_000, ge=1)
    """Env steps the actors collect before the run stops, all actors together (actor i collects its share)."""
    max_episodes: int = ranged(0, ge=0, note="(0 = no limit)")
    """Training episodes after which the run stops, if it has not stopped at `total_env_steps`, all actors
    together (0 = no limit)."""
    start_steps: int = ranged(1_000, ge=0)
    """Uniform random actions before the policy is used; learning starts after this many transitions."""
    throttle_slack: int = ranged(200, ge=0)
    """The actor may run ahead of the learner by this many updates (env steps * utd <= updates + slack)."""
    log_every: int = ranged(500, ge=1)
    """Learner updates between TensorBoard scalar writes."""
    checkpoint_every: int = ranged(5_000, ge=1)
    """Learner updates between checkpoints (one is also written on Ctrl-C and at the end of the run)."""
    keep_checkpoints: int = ranged(3, ge=1)
    """Checkpoints kept on disk; older ones are deleted (the transition log is kept whole)."""
    eval_episodes: int = ranged(50, ge=1)
    """Deterministic episodes in the final evaluation."""
    eval_every: int = ranged(0, ge=0, note="env steps (0 = only the final evaluation)")
    """Env steps between evaluations during training (0 = only the final one); logged as `eval/*` over env steps."""
    eval_every_episodes: int = ranged(20, ge=1)
    """Deterministic episodes in each evaluation during training (same held-out seeds each time)."""
    stop_at_success: float = ranged(0.0, ge=0, le=1, note="(a success rate; 0 = never)")
    """End the run early (final evaluation included) once an evaluation during training reaches this success
    rate (0 = never; needs `eval_every`)."""
    stop_after_evals: int = ranged(1, ge=1)
    """How many consecutive evaluations during training must reach `stop_at_success` before the run ends (2: one
    lucky evaluation of 20 episodes does not end it). Counted from the run's start or its last resume."""
    eval_seed: int = ranged(1_000_000, ge=0, lt=1 << 32, note="(a 32-bit seed)")
    """First seed of the held-out evaluation episodes (training never uses seeds this high)."""
    run_dir: str = "runs"
    """Parent folder of each run's logs and checkpoints."""
    learner_threads: int = ranged(0, ge=0, note="(0 = all cores)")
    """CPU threads for the learner's XLA backend and BLAS (0 = all cores)."""
    actor_threads: int = ranged(1, ge=0, note="(0 = all cores)")
    """CPU threads for the actor's XLA backend and BLAS (0 = all cores)."""


@dataclass(frozen=True)
class Config:
    """Everything a `serl train` run needs."""

    env: EnvConfig = field(default_factory=EnvConfig)
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mixing: MixingConfig = field(default_factory=MixingConfig)
    steering: SteeringConfig = field(default_factory=SteeringConfig)


# --------------------------------------------------------------------------------------------------- validation


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _section_paths(cls: type, prefix: str = "") -> dict[type, str]:
    """Each section class below `cls` -> its dotted path (each class appears once in the tree)."""
    paths = {cls: prefix}
    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            sub = _section_paths(tp, _join(prefix, name))
            assert not paths.keys() & sub.keys(), f"{tp.__name__} appears twice in {cls.__name__}"
            paths.update(sub)
    return paths


SECTION_PATHS: dict[type, str] = _section_paths(Config)
"""Section class -> its dotted path in `Config` (`ControllerConfig` -> "env.controller"); errors name fields by it."""


@functools.cache
def _leaf_fields(cls: type, prefix: str) -> tuple[tuple[str, Any, dataclasses.Field[Any]], ...]:
    """(dotted path, type annotation, field) of every field below section class `cls` that is not itself a
    section, depth first in declaration order (cached: components check their section at every construction)."""
    hints = typing.get_type_hints(cls)
    leaves: list[tuple[str, Any, dataclasses.Field[Any]]] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            leaves += _leaf_fields(tp, _join(prefix, f.name))
        else:
            leaves.append((_join(prefix, f.name), tp, f))
    return tuple(leaves)


def ranged_fields(cls: type = Config, prefix: str | None = None) -> Iterator[tuple[str, Any, Range]]:
    """(dotted path, type annotation, Range) of every field below section class `cls` (whose path is `prefix`, by
    default its path in `Config`) that declares a range, depth first in declaration order."""
    prefix = SECTION_PATHS[cls] if prefix is None else prefix
    for path, tp, f in _leaf_fields(cls, prefix):
        if RANGE in f.metadata:
            yield path, tp, f.metadata[RANGE]


def _range_error(path: str, tp: Any, spec: Range, value: Any) -> str | None:
    """The one-line error for `value` of the field at `path`, or None when it is in range."""
    if typing.get_origin(tp) is tuple:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
            return f"{path}: got {value!r}, expected a list"
        if not spec.length_ok(len(value)):
            return f"{path}: got {tuple(value)!r}, expected {spec.expected_length()}"
        floating = typing.get_args(tp)[0] is float
        for i, item in enumerate(value):
            if not spec.accepts(item):
                return f"{path}[{i}]: got {item!r}, expected {spec.expected(floating)}"
        return None
    return None if spec.accepts(value) else f"{path}: got {value!r}, expected {spec.expected(tp is float)}"


@dataclass(frozen=True)
class Rule:
    """A constraint between fields, checked once every field is inside its own declared range."""

    name: str
    """What must hold, in the fields' dotted names."""
    scope: str
    """The section the rule reads (its fields and those of the sections below it); "" = several sections."""
    check: Callable[[Any, str], str | None]
    """(the section at `scope`, `scope`) -> the one-line error naming the field, or None."""


def _below(low: str, high: str, strict: bool, why: str = "") -> Callable[[Any, str], str | None]:
    """Rule check: the tuple field `low` is below (`strict`) or at most `high`, item by item."""

    def check(s: Any, p: str) -> str | None:
        lo, hi = getattr(s, low), getattr(s, high)
        if len(lo) == len(hi) and all((a < b) if strict else (a <= b) for a, b in zip(lo, hi, strict=True)):
            return None
        return (f"{_join(p, low)}: got {tuple(lo)!r}, expected {'<' if strict else '<='} {_join(p, high)} "
                f"{tuple(hi)!r} on every axis{why}")

    return check


def _critic_subset(s: AgentConfig, p: str) -> str | None:
    if s.critic_subset <= s.num_critics:
        return None
    return (f"{_join(p, 'critic_subset')}: got {s.critic_subset}, expected <= {_join(p, 'num_critics')} "
            f"({s.num_critics}) (0 = all critics)")


def _encoder_lengths(s: AgentConfig, p: str) -> str | None:
    n = len(s.encoder_channels)
    for name in ("encoder_kernels", "encoder_strides"):
        if len(getattr(s, name)) != n:
            return (f"{_join(p, name)}: got {tuple(getattr(s, name))!r}, expected one item per layer of "
                    f"{_join(p, 'encoder_channels')} {tuple(s.encoder_channels)!r}")
    return None


def _bc_prior(s: BCConfig, p: str) -> str | None:
    if s.prior_run or not s.enabled:
        return None
    return (f"{_join(p, 'prior_run')}: got '', expected a `serl train-bc --out` folder while "
            f"{_join(p, 'enabled')} is true")


def _bc_init(s: BCConfig, p: str) -> str | None:
    if s.enabled or not s.init_actor_from_bc:
        return None
    return (f"{_join(p, 'init_actor_from_bc')}: got true, expected false while {_join(p, 'enabled')} is false "
            "(the prior is loaded only when enabled; for BC initialization alone use lambda_mode: schedule with "
            "lambda_init: 0)")


def _bc_entropy_data(c: Config, p: str) -> str | None:
    bc = c.agent.bc
    if bc.target_entropy != "prior":
        return None
    if not bc.enabled:
        return ("agent.bc.target_entropy: got 'prior', expected 'agent' while agent.bc.enabled is false (the prior is "
                "loaded only when enabled)")
    if not c.replay.demo_dir:
        return ("replay.demo_dir: got '', expected a folder of demonstrations while agent.bc.target_entropy is "
                "'prior' (the prior's entropy is measured at the demonstrations' states)")
    return None


def _bc_dual_lambda(s: BCConfig, p: str) -> str | None:
    if s.lambda_mode != "dual" or s.lambda_init > 0:
        return None
    return (f"{_join(p, 'lambda_init')}: got {s.lambda_init!r}, expected > 0 while {_join(p, 'lambda_mode')} is "
            "dual (dual descent scales lambda multiplicatively: from 0 it never moves)")


def _bc_state_only(s: AgentConfig, p: str) -> str | None:
    if not s.bc.enabled or not s.image_keys:
        return None
    return (f"{_join(p, 'bc.enabled')}: got true, expected false while {_join(p, 'image_keys')} is "
            f"{tuple(s.image_keys)!r} (the behaviour-cloned prior sees state vectors only)")


def _reach(s: EnvConfig, p: str) -> str | None:
    if s.reach_min < s.reach_max:
        return None
    return f"{_join(p, 'reach_min')}: got {s.reach_min!r}, expected < {_join(p, 'reach_max')} ({s.reach_max!r})"


def _cameras(s: EnvConfig, p: str) -> str | None:
    if len(set(s.cameras)) == len(s.cameras):
        return None
    return f"{_join(p, 'cameras')}: got {tuple(s.cameras)!r}, expected each camera at most once"


def _success_depth(s: PegInsertConfig, p: str) -> str | None:
    if s.success_depth < s.hole_depth:
        return None
    return (f"{_join(p, 'success_depth')}: got {s.success_depth!r}, expected < {_join(p, 'hole_depth')} "
            f"({s.hole_depth!r}): the hole ends at the table")


def _stop_needs_eval(s: TrainConfig, p: str) -> str | None:
    if s.stop_at_success == 0 or s.eval_every > 0:
        return None
    return (f"{_join(p, 'stop_at_success')}: got {s.stop_at_success!r}, expected 0 while {_join(p, 'eval_every')} "
            "is 0 (a run stops early only at an evaluation during training: set train.eval_every > 0)")


def _actors_share(s: TrainConfig, p: str) -> str | None:
    if s.total_env_steps >= s.num_actors:
        return None
    return (f"{_join(p, 'total_env_steps')}: got {s.total_env_steps}, expected >= {_join(p, 'num_actors')} "
            f"({s.num_actors}): each actor collects a share")


def _held_out_seeds(s: TrainConfig, p: str) -> str | None:
    if s.seed < s.eval_seed:
        return None
    return (f"{_join(p, 'seed')}: got {s.seed}, expected < {_join(p, 'eval_seed')} ({s.eval_seed}): evaluation "
            "seeds are held out from training")


def _cap_runs(s: MixingConfig, p: str) -> str | None:
    if s.cap_runs >= s.calibration_runs:
        return None
    return (f"{_join(p, 'cap_runs')}: got {s.cap_runs}, expected >= {_join(p, 'calibration_runs')} "
            f"({s.calibration_runs})")


def _steering_critic(s: SteeringConfig, p: str) -> str | None:
    if not s.enabled or s.critic_run:
        return None
    return (f"{_join(p, 'critic_run')}: got '', expected a `serl train` run folder whose critic scores the proposals "
            f"while {_join(p, 'enabled')} is true")


def _steering_base(s: SteeringConfig, p: str) -> str | None:
    need = {"bc": ("base_dir", "a `serl train-bc --out` folder"),
            "generalist": ("base_dir", "a `serl train-generalist --out` folder"),
            "remote": ("remote_endpoint", "e.g. tcp://host:5600")}
    if not s.enabled or s.base not in need or getattr(s, need[s.base][0]):
        return None
    name, what = need[s.base]
    return f"{_join(p, name)}: got '', expected {what} while {_join(p, 'base')} is {s.base}"


ONLINE_BASES = ("bc", "generalist")
"""`steering.base` values the learner can sample itself (in JAX, inside its update) for the online TD target: a
base with `vector_sampler()` and `obs_keys` (`inference.BCPolicy`, `steering.generalist.GeneralistPolicy`)."""


def _steering_online(s: SteeringConfig, p: str) -> str | None:
    if not s.online:
        return None
    if not s.enabled:
        return (f"{_join(p, 'enabled')}: got false, expected true while {_join(p, 'online')} is true (online "
                "fine-tuning trains the critic that steers the actors)")
    if s.base not in ONLINE_BASES:
        why = {"remote": "a remote policy runs in another process, and the learner must sample it inside its update",
               "policy": "the learner trains the critic, not a SAC policy, under online steering"}.get(s.base, "")
        return (f"{_join(p, 'base')}: got {s.base!r}, expected one of {', '.join(ONLINE_BASES)} while "
                f"{_join(p, 'online')} is true: the learner draws the base policy's proposals at s' for its TD target "
                f"itself ({why})")
    return None


def _steering_target_k(s: SteeringConfig, p: str) -> str | None:
    if s.target_k == 0 or s.online:
        return None
    return (f"{_join(p, 'target_k')}: got {s.target_k}, expected 0 while {_join(p, 'online')} is false (it sizes the "
            "online critic's TD target; without online fine-tuning nothing uses it)")


def _steering_online_data(c: Config, p: str) -> str | None:
    if not (c.steering.enabled and c.steering.online):
        return None
    if not c.replay.demo_dir:
        return ("replay.demo_dir: got '', expected a folder of demonstrations while steering.online is true (the "
                "offline half of every minibatch of the online critic, labelled as `serl train-critic` labels them)")
    if c.mixing.mode != "off":
        return (f"mixing.mode: got {c.mixing.mode!r}, expected 'off' while steering.online is true (the mixers bound "
                "the value of a learned SAC policy, which online steering does not train)")
    return None


def _steering_timeout(s: Config, p: str) -> str | None:
    period = 1.0 / s.env.control_hz
    if not s.steering.enabled or s.steering.base != "remote" or s.steering.remote_timeout_s <= period:
        return None
    return (f"steering.remote_timeout_s: got {s.steering.remote_timeout_s:g}, expected <= {period:g} (one control "
            f"period at env.control_hz={s.env.control_hz:g}): a slower answer would miss the step")


def _ports(s: TransportConfig, p: str) -> str | None:
    if s.params_port == 0 or s.params_port != s.transitions_port:
        return None
    return (f"{_join(p, 'params_port')}: got {s.params_port}, expected a port other than "
            f"{_join(p, 'transitions_port')} ({s.transitions_port}) (or 0: `serl train` picks one)")


def _mixing_rewards(c: Config, p: str) -> str | None:
    # Only the serl_stack tasks have dense shaping to turn off; a foreign env's rewards are checked as they come.
    if c.mixing.mode == "off" or not c.env.dense_reward or c.env.id not in SERL_TASK_IDS:
        return None
    return (f"mixing.mode: got {c.mixing.mode!r}, expected 'off' while env.dense_reward is true (mixing needs "
            "rewards >= 0 and dense shaping can be negative: set env.dense_reward: false)")


RULES: tuple[Rule, ...] = (
    Rule("env.workspace_low < env.workspace_high", "env", _below("workspace_low", "workspace_high", strict=True)),
    Rule("env.reach_min < env.reach_max", "env", _reach),
    Rule("env.goal_low <= env.goal_high", "env", _below("goal_low", "goal_high", strict=False)),
    Rule("env.cameras without repeats", "env", _cameras),
    Rule("env.pick_cube.cube_low <= env.pick_cube.cube_high", "env.pick_cube",
         _below("cube_low", "cube_high", strict=False)),
    Rule("env.peg_insert.hole_low <= env.peg_insert.hole_high", "env.peg_insert",
         _below("hole_low", "hole_high", strict=False)),
    Rule("env.peg_insert.success_depth < env.peg_insert.hole_depth", "env.peg_insert", _success_depth),
    Rule("agent.critic_subset <= agent.num_critics", "agent", _critic_subset),
    Rule("agent.encoder_* of equal length", "agent", _encoder_lengths),
    Rule("agent.bc.enabled needs agent.bc.prior_run", "agent.bc", _bc_prior),
    Rule("agent.bc.init_actor_from_bc needs agent.bc.enabled", "agent.bc", _bc_init),
    Rule("agent.bc.lambda_mode: dual needs agent.bc.lambda_init > 0", "agent.bc", _bc_dual_lambda),
    Rule("agent.bc.target_entropy: prior needs agent.bc.enabled and replay.demo_dir", "", _bc_entropy_data),
    Rule("agent.bc.enabled needs a state-only agent (no agent.image_keys)", "agent", _bc_state_only),
    Rule("transport.params_port != transport.transitions_port", "transport", _ports),
    Rule("train.stop_at_success > 0 needs train.eval_every > 0", "train", _stop_needs_eval),
    Rule("train.total_env_steps >= train.num_actors", "train", _actors_share),
    Rule("train.seed < train.eval_seed", "train", _held_out_seeds),
    Rule("mixing.cap_runs >= mixing.calibration_runs", "mixing", _cap_runs),
    Rule("mixing.mode != off needs env.dense_reward: false (serl_stack tasks)", "", _mixing_rewards),
    Rule("steering.enabled needs steering.critic_run", "steering", _steering_critic),
    Rule("steering.base: bc / generalist / remote needs steering.base_dir / remote_endpoint", "steering",
         _steering_base),
    Rule("steering.remote_timeout_s <= 1 / env.control_hz", "", _steering_timeout),
    Rule("steering.online needs steering.enabled and a base the learner samples (bc, generalist)", "steering",
         _steering_online),
    Rule("steering.online needs replay.demo_dir and mixing.mode: off", "", _steering_online_data),
    Rule("steering.target_k needs steering.online", "steering", _steering_target_k),
)
"""Every cross-field rule, in the order they are checked (after all the per-field ranges)."""


def check_section(section: Any) -> None:
    """ConfigError (one line: the dotted field, the value seen, what is expected) for the first field of `section`
    or of the sections below it outside its declared range (or its `Literal` choices), then for the first rule of
    `RULES` within it that fails. `section` is any config dataclass; errors name fields by their path in `Config`
    (`env.controller.kp_pos`).

    For a component built straight from its section (an env from an `EnvConfig`, a buffer from a `ReplayConfig`):
    it validates with the same declarations as `load` instead of re-implementing them."""
    cls = type(section)
    if cls not in SECTION_PATHS:
        raise TypeError(f"check_section: got a {cls.__name__}, expected one of the config sections")
    own = SECTION_PATHS[cls]

    def below(path: str) -> Any:  # the object at dotted `path`, which is `own` or below it
        obj = section
        for part in filter(None, path[len(own):].split(".")):
            obj = getattr(obj, part)
        return obj

    for path, tp, f in _leaf_fields(cls, own):
        value = below(path)
        if RANGE in f.metadata:
            error = _range_error(path, tp, f.metadata[RANGE], value)
        elif typing.get_origin(tp) is typing.Literal and (isinstance(value, bool) or value not in typing.get_args(tp)):
            # `load` checks these while parsing; a section built in code (`MixingConfig(mode="eps")`) is checked here
            error = f"{path}: got {value!r}, expected one of {', '.join(map(str, typing.get_args(tp)))}"
        else:
            error = None
        if error:
            raise ConfigError(error)
    for rule in RULES:
        if own and rule.scope != own and not rule.scope.startswith(own + "."):
            continue  # reads fields outside this section
        error = rule.check(below(rule.scope), rule.scope)
        if error:
            raise ConfigError(error)


def validate(cfg: Config) -> Config:
    """`cfg` itself when every field is inside its declared range and every rule of `RULES` holds, else a one-line
    ConfigError naming the first offending field. `load`, `from_dict` and `apply_overrides` call it."""
    check_section(cfg)
    return cfg


# --------------------------------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the annotation `tp`; return it in the field's canonical form."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{path}: expected a mapping with string keys, got {value!r}")
        return dict(value)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list ({_type_name(tp)}), got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted off / on as a bool: give the word back
            value = {False: "off", True: "on"}[value]
        if value not in choices:
            raise ConfigError(f"{path}: expected one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected bool (true/false), got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and value.strip().lower().lstrip("+-.") in ("inf", "infinity"):
            return float(value.strip().replace(".", ""))  # `--set key=inf`; YAML itself spells it .inf
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            return float(value)  # `1e-3`: YAML 1.1 reads a float without a dot in its mantissa as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected float, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected str, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported field type {_type_name(tp)}")


def _build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key '{path}'; {cls.__name__} has: {', '.join(sorted(names))}")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def _unchecked(data: dict[str, Any] | None, cls: type[T]) -> T:
    """`cls` built from a nested mapping, types checked, ranges and rules not (yet)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config root: expected a mapping, got {data!r}")
    return _build(cls, data)


def from_dict(data: dict[str, Any] | None, cls: type[T] = Config) -> T:  # type: ignore[assignment]
    """Build `cls` (a `Config` or one of its sections) from a nested mapping; missing fields keep their defaults.
    The result is validated (`check_section`)."""
    built = _unchecked(data, cls)
    check_section(built)
    return built


def to_dict(cfg: Any) -> dict[str, Any]:
    """The nested plain-dict form of a config (tuples become lists), suitable for YAML."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def parse_override(text: str) -> tuple[str, Any]:
    """Parse `dotted.key=value`; the value is read as YAML (so `1e-3`, `true`, `[256, 256]` work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected the form dotted.key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def _free_mapping(cls: Any, parts: list[str]) -> bool:
    """Whether the dotted path `parts` below dataclass `cls` ends in a free-form mapping field (`env.kwargs`),
    whose keys an override may add."""
    for part in parts:
        if not dataclasses.is_dataclass(cls):
            return False
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return False
        cls = hints[part]
    return typing.get_origin(cls) is dict


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Return `cfg` with each `dotted.key=value` override applied and type-checked, validated as a whole. A key
    below a mapping field (`env.kwargs.render_mode=rgb_array`) adds or replaces that entry."""
    return validate(_overridden(cfg, overrides))


def _overridden(cfg: Config, overrides: list[str]) -> Config:
    data = to_dict(cfg)
    for text in overrides:
        key, value = parse_override(text)
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown config key '{'.'.join(parts[: i + 1])}' in override {text!r}")
            node = node[part]
        if parts[-1] not in node and not _free_mapping(Config, parts[:-1]):
            raise ConfigError(f"unknown config key '{key}' in override {text!r}")
        node[parts[-1]] = value
    return _unchecked(data, Config)


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when `path` is None), apply dotted overrides, and validate the result
    (`validate`): every path from user input to a `Config` checks every declared range and rule, once, at the
    end, so an override may repair a value the file got wrong."""
    if path is None:
        cfg = Config()
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
        try:
            cfg = _unchecked(data, Config)
        except ConfigError as e:
            raise ConfigError(f"{p}: {e}") from e
    return validate(_overridden(cfg, overrides or []))


def dump(cfg: Config) -> str:
    """YAML text of a config, loadable by `load`."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
