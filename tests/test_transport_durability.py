"""Nothing acknowledged is lost: SIGKILL the learner (or the actor) mid-run, restart it, compare what was logged.

Real `serl learner` and `serl actor` processes, real MuJoCo, real ZeroMQ on loopback, the real on-disk log and
spool. The actor's ledger lists (seq, SHA-256) of every transition it spooled; the learner's log must hold
exactly those, each once, byte-identical.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serl_stack.config import apply_overrides, dump, load
from serl_stack.orchestrate import free_port
from serl_stack.transport.log import TransitionLog

ROOT = Path(__file__).resolve().parents[1]
TOTAL = 1500


def _config(run: Path) -> Path:
    cfg = apply_overrides(load(None), [
        f"train.total_env_steps={TOTAL}", "train.start_steps=300", "train.eval_episodes=2",
        "train.checkpoint_every=200", "agent.hidden_dims=[64, 64]", "agent.batch_size=64",
        f"transport.transitions_port={free_port('127.0.0.1')}", f"transport.params_port={free_port('127.0.0.1')}",
        "transport.ledger=true",
    ])
    run.mkdir(parents=True, exist_ok=True)
    path = run / "config.yaml"
    path.write_text(dump(cfg))
    return path


def _start(role: str, cfg: Path, run: Path, *extra: str) -> subprocess.Popen:
    log = open(run / f"{role}.log", "ab")  # noqa: SIM115 - handed to the child
    return subprocess.Popen(
        [sys.executable, "-m", "serl_stack.cli", role, "--config", str(cfg), "--run-dir", str(run), *extra],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "MUJOCO_GL": "egl"},
    )


def _logged(run: Path) -> list[tuple[int, str]]:
    log = TransitionLog(run / "transitions")
    return [(seq, hashlib.sha256(payload).hexdigest()) for _, _, seq, payload in log.replay()]


def _ledger(run: Path) -> list[tuple[int, str]]:
    lines = (run / "ledger-actor-0.txt").read_text().split("\n")
    return [(int(a), b) for a, b in (line.split() for line in lines if line.strip())]


def _wait_for(predicate, timeout: float, what: str, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _finish(procs: list[subprocess.Popen], run: Path, timeout: float = 400) -> None:
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for role, p in zip(("learner", "actor"), procs, strict=True):
        assert p.returncode == 0, (run / f"{role}.log").read_text()[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["learner", "actor"])
def test_sigkill_and_restart_loses_and_duplicates_nothing(tmp_path: Path, victim: str) -> None:
    run = tmp_path / "run"
    cfg = _config(run)
    procs = {"learner": _start("learner", cfg, run), "actor": _start("actor", cfg, run)}
    ledger = run / "ledger-actor-0.txt"
    # Kill mid-run: after the warm-up, while transitions are streaming and the learner is updating.
    _wait_for(lambda: ledger.exists() and len(ledger.read_text().splitlines()) > 600, 300, "600 transitions",
              list(procs.values()))
    procs[victim].send_signal(signal.SIGKILL)
    procs[victim].wait()
    killed_at = len(_ledger(run))
    time.sleep(1.0)
    # A learner restarted on a folder that holds a run must be told to continue it.
    procs[victim] = _start(victim, cfg, run, *(("--resume",) if victim == "learner" else ()))
    _finish([procs["learner"], procs["actor"]], run)

    produced, logged = _ledger(run), _logged(run)
    seqs = [s for s, _ in logged]
    assert len(seqs) == len(set(seqs)), "a transition was logged twice"
    assert len(produced) == len({s for s, _ in produced}) == TOTAL
    assert set(logged) == set(produced), (
        f"lost {len(set(produced) - set(logged))}, unexpected {len(set(logged) - set(produced))}"
    )
    print(f"{victim} SIGKILLed after {killed_at} spooled transitions: produced {len(produced)}, "
          f"logged {len(logged)}, lost 0, duplicated 0")
