"""Conservative-mixing benchmark (issue 18): do EpsMix and StepMix keep every training episode at
E[V^{pi_k}(s1)] >= (1 - alpha) E[V^b(s1)] on pick-cube and still hand control to the learned policy once it is
better than a safe but clearly suboptimal baseline, at little cost to learning?

Owns: the setup every run shares (the 20 demonstrations, recorded once; the baseline, a `serl train-bc` policy
picked for a success rate in the 40-60 % band), the runs (one `serl train` subprocess per mode and seed), the
offline checks of the actor's snapshots, the rules (a violation, the learned share, the targets and their
guards against trivially met targets), merging a separate invocation's modes and seeds into the report in
`--out-dir`, the report `conservative.json` (with `targets` and `target_notes`), the figure `conservative.png`,
and the `--ablations` arms. Rollouts themselves are conservative_rollouts.py's. `--out-dir` defaults to a fresh
`runs/bench-<time>/`; `--out-dir docs` updates the committed figures; a missed target exits 1.

Setup. `configs/rlpd_cpu_pick_cube.yaml` with `env.dense_reward: false` (reward 1 on success, else 0: the mixers
need rewards >= 0). `serl record-demos --keep 20 --noise 0.1` once (a digest of every array is kept: every run of a
report uses the same ones). The baseline: `serl train-bc` on those demonstrations (BC seeds 0, 1, ... up to
`baseline_tries`), its success and V^b measured from `baseline_rollouts` deterministic episodes on the fixed check
states (reset seeds `check_seed + i`, shared by every check of every mode); the first in the band is kept, else the
one nearest 50 %. Every run mixes with it (`mixing.baseline_run`; mode off ignores it). With `demo_prior` (default)
every mode's learner is also regularized toward that BC policy and starts from its weights (`agent.bc.enabled`,
`agent.bc.prior_run` = the baseline, `agent.bc.init_actor_from_bc`; issue 17's demonstration regularization), with a
target entropy near the prior's own (`PRIOR_ENTROPY_SCALE`): plain SAC + demos did not learn sparse pick-cube within
30k env steps (off ended at 0-2 %), so there was nothing to hand over to; with the prior the learned policy starts
at the baseline's level and improves.

Runs. modes off / epsmix / stepmix x seeds, each `train.total_env_steps = steps` (30k), no evaluation during
training and no early stop (every mode runs as long), alpha = 0.2, `mixing.baseline_episodes` = `mixer_warmup`,
then the final deterministic evaluation of the learned policy alone (`final_eval_episodes`). The actor snapshots
the policy every `snapshot_every` episodes (set so a run holds ~4 per check); the `checks` snapshots nearest
the midpoints of `checks` equal slices of the run's env steps are checked: `check_rollouts` rollouts on the check
states (conservative_rollouts.py). A check is judged on its mean: a violation when the mean discounted return is
below (1 - alpha) V^b; its 95 % Student-t interval is reported beside it. Off's learned share counts every step
after `train.start_steps` (its random warm-up before it is not the learned policy's).

Reported per mode (pooled over seeds, each seed beside): violations (count, rate), the learned share (learned
steps / env steps) over training (per slice) and over the last 10 % of episodes, the learned policy's final
success (95 % Wilson), cumulative training success (every training episode, warm-up included). Targets, for
EpsMix and StepMix: violation rate <= 0.1 (off's rate beside, no target), learned share over the last 10 % of
episodes > 0.8, final success at most 10 points below off's, cumulative training success above off's; plus
`within_90_min` (the whole invocation, every mode and seed). A target is false, with the reason in
`target_notes`, when its data is missing (fewer than 3 seeds, non-canonical sizes) or it would be met trivially:
a baseline outside the 40-60 % band; off below 80 % final success at 30k env steps (then off never learned and
the success comparisons say nothing); a constrained mode whose learned policy ran no more than alpha of the
steps in most checks (any alpha-coin meets the constraint: the rule was not tested).

`--ablations` (the main runs must be in --out-dir's report): oracle L (offline, every check of the constrained
runs replayed with L = the learned policy's own Monte-Carlo value on the check states), finite kappa (StepMix
runs with `mixing.kappa = ablation_kappa` from the start). No target but `ablations_within_60_min`. Run folders go
under `runs/` (gitignored); progress goes to stderr.

    .venv/bin/python benchmarks/conservative.py [--quick] [--modes off,epsmix,stepmix] [--seeds 0,1,2]
        [--ablations true] [--demo-prior true] [--out-dir docs]
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import benchlib
import numpy as np
from scipy import stats

ROOT = benchlib.ROOT
NAME = "conservative"
SCHEMA = 2
"""Version of the report's layout; a report of another version in --out-dir is replaced, not merged."""
MODES = ("off", "epsmix", "stepmix")
CONSTRAINED = ("epsmix", "stepmix")
LABELS = {"off": "mixing off", "epsmix": "EpsMix", "stepmix": "StepMix", "stepmix_kappa": "StepMix, finite kappa"}
COLORS = {"off": "tab:red", "epsmix": "tab:blue", "stepmix": "tab:green", "stepmix_kappa": "tab:olive"}
BAND = (0.4, 0.6)
"""The baseline's success rate that makes it safe but clearly suboptimal."""
OFF_LEVEL = 0.8
MIN_SEEDS = 3
MAX_VIOLATION_RATE = 0.1
MIN_LEARNED_SHARE = 0.8
MAX_SUCCESS_GAP = 0.1
LAST_FRACTION = 0.1
WALL_TARGET_S = 5400.0
ABLATION_WALL_TARGET_S = 3600.0
SNAPSHOTS_PER_CHECK = 4
ASSUMED_EPISODE_STEPS = 50
"""For `snapshot_every` only: with it a run holds about SNAPSHOTS_PER_CHECK snapshots per check."""
PRIOR_ENTROPY_SCALE = 2.0
"""agent.target_entropy_scale with the demo prior: a target entropy of -2|A|, about the BC policy's own (-13.6 nats
for the 7-D action). With the config's -|A|/2 the temperature rose from 0.012 to 0.19 to widen the BC-initialized
actor; with reward only on success the entropy term then outweighed it, and mode off, at 100 % training success by
6.7k env steps, fell to 5 % by 14k while its entropy rose from -13.6 to -1.3 (2026-12-07, seed 0, not committed)."""
MERGE_KEYS = ("config", "steps", "alpha", "mixer_warmup", "checks", "check_rollouts", "check_seed",
              "final_eval_episodes", "demos_digest", "baseline_digest", "start_steps", "demo_prior")
