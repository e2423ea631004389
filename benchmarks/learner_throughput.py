"""Learner throughput benchmark: our SAC learner against SBX SAC and Stable-Baselines3 SAC at equal settings.

Owns: timing whole training loops of the three learners, one long-lived worker process per framework, and the
one-line JSON report. Equal settings: MLP 256x256 actor and critics, 2 critics, batch 256, observations of size
26, actions of size 7 in [-1, 1], Adam 3e-4 everywhere, tau 0.005, gamma 0.9, learned temperature starting at
0.01, a replay of `capacity` rows prefilled with `prefill` random transitions.

One timed iteration is what a training loop does per env step:

- ours: `DeviceReplay.insert_batch` of one fresh transition, split a key, `SACAgent.update_from_replay` (the
  replay sampling runs inside the update's jit); one `jax.block_until_ready` after the last iteration, so the
  figure is finished work, not dispatched work.
- SBX: `replay_buffer.add` of one transition, then `model.train(gradient_steps=utd, batch_size=256)` (samples
  `utd * 256` rows from SB3's host replay buffer, copies them in, one jitted loop; `policy_delay = utd`, so one
  actor and temperature step per call, as ours and SERL/RLPD do). `train` reads its losses back with `.item()`,
  so every call is synchronous.
- SB3: the same `add`, then `model.train(gradient_steps=utd, batch_size=256)`; SB3 SAC has no policy delay, so
  at UTD 20 it runs 20 full updates (actor and temperature included) per call: more work than the other two.

`updates/s` = iterations/s = env steps/s a learner can sustain; at UTD 20, `critic_updates_per_s` = 20 x that.
Workers alternate (ours, sbx, sb3, ours, ...) for `reps` runs of about `seconds` each after a compiled warm-up;
figures are medians, ratios are ours / theirs (`ratio_vs_sbx`, `ratio_vs_sb3` at UTD 1, `utd20_ratio_vs_*`);
targets: >= 1.0x SBX at UTD 1, >= 1.15x SBX at UTD 20, >= 1.5x SB3. The 1-minute load average is recorded when
timing starts; above 0.5 (after waiting up to `--wait-idle-s`) the ratios are withheld (null) and every target
counts as missed, since SB3 collapses under load and would flatter us. The RLPD row times
our learner with 10 critics, a random subset of 2 in the TD target, LayerNorm critics and UTD 20.

Writes `<out-dir>/learner_throughput.json` (default: a fresh `runs/bench-<time>/`) with a `targets` map, prints
it as one JSON line on stdout (progress goes to stderr) and exits 1 when a target is missed. `--quick` is a
smoke run of well under 90 s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import benchlib
import numpy as np

OBS_DIM = 26
ACTION_DIM = 7
HIDDEN = (256, 256)
BATCH_SIZE = 256
LEARNING_RATE = 3e-4
TAU = 0.005
GAMMA = 0.9
INIT_TEMPERATURE = 0.01
POOL = 1024
"""Distinct fresh transitions cycled through by the per-iteration insert (made before timing)."""
TARGET_RATIO_VS_SBX = 1.0
"""Ours / SBX at UTD 1 (both compile the whole update with XLA: parity is the honest bar)."""
TARGET_RATIO_VS_SBX_UTD20 = 1.15
"""Ours / SBX at UTD 20 (our replay sampling runs inside the jit; SBX copies utd x 256 rows from the host)."""
TARGET_RATIO_VS_SB3 = 1.5
"""Ours / SB3 at UTD 1."""
MAX_LOAD = 0.5
"""Highest 1-minute load average at which ratios are reported: SB3's torch threads collapse under load."""
REPLY_TIMEOUT_S = 600.0
MIN_ITERS = 2
"""Fewest iterations in a timed run (SB3 at UTD 20 takes a fraction of a second each)."""
FRAMEWORKS = ("ours", "sbx", "sb3")
CASES = ("utd1", "utd20")
"""Every framework runs both; `rlpd` runs in our worker only."""


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of the runs; every field is a command-line flag (`--reps 3`)."""

    reps: int = 5
    """Timed runs per (framework, case); the median is reported."""
    seconds: float = 3.0
    """Approximate length of one timed run (the iteration count is calibrated from the warm-up)."""
    capacity: int = 100_000
    """Replay capacity, the same for all three learners."""
    prefill: int = 20_000
    """Random transitions in the replay before timing."""
    warmup_iters: int = 10
    """Untimed iterations after compilation, used to calibrate each run's iteration count."""
    torch_threads: int = 2
    """torch.set_num_threads for SB3 (JAX uses every core)."""
    out_dir: str = ""
    """Folder for learner_throughput.json, relative to the repository root; empty: a fresh runs/bench-<time>/."""
    wait_idle_s: float = 300.0
    """How long to wait for the 1-minute load average to fall to MAX_LOAD before timing (the figures are still
    measured and written when it does not, but without ratios, and every target counts as missed)."""


