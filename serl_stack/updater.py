"""The learner's update machinery, without the process around it.

Owns: the replay buffer (on the host, the source of truth) and its device mirror, the demonstrations and how
they are mixed into every minibatch, the behaviour-cloned prior of `agent.bc.*` (loaded once from
`agent.bc.prior_run` and checked against this agent's observation keys and action size), the agent, the update
counter, the sampling randomness, which of these a checkpoint holds and what the actors are sent.
`serl_stack.learner.Learner` feeds it transitions from the transport and decides when to step; tests and benchmarks
drive it directly. (Under `steering.online` the learner drives `online_critic.OnlineCriticUpdater` instead: the
same surface over a Cal-QL critic.)

Sampling is a pure function of (seed, update index): update i samples with `fold_in(PRNGKey(seed), i)` inside
the jitted update (or, on the host path, from a numpy Generator whose state goes into the checkpoint), so a run
restored from a checkpoint continues bit for bit like one that was never stopped, given the same data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from serl_stack.agents.sharding import data_mesh, replicate, shard_agent
from serl_stack.config import Config, ConfigError, check_section
from serl_stack.data.demos import DemoFormatError, MixedSampler, replay_from_demos
from serl_stack.data.device_mix import DeviceMix
from serl_stack.data.device_replay import REPLAY_KEYS, DeviceReplay
from serl_stack.data.obs import IMAGE_PREFIX, image_keys_of, source_keys, to_vector, vector_dim, vector_keys
from serl_stack.data.replay import ReplayBuffer, to_agent_batch

Info = dict[str, Any]


def _chunks(n: int) -> list[int]:
    """`n` as a sum of powers of two, largest first: inserting in such chunks compiles at most log2(capacity)
    insert shapes however the transitions arrive."""
    return [1 << b for b in range(n.bit_length() - 1, -1, -1) if n >> b & 1]


class Updater:
    """Replay + demonstrations + agent for one learner. Build it from the first transition's observation."""

    def __init__(self, cfg: Config, example_obs: Mapping[str, Any], example_action: Any) -> None:
        """`example_obs` is a flat observation (`flatten_keys` form), `example_action` one action."""
        for section in (cfg.agent, cfg.replay, cfg.train):  # the sections it uses, as `load` checks them
            check_section(section)
        self.cfg = cfg
        self.keys = vector_keys(example_obs, cfg.agent.obs_keys)
        self.image_keys = image_keys_of(example_obs, cfg.agent.image_keys)
        self.image_shapes = {k[len(IMAGE_PREFIX):]: tuple(np.shape(example_obs[k])) for k in self.image_keys}
        # Image batches are sampled on the host for now (the device mirror holds flat vectors only).
        self.on_device = cfg.replay.on_device and not self.image_keys
        self.replay = ReplayBuffer.from_example(example_obs, np.asarray(example_action), cfg.replay)
        self.obs_dim = vector_dim(example_obs, self.keys)
        self.action_dim = int(np.asarray(example_action).size)
        self.agent: Any = None
        self.updates = 0
        # More than one device: replicated parameters, every minibatch split across the devices.
        self.mesh = data_mesh(cfg.agent.batch_size)
        self._base_key = jax.random.PRNGKey(cfg.train.seed)
        self._rng = np.random.default_rng(cfg.train.seed)
        self._pending: list[dict[str, np.ndarray]] = []
        self._device: DeviceReplay | None = None
        self._device_demos: DeviceReplay | None = None
        self.demos: ReplayBuffer | None = None
        self._mixed: MixedSampler | None = None
        if cfg.replay.demo_dir:
            self.demos = self._load_demos(cfg.replay.demo_dir)
            self._mixed = MixedSampler(self.replay, self.demos, cfg.replay.demo_fraction)
        self.prior: Any = self._load_prior() if cfg.agent.bc.enabled else None
        """`agents.bc.BCPrior` the actor is regularized toward (agent.bc.enabled), or None."""

    # ------------------------------------------------------------------------------------------- data
    def _load_demos(self, directory: str) -> ReplayBuffer:
        demos = replay_from_demos(directory)
        for key in source_keys(self.keys):
            if key not in demos.obs_spec or demos.obs_spec[key][0] != self.replay.obs_spec[key][0]:
                raise DemoFormatError(
                    f"replay.demo_dir={directory}: observation '{key}' has shape "
                    f"{demos.obs_spec.get(key, (None,))[0]}, the env gives {self.replay.obs_spec[key][0]}"
                )
        if demos.action_shape != self.replay.action_shape:
            raise DemoFormatError(
                f"replay.demo_dir={directory}: actions have shape {demos.action_shape}, "
                f"the env's are {self.replay.action_shape}"
            )
        return demos

    def _load_prior(self) -> Any:
        """The `serl train-bc` policy in `agent.bc.prior_run`, as the agent's prior; `ConfigError` naming the field
        when it is missing or sees other observation keys or another action size than this agent."""
        from pathlib import Path

        from serl_stack.agents.bc import BCPrior
        from serl_stack.errors import RunDirError
        from serl_stack.inference import load_bc_policy

        where = self.cfg.agent.bc.prior_run
        try:
            policy, _ = load_bc_policy(Path(where).expanduser())
        except RunDirError as e:
            raise ConfigError(f"agent.bc.prior_run: {e}") from e
        if policy.keys != self.keys:
            raise ConfigError(f"agent.bc.prior_run: {where} sees the observation keys {list(policy.keys)}, expected "
                              f"this agent's {list(self.keys)} (agent.obs_keys; train the prior with the same config)")
        if policy.action_dim != self.action_dim:
            raise ConfigError(f"agent.bc.prior_run: {where} acts in {policy.action_dim} dimensions, expected this "
                              f"env's {self.action_dim}")
        prior = BCPrior(policy.params, policy.hidden_dims, policy.std_floor)
        if self.cfg.agent.bc.target_entropy == "prior":
            from serl_stack.agents.bc import prior_entropy

            assert self.demos is not None  # config rule: target_entropy prior needs replay.demo_dir
            entropy = prior_entropy(prior, self.demos.vectors(self.keys), seed=self.cfg.train.seed)
            prior = dataclasses.replace(prior, entropy=entropy)
        return prior

    def insert(
        self,
        obs: Mapping[str, Any],
        action: Any,
        reward: float,
        next_obs: Mapping[str, Any],
        terminated: bool,
        truncated: bool,
    ) -> None:
        """Store one transition (flat observations); it reaches the device mirror before the next update."""
        self.replay.insert(obs, action, reward, next_obs, terminated, truncated)
        if self.on_device:
            self._pending.append(
                {
                    "observations": to_vector(obs, self.keys),
                    "actions": np.asarray(action, np.float32).reshape(-1),
                    "rewards": np.float32(reward),
                    "next_observations": to_vector(next_obs, self.keys),
                    "masks": np.float32(1.0 - float(terminated)),
                }
            )

    def _flush(self) -> None:
        """Copy the transitions inserted since the last update into the device mirror."""
        if self._device is None:
            self._device = self._placed(DeviceReplay.create(self.replay.capacity, self.obs_dim, self.action_dim))
            if self.demos is not None:
                demos = self._placed(DeviceReplay.create(len(self.demos), self.obs_dim, self.action_dim))
                self._device_demos = demos.insert_batch(to_agent_batch(self.demos.take(np.arange(len(self.demos))),
                                                                       self.keys))
        # Rows older than the newest `capacity` would be overwritten in the ring anyway.
        pending = self._pending[-self.replay.capacity:]
        self._pending = []
        start = 0
        for size in _chunks(len(pending)):
            part = pending[start:start + size]
            start += size
            self._device = self._device.insert_batch({k: np.stack([p[k] for p in part]) for k in REPLAY_KEYS})

    def agent_batch(self, n: int) -> dict[str, np.ndarray]:
        """`n` transitions from the host buffer as an agent batch (host sampling path)."""
        return to_agent_batch(self.replay.sample(n, self._rng), self.keys, self.image_keys)

    def _placed(self, tree: Any) -> Any:
        return tree if self.mesh is None else replicate(tree, self.mesh)

    # ------------------------------------------------------------------------------------------- agent
    def new_agent(self, obs_norm: Mapping[str, Any] | None = None) -> Any:
        from serl_stack.agents.sac import SACAgent  # deferred: building the agent compiles; keep import light

        return SACAgent.create(self.cfg.train.seed, self.obs_dim, self.action_dim, self.cfg.agent, obs_norm,
                               self.image_shapes or None, prior=self.prior)

    def init_agent(self) -> None:
        """Create the agent; its observation standardization comes from the data collected so far and the
        demonstrations (random warm-up actions rarely move objects: a cube's height would be constant in the
        warm-up alone, and a lifted cube would then read as ~50 standard deviations off)."""
        if len(self.replay) == 0:
            raise ValueError("init_agent: the replay buffer is empty; insert the warm-up transitions first")
        norm = self.observation_stats() if self.cfg.agent.normalize_observations else None
        self.agent = self._sharded(self.new_agent(norm))

    def observation_stats(self) -> dict[str, np.ndarray]:
        """Mean and std of every observation in the replay buffer and the demonstrations: a pure function of the
        data, so a run restored from a checkpoint recomputes exactly what an uninterrupted one had."""
        seen = [self.replay.vectors(self.keys)]
        if self.demos is not None:
            seen.append(self.demos.vectors(self.keys))
        data = np.concatenate(seen)
        return {"mean": data.mean(axis=0).astype(np.float32), "std": data.std(axis=0).astype(np.float32)}

    def refresh_observation_stats(self) -> None:
        """Standardize with the statistics of all data so far. A feature that barely moved in the warm-up (a
        cube's height before any grasp: std ~ 1.4 mm) would otherwise sit at the clip once the task moves it,
        and a 2 cm lift would read like a 10 cm one. The statistics live in the agent's `obs_norm`, so the actor
        gets them with the parameters they belong to (same broadcast, same version)."""
        stats = self.observation_stats()
        self.agent = self.agent.replace(obs_norm=self._placed({k: jnp.asarray(v) for k, v in stats.items()}))

    def _sharded(self, agent: Any) -> Any:
        return agent if self.mesh is None else shard_agent(agent, self.mesh)

    def step(self) -> Info:
        """One update (`agent.utd` critic steps, one actor and temperature step); returns device scalars."""
        a = self.cfg.agent
        if self.on_device:
            self._flush()
            assert self._device is not None
            source: DeviceReplay | DeviceMix = self._device
            if self._device_demos is not None:
                source = DeviceMix.create(self._device, self._device_demos, a.batch_size, self.cfg.replay.demo_fraction)
            key = jax.random.fold_in(self._base_key, self.updates)
            self.agent, info = self.agent.update_from_replay(source, key)
        else:
            self.agent, info = self.agent.update(self._host_batch())
        self.updates += 1
        every = a.obs_norm_refresh
        if a.normalize_observations and every and self.updates % every == 0:
            self.refresh_observation_stats()
        return info

    def _host_batch(self) -> dict[str, np.ndarray]:
        a = self.cfg.agent
        if self._mixed is None:
            return self.agent_batch(a.utd * a.batch_size)
        parts = [to_agent_batch(self._mixed.sample(a.batch_size, self._rng), self.keys, self.image_keys)
                 for _ in range(a.utd)]
        return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)

    def broadcast_params(self, with_critic: bool = False) -> Any:
        """What the actors get: the policy (`actor_params`), with the critic too (`value_params`) when they need it
        (conservative mixing's value bound)."""
        return self.agent.value_params if with_critic else self.agent.actor_params

    # ------------------------------------------------------------------------------------------- checkpoints
    def checkpoint_template(self) -> Any:
        """A pytree of the checkpoint's `state` item's structure, to restore into."""
        return self.new_agent()

    def checkpoint_items(self) -> tuple[Any, Any]:
        """(the `state` item: the whole agent, the `policy` item: what the actors act with)."""
        return self.agent, self.agent.actor_params

    def checkpoint_meta(self) -> dict[str, Any]:
        """What a checkpoint needs besides the agent pytree (optimizer states and the agent's RNG are in it)."""
        return {"updates": self.updates, "host_rng": self._rng.bit_generator.state}

    def restore(self, agent: Any, meta: Mapping[str, Any]) -> None:
        self.agent = self._sharded(agent)
        self.updates = int(meta["updates"])
        if "host_rng" in meta:
            self._rng.bit_generator.state = dict(meta["host_rng"])
