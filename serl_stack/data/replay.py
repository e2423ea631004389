"""The learner's replay buffer.

Owns: `ReplayBuffer`, a fixed-capacity ring buffer of transitions over flat dict observations
(`"state/tcp_pose"`-style keys, any shapes and dtypes), filled on the host with validated inserts and sampled
uniformly; and `to_agent_batch`, which turns a sample into the flat float32 batch the agents take.

`terminated` and `truncated` are stored separately: the bootstrap mask is `1 - terminated`, so an episode cut
off by a time limit still bootstraps from its last observation.

Images (keys under `images/`) are stored once per frame, as uint8: the next observation's frame of slot i is
the observation frame of slot i + 1 when that transition continues the same episode (the frames are equal), so
only frames that start no later transition (episode ends, the newest transition, the slot before the ring wraps)
are kept aside. Vector keys keep separate observation and next-observation arrays. `_gather` is the one place
that knows this.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from serl_stack.config import ReplayConfig, check_section
from serl_stack.data.obs import IMAGE_PREFIX, agent_obs, flatten_keys, source_keys, to_vector

ObsSpec = dict[str, tuple[tuple[int, ...], np.dtype]]
"""Flat key path -> (shape, dtype) of one observation leaf."""


def spec_from_example(obs: Mapping[str, Any]) -> ObsSpec:
    """The spec of a (nested or flat) example observation: each leaf's shape and dtype."""
    return {k: (tuple(v.shape), v.dtype) for k, v in flatten_keys(obs).items()}


