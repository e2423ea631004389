"""Typed configuration for every serl_stack component.

Owns: the dataclasses (one per component, every number that matters is a named field with a one-line
docstring), loading them from YAML, and overriding any field by its dotted path from the command line.
Unknown keys and values of the wrong type are errors that name the key, the value seen and the type expected.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or override that does not match the schema."""


# --------------------------------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class ControllerConfig:
    """Cartesian impedance / operational-space controller that tracks a target TCP pose in sim."""

    kp_pos: float = 600.0
    """Translational stiffness (N/m-equivalent, applied through the task-space inertia), per axis."""
    kp_rot: float = 300.0
    """Rotational stiffness per axis."""
    damping_ratio: float = 1.0
    """Damping as a fraction of critical damping (kd = 2 * ratio * sqrt(kp))."""
    kp_null: float = 10.0
    """Null-space stiffness pulling the joints toward the ready posture."""
    max_pos_error: float = 0.1
    """Clip on the translational pose error fed to the controller, metres (the real CRISP controller clips too)."""
    max_rot_error: float = 0.5
    """Clip on the rotational pose error fed to the controller, radians."""
    joint_limit_margin: float = 0.15
    """Width (rad) of the zone before each joint limit where a spring pushes the joint back out."""
    joint_limit_stiffness: float = 400.0
    """Stiffness (N m/rad) of that joint-limit spring (0 disables it); torques are still clipped to limits."""


@dataclass(frozen=True)
class RandomizationConfig:
    """Domain randomization for sim-to-real, drawn at every reset from the env's seeded RNG; 0 turns a term off.

    The task's own object placement (cube pose, hole position) is randomized by the task's config section.
    """

    table_height: float = 0.0
    """Table top (and everything resting on it) shifted by uniform(-x, +x) metres in z."""
    friction: float = 0.0
    """Sliding friction of every contact surface scaled by uniform(1 - x, 1 + x)."""
    controller_gains: float = 0.0
    """Controller stiffnesses (kp_pos, kp_rot) scaled by uniform(1 - x, 1 + x); damping follows the ratio."""
    camera_pos: float = 0.0
    """Each camera's position jittered by uniform(-x, +x) metres per axis."""
    camera_rot: float = 0.0
    """Each camera's orientation jittered by a rotation of up to x radians about a random axis."""
    obs_noise_pos: float = 0.0
    """Std (m) of Gaussian noise on observed positions: tcp_pose xyz and task positions (per step)."""
    obs_noise_vel: float = 0.0
    """Std (m/s, rad/s) of Gaussian noise on the observed tcp_vel (per step)."""
    obs_noise_force: float = 0.0
    """Std (N) of Gaussian noise on the observed tcp_force; tcp_torque gets x/10 N m (per step)."""
    action_latency: int = 0
    """Control steps between the policy's action and its execution (0 or 1): with 1, each step executes the
    previous step's action, as on a real arm whose command arrives one cycle late."""


@dataclass(frozen=True)
class PickCubeConfig:
    """FrankaPickCube-v0: lift a cube lying at a random pose on the table."""

    cube_size: float = 0.04
    """Edge length (m) of the cube."""
    cube_mass: float = 0.05
    """Mass (kg) of the cube."""
    cube_low: tuple[float, ...] = (0.40, -0.10)
    """Lower corner (base frame x, y in m) of the area the cube's centre is placed in at reset."""
    cube_high: tuple[float, ...] = (0.55, 0.10)
    """Upper corner (x, y in m) of the cube placement area."""
    cube_yaw: float = 0.785
    """The cube's yaw at reset is uniform(-x, +x) radians."""
    lift_height: float = 0.05
    """Success: the cube's centre at least this far (m) above its resting height."""


@dataclass(frozen=True)
class PegInsertConfig:
    """FrankaPegInsert-v0: a peg held in the closed gripper goes into a hole in a fixture on the table."""

    peg_radius: float = 0.008
    """Radius (m) of the cylindrical peg."""
    peg_length: float = 0.06
    """Length (m) of the peg."""
    clearance: float = 0.002
    """Hole diameter minus peg diameter (m)."""
    hole_depth: float = 0.03
    """Depth (m) of the hole."""
    hole_low: tuple[float, ...] = (0.45, -0.08)
    """Lower corner (base frame x, y in m) of the area the hole's axis is placed in at reset."""
    hole_high: tuple[float, ...] = (0.55, 0.08)
    """Upper corner (x, y in m) of the hole placement area."""
    success_depth: float = 0.02
    """Success: the peg's tip at least this far (m) below the hole's rim, inside the hole."""


