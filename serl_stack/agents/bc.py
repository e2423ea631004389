"""Behaviour cloning: the prior that demonstration-regularized SAC stays close to, and a policy of its own.

Owns: the BC policy's density (`prior_dist`, `prior_log_prob`: the SAC actor's network, `networks.make_actor`,
with its standard deviation floored), its training as an immutable value (`BCLearner`: a jitted `train` that
scans `n` maximum-likelihood steps over minibatches drawn inside the jit, a jitted `nll`), the episode-level
train/validation split and the fitting loop with early stopping on the validation loss (`split_episodes`,
`make_dataset`, `fit`); and what SAC needs to use a trained prior (`BCPrior`, `Multiplier` for the dual-descent
lambda, `fold_obs_norm` to start the SAC actor from the BC weights under the agent's own standardization).
Pure JAX and numpy: demonstrations are read and checkpoints written by `serl train-bc` (cli.py); the inference
side restores the policy without this module (`inference.load_bc_policy`), so an actor never imports optax.

The policy is `tanh(N(mean(s), max(std, std_floor)))`, one std per action dimension (`_state_independent_std`),
over standardized observations (mean/std of the training split, `networks.normalize_obs`, as the SAC agent
standardizes), trained on the demonstrations' actions (the commands `serl record-demos` stores; docs/demos.md).
Demonstrated actions at exactly +-1 (a scripted controller's clip) are scored at +-`ACTION_CLIP`: at +-(1 - 1e-6)
the pre-tanh target would be 7.25 and those rows alone would dominate the loss, for an action that tanh(3.8)
already gives to 0.1 %.

Defaults (`BCSettings`), chosen by validation loss (mean negative log-likelihood per held-out transition, lower is
better) on 20 `serl record-demos` demonstrations of reach, pick-cube and peg-insert, 20 % of the episodes held out,
2 seeds (the sweep and its figures: docs/training.md, "serl train-bc"): learning rate 3e-3 (best on all three),
256x256 (the SAC actor's default, so the weights can initialize it; 128x128 scored better on two of the three),
batch 256, std floor 0.05 (0.02-0.2 scored the same: it never bound), at most 3,000 steps, keeping the step with
the lowest validation loss (100-400 on 20 demonstrations, 1,100 on 300).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training.train_state import TrainState

from serl_stack.agents.networks import (
    OBS_NORM_MIN_STD,
    make_actor,
    normalize_obs,
    tanh_gaussian_log_prob,
    tanh_gaussian_mode,
    tanh_gaussian_sample,
)
from serl_stack.config import AgentConfig, BCConfig

Params = Any
ACTION_CLIP = 0.999
"""Demonstrated actions are scored at most this far from 0 (pre-tanh 3.8; see the module docstring)."""


@dataclass(frozen=True)
class BCSettings:
    """How `serl train-bc` trains a BC policy (its command-line options; the defaults won the sweep)."""

    hidden_dims: tuple[int, ...] = (256, 256)
    """MLP widths; equal to `agent.hidden_dims` for the weights to initialize the SAC actor."""
    steps: int = 3_000
    """Most gradient steps; the parameters of the step with the lowest validation loss are kept."""
    lr: float = 3e-3
    """Adam learning rate."""
    batch_size: int = 256
    """Transitions per step, drawn with replacement from the training episodes."""
    std_floor: float = 0.05
    """Lower bound of the policy's standard deviation (pre-tanh), so log pi_BC stays finite off the data."""
    val_fraction: float = 0.2
    """Share of the episodes held out for the validation loss (at least one episode each side)."""
    eval_every: int = 50
    """Steps between validation losses (the early-stopping granularity)."""
    seed: int = 0
    """Network initialization, the split and the minibatches."""

    def __post_init__(self) -> None:
        checks = (("hidden_dims", len(self.hidden_dims) >= 1 and min(self.hidden_dims) >= 1, ">= 1 layer of >= 1"),
                  ("steps", self.steps >= 1, ">= 1"), ("lr", self.lr > 0 and math.isfinite(self.lr), "> 0"),
                  ("batch_size", self.batch_size >= 1, ">= 1"),
                  ("std_floor", self.std_floor > 0 and math.isfinite(self.std_floor), "> 0"),
                  ("val_fraction", 0 < self.val_fraction < 1, "in (0, 1)"),
                  ("eval_every", self.eval_every >= 1, ">= 1"))
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name}: got {getattr(self, name)!r}, expected {expected}")


