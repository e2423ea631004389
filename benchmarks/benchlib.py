"""Shared by the scripts in this folder: what a report says about the machine, flags from a config dataclass,
running one training run in a freshly spawned worker, running `serl` subcommands (training runs, demo
recording) as logged subprocesses, a digest of a demo folder (so every run can show it read the same
recording), and where a report goes and how a script ends: every benchmark writes one `<name>.json` (with its
`targets` map) into `--out-dir` (a fresh `runs/bench-<time>/` unless given) and exits 1 when a target is
missed."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

C = TypeVar("C")
ROOT = Path(__file__).resolve().parents[1]


def _parse_bool(text: str) -> bool:
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def parse_config(cls: type[C], quick: C, description: str, argv: list[str] | None) -> C:
    """A benchmark's frozen `cls` from the command line: every field is a flag (`--field-name`), `--quick` starts
    from the `quick` sizes instead of the defaults; flags given override either."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {quick}")
    defaults = cls()
    fields = dataclasses.fields(cls)
    for f in fields:
        kind = type(getattr(defaults, f.name))
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=_parse_bool if kind is bool else kind, default=None,
                            help=f"default {getattr(defaults, f.name)!r} ({getattr(quick, f.name)!r} with --quick)")
    args = parser.parse_args(argv)
    given = {f.name: getattr(args, f.name) for f in fields if getattr(args, f.name) is not None}
    return dataclasses.replace(quick if args.quick else defaults, **given)


def machine_info(**versions: str) -> dict[str, Any]:
    """CPU count and model, Python/numpy/platform, the 1-minute load average now, plus `versions` given."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass  # not Linux: the model name is only informative
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        **versions,
    }


def _worker_main(conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """In the spawned worker: send ("ok", fn(*args)) or ("error", traceback) back to the parent."""
    try:
        conn.send(("ok", fn(*args)))
    except Exception:  # any failure: the parent reports the worker's traceback and stops
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def run_in_worker(fn: Callable[..., Any], args: tuple[Any, ...], what: str, timeout_s: float) -> Any:
    """`fn(*args)` in a freshly spawned process (never forked: JAX is not fork-safe), so no JAX state, threads or
    compiled code carry over between runs; raises naming `what` when it fails, dies or exceeds `timeout_s`."""
    ctx = mp.get_context("spawn")
    conn, child = ctx.Pipe()
    proc = ctx.Process(target=_worker_main, args=(child, fn, args), daemon=True)
    proc.start()
    child.close()  # a dead worker then reads as EOF instead of a silent wait
    try:
        if not conn.poll(timeout_s):
            raise TimeoutError(f"{what}: no result in {timeout_s:.0f} s")
        status, payload = conn.recv()
    except EOFError as e:
        raise RuntimeError(f"{what}: the worker died (exit code {proc.exitcode}) without a result") from e
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.terminate()
    if status != "ok":
        raise RuntimeError(f"{what} failed:\n{payload}")
    return payload


def serl(*args: str) -> list[str]:
    """The command line of a `serl` subcommand in this interpreter."""
    return [sys.executable, "-m", "serl_stack.cli", *args]


def run_logged(cmd: list[str], console_log: Path, what: str) -> float:
    """Run `cmd` in the repository root with its output in `console_log`; the wall-clock seconds, or a
    RuntimeError naming `what` with the log's last lines when it exits non-zero."""
    start = time.monotonic()
    with open(console_log, "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                              env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")})
    if proc.returncode != 0:
        tail = "\n".join(console_log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{what} exited with {proc.returncode} (expected 0); last lines of {console_log}:\n{tail}")
    return time.monotonic() - start


def record_demos(config: str, out: Path, keep: int, noise: float) -> float:
    """Record `keep` successful scripted episodes (action noise `noise`) of `config`'s task into `out`; returns
    the wall-clock seconds."""
    cmd = serl("record-demos", "--config", config, "--out", str(out), "--keep", str(keep),
               "--episodes", str(4 * keep), "--noise", str(noise))
    return run_logged(cmd, out.parent / f"{out.name}.record-demos.log", "serl record-demos")


def parse_modes(text: str, known: tuple[str, ...]) -> list[str]:
    """The comma-separated `--modes` list, or a SystemExit naming the unknown ones."""
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(known))
    if unknown:
        raise SystemExit(f"--modes: unknown {unknown}; expected a comma-separated subset of {list(known)}")
    return modes


def runs_root(runs_dir: str, name: str) -> Path:
    """A fresh, absolute `<ROOT>/<runs_dir>/<name>-<date>-<time>` folder for one benchmark run's run folders."""
    root = (ROOT / runs_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}").absolute()
    root.mkdir(parents=True, exist_ok=True)
    return root