QUICK = BenchConfig(reps=2, seconds=0.4, capacity=20_000, prefill=5_000, warmup_iters=2, wait_idle_s=0.0)


# ------------------------------------------------------------------------------------------------ data


def random_transitions(n: int, seed: int) -> dict[str, np.ndarray]:
    """`n` random transitions in our agent-batch layout (float32, mask = 1 - terminated)."""
    rng = np.random.default_rng(seed)
    return {
        "observations": rng.standard_normal((n, OBS_DIM), np.float32),
        "actions": rng.uniform(-1.0, 1.0, (n, ACTION_DIM)).astype(np.float32),
        "rewards": rng.standard_normal(n).astype(np.float32),
        "next_observations": rng.standard_normal((n, OBS_DIM), np.float32),
        "masks": (rng.random(n) > 0.01).astype(np.float32),
    }


# ------------------------------------------------------------------------------------------------ learners
# Each `make_*` builds one learner for `utd` (and `rlpd`) and returns `run(n) -> seconds` for n timed iterations.

Runner = Callable[[int], float]


def make_ours(cfg: BenchConfig, case: str) -> Runner:
    import jax

    from serl_stack.agents.sac import SACAgent
    from serl_stack.config import AgentConfig
    from serl_stack.data.device_replay import DeviceReplay

    agent_cfg = dataclasses.replace(
        AgentConfig(),
        hidden_dims=HIDDEN,
        num_critics=2,
        batch_size=BATCH_SIZE,
        utd=1 if case == "utd1" else 20,
        actor_lr=LEARNING_RATE,
        critic_lr=LEARNING_RATE,
        temp_lr=LEARNING_RATE,
        tau=TAU,
        discount=GAMMA,
        init_temperature=INIT_TEMPERATURE,
    )
    if case == "rlpd":
        agent_cfg = dataclasses.replace(
            agent_cfg, num_critics=10, critic_subset=2, critic_layer_norm=True, target_entropy_scale=0.5
        )
    agent = SACAgent.create(0, OBS_DIM, ACTION_DIM, agent_cfg)
    replay = DeviceReplay.create(cfg.capacity, OBS_DIM, ACTION_DIM).insert_batch(random_transitions(cfg.prefill, 1))
    pool = random_transitions(POOL, 2)
    fresh = [{k: v[i : i + 1] for k, v in pool.items()} for i in range(POOL)]
    key = jax.random.PRNGKey(3)

    def run(n: int) -> float:
        nonlocal agent, replay, key
        start = time.perf_counter()
        info: Any = None
        for i in range(n):
            replay = replay.insert_batch(fresh[i % POOL])
            key, sample_key = jax.random.split(key)
            agent, info = agent.update_from_replay(replay, sample_key)
        jax.block_until_ready((agent, replay, info))
        return time.perf_counter() - start

    return run


def _gym_env() -> Any:
    import gymnasium as gym

    class BoxEnv(gym.Env):
        """Never stepped by the benchmark: it only gives SBX/SB3 the observation and action spaces."""

        observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
        action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)

        def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
            super().reset(seed=seed)
            return np.zeros(OBS_DIM, np.float32), {}

        def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
            return np.zeros(OBS_DIM, np.float32), 0.0, False, False, {}

    return BoxEnv()


