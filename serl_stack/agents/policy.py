"""The inference side of the SAC actor, for the actor process.

Owns: `make_policy_fn`, a factory of two pure functions — one that builds a parameter pytree of the right
structure (the target for `flax.serialization.from_state_dict` when parameters arrive over the wire) and one
jitted policy call — `make_sample_fn` (K actions at one observation, encoded once) and `make_value_fn`, the same
for the critic ensemble's view of the policy's value (what conservative mixing needs in the actor process). It
imports only the network definitions: no optimizer, no learner, so the actor process starts fast and cannot
accidentally train. `serl_stack.inference.PolicyRunner` wraps these for env observations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from serl_stack.agents.encoders import example_obs, features, make_encoder
from serl_stack.agents.networks import (
    identity_obs_norm,
    make_actor,
    make_critic,
    tanh_gaussian_mode,
    tanh_gaussian_sample,
)
from serl_stack.config import AgentConfig

Params = Any
InitParamsFn = Callable[[jax.Array], Params]
PolicyFn = Callable[..., jax.Array]


def make_policy_fn(
    obs_dim: int, action_dim: int, cfg: AgentConfig, image_shapes: Mapping[str, tuple[int, ...]] | None = None
) -> tuple[InitParamsFn, PolicyFn]:
    """Return `(init_params_fn, policy_fn)` for the actor architecture `SACAgent.create` builds from `cfg`.

    - `init_params_fn(key) -> params`: freshly initialized `{"actor": ..., "obs_norm": {"mean", "std"}}`, plus
      `"encoder"` for a pixel agent (`image_shapes` = {camera: (H, W, C)}): the same pytree structure as
      `SACAgent.actor_params`; identity normalization.
    - `policy_fn(params, obs, key, deterministic=False) -> action`: `obs` is `(obs_dim,)` or `(B, obs_dim)`, or
      for a pixel agent `{"state": ..., "images": {camera: ...}}` with or without a batch axis; a stochastic
      sample in `[-1, 1]`, or `tanh(mean)` when `deterministic` (then `key` is ignored and may be None). Jitted,
      with `deterministic` static.
    """
    actor = make_actor(action_dim, cfg.hidden_dims)
    encoder = make_encoder(cfg) if image_shapes else None
    encoder_apply = encoder.apply if encoder is not None else None

    def init_params_fn(key: jax.Array) -> Params:
        norm = identity_obs_norm(obs_dim)
        params: dict[str, Any] = {"obs_norm": norm}
        x = example_obs(obs_dim, image_shapes)
        if encoder is not None:
            key, enc_key = jax.random.split(key)
            params["encoder"] = encoder.init(enc_key, x)["params"]
        params["actor"] = actor.init(key, features(encoder_apply, params.get("encoder"), x, norm))["params"]
        return params

    @partial(jax.jit, static_argnames="deterministic")
    def policy_fn(params: Params, obs: Any, key: jax.Array | None, deterministic: bool = False) -> jax.Array:
        x = features(encoder_apply, params.get("encoder"), obs, params["obs_norm"])
        mean, log_std = actor.apply({"params": params["actor"]}, x)
        if deterministic:
            return tanh_gaussian_mode(mean)
        action, _ = tanh_gaussian_sample(mean, log_std, key)
        return action

    return init_params_fn, policy_fn


def make_sample_fn(
    obs_dim: int, action_dim: int, cfg: AgentConfig, image_shapes: Mapping[str, tuple[int, ...]] | None = None
) -> Callable[[Params, Any, jax.Array, int], jax.Array]:
    """`sample_fn(params, obs, key, k) -> (k, A)`: k independent stochastic actions at ONE observation `obs`
    (unbatched), for `make_policy_fn`'s parameters. The observation is normalized and encoded once; only the
    Gaussian draw is repeated (what reranking K proposals needs). Jitted, with `k` static."""
    actor = make_actor(action_dim, cfg.hidden_dims)
    encoder = make_encoder(cfg) if image_shapes else None
    encoder_apply = encoder.apply if encoder is not None else None

    @partial(jax.jit, static_argnames="k")
    def sample_fn(params: Params, obs: Any, key: jax.Array, k: int) -> jax.Array:
        x = features(encoder_apply, params.get("encoder"), jax.tree.map(lambda a: a[None], obs), params["obs_norm"])
        mean, log_std = actor.apply({"params": params["actor"]}, x)
        shape = (k, action_dim)
        actions, _ = tanh_gaussian_sample(jnp.broadcast_to(mean, shape), jnp.broadcast_to(log_std, shape), key)
        return actions

    return sample_fn


def make_value_fn(
    obs_dim: int,
    action_dim: int,
    cfg: AgentConfig,
    value_samples: int,
    image_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> tuple[InitParamsFn, Callable[[Params, Any, jax.Array], jax.Array]]:
    """Return `(init_params_fn, q_values_fn)` for the learned policy's value as the critic ensemble sees it.

    - `init_params_fn(key) -> params`: `make_policy_fn`'s pytree plus `"critic"`, i.e. the structure of
      `SACAgent.value_params` (what the learner broadcasts when conservative mixing is on).
    - `q_values_fn(params, obs, key) -> (E, M)`: at ONE observation `obs` (unbatched), the E critics' Q-values of
      M = `value_samples` actions sampled from the policy. Jitted. `safety.estimates.ValueBound.from_q_values`
      turns them into the bound L that the mixers compare.
    """
    assert value_samples >= 1, value_samples  # mixing.value_samples' declared range
    init_policy, _ = make_policy_fn(obs_dim, action_dim, cfg, image_shapes)
    actor, critic = make_actor(action_dim, cfg.hidden_dims), make_critic(cfg)
    encoder = make_encoder(cfg) if image_shapes else None
    encoder_apply = encoder.apply if encoder is not None else None

    def init_params_fn(key: jax.Array) -> Params:
        key, critic_key = jax.random.split(key)
        params = init_policy(key)
        x = features(encoder_apply, params.get("encoder"), example_obs(obs_dim, image_shapes), params["obs_norm"])
        params["critic"] = critic.init(critic_key, x, jnp.zeros((1, action_dim), jnp.float32))["params"]
        return params

    @jax.jit
    def q_values_fn(params: Params, obs: Any, key: jax.Array) -> jax.Array:
        x = features(encoder_apply, params.get("encoder"), jax.tree.map(lambda a: a[None], obs), params["obs_norm"])
        mean, log_std = actor.apply({"params": params["actor"]}, x)
        shape = (value_samples, action_dim)
        actions, _ = tanh_gaussian_sample(jnp.broadcast_to(mean, shape), jnp.broadcast_to(log_std, shape), key)
        return critic.apply({"params": params["critic"]}, jnp.broadcast_to(x, (value_samples, x.shape[-1])), actions)

    return init_params_fn, q_values_fn
