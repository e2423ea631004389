"""`serl eval`: a learner checkpoint on disk becomes the actor's policy again, evaluates, and records an MP4.

The run folder is built the way the learner builds it, without a training run: real env transitions go into an
`Updater`, the agent is created and updated a few times (so its weights and observation normalization differ
from a fresh template's), then saved with `Checkpointer` under `<run>/checkpoints` (the whole agent, and the
actor-only `policy` item the inference side restores) with the run's config.yaml.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serl_stack.config import Config, dump, load

ROOT = Path(__file__).resolve().parents[1]
EPISODE_STEPS = 12  # short episodes keep the video small; the frame count is what matters
SETTINGS = [
    "agent.hidden_dims=[32, 32]", "agent.batch_size=16", "replay.on_device=false",
    f"env.max_episode_steps={EPISODE_STEPS}", "train.seed=3",
]
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*infinity.*:UserWarning"),
    # subprocess.run forks and at once execs `serl`; nothing of this (JAX-importing) process runs in the child.
    pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning"),
]


def _serl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "serl_stack.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env={**os.environ, "MUJOCO_GL": "egl"})


def _write_run(run: Path, cfg: Config, updates: int = 3, transitions: int = 40) -> tuple[object, object]:
    """A run folder as the learner leaves it: config.yaml and one checkpoint of an agent updated `updates` times.

    Returns the saved agent and its actor parameters before the updates (what a restore must not give back).
    """
    import jax

    from serl_stack.checkpoint import Checkpointer
    from serl_stack.data.obs import flatten_keys
    from serl_stack.envs import make_env
    from serl_stack.rundir import CHECKPOINTS
    from serl_stack.updater import Updater

    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump(cfg))
    env = make_env(cfg.env)
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    updater = None
    for _ in range(transitions):
        action = env.action_space.sample()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        if updater is None:
            updater = Updater(cfg, flatten_keys(obs), action)
        updater.insert(flatten_keys(obs), action, float(reward), flatten_keys(next_obs), terminated, truncated)
        obs = env.reset()[0] if terminated or truncated else next_obs
    env.close()
    assert updater is not None
    updater.init_agent()
    initial = jax.tree.map(np.asarray, updater.agent.actor_params)
    for _ in range(updates):
        updater.step()
    checkpoints = Checkpointer(run / CHECKPOINTS)
    checkpoints.save(updater.updates, updater.agent, {**updater.checkpoint_meta(), "env_steps": transitions,
                                                      "params_version": 7}, policy=updater.agent.actor_params)
    checkpoints.close()
    return updater.agent, initial


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, object]:
    os.environ.setdefault("MUJOCO_GL", "egl")
    run = tmp_path_factory.mktemp("eval") / "run"
    return (run, *_write_run(run, load(None, SETTINGS)))


# ------------------------------------------------------------------------------------------- the policy


def test_restored_policy_acts_like_the_saved_agent(run: tuple[Path, object, object]) -> None:
    import jax

    from serl_stack.envs import make_env
    from serl_stack.inference import PolicyRunner, load_policy

    run_dir, agent, initial = run
    cfg, policy, info = load_policy(run_dir)
    assert info["checkpoint_step"] == 3 and info["updates"] == 3 and info["env_steps"] == 40
    assert info["params_version"] == policy.version == 7
    saved = jax.tree.map(np.asarray, agent.actor_params)  # type: ignore[attr-defined]
    restored = jax.tree.map(np.asarray, policy.params)
    assert jax.tree.structure(saved) == jax.tree.structure(restored)
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(restored), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    # Not a fresh template: the warm-up statistics and the three updates are in what was restored.
    assert not np.array_equal(restored["obs_norm"]["std"], np.ones_like(restored["obs_norm"]["std"]))
    pairs = zip(jax.tree.leaves(restored["actor"]), jax.tree.leaves(initial["actor"]), strict=True)  # type: ignore[index]
    assert not all(np.array_equal(a, b) for a, b in pairs)

    # The same actions as the saved agent on real observations (deterministic mode): bit for bit through the
    # actor's inference given the in-memory parameters, and up to float32 rounding through the learner agent's own
    # method (the actor runs a state policy in numpy, the learner in XLA: tests/test_policy_numpy.py).
    env = make_env(cfg.env)
    obs, _ = env.reset(seed=5)
    in_memory = PolicyRunner(obs, int(np.prod(env.action_space.shape)), cfg.agent)
    in_memory.load(0, saved)
    key = jax.random.PRNGKey(0)
    for seed in range(4):
        obs, _ = env.reset(seed=100 + seed)
        for _ in range(3):
            vec = policy.observe(obs)
            got = policy.act(obs, key, True)
            assert np.array_equal(got, in_memory.act_on(vec, key, True))
            np.testing.assert_allclose(got, np.asarray(agent.eval_actions(vec)), atol=1e-5)  # type: ignore[attr-defined]
            obs = env.step(got)[0]
    env.close()


# ------------------------------------------------------------------------------------------- the command


@pytest.mark.slow
def test_serl_eval_writes_a_video_of_every_frame(run: tuple[Path, object, object], tmp_path: Path) -> None:
    import imageio.v2 as imageio

    run_dir = run[0]
    video = tmp_path / "videos" / "out.mp4"
    proc = _serl("eval", "--run-dir", str(run_dir), "--episodes", "2", "--video", str(video))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout  # stdout is exactly the JSON line; the summary goes to stderr
    result = json.loads(lines[0])
    assert result["episodes"] == 2 and result["first_seed"] == 1_000_000  # the run's train.eval_seed
    assert result["success_rate"] is not None and 0.0 <= result["success_rate"] <= 1.0
    assert result["checkpoint_step"] == 3 and result["params_version"] == 7
    assert result["length_mean"] == EPISODE_STEPS and result["fps"] == 10.0
    # One frame after each reset and one after each step, nothing else.
    assert result["frames"] == 2 * (EPISODE_STEPS + 1) and result["video"] == str(video)
    assert "video:" in proc.stderr and "checkpoint 3" in proc.stderr
    reader = imageio.get_reader(video, format="FFMPEG")
    try:
        frames = [frame for frame in reader]
        assert reader.get_meta_data()["fps"] == 10.0
    finally:
        reader.close()
    assert len(frames) == result["frames"]
    assert all(f.shape == (480, 640, 3) and f.dtype == np.uint8 for f in frames)
    assert np.std(frames[0]) > 10  # a rendered scene, not a blank frame
    assert not np.array_equal(frames[0], frames[EPISODE_STEPS])  # the arm moved during the episode

    # The same evaluation without a video: the same numbers (rendering does not touch the episodes).
    again = _serl("eval", "--run-dir", str(run_dir), "--episodes", "2", "--step", "3")
    assert again.returncode == 0, again.stderr
    plain = json.loads(again.stdout)
    for k in ("success_rate", "return_mean", "return_std", "length_mean", "first_seed"):
        assert plain[k] == result[k], k
    assert "video" not in plain


def test_evaluate_hooks_count_frames_and_do_not_change_the_result(run: tuple[Path, object, object]) -> None:
    from serl_stack.envs import make_env
    from serl_stack.inference import evaluate, load_policy

    cfg, policy, _ = load_policy(run[0])
    env = make_env(cfg.env, render_mode="rgb_array")
    frames: list[tuple[int, ...]] = []
    episodes: list[dict] = []
    result = evaluate(env, policy, 2, 50, on_frame=lambda f: frames.append(f.shape),
                      on_episode=lambda i, stats: episodes.append({"i": i, **stats}))
    assert len(frames) == 2 * (EPISODE_STEPS + 1) and set(frames) == {(480, 640, 3)}
    assert [e["i"] for e in episodes] == [0, 1] and all(e["length"] == EPISODE_STEPS for e in episodes)
    assert result == evaluate(env, policy, 2, 50)  # hooks only observe
    env.close()


class _FirstOfOne:
    """The reference for a steered evaluation with k = 1: the base policy's one sampled action, on the same key."""

    def __init__(self, base: object) -> None:
        self.base = base

    def act(self, obs: object, key: object, deterministic: bool = False) -> np.ndarray:
        return np.asarray(self.base.sample_actions(obs, 1, key))[0, 0]  # type: ignore[attr-defined]

    def reset(self) -> None:
        self.base.reset()  # type: ignore[attr-defined]