def _make_sb3_style(module: Any, cfg: BenchConfig, case: str, extra: dict[str, Any]) -> Runner:
    from stable_baselines3.common.logger import Logger

    utd = 1 if case == "utd1" else 20
    model = module.SAC(
        "MlpPolicy",
        _gym_env(),
        learning_rate=LEARNING_RATE,
        buffer_size=cfg.capacity,
        learning_starts=0,
        batch_size=BATCH_SIZE,
        tau=TAU,
        gamma=GAMMA,
        gradient_steps=utd,
        ent_coef=f"auto_{INIT_TEMPERATURE}",
        policy_kwargs={"net_arch": list(HIDDEN), "n_critics": 2},
        seed=0,
        **extra,
    )
    model.set_logger(Logger(folder=None, output_formats=[]))  # train() records losses; keep them in memory
    buffer = model.replay_buffer

    def add(batch: dict[str, np.ndarray], i: int) -> None:
        buffer.add(
            batch["observations"][i : i + 1],
            batch["next_observations"][i : i + 1],
            batch["actions"][i : i + 1],
            batch["rewards"][i : i + 1],
            1.0 - batch["masks"][i : i + 1],
            [{}],
        )

    prefill = random_transitions(cfg.prefill, 1)
    for i in range(cfg.prefill):
        add(prefill, i)
    pool = random_transitions(POOL, 2)

    def run(n: int) -> float:
        start = time.perf_counter()
        for i in range(n):
            add(pool, i % POOL)
            model.train(gradient_steps=utd, batch_size=BATCH_SIZE)
        return time.perf_counter() - start

    return run


def make_sbx(cfg: BenchConfig, case: str) -> Runner:
    import sbx

    utd = 1 if case == "utd1" else 20
    # One actor + temperature step per `utd` critic steps, the SERL/RLPD schedule (SBX counts it from its update
    # counter, and a train() call of `utd` steps always contains exactly one).
    return _make_sb3_style(sbx, cfg, case, {"policy_delay": utd})


def make_sb3(cfg: BenchConfig, case: str) -> Runner:
    import stable_baselines3
    import torch

    torch.set_num_threads(cfg.torch_threads)
    return _make_sb3_style(stable_baselines3, cfg, case, {"device": "cpu"})


MAKERS: dict[str, Callable[[BenchConfig, str], Runner]] = {"ours": make_ours, "sbx": make_sbx, "sb3": make_sb3}


# ------------------------------------------------------------------------------------------------ worker


def worker(conn: Connection, framework: str, cases: tuple[str, ...], cfg: BenchConfig) -> None:
    """Build, compile and calibrate every case, then answer ("run", case) with one timed run until ("stop")."""
    try:
        runners: dict[str, Runner] = {}
        iters: dict[str, int] = {}
        for case in cases:
            t0 = time.perf_counter()
            runners[case] = MAKERS[framework](cfg, case)
            runners[case](2)  # compiles (and the first call's allocations)
            compile_s = time.perf_counter() - t0
            per_iter = runners[case](cfg.warmup_iters) / cfg.warmup_iters
            iters[case] = max(MIN_ITERS, round(cfg.seconds / per_iter))
            print(
                f"[{framework}/{case}] ready in {compile_s:.1f} s, ~{1 / per_iter:.0f} it/s, {iters[case]} it/run",
                file=sys.stderr,
                flush=True,
            )
        conn.send(("ok", _versions(framework)))
        while True:
            command, case = conn.recv()
            if command == "stop":
                return
            n = iters[case]
            elapsed = runners[case](n)
            conn.send(("ok", {"iterations": n, "seconds": elapsed}))
    except Exception:
        conn.send(("error", traceback.format_exc()))


def _versions(framework: str) -> dict[str, str]:
    if framework == "ours":
        import jax
        import jaxlib

        return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "jax_devices": str(jax.devices())}
    if framework == "sbx":
        import sbx

        return {"sbx": sbx.__version__}
    import stable_baselines3
    import torch

    return {"stable_baselines3": stable_baselines3.__version__, "torch": torch.__version__,
            "torch_threads": str(torch.get_num_threads())}