def require_positive(cfg: Any, names: tuple[str, ...]) -> None:
    """SystemExit naming the flag (`--field-name`) of the first of `cfg`'s fields `names` that is below 1."""
    for name in names:
        if getattr(cfg, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')}: got {getattr(cfg, name)}, expected >= 1")


OUT_DIR_HELP = ("folder for <name>.json (and its .png), relative to the repository root unless absolute; "
                "default: a fresh runs/bench-<YYYYmmdd-HHMMSS>/ (`--out-dir docs` updates the committed figures)")


def out_dir(given: str | Path | None) -> Path:
    """The absolute, existing folder a benchmark writes its report into: `given` (relative to the repository
    root, as `make bench` runs from there), or a fresh `runs/bench-<date>-<time>/` when `given` is empty, so that
    a run never overwrites the committed figures in `docs/` unless asked to."""
    if given is None or str(given) == "":
        return runs_root("runs", "bench")
    path = (Path(given) if Path(given).is_absolute() else ROOT / given).absolute()
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_targets(report: dict[str, Any]) -> dict[str, bool]:
    """The report's `targets` map, or a ValueError naming what is wrong with it: `make bench` and
    `check_targets.py` read a missing or empty map, or a value that is not a bool, as a failed benchmark."""
    targets = report.get("targets")
    if not isinstance(targets, dict) or not targets:
        raise ValueError(f"report {report.get('benchmark')!r}: 'targets' is {targets!r}; expected a non-empty "
                         f"map of target name -> true/false")
    wrong = {k: v for k, v in targets.items() if not isinstance(v, bool)}
    if wrong:
        raise ValueError(f"report {report.get('benchmark')!r}: targets {wrong} are not true/false")
    return targets


def write_report(out_dir: Path, name: str, report: dict[str, Any], log: Callable[[str], None]) -> Path:
    """`<out_dir>/<name>.json` (indented, newline-terminated), logged with the plot it names; returns its path.
    A report without a valid `targets` map is refused (ValueError) before anything is written."""
    check_targets(report)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {path}" + (f" and {report['plot']}" if report.get("plot") else ""))
    return path


def finish(report: dict[str, Any], path: Path) -> None:
    """End a benchmark: its report as one JSON line on stdout, then exit 0 when every target is met, else 1
    naming the missed ones on stderr (so `make bench` and CI see a miss, not just the numbers)."""
    print(json.dumps(report), flush=True)
    missed = [name for name, met in check_targets(report).items() if not met]
    if missed:
        print(f"[{report.get('benchmark', path.stem)}] missed targets {missed}; report: {path}", file=sys.stderr,
              flush=True)
        raise SystemExit(1)


def parse_choices(text: str, known: tuple[str, ...], flag: str) -> list[str]:
    """The comma-separated list given to `flag` (e.g. `--tasks`), in the order given, duplicates dropped; a
    SystemExit naming the flag and the unknown entries, or an empty list."""
    chosen = list(dict.fromkeys(c.strip() for c in text.split(",") if c.strip()))
    unknown = [c for c in chosen if c not in known]
    if unknown or not chosen:
        raise SystemExit(f"{flag}: got {text!r} (unknown {unknown}); expected a comma-separated subset of "
                         f"{list(known)}")
    return chosen


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95 % for z = 1.96) of a success rate seen as `successes` of `n` Bernoulli
    trials: unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or n successes."""
    if not 0 <= successes <= n or n < 1:
        raise ValueError(f"successes, n: got {successes}, {n}; expected 0 <= successes <= n and n >= 1")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * float(np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)))
    return max(0.0, centre - half), min(1.0, centre + half)


def censored_median(values: list[int | None]) -> tuple[float | None, bool]:
    """Median of per-seed values where None means "more than the cap" (a run censored at its cap, so larger
    than every number): `(median, False)`, or `(None, True)` when the median falls on a censored run (it is
    then only known to exceed the cap, and is never reported as the cap), or `(None, False)` for no values."""
    if not values:
        return None, False
    ranked = sorted(values, key=lambda v: (v is None, v if v is not None else 0))
    mid = len(ranked) // 2
    middle = ranked[mid - 1: mid + 1] if len(ranked) % 2 == 0 else [ranked[mid]]
    if any(v is None for v in middle):
        return None, True
    return float(np.mean([float(v) for v in middle if v is not None])), False


def load_report(out_dir: Path, name: str) -> dict[str, Any] | None:
    """The `<out_dir>/<name>.json` a previous run wrote, or None when there is none; a ValueError naming the
    file when it is not a JSON object (a benchmark that merges into it must not silently replace it)."""
    path = Path(out_dir) / f"{name}.json"
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); expected a report written by benchmarks/{name}.py") from e
    if not isinstance(report, dict):
        raise ValueError(f"{path}: got a JSON {type(report).__name__}, expected an object")
    return report


def demos_digest(demo_dir: Path) -> str:
    """A digest of every array of every episode (the .npz files' bytes carry write times, so not those)."""
    from serl_stack.data.demos import load_episodes

    h = hashlib.sha256()
    for episode in load_episodes(demo_dir):
        for key in sorted(episode.observations):
            h.update(key.encode())
            h.update(np.ascontiguousarray(episode.observations[key]).tobytes())
        for arr in (episode.actions, episode.rewards, episode.terminated, episode.truncated):
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


def plot_success_curves(ax: Any, runs: list[dict[str, Any]], curve: dict[str, list[Any]],
                        steps_to_90: dict[str, Any], color: str, label: str) -> None:
    """One learner on a success-vs-env-steps axis: each run's evaluations thin, the mean over runs bold with its 95 %
    band; the label ends with the median env steps to 90 % ("> cap" when censored, "-" when unknown)."""
    for r in runs:
        ax.plot(r["eval_env_steps"], r["eval_success"], color=color, linewidth=0.7, alpha=0.3)
    m = steps_to_90
    reached = "> cap" if m["median_censored"] else "-" if m["median"] is None else f"{m['median']:.0f}"
    ax.plot(curve["env_steps"], curve["mean_success"], color=color, linewidth=2, marker="o", markersize=3,
            label=f"{label} (90 % median: {reached})")
    ax.fill_between(curve["env_steps"], curve["ci95_low"], curve["ci95_high"], color=color, alpha=0.15)


def style_success_axes(ax: Any, level: float, x_max: float, eval_episodes: int, title: str) -> None:
    """The success axis both learning-curve benchmarks share: the level line, limits, labels, legend, grid."""
    ax.axhline(level, color="black", linestyle=":", linewidth=0.8)
    ax.set_xlim(0, 1.02 * x_max)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("env steps (training transitions)")
    ax.set_ylabel(f"success ({eval_episodes} deterministic episodes)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
