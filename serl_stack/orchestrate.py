"""`serl train`: run a learner and `train.num_actors` actors as spawned OS processes on this machine.

Owns: the run folder (resolved config, per-process logs), picking free loopback ports, spawning the processes
as fresh interpreters (never forked: JAX is not fork-safe), the progress display fed by the learner's status
broadcast, Ctrl-C handling (every child stops; none is left behind), and the closing summary. Everything that
can be checked is checked before the first process starts (`preflight`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import zmq
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from serl_stack.config import Config
from serl_stack.rundir import check_new_or_resumed, write_config
from serl_stack.transport.auth import curve_client_from_config
from serl_stack.transport.learner_server import TOPIC_STATUS, endpoint
from serl_stack.transport.protocol import ProtocolError, open_envelope

STOP_GRACE_S = 30.0
PLAIN_STATUS_EVERY_S = 15.0


def free_port(host: str) -> int:
    """A port that is free on `host` right now (the OS picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def prepare_run(cfg: Config, run_dir: Path | None) -> tuple[Config, Path]:
    """Pick ports left at 0, create the run folder and write the resolved config into it."""
    t = cfg.transport
    transport = dataclasses.replace(
        t,
        transitions_port=t.transitions_port or free_port(t.host),
        params_port=t.params_port or free_port(t.host),
    )
    cfg = dataclasses.replace(cfg, transport=transport)
    if run_dir is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        # `module:EnvId` and `ALE/Pong-v5` ids: keep the folder name one plain path component.
        env_name = re.sub(r"[^A-Za-z0-9._-]+", "_", cfg.env.id)
        run_dir = Path(cfg.train.run_dir) / f"{stamp}-{env_name}-s{cfg.train.seed}"
    run_dir = run_dir.absolute()
    write_config(run_dir, cfg)
    return cfg, run_dir


def actor_ids(cfg: Config) -> list[str]:
    """The ids of the run's actors: `actor-0` .. `actor-<n-1>` (with one actor, `transport.actor_id`)."""
    n = cfg.train.num_actors
    return [cfg.transport.actor_id] if n == 1 else [f"actor-{i}" for i in range(n)]


def spawn(role: str, name: str, run_dir: Path, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """Start `serl <role>` as a new interpreter; its output is appended to `<run_dir>/<name>.log`."""
    log = open(run_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it for its lifetime
    cmd = [sys.executable, "-m", "serl_stack.cli", role, "--config", str(run_dir / "config.yaml"),
           "--run-dir", str(run_dir), "--parent-pid", str(os.getpid()), *extra]
    # A new session: a terminal Ctrl-C reaches only us, and we stop the children in order.
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def stop(procs: dict[str, subprocess.Popen], grace_s: float = STOP_GRACE_S) -> None:
    """SIGINT every live child (they checkpoint and exit), then SIGKILL whatever is left after `grace_s`."""
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for p in procs.values():
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def link_status(status: dict[str, Any], learner_silent_s: float, limit_s: float = 3.0) -> str:
    """`link ok`, or which side has been silent for how long."""
    if learner_silent_s > limit_s:
        return f"learner silent {learner_silent_s:.0f}s"
    silent = {a: t for a, t in (status.get("actors_silent_s") or {}).items() if t > limit_s}
    if silent:
        return "silent: " + ", ".join(f"{a} {t:.0f}s" for a, t in silent.items())
    return "link ok" if status else "connecting"


def _fmt(status: dict[str, Any], link: str) -> str:
    ret, succ = status.get("return_mean"), status.get("success_rate")
    return (
        f"upd/s {status.get('updates_per_s', 0.0):6.1f}  "
        f"return {'-' if ret is None else f'{ret:7.2f}'}  "
        f"success {'-' if succ is None else f'{100 * succ:5.1f}%'}  "
        f"updates {status.get('updates', 0)}  {link}"
    )


def train(cfg: Config, run_dir: Path | None = None, resume: bool = False, debug: bool = False) -> int:
    """Run a whole sim training: returns 0 when every process finished and the evaluation was written.

    With `resume`, an interrupted run in `run_dir` continues: the learner rebuilds its replay buffer from the
    transition log and restores the latest checkpoint, each actor continues from its spool. Raises
    `ConfigError` / `RunDirError` before anything starts when the config or the run folder cannot work.
    """
    from serl_stack.preflight import preflight  # MuJoCo, but no JAX: the parent only watches and forwards Ctrl-C

    console = Console(soft_wrap=True)  # paths stay on one line in logs, where the width defaults to 80
    if run_dir is not None:
        check_new_or_resumed(run_dir.absolute(), resume)
    preflight(cfg, "train")
    cfg, run_dir = prepare_run(cfg, run_dir)
    ids = actor_ids(cfg)
    console.print(f"[bold]serl train[/bold]  {cfg.env.id}  seed {cfg.train.seed}  {len(ids)} actor(s)  "
                  f"run folder: {run_dir}")
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, TOPIC_STATUS)
    security = curve_client_from_config(cfg.transport)  # with curve, we listen with the actor's key
    if security is not None:
        security.configure(sub)
    sub.connect(endpoint(cfg.transport.host, cfg.transport.params_port))
    debug_flag = ("--debug",) if debug else ()
    procs = {"learner": spawn("learner", "learner", run_dir, ("--resume",) * resume + debug_flag)}
    for actor_id in ids:
        procs[actor_id] = spawn("actor", actor_id, run_dir, ("--actor-id", actor_id, *debug_flag))
    status: dict[str, Any] = {}
    code = 0
    progress = Progress(
        TextColumn("[bold blue]env steps"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
        TimeElapsedColumn(), console=console, transient=False, disable=not console.is_terminal,
    )
    task = progress.add_task("starting", total=cfg.train.total_env_steps)
    last_plain = heard = time.monotonic()
    try:
        with progress:
            while any(p.poll() is None for p in procs.values()):
                if sub.poll(200):
                    try:
                        msg = open_envelope(sub.recv_multipart()[1], cfg.transport.max_message_bytes)
                        status = msg["body"] if isinstance(msg["body"], dict) else status
                        heard = time.monotonic()
                    except (ProtocolError, IndexError):
                        pass  # the status line is cosmetic; a garbled one is skipped
                link = link_status(status, time.monotonic() - heard if status else 0.0)
                progress.update(task, completed=status.get("env_steps", 0), description=_fmt(status, link))
                if not console.is_terminal and time.monotonic() - last_plain > PLAIN_STATUS_EVERY_S:
                    last_plain = heard = time.monotonic()
                    print(f"env steps {status.get('env_steps', 0)}/{cfg.train.total_env_steps}  {_fmt(status, link)}",
                          flush=True)
                failed = [r for r, p in procs.items() if p.poll() not in (None, 0)]
                if failed:
                    console.print(f"[red]{', '.join(failed)} exited with an error; stopping the run[/red]")
                    code = 1
                    break
    except KeyboardInterrupt:
        console.print("[yellow]Ctrl-C: stopping the learner and the actors (the learner saves a checkpoint)[/yellow]")
        code = 130
    finally:
        stop(procs)
        sub.close(linger=0)
    for role, p in procs.items():
        if p.returncode not in (0, 130, -signal.SIGINT):
            code = code or 1
            console.print(f"[red]{role} exited with code {p.returncode}; last lines of {run_dir / (role + '.log')}:")
            console.print(_tail(run_dir / f"{role}.log"), markup=False, highlight=False)
    _summary(console, cfg, run_dir)
    return code


def _summary(console: Console, cfg: Config, run_dir: Path) -> None:
    eval_file = run_dir / "eval.json"
    if eval_file.is_file():
        r = json.loads(eval_file.read_text())
        last = r["first_seed"] + r["episodes"] - 1
        success = "n/a" if r.get("success_rate") is None else f"{100 * r['success_rate']:.1f}%"  # null: no success
        console.print(
            f"[bold green]Final evaluation[/bold green]: {r['episodes']} deterministic episodes on held-out seeds "
            f"{r['first_seed']}..{last}: success {success}, "
            f"return {r['return_mean']:.2f} ± {r['return_std']:.2f}, mean length {r['length_mean']:.1f}"
        )
    else:
        console.print("[yellow]No final evaluation was written (the run did not finish).[/yellow]")
    console.print(f"TensorBoard logs: {run_dir / 'tb'}   (tensorboard --logdir {run_dir / 'tb'})")
    console.print(f"Checkpoints:      {run_dir / 'checkpoints'}")
    logs = ", ".join(str(run_dir / f"{name}.log") for name in ["learner", *actor_ids(cfg)])
    console.print(f"Process logs:     {logs}")
