"""The layout of a run folder, for code that must not import the learner (the `serl train` parent process).

Owns: telling whether a folder already holds a run (a transition log or checkpoints), so starting over in it can be
refused unless the user asks to resume.
"""

from __future__ import annotations

from pathlib import Path

TRANSITIONS = "transitions"
CHECKPOINTS = "checkpoints"


def previous_run(run_dir: Path) -> list[str]:
    """What of an earlier run `run_dir` holds (its transition log, its checkpoints); empty for a new folder."""
    return [p.name for p in (run_dir / TRANSITIONS, run_dir / CHECKPOINTS) if p.is_dir() and any(p.iterdir())]
