"""Sample-efficiency benchmark: env steps to 80 % and 90 % success with 20 demonstrations, our RLPD-style learner
against a like-for-like SBX SAC, on pick-cube and peg-insert from state (issue 16).

Owns: the two tasks and their targets, running both learners on them over the same seeds and the same recorded
demonstrations, the evaluation schedule and stop rule they share, the rule for "steps to a level", merging a
separate invocation's learners into the report in `--out-dir`, the report `sample_efficiency.json` (with its
`targets` map) and the learning curves `sample_efficiency.png`. The SBX baseline itself (its worker, replay and
the list of what still differs from ours) is `sbx_baseline.py`. `--out-dir` defaults to a fresh `runs/bench-<time>/`;
`--out-dir docs` updates the committed figures; a missed target exits 1.

Tasks (everything about a learner comes from the task's serl config; the benchmark only sets the run's seed,
length, evaluation schedule, stop rule and demonstrations with `--set`, and for a task with `bc_prior` ours' prior):

- pick_cube: `configs/rlpd_cpu_pick_cube.yaml` with a BC prior for ours (`Task.bc_prior`: `serl train-bc` on the
  run's demonstrations, then `agent.bc.enabled`, `agent.bc.init_actor_from_bc` and `agent.bc.prior_run`; issue 17's
  demonstration regularization, whose benchmark measured it beside SAC + demos alone); target 90 % within 15,000
  env steps (median of the seeds), and no seed above 20,000. Cap 30,000.
- peg_insert: `configs/rlpd_cpu_peg_insert.yaml` with a BC prior for ours (as pick_cube); target 90 % within 20,000
  env steps (median). Cap 40,000.

Per task, one `serl record-demos --keep <demos> --noise <demo-noise>` (successful scripted episodes only) feeds
both learners; the report keeps a digest of each learner's demonstrations (`same_demos`).

- ours: `serl train --config <task yaml>` with `replay.demo_dir` (a `replay.demo_fraction` share of every
  minibatch from the demos), `train.seed`, `train.eval_every`, `train.eval_every_episodes`,
  `train.stop_at_success=0.9`, `train.stop_after_evals=2`, `train.total_env_steps` = the cap (2x the target) and
  `train.eval_episodes` (its final evaluation) = `--eval-episodes`. Runs one after another, never beside anything
  else: each run's wall-clock seconds are a target.
- sbx (`sbx_baseline.py`): `sbx.SAC` in a freshly spawned worker per run, like for like: the observation vector our
  agent sees (`agent.obs_keys`, same order), `n_critics = agent.num_critics`, `layer_norm = agent.critic_layer_norm`,
  `gradient_steps = policy_delay = agent.utd` (utd critic steps, then one actor and temperature step, as ours), hidden
  dims, batch, learning rates, tau, discount, initial temperature, target entropy `-agent.target_entropy_scale * |A|`,
  `learning_starts = train.start_steps`, observations normalized by SB3's `VecNormalize(norm_obs=True,
  norm_reward=False)` when `agent.normalize_observations` (SB3's replay stores the original observations and normalizes
  them at sample time with the current statistics; the statistics start from the demonstrations' observations), and the
  same demonstrations in `DemoReplayBuffer`, a ReplayBuffer that fills `replay.demo_fraction` of every minibatch from
  them. What still differs is listed in the report's `differences`.

Env steps = training transitions: warm-up included, evaluation episodes excluded (ours: the learner's count of
transitions received, `eval.json`'s `env_steps`; SBX: `num_timesteps` of the training env). Every `eval_every`
env steps after the warm-up (the first multiple of `eval_every` above `train.start_steps`) each run evaluates
`eval_episodes` deterministic episodes on the held-out seeds `train.eval_seed + i` (ours: in its actor, logged by
the learner; SBX: a callback on a separate env, observations normalized with the training statistics). A run
ends after two consecutive evaluations at or above 90 %, or at its cap.

Steps to a level (80 % and 90 %): the env step of the second of the first two consecutive evaluations at or above
it (success rates read back from TensorBoard are float32, 18/20 reads 0.89999998: compared with 1e-6 slack). A run
that never gets there is censored at its cap: `null` with `censored: true`. Medians over seeds rank a censored run
above every number; a median that falls on one is `null` with `median_censored: true`, never the cap.

The curve of a learner: per evaluation step, the mean success over its seeds with a 95 % Wilson interval on the
pooled episodes of that evaluation (seeds x eval_episodes); a run that stopped early keeps its last evaluation
for the later steps (`live_seeds` counts the runs actually evaluated there).

Targets (ours only, computed from the report, false when data is missing: fewer than 3 seeds of ours on a task,
or a task run with other than the canonical settings: `--demos 20 --demo-noise 0.1 --eval-every 1000
--eval-episodes 20` and the cap at 2x the target): `pick_cube_90pct_median_le_15000`,
`pick_cube_90pct_every_seed_le_20000`, `peg_insert_90pct_median_le_20000`, `ours_each_run_le_600s`,
`ours_all_runs_le_5400s` (the last two need both tasks). SBX's figures sit beside ours, with no target.

A `--learners sbx` invocation merges into the `sample_efficiency.json` already in `--out-dir`: the learners and
tasks it does not run are kept, those it runs are replaced, and everything derived is recomputed; it refuses
(before running anything) when a kept learner of a task it runs was measured with other settings. The report is
rewritten after every run, so an interrupted invocation keeps what it finished. Run folders go under `runs/`
(gitignored); progress goes to stderr.

    .venv/bin/python benchmarks/sample_efficiency.py [--quick] [--tasks pick_cube,peg_insert] [--learners ours,sbx]
        [--seeds 3] [--out-dir docs]
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import benchlib
import numpy as np
import sbx_baseline

from serl_stack.config import load, to_dict

ROOT = benchlib.ROOT
NAME = "sample_efficiency"
SCHEMA = 2
"""Version of the report's layout; a report of another version in --out-dir is replaced, not merged."""
WORKER_TIMEOUT_S = 3 * 3600.0
LEARNERS = ("ours", "sbx")
LEVELS = (0.8, 0.9)
STOP_LEVEL = 0.9
"""Success rate that ends a run once `CONSECUTIVE` evaluations in a row reach it."""
CONSECUTIVE = 2
SLACK = 1e-6
"""TensorBoard stores float32: 18/20 reads back as 0.89999998."""
CAP_FACTOR = 2
MIN_SEEDS = 3
RUN_WALL_TARGET_S = 600.0
ALL_RUNS_WALL_TARGET_S = 5400.0
BC_PRIOR_SETS = ("agent.bc.enabled=true", "agent.bc.init_actor_from_bc=true")
"""With `agent.bc.prior_run=<the run's prior>`: what `Task.bc_prior` adds to ours' overrides (the rest of
`agent.bc.*` stays at the config's values: dual lambda toward the KL target, Q normalized)."""
MERGE_KEYS = ("config_digest", "cap", "eval_every", "eval_episodes", "demos", "demo_noise", "bc_prior")
"""Task settings that must match for one learner's results to be kept beside another's."""
RAW_LEARNER_KEYS = ("runs", "demos_digest", "machine", "date", "versions")
"""What a learner's entry holds that is measured, not derived (the rest is recomputed on every write)."""


