"""Transport benchmark: durable actor -> learner throughput against raw ZeroMQ, and parameter broadcast latency.

Measures, with a real actor process (multiprocessing, spawn) and the learner in this process:

- `state` and `images`: durable transitions/s, from the actor's first `DurableOutbox.add` to the ack that makes
  the last one durable. The actor is what `serl_stack.actor` runs (ActorClient + ActorSpool(fsync=False) +
  DurableOutbox, a flush every `batch_size` adds, a poll after every add); the learner runs LearnerServer +
  DurableInbox (schema check of every item) + TransitionLog (fsync on) in a temporary directory. `state`
  transitions are shaped like FrankaReach-v0's; `images` adds two 128x128x3 uint8 cameras per observation.
  The actor stops adding while more than `window` transitions are unacknowledged (the real actor is throttled
  by the learner's updates): it bounds memory and keeps ZeroMQ's high-water mark, whose overflow the outbox
  only recovers from after its 2 s resend timeout, out of the measurement.
- `raw`, for each of the two: the same transitions packed the same way (`protocol.pack` per transition, the
  same `transitions` envelope and batch size) pushed over a bare ZeroMQ PUSH -> PULL link between the same two
  processes, the receiver decoding each envelope; no spool, no log, no schema check, no acks. Durable and raw
  runs alternate; each figure is the median of `reps` runs; `ratio_vs_raw` = durable / raw.
- `params_broadcast_latency_ms`: `LearnerServer.publish(TOPIC_PARAMS, ...)` of a 1,000,000-float32 policy
  until an ActorClient in the actor process holds that version decoded; `sent_at` (time.monotonic, one clock
  for the whole machine on Linux) travels in the body. One broadcast at a time; median and p90.

Writes `<out-dir>/transport.json` (default: a fresh `runs/bench-<time>/`) with a `targets` map, prints it as one
JSON line on stdout (progress goes to stderr) and exits 1 when a target is missed. `--quick` is a smoke run;
`python benchmarks/transport.py --help` for knobs.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import benchlib
import msgpack
import numpy as np
import zmq

from serl_stack.transport.actor_client import ActorClient
from serl_stack.transport.inbox import DurableInbox
from serl_stack.transport.learner_server import TOPIC_PARAMS, LearnerServer
from serl_stack.transport.log import TransitionLog
from serl_stack.transport.outbox import DurableOutbox
from serl_stack.transport.protocol import Spec, envelope, make_spec, pack, unpack
from serl_stack.transport.spool import ActorSpool

HOST = "127.0.0.1"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""As `TransportConfig.max_message_bytes`."""
ACTOR_ID = "bench-actor"
POOL = 32
"""Distinct transitions the actor cycles through (made before timing starts)."""
RUN_TIMEOUT_S = 120.0
TARGET_STATE_RATIO = 0.1
TARGET_IMAGES_PER_S = 1000.0


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of the runs; every field is a command-line flag (`--state-transitions 5000`)."""

    batch_size: int = 16
    """Transitions per `transitions` message: the actor flushes every this many adds (serl_stack.actor.FLUSH_EVERY)."""
    reps: int = 5
    """Repetitions of each throughput figure (durable and raw alternate, after one unmeasured quarter-size warm-up
    of each); the median is reported."""
    state_transitions: int = 20_000
    """Transitions per state-only run."""
    image_transitions: int = 4_000
    """Transitions per run with images."""
    state_window: int = 4096
    """Unacknowledged transitions at most before the actor waits (state-only)."""
    image_window: int = 512
    """Unacknowledged transitions at most before the actor waits (images: ~200 kB each)."""
    broadcasts: int = 30
    """Measured parameter broadcasts (after 3 unmeasured warm-up ones)."""
    params_floats: int = 1_000_000
    """float32 parameters in the broadcast policy."""


QUICK = BenchConfig(reps=1, state_transitions=2_000, image_transitions=400, broadcasts=5, params_floats=100_000)
"""Smoke-run sizes (`--quick`): a few seconds of each measurement; the figures are not comparable."""


# ------------------------------------------------------------------------------------------------- payloads


def make_observation(rng: np.random.Generator, images: bool) -> dict[str, Any]:
    """A FrankaReach-v0 observation (state + task), with two 128x128 RGB cameras when `images`."""
    f32 = np.float32
    obs: dict[str, Any] = {
        "state": {
            "tcp_pose": rng.uniform(-1, 1, 7).astype(f32),
            "tcp_vel": rng.uniform(-1, 1, 6).astype(f32),
            "gripper_pos": rng.uniform(0, 0.08, 1).astype(f32),
            "tcp_force": rng.uniform(-5, 5, 3).astype(f32),
            "tcp_torque": rng.uniform(-1, 1, 3).astype(f32),
        },
        "task": {"goal_pos": rng.uniform(-0.5, 0.5, 3).astype(f32)},
    }
    if images:
        obs["images"] = {cam: rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for cam in ("wrist", "front")}
    return obs


def make_transitions(kind: str, count: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    images = kind == "images"
    out = []
    for i in range(count):
        action = rng.uniform(-1, 1, 7).astype(np.float32)
        out.append({"observation": make_observation(rng, images), "action": action, "executed_action": action,
                    "reward": float(rng.uniform(-1, 0)), "next_observation": make_observation(rng, images),
                    "terminated": False, "truncated": i % 100 == 99, "episode": i // 100})
    return out


def spec_of(kind: str) -> Spec:
    t = make_transitions(kind, 1)[0]
    return make_spec(t["observation"], t["action"])


def make_params(total: int) -> dict[str, Any]:
    """A flax-like nested dict of float32 arrays holding exactly `total` floats (an MLP, the remainder in a head)."""
    rng = np.random.default_rng(1)
    params: dict[str, Any] = {}
    dims, used = (26, 512, 512, 512), 0
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        if used + a * b + b > total:
            break
        params[f"Dense_{i}"] = {"kernel": rng.standard_normal((a, b), np.float32), "bias": np.zeros(b, np.float32)}
        used += a * b + b
    params["head"] = {"kernel": rng.standard_normal(total - used, np.float32)}
    assert sum(x.size for layer in params.values() for x in layer.values()) == total
    return params


# ------------------------------------------------------------------------------------- actor process (child)


def _actor_durable(kind: str, n: int, batch: int, window: int, ports: tuple[int, int], spool_dir: str) -> dict:
    pool = make_transitions(kind, POOL)
    client = ActorClient(HOST, *ports, ACTOR_ID, MAX_MESSAGE_BYTES)
    spool = ActorSpool(spool_dir, fsync=False)
    outbox = DurableOutbox(client, spool, make_spec(pool[0]["observation"], pool[0]["action"]))

    def pump(timeout_ms: int) -> None:
        client.poll(timeout_ms)
        while client.replies:
            outbox.on_reply(*client.replies.popleft())
        if outbox.refused_reason is not None:
            raise RuntimeError(f"learner refused the actor: {outbox.refused_reason}")
        outbox.maintain()

    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not outbox.welcomed:
            pump(10)
            if time.monotonic() > deadline:
                raise TimeoutError("actor: no welcome from the learner")
        cpu0, t0 = time.process_time(), time.monotonic()
        for i in range(n):
            while i - outbox.durable_seq >= window:
                pump(1)
            outbox.add(pool[i % POOL])
            if (i + 1) % batch == 0:
                outbox.flush()
            pump(0)
        outbox.flush()
        while outbox.durable_seq < n:
            pump(10)
            if time.monotonic() > deadline:
                raise TimeoutError(f"actor: durable_seq {outbox.durable_seq} of {n} after {RUN_TIMEOUT_S} s")
        t1 = time.monotonic()
        return {"seconds": t1 - t0, "cpu_s": time.process_time() - cpu0, "resends": outbox.resends,
                "quarantined": len(outbox.quarantined), "spool_left": len(spool), "spool_fsyncs": spool.fsync_count}
    finally:
        outbox.close()
        client.close()
        spool.close()


def _actor_raw(conn: Connection, kind: str, n: int, batch: int, port: int) -> dict:
    pool = make_transitions(kind, POOL)
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(f"tcp://{HOST}:{port}")
    try:
        push.send(b"hello")
        if conn.recv() != "go":  # the learner side has the hello: the link is up, as after a durable welcome
            raise RuntimeError("raw: expected 'go'")
        t0 = time.monotonic()
        for b in range(n // batch):
            items = [[seq, pack(pool[(seq - 1) % POOL])] for seq in range(b * batch + 1, (b + 1) * batch + 1)]
            push.send(envelope("transitions", ACTOR_ID, {"items": items}, seq=b + 1))
        return {"t0": t0}
    finally:
        push.close()


def _actor_params(conn: Connection, ports: tuple[int, int], count: int) -> dict:
    client = ActorClient(HOST, *ports, ACTOR_ID, MAX_MESSAGE_BYTES)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while client.params_version < 0:  # the learner publishes version 0 until this subscriber gets one
            client.poll(20)
            if time.monotonic() > deadline:
                raise TimeoutError("params: no broadcast reached the actor")
        conn.send(("ready", None))
        for version in range(1, count + 1):
            while client.params_version < version:
                client.poll(1000)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"params: version {version} never arrived")
            latency = time.monotonic() - client.params_body["sent_at"]
            floats = sum(x.size for layer in client.params_body["params"].values() for x in layer.values())
            conn.send(("latency", (latency, floats)))
        return {}
    finally:
        client.close()


def actor_worker(conn: Connection) -> None:
    """The actor process: runs the commands the learner side sends, replies ("ok", result) or ("error", text)."""
    while True:
        cmd, kw = conn.recv()
        if cmd == "stop":
            return
        try:
            if cmd == "durable":
                result = _actor_durable(**kw)
            elif cmd == "raw":
                result = _actor_raw(conn, **kw)
            elif cmd == "params":
                result = _actor_params(conn, **kw)
            else:
                raise ValueError(f"unknown command {cmd!r}; expected durable, raw, params or stop")
            conn.send(("ok", result))
        except Exception:  # reported to the parent, which raises it there
            conn.send(("error", traceback.format_exc()))


def _reply(conn: Connection, expect: str = "ok", timeout_s: float = RUN_TIMEOUT_S) -> Any:
    """The value of the actor process's next (`expect`, value) message; raises its error if it failed."""
    if not conn.poll(timeout_s):
        raise TimeoutError(f"the actor process sent no {expect!r} within {timeout_s} s")
    status, value = conn.recv()
    if status == "error":
        raise RuntimeError(f"actor process failed:\n{value}")
    if status != expect:
        raise RuntimeError(f"actor process sent {status!r}, expected {expect!r}")
    return value


