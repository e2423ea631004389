"""Demonstration-regularization benchmark: does a KL to a behaviour-cloned prior (`agent.bc.*`) make RLPD-style SAC
with 20 demonstrations reach 80 % and 90 % success in fewer env steps, without the early collapse (issue 17)?

Owns: the four arms and the proof that the three learning ones differ only in `agent.bc.*`, the common cap a miss
counts at, the comparisons and the `targets` map, merging a separate `--tasks` invocation into the report in
`--out-dir`, the report `demo_regularization.json` and the learning curves `demo_regularization.png`. Everything
else is `sample_efficiency.py`'s and is imported from it, not copied: the tasks and their configs and run lengths,
the `--set` overrides of a run (seed, length, evaluation schedule, stop rule, demonstrations), the rule for "steps
to a level" (the second of two consecutive evaluations at or above it) and the mean curve; `benchlib.py` gives
demo recording and its digest, logged subprocesses, the censored median and the Wilson interval.

Per task (`configs/rlpd_cpu_pick_cube.yaml`, `configs/rlpd_cpu_peg_insert.yaml`), one `serl record-demos --keep
<demos> --noise <demo-noise>` feeds every arm and seed (each run records the digest of the demonstrations it read;
`same_demos` says whether they all equal the recording's). Every learning arm samples `replay.demo_fraction=0.5`
of each minibatch from them. Per seed:

- bc: `serl train-bc --seed <seed>` on the demonstrations, evaluated on `--bc-episodes` (100) deterministic episodes
  at seeds `train.eval_seed + i` (the held-out seeds the other arms evaluate on). It does not learn online, so its
  curve is flat: one evaluation with more episodes instead of 20 at every point.
- sac: `serl train` with the task's config and sample_efficiency's overrides (SAC + demos).
- reg: sac + `agent.bc.enabled=true agent.bc.prior_run=<that seed's bc folder>` (the config's `agent.bc.*`
  defaults: dual lambda toward a KL target, Q normalized).
- reg_init: reg + `agent.bc.init_actor_from_bc=true`.

Each run is capped at the run length (`--run-steps`; default sample_efficiency's cap: 30,000 pick_cube, 40,000
peg_insert), evaluates `--eval-episodes` episodes every `--eval-every` env steps after the warm-up and stops after
two consecutive evaluations at or above 90 %. Runs go one after another, never beside each other.

Steps to 80 % and 90 %: sample_efficiency's `steps_to_level`, then censored at a common cap per task: 2x SAC +
demos' median steps to 90 %, but never beyond the run length (nothing later is observed); when that median is
itself censored (not reached by half the seeds), the cap is the run length and `cap.rule` says so. A run whose
level comes after the cap counts as a miss (`per_seed` null; `reached_at` keeps the raw step). Medians rank a miss
above every number; a median that falls on one is null with `median_censored`, never the cap. bc: 0 env steps
when its evaluation is at or above the level, else a miss.

Curves: per evaluation step, the mean over seeds with a 95 % Wilson interval on the pooled episodes. A run that
stopped early (two evaluations at or above 90 %) is carried forward at its last measured value to later steps,
so the mean does not drop when a good seed stops (`live_seeds` counts the runs actually evaluated there).

Targets (false when data is missing: both tasks need >= 3 seeds of every arm at the canonical settings, `--demos
20 --demo-noise 0.1 --eval-every 1000 --eval-episodes 20 --bc-episodes 100` and the default run length):
- `reg_90_le_0.7x_sac_one_task`: reg's median steps to 90 % <= 0.7x sac's on at least one task;
- `reg_90_le_1.2x_sac_other`: and <= 1.2x on the other task;
- `no_early_collapse`: on each task where bc reaches >= 30 %, reg's mean curve is >= 0.8x bc's success at every
  evaluation, its first included; false (with a reason in `target_notes`) when no task has bc >= 30 %;
- `within_120_min`: every task's wall-clock (recording, bc and all runs) <= 60 min, or both tasks from one
  invocation within 120 min together.
A comparison with a censored median holds only when it holds at the cap: reg's median a number and <= factor x
the cap while sac's is censored (sac's is then above the cap); a censored reg median never holds. The same
comparisons for reg_init are in each task's `comparisons`, without targets.

`--tasks peg_insert` (or `pick_cube`) merges into the `demo_regularization.json` already in `--out-dir`: tasks it
does not run are kept, the ones it runs are replaced, everything derived is recomputed. The report is rewritten
after every run. Run folders go under `runs/demo_regularization-<time>/`; progress goes to stderr; a missed target
exits 1.

    .venv/bin/python benchmarks/demo_regularization.py [--quick] [--tasks pick_cube,peg_insert] [--seeds 3]
        [--out-dir docs]
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import benchlib
import numpy as np
import sample_efficiency as se

from serl_stack.config import load, to_dict

NAME = "demo_regularization"
SCHEMA = 1
"""Version of the report's layout; a report of another version in --out-dir is replaced, not merged."""
RL_ARMS = ("sac", "reg", "reg_init")
ARMS = ("bc", *RL_ARMS)
BC_PREFIX = "agent.bc."
"""The only override keys in which the learning arms may differ."""
DEMO_FRACTION = 0.5
LEVELS = (0.8, 0.9)
CAP_FACTOR = 2
"""A miss counts at CAP_FACTOR x sac's median steps to 90 %."""
FAST, NOT_SLOWER = 0.7, 1.2
BC_RELEVANT, COLLAPSE_FLOOR = 0.3, 0.8
TASK_WALL_S, TOTAL_WALL_S = 3600.0, 7200.0
RAW_TASK_KEYS = ("settings", "demos", "wall_s", "invocation", "machine", "versions", "date")
"""What a task's entry holds that is measured, not derived (plus each arm's `runs`)."""


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of the runs; every field is a command-line flag (`--seeds 3`)."""

    tasks: str = ",".join(se.TASKS)
    """Comma-separated tasks to run (pick_cube, peg_insert); the others already in --out-dir's report are kept."""
    seeds: int = 3
    """Seeds 0 .. seeds-1, each run by every arm (and each with its own BC prior)."""
    demos: int = 20
    """Successful scripted demonstrations recorded per task (`serl record-demos --keep`; >= 2 for train-bc)."""
    demo_noise: float = 0.1
    """Std of the Gaussian noise on the scripted demonstrator's actions."""
    eval_every: int = 1_000
    """Env steps between evaluations."""
    eval_episodes: int = 20
    """Deterministic episodes per evaluation, on seeds train.eval_seed + i."""
    bc_episodes: int = 100
    """Deterministic episodes of the BC arm's one evaluation (same seeds)."""
    run_steps: int = 0
    """Env steps a run may take at most; 0: sample_efficiency's cap (30,000 pick_cube, 40,000 peg_insert)."""
    out_dir: str = ""
    """Where demo_regularization.json and .png go (relative to the repository root); empty: a fresh
    runs/bench-<time>/; `docs` updates the committed figures. A report already there is merged into."""
    runs_dir: str = "runs"
    """Parent folder of this benchmark's run folders (gitignored)."""