@dataclass(frozen=True)
class SafetyConfig:
    """The SafetyFilter's limits and the watchdog's timeouts (per task). The workspace box and orientation cone
    are `EnvConfig.workspace_low/high` and `EnvConfig.orientation_cone`."""

    max_step_pos: float = 0.04
    """Largest change (m) of the commanded TCP position between two control steps (above a full diagonal action,
    0.02 x sqrt(3) = 0.035 m, so it catches faults, not legal actions)."""
    max_step_rot: float = 0.2
    """Largest change (rad) of the commanded TCP orientation between two control steps (above a full diagonal
    rotation action, 0.1 x sqrt(3) = 0.17 rad)."""
    gripper_min_interval_s: float = 0.5
    """Shortest time (s) between two gripper toggles (open <-> close); faster requests are held."""
    force_limit: float = 30.0
    """Measured TCP force (N) above which the command backs off along the force direction."""
    force_backoff: float = 0.005
    """How far (m) per control step the command moves along the measured force while it exceeds force_limit."""
    watchdog_s: float = 0.5
    """No valid command for this long (s) -> command "hold the current pose"."""
    state_timeout_s: float = 0.5
    """Robot state older than this (s) -> stop stepping and raise (the state stream is stale)."""


@dataclass(frozen=True)
class MixingConfig:
    """Conservative baseline mixing (StepMix / EpsMix): keep each episode's value near a trusted baseline's."""

    mode: Literal["off", "epsmix", "stepmix"] = "off"
    """off | epsmix (learned policy for a whole episode with probability eps_k, else the baseline) | stepmix
    (start with the baseline, switch to the learned policy at the first step where the bound holds)."""
    alpha: float = 0.2
    """Allowed fraction of the baseline's value to lose: V^{pi_k}(s1) >= (1 - alpha) V^b(s1)."""
    kappa: float = math.inf
    """L = ensemble mean - kappa * std, until kappa is calibrated online against the learned policy's realized
    returns (after `calibration_runs` runs; L is then also capped by those returns). inf (the default): no
    trust in an uncalibrated critic, so L = 0 until then; set a finite value only for a critic you have checked."""
    calibration_runs: int = 10
    """Learned-policy runs (EpsMix: learned episodes; StepMix: episode tails after a switch) before kappa is
    calibrated against their realized returns."""
    cap_runs: int = 20
    """L never exceeds the one-sided `confidence` lower bound of the realized returns of this many most recent
    learned-policy runs (a critic can be biased with no spread between its members)."""
    value_samples: int = 10
    """Actions sampled from the learned policy at a state to estimate its value from the critic ensemble."""
    baseline_episodes: int = 100
    """Baseline rollouts whose Monte-Carlo returns give the baseline's value estimate U."""
    confidence: float = 0.95
    """One-sided confidence of the upper estimate U of the baseline's value."""
    baseline_run: str = ""
    """The baseline policy: empty = the task's scripted controller; or a run folder (`serl train` output, e.g. a
    behaviour-cloned or earlier RL policy on the same task) whose latest checkpoint acts deterministically."""
    snapshot_every: int = 0
    """Every this many training episodes the actor saves the policy that episode runs (frozen parameters and
    the mixer as it stood at the episode's start) to `<run>/mixing-snapshots/`, so its value can be measured
    offline (benchmarks/conservative.py); 0 = never."""


