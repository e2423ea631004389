"""Sample-efficiency benchmark: env steps to 90 % pick-cube success, our learner with and without scripted
demonstrations, against SBX SAC on the same env.

Owns: running the three learners on `FrankaPickCube-v0` from state observations over the same seeds, the
evaluation schedule they share, the one-line JSON report (also `<out-dir>/sample_efficiency.json`, with its
`targets` map) and the learning-curve plot (`sample_efficiency.png`); `--out-dir` defaults to a fresh
`runs/bench-<time>/`, and a missed target exits 1.

- ours + demos: `serl record-demos --keep <demos>` (the scripted pick-cube policy with action noise, successful
  episodes only), then a `serl train` subprocess with `replay.demo_dir` set (half of every minibatch from them).
- ours: the same `serl train` without demonstrations.
- SBX: `sbx.SAC` in a spawned worker on the same env, seen through the same observation keys as ours
  (`agent.obs_keys`, flattened in the same order), with our config's SAC hyperparameters.

Every `eval_every` env steps after the warm-up each run evaluates `eval_episodes` deterministic episodes on the
held-out seeds `train.eval_seed, +1, ...` (ours: `train.eval_every`, logged by the learner; SBX: a callback on
the same seeds). A run stops at the first evaluation with success >= `target_success` (ours:
`train.stop_at_success`); one that never gets there is capped at `max_steps` and reported with
`steps_to_target: null`. Target (issue 6): ours + demos within `target_steps` env steps on every seed; SBX's
figure is reported whatever it is. Run folders go under `runs/` (gitignored); progress goes to stderr.

    .venv/bin/python benchmarks/sample_efficiency.py [--quick] [--seeds 2] [--max-steps 100000] [--out-dir docs]
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchlib
import numpy as np

from serl_stack.config import Config, load
from serl_stack.runlog import evaluations

ROOT = benchlib.ROOT
WORKER_TIMEOUT_S = 3 * 3600.0
MODES = ("ours_demos", "ours", "sbx")
LABELS = {"ours_demos": "ours + 20 scripted demos", "ours": "ours, no demos", "sbx": "SBX SAC"}


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of the runs; every field is a command-line flag (`--seeds 2`)."""

    config: str = "configs/sim_pick_cube.yaml"
    """The serl config every run starts from (env, agent and replay settings)."""
    seeds: int = 2
    """Training seeds 0 .. seeds-1, each run by every learner."""
    max_steps: int = 100_000
    """Cap on env steps of a run that never reaches the target success."""
    target_steps: int = 50_000
    """Issue 6's target for ours + demos: target success within this many env steps on every seed."""
    target_success: float = 0.9
    """Success rate of one evaluation that counts as solved (and ends the run)."""
    eval_every: int = 2_500
    """Env steps between evaluations."""
    eval_episodes: int = 20
    """Deterministic episodes per evaluation, on seeds train.eval_seed, +1, ..."""
    demos: int = 20
    """Successful scripted demonstrations recorded for the ours + demos runs."""
    demo_noise: float = 0.1
    """Std of the Gaussian noise on the scripted demonstrator's actions."""
    modes: str = ",".join(MODES)
    """Comma-separated learners to run (ours_demos, ours, sbx)."""
    concurrent_sbx: bool = True
    """Run SBX's seeds in a worker beside ours instead of after them (all runs then share the 2 cores, so their
    env steps/s and updates/s are lower than alone; steps to the target do not depend on it)."""
    out_dir: str = ""
    """Where sample_efficiency.json and sample_efficiency.png go (relative to the repository root); empty: a fresh
    runs/bench-<time>/; `docs` updates the committed figures."""
    runs_dir: str = "runs"
    """Parent folder of this benchmark's run folders (gitignored)."""


QUICK = BenchConfig(seeds=1, max_steps=3_000, eval_every=1_000, eval_episodes=2, demos=2)