QUICK = BenchConfig(seeds=1, demos=3, eval_every=500, eval_episodes=2, bc_episodes=4, run_steps=2_000)
CANONICAL = BenchConfig()


def log(msg: str) -> None:
    print(f"[{NAME} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def se_config(cfg: BenchConfig) -> se.BenchConfig:
    """The same sizes in sample_efficiency's terms, so its overrides and settings serve this benchmark."""
    return se.BenchConfig(seeds=cfg.seeds, demos=cfg.demos, demo_noise=cfg.demo_noise, eval_every=cfg.eval_every,
                          eval_episodes=cfg.eval_episodes, cap_steps=cfg.run_steps)


# ------------------------------------------------------------------------------------------------ arms


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.strip(), value


def check_only_bc_differs(overrides: dict[str, list[str]]) -> None:
    """ValueError naming the arm and keys when an arm's overrides differ from sac's outside `agent.bc.*`, set a key
    twice, or when sac itself sets `agent.bc.*`."""
    base = dict(map(_split, overrides["sac"]))
    for arm, sets in overrides.items():
        keys = [_split(s)[0] for s in sets]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"arm {arm}: overrides set {twice} more than once; expected each key once")
        mine = dict(map(_split, sets))
        wrong = sorted(k for k in base.keys() | mine.keys() if base.get(k) != mine.get(k) and
                       not k.startswith(BC_PREFIX))
        if wrong:
            raise ValueError(f"arm {arm}: overrides {wrong} differ from sac's ({[base.get(k) for k in wrong]} vs "
                             f"{[mine.get(k) for k in wrong]}); expected the arms to differ only in {BC_PREFIX}*")
    if any(k.startswith(BC_PREFIX) for k in base):
        raise ValueError(f"arm sac: sets {sorted(k for k in base if k.startswith(BC_PREFIX))}; expected no "
                         f"{BC_PREFIX}* (SAC + demos is the unregularized arm)")


