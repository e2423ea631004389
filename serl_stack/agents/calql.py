"""Cal-QL: the offline critic that value-guided steering (V-GPS) reranks a base policy's actions with.

Owns: `CalQLConfig` (the papers' hyperparameters as defaults, each with its source), `CalQLState` (an immutable
`flax.struct.PyTreeNode`), `init`, the jitted pure `update(state, batch, key) -> (state, metrics)` and
`update_steered` (the same with a base policy's samples at s' drawn inside the jit: online fine-tuning's backup),
`q_values`, and `train_critic` (a fixed budget of updates on device-resident transitions, progress through a
callback).
The critic's labels (V-GPS reward labelling, Monte-Carlo returns) are `data/labels.py`'s; the Cal-QL losses are
pure functions in `agents/losses.py` (`max_backup_target`, `calql_regularizer`, `calql_critic_loss`). No I/O. The
actor and temperature are SAC's (`losses.actor_loss`, `losses.temperature_loss`): Cal-QL needs a policy
only to draw the actions its regularizer pushes down; steering never acts with it.

Parameter layout: `CalQLState.value_params` is `{"actor": ..., "obs_norm": {"mean", "std"}, "critic": ...}`, the
pytree `SACAgent.value_params` and `policy.make_value_fn` use for a state agent; the critic is
`networks.make_critic(cfg.agent_config())` applied to `encoders.features(None, None, obs, obs_norm)`, so any code
that scores actions with a SAC critic scores them with this one. State observations only (a flat `(B, D)` vector):
every Q evaluation here runs 1 + 3 * `cql_n_actions` actions per observation, and pixel critics would need the
conv encoder threaded through all of them.

Batch (N transitions): "observations" (N, D), "actions" (N, A) in [-1, 1], "rewards" (N,) (the V-GPS labels),
"masks" (N,) = 0 where the critic must not bootstrap, "next_observations" (N, D), "mc_returns" (N,); optionally
"next_actions" (N, K, A): candidate actions at s' (e.g. K base-policy samples) whose best replaces the actor's
samples in the TD target, the steered policy's backup that online fine-tuning uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training.train_state import TrainState

from serl_stack.agents.losses import (
    actor_loss,
    calql_critic_loss,
    calql_regularizer,
    max_backup_target,
    temperature_loss,
)
from serl_stack.agents.networks import (
    Temperature,
    identity_obs_norm,
    make_actor,
    make_critic,
    normalize_obs,
    tanh_gaussian_sample,
)
from serl_stack.config import AgentConfig

Batch = Mapping[str, jax.Array]
Info = dict[str, jax.Array]
BATCH_KEYS = ("observations", "actions", "rewards", "masks", "next_observations", "mc_returns")

# ------------------------------------------------------------------------------------------- the agent


@dataclass(frozen=True)
class CalQLConfig:
    """Cal-QL critic hyperparameters. Defaults are V-GPS's (nakamotoo/V-GPS: `jaxrl_m` CQL agent defaults and
    `launch_calql.sh`) unless noted; Cal-QL (Nakamoto et al. 2023, nakamotoo/Cal-QL) where V-GPS says nothing."""

    hidden_dims: tuple[int, ...] = (256, 256)
    """Actor and critic MLP widths (V-GPS: 256x256)."""
    num_critics: int = 2
    """Critic ensemble size; the TD target takes the min over all of them (V-GPS: 2, no subsampling)."""
    critic_layer_norm: bool = False
    """LayerNorm in the critic MLPs (V-GPS: off)."""
    actor_lr: float = 1e-4
    """Actor Adam learning rate (V-GPS and Cal-QL: 1e-4)."""
    critic_lr: float = 3e-4
    """Critic Adam learning rate (V-GPS and Cal-QL: 3e-4)."""
    temp_lr: float = 3e-4
    """Temperature Adam learning rate (V-GPS: 3e-4)."""
    warmup_steps: int = 2000
    """Linear warm-up of the actor and critic learning rates from 0 over this many updates (V-GPS: 2000; 0 = off)."""
    init_temperature: float = 1.0
    """Initial SAC temperature, auto-tuned (V-GPS: 1.0; Cal-QL: log alpha 0)."""
    target_entropy_scale: float = 1.0
    """Target entropy = -scale * |A| (V-GPS: -|A|)."""
    discount: float = 0.98
    """Discount of the TD target and of the MC returns (V-GPS: 0.98)."""
    tau: float = 5e-3
    """Polyak rate of the target critics (V-GPS and Cal-QL: 5e-3)."""
    batch_size: int = 256
    """Transitions per update (V-GPS: 256)."""
    cql_alpha: float = 5.0
    """Weight of the CQL regularizer (V-GPS: 5.0, `launch_calql.sh`; Cal-QL: 5 AntMaze, 1 Adroit)."""
    cql_n_actions: int = 4
    """Actions per source in the regularizer: this many uniform, from pi at s and from pi at s' (V-GPS: 4;
    Cal-QL: 10); also the samples of the max backup."""
    cql_temp: float = 1.0
    """Temperature of the regularizer's logsumexp (V-GPS and Cal-QL: 1.0)."""
    max_target_backup: bool = True
    """TD target from the best of `cql_n_actions` policy samples at s' (V-GPS and Cal-QL: on)."""
    backup_entropy: bool = False
    """Subtract the entropy term in the TD target (V-GPS and Cal-QL: off)."""
    calibrate: bool = True
    """Cal-QL's bound of the policy actions' Q by the MC return (V-GPS `use_calql=True`); off = plain CQL."""
    num_success_steps: int = 3
    """Last steps of a successful episode labelled 0 and terminal (V-GPS: `num_final_repeat=3`)."""
    # The run's length is not part of the critic: excluded from equality (and the jit key), so a state can be
    # continued with another budget without compiling again.
    num_updates: int = field(default=20_000, compare=False)
    """Update budget of `train_critic` (ours: CPU-sized; V-GPS trains 1M updates on accelerators)."""
    log_every: int = field(default=500, compare=False)
    """Updates per jitted chunk of `train_critic`; the progress callback runs after each chunk."""

    def __post_init__(self) -> None:
        # A tuple whatever was given: the config is hashed as a static part of the jitted update.
        object.__setattr__(self, "hidden_dims", tuple(self.hidden_dims))
        positive = ("actor_lr", "critic_lr", "temp_lr", "init_temperature", "cql_temp")
        at_least_one = ("num_critics", "batch_size", "cql_n_actions", "num_success_steps", "num_updates", "log_every")
        checks = [(n, getattr(self, n) > 0 and math.isfinite(getattr(self, n)), "> 0") for n in positive]
        checks += [(n, getattr(self, n) >= 1, ">= 1") for n in at_least_one]
        checks += [("hidden_dims", len(self.hidden_dims) >= 1 and min(self.hidden_dims) >= 1, ">= 1 layer of >= 1"),
                   ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
                   ("discount", 0.0 <= self.discount < 1.0, "in [0, 1) (the failure value is -1 / (1 - discount))"),
                   ("tau", 0.0 < self.tau <= 1.0, "in (0, 1]"),
                   ("cql_alpha", self.cql_alpha >= 0 and math.isfinite(self.cql_alpha), ">= 0"),
                   ("target_entropy_scale", math.isfinite(self.target_entropy_scale), "a finite number")]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"calql.{name}: got {getattr(self, name)!r}, expected {expected}")

    def agent_config(self) -> AgentConfig:
        """The `AgentConfig` whose `networks.make_actor` / `make_critic` build this critic's networks (what a
        scorer passes to `policy.make_value_fn` or `make_critic` to apply `CalQLState.value_params`)."""
        return AgentConfig(hidden_dims=tuple(self.hidden_dims), num_critics=self.num_critics,
                           critic_layer_norm=self.critic_layer_norm)