@dataclass(frozen=True)
class BCPrior:
    """A trained BC policy as SAC's prior: `params` = {"actor", "obs_norm"} (the inference pytree), the network's
    `hidden_dims`, its `std_floor` and, where measured (`prior_entropy`), its mean `entropy` at the demonstrations'
    states: SAC's target entropy under `agent.bc.target_entropy: prior`."""

    params: Params
    hidden_dims: tuple[int, ...]
    std_floor: float
    entropy: float | None = None


@dataclass(frozen=True)
class Regularizer:
    """What the SAC agent's compiled steps know of the regularizer (a static field: it shapes the code)."""

    cfg: BCConfig
    kl_target: float
    """The dual target in nats for the whole action: `agent.bc.kl_target * |A|`."""
    prior_hidden_dims: tuple[int, ...]
    std_floor: float


# ----------------------------------------------------------------------------------------------- the density


def prior_dist(
    params: Params, observations: jax.Array, action_dim: int, hidden_dims: Sequence[int], std_floor: float
) -> tuple[jax.Array, jax.Array]:
    """`(mean, log_std)` of the BC policy's pre-tanh Gaussian at raw observations `(..., D)`, std floored."""
    x = normalize_obs(observations, params["obs_norm"])
    mean, log_std = make_actor(action_dim, hidden_dims).apply({"params": params["actor"]}, x)
    return mean, jnp.maximum(log_std, math.log(std_floor))


def prior_log_prob(
    params: Params, observations: jax.Array, actions: jax.Array, hidden_dims: Sequence[int], std_floor: float
) -> jax.Array:
    """log pi_BC(a|s) `(...)` of actions in [-1, 1] at raw observations (what the KL term scores SAC's samples with).

    Differentiable in `actions` (the KL's pathwise gradient flows through it into the SAC actor)."""
    mean, log_std = prior_dist(params, observations, actions.shape[-1], hidden_dims, std_floor)
    return tanh_gaussian_log_prob(mean, log_std, actions)


ENTROPY_STATES = 4096
"""At most this many demonstration states (drawn evenly) for `prior_entropy`: ~0.1 s on a CPU."""


def prior_entropy(prior: BCPrior, observations: np.ndarray, seed: int = 0, samples: int = 16) -> float:
    """The prior's mean entropy (nats, whole action) at raw observations `(N, D)`: `-log pi_BC(a|s)` of
    `samples` draws `a ~ pi_BC(.|s)` per state, averaged, the Monte-Carlo estimate SAC's temperature loss makes
    of its own actor (`losses.actor_loss`'s "entropy"). A pure function of its inputs and `seed`."""
    obs = np.asarray(observations, np.float32)
    if obs.ndim != 2 or len(obs) == 0 or not np.all(np.isfinite(obs)):
        raise ValueError(f"observations: got shape {obs.shape}, expected (N >= 1, D) finite values")
    if len(obs) > ENTROPY_STATES:
        obs = obs[np.linspace(0, len(obs) - 1, ENTROPY_STATES).astype(int)]
    action_dim = int(np.shape(prior.params["actor"]["Dense_0"]["bias"])[0])
    mean, log_std = prior_dist(prior.params, jnp.asarray(obs), action_dim, prior.hidden_dims, prior.std_floor)
    keys = jax.random.split(jax.random.PRNGKey(seed), samples)
    log_prob = jax.vmap(lambda k: tanh_gaussian_sample(mean, log_std, k)[1])(keys)
    return float(-jnp.mean(log_prob))


class Multiplier(nn.Module):
    """A positive scalar learned through its log (the dual-descent lambda), like SAC's temperature."""

    init_value: float = 1.0

    @nn.compact
    def __call__(self) -> jax.Array:
        # float32, not weak-typed: the first optimizer step would otherwise change its type and recompile the update.
        log_value = self.param("log_lambda", lambda _: jnp.asarray(math.log(self.init_value), jnp.float32))
        return jnp.exp(log_value)


