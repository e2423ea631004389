"""Conservative-mixing benchmark: does every training episode keep V^{pi_k}(s1) >= (1 - alpha) V^b(s1) on
pick-cube, with mixing off, EpsMix and StepMix, and what does it cost the learned policy?

Owns: the three training runs (one `serl train` subprocess per mode, the same seed, demonstrations and settings),
the baseline's value V^b from `baseline_rollouts` scripted episodes, the offline check of every
`check_every`-th training episode, the one-line JSON report (also `<out-dir>/conservative.json`, with its
`targets` map) and the plot (`conservative.png`: value per checked episode against the (1 - alpha) V^b line);
`--out-dir` defaults to a fresh `runs/bench-<time>/`, and a missed target exits 1.

How an episode is checked. The actor saves, at the start of every `check_every`-th training episode, the policy
that episode runs (`mixing.snapshot_every`): the frozen parameters and the mixer as it stood (U, kappa, the
baseline's value table; for EpsMix its eps_k rule, for StepMix its switch rule). Here that policy runs
`check_rollouts` episodes on the baseline's initial states (the seeds of its first `check_rollouts` rollouts),
each with a fresh copy of the mixer (EpsMix draws its own coin per rollout), with the learned policy sampling as
in training. Its value is the mean discounted return (the critic's discount, the quantity the mixers bound); a
violation counts only when the one-sided `confidence` Student-t upper bound of that mean is below
(1 - alpha) V^b. Mode off runs the learned policy alone (random actions before the first parameters, like its
warm-up).

Rewards are the task's sparse success reward (`env.dense_reward: false`: the mixers need rewards >= 0).
Targets (issue 7): EpsMix and StepMix violate in <= `max_violation_rate` of checked episodes, and their final
success (the learned policy's deterministic evaluation at the end of training) is at most `max_success_gap`
below mode off's. A target whose modes were not run (`--modes`) reads false: it was not shown. Run folders go
under `runs/` (gitignored); progress goes to stderr.

    .venv/bin/python benchmarks/conservative.py [--quick] [--episodes 200] [--out-dir docs]
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchlib
import numpy as np
from scipy import stats

from serl_stack.config import Config, load

MODES = ("off", "epsmix", "stepmix")
LABELS = {"off": "mixing off", "epsmix": "EpsMix", "stepmix": "StepMix"}
COLORS = {"off": "tab:red", "epsmix": "tab:blue", "stepmix": "tab:green"}


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of the runs; every field is a command-line flag (`--episodes 200`)."""

    config: str = "configs/sim_pick_cube.yaml"
    """The serl config every run starts from (env, agent and replay settings); dense reward is switched off."""
    modes: str = ",".join(MODES)
    """Comma-separated mixing modes to train (off, epsmix, stepmix)."""
    seed: int = 0
    """Training seed of every run."""
    episodes: int = 200
    """Training episodes per mode."""
    alpha: float = 0.2
    """The constraint: V^{pi_k}(s1) >= (1 - alpha) V^b(s1)."""
    mixer_warmup: int = 50
    """Pure baseline episodes at the start of a mixed run that give the mixer its U (mixing.baseline_episodes)."""
    baseline_rollouts: int = 100
    """Scripted-baseline episodes (seeds check_seed, +1, ...) whose mean discounted return is V^b."""
    check_every: int = 10
    """Every this many training episodes, the policy that episode ran is measured."""
    check_rollouts: int = 50
    """Episodes per check, on the first of the baseline's initial states."""
    confidence: float = 0.95
    """One-sided confidence of the upper bound a violation is judged by."""
    check_seed: int = 2_000_000
    """First seed of the baseline's rollouts (training and the held-out evaluation never use these)."""
    demos: int = 20
    """Successful scripted demonstrations in every run's replay (half of each minibatch), as in the
    sample-efficiency benchmark."""
    demo_noise: float = 0.1
    """Std of the Gaussian noise on the scripted demonstrator's actions."""
    eval_episodes: int = 50
    """Deterministic episodes of each run's final evaluation (the learned policy alone)."""
    max_violation_rate: float = 0.1
    """Target: largest fraction of checked episodes a constrained mode may violate."""
    max_success_gap: float = 0.1
    """Target: a constrained mode's final success is at most this far below mode off's."""
    out_dir: str = ""
    """Where conservative.json and conservative.png go (relative to the repository root); empty: a fresh
    runs/bench-<time>/; `docs` updates the committed figures."""
    runs_dir: str = "runs"
    """Parent folder of this benchmark's run folders (gitignored)."""


QUICK = BenchConfig(episodes=12, mixer_warmup=4, baseline_rollouts=6, check_every=6, check_rollouts=3, demos=2,
                    eval_episodes=2)


