"""Data-parallel learning over several devices with `jax.sharding`.

Owns: the one-axis device mesh the learner uses when more than one accelerator is visible, and placing an agent
on it: parameters, optimizer states and replay mirrors replicated on every device, each minibatch split along
its batch axis (`SACAgent.batch_sharding`), so XLA runs the same update on every device's slice and all-reduces
the gradients. With one device none of this is used and nothing changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

T = TypeVar("T")
AXIS = "data"


def data_mesh(batch_size: int, devices: Sequence[jax.Device] | None = None) -> Mesh | None:
    """A mesh over all `devices` (default: every device JAX sees), or None when there is only one.

    `batch_size` must split evenly across the devices (a clear error otherwise)."""
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) < 2:
        return None
    if batch_size % len(devices):
        raise ValueError(
            f"agent.batch_size: got {batch_size}, expected a multiple of the {len(devices)} visible devices "
            "(each device takes an equal slice of every minibatch)"
        )
    return Mesh(devices, (AXIS,))


def replicate(tree: T, mesh: Mesh) -> T:
    """`tree` with every array placed on every device of `mesh`."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_agent(agent: Any, mesh: Mesh) -> Any:
    """`agent` replicated over `mesh`, with its minibatches split along the batch axis from now on."""
    return replicate(agent, mesh).replace(batch_sharding=NamedSharding(mesh, PartitionSpec(None, AXIS)))