def test_evaluate_gives_each_step_its_own_key(run: tuple[Path, object, object]) -> None:
    """V-GPS samples even when deterministic: a key reused at every step would draw the same noise each time."""
    from serl_stack.envs import make_env
    from serl_stack.inference import evaluate

    cfg = load(None, SETTINGS)
    env = make_env(cfg.env)
    seen: list[bytes] = []

    class Recorder:
        def act(self, obs: object, key: object, deterministic: bool = False) -> np.ndarray:
            seen.append(np.asarray(key).tobytes())
            return np.zeros(env.action_space.shape, np.float32)

        def reset(self) -> None:
            pass

    evaluate(env, Recorder(), 2, 50)
    env.close()
    assert len(seen) == 2 * EPISODE_STEPS and len(set(seen)) == len(seen)


def test_steered_eval_with_one_proposal_is_the_base_policys_sample(run: tuple[Path, object, object],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`serl eval --steer-critic RUN --k 1` executes the base policy's single sampled action at every step (the
    critic has nothing to choose from), on the per-step keys `evaluate` draws; with k = 8 the critic does choose,
    and the result names the critic's run and checkpoint (folders given relative to the working directory too)."""
    from serl_stack.envs import make_env
    from serl_stack.evaluation import run_eval, summary
    from serl_stack.inference import evaluate, load_policy

    run_dir = run[0]
    steered = run_eval(run_dir, episodes=2, first_seed=50, show_progress=False, steer_critic=run_dir, k=1)
    cfg, policy, _ = load_policy(run_dir)
    env = make_env(cfg.env)
    reference = evaluate(env, _FirstOfOne(policy), 2, 50)
    env.close()
    for key in ("return_mean", "return_std", "length_mean", "success_rate"):
        assert steered[key] == reference[key], key
    assert steered["steering"] == {"critic_run": str(run_dir), "critic_step": 3, "k": 1}
    assert "best of 1 sampled actions by the critic of" in summary(steered)
    monkeypatch.chdir(run_dir.parent)  # folders given relative to the working directory, as users type them
    relative = Path(run_dir.name)
    many = run_eval(relative, episodes=2, first_seed=50, show_progress=False, steer_critic=relative, k=8)
    assert many["return_mean"] != steered["return_mean"]  # another action was picked somewhere