"""Setup that must match for one invocation's runs to be kept beside another's."""


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of the runs; every field is a command-line flag (`--seeds 0,1,2`)."""

    config: str = "configs/rlpd_cpu_pick_cube.yaml"
    """The serl config every run starts from; dense reward is switched off."""
    modes: str = ",".join(MODES)
    """Comma-separated modes to run (off, epsmix, stepmix); the others in --out-dir's report are kept."""
    seeds: str = "0,1,2"
    """Comma-separated training seeds, each run by every mode."""
    steps: int = 30_000
    """Env steps per run (train.total_env_steps)."""
    alpha: float = 0.2
    """The constraint: E[V^{pi_k}(s1)] >= (1 - alpha) E[V^b(s1)]."""
    mixer_warmup: int = 100
    """Baseline-only episodes at the start of a mixed run that give the mixer its U (mixing.baseline_episodes)."""
    demos: int = 20
    """Successful scripted demonstrations in every run's replay (and the baseline's BC data)."""
    demo_noise: float = 0.1
    """Std of the Gaussian noise on the scripted demonstrator's actions."""
    baseline_tries: int = 4
    """BC seeds tried for the baseline (0, 1, ...): the first with success in the 40-60 % band is kept."""
    baseline_rollouts: int = 100
    """Deterministic baseline episodes on the check states that measure its success and V^b."""
    checks: int = 12
    """Checked snapshots per run, evenly spaced over its env steps."""
    check_rollouts: int = 100
    """Rollouts per check, on the check states (reset seeds check_seed + i)."""
    check_seed: int = 2_000_000
    """First reset seed of the check states (training and the held-out evaluation never use these)."""
    final_eval_episodes: int = 100
    """Deterministic episodes of each run's final evaluation of the learned policy alone."""
    start_steps: int = 0
    """train.start_steps of every run; 0: the config's."""
    demo_prior: bool = True
    """Every mode's learner regularized toward, and initialized from, the baseline BC policy (agent.bc.*)."""
    ablations: bool = False
    """Run the ablation arms (oracle L on the main runs' snapshots, finite-kappa StepMix) instead of the main runs."""
    ablation_seeds: str = "0"
    """Seeds of the finite-kappa StepMix arm."""
    ablation_kappa: float = 1.0
    """mixing.kappa of the finite-kappa arm (trusted before calibration)."""
    out_dir: str = ""
    """Where conservative.json and .png go (relative to the repository root); empty: a fresh runs/bench-<time>/;
    `docs` updates the committed figures. A report already there is merged into."""
    runs_dir: str = "runs"
    """Parent folder of this benchmark's run folders (gitignored)."""


QUICK = BenchConfig(seeds="0", steps=900, mixer_warmup=3, demos=4, baseline_tries=1, baseline_rollouts=4, checks=3,
                    check_rollouts=4, final_eval_episodes=2, start_steps=300)
CANONICAL = BenchConfig()