def _reply(conn: Connection, who: str) -> Any:
    if not conn.poll(REPLY_TIMEOUT_S):
        raise TimeoutError(f"worker {who}: no reply in {REPLY_TIMEOUT_S} s")
    status, payload = conn.recv()
    if status != "ok":
        raise RuntimeError(f"worker {who} failed:\n{payload}")
    return payload


# ------------------------------------------------------------------------------------------------ parent


def _summary(samples: list[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(samples), 1), "samples": [round(s, 1) for s in samples]}


def machine_info(versions: dict[str, str]) -> dict[str, Any]:
    return benchlib.machine_info(**versions)


def wait_for_idle(limit_s: float, poll_s: float = 5.0) -> float:
    """Wait up to `limit_s` for the 1-minute load average to fall to MAX_LOAD (it decays with a one-minute time
    constant, so a machine that just finished a build needs a few minutes); the load when timing starts."""
    deadline = time.monotonic() + limit_s
    load = os.getloadavg()[0]
    while load > MAX_LOAD and time.monotonic() < deadline:
        print(f"waiting for an idle machine: 1-minute load {load:.2f} > {MAX_LOAD} "
              f"({deadline - time.monotonic():.0f} s left)", file=sys.stderr, flush=True)
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        load = os.getloadavg()[0]
    return load