# ---------------------------------------------------------------------------------------- learner side (here)


def run_durable(conn: Connection, kind: str, n: int, batch: int, window: int, root: Path) -> dict:
    """One durable run; returns transitions/s and where the time went."""
    root.mkdir(parents=True)
    server = LearnerServer(HOST, 0, 0, MAX_MESSAGE_BYTES)
    log = TransitionLog(root / "log")  # fsync on
    inbox = DurableInbox(server, log, expected_spec=spec_of(kind), max_item_bytes=MAX_MESSAGE_BYTES)
    try:
        conn.send(("durable", {"kind": kind, "n": n, "batch": batch, "window": window,
                               "ports": (server.transitions_port, server.params_port),
                               "spool_dir": str(root / "spool")}))
        delivered, cpu0, deadline = 0, time.process_time(), time.monotonic() + RUN_TIMEOUT_S
        while not conn.poll():
            got, _ = inbox.handle(server.recv(20))
            delivered += len(got)  # the transitions are dropped: a learner would insert them in its replay
            if time.monotonic() > deadline:
                raise TimeoutError(f"durable {kind}: {delivered} of {n} delivered after {RUN_TIMEOUT_S} s")
        learner_cpu = time.process_time() - cpu0
        actor = _reply(conn)
        if delivered != n or log.durable_seq(ACTOR_ID) != n or inbox.quarantined or inbox.refused or server.rejected:
            raise RuntimeError(f"durable {kind}: delivered {delivered}, durable {log.durable_seq(ACTOR_ID)} of {n}, "
                               f"quarantined {inbox.quarantined}, refused {inbox.refused}, rejected {server.rejected}")
        return {"per_s": n / actor["seconds"], "seconds": actor["seconds"], "actor_cpu_s": actor["cpu_s"],
                "learner_cpu_s": learner_cpu, "log_fsyncs": log.fsync_count, "resends": actor["resends"]}
    finally:
        server.close()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def run_raw(conn: Connection, kind: str, n: int, batch: int) -> dict:
    """One raw PUSH -> PULL run of the same envelopes; returns transitions/s."""
    pull = zmq.Context.instance().socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.setsockopt(zmq.RCVTIMEO, int(RUN_TIMEOUT_S * 1000))
    try:
        port = pull.bind_to_random_port(f"tcp://{HOST}")
        conn.send(("raw", {"kind": kind, "n": n, "batch": batch, "port": port}))
        if pull.recv() != b"hello":
            raise RuntimeError("raw: expected hello first")
        conn.send("go")
        received, cpu0 = 0, time.process_time()
        while received < n:
            received += len(unpack(pull.recv(), MAX_MESSAGE_BYTES)["body"]["items"])
        t1 = time.monotonic()
        seconds = t1 - _reply(conn)["t0"]
        return {"per_s": n / seconds, "seconds": seconds, "receiver_cpu_s": time.process_time() - cpu0}
    finally:
        pull.close()


