"""Every range declared in serl_stack/config.py, tried just outside, through `load` and through the real `serl`.

The cases are generated from the fields' metadata (`ranged_fields`), not listed by hand: a field that gains a
range is tested the day it is declared. For each field, a value just outside its range must make `serl config`,
`serl train`, `serl learner --run-dir D` and `serl actor --run-dir D` (real subprocesses, `--set field=value`)
exit non-zero within 2 s with exactly one stderr line naming the field, before anything is started: `serl train`
creates no run folder, learner and actor leave D empty, and no process of theirs outlives them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import subprocess
import sys
import time
import typing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from serl_stack.config import Config, ConfigError, Range, load, ranged_fields, to_dict

pytestmark = pytest.mark.serial  # every command within DEADLINE_S: `make test` runs it alone

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("config", "train", "learner", "actor")
DEADLINE_S = 2.0
WORKERS = 4


def _item_type(tp: Any) -> Any:
    return typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else tp


def _outside_items(spec: Range, item: Any) -> list[Any]:
    """Scalar values just outside `spec`, one per declared bound (the next float, or the next int, past it)."""
    values: list[Any] = []
    if spec.choices:
        return [max(spec.choices) + 1, min(spec.choices) - 1]
    down = (lambda x: x - 1) if item is int else (lambda x: math.nextafter(x, -math.inf))
    up = (lambda x: x + 1) if item is int else (lambda x: math.nextafter(x, math.inf))
    if spec.ge is not None:
        values.append(down(spec.ge))
    if spec.gt is not None:
        values.append(spec.gt)
    if spec.le is not None:
        values.append(up(spec.le))
    if spec.lt is not None:
        values.append(spec.lt)
    if item is float:
        values.append(math.nan)
        if spec.finite:
            values += [math.inf, -math.inf]
    return [int(v) if item is int else float(v) for v in values]


def _inside_bounds(spec: Range) -> list[float]:
    """The inclusive bounds themselves, which must be accepted."""
    return [b for b in (spec.ge, spec.le) if b is not None] + list(spec.choices)


def _outside(path: str, tp: Any, spec: Range) -> list[Any]:
    """Field values just outside the declared range: the first is the one the CLI test uses."""
    if typing.get_origin(tp) is not tuple:
        return _outside_items(spec, tp)
    default = _default(path)
    values: list[Any] = [(v, *default[1:]) for v in _outside_items(spec, _item_type(tp))]
    if spec.min_len:
        values.append(default[: spec.min_len - 1])
    if spec.max_len is not None:
        values.append((*default, default[-1]))
    return values


def _default(path: str) -> Any:
    node: Any = to_dict(Config())
    for part in path.split("."):
        node = node[part]
    return tuple(node) if isinstance(node, list) else node


def _yaml(value: Any) -> str:
    """`value` as the YAML text of a `--set` override that reads back exactly."""
    if isinstance(value, tuple):
        return "[" + ", ".join(map(_yaml, value)) + "]"
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        mantissa, _, exponent = text.partition("e")
        if exponent and "." not in mantissa:  # YAML 1.1 needs a dot to read 1e-09 as a float
            text = f"{mantissa}.0e{exponent if exponent[0] in '+-' else '+' + exponent}"
        return text
    return str(value)


CASES = [(path, tp, spec) for path, tp, spec in ranged_fields()]
IDS = [path for path, _, _ in CASES]


def _error_line(command: str, path: str) -> re.Pattern[str]:
    """The one line `serl <command>` prints for a config error on `path` (or on one of its items)."""
    return re.compile(rf"serl( {command})?: config error: {re.escape(path)}(\[\d+\])?: got .*, expected .+")


def test_the_schema_declares_ranges_for_every_number() -> None:
    """Every int/float field (or tuple of them) declares a range, so the table below covers all of them."""
    ranged = {path for path, _, _ in CASES}
    numbers: list[str] = []

    def walk(cls: type, prefix: str) -> None:
        for name, tp in typing.get_type_hints(cls).items():
            path = f"{prefix}.{name}" if prefix else name
            if dataclasses.is_dataclass(tp):
                walk(tp, path)
            elif _item_type(tp) in (int, float):
                numbers.append(path)

    walk(Config, "")
    assert len(ranged) > 90
    assert sorted(set(numbers) - ranged) == []


@pytest.mark.parametrize(("path", "tp", "spec"), CASES, ids=IDS)
def test_just_outside_fails_load_naming_the_field(path: str, tp: Any, spec: Range) -> None:
    values = _outside(path, tp, spec)
    assert values, f"{path}: no value outside {spec}"
    for value in values:
        with pytest.raises(ConfigError) as e:
            load(None, [f"{path}={_yaml(value)}"])
        message = str(e.value)
        assert "\n" not in message
        assert re.fullmatch(rf"{re.escape(path)}(\[\d+\])?: got .*, expected .+", message), message
    for bound in _inside_bounds(spec):
        assert spec.accepts(bound), f"{path}: its own bound {bound} is refused"


# ------------------------------------------------------------------------------------------ the real CLI


@dataclass(frozen=True)
class Outcome:
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    leftovers: tuple[str, ...]
    """What the command left behind: files in D (learner/actor), the run folder (train), processes of its session."""


def _session_processes(sid: int) -> list[int]:
    """Live processes in session `sid` (the command ran as that session's leader): any child it spawned."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session ...
        if int(fields[3]) == sid:
            found.append(int(entry.name))
    return found


def _run(command: str, path: str, value: str, scratch: Path) -> Outcome:
    scratch.mkdir(parents=True)
    argv = [sys.executable, "-m", "serl_stack.cli", command, "--set", f"{path}={value}"]
    run_dir = scratch / "run"
    if command == "train":
        argv += ["--run-dir", str(run_dir)]
    elif command in ("learner", "actor"):
        run_dir.mkdir()
        argv += ["--run-dir", str(run_dir)]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
    seconds = time.monotonic() - start
    leftovers = [f"process {p}" for p in _session_processes(proc.pid)]
    if run_dir.exists():
        leftovers += [str(p.relative_to(scratch)) for p in run_dir.rglob("*")] or (
            ["the run folder"] if command == "train" else [])
    return Outcome(proc.returncode, out, err, seconds, tuple(leftovers))


@pytest.fixture(scope="module")
def cli_outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Outcome]:
    """Every (field, command) pair, run WORKERS at a time (each is a whole Python start, ~0.1 s of CPU)."""
    base = tmp_path_factory.mktemp("cli")
    jobs = {}
    with ThreadPoolExecutor(WORKERS) as pool:
        start = time.monotonic()
        for i, (path, tp, spec) in enumerate(CASES):
            value = _yaml(_outside(path, tp, spec)[0])
            for command in COMMANDS:
                jobs[path, command] = pool.submit(_run, command, path, value, base / f"{i}-{command}")
        outcomes = {key: job.result() for key, job in jobs.items()}
    slowest = max(o.seconds for o in outcomes.values())
    print(f"\n{len(outcomes)} serl commands in {time.monotonic() - start:.1f} s with {WORKERS} workers "
          f"(slowest {slowest:.2f} s)")
    return outcomes


@pytest.mark.parametrize("path", IDS)
def test_just_outside_stops_every_command_before_it_starts(
    path: str, cli_outcomes: dict[tuple[str, str], Outcome]
) -> None:
    for command in COMMANDS:
        line = _error_line(command, path)
        o = cli_outcomes[path, command]
        where = f"serl {command} --set {path}=...: rc {o.rc}, {o.seconds:.2f} s, stderr {o.stderr!r}"
        assert o.rc not in (0, None), where
        assert o.seconds < DEADLINE_S, where
        assert o.stderr.count("\n") == 1 and line.fullmatch(o.stderr.rstrip("\n")), where
        assert o.stdout == "", where
        assert o.leftovers == (), f"{where}; left behind {o.leftovers}"
