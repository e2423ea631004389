"""Soft actor-critic as an immutable value.

Owns: `SACAgent`, a `flax.struct.PyTreeNode` holding the actor, critic ensemble, target critics and temperature
train states plus an RNG key; its critic and actor steps run the networks, draw the random numbers and apply
the pure losses of `losses.py`. One jitted `update` runs `utd` critic steps (a `lax.scan` over minibatches,
target update after each) and then one actor and one temperature step on the last minibatch; with `utd = 1`
this is standard SAC. The TD target takes the min over the whole critic ensemble or, RLPD-style
(`critic_subset`), over a random subset drawn per critic step.
`update_from_replay` runs the same update on a batch sampled from a `DeviceReplay` inside the same jit.
With `agent.bc.enabled` (a `BCPrior` given to `create`), the actor loss gains losses.py's KL term toward the
behaviour-cloned prior, weighted by lambda (dual descent toward a KL target, one step after each actor step, or a
linear schedule over actor steps), optionally the TD target's value penalty, and the actor may start from the
prior's weights; with it off, no field, op or key of the update changes. Nothing here does I/O.

Batch format (all `jax`/`numpy` arrays, N = utd * batch_size): "observations" (N, D) float32, "actions"
(N, A) in [-1, 1], "rewards" (N,), "next_observations" (N, D), "masks" (N,) = 1 - terminated (a truncated
episode still bootstraps, so its mask is 1). A pixel agent (`AgentConfig.image_keys`) takes observations
`{"state": (N, D), "images": {camera: (N, H, W, C) uint8}}`: a conv encoder shared by actor and critic turns
them into features; the critic loss trains it, the actor sees its output through `stop_gradient` (DrQ-v2), and
both see DrQ random-shift augmented images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training.train_state import TrainState

from serl_stack.agents.bc import BCPrior, Regularizer, fold_obs_norm, make_regularizer, prior_log_prob
from serl_stack.agents.encoders import augment, example_obs, features, make_encoder
from serl_stack.agents.losses import (
    actor_loss,
    critic_loss,
    kl_regularizer,
    lambda_loss,
    q_scale,
    scheduled_lambda,
    td_target,
    temperature_loss,
)
from serl_stack.agents.networks import (
    Temperature,
    identity_obs_norm,
    make_actor,
    make_critic,
    tanh_gaussian_mode,
    tanh_gaussian_sample,
)
from serl_stack.config import AgentConfig, check_section

if TYPE_CHECKING:
    from serl_stack.data.device_replay import DeviceReplay

Batch = dict[str, jax.Array]
Info = dict[str, jax.Array]

BATCH_KEYS = ("observations", "actions", "rewards", "next_observations", "masks")


def _check_config(cfg: AgentConfig, obs_dim: int, action_dim: int) -> None:
    """The agent's own config through the one validation (`config.check_section`); the sizes that come from the
    env, not the config, are checked here."""
    for name, value in (("obs_dim", obs_dim), ("action_dim", action_dim)):
        if value < 1:
            raise ValueError(f"{name}: got {value!r}, expected >= 1")
    check_section(cfg)


def _target_entropy(cfg: AgentConfig, action_dim: int, prior: Any) -> float:
    """-target_entropy_scale * |A|, or under `agent.bc.target_entropy: prior` the prior's measured entropy."""
    if cfg.bc.enabled and cfg.bc.target_entropy == "prior":
        if prior is None or prior.entropy is None:
            raise ValueError("agent.bc.target_entropy: got 'prior', expected a BCPrior with its entropy measured "
                             "(agents.bc.prior_entropy; the learner measures it at the demonstrations' states)")
        return float(prior.entropy)
    return -float(cfg.target_entropy_scale) * action_dim


def _train_state(apply_fn: Any, params: Any, tx: optax.GradientTransformation) -> TrainState:
    # TrainState.create starts `step` as a Python int; after one step it is an int32 array, which would make
    # the jitted update trace a second time. Start it as the array it will become.
    return TrainState.create(apply_fn=apply_fn, params=params, tx=tx).replace(step=jnp.zeros((), jnp.int32))