def run_params(conn: Connection, cfg: BenchConfig, warmup: int = 3) -> dict:
    """Broadcast latency of a `cfg.params_floats` policy, one version at a time."""
    params = make_params(cfg.params_floats)
    server = LearnerServer(HOST, 0, 0, MAX_MESSAGE_BYTES)
    total = warmup + cfg.broadcasts
    try:
        conn.send(("params", {"ports": (server.transitions_port, server.params_port), "count": total}))
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not conn.poll(0.02):  # PUB drops messages until the subscription has arrived: repeat version 0
            server.publish(TOPIC_PARAMS, "params", {"params": {}, "final": False, "sent_at": 0.0}, seq=0)
            if time.monotonic() > deadline:
                raise TimeoutError("params: the actor never received version 0")
        _reply(conn, "ready")
        latencies = []
        for version in range(1, total + 1):
            body = {"params": params, "final": False, "sent_at": time.monotonic()}
            server.publish(TOPIC_PARAMS, "params", body, seq=version)
            latency, floats = _reply(conn, "latency")
            if floats != cfg.params_floats:
                raise RuntimeError(f"params: actor decoded {floats} floats, expected {cfg.params_floats}")
            latencies.append(latency * 1e3)
        _reply(conn)
        measured = latencies[warmup:]
        return {"median": statistics.median(measured), "p90": float(np.percentile(measured, 90)),
                "max": max(measured), "broadcasts": len(measured), "params": cfg.params_floats,
                "message_bytes": len(envelope("params", "learner", {"params": params, "final": False}))}
    finally:
        server.close()