def arm_overrides(cfg: BenchConfig, task: str, seed: int, demo_dir: Path, prior_dir: Path) -> dict[str, list[str]]:
    """The `--set` overrides of each learning arm for one task and seed: sample_efficiency's (seed, run length,
    evaluation, stop rule, demonstrations), 50/50 sampling, and for the regularized arms only `agent.bc.*`."""
    common = [*se.run_overrides(se_config(cfg), task, seed, demo_dir), f"replay.demo_fraction={DEMO_FRACTION}"]
    reg = [f"{BC_PREFIX}enabled=true", f"{BC_PREFIX}prior_run={prior_dir}"]
    out = {"sac": common, "reg": [*common, *reg], "reg_init": [*common, *reg, f"{BC_PREFIX}init_actor_from_bc=true"]}
    check_only_bc_differs(out)
    return out


def run_rl(task: str, seed: int, sets: list[str], run_dir: Path, eval_episodes: int, digest: str) -> dict[str, Any]:
    """One `serl train` run of a learning arm; its evaluations, env steps, wall-clock and lambda/KL diagnostics.
    (The same reading as `sample_efficiency.run_ours`, which takes no extra overrides.)"""
    from serl_stack.runlog import evaluations, event_files, read_scalars

    cmd = benchlib.serl("train", "--config", se.TASKS[task].config, "--run-dir", str(run_dir),
                        *[x for s in sets for x in ("--set", s)])
    wall = benchlib.run_logged(cmd, run_dir.parent / f"{run_dir.name}.serl-train.log", f"serl train ({run_dir.name})")
    evals = evaluations(run_dir)
    final = json.loads((run_dir / "eval.json").read_text())
    scalars: dict[str, list[float]] = {}
    for f in event_files(run_dir):
        for tag, _, v in read_scalars(f):
            scalars.setdefault(tag, []).append(v)
    ups, lam, kl = (scalars.get(f"learner/{t}", []) for t in ("updates_per_s", "bc_lambda", "bc_kl"))
    # The last row is the final evaluation (train.eval_episodes after the run); the others are the periodic ones.
    return {"seed": seed, "eval_env_steps": [int(s) for s in evals["env_steps"][:-1]],
            "eval_success": [float(v) for v in evals["success_rate"][:-1]], "eval_episodes": eval_episodes,
            "env_steps": int(final["env_steps"]), "wall_s": round(wall, 1),
            "updates_per_s": float(np.median(ups)) if ups else None, "final_success": final.get("success_rate"),
            "bc_lambda_last": lam[-1] if lam else None, "bc_kl_median": float(np.median(kl)) if kl else None,
            "demos_digest": digest, "run_dir": str(run_dir)}


