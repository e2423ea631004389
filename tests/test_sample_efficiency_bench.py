"""Tests for the pure parts of `benchmarks/sample_efficiency.py`: the two-consecutive-evaluations rule for "steps
to a level", censoring at the cap and the censored median, the `targets` map computed from results, the SBX
baseline's demonstration replay (`sbx_baseline.py`; a real Stable-Baselines3 ReplayBuffer and VecNormalize)
giving half of every minibatch from the demos, and the merge of a `--learners sbx` invocation into a report that
holds ours."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import benchlib  # noqa: E402  (benchmarks/ is not a package: its scripts import it by path)
import sample_efficiency as se  # noqa: E402
import sbx_baseline  # noqa: E402

CANON = {"demos": 20, "demo_noise": 0.1, "eval_every": 1000, "eval_episodes": 20}


# ------------------------------------------------------------------------------------------- helpers


def make_run(seed: int, reach_at: int | None, cap: int, wall_s: float = 300.0, every: int = 1000,
             start: int = 1000) -> dict[str, Any]:
    """A run record as the learners return it: evaluations every `every` steps after `start`, 0.5 until the
    two consecutive 0.9s ending at `reach_at` (then the run stops), or 0.5 up to `cap` when None."""
    last = cap if reach_at is None else reach_at
    steps = list(range(start + every, last + 1, every))
    success = [0.5] * len(steps)
    if reach_at is not None:
        success[-2:] = [0.9, 0.95]
    return {"seed": seed, "eval_env_steps": steps, "eval_success": success, "eval_episodes": 20,
            "env_steps": last, "wall_s": wall_s, "updates_per_s": 100.0}


def settings(task: str, **changes: Any) -> dict[str, Any]:
    target = se.TASKS[task].target_steps
    return {"config": se.TASKS[task].config, "config_digest": "abc", "env": task, "target_steps": target,
            "every_seed_max": se.TASKS[task].every_seed_max, "cap": 2 * target, "differences": [f"{task} d"],
            **CANON, **changes}


def tasks_with(ours: dict[str, list[dict[str, Any]]], sbx: dict[str, list[dict[str, Any]]] | None = None,
               **changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for task in se.TASKS:
        learners = {}
        if task in ours:
            learners["ours"] = {"runs": ours[task], "demos_digest": "d"}
        if sbx and task in sbx:
            learners["sbx"] = {"runs": sbx[task], "demos_digest": "d"}
        if learners:
            out[task] = {"settings": settings(task, **changes), "demos": {"episodes": 20}, "learners": learners}
    return out


def targets(tasks: dict[str, Any]) -> dict[str, bool]:
    return se.build_report(tasks, se.BenchConfig(), 0.0)["targets"]


def good(task: str, reach: tuple[int | None, ...] = (8000, 10_000, 12_000), wall_s: float = 300.0) -> list[dict]:
    cap = 2 * se.TASKS[task].target_steps
    return [make_run(i, r, cap, wall_s) for i, r in enumerate(reach)]


# ------------------------------------------------------------------------------------------- steps to a level


def test_a_level_counts_at_the_second_of_two_consecutive_evaluations_with_float32_values() -> None:
    nine = float(np.float32(18 / 20))  # what TensorBoard gives back for 18 of 20 episodes
    assert nine < 0.9
    steps = [2000, 3000, 4000, 5000]
    assert se.steps_to_level(steps, [0.5, nine, nine, 1.0], 0.9) == 4000
    # One evaluation at the level is not enough, however late it comes.
    assert se.steps_to_level(steps, [0.5, 0.5, 0.5, 1.0], 0.9) is None
    assert se.steps_to_level(steps, [0.5, 0.5, 0.5, 0.5], 0.9) is None
    # Just under the level (17/20 read back as float32) never counts.
    assert se.steps_to_level(steps, [float(np.float32(17 / 20))] * 4, 0.9) is None


def test_a_level_reached_then_lost_counts_only_when_reached_twice_in_a_row_again() -> None:
    steps = [2000, 3000, 4000, 5000, 6000, 7000]
    success = [0.9, 0.85, 0.95, 0.8, 0.9, 1.0]
    assert se.steps_to_level(steps, success, 0.9) == 7000
    # The same curve reaches 80 % at the second evaluation already (0.9, 0.85 are both >= 0.8).
    assert se.steps_to_level(steps, success, 0.8) == 3000


def test_censored_runs_report_null_and_the_median_never_reads_as_the_cap() -> None:
    cap = 30_000
    runs = [make_run(0, 9000, cap), make_run(1, None, cap), make_run(2, 13_000, cap)]
    level = se.level_summary(runs, 0.9, cap)
    assert level["per_seed"] == [9000, None, 13_000]
    assert level["censored"] == [False, True, False]
    assert (level["median"], level["median_censored"]) == (13_000, False)  # the censored run ranks above both

    runs[2] = make_run(2, None, cap)
    level = se.level_summary(runs, 0.9, cap)
    assert (level["median"], level["median_censored"]) == (None, True)
    assert benchlib.censored_median([4000, 6000]) == (5000, False)
    assert benchlib.censored_median([4000, None]) == (None, True)
    assert benchlib.censored_median([]) == (None, False)


def test_mean_curve_pools_episodes_and_carries_a_stopped_run_forward() -> None:
    a = {"eval_env_steps": [2000, 3000], "eval_success": [0.9, 1.0], "eval_episodes": 20}
    b = {"eval_env_steps": [2000, 3000, 4000], "eval_success": [0.0, 0.5, 0.6], "eval_episodes": 20}
    curve = se.mean_curve([a, b])
    assert curve["env_steps"] == [2000, 3000, 4000]
    assert curve["mean_success"] == [0.45, 0.75, 0.8]  # at 4000, a's 1.0 is carried forward
    assert curve["live_seeds"] == [2, 2, 1]
    low, high = benchlib.wilson_interval(18, 40)
    assert (curve["ci95_low"][0], curve["ci95_high"][0]) == (round(low, 4), round(high, 4))
    assert low < 0.45 < high
    assert benchlib.wilson_interval(0, 20)[0] == 0.0 and benchlib.wilson_interval(20, 20)[1] == 1.0


# ------------------------------------------------------------------------------------------- targets


def test_targets_are_met_by_good_results_and_each_fails_on_its_own_cause() -> None:
    ours = {"pick_cube": good("pick_cube"), "peg_insert": good("peg_insert", (14_000, 16_000, 30_000))}
    assert targets(tasks_with(ours)) == {
        "pick_cube_90pct_median_le_15000": True, "pick_cube_90pct_every_seed_le_20000": True,
        "peg_insert_90pct_median_le_20000": True, "ours_each_run_le_600s": True, "ours_all_runs_le_5400s": True}

    # One pick-cube seed at 21k: the median holds, "none above 20k" does not.
    t = targets(tasks_with({**ours, "pick_cube": good("pick_cube", (9000, 10_000, 21_000))}))
    assert t["pick_cube_90pct_median_le_15000"] and not t["pick_cube_90pct_every_seed_le_20000"]
    # A censored seed fails "every seed"; two censored seeds put the median on a censored run.
    t = targets(tasks_with({**ours, "pick_cube": good("pick_cube", (9000, None, None))}))
    assert not t["pick_cube_90pct_median_le_15000"] and not t["pick_cube_90pct_every_seed_le_20000"]
    # Wall-clock: one run over 600 s; all runs together over 5400 s.
    slow = {**ours, "peg_insert": good("peg_insert", wall_s=601.0)}
    t = targets(tasks_with(slow))
    assert not t["ours_each_run_le_600s"] and t["ours_all_runs_le_5400s"]
    t = targets(tasks_with({task: good(task, wall_s=599.0) for task in ours}, sbx=None))
    assert t["ours_each_run_le_600s"] and t["ours_all_runs_le_5400s"]
    heavy = {task: good(task, (8000,) * 5, wall_s=590.0) for task in ours}  # 10 runs, 5900 s in all
    t = targets(tasks_with(heavy))
    assert t["ours_each_run_le_600s"] and not t["ours_all_runs_le_5400s"]


def test_missing_data_makes_targets_false_and_sbx_never_counts() -> None:
    ours = {"pick_cube": good("pick_cube"), "peg_insert": good("peg_insert")}
    # Ours absent (SBX alone, even with perfect figures): every target false.
    assert not any(targets(tasks_with({}, sbx=ours)).values())
    # Peg-insert not run: its target and both wall-clock ones (they need both tasks) are false.
    t = targets(tasks_with({"pick_cube": ours["pick_cube"]}))
    assert t["pick_cube_90pct_median_le_15000"] and t["pick_cube_90pct_every_seed_le_20000"]
    assert not t["peg_insert_90pct_median_le_20000"]
    assert not t["ours_each_run_le_600s"] and not t["ours_all_runs_le_5400s"]
    # Two seeds only, or settings other than the (2 evaluation episodes, a short cap): false.
    assert not any(targets(tasks_with({task: runs[:2] for task, runs in ours.items()})).values())
    assert not any(targets(tasks_with(ours, eval_episodes=2)).values())
    assert not any(targets(tasks_with(ours, cap=2000)).values())


# ------------------------------------------------------------------------------------------- demo replay


def test_demo_replay_fills_half_of_every_minibatch_from_the_demos_normalized_at_sample_time() -> None:
    pytest.importorskip("stable_baselines3")
    import gymnasium as gym
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    # Pendulum: observations (3,), actions in [-2, 2] (so the demos' env-unit actions must be scaled to [-1, 1]).
    venv = VecNormalize(DummyVecEnv([lambda: gym.make("Pendulum-v1")]), norm_obs=True, norm_reward=False,
                        clip_obs=10.0)
    venv.obs_rms.mean = np.array([0.0, 0.0, 0.5])
    venv.obs_rms.var = np.array([4.0, 1e4, 0.25])
    n_demo = 40
    j = np.arange(n_demo, dtype=np.float32)
    # The first feature tells demos (-3) from online rows (+3), the second numbers them.
    demos = {"observations": np.stack([np.full(n_demo, -3.0), j, j], axis=1).astype(np.float32),
             "next_observations": np.stack([np.full(n_demo, -3.0), j + 1, j], axis=1).astype(np.float32),
             "actions": (j[:, None] / n_demo * 2.0).astype(np.float32), "rewards": j,
             "masks": (j % 2).astype(np.float32)}
    minibatch, utd = 16, 4
    buffer = sbx_baseline.demo_replay_class()(1000, venv.observation_space, venv.action_space, device="cpu",
                                              demos=demos, minibatch_size=minibatch, demo_fraction=0.5)
    for i in range(100):
        obs = np.array([[3.0, i, i]], np.float32)
        buffer.add(obs, obs + [[0, 1, 0]], np.array([[0.5]]), np.array([float(i)]), np.array([i % 3 == 0]),
                   [{"TimeLimit.truncated": False}])
    np.random.seed(0)
    batch = buffer.sample(utd * minibatch, env=venv)
    obs, actions, next_obs = batch.observations.numpy(), batch.actions.numpy(), batch.next_observations.numpy()
    dones, rewards = batch.dones.numpy()[:, 0], batch.rewards.numpy()[:, 0]
    raw = obs * np.sqrt(venv.obs_rms.var + venv.epsilon) + venv.obs_rms.mean  # undo the normalization
    is_demo = raw[:, 0] < 0
    assert np.allclose(raw[is_demo, 0], -3.0) and np.allclose(raw[~is_demo, 0], 3.0)
    # Each minibatch SBX slices out: its first half demos, the rest online.
    assert is_demo.reshape(utd, minibatch).tolist() == [[True] * 8 + [False] * 8] * utd
    # Demo rows are whole demo transitions: reward, done (= not mask), next observation and scaled action match.
    k = np.rint(raw[is_demo, 1]).astype(int)
    assert np.allclose(rewards[is_demo], k)
    assert np.array_equal(dones[is_demo], 1.0 - (k % 2))
    raw_next = next_obs * np.sqrt(venv.obs_rms.var + venv.epsilon) + venv.obs_rms.mean
    assert np.allclose(raw_next[is_demo, 1], k + 1, atol=1e-4)
    assert np.allclose(actions[is_demo, 0], k / n_demo * 2.0 / 2.0, atol=1e-6)  # [-2, 2] -> [-1, 1]
    # Online rows are the buffer's own, scaled by SB3 as usual.
    i = np.rint(raw[~is_demo, 1]).astype(int)
    assert np.allclose(rewards[~is_demo], i) and np.array_equal(dones[~is_demo], (i % 3 == 0).astype(np.float32))
    # Normalized with the statistics current at sample time, and clipped to +-10 as SB3 does.
    assert np.allclose(np.abs(obs[:, 0]), 1.5) and obs[:, 2].max() == 10.0

    quarter = sbx_baseline.demo_replay_class()(1000, venv.observation_space, venv.action_space, device="cpu",
                                               demos=demos, minibatch_size=minibatch, demo_fraction=0.25)
    quarter.add(np.zeros((1, 3)), np.zeros((1, 3)), np.zeros((1, 1)), np.zeros(1), np.zeros(1),
                [{"TimeLimit.truncated": False}])
    first = quarter.sample(2 * minibatch).observations.numpy()[:, 0]  # no env: raw observations
    assert (first < 0).reshape(2, minibatch).tolist() == [[True] * 4 + [False] * 12] * 2
    with pytest.raises(ValueError, match="multiple of 16"):
        buffer.sample(20, env=venv)


# ------------------------------------------------------------------------------------------- merging


def test_an_sbx_invocation_merges_into_a_report_that_holds_ours(tmp_path: Path) -> None:
    ours = {"pick_cube": good("pick_cube"), "peg_insert": good("peg_insert")}
    first = se.build_report(tasks_with(ours), se.BenchConfig(learners="ours"), 0.0)
    benchlib.write_report(tmp_path, se.NAME, first, lambda _: None)

    # What run() does for `--learners sbx --tasks pick_cube`: load, check, begin the task, add the new runs.
    tasks = se.existing_tasks(benchlib.load_report(tmp_path, se.NAME))
    now = {"pick_cube": settings("pick_cube")}
    se.check_mergeable(tasks, now, ["sbx"])
    entry = se.begin_task(tasks, "pick_cube", now["pick_cube"], ["sbx"])
    sbx_runs = [make_run(i, None, 30_000, wall_s=900.0) for i in range(2)]
    entry["learners"]["sbx"] = {"runs": sbx_runs, "demos_digest": "d"}
    merged = se.build_report(tasks, se.BenchConfig(learners="sbx"), 0.0)

    pick = merged["tasks"]["pick_cube"]
    assert sorted(pick["learners"]) == ["ours", "sbx"]
    assert pick["learners"]["ours"]["runs"] == first["tasks"]["pick_cube"]["learners"]["ours"]["runs"]
    assert pick["learners"]["sbx"]["steps_to_90pct"]["per_seed"] == [None, None]
    assert pick["same_demos"] is True
    assert merged["tasks"]["peg_insert"] == first["tasks"]["peg_insert"]  # a task not run is kept as it was
    assert merged["targets"] == first["targets"] and all(merged["targets"].values())

    # Rerunning ours replaces ours and keeps SBX.
    entry = se.begin_task(tasks, "pick_cube", now["pick_cube"], ["ours"])
    assert sorted(entry["learners"]) == ["sbx"]


def test_merging_refuses_kept_results_measured_with_other_settings_and_replaces_other_layouts(
        tmp_path: Path) -> None:
    tasks = tasks_with({"pick_cube": good("pick_cube")})
    with pytest.raises(SystemExit, match="eval_episodes"):
        se.check_mergeable(tasks, {"pick_cube": settings("pick_cube", eval_episodes=10)}, ["sbx"])
    with pytest.raises(SystemExit, match="config_digest"):
        se.check_mergeable(tasks, {"pick_cube": settings("pick_cube", config_digest="new")}, ["sbx"])
    # Nothing is kept when every learner of the task is rerun, or the task differs: no refusal.
    se.check_mergeable(tasks, {"pick_cube": settings("pick_cube", eval_episodes=10)}, ["ours", "sbx"])
    se.check_mergeable(tasks, {"peg_insert": settings("peg_insert", eval_episodes=10)}, ["sbx"])
    # A report of the old layout (no schema) is replaced, not merged.
    old = {"benchmark": se.NAME, "ours_demos": {}, "targets": {"x": True}}
    benchlib.write_report(tmp_path, se.NAME, old, lambda _: None)
    assert se.existing_tasks(benchlib.load_report(tmp_path, se.NAME)) == {}


# ------------------------------------------------------------------------------------------- ours' BC prior


def test_ours_on_a_bc_prior_task_is_regularized_toward_and_started_from_its_prior_and_nothing_else_changes() -> None:
    import dataclasses

    from serl_stack.config import load

    assert se.TASKS["pick_cube"].bc_prior
    for task, spec in se.TASKS.items():
        base = se.run_overrides(se.CANONICAL, task, 1, Path("/demos"))
        if not spec.bc_prior:
            assert se.ours_overrides(se.CANONICAL, task, 1, Path("/demos"), None) == base
            continue
        sets = se.ours_overrides(se.CANONICAL, task, 1, Path("/demos"), Path("/prior"))
        assert sets[:len(base)] == base and set(sets) - set(base) == {*se.BC_PRIOR_SETS, "agent.bc.prior_run=/prior"}
        cfg, plain = load(ROOT / spec.config, sets), load(ROOT / spec.config, base)
        bc = cfg.agent.bc
        assert bc.enabled and bc.init_actor_from_bc and bc.prior_run == "/prior"
        # Only those three fields of agent.bc differ from the config's own; the rest of the run is the same.
        assert dataclasses.replace(bc, enabled=False, init_actor_from_bc=False, prior_run="") == plain.agent.bc
        assert dataclasses.replace(cfg, agent=plain.agent) == plain
        with pytest.raises(ValueError, match=f"task {task}: bc_prior is set"):
            se.ours_overrides(se.CANONICAL, task, 1, Path("/demos"), None)
        # The report says so, and lists it among what SBX does not get.
        now = se.task_settings(se.CANONICAL, task)
        assert now["bc_prior"] is True and any("behaviour-cloned prior" in d for d in now["differences"])


def test_results_with_and_without_the_bc_prior_are_not_merged_side_by_side() -> None:
    tasks = tasks_with({"pick_cube": good("pick_cube")}, bc_prior=True)
    with pytest.raises(SystemExit, match="bc_prior"):
        se.check_mergeable(tasks, {"pick_cube": settings("pick_cube", bc_prior=False)}, ["sbx"])
    se.check_mergeable(tasks, {"pick_cube": settings("pick_cube", bc_prior=True)}, ["sbx"])
