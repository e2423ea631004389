"""Several actors, end to end, on real processes and real ZeroMQ over loopback: `serl train` with
`train.num_actors=2`, and the two-machine path (one standalone `serl learner`, two `serl actor --actor-id`, each
actor with its own run folder as on its own robot PC), an actor killed mid-run and restarted; plus what a resumed
run keeps counting and what stops an actor whose learner never comes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from serl_stack.rundir import share
from serl_stack.transport.log import TransitionLog
from serl_stack.transport.protocol import unpack

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "MUJOCO_GL": "egl"}
SMALL = ["--set", "train.start_steps=200", "--set", "train.eval_episodes=2", "--set", "agent.hidden_dims=[64, 64]",
         "--set", "agent.batch_size=64", "--set", "transport.ledger=true", "--set", "train.checkpoint_every=200"]


def _serl(*args: str) -> list[str]:
    return [sys.executable, "-m", "serl_stack.cli", *args]


def _free_ports(n: int) -> list[int]:
    from serl_stack.orchestrate import free_port

    return [free_port("127.0.0.1") for _ in range(n)]


def _log_by_actor(run: Path) -> dict[str, list[tuple[int, bytes]]]:
    """The learner's durable log: actor id -> [(seq, payload)] in log order."""
    out: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
    log = TransitionLog(run / "transitions")
    try:
        for _, actor_id, seq, payload in log.replay():
            out[actor_id].append((seq, payload))
    finally:
        log.close()
    return dict(out)


def _check_every_transition_logged_once(log: dict[str, list[tuple[int, bytes]]], ledgers: dict[str, Path],
                                        steps: dict[str, int]) -> None:
    """Each actor's transitions are in the log exactly once, seq 1..n in order, and exactly what its ledger says
    it sent (the SHA-256 of every payload)."""
    assert sorted(log) == sorted(steps)
    for actor_id, n in steps.items():
        seqs = [seq for seq, _ in log[actor_id]]
        assert seqs == list(range(1, n + 1)), (actor_id, seqs[:5], len(seqs))
        sent = {}
        for line in ledgers[actor_id].read_text().splitlines():
            seq, digest = line.split()
            assert int(seq) not in sent or sent[int(seq)] == digest, f"{actor_id}: seq {seq} sent twice, differently"
            sent[int(seq)] = digest
        assert sent == {seq: hashlib.sha256(payload).hexdigest() for seq, payload in log[actor_id]}, actor_id


def _completed_episodes(log: dict[str, list[tuple[int, bytes]]]) -> dict[str, list[int]]:
    """Per actor, the episode ids of the transitions that ended an episode."""
    out = {}
    for actor_id, records in log.items():
        ends = [unpack(p) for _, p in records]
        out[actor_id] = [t["episode"] for t in ends if t["terminated"] or t["truncated"]]
    return out