def throughput(conn: Connection, cfg: BenchConfig, kind: str, tmp: Path) -> dict:
    n = cfg.state_transitions if kind == "state" else cfg.image_transitions
    n -= n % cfg.batch_size
    window = cfg.state_window if kind == "state" else cfg.image_window
    # Unmeasured: the first runs pay for page faults while malloc's mmap threshold adapts to ~200 kB buffers.
    warm = max(cfg.batch_size, n // 4 - n // 4 % cfg.batch_size)
    run_durable(conn, kind, warm, cfg.batch_size, window, tmp / f"{kind}-warmup")
    run_raw(conn, kind, warm, cfg.batch_size)
    durable, raw = [], []
    for rep in range(cfg.reps):
        durable.append(run_durable(conn, kind, n, cfg.batch_size, window, tmp / f"{kind}-{rep}"))
        raw.append(run_raw(conn, kind, n, cfg.batch_size))
        print(f"{kind} rep {rep}: durable {durable[-1]['per_s']:.0f}/s (actor cpu {durable[-1]['actor_cpu_s']:.2f} s,"
              f" learner cpu {durable[-1]['learner_cpu_s']:.2f} s, {durable[-1]['seconds']:.2f} s wall),"
              f" raw {raw[-1]['per_s']:.0f}/s", file=sys.stderr, flush=True)
    med = statistics.median(d["per_s"] for d in durable)
    med_raw = statistics.median(r["per_s"] for r in raw)
    sample = make_transitions(kind, 1)[0]
    return {
        "durable_per_s": round(med, 1),
        "raw_per_s": round(med_raw, 1),
        "ratio_vs_raw": round(med / med_raw, 4),
        "durable_runs_per_s": [round(d["per_s"], 1) for d in durable],
        "raw_runs_per_s": [round(r["per_s"], 1) for r in raw],
        "transitions_per_run": n,
        "window": window,
        "transition_bytes": len(pack(sample)),
        "actor_cpu_share": round(statistics.median(d["actor_cpu_s"] / d["seconds"] for d in durable), 3),
        "learner_cpu_share": round(statistics.median(d["learner_cpu_s"] / d["seconds"] for d in durable), 3),
        "transitions_per_log_fsync": round(statistics.median(n / max(d["log_fsyncs"], 1) for d in durable), 1),
        "resends": sum(d["resends"] for d in durable),
    }


def machine_info() -> dict:
    return {"cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "python": platform.python_version(), "pyzmq": zmq.pyzmq_version(), "libzmq": zmq.zmq_version(),
            "msgpack": ".".join(map(str, msgpack.version)), "numpy": np.__version__,
            "platform": platform.platform(), "machine": platform.machine()}


def run(cfg: BenchConfig) -> dict:
    """Run every measurement with one actor process; returns the JSON-ready result."""
    start = time.monotonic()
    ctx = mp.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    proc = ctx.Process(target=actor_worker, args=(child_conn,), daemon=True)
    proc.start()
    child_conn.close()  # so that the actor process dying reads as EOF here instead of a silent wait
    try:
        with tempfile.TemporaryDirectory(prefix="serl-bench-transport-") as tmp:
            state = throughput(conn, cfg, "state", Path(tmp))
            images = throughput(conn, cfg, "images", Path(tmp))
        params = run_params(conn, cfg)
        print(f"params broadcast: median {params['median']:.1f} ms, p90 {params['p90']:.1f} ms",
              file=sys.stderr, flush=True)
    finally:
        conn.send(("stop", {}))
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
    targets = {"state_ratio_vs_raw_ge_0.1": state["ratio_vs_raw"] >= TARGET_STATE_RATIO,
               "images_durable_ge_1000_per_s": images["durable_per_s"] >= TARGET_IMAGES_PER_S}
    return {
        "benchmark": "transport",
        "state": state,
        "images": images,
        "params_broadcast_latency_ms": {k: round(v, 2) if isinstance(v, float) else v for k, v in params.items()},
        "targets": targets,
        "meets_targets": all(targets.values()),
        "batch_size": cfg.batch_size,
        "reps": cfg.reps,
        "config": asdict(cfg),
        "machine": machine_info(),
        "wall_s": round(time.monotonic() - start, 1),
    }


def _field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field, for `--help`."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    return {a.target.id: b.value.value for a, b in itertools.pairwise(body)
            if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name)
            and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)}


def parse_args(argv: list[str] | None = None) -> tuple[BenchConfig, Path]:
    """The run sizes (`--quick` starts from QUICK; flags given override either) and the report's folder."""
    docs = _field_docs(BenchConfig)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    parser.add_argument("--out-dir", default=None, help=benchlib.OUT_DIR_HELP)
    quick = asdict(QUICK)
    for name, value in asdict(BenchConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=None,
                            help=f"{docs.get(name, '')} (default: {value}; {quick[name]} with --quick)")
    args = parser.parse_args(argv)
    given = {name: getattr(args, name) for name in quick if getattr(args, name) is not None}
    cfg = dataclasses.replace(QUICK if args.quick else BenchConfig(), **given)
    for name, value in asdict(cfg).items():
        if value < 1:
            raise SystemExit(f"--{name.replace('_', '-')}: got {value}, expected >= 1")
    return cfg, benchlib.out_dir(args.out_dir)


def main(argv: list[str] | None = None) -> None:
    cfg, out = parse_args(argv)
    report = run(cfg)
    path = benchlib.write_report(out, "transport", report, lambda msg: print(msg, file=sys.stderr, flush=True))
    benchlib.finish(report, path)


if __name__ == "__main__":
    main()
