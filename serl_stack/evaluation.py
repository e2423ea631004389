"""Evaluating a trained run after the fact: `serl eval`.

Owns: finding a run's config and checkpoints on disk, turning a learner checkpoint back into the actor's
`PolicyRunner` (the same parameters the learner broadcast, restored with orbax), the deterministic evaluation
loop with an optional per-frame hook, and writing those frames to an MP4.

The evaluation loop here (`evaluate`, with two optional hooks `on_frame` and `on_episode`) is the one the actor
runs during and after training too. Only numpy and the config are imported at module level: JAX, MuJoCo and imageio load
inside the functions that need them, so `serl eval` can set thread counts first and reject bad input fast.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serl_stack.config import Config, ConfigError, load
from serl_stack.rundir import CHECKPOINTS

if TYPE_CHECKING:  # the actor may import this module's `evaluate`; import PolicyRunner lazily to avoid a cycle
    import gymnasium as gym

    from serl_stack.actor import PolicyRunner

CONFIG_FILE = "config.yaml"
VIDEO_QUALITY = 8
"""imageio's libx264 quality, 0..10: 8 keeps the thin goal marker and gripper fingers legible."""

FrameFn = Callable[[np.ndarray], None]
EpisodeFn = Callable[[int, dict[str, Any]], None]


class EvalError(ValueError):
    """Bad input to an evaluation (missing run, no checkpoint, checkpoint that does not fit): `serl eval` exits 2."""


# ------------------------------------------------------------------------------------------- the run on disk


