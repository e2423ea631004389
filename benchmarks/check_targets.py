"""Checks a folder of benchmark reports: every `<name>.json` in it must carry a non-empty `targets` map of
target name -> true/false, and every target must be true.

Owns the verdict `make bench` ends with. It prints each report's targets and exits 0 when all are met; 1 when
any target is false, when a report has no `targets` map (or one that is empty or holds something other than
true/false), when a file is not a JSON object, or when the folder holds no report at all. Standard library
only, so it runs without the project installed.

    python benchmarks/check_targets.py DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read(path: Path) -> tuple[str, dict[str, object], list[str]]:
    """A report's benchmark name, its targets map (empty when it has none) and what is wrong with it, one line
    each: empty when every target is met."""
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return path.stem, {}, [f"unreadable: {e}"]
    if not isinstance(report, dict):
        return path.stem, {}, [f"is a JSON {type(report).__name__}, expected an object with a 'targets' map"]
    name = str(report.get("benchmark", path.stem))
    targets = report.get("targets")
    if not isinstance(targets, dict) or not targets:
        return name, {}, [f"no 'targets' map (found {targets!r}; expected a non-empty map of target -> true/false)"]
    bad = []
    for target, met in targets.items():
        if not isinstance(met, bool):
            bad.append(f"target {target!r} is {met!r}, expected true or false")
        elif not met:
            bad.append(f"target {target!r} missed")
    return name, targets, bad


def check(folder: Path) -> int:
    """Print every report's targets in `folder` and return the exit status (0: all met, 1: otherwise)."""
    if not folder.is_dir():
        print(f"check_targets: {folder} is not a folder", file=sys.stderr)
        return 1
    reports = sorted(folder.glob("*.json"))
    if not reports:
        print(f"check_targets: no <benchmark>.json in {folder}", file=sys.stderr)
        return 1
    failed = []
    for path in reports:
        name, targets, bad = read(path)
        print(f"{path.name} ({name}):")
        for target, met in targets.items():
            print(f"  {'ok  ' if met is True else 'MISS'} {target}: {json.dumps(met)}")
        failed += [f"{name} ({path.name}): {line}" for line in bad]
        if not targets:
            print(f"  FAIL {bad[0]}")
    if failed:
        print(f"check_targets: {len(failed)} problem(s) in {folder}:", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"check_targets: every target met in {len(reports)} report(s) in {folder}")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, metavar="DIR", help="folder of <benchmark>.json reports")
    raise SystemExit(check(parser.parse_args(argv).folder))


if __name__ == "__main__":
    main()
