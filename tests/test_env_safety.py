"""The SafetyFilter in the MuJoCo env (FrankaEnv): every command the sim arm gets passes through it.

Real MuJoCo, no mocks: NaN/inf actions hold the pose, the workspace box and the orientation cone hold the command
(and so the arm), gripper toggles are rate-limited in sim time, pressing into the table backs the command off,
`info["executed_action"]` is what the arm was commanded, and the per-episode counts restart at every reset.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from serl_stack.config import EnvConfig
from serl_stack.envs.controller import rotvec_angle
from serl_stack.envs.reach import FrankaReachEnv
from serl_stack.safety import FLAG_NAMES

# Velocity and wrench are unbounded by nature (contacts); Gymnasium warns about infinite bounds.
pytestmark = pytest.mark.filterwarnings("ignore:.*infinity.*:UserWarning")


def _cfg(**changes: object) -> EnvConfig:
    return dataclasses.replace(EnvConfig(), **changes)


def _action(*entries: float) -> np.ndarray:
    return np.array(entries, dtype=np.float32)


@pytest.fixture(scope="module")
def env() -> FrankaReachEnv:
    e = FrankaReachEnv()
    yield e
    e.close()


# ------------------------------------------------------------------------------------------ non-finite input


@pytest.mark.parametrize(
    "bad",
    [
        _action(*[np.nan] * 7),
        _action(0.0, 0.0, np.inf, 0.0, 0.0, 0.0, 0.0),  # np.clip would make this a full step up
        _action(1.0, 0.0, 0.0, 0.0, -np.inf, 0.0, 0.0),
        _action(1.0, 1.0, 0.0, 0.0, 0.0, 0.0, np.nan),  # a NaN gripper alone holds the motion too
    ],
    ids=["all-nan", "inf-z", "finite-x-with-inf-rotation", "finite-motion-with-nan-gripper"],
)
def test_a_non_finite_action_holds_the_commanded_pose(bad: np.ndarray) -> None:
    steps = 10
    env = FrankaReachEnv(_cfg(max_episode_steps=steps))
    obs, _ = env.reset(seed=3)
    start_pos, start_quat = env.cmd_pos.copy(), env.cmd_quat.copy()
    tcp = obs["state"]["tcp_pose"][:3].astype(np.float64)
    for i in range(steps):
        obs, _, terminated, truncated, info = env.step(bad)
        assert info["safety"]["nonfinite"]
        np.testing.assert_array_equal(env.cmd_pos, start_pos)
        np.testing.assert_array_equal(env.cmd_quat, start_quat)
        np.testing.assert_array_equal(env.controller.target_pos, start_pos)  # the held command is what is sent
        np.testing.assert_array_equal(info["executed_action"], _action(0, 0, 0, 0, 0, 0, -1))  # no motion, open
        assert np.linalg.norm(obs["state"]["tcp_pose"][:3] - tcp) < 1e-3  # the arm stays put
        assert not terminated and truncated == (i == steps - 1)
    assert env.gripper_width() > 0.07  # still open
    assert info["safety_counts"]["nonfinite"] == steps and info["safety_counts"]["steps"] == steps
    assert env.safety_counts() == info["safety_counts"]
    # A finite action afterwards moves again, from the held command.
    env.reset(seed=3)
    before = env.cmd_pos.copy()
    _, _, _, _, info = env.step(_action(0, 0, -1, 0, 0, 0, 0))
    assert not info["safety"]["nonfinite"]
    np.testing.assert_allclose(env.cmd_pos - before, [0, 0, -env.cfg.action_scale_pos], atol=1e-12)


# ------------------------------------------------------------------------------------------ box and cone


@pytest.mark.parametrize(("axis", "sign"), [(2, 1.0), (1, -1.0)], ids=["+z", "-y"])
def test_full_actions_never_leave_the_workspace_box(axis: int, sign: float) -> None:
    env = FrankaReachEnv(_cfg(max_episode_steps=40))
    env.reset(seed=0)
    low, high = env.workspace_low, env.workspace_high
    bound = high[axis] if sign > 0 else low[axis]
    action = np.zeros(7, np.float32)
    action[axis] = sign
    flagged = 0
    for _ in range(40):
        before = env.cmd_pos.copy()
        obs, _, _, truncated, info = env.step(action)
        assert np.all(env.cmd_pos >= low) and np.all(env.cmd_pos <= high)
        np.testing.assert_array_equal(env.controller.target_pos, env.cmd_pos)
        tcp = obs["state"]["tcp_pose"][:3]
        assert np.all(tcp >= low - 0.005) and np.all(tcp <= high + 0.005), f"TCP {tcp} left the box"
        if info["safety"]["box"]:
            flagged += 1
            # The executed action is the clipped step, not the requested full one.
            step = env.cmd_pos[axis] - before[axis]
            assert info["executed_action"][axis] == pytest.approx(step / env.cfg.action_scale_pos, abs=1e-6)
            assert abs(info["executed_action"][axis]) < 1.0
    assert truncated
    assert env.cmd_pos[axis] == bound  # it got to the face of the box and stayed on it
    assert abs(obs["state"]["tcp_pose"][axis] - bound) < 0.005
    assert flagged > 20 and info["safety_counts"]["box"] == flagged


def test_rotation_actions_stay_in_the_orientation_cone_and_count_it(env: FrankaReachEnv) -> None:
    env.reset(seed=1)
    for _ in range(20):
        obs, _, _, _, info = env.step(_action(0, 0, 0, 1, 0.5, 0, 0))
        assert rotvec_angle(env.cmd_quat, env.nominal_quat) <= env.cfg.orientation_cone + 1e-9
    assert info["safety"]["cone"] and env.safety_counts()["cone"] > 5
    measured = obs["state"]["tcp_pose"][3:].astype(np.float64)
    assert rotvec_angle(measured, env.nominal_quat) < env.cfg.orientation_cone + 0.05  # and the arm follows it


def test_an_orientation_cone_wider_than_the_filters_limit_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^env\.orientation_cone: got 2\.0, expected a value in \(0, pi/2\]"):
        FrankaReachEnv(_cfg(orientation_cone=2.0))
    FrankaReachEnv(_cfg(orientation_cone=np.pi / 2)).close()  # the limit itself is allowed


# ------------------------------------------------------------------------------------------ gripper rate


def test_alternating_gripper_requests_toggle_at_most_once_per_min_interval(env: FrankaReachEnv) -> None:
    env.reset(seed=2)
    interval = env.cfg.safety.gripper_min_interval_s
    closed_prev, toggles, held = False, [], 0
    steps = 30
    for i in range(steps):
        request = 1.0 if i % 2 == 0 else -1.0
        now = env.data.time  # the filter's clock: sim time at the start of the step
        _, _, _, _, info = env.step(_action(0, 0, 0, 0, 0, 0, request))
        closed = bool(info["executed_action"][6] > 0)
        # The actuator gets exactly the filtered command (0 = closed width, else open).
        assert env.data.ctrl[env._gripper_act] == (0.0 if closed else env._gripper_open)
        if closed != closed_prev:
            toggles.append(now)
        elif (request > 0) != closed:
            held += 1
            assert info["safety"]["gripper_rate"]
        closed_prev = closed
    assert len(toggles) >= 3, f"the gripper should still toggle, once per {interval} s: toggles at {toggles}"
    assert np.all(np.diff(toggles) >= interval), f"toggles at sim times {toggles}"
    span = steps / env.cfg.control_hz
    assert len(toggles) <= span / interval + 1
    # Every request for the other state that did not toggle was held by the rate limit, and counted.
    assert held >= 10 and env.safety_counts()["gripper_rate"] == held


# ------------------------------------------------------------------------------------------ force back-off


def _press_env(max_episode_steps: int = 200) -> FrankaReachEnv:
    # The workspace floor would stop the command at the table; lower it so the only thing between the policy's
    # push and the table is the force back-off.
    return FrankaReachEnv(
        _cfg(reset_joint_noise=0.0, workspace_low=(0.25, -0.25, -0.05), max_episode_steps=max_episode_steps)
    )


def _down_to(env: FrankaReachEnv, z: float) -> dict:
    """Full -z steps until the command is at most `z` (m): the fingertips just above the table."""
    obs = None
    for _ in range(40):
        obs, _, _, _, _ = env.step(_action(0, 0, -1, 0, 0, 0, 0))
        if env.cmd_pos[2] <= z:
            return obs
    raise AssertionError(f"the command did not get down to z = {z}: {env.cmd_pos}")


def test_a_slow_push_into_the_table_is_held_near_the_force_limit() -> None:
    """Pressing 2 mm per step into the table: the force settles about the limit instead of building up (without
    the back-off the command sinks to the box floor and the arm presses with ~250 N)."""
    env = _press_env()
    env.reset(seed=0)
    obs = _down_to(env, 0.03)
    limit = env.cfg.safety.force_limit
    forces = []
    for _ in range(80):
        force = obs["state"]["tcp_force"].astype(np.float64)  # what the filter measures at the start of the step
        before = env.cmd_pos.copy()
        obs, _, _, _, info = env.step(_action(0, 0, -0.1, 0, 0, 0, 0))
        forces.append(float(np.linalg.norm(obs["state"]["tcp_force"])))
        if info["safety"]["force_backoff"]:
            assert np.linalg.norm(force) > limit
            # The command moved back along the measured force by at least force_backoff.
            along = (env.cmd_pos - before) @ (force / np.linalg.norm(force))
            assert along >= env.cfg.safety.force_backoff - 1e-6
    assert env.safety_counts()["force_backoff"] >= 5
    # Margin: the command may step 2 mm further in while the reading is just under the limit (k_z ~3200 N/m:
    # ~6 N) and the contact's transient within a control step adds ~10 N more; 20 N covers both.
    assert max(forces) < limit + 20.0, f"peak force {max(forces):.1f} N"
    assert np.mean(forces[20:]) < limit  # on average, at or below the limit once pressing


def test_a_full_speed_push_into_the_table_backs_off_and_does_not_ratchet_in() -> None:
    """Full -z steps into the table. The filter reacts once per control step to the force measured at its start,
    so a full 2 cm step taken while the reading is under the limit still lands hard (transients of 100-200 N are
    measured here); what it guarantees is that the command backs off while the limit is exceeded, so the push
    cannot build up: the command never sinks more than two action steps below the fingertips' contact and the
    mean force stays within three times the limit (~63 N measured; without the back-off the command sinks to the
    box floor and the mean is ~245 N)."""
    env = _press_env()
    env.reset(seed=0)
    obs = _down_to(env, 0.03)
    limit = env.cfg.safety.force_limit
    forces, lowest = [], np.inf
    for _ in range(40):
        force = obs["state"]["tcp_force"].astype(np.float64)
        before = env.cmd_pos.copy()
        obs, _, _, _, info = env.step(_action(0, 0, -1, 0, 0, 0, 0))
        forces.append(float(np.linalg.norm(obs["state"]["tcp_force"])))
        lowest = min(lowest, env.cmd_pos[2])
        if info["safety"]["force_backoff"]:
            along = (env.cmd_pos - before) @ (force / np.linalg.norm(force))
            assert along >= env.cfg.safety.force_backoff - 1e-6
            assert info["executed_action"][2] > 0  # the executed action says: up, although the policy said down
    tcp_z = float(obs["state"]["tcp_pose"][2])  # resting on the table
    assert env.safety_counts()["force_backoff"] >= 10
    assert lowest > tcp_z - 2 * env.cfg.action_scale_pos, f"command sank to {lowest:.4f} m, TCP at {tcp_z:.4f} m"
    assert np.mean(forces[5:]) < 3 * limit, f"mean force {np.mean(forces[5:]):.1f} N"


# ------------------------------------------------------------------------------------------ executed action


def test_executed_action_is_the_policy_action_when_no_limit_acts(env: FrankaReachEnv) -> None:
    env.reset(seed=5)
    rng = np.random.default_rng(0)
    for _ in range(10):
        action = rng.uniform(-0.5, 0.5, 7).astype(np.float32)
        action[3:6] *= 0.5  # small rotations: ten of them stay well inside the cone
        action[6] = 0.0  # hold: the gripper stays open
        _, _, _, _, info = env.step(action)
        assert not any(info["safety"].values()), info["safety"]
        assert set(info["safety"]) == set(FLAG_NAMES)
        executed = info["executed_action"]
        assert executed.dtype == np.float32 and executed.shape == (7,)
        np.testing.assert_allclose(executed[:6], action[:6], atol=1e-6)
        assert executed[6] == -1.0
    assert env.safety_counts() == {"steps": 10, **dict.fromkeys(FLAG_NAMES, 0)}


# ------------------------------------------------------------------------------------------ episode counts


def test_episode_counts_restart_at_reset(env: FrankaReachEnv) -> None:
    env.reset(seed=6)
    for _ in range(3):
        env.step(_action(*[np.nan] * 7))
    assert env.safety_counts()["nonfinite"] == 3 and env.safety_counts()["steps"] == 3
    env.reset(seed=6)
    assert env.safety_counts() == {"steps": 0, **dict.fromkeys(FLAG_NAMES, 0)}
    _, _, _, _, info = env.step(_action(0, 0, 0, 0, 0, 0, 0))
    assert "safety_counts" not in info  # only at the end of an episode
    assert env.safety_counts() == {"steps": 1, **dict.fromkeys(FLAG_NAMES, 0)}


# ------------------------------------------------------------------------------------------ preview (warm-up)


@pytest.mark.parametrize("env_id", ["FrankaReachEnv", "FrankaPegInsertEnv"])
def test_previewing_actions_changes_nothing_and_previews_what_the_step_commands(env_id: str) -> None:
    # `preview_action` runs a step's command path for the control loop's cache warm-up (`Actor.warm_step`): an
    # env that previews before every step must follow exactly the trajectory of one that never does, and the
    # preview of the action about to be stepped is the command the step then sends.
    from serl_stack.envs.peg_insert import FrankaPegInsertEnv

    cls = {"FrankaReachEnv": FrankaReachEnv, "FrankaPegInsertEnv": FrankaPegInsertEnv}[env_id]
    plain, previewed = cls(), cls()
    try:
        dim = plain.action_space.shape[0]
        rng = np.random.default_rng(0)
        o1, _ = plain.reset(seed=4)
        o2, _ = previewed.reset(seed=4)
        for t in range(60):
            action = rng.uniform(-1.2, 1.2, dim).astype(np.float32)
            if t % 7 == 3:
                action[1] = np.nan
            for _ in range(2):  # stray previews of other actions, as a warm-up of a stale action would be
                previewed.unwrapped.preview_action(rng.uniform(-1, 1, dim))
            preview = previewed.unwrapped.preview_action(action)
            o1, r1, *_ = plain.step(action)
            o2, r2, *_, info = previewed.step(action)
            assert r1 == r2 and all(np.array_equal(o1[g][k], o2[g][k]) for g in o1 for k in o1[g])
            assert np.array_equal(preview.pos, previewed.unwrapped.cmd_pos)
            assert np.array_equal(preview.quat, previewed.unwrapped.cmd_quat)
            assert preview.flags() == info["safety"]
        assert plain.unwrapped.safety_counts() == previewed.unwrapped.safety_counts()
    finally:
        plain.close()
        previewed.close()