def run_bc(cfg: BenchConfig, task: str, seed: int, out: Path, demo_dir: Path, digest: str) -> dict[str, Any]:
    """`serl train-bc --seed <seed>` into `out` (the reg arms' prior) and its `--bc-episodes` evaluation."""
    wall = se.train_prior(task, seed, out, demo_dir, cfg.bc_episodes)
    summary = json.loads((out / "bc.json").read_text())
    return {"seed": seed, "success": float(summary["eval"]["success_rate"]), "episodes": cfg.bc_episodes,
            "val_loss": summary["val_loss"], "best_step": summary["best_step"], "wall_s": round(wall, 1),
            "demos_digest": digest, "run_dir": str(out)}


# ------------------------------------------------------------------------------------------------ rules


def common_cap(sac_runs: list[dict[str, Any]], run_length: int) -> dict[str, Any]:
    """The env step a miss counts at: CAP_FACTOR x sac's median steps to 90 %, at most the run length; the run
    length when that median is censored (or there is no sac run)."""
    reached = [se.steps_to_level(r["eval_env_steps"], r["eval_success"], se.STOP_LEVEL) for r in sac_runs]
    median, censored = benchlib.censored_median(reached)
    if median is None:
        why = "censored (not reached within the run by half the seeds)" if censored else "unknown (no sac runs)"
        return {"value": run_length, "rule": f"run length: sac's median steps to 90 % is {why}"}
    if CAP_FACTOR * median > run_length:
        return {"value": run_length, "rule": f"run length: {CAP_FACTOR}x sac's median steps to 90 % "
                                             f"({CAP_FACTOR * median:.0f}) is beyond it"}
    return {"value": int(round(CAP_FACTOR * median)),
            "rule": f"{CAP_FACTOR}x sac's median steps to 90 % ({median:.0f})"}


def capped_level(reached: list[int | None], cap: int) -> dict[str, Any]:
    """Per-seed steps to a level with everything after `cap` a miss, and their censored median."""
    per_seed = [v if v is not None and v <= cap else None for v in reached]
    median, median_censored = benchlib.censored_median(per_seed)
    return {"reached_at": reached, "per_seed": per_seed, "censored": [v is None for v in per_seed], "cap": cap,
            "median": median, "median_censored": median_censored}


def summarize_rl(runs: list[dict[str, Any]], cap: int) -> dict[str, Any]:
    levels = {f"steps_to_{round(100 * lv)}pct": capped_level(
        [se.steps_to_level(r["eval_env_steps"], r["eval_success"], lv) for r in runs], cap) for lv in LEVELS}
    return {**se.summarize(runs, cap), **levels}


def summarize_bc(runs: list[dict[str, Any]], cap: int) -> dict[str, Any]:
    """BC's pooled success (Wilson interval) and its steps to a level: 0 when at or above it, else a miss."""
    wins = sum(round(r["success"] * r["episodes"]) for r in runs)
    episodes = sum(r["episodes"] for r in runs)
    low, high = benchlib.wilson_interval(wins, episodes)
    levels = {f"steps_to_{round(100 * lv)}pct": capped_level([0 if se.at_level(r["success"], lv) else None
                                                               for r in runs], cap) for lv in LEVELS}
    return {"seeds": [r["seed"] for r in runs], "success": round(wins / episodes, 4), "ci95_low": round(low, 4),
            "ci95_high": round(high, 4), "wall_s": [r["wall_s"] for r in runs], **levels}


def at_most(arm: dict[str, Any], sac: dict[str, Any], factor: float, cap: int) -> dict[str, Any]:
    """Whether arm's median steps to 90 % <= factor x sac's, decided only where censoring cannot change it."""
    a, s = arm["steps_to_90pct"], sac["steps_to_90pct"]
    if a["median"] is None:
        return {"holds": False, "how": "the arm's median is censored (> cap) or missing"}
    if s["median"] is None:
        bound = factor * cap
        return {"holds": a["median"] <= bound, "how": f"sac's median is censored (> {cap}): the arm's "
                f"{a['median']:.0f} against {factor} x the cap = {bound:.0f}"}
    return {"holds": a["median"] <= factor * s["median"], "ratio": round(a["median"] / s["median"], 3),
            "how": f"{a['median']:.0f} against {factor} x {s['median']:.0f}"}


