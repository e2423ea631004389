"""End to end: `serl train` spawns a learner and an actor process that talk ZeroMQ, train, evaluate and exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from serl_stack.runlog import evaluations
from serl_stack.transport.log import TransitionLog

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "--set", "train.total_env_steps=1200", "--set", "train.start_steps=400", "--set", "train.eval_episodes=3",
    "--set", "train.checkpoint_every=300", "--set", "train.log_every=100", "--set", "agent.hidden_dims=[64, 64]",
    "--set", "agent.batch_size=64",
]


def _children_of(pid: int) -> list[int]:
    """Live processes started by `serl train` with --parent-pid `pid` (read from /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            state = (d / "stat").read_text().split(") ")[-1].split()[0]
        except OSError:
            continue
        if b"--parent-pid" in cmd and cmd[cmd.index(b"--parent-pid") + 1] == str(pid).encode() and state != "Z":
            out.append(int(d.name))
    return out


def _logged(run: Path) -> int:
    """Transitions in the run's durable log."""
    log = TransitionLog(run / "transitions")
    try:
        return sum(1 for _ in log.replay())
    finally:
        log.close()


def _serl(*args: str) -> list[str]:
    return [sys.executable, "-m", "serl_stack.cli", *args]


@pytest.mark.slow
def test_serl_train_runs_end_to_end(tmp_path: Path) -> None:
    """The product path, as `make demo` runs it (configs/sim_reach.yaml), with scripted demonstrations recorded by
    `serl record-demos` mixed into every batch and evaluations during training: it learns reach (>= 80 % on 20
    held-out episodes) within its budget, stopping early once an evaluation reaches 100 % (a policy that just
    reached 90 % on 20 episodes can land at 75 % on the final 20: a fresh clone's run did)."""
    env = {**os.environ, "MUJOCO_GL": "egl"}
    demos = tmp_path / "demos"
    rec = subprocess.run(_serl("record-demos", "--out", str(demos), "--episodes", "3"), capture_output=True,
                         text=True, timeout=300, cwd=ROOT, env=env)
    assert rec.returncode == 0 and "kept" in rec.stdout, rec.stdout + rec.stderr
    run = tmp_path / "run"
    proc = subprocess.run(
        _serl("train", "--config", "configs/sim_reach.yaml", "--run-dir", str(run), "--set", f"replay.demo_dir={demos}",
              "--set", "train.total_env_steps=16000", "--set", "train.eval_every=1000",
              "--set", "train.eval_every_episodes=20", "--set", "train.eval_episodes=20",
              "--set", "train.stop_at_success=1.0", "--set", "train.checkpoint_every=2000"),
        capture_output=True, text=True, timeout=900, cwd=ROOT, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + (run / "learner.log").read_text()
    assert f"demonstration transitions from {demos} make up 50% of every minibatch" in (run / "learner.log").read_text()
    result = json.loads((run / "eval.json").read_text())
    assert result["episodes"] == 20 and result["success_rate"] >= 0.8, result
    assert result["first_seed"] == 1_000_000 and result["params_version"] > 1
    assert "Final evaluation" in proc.stdout and str(run / "checkpoints") in proc.stdout
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    # One update per env step after the 1,000-step warm-up.
    assert steps and steps[-1] >= result["env_steps"] - 1000 - 1, (steps, result["env_steps"])
    # Evaluations during training every 1,000 env steps once the policy acts, until one reached 100 %; then the
    # final one, at the same env step.
    evals = evaluations(run)
    stop = result["env_steps"]
    assert evals["env_steps"].tolist() == [*range(2000, stop + 1, 1000), stop], evals
    # TensorBoard stores float32 (0.9 reads back as 0.89999998): compare to float32 precision.
    assert evals["success_rate"][-2] >= 1.0 - 1e-6 and np.all(evals["success_rate"][:-2] < 1.0 - 1e-6), evals
    # TensorBoard stores float32: compare to float32 precision.
    assert evals["success_rate"][-1] == pytest.approx(result["success_rate"], abs=1e-6)
    assert evals["return_mean"][-1] == pytest.approx(result["return_mean"], rel=1e-6)


@pytest.mark.slow
def test_a_run_that_ends_inside_the_warmup_still_evaluates_and_exits(tmp_path: Path) -> None:
    """150 env steps with train.start_steps=400: the learner builds an untrained agent for the final evaluation
    instead of leaving the actor waiting for parameters that never come."""
    run = tmp_path / "run"
    proc = subprocess.run(
        _serl("train", "--run-dir", str(run), *SMALL, "--set", "train.total_env_steps=150",
              "--set", "train.eval_episodes=1"),
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "MUJOCO_GL": "egl"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "before train.start_steps=400; the final policy is untrained" in (run / "learner.log").read_text()
    result = json.loads((run / "eval.json").read_text())
    assert result["env_steps"] == 150 and result["final"] is True and result["episodes"] == 1, result
    assert _logged(run) == 150


@pytest.mark.slow
def test_stepmix_run_logs_each_episode_keeps_its_mixer_and_snapshots_policies(tmp_path: Path) -> None:
    """pick-cube under StepMix: 3 baseline warm-up episodes (the scripted controller), then mixed episodes; every
    episode's record in mixing-actor-0.jsonl and TensorBoard, the mixer saved for a restart, a snapshot every 2nd
    episode."""
    from serl_stack.config import load
    from serl_stack.mixing import load_snapshot, snapshots
    from serl_stack.runlog import event_files, read_scalars
    from serl_stack.safety.mixer_state import load_mixer
    from serl_stack.safety.stepmix import StepMix

    run = tmp_path / "run"
    proc = subprocess.run(
        _serl("train", "--config", "configs/sim_pick_cube.yaml", "--run-dir", str(run), *SMALL,
              "--set", "train.total_env_steps=5000", "--set", "train.start_steps=100",
              "--set", "train.max_episodes=6", "--set", "env.dense_reward=false", "--set", "mixing.mode=stepmix",
              "--set", "mixing.baseline_episodes=3", "--set", "mixing.snapshot_every=2"),
        capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "MUJOCO_GL": "egl"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + (run / "learner.log").read_text()
    assert "train.max_episodes=6 (6) reached" in (run / "actor-0.log").read_text()
    records = [json.loads(line) for line in (run / "mixing-actor-0.jsonl").read_text().splitlines()]
    assert [r["episode"] for r in records] == [0, 1, 2, 3, 4, 5]
    assert all(r["warmup"] == 1.0 and r["switch_step"] == -1.0 for r in records[:3])
    # The scripted baseline solves pick-cube: warm-up episodes earn the sparse reward.
    assert all(r["return"] > 0 and r["success"] for r in records[:3]), records[:3]
    for r in records[3:]:
        assert r["warmup"] == 1.0 or "upper" in r, r  # a mixed episode logs its U (and L, kappa)
    assert sum(r["length"] for r in records) == records[-1]["env_steps"] == _logged(run)
    cfg = load(run / "config.yaml")
    mixer = load_mixer(run / "mixer-actor-0.msgpack", cfg.mixing, cfg.agent.discount)
    assert isinstance(mixer, StepMix) and mixer.episode == 5 and mixer.baseline.n >= 3
    assert [load_snapshot(p)["episode"] for p in snapshots(run)] == [0, 2, 4]
    tags = {tag for f in event_files(run) for tag, _, _ in read_scalars(f)}
    assert {"mixing/return", "mixing/warmup", "safety/box", "safety/force_backoff"} <= tags, sorted(tags)
    assert json.loads((run / "eval.json").read_text())["final"] is True


@pytest.mark.slow
@pytest.mark.parametrize("streak", [1, 3])
def test_training_stops_early_once_evaluation_reaches_stop_at_success(tmp_path: Path, streak: int) -> None:
    """A goal always within the success radius makes every episode a success whatever the policy does, so every
    evaluation from the first after the warm-up (env step 200) reaches 100 %; the run ends at the `streak`-th
    such evaluation in a row (`train.stop_after_evals`), final evaluation included."""
    run = tmp_path / "run"
    proc = subprocess.run(
        _serl("train", "--run-dir", str(run), *SMALL, "--set", "train.start_steps=100",
              "--set", "train.eval_every=100", "--set", "train.stop_at_success=1.0",
              "--set", f"train.stop_after_evals={streak}", "--set", "env.success_radius=0.6"),
        capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "MUJOCO_GL": "egl"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stop = 200 + 100 * (streak - 1)
    result = json.loads((run / "eval.json").read_text())
    assert result["env_steps"] == stop and result["final"] is True and result["success_rate"] == 1.0, result
    assert _logged(run) == stop  # the learner has exactly the transitions collected before the stop
    assert evaluations(run)["env_steps"].tolist() == [*range(200, stop + 1, 100), stop]


@pytest.mark.slow
def test_ctrl_c_stops_both_processes_and_checkpoints(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen(
        _serl("train", "--run-dir", str(run), *SMALL, "--set", "train.total_env_steps=100000"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={**os.environ, "MUJOCO_GL": "egl"},
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not list((run / "checkpoints").glob("[0-9]*")):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(1)
        children = _children_of(proc.pid)
        assert len(children) == 2, children
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert "Ctrl-C" in out
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:2]
    assert "checkpoint saved" in (run / "learner.log").read_text()

    # The folder now holds a run: starting over in it is refused, continuing it is one flag.
    env = {**os.environ, "MUJOCO_GL": "egl"}
    refused = subprocess.run(_serl("train", "--run-dir", str(run)), capture_output=True, text=True, cwd=ROOT, env=env)
    assert refused.returncode == 2 and "already holds a run" in refused.stderr and "--resume" in refused.stderr, \
        refused.stdout + refused.stderr
    saved = max(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    logged = _logged(run)
    total = logged + 300
    resumed = subprocess.run(
        _serl("train", "--resume", "--run-dir", str(run), "--set", f"train.total_env_steps={total}"),
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=env,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + (run / "learner.log").read_text()[-3000:]
    learner_log = (run / "learner.log").read_text()
    assert f"resumed with {logged} transitions from the log, checkpoint {saved}" in learner_log
    assert _logged(run) == total  # nothing lost, nothing repeated
    final = max(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert final > saved  # the restored agent kept learning from where it stopped
    assert json.loads((run / "eval.json").read_text())["episodes"] == 3


def _latest_checkpoint(run: Path) -> int:
    folder = run / "checkpoints"
    steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
    return max(steps, default=-1)


def _count(path: Path, text: str) -> int:
    return path.read_text().count(text) if path.exists() else 0


@pytest.mark.slow
def test_ten_ctrl_c_in_a_row_stop_every_process_with_a_checkpoint(tmp_path: Path) -> None:
    """SIGINT to `serl train` mid-run, ten times (the first run, then nine resumes): every time, every process is
    gone within the grace period, the actor stopped by itself (no kill after the grace period: an interrupt lost
    inside a garbage-collector callback once made that happen) and the learner saved a new checkpoint."""
    from serl_stack.orchestrate import STOP_GRACE_S

    run = tmp_path / "run"
    first = ["train", "--run-dir", str(run), *SMALL, "--set", "train.total_env_steps=1000000",
             "--set", "train.checkpoint_every=100"]
    env = {**os.environ, "MUJOCO_GL": "egl"}
    for trial in range(10):
        before = _latest_checkpoint(run)
        saved, interrupted = _count(run / "learner.log", "checkpoint saved"), _count(run / "actor-0.log", "interrupted")
        args = first if trial == 0 else ["train", "--resume", "--run-dir", str(run)]
        proc = subprocess.Popen(_serl(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                env=env)
        try:
            deadline = time.monotonic() + 300
            while _latest_checkpoint(run) <= before:  # mid-run: the learner is updating (a periodic checkpoint)
                assert time.monotonic() < deadline and proc.poll() is None, f"trial {trial}: no progress"
                time.sleep(0.2)
            children = _children_of(proc.pid)
            assert len(children) == 2, (trial, children)
            sent = time.monotonic()
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=STOP_GRACE_S + 60)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130, (trial, out[-2000:])
        assert took < STOP_GRACE_S, (trial, took)
        for pid in children:
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:2]
        assert _count(run / "learner.log", "checkpoint saved") == saved + 1, trial
        assert _count(run / "actor-0.log", "interrupted") == interrupted + 1, trial
        assert _latest_checkpoint(run) > before, trial


@pytest.mark.slow
def test_pixel_agent_trains_end_to_end_from_camera_images(tmp_path: Path) -> None:
    """The pixel path through both processes: rendered uint8 images on the wire, the conv encoder's parameters
    broadcast to the actor, which acts and evaluates from images without the goal position."""
    run = tmp_path / "run"
    proc = subprocess.run(
        _serl("train", "--config", str(ROOT / "configs" / "sim_reach_pixels.yaml"), "--run-dir", str(run),
              "--set", "env.image_size=32", "--set", "train.total_env_steps=500", "--set", "train.start_steps=300",
              "--set", "train.eval_episodes=2", "--set", "agent.batch_size=32", "--set", "agent.hidden_dims=[64, 64]"),
        capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "MUJOCO_GL": "egl"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + (run / "learner.log").read_text()[-3000:]
    assert json.loads((run / "eval.json").read_text())["episodes"] == 2
    assert "image batches are sampled on the host" in (run / "learner.log").read_text()


def test_link_status_names_the_silent_side() -> None:
    from serl_stack.orchestrate import link_status

    assert link_status({}, 0.0) == "connecting"
    assert link_status({"actors_silent_s": {"actor-0": 0.2}}, 0.5) == "link ok"
    assert link_status({"actors_silent_s": {"actor-0": 0.2}}, 12.0) == "learner silent 12s"
    assert link_status({"actors_silent_s": {"actor-0": 7.0, "actor-1": 0.1}}, 0.1) == "silent: actor-0 7s"