class CalQLState(struct.PyTreeNode):
    """Cal-QL learner state: every function here returns a new one. The config is static (part of the jit key)."""

    actor: TrainState
    critic: TrainState
    target_critic: TrainState
    temp: TrainState
    obs_norm: dict[str, jax.Array]
    """Fixed standardization {"mean", "std"} (D,) applied inside every network call (as `SACAgent.obs_norm`)."""
    cfg: CalQLConfig = struct.field(pytree_node=False)

    @property
    def value_params(self) -> Any:
        """`{"actor", "obs_norm", "critic"}` with the target critic, which V-GPS scores actions with (a Polyak
        average, steadier than the online critic); the layout of `SACAgent.value_params` (module docstring)."""
        return {"actor": self.actor.params, "obs_norm": self.obs_norm, "critic": self.target_critic.params}


# A TrainState's `apply_fn` and `tx` are static: they are part of jit's cache key and compare by identity. Built
# fresh for every state, they would make each new state (a second seed, a second task) compile `update` again;
# built once per setting here, every state of one config shares one compiled update.


@cache
def _optimizer(lr: float, warmup_steps: int) -> optax.GradientTransformation:
    """Adam with a linear warm-up from 0 (a 0-step warm-up is constant: optax's schedule would stay at 0);
    lr 0 = the no-op optimizer of a Polyak-averaged target."""
    if lr == 0:
        return optax.set_to_zero()
    return optax.adam(optax.linear_schedule(0.0, lr, warmup_steps) if warmup_steps else lr)