def _check_batch(batch: Batch, utd: int) -> None:
    """Shape checks at trace time (shapes are static), so a malformed batch fails with a readable message."""
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"batch is missing {missing}; expected keys {list(BATCH_KEYS)}")
    n = batch["rewards"].shape[0]
    expected = {"observations": 2, "actions": 2, "rewards": 1, "next_observations": 2, "masks": 1}
    for key, ndim in expected.items():
        value = batch[key]
        if isinstance(value, dict):  # pixel observations: {"state": (N, D), "images": {camera: (N, H, W, C)}}
            leaves = [("state", value.get("state"), 2)]
            leaves += [(f"images/{c}", v, 4) for c, v in value.get("images", {}).items()]
        else:
            leaves = [("", value, ndim)]
        for sub, leaf, want in leaves:
            shape = getattr(leaf, "shape", None)
            if shape is None or len(shape) != want or shape[0] != n:
                name = f"batch['{key}']" + (f"['{sub}']" if sub else "")
                raise ValueError(f"{name}: got shape {shape}, expected {want} dims with leading size {n}")
    if n % utd:
        raise ValueError(f"batch size: got {n} transitions, expected a multiple of utd={utd}")


class SACAgent(struct.PyTreeNode):
    """SAC learner state. Every method returns a new agent; jitted methods compile once per batch shape."""

    actor: TrainState
    critic: TrainState
    target_critic: TrainState
    temp: TrainState
    rng: jax.Array
    obs_norm: dict[str, jax.Array]
    """Fixed observation standardization {"mean", "std"} (D,), applied inside every network call."""
    discount: float = struct.field(pytree_node=False)
    tau: float = struct.field(pytree_node=False)
    target_entropy: float = struct.field(pytree_node=False)
    utd: int = struct.field(pytree_node=False)
    batch_size: int = struct.field(pytree_node=False)
    """Minibatch size of one critic step; `update_from_replay` samples `utd * batch_size` transitions."""
    critic_subset: int = struct.field(pytree_node=False)
    """Size of the random critic subset whose min is the TD target; 0 or `num_critics` = the whole ensemble."""
    encoder: TrainState | None = None
    """Pixel agents: the conv encoder shared by actor and critic, trained by the critic loss; None: state only."""
    drq_pad: int = struct.field(pytree_node=False, default=0)
    """DrQ random-shift padding in pixels (pixel agents only; 0 = no augmentation)."""
    batch_sharding: Any = struct.field(pytree_node=False, default=None)
    """Data parallelism: a `jax.sharding.Sharding` for `(utd, batch, ...)` minibatches (batch axis split over
    devices, parameters replicated; see `agents/sharding.py`), or None on one device."""
    prior: Any = None
    """Demonstration regularization: the BC prior's `{"actor", "obs_norm"}`, held fixed (never trained); None: off."""
    bc_lambda: TrainState | None = None
    """`agent.bc.lambda_mode: dual`: the multiplier lambda (learned through its log); None otherwise."""
    bc: Regularizer | None = struct.field(pytree_node=False, default=None)
    """The regularizer's settings (None: plain SAC)."""

    @classmethod
    def create(
        cls,
        seed: int,
        obs_dim: int,
        action_dim: int,
        cfg: AgentConfig,
        obs_norm: dict[str, Any] | None = None,
        image_shapes: dict[str, tuple[int, ...]] | None = None,
        prior: BCPrior | None = None,
    ) -> SACAgent:
        """A freshly initialized agent for flat observations of size `obs_dim` and actions in [-1, 1]^A.

        `obs_norm` = {"mean": (D,), "std": (D,)} standardizes observations (typically statistics of the
        warm-up data); None leaves them unchanged. `image_shapes` = {camera: (H, W, C)} makes a pixel agent
        (with `cfg.image_keys` set): observations are then `{"state": (D,), "images": {camera: uint8}}`.
        `prior` is the behaviour-cloned policy `cfg.bc.enabled` regularizes toward (required then, unused else).
        """
        _check_config(cfg, obs_dim, action_dim)
        if obs_norm is None:
            norm = identity_obs_norm(obs_dim)
        else:
            norm = {k: jnp.asarray(obs_norm[k], jnp.float32) for k in ("mean", "std")}
            for k, v in norm.items():
                if v.shape != (obs_dim,) or not bool(jnp.all(jnp.isfinite(v))):
                    raise ValueError(f"obs_norm['{k}']: expected {obs_dim} finite values, got shape {v.shape}")
        rng, actor_key, critic_key, temp_key = jax.random.split(jax.random.PRNGKey(seed), 4)
        act = jnp.zeros((1, action_dim), jnp.float32)
        encoder = None
        encoder_def = make_encoder(cfg) if image_shapes else None
        if encoder_def is not None:
            # Same key discipline as the actor process's `make_policy_fn`: the encoder key comes off the actor's.
            actor_key, encoder_key = jax.random.split(actor_key)
            x = example_obs(obs_dim, image_shapes)
            encoder_params = encoder_def.init(encoder_key, x)["params"]
            encoder = _train_state(encoder_def.apply, encoder_params, optax.adam(cfg.critic_lr))
            obs = features(encoder_def.apply, encoder_params, x, norm)
        else:
            obs = jnp.zeros((1, obs_dim), jnp.float32)

        actor_def = make_actor(action_dim, cfg.hidden_dims)
        actor_params = actor_def.init(actor_key, obs)["params"]
        bc, prior_params, bc_lambda = None, None, None
        if cfg.bc.enabled:
            bc, prior_params, bc_lambda = make_regularizer(cfg, obs_dim, action_dim, prior)
            if cfg.bc.init_actor_from_bc:
                # Same function as the prior's (mean and, above its floor, std) under this agent's standardization.
                actor_params = fold_obs_norm(prior_params["actor"], prior_params["obs_norm"], norm)
        actor = _train_state(actor_def.apply, actor_params, optax.adam(cfg.actor_lr))
        critic_def = make_critic(cfg)
        critic_params = critic_def.init(critic_key, obs, act)["params"]
        critic = _train_state(critic_def.apply, critic_params, optax.adam(cfg.critic_lr))
        # The target is only ever Polyak-averaged, never stepped by gradients: a no-op optimizer keeps it a
        # TrainState (with apply_fn) without allocating Adam moments.
        target_critic = _train_state(critic_def.apply, critic_params, optax.set_to_zero())
        temp_def = Temperature(cfg.init_temperature)
        temp = _train_state(temp_def.apply, temp_def.init(temp_key)["params"], optax.adam(cfg.temp_lr))
        return cls(
            actor=actor,
            critic=critic,
            target_critic=target_critic,
            temp=temp,
            rng=rng,
            obs_norm=norm,
            discount=float(cfg.discount),
            tau=float(cfg.tau),
            target_entropy=_target_entropy(cfg, action_dim, prior),
            utd=int(cfg.utd),
            batch_size=int(cfg.batch_size),
            critic_subset=int(cfg.critic_subset),
            encoder=encoder,
            drq_pad=int(cfg.drq_pad) if encoder is not None else 0,
            prior=prior_params,
            bc_lambda=bc_lambda,
            bc=bc,
        )

    # ------------------------------------------------------------------------------------------- inference

    @property
    def actor_params(self) -> Any:
        """`{"actor": ..., "obs_norm": ...}` (+ `"encoder"` for a pixel agent): exactly the pytree
        `policy.make_policy_fn`'s `policy_fn` takes."""
        params = {"actor": self.actor.params, "obs_norm": self.obs_norm}
        if self.encoder is not None:
            params["encoder"] = self.encoder.params
        return params

    @property
    def value_params(self) -> Any:
        """`actor_params` plus `"critic"`: the pytree `policy.make_value_fn`'s `q_values_fn` takes (what the
        learner broadcasts when conservative mixing needs the critic in the actor process)."""
        return {**self.actor_params, "critic": self.critic.params}

    def _features(self, observations: Any, encoder_params: Any = None) -> jax.Array:
        """The actor's and critic's input: standardized state (+ encoded images; default: current encoder)."""
        if self.encoder is None:
            return features(None, None, observations, self.obs_norm)
        params = self.encoder.params if encoder_params is None else encoder_params
        return features(self.encoder.apply_fn, params, observations, self.obs_norm)

    @jax.jit
    def sample_actions(self, observations: Any, key: jax.Array) -> jax.Array:
        """A stochastic action in [-1, 1] for one observation or a batch."""
        mean, log_std = self.actor.apply_fn({"params": self.actor.params}, self._features(observations))
        return tanh_gaussian_sample(mean, log_std, key)[0]

    @jax.jit
    def eval_actions(self, observations: Any) -> jax.Array:
        """The deterministic action tanh(mean) for one observation or a batch."""
        mean, _ = self.actor.apply_fn({"params": self.actor.params}, self._features(observations))
        return tanh_gaussian_mode(mean)

    # ------------------------------------------------------------------------------------------- learning

    def _temperature(self) -> jax.Array:
        return self.temp.apply_fn({"params": self.temp.params})

    def _bc_weight(self) -> jax.Array:
        """lambda now: the dual multiplier, or the schedule at this actor step (a traced value either way)."""
        assert self.bc is not None
        if self.bc_lambda is not None:
            return self.bc_lambda.apply_fn({"params": self.bc_lambda.params})
        return scheduled_lambda(self.actor.step, self.bc.cfg.lambda_init, self.bc.cfg.schedule_updates)

    def _prior_log_prob(self, observations: jax.Array, actions: jax.Array) -> jax.Array:
        """log pi_BC(a|s) at raw state observations (the prior standardizes them with its own statistics)."""
        assert self.bc is not None
        return prior_log_prob(self.prior, observations, actions, self.bc.prior_hidden_dims, self.bc.std_floor)

    def _critic_step(self, batch: Batch) -> tuple[SACAgent, Info]:
        num_critics = jax.tree.leaves(self.target_critic.params)[0].shape[0]
        use_subset = 0 < self.critic_subset < num_critics
        # The key stream depends on the (static) subset setting only, so the clipped double-Q path draws
        # exactly the keys it always did.
        if use_subset:
            rng, key, subset_key = jax.random.split(self.rng, 3)
        else:
            rng, key = jax.random.split(self.rng)
        observations, next_observations = batch["observations"], batch["next_observations"]
        if self.encoder is not None:
            rng, obs_key, next_key = jax.random.split(rng, 3)
            observations = augment(obs_key, observations, self.drq_pad)
            next_observations = augment(next_key, next_observations, self.drq_pad)
        # The target side sees the current encoder's features as constants (DrQ-v2: no target encoder).
        next_x = jax.lax.stop_gradient(self._features(next_observations))
        mean, log_std = self.actor.apply_fn({"params": self.actor.params}, next_x)
        next_actions, next_log_probs = tanh_gaussian_sample(mean, log_std, key)
        next_qs = self.target_critic.apply_fn({"params": self.target_critic.params}, next_x, next_actions)
        # RLPD: a fresh random subset of Z critics per step (see `losses.td_target` for why).
        subset = (
            jax.random.choice(subset_key, num_critics, (self.critic_subset,), replace=False) if use_subset else None
        )
        penalty = None
        if self.bc is not None and self.bc.cfg.critic_penalty:
            # BRAC's value penalty, lambda * KL(pi || pi_BC) at s', in reward units: times (1 - discount) * q_scale
            # with the normalization, so summed over the horizon it weighs as the actor's KL term does.
            scale = (1.0 - self.discount) * q_scale(next_qs) if self.bc.cfg.q_normalize else 1.0
            kl_next = next_log_probs - self._prior_log_prob(next_observations, next_actions)
            penalty = self._bc_weight() * scale * kl_next
        target_q = td_target(
            batch["rewards"], batch["masks"], next_qs, next_log_probs, self._temperature(), self.discount, subset,
            penalty,
        )

        def loss_fn(params: Any, encoder_params: Any) -> tuple[jax.Array, Info]:
            x = self._features(observations, encoder_params)
            return critic_loss(self.critic.apply_fn({"params": params}, x, batch["actions"]), target_q)

        encoder = self.encoder
        if encoder is None:
            grads, info = jax.grad(loss_fn, has_aux=True)(self.critic.params, None)
        else:
            (grads, encoder_grads), info = jax.grad(loss_fn, argnums=(0, 1), has_aux=True)(
                self.critic.params, encoder.params
            )
            encoder = encoder.apply_gradients(grads=encoder_grads)
        critic = self.critic.apply_gradients(grads=grads)
        target_params = optax.incremental_update(critic.params, self.target_critic.params, self.tau)
        target_critic = self.target_critic.replace(params=target_params)
        if penalty is not None:
            info = {**info, "bc_penalty": jax.lax.stop_gradient(penalty).mean()}
        return self.replace(critic=critic, target_critic=target_critic, encoder=encoder, rng=rng), info

    def _actor_step(self, batch: Batch) -> tuple[SACAgent, Info]:
        """One actor step, then one temperature step toward the target entropy (both on `batch`)."""
        rng, key = jax.random.split(self.rng)
        temperature = self._temperature()
        observations = batch["observations"]
        if self.encoder is not None:
            rng, aug_key = jax.random.split(rng)
            observations = augment(aug_key, observations, self.drq_pad)
        # The actor trains on the encoder's features but never into the encoder (DrQ-v2).
        x = jax.lax.stop_gradient(self._features(observations))
        lam = self._bc_weight() if self.bc is not None else None

        def actor_loss_fn(params: Any) -> tuple[jax.Array, Info]:
            mean, log_std = self.actor.apply_fn({"params": params}, x)
            actions, log_probs = tanh_gaussian_sample(mean, log_std, key)
            qs = self.critic.apply_fn({"params": self.critic.params}, x, actions)
            loss, info = actor_loss(log_probs, qs, temperature)
            if self.bc is None:
                return loss, info
            # The same samples score the KL to the prior: no key is drawn that plain SAC would not draw.
            scale = q_scale(qs) if self.bc.cfg.q_normalize else jnp.float32(1.0)
            reg, reg_info = kl_regularizer(log_probs, self._prior_log_prob(observations, actions), lam, scale)
            return loss + reg, {**info, **reg_info, "bc_q_scale": scale}

        grads, actor_info = jax.grad(actor_loss_fn, has_aux=True)(self.actor.params)
        actor = self.actor.apply_gradients(grads=grads)

        def temp_loss_fn(params: Any) -> tuple[jax.Array, Info]:
            # The entropy the actor had before this step's update, measured by the actor loss.
            return temperature_loss(self.temp.apply_fn({"params": params}), actor_info["entropy"], self.target_entropy)

        grads, temp_info = jax.grad(temp_loss_fn, has_aux=True)(self.temp.params)
        temp = self.temp.apply_gradients(grads=grads)
        info = {**actor_info, **temp_info, "temperature": temperature}
        if self.bc is None:
            return self.replace(actor=actor, temp=temp, rng=rng), info
        bc_lambda = self.bc_lambda
        if bc_lambda is not None:
            def lambda_loss_fn(params: Any) -> tuple[jax.Array, Info]:
                # Dual descent on KL <= target with the KL the actor had before this step's update.
                lam_now = bc_lambda.apply_fn({"params": params})
                return lambda_loss(lam_now, actor_info["bc_kl"], self.bc.kl_target)

            grads, lambda_info = jax.grad(lambda_loss_fn, has_aux=True)(bc_lambda.params)
            bc_lambda = bc_lambda.apply_gradients(grads=grads)
            info = {**info, **lambda_info}
        info = {**info, "bc_lambda": lam}
        return self.replace(actor=actor, temp=temp, rng=rng, bc_lambda=bc_lambda), info

    @jax.jit
    def critic_step(self, batch: Batch) -> tuple[SACAgent, Info]:
        """One critic step and target update on a single minibatch (what `update` scans over)."""
        return self._critic_step(batch)

    @jax.jit
    def actor_step(self, batch: Batch) -> tuple[SACAgent, Info]:
        """One actor step and one temperature step on a single minibatch (what `update` ends with)."""
        return self._actor_step(batch)

    @jax.jit
    def update(self, batch: Batch) -> tuple[SACAgent, Info]:
        """`utd` critic steps over `batch` split into `utd` minibatches, then one actor + temperature step on
        the last minibatch. Returns the new agent and scalar diagnostics (critic ones averaged over the scan)."""
        return self._update(batch)

    @jax.jit
    def update_from_replay(self, replay: DeviceReplay, key: jax.Array) -> tuple[SACAgent, Info]:
        """`update` on `utd * batch_size` transitions drawn uniformly from a device-resident `replay` with `key`,
        sampling inside the same compiled call (no host-to-device batch copy per step).

        Equals `update(replay.sample(key, utd * batch_size))`. `replay` must hold at least one transition.
        """
        return self._update(replay.sample(key, self.utd * self.batch_size))

    def _update(self, batch: Batch) -> tuple[SACAgent, Info]:
        _check_batch(batch, self.utd)
        minibatches = jax.tree.map(lambda x: x.reshape((self.utd, -1) + x.shape[1:]), batch)
        if self.batch_sharding is not None:
            # Each device gets a slice of every minibatch; XLA all-reduces the gradients (replicated params).
            minibatches = jax.lax.with_sharding_constraint(minibatches, self.batch_sharding)
        if self.encoder is None:
            agent, critic_info = jax.lax.scan(lambda a, mb: a._critic_step(mb), self, minibatches)
        else:
            # Pixel agents (UTD of a few) trace the critic steps one after another: XLA:CPU ran the conv
            # encoder's steps inside a scan, even an unrolled one, ~10x slower (0.8 vs 10 updates/s measured).
            agent, infos = self, []
            for i in range(self.utd):
                agent, info = agent._critic_step(jax.tree.map(lambda x, i=i: x[i], minibatches))
                infos.append(info)
            critic_info = jax.tree.map(lambda *xs: jnp.stack(xs), *infos)
        agent, actor_info = agent._actor_step(jax.tree.map(lambda x: x[-1], minibatches))
        return agent, {**jax.tree.map(jnp.mean, critic_info), **actor_info}
