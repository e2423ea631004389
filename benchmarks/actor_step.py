"""How long does the actor's control step take, physics aside, while the learner trains on the same machine?

Owns: timing the actor's per-step work exactly as `serl_stack.actor.Actor.run` does it, with the real pieces and a
real learner: a `serl learner` process (sim reach config, training on what this process sends) and, in this
process, the product's `Actor` (its ZeroMQ client, durable outbox and disk spool with the product settings: a put per
transition, one fsync per flush of `FLUSH_EVERY` transitions, a flush at every episode end; its `_poll`, which reads
acks and adopts whatever parameter version arrived since the wait's `idle_step`). One timed step is:

    the step's key (KeyStream) -> PolicyRunner.act (observation -> vector, normalization, the numpy actor)
    -> the env's command path without physics (`_apply_action`: command limits, `SafetyFilter.filter`, controller
    target; the executed action) -> outbox.add (msgpack + spool put) -> flush every FLUSH_EVERY steps and at
    episode ends -> Actor._poll

Physics is left out: the observations come from a pool recorded from the real env beforehand (cameras rendered by
MuJoCo), cycled through in episodes of `env.max_episode_steps`. No mixer or steering runs (mixing.mode off; the
steering reranker's own latency is measured by benchmarks/steering.py). Timed steps are paced at `--rate-hz` (100
Hz: the control loop waits for the robot between steps, and the learner gets the CPU in between; back to back, the
actor would take a core the learner has on a real deployment, and its caches would stay warm), each period waited
for as the robot env waits (`robot_bridge.realtime.wait_until`: a sleep to 2 ms before the spin window, then
`Actor.idle_step` (acks and parameter broadcasts received, new parameters adopted and their numpy policy built,
timed apart as `idle_step_*`; `parameter_versions_adopted_in_wait` / `_in_step` count where each version was
adopted), a sleep to the spin window, then `Actor.warm_step` (the step's work once on the last step's input,
discarded: the robot env's cache warm-up), then the rest of the last 1.5 ms spun).
Four cases, each in its own process: `state` (the SAC policy on state observations at normal scheduling,
`bridge.realtime_priority` 0, the default; the target: p99 < 1 ms), `state_realtime` (the same at SCHED_FIFO
`--priority`, as a robot PC runs the actor; reported), `state_no_warm` (`state` without the warm-up; reported) and
`cameras` (two 128x128 cameras, front and wrist, in every observation and transition, the pixel policy using both;
reported beside it, no target). Each case: a fresh learner,
`--warmup` random steps sent first (the learner starts training and broadcasts parameters), then, once it is
updating, `--steps` timed steps with the policy. Median, p99 and max per case, and the median of each stage. Writes
`<out-dir>/actor_step.json` and `actor_step.png` (default: a fresh `runs/bench-<time>/`), prints the JSON as one
line, exits 1 when a target is missed.

    .venv/bin/python benchmarks/actor_step.py [--quick] [--steps 10000] [--rate-hz 100] [--out-dir docs]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import benchlib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGET_P99_MS = 1.0
RATE_HZ = 100.0
"""Timed steps per second: paced like the control loop (which waits for the robot between steps, so the learner
gets the CPU in between), 10x the sim's 10 Hz so that 10k steps take 100 s, not 17 min."""
POOL = 300
"""Recorded observations cycled through (three reach episodes)."""
CAMERAS = ["env.cameras=[front,wrist]", "env.image_size=128", "agent.image_keys=[images/front,images/wrist]",
           "agent.obs_keys=[state/tcp_pose,state/tcp_vel,state/gripper_pos]"]
CASES: dict[str, tuple[list[str], bool, bool]] = {
    "state": ([], False, True),
    "state_realtime": ([], True, True),
    "state_no_warm": ([], False, False),
    "cameras": (CAMERAS, False, True),
}
"""name -> (config overrides, whether the actor runs at `--priority` SCHED_FIFO as `bridge.realtime_priority`
sets it on a robot PC (the learner always runs at normal priority), whether each period's wait warms the next step
with `Actor.warm_step` as the robot env's does)."""


