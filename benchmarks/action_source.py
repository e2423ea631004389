"""Which action should the replay buffer learn from: the command that entered the safety filter, or what the filter
let through? The evidence behind `replay.action_source`'s default.

Owns: running `serl train --config configs/sim_reach.yaml` (the embedded default, learner + actor processes) for
each label (`replay.action_source=policy` and `=executed`) and seed, with evaluations of 20 held-out episodes every
2,000 env steps, and reporting the success curves side by side. The reach policy's rotation commands run into the
orientation cone, where the filter projects them to (almost) no rotation: with `executed` labels the critic never
sees the commands the actor keeps proposing there. Targets (the decision's criterion): with `policy` labels the
mean success over seeds reaches 80 % within the budget, and exceeds `executed`'s at the last evaluation.
Writes `<out-dir>/action_source.json` and `.png` (default: a fresh `runs/bench-<time>/`), prints the report as one
JSON line, exits 1 when a target is missed. About 3 minutes per run on 2 cores; `--quick` is a smoke run.

    .venv/bin/python benchmarks/action_source.py [--quick] [--seeds 2] [--steps 10000] [--out-dir docs]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import benchlib
import numpy as np

from serl_stack.runlog import evaluations

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/sim_reach.yaml"
SOURCES = ("policy", "executed")
TARGET_SUCCESS = 0.8


def one_run(source: str, seed: int, steps: int, every: int, episodes: int, runs: Path) -> dict[str, Any]:
    run = runs / f"{source}-s{seed}"
    cmd = benchlib.serl("train", "--config", CONFIG, "--run-dir", str(run), "--set", f"replay.action_source={source}",
                        "--set", f"train.seed={seed}", "--set", f"train.total_env_steps={steps}",
                        "--set", f"train.eval_every={every}", "--set", f"train.eval_every_episodes={episodes}",
                        "--set", f"train.eval_episodes={episodes}")
    wall = benchlib.run_logged(cmd, runs / f"{source}-s{seed}.console.log", f"serl train ({source}, seed {seed})")
    e = evaluations(run)
    # The last row is the final evaluation (at the same env step as the last one during training): keep the curve.
    steps_at, success = [int(x) for x in e["env_steps"][:-1]], [float(x) for x in e["success_rate"][:-1]]
    final = json.loads((run / "eval.json").read_text())["success_rate"]
    return {"source": source, "seed": seed, "env_steps": steps_at, "success": success, "final": final,
            "wall_s": round(wall, 1), "run_dir": str(run.relative_to(ROOT))}


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, source in enumerate(SOURCES):
        mine = [r for r in runs if r["source"] == source]
        for r in mine:
            ax.plot(r["env_steps"], 100 * np.asarray(r["success"]), color=f"C{i}", alpha=0.35, lw=1)
        mean = 100 * np.mean([r["success"] for r in mine], axis=0)
        ax.plot(mine[0]["env_steps"], mean, color=f"C{i}", lw=2.5, label=f"replay.action_source={source} (mean)")
    ax.axhline(100 * TARGET_SUCCESS, color="grey", ls="--", lw=1)
    ax.set_xlabel("env steps")
    ax.set_ylabel("reach success, 20 held-out episodes (%)")
    ax.set_ylim(-2, 102)
    ax.set_title("FrankaReach-v0, configs/sim_reach.yaml: the action the replay learns from", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 1,500 env steps, 5-episode evaluations")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--out-dir", default=None, help=benchlib.OUT_DIR_HELP)
    args = p.parse_args(argv)
    seeds, steps, every, episodes = args.seeds, args.steps, 2000, 20
    if args.quick:
        seeds, steps, every, episodes = 1, 1500, 1250, 5
    benchlib.require_positive(argparse.Namespace(seeds=seeds, steps=steps), ("seeds", "steps"))
    out_dir = benchlib.out_dir(args.out_dir)
    runs_dir = benchlib.runs_root("runs", "action_source")
    start = time.monotonic()
    runs = [one_run(source, seed, steps, every, episodes, runs_dir) for seed in range(seeds) for source in SOURCES]
    mean_curve = {s: np.mean([r["success"] for r in runs if r["source"] == s], axis=0) for s in SOURCES}
    png = out_dir / "action_source.png"
    plot(runs, png)
    targets = {
        f"policy_mean_success_reaches_{TARGET_SUCCESS:g}": bool(np.max(mean_curve["policy"]) >= TARGET_SUCCESS),
        "policy_beats_executed_at_the_last_evaluation": bool(mean_curve["policy"][-1] > mean_curve["executed"][-1]),
    }
    report = {
        "benchmark": "action_source",
        "config": CONFIG,
        "settings": {"seeds": seeds, "env_steps": steps, "eval_every": every, "eval_episodes": episodes},
        "mean_success": {s: [round(float(x), 3) for x in c] for s, c in mean_curve.items()},
        "eval_env_steps": runs[0]["env_steps"],
        "runs": runs,
        "wall_s": round(time.monotonic() - start, 1),
        "targets": targets,
        "machine": benchlib.machine_info(),
        "plot": str(png),
        "date": datetime.now().strftime("%Y-%m-%d"),
    }
    path = benchlib.write_report(out_dir, "action_source", report, lambda m: print(m, file=sys.stderr, flush=True))
    benchlib.finish(report, path)


if __name__ == "__main__":
    os.environ.setdefault("MUJOCO_GL", "egl")
    main()
