"""Learning parity benchmark: our SAC, trained through `serl train`, against SBX SAC on Gymnasium's HalfCheetah-v5.

Owns: running both learners with the same hyperparameters on the same seeds, reading their learning curves,
the one-line JSON report (also written to `<out-dir>/gym_parity.json`, with its `targets` map) and the curve
plot (`gym_parity.png`); `--out-dir` defaults to a fresh `runs/bench-<time>/`, and a missed target exits 1.

- ours: the product path, a `serl train` subprocess (learner and actor processes talking ZeroMQ, durable
  transition log, checkpoints) on `HalfCheetah-v5` through `GymAdapter`, with config overrides that match SBX's
  SAC defaults (`SETTINGS`). Final return = `<run_dir>/eval.json` `return_mean`; the curve comes from the
  learner's TensorBoard events (`episode/return`, `episode/length`). Wall-clock = the whole `serl train` run:
  process start-up, compilation, training, checkpoints and the final evaluation.
- SBX: `sbx.SAC("MlpPolicy", Monitor(gym.make("HalfCheetah-v5")), ...)` with the same settings in a spawned
  worker; `learn(steps)`, then the same deterministic evaluation episodes on the same seeds. The curve comes
  from the Monitor. Wall-clock = `learn` + evaluation (imports and env construction excluded).

Both act uniformly at random for the first `start_steps` env steps (`train.start_steps` / `learning_starts`),
then do one gradient step per env step. Runs alternate per seed (ours first on even seeds, SBX first on odd
ones) so that load drift on a shared machine falls on both. Targets: mean final return of ours >= 0.9 x SBX's
and less wall-clock. Run folders go under `runs/` (gitignored). Progress goes to stderr.

    .venv/bin/python benchmarks/gym_parity.py [--quick] [--steps 50000] [--seeds 3] [--out-dir docs]
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchlib
import numpy as np

from serl_stack.runlog import episodes

ROOT = Path(__file__).resolve().parents[1]
ENV_ID = "HalfCheetah-v5"
TARGET_RATIO_RETURN = 0.9
WORKER_TIMEOUT_S = 3 * 3600.0

# SBX's SAC defaults, spelled out for both sides.
HIDDEN = (256, 256)
CRITICS = 2
LEARNING_RATE = 3e-4
DISCOUNT = 0.99
TAU = 0.005
BATCH_SIZE = 256
INIT_TEMPERATURE = 1.0
"""SBX's `ent_coef="auto"` starts the learned entropy coefficient at 1.0."""
TARGET_ENTROPY_SCALE = 1.0
"""SBX's `target_entropy="auto"` is -|A|; ours is -scale x |A|."""


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of the runs; every field is a command-line flag (`--steps 50000`)."""

    steps: int = 50_000
    """Env steps per training run."""
    seeds: int = 3
    """Training seeds 0 .. seeds-1, each run by both learners."""
    start_steps: int = 5_000
    """Uniformly random actions before the policy acts and training starts (both learners)."""
    eval_episodes: int = 10
    """Deterministic evaluation episodes after training, on seeds eval_seed, eval_seed+1, ..."""
    eval_seed: int = 1_000_000
    """First evaluation seed (the same for every run and both learners)."""
    out_dir: str = ""
    """Where gym_parity.json and gym_parity.png go (relative to the repository root); empty: a fresh
    runs/bench-<time>/; `docs` updates the committed figures."""
    runs_dir: str = "runs"
    """Parent folder of this benchmark's run folders (gitignored)."""


QUICK = BenchConfig(steps=3_000, seeds=1, start_steps=1_000, eval_episodes=2)


def settings(cfg: BenchConfig) -> dict[str, Any]:
    return {
        "env": ENV_ID, "hidden": list(HIDDEN), "critics": CRITICS, "learning_rate": LEARNING_RATE,
        "discount": DISCOUNT, "tau": TAU, "batch_size": BATCH_SIZE, "init_temperature": INIT_TEMPERATURE,
        "target_entropy": f"-{TARGET_ENTROPY_SCALE} x |A|", "utd": 1, "normalize_observations": False,
        "replay_capacity": max(cfg.steps, 50_000), **dataclasses.asdict(cfg),
    }


