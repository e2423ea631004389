"""Camera rendering benchmark: frames/s of the sim cameras, and what images add to an env step.

Measures on FrankaReach-v0 (MuJoCo offscreen rendering, `MUJOCO_GL=egl` unless set otherwise):

- `render_fps`: frames/s of one camera (`front`, `wrist`) and of both in turn (`both`, counted in frame pairs
  per second), each frame an `update_scene` + `render` of the env's own camera renderer (one `mujoco.Renderer`
  at `image_size`, reused) while the arm sits in a fixed reset pose: the pure image cost.
- `step_ms`: the mean wall time of one env step (50 physics steps + controller + observation) with no cameras,
  with each camera alone and with both, under the same seeded random actions (reset on termination/truncation,
  resets not timed); `step_ratio_vs_state` = step time with images / without.

Each figure is the median of `reps` timed runs after a warm-up. Target: `render_fps.front` >= 50 at 128x128.
Writes `<out-dir>/render.json` (default: a fresh `runs/bench-<time>/`) with a `targets` map, prints it as one
JSON line on stdout and exits 1 when the target is missed. `--quick` is a smoke run; `python
benchmarks/render.py --help` for knobs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from typing import Any

# MuJoCo picks its GL backend when it first makes a context; EGL is the one that works headless here.
os.environ.setdefault("MUJOCO_GL", "egl")

import benchlib  # noqa: E402
import mujoco  # noqa: E402  (after MUJOCO_GL on purpose)
import numpy as np  # noqa: E402

from serl_stack.config import EnvConfig  # noqa: E402
from serl_stack.envs.reach import FrankaReachEnv  # noqa: E402

TARGET_FPS = 50.0
QUICK = {"frames": 20, "steps": 20, "reps": 1}
"""Smoke-run sizes (`--quick`); flags given override them."""
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
    """Every measurement; returns the JSON-ready report."""
    start = time.monotonic()
    load_before = os.getloadavg()[0]
    fps = render_fps(size, frames, reps)
    step = step_ms(size, steps, reps, seed)
    return {
        "benchmark": "render",
        "image_size": size,
        "render_fps": fps,
        "target_fps": TARGET_FPS,
        "targets": {f"front_fps_ge_{TARGET_FPS:g}": fps["front"] >= TARGET_FPS},
        "meets_target": fps["front"] >= TARGET_FPS,
        "step_ms": step,
        "step_ratio_vs_state": {k: round(v / step["state"], 2) for k, v in step.items() if k != "state"},
        "settings": {"frames": frames, "steps": steps, "reps": reps, "seed": seed},
        "date": time.strftime("%Y-%m-%d"),
        "wall_s": round(time.monotonic() - start, 1),
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "mujoco": mujoco.__version__,
            "mujoco_gl": os.environ.get("MUJOCO_GL"),
            "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    parser.add_argument("--out-dir", default=None, help=benchlib.OUT_DIR_HELP)
    parser.add_argument("--image-size", type=int, default=128, help="square image side (pixels)")
    parser.add_argument("--frames", type=int, default=None, help="frames per timed render run (default 200)")
    parser.add_argument("--steps", type=int, default=None, help="env steps per timed step run (default 100)")
    parser.add_argument("--reps", type=int, default=None, help="timed runs per figure, median reported (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = {"frames": 200, "steps": 100, "reps": 5, **(QUICK if args.quick else {})}
    sizes.update({k: getattr(args, k) for k in sizes if getattr(args, k) is not None})
    for name, value in {"image_size": args.image_size, **sizes}.items():
        if value < 1:
            raise SystemExit(f"--{name.replace('_', '-')}: got {value}, expected >= 1")
    out = benchlib.out_dir(args.out_dir)
    report = run(args.image_size, sizes["frames"], sizes["steps"], sizes["reps"], args.seed)
    path = benchlib.write_report(out, "render", report, lambda msg: print(msg, file=sys.stderr, flush=True))
    benchlib.finish(report, path)


if __name__ == "__main__":
    main()
