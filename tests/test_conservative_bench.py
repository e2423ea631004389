"""Tests for the pure parts of `benchmarks/conservative.py` (issue 18's rebuild): a check judged on its mean
against (1 - alpha) V^b with its interval beside it, the learned share and training success from the actor's
mixing records, the choice of evenly spaced snapshots, the `targets` map with its guards against targets met
trivially, the merge of separate invocations, and the oracle-L stand-in driving the real EpsMix / StepMix plan."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import conservative as cb  # noqa: E402  (benchmarks/ is not a package: its scripts import each other by path)
import conservative_rollouts as cr  # noqa: E402

from serl_stack.config import MixingConfig  # noqa: E402
from serl_stack.safety.estimates import ValueBound  # noqa: E402
from serl_stack.safety.stepmix import NEVER, make_mixer  # noqa: E402

# ------------------------------------------------------------------------------------------- helpers


def setup(**over: Any) -> dict[str, Any]:
    """A canonical setup as `make_setup` writes it, baseline in the band."""
    base = {**cb.setup_sizes(cb.CANONICAL), "demos_dir": "/nowhere/demos", "demos_digest": "d1",
            "baseline_dir": "/nowhere/bc", "baseline_digest": "b1", "line": 0.16, "setup_s": 60.0,
            "baseline": {"success": 0.5, "v_b": 0.2}}
    return {**base, **over}


def records(n: int, learned: list[int], length: int = 40, success: list[bool] | None = None) -> list[dict[str, Any]]:
    """Mixing records as the actor writes them (only the fields the benchmark reads, plus some it ignores)."""
    success = success if success is not None else [False] * n
    return [{"episode": float(i), "warmup": 0.0, "return": 0.0, "learned_steps": float(learned[i]),
             "env_steps": (i + 1) * length, "length": length, "success": success[i], "epsilon": 0.2}
            for i in range(n)]


def raw_run(seed: int, violations: int = 0, learned_share: float = 0.9, last_share: float = 0.9,
            final: float = 0.85, successes: int = 300, episodes: int = 600, checks: int = 12,
            wall_s: float = 100.0) -> dict[str, Any]:
    """A run entry as `train_and_check` keeps it."""
    cs = [{"episode": 10 * i, "env_step": 2500 * i, "value": 0.1 if i < violations else 0.3, "ci95": [0.0, 0.4],
           "n": 100, "violation": i < violations, "learned_share": learned_share, "success": 0.5}
          for i in range(checks)]
    share = {"episodes": episodes, "successes": successes, "last_learned": int(1000 * last_share), "last_steps": 1000,
             "slice_learned": [int(100 * learned_share)] * checks, "slice_steps": [100] * checks}
    return {"seed": seed, "run_dir": f"/nowhere/s{seed}", "wall_s": wall_s, "check_s": 10.0, "env_steps": 30000,
            "final_success": final, "final_episodes": 100, "snapshot_every": 12, "checks": cs, "share": share}


def summaries(off: dict[str, Any] | None = None, **modes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    off = off or {"final": 0.9, "successes": 250, "learned_share": 1.0, "violations": 3}
    out = {"off": cb.mode_summary([raw_run(s, **off) for s in range(3)], 0.2)}
    for m in cb.CONSTRAINED:
        out[m] = cb.mode_summary([raw_run(s, **modes.get(m, {})) for s in range(3)], 0.2)
    return out


# ------------------------------------------------------------------------------------------- the check


def test_a_check_is_judged_on_its_mean_with_the_interval_beside_it() -> None:
    line = 0.5
    # Mean just below the line, interval well above it: a violation (the old rule, a bound below, said no).
    below = [0.0, 1.0] * 50 + [0.0]
    got = cb.judge_check(below, line)
    assert got["value"] < line and got["ci95"][1] > line and got["violation"]
    # Mean just above, interval reaching far below: not a violation.
    above = [0.0, 1.0] * 50 + [1.0]
    got = cb.judge_check(above, line)
    assert got["value"] > line and got["ci95"][0] < line and not got["violation"]
    # The interval is the two-sided 95 % Student-t interval of the mean.
    x = np.array(above)
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    assert got["ci95"] == pytest.approx([x.mean() - half, x.mean() + half])
    assert got["n"] == len(x)
    with pytest.raises(ValueError, match="no values"):
        cb.judge_check([], line)


# ------------------------------------------------------------------------------------------- learned share


def test_learned_share_and_training_success_from_mixing_records(tmp_path: Path) -> None:
    # 20 episodes of 40 steps: the learned policy runs none in the first 10, all 40 in the last 2, 20 between.
    learned = [0] * 10 + [20] * 8 + [40] * 2
    success = [False] * 15 + [True] * 5
    path = tmp_path / "mixing-actor-0.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records(20, learned, success=success)))
    table = cb.table_from_records(cb.read_records(path))
    s = cb.share_summary(table, steps=800, slices=4)
    assert (s["episodes"], s["successes"]) == (20, 5)
    # The last 10 % of 20 episodes are the last 2: all learned.
    assert (s["last_learned"], s["last_steps"]) == (80, 80)
    # Slices of 200 env steps by where each episode ends: episodes 0-4 | 5-9 | 10-14 | 15-19.
    assert s["slice_steps"] == [200, 200, 200, 200]
    assert s["slice_learned"] == [0, 0, 100, 140]
    summary = cb.mode_summary([{**raw_run(0), "share": s}], alpha=0.2)
    assert summary["learned_share_last_10pct"] == 1.0
    assert summary["learned_share_over_training"] == [0.0, 0.0, 0.5, 0.7]
    assert summary["cumulative_success"] == 0.25


def test_records_without_the_actor_fields_are_refused() -> None:
    bad = records(3, [0, 0, 0])
    del bad[1]["learned_steps"]
    with pytest.raises(ValueError, match=r"record 1: missing \['learned_steps'\]"):
        cb.table_from_records(bad)


def test_snapshots_nearest_the_slice_midpoints() -> None:
    # Snapshots every 5 episodes of 50 steps: episode e starts at 50 e.
    starts = {e: 50 * e for e in range(0, 120, 5)}
    got = cb.pick_snapshots(starts, steps=6000, checks=12)
    targets = [(j + 0.5) * 500 for j in range(12)]
    assert len(got) == 12 == len(set(got))
    assert all(abs(starts[e] - t) <= 125 for e, t in zip(got, targets, strict=True))
    # Fewer snapshots than checks: each is used once.
    assert cb.pick_snapshots({0: 0, 5: 250}, steps=6000, checks=12) == [0, 5]


# ------------------------------------------------------------------------------------------- targets


def test_targets_met_when_the_constrained_modes_hand_over_safely() -> None:
    s = summaries(epsmix={"successes": 350}, stepmix={"successes": 400, "violations": 1})
    targets, notes = cb.targets_of(s, setup(), wall_s=5000.0)
    assert all(targets.values()), notes
    assert s["off"]["violation_rate"] == 0.25 and s["stepmix"]["violation_rate"] == 1 / 12
    # Off's rate sits in the summary, with no target of its own.
    assert not any(k.startswith("off_") for k in targets)


def test_each_target_fails_on_its_own_measurement() -> None:
    s = summaries(epsmix={"violations": 2, "successes": 350, "last_share": 0.7},
                  stepmix={"final": 0.7, "successes": 200})
    targets, notes = cb.targets_of(s, setup(), wall_s=6000.0)
    assert not targets["epsmix_violation_rate_le_0.1"]          # 6 / 36 > 0.1
    assert not targets["epsmix_learned_share_last_10pct_gt_0.8"]
    assert targets["epsmix_final_success_within_0.1_of_off"]
    assert not targets["stepmix_final_success_within_0.1_of_off"]  # 0.7 vs off's 0.9
    assert not targets["stepmix_cumulative_success_above_off"]     # 200 < 250 per 600
    assert not targets["within_90_min"] and "6000" in notes["within_90_min"]
    assert notes["epsmix_violation_rate_le_0.1"] == "measured, not met"


def test_targets_met_trivially_are_not_met() -> None:
    # The learned policy never ran more than alpha of the steps: zero violations prove nothing.
    s = summaries(epsmix={"learned_share": 0.2, "successes": 350}, stepmix={"successes": 350})
    targets, notes = cb.targets_of(s, setup(), wall_s=100.0)
    assert not targets["epsmix_violation_rate_le_0.1"] and "trivial" in notes["epsmix_violation_rate_le_0.1"]
    assert targets["stepmix_violation_rate_le_0.1"]
    # Off never learned: matching its final success, or beating its training success, says nothing.
    s = summaries(off={"final": 0.1, "successes": 10}, epsmix={"final": 0.1}, stepmix={"final": 0.1})
    targets, notes = cb.targets_of(s, setup(), wall_s=100.0)
    for m in cb.CONSTRAINED:
        for name in (f"{m}_final_success_within_0.1_of_off", f"{m}_cumulative_success_above_off"):
            assert not targets[name] and "off did not reach 80%" in notes[name]
        assert targets[f"{m}_violation_rate_le_0.1"]
    # A baseline outside the 40-60 % band voids every constrained-mode target.
    s = summaries(epsmix={"successes": 350}, stepmix={"successes": 350})
    targets, notes = cb.targets_of(s, setup(baseline={"success": 0.95, "v_b": 0.3}), wall_s=100.0)
    assert not any(v for k, v in targets.items() if k != "within_90_min")
    assert "outside the band" in notes["stepmix_learned_share_last_10pct_gt_0.8"]


def test_targets_need_three_seeds_and_the_canonical_sizes() -> None:
    s = summaries(epsmix={"successes": 350}, stepmix={"successes": 350})
    s["stepmix"] = cb.mode_summary([raw_run(0)], 0.2)
    targets, notes = cb.targets_of(s, setup(), wall_s=100.0)
    assert not targets["stepmix_learned_share_last_10pct_gt_0.8"] and "fewer than 3" in notes[
        "stepmix_learned_share_last_10pct_gt_0.8"]
    assert targets["epsmix_learned_share_last_10pct_gt_0.8"]
    assert not targets["within_90_min"]
    targets, notes = cb.targets_of(summaries(), setup(steps=900), wall_s=100.0)
    assert not targets["epsmix_learned_share_last_10pct_gt_0.8"]
    assert "canonical" in notes["epsmix_learned_share_last_10pct_gt_0.8"]
    targets, notes = cb.targets_of(summaries(), setup(demo_prior=False), wall_s=100.0)
    assert not targets["epsmix_learned_share_last_10pct_gt_0.8"]
    assert "the demo prior" in notes["epsmix_learned_share_last_10pct_gt_0.8"]


def test_every_mode_learns_from_the_baseline_bc_policy_as_its_prior() -> None:
    """With the demo prior every mode's run is regularized toward, and starts from, the baseline (the same BC
    policy the mixers mix with); without it the runs are plain SAC + demos. Checked on the loaded config."""
    from serl_stack.config import apply_overrides, load

    cfg = cb.BenchConfig()
    for mode in cb.MODES:
        sets = cb.run_sets(cfg, mode, 1, "/base/bc", "/d", 10)
        bc = apply_overrides(load(cb.ROOT / cfg.config), sets).agent.bc
        loaded = apply_overrides(load(cb.ROOT / cfg.config), sets)
        assert bc.enabled and bc.init_actor_from_bc and bc.prior_run == "/base/bc"
        assert loaded.agent.target_entropy_scale == cb.PRIOR_ENTROPY_SCALE
        assert "mixing.baseline_run=/base/bc" in sets
    plain = cb.run_sets(cb.BenchConfig(demo_prior=False), "off", 1, "/base/bc", "/d", 10)
    assert not apply_overrides(load(cb.ROOT / cfg.config), plain).agent.bc.enabled


# ------------------------------------------------------------------------------------------- merge


def test_merge_keeps_other_invocations_runs_under_the_same_setup() -> None:
    old = setup()
    runs = {"off": {"0": raw_run(0), "1": raw_run(1)}, "epsmix": {"0": raw_run(0)}}
    report = cb.build_report(old, runs, cb.CANONICAL, 10.0, None)
    report = json.loads(json.dumps(report))  # as read back from disk
    got_setup, got_runs = cb.existing_runs(report)
    assert got_setup == old and set(got_runs) == {"off", "epsmix"}
    # A second invocation (--modes epsmix --seeds 1) adds its run; the report keeps both.
    cb.check_mergeable(got_setup, old, kept=["off-s0", "off-s1", "epsmix-s0"])
    # Before its setup exists the invocation knows only its sizes: the digests are checked once it does.
    sizes = {k: v for k, v in old.items() if not k.endswith("_digest")}
    cb.check_mergeable(got_setup, sizes, kept=["off-s0"])
    with pytest.raises(SystemExit, match="steps"):
        cb.check_mergeable(got_setup, {**sizes, "steps": 20000}, kept=["off-s0"])
    cb.merge_runs(got_runs, "epsmix", 1, raw_run(1, violations=5))
    merged = cb.build_report(old, got_runs, cb.CANONICAL, 10.0, None)
    assert merged["summary"]["epsmix"]["seeds"] == [0, 1]
    assert merged["summary"]["epsmix"]["violations"] == 5
    assert merged["summary"]["off"]["seeds"] == [0, 1]
    # Another setup (other demonstrations, or other sizes) refuses to keep them.
    with pytest.raises(SystemExit, match="demos_digest"):
        cb.check_mergeable(got_setup, setup(demos_digest="other"), kept=["off-s0"])
    with pytest.raises(SystemExit, match="steps"):
        cb.check_mergeable(got_setup, setup(steps=20000), kept=["off-s0"])
    cb.check_mergeable(got_setup, setup(steps=20000), kept=[])  # nothing kept: nothing to protect
    # A report of another layout is replaced, not merged.
    assert cb.existing_runs({**report, "schema": 1}) == (None, {})


def test_parse_seeds() -> None:
    assert cb.parse_seeds("2, 0,2", "--seeds") == [2, 0]
    for bad in ("", "a", "-1"):
        with pytest.raises(SystemExit, match="--seeds"):
            cb.parse_seeds(bad, "--seeds")


# ------------------------------------------------------------------------------------------- oracle L


def mixer_with_baseline(mode: str) -> Any:
    """A real mixer after its warm-up: 10 baseline episodes of 30 steps, reward 1 at the end of half of them."""
    mixer = make_mixer(MixingConfig(mode=mode, alpha=0.2, baseline_episodes=10), discount=0.96,
                       rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    for _ in range(10):
        mixer.begin_episode()
        for t in range(30):
            mixer.choose(np.zeros(3), ValueBound(0.0, 0.0) if mixer.needs_bound else None)
            mixer.record_reward(float(t == 29 and rng.random() < 0.5))
        mixer.end_episode()
    return mixer


def plans(mixer: Any, n: int, oracle: float | None) -> list[int]:
    """The switch steps `n` replayed episodes draw, each from a fresh copy with its own coins (as the checks do)."""
    out = []
    for i in range(n):
        m = copy.deepcopy(mixer)
        m.rng = np.random.default_rng(i)
        if oracle is not None:
            m.learned = cr.OracleLearned(oracle)
        m.begin_episode()
        out.append(cr.planned_switch(m))
    return out


@pytest.mark.parametrize("mode", ["epsmix", "stepmix"])
def test_oracle_l_drives_the_real_mixers_plan(mode: str) -> None:
    mixer = mixer_with_baseline(mode)
    # A learned policy worth U: L >= (1 - alpha) U, so eps = 1 (EpsMix) and tau = 0 (StepMix) every episode.
    assert plans(mixer, 200, oracle=mixer.baseline.upper()) == [0] * 200
    # Its own L (0: no learned returns yet) keeps the baseline in most episodes, and the copies taught it nothing.
    own = plans(mixer, 400, oracle=None)
    assert 0.0 < np.mean([p == 0 for p in own]) < 0.5 and NEVER in own
    assert mixer.learned.n == 0 and mixer.episode == 9
    with pytest.raises(ValueError, match="oracle L"):
        cr.OracleLearned(-1.0)


def test_ablation_summary_counts_the_oracle_checks_and_summarizes_the_kappa_arm() -> None:
    rows = [{"episode": i, "env_step": 100 * i, "learned_value": 0.3, "value": v, "ci95": [0.0, 1.0], "n": 100,
             "violation": v < 0.16, "learned_share": sh} for i, (v, sh) in enumerate([(0.1, 0.2), (0.3, 1.0)])]
    got = cb.ablation_summary({"oracle_l": {"epsmix": {"0": rows, "1": rows[1:]}},
                               "stepmix_kappa": {"0": raw_run(0, violations=2)}}, alpha=0.2)
    assert got["oracle_l_epsmix"]["checks"] == 3 and got["oracle_l_epsmix"]["violations"] == 1
    assert got["oracle_l_epsmix"]["mean_learned_share"] == pytest.approx(2.2 / 3)
    assert got["stepmix_kappa"]["violations"] == 2 and got["stepmix_kappa"]["seeds"] == [0]