def fold_obs_norm(actor_params: Params, from_norm: Mapping[str, Any], to_norm: Mapping[str, Any]) -> Params:
    """The actor's parameters re-expressed for observations standardized with `to_norm` instead of `from_norm`.

    `(o - m1) / s1 = x2 * s2 / s1 + (m2 - m1) / s1` for `x2 = (o - m2) / s2`, so scaling the first layer's kernel
    rows by `s2 / s1` and moving its bias by `((m2 - m1) / s1) @ kernel` gives the same outputs (wherever neither
    standardization clips). This is how BC weights, trained under the demonstrations' statistics, start the SAC
    actor, which standardizes with its own (warm-up data plus demonstrations)."""
    s1 = jnp.maximum(jnp.asarray(from_norm["std"]), OBS_NORM_MIN_STD)
    s2 = jnp.maximum(jnp.asarray(to_norm["std"]), OBS_NORM_MIN_STD)
    shift = (jnp.asarray(to_norm["mean"]) - jnp.asarray(from_norm["mean"])) / s1
    first = actor_params["MLP_0"]["Dense_0"]
    folded = {"kernel": first["kernel"] * (s2 / s1)[:, None], "bias": first["bias"] + shift @ first["kernel"]}
    return {**actor_params, "MLP_0": {**actor_params["MLP_0"], "Dense_0": folded}}


def make_regularizer(
    cfg: AgentConfig, obs_dim: int, action_dim: int, prior: BCPrior | None
) -> tuple[Regularizer, dict[str, Any], TrainState | None]:
    """For `SACAgent.create` with `cfg.bc.enabled`: the regularizer's static settings, the prior's parameters
    (checked to fit the agent's observation and action sizes) and, in dual mode, lambda's train state."""
    if prior is None:
        raise ValueError("agent.bc.enabled: got true, expected a BCPrior passed to SACAgent.create (the learner loads "
                         "it from agent.bc.prior_run)")
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), dict(prior.params))
    seen = {"observation size": params["obs_norm"]["mean"].shape,
            "action size": params["actor"]["Dense_0"]["bias"].shape}
    wanted = {"observation size": (obs_dim,), "action size": (action_dim,)}
    for what, shape in seen.items():
        if tuple(shape) != wanted[what]:
            raise ValueError(f"agent.bc.prior_run: the prior's {what} is {tuple(shape)}, expected this agent's "
                             f"{wanted[what]}")
    if cfg.bc.init_actor_from_bc and tuple(prior.hidden_dims) != tuple(cfg.hidden_dims):
        raise ValueError(f"agent.bc.init_actor_from_bc: the prior's hidden dims are {list(prior.hidden_dims)}, "
                         f"expected agent.hidden_dims {list(cfg.hidden_dims)} (train it with --hidden-dims to match)")
    bc = Regularizer(cfg.bc, float(cfg.bc.kl_target) * action_dim, tuple(prior.hidden_dims), float(prior.std_floor))
    bc_lambda = None
    if cfg.bc.lambda_mode == "dual":
        multiplier = Multiplier(cfg.bc.lambda_init)
        # Its initializer draws nothing, so no key is taken from the agent's stream (plain SAC's keys stay put).
        bc_lambda = TrainState.create(apply_fn=multiplier.apply, tx=optax.adam(cfg.bc.lambda_lr),
                                      params=multiplier.init(jax.random.PRNGKey(0))["params"])
        bc_lambda = bc_lambda.replace(step=jnp.zeros((), jnp.int32))  # the int32 it becomes: one trace
    return bc, params, bc_lambda


# ----------------------------------------------------------------------------------------------- the data


@dataclass(frozen=True)
class BCData:
    """Training and validation transitions (float32 observations `(N, D)`, actions `(N, A)`), split by episode."""

    train_obs: np.ndarray
    train_actions: np.ndarray
    val_obs: np.ndarray
    val_actions: np.ndarray
    train_episodes: tuple[int, ...]
    """Indices (in the demo folder's order) of the episodes trained on."""
    val_episodes: tuple[int, ...]
    """Indices of the held-out episodes."""


