"""The layout of a run, for every process that reads or writes one (no JAX, no learner).

Owns: the names of what a run folder holds (`config.yaml`, `transitions/`, `checkpoints/`, per-actor files),
telling whether a folder already holds a run (starting over in it is refused unless the user resumes it), reading
the config a run was trained with, writing it, listing a run's finished checkpoints; and which of the run's
`train.num_actors` actors an actor id is (`actor_index`) and its share of the run's env steps (`share`), which the
actors and the learner must agree on; and the summary (`bc.json`) that marks a `serl train-bc` folder
(`read_bc_summary`; `check_bc_folder` for a config field naming one, which preflight runs before any process starts),
and `check_run_folder` for a config field naming a `serl train` run (a mixing baseline, a steering critic).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from serl_stack.config import Config, ConfigError, dump, load
from serl_stack.errors import RunDirError

CONFIG_FILE = "config.yaml"
TRANSITIONS = "transitions"
CHECKPOINTS = "checkpoints"


def previous_run(run_dir: Path) -> list[str]:
    """What of an earlier run `run_dir` holds (its transition log, its checkpoints); empty for a new folder."""
    return [p.name for p in (run_dir / TRANSITIONS, run_dir / CHECKPOINTS) if p.is_dir() and any(p.iterdir())]


def check_new_or_resumed(run_dir: Path, resume: bool) -> None:
    """`RunDirError` when `run_dir` holds a run and `resume` is off (it would be trained over), or when `resume`
    is on and there is nothing to continue (a typo in --run-dir must not silently start a new run)."""
    previous = previous_run(run_dir)
    if previous and not resume:
        raise RunDirError(f"--run-dir: {run_dir} already holds a run ({', '.join(previous)}); add --resume to "
                          "continue it, or choose a new --run-dir")
    if resume and not previous:
        what = "does not exist" if not run_dir.exists() else "holds no run (no transition log, no checkpoint)"
        raise RunDirError(f"--run-dir: {run_dir} {what}; --resume continues an interrupted run, expected the folder "
                          "of one")


def read_run_config(run_dir: Path) -> Config:
    """The config a run was trained with (`<run_dir>/config.yaml`, written by every process of the run)."""
    if not run_dir.is_dir():
        raise RunDirError(f"--run-dir: {run_dir} is not a folder; expected a run folder (`serl train` or "
                          "`serl learner` output)")
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunDirError(f"--run-dir: {path} not found; expected the {CONFIG_FILE} that `serl train`, "
                          "`serl learner` and `serl actor` write into their run folder")
    try:
        return load(path)
    except ConfigError as e:
        raise RunDirError(f"--run-dir: {e}") from e


def write_config(run_dir: Path, cfg: Config, replace: bool = True) -> Path:
    """Write `cfg` as `<run_dir>/config.yaml` atomically (with `replace=False`, only where none exists yet)."""
    path = run_dir / CONFIG_FILE
    if path.exists() and not replace:
        return path
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{CONFIG_FILE}.{os.getpid()}.tmp")
    tmp.write_text(dump(cfg))
    os.replace(tmp, path)
    return path


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the finished checkpoints under `<run_dir>/checkpoints`, ascending (orbax's temporary folders of
    an interrupted save have non-numeric names and are left out). Reads only; creates nothing."""
    directory = run_dir / CHECKPOINTS
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def share(total: int, num_actors: int, index: int) -> int:
    """Actor `index`'s part of `total` (env steps or episodes): the parts differ by at most one and sum to
    `total`."""
    return total // num_actors + (1 if index < total % num_actors else 0)


def actor_index(actor_id: str, num_actors: int) -> int:
    """Which of the run's `num_actors` actors `actor_id` is: 0 for a single actor (any id), else the number
    after the id's last `-` (`actor-1`, `franka-left-1`), which must be below `num_actors`."""
    if num_actors == 1:
        return 0
    m = re.fullmatch(r".*-(\d+)", actor_id)
    if m is None or int(m.group(1)) >= num_actors:
        raise ConfigError(f"transport.actor_id: got {actor_id!r}, expected an id ending in -<i> with i in "
                          f"0..{num_actors - 1} (train.num_actors={num_actors}), e.g. actor-{num_actors - 1}")
    return int(m.group(1))


