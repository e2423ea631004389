"""Pixel SAC on FrankaReach-v0: the goal is seen only in the camera image; one logged run, a curve for docs/.

Owns: running `serl train --config configs/sim_reach_pixels.yaml` (learner + actor processes over ZeroMQ, the
real product path) in a new run folder, then reporting its wall-clock time, the final deterministic evaluation
(held-out seeds) and the training curve: success rate of the last `--window` training episodes (stochastic
policy, exploration included) against env steps. Writes `<out-dir>/pixel_reach.json` (with its `targets` map)
and `pixel_reach.png` (`--out-dir` defaults to a fresh `runs/bench-<time>/`), prints the report as one JSON line
and exits 1 when a target is missed. Targets (the learner issue): >= 80 % final success from images, within 60
minutes. `--quick` is a smoke run (a few hundred env steps; it misses the targets).

    .venv/bin/python benchmarks/pixel_reach.py [--quick] [--set agent.batch_size=64 ...] [--out-dir docs]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import benchlib
import numpy as np

from serl_stack.runlog import episodes

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "sim_reach_pixels.yaml"
TARGET_SUCCESS = 0.8
TARGET_WALL_S = 3600.0
QUICK_OVERRIDES = ["train.total_env_steps=400", "train.start_steps=200", "train.eval_episodes=2",
                   "train.checkpoint_every=400"]
"""`--set` overrides of a smoke run (`--quick`), before any given on the command line."""


def rolling_success(success: np.ndarray, window: int) -> np.ndarray:
    """Mean success over the last `window` episodes (fewer at the start)."""
    c = np.cumsum(np.concatenate([[0.0], success]))
    idx = np.arange(1, len(success) + 1)
    return (c[idx] - c[np.maximum(idx - window, 0)]) / np.minimum(idx, window)


def plot(steps: np.ndarray, curve: np.ndarray, final: float | None, wall_s: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a benchmark machine
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, 100 * curve, label="training episodes (stochastic policy), rolling mean")
    if final is not None:
        ax.scatter([steps[-1]], [100 * final], color="C3", zorder=3,
                   label=f"final deterministic eval: {100 * final:.0f} %")
    ax.axhline(100 * TARGET_SUCCESS, color="grey", ls="--", lw=1, label="target 80 %")
    ax.set_xlabel("env steps")
    ax.set_ylabel("reach success (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"Pixel SAC, FrankaReach-v0 from the front camera "
                 f"({wall_s / 60:.0f} min on {os.cpu_count()} CPU cores)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"smoke run: --set {' --set '.join(QUICK_OVERRIDES)}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out-dir", default=None, help=benchlib.OUT_DIR_HELP)
    p.add_argument("--window", type=int, default=50, help="training episodes per point of the success curve")
    args = p.parse_args(argv)
    if args.window < 1:
        raise SystemExit(f"--window: got {args.window}, expected >= 1")
    if args.quick:
        args.overrides = [*QUICK_OVERRIDES, *args.overrides]
    out_dir = benchlib.out_dir(args.out_dir)
    run_dir = ROOT / "runs" / f"pixel_reach-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    cmd = [sys.executable, "-m", "serl_stack.cli", "train", "--config", str(CONFIG), "--run-dir", str(run_dir)]
    for o in args.overrides:
        cmd += ["--set", o]
    print(f"[pixel_reach] {' '.join(cmd)}", file=sys.stderr, flush=True)
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, stdin=subprocess.DEVNULL,
                          env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")})
    wall = time.monotonic() - start
    if proc.returncode != 0 or not (run_dir / "eval.json").is_file():
        raise SystemExit(f"pixel_reach: `serl train` exited with {proc.returncode} (expected 0 and "
                         f"{run_dir / 'eval.json'}); see {run_dir}/learner.log and actor-0.log")
    result = json.loads((run_dir / "eval.json").read_text())
    table = episodes(run_dir)
    curve = rolling_success(table["success"], args.window)
    final = result["success_rate"]
    png = out_dir / "pixel_reach.png"
    plot(table["end_step"], curve, final, wall, png)
    targets = {f"final_success_ge_{TARGET_SUCCESS:g}": bool(final is not None and final >= TARGET_SUCCESS),
               f"wall_le_{TARGET_WALL_S:g}_s": bool(wall <= TARGET_WALL_S)}
    marks = [int(s) for s in np.linspace(0, len(curve) - 1, min(len(curve), 40)).astype(int)]
    report: dict[str, Any] = {
        "benchmark": "pixel_reach",
        "config": str(CONFIG.relative_to(ROOT)),
        "overrides": args.overrides,
        "run_dir": str(run_dir.relative_to(ROOT)),
        "wall_s": round(wall, 1),
        "final_eval": result,
        "training_episodes": int(len(curve)),
        "curve": {"env_steps": [int(table["end_step"][i]) for i in marks],
                  "success_rolling": [round(float(curve[i]), 3) for i in marks], "window": args.window},
        "first_step_rolling_success_ge_target": next(
            (int(s) for s, c in zip(table["end_step"], curve, strict=True) if c >= TARGET_SUCCESS), None),
        "targets": targets,
        "meets_targets": all(targets.values()),
        "machine": benchlib.machine_info(),
        "plot": str(png),
        "date": datetime.now().strftime("%Y-%m-%d"),
    }
    path = benchlib.write_report(out_dir, "pixel_reach", report, lambda msg: print(msg, file=sys.stderr, flush=True))
    benchlib.finish(report, path)


if __name__ == "__main__":
    main()
