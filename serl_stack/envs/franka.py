"""The MuJoCo Franka base env that every sim task shares.

Owns: applying the DESIGN.md action contract to a *commanded* TCP pose (relative steps composed on the last
executed command, binary gripper) with the arm's own limits (`clip_command`: the reach shell around the shoulder
and the tilt-dependent floor); passing every command through the `SafetyFilter` (serl_stack/safety/filter.py:
workspace box, orientation cone, step limits, NaN/inf hold, gripper toggle rate, force back-off) as the last step
before the controller, exactly as the real arm does, and reporting what it did (`info["executed_action"]`,
`info["safety"]`, `info["safety_counts"]` at episode end); stepping the physics with the operational-space
controller at the physics rate, the robot half of the observation (`state`), the F/T reading in the base frame,
the camera images (`images`, only for the cameras `env.cameras` names), time-limit truncation, the seeded
reset to the ready pose, and when to apply `env.randomization` (the draws themselves live in randomize.py):
scene and gains at reset, observation noise on what the policy sees (never on what `_evaluate` scores), and a
one-step action latency. A task subclasses `FrankaEnv`, may add world XML (`task_xml`: markers, objects), and
fills in four hooks: `_task_space`, `_reset_task`, `_task_obs` and `_evaluate`; it places objects on
`table_top_z`. A task whose gripper holds something from the start sets `gripper_closed_at_reset` and may map
the filtered gripper command to its own actuator target (`_gripper_ctrl`).

The `EnvConfig` is checked with `check_section` (config.py declares every range and rule); only what depends on
the model (camera names, the offscreen buffer's size) or on a task (its own `_check_config`) is checked here.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from serl_stack.config import PHYSICS_TIMESTEP, EnvConfig, check_section
from serl_stack.envs.controller import (
    OpSpaceController,
    quat_canonical,
    quat_error,
    quat_from_rotvec,
    quat_mul,
    vec_norm,
)
from serl_stack.envs.panda import PANDA, TABLE_TOP_Z, ArmSpec, dh_fk, load_model
from serl_stack.envs.randomize import DomainRandomizer, add_observation_noise, noise_enabled, noisy_observation_space
from serl_stack.safety import FilterResult, SafetyFilter

ObsDict = dict[str, dict[str, np.ndarray]]

SETTLE_STEPS = 100
"""Physics steps (0.2 s) the controller holds the reset pose before the episode starts."""
GRIPPER_REACH = 0.06
"""Distance (m) from the tool axis to the outer edge of the open finger pads; a tilted gripper reaches this
far times sin(tilt) below the TCP, so the workspace floor is raised by that much."""


def corners(section: Any, low: str, high: str) -> tuple[np.ndarray, np.ndarray]:
    """The box or area (low corner, high corner) that the fields `low` and `high` of a config `section` describe,
    as float64 arrays. Their lengths, finiteness and order are declared in serl_stack/config.py and checked by
    `check_section` before this is called."""
    return np.asarray(getattr(section, low), dtype=np.float64), np.asarray(getattr(section, high), dtype=np.float64)


def state_space(spec: ArmSpec) -> spaces.Dict:
    """The `state` part of the observation contract (DESIGN.md), the same for the sim tasks and the robot env:
    finite where physics bounds the value (the arm reaches < 1.2 m; soft joint limits can overshoot the finger
    stroke by a hair), infinite where contacts can produce anything."""
    inf = np.inf
    pose_bound = np.array([2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0], dtype=np.float32)
    width = 2 * spec.finger_stroke
    return spaces.Dict({
        "tcp_pose": spaces.Box(-pose_bound, pose_bound, (7,), np.float32),
        "tcp_vel": spaces.Box(-inf, inf, (6,), np.float32),
        "gripper_pos": spaces.Box(-0.01, width + 0.01, (1,), np.float32),
        "tcp_force": spaces.Box(-inf, inf, (3,), np.float32),
        "tcp_torque": spaces.Box(-inf, inf, (3,), np.float32),
    })


class CommandLimits:
    """The arm's own limits on a commanded TCP pose, apart from the safety filter's: the orientation cone around the
    nominal (downward) orientation, the reach shell around the shoulder and the tilt-dependent floor, inside the
    workspace box. Pure numpy and MuJoCo's quaternion math, no model: the sim env and the robot env
    (robot_bridge/franka_env.py) apply exactly the same rules to what a policy asks for."""

    def __init__(self, cfg: EnvConfig, spec: ArmSpec, nominal_quat: np.ndarray, workspace_low: np.ndarray,
                 workspace_high: np.ndarray) -> None:
        self.cfg, self.arm = cfg, spec
        self.nominal_quat = np.asarray(nominal_quat, np.float64)
        self.workspace_low, self.workspace_high = workspace_low, workspace_high
        self._shoulder = np.array([0.0, 0.0, spec.joints[0].d])  # where joint 2's axis meets joint 1's

    def _clip_orientation(self, quat: np.ndarray) -> np.ndarray:
        """Pull `quat` back onto the cone of half-angle `orientation_cone` around the nominal orientation."""
        rel = np.empty(3)
        mujoco.mju_subQuat(rel, quat, self.nominal_quat)  # nominal * quat(rel) = quat
        angle = float(vec_norm(rel))
        if angle <= self.cfg.orientation_cone:
            return quat
        return quat_mul(self.nominal_quat, quat_from_rotvec(rel * (self.cfg.orientation_cone / angle)))

    def allowed_pose(self, pos: np.ndarray, quat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pose closest to (pos, quat) that every command limit allows (finite input).

        Orientation: inside the cone around the nominal one. Position: inside the workspace box, with the
        flange inside the reach shell around the shoulder (a box corner can be out of the arm's reach, or so
        close to its base that the elbow folds into its limit), and the tilted gripper's lowest edge above the
        workspace floor. The box and the cone are the safety filter's; the shell and the floor are the arm's.
        """
        quat = self._clip_orientation(np.asarray(quat, dtype=np.float64) / vec_norm(np.asarray(quat)))
        axis = np.empty(3)
        mujoco.mju_rotVecQuat(axis, np.array([0.0, 0.0, 1.0]), quat)  # tool (TCP z) axis in the base frame
        # Projections onto the box and onto the shell alternate; a few rounds settle on a pose satisfying both.
        pos = np.asarray(pos, dtype=np.float64)
        for _ in range(3):
            pos = np.minimum(np.maximum(pos, self.workspace_low), self.workspace_high)  # np.clip, a third the cost
            radial = pos - self.arm.tcp_offset * axis - self._shoulder
            dist = float(vec_norm(radial))
            reach = min(max(dist, self.cfg.reach_min), self.cfg.reach_max)
            if reach == dist:
                break
            pos = pos + radial * (reach / dist - 1.0)
        pos = np.minimum(np.maximum(pos, self.workspace_low), self.workspace_high)
        # A tilted gripper at the bare floor height digs its pads into the table with large forces (which can
        # shove the arm into another IK branch): raise the floor so the lowest pad edge stays above it.
        sin_tilt = float(np.sqrt(max(0.0, 1.0 - axis[2] * axis[2]))) if axis[2] < 0 else 1.0
        pos[2] = max(pos[2], min(self.workspace_low[2] + GRIPPER_REACH * sin_tilt, self.workspace_high[2]))
        return pos, quat

    def clip_command(self, pos: np.ndarray, quat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The target to hand the safety filter for a requested pose (finite): the arm's own limits applied, the
        filter's left to it.

        The position is corrected for the reach shell and the tilt floor (see `allowed_pose`) on every axis those
        move; on the other axes it stays as requested, so a request outside the workspace box reaches the filter,
        which clips it (and reports `box`). Per axis the filter's box clip of the result is exactly
        `allowed_pose`'s position. The orientation is returned as requested (unit norm): the filter clips it to
        the cone (and reports `cone`); the shell and the floor are computed for the cone-clipped orientation.
        """
        quat = np.asarray(quat, dtype=np.float64) / vec_norm(np.asarray(quat))
        pos = np.asarray(pos, dtype=np.float64)
        allowed, _ = self.allowed_pose(pos, quat)
        boxed = np.minimum(np.maximum(pos, self.workspace_low), self.workspace_high)
        return np.where(allowed == boxed, pos, allowed), quat


def clip_finite_action(a: np.ndarray) -> np.ndarray:
    """Finite entries clipped to the action box; NaN and inf go on to the safety filter, which holds the last
    command and counts them (np.clip would turn inf into 1)."""
    return np.where(np.isfinite(a), np.clip(a, -1.0, 1.0), a)


def executed_action(cfg: EnvConfig, prev_pos: np.ndarray, prev_quat: np.ndarray, result: FilterResult) -> np.ndarray:
    """The action (float32, (7,)) that reproduces the filtered command change from (prev_pos, prev_quat): what
    the robot did, sim and real alike (`info["executed_action"]`)."""
    executed = np.empty(7)
    executed[:3] = (result.pos - prev_pos) / cfg.action_scale_pos
    executed[3:6] = quat_error(result.quat, prev_quat) / cfg.action_scale_rot  # base frame, like the action
    executed[6] = 1.0 if result.gripper_closed else -1.0
    # A force back-off adds force_backoff along the force to the policy's motion across it, and the step
    # limits sit a little above a full action: either can move the command further than one action step.
    # The clip keeps the executed action a valid action (it then under-states such a move).
    return np.minimum(np.maximum(executed, -1.0), 1.0).astype(np.float32)  # np.clip, a third the cost


class FrankaEnv(gym.Env[ObsDict, np.ndarray]):
    """A Franka Panda on a table, driven by relative TCP pose actions through a cartesian impedance controller."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    task_xml: ClassVar[str] = ""
    """`<worldbody>` XML the task adds to the model (goal markers, objects)."""
    gripper_closed_at_reset: ClassVar[bool] = False
    """Whether the gripper is closed when an episode starts (after `_reset_task`): the safety filter's initial
    gripper command."""

    def __init__(self, config: EnvConfig | None = None, render_mode: str | None = None, spec: ArmSpec = PANDA) -> None:
        cfg = config if config is not None else EnvConfig()
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode: expected one of {self.metadata['render_modes']} or None, got {render_mode!r}"
            )
        check_section(cfg)  # every range and rule of env.* (and its sections), as `load` checks them
        # control_hz <= PHYSICS_HZ (declared in config.py, which the model's timestep equals): >= 1 substep.
        self.n_substeps = round(1.0 / (cfg.control_hz * PHYSICS_TIMESTEP))
        self.cfg = cfg
        self.arm = spec
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": cfg.control_hz}
        self.workspace_low, self.workspace_high = corners(cfg, "workspace_low", "workspace_high")

        self.model = load_model(spec, self.task_xml)
        self.data = mujoco.MjData(self.model)
        self.cameras = self._check_cameras(cfg)
        self.controller = OpSpaceController(self.model, spec, cfg.controller)
        self.randomizer = DomainRandomizer(self.model, cfg.randomization)
        self.table_top_z = TABLE_TOP_Z
        """Height (m, base frame) of the table top this episode (moves with randomization.table_height)."""
        self._n = len(spec.joints)
        self._tcp = self.model.site("tcp").id
        self._ft_site = self.model.site("ft_sensor").id
        hand = self.model.body("hand").id
        self._hand = hand
        self._hand_weight = np.array([0.0, 0.0, -9.81 * self.model.body_subtreemass[hand]])
        self._fingers = [self.model.jnt_qposadr[self.model.joint(f"finger_{s}").id] for s in ("left", "right")]
        self._gripper_act = self.model.actuator("gripper").id
        self._gripper_open = float(self.model.actuator_ctrlrange[self._gripper_act][1])
        force_adr = self.model.sensor_adr[self.model.sensor("ft_force").id]
        torque_adr = self.model.sensor_adr[self.model.sensor("ft_torque").id]
        self._ft_force, self._ft_torque = slice(force_adr, force_adr + 3), slice(torque_adr, torque_adr + 3)
        self.nominal_quat = dh_fk(spec.ready, spec)[1]
        """TCP orientation at the ready pose (pointing down); the orientation cone is centred on it."""
        self.limits = CommandLimits(cfg, spec, self.nominal_quat, self.workspace_low, self.workspace_high)
        """The arm's own limits on a command (reach shell, tilt floor), applied before the safety filter."""
        self.safety = SafetyFilter.from_config(cfg, self.nominal_quat)
        """The last word on every command sent to the controller and the gripper (reset at every episode start)."""

        self.action_space = spaces.Box(-1.0, 1.0, (7,), np.float32)
        obs_space = {"state": state_space(spec), "task": self._task_space()}
        if self.cameras:
            image = spaces.Box(0, 255, (cfg.image_size, cfg.image_size, 3), np.uint8)
            obs_space["images"] = spaces.Dict({name: image for name in self.cameras})
        self.observation_space = noisy_observation_space(spaces.Dict(obs_space), cfg.randomization)

        self.cmd_pos = np.zeros(3)
        self.cmd_quat = np.array([1.0, 0.0, 0.0, 0.0])
        self._elapsed = -1  # -1 until the first reset
        self._renderer: mujoco.Renderer | None = None
        self._camera_renderer = self._make_camera_renderer(cfg.image_size) if self.cameras else None
        self._vel6 = np.zeros(6)
        self._quat = np.zeros(4)
        self._noise_rng: np.random.Generator | None = None
        # The hold action (no motion, gripper unchanged): what a one-step latency executes first in an episode.
        self._pending_action = np.zeros(7)

    def _check_cameras(self, cfg: EnvConfig) -> tuple[str, ...]:
        """`cfg.cameras`, checked against the model's cameras and the offscreen buffer."""
        cameras = cfg.cameras
        available = [self.model.camera(i).name for i in range(self.model.ncam)]
        if isinstance(cameras, str) or not all(isinstance(c, str) for c in cameras):
            raise ValueError(f"env.cameras: expected a list of camera names from {available}, got {cameras!r}")
        unknown = [c for c in cameras if c not in available]
        if unknown:
            raise ValueError(f"env.cameras: unknown camera(s) {unknown} in {cameras!r}; available: {available}")
        # The offscreen framebuffer (MJCF <visual><global offwidth/offheight>) bounds what a Renderer can draw; it
        # belongs to the model, so this bound is checked here rather than declared in config.py.
        largest = min(int(self.model.vis.global_.offwidth), int(self.model.vis.global_.offheight))
        if cameras and cfg.image_size > largest:
            raise ValueError(f"env.image_size: expected 1..{largest} pixels (the model's offscreen buffer), "
                             f"got {cfg.image_size!r}")
        return tuple(cameras)

    def _make_camera_renderer(self, size: int) -> mujoco.Renderer:
        # One renderer at the image size for all cameras, made once: a Renderer owns a GL context and buffers,
        # far too costly to make per step.
        renderer = mujoco.Renderer(self.model, size, size)
        # No shadows in the policy's images: on a CPU (software GL) the shadow map pass costs ~10x the rest of
        # a 128 px frame (7 vs 100 frames/s here), and the tasks mark what matters without them (the reach
        # goal's pole). `render()` keeps them for human eyes.
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        return renderer

    # ------------------------------------------------------------------------------------ task hooks

    def _task_space(self) -> spaces.Dict:
        """Observation space of `obs["task"]`."""
        return spaces.Dict({})

    def _reset_task(self) -> None:
        """Sample the task's randomness (goals, objects) from `self.np_random`; the arm is already settled."""

    def _task_obs(self) -> dict[str, np.ndarray]:
        """The `task` half of the observation."""
        return {}

    def _evaluate(self, obs: ObsDict) -> tuple[float, bool, dict[str, Any]]:
        """(reward, terminated, info) for the state just observed."""
        return 0.0, False, {}

    # ------------------------------------------------------------------------------------ robot state

    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Measured TCP (position (3,), quaternion wxyz (4,) with w >= 0), float64, base frame."""
        mujoco.mju_mat2Quat(self._quat, self.data.site_xmat[self._tcp])
        return self.data.site_xpos[self._tcp].copy(), quat_canonical(self._quat.copy())

    def gripper_width(self) -> float:
        """Opening width of the gripper (m), the sum of both fingers' travel."""
        return float(self.data.qpos[self._fingers[0]] + self.data.qpos[self._fingers[1]])

    def wrench(self) -> tuple[np.ndarray, np.ndarray]:
        """External force (N) and torque (N m, about the flange) on the hand, in the base frame.

        The sensor reads what the arm exerts on the hand; the external wrench is minus that, minus the hand's
        static weight (like the real robot's estimate, which compensates the end-effector load). Inertial forces
        of the accelerating hand are not compensated, so the reading is non-zero while the arm accelerates.
        """
        d = self.data
        rot = d.site_xmat[self._ft_site].reshape(3, 3)
        lever = d.subtree_com[self._hand] - d.site_xpos[self._ft_site]
        force = -(rot @ d.sensordata[self._ft_force]) - self._hand_weight
        (lx, ly, lz), (wx, wy, wz) = lever.tolist(), self._hand_weight.tolist()
        # lever x weight, as np.cross computes it (bit for bit) at a twentieth of its cost: this runs every step.
        moment = np.array([ly * wz - lz * wy, lz * wx - lx * wz, lx * wy - ly * wx])
        torque = -(rot @ d.sensordata[self._ft_torque]) - moment
        return force, torque

    def _state_obs(self) -> dict[str, np.ndarray]:
        pos, quat = self.tcp_pose()
        mujoco.mj_objectVelocity(self.model, self.data, mujoco.mjtObj.mjOBJ_SITE, self._tcp, self._vel6, 0)
        force, torque = self.wrench()
        f32 = np.float32
        return {
            "tcp_pose": np.concatenate((pos, quat)).astype(f32),
            # mj_objectVelocity gives (angular, linear); the contract is linear first.
            "tcp_vel": np.concatenate((self._vel6[3:], self._vel6[:3])).astype(f32),
            "gripper_pos": np.array([self.gripper_width()], dtype=f32),
            "tcp_force": force.astype(f32),
            "tcp_torque": torque.astype(f32),
        }

    def _images(self) -> dict[str, np.ndarray]:
        """One (S, S, 3) uint8 RGB frame per configured camera, of the physics state as it is now."""
        renderer = self._camera_renderer
        if renderer is None:
            raise RuntimeError(f"{type(self).__name__}: cannot render cameras {list(self.cameras)} after close()")
        images = {}
        for name in self.cameras:
            renderer.update_scene(self.data, camera=name)
            images[name] = renderer.render()  # a fresh array per call: observations must not alias each other
        return images

    def _get_obs(self) -> ObsDict:
        obs = {"state": self._state_obs(), "task": self._task_obs()}
        if self.cameras:
            obs["images"] = self._images()
        return obs

    # ------------------------------------------------------------------------------------ commands

    def allowed_pose(self, pos: np.ndarray, quat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`CommandLimits.allowed_pose` of this env's limits."""
        return self.limits.allowed_pose(pos, quat)

    def clip_command(self, pos: np.ndarray, quat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`CommandLimits.clip_command` of this env's limits."""
        return self.limits.clip_command(pos, quat)

    def _gripper_ctrl(self, closed: bool) -> float:
        """The gripper actuator's target (opening width, m) for the filtered gripper command."""
        return 0.0 if closed else self._gripper_open

    def _apply_action(self, action: np.ndarray) -> FilterResult:
        """Move the command by one relative action, pass it through the safety filter and send only its result.

        The action is composed on the last executed (filtered) command, so controller lag does not accumulate and
        a limited step is not replayed. A non-finite action goes to the filter unchanged: it holds the last
        command and reports `nonfinite`.
        """
        result = self._filtered(action, commit=True)
        self.cmd_pos, self.cmd_quat = result.pos.copy(), result.quat.copy()
        self.data.ctrl[self._gripper_act] = self._gripper_ctrl(result.gripper_closed)
        self.controller.set_target(self.cmd_pos, self.cmd_quat)
        return result

    def preview_action(self, action: np.ndarray) -> FilterResult:
        """What the safety filter would command for a (7,) action now, with nothing changed: the command path of
        a step (command limits, filter) run for a control loop's cache warm-up (`Actor.warm_step`)."""
        return self._filtered(clip_finite_action(np.asarray(action, dtype=np.float64)), commit=False)

    def _filtered(self, action: np.ndarray, commit: bool) -> FilterResult:
        cfg = self.cfg
        if np.all(np.isfinite(action[:6])):
            # Rotation vector in the base frame, applied to the commanded (not measured) orientation.
            rotation = quat_from_rotvec(action[3:6] * cfg.action_scale_rot)
            target_pos, target_quat = self.clip_command(
                self.cmd_pos + action[:3] * cfg.action_scale_pos, quat_mul(rotation, self.cmd_quat)
            )
        else:
            # No pose can be composed from a NaN/inf: the filter gets a non-finite target and holds on it.
            target_pos, target_quat = np.full(3, np.nan), np.full(4, np.nan)
        measured_pos, measured_quat = self.tcp_pose()
        return self.safety.filter(target_pos, target_quat, action[6], measured_pos, measured_quat, self.wrench()[0],
                                  self.data.time, commit=commit)

    def safety_counts(self) -> dict[str, int]:
        """Steps filtered this episode and, per safety flag (`serl_stack.safety.FLAG_NAMES`), how many raised it."""
        return self.safety.episode_counts()

    # ------------------------------------------------------------------------------------ gym API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[ObsDict, dict]:
        super().reset(seed=seed)
        m, d, n = self.model, self.data, self._n
        mujoco.mj_resetData(m, d)
        noise = self.np_random.uniform(-self.cfg.reset_joint_noise, self.cfg.reset_joint_noise, n)
        d.qpos[:n] = np.clip(self.arm.ready + noise, self.arm.q_min, self.arm.q_max)
        d.qpos[self._fingers] = self.arm.finger_stroke
        d.ctrl[self._gripper_act] = self._gripper_open
        # Drawn after the joint noise, so one seed starts the arm in the same pose whatever is randomized.
        draw = self.randomizer.reset(self.np_random)
        self.table_top_z = self.randomizer.table_top_z
        self.controller.set_gain_scale(draw.gain_scale)
        mujoco.mj_forward(m, d)
        self.controller.set_target(*self.tcp_pose())
        self.controller.step(d, SETTLE_STEPS)
        mujoco.mj_forward(m, d)
        self.cmd_pos, self.cmd_quat = self.tcp_pose()
        self.controller.set_target(self.cmd_pos, self.cmd_quat)
        self._elapsed = 0
        self._pending_action = np.zeros(7)
        self._reset_task()
        # The episode starts from where the arm is once the task is set up (a task may have moved it, e.g. the
        # peg grasp). Sim time is the filter's clock: the sim is not paced by the wall clock.
        self.safety.reset(*self.tcp_pose(), gripper_closed=self.gripper_closed_at_reset, now=d.time)
        self.cmd_pos, self.cmd_quat, _ = self.safety.command
        self.controller.set_target(self.cmd_pos, self.cmd_quat)
        # A child generator for the noise: it is seeded by np_random (reproducible per seed) without drawing
        # from it, so per-step noise never shifts the task's own random stream.
        self._noise_rng = self.np_random.spawn(1)[0] if noise_enabled(self.cfg.randomization) else None
        obs = self._get_obs()
        _, _, info = self._evaluate(obs)
        return self._observed(obs), info

    def _observed(self, obs: ObsDict) -> ObsDict:
        """What the policy sees of the clean observation `obs`: with sensor noise when configured."""
        if self._noise_rng is None:
            return obs
        return add_observation_noise(obs, self.cfg.randomization, self._noise_rng)

    def step(self, action: np.ndarray) -> tuple[ObsDict, float, bool, bool, dict[str, Any]]:
        if self._elapsed < 0:
            raise RuntimeError(f"{type(self).__name__}.step called before reset()")
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (7,):
            raise ValueError(f"action: expected shape (7,) [dx, dy, dz, drx, dry, drz, gripper], got {a.shape}")
        a = clip_finite_action(a)
        if self.cfg.randomization.action_latency:
            # The command arrives one control cycle late, as on the real arm: run the previous step's action.
            a, self._pending_action = self._pending_action, a
        prev_pos, prev_quat, _ = self.safety.command  # the executed action is the change from the filter's last
        result = self._apply_action(a)
        self.controller.step(self.data, self.n_substeps)
        # mj_step2 leaves positions-derived quantities one step stale; refresh them for the observation.
        mujoco.mj_forward(self.model, self.data)
        self._elapsed += 1
        obs = self._get_obs()
        reward, terminated, info = self._evaluate(obs)
        info["executed_action"] = executed_action(self.cfg, prev_pos, prev_quat, result)
        info["safety"] = result.flags()
        truncated = self._elapsed >= self.cfg.max_episode_steps
        if terminated or truncated:
            info["safety_counts"] = self.safety_counts()
        return self._observed(obs), reward, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, 480, 640)
        self._renderer.update_scene(self.data, camera="front")
        return self._renderer.render()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        if self._camera_renderer is not None:
            self._camera_renderer.close()
            self._camera_renderer = None
