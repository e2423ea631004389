"""A replay buffer that lives on the accelerator, sampled inside the learner's jit.

Owns: `DeviceReplay`, a `flax.struct.PyTreeNode` ring buffer of the flat agent batch arrays ("observations"
(C, D), "actions" (C, A), "rewards" (C,), "next_observations" (C, D), "masks" (C,), all float32) with capacity C.
It mirrors what `serl_stack.data.replay.to_agent_batch` produces: the host `ReplayBuffer` stays the source of
truth (validation, checkpoints), and the learner copies each new transition (or chunk) here once with
`insert_batch` instead of copying `utd * batch_size` sampled rows to the device on every update.

Everything is a value: `insert_batch` returns a new buffer (jitted, and it donates the old one's arrays so the
ring is updated in place, not copied: do not use a buffer after inserting into it), and `sample` is a pure
function of the buffer and an explicit key, usable inside `jax.jit` (see `SACAgent.update_from_replay`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

REPLAY_KEYS = ("observations", "actions", "rewards", "next_observations", "masks")
"""The agent batch fields the buffer stores, in the order `SACAgent` documents them."""


def _row_shapes(obs_dim: int, action_dim: int) -> dict[str, tuple[int, ...]]:
    return {
        "observations": (obs_dim,),
        "actions": (action_dim,),
        "rewards": (),
        "next_observations": (obs_dim,),
        "masks": (),
    }


class DeviceReplay(struct.PyTreeNode):
    """Fixed-capacity ring buffer of flat float32 transitions held as `jax.Array`s; the oldest are overwritten."""

    data: dict[str, jax.Array]
    """REPLAY_KEYS -> (capacity, ...) float32 arrays; rows at or beyond `size` are zeros, never sampled."""
    size: jax.Array
    """int32 scalar: number of valid rows, min(total inserted, capacity)."""
    cursor: jax.Array
    """int32 scalar: the row the next insert writes first."""
    capacity: int = struct.field(pytree_node=False)

    @classmethod
    def create(cls, capacity: int, obs_dim: int, action_dim: int) -> DeviceReplay:
        """An empty buffer for `obs_dim`-D observations and `action_dim`-D actions."""
        for name, value in (("capacity", capacity), ("obs_dim", obs_dim), ("action_dim", action_dim)):
            if int(value) < 1:
                raise ValueError(f"{name}: got {value!r}, expected >= 1")
        data = {k: jnp.zeros((capacity, *s), jnp.float32) for k, s in _row_shapes(obs_dim, action_dim).items()}
        # Explicit int32 scalars (not Python ints / weak types), so the buffer's pytree signature never changes
        # across inserts and jitted consumers compile once. Two separate arrays: both are donated on insert.
        size, cursor = jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)
        return cls(data=data, size=size, cursor=cursor, capacity=int(capacity))

    @property
    def obs_dim(self) -> int:
        return int(self.data["observations"].shape[1])

    @property
    def action_dim(self) -> int:
        return int(self.data["actions"].shape[1])

    def insert_batch(self, batch: Mapping[str, Any]) -> DeviceReplay:
        """A new buffer with the `n` transitions of `batch` (host numpy or jax, keys REPLAY_KEYS) appended.

        `n` must be between 1 and `capacity`. The arrays of `self` are donated to the result: keep only the
        returned buffer.
        """
        missing = [k for k in REPLAY_KEYS if k not in batch]
        if missing:
            raise ValueError(f"batch is missing {missing}; expected keys {list(REPLAY_KEYS)}")
        reward_shape = tuple(np.shape(batch["rewards"]))
        n = reward_shape[0] if len(reward_shape) == 1 else 0
        if not 1 <= n <= self.capacity:
            raise ValueError(
                f"batch['rewards']: got shape {reward_shape}, expected (n,) with 1 <= n <= capacity={self.capacity}"
            )
        rows = {}
        for key, row_shape in _row_shapes(self.obs_dim, self.action_dim).items():
            shape = tuple(np.shape(batch[key]))
            if shape != (n, *row_shape):
                raise ValueError(f"batch['{key}']: got shape {shape}, expected {(n, *row_shape)}")
            value = batch[key]
            rows[key] = value if isinstance(value, jax.Array) else np.asarray(value, np.float32)
        return _insert(self, rows)

    def sample(self, key: jax.Array, n: int) -> dict[str, jax.Array]:
        """`n` transitions drawn uniformly with replacement from the valid rows; pure, so it can run inside jit.

        The buffer must not be empty (inside jit this cannot be checked: an empty buffer yields zero rows).
        """
        idx = jax.random.randint(key, (n,), 0, jnp.maximum(self.size, 1))
        return {k: v[idx] for k, v in self.data.items()}


def _insert_impl(replay: DeviceReplay, rows: dict[str, jax.Array]) -> DeviceReplay:
    n = rows["rewards"].shape[0]
    idx = (replay.cursor + jnp.arange(n, dtype=jnp.int32)) % replay.capacity
    data = {k: v.at[idx].set(rows[k].astype(v.dtype)) for k, v in replay.data.items()}
    return replay.replace(
        data=data,
        size=jnp.minimum(replay.size + n, replay.capacity).astype(jnp.int32),
        cursor=((replay.cursor + n) % replay.capacity).astype(jnp.int32),
    )


# Donating the old buffer lets XLA scatter into its memory instead of copying capacity-sized arrays per insert.
_insert = jax.jit(_insert_impl, donate_argnums=(0,))