def split_episodes(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A random split of `n` episodes: `round(val_fraction * n)` held out, at least one on each side.

    Split by episode, not by transition: neighbouring steps of one episode are near copies, and a held-out step
    whose neighbours were trained on measures memory, not generalization."""
    if n < 2:
        raise ValueError(f"episodes: got {n}, expected at least 2 (one is held out for the validation loss)")
    n_val = min(max(1, round(val_fraction * n)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def make_dataset(episodes: Sequence[tuple[np.ndarray, np.ndarray]], val_fraction: float, seed: int) -> BCData:
    """`episodes` = per episode `(observations (T, D), actions (T, A))`, the observation each action was taken
    at; split with `split_episodes`."""
    train, val = split_episodes(len(episodes), val_fraction, seed)

    def stack(idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
        return (np.concatenate([episodes[i][0] for i in idx]).astype(np.float32),
                np.concatenate([episodes[i][1] for i in idx]).astype(np.float32))

    (to, ta), (vo, va) = stack(train), stack(val)
    return BCData(to, ta, vo, va, tuple(train), tuple(val))


def observation_stats(obs: np.ndarray) -> dict[str, jax.Array]:
    """The standardization `{"mean", "std"}` of training observations `(N, D)` (as `Updater.observation_stats`)."""
    return {"mean": jnp.asarray(obs.mean(axis=0), jnp.float32), "std": jnp.asarray(obs.std(axis=0), jnp.float32)}


# ----------------------------------------------------------------------------------------------- training


LOG_STD_HEAD = "Dense_1"
"""`TanhGaussianActor`'s log-std head (its second top-level Dense; "Dense_0" is the mean's)."""


def _state_independent_std(tree: Params) -> Params:
    """`tree` (actor parameters or their gradients) with the log-std head's kernel zeroed.

    BC learns one std per action dimension (the head's bias), not one per state: with a state-dependent std,
    maximum likelihood on a few demonstrations let the std grow wherever the mean fitted badly (the gripper's
    open/close switch, a cube's yaw) instead of fitting the mean there, since a wide Gaussian scales the mean's
    gradient by 1/std^2; on pick-cube (20 demonstrations, 2 seeds) the state-dependent policy never closed its
    gripper and succeeded in 0 % of 20 episodes, the per-dimension one in 30 % and 55 % (docs/training.md)."""
    head = tree[LOG_STD_HEAD]
    return {**tree, LOG_STD_HEAD: {**head, "kernel": jnp.zeros_like(head["kernel"])}}


def bc_nll(apply_fn: Callable[..., Any], params: Params, obs_norm: Mapping[str, jax.Array], obs: jax.Array,
           actions: jax.Array, std_floor: float) -> jax.Array:
    """Mean negative log-likelihood `-log pi(a|s)` of demonstrated `actions` at raw observations `obs`."""
    mean, log_std = apply_fn({"params": params}, normalize_obs(obs, obs_norm))
    log_std = jnp.maximum(log_std, math.log(std_floor))
    return -jnp.mean(tanh_gaussian_log_prob(mean, log_std, jnp.clip(actions, -ACTION_CLIP, ACTION_CLIP)))


class BCLearner(struct.PyTreeNode):
    """The BC policy in training. Every method returns a new learner; the jitted ones compile once per shape."""

    actor: TrainState
    obs_norm: dict[str, jax.Array]
    rng: jax.Array
    std_floor: float = struct.field(pytree_node=False)
    batch_size: int = struct.field(pytree_node=False)

    @classmethod
    def create(cls, settings: BCSettings, obs_norm: Mapping[str, Any], action_dim: int) -> BCLearner:
        """A fresh policy for observations standardized by `obs_norm` = {"mean", "std"} (D,) and A-dim actions."""
        norm = {k: jnp.asarray(obs_norm[k], jnp.float32) for k in ("mean", "std")}
        rng, key = jax.random.split(jax.random.PRNGKey(settings.seed))
        actor_def = make_actor(action_dim, settings.hidden_dims)
        params = actor_def.init(key, jnp.zeros((1, norm["mean"].shape[0]), jnp.float32))["params"]
        params = _state_independent_std(params)
        actor = TrainState.create(apply_fn=actor_def.apply, params=params, tx=optax.adam(settings.lr))
        # `step` as the int32 array it becomes after one update, so `train` traces once.
        actor = actor.replace(step=jnp.zeros((), jnp.int32))
        return cls(actor=actor, obs_norm=norm, rng=rng, std_floor=float(settings.std_floor),
                   batch_size=int(settings.batch_size))

    @property
    def policy_params(self) -> Params:
        """`{"actor", "obs_norm"}`: the pytree the inference side restores (as `SACAgent.actor_params`)."""
        return {"actor": self.actor.params, "obs_norm": self.obs_norm}

    def _step(self, obs: jax.Array, actions: jax.Array) -> tuple[BCLearner, jax.Array]:
        rng, key = jax.random.split(self.rng)
        idx = jax.random.randint(key, (self.batch_size,), 0, obs.shape[0])

        def loss_fn(params: Params) -> jax.Array:
            return bc_nll(self.actor.apply_fn, params, self.obs_norm, obs[idx], actions[idx], self.std_floor)

        loss, grads = jax.value_and_grad(loss_fn)(self.actor.params)
        # The std head's kernel stays 0 (a zero gradient leaves Adam's step at 0): one std per action dimension.
        grads = _state_independent_std(grads)
        return self.replace(actor=self.actor.apply_gradients(grads=grads), rng=rng), loss

    @jax.jit
    def update(self, obs: jax.Array, actions: jax.Array) -> tuple[BCLearner, jax.Array]:
        """One maximum-likelihood step on a minibatch drawn (with replacement) from `obs` (N, D), `actions`
        (N, A); returns the new learner and the minibatch's loss."""
        return self._step(obs, actions)

    @partial(jax.jit, static_argnames="n")
    def train(self, obs: jax.Array, actions: jax.Array, n: int) -> tuple[BCLearner, jax.Array]:
        """`n` `update`s in one compiled `lax.scan`; returns the learner and the mean minibatch loss."""
        learner, losses = jax.lax.scan(lambda s, _: s._step(obs, actions), self, None, length=n)
        return learner, losses.mean()

    @jax.jit
    def nll(self, obs: jax.Array, actions: jax.Array) -> jax.Array:
        """Mean `-log pi(a|s)` over all of `obs`, `actions` (the validation loss)."""
        return bc_nll(self.actor.apply_fn, self.actor.params, self.obs_norm, obs, actions, self.std_floor)

    @jax.jit
    def mode_error(self, obs: jax.Array, actions: jax.Array) -> jax.Array:
        """Mean squared error of the deterministic action tanh(mean) against `actions` (a unit-free check)."""
        mean, _ = self.actor.apply_fn({"params": self.actor.params}, normalize_obs(obs, self.obs_norm))
        return jnp.mean((tanh_gaussian_mode(mean) - actions) ** 2)


@dataclass(frozen=True)
class FitResult:
    """What `fit` returns: the kept learner (lowest validation loss) and the curve that chose it."""

    learner: BCLearner
    best_step: int
    val_loss: float
    """Validation loss (mean -log pi per held-out transition) of the kept parameters."""
    train_loss: float
    """Loss of the kept parameters on all training transitions."""
    val_mode_mse: float
    """Mean squared error of the kept policy's deterministic action on the held-out transitions."""
    curve: tuple[tuple[int, float, float], ...]
    """(step, mean minibatch loss since the previous point, validation loss) every `eval_every` steps."""


def fit(data: BCData, settings: BCSettings,
        progress: Callable[[int, float, float], None] | None = None) -> FitResult:
    """Train a BC policy on `data.train_*` for up to `settings.steps` steps; every `eval_every` steps measure the
    validation loss (`progress(step, train_loss, val_loss)` is told) and keep the parameters with the lowest one
    (early stopping: with a few demonstrations the policy overfits long before a fixed step count would say)."""
    norm = observation_stats(data.train_obs)
    learner = BCLearner.create(settings, norm, data.train_actions.shape[-1])
    train_obs, train_act = jnp.asarray(data.train_obs), jnp.asarray(data.train_actions)
    val_obs, val_act = jnp.asarray(data.val_obs), jnp.asarray(data.val_actions)
    best, best_step, best_val = learner, 0, float(learner.nll(val_obs, val_act))
    curve = [(0, float(learner.nll(train_obs, train_act)), best_val)]
    step = 0
    while step < settings.steps:
        n = min(settings.eval_every, settings.steps - step)
        learner, loss = learner.train(train_obs, train_act, n)
        step += n
        val = float(learner.nll(val_obs, val_act))
        curve.append((step, float(loss), val))
        if progress is not None:
            progress(step, float(loss), val)
        if val < best_val:
            best, best_step, best_val = learner, step, val
    return FitResult(best, best_step, best_val, float(best.nll(train_obs, train_act)),
                     float(best.mode_error(val_obs, val_act)), tuple(curve))
