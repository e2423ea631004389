"""Hostile input at a running, CURVE-protected learner: it never crashes, counts every rejection by reason,
and an honest actor beside the fuzzer gets its data stored byte-identical.

The fuzzer holds an authorized key (actor id `fuzzer`), so its frames reach the parser, not just the auth
layer. Real `serl learner` and `serl actor` processes, real MuJoCo, real ZeroMQ + CurveZMQ on loopback.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from serl_stack.config import apply_overrides, dump, load
from serl_stack.envs import make_env
from serl_stack.orchestrate import free_port
from serl_stack.transport.auth import CurveClient, generate_keypair
from serl_stack.transport.learner_server import TOPIC_STATUS, endpoint
from serl_stack.transport.log import TransitionLog
from serl_stack.transport.protocol import envelope, make_spec, open_envelope, pack

ROOT = Path(__file__).resolve().parents[1]
PER_CATEGORY = 1000
FUZZER = "fuzzer-1"


def _frames(rng: np.random.Generator, spec: dict, obs: dict) -> dict[str, list[bytes]]:
    """PER_CATEGORY hostile frames in each category."""
    good_t = {"observation": obs, "next_observation": obs, "action": np.zeros(7, np.float32),
              "executed_action": np.zeros(7, np.float32), "reward": 0.0, "terminated": False,
              "truncated": False, "episode": 0}
    valid = envelope("transitions", FUZZER, {"items": [[1, pack(good_t)]]}, 1)
    wrong_types = [
        {"v": "1", "type": "transitions", "from": FUZZER, "seq": 1, "body": {}},
        {"v": 1, "type": 5, "from": FUZZER, "seq": 1, "body": {}},
        {"v": 1, "type": "transitions", "from": ["x"], "seq": 1, "body": {}},
        {"v": 1, "type": "transitions", "from": FUZZER, "seq": "one", "body": {}},
        {"v": 1, "type": "transitions", "from": FUZZER, "seq": 1},
        [1, "transitions"], "just a string", 42, None,
    ]

    def bad_array(i: int) -> bytes:
        shapes = [[-1], [2**40, 2**40], [2**62], [1] * 9, ["a"], [3, -7]]
        header = msgpack.packb(["<f4", shapes[i % len(shapes)]])
        return msgpack.packb({"v": 1, "type": "transitions", "from": FUZZER, "seq": i + 1,
                              "body": {"x": msgpack.ExtType(1, header + b"\0" * (i % 16))}})

    def nan_item(i: int) -> bytes:
        t = dict(good_t, observation={**obs, "state": {**obs["state"], "tcp_pose": np.full(7, np.nan, np.float32)}})
        return envelope("transitions", FUZZER, {"items": [[i + 1, pack(t)]]}, i + 2)

    return {
        "random bytes": [rng.bytes(int(rng.integers(0, 300))) for _ in range(PER_CATEGORY)],
        "truncated msgpack": [valid[: int(rng.integers(1, len(valid)))] for _ in range(PER_CATEGORY)],
        "wrong types": [msgpack.packb(wrong_types[i % len(wrong_types)]) for i in range(PER_CATEGORY)],
        "huge or negative shapes": [bad_array(i) for i in range(PER_CATEGORY)],
        "NaN payloads": [nan_item(i) for i in range(PER_CATEGORY)],
        "wrong versions": [pack({"v": int(v), "type": "transitions", "from": FUZZER, "seq": 1, "body": {}})
                           for v in rng.choice([0, 2, 3, 99, -1, 2**31], PER_CATEGORY)],
        "spoofed actor ids": [envelope("transitions", "actor-0", {"items": [[10**6 + i, pack(good_t)]]}, i + 1)
                              for i in range(PER_CATEGORY)],
    }


def _start(role: str, cfg: Path, run: Path) -> subprocess.Popen:
    log = open(run / f"{role}.log", "ab")  # noqa: SIM115 - handed to the child
    return subprocess.Popen(
        [sys.executable, "-m", "serl_stack.cli", role, "--config", str(cfg), "--run-dir", str(run)],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "MUJOCO_GL": "egl"},
    )


@pytest.mark.slow
def test_fuzzing_a_running_learner(tmp_path: Path) -> None:
    keys, allowed, run = tmp_path / "keys", tmp_path / "allowed", tmp_path / "run"
    allowed.mkdir()
    learner_pub, learner_sec = generate_keypair(keys, "learner")
    actor_pub, actor_sec = generate_keypair(keys, "actor-0", actor_id="actor-0")
    fuzz_pub, fuzz_sec = generate_keypair(keys, "fuzzer-1", actor_id="fuzzer-1")
    shutil.copy(actor_pub, allowed / actor_pub.name)
    shutil.copy(fuzz_pub, allowed / fuzz_pub.name)
    tport, pport = free_port("127.0.0.1"), free_port("127.0.0.1")
    cfg = apply_overrides(load(None), [
        # Two actors: the honest one collects its 1200 steps, the (authenticated) fuzzer collects none.
        "train.num_actors=2", "train.total_env_steps=2400", "train.start_steps=300", "train.eval_episodes=2",
        "agent.hidden_dims=[64, 64]", "agent.batch_size=64", f"transport.transitions_port={tport}",
        f"transport.params_port={pport}", "transport.ledger=true", "transport.curve=true",
        f"transport.learner_secret_key={learner_sec}", f"transport.allowed_actors_dir={allowed}",
        f"transport.actor_secret_key={actor_sec}", f"transport.learner_public_key={learner_pub}",
    ])
    run.mkdir()
    (run / "config.yaml").write_text(dump(cfg))
    learner = _start("learner", run / "config.yaml", run)
    actor = _start("actor", run / "config.yaml", run)
    actor_log = run / "actor.log"  # the honest actor: transport.actor_id is actor-0

    env = make_env(cfg.env)
    obs, _ = env.reset(seed=0)
    spec = make_spec(obs, np.zeros(7, np.float32))
    frames = _frames(np.random.default_rng(0), spec, obs)
    ctx = zmq.Context.instance()
    curve = CurveClient(fuzz_sec, learner_pub)
    dealer, sub = ctx.socket(zmq.DEALER), ctx.socket(zmq.SUB)
    for sock in (dealer, sub):
        sock.setsockopt(zmq.LINGER, 0)
        curve.configure(sock)
    sub.setsockopt(zmq.SUBSCRIBE, TOPIC_STATUS)
    dealer.connect(endpoint("127.0.0.1", tport))
    sub.connect(endpoint("127.0.0.1", pport))
    status: dict = {}
    try:
        dealer.send(envelope("hello", FUZZER, {"spec": spec}, 0))  # so NaN items reach the schema check
        time.sleep(1.0)
        for category, batch in frames.items():
            for frame in batch:
                dealer.send(frame)
                while dealer.poll(0):
                    dealer.recv()  # replies (acks, refusals) are drained, not needed
            assert learner.poll() is None, f"learner died during '{category}':\n" + (run / "learner.log").read_text()
        # The fuzzer is one of the run's two actors: it reports done (no steps) and a final evaluation, so the
        # run ends when the honest actor's part does.
        dealer.send(envelope("done", FUZZER, {"env_steps": 0}, 10**7))
        dealer.send(envelope("eval", FUZZER, {"episodes": 1, "first_seed": 0, "success_rate": 0.0, "return_mean": 0.0,
                                             "return_std": 0.0, "length_mean": 1.0, "params_version": 0,
                                             "env_steps": 0, "final": True}, 10**7 + 1))
        deadline = time.monotonic() + 400
        while actor.poll() is None or learner.poll() is None:
            assert time.monotonic() < deadline, "the run did not finish"
            while sub.poll(50):
                status = open_envelope(sub.recv_multipart()[1])["body"]
    finally:
        for p in (learner, actor):
            if p.poll() is None:
                p.kill()
        dealer.close()
        sub.close()
    assert learner.returncode == 0, (run / "learner.log").read_text()[-3000:]
    assert actor.returncode == 0, actor_log.read_text()[-3000:]

    rejected = status["rejected"]
    print("rejections by reason:", rejected, "quarantined:", status["quarantined"])
    # Every frame of the six non-NaN categories is refused, none is stored (random bytes that happen to decode
    # land in whichever category their shape hits, so only per-reason lower bounds are exact).
    assert sum(rejected.values()) == 6 * PER_CATEGORY
    assert rejected.get("not msgpack", 0) >= PER_CATEGORY  # truncated frames, most random bytes
    assert rejected.get("bad array", 0) >= PER_CATEGORY - 50  # huge or negative shapes
    assert rejected.get("wrong version", 0) >= PER_CATEGORY
    assert rejected.get("spoofed actor id", 0) == PER_CATEGORY
    assert status["quarantined"] == PER_CATEGORY  # NaN payloads: schema-checked and set aside
    assert set(rejected) <= {"not msgpack", "bad envelope", "bad array", "wrong version", "spoofed actor id",
                             "frame count", "too large", "malformed"}

    # The honest actor's data: exactly its ledger, byte-identical.
    log = TransitionLog(run / "transitions")
    logged = {(seq, hashlib.sha256(p).hexdigest()) for _, actor_id, seq, p in log.replay() if actor_id == "actor-0"}
    ledger = {(int(a), b) for a, b in (line.split() for line in (run / "ledger-actor-0.txt").read_text().splitlines())}
    assert logged == ledger and len(ledger) == 1200
    assert not [r for r in log.replay() if r[1] == FUZZER], "a fuzzer frame was stored as a transition"