class ReplayBuffer:
    """Ring buffer of `(obs, action, reward, next_obs, terminated, truncated)`; the oldest are overwritten."""

    def __init__(
        self,
        obs_spec: Mapping[str, tuple[tuple[int, ...], Any]],
        action_shape: tuple[int, ...],
        cfg: ReplayConfig,
        action_dtype: Any = np.float32,
    ) -> None:
        check_section(cfg)  # replay.* in its declared ranges (capacity >= 1)
        if not obs_spec:
            raise ValueError("obs_spec: got an empty spec, expected at least one observation key")
        self.capacity = int(cfg.capacity)
        self.obs_spec: ObsSpec = {k: (tuple(shape), np.dtype(dtype)) for k, (shape, dtype) in obs_spec.items()}
        self.action_shape = tuple(action_shape)
        self.action_dtype = np.dtype(action_dtype)

        def alloc(spec: ObsSpec) -> dict[str, np.ndarray]:
            return {k: np.zeros((self.capacity, *shape), dtype) for k, (shape, dtype) in spec.items()}

        self.image_keys = tuple(k for k in self.obs_spec if k.startswith(IMAGE_PREFIX))
        self._obs = alloc(self.obs_spec)
        self._next_obs = alloc({k: v for k, v in self.obs_spec.items() if k not in self.image_keys})
        # Image next-observations: the slot whose observation frame is this slot's next frame, or -1 while
        # the frame waits in `_next_frames` (no later transition of the same episode starts with it yet).
        self._next_slot = np.full((self.capacity,), -1, np.int64)
        self._next_frames: dict[int, dict[str, np.ndarray]] = {}
        self._actions = np.zeros((self.capacity, *self.action_shape), self.action_dtype)
        self._rewards = np.zeros((self.capacity,), np.float32)
        self._terminated = np.zeros((self.capacity,), bool)
        self._truncated = np.zeros((self.capacity,), bool)
        self._insert_index = 0
        self._size = 0

    @classmethod
    def from_example(cls, obs: Mapping[str, Any], action: Any, cfg: ReplayConfig) -> ReplayBuffer:
        """A buffer whose spec is taken from one example observation and action (e.g. the first reset)."""
        action = np.asarray(action)
        return cls(spec_from_example(obs), action.shape, cfg, action.dtype)

    def __len__(self) -> int:
        return self._size

    # ----------------------------------------------------------------------------------------------- insert

    def _check_obs(self, obs: Mapping[str, Any], name: str) -> dict[str, np.ndarray]:
        # The learner hands over observations it flattened once already; only a nested one is flattened here.
        flat = flatten_keys(obs) if any(isinstance(v, Mapping) for v in obs.values()) else obs
        missing = sorted(set(self.obs_spec) - set(flat))
        extra = sorted(set(flat) - set(self.obs_spec))
        if missing or extra:
            raise ValueError(
                f"{name}: keys do not match the spec (missing {missing}, unexpected {extra}); "
                f"expected keys {sorted(self.obs_spec)}"
            )
        out = {}
        for key, (shape, dtype) in self.obs_spec.items():
            out[key] = _check_array(f"{name}['{key}']", flat[key], shape, dtype)
        return out

    def insert(
        self,
        obs: Mapping[str, Any],
        action: Any,
        reward: float,
        next_obs: Mapping[str, Any],
        terminated: bool,
        truncated: bool,
    ) -> None:
        """Validate and store one transition. Raises ValueError naming the field on a wrong key, shape or dtype,
        or a NaN/inf; nothing is written when validation fails."""
        obs_flat = self._check_obs(obs, "obs")
        next_flat = self._check_obs(next_obs, "next_obs")
        action_arr = _check_array("action", action, self.action_shape, self.action_dtype)
        reward_arr = _check_array("reward", reward, (), np.dtype(np.float32))
        for name, flag in (("terminated", terminated), ("truncated", truncated)):
            if not isinstance(flag, (bool, np.bool_)):
                raise ValueError(f"{name}: got {flag!r} ({type(flag).__name__}), expected a bool")

        i = self._insert_index
        for key in self.obs_spec:
            self._obs[key][i] = obs_flat[key]
        for key in self._next_obs:
            self._next_obs[key][i] = next_flat[key]
        if self.image_keys:
            self._store_next_frames(i, obs_flat, next_flat)
        self._actions[i] = action_arr
        self._rewards[i] = reward_arr
        self._terminated[i] = terminated
        self._truncated[i] = truncated
        self._insert_index = (i + 1) % self.capacity
        self._size = min(self._size + 1, self.capacity)

    def _store_next_frames(self, i: int, obs_flat: dict[str, np.ndarray], next_flat: dict[str, np.ndarray]) -> None:
        self._next_frames.pop(i, None)  # the transition that held slot i is gone
        prev = i - 1  # never across the ring's wrap: slot 0 is overwritten before slot capacity - 1
        waiting = self._next_frames.get(prev) if prev >= 0 else None
        if waiting is not None and all(np.array_equal(waiting[k], obs_flat[k]) for k in self.image_keys):
            self._next_slot[prev] = i
            del self._next_frames[prev]
        self._next_slot[i] = -1
        self._next_frames[i] = {k: next_flat[k].copy() for k in self.image_keys}

    def stored_frames(self) -> int:
        """Image frames held per camera: one per transition plus the next frames kept aside."""
        return (self._size + len(self._next_frames)) if self.image_keys else 0

    # ----------------------------------------------------------------------------------------------- sample

    def _gather(self, idx: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Observations and next observations at slots `idx` (the one place that knows how they are stored)."""
        obs = {k: v[idx] for k, v in self._obs.items()}
        next_obs = {k: v[idx] for k, v in self._next_obs.items()}
        if self.image_keys:
            slots = self._next_slot[idx]
            aside = np.flatnonzero(slots < 0)
            for key in self.image_keys:
                frames = self._obs[key][np.maximum(slots, 0)]
                for j in aside:
                    frames[j] = self._next_frames[int(idx[j])][key]
                next_obs[key] = frames
        return obs, next_obs

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, Any]:
        """`batch_size` transitions drawn uniformly with replacement.

        Returns {"observations": {key: (B, ...)}, "actions": (B, *A), "rewards": (B,) float32,
        "next_observations": {key: (B, ...)}, "masks": (B,) float32 = 1 - terminated,
        "terminated": (B,) bool, "truncated": (B,) bool}.
        """
        if self._size == 0:
            raise ValueError("sample: the replay buffer is empty; insert transitions first")
        if batch_size < 1:
            raise ValueError(f"batch_size: got {batch_size!r}, expected >= 1")
        return self.take(rng.integers(0, self._size, size=batch_size))

    def vectors(self, keys: tuple[str, ...]) -> np.ndarray:
        """The stored observations' `keys` as float32 `(len, D)` in `to_vector` order (storage order): what
        observation statistics need, without gathering images or next observations."""
        n = self._size
        return to_vector({k: self._obs[k][:n] for k in source_keys(keys)}, keys, batch_dims=1)

    def take(self, idx: np.ndarray) -> dict[str, Any]:
        """The transitions at slots `idx` (each in [0, len(self))), in `sample`'s format."""
        idx = np.asarray(idx)
        if idx.size and (idx.min() < 0 or idx.max() >= self._size):
            raise IndexError(f"take: slots must lie in [0, {self._size}), got {idx.min()}..{idx.max()}")
        obs, next_obs = self._gather(idx)
        terminated = self._terminated[idx]
        return {
            "observations": obs,
            "actions": self._actions[idx],
            "rewards": self._rewards[idx],
            "next_observations": next_obs,
            "masks": 1.0 - terminated.astype(np.float32),
            "terminated": terminated,
            "truncated": self._truncated[idx],
        }


def _check_array(name: str, value: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """`value` as an array of `dtype`, or a ValueError naming `name`, what was seen and what was expected."""
    arr = np.asarray(value)
    if arr.shape != shape:
        raise ValueError(f"{name}: got shape {arr.shape}, expected {shape}")
    # same_kind lets float64 -> float32 and int -> float through but refuses float -> int and signed ->
    # unsigned, which would silently truncate or wrap (e.g. an image normalized to [0, 1] stored as zeros).
    if not np.can_cast(arr.dtype, dtype, casting="same_kind"):
        raise ValueError(f"{name}: got dtype {arr.dtype}, expected {dtype} (or a dtype that casts to it)")
    if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: got non-finite values (NaN or inf) in an array of shape {shape}")
    return arr.astype(dtype, copy=False)


def to_agent_batch(
    sample: Mapping[str, Any], keys: tuple[str, ...], image_keys: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The agents' batch from a `ReplayBuffer.sample`: observations flattened in `keys` order to float32 (B, D),
    or with `image_keys` the `serl_stack.data.obs.agent_obs` dict of that vector and the uint8 images.

    `keys` is usually `serl_stack.data.obs.vector_keys(example_obs)`; the same order must be used when acting.
    """
    return {
        "observations": agent_obs(sample["observations"], keys, image_keys, batch_dims=1),
        "actions": np.asarray(sample["actions"], np.float32),
        "rewards": np.asarray(sample["rewards"], np.float32),
        "next_observations": agent_obs(sample["next_observations"], keys, image_keys, batch_dims=1),
        "masks": np.asarray(sample["masks"], np.float32),
    }
