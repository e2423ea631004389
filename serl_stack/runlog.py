"""Reading a run's logged scalars back, for plots and benchmark reports.

Owns: parsing TensorBoard event files (what the learner writes under `<run>/tb/learner`) without TensorFlow, the
per-episode table of a run (env step at the episode's end, return, success, length) and its evaluations.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np


def read_scalars(path: Path) -> list[tuple[str, int, float]]:
    """`(tag, step, value)` of every scalar in a TensorBoard event file, in write order.

    The file is a TFRecord stream (u64 length, u32 length CRC, payload, u32 payload CRC) of `Event` protobufs;
    tensorboardX (a serl_stack dependency) ships the protobuf classes, so no TensorFlow is needed. A record cut
    short at the end (a writer killed mid-write) ends the read.
    """
    from tensorboardX.proto import event_pb2

    out: list[tuple[str, int, float]] = []
    with open(path, "rb") as f:
        while True:
            header = f.read(12)
            if len(header) < 12:
                break
            (length,) = struct.unpack("<Q", header[:8])
            payload = f.read(length)
            if len(payload) < length or len(f.read(4)) < 4:
                break
            event = event_pb2.Event()
            event.ParseFromString(payload)
            out.extend((v.tag, int(event.step), float(v.simple_value)) for v in event.summary.value)
    return out


def event_files(run_dir: Path) -> list[Path]:
    """The learner's TensorBoard event files of a run, oldest first (FileNotFoundError when there are none)."""
    files = sorted((Path(run_dir) / "tb" / "learner").glob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"{Path(run_dir) / 'tb' / 'learner'}: no TensorBoard event files; expected the "
                                "learner's")
    return files


def evaluations(run_dir: Path) -> dict[str, np.ndarray]:
    """The run's evaluations in order (those during training, every `train.eval_every` env steps, then the final
    one): `env_steps`, `success_rate` (NaN for envs without a notion of success) and `return_mean` arrays.

    Each evaluation is one message whose numbers the learner logs together at its env step, `eval/episodes`
    first; so every `eval/episodes` scalar starts a row.
    """
    rows: list[dict[str, float]] = []
    for path in event_files(run_dir):
        for tag, step, value in read_scalars(path):
            if tag == "eval/episodes":
                rows.append({"env_steps": step})
            elif rows and tag in ("eval/success_rate", "eval/return_mean"):
                rows[-1][tag.removeprefix("eval/")] = value
    return {
        "env_steps": np.asarray([r["env_steps"] for r in rows], np.int64),
        "success_rate": np.asarray([r.get("success_rate", np.nan) for r in rows], np.float64),
        "return_mean": np.asarray([r.get("return_mean", np.nan) for r in rows], np.float64),
    }


def episodes(run_dir: Path) -> dict[str, np.ndarray]:
    """The run's training episodes in order: `end_step`, `return`, `success`, `length` arrays (of a live run:
    the episodes whose scalars are all written; `success` is NaN for envs without a notion of success).

    The learner logs `episode/*` at the env steps it has *received* when the episode message arrives, which can
    lag the actor by the transitions in flight; the running sum of `episode/length` is the exact env step of each
    episode's end, so that is `end_step`.
    """
    files = event_files(run_dir)
    columns: dict[str, list[float]] = {"return": [], "success": [], "length": []}
    for path in files:
        for tag, _, value in read_scalars(path):
            name = tag.removeprefix("episode/")
            if tag.startswith("episode/") and name in columns:
                columns[name].append(value)
    if not columns["success"]:  # an env without a notion of success (e.g. HalfCheetah) logs none
        columns["success"] = [float("nan")] * len(columns["length"])
    counts = {k: len(v) for k, v in columns.items()}
    n = min(counts.values())
    # A live run may be read between the scalars of its newest episode; anything more uneven is not our log.
    if max(counts.values()) - n > 1:
        raise ValueError(f"{run_dir}: episode scalars of unequal counts {counts}; expected one of each per episode")
    out = {k: np.asarray(v[:n]) for k, v in columns.items()}
    out["end_step"] = np.cumsum(out["length"]).astype(np.int64)
    return out