def log(msg: str) -> None:
    print(f"[{NAME} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ rules


def mean_ci(values: list[float] | np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the two-sided Student-t interval of the mean (a point for fewer than 2 values)."""
    x = np.asarray(values, np.float64)
    if x.size == 0:
        raise ValueError("mean_ci: got no values, expected at least one")
    m = float(x.mean())
    if x.size < 2:
        return m, m, m
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    return m, m - half, m + half


def judge_check(values: list[float], line: float) -> dict[str, Any]:
    """A check of one snapshot: judged on its mean (a violation when it is below `line`), CI beside it."""
    m, low, high = mean_ci(values)
    return {"value": m, "ci95": [low, high], "n": len(values), "violation": bool(m < line)}


def training_table(run_dir: Path, mode: str, start_steps: int) -> dict[str, np.ndarray]:
    """Per training episode: `length`, `learned_steps`, `success`, `end_step`. A mixed run's from the actor's
    `mixing-actor-0.jsonl`; off's from the learner's log, every step after `start_steps` counting as learned."""
    if mode == "off":
        from serl_stack.runlog import episodes

        ep = episodes(run_dir)
        length = ep["length"].astype(np.int64)
        learned = np.clip(ep["end_step"] - start_steps, 0, length)
        return {"length": length, "learned_steps": learned, "success": np.nan_to_num(ep["success"]).astype(bool),
                "end_step": ep["end_step"]}
    return table_from_records(read_records(run_dir / "mixing-actor-0.jsonl"))


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table_from_records(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """The per-episode table from the mixers' records (`learned_steps`, `length`, `success`, `env_steps`)."""
    for i, r in enumerate(records):
        missing = [k for k in ("learned_steps", "length", "success", "env_steps") if k not in r]
        if missing:
            raise ValueError(f"mixing record {i}: missing {missing}; expected the actor's record fields")
    return {"length": np.array([int(r["length"]) for r in records], np.int64),
            "learned_steps": np.array([int(r["learned_steps"]) for r in records], np.int64),
            "success": np.array([bool(r["success"]) for r in records], bool),
            "end_step": np.array([int(r["env_steps"]) for r in records], np.int64)}


def share_summary(table: dict[str, np.ndarray], steps: int, slices: int) -> dict[str, Any]:
    """Counts from one run's table (kept raw, so seeds pool exactly): learned / all steps over the last
    LAST_FRACTION of its episodes and per slice of env steps (an episode goes to the slice its last step is in),
    successes over all episodes."""
    n = len(table["length"])
    last = max(1, int(np.ceil(LAST_FRACTION * n))) if n else 0
    # By its last step's index, so an episode ending exactly on a slice's edge belongs to that slice.
    which = np.clip((table["end_step"] - 1) * slices // max(steps, 1), 0, slices - 1)
    return {"episodes": n, "successes": int(table["success"].sum()),
            "last_learned": int(table["learned_steps"][n - last:].sum()),
            "last_steps": int(table["length"][n - last:].sum()),
            "slice_learned": [int(table["learned_steps"][which == i].sum()) for i in range(slices)],
            "slice_steps": [int(table["length"][which == i].sum()) for i in range(slices)]}


def pick_snapshots(start_steps: dict[int, int], steps: int, checks: int) -> list[int]:
    """The snapshot episodes nearest the midpoints of `checks` equal slices of `steps` env steps (`start_steps`:
    snapshot episode -> env step at its start), without repeats."""
    chosen: list[int] = []
    left = dict(start_steps)
    for j in range(checks):
        if not left:
            break
        target = (j + 0.5) * steps / checks
        episode = min(left, key=lambda e: (abs(left[e] - target), e))
        chosen.append(episode)
        del left[episode]
    return sorted(chosen)


def parse_seeds(text: str, flag: str) -> list[int]:
    """The comma-separated seeds given to `flag`, in order, duplicates dropped; SystemExit naming the flag."""
    try:
        seeds = list(dict.fromkeys(int(t) for t in text.split(",") if t.strip()))
    except ValueError:
        seeds = []
    if not seeds or any(s < 0 for s in seeds):
        raise SystemExit(f"{flag}: got {text!r}, expected comma-separated seeds >= 0, e.g. 0,1,2")
    return seeds


def ratio(num: float, den: float) -> float | None:
    return None if den == 0 else num / den


def mode_summary(runs: list[dict[str, Any]], alpha: float) -> dict[str, Any]:
    """Pooled over a mode's seeds (and each seed beside): violations, learned share, successes."""
    checks = [c for r in runs for c in r["checks"]]
    viol = sum(c["violation"] for c in checks)
    shares = [r["share"] for r in runs]
    slices = len(shares[0]["slice_steps"])
    final_wins = sum(round(r["final_success"] * r["final_episodes"]) for r in runs)
    final_n = sum(r["final_episodes"] for r in runs)
    cum_wins, cum_n = sum(s["successes"] for s in shares), sum(s["episodes"] for s in shares)
    return {
        "seeds": [r["seed"] for r in runs],
        "checks": len(checks), "violations": viol, "violation_rate": ratio(viol, len(checks)),
        "violations_per_seed": [sum(c["violation"] for c in r["checks"]) for r in runs],
        "checks_learned_above_alpha": sum(c["learned_share"] > alpha for c in checks),
        "learned_share_last_10pct": ratio(sum(s["last_learned"] for s in shares), sum(s["last_steps"] for s in shares)),
        "learned_share_last_10pct_per_seed": [ratio(s["last_learned"], s["last_steps"]) for s in shares],
        "learned_share_over_training": [ratio(sum(s["slice_learned"][i] for s in shares),
                                              sum(s["slice_steps"][i] for s in shares)) for i in range(slices)],
        "learned_share_overall": ratio(sum(sum(s["slice_learned"]) for s in shares),
                                       sum(sum(s["slice_steps"]) for s in shares)),
        "final_success": ratio(final_wins, final_n),
        "final_success_ci95": list(benchlib.wilson_interval(final_wins, final_n)) if final_n else None,
        "final_success_per_seed": [r["final_success"] for r in runs],
        "cumulative_success": ratio(cum_wins, cum_n),
        "cumulative_success_ci95": list(benchlib.wilson_interval(cum_wins, cum_n)) if cum_n else None,
        "wall_s": [r["wall_s"] for r in runs],
    }


def canonical(setup: dict[str, Any]) -> bool:
    c = CANONICAL
    return (setup.get("steps") == c.steps and setup.get("alpha") == c.alpha and setup.get("checks") == c.checks
            and setup.get("check_rollouts", 0) >= 100 and setup.get("baseline_rollouts", 0) >= 100
            and setup.get("demos") == c.demos and setup.get("demo_noise") == c.demo_noise
            and setup.get("config") == c.config and setup.get("demo_prior", False) == c.demo_prior)


def targets_of(summary: dict[str, dict[str, Any]], setup: dict[str, Any], wall_s: float | None
               ) -> tuple[dict[str, bool], dict[str, str]]:
    """The targets map and, for each false one, why: the issue's targets, each false when its data is missing
    or when it would be met trivially (module docstring)."""
    targets: dict[str, bool] = {}
    notes: dict[str, str] = {}
    alpha = setup.get("alpha", CANONICAL.alpha)
    complete = {m: m in summary and len(summary[m]["seeds"]) >= MIN_SEEDS for m in MODES}
    general = []
    if not canonical(setup):
        general.append("not the canonical sizes (30k env steps, alpha 0.2, 20 demos, 12 checks, >= 100 rollouts, "
                       "the demo prior)")
    success_b = setup.get("baseline", {}).get("success")
    if success_b is None or not BAND[0] <= success_b <= BAND[1]:
        general.append(f"baseline success {success_b} outside the band {list(BAND)}: not a safe but clearly "
                       "suboptimal baseline")
    off = summary.get("off")
    off_learned = bool(complete["off"] and off and (off["final_success"] or 0) >= OFF_LEVEL)
    for m in CONSTRAINED:
        s = summary.get(m)
        names = {"viol": f"{m}_violation_rate_le_{MAX_VIOLATION_RATE:g}",
                 "share": f"{m}_learned_share_last_10pct_gt_{MIN_LEARNED_SHARE:g}",
                 "final": f"{m}_final_success_within_{MAX_SUCCESS_GAP:g}_of_off",
                 "cum": f"{m}_cumulative_success_above_off"}
        met = {k: False for k in names}
        why: dict[str, list[str]] = {k: list(general) for k in names}
        if not complete[m] or s is None:
            for k in names:
                why[k].append(f"{m}: fewer than {MIN_SEEDS} seeds")
        else:
            met["viol"] = s["violation_rate"] is not None and s["violation_rate"] <= MAX_VIOLATION_RATE
            if s["checks_learned_above_alpha"] * 2 <= s["checks"]:
                why["viol"].append(f"trivial: the learned policy ran more than alpha = {alpha:g} of the steps in only "
                                   f"{s['checks_learned_above_alpha']} of {s['checks']} checks (any alpha-coin meets "
                                   "the constraint)")
            share = s["learned_share_last_10pct"]
            met["share"] = share is not None and share > MIN_LEARNED_SHARE
            for k in ("final", "cum"):
                if not off_learned:
                    why[k].append(f"off did not reach {OFF_LEVEL:.0%} final success at {setup.get('steps')} env steps "
                                  f"over >= {MIN_SEEDS} seeds (off never learning makes the comparison trivial)")
            if off is not None and off["final_success"] is not None and s["final_success"] is not None:
                met["final"] = off["final_success"] - s["final_success"] <= MAX_SUCCESS_GAP + 1e-9
            if off is not None and off["cumulative_success"] is not None and s["cumulative_success"] is not None:
                met["cum"] = s["cumulative_success"] > off["cumulative_success"]
        for k, name in names.items():
            targets[name] = bool(met[k] and not why[k])
            if not targets[name]:
                notes[name] = "; ".join(why[k]) if why[k] else "measured, not met"
    whole = all(complete.values())
    targets["within_90_min"] = bool(whole and wall_s is not None and wall_s <= WALL_TARGET_S)
    if not targets["within_90_min"]:
        notes["within_90_min"] = (f"{wall_s} s over {WALL_TARGET_S:.0f}" if whole else
                                  f"not every mode has {MIN_SEEDS} seeds in this report")
    return targets, notes


# ------------------------------------------------------------------------------------------------ merge


def existing_runs(report: dict[str, Any] | None) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """(setup, {mode: {seed: raw run}}) of a report already in --out-dir ((None, {}) for none or another
    layout, which is then replaced)."""
    if report is None:
        return None, {}
    if report.get("schema") != SCHEMA:
        log(f"the {NAME}.json in --out-dir has schema {report.get('schema')!r}, not {SCHEMA}: replacing it")
        return None, {}
    return report["setup"], {m: dict(v) for m, v in report.get("runs", {}).items()}


def check_mergeable(old: dict[str, Any] | None, new: dict[str, Any], kept: list[str]) -> None:
    """SystemExit when runs measured under another setup would be kept beside this invocation's. Keys `new` does
    not hold yet (the digests before the setup is made) are checked by the later call that has them."""
    if old is None or not kept:
        return
    changed = {k: (old.get(k), new[k]) for k in MERGE_KEYS if k in new and old.get(k) != new[k]}
    if changed:
        raise SystemExit(f"--out-dir's {NAME}.json holds runs {kept} measured with another setup (report, now: "
                         f"{changed}); expected the same to keep them: rerun every mode and seed, or use another "
                         "--out-dir")


def merge_runs(runs: dict[str, dict[str, Any]], mode: str, seed: int, raw: dict[str, Any]) -> None:
    runs.setdefault(mode, {})[str(seed)] = raw


# ------------------------------------------------------------------------------------------------ setup


def serl_config(cfg: BenchConfig, mode: str, baseline_dir: Path | str, extra: tuple[str, ...] = ()) -> Any:
    from serl_stack.config import apply_overrides, load

    return apply_overrides(load(ROOT / cfg.config), [*run_sets(cfg, mode, 0, baseline_dir, "", 1), *extra])


def run_sets(cfg: BenchConfig, mode: str, seed: int, baseline_dir: Path | str, demo_dir: Path | str,
             snapshot_every: int) -> list[str]:
    """The `--set` overrides of one run."""
    sets = ["env.dense_reward=false", f"train.seed={seed}", f"train.total_env_steps={cfg.steps}",
            "train.eval_every=0", "train.stop_at_success=0", f"train.eval_episodes={cfg.final_eval_episodes}",
            f"mixing.mode={mode}", f"mixing.alpha={cfg.alpha}", f"mixing.baseline_episodes={cfg.mixer_warmup}",
            f"mixing.snapshot_every={snapshot_every}", f"mixing.baseline_run={baseline_dir}"]
    if demo_dir:
        sets.append(f"replay.demo_dir={demo_dir}")
    if cfg.demo_prior:
        sets += ["agent.bc.enabled=true", f"agent.bc.prior_run={baseline_dir}", "agent.bc.init_actor_from_bc=true",
                 f"agent.target_entropy_scale={PRIOR_ENTROPY_SCALE}"]
    if cfg.start_steps:
        sets.append(f"train.start_steps={cfg.start_steps}")
    return sets


def make_setup(cfg: BenchConfig, root: Path, old: dict[str, Any] | None) -> dict[str, Any]:
    """Demonstrations and baseline: the report's when their folders still exist (a merging invocation keeps
    them), else recorded and trained here."""
    from conservative_rollouts import Rollouts

    if old and Path(old["demos_dir"]).is_dir() and Path(old["baseline_dir"]).is_dir():
        log(f"reusing the report's demonstrations {old['demos_dir']} and baseline {old['baseline_dir']}")
        return {**old, **setup_sizes(cfg)}
    demo_dir = root / "demos"
    rec_s = benchlib.record_demos(cfg.config, demo_dir, cfg.demos, cfg.demo_noise)
    digest = benchlib.demos_digest(demo_dir)
    log(f"recorded {cfg.demos} demonstrations in {rec_s:.0f} s (digest {digest})")
    seeds = range(cfg.check_seed, cfg.check_seed + cfg.baseline_rollouts)
    tried = []
    for bc_seed in range(cfg.baseline_tries):
        out = root / f"baseline-bc-s{bc_seed}"
        benchlib.run_logged(benchlib.serl("train-bc", "--config", cfg.config, "--set", "env.dense_reward=false",
                                          "--demos", str(demo_dir), "--out", str(out), "--episodes", "0",
                                          "--seed", str(bc_seed)),
                            root / f"{out.name}.train-bc.log", f"serl train-bc ({out.name})")
        rollouts = Rollouts(serl_config(cfg, "epsmix", out))
        try:
            eps = rollouts.baseline_rollouts(seeds)
        finally:
            rollouts.close()
        success = float(np.mean([e.success for e in eps]))
        tried.append({"dir": str(out), "bc_seed": bc_seed, "success": success, "values": [e.value for e in eps]})
        log(f"baseline BC seed {bc_seed}: success {success:.0%} on {len(eps)} check states")
        if BAND[0] <= success <= BAND[1]:
            break
    best = min(tried, key=lambda t: (not BAND[0] <= t["success"] <= BAND[1], abs(t["success"] - 0.5)))
    values = best["values"]
    v_b, low, high = mean_ci(values)
    wins = round(best["success"] * len(values))
    baseline = {"kind": "serl train-bc on the run's demonstrations", "bc_seed": best["bc_seed"],
                "success": best["success"], "success_ci95": list(benchlib.wilson_interval(wins, len(values))),
                "v_b": v_b, "v_b_ci95": [low, high], "rollouts": len(values),
                "tried": [{k: t[k] for k in ("bc_seed", "success")} for t in tried]}
    digest_b = hashlib.sha256(np.asarray(values, np.float64).tobytes()).hexdigest()[:16]
    return {**setup_sizes(cfg), "demos_dir": str(demo_dir), "demos_digest": digest, "baseline_dir": best["dir"],
            "baseline_digest": digest_b, "baseline": baseline, "line": (1 - cfg.alpha) * v_b}


def setup_sizes(cfg: BenchConfig) -> dict[str, Any]:
    from serl_stack.config import load

    base = load(ROOT / cfg.config)
    return {"config": cfg.config, "steps": cfg.steps, "alpha": cfg.alpha, "mixer_warmup": cfg.mixer_warmup,
            "demos": cfg.demos, "demo_noise": cfg.demo_noise, "checks": cfg.checks,
            "check_rollouts": cfg.check_rollouts, "check_seed": cfg.check_seed,
            "baseline_rollouts": cfg.baseline_rollouts, "final_eval_episodes": cfg.final_eval_episodes,
            "start_steps": cfg.start_steps or base.train.start_steps, "discount": base.agent.discount,
            "demo_prior": cfg.demo_prior}


# ------------------------------------------------------------------------------------------------ runs


def train_and_check(cfg: BenchConfig, setup: dict[str, Any], mode: str, seed: int, run_dir: Path,
                    rollouts: Any, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """One `serl train` run, then its checks; the raw entry the report keeps."""
    from serl_stack.mixing import load_snapshot, snapshots

    every = max(1, cfg.steps // (ASSUMED_EPISODE_STEPS * cfg.checks * SNAPSHOTS_PER_CHECK))
    sets = [*run_sets(cfg, mode, seed, setup["baseline_dir"], setup["demos_dir"], every), *extra]
    args = [a for s in sets for a in ("--set", s)]
    wall = benchlib.run_logged(
        benchlib.serl("train", "--config", cfg.config, "--run-dir", str(run_dir), *args),
        run_dir.parent / f"{run_dir.name}.serl-train.log", f"serl train ({run_dir.name})")
    final = json.loads((run_dir / "eval.json").read_text())
    table = training_table(run_dir, mode, setup["start_steps"])
    starts = {int(p.stem.split("-")[1]): p for p in snapshots(run_dir)}
    start_step = {e: int(table["end_step"][e - 1]) if 0 < e <= len(table["end_step"]) else 0 for e in starts}
    t0 = time.monotonic()
    seeds = range(cfg.check_seed, cfg.check_seed + cfg.check_rollouts)
    checks = []
    for episode in pick_snapshots(start_step, cfg.steps, cfg.checks):
        snap = load_snapshot(starts[episode])
        eps = rollouts.snapshot_rollouts(snap, seeds, rng_seed=seed * 100_003 + episode)
        checks.append({"episode": episode, "env_step": start_step[episode],
                       **judge_check([e.value for e in eps], setup["line"]),
                       "learned_share": ratio(sum(e.learned_steps for e in eps), sum(e.length for e in eps)),
                       "success": float(np.mean([e.success for e in eps]))})
    check_s = time.monotonic() - t0
    raw = {"seed": seed, "run_dir": str(run_dir), "wall_s": round(wall, 1), "check_s": round(check_s, 1),
           "env_steps": int(final["env_steps"]), "final_success": float(final["success_rate"]),
           "final_episodes": int(final["episodes"]), "snapshot_every": every, "checks": checks,
           "share": share_summary(table, cfg.steps, cfg.checks)}
    log(f"{run_dir.name}: trained in {wall:.0f} s ({raw['env_steps']} env steps), final success "
        f"{raw['final_success']:.0%}, {sum(c['violation'] for c in checks)}/{len(checks)} checks below the line "
        f"({check_s:.0f} s of checks)")
    return raw


def oracle_ablation(cfg: BenchConfig, setup: dict[str, Any], runs: dict[str, dict[str, Any]], rollouts: Any
                    ) -> dict[str, Any]:
    """Every check of the constrained runs replayed with L = the learned policy's own Monte-Carlo value."""
    from serl_stack.mixing import load_snapshot, snapshots

    seeds = range(cfg.check_seed, cfg.check_seed + cfg.check_rollouts)
    out: dict[str, Any] = {}
    for mode in CONSTRAINED:
        for seed, raw in sorted(runs.get(mode, {}).items()):
            paths = {int(p.stem.split("-")[1]): p for p in snapshots(Path(raw["run_dir"]))}
            rows = []
            for c in raw["checks"]:
                snap = load_snapshot(paths[c["episode"]])
                rng_seed = int(seed) * 100_003 + c["episode"]
                alone = rollouts.snapshot_rollouts(snap, seeds, rng_seed, learned_only=True)
                oracle = float(np.mean([e.value for e in alone])) if snap["params"] is not None else 0.0
                eps = rollouts.snapshot_rollouts(snap, seeds, rng_seed, oracle_lower=oracle)
                rows.append({"episode": c["episode"], "env_step": c["env_step"], "learned_value": oracle,
                             **judge_check([e.value for e in eps], setup["line"]),
                             "learned_share": ratio(sum(e.learned_steps for e in eps), sum(e.length for e in eps))})
            out.setdefault(mode, {})[seed] = rows
            log(f"oracle L, {mode} seed {seed}: {sum(r['violation'] for r in rows)}/{len(rows)} below the line")
    return out


def ablation_summary(ablations: dict[str, Any], alpha: float) -> dict[str, Any]:
    """Per oracle-L mode: its checks' violations and learned share; the finite-kappa arm like a main mode."""
    out: dict[str, Any] = {}
    for mode, seeds in ablations.get("oracle_l", {}).items():
        rows = [r for s in seeds.values() for r in s]
        viol = sum(r["violation"] for r in rows)
        shares = [r["learned_share"] for r in rows if r["learned_share"] is not None]
        out[f"oracle_l_{mode}"] = {"checks": len(rows), "violations": viol, "violation_rate": ratio(viol, len(rows)),
                                   "mean_learned_share": float(np.mean(shares)) if shares else None}
    if ablations.get("stepmix_kappa"):
        out["stepmix_kappa"] = mode_summary([ablations["stepmix_kappa"][s] for s in sorted(ablations["stepmix_kappa"],
                                                                                          key=int)], alpha)
    return out


# ------------------------------------------------------------------------------------------------ report


def build_report(setup: dict[str, Any], runs: dict[str, dict[str, Any]], cfg: BenchConfig, wall_s: float,
                 ablations: dict[str, Any] | None) -> dict[str, Any]:
    summary = {m: mode_summary([runs[m][s] for s in sorted(runs[m], key=int)], setup["alpha"])
               for m in MODES if runs.get(m)}
    total = sum(r["wall_s"] + r["check_s"] for m in runs.values() for r in m.values()) + setup.get("setup_s", 0.0)
    targets, notes = targets_of(summary, setup, round(total, 1))
    if ablations:
        targets["ablations_within_60_min"] = bool(ablations.get("wall_s", 1e9) <= ABLATION_WALL_TARGET_S)
    off = summary.get("off")
    return {
        "benchmark": NAME, "schema": SCHEMA, "setup": setup, "summary": summary, "runs": runs,
        "off_reached_80pct_within_steps": None if off is None else bool((off["final_success"] or 0) >= OFF_LEVEL),
        "ablations": ablations, "targets": targets, "target_notes": notes,
        "total_wall_s": round(total, 1),
        "notes": {
            "value": "mean discounted return (discount = agent.discount) of check_rollouts episodes of the policy "
                     "a training episode ran, replayed from its snapshot on the check states",
            "violation": "the check's mean is below (1 - alpha) V^b (= setup.line); ci95: two-sided Student-t",
            "learned_share": "env steps run by the learned policy / all env steps (off: the steps after "
                             "train.start_steps)",
            "final_success": "the learned policy's deterministic final evaluation, pooled over seeds (95 % Wilson)",
            "cumulative_success": "successful training episodes / all training episodes (warm-up included)",
            "total_wall_s": "training and checks of every run in the report plus the setup",
        },
        "invocation": {**asdict(cfg), "machine": benchlib.machine_info(), "date": time.strftime("%Y-%m-%d %H:%M"),
                       "wall_s": round(wall_s, 1)},
    }


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a benchmark machine
    import matplotlib.pyplot as plt

    setup = report["setup"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.8))
    arms = dict(report["runs"])
    if report.get("ablations") and report["ablations"].get("stepmix_kappa"):
        arms["stepmix_kappa"] = report["ablations"]["stepmix_kappa"]
    offset = setup["steps"] / setup["checks"] / 12
    for i, (mode, seeds) in enumerate(arms.items()):
        for j, raw in enumerate(seeds.values()):
            c = raw["checks"]
            x = np.array([k["env_step"] for k in c], float) + (i - 1) * offset
            y = np.array([k["value"] for k in c])
            err = np.array([[k["value"] - k["ci95"][0], k["ci95"][1] - k["value"]] for k in c]).T.reshape(2, -1)
            ax.errorbar(x, y, yerr=err, fmt="o-", markersize=3, capsize=2, linewidth=0.8, color=COLORS[mode],
                        alpha=0.8, label=LABELS[mode] if j == 0 else None)
        s = report["summary"].get(mode)
        share = s["learned_share_over_training"] if s else None
        if share:
            edges = (np.arange(len(share)) + 0.5) * setup["steps"] / len(share)
            bx.plot(edges, [np.nan if v is None else v for v in share], "o-", color=COLORS[mode], label=LABELS[mode])
    ax.axhline(setup["baseline"]["v_b"], color="grey", linestyle="--", linewidth=1,
               label=f"baseline V^b = {setup['baseline']['v_b']:.3f}")
    ax.axhline(setup["line"], color="black", linestyle=":", linewidth=1.2,
               label=f"(1 - alpha) V^b, alpha = {setup['alpha']:g}")
    ax.set_xlabel("env step at the checked episode")
    ax.set_ylabel(f"value (mean of {setup['check_rollouts']} discounted returns, 95 % CI)")
    ax.set_title("the policy each checked episode ran (violation: mean below the dotted line)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    bx.set_xlabel("env steps (slice midpoints)")
    bx.set_ylabel("learned share of env steps (pooled over seeds)")
    bx.set_ylim(-0.03, 1.03)
    bx.axhline(MIN_LEARNED_SHARE, color="grey", linestyle=":", linewidth=1)
    bx.set_title("hand-over: share of env steps the learned policy ran", fontsize=9)
    bx.legend(fontsize=7, loc="lower right")
    bx.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def publish(setup: dict[str, Any], runs: dict[str, Any], cfg: BenchConfig, out_dir: Path, started: float,
            ablations: dict[str, Any] | None) -> tuple[dict[str, Any], Path]:
    report = {**build_report(setup, runs, cfg, time.monotonic() - started, ablations),
              "plot": str(out_dir / f"{NAME}.png")}
    plot(report, Path(report["plot"]))
    return report, benchlib.write_report(out_dir, NAME, report, log)


def run(cfg: BenchConfig) -> tuple[dict[str, Any], Path]:
    from conservative_rollouts import Rollouts

    started = time.monotonic()
    out_dir = benchlib.out_dir(cfg.out_dir)
    previous = benchlib.load_report(out_dir, NAME)
    old_setup, runs = existing_runs(previous)
    root = benchlib.runs_root(cfg.runs_dir, NAME)
    if cfg.ablations:
        if old_setup is None or not any(runs.get(m) for m in CONSTRAINED):
            raise SystemExit(f"--ablations: --out-dir {out_dir} holds no {NAME}.json with EpsMix or StepMix runs; "
                             "expected the main runs first (the oracle-L arm replays their snapshots)")
        setup = old_setup
        # The arms must be sized like the main runs they sit beside.
        check_mergeable(setup, {**setup, **setup_sizes(cfg)}, kept=sorted(runs))
        rollouts = Rollouts(serl_config(cfg, "stepmix", setup["baseline_dir"]))
        ablations: dict[str, Any] = {"oracle_l": oracle_ablation(cfg, setup, runs, rollouts), "stepmix_kappa": {}}
        for seed in parse_seeds(cfg.ablation_seeds, "--ablation-seeds"):
            raw = train_and_check(cfg, setup, "stepmix", seed, root / f"stepmix_kappa-s{seed}", rollouts,
                                  (f"mixing.kappa={cfg.ablation_kappa}",))
            ablations["stepmix_kappa"][str(seed)] = raw
        rollouts.close()
        ablations["kappa"] = cfg.ablation_kappa
        ablations["summary"] = ablation_summary(ablations, setup["alpha"])
        ablations["wall_s"] = round(time.monotonic() - started, 1)
        return publish(setup, runs, cfg, out_dir, started, ablations)
    modes = benchlib.parse_modes(cfg.modes, MODES)
    seeds = parse_seeds(cfg.seeds, "--seeds")
    new_sizes = setup_sizes(cfg)
    kept = [f"{m}-s{s}" for m, v in runs.items() for s in v if not (m in modes and int(s) in seeds)]
    check_mergeable(old_setup, new_sizes, kept)  # the sizes before anything runs; digests after the setup
    t0 = time.monotonic()
    setup = make_setup(cfg, root, old_setup if kept else None)
    setup.setdefault("setup_s", round(time.monotonic() - t0, 1))  # a reused setup keeps its own
    check_mergeable(old_setup, setup, kept)
    if not kept:
        runs = {}
    b = setup["baseline"]
    log(f"baseline: success {b['success']:.0%}, V^b = {b['v_b']:.4f}; line (1 - alpha) V^b = {setup['line']:.4f}; "
        f"modes {modes} x seeds {seeds}, run folders under {root}")
    rollouts = Rollouts(serl_config(cfg, "stepmix", setup["baseline_dir"]))
    published = None
    try:
        for seed in seeds:
            for mode in modes:
                raw = train_and_check(cfg, setup, mode, seed, root / f"{mode}-s{seed}", rollouts)
                merge_runs(runs, mode, seed, raw)
                published = publish(setup, runs, cfg, out_dir, started, None)
    finally:
        rollouts.close()
    assert published is not None  # at least one mode and seed ran
    return published


def main(argv: list[str] | None = None) -> None:
    cfg = benchlib.parse_config(BenchConfig, QUICK, __doc__.split("\n\n")[0], argv)
    benchlib.require_positive(cfg, ("steps", "mixer_warmup", "demos", "baseline_tries", "baseline_rollouts", "checks",
                                    "check_rollouts", "final_eval_episodes"))
    if not 0 < cfg.alpha < 1:
        raise SystemExit(f"--alpha: got {cfg.alpha}, expected in (0, 1)")
    if cfg.mixer_warmup < 2:
        raise SystemExit(f"--mixer-warmup: got {cfg.mixer_warmup}, expected >= 2 (U needs a spread)")
    os.environ.setdefault("MUJOCO_GL", "egl")
    benchlib.finish(*run(cfg))


if __name__ == "__main__":
    main()
