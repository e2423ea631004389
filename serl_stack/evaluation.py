"""`serl eval`: evaluating a trained run after the fact, optionally as a video.

Owns: the `serl eval` flow (restore the run's latest or chosen checkpoint through the inference boundary, run
deterministic episodes with a progress bar, return one result dict), writing every frame to an MP4, and the
readable and JSON forms of the result. The policy, the evaluation loop and checkpoint restoring are the
inference module's (`serl_stack.inference`), the same the actor uses during and after training.
Only numpy and the standard library are imported at module level: JAX, MuJoCo and imageio load inside the
functions that need them, so `serl eval` can set thread counts first and reject bad input fast.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serl_stack.errors import EvalError

if TYPE_CHECKING:
    import gymnasium as gym

    from serl_stack.inference import EpisodeFn, Policy

VIDEO_QUALITY = 8
"""imageio's libx264 quality, 0..10: 8 keeps the thin goal marker and gripper fingers legible."""


def record_video(
    env: gym.Env,
    policy: Policy,
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

    from serl_stack.inference import evaluate

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
    steer_critic: Path | None = None,
    k: int = 32,
) -> dict[str, Any]:
    """Everything `serl eval` does: load the checkpoint, evaluate (recording `video` if given), return the
    evaluation dict merged with `load_policy`'s info (and `"fps"` when a video was written).

    `first_seed` defaults to the run's `train.eval_seed`, `fps` to the env's render rate (`env.control_hz` for
    the sim tasks). Progress goes to stderr so stdout stays machine-readable.

    `steer_critic`, a run folder with a critic checkpoint (same env and observation keys), evaluates V-GPS
    instead: each step the policy samples `k` actions and that run's critic picks the best (the argmax:
    evaluation is deterministic); the result gains `"steering"`.
    """
    if episodes < 1:
        raise EvalError(f"--episodes: got {episodes}, expected >= 1")
    if fps is not None and not fps > 0:
        raise EvalError(f"--fps: got {fps}, expected > 0")
    if steer_critic is not None and k < 1:
        raise EvalError(f"--k: got {k}, expected >= 1 (proposals per step)")
    if video is not None and video.suffix.lower() != ".mp4":
        raise EvalError(f"--video: got {video}, expected a file name ending in .mp4")
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from serl_stack.envs import make_env
    from serl_stack.inference import evaluate, load_policy
    from serl_stack.rundir import read_run_config

    cfg = read_run_config(run_dir)
    seed = cfg.train.eval_seed if first_seed is None else first_seed
    try:
        env = make_env(cfg.env, render_mode="rgb_array" if video is not None else None)
    except ValueError as e:  # an env id this install cannot build
        raise EvalError(f"{run_dir / 'config.yaml'}: {e}") from e
    successes: list[bool] = []
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=Console(stderr=True), disable=not show_progress)
    try:
        obs, _ = env.reset(seed=cfg.train.seed)  # shapes the policy: the env is built once
        action_dim = int(np.prod(env.action_space.shape))
        _, policy, info = load_policy(run_dir, step, example=(obs, action_dim))
        if steer_critic is not None:
            policy, info = _steered(policy, steer_critic, obs, action_dim, k, info)
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


def _steered(policy: Any, critic_run: Path, obs: Any, action_dim: int, k: int,
             info: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """`policy` reranked by the critic of `critic_run`'s latest checkpoint (`steering.ValueGuidedPolicy`)."""
    from serl_stack.errors import RunDirError
    from serl_stack.rundir import read_run_config
    from serl_stack.steering.guided import ValueGuidedPolicy, load_critic

    try:
        critic_cfg = read_run_config(critic_run)
        critic, critic_step = load_critic(critic_run, critic_cfg.agent, obs, action_dim)
    except (RunDirError, ValueError, KeyError) as e:
        raise EvalError(f"--steer-critic: {e}") from e
    steering = {"critic_run": str(critic_run), "critic_step": critic_step, "k": k}
    return ValueGuidedPolicy(policy, critic, k), {**info, "steering": steering}


def summary(result: dict[str, Any]) -> str:
    """A readable account of a `run_eval` result."""
    success = "n/a (the env reports no success)" if result["success_rate"] is None else f"{result['success_rate']:.0%}"
    lines = [
        f"checkpoint {result['checkpoint_step']} of {result['run_dir']} (updates {result['updates']}, "
        f"env steps {result['env_steps']})",
        f"{result['episodes']} deterministic episodes from seed {result['first_seed']}: success {success}, "
        f"return {result['return_mean']:.3f} ± {result['return_std']:.3f}, length {result['length_mean']:.1f}",
    ]
    if "steering" in result:
        st = result["steering"]
        lines.append(f"steered (V-GPS): best of {st['k']} sampled actions by the critic of {st['critic_run']} "
                     f"(checkpoint {st['critic_step']})")
    if "video" in result:
        lines.append(f"video: {result['video']} ({result['frames']} frames at {result['fps']:g} fps)")
    return "\n".join(lines)


def to_json(result: dict[str, Any]) -> str:
    """One line of JSON (for scripts: `serl eval ... | jq .success_rate`)."""
    return json.dumps(result, sort_keys=True)