def log(msg: str) -> None:
    print(f"[gym_parity {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ ours


def ours_overrides(cfg: BenchConfig, seed: int) -> dict[str, Any]:
    """`--set` overrides of the embedded default config that make our SAC match SBX's defaults."""
    return {
        "env.id": ENV_ID,
        "env.max_episode_steps": 1000,  # HalfCheetah's registered limit (env.max_episode_steps replaces it)
        "agent.hidden_dims": f"[{', '.join(map(str, HIDDEN))}]",
        "agent.num_critics": CRITICS,
        "agent.critic_subset": 0,
        "agent.actor_lr": LEARNING_RATE,
        "agent.critic_lr": LEARNING_RATE,
        "agent.temp_lr": LEARNING_RATE,
        "agent.discount": DISCOUNT,
        "agent.tau": TAU,
        "agent.init_temperature": INIT_TEMPERATURE,
        "agent.target_entropy_scale": TARGET_ENTROPY_SCALE,
        "agent.batch_size": BATCH_SIZE,
        "agent.utd": 1,
        "agent.normalize_observations": "false",
        "agent.critic_layer_norm": "false",
        "replay.capacity": max(cfg.steps, 50_000),
        "train.total_env_steps": cfg.steps,
        "train.start_steps": cfg.start_steps,
        "train.seed": seed,
        "train.eval_episodes": cfg.eval_episodes,
        "train.eval_seed": cfg.eval_seed,
    }


def ours_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    """Training episodes as (env step at the episode's end, return), from the learner's TensorBoard events."""
    table = episodes(run_dir)
    return [int(x) for x in table["end_step"]], [float(x) for x in table["return"]]


def run_ours(cfg: BenchConfig, seed: int, run_dir: Path) -> dict[str, Any]:
    overrides = [arg for k, v in ours_overrides(cfg, seed).items() for arg in ("--set", f"{k}={v}")]
    cmd = [sys.executable, "-m", "serl_stack.cli", "train", "--run-dir", str(run_dir), *overrides]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    console_log = run_dir.parent / f"{run_dir.name}.serl-train.log"
    start = time.monotonic()
    with open(console_log, "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                              env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")})
    wall = time.monotonic() - start
    if proc.returncode != 0 or not (run_dir / "eval.json").is_file():
        tail = "\n".join(console_log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"ours seed {seed}: `serl train` exited with {proc.returncode} (expected 0 and "
                           f"{run_dir / 'eval.json'}); last lines of {console_log}:\n{tail}")
    result = json.loads((run_dir / "eval.json").read_text())
    steps, returns = ours_curve(run_dir)
    return {"final_return": result["return_mean"], "final_return_std": result["return_std"], "wall_s": wall,
            "curve_steps": steps, "curve_returns": returns, "run_dir": str(run_dir)}


# ------------------------------------------------------------------------------------------------ SBX