def test_a_steering_critic_that_is_missing_is_named(run: tuple[Path, object, object], tmp_path: Path) -> None:
    proc = _serl("eval", "--run-dir", str(run[0]), "--steer-critic", str(tmp_path / "none"), "--episodes", "1")
    assert proc.returncode == 2 and "--steer-critic: " in proc.stderr and str(tmp_path / "none") in proc.stderr, \
        proc.stderr


# ------------------------------------------------------------------------------------------- bad input


def test_missing_run_dir_is_named(tmp_path: Path) -> None:
    proc = _serl("eval", "--run-dir", str(tmp_path / "nope"))
    assert proc.returncode == 2, proc.stderr
    assert f"--run-dir: {tmp_path / 'nope'} is not a folder" in proc.stderr and proc.stdout == ""


def test_run_dir_without_config_is_named(tmp_path: Path) -> None:
    proc = _serl("eval", "--run-dir", str(tmp_path))
    assert proc.returncode == 2 and f"{tmp_path / 'config.yaml'} not found" in proc.stderr, proc.stderr


def test_run_dir_without_checkpoints_says_train_first(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(dump(load(None, SETTINGS)))
    proc = _serl("eval", "--run-dir", str(tmp_path), "--episodes", "2")
    assert proc.returncode == 2, proc.stderr
    assert f"no checkpoint in {tmp_path / 'checkpoints'}" in proc.stderr and "serl train" in proc.stderr
    assert not (tmp_path / "checkpoints").exists()  # evaluating never writes into the run folder


@pytest.mark.parametrize(("flags", "message"), [
    (["--episodes", "0"], "--episodes: got 0, expected >= 1"),
    (["--step", "99"], "--step: got 99, expected one of the checkpoints"),
    (["--video", "out.avi"], "--video: got out.avi, expected a file name ending in .mp4"),
    (["--fps", "0"], "--fps: got 0.0, expected > 0"),
])
def test_bad_flags_exit_2_naming_the_flag(run: tuple[Path, object, object], flags: list[str], message: str) -> None:
    proc = _serl("eval", "--run-dir", str(run[0]), *flags)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_checkpoint_that_does_not_fit_the_config_is_named(run: tuple[Path, object, object], tmp_path: Path) -> None:
    """config.yaml edited after training: exit 2 naming the arrays whose shapes differ, before orbax reads any."""
    import shutil

    edited = tmp_path / "run"
    shutil.copytree(run[0], edited)
    cfg = load(edited / "config.yaml")
    wider = dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, hidden_dims=(48, 48)))
    (edited / "config.yaml").write_text(dump(wider))
    proc = _serl("eval", "--run-dir", str(edited), "--episodes", "1")
    assert proc.returncode == 2, proc.stderr
    assert f"checkpoint 3 in {edited / 'checkpoints'} does not fit the policy of {edited / 'config.yaml'}" \
        in proc.stderr
    assert "agent.hidden_dims=[48, 48]" in proc.stderr
    assert re.search(r"actor\.MLP_0\.Dense_0\.kernel: the checkpoint has \((\d+), 32\), the config gives "
                     r"\(\1, 48\)", proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.slow
def test_pixel_run_restores_its_encoder(tmp_path: Path) -> None:
    """A pixel agent's checkpoint: the conv encoder comes back with the actor and acts from camera images."""
    from serl_stack.envs import make_env
    from serl_stack.inference import load_policy

    pixels = SETTINGS + ["env.cameras=[front]", "env.image_size=32", "agent.image_keys=[images/front]",
                         "agent.obs_keys=[state/tcp_pose]"]
    agent, _ = _write_run(tmp_path / "run", load(None, pixels))
    cfg, policy, _ = load_policy(tmp_path / "run")
    assert sorted(policy.params) == ["actor", "encoder", "obs_norm"] and policy.image_keys == ("images/front",)
    env = make_env(cfg.env)
    obs, _ = env.reset(seed=9)
    for _ in range(3):
        x = policy.observe(obs)
        action = policy.act(obs, None, True)
        assert np.array_equal(action, np.asarray(agent.eval_actions(x)))  # type: ignore[attr-defined]
        obs = env.step(action)[0]
    env.close()
