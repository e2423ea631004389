"""The inference side of the SAC actor, for the actor process.

Owns: `make_policy_fn`, a factory of two pure functions — one that builds a parameter pytree of the right
structure (the target for `flax.serialization.from_state_dict` when parameters arrive over the wire) and one
jitted policy call — `make_sample_fn` (K actions at one observation, encoded once), `make_value_fn`, the same
for the critic ensemble's view of the policy's value (what conservative mixing needs in the actor process), and
`NumpyActor`, the state policy's forward pass in numpy for the control step (no JAX dispatch). It
imports only the network definitions: no optimizer, no learner, so the actor process starts fast and cannot
accidentally train. `serl_stack.inference.PolicyRunner` wraps these for env observations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from serl_stack.agents.encoders import example_obs, features, make_encoder
from serl_stack.agents.networks import (
    LOG_STD_MAX,
    LOG_STD_MIN,
    OBS_NORM_CLIP,
    OBS_NORM_MIN_STD,
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


class NumpyActor:
    """The state policy's `(mean, log_std)` in numpy, from `make_policy_fn`'s parameters (no encoder): what
    `TanhGaussianActor` computes after `normalize_obs`, as float32 matrix products on the calling thread.

    The actor's control step runs the policy once per step on one observation. A jitted call costs ~0.15 ms of
    dispatch around a ~15 us forward pass and hands the work to XLA's threads, which a learner on the same cores
    delays; this runs the same arithmetic with a dozen numpy calls. Built once per parameter version (the
    matrices are the broadcast arrays, the two heads joined into one product). Equal to the jitted policy up to
    float32 rounding (tests/test_policy_numpy.py)."""

    def __init__(self, params: Params) -> None:
        actor, norm = params["actor"], params["obs_norm"]
        f32 = np.float32
        self._shift = np.asarray(norm["mean"], f32)
        self._scale = (1.0 / np.maximum(np.asarray(norm["std"], f32), f32(OBS_NORM_MIN_STD))).astype(f32)
        mlp = actor["MLP_0"]
        self._hidden = [(np.asarray(mlp[f"Dense_{i}"]["kernel"], f32), np.asarray(mlp[f"Dense_{i}"]["bias"], f32))
                        for i in range(len(mlp))]
        heads = (actor["Dense_0"], actor["Dense_1"])  # mean, log_std (TanhGaussianActor's order)
        self.action_dim = int(np.shape(heads[0]["bias"])[-1])
        self._head_w = np.concatenate([np.asarray(h["kernel"], f32) for h in heads], axis=-1)
        self._head_b = np.concatenate([np.asarray(h["bias"], f32) for h in heads], axis=-1)

    def __call__(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(mean, log_std)`, each `(*batch, action_dim)`, for float32 observations `(*batch, obs_dim)`."""
        x = (np.asarray(obs, np.float32) - self._shift) * self._scale
        np.minimum(x, OBS_NORM_CLIP, out=x)
        np.maximum(x, -OBS_NORM_CLIP, out=x)
        for w, b in self._hidden:
            x = x @ w
            x += b
            np.maximum(x, 0.0, out=x)
        y = x @ self._head_w
        y += self._head_b
        a = self.action_dim
        log_std = y[..., a:]
        np.minimum(log_std, LOG_STD_MAX, out=log_std)
        np.maximum(log_std, LOG_STD_MIN, out=log_std)
        return y[..., :a], log_std