def collapse(curve: dict[str, list[Any]], bc_success: float) -> dict[str, Any]:
    """Whether a mean curve stays >= COLLAPSE_FLOOR x BC's success at every evaluation (its first included)."""
    floor = COLLAPSE_FLOOR * bc_success
    values = curve["mean_success"]
    low = int(np.argmin(values)) if values else None
    return {"bc_success": bc_success, "applies": bc_success >= BC_RELEVANT - se.SLACK, "floor": round(floor, 4),
            "min_success": None if low is None else values[low],
            "min_at": None if low is None else curve["env_steps"][low],
            "holds": bool(values) and min(values) >= floor - se.SLACK}


# ------------------------------------------------------------------------------------------------ report


def task_settings(cfg: BenchConfig, task: str) -> dict[str, Any]:
    """sample_efficiency's settings of the task (config digest, evaluation, demos, agent) without its SBX and
    target fields, plus this benchmark's."""
    settings = se.task_settings(se_config(cfg), task)
    for key in ("differences", "target_steps", "every_seed_max"):
        settings.pop(key)
    bc = load(se.ROOT / se.TASKS[task].config).agent.bc
    if bc.enabled:
        raise SystemExit(f"{se.TASKS[task].config}: agent.bc.enabled is true; expected false (the sac arm is the "
                         "unregularized one and the benchmark enables the regularizer per arm)")
    run_length = settings.pop("cap")  # here the cap is the common one a miss counts at
    return {**settings, "run_length": run_length, "bc_episodes": cfg.bc_episodes,
            "demo_fraction": DEMO_FRACTION, "agent_bc": to_dict(bc)}


def is_canonical(task: str, settings: dict[str, Any]) -> bool:
    want = {"demos": CANONICAL.demos, "demo_noise": CANONICAL.demo_noise, "eval_every": CANONICAL.eval_every,
            "eval_episodes": CANONICAL.eval_episodes, "bc_episodes": CANONICAL.bc_episodes,
            "run_length": se.cap_of(se_config(CANONICAL), task)}
    return all(settings.get(k) == v for k, v in want.items())


def derive_task(task: str, raw: dict[str, Any]) -> dict[str, Any]:
    """A task's report entry: its measured part and everything derived from it."""
    runs = {arm: raw["arms"].get(arm, {}).get("runs", []) for arm in ARMS}
    cap = common_cap(runs["sac"], raw["settings"]["run_length"])
    arms = {arm: {"runs": runs[arm], **(summarize_bc if arm == "bc" else summarize_rl)(runs[arm], cap["value"])}
            for arm in ARMS if runs[arm]}
    complete = is_canonical(task, raw["settings"]) and all(len(runs[a]) >= se.MIN_SEEDS for a in ARMS)
    comparisons = {arm: {"le_0.7x_sac": at_most(arms[arm], arms["sac"], FAST, cap["value"]),
                         "le_1.2x_sac": at_most(arms[arm], arms["sac"], NOT_SLOWER, cap["value"]),
                         **({"collapse": collapse(arms[arm]["curve"], arms["bc"]["success"])} if "bc" in arms else {})}
                   for arm in ("reg", "reg_init") if arm in arms and "sac" in arms}
    digests = {r["demos_digest"] for arm_runs in runs.values() for r in arm_runs}
    return {**{k: raw[k] for k in RAW_TASK_KEYS if k in raw}, "canonical": is_canonical(task, raw["settings"]),
            "complete": complete, "same_demos": digests == {raw.get("demos", {}).get("digest")},
            "cap": cap, "arms": arms, "comparisons": comparisons}


