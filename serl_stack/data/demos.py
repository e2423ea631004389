"""Demonstrations: the one on-disk format, loading them into replay, and mixing them into training batches.

Owns: `Episode` (one trajectory as flat arrays), `EpisodeBuilder` (collects one while an env runs),
`save_episode` / `load_metadata` / `load_episodes` (the directory format below), `fill_replay` and
`replay_from_demos` (demos -> `ReplayBuffer`), and `MixedSampler` (a fixed fraction of every batch from demos).

The format (docs/demos.md documents every field) is readable with numpy alone, never pickle: a directory of
`episode_000000.npz` files (`np.savez`; load with `allow_pickle=False`), each holding
`observations/<key path>` (T+1, ...), `actions` (T, A) float32, `rewards` (T,) float32, `terminated` (T,) bool and
`truncated` (T,) bool, next to a `metadata.json` with the format version, env id, config, the spec of every key
(dtype and per-step shape), the episode count and each episode's file, length and success.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serl_stack.config import ReplayConfig
from serl_stack.data.obs import flatten_keys
from serl_stack.data.replay import ReplayBuffer

FORMAT_NAME = "serl_stack.demos"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
OBS_PREFIX = "observations/"
EPISODE_PATTERN = "episode_{:06d}.npz"


class DemoFormatError(ValueError):
    """A demonstration directory, file or episode that does not match the format."""


# --------------------------------------------------------------------------------------------------- episodes


@dataclass(eq=False)
class Episode:
    """One trajectory of T steps: `observations[key]` has T+1 rows (the reset one first), the rest T rows."""

    observations: dict[str, np.ndarray]
    """Flat key path (e.g. `state/tcp_pose`) -> (T+1, ...) array."""
    actions: np.ndarray
    """(T, A) float32: the actions commanded (before the safety filter; `serl record-demos` stores the scripted
    policy's command, the label `replay.action_source: policy` learns from)."""
    rewards: np.ndarray
    """(T,) float32."""
    terminated: np.ndarray
    """(T,) bool: the step ended the episode in a terminal state (no bootstrap)."""
    truncated: np.ndarray
    """(T,) bool: the step hit a time limit (bootstrap from the next observation)."""
    success: bool = False
    """Whether the episode reached the task's goal (kept in metadata.json, not in the .npz)."""

    def __len__(self) -> int:
        return int(self.actions.shape[0])


@dataclass
class EpisodeBuilder:
    """Collects an `Episode` step by step: `start(reset_obs)`, then `add(...)` after every `env.step`."""

    _obs: list[dict[str, np.ndarray]] = field(default_factory=list)
    _actions: list[np.ndarray] = field(default_factory=list)
    _rewards: list[float] = field(default_factory=list)
    _terminated: list[bool] = field(default_factory=list)
    _truncated: list[bool] = field(default_factory=list)

    def start(self, obs: Mapping[str, Any]) -> None:
        """Begin a new episode from its reset observation (nested or flat); anything collected is dropped."""
        self._obs = [flatten_keys(obs)]
        self._actions, self._rewards, self._terminated, self._truncated = [], [], [], []

    def add(self, action: Any, reward: float, next_obs: Mapping[str, Any], terminated: bool, truncated: bool) -> None:
        """Record one step: the action taken and what `env.step` returned for it."""
        if not self._obs:
            raise RuntimeError("EpisodeBuilder.add called before start(reset_obs)")
        self._obs.append(flatten_keys(next_obs))
        self._actions.append(np.asarray(action, np.float32))
        self._rewards.append(float(reward))
        self._terminated.append(bool(terminated))
        self._truncated.append(bool(truncated))

    def build(self, success: bool = False) -> Episode:
        """The collected episode (at least one step)."""
        if not self._actions:
            raise ValueError("EpisodeBuilder.build: the episode has no steps; expected at least one add()")
        keys = self._obs[0].keys()
        return Episode(
            observations={k: np.stack([o[k] for o in self._obs]) for k in keys},
            actions=np.stack(self._actions).astype(np.float32),
            rewards=np.asarray(self._rewards, np.float32),
            terminated=np.asarray(self._terminated, bool),
            truncated=np.asarray(self._truncated, bool),
            success=bool(success),
        )


def _episode_arrays(episode: Episode) -> dict[str, np.ndarray]:
    """The episode as the file's flat arrays, validated: lengths agree and dtypes are the format's."""
    t = len(episode)
    if np.ndim(episode.actions) != 2 or t < 1:
        raise DemoFormatError(f"actions: got shape {np.shape(episode.actions)}, expected (T, A) with T >= 1")
    if not episode.observations:
        raise DemoFormatError("observations: got no keys, expected at least one")
    arrays: dict[str, np.ndarray] = {}
    for key, value in flatten_keys(episode.observations).items():
        arr = np.asarray(value)
        if arr.dtype == object:
            raise DemoFormatError(f"observations/{key}: got dtype object, expected a numeric dtype")
        if arr.ndim < 1 or arr.shape[0] != t + 1:
            raise DemoFormatError(f"observations/{key}: got shape {arr.shape}, expected ({t + 1}, ...) (T+1 rows)")
        arrays[OBS_PREFIX + key] = arr
    arrays["actions"] = np.asarray(episode.actions, np.float32)
    for name, dtype in (("rewards", np.float32), ("terminated", bool), ("truncated", bool)):
        arr = np.asarray(getattr(episode, name))
        if arr.shape != (t,):
            raise DemoFormatError(f"{name}: got shape {arr.shape}, expected ({t},) (one per action)")
        arrays[name] = arr.astype(dtype)
    return arrays


def _spec_of(arrays: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Key -> {"dtype": numpy dtype name, "shape": per-step shape (without the time axis)}."""
    return {k: {"dtype": v.dtype.name, "shape": list(v.shape[1:])} for k, v in sorted(arrays.items())}


# --------------------------------------------------------------------------------------------------- writing


def _write_atomic(path: Path, write: Any) -> None:
    """Write through a temporary file and rename, so a crash never leaves a half-written file under `path`."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def save_episode(
    directory: str | Path, episode: Episode, *, env_id: str, config: Mapping[str, Any] | None = None
) -> Path:
    """Append `episode` to the demo directory (created if missing) and update its metadata.json; returns the file.

    The first episode fixes the spec, env id and config; a later one with a different key, dtype, per-step
    shape, env id or config is refused with an error naming it.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = _episode_arrays(episode)
    spec = _spec_of(arrays)
    config = dict(config or {})
    if (directory / METADATA_FILE).exists():
        meta = load_metadata(directory)
        if meta["env_id"] != env_id:
            raise DemoFormatError(f"{directory / METADATA_FILE}: env_id is {meta['env_id']!r}, got {env_id!r}")
        if meta["config"] != json.loads(json.dumps(config)):
            raise DemoFormatError(
                f"{directory / METADATA_FILE}: config differs from the one given; use a new directory"
            )
        for key in sorted(set(spec) | set(meta["spec"])):
            if spec.get(key) != meta["spec"].get(key):
                raise DemoFormatError(
                    f"episode key '{key}': got {spec.get(key)}, expected {meta['spec'].get(key)} "
                    f"(from {directory / METADATA_FILE})"
                )
    else:
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "env_id": env_id,
            "config": config,
            "spec": spec,
            "num_episodes": 0,
            "num_transitions": 0,
            "episodes": [],
        }
    name = EPISODE_PATTERN.format(meta["num_episodes"])
    path = directory / name
    _write_atomic(path, lambda f: np.savez(f, **arrays))
    meta["episodes"].append({"file": name, "length": len(episode), "success": bool(episode.success)})
    meta["num_episodes"] += 1
    meta["num_transitions"] += len(episode)
    text = json.dumps(meta, indent=2)
    _write_atomic(directory / METADATA_FILE, lambda f: f.write(text.encode()))
    return path


# --------------------------------------------------------------------------------------------------- reading


def load_metadata(directory: str | Path) -> dict[str, Any]:
    """The parsed metadata.json of a demo directory, with its format and version checked."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DemoFormatError(f"demo directory not found: {directory}")
    path = directory / METADATA_FILE
    if not path.is_file():
        raise DemoFormatError(f"{path}: missing; expected the metadata.json of a demo directory")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DemoFormatError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise DemoFormatError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT_NAME:
        raise DemoFormatError(f"{path}: format is {meta.get('format')!r}, expected {FORMAT_NAME!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DemoFormatError(
            f"{path}: format_version is {meta.get('format_version')!r}, expected {FORMAT_VERSION} "
            "(written by another serl_stack version)"
        )
    for key in ("env_id", "config", "spec", "num_episodes", "episodes"):
        if key not in meta:
            raise DemoFormatError(f"{path}: missing key '{key}'")
    if len(meta["episodes"]) != meta["num_episodes"]:
        raise DemoFormatError(
            f"{path}: num_episodes is {meta['num_episodes']}, but 'episodes' lists {len(meta['episodes'])}"
        )
    return meta


def spec_mismatch(meta: Mapping[str, Any], flat_obs: Mapping[str, Any], keys: tuple[str, ...], action_dim: int,
                  env_id: str) -> str | None:
    """Why the episodes `meta` (`load_metadata`) describes cannot feed an agent that reads `keys` (`obs_keys`
    entries, offsets included) of observations shaped like `flat_obs` and acts in `action_dim` dimensions; None
    when they can. The message names the first observation or the actions that do not fit."""
    from serl_stack.data.obs import source_keys

    spec = meta["spec"]
    for key in source_keys(keys):  # a relative entry "A - B" is computed from A and B
        want, got = list(np.shape(flat_obs[key])), spec.get(f"observations/{key}", {}).get("shape")
        if got != want:
            seen = "is missing" if got is None else f"has shape {got}"
            return (f"observation '{key}' {seen}, expected shape {want} (what env.id {env_id} gives for "
                    f"agent.obs_keys {list(keys)})")
    if spec["actions"]["shape"] != [action_dim]:
        return f"actions have shape {spec['actions']['shape']}, expected [{action_dim}] (env.id {env_id}'s action size)"
    return None


def load_episodes(directory: str | Path) -> Iterator[Episode]:
    """The episodes of a demo directory in order, each checked against metadata.json (keys, dtypes, shapes).

    Errors (`DemoFormatError`) name the file and key: a missing file or key, an unexpected key, or a dtype or
    shape different from the spec.
    """
    directory = Path(directory)
    meta = load_metadata(directory)  # here, not in the generator: a bad directory fails at the call
    return _iter_episodes(directory, meta)


def _iter_episodes(directory: Path, meta: Mapping[str, Any]) -> Iterator[Episode]:
    spec = meta["spec"]
    for entry in meta["episodes"]:
        path = directory / entry["file"]
        if not path.is_file():
            raise DemoFormatError(f"{path}: missing; listed in {directory / METADATA_FILE}")
        t = int(entry["length"])
        with np.load(path, allow_pickle=False) as data:
            missing = sorted(set(spec) - set(data.files))
            extra = sorted(set(data.files) - set(spec))
            if missing or extra:
                raise DemoFormatError(f"{path}: missing keys {missing}, unexpected keys {extra}")
            arrays = {}
            for key, s in spec.items():
                arr = data[key]
                rows = t + 1 if key.startswith(OBS_PREFIX) else t
                shape = (rows, *s["shape"])
                if arr.dtype != np.dtype(s["dtype"]):
                    raise DemoFormatError(f"{path}: key '{key}' has dtype {arr.dtype}, expected {s['dtype']}")
                if arr.shape != shape:
                    raise DemoFormatError(f"{path}: key '{key}' has shape {arr.shape}, expected {shape}")
                arrays[key] = arr
        yield Episode(
            observations={k[len(OBS_PREFIX):]: v for k, v in arrays.items() if k.startswith(OBS_PREFIX)},
            actions=arrays["actions"],
            rewards=arrays["rewards"],
            terminated=arrays["terminated"],
            truncated=arrays["truncated"],
            success=bool(entry["success"]),
        )


# --------------------------------------------------------------------------------------------------- replay


def _buffer_spec(meta: Mapping[str, Any]) -> tuple[dict[str, tuple[tuple[int, ...], np.dtype]], tuple[int, ...]]:
    obs = {
        k[len(OBS_PREFIX):]: (tuple(s["shape"]), np.dtype(s["dtype"]))
        for k, s in meta["spec"].items()
        if k.startswith(OBS_PREFIX)
    }
    return obs, tuple(meta["spec"]["actions"]["shape"])


def fill_replay(buffer: ReplayBuffer, directory: str | Path) -> int:
    """Insert every transition of every episode in `directory` into `buffer`; returns how many were inserted.

    The demos' observation keys, shapes and action shape must be the buffer's (checked before anything is
    inserted). Transition t is `(obs[t], actions[t], rewards[t], obs[t+1], terminated[t], truncated[t])`.
    """
    meta = load_metadata(directory)
    obs_spec, action_shape = _buffer_spec(meta)
    where = Path(directory) / METADATA_FILE
    for key in sorted(set(obs_spec) | set(buffer.obs_spec)):
        if key not in buffer.obs_spec or key not in obs_spec or obs_spec[key][0] != buffer.obs_spec[key][0]:
            raise DemoFormatError(
                f"{where}: observation key '{key}' has shape {obs_spec.get(key, (None,))[0]}, "
                f"the replay buffer expects {buffer.obs_spec.get(key, (None,))[0]}"
            )
    if action_shape != buffer.action_shape:
        raise DemoFormatError(
            f"{where}: actions have shape {action_shape}, the replay buffer expects {buffer.action_shape}"
        )
    inserted = 0
    for episode in load_episodes(directory):
        obs = episode.observations
        for t in range(len(episode)):
            buffer.insert(
                {k: v[t] for k, v in obs.items()},
                episode.actions[t],
                episode.rewards[t],
                {k: v[t + 1] for k, v in obs.items()},
                bool(episode.terminated[t]),
                bool(episode.truncated[t]),
            )
            inserted += 1
    return inserted


def replay_from_demos(directory: str | Path, capacity: int | None = None) -> ReplayBuffer:
    """A new `ReplayBuffer` shaped by the demos' spec (capacity: all their transitions by default), filled."""
    meta = load_metadata(directory)
    obs_spec, action_shape = _buffer_spec(meta)
    if capacity is None:
        capacity = max(1, int(meta.get("num_transitions", 0)) or sum(e["length"] for e in meta["episodes"]))
    buffer = ReplayBuffer(obs_spec, action_shape, ReplayConfig(capacity=capacity), np.float32)
    fill_replay(buffer, directory)
    return buffer


class MixedSampler:
    """Batches with a fixed share of demonstrations: `round(demo_fraction * batch_size)` rows from `demos`.

    The demo rows come first in every array of the batch, the online rows after them. While `demos` is empty,
    the whole batch comes from `online`. Returns the `ReplayBuffer.sample` dict format.
    """

    def __init__(self, online: ReplayBuffer, demos: ReplayBuffer, demo_fraction: float = 0.5) -> None:
        if not (isinstance(demo_fraction, (int, float)) and 0.0 <= demo_fraction <= 1.0):
            raise ValueError(f"demo_fraction: got {demo_fraction!r}, expected a number in [0, 1]")
        if online.obs_spec != demos.obs_spec:
            raise ValueError(f"demos.obs_spec: got {demos.obs_spec}, expected the online buffer's {online.obs_spec}")
        if online.action_shape != demos.action_shape:
            raise ValueError(
                f"demos.action_shape: got {demos.action_shape}, expected the online buffer's {online.action_shape}"
            )
        self.online = online
        self.demos = demos
        self.demo_fraction = float(demo_fraction)

    def num_demo_rows(self, batch_size: int) -> int:
        """How many rows of a batch of `batch_size` come from the demos right now."""
        return round(self.demo_fraction * batch_size) if len(self.demos) > 0 else 0

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, Any]:
        """`batch_size` transitions: `num_demo_rows(batch_size)` from demos, the rest from online."""
        if batch_size < 1:
            raise ValueError(f"batch_size: got {batch_size!r}, expected >= 1")
        n_demo = self.num_demo_rows(batch_size)
        parts = []
        if n_demo > 0:
            parts.append(self.demos.sample(n_demo, rng))
        if batch_size - n_demo > 0:
            parts.append(self.online.sample(batch_size - n_demo, rng))
        if len(parts) == 1:
            return parts[0]
        return _concat(parts[0], parts[1])


def _concat(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: _concat(v, b[k]) if isinstance(v, Mapping) else np.concatenate([v, b[k]], axis=0) for k, v in a.items()
    }


__all__ = [
    "FORMAT_VERSION",
    "DemoFormatError",
    "Episode",
    "EpisodeBuilder",
    "MixedSampler",
    "fill_replay",
    "load_episodes",
    "load_metadata",
    "replay_from_demos",
    "save_episode",
]