@dataclass(frozen=True)
class EnvConfig:
    """A MuJoCo Franka task on the DESIGN.md observation/action contract."""

    id: str = "FrankaReach-v0"
    """Gymnasium id of the task: a serl_stack task, any registered id, or `module:EnvId` (Gymnasium imports
    `module` first, which registers the env)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments passed to `gymnasium.make` for an env that is not a serl_stack task (those take this
    config instead)."""
    success_key: str = "success"
    """The `info` key whose truthy value at an episode's last step means success (None/absent: the env has no
    notion of success)."""
    control_hz: float = 10.0
    """Policy rate; the controller runs at the physics rate below it."""
    max_episode_steps: int = 100
    """Episode length before truncation."""
    dense_reward: bool = True
    """Add a dense distance-shaping term to the sparse success reward."""
    action_scale_pos: float = 0.02
    """Metres per step for a unit translation action."""
    action_scale_rot: float = 0.1
    """Radians per step for a unit rotation action."""
    reset_joint_noise: float = 0.05
    """Uniform joint perturbation (radians) around the ready pose at reset."""
    workspace_low: tuple[float, ...] = (0.25, -0.25, 0.005)
    """Lower corner (base frame, m) of the box the commanded TCP position is clipped to (stand-in for safety)."""
    workspace_high: tuple[float, ...] = (0.65, 0.25, 0.55)
    """Upper corner (base frame, m) of the box the commanded TCP position is clipped to."""
    orientation_cone: float = 0.35
    """Largest rotation (rad, about any axis) of the commanded TCP frame away from the nominal downward one."""
    reach_min: float = 0.35
    """Commanded flange position at least this far (m) from the shoulder (elbow not folded into its limit)."""
    reach_max: float = 0.7
    """Commanded flange position at most this far (m) from the shoulder (arm not stretched to a singularity)."""
    goal_low: tuple[float, ...] = (0.35, -0.15, 0.15)
    """Reach task: lower corner (base frame, m) of the box goals are sampled from uniformly."""
    goal_high: tuple[float, ...] = (0.65, 0.15, 0.35)
    """Reach task: upper corner (base frame, m) of the goal box."""
    success_radius: float = 0.02
    """Reach task: the TCP within this distance (m) of the goal is a success."""
    cameras: tuple[str, ...] = ()
    """Cameras rendered into obs["images"] (sim: wrist, front); empty = no images."""
    image_size: int = 128
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
class AgentConfig:
    """Soft actor-critic hyperparameters (defaults sized for a CPU learner)."""

    hidden_dims: tuple[int, ...] = (256, 256)
    """Hidden layer widths of actor and critic MLPs."""
    num_critics: int = 2
    """Critic ensemble size (RLPD: 10)."""
    critic_subset: int = 0
    """Critics in the random subset whose min forms the TD target (RLPD: 2); 0 = all (clipped double-Q)."""
    actor_lr: float = 3e-4
    """Actor Adam learning rate."""
    critic_lr: float = 3e-4
    """Critic Adam learning rate."""
    temp_lr: float = 3e-4
    """Temperature Adam learning rate."""
    discount: float = 0.9
    """Discount factor gamma (0.9 suits the 10 Hz reach task's ~15-step horizon; use 0.99 for long tasks)."""
    tau: float = 0.005
    """Polyak averaging rate of the target critics."""
    init_temperature: float = 0.01
    """Initial entropy temperature (SERL: 1e-2; a large one drowns small per-step rewards in entropy bonus)."""
    target_entropy_scale: float = 1.0
    """Target entropy = -scale * |A| (SAC: 1.0; RLPD: 0.5)."""
    batch_size: int = 256
    """Minibatch size of one update."""
    utd: int = 1
    """Critic updates per env step (update-to-data ratio); scanned inside one jitted step."""
    obs_keys: tuple[str, ...] = ()
    """Observation key paths the agent sees, e.g. [state/tcp_pose, task/goal_pos] (empty: all state and task)."""
    normalize_observations: bool = True
    """Standardize observations with the mean/std of the warm-up data and demos (frozen, shipped with the policy)."""
    critic_layer_norm: bool = False
    """LayerNorm in the critic MLPs (RLPD: true; keeps Q values bounded at high UTD)."""
    image_keys: tuple[str, ...] = ()
    """Image key paths the agent sees through its conv encoder, e.g. [images/front] (empty: state only)."""
    encoder_channels: tuple[int, ...] = (32, 64)
    """Conv encoder: output channels of each conv layer."""
    encoder_kernels: tuple[int, ...] = (4, 2)
    """Conv encoder: kernel size of each layer (kernel = stride tiles the image; XLA's CPU convs run ~10x slower
    with overlapping 3x3 kernels)."""
    encoder_strides: tuple[int, ...] = (4, 2)
    """Conv encoder: stride of each layer."""
    encoder_features: int = 50
    """Conv encoder: size of each camera's feature vector (DrQ: 50)."""
    drq_pad: int = 4
    """DrQ random-shift augmentation: pad by this many pixels and crop back at a random offset (SERL: 4; 0 = off)."""


@dataclass(frozen=True)
class ReplayConfig:
    """Replay buffer."""

    capacity: int = 200_000
    """Transitions kept in the ring buffer."""
    on_device: bool = True
    """Mirror the buffer's agent vectors into device memory and sample inside the jitted update (no host round
    trip per update); false samples on the host and copies each batch to the device."""
    demo_dir: str = ""
    """Folder of demonstrations (docs/demos.md) mixed into every batch; empty = no demonstrations."""
    demo_fraction: float = 0.5
    """Share of every minibatch drawn from the demonstrations when `demo_dir` is set (RLPD/SERL: 0.5)."""
    action_source: Literal["executed", "policy"] = "executed"
    """Which action the replay buffer learns from: `executed` (what the robot did after the safety filter or a
    human; the default) or `policy` (what the policy asked for). The transition log keeps both."""


