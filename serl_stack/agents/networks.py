"""Small Flax modules the agents are built from, and the tanh-Gaussian distribution math.

Owns: `MLP`, the critic `StateActionValue` and its `nn.vmap` ensemble `CriticEnsemble`, the squashed-Gaussian
policy head `TanhGaussianActor` with the pure functions that sample from it and score actions under it, and the
learnable entropy `Temperature`. Losses live in the agents that use them, not here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from serl_stack.config import AgentConfig

default_init = nn.initializers.xavier_uniform

LOG_STD_MIN = -20.0
"""Lower clip of the actor's log standard deviation (keeps the Gaussian from collapsing to a point)."""
LOG_STD_MAX = 2.0
"""Upper clip of the actor's log standard deviation (beyond this the squashed samples are all near +-1)."""
OBS_NORM_CLIP = 10.0
"""Standardized observations are clipped to +-this (a reading far outside the warm-up data cannot blow up)."""
OBS_NORM_MIN_STD = 1e-3
"""Floor of the per-dimension std used to standardize (a dimension constant during warm-up stays finite)."""
_ATANH_EPS = 1e-6
"""Actions scored by `tanh_gaussian_log_prob` are clipped this far inside (-1, 1) so atanh stays finite."""


class MLP(nn.Module):
    """Dense layers with an activation between them (and after the last one when `activate_final`)."""

    hidden_dims: Sequence[int]
    activations: Callable[[jax.Array], jax.Array] = nn.relu
    activate_final: bool = False
    use_layer_norm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, size in enumerate(self.hidden_dims):
            x = nn.Dense(size, kernel_init=default_init())(x)
            if i + 1 < len(self.hidden_dims) or self.activate_final:
                # LayerNorm before the nonlinearity, as in RLPD: it bounds the critic's features so high-UTD
                # training does not blow up the Q values.
                if self.use_layer_norm:
                    x = nn.LayerNorm()(x)
                x = self.activations(x)
        return x


class StateActionValue(nn.Module):
    """Q(s, a): an MLP over the concatenated observation vector and action, returning shape `(*batch,)`."""

    hidden_dims: Sequence[int]
    use_layer_norm: bool = False

    @nn.compact
    def __call__(self, observations: jax.Array, actions: jax.Array) -> jax.Array:
        x = jnp.concatenate([observations, actions], axis=-1)
        x = MLP(self.hidden_dims, activate_final=True, use_layer_norm=self.use_layer_norm)(x)
        return jnp.squeeze(nn.Dense(1, kernel_init=default_init())(x), -1)


class CriticEnsemble(nn.Module):
    """`num_critics` independent `StateActionValue`s evaluated in one vectorized call: output `(E, *batch)`."""

    hidden_dims: Sequence[int]
    num_critics: int = 2
    use_layer_norm: bool = False

    @nn.compact
    def __call__(self, observations: jax.Array, actions: jax.Array) -> jax.Array:
        # Parameters get a leading ensemble axis with independent initial values; the inputs are shared.
        ensemble = nn.vmap(
            StateActionValue,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num_critics,
        )
        return ensemble(self.hidden_dims, self.use_layer_norm)(observations, actions)


class TanhGaussianActor(nn.Module):
    """pi(a|s) = tanh(N(mean(s), exp(log_std(s)))): returns `(mean, log_std)`, each `(*batch, action_dim)`.

    The distribution itself is handled by the pure functions below, so the actor process, the SAC losses and a
    behaviour-cloning prior all score actions with the same code.
    """

    hidden_dims: Sequence[int]
    action_dim: int
    log_std_min: float = LOG_STD_MIN
    log_std_max: float = LOG_STD_MAX

    @nn.compact
    def __call__(self, observations: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = MLP(self.hidden_dims, activate_final=True)(observations)
        mean = nn.Dense(self.action_dim, kernel_init=default_init())(x)
        log_std = nn.Dense(self.action_dim, kernel_init=default_init())(x)
        return mean, jnp.clip(log_std, self.log_std_min, self.log_std_max)


def _log_one_minus_tanh_sq(u: jax.Array) -> jax.Array:
    """log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), stable where tanh(u) rounds to +-1."""
    return 2.0 * (jnp.log(2.0) - u - jax.nn.softplus(-2.0 * u))


def _gaussian_log_prob(u: jax.Array, mean: jax.Array, log_std: jax.Array) -> jax.Array:
    z = (u - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * jnp.log(2.0 * jnp.pi), axis=-1)


def tanh_gaussian_sample(mean: jax.Array, log_std: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Reparameterized sample `a = tanh(u)`, `u ~ N(mean, std)`, and `log pi(a)` summed over the action axis.

    The log-prob is computed from the pre-tanh `u` (not from atanh(a)), so it stays exact when `a` saturates.
    """
    u = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)
    log_prob = _gaussian_log_prob(u, mean, log_std) - jnp.sum(_log_one_minus_tanh_sq(u), axis=-1)
    return jnp.tanh(u), log_prob


def tanh_gaussian_log_prob(mean: jax.Array, log_std: jax.Array, actions: jax.Array) -> jax.Array:
    """log pi(a) of given actions in (-1, 1) (e.g. demonstrations), summed over the action axis."""
    a = jnp.clip(actions, -1.0 + _ATANH_EPS, 1.0 - _ATANH_EPS)
    u = jnp.arctanh(a)
    return _gaussian_log_prob(u, mean, log_std) - jnp.sum(_log_one_minus_tanh_sq(u), axis=-1)


def tanh_gaussian_mode(mean: jax.Array) -> jax.Array:
    """The deterministic action used for evaluation: tanh(mean)."""
    return jnp.tanh(mean)


def identity_obs_norm(obs_dim: int) -> dict[str, jax.Array]:
    """Normalization statistics that leave observations unchanged."""
    return {"mean": jnp.zeros((obs_dim,), jnp.float32), "std": jnp.ones((obs_dim,), jnp.float32)}


def normalize_obs(observations: jax.Array, obs_norm: dict[str, jax.Array]) -> jax.Array:
    """Standardize `(..., D)` observations with fixed `{"mean", "std"}` statistics, clipped to +-OBS_NORM_CLIP.

    Robot observations mix metres, quaternions and newtons; a goal 2 cm away is a 0.02 difference in raw
    inputs. Standardizing with statistics of the warm-up data puts every dimension on one scale.
    """
    std = jnp.maximum(obs_norm["std"], OBS_NORM_MIN_STD)
    return jnp.clip((observations - obs_norm["mean"]) / std, -OBS_NORM_CLIP, OBS_NORM_CLIP)


class Temperature(nn.Module):
    """The SAC entropy coefficient alpha, parameterized by its log so it stays positive."""

    init_temperature: float = 1.0

    @nn.compact
    def __call__(self) -> jax.Array:
        # An explicit dtype: a weak-typed scalar would become strong after the first optimizer step and make
        # every jitted update compile twice.
        log_temp = self.param("log_temp", lambda _: jnp.asarray(math.log(self.init_temperature), jnp.float32))
        return jnp.exp(log_temp)


def make_actor(action_dim: int, hidden_dims: Sequence[int]) -> TanhGaussianActor:
    """The one place the actor architecture is chosen, shared by the learner and the actor process."""
    return TanhGaussianActor(hidden_dims=tuple(hidden_dims), action_dim=action_dim)


def make_critic(cfg: AgentConfig) -> CriticEnsemble:
    """The one place the critic ensemble's architecture is chosen, shared by the learner and the actor process."""
    return CriticEnsemble(tuple(cfg.hidden_dims), cfg.num_critics, cfg.critic_layer_norm)