@dataclass(frozen=True)
class Task:
    config: str
    """The serl config both learners read (env, agent, replay and train settings)."""
    target_steps: int
    """Ours: 90 % within this many env steps, median of the seeds."""
    every_seed_max: int | None = None
    """Ours: additionally no seed above this many env steps (None: no such target)."""
    bc_prior: bool = False
    """Ours: before each run, `serl train-bc` on the run's demonstrations (its seed, the defaults), and the run's
    actor regularized toward that prior and started from its weights (`BC_PRIOR_SETS`: issue 17's demonstration
    regularization). The prior's training counts in the run's wall-clock. SBX has no counterpart (`differences`)."""


TASKS = {
    "pick_cube": Task("configs/rlpd_cpu_pick_cube.yaml", 15_000, 20_000, bc_prior=True),
    "peg_insert": Task("configs/rlpd_cpu_peg_insert.yaml", 20_000, bc_prior=True),
}


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of the runs; every field is a command-line flag (`--seeds 3`)."""

    tasks: str = ",".join(TASKS)
    """Comma-separated tasks to run (pick_cube, peg_insert)."""
    learners: str = ",".join(LEARNERS)
    """Comma-separated learners to run (ours, sbx); the others already in --out-dir's report are kept."""
    seeds: int = 3
    """Training seeds 0 .. seeds-1, each run by every learner."""
    demos: int = 20
    """Successful scripted demonstrations recorded per task (`serl record-demos --keep`)."""
    demo_noise: float = 0.1
    """Std of the Gaussian noise on the scripted demonstrator's actions."""
    eval_every: int = 1_000
    """Env steps between evaluations."""
    eval_episodes: int = 20
    """Deterministic episodes per evaluation, on seeds train.eval_seed + i."""
    cap_steps: int = 0
    """Env steps a run may take at most; 0: twice the task's target (30,000 pick_cube, 40,000 peg_insert)."""
    out_dir: str = ""
    """Where sample_efficiency.json and .png go (relative to the repository root); empty: a fresh
    runs/bench-<time>/; `docs` updates the committed figures. A report already there is merged into."""
    runs_dir: str = "runs"
    """Parent folder of this benchmark's run folders (gitignored)."""