def start_learner(run_dir: Path, overrides: list[str], warmup: int, env: dict[str, str]) -> subprocess.Popen:
    from serl_stack.orchestrate import free_port

    sets = [f"transport.transitions_port={free_port('127.0.0.1')}", f"transport.params_port={free_port('127.0.0.1')}",
            "train.total_env_steps=10000000", f"train.start_steps={warmup}", "train.eval_every=0",
            "transport.params_every=50", *overrides]
    cmd = benchlib.serl("learner", "--config", "configs/sim_reach.yaml", "--run-dir", str(run_dir),
                        *[x for s in sets for x in ("--set", s)])
    log = open(run_dir.parent / f"{run_dir.name}.learner.log", "w")  # noqa: SIM115 -- closed with the process
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)


def record_pool(env: Any, n: int, seed: int) -> list[dict[str, Any]]:
    """`n` + 1 consecutive observations of the real env under random actions (resetting at episode ends)."""
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    pool = [obs]
    while len(pool) <= n:
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset()
        pool.append(obs)
    return pool


def run_case(name: str, overrides: list[str], steps: int, warmup: int, runs: Path, priority: int,
             rate_hz: float, warm: bool) -> dict[str, Any]:
    """One case in its own (spawned) process: the learner is started before this process turns real-time, so it
    does not inherit the policy; JAX starts its threads afterwards, so they do. Timed steps start every
    1 / `rate_hz` s (0: back to back), waited for as the robot env waits for its next period
    (`robot_bridge.realtime.wait_until`: a sleep, then the last 1.5 ms spun). XLA's threads are limited to
    `train.actor_threads` before JAX loads, as `serl actor` limits them (default 1: no Eigen thread pool, whose
    hand-offs to pool threads a busy machine delays)."""
    from serl_stack.cli import set_thread_env
    from serl_stack.config import load

    learner_env = os.environ.copy()  # the learner keeps its own thread settings (train.learner_threads)
    actor_threads = load(ROOT / "configs" / "sim_reach.yaml", overrides).train.actor_threads
    set_thread_env(actor_threads)
    from robot_bridge.realtime import use_realtime, wait_until
    from serl_stack.actor import FLUSH_EVERY, Actor
    from serl_stack.envs.franka import executed_action
    from serl_stack.inference import KeyStream, PolicyRunner
    from serl_stack.transport.outbox import DurableOutbox
    from serl_stack.transport.protocol import make_spec

    run_dir = runs / name
    run_dir.mkdir(parents=True)
    learner = start_learner(run_dir, overrides, warmup, learner_env)
    learner_log = run_dir.parent / f"{name}.learner.log"
    use_realtime(priority)
    actor: Actor | None = None
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "config.yaml").is_file():
            if learner.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the learner did not start; see {learner_log}")
            time.sleep(0.2)
        cfg = load(run_dir / "config.yaml")
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, eval_every=0))
        actor = Actor(cfg, run_dir)
        env = actor.env
        pool = record_pool(env, POOL, cfg.train.seed)
        obs = pool[0]
        action_dim = int(np.prod(env.action_space.shape))
        actor.policy = policy = PolicyRunner(obs, action_dim, cfg.agent)
        spec = make_spec(obs, np.zeros(action_dim, np.float32))
        actor.outbox = outbox = DurableOutbox(actor.client, actor.spool, spec)
        inner = env.unwrapped
        env.reset(seed=cfg.train.seed)  # the safety filter's state: a real episode start
        keys = KeyStream(cfg.train.seed + 1)  # as Actor.run makes its per-step keys
        horizon = cfg.env.max_episode_steps
        stages = {k: np.zeros(steps) for k in ("policy", "safety", "outbox", "poll")}
        total = np.zeros(steps)
        versions: set[int] = set()
        adopted = {"idle": 0, "step": 0}  # parameter versions adopted in the wait (Actor.idle_step) / in the step

        def one_step(i: int, timed: bool) -> None:
            o, nxt = pool[i % POOL], pool[i % POOL + 1]
            t0 = time.perf_counter()
            action = policy.act(o, next(keys), False) if timed else env.action_space.sample()
            t1 = time.perf_counter()
            prev_pos, prev_quat, _ = inner.safety.command
            result = inner._apply_action(np.asarray(action, np.float64))  # command limits + safety filter, no physics
            executed = executed_action(inner.cfg, prev_pos, prev_quat, result)
            t2 = time.perf_counter()
            end = (i + 1) % horizon == 0
            transition = {"observation": o, "action": np.asarray(action, np.float32), "executed_action": executed,
                          "reward": 0.0, "next_observation": nxt, "terminated": False, "truncated": end,
                          "episode": i // horizon}
            outbox.add(transition)
            actor.warm_input = transition  # as Actor.run keeps it
            actor._unflushed += 1
            if end or actor._unflushed >= FLUSH_EVERY:
                actor._flush()
            if end:
                actor.client.send("episode", {"episode": i // horizon, "return": 0.0, "length": horizon,
                                              "success": False})
            t3 = time.perf_counter()
            before = policy.version
            actor._poll(0)
            t4 = time.perf_counter()
            if timed:
                adopted["step"] += policy.version != before
            if end:
                env.reset()  # outside the timing: the command and the filter start the next episode afresh
            if timed:
                j = i - warmup
                stages["policy"][j], stages["safety"][j] = t1 - t0, t2 - t1
                stages["outbox"][j], stages["poll"][j] = t3 - t2, t4 - t3
                total[j] = t4 - t0
                versions.add(policy.version)

        for i in range(warmup):
            one_step(i, timed=False)
        actor._flush()
        start = time.monotonic()
        while policy.params is None:  # the learner compiles, trains and broadcasts its first parameters
            actor._poll(100)
            if learner.poll() is not None or time.monotonic() - start > 300:
                raise RuntimeError(f"no parameters from the learner; see {learner_log}")
        while actor._updates() < 1:  # timing starts once the learner is updating, not while it compiles
            actor._poll(100)
            if learner.poll() is not None or time.monotonic() - start > 300:
                raise RuntimeError(f"the learner did not start updating; see {learner_log}")
        policy.compile(obs)
        updates_before = actor._updates()
        print(f"[{name}] parameters version {policy.version}, the learner updating after "
              f"{time.monotonic() - start:.1f} s; timing {steps} steps", file=sys.stderr, flush=True)
        period = 1.0 / rate_hz if rate_hz > 0 else 0.0
        late = 0
        idle_s: list[float] = []

        def idle() -> None:  # Actor.idle_step, timed: the bookkeeping done in the wait (untimed in the step)
            before, t0 = policy.version, time.perf_counter()
            actor.idle_step()
            idle_s.append(time.perf_counter() - t0)
            adopted["idle"] += policy.version != before

        t_start = time.monotonic()
        deadline = time.perf_counter()
        for i in range(warmup, warmup + steps):
            one_step(i, timed=True)
            if period:
                deadline += period
                late += time.perf_counter() > deadline
                # As RobotFrankaEnv._wait_period: an overrun restarts the schedule from now, no burst to catch up.
                deadline = max(deadline, wait_until(deadline, time.perf_counter,
                                                    warm=actor.warm_step if warm else None, idle=idle))
        wall = time.monotonic() - t_start
        actor._poll(100)
        learner_alive = learner.poll() is None
        updates = actor._updates() - updates_before
    finally:
        if actor is not None:
            actor._close()
        if learner.poll() is None:
            learner.send_signal(signal.SIGINT)
        try:
            learner.wait(60)
        except subprocess.TimeoutExpired:
            learner.kill()
    ms = total * 1000
    return {
        "steps": steps,
        "median_ms": round(float(np.median(ms)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "max_ms": round(float(ms.max()), 3),
        "stage_median_ms": {k: round(float(np.median(v) * 1000), 4) for k, v in stages.items()},
        "stage_p99_ms": {k: round(float(np.percentile(v, 99) * 1000), 4) for k, v in stages.items()},
        "stage_max_ms": {k: round(float(v.max() * 1000), 3) for k, v in stages.items()},
        "idle_step_calls": len(idle_s),
        "idle_step_median_ms": round(float(np.median(idle_s) * 1000), 4) if idle_s else None,
        "idle_step_p99_ms": round(float(np.percentile(idle_s, 99) * 1000), 4) if idle_s else None,
        "idle_step_max_ms": round(float(np.max(idle_s) * 1000), 3) if idle_s else None,
        "parameter_versions_loaded_while_timed": len(versions),
        "parameter_versions_adopted_in_wait": adopted["idle"],
        "parameter_versions_adopted_in_step": adopted["step"],
        "learner_updates_while_timed": updates,
        "learner_updates_per_s_while_timed": round(updates / wall, 1) if wall > 0 else None,
        "rate_hz": rate_hz,
        "steps_past_their_period": late,
        "learner_trained_throughout": bool(learner_alive and updates > 0),
        "wall_s": round(wall, 1),
        "overrides": overrides,
        "actor_sched_fifo_priority": priority,
        "warm_step_in_wait": warm,
        "actor_threads": actor_threads,
        "_samples_ms": ms,
    }


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in results.items():
        ms = np.sort(r["_samples_ms"])
        ax.plot(ms, 1 - np.arange(len(ms)) / len(ms), label=f"{name}: median {r['median_ms']:.3f} ms, "
                f"p99 {r['p99_ms']:.3f} ms")
    ax.axvline(TARGET_P99_MS, color="k", ls="--", lw=1, label=f"target: state p99 < {TARGET_P99_MS:g} ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("actor control step without physics (ms)")
    ax.set_ylabel("fraction of steps longer")
    ax.set_title("Actor step while the learner trains on the same 2-core machine")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 300 timed steps per case")
    p.add_argument("--steps", type=int, default=10_000, help="timed steps per case")
    p.add_argument("--warmup", type=int, default=500, help="random steps sent before timing (train.start_steps)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {list(CASES)}")
    p.add_argument("--priority", type=int, default=50, help="SCHED_FIFO priority of the realtime case's actor")
    p.add_argument("--rate-hz", type=float, default=RATE_HZ,
                   help="timed steps start at this rate, as the control loop paces them (0: back to back)")
    p.add_argument("--out-dir", default=None, help=benchlib.OUT_DIR_HELP)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 300, 200
    benchlib.require_positive(args, ("steps", "warmup"))
    cases = benchlib.parse_modes(args.cases, tuple(CASES))
    out_dir = benchlib.out_dir(args.out_dir)
    runs = benchlib.runs_root("runs", "actor_step")
    start = time.monotonic()
    load_start = os.getloadavg()[0]
    results = {}
    for name in cases:
        overrides, realtime, warm = CASES[name]
        results[name] = benchlib.run_in_worker(
            run_case, (name, overrides, args.steps, args.warmup, runs, args.priority if realtime else 0, args.rate_hz,
                       warm), f"actor_step case {name}", timeout_s=1200)
    png = out_dir / "actor_step.png"
    plot(results, png)
    targets: dict[str, bool] = {}
    if "state" in results:
        s = results["state"]
        targets[f"state_p99_lt_{TARGET_P99_MS:g}_ms"] = bool(s["p99_ms"] < TARGET_P99_MS)
        targets["state_at_least_10k_steps"] = s["steps"] >= 10_000
    targets["learner_trained_throughout"] = all(r["learner_trained_throughout"] for r in results.values())
    report = {
        "benchmark": "actor_step",
        "what": "the actor's control step without physics: the step's key (KeyStream), PolicyRunner.act, command "
                "limits + safety filter, executed action, outbox.add (spool put), flush (the fsync asked of the "
                "spool's flusher thread, the send) every FLUSH_EVERY steps and at episode ends, Actor._poll (acks, "
                "parameter loads)",
        "not_included": "physics, rendering (observations come from a recorded pool), mixers (mixing.mode off), "
                        "steering (its reranker's latency: benchmarks/steering.py)",
        "load": "a serl learner (configs/sim_reach.yaml + the case's overrides) training on the transitions sent",
        "cases": {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in results.items()},
        "targets": targets,
        "plot": png.name,
        "load_avg_1min": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "wall_s": round(time.monotonic() - start, 1),
        "machine": benchlib.machine_info(),
        "date": datetime.now().strftime("%Y-%m-%d"),
    }
    path = benchlib.write_report(out_dir, "actor_step", report, lambda m: print(m, file=sys.stderr, flush=True))
    benchlib.finish(report, path)


if __name__ == "__main__":
    os.environ.setdefault("MUJOCO_GL", "egl")
    main()
