"""Tests for `benchmarks/steering.py` (issue 19's benchmark): the paired comparison and its interval, the pooled
success summary, the likelihood control reranker (through the real `ValueGuidedPolicy`), and the `targets` map on
synthetic task results (met, missed by a control, harm on another task, no online arm, incomplete data). One slow
test runs the script end to end at smoke size (real `serl train-generalist`, `record-demos`, `train-critic`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import steering as sb  # noqa: E402  (benchmarks/ is not a package: its scripts import it by path)

# ------------------------------------------------------------------------------------------- statistics


def test_paired_difference_and_its_normal_interval() -> None:
    arm = np.array([1, 1, 0, 1, 0, 1, 1, 0])
    base = np.array([0, 1, 0, 0, 0, 1, 0, 1])
    d = arm - base
    got = sb.paired(arm, base)
    se = d.std(ddof=1) / np.sqrt(d.size)
    assert got["mean"] == pytest.approx(d.mean())
    assert got["ci95_low"] == pytest.approx(d.mean() - 1.96 * se)
    assert got["ci95_high"] == pytest.approx(d.mean() + 1.96 * se)
    assert got["pairs"] == 8


def test_success_summary_pools_seeds_and_keeps_each_seeds_rate() -> None:
    s = np.array([[1, 0, 1, 1], [0, 0, 1, 0]])
    got = sb.success_summary(s)
    assert got["success"] == pytest.approx(4 / 8)
    assert got["per_seed"] == [0.75, 0.25]
    assert got["episodes"] == 8
    assert got["ci95_low"] < 0.5 < got["ci95_high"]


def test_percentiles_are_in_milliseconds() -> None:
    got = sb.percentiles([0.001] * 99 + [0.010])
    assert got["p50_ms"] == pytest.approx(1.0)
    assert got["p99_ms"] > 1.0 and got["p99_ms"] <= 10.0  # between the 99 fast samples (1 ms) and the slow one
    assert got["n"] == 100


def test_parse_ks_sorts_and_refuses_nonsense() -> None:
    assert sb.parse_ks("50,10,32,10") == [10, 32, 50]
    for bad in ("", "0,10", "ten"):
        with pytest.raises(SystemExit, match="--ks"):
            sb.parse_ks(bad)


@pytest.mark.parametrize("tau", ["0", "-0.1", "1.5"])
def test_a_critic_tau_outside_0_1_is_refused_before_anything_runs(tau: str, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"--critic-tau: got .*, expected in \(0, 1\]"):
        sb.main(["--critic-tau", tau, "--out-dir", str(tmp_path), "--runs-dir", str(tmp_path / "runs")])
    assert not (tmp_path / "runs").exists() and not (tmp_path / "steering.json").exists()


@pytest.mark.parametrize("task", sorted(sb.TASK_CONFIGS))
def test_the_online_runs_settings_load_on_every_task_config(task: str, tmp_path: Path) -> None:
    """The online arm's `serl train` settings pass the config rules on each task's config (rlpd_cpu_peg_insert's
    train.stop_at_success = 0.9 once refused eval_every = 0, 15 minutes into a full run) and run what they say."""
    from serl_stack.config import load

    cfg = sb.BenchConfig(online_steps=5000, control_k=32, online_target_k=8)
    run = load(ROOT / sb.TASK_CONFIGS[task],
               sb.online_sets(cfg, 2, tmp_path / "gen", tmp_path / "critic", tmp_path / "demos"))
    assert (run.train.total_env_steps, run.train.seed) == (cfg.online_steps, 2)
    assert run.train.eval_every == 0 and run.train.stop_at_success == 0  # the task config's own stop rule is off
    assert run.steering.online and run.steering.base == "generalist"
    assert (run.steering.k, run.steering.target_k) == (cfg.control_k, cfg.online_target_k)
    assert run.steering.base_dir == str(tmp_path / "gen") and run.replay.demo_dir == str(tmp_path / "demos")


# ------------------------------------------------------------------------------------------- control reranker


class _Gaussian:
    """A base policy with a known density: N(mu, 0.1^2) per dimension, proposals drawn from it."""

    chunk = 1

    def __init__(self, mu: np.ndarray) -> None:
        self.mu = mu
        self.rng = np.random.default_rng(0)

    def sample_actions(self, obs: Any, k: int, key: Any) -> np.ndarray:
        return (self.mu + 0.1 * self.rng.standard_normal((k, 1, self.mu.size))).astype(np.float32)

    def log_prob(self, obs: Any, actions: np.ndarray) -> np.ndarray:
        return -0.5 * (((actions - self.mu) / 0.1) ** 2).sum(axis=-1)

    def act(self, obs: Any, key: Any, deterministic: bool = False) -> np.ndarray:
        return self.sample_actions(obs, 1, key)[0, 0]

    def reset(self) -> None:
        pass


def test_the_likelihood_reranker_picks_the_proposal_nearest_the_mode() -> None:
    import jax

    from serl_stack.steering.guided import ValueGuidedPolicy

    base = _Gaussian(np.array([0.2, -0.3, 0.1], np.float32))
    policy = ValueGuidedPolicy(base, sb.LikelihoodScorer(base, 3), k=16)
    for i in range(5):
        action = policy.act({}, jax.random.PRNGKey(i), True)
        scores = policy.last_scores
        assert scores is not None and scores.shape == (16,)
        assert policy.last_index == int(np.argmax(scores))
    # The pick is the most likely of its 16 draws: closer to the mode than a typical draw.
    draws = base.sample_actions({}, 2000, None)[:, 0]
    assert np.linalg.norm(action - base.mu) < np.median(np.linalg.norm(draws - base.mu, axis=1))


def test_sampling_acts_with_samples_even_when_asked_for_the_mode() -> None:
    calls = []

    class Base:
        def act(self, obs: Any, key: Any, deterministic: bool = False) -> np.ndarray:
            calls.append(deterministic)
            return np.zeros(2, np.float32)

        def reset(self) -> None:
            calls.append("reset")

    s = sb.Sampling(Base())
    s.reset()
    s.act({}, None, True)
    assert calls == ["reset", False]


# ------------------------------------------------------------------------------------------- targets


def task(base: float, best: float, controls: tuple[float, float], low: float, online: float | None = None,
         p99: float = 1.0) -> dict[str, Any]:
    arms = {"base": {"success": base}, "random": {"success": controls[0]}, "likelihood": {"success": controls[1]},
            "vgps_k32": {"success": best}}
    if online is not None:
        arms["online"] = {"success": online}
    return {"arms": arms, "best_vgps": "vgps_k32",
            "paired_vs_base": {"vgps_k32": {"ci95_low": low}},
            "latency": {"state": {"p99_ms": p99}}}


CANONICAL = sb.BenchConfig()


def test_good_results_meet_every_target() -> None:
    tasks = {"pick_cube": task(0.40, 0.55, (0.42, 0.45), 0.05, online=0.65),
             "reach": task(0.60, 0.62, (0.6, 0.6), -0.03)}
    targets, notes = sb.targets_of(tasks, CANONICAL, 3600.0)
    assert all(targets.values()), (targets, notes)


def test_a_control_reranker_as_good_as_vgps_misses_the_gain_target() -> None:
    tasks = {"pick_cube": task(0.40, 0.55, (0.42, 0.52), 0.05, online=0.65),
             "reach": task(0.60, 0.62, (0.6, 0.6), -0.03)}
    targets, _ = sb.targets_of(tasks, CANONICAL, 3600.0)
    assert not targets["vgps_beats_base_by_10_one_task"]
    assert not targets["vgps_no_harm_other_tasks"]  # no task won: nothing to call "the other"


def test_harm_on_the_other_task_and_a_small_online_gain_are_misses() -> None:
    tasks = {"pick_cube": task(0.40, 0.55, (0.42, 0.45), 0.05, online=0.55),
             "reach": task(0.60, 0.50, (0.6, 0.6), -0.12)}
    targets, _ = sb.targets_of(tasks, CANONICAL, 3600.0)
    assert targets["vgps_beats_base_by_10_one_task"]
    assert not targets["vgps_no_harm_other_tasks"]
    assert not targets["online_adds_20_one_task"]


def test_no_online_arm_latency_and_wall_clock_misses() -> None:
    tasks = {"pick_cube": task(0.40, 0.55, (0.42, 0.45), 0.05, p99=6.0),
             "reach": task(0.60, 0.62, (0.6, 0.6), -0.03)}
    targets, notes = sb.targets_of(tasks, CANONICAL, 2.5 * 3600)
    assert not targets["online_adds_20_one_task"]
    assert any("online" in n for n in notes)
    assert not targets["latency_p99_k32_lt_5ms"]
    assert not targets["within_120_min"]


def test_incomplete_data_makes_every_target_false() -> None:
    good = {"pick_cube": task(0.40, 0.55, (0.42, 0.45), 0.05, online=0.65),
            "reach": task(0.60, 0.62, (0.6, 0.6), -0.03)}
    for cfg in (sb.BenchConfig(seeds=1), sb.BenchConfig(episodes=50)):
        targets, notes = sb.targets_of(good, cfg, 60.0)
        assert not any(targets.values()) and notes
    targets, _ = sb.targets_of({"pick_cube": good["pick_cube"]}, CANONICAL, 60.0)
    assert not any(targets.values())


# ------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_quick_run_writes_a_report_with_every_arm(tmp_path: Path) -> None:
    env = {**os.environ, "MUJOCO_GL": "egl"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "steering.py"), "--quick", "--out-dir",
                           str(tmp_path), "--runs-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=1500)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    report = json.loads((tmp_path / "steering.json").read_text())
    assert set(report["tasks"]) == {"pick_cube", "reach"}
    for t in report["tasks"].values():
        assert {"base", "random", "likelihood", "vgps_k4"} <= set(t["arms"])
        assert t["arms"]["base"]["episodes"] == 3
        assert {"state", "one_camera", "remote_loopback", "state_by_k"} <= set(t["latency"])
        assert set(t["latency"]["state_by_k"]) == {str(k) for k in sb.parse_ks(report["invocation"]["ks"])}
    assert not any(report["targets"].values())  # smoke sizes are never a result
    assert (tmp_path / "steering.png").is_file()