def targets_of(tasks: dict[str, Any]) -> tuple[dict[str, bool], dict[str, str]]:
    """The `targets` map and a note per target saying why, from derived task entries."""
    done = [t for t in se.TASKS if tasks.get(t, {}).get("complete")]
    if len(done) < len(se.TASKS):
        why = (f"needs every task complete ({se.MIN_SEEDS}+ seeds of every arm at the canonical settings); complete: "
               f"{done}")
        return {k: False for k in ("reg_90_le_0.7x_sac_one_task", "reg_90_le_1.2x_sac_other", "no_early_collapse",
                                   "within_120_min")}, {"all": why}
    reg = {t: tasks[t]["comparisons"]["reg"] for t in done}
    fast = [t for t in done if reg[t]["le_0.7x_sac"]["holds"]]
    other = [(a, b) for a in fast for b in done if b != a and reg[b]["le_1.2x_sac"]["holds"]]
    relevant = [t for t in done if reg[t]["collapse"]["applies"]]
    walls = {t: tasks[t]["wall_s"] for t in done}
    one_invocation = len({tasks[t]["invocation"] for t in done}) == 1
    targets = {
        "reg_90_le_0.7x_sac_one_task": bool(fast),
        "reg_90_le_1.2x_sac_other": bool(other),
        "no_early_collapse": bool(relevant) and all(reg[t]["collapse"]["holds"] for t in relevant),
        "within_120_min": all(w <= TASK_WALL_S for w in walls.values()) or (
            one_invocation and sum(walls.values()) <= TOTAL_WALL_S),
    }
    notes = {
        "reg_90_le_0.7x_sac_one_task": "; ".join(f"{t}: {reg[t]['le_0.7x_sac']['how']}" for t in done),
        "reg_90_le_1.2x_sac_other": (f"0.7x on {fast}; " if fast else "no task at 0.7x, so no other task; ")
        + "; ".join(f"{t}: {reg[t]['le_1.2x_sac']['how']}" for t in done),
        "no_early_collapse": (f"checked on {relevant} (bc >= {BC_RELEVANT:.0%})" if relevant else
                              f"bc alone is below {BC_RELEVANT:.0%} on every task: nothing to check, not met "
                              "trivially") + "; " + "; ".join(
            f"{t}: bc {reg[t]['collapse']['bc_success']:.0%}, reg's lowest {reg[t]['collapse']['min_success']} "
            f"at {reg[t]['collapse']['min_at']} (floor {reg[t]['collapse']['floor']})" for t in done),
        "within_120_min": ("one invocation, " if one_invocation else "separate invocations, ") + ", ".join(
            f"{t} {w:.0f} s" for t, w in walls.items()) + f" (each <= {TASK_WALL_S:.0f} s, or one invocation "
        f"<= {TOTAL_WALL_S:.0f} s in all)",
    }
    return targets, notes


def existing_tasks(report: dict[str, Any] | None) -> dict[str, Any]:
    """The measured part of a report already in --out-dir (empty for none, or one of another layout)."""
    if report is None:
        return {}
    if report.get("schema") != SCHEMA:
        log(f"the {NAME}.json in --out-dir has schema {report.get('schema')!r}, not {SCHEMA}: replacing it")
        return {}
    return {task: {**{k: entry[k] for k in RAW_TASK_KEYS if k in entry},
                   "arms": {arm: {"runs": a["runs"]} for arm, a in entry.get("arms", {}).items()}}
            for task, entry in report.get("tasks", {}).items()}


def begin_task(tasks: dict[str, Any], task: str, settings: dict[str, Any], invocation: str) -> dict[str, Any]:
    """The merge: `task`'s entry replaced by an empty one of this invocation (the other tasks are kept)."""
    versions = {"serl_stack": metadata.version("serl_stack"), "jax": metadata.version("jax")}
    tasks[task] = {"settings": settings, "invocation": invocation, "wall_s": 0.0, "machine": benchlib.machine_info(),
                   "versions": versions, "date": time.strftime("%Y-%m-%d %H:%M"),
                   "arms": {arm: {"runs": []} for arm in ARMS}}
    return tasks[task]


