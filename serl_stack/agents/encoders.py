"""Image encoders and the DrQ augmentation for pixel observations.

Owns: `ConvEncoder` (a small DrQ/SERL-style conv net: uint8 images in, a LayerNorm-ed feature vector out),
`PixelEncoder` (one ConvEncoder per camera plus the proprioceptive vector, concatenated), `make_encoder` and
`features` (the one function that turns an agent observation into the MLPs' input, for the learner and the actor
process alike), and `random_shift` (DrQ: pad by `pad` pixels with edge values and crop back at a random offset,
per image). Pure functions and Flax modules only.

Agent observations are a flat `(…, D)` vector for state-only agents, or for pixel agents
`{"state": (…, D), "images": {camera: (…, H, W, C) uint8}}`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from serl_stack.agents.networks import default_init, normalize_obs
from serl_stack.config import AgentConfig, check_section

AgentObs = jax.Array | Mapping[str, Any]


class ConvEncoder(nn.Module):
    """`(*batch, H, W, C)` uint8 -> `(*batch, feature_dim)`: convs (first one strided), a dense projection with
    LayerNorm and tanh (DrQ-v2's trunk: bounded features keep the critic's input scale fixed)."""

    channels: Sequence[int] = (32, 64)
    kernels: Sequence[int] = (4, 2)
    strides: Sequence[int] = (4, 2)
    feature_dim: int = 50

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        batch_shape = images.shape[:-3]
        x = images.reshape((-1, *images.shape[-3:])).astype(jnp.float32) / 255.0 - 0.5
        for c, k, s in zip(self.channels, self.kernels, self.strides, strict=True):
            x = nn.relu(nn.Conv(c, (k, k), strides=(s, s), padding="VALID", kernel_init=default_init())(x))
        x = x.reshape((x.shape[0], -1))
        x = nn.Dense(self.feature_dim, kernel_init=default_init())(x)
        x = jnp.tanh(nn.LayerNorm()(x))
        return x.reshape((*batch_shape, self.feature_dim))


class PixelEncoder(nn.Module):
    """`{"state": (*batch, D), "images": {name: (*batch, H, W, C)}}` -> `(*batch, D + cameras * feature_dim)`.

    Camera names are sorted, so the feature order never depends on dict order.
    """

    channels: Sequence[int] = (32, 64)
    kernels: Sequence[int] = (4, 2)
    strides: Sequence[int] = (4, 2)
    feature_dim: int = 50

    @nn.compact
    def __call__(self, observations: Mapping[str, Any]) -> jax.Array:
        images = observations["images"]
        assert isinstance(images, Mapping)
        parts = [
            ConvEncoder(self.channels, self.kernels, self.strides, self.feature_dim, name=f"conv_{name}")(images[name])
            for name in sorted(images)
        ]
        state = observations["state"]
        assert not isinstance(state, Mapping)
        return jnp.concatenate([state, *parts], axis=-1)


def make_encoder(cfg: AgentConfig) -> PixelEncoder | None:
    """The encoder `cfg` asks for (None for a state-only agent); the learner and the actor both build it here."""
    if not cfg.image_keys:
        return None
    check_section(cfg)  # the encoder lists' lengths are one of the config's rules
    return PixelEncoder(tuple(cfg.encoder_channels), tuple(cfg.encoder_kernels), tuple(cfg.encoder_strides),
                        cfg.encoder_features)


def example_obs(obs_dim: int, image_shapes: Mapping[str, tuple[int, ...]] | None) -> AgentObs:
    """A batch of one zero observation of the agent's input structure (for initializing networks)."""
    state = jnp.zeros((1, obs_dim), jnp.float32)
    if not image_shapes:
        return state
    return {"state": state, "images": {k: jnp.zeros((1, *s), jnp.uint8) for k, s in image_shapes.items()}}


def features(
    encoder_apply: Callable[..., jax.Array] | None,
    encoder_params: Any,
    obs: AgentObs,
    obs_norm: Mapping[str, jax.Array],
) -> jax.Array:
    """The MLPs' input: the standardized state vector, followed by each camera's features for a pixel agent
    (`encoder_apply` is the `PixelEncoder`'s `apply`; None for a state-only agent)."""
    if encoder_apply is None:
        assert not isinstance(obs, Mapping), "a pixel observation needs the agent's encoder"
        return normalize_obs(obs, obs_norm)
    assert isinstance(obs, Mapping), "a pixel agent takes {'state': ..., 'images': {...}} observations"
    state = normalize_obs(obs["state"], obs_norm)
    return encoder_apply({"params": encoder_params}, {"state": state, "images": obs["images"]})


def augment(key: jax.Array, obs: AgentObs, pad: int) -> AgentObs:
    """DrQ `random_shift` on every camera of a batched pixel observation (state vectors pass unchanged)."""
    if not isinstance(obs, Mapping) or pad == 0:
        return obs
    names = sorted(obs["images"])
    keys = jax.random.split(key, len(names))
    return {**obs, "images": {n: random_shift(k, obs["images"][n], pad) for n, k in zip(names, keys, strict=True)}}


def random_shift(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
    """DrQ augmentation of `(B, H, W, C)` images: pad `pad` pixels by edge replication, crop back to (H, W) at an
    independent random offset per image. Same dtype out as in."""
    if pad == 0:
        return images
    b, h, w, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    offsets = jax.random.randint(key, (b, 2), 0, 2 * pad + 1)

    def crop(img: jax.Array, off: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))

    return jax.vmap(crop)(padded, offsets)
