"""Reach learned through the whole ROS 2 path: `serl train` with `env.kind: franka` against the fake Franka.

Owns: one logged run of the real-robot path on one machine — the MuJoCo-backed fake Franka in its own process
(`serl fake-franka`, franka_ros2 + CRISP's topics over Cyclone DDS on loopback), the learner and the actor that
`serl train` starts, the actor stepping the robot env (robot_bridge/franka_env.py) paced by the wall clock at
`env.control_hz` — and reporting the wall-clock time, the evaluations during training (held-out goals, between
training episodes: one arm) and the final deterministic evaluation on 20 held-out goals. The config is the embedded
default (`configs/sim_reach.yaml`: dense reward, 2 critics, UTD 1) with `env.kind: franka`; the run stops once an
evaluation reaches 90 % or at `--steps`. Targets: final success >= 80 % within 30 minutes. Writes
`<out-dir>/bridge_reach.json` and `.png` (default: a fresh `runs/bench-<time>/`), prints the report as one JSON
line, exits 1 when a target is missed. `--quick` is a smoke run.

    .venv/bin/python benchmarks/bridge_reach.py [--quick] [--steps 12000] [--out-dir docs]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import benchlib
import numpy as np

from serl_stack.runlog import episodes, evaluations

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = 71
TARGET_SUCCESS = 0.8
TARGET_WALL_S = 1800.0


def plot(run_dir: Path, path: Path, wall_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table, evals = episodes(run_dir), evaluations(run_dir)
    fig, ax = plt.subplots(figsize=(7, 4))
    success = table["success"]
    window = 20
    rolling = np.convolve(success, np.ones(window) / window, mode="valid") if len(success) >= window else success
    ax.plot(table["end_step"][len(success) - len(rolling):], 100 * rolling, label="training episodes (rolling 20)")
    ax.plot(evals["env_steps"], 100 * evals["success_rate"], "o-", label="evaluations (held-out goals)")
    ax.axhline(100 * TARGET_SUCCESS, color="grey", ls="--", lw=1)
    ax.set_xlabel("env steps (wall-clock paced)")
    ax.set_ylabel("reach success (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"Reach through ROS 2 (fake Franka over DDS), {wall_s / 60:.0f} min", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 300 env steps, 2-episode evaluations")
    p.add_argument("--steps", type=int, default=12_000, help="env steps at most")
    p.add_argument("--priority", type=int, default=50, help="bridge.realtime_priority of the robot side")
    p.add_argument("--out-dir", default=None, help=benchlib.OUT_DIR_HELP)
    args = p.parse_args(argv)
    steps, every, episodes_eval, start_steps = args.steps, 2000, 20, 1000
    if args.quick:
        steps, every, episodes_eval, start_steps = 300, 200, 2, 100
    benchlib.require_positive(argparse.Namespace(steps=steps), ("steps",))
    from robot_bridge.dds_config import use_loopback_if_unset

    use_loopback_if_unset()  # inherited by the processes started below
    out_dir = benchlib.out_dir(args.out_dir)
    runs = benchlib.runs_root("runs", "bridge_reach")
    run_dir = runs / "run"
    namespace = f"/reach{os.getpid()}"
    bridge = ["--set", f"bridge.domain_id={DOMAIN}", "--set", f"bridge.namespace={namespace}",
              "--set", f"bridge.realtime_priority={args.priority}", "--set", "bridge.reset_duration_s=1.0"]
    fake = subprocess.Popen(benchlib.serl("fake-franka", *bridge), stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, cwd=ROOT, env=os.environ.copy())
    cmd = benchlib.serl("train", "--config", "configs/sim_reach.yaml", "--run-dir", str(run_dir), *bridge,
                        "--set", "env.kind=franka", "--set", f"train.total_env_steps={steps}",
                        "--set", f"train.start_steps={start_steps}", "--set", f"train.eval_every={every}",
                        "--set", f"train.eval_every_episodes={episodes_eval}",
                        "--set", f"train.eval_episodes={episodes_eval}", "--set", "train.stop_at_success=0.9")
    start = time.monotonic()
    try:
        wall = benchlib.run_logged(cmd, runs / "train.console.log", "serl train (env.kind franka)")
    finally:
        fake.send_signal(signal.SIGINT)
        try:
            fake.wait(30)
        except subprocess.TimeoutExpired:
            fake.kill()
    result = json.loads((run_dir / "eval.json").read_text())
    evals = evaluations(run_dir)
    png = out_dir / "bridge_reach.png"
    plot(run_dir, png, wall)
    final = result["success_rate"]
    targets = {f"final_success_ge_{TARGET_SUCCESS:g}": bool(final is not None and final >= TARGET_SUCCESS),
               f"wall_le_{TARGET_WALL_S:g}_s": bool(wall <= TARGET_WALL_S)}
    report: dict[str, Any] = {
        "benchmark": "bridge_reach",
        "config": "configs/sim_reach.yaml + env.kind=franka (fake Franka over Cyclone DDS on loopback)",
        "settings": {"max_env_steps": steps, "start_steps": start_steps, "eval_every": every,
                     "eval_episodes": episodes_eval, "stop_at_success": 0.9, "realtime_priority": args.priority},
        "wall_s": round(wall, 1),
        "env_steps": result["env_steps"],
        "final_eval": {k: v for k, v in result.items() if k != "actors"},
        "evaluations": {"env_steps": [int(x) for x in evals["env_steps"]],
                        "success_rate": [round(float(x), 3) for x in evals["success_rate"]]},
        "targets": targets,
        "machine": benchlib.machine_info(),
        "run_dir": str(run_dir.relative_to(ROOT)),
        "plot": str(png),
        "date": datetime.now().strftime("%Y-%m-%d"),
        "total_wall_s": round(time.monotonic() - start, 1),
    }
    path = benchlib.write_report(out_dir, "bridge_reach", report, lambda m: print(m, file=sys.stderr, flush=True))
    benchlib.finish(report, path)


if __name__ == "__main__":
    os.environ.setdefault("MUJOCO_GL", "egl")
    main()
