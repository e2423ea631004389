"""Demonstrations mixed into every minibatch, sampled inside the learner's jit.

Owns: `DeviceMix`, the device-side twin of `serl_stack.data.demos.MixedSampler`: two `DeviceReplay`s (online
and demonstrations) and a fixed number of demo rows per minibatch. It has the same `sample(key, n)` as a
`DeviceReplay`, so `SACAgent.update_from_replay` takes either.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from serl_stack.data.device_replay import DeviceReplay


def demo_rows(demo_fraction: float, batch_size: int) -> int:
    """Rows of a minibatch of `batch_size` that come from the demonstrations: round(fraction * batch). The
    fraction is `replay.demo_fraction`, in [0, 1] as declared in config.py (checked when the config is loaded)."""
    return round(demo_fraction * batch_size)


class DeviceMix(struct.PyTreeNode):
    """`sample(key, utd * batch_size)` gives utd minibatches of `batch_size` rows, each with exactly
    `num_demo` demo rows first and `batch_size - num_demo` online rows after them."""

    online: DeviceReplay
    demos: DeviceReplay
    batch_size: int = struct.field(pytree_node=False)
    num_demo: int = struct.field(pytree_node=False)

    @classmethod
    def create(cls, online: DeviceReplay, demos: DeviceReplay, batch_size: int, demo_fraction: float) -> DeviceMix:
        if (online.obs_dim, online.action_dim) != (demos.obs_dim, demos.action_dim):
            raise ValueError(
                f"demonstrations: observation/action sizes ({demos.obs_dim}, {demos.action_dim}), expected the "
                f"online data's ({online.obs_dim}, {online.action_dim})"
            )
        num_demo = demo_rows(demo_fraction, int(batch_size))
        assert 0 <= num_demo <= batch_size, f"demo_fraction {demo_fraction!r} outside [0, 1] (replay.demo_fraction)"
        return cls(online=online, demos=demos, batch_size=int(batch_size), num_demo=num_demo)

    def sample(self, key: jax.Array, n: int) -> dict[str, jax.Array]:
        if n % self.batch_size:
            raise ValueError(f"sample: n={n}, expected a multiple of the minibatch size {self.batch_size}")
        utd = n // self.batch_size
        demo_key, online_key = jax.random.split(key)
        demo = self.demos.sample(demo_key, utd * self.num_demo)
        online = self.online.sample(online_key, utd * (self.batch_size - self.num_demo))

        def merge(d: jax.Array, o: jax.Array) -> jax.Array:
            # (utd, demo rows + online rows, ...) so every minibatch of the UTD scan has the same share.
            d = d.reshape((utd, self.num_demo) + d.shape[1:])
            o = o.reshape((utd, self.batch_size - self.num_demo) + o.shape[1:])
            return jnp.concatenate([d, o], axis=1).reshape((n,) + d.shape[2:])

        return {k: merge(demo[k], online[k]) for k in demo}