def build_report(tasks: dict[str, Any], cfg: BenchConfig, started: float) -> dict[str, Any]:
    ordered = {task: derive_task(task, tasks[task]) for task in se.TASKS if task in tasks}
    targets, notes = targets_of(ordered)
    return {
        "benchmark": NAME, "schema": SCHEMA, "tasks": ordered, "targets": targets, "target_notes": notes,
        "notes": {
            "arms": f"bc: serl train-bc alone; sac: SAC + demos; reg: + {BC_PREFIX}enabled with that seed's bc as "
                    "prior; reg_init: + init_actor_from_bc. The learning arms' overrides differ only in "
                    f"{BC_PREFIX}* (checked before each run); {DEMO_FRACTION:.0%} of every minibatch from the demos",
            "steps_to_level": f"env step of the second of {se.CONSECUTIVE} consecutive evaluations at or above the "
                              "level; per_seed null = a miss (not reached by cap, reached_at keeps the raw step); "
                              "median_censored: the median falls on a miss. bc: 0 when its evaluation is at or "
                              "above the level",
            "cap": f"{CAP_FACTOR}x sac's median steps to 90 %, at most the run length; the run length when that "
                   "median is censored",
            "curve": "mean success over seeds per evaluation step with a 95 % Wilson interval on the pooled "
                     "episodes; a run that stopped early (90 % twice) is carried forward at its last measured value",
            "comparisons": "a censored median holds only where the comparison holds at the cap (see how)",
            "collapse": f"checked where bc >= {BC_RELEVANT:.0%}: reg's mean curve >= {COLLAPSE_FLOOR} x bc's success "
                        "at every evaluation, the first included",
            "wall_s": "a task's recording, bc training and evaluation, and every run, one after another",
        },
        "invocation": {**asdict(cfg), "machine": benchlib.machine_info(), "date": time.strftime("%Y-%m-%d %H:%M"),
                       "wall_s": round(time.monotonic() - started, 1)},
    }