QUICK = BenchConfig(seeds=1, demos=2, eval_every=500, eval_episodes=2, cap_steps=2_000)
CANONICAL = BenchConfig()


def log(msg: str) -> None:
    print(f"[{NAME} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ rules


def at_level(success: float, level: float) -> bool:
    """One evaluation's success rate at or above `level` (with SLACK for float32 read-backs)."""
    return bool(success >= level - SLACK)


def steps_to_level(steps: list[int], success: list[float], level: float) -> int | None:
    """The env step of the second of the first `CONSECUTIVE` evaluations in a row at or above `level`, or None
    (the run is censored at its cap)."""
    streak = 0
    for step, value in zip(steps, success, strict=True):
        streak = streak + 1 if at_level(value, level) else 0
        if streak == CONSECUTIVE:
            return int(step)
    return None


def level_summary(runs: list[dict[str, Any]], level: float, cap: int) -> dict[str, Any]:
    per_seed = [steps_to_level(r["eval_env_steps"], r["eval_success"], level) for r in runs]
    median, median_censored = benchlib.censored_median(per_seed)
    return {"per_seed": per_seed, "censored": [v is None for v in per_seed], "cap": cap,
            "median": median, "median_censored": median_censored}


def mean_curve(runs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Per evaluation step (the union over runs): mean success over the runs evaluated by then and its 95 %
    Wilson interval on their pooled episodes; a run carries its last evaluation forward after it stopped."""
    grid = sorted({int(s) for r in runs for s in r["eval_env_steps"]})
    out: dict[str, list[Any]] = {"env_steps": [], "mean_success": [], "ci95_low": [], "ci95_high": [],
                                 "live_seeds": []}
    for step in grid:
        wins = episodes = live = 0
        for r in runs:
            done = [i for i, s in enumerate(r["eval_env_steps"]) if s <= step]
            if not done:
                continue
            i = done[-1]
            live += int(r["eval_env_steps"][i] == step)
            wins += round(r["eval_success"][i] * r["eval_episodes"])
            episodes += r["eval_episodes"]
        low, high = benchlib.wilson_interval(wins, episodes)
        for key, value in (("env_steps", step), ("mean_success", round(wins / episodes, 4)),
                           ("ci95_low", round(low, 4)), ("ci95_high", round(high, 4)), ("live_seeds", live)):
            out[key].append(value)
    return out


def summarize(runs: list[dict[str, Any]], cap: int) -> dict[str, Any]:
    """What the report derives from one learner's runs on one task."""
    wall = [round(r["wall_s"], 1) for r in runs]
    return {
        "seeds": [r["seed"] for r in runs],
        **{f"steps_to_{round(100 * lv)}pct": level_summary(runs, lv, cap) for lv in LEVELS},
        "wall_s": wall,
        "wall_s_total": round(sum(wall), 1),
        "env_steps": [r["env_steps"] for r in runs],
        "env_steps_per_s": [round(r["env_steps"] / r["wall_s"], 1) for r in runs],
        "updates_per_s": [None if r.get("updates_per_s") is None else round(r["updates_per_s"], 1) for r in runs],
        "curve": mean_curve(runs),
    }


def targets_of(tasks: dict[str, Any]) -> dict[str, bool]:
    """The `targets` map from the report's tasks (each with `canonical`, `learners.ours.runs`, its summary)."""

    def ours(task: str) -> dict[str, Any] | None:
        entry = tasks.get(task, {})
        learner = entry.get("learners", {}).get("ours")
        if not entry.get("canonical") or not learner or len(learner["runs"]) < MIN_SEEDS:
            return None
        return learner

    targets: dict[str, bool] = {}
    for name, task in TASKS.items():
        learner = ours(name)
        level = learner["steps_to_90pct"] if learner else None
        median = level["median"] if level else None
        targets[f"{name}_90pct_median_le_{task.target_steps}"] = median is not None and median <= task.target_steps
        if task.every_seed_max is not None:
            targets[f"{name}_90pct_every_seed_le_{task.every_seed_max}"] = level is not None and all(
                v is not None and v <= task.every_seed_max for v in level["per_seed"])
    learners = [ours(name) for name in TASKS]
    complete = all(learner is not None for learner in learners)
    walls = [r["wall_s"] for learner in learners if learner for r in learner["runs"]]
    targets[f"ours_each_run_le_{RUN_WALL_TARGET_S:.0f}s"] = complete and all(w <= RUN_WALL_TARGET_S for w in walls)
    targets[f"ours_all_runs_le_{ALL_RUNS_WALL_TARGET_S:.0f}s"] = complete and sum(walls) <= ALL_RUNS_WALL_TARGET_S
    return targets


# ------------------------------------------------------------------------------------------------ runs


def run_overrides(cfg: BenchConfig, task: str, seed: int, demo_dir: Path) -> list[str]:
    """The `--set` overrides of one run: only seed, length, evaluation, stop rule and demonstrations."""
    return [
        f"train.seed={seed}", f"train.total_env_steps={cap_of(cfg, task)}", f"train.eval_every={cfg.eval_every}",
        f"train.eval_every_episodes={cfg.eval_episodes}", f"train.eval_episodes={cfg.eval_episodes}",
        f"train.stop_at_success={STOP_LEVEL}", f"train.stop_after_evals={CONSECUTIVE}", f"replay.demo_dir={demo_dir}",
    ]


def cap_of(cfg: BenchConfig, task: str) -> int:
    return cfg.cap_steps or CAP_FACTOR * TASKS[task].target_steps


def ours_overrides(cfg: BenchConfig, task: str, seed: int, demo_dir: Path, prior: Path | None) -> list[str]:
    """`run_overrides`, plus `BC_PRIOR_SETS` and the prior's folder when the task has `bc_prior`."""
    sets = run_overrides(cfg, task, seed, demo_dir)
    if TASKS[task].bc_prior:
        if prior is None:
            raise ValueError(f"task {task}: bc_prior is set, expected the run's `serl train-bc` folder")
        sets += [*BC_PRIOR_SETS, f"agent.bc.prior_run={prior}"]
    return sets


def train_prior(task: str, seed: int, out: Path, demo_dir: Path, episodes: int = 0) -> float:
    """`serl train-bc --seed <seed>` on the demonstrations into `out`, then `episodes` evaluation episodes (none for
    ours' prior); its wall-clock seconds."""
    cmd = benchlib.serl("train-bc", "--config", TASKS[task].config, "--demos", str(demo_dir), "--out", str(out),
                        "--seed", str(seed), "--episodes", str(episodes))
    return benchlib.run_logged(cmd, out.parent / f"{out.name}.train-bc.log", f"serl train-bc ({out.name})")


def run_ours(cfg: BenchConfig, task: str, seed: int, run_dir: Path, demo_dir: Path) -> dict[str, Any]:
    from serl_stack.runlog import evaluations, event_files, read_scalars

    prior = run_dir.parent / f"{run_dir.name}-bc-prior" if TASKS[task].bc_prior else None
    prior_s = train_prior(task, seed, prior, demo_dir) if prior is not None else 0.0
    sets = [x for s in ours_overrides(cfg, task, seed, demo_dir, prior) for x in ("--set", s)]
    wall = prior_s + benchlib.run_logged(
        benchlib.serl("train", "--config", TASKS[task].config, "--run-dir", str(run_dir), *sets),
        run_dir.parent / f"{run_dir.name}.serl-train.log", f"serl train ({run_dir.name})")
    evals = evaluations(run_dir)
    final = json.loads((run_dir / "eval.json").read_text())
    ups = [v for f in event_files(run_dir) for tag, _, v in read_scalars(f) if tag == "learner/updates_per_s"]
    # The last row is the final evaluation (train.eval_episodes after the run); the others are the periodic ones.
    return {"seed": seed, "eval_env_steps": [int(s) for s in evals["env_steps"][:-1]],
            "eval_success": [float(v) for v in evals["success_rate"][:-1]], "eval_episodes": cfg.eval_episodes,
            "env_steps": int(final["env_steps"]), "wall_s": round(wall, 1),
            "updates_per_s": float(np.median(ups)) if ups else None, "final_success": final.get("success_rate"),
            "bc_prior_s": round(prior_s, 1) if prior is not None else None, "run_dir": str(run_dir)}


def run_sbx(cfg: BenchConfig, task: str, seed: int, demo_dir: Path) -> dict[str, Any]:
    run = sbx_baseline.SacRun(
        config=ROOT / TASKS[task].config, overrides=tuple(run_overrides(cfg, task, seed, demo_dir)), seed=seed,
        demo_dir=demo_dir, eval_every=cfg.eval_every, eval_episodes=cfg.eval_episodes, stop_after=CONSECUTIVE,
        at_stop_level=functools.partial(at_level, level=STOP_LEVEL))
    # A fresh process per run: JAX state, threads and compiled code do not carry over between runs.
    start = time.monotonic()
    result = benchlib.run_in_worker(sbx_baseline.train_sac, (run,), f"sbx {task} seed {seed}", WORKER_TIMEOUT_S)
    return {**result, "wall_s": round(time.monotonic() - start, 1)}


# ------------------------------------------------------------------------------------------------ report


def task_settings(cfg: BenchConfig, task: str) -> dict[str, Any]:
    serl_cfg = load(ROOT / TASKS[task].config)
    digest = hashlib.sha256(json.dumps(to_dict(serl_cfg), sort_keys=True).encode()).hexdigest()[:16]
    agent = to_dict(serl_cfg.agent)
    return {
        "config": TASKS[task].config, "config_digest": digest, "env": serl_cfg.env.id,
        "target_steps": TASKS[task].target_steps, "every_seed_max": TASKS[task].every_seed_max,
        "cap": cap_of(cfg, task), "eval_every": cfg.eval_every, "eval_episodes": cfg.eval_episodes,
        "demos": cfg.demos, "demo_noise": cfg.demo_noise, "start_steps": serl_cfg.train.start_steps,
        "eval_seed": serl_cfg.train.eval_seed, "demo_fraction": serl_cfg.replay.demo_fraction,
        "agent": {k: agent[k] for k in ("hidden_dims", "num_critics", "critic_subset", "critic_layer_norm",
                                              "utd", "batch_size", "actor_lr", "critic_lr", "temp_lr", "discount",
                                              "tau", "init_temperature", "target_entropy_scale", "obs_keys",
                                              "normalize_observations", "obs_norm_refresh")},
        "bc_prior": TASKS[task].bc_prior,
        "differences": [*sbx_baseline.differences(serl_cfg), *([
            "demonstrations: ours also regularizes its actor toward a behaviour-cloned prior trained on the same "
            "demonstrations before the run (KL with a dual-descent weight, agent.bc.*) and starts it from the "
            "prior's weights; SBX only samples them in its replay"] if TASKS[task].bc_prior else [])],
    }


def is_canonical(settings: dict[str, Any]) -> bool:
    """Whether a task was run with the settings its targets are defined for (issue 16's)."""
    want = {"demos": CANONICAL.demos, "demo_noise": CANONICAL.demo_noise, "eval_every": CANONICAL.eval_every,
            "eval_episodes": CANONICAL.eval_episodes, "cap": CAP_FACTOR * settings["target_steps"]}
    return all(settings.get(k) == v for k, v in want.items())


def existing_tasks(report: dict[str, Any] | None) -> dict[str, Any]:
    """The measured part of a report already in --out-dir: task -> {"settings", "demos", "learners": {name: raw}}
    (empty for none, or one of another layout, which is then replaced)."""
    if report is None:
        return {}
    if report.get("schema") != SCHEMA:
        log(f"the {NAME}.json in --out-dir has schema {report.get('schema')!r}, not {SCHEMA}: replacing it")
        return {}
    return {task: {"settings": entry["settings"], "demos": entry.get("demos"),
                   "learners": {name: {k: raw[k] for k in RAW_LEARNER_KEYS if k in raw}
                                for name, raw in entry.get("learners", {}).items()}}
            for task, entry in report.get("tasks", {}).items()}


def check_mergeable(tasks: dict[str, Any], settings: dict[str, dict[str, Any]], learners: list[str]) -> None:
    """SystemExit when a learner this invocation keeps was measured on a task it runs with other settings."""
    for task, new in settings.items():
        old = tasks.get(task)
        kept = [name for name in (old or {}).get("learners", {}) if name not in learners]
        if not old or not kept:
            continue
        changed = {k: (old["settings"].get(k), new.get(k)) for k in MERGE_KEYS if old["settings"].get(k) != new.get(k)}
        if changed:
            raise SystemExit(f"{task}: the report in --out-dir holds {kept} measured with other settings "
                             f"(report, now: {changed}); expected the same to keep them beside {learners}: rerun "
                             "every learner, or use another --out-dir")


def begin_task(tasks: dict[str, Any], task: str, settings: dict[str, Any], learners: list[str]) -> dict[str, Any]:
    """The merge: `task`'s entry in `tasks` with this invocation's settings, the learners it does not run kept
    (`check_mergeable` has vouched for them) and those it runs removed until their new runs come in."""
    entry = tasks.setdefault(task, {"learners": {}})
    entry["settings"] = settings
    entry["learners"] = {k: v for k, v in entry["learners"].items() if k not in learners}
    return entry


def build_report(tasks: dict[str, Any], cfg: BenchConfig, started: float) -> dict[str, Any]:
    """The whole report from the measured tasks (derived figures recomputed, targets included)."""
    out: dict[str, Any] = {}
    for task, entry in tasks.items():
        learners = {name: {**raw, **summarize(raw["runs"], entry["settings"]["cap"])}
                    for name, raw in entry["learners"].items() if raw.get("runs")}
        digests = {raw.get("demos_digest") for raw in learners.values()}
        out[task] = {**entry, "canonical": is_canonical(entry["settings"]), "learners": learners,
                     "same_demos": len(digests) == 1 and None not in digests}
    ordered = {task: out[task] for task in TASKS if task in out}
    return {
        "benchmark": NAME,
        "schema": SCHEMA,
        "tasks": ordered,
        "targets": targets_of(ordered),
        "differences": list(dict.fromkeys(d for e in ordered.values() for d in e["settings"]["differences"])),
        "notes": {
            "steps_to_level": f"env step of the second of {CONSECUTIVE} consecutive evaluations at or above the "
                              f"level ({SLACK:g} slack for float32); null with censored: true = never, the run was "
                              "capped at cap; median_censored: the median falls on a censored run (> cap)",
            "curve": "mean success over seeds per evaluation step with a 95 % Wilson interval on the pooled "
                     "episodes (seeds x eval_episodes); a stopped run carries its last evaluation forward; "
                     "live_seeds: runs evaluated at that step",
            "env_steps": "training transitions, warm-up included, evaluation episodes excluded (ours: eval.json's "
                         "env_steps, SBX: num_timesteps)",
            "wall_s": "ours: the serl train subprocess, plus its serl train-bc (bc_prior_s) on a bc_prior task; "
                      "SBX: the spawned worker (learn_s: learn() alone)",
            "targets": f"ours only; false without {MIN_SEEDS} seeds of ours on a canonical task (--demos "
                       f"{CANONICAL.demos} --demo-noise {CANONICAL.demo_noise} --eval-every {CANONICAL.eval_every} "
                       f"--eval-episodes {CANONICAL.eval_episodes}, cap {CAP_FACTOR}x target); the wall-clock ones "
                       "need both tasks",
        },
        "invocation": {**asdict(cfg), "machine": benchlib.machine_info(), "date": time.strftime("%Y-%m-%d %H:%M"),
                       "wall_s": round(time.monotonic() - started, 1)},
    }


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a benchmark machine
    import matplotlib.pyplot as plt

    tasks = report["tasks"]
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(6.5 * max(1, len(tasks)), 4.5), squeeze=False)
    colors = {"ours": "tab:blue", "sbx": "tab:orange"}
    labels = {"ours": "ours", "sbx": "SBX SAC"}
    for ax, entry in zip(axes[0], tasks.values(), strict=False):
        s = entry["settings"]
        for name, learner in entry["learners"].items():
            label = labels[name] + (" + BC prior" if name == "ours" and s.get("bc_prior") else "")
            benchlib.plot_success_curves(ax, learner["runs"], learner["curve"], learner["steps_to_90pct"],
                                         colors[name], f"{label}: mean of {len(learner['runs'])} seeds")
        ax.axvline(s["target_steps"], color="red", linestyle="--", linewidth=1,
                   label=f"target: 90 % by {s['target_steps']} steps")
        benchlib.style_success_axes(ax, STOP_LEVEL, max(s["cap"], s["target_steps"]),  # a --quick cap is below it
                                    s["eval_episodes"], f"{s['env']} from state, {s['demos']} demos "
                                    "(shaded: 95 % Wilson)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def publish(tasks: dict[str, Any], cfg: BenchConfig, out_dir: Path, started: float) -> tuple[dict[str, Any], Path]:
    report = {**build_report(tasks, cfg, started), "plot": str(out_dir / f"{NAME}.png")}
    plot(report, Path(report["plot"]))
    return report, benchlib.write_report(out_dir, NAME, report, log)


def run(cfg: BenchConfig) -> tuple[dict[str, Any], Path]:
    """Every chosen learner on every chosen task and seed, merged into --out-dir's report after each run."""
    started = time.monotonic()
    tasks_now = benchlib.parse_choices(cfg.tasks, tuple(TASKS), "--tasks")
    learners = benchlib.parse_choices(cfg.learners, LEARNERS, "--learners")
    out_dir = benchlib.out_dir(cfg.out_dir)
    tasks = existing_tasks(benchlib.load_report(out_dir, NAME))
    settings = {task: task_settings(cfg, task) for task in tasks_now}
    check_mergeable(tasks, settings, learners)  # before anything runs
    root = benchlib.runs_root(cfg.runs_dir, NAME)
    versions = {"serl_stack": metadata.version("serl_stack"), "jax": metadata.version("jax")}
    if "sbx" in learners:
        versions |= {"sbx": metadata.version("sbx-rl"), "stable_baselines3": metadata.version("stable_baselines3")}
    log(f"tasks {tasks_now}, learners {learners}, {cfg.seeds} seeds; run folders under {root}; report in {out_dir}")
    published: tuple[dict[str, Any], Path] | None = None
    for task in tasks_now:
        entry = begin_task(tasks, task, settings[task], learners)
        demo_dir = root / f"demos-{task}"
        recording_s = benchlib.record_demos(TASKS[task].config, demo_dir, cfg.demos, cfg.demo_noise)
        digest = benchlib.demos_digest(demo_dir)
        entry["demos"] = {"episodes": cfg.demos, "noise": cfg.demo_noise, "recording_s": round(recording_s, 1),
                          "dir": str(demo_dir)}
        log(f"{task}: recorded {cfg.demos} demonstrations in {recording_s:.0f} s (digest {digest})")
        for name in learners:
            raw = entry["learners"][name] = {"runs": [], "demos_digest": digest, "versions": versions,
                                             "machine": benchlib.machine_info(),
                                             "date": time.strftime("%Y-%m-%d %H:%M")}
            for seed in range(cfg.seeds):
                log(f"{task} {name} seed {seed}: started (cap {cap_of(cfg, task)} env steps)")
                if name == "ours":
                    r = run_ours(cfg, task, seed, root / f"{task}-ours-s{seed}", demo_dir)
                else:
                    r = run_sbx(cfg, task, seed, demo_dir)
                raw["runs"].append(r)
                reached = steps_to_level(r["eval_env_steps"], r["eval_success"], STOP_LEVEL)
                log(f"{task} {name} seed {seed}: " + (f"90 % at {reached} env steps" if reached is not None else
                                                      f"censored at {r['env_steps']} env steps")
                    + f", {r['wall_s']:.0f} s")
                published = publish(tasks, cfg, out_dir, started)
    assert published is not None  # at least one task, learner and seed ran
    return published


def main(argv: list[str] | None = None) -> None:
    cfg = benchlib.parse_config(BenchConfig, QUICK, __doc__.split("\n\n")[0], argv)
    benchlib.require_positive(cfg, ("seeds", "demos", "eval_every", "eval_episodes"))
    if cfg.cap_steps < 0:
        raise SystemExit(f"--cap-steps: got {cfg.cap_steps}, expected >= 0 (0: twice the task's target)")
    benchlib.finish(*run(cfg))


if __name__ == "__main__":
    main()