BC_SUMMARY = "bc.json"
"""What `serl train-bc` writes beside its checkpoint: the policy's shape (observation keys, sizes, hidden dims,
std floor), how it was trained, its validation loss and its evaluation."""
BC_KIND = "serl_stack.bc"
"""`bc.json`'s `kind`: tells a BC folder from a `serl train` run folder."""


def read_bc_summary(folder: Path) -> dict[str, Any]:
    """The `bc.json` of a `serl train-bc --out` folder; `RunDirError` naming what is missing."""
    path = folder / BC_SUMMARY
    if not path.is_file():
        what = "is not a folder" if not folder.is_dir() else f"has no {BC_SUMMARY}"
        raise RunDirError(f"{folder} {what}; expected the --out folder of `serl train-bc`")
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path}: not valid JSON: {e}") from e
    missing = [k for k in ("kind", "obs_keys", "obs_dim", "action_dim", "hidden_dims", "std_floor")
               if k not in summary]
    if summary.get("kind") != BC_KIND or missing:
        raise RunDirError(f"{path}: kind {summary.get('kind')!r}, missing {missing}; expected a {BC_KIND!r} summary "
                          "written by `serl train-bc`")
    return summary


def check_bc_folder(folder: str, env_id: str, field: str) -> dict[str, Any]:
    """The `bc.json` of the `serl train-bc` folder a config field (`field`, e.g. `agent.bc.prior_run`) names,
    checked to be of `env_id`; `ConfigError` naming the field otherwise."""
    try:
        summary = read_bc_summary(Path(folder).expanduser())
    except RunDirError as e:
        raise ConfigError(f"{field}: {e}") from e
    if summary.get("env_id", env_id) != env_id:
        raise ConfigError(f"{field}: {folder} was cloned on env.id {summary['env_id']!r}, expected this run's env.id "
                          f"{env_id!r}")
    return summary


GENERALIST_SUMMARY = "generalist.json"
"""What `serl train-generalist` writes beside its checkpoint (`steering.generalist` reads it)."""
GENERALIST_KIND = "serl_stack.generalist"


def check_generalist_folder(folder: str, env_id: str, field: str) -> dict[str, Any]:
    """The task entry (`obs_keys`, `action_dim`, `env_id`, ...) of `env_id` in the `generalist.json` of the `serl
    train-generalist` folder a config field names; `ConfigError` naming the field when it is not one or was not
    trained on that env. Standard library only (preflight runs it before JAX loads)."""
    path = Path(folder).expanduser() / GENERALIST_SUMMARY
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{field}: {path} not found; expected the --out folder of `serl train-generalist`") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{field}: {path}: not a readable JSON file ({e})") from e
    tasks = summary.get("task_info") if isinstance(summary, dict) else None
    if summary.get("kind") != GENERALIST_KIND or not isinstance(tasks, dict):
        raise ConfigError(f"{field}: {path}: kind {summary.get('kind')!r}; expected a {GENERALIST_KIND!r} summary "
                          "written by `serl train-generalist`")
    for info in tasks.values():
        if info.get("env_id") == env_id:
            return info
    known = ", ".join(f"{t} ({i.get('env_id')})" for t, i in tasks.items())
    raise ConfigError(f"{field}: {folder} was not trained on env.id {env_id!r}; its tasks: {known}")


def check_run_folder(folder: str, env_id: str, field: str) -> Config:
    """The config of the `serl train` run a config field (`field`, e.g. `mixing.baseline_run`) names, checked to
    be of `env_id` and to hold a checkpoint; `ConfigError` naming the field otherwise."""
    run = Path(folder).expanduser()
    try:
        run_cfg = read_run_config(run)
    except RunDirError as e:
        raise ConfigError(f"{field}: {str(e).removeprefix('--run-dir: ')}") from e
    if run_cfg.env.id != env_id:
        raise ConfigError(f"{field}: {run} was trained on env.id {run_cfg.env.id!r}, expected this run's env.id "
                          f"{env_id!r}")
    if not checkpoint_steps(run):
        raise ConfigError(f"{field}: {run} has no checkpoint; expected a finished or interrupted `serl train` run "
                          "folder")
    return run_cfg