def sbx_train(cfg: BenchConfig, seed: int) -> dict[str, Any]:
    """Train and evaluate SBX SAC (in a spawned worker, see run_sbx); returns the run's figures."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    import gymnasium as gym
    import sbx
    from stable_baselines3.common.monitor import Monitor

    env = Monitor(gym.make(ENV_ID))
    model = sbx.SAC(
        "MlpPolicy", env, learning_rate=LEARNING_RATE, buffer_size=max(cfg.steps, 50_000),
        learning_starts=cfg.start_steps, batch_size=BATCH_SIZE, tau=TAU, gamma=DISCOUNT, train_freq=1,
        gradient_steps=1, policy_delay=1, ent_coef=f"auto_{INIT_TEMPERATURE}", target_entropy="auto",
        policy_kwargs={"net_arch": list(HIDDEN), "n_critics": CRITICS}, seed=seed, verbose=0,
    )
    eval_env = gym.make(ENV_ID)
    start = time.monotonic()
    model.learn(total_timesteps=cfg.steps, progress_bar=False)
    returns = []
    for i in range(cfg.eval_episodes):
        obs, _ = eval_env.reset(seed=cfg.eval_seed + i)
        ret, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = eval_env.step(action)
            ret, done = ret + float(reward), terminated or truncated
        returns.append(ret)
    wall = time.monotonic() - start
    return {
        "final_return": float(np.mean(returns)), "final_return_std": float(np.std(returns)), "wall_s": wall,
        "curve_steps": [int(x) for x in np.cumsum(env.get_episode_lengths())],
        "curve_returns": [float(r) for r in env.get_episode_rewards()], "sbx": sbx.__version__,
    }


def run_sbx(cfg: BenchConfig, seed: int) -> dict[str, Any]:
    # A fresh process per run: JAX state, threads and compiled code do not carry over between runs or into ours.
    return benchlib.run_in_worker(sbx_train, (cfg, seed), f"sbx seed {seed}", WORKER_TIMEOUT_S)


# ------------------------------------------------------------------------------------------------ report


def step_grid(curves: list[tuple[list[int], list[float]]], steps: int, points: int = 100) -> tuple[np.ndarray, ...]:
    """Mean, min and max over seeds of "the return of the latest finished episode" on a grid of env steps."""
    grid = np.linspace(steps / points, steps, points)
    values = np.full((len(curves), points), np.nan)
    for row, (xs, ys) in enumerate(curves):
        if not ys:
            continue  # no finished episode: this seed has no point anywhere
        idx = np.searchsorted(np.asarray(xs), grid, side="right") - 1
        values[row] = np.where(idx >= 0, np.asarray(ys, float)[np.clip(idx, 0, None)], np.nan)
    defined = ~np.all(np.isnan(values), axis=0)
    values = values[:, defined]
    return grid[defined], np.nanmean(values, 0), np.nanmin(values, 0), np.nanmax(values, 0)


def plot(results: dict[str, list[dict[str, Any]]], cfg: BenchConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a benchmark machine
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, label, color in (("ours", "ours (serl train)", "tab:blue"), ("sbx", "SBX SAC", "tab:orange")):
        runs = results[name]
        x, mean, low, high = step_grid([(r["curve_steps"], r["curve_returns"]) for r in runs], cfg.steps)
        ax.plot(x, mean, color=color, drawstyle="steps-post",
                label=f"{label}: training episodes, mean over {len(runs)} seeds")
        ax.fill_between(x, low, high, color=color, alpha=0.2, step="post")
        finals = [r["final_return"] for r in runs]
        ax.errorbar([cfg.steps], [np.mean(finals)], yerr=[[np.mean(finals) - min(finals)], [max(finals) -
                    np.mean(finals)]], fmt="o", color=color, capsize=4,
                    label=f"{label}: final deterministic eval ({cfg.eval_episodes} episodes)")
    ax.axvline(cfg.start_steps, color="grey", linestyle=":", linewidth=1, label="end of random warm-up")
    ax.set_xlabel("env steps")
    ax.set_ylabel("episode return")
    ax.set_title(f"SAC on {ENV_ID}: mean and min/max over seeds")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine_info() -> dict[str, Any]:
    import gymnasium
    import jax

    return benchlib.machine_info(jax=jax.__version__, gymnasium=gymnasium.__version__)


def summarize(results: dict[str, list[dict[str, Any]]], cfg: BenchConfig) -> dict[str, Any]:
    side: dict[str, dict[str, Any]] = {}
    for name, runs in results.items():
        finals = [r["final_return"] for r in runs]
        walls = [r["wall_s"] for r in runs]
        side[name] = {
            "final_return": [round(v, 1) for v in finals],
            "final_return_std_over_eval_episodes": [round(r["final_return_std"], 1) for r in runs],
            "wall_s": [round(v, 1) for v in walls],
            "mean_final_return": round(float(np.mean(finals)), 1),
            "mean_wall_s": round(float(np.mean(walls)), 1),
            "training_episodes": [len(r["curve_returns"]) for r in runs],
        }
    ours, theirs = side["ours"]["mean_final_return"], side["sbx"]["mean_final_return"]
    # "ours >= 0.9 x SBX" as a margin of 10 % of |SBX|, so the test also reads right when returns are negative
    # (short smoke runs); the ratio itself is only reported when SBX's return is positive.
    return_ok = ours >= theirs - (1.0 - TARGET_RATIO_RETURN) * abs(theirs)
    ratio_wallclock = side["ours"]["mean_wall_s"] / side["sbx"]["mean_wall_s"]
    targets = {f"return_ge_{TARGET_RATIO_RETURN}x_sbx": bool(return_ok), "wallclock_lt_sbx": ratio_wallclock < 1.0}
    return {
        "ours": side["ours"],
        "sbx": side["sbx"],
        "ratio_return": round(ours / theirs, 3) if theirs > 0 else None,
        "ratio_wallclock": round(ratio_wallclock, 3),
        "targets": targets,
        "meets_targets": all(targets.values()),
    }


def run(cfg: BenchConfig) -> tuple[dict[str, Any], Path]:
    """Train and evaluate both learners on every seed, plot and write the report; returns it and its path."""
    start = time.monotonic()
    load_before = os.getloadavg()[0]
    runs_root = benchlib.runs_root(cfg.runs_dir, "gym_parity")
    log(f"{ENV_ID}: {cfg.steps} env steps x {cfg.seeds} seeds x (ours, SBX); run folders under {runs_root}")
    results: dict[str, list[dict[str, Any]]] = {"ours": [], "sbx": []}
    sbx_version = ""
    for seed in range(cfg.seeds):
        order = ("ours", "sbx") if seed % 2 == 0 else ("sbx", "ours")
        for name in order:
            log(f"seed {seed}: {name} started")
            if name == "ours":
                r = run_ours(cfg, seed, runs_root / f"ours-s{seed}")
            else:
                r = run_sbx(cfg, seed)
                sbx_version = r.pop("sbx")
            results[name].append(r)
            log(f"seed {seed}: {name} final return {r['final_return']:.1f} in {r['wall_s']:.0f} s")
    out_dir = benchlib.out_dir(cfg.out_dir)
    png = out_dir / "gym_parity.png"
    plot(results, cfg, png)
    report = {
        "benchmark": "gym_parity",
        "env": ENV_ID,
        "seeds": list(range(cfg.seeds)),
        **summarize(results, cfg),
        "final_return": f"mean of {cfg.eval_episodes} deterministic episodes on seeds {cfg.eval_seed}.. after "
                        f"{cfg.steps} env steps",
        "wallclock": "ours: the whole `serl train` run (start-up, compile, train, checkpoints, eval); "
                     "SBX: learn() + eval in a spawned worker (imports and env construction excluded)",
        "settings": settings(cfg),
        "machine": {**machine_info(), "sbx": sbx_version,
                    "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]},
        "run_dirs": [r["run_dir"] for r in results["ours"]],
        "plot": str(png),
        "date": time.strftime("%Y-%m-%d"),
        "wall_s": round(time.monotonic() - start, 1),
    }
    return report, benchlib.write_report(out_dir, "gym_parity", report, log)


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    cfg = benchlib.parse_config(BenchConfig, QUICK, __doc__.split("\n\n")[0], argv)
    for name in ("steps", "seeds", "eval_episodes"):
        if getattr(cfg, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')}: got {getattr(cfg, name)}, expected >= 1")
    if not 0 <= cfg.start_steps < cfg.steps:
        raise SystemExit(f"--start-steps: got {cfg.start_steps}, expected 0 <= start_steps < --steps ({cfg.steps})")
    return cfg


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    benchlib.finish(*run(cfg))


if __name__ == "__main__":
    main()