def log(msg: str) -> None:
    print(f"[sample_efficiency {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def steps_to_target(steps: list[int], success: list[float], target: float) -> int | None:
    """The env step of the first evaluation at or above `target`, or None (TensorBoard stores float32: 18/20
    reads back as 0.89999998, so the comparison allows for that rounding)."""
    return next((s for s, v in zip(steps, success, strict=True) if v >= target - 1e-6), None)


# ------------------------------------------------------------------------------------------------ ours


def run_ours(cfg: BenchConfig, seed: int, run_dir: Path, demo_dir: Path | None) -> dict[str, Any]:
    sets = {
        "train.seed": seed, "train.total_env_steps": cfg.max_steps, "train.eval_every": cfg.eval_every,
        "train.eval_every_episodes": cfg.eval_episodes, "train.eval_episodes": cfg.eval_episodes,
        "train.stop_at_success": cfg.target_success, "replay.demo_dir": str(demo_dir) if demo_dir else "",
    }
    overrides = [arg for k, v in sets.items() for arg in ("--set", f"{k}={v}")]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    wall = benchlib.run_logged(benchlib.serl("train", "--config", cfg.config, "--run-dir", str(run_dir), *overrides),
                               run_dir.parent / f"{run_dir.name}.serl-train.log", f"serl train ({run_dir.name})")
    evals = evaluations(run_dir)
    final = json.loads((run_dir / "eval.json").read_text())
    # The last row is the final evaluation (same parameters as the last one during training when it stopped).
    steps, success = [int(s) for s in evals["env_steps"][:-1]], [float(v) for v in evals["success_rate"][:-1]]
    env_steps = int(final["env_steps"])
    return {"steps": steps, "success": success, "env_steps": env_steps, "wall_s": wall,
            "env_steps_per_s": env_steps / wall, "updates_per_s": _median_updates_per_s(run_dir),
            "run_dir": str(run_dir)}


def _median_updates_per_s(run_dir: Path) -> float | None:
    from serl_stack.runlog import event_files, read_scalars

    values = [v for f in event_files(run_dir) for tag, _, v in read_scalars(f) if tag == "learner/updates_per_s"]
    return float(np.median(values)) if values else None


# ------------------------------------------------------------------------------------------------ SBX


def sbx_train(cfg: BenchConfig, seed: int) -> dict[str, Any]:
    """Train SBX SAC on the config's env with our SAC settings (in a spawned worker, see run_sbx)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    import gymnasium as gym
    import sbx
    from stable_baselines3.common.callbacks import BaseCallback

    from serl_stack.data.obs import flatten_keys, to_vector, vector_keys
    from serl_stack.envs import make_env

    serl_cfg = load(ROOT / cfg.config)
    agent = serl_cfg.agent

    class FlatObs(gym.ObservationWrapper):
        """The observation vector our agent sees (`agent.obs_keys`, same order), as a Box."""

        def __init__(self, env: gym.Env) -> None:
            super().__init__(env)
            obs, _ = env.reset(seed=0)
            self.keys = vector_keys(flatten_keys(obs), agent.obs_keys)
            dim = to_vector(flatten_keys(obs), self.keys).shape[0]
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)

        def observation(self, observation: Any) -> np.ndarray:
            return to_vector(flatten_keys(observation), self.keys).astype(np.float32)

    env, eval_env = FlatObs(make_env(serl_cfg.env)), FlatObs(make_env(serl_cfg.env))
    steps: list[int] = []
    success: list[float] = []

    class Evaluate(BaseCallback):
        def _on_step(self) -> bool:
            n = self.num_timesteps
            if n % cfg.eval_every or n <= serl_cfg.train.start_steps:
                return True
            wins = []
            for i in range(cfg.eval_episodes):
                obs, _ = eval_env.reset(seed=serl_cfg.train.eval_seed + i)
                done, info = False, {}
                while not done:
                    action, _ = self.model.predict(obs, deterministic=True)
                    obs, _, terminated, truncated, info = eval_env.step(action)
                    done = terminated or truncated
                wins.append(bool(info.get("success", False)))
            steps.append(n)
            success.append(float(np.mean(wins)))
            return success[-1] < cfg.target_success  # False stops learn()

    model = sbx.SAC(
        "MlpPolicy", env, learning_rate=agent.critic_lr, buffer_size=serl_cfg.replay.capacity,
        learning_starts=serl_cfg.train.start_steps, batch_size=agent.batch_size, tau=agent.tau,
        gamma=agent.discount, train_freq=1, gradient_steps=agent.utd, policy_delay=agent.utd,
        ent_coef=f"auto_{agent.init_temperature}",
        target_entropy=-agent.target_entropy_scale * float(np.prod(env.action_space.shape)),
        policy_kwargs={"net_arch": list(agent.hidden_dims), "n_critics": agent.num_critics},
        seed=seed, verbose=0,
    )
    start = time.monotonic()
    model.learn(total_timesteps=cfg.max_steps, callback=Evaluate(), progress_bar=False)
    wall = time.monotonic() - start
    env_steps = int(model.num_timesteps)
    return {"steps": steps, "success": success, "env_steps": env_steps, "wall_s": wall,
            "env_steps_per_s": env_steps / wall,
            "updates_per_s": max(0, env_steps - serl_cfg.train.start_steps) * agent.utd / wall,
            "sbx": sbx.__version__}


def run_sbx(cfg: BenchConfig, seed: int) -> dict[str, Any]:
    # A fresh process per run: JAX state, threads and compiled code do not carry over between runs or into ours.
    return benchlib.run_in_worker(sbx_train, (cfg, seed), f"sbx seed {seed}", WORKER_TIMEOUT_S)


# ------------------------------------------------------------------------------------------------ report


def plot(results: dict[str, list[dict[str, Any]]], cfg: BenchConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a benchmark machine
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"ours_demos": "tab:blue", "ours": "tab:green", "sbx": "tab:orange"}
    for mode, runs in results.items():
        for i, r in enumerate(runs):
            ax.plot(r["steps"], r["success"], marker="o", markersize=3, color=colors[mode],
                    linestyle="-" if i == 0 else "--", label=f"{LABELS[mode]}, seed {i}")
    ax.axhline(cfg.target_success, color="grey", linestyle=":", linewidth=1, label=f"{cfg.target_success:.0%}")
    ax.axvline(cfg.target_steps, color="red", linestyle=":", linewidth=1, label=f"target: {cfg.target_steps} steps")
    ax.set_xlabel("env steps")
    ax.set_ylabel(f"success rate ({cfg.eval_episodes} deterministic episodes)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title("FrankaPickCube-v0 from state: evaluation success")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarize(results: dict[str, list[dict[str, Any]]], cfg: BenchConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode, runs in results.items():
        reached = [steps_to_target(r["steps"], r["success"], cfg.target_success) for r in runs]
        out[mode] = {
            "steps_to_target": reached,
            "capped_at_max_steps": [s is None for s in reached],
            "env_steps": [r["env_steps"] for r in runs],
            "env_steps_per_s": [round(r["env_steps_per_s"], 1) for r in runs],
            "updates_per_s": [None if r["updates_per_s"] is None else round(r["updates_per_s"], 1) for r in runs],
            "wall_s": [round(r["wall_s"], 1) for r in runs],
            "curve": [{"env_steps": r["steps"], "success": r["success"]} for r in runs],
        }
    demos = out.get("ours_demos", {}).get("steps_to_target", [])
    met = bool(demos) and all(s is not None and s <= cfg.target_steps for s in demos)
    return {**out, "targets": {f"ours_demos_{cfg.target_success:g}_within_{cfg.target_steps}_steps": met}}


def run(cfg: BenchConfig) -> tuple[dict[str, Any], Path]:
    """Every mode on every seed, then the plot and the report; returns it and its path."""
    start = time.monotonic()
    modes = benchlib.parse_modes(cfg.modes, MODES)
    serl_cfg: Config = load(ROOT / cfg.config)
    root = benchlib.runs_root(cfg.runs_dir, "sample_efficiency")
    log(f"{serl_cfg.env.id}: modes {modes} x {cfg.seeds} seeds, up to {cfg.max_steps} env steps each; "
        f"run folders under {root}")
    demo_dir, demo_wall = None, None
    if "ours_demos" in modes:
        demo_dir = root / "demos"
        demo_wall = benchlib.record_demos(cfg.config, demo_dir, cfg.demos, cfg.demo_noise)
        log(f"recorded {cfg.demos} demonstrations in {demo_wall:.0f} s")
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}

    def one(mode: str, seed: int) -> dict[str, Any]:
        log(f"seed {seed}: {mode} started")
        if mode == "sbx":
            r = run_sbx(cfg, seed)
        else:
            r = run_ours(cfg, seed, root / f"{mode}-s{seed}", demo_dir if mode == "ours_demos" else None)
        reached = steps_to_target(r["steps"], r["success"], cfg.target_success)
        log(f"seed {seed}: {mode} " + (f"reached {cfg.target_success:.0%} at {reached} env steps"
                                       if reached is not None else f"capped at {r['env_steps']} env steps")
            + f" in {r['wall_s']:.0f} s")
        return r

    ours_modes = [m for m in modes if m != "sbx"]
    if cfg.concurrent_sbx and "sbx" in modes:
        log("SBX runs in a worker beside ours: every run shares the 2 cores (throughput figures are shared-core)")
    with ThreadPoolExecutor(max_workers=1) as pool:
        # SBX's seeds run one after another in a worker process beside ours (a thread only waits on it), so the
        # run fits its time budget; every run's throughput figures are then measured on shared cores.
        sbx_runs = ([pool.submit(one, "sbx", seed) for seed in range(cfg.seeds)]
                    if cfg.concurrent_sbx and "sbx" in modes else [])
        for seed in range(cfg.seeds):
            for mode in modes:
                if mode in ours_modes or not cfg.concurrent_sbx:
                    results[mode].append(one(mode, seed))
        results.get("sbx", []).extend(f.result() for f in sbx_runs)
    sbx_version = ({r.pop("sbx") for r in results.get("sbx", [])} or {""}).pop()
    out_dir = benchlib.out_dir(cfg.out_dir)
    png = out_dir / "sample_efficiency.png"
    plot(results, cfg, png)
    import jax

    report = {
        "benchmark": "sample_efficiency",
        "env": serl_cfg.env.id,
        "seeds": list(range(cfg.seeds)),
        **summarize(results, cfg),
        "demo_recording_s": None if demo_wall is None else round(demo_wall, 1),
        "notes": {
            "steps_to_target": "env steps of the first evaluation with success >= target_success; null = never, "
                               "the run was capped at max_steps",
            "updates_per_s": "ours: median of the learner's logged updates/s; SBX: gradient steps / wall-clock "
                             "seconds of learn() (env steps and evaluations included)",
            "env_steps_per_s": "env steps collected / wall-clock seconds of the run (evaluations included)",
            "shared_cores": bool(cfg.concurrent_sbx and "sbx" in modes),
        },
        "settings": {**{k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
                     "obs_keys": list(serl_cfg.agent.obs_keys), "utd": serl_cfg.agent.utd,
                     "num_critics": serl_cfg.agent.num_critics, "batch_size": serl_cfg.agent.batch_size,
                     "start_steps": serl_cfg.train.start_steps, "discount": serl_cfg.agent.discount,
                     "dense_reward": serl_cfg.env.dense_reward},
        "machine": benchlib.machine_info(jax=jax.__version__, sbx=sbx_version),
        "plot": str(png),
        "date": time.strftime("%Y-%m-%d"),
        "wall_s": round(time.monotonic() - start, 1),
    }
    return report, benchlib.write_report(out_dir, "sample_efficiency", report, log)


def main(argv: list[str] | None = None) -> None:
    cfg = benchlib.parse_config(BenchConfig, QUICK, __doc__.split("\n\n")[0], argv)
    benchlib.require_positive(cfg, ("seeds", "max_steps", "eval_every", "eval_episodes", "demos"))
    if not 0 < cfg.target_success <= 1:
        raise SystemExit(f"--target-success: got {cfg.target_success}, expected in (0, 1]")
    benchlib.finish(*run(cfg))


if __name__ == "__main__":
    main()