def read_run_config(run_dir: Path) -> Config:
    """The config a run was trained with (`<run_dir>/config.yaml`, written by `serl train`)."""
    if not run_dir.is_dir():
        raise EvalError(f"--run-dir: {run_dir} is not a folder; expected the run folder `serl train` wrote")
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise EvalError(f"--run-dir: {path} not found; expected the {CONFIG_FILE} that `serl train` writes "
                        "into every run folder")
    try:
        return load(path)
    except ConfigError as e:
        raise EvalError(f"--run-dir: {e}") from e


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the finished checkpoints under `<run_dir>/checkpoints`, ascending (orbax's temporary folders of
    an interrupted save have non-numeric names and are left out). Reads only; creates nothing."""
    directory = run_dir / CHECKPOINTS
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def _check_step(run_dir: Path, step: int | None) -> int:
    """The checkpoint step to load: `step` if the run has it, else the latest one."""
    steps = checkpoint_steps(run_dir)
    if not steps:
        raise EvalError(f"--run-dir: no checkpoint in {run_dir / CHECKPOINTS}; run `serl train` first (the "
                        "learner writes checkpoints every train.checkpoint_every updates and at the end)")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise EvalError(f"--step: got {step}, expected one of the checkpoints in {run_dir / CHECKPOINTS}: "
                        f"{', '.join(map(str, steps))}")
    return step


def load_policy(run_dir: Path, step: int | None = None) -> tuple[Config, PolicyRunner, dict[str, Any]]:
    """The policy of checkpoint `step` (default: the latest) of the run in `run_dir`.

    Returns `(cfg, policy, info)`: the run's config, a `PolicyRunner` holding the checkpoint's actor parameters
    (observation normalization and encoder included, exactly what the learner broadcast), and
    `{"run_dir", "checkpoint_step", "checkpoint_dir", "updates", "env_steps", "params_version"}`.
    Raises `EvalError` naming the problem for a missing run, config or checkpoint, or a checkpoint that does not
    fit the config's agent.
    """
    cfg = read_run_config(run_dir)
    step = _check_step(run_dir, step)

    from flax import serialization

    from serl_stack.actor import PolicyRunner
    from serl_stack.checkpoint import Checkpointer
    from serl_stack.data.obs import flatten_keys
    from serl_stack.envs import make_env
    from serl_stack.updater import Updater

    try:
        env = make_env(cfg.env)
    except ValueError as e:  # an env id this install does not register
        raise EvalError(f"{run_dir / CONFIG_FILE}: {e}") from e
    try:
        obs, _ = env.reset(seed=cfg.train.seed)
        action = np.zeros(env.action_space.shape, np.float32)  # the dtype the actor sends, so the template's too
    finally:
        env.close()
    # The agent template is the learner's own (`Updater.new_agent`). Its structure depends on the env and the
    # agent config only; the replay settings are neutralized so no 200k-row buffer is allocated and a run
    # trained with demonstrations can be evaluated where its demo folder is not.
    template_cfg = dataclasses.replace(cfg, replay=dataclasses.replace(cfg.replay, capacity=1, demo_dir=""))
    try:
        template = Updater(template_cfg, flatten_keys(obs), action).new_agent()
        policy = PolicyRunner(obs, action.size, cfg)
    except KeyError as e:  # agent.obs_keys / image_keys name what the env does not have
        raise EvalError(f"{run_dir / CONFIG_FILE}: {e.args[0]}") from e
    except ValueError as e:  # settings the learner would refuse too (the agent's sizes, batch, ...)
        raise EvalError(f"{run_dir / CONFIG_FILE}: {e}") from e
    misfit = (
        f"checkpoint {step} in {run_dir / CHECKPOINTS} does not fit the agent of {run_dir / CONFIG_FILE} "
        f"(env {cfg.env.id}, agent.hidden_dims={list(cfg.agent.hidden_dims)}, agent.num_critics="
        f"{cfg.agent.num_critics}, observation keys {list(policy.keys + policy.image_keys)}); was config.yaml "
        "edited after training?"
    )
    differences = _shape_differences(run_dir / CHECKPOINTS, step, template)
    if differences:
        raise EvalError(f"{misfit} " + "; ".join(differences))
    checkpoints = Checkpointer(run_dir / CHECKPOINTS, max_to_keep=cfg.train.keep_checkpoints)
    try:
        agent, meta = checkpoints.restore(template, step)
    except (ValueError, KeyError, TypeError) as e:  # what the shape check cannot see (e.g. dtypes)
        raise EvalError(f"{misfit} orbax: {_orbax_reason(e)}") from e
    finally:
        checkpoints.close()
    version = int(meta.get("params_version", step))
    try:
        policy.load(max(version, 0), serialization.to_state_dict(agent.actor_params))
    except (ValueError, KeyError) as e:
        raise EvalError(f"checkpoint {step} in {run_dir / CHECKPOINTS}: its actor parameters do not fit the "
                        f"policy of {run_dir / CONFIG_FILE}: {e}") from e
    info = {
        "run_dir": str(run_dir),
        "checkpoint_step": step,
        "checkpoint_dir": str(run_dir / CHECKPOINTS / str(step)),
        "updates": int(meta.get("updates", step)),
        "env_steps": meta.get("env_steps"),
        "params_version": policy.version,
    }
    return cfg, policy, info


def _shape_differences(directory: Path, step: int, template: Any, limit: int = 4) -> list[str]:
    """How the arrays stored in checkpoint `step` differ from `template`'s (missing, extra, other shape).

    Checked before restoring because a failed orbax restore names no array and leaves its reader threads
    failing noisily on a closed event loop.
    """
    from serl_stack.checkpoint import Checkpointer, leaf_shapes

    checkpoints = Checkpointer(directory)
    try:
        stored = checkpoints.stored_shapes(step)
    finally:
        checkpoints.close()
    wanted = leaf_shapes(template)

    def order(name: str) -> tuple[bool, str]:  # parameters first: optimizer moments only repeat their shapes
        return ".params." not in f".{name}", name

    out = [f"{k}: the checkpoint has {stored[k]}, the config gives {wanted[k]}"
           for k in sorted(stored.keys() & wanted.keys(), key=order) if stored[k] != wanted[k]]
    out += [f"{k}: in the config's agent, not in the checkpoint"
            for k in sorted(wanted.keys() - stored.keys(), key=order)]
    out += [f"{k}: in the checkpoint, not in the config's agent"
            for k in sorted(stored.keys() - wanted.keys(), key=order)]
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


def _orbax_reason(error: Exception, max_lines: int = 8) -> str:
    """The part of an orbax restore error a user can act on: which shape or subtree differs. Its advice to
    disable strict shape checks would load a different network, so it is cut, and long tree diffs are shortened."""
    text = str(error).split(" Truncating/padding is disabled")[0].strip()
    lines = [line for line in text.splitlines() if line.strip()]
    more = f"\n... ({len(lines) - max_lines} more lines)" if len(lines) > max_lines else ""
    return "\n".join(lines[:max_lines]) + more


# ------------------------------------------------------------------------------------------- evaluating


def evaluate(
    env: gym.Env,
    policy: PolicyRunner,
    episodes: int,
    first_seed: int,
    on_frame: FrameFn | None = None,
    on_episode: EpisodeFn | None = None,
) -> dict[str, Any]:
    """Deterministic episodes on seeds `first_seed, first_seed+1, ...`; success from `info["success"]`.

    `on_frame(env.render())` is called after every reset and after every step (so an episode of `n` steps gives
    `n + 1` frames); the env must then have been made with `render_mode="rgb_array"`. `on_episode(i, stats)`
    gets each finished episode's `{"return", "length", "success"}` (success None when the env reports none).
    `success_rate` is None when no episode's last `info` has a `"success"` key (e.g. Pendulum): such a task has
    no notion of success, and 0 would read as "always failed".
    """
    import jax

    if episodes < 1:
        raise EvalError(f"episodes: got {episodes}, expected >= 1")
    returns, successes, lengths = [], [], []
    reports_success = False
    key = jax.random.PRNGKey(0)  # unused by the deterministic policy, required by its signature

    def frame() -> None:
        if on_frame is None:
            return
        image = env.render()
        if image is None:
            raise EvalError(f"env.render_mode: got {env.render_mode!r}, expected 'rgb_array' to record frames")
        on_frame(np.asarray(image))

    for i in range(episodes):
        obs, _ = env.reset(seed=first_seed + i)
        frame()
        ret, length, done, info = 0.0, 0, False, {}
        while not done:
            action = policy.act(policy.observe(obs), key, True)
            obs, reward, terminated, truncated, info = env.step(action)
            frame()
            ret += float(reward)
            length += 1
            done = terminated or truncated
        returns.append(ret)
        successes.append(bool(info.get("success", False)))
        reports_success = reports_success or "success" in info
        lengths.append(length)
        if on_episode is not None:
            on_episode(i, {"return": ret, "length": length,
                           "success": bool(info["success"]) if "success" in info else None})
    return {
        "episodes": episodes,
        "first_seed": first_seed,
        "success_rate": float(np.mean(successes)) if reports_success else None,
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        "length_mean": float(np.mean(lengths)),
        "params_version": policy.version,
    }


def record_video(
    env: gym.Env,
    policy: PolicyRunner,
    episodes: int,
    first_seed: int,
    path: Path,
    fps: float,
    on_episode: EpisodeFn | None = None,
) -> dict[str, Any]:
    """`evaluate` while writing every rendered frame of every episode, back to back, to the MP4 `path`.

    Returns `evaluate`'s dict plus `"video"` (the path) and `"frames"`: exactly `sum(lengths) + episodes` (one
    frame after each reset, one after each step). `env` must render `rgb_array` frames of one fixed size.
    """
    import imageio.v2 as imageio

    if path.suffix.lower() != ".mp4":
        raise EvalError(f"--video: got {path}, expected a file name ending in .mp4")
    if not fps > 0:
        raise EvalError(f"--fps: got {fps}, expected > 0")
    path.parent.mkdir(parents=True, exist_ok=True)
    shape: tuple[int, ...] | None = None
    frames = 0
    # 480x640 frames are whole macroblocks, so ffmpeg stores them unscaled (the test decodes them back).
    writer = imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=VIDEO_QUALITY,
                                pixelformat="yuv420p", macro_block_size=16, ffmpeg_log_level="error")

    def write(image: np.ndarray) -> None:
        nonlocal shape, frames
        if shape is None:
            shape = image.shape
        if image.shape != shape or image.dtype != np.uint8:
            raise EvalError(f"env.render(): frame {frames} has shape {image.shape} and dtype {image.dtype}; "
                            f"expected uint8 frames of one size, {shape}")
        writer.append_data(image)
        frames += 1

    try:
        with warnings.catch_warnings():
            # imageio starts ffmpeg with subprocess (fork + exec at once, no Python runs in the child); JAX's
            # warning about forking a multithreaded process does not apply and would only alarm the user.
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
            result = evaluate(env, policy, episodes, first_seed, on_frame=write, on_episode=on_episode)
    finally:
        writer.close()
    return {**result, "video": str(path), "frames": frames}


def run_eval(
    run_dir: Path,
    step: int | None = None,
    episodes: int = 10,
    first_seed: int | None = None,
    video: Path | None = None,
    fps: float | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Everything `serl eval` does: load the checkpoint, evaluate (recording `video` if given), return the
    evaluation dict merged with `load_policy`'s info (and `"fps"` when a video was written).

    `first_seed` defaults to the run's `train.eval_seed`, `fps` to the env's render rate (`env.control_hz` for
    the sim tasks). Progress goes to stderr so stdout stays machine-readable.
    """
    if episodes < 1:
        raise EvalError(f"--episodes: got {episodes}, expected >= 1")
    if fps is not None and not fps > 0:
        raise EvalError(f"--fps: got {fps}, expected > 0")
    if video is not None and video.suffix.lower() != ".mp4":
        raise EvalError(f"--video: got {video}, expected a file name ending in .mp4")
    cfg, policy, info = load_policy(run_dir, step)
    seed = cfg.train.eval_seed if first_seed is None else first_seed

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from serl_stack.envs import make_env

    env = make_env(cfg.env, render_mode="rgb_array" if video is not None else None)
    successes: list[bool] = []
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=Console(stderr=True), disable=not show_progress)
    try:
        with progress:
            task = progress.add_task(f"evaluating checkpoint {info['checkpoint_step']}", total=episodes)

            def on_episode(i: int, stats: dict[str, Any]) -> None:
                if stats["success"] is not None:
                    successes.append(stats["success"])
                done = f", {sum(successes)}/{len(successes)} succeeded" if successes else ""
                progress.update(task, advance=1, description=f"evaluating checkpoint {info['checkpoint_step']}{done}")

            if video is None:
                result = evaluate(env, policy, episodes, seed, on_episode=on_episode)
            else:
                rate = float(fps or env.metadata.get("render_fps") or cfg.env.control_hz)
                result = {**record_video(env, policy, episodes, seed, video, rate, on_episode), "fps": rate}
    finally:
        env.close()
    return {**result, **info}


def summary(result: dict[str, Any]) -> str:
    """A readable account of a `run_eval` result."""
    success = "n/a (the env reports no success)" if result["success_rate"] is None else f"{result['success_rate']:.0%}"
    lines = [
        f"checkpoint {result['checkpoint_step']} of {result['run_dir']} (updates {result['updates']}, "
        f"env steps {result['env_steps']})",
        f"{result['episodes']} deterministic episodes from seed {result['first_seed']}: success {success}, "
        f"return {result['return_mean']:.3f} ± {result['return_std']:.3f}, length {result['length_mean']:.1f}",
    ]
    if "video" in result:
        lines.append(f"video: {result['video']} ({result['frames']} frames at {result['fps']:g} fps)")
    return "\n".join(lines)


def to_json(result: dict[str, Any]) -> str:
    """One line of JSON (for scripts: `serl eval ... | jq .success_rate`)."""
    return json.dumps(result, sort_keys=True)
