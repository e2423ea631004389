"""The inference side of the SAC actor, for the actor process.

Owns: `make_policy_fn`, a factory of two pure functions — one that builds a parameter pytree of the right
structure (the target for `flax.serialization.from_state_dict` when parameters arrive over the wire) and one
jitted policy call. It imports only the network definitions: no optimizer, no learner, so the actor process
starts fast and cannot accidentally train.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from serl_stack.agents.networks import (
    identity_obs_norm,
    make_actor,
    normalize_obs,
    tanh_gaussian_mode,
    tanh_gaussian_sample,
)
from serl_stack.config import AgentConfig

Params = Any
InitParamsFn = Callable[[jax.Array], Params]
PolicyFn = Callable[..., jax.Array]


def make_policy_fn(obs_dim: int, action_dim: int, cfg: AgentConfig) -> tuple[InitParamsFn, PolicyFn]:
    """Return `(init_params_fn, policy_fn)` for the actor architecture `SACAgent.create` builds from `cfg`.

    - `init_params_fn(key) -> params`: freshly initialized `{"actor": ..., "obs_norm": {"mean", "std"}}` (the
      same pytree structure as `SACAgent.actor_params`; identity normalization).
    - `policy_fn(params, obs, key, deterministic=False) -> action`: `obs` is `(obs_dim,)` or `(B, obs_dim)`;
      a stochastic sample in `[-1, 1]`, or `tanh(mean)` when `deterministic` (then `key` is ignored and may be
      None). Jitted, with `deterministic` static.
    """
    actor = make_actor(action_dim, cfg.hidden_dims)

    def init_params_fn(key: jax.Array) -> Params:
        actor_params = actor.init(key, jnp.zeros((1, obs_dim), jnp.float32))["params"]
        return {"actor": actor_params, "obs_norm": identity_obs_norm(obs_dim)}

    @partial(jax.jit, static_argnames="deterministic")
    def policy_fn(params: Params, obs: jax.Array, key: jax.Array | None, deterministic: bool = False) -> jax.Array:
        mean, log_std = actor.apply({"params": params["actor"]}, normalize_obs(obs, params["obs_norm"]))
        if deterministic:
            return tanh_gaussian_mode(mean)
        action, _ = tanh_gaussian_sample(mean, log_std, key)
        return action

    return init_params_fn, policy_fn