@cache
def _networks(cfg: CalQLConfig, action_dim: int) -> tuple[Any, Any, Any]:
    """(actor, critic ensemble, temperature) modules: the SAC agent's, built by `networks.make_actor/make_critic`."""
    return make_actor(action_dim, cfg.hidden_dims), make_critic(cfg.agent_config()), Temperature(cfg.init_temperature)


def _train_state(module: Any, params: Any, tx: optax.GradientTransformation) -> TrainState:
    # `step` as the int32 array it becomes after one update, so the jitted update traces once (as in sac.py).
    return TrainState.create(apply_fn=module.apply, params=params, tx=tx).replace(step=jnp.zeros((), jnp.int32))


def init(
    seed: int, obs_dim: int, action_dim: int, cfg: CalQLConfig | None = None, obs_norm: Mapping[str, Any] | None = None
) -> CalQLState:
    """A fresh Cal-QL state for `(obs_dim,)` observations and actions in [-1, 1]^action_dim; `obs_norm`
    {"mean", "std"} (obs_dim,) standardizes observations (None: unchanged)."""
    cfg = CalQLConfig() if cfg is None else cfg
    for name, value in (("obs_dim", obs_dim), ("action_dim", action_dim)):
        if value < 1:
            raise ValueError(f"{name}: got {value!r}, expected >= 1")
    norm = identity_obs_norm(obs_dim) if obs_norm is None else {
        k: jnp.asarray(obs_norm[k], jnp.float32) for k in ("mean", "std")}
    for k, v in norm.items():
        if v.shape != (obs_dim,) or not bool(jnp.all(jnp.isfinite(v))):
            raise ValueError(f"obs_norm['{k}']: got shape {v.shape}, expected {obs_dim} finite values")
    _, actor_key, critic_key, temp_key = jax.random.split(jax.random.PRNGKey(seed), 4)
    obs, act = jnp.zeros((1, obs_dim), jnp.float32), jnp.zeros((1, action_dim), jnp.float32)
    actor_def, critic_def, temp_def = _networks(cfg, action_dim)
    critic_params = critic_def.init(critic_key, obs, act)["params"]
    return CalQLState(
        actor=_train_state(actor_def, actor_def.init(actor_key, obs)["params"],
                           _optimizer(cfg.actor_lr, cfg.warmup_steps)),
        critic=_train_state(critic_def, critic_params, _optimizer(cfg.critic_lr, cfg.warmup_steps)),
        target_critic=_train_state(critic_def, critic_params, _optimizer(0.0, 0)),  # Polyak-averaged only
        temp=_train_state(temp_def, temp_def.init(temp_key)["params"], _optimizer(cfg.temp_lr, 0)),
        obs_norm=norm,
        cfg=cfg,
    )


def _check_batch(batch: Batch) -> None:
    """Shape checks at trace time, so a malformed batch fails with a message naming the key."""
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"batch is missing {missing}; expected keys {list(BATCH_KEYS)}")
    n = batch["rewards"].shape[0] if batch["rewards"].ndim == 1 else -1
    want = {"observations": 2, "actions": 2, "rewards": 1, "masks": 1, "next_observations": 2, "mc_returns": 1}
    if "next_actions" in batch:
        want["next_actions"] = 3
    for key, ndim in want.items():
        shape = getattr(batch[key], "shape", None)
        if shape is None or len(shape) != ndim or shape[0] != n:
            raise ValueError(f"batch['{key}']: got shape {shape}, expected {ndim} dims with leading size {n}")