def _eval(run: Path) -> dict:
    proc = subprocess.run(_serl("eval", "--run-dir", str(run), "--episodes", "2"), capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_serl_train_with_two_actors_counts_both_and_logs_every_transition_once(tmp_path: Path) -> None:
    run = tmp_path / "run"
    total = 801
    proc = subprocess.run(_serl("train", "--run-dir", str(run), *SMALL, "--set", "train.num_actors=2",
                                "--set", f"train.total_env_steps={total}"),
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + (run / "learner.log").read_text()[-2000:]
    steps = {f"actor-{i}": share(total, 2, i) for i in range(2)}
    assert steps == {"actor-0": 401, "actor-1": 400}  # the run's steps, split: all actors count toward the total
    log = _log_by_actor(run)
    _check_every_transition_logged_once(log, {a: run / f"ledger-{a}.txt" for a in steps}, steps)
    result = json.loads((run / "eval.json").read_text())
    assert result["env_steps"] == total and sorted(result["actors"]) == sorted(steps)
    assert result["episodes"] == 4 and {r["first_seed"] for r in result["actors"].values()} == {1_000_000, 1_000_002}
    # Both actors' episodes reached the learner: its TensorBoard has one episode/return per completed episode.
    from serl_stack.runlog import event_files, read_scalars

    logged = sum(1 for f in event_files(run) for tag, _, _ in read_scalars(f) if tag == "episode/return")
    episodes = _completed_episodes(log)
    assert all(episodes[a] for a in steps) and logged == sum(len(e) for e in episodes.values())
    assert "from 2 actor(s)" in (run / "learner.log").read_text()
    for a in steps:
        assert f"actor {a}: finished: {steps[a]} env steps" in (run / f"{a}.log").read_text()
    assert "Process logs:" in proc.stdout and "actor-1.log" in proc.stdout
    assert _eval(run)["episodes"] == 2


@pytest.mark.slow
def test_standalone_learner_and_two_actors_survive_a_killed_actor(tmp_path: Path) -> None:
    """The two-machine path on one machine: the learner on fixed ports in its folder, each actor in its own folder
    (its robot PC). Actor 1 is killed (SIGKILL) mid-run and started again with the same command: it continues
    from its spool, nothing is logged twice, nothing is lost, and every process exits 0."""
    learner_dir, actor_dirs = tmp_path / "learner", [tmp_path / "robot-0", tmp_path / "robot-1"]
    ports = _free_ports(2)
    total = 1200
    shared = [*SMALL, "--set", "train.num_actors=2", "--set", f"train.total_env_steps={total}",
              "--set", f"transport.transitions_port={ports[0]}", "--set", f"transport.params_port={ports[1]}"]
    procs: dict[str, subprocess.Popen] = {}

    def start(name: str, *args: str) -> subprocess.Popen:
        out = open(tmp_path / f"{name}.out", "a")  # noqa: SIM115 - closed with the process
        procs[name] = subprocess.Popen(_serl(*args, *shared), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=ENV)
        return procs[name]

    def actor(i: int) -> subprocess.Popen:
        return start(f"actor-{i}", "actor", "--actor-id", f"actor-{i}", "--run-dir", str(actor_dirs[i]))

    try:
        start("learner", "learner", "--run-dir", str(learner_dir))
        actor(0)
        actor(1)
        ledger = actor_dirs[1] / "ledger-actor-1.txt"
        deadline = time.monotonic() + 300
        while not (ledger.exists() and len(ledger.read_text().splitlines()) >= 300):
            assert time.monotonic() < deadline and procs["actor-1"].poll() is None, \
                (tmp_path / "actor-1.out").read_text()[-2000:]
            time.sleep(0.2)
        procs["actor-1"].send_signal(signal.SIGKILL)
        procs["actor-1"].wait(30)
        actor(1)  # the same command, again
        for name in ("actor-0", "actor-1", "learner"):
            assert procs[name].wait(600) == 0, (tmp_path / f"{name}.out").read_text()[-3000:]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    learner_out = (tmp_path / "learner.out").read_text()
    assert f"listening on tcp://127.0.0.1:{ports[0]} (transitions) and tcp://127.0.0.1:{ports[1]}" in learner_out
    assert "learner: " in learner_out and f"run finished: {total} env steps from 2 actor(s)" in learner_out
    actor1_out = (tmp_path / "actor-1.out").read_text()
    assert f"learner at tcp://127.0.0.1:{ports[0]} (transitions)" in actor1_out
    assert "actor actor-1: continuing after" in actor1_out  # the restart picked up its spool
    steps = {"actor-0": 600, "actor-1": 600}
    _check_every_transition_logged_once(_log_by_actor(learner_dir),
                                        {f"actor-{i}": actor_dirs[i] / f"ledger-actor-{i}.txt" for i in range(2)},
                                        steps)
    # Every process wrote the run's config: `serl eval` works on the learner's folder.
    assert (learner_dir / "config.yaml").is_file() and all((d / "config.yaml").is_file() for d in actor_dirs)
    assert _eval(learner_dir)["episodes"] == 2
    assert json.loads((learner_dir / "eval.json").read_text())["episodes"] == 4
    for i, d in enumerate(actor_dirs):
        assert json.loads((d / f"eval-actor-{i}.json").read_text())["final"] is True


@pytest.mark.slow
def test_a_resumed_run_keeps_counting_episodes(tmp_path: Path) -> None:
    """`train.max_episodes` counts the run's episodes, not those since the last start: a run stopped at 2
    episodes and resumed with the limit raised to 4 runs exactly 2 more, numbered 2 and 3."""
    run = tmp_path / "run"
    first = subprocess.run(_serl("train", "--run-dir", str(run), *SMALL, "--set", "train.total_env_steps=5000",
                                 "--set", "train.max_episodes=2", "--set", "env.max_episode_steps=30"),
                           capture_output=True, text=True, timeout=600, cwd=ROOT, env=ENV)
    assert first.returncode == 0, first.stdout[-3000:]
    again = subprocess.run(_serl("train", "--resume", "--run-dir", str(run), "--set", "train.max_episodes=4"),
                           capture_output=True, text=True, timeout=600, cwd=ROOT, env=ENV)
    assert again.returncode == 0, again.stdout[-3000:] + (run / "actor-0.log").read_text()[-2000:]
    episodes = _completed_episodes(_log_by_actor(run))
    assert episodes == {"actor-0": [0, 1, 2, 3]}
    assert "continuing after 60 env steps and 2 episodes" in (run / "actor-0.log").read_text()


@pytest.mark.slow
def test_an_actor_without_its_learner_stops_at_the_spool_cap(tmp_path: Path) -> None:
    ports = _free_ports(2)
    started = time.monotonic()
    proc = subprocess.run(_serl("actor", "--run-dir", str(tmp_path / "robot"), "--set", "train.start_steps=100000",
                                "--set", "train.total_env_steps=100000", "--set", "transport.spool_max_bytes=1048576",
                                "--set", f"transport.transitions_port={ports[0]}",
                                "--set", f"transport.params_port={ports[1]}"),
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=ENV)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "transport.spool_max_bytes=1048576" in lines[0], proc.stderr
    assert "Nothing is lost" in lines[0] and "Traceback" not in proc.stderr
    spool = tmp_path / "robot" / "spool-actor-0"
    assert sum(f.stat().st_size for f in spool.glob("*.spool")) <= 1048576
    assert time.monotonic() - started < 300


# ------------------------------------------------------------------------------- checked before anything starts


def _quick(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_serl(*args), capture_output=True, text=True, timeout=120, cwd=ROOT, env=ENV)


def test_a_missing_demo_folder_is_named_before_any_process_starts(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _quick("train", "--run-dir", str(run), "--set", f"replay.demo_dir={tmp_path / 'nope'}")
    assert proc.returncode == 2 and "replay.demo_dir" in proc.stderr and str(tmp_path / "nope") in proc.stderr
    assert not run.exists() and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_busy_port_is_one_line_naming_the_field(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _quick("learner", "--run-dir", str(tmp_path / "run"), "--set", f"transport.transitions_port={port}")
    assert proc.returncode == 2, proc.stderr
    assert f"transport.transitions_port: port {port} on 127.0.0.1 is in use" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["train", "learner"])
def test_resuming_a_run_that_is_not_there_is_an_error(tmp_path: Path, command: str) -> None:
    proc = _quick(command, "--resume", "--run-dir", str(tmp_path / "typo"))
    assert proc.returncode == 2 and f"{tmp_path / 'typo'} does not exist" in proc.stderr, proc.stderr
    assert not (tmp_path / "typo").exists()


def test_an_actor_id_that_does_not_fit_the_run_is_refused(tmp_path: Path) -> None:
    proc = _quick("actor", "--run-dir", str(tmp_path / "r"), "--actor-id", "left", "--set", "train.num_actors=2",
                  "--set", "transport.transitions_port=5555", "--set", "transport.params_port=5556")
    assert proc.returncode == 2 and "transport.actor_id: got 'left'" in proc.stderr, proc.stderr


def test_debug_shows_the_traceback_and_its_absence_one_line(tmp_path: Path) -> None:
    plain = _quick("eval", "--run-dir", str(tmp_path / "nope"))
    debug = _quick("eval", "--debug", "--run-dir", str(tmp_path / "nope"))
    assert plain.returncode == debug.returncode == 2
    assert "Traceback" not in plain.stderr and len(plain.stderr.strip().splitlines()) == 1
    assert "Traceback" in debug.stderr and "RunDirError" in debug.stderr