COLORS = {"sac": "tab:orange", "reg": "tab:blue", "reg_init": "tab:green", "bc": "tab:grey"}


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a benchmark machine
    import matplotlib.pyplot as plt

    tasks = report["tasks"]
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(6.5 * max(1, len(tasks)), 4.5), squeeze=False)
    for ax, entry in zip(axes[0], tasks.values(), strict=False):
        s, arms = entry["settings"], entry["arms"]
        if "bc" in arms:
            bc = arms["bc"]
            ax.axhspan(bc["ci95_low"], bc["ci95_high"], color=COLORS["bc"], alpha=0.15)
            ax.axhline(bc["success"], color=COLORS["bc"], linestyle="--", linewidth=1.5,
                       label=f"bc alone: {bc['success']:.0%} ({len(bc['runs'])} x {s['bc_episodes']} episodes)")
            if bc["success"] >= BC_RELEVANT:
                ax.axhline(COLLAPSE_FLOOR * bc["success"], color=COLORS["bc"], linestyle=":", linewidth=1,
                           label=f"collapse floor {COLLAPSE_FLOOR} x bc")
        for arm in RL_ARMS:
            if arm not in arms:
                continue
            a = arms[arm]
            benchlib.plot_success_curves(ax, a["runs"], a["curve"], a["steps_to_90pct"], COLORS[arm],
                                         f"{arm}: mean of {len(a['runs'])}")
        ax.axvline(entry["cap"]["value"], color="red", linestyle="--", linewidth=1, label="cap (a miss)")
        benchlib.style_success_axes(ax, se.STOP_LEVEL, s["run_length"], s["eval_episodes"],
                                    f"{s['env']}, {s['demos']} demos, 50/50 sampling (shaded: 95 % Wilson)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def publish(tasks: dict[str, Any], cfg: BenchConfig, out_dir: Path, started: float) -> tuple[dict[str, Any], Path]:
    report = {**build_report(tasks, cfg, started), "plot": str(out_dir / f"{NAME}.png")}
    plot(report, Path(report["plot"]))
    return report, benchlib.write_report(out_dir, NAME, report, log)


# ------------------------------------------------------------------------------------------------ run


def describe(arm: str, r: dict[str, Any]) -> str:
    if arm == "bc":
        return f"success {r['success']:.0%} on {r['episodes']} episodes (validation loss {r['val_loss']:.2f})"
    reached = se.steps_to_level(r["eval_env_steps"], r["eval_success"], se.STOP_LEVEL)
    return f"90 % at {reached} env steps" if reached is not None else f"no 90 % by {r['env_steps']} env steps"


def run(cfg: BenchConfig) -> tuple[dict[str, Any], Path]:
    """Every arm on every chosen task and seed, merged into --out-dir's report after each run."""
    started = time.monotonic()
    tasks_now = benchlib.parse_choices(cfg.tasks, tuple(se.TASKS), "--tasks")
    out_dir = benchlib.out_dir(cfg.out_dir)
    tasks = existing_tasks(benchlib.load_report(out_dir, NAME))
    settings = {task: task_settings(cfg, task) for task in tasks_now}  # config errors before anything runs
    root = benchlib.runs_root(cfg.runs_dir, NAME)
    invocation = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    log(f"tasks {tasks_now}, arms {list(ARMS)}, {cfg.seeds} seeds; run folders under {root}; report in {out_dir}")
    published: tuple[dict[str, Any], Path] | None = None
    for task in tasks_now:
        task_start = time.monotonic()
        entry = begin_task(tasks, task, settings[task], invocation)
        demo_dir = root / f"demos-{task}"
        recording_s = benchlib.record_demos(se.TASKS[task].config, demo_dir, cfg.demos, cfg.demo_noise)
        digest = benchlib.demos_digest(demo_dir)
        entry["demos"] = {"episodes": cfg.demos, "noise": cfg.demo_noise, "recording_s": round(recording_s, 1),
                          "dir": str(demo_dir), "digest": digest}
        log(f"{task}: recorded {cfg.demos} demonstrations in {recording_s:.0f} s (digest {digest})")
        for seed in range(cfg.seeds):
            prior = root / f"{task}-bc-s{seed}"
            sets = arm_overrides(cfg, task, seed, demo_dir, prior)
            for arm in ARMS:
                log(f"{task} {arm} seed {seed}: started" + ("" if arm == "bc" else
                                                            f" (run length {settings[task]['run_length']})"))
                now = benchlib.demos_digest(demo_dir)  # what this run reads: the recording, unchanged
                if arm == "bc":
                    r = run_bc(cfg, task, seed, prior, demo_dir, now)
                else:
                    r = run_rl(task, seed, sets[arm], root / f"{task}-{arm}-s{seed}", cfg.eval_episodes, now)
                entry["arms"][arm]["runs"].append(r)
                entry["wall_s"] = round(time.monotonic() - task_start, 1)
                log(f"{task} {arm} seed {seed}: {describe(arm, r)}, {r['wall_s']:.0f} s "
                    f"(task so far {entry['wall_s']:.0f} s)")
                published = publish(tasks, cfg, out_dir, started)
    assert published is not None  # at least one task, arm and seed ran
    return published


def main(argv: list[str] | None = None) -> None:
    cfg = benchlib.parse_config(BenchConfig, QUICK, __doc__.split("\n\n")[0], argv)
    benchlib.require_positive(cfg, ("seeds", "demos", "eval_every", "eval_episodes", "bc_episodes"))
    if cfg.demos < 2:
        raise SystemExit(f"--demos: got {cfg.demos}, expected >= 2 (serl train-bc holds one episode out)")
    if cfg.run_steps < 0:
        raise SystemExit(f"--run-steps: got {cfg.run_steps}, expected >= 0 (0: sample_efficiency's cap)")
    benchlib.finish(*run(cfg))


if __name__ == "__main__":
    main()