@dataclass(frozen=True)
class TransportConfig:
    """ZeroMQ link between actor and learner."""

    host: str = "127.0.0.1"
    """Interface the learner binds and the actor connects to (loopback unless set)."""
    transitions_port: int = 0
    """Port for actor -> learner transitions (0: `serl train` picks a free one; set it for separate machines)."""
    params_port: int = 0
    """Port for learner -> actor parameters and status (0: `serl train` picks a free one)."""
    params_every: int = 50
    """Broadcast policy parameters every this many learner updates."""
    max_message_bytes: int = 64 * 1024 * 1024
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
    heartbeat_s: float = 1.0
    """An idle actor pings the learner this often; the learner's status broadcast is its heartbeat back."""
    learner_silent_warn_s: float = 10.0
    """The actor warns (and keeps acting on its last parameters) when the learner is silent this long."""
    ledger: bool = False
    """Actor keeps `<run>/ledger-<actor id>.txt`: seq and SHA-256 of every transition it spools (audit trail)."""
    spool_max_bytes: int = 4 << 30
    """Largest size (bytes) of an actor's spool of unacknowledged transitions; at the cap the actor stops stepping
    with an error instead of filling the robot PC's disk while the learner is away (4 GiB: about 20 minutes of
    two-camera data at 10 Hz, weeks of state-only data)."""


@dataclass(frozen=True)
class TrainConfig:
    """The training run: both processes' loop settings."""

    seed: int = 0
    """Seed for the agent, the env and the sampling."""
    num_actors: int = 1
    """Actor processes feeding the learner (ids `actor-0` .. `actor-<n-1>`, each with its own env seed, spool and
    mixer); `serl train` starts them all, on two machines start each with `serl actor --actor-id actor-<i>`."""
    total_env_steps: int = 20_000
    """Env steps the actors collect before the run stops, all actors together (actor i collects its share)."""
    max_episodes: int = 0
    """Training episodes after which the run stops, if it has not stopped at `total_env_steps`, all actors
    together (0 = no limit)."""
    start_steps: int = 1_000
    """Uniform random actions before the policy is used; learning starts after this many transitions."""
    throttle_slack: int = 200
    """The actor may run ahead of the learner by this many updates (env steps * utd <= updates + slack)."""
    log_every: int = 500
    """Learner updates between TensorBoard scalar writes."""
    checkpoint_every: int = 5_000
    """Learner updates between checkpoints (one is also written on Ctrl-C and at the end of the run)."""
    keep_checkpoints: int = 3
    """Checkpoints kept on disk; older ones are deleted (the transition log is kept whole)."""
    eval_episodes: int = 50
    """Deterministic episodes in the final evaluation."""
    eval_every: int = 0
    """Env steps between evaluations during training (0 = only the final one); logged as `eval/*` over env steps."""
    eval_every_episodes: int = 20
    """Deterministic episodes in each evaluation during training (same held-out seeds each time)."""
    stop_at_success: float = 0.0
    """End the run early (final evaluation included) once an evaluation during training reaches this success
    rate (0 = never; needs `eval_every`)."""
    eval_seed: int = 1_000_000
    """First seed of the held-out evaluation episodes (training never uses seeds this high)."""
    run_dir: str = "runs"
    """Parent folder of each run's logs and checkpoints."""
    learner_threads: int = 0
    """CPU threads for the learner's XLA backend and BLAS (0 = all cores)."""
    actor_threads: int = 1
    """CPU threads for the actor's XLA backend and BLAS (0 = all cores)."""


@dataclass(frozen=True)
class Config:
    """Everything a `serl train` run needs."""

    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mixing: MixingConfig = field(default_factory=MixingConfig)


# --------------------------------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


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


def from_dict(data: dict[str, Any] | None, cls: type[T] = Config) -> T:  # type: ignore[assignment]
    """Build `cls` from a nested mapping; missing fields keep their defaults."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config root: expected a mapping, got {data!r}")
    return _build(cls, data)


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
    """Return `cfg` with each `dotted.key=value` override applied and type-checked. A key below a mapping field
    (`env.kwargs.render_mode=rgb_array`) adds or replaces that entry."""
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
    return from_dict(data)


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when `path` is None) and apply dotted overrides."""
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
            cfg = from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{p}: {e}") from e
    return apply_overrides(cfg, overrides or [])


def dump(cfg: Config) -> str:
    """YAML text of a config, loadable by `load`."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