def run(cfg: BenchConfig) -> dict[str, Any]:
    """Start one worker per framework, alternate their timed runs, and return the JSON-ready result."""
    load_before = wait_for_idle(cfg.wait_idle_s)
    idle = load_before <= MAX_LOAD
    if not idle:
        print(f"the machine is busy (1-minute load {load_before:.2f} > {MAX_LOAD}): the figures are measured but no "
              "ratio is reported and every target counts as missed", file=sys.stderr, flush=True)
    start = time.monotonic()
    ctx = mp.get_context("spawn")
    workers: dict[str, tuple[Connection, Any]] = {}
    plan = {"ours": (*CASES, "rlpd"), "sbx": CASES, "sb3": CASES}
    try:
        # Workers build, compile and calibrate side by side (it is most of a quick run's time); timing starts
        # only once all are ready, and from then on only one worker runs at a time.
        for name in FRAMEWORKS:
            conn, child = ctx.Pipe()
            proc = ctx.Process(target=worker, args=(child, name, plan[name], cfg), daemon=True)
            proc.start()
            child.close()  # so that a dead worker reads as EOF here instead of a silent wait
            workers[name] = (conn, proc)
        versions: dict[str, str] = {}
        for name in FRAMEWORKS:
            versions.update(_reply(workers[name][0], name))
        rates: dict[str, dict[str, list[float]]] = {case: {} for case in (*CASES, "rlpd")}
        for rep in range(cfg.reps):
            for case in (*CASES, "rlpd"):
                for name in FRAMEWORKS:
                    if case not in plan[name]:
                        continue
                    conn = workers[name][0]
                    conn.send(("run", case))
                    result = _reply(conn, name)
                    rate = result["iterations"] / result["seconds"]
                    rates[case].setdefault(name, []).append(rate)
                    print(f"rep {rep + 1}/{cfg.reps} {case:5s} {name:4s} {rate:7.1f} it/s", file=sys.stderr, flush=True)
    finally:
        for conn, _ in workers.values():
            with contextlib.suppress(OSError):  # a worker that already died is terminated below
                conn.send(("stop", None))
        for _, proc in workers.values():
            proc.join(10)
            if proc.is_alive():
                proc.terminate()

    utd1 = {name: _summary(rates["utd1"][name]) for name in FRAMEWORKS}
    utd20 = {name: _summary(rates["utd20"][name]) for name in FRAMEWORKS}
    for name in FRAMEWORKS:
        utd20[name]["critic_updates_per_s"] = round(20 * utd20[name]["median"], 1)
    rlpd = _summary(rates["rlpd"]["ours"])
    ratios = {
        "ratio_vs_sbx": utd1["ours"]["median"] / utd1["sbx"]["median"],
        "ratio_vs_sb3": utd1["ours"]["median"] / utd1["sb3"]["median"],
        "utd20_ratio_vs_sbx": utd20["ours"]["median"] / utd20["sbx"]["median"],
        "utd20_ratio_vs_sb3": utd20["ours"]["median"] / utd20["sb3"]["median"],
    }
    reported = {k: round(v, 3) if idle else None for k, v in ratios.items()}
    targets = {
        f"ratio_vs_sbx_ge_{TARGET_RATIO_VS_SBX}": idle and ratios["ratio_vs_sbx"] >= TARGET_RATIO_VS_SBX,
        f"utd20_ratio_vs_sbx_ge_{TARGET_RATIO_VS_SBX_UTD20}":
            idle and ratios["utd20_ratio_vs_sbx"] >= TARGET_RATIO_VS_SBX_UTD20,
        f"ratio_vs_sb3_ge_{TARGET_RATIO_VS_SB3}": idle and ratios["ratio_vs_sb3"] >= TARGET_RATIO_VS_SB3,
    }
    return {
        "benchmark": "learner_throughput",
        "units": "updates/s = training-loop iterations/s (one env step each: insert 1 transition, sample, update)",
        "utd1": utd1,
        "utd20": utd20,
        **reported,
        "idle_at_start": idle,
        "max_load_for_ratios": MAX_LOAD,
        "rlpd": {
            "config": "10 critics, min over a random subset of 2, LayerNorm critics, UTD 20, target entropy -|A|/2",
            "env_steps_per_s": rlpd["median"],
            "critic_updates_per_s": round(20 * rlpd["median"], 1),
            "samples": rlpd["samples"],
        },
        "targets": targets,
        "meets_targets": all(targets.values()),
        "includes_replay_insert": True,
        "includes_replay_sampling": True,
        "notes": {
            "utd20": "ours and SBX (policy_delay=20): 20 critic steps + 1 actor/temperature step per iteration; "
            "SB3 SAC has no policy delay: 20 full updates (actor and temperature too) per iteration",
            "sync": "ours blocks once after each run (async dispatch); SBX and SB3 train() sync every call",
        },
        "settings": {
            "hidden": list(HIDDEN),
            "critics": 2,
            "batch_size": BATCH_SIZE,
            "obs_dim": OBS_DIM,
            "action_dim": ACTION_DIM,
            "learning_rate": LEARNING_RATE,
            "tau": TAU,
            "gamma": GAMMA,
            "init_temperature": INIT_TEMPERATURE,
            **dataclasses.asdict(cfg),
        },
        # Other processes on the same cores distort every figure (SB3's two torch threads worst of all, as each
        # parallel region waits for both to be scheduled): a 1-minute load above the core count says so.
        "machine": {**machine_info(versions), "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]},
        "date": time.strftime("%Y-%m-%d"),
        "wall_s": round(time.monotonic() - start, 1),
    }


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    cfg = benchlib.parse_config(BenchConfig, QUICK, __doc__.split("\n\n")[0], argv)
    for name in ("reps", "capacity", "prefill", "warmup_iters", "torch_threads"):
        if getattr(cfg, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')}: got {getattr(cfg, name)}, expected >= 1")
    if cfg.prefill > cfg.capacity:
        raise SystemExit(f"--prefill: got {cfg.prefill}, expected <= --capacity ({cfg.capacity})")
    if cfg.seconds <= 0:
        raise SystemExit(f"--seconds: got {cfg.seconds}, expected > 0")
    if cfg.wait_idle_s < 0:
        raise SystemExit(f"--wait-idle-s: got {cfg.wait_idle_s}, expected >= 0")
    return cfg


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    out: Path = benchlib.out_dir(cfg.out_dir)
    report = run(cfg)
    path = benchlib.write_report(out, "learner_throughput", report, lambda msg: print(msg, file=sys.stderr, flush=True))
    benchlib.finish(report, path)


if __name__ == "__main__":
    main()