def log(msg: str) -> None:
    print(f"[conservative {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def discounted_return(rewards: list[float], discount: float) -> float:
    return float(sum(discount**t * r for t, r in enumerate(rewards)))


def upper_bound(values: np.ndarray, confidence: float) -> float:
    """One-sided Student-t upper confidence bound of the mean of `values`."""
    if len(values) < 2:
        return float("inf")
    return float(values.mean() + stats.t.ppf(confidence, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))


# ---------------------------------------------------------------------------------------------- training


def mode_config(cfg: BenchConfig, mode: str) -> list[str]:
    """`serl train --set` overrides of one mode's run."""
    sets: dict[str, Any] = {
        "env.dense_reward": "false",
        "train.seed": cfg.seed,
        "train.max_episodes": cfg.episodes,
        "train.total_env_steps": 100 * cfg.episodes,  # above episodes x 60 steps: max_episodes ends the run
        "train.eval_episodes": cfg.eval_episodes,
        "mixing.mode": mode,
        "mixing.alpha": cfg.alpha,
        "mixing.baseline_episodes": cfg.mixer_warmup,
        "mixing.snapshot_every": cfg.check_every,
    }
    return [arg for k, v in sets.items() for arg in ("--set", f"{k}={v}")]


def train(cfg: BenchConfig, mode: str, run_dir: Path, demo_dir: Path) -> float:
    overrides = [*mode_config(cfg, mode), "--set", f"replay.demo_dir={demo_dir}"]
    return benchlib.run_logged(benchlib.serl("train", "--config", cfg.config, "--run-dir", str(run_dir), *overrides),
                               run_dir.parent / f"{run_dir.name}.serl-train.log", f"serl train ({run_dir.name})")


def training_record(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "mixing-actor-0.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


# ------------------------------------------------------------------------------------------------- checks


class Rollouts:
    """Episodes of the baseline or of a saved training policy on fixed seeds, in this process (one env; one
    jitted policy per mode, compiled once)."""

    def __init__(self, serl_cfg: Config) -> None:
        from serl_stack.envs import make_env
        from serl_stack.envs.scripted import make_scripted

        self.env = make_env(serl_cfg.env)
        self.baseline = make_scripted(serl_cfg.env)
        self.discount = serl_cfg.agent.discount
        self.max_steps = serl_cfg.env.max_episode_steps
        self._runners: dict[str, Any] = {}

    def run(self, seed: int, act: Any, mixed: Any = None) -> float:
        """One episode's discounted return; `mixed` (a MixedActing) is told where the episode begins and every
        reward, as in training."""
        obs, _ = self.env.reset(seed=seed)
        if mixed is not None:
            mixed.begin_episode()
        rewards: list[float] = []
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = self.env.step(act(obs))
            if mixed is not None:
                mixed.record_reward(float(reward))
            rewards.append(float(reward))
            done = terminated or truncated
        return discounted_return(rewards, self.discount)

    def baseline_values(self, seeds: range) -> np.ndarray:
        return np.array([self.run(s, self.baseline) for s in seeds])

    def runner(self, mode_cfg: Config) -> Any:
        """The actor's PolicyRunner for a mode (with the critic when the mode mixes), made once."""
        from serl_stack.inference import PolicyRunner

        mode = mode_cfg.mixing.mode
        if mode not in self._runners:
            obs, _ = self.env.reset(seed=0)
            samples = mode_cfg.mixing.value_samples if mode != "off" else 0
            self._runners[mode] = PolicyRunner(obs, int(np.prod(self.env.action_space.shape)), mode_cfg.agent,
                                               critic_samples=samples)
        return self._runners[mode]

    def snapshot_values(self, mode_cfg: Config, snapshot: dict[str, Any], seeds: range, rng_seed: int) -> np.ndarray:
        """Discounted returns of the policy a training episode ran (see the module docstring)."""
        import jax

        from serl_stack.mixing import MixedActing

        runner = self.runner(mode_cfg)
        runner.params, runner.version = None, -1
        if snapshot["params"] is not None:
            runner.load(0, snapshot["params"])
        key = jax.random.PRNGKey(rng_seed)
        rng = np.random.default_rng(rng_seed)
        space = self.env.action_space
        space.seed(rng_seed)
        values = []
        for seed in seeds:
            key, episode_key = jax.random.split(key)
            keys = iter(jax.random.split(episode_key, self.max_steps))
            if snapshot["mixer"] is None:  # mode off: the learned policy, or the random warm-up before it
                if runner.params is None:
                    values.append(self.run(seed, lambda _o: space.sample()))
                else:
                    values.append(self.run(seed, lambda o, k=keys: runner.act(o, next(k), False)))
                continue
            mixer = copy.deepcopy(snapshot["mixer"])  # a fresh copy per rollout: episodes must not teach it
            if hasattr(mixer, "rng"):
                mixer.rng = np.random.default_rng(int(rng.integers(2**31)))  # EpsMix: its own coin per rollout
            acting = MixedActing(mixer, self.baseline, runner)
            values.append(self.run(seed, lambda o, a=acting, k=keys: a.act(o, next(k)), acting))
        return np.array(values)

    def close(self) -> None:
        self.env.close()


def check_run(cfg: BenchConfig, rollouts: Rollouts, mode_cfg: Config, run_dir: Path, threshold: float
              ) -> list[dict[str, Any]]:
    """Every snapshot of one run: its value (mean, upper bound) and whether it violates the constraint."""
    from serl_stack.mixing import load_snapshot, snapshots

    rows = []
    seeds = range(cfg.check_seed, cfg.check_seed + cfg.check_rollouts)
    for path in snapshots(run_dir):
        snap = load_snapshot(path)
        values = rollouts.snapshot_values(mode_cfg, snap, seeds, rng_seed=cfg.seed * 100_003 + snap["episode"])
        upper = upper_bound(values, cfg.confidence)
        rows.append({"episode": int(snap["episode"]), "value": float(values.mean()), "upper": upper,
                     "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                     "violation": bool(upper < threshold)})
    return rows


# ------------------------------------------------------------------------------------------------ report


def mode_summary(cfg: BenchConfig, checks: list[dict[str, Any]], record: list[dict[str, Any]],
                 final: dict[str, Any], wall: float) -> dict[str, Any]:
    mixed = [r for r in record if not r.get("warmup", 0.0)]
    tail = record[-cfg.check_every * 2:] if record else []
    out: dict[str, Any] = {
        "checked_episodes": len(checks),
        "violations": sum(c["violation"] for c in checks),
        "violation_rate": (sum(c["violation"] for c in checks) / len(checks)) if checks else None,
        "final_success": final.get("success_rate"),
        "env_steps": final.get("env_steps"),
        "wall_s": round(wall, 1),
        "checks": checks,
    }
    if record:  # the mixers' own log (mode off has none)
        out["mixing"] = {
            "warmup_episodes": len(record) - len(mixed),
            "learned_episodes": sum(r.get("learned_steps", 0) > 0 for r in mixed),
            "learned_step_fraction": (sum(r.get("learned_steps", 0) for r in record)
                                      / max(1, sum(r["length"] for r in record))),
            "mean_epsilon": float(np.mean([r["epsilon"] for r in mixed])) if mixed and "epsilon" in mixed[0]
            else None,
            "training_success_last_episodes": float(np.mean([bool(r["success"]) for r in tail])),
        }
    return out


def plot(results: dict[str, dict[str, Any]], v_b: float, threshold: float, cfg: BenchConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a benchmark machine
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    offsets = {m: (i - 1) * 0.8 for i, m in enumerate(MODES)}
    for mode, r in results.items():
        checks = r["checks"]
        ep = np.array([c["episode"] for c in checks], float) + offsets[mode]
        value = np.array([c["value"] for c in checks])
        upper = np.array([c["upper"] for c in checks])
        ax.errorbar(ep, value, yerr=[np.zeros_like(value), upper - value], fmt="o-", markersize=4, capsize=2,
                    color=COLORS[mode], label=f"{LABELS[mode]}: {r['violations']}/{r['checked_episodes']} violations")
        bad = [c["violation"] for c in checks]
        ax.scatter(ep[bad], value[bad], marker="x", s=60, color="black", zorder=5)
    ax.axhline(v_b, color="grey", linestyle="--", linewidth=1, label=f"baseline V^b = {v_b:.3f}")
    ax.axhline(threshold, color="black", linestyle=":", linewidth=1.2, label=f"(1 - alpha) V^b, alpha = {cfg.alpha:g}")
    ax.set_xlabel("training episode k")
    ax.set_ylabel(f"value of episode k's policy (mean of {cfg.check_rollouts} discounted returns)")
    ax.set_title(f"FrankaPickCube-v0: the policy each checked episode ran (x = violation; bars: one-sided "
                 f"{cfg.confidence:.0%} upper bound)", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cfg: BenchConfig) -> tuple[dict[str, Any], Path]:
    """Train and check every mode, then the plot and the report; returns it and its path."""
    from serl_stack.config import apply_overrides

    start = time.monotonic()
    modes = benchlib.parse_modes(cfg.modes, MODES)
    base_cfg: Config = load(benchlib.ROOT / cfg.config)
    root = benchlib.runs_root(cfg.runs_dir, "conservative")
    log(f"{base_cfg.env.id}: modes {modes}, {cfg.episodes} training episodes each; run folders under {root}")
    demo_dir = root / "demos"
    demo_wall = benchlib.record_demos(cfg.config, demo_dir, cfg.demos, cfg.demo_noise)
    log(f"recorded {cfg.demos} demonstrations in {demo_wall:.0f} s")

    def cfg_of(mode: str) -> Config:
        return apply_overrides(base_cfg, mode_config(cfg, mode)[1::2])

    rollouts = Rollouts(cfg_of("off"))
    t0 = time.monotonic()
    baseline = rollouts.baseline_values(range(cfg.check_seed, cfg.check_seed + cfg.baseline_rollouts))
    v_b = float(baseline.mean())
    threshold = (1.0 - cfg.alpha) * v_b
    log(f"V^b = {v_b:.4f} from {len(baseline)} baseline rollouts ({time.monotonic() - t0:.0f} s); "
        f"(1 - alpha) V^b = {threshold:.4f}")
    results: dict[str, dict[str, Any]] = {}
    for mode in modes:
        run_dir = root / f"{mode}-s{cfg.seed}"
        log(f"{mode}: training {cfg.episodes} episodes")
        wall = train(cfg, mode, run_dir, demo_dir)
        final = json.loads((run_dir / "eval.json").read_text())
        log(f"{mode}: trained in {wall:.0f} s ({final['env_steps']} env steps), final success "
            f"{final['success_rate']:.0%}; checking its snapshots")
        t0 = time.monotonic()
        checks = check_run(cfg, rollouts, cfg_of(mode), run_dir, threshold)
        results[mode] = mode_summary(cfg, checks, training_record(run_dir), final, wall)
        results[mode]["check_s"] = round(time.monotonic() - t0, 1)
        log(f"{mode}: {results[mode]['violations']}/{len(checks)} checked episodes violate "
            f"({results[mode]['check_s']:.0f} s of checks)")
    rollouts.close()

    # Every target is in the report whatever `--modes` ran: one whose modes did not run was not shown (false).
    targets: dict[str, bool] = {}
    off_success = results.get("off", {}).get("final_success")
    for mode in ("epsmix", "stepmix"):
        rate = results[mode]["violation_rate"] if mode in results else None
        targets[f"{mode}_violation_rate_le_{cfg.max_violation_rate:g}"] = rate is not None and (
            rate <= cfg.max_violation_rate)
        success = results[mode]["final_success"] if mode in results else None
        targets[f"{mode}_final_success_within_{cfg.max_success_gap:g}_of_off"] = (
            off_success is not None and success is not None and off_success - success <= cfg.max_success_gap + 1e-9)
    out_dir = benchlib.out_dir(cfg.out_dir)
    png = out_dir / "conservative.png"
    plot(results, v_b, threshold, cfg, png)
    report = {
        "benchmark": "conservative",
        "env": base_cfg.env.id,
        "v_b": v_b,
        "v_b_std": float(baseline.std(ddof=1)) if len(baseline) > 1 else 0.0,
        "threshold": threshold,
        **results,
        "targets": targets,
        "notes": {
            "value": "mean discounted return (discount = agent.discount) of check_rollouts episodes of the policy "
                     "the checked training episode ran, on the baseline's first initial states",
            "violation": "the one-sided upper confidence bound of that mean is below (1 - alpha) V^b",
            "final_success": "the learned policy's deterministic final evaluation (train.eval_episodes episodes)",
        },
        "settings": {**dataclasses.asdict(cfg), "discount": base_cfg.agent.discount,
                     "utd": base_cfg.agent.utd, "num_critics": base_cfg.agent.num_critics,
                     "start_steps": base_cfg.train.start_steps, "dense_reward": False},
        "machine": benchlib.machine_info(),
        "plot": str(png),
        "date": time.strftime("%Y-%m-%d"),
        "wall_s": round(time.monotonic() - start, 1),
    }
    return report, benchlib.write_report(out_dir, "conservative", report, log)


def main(argv: list[str] | None = None) -> None:
    cfg = benchlib.parse_config(BenchConfig, QUICK, __doc__.split("\n\n")[0], argv)
    benchlib.require_positive(cfg, ("episodes", "mixer_warmup", "baseline_rollouts", "check_every",
                                    "check_rollouts", "demos", "eval_episodes"))
    if not 0 < cfg.alpha < 1:
        raise SystemExit(f"--alpha: got {cfg.alpha}, expected in (0, 1)")
    os.environ.setdefault("MUJOCO_GL", "egl")
    benchlib.finish(*run(cfg))


if __name__ == "__main__":
    main()