def _policy_samples(state: CalQLState, x: jax.Array, key: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """k actions per row of standardized `x` (B, D) from the current actor: (B, k, A) and log pi (B, k)."""
    mean, log_std = state.actor.apply_fn({"params": state.actor.params}, x)
    shape = (mean.shape[0], k, mean.shape[-1])
    return tanh_gaussian_sample(jnp.broadcast_to(mean[:, None], shape), jnp.broadcast_to(log_std[:, None], shape), key)


def _at(x: jax.Array, k: int) -> jax.Array:
    """(B, D) -> (B, k, D): one observation row per candidate action."""
    return jnp.broadcast_to(x[:, None], (x.shape[0], k, x.shape[-1]))


def _update(state: CalQLState, batch: Batch, key: jax.Array) -> tuple[CalQLState, Info]:
    _check_batch(batch)
    cfg, n = state.cfg, state.cfg.cql_n_actions
    target_key, random_key, pi_key, next_pi_key, actor_key = jax.random.split(key, 5)
    x = normalize_obs(batch["observations"], state.obs_norm)
    next_x = normalize_obs(batch["next_observations"], state.obs_norm)
    actions = batch["actions"]
    b, a_dim = actions.shape
    temperature = state.temp.apply_fn({"params": state.temp.params})

    if "next_actions" in batch:  # the steered policy's backup: the best of the given candidates at s'
        next_actions, next_log_probs = batch["next_actions"], None
    else:
        next_actions, next_log_probs = _policy_samples(state, next_x, target_key, n if cfg.max_target_backup else 1)
    k = next_actions.shape[1]
    next_qs = state.target_critic.apply_fn({"params": state.target_critic.params}, _at(next_x, k), next_actions)
    target_q = max_backup_target(batch["rewards"], batch["masks"], next_qs, cfg.discount,
                                 next_log_probs if cfg.backup_entropy else None, temperature)

    # The regularizer's actions are constants for the critic (drawn outside its loss): one critic call scores the
    # dataset action and all of them (uniform | pi at s | pi at s', each evaluated at s, as CQL does).
    random_actions = jax.random.uniform(random_key, (b, n, a_dim), minval=-1.0, maxval=1.0)
    pi_actions, pi_log_probs = _policy_samples(state, x, pi_key, n)
    next_pi_actions, next_pi_log_probs = _policy_samples(state, next_x, next_pi_key, n)
    all_actions = jnp.concatenate([actions[:, None], random_actions, pi_actions, next_pi_actions], axis=1)
    policy_log_probs = jnp.concatenate([pi_log_probs, next_pi_log_probs], axis=1)
    mc = batch["mc_returns"] if cfg.calibrate else None

    def critic_loss_fn(params: Any) -> tuple[jax.Array, Info]:
        q_all = state.critic.apply_fn({"params": params}, _at(x, 1 + 3 * n), all_actions)  # (E, B, 1 + 3n)
        gaps, reg_info = calql_regularizer(q_all[..., 0], q_all[..., 1:1 + n], q_all[..., 1 + n:], policy_log_probs,
                                           a_dim, mc, cfg.cql_temp)
        loss, info = calql_critic_loss(q_all[..., 0], target_q, gaps, cfg.cql_alpha)
        return loss, {**info, **reg_info}

    grads, critic_info = jax.grad(critic_loss_fn, has_aux=True)(state.critic.params)
    critic = state.critic.apply_gradients(grads=grads)
    target_params = optax.incremental_update(critic.params, state.target_critic.params, cfg.tau)
    target_critic = state.target_critic.replace(params=target_params)

    def actor_loss_fn(params: Any) -> tuple[jax.Array, Info]:
        mean, log_std = state.actor.apply_fn({"params": params}, x)
        sampled, log_probs = tanh_gaussian_sample(mean, log_std, actor_key)
        return actor_loss(log_probs, critic.apply_fn({"params": critic.params}, x, sampled), temperature)

    grads, actor_info = jax.grad(actor_loss_fn, has_aux=True)(state.actor.params)
    actor = state.actor.apply_gradients(grads=grads)
    target_entropy = -cfg.target_entropy_scale * a_dim

    def temp_loss_fn(params: Any) -> tuple[jax.Array, Info]:
        return temperature_loss(state.temp.apply_fn({"params": params}), actor_info["entropy"], target_entropy)

    grads, temp_info = jax.grad(temp_loss_fn, has_aux=True)(state.temp.params)
    temp = state.temp.apply_gradients(grads=grads)
    new_state = state.replace(actor=actor, critic=critic, target_critic=target_critic, temp=temp)
    return new_state, {**critic_info, **actor_info, **temp_info, "temperature": temperature}


update = jax.jit(_update)
"""`update(state, batch, key) -> (state, metrics)`: one critic step (TD + alpha * Cal-QL regularizer, then the
Polyak target update), one actor step and one temperature step, all on `batch`; a pure function of its inputs."""

Sampler = Callable[[Any, jax.Array, jax.Array, int], jax.Array]
"""`fn(params, observations (B, D), key, k) -> (B, k, A)`: k actions of a base policy at each raw observation
(`inference.BCPolicy.vector_sampler`)."""


def _update_steered(state: CalQLState, batch: Batch, key: jax.Array, sampler: Sampler, sampler_params: Any,
                    k: int) -> tuple[CalQLState, Info]:
    sample_key, update_key = jax.random.split(key)
    next_actions = sampler(sampler_params, batch["next_observations"], sample_key, k)
    return _update(state, {**batch, "next_actions": next_actions}, update_key)


update_steered = jax.jit(_update_steered, static_argnames=("sampler", "k"))
"""`update_steered(state, batch, key, sampler, sampler_params, k) -> (state, metrics)`: `update` with the steered
policy's backup (V-GPS online): `k` base actions drawn at each s' by `sampler(sampler_params, next_observations,
key, k)`, and the TD target `r + discount * mask * max_j min_i Q'_i(s', a_j)`, the best candidate by the target
critics (the critic the actors steer with), valued by them. `sampler` is static: pass the same function object
every call (it is part of the jit key)."""


@partial(jax.jit, static_argnames="target")
def q_values(state: CalQLState, observations: jax.Array, actions: jax.Array, target: bool = True) -> jax.Array:
    """(E, *batch) Q-values of raw `observations` (*batch, D) and `actions` (*batch, A); the target critic (the one
    `value_params` carries) unless `target` is False."""
    critic = state.target_critic if target else state.critic
    return critic.apply_fn({"params": critic.params}, normalize_obs(observations, state.obs_norm), actions)


# ------------------------------------------------------------------------------------------- training


@partial(jax.jit, static_argnames="n")
def _train_chunk(state: CalQLState, data: Batch, key: jax.Array, n: int) -> tuple[CalQLState, Info]:
    """n updates, each on `batch_size` transitions drawn uniformly from device-resident `data`, in one scan
    (per-update dispatch from Python would dominate a small critic's step on CPU); metrics averaged."""
    size = data["rewards"].shape[0]

    def step(s: CalQLState, i: jax.Array) -> tuple[CalQLState, Info]:
        sample_key, update_key = jax.random.split(jax.random.fold_in(key, i))
        idx = jax.random.randint(sample_key, (s.cfg.batch_size,), 0, size)
        return _update(s, {k: v[idx] for k, v in data.items()}, update_key)

    state, infos = jax.lax.scan(step, state, jnp.arange(n))
    return state, jax.tree.map(jnp.mean, infos)


def train_critic(
    transitions: Mapping[str, Any],
    cfg: CalQLConfig | None = None,
    *,
    seed: int = 0,
    state: CalQLState | None = None,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> CalQLState:
    """`cfg.num_updates` Cal-QL updates on `transitions` (the `BATCH_KEYS` arrays, e.g. `episode_transitions` of
    demonstrations and base-policy rollouts); returns the trained state.

    A fresh state (seed `seed`) standardizes observations with the transitions' mean and std; pass `state` to
    continue one for another `num_updates` (`cfg` may then differ from its config only in the budget fields).
    Minibatches are drawn with replacement inside the jit, with keys from `fold_in(PRNGKey(seed), update count at
    the chunk's start)`: a run is a pure function of (transitions, cfg, seed), and a continued one draws what an
    uninterrupted one would have.
    `callback(updates_done, metrics)` runs after every `cfg.log_every` updates with the chunk's mean metrics.
    """
    if state is not None and cfg is not None and cfg != state.cfg:
        raise ValueError(f"cfg: got {cfg}, expected None or the config of the state being continued ({state.cfg})")
    run = cfg if cfg is not None else state.cfg if state is not None else CalQLConfig()
    data = {k: jnp.asarray(transitions[k], jnp.float32) for k in BATCH_KEYS if k in transitions}
    _check_batch(data)
    for k, v in data.items():
        if not bool(jnp.all(jnp.isfinite(v))):
            raise ValueError(f"transitions['{k}']: got non-finite values (NaN or inf), expected finite numbers")
    if state is None:
        obs = np.asarray(transitions["observations"], np.float32)
        norm = {"mean": obs.mean(axis=0), "std": obs.std(axis=0)}
        state = init(seed, obs.shape[1], data["actions"].shape[1], run, norm)
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)  # not the init key's stream
    start, done = int(state.critic.step), 0
    while done < run.num_updates:
        n = min(run.log_every, run.num_updates - done)
        state, info = _train_chunk(state, data, jax.random.fold_in(key, start + done), n)
        done += n
        if callback is not None:
            callback(done, {k: float(v) for k, v in info.items()})
    return state
