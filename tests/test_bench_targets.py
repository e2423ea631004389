"""Tests for how benchmarks report their targets: `benchmarks/check_targets.py` (the verdict `make bench` ends
with) run as a real subprocess on temporary report folders, benchlib's report writing and exit status, every
committed report in `docs/` carrying a `targets` map, and every benchmark script being in `make bench` with
`--out-dir` and `--quick`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
CHECKER = BENCH / "check_targets.py"
HELPERS = {"benchlib", "check_targets", "sbx_baseline", "conservative_rollouts"}
"""Files in benchmarks/ that are not benchmarks (shared code, the verdict, a benchmark's baseline)."""
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py") if p.stem not in HELPERS)

sys.path.insert(0, str(BENCH))
import benchlib  # noqa: E402  (benchmarks/ is not a package: its scripts import it by path)


def check(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CHECKER), str(folder)], capture_output=True, text=True, timeout=60)


def write(folder: Path, name: str, report: object) -> None:
    (folder / f"{name}.json").write_text(json.dumps(report))


def problems(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The checker's problem lines on stderr (indented, one per problem, each naming its report)."""
    return [line.strip() for line in proc.stderr.splitlines() if line.startswith("  ")]


# ------------------------------------------------------------------------------------------- check_targets.py


def test_all_targets_met_exits_zero_and_prints_them(tmp_path: Path) -> None:
    write(tmp_path, "transport", {"benchmark": "transport", "targets": {"state_ratio_vs_raw_ge_0.1": True}})
    write(tmp_path, "render", {"benchmark": "render", "targets": {"front_fps_ge_50": True, "other": True}})
    proc = check(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("transport", "state_ratio_vs_raw_ge_0.1", "render", "front_fps_ge_50", "other"):
        assert name in proc.stdout


def test_one_missed_target_fails_naming_benchmark_and_target(tmp_path: Path) -> None:
    write(tmp_path, "transport", {"benchmark": "transport", "targets": {"state_ratio_vs_raw_ge_0.1": True}})
    write(tmp_path, "learner_throughput", {"benchmark": "learner_throughput",
                                           "targets": {"ratio_vs_sbx_ge_1.2": False, "ratio_vs_sb3_ge_2.0": True}})
    proc = check(tmp_path)
    assert proc.returncode != 0
    # One problem, naming the benchmark and the target; the report that met its targets is not blamed.
    assert problems(proc) == ["learner_throughput (learner_throughput.json): target 'ratio_vs_sbx_ge_1.2' missed"]


@pytest.mark.parametrize("report", [
    {"benchmark": "render", "meets_target": True},  # the old form: a flag, no map
    {"benchmark": "render", "targets": {}},
    {"benchmark": "render", "targets": ["front_fps_ge_50"]},
    {"benchmark": "render", "targets": {"front_fps_ge_50": "yes"}},
    ["not", "an", "object"],
])
def test_report_without_a_valid_targets_map_fails(tmp_path: Path, report: object) -> None:
    write(tmp_path, "ok", {"benchmark": "ok", "targets": {"t": True}})
    write(tmp_path, "render", report)
    proc = check(tmp_path)
    assert proc.returncode != 0
    found = problems(proc)
    assert len(found) == 1 and "render.json" in found[0], proc.stderr


def test_unreadable_report_empty_or_missing_folder_fails(tmp_path: Path) -> None:
    assert check(tmp_path).returncode != 0  # no report at all: nothing was shown
    assert check(tmp_path / "absent").returncode != 0
    (tmp_path / "broken.json").write_text("{not json")
    proc = check(tmp_path)
    assert proc.returncode != 0
    found = problems(proc)
    assert len(found) == 1 and found[0].startswith("broken (broken.json): unreadable"), proc.stderr


# ------------------------------------------------------------------------------------------------ benchlib


def test_write_report_refuses_a_report_without_targets(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="targets"):
        benchlib.write_report(tmp_path, "x", {"benchmark": "x", "meets_targets": True}, print)
    assert not (tmp_path / "x.json").exists()


def test_finish_exits_one_on_a_missed_target_and_returns_when_all_are_met(tmp_path: Path) -> None:
    met = {"benchmark": "x", "targets": {"a": True, "b": True}}
    path = benchlib.write_report(tmp_path, "x", met, print)
    assert json.loads(path.read_text()) == met
    benchlib.finish(met, path)  # no SystemExit
    with pytest.raises(SystemExit) as exc:
        benchlib.finish({"benchmark": "x", "targets": {"a": True, "b": False}}, path)
    assert exc.value.code == 1


def test_out_dir_is_relative_to_the_repository_root_and_created(tmp_path: Path) -> None:
    assert benchlib.out_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()
    assert benchlib.out_dir("docs") == ROOT / "docs"


def test_out_dir_defaults_to_a_fresh_runs_folder_never_docs() -> None:
    for given in (None, ""):
        path = benchlib.out_dir(given)
        try:
            assert path.parent == ROOT / "runs" and path.is_dir()
            assert re.fullmatch(r"bench-\d{8}-\d{6}", path.name), path.name
        finally:
            if path.parent == ROOT / "runs" and not any(path.iterdir()):
                path.rmdir()  # only the empty folder this test made (runs/ is gitignored anyway)


# ---------------------------------------------------------------------------------------- committed reports


def test_every_committed_benchmark_report_has_a_targets_map() -> None:
    reports = {p.name: json.loads(p.read_text()) for p in sorted((ROOT / "docs").glob("*.json"))}
    reports = {name: r for name, r in reports.items() if isinstance(r, dict) and "benchmark" in r}
    assert reports, "no benchmark report in docs/"
    without = sorted(name for name, r in reports.items()
                     if not isinstance(r.get("targets"), dict) or not r["targets"]
                     or not all(isinstance(v, bool) for v in r["targets"].values()))
    assert without == [], f"reports in docs/ without a valid targets map: {without}"
    unknown = sorted(name for name, r in reports.items() if r["benchmark"] not in SCRIPTS)
    assert unknown == [], f"reports in docs/ naming no script in benchmarks/: {unknown}"


# ------------------------------------------------------------------------------------------- the scripts


def test_make_bench_runs_every_benchmark_script() -> None:
    match = re.search(r"^BENCHMARKS :=(.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, "Makefile: no BENCHMARKS := line"
    assert sorted(match.group(1).split()) == SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_takes_out_dir_and_quick(script: str) -> None:
    proc = subprocess.run([sys.executable, str(BENCH / f"{script}.py"), "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, env={**os.environ, "MUJOCO_GL": "egl"})
    assert proc.returncode == 0, proc.stderr
    assert "--out-dir" in proc.stdout and "--quick" in proc.stdout
