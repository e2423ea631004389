"""How fast and how steady is the robot path? Round trip and control-loop jitter through ROS 2 messages on loopback.

Owns: two measurements against the MuJoCo-backed fake Franka (its own process, Cyclone DDS on loopback) while a
`serl train` run (learner + actor, sim reach) trains on the same machine, as a learner next to the robot would:
- round trip: the time from publishing a target pose (the DDS backend, this process) to the arrival of the first
  `current_pose` computed by physics after that target was applied. The arm holds still before each target, and
  the target is 5 mm away, so the first pose that moved is the first computed after the target arrived. Median and
  p99 over `--targets` targets;
- jitter: the robot env (robot_bridge/franka_env.py) stepping at 10 Hz and at 50 Hz for `--periods` periods each
  (zero actions, one long episode): p99 of |period - nominal|, the period being the time between two consecutive
  `step` returns.
The robot side (the fake and this process) runs at `bridge.realtime_priority` `--priority` (SCHED_FIFO, as on a
robot PC), the learner at normal priority. Targets: p99 round trip < 5 ms; p99 jitter < 2 ms at 50 Hz. Writes
`<out-dir>/bridge_latency.json` (default: a fresh `runs/bench-<time>/`), prints it as one JSON line, exits 1 when a
target is missed. `--quick` is a smoke run.

    .venv/bin/python benchmarks/bridge_latency.py [--quick] [--periods 3000] [--targets 500] [--out-dir docs]
"""

from __future__ import annotations

import argparse
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
DOMAIN = 61
TARGET_ROUND_TRIP_MS = 5.0
TARGET_JITTER_MS = 2.0


