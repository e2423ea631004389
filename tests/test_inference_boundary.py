"""The inference boundary, as a process sees it: an actor (EpsMix with a checkpointed baseline, against a real
loopback learner) and `serl eval`, each in a fresh interpreter, never load the learner's machinery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LEARNER_ONLY = ("optax", "serl_stack.updater", "serl_stack.learner", "serl_stack.agents.sac",
                "serl_stack.agents.losses", "serl_stack.data.replay", "serl_stack.data.demos")
ENV = {**os.environ, "MUJOCO_GL": "egl"}
SMALL = ["--set", "env.id=FrankaPickCube-v0", "--set", "env.max_episode_steps=10", "--set", "env.dense_reward=false",
         "--set", "agent.hidden_dims=[32, 32]", "--set", "agent.batch_size=16", "--set", "train.eval_episodes=1"]

# Runs `serl` in this interpreter, then writes the names of every module it loaded.
WITH_MODULES = ("import json, sys\nfrom serl_stack.cli import main\ncode = main(sys.argv[2:])\n"
                "json.dump(sorted(sys.modules), open(sys.argv[1], 'w'))\nsys.exit(code)\n")


def _serl(*args: str) -> list[str]:
    return [sys.executable, "-m", "serl_stack.cli", *args]


def _free_ports(n: int) -> list[int]:
    from serl_stack.orchestrate import free_port

    return [free_port("127.0.0.1") for _ in range(n)]


@pytest.mark.slow
def test_actor_and_eval_never_load_the_learners_machinery(tmp_path: Path) -> None:
    # A checkpointed baseline: a short `serl train` run on pick-cube (its learner writes the policy item).
    baseline = tmp_path / "baseline"
    made = subprocess.run(_serl("train", "--run-dir", str(baseline), *SMALL, "--set", "train.total_env_steps=40",
                                "--set", "train.start_steps=20", "--set", "train.checkpoint_every=10"),
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=ENV)
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]

    run = tmp_path / "run"
    ports = _free_ports(2)
    mixed = [*SMALL, "--set", "mixing.mode=epsmix", "--set", f"mixing.baseline_run={baseline}",
             "--set", "mixing.baseline_episodes=2", "--set", "train.total_env_steps=20",
             "--set", "train.start_steps=10",
             "--set", f"transport.transitions_port={ports[0]}", "--set", f"transport.params_port={ports[1]}"]
    learner = subprocess.Popen(_serl("learner", "--run-dir", str(run), *mixed), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=ENV)
    try:
        actor_modules = tmp_path / "actor-modules.json"
        actor = subprocess.run([sys.executable, "-c", WITH_MODULES, str(actor_modules), "actor", "--run-dir", str(run),
                                *mixed], capture_output=True, text=True, timeout=600, cwd=ROOT, env=ENV)
        learner_out, _ = learner.communicate(timeout=120)
    finally:
        if learner.poll() is None:
            learner.kill()
    assert actor.returncode == 0, actor.stdout[-3000:] + actor.stderr[-3000:]
    assert learner.returncode == 0, learner_out[-3000:]
    assert "listening on tcp://127.0.0.1:" in learner_out and "run finished: 20 env steps" in learner_out
    records = [json.loads(line) for line in (run / "mixing-actor-0.jsonl").read_text().splitlines()]
    assert [r["episode"] for r in records] == [0, 1] and all(r["warmup"] == 1.0 for r in records)

    eval_modules = tmp_path / "eval-modules.json"
    evaluated = subprocess.run([sys.executable, "-c", WITH_MODULES, str(eval_modules), "eval", "--run-dir", str(run),
                                "--episodes", "1"], capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads(evaluated.stdout)["episodes"] == 1

    for who, path in (("actor", actor_modules), ("serl eval", eval_modules)):
        loaded = set(json.loads(path.read_text()))
        assert "serl_stack.inference" in loaded and "jax" in loaded, who  # it did act through the boundary
        assert sorted(m for m in LEARNER_ONLY if m in loaded) == [], who
        assert not [m for m in loaded if m.startswith("optax.")], who
