"""Camera rendering benchmark: frames/s of the sim cameras, and what images add to an env step.

Measures on FrankaReach-v0 (MuJoCo offscreen rendering, `MUJOCO_GL=egl` unless set otherwise):

- `render_fps`: frames/s of one camera (`front`, `wrist`) and of both in turn (`both`, counted in frame pairs
  per second), each frame an `update_scene` + `render` of the env's own camera renderer (one `mujoco.Renderer`
  at `image_size`, reused) while the arm sits in a fixed reset pose: the pure image cost.
- `step_ms`: the mean wall time of one env step (50 physics steps + controller + observation) with no cameras,
  with each camera alone and with both, under the same seeded random actions (reset on termination/truncation,
  resets not timed); `step_ratio_vs_state` = step time with images / without.

Each figure is the median of `reps` timed runs after a warm-up. Target: `render_fps.front` >= 50 at 128x128.
Prints one JSON line on stdout. `python benchmarks/render.py --help` for knobs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from typing import Any

# MuJoCo picks its GL backend when it first makes a context; EGL is the one that works headless here.
os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402  (after MUJOCO_GL on purpose)
import numpy as np  # noqa: E402

from serl_stack.config import EnvConfig  # noqa: E402
from serl_stack.envs.reach import FrankaReachEnv  # noqa: E402

TARGET_FPS = 50.0
CAMERA_SETS: dict[str, tuple[str, ...]] = {
    "state": (),
    "front": ("front",),
    "wrist": ("wrist",),
    "both": ("front", "wrist"),
}


def _median_rate(fn: Any, n: int, reps: int) -> float:
    """Median over `reps` runs of `n` calls of `fn`, in calls per second."""
    fn()  # warm-up: first render compiles shaders and uploads the model's meshes and textures
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def render_fps(size: int, frames: int, reps: int) -> dict[str, float]:
    """Frames/s of each camera set, through the env's own reused renderer."""
    result = {}
    for name, cameras in CAMERA_SETS.items():
        if not cameras:
            continue
        env = FrankaReachEnv(dataclasses.replace(EnvConfig(), cameras=cameras, image_size=size))
        env.reset(seed=0)
        result[name] = round(_median_rate(env._images, frames, reps), 1)
        env.close()
    return result


def step_ms(size: int, steps: int, reps: int, seed: int) -> dict[str, float]:
    """Mean env step time (ms) of each camera set, resets excluded."""
    result = {}
    for name, cameras in CAMERA_SETS.items():
        env = FrankaReachEnv(dataclasses.replace(EnvConfig(), cameras=cameras, image_size=size))
        rng = np.random.default_rng(seed)
        actions = rng.uniform(-1, 1, (steps, 7)).astype(np.float32)
        times = []
        env.reset(seed=seed)
        for rep in range(reps + 1):  # the first run is the warm-up
            elapsed = 0.0
            for a in actions:
                t0 = time.perf_counter()
                _, _, terminated, truncated, _ = env.step(a)
                elapsed += time.perf_counter() - t0
                if terminated or truncated:
                    env.reset(seed=seed + rep)
            if rep:
                times.append(elapsed / steps * 1e3)
        env.close()
        result[name] = round(statistics.median(times), 3)
    return result


def run(size: int, frames: int, steps: int, reps: int, seed: int) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    fps = render_fps(size, frames, reps)
    step = step_ms(size, steps, reps, seed)
    return {
        "bench": "render",
        "image_size": size,
        "render_fps": fps,
        "target_fps": TARGET_FPS,
        "meets_target": fps["front"] >= TARGET_FPS,
        "step_ms": step,
        "step_ratio_vs_state": {k: round(v / step["state"], 2) for k, v in step.items() if k != "state"},
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "mujoco": mujoco.__version__,
            "mujoco_gl": os.environ.get("MUJOCO_GL"),
            "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128, help="square image side (pixels)")
    parser.add_argument("--frames", type=int, default=200, help="frames per timed render run")
    parser.add_argument("--steps", type=int, default=100, help="env steps per timed step run")
    parser.add_argument("--reps", type=int, default=5, help="timed runs per figure (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(run(args.image_size, args.frames, args.steps, args.reps, args.seed)), flush=True)


if __name__ == "__main__":
    main()