def start_fake(namespace: str, rate: float, priority: int) -> subprocess.Popen:
    return subprocess.Popen(benchlib.serl("fake-franka", "--set", f"bridge.domain_id={DOMAIN}",
                                          "--set", f"bridge.namespace={namespace}",
                                          "--set", f"bridge.realtime_priority={priority}", "--rate", str(rate)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=ROOT, env=os.environ.copy())


def start_learning(run_dir: Path) -> subprocess.Popen:
    """A sim `serl train` that keeps learning for the whole benchmark (its learner is the load a robot PC sees)."""
    return subprocess.Popen(benchlib.serl("train", "--config", "configs/sim_reach.yaml", "--run-dir", str(run_dir),
                                          "--set", "train.total_env_steps=10000000", "--set", "train.start_steps=500"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=ROOT, env=os.environ.copy())


def round_trips(namespace: str, n: int) -> np.ndarray:
    """Seconds from publishing each target to the first pose that moved after it."""
    from robot_bridge import make_backend
    from serl_stack.config import BridgeConfig

    backend = make_backend(BridgeConfig(domain_id=DOMAIN, namespace=namespace))
    try:
        backend.wait_for_state(10.0)
        pose = backend.latest_pose()
        home, quat = np.asarray(pose.position, np.float64), np.asarray(pose.quat, np.float64)
        out = []
        for i in range(n + 5):
            target = home + np.array([0.0, 0.005 if i % 2 else -0.005, 0.0])
            backend.publish_target_pose(home, quat)  # hold still first
            time.sleep(0.3)
            still = np.asarray(backend.latest_pose().position)
            sent = backend.now()
            backend.publish_target_pose(target, quat)
            while True:
                p = backend.latest_pose()
                if p.received > sent and np.linalg.norm(np.asarray(p.position) - still) > 1e-7:
                    if i >= 5:  # the first few warm the path up
                        out.append(p.received - sent)
                    break
                if backend.now() - sent > 1.0:
                    raise RuntimeError("no pose moved within 1 s of a target: is the fake Franka tracking?")
                time.sleep(0.0001)  # poll without holding the interpreter lock the DDS listener needs
        return np.asarray(out)
    finally:
        backend.close()


def jitter(namespace: str, hz: float, periods: int) -> dict[str, Any]:
    from robot_bridge.franka_env import make_robot_env
    from serl_stack.config import BridgeConfig, EnvConfig

    env = make_robot_env(EnvConfig(kind="franka", control_hz=hz, max_episode_steps=periods + 10),
                         BridgeConfig(domain_id=DOMAIN, namespace=namespace, reset_duration_s=1.0))
    try:
        env.reset(seed=0)
        zero = np.zeros(7, np.float32)
        ends = []
        for _ in range(periods + 1):
            env.step(zero)
            ends.append(time.monotonic())
        dev = np.abs(np.diff(ends) - 1.0 / hz) * 1000
        return {"hz": hz, "periods": int(len(dev)), "p50_ms": round(float(np.percentile(dev, 50)), 4),
                "p99_ms": round(float(np.percentile(dev, 99)), 4), "max_ms": round(float(dev.max()), 3),
                "watchdog_holds": int(env.unwrapped.watchdog_holds)}
    finally:
        env.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 100 periods per rate, 30 targets")
    p.add_argument("--periods", type=int, default=3000)
    p.add_argument("--targets", type=int, default=500)
    p.add_argument("--rate", type=float, default=250.0, help="the fake Franka's state rate (Hz)")
    p.add_argument("--priority", type=int, default=50,
                   help="bridge.realtime_priority of the robot side (the fake and this process; 0: normal)")
    p.add_argument("--out-dir", default=None, help=benchlib.OUT_DIR_HELP)
    args = p.parse_args(argv)
    if args.quick:
        args.periods, args.targets = 100, 30
    benchlib.require_positive(args, ("periods", "targets"))
    from robot_bridge.dds_config import use_loopback_if_unset

    use_loopback_if_unset()  # before any participant, in this process and the ones it starts
    out_dir = benchlib.out_dir(args.out_dir)
    runs = benchlib.runs_root("runs", "bridge_latency")
    namespace = f"/latency{os.getpid()}"
    start = time.monotonic()
    fake = start_fake(namespace, args.rate, args.priority)
    learning = start_learning(runs / "load")  # started before this process turns real-time: it does not inherit it
    from robot_bridge.realtime import use_realtime

    use_realtime(args.priority)
    try:
        time.sleep(20.0)  # the load's learner compiles and starts updating
        trips = round_trips(namespace, args.targets) * 1000
        loops = [jitter(namespace, hz, args.periods) for hz in (10.0, 50.0)]
        load_alive = learning.poll() is None
        load_avg = os.getloadavg()[0]
    finally:
        for proc in (learning, fake):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in (learning, fake):
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    at50 = next(j for j in loops if j["hz"] == 50.0)
    targets = {f"round_trip_p99_lt_{TARGET_ROUND_TRIP_MS:g}_ms": bool(np.percentile(trips, 99) < TARGET_ROUND_TRIP_MS),
               f"jitter_p99_at_50_hz_lt_{TARGET_JITTER_MS:g}_ms": bool(at50["p99_ms"] < TARGET_JITTER_MS),
               "learner_trained_throughout": bool(load_alive)}
    report = {
        "benchmark": "bridge_latency",
        "fake_state_rate_hz": args.rate,
        "realtime_priority": args.priority,
        "round_trip_ms": {"targets": int(len(trips)), "median": round(float(np.median(trips)), 3),
                          "p99": round(float(np.percentile(trips, 99)), 3), "max": round(float(trips.max()), 3)},
        "jitter": loops,
        "load": "serl train --config configs/sim_reach.yaml (learner + actor) training throughout",
        "load_avg_1min_at_end": round(load_avg, 2),
        "wall_s": round(time.monotonic() - start, 1),
        "targets": targets,
        "machine": benchlib.machine_info(),
        "date": datetime.now().strftime("%Y-%m-%d"),
    }
    path = benchlib.write_report(out_dir, "bridge_latency", report, lambda m: print(m, file=sys.stderr, flush=True))
    benchlib.finish(report, path)


if __name__ == "__main__":
    os.environ.setdefault("MUJOCO_GL", "egl")
    main()
