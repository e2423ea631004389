"""The learner's update machinery under `steering.online`: V-GPS's Cal-QL critic fine-tuned on the actors' data.

Owns: `OnlineCriticUpdater`, what `serl_stack.learner.Learner` drives instead of `updater.Updater` when
`steering.online` is on. It holds the Cal-QL state (`agents.calql.CalQLState`), started from the latest checkpoint of
`steering.critic_run` (a `serl train-critic` folder) with that run's own Cal-QL settings (`critic.json`); the base
policy of `steering.base` (a `serl train-bc` folder), sampled inside the jitted update through its
`vector_sampler()`; the offline data (`replay.demo_dir`, labelled by `data.labels.episode_transitions` as `serl
train-critic` labels its episodes); and the online data: each actor's transitions, held until its episode ends and
then labelled by `data.labels.label_episode` (V-GPS: 0 and terminal on the last `num_success_steps` steps of a
successful episode, -1 before; the env reward the mixers, the actor and the transition log see is not changed).

One update (`step`) = one `calql.update_steered` on a minibatch of `batch_size` rows, `replay.demo_fraction` of them
from the demonstrations and the rest from the labelled online transitions (all demonstrations until the first
episode has ended), with the steered policy's backup: `steering.target_k` (0: `steering.k`) base samples at s', the
best by the target critics.
Sampling is a pure function of (`train.seed`, update index) inside the jit, and the online data are a pure function
of the transition log (an episode cut short by an actor's restart is dropped: it has no end to label), so a run
restored from a checkpoint continues as one that was never stopped. Checkpoints hold `serl train-critic`'s layout
(`train_critic.checkpoint_item`: the target critic and normalization where `steering.guided.load_critic` reads
them, the whole state under `calql`); the actors get `{"critic", "obs_norm"}` (the target critic), what
`CriticScorer.load` takes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from serl_stack.agents import calql
from serl_stack.config import Config, ConfigError, check_section
from serl_stack.data.device_mix import demo_rows
from serl_stack.data.labels import episode_transitions, label_episode
from serl_stack.data.obs import to_vector, vector_dim, vector_keys

Info = dict[str, Any]
ROW_KEYS = ("observations", "actions", "rewards", "masks", "next_observations", "mc_returns")
"""What one labelled transition holds (`calql.BATCH_KEYS`)."""


def _chunks(n: int) -> list[int]:
    """`n` as a sum of powers of two, largest first: an episode inserted in such chunks compiles at most
    log2(capacity) insert shapes whatever the episode lengths."""
    return [1 << b for b in range(n.bit_length() - 1, -1, -1) if n >> b & 1]


class LabelledRing(struct.PyTreeNode):
    """A fixed-capacity ring of labelled transitions (`ROW_KEYS`, float32) in device memory, sampled in the jit."""

    data: dict[str, jax.Array]
    size: jax.Array
    """int32 scalar: valid rows, min(inserted, capacity)."""
    cursor: jax.Array
    """int32 scalar: the row the next insert writes first."""

    @classmethod
    def create(cls, capacity: int, obs_dim: int, action_dim: int) -> LabelledRing:
        shapes = {"observations": (obs_dim,), "actions": (action_dim,), "rewards": (), "masks": (),
                  "next_observations": (obs_dim,), "mc_returns": ()}
        data = {k: jnp.zeros((capacity, *shapes[k]), jnp.float32) for k in ROW_KEYS}
        return cls(data=data, size=jnp.zeros((), jnp.int32), cursor=jnp.zeros((), jnp.int32))

    @property
    def capacity(self) -> int:
        return int(self.data["rewards"].shape[0])

    def insert(self, rows: Mapping[str, np.ndarray]) -> LabelledRing:
        """A ring with `rows` (n of each `ROW_KEYS`) appended, oldest overwritten; donates this ring's arrays."""
        n, ring = len(rows["rewards"]), self
        rows = {k: np.asarray(rows[k], np.float32)[-self.capacity:] for k in ROW_KEYS}
        start = 0
        for size in _chunks(min(n, self.capacity)):
            ring = _insert(ring, {k: v[start:start + size] for k, v in rows.items()})
            start += size
        return ring


def _insert_impl(ring: LabelledRing, rows: dict[str, jax.Array]) -> LabelledRing:
    capacity, n = ring.data["rewards"].shape[0], rows["rewards"].shape[0]
    idx = (ring.cursor + jnp.arange(n, dtype=jnp.int32)) % capacity
    return ring.replace(data={k: v.at[idx].set(rows[k]) for k, v in ring.data.items()},
                        size=jnp.minimum(ring.size + n, capacity).astype(jnp.int32),
                        cursor=((ring.cursor + n) % capacity).astype(jnp.int32))


_insert = jax.jit(_insert_impl, donate_argnums=(0,))  # in place: no capacity-sized copy per episode


@partial(jax.jit, static_argnames=("sampler", "k", "batch_size", "num_offline"))
def _online_step(state: calql.CalQLState, online: LabelledRing, offline: dict[str, jax.Array], base_params: Any,
                 key: jax.Array, sampler: calql.Sampler, k: int, batch_size: int,
                 num_offline: int) -> tuple[calql.CalQLState, Info]:
    """Sample the mixed minibatch and run the steered Cal-QL update, in one jit."""
    offline_key, online_key, fill_key, update_key = jax.random.split(key, 4)
    offline_size = offline["rewards"].shape[0]
    num_online = batch_size - num_offline

    def rows(data: dict[str, jax.Array], idx: jax.Array) -> dict[str, jax.Array]:
        return {name: data[name][idx] for name in ROW_KEYS}

    demo = rows(offline, jax.random.randint(offline_key, (num_offline,), 0, offline_size))
    own = rows(online.data, jax.random.randint(online_key, (num_online,), 0, jnp.maximum(online.size, 1)))
    # Until the first episode has ended there is nothing labelled online: those rows come from the demonstrations.
    fill = rows(offline, jax.random.randint(fill_key, (num_online,), 0, offline_size))
    own = jax.tree.map(lambda a, b: jnp.where(online.size > 0, a, b), own, fill)
    batch = {name: jnp.concatenate([demo[name], own[name]]) for name in ROW_KEYS}
    state, info = calql.update_steered(state, batch, update_key, sampler, base_params, k)
    return state, {**info, "online_transitions": online.size}


@dataclass
class _Episode:
    """One actor's transitions of the episode in progress (vectors in the critic's key order)."""

    episode: int
    observations: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    next_observations: list[np.ndarray] = field(default_factory=list)
    terminated: list[bool] = field(default_factory=list)


def _calql_config(summary: Mapping[str, Any]) -> calql.CalQLConfig:
    """The Cal-QL settings a `serl train-critic` run recorded in its `critic.json`."""
    known = {f.name for f in dataclasses.fields(calql.CalQLConfig)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in summary["calql"].items() if k in known}
    return calql.CalQLConfig(**values)


def _load_base(cfg: Config) -> Any:
    """The base policy of `steering.base` as the learner samples it (`vector_sampler`, `obs_keys`, `action_dim`).
    A new local base joins here and in `config.ONLINE_BASES`."""
    from serl_stack.errors import RunDirError
    from serl_stack.inference import load_bc_policy

    s = cfg.steering
    if s.base not in ("bc", "generalist"):
        raise ConfigError(f"steering.base: got {s.base!r}, expected bc or generalist while steering.online is true")
    try:
        if s.base == "generalist":
            from serl_stack.steering.generalist import load_generalist

            return load_generalist(Path(s.base_dir).expanduser(), cfg.env.id)[0]
        return load_bc_policy(Path(s.base_dir).expanduser())[0]
    except RunDirError as e:
        raise ConfigError(f"steering.base_dir: {e}") from e


class OnlineCriticUpdater:
    """Labelled online data + demonstrations + the Cal-QL critic for one learner. Build it from the first
    transition's observation (flat, `flatten_keys` form) and action."""

    def __init__(self, cfg: Config, example_obs: Mapping[str, Any], example_action: Any) -> None:
        for section in (cfg.steering, cfg.replay, cfg.train):
            check_section(section)
        from serl_stack.steering.acting import read_critic_summary

        s = cfg.steering
        if not (s.enabled and s.online):
            raise ConfigError("steering.online: got false, expected true to build the online critic's updater")
        self.cfg = cfg
        self.target_k = s.target_k or s.k
        """Base samples at s' in the TD target."""
        self._example_obs = example_obs
        summary = read_critic_summary(s.critic_run)
        self.calql_cfg = _calql_config(summary)
        try:
            self.keys = vector_keys(example_obs, tuple(summary["obs_keys"]))
        except KeyError as e:
            raise ConfigError(f"steering.critic_run: {s.critic_run} reads {e.args[0]}") from e
        self.obs_dim = vector_dim(example_obs, self.keys)
        self.action_dim = int(np.asarray(example_action).size)
        for name, mine, theirs in (("obs_dim", self.obs_dim, summary["obs_dim"]),
                                   ("action_dim", self.action_dim, summary["action_dim"])):
            if int(theirs) != mine:
                raise ConfigError(f"steering.critic_run: {s.critic_run} was trained with {name} {theirs}, expected "
                                  f"this env's {mine}")
        self.base = _load_base(cfg)
        if tuple(self.base.obs_keys) != self.keys or self.base.action_dim != self.action_dim:
            raise ConfigError(f"steering.base_dir: {s.base_dir} sees the observation keys {list(self.base.obs_keys)} "
                              f"and acts in {self.base.action_dim} dimensions, expected the critic's "
                              f"{list(self.keys)} and {self.action_dim} (steering.critic_run {s.critic_run})")
        self._base_params, self._sampler = self.base.vector_sampler()
        self.initial, self.critic_step = self._restore_critic(Path(s.critic_run).expanduser())
        self.offline, self.num_offline_transitions = self._offline_data(cfg.replay.demo_dir)
        self.num_offline = demo_rows(cfg.replay.demo_fraction, self.calql_cfg.batch_size)
        self.online = LabelledRing.create(cfg.replay.capacity, self.obs_dim, self.action_dim)
        self.episodes_labelled = 0
        self.episodes_dropped = 0
        """Episodes an actor started again before their end (a restarted actor): nothing to label them with."""
        self._open: dict[str, _Episode] = {}
        self._base_key = jax.random.PRNGKey(cfg.train.seed)
        self.agent: calql.CalQLState | None = None
        self.updates = 0

    # ------------------------------------------------------------------------------------------- loading
    def _restore_critic(self, run: Path) -> tuple[calql.CalQLState, int]:
        """The Cal-QL state of `run`'s latest checkpoint (its `calql` item) and that step."""
        from serl_stack.checkpoint import Checkpointer
        from serl_stack.rundir import CHECKPOINTS, checkpoint_steps
        from serl_stack.train_critic import checkpoint_item

        steps = checkpoint_steps(run)
        if not steps:
            raise ConfigError(f"steering.critic_run: {run} has no checkpoint in {run / CHECKPOINTS}")
        norm = {"mean": np.zeros(self.obs_dim, np.float32), "std": np.ones(self.obs_dim, np.float32)}
        template = checkpoint_item(calql.init(0, self.obs_dim, self.action_dim, self.calql_cfg, norm))
        checkpoints = Checkpointer(run.absolute() / CHECKPOINTS)
        try:
            item, _ = checkpoints.restore(template, steps[-1])
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"steering.critic_run: checkpoint {steps[-1]} in {run / CHECKPOINTS} does not hold the "
                              f"Cal-QL state its critic.json describes: {e}") from e
        finally:
            checkpoints.close()
        return item["calql"], steps[-1]

    def _offline_data(self, directory: str) -> tuple[dict[str, jax.Array], int]:
        """The demonstrations of `replay.demo_dir` with the critic's labels, in device memory."""
        from serl_stack.data.demos import DemoFormatError, load_episodes, load_metadata, spec_mismatch

        try:
            meta = load_metadata(directory)
            problem = spec_mismatch(meta, self._example_obs, self.keys, self.action_dim, self.cfg.env.id)
            if problem is not None:
                raise DemoFormatError(problem)
            data = episode_transitions(load_episodes(directory), self.keys, self.calql_cfg.discount,
                                       self.calql_cfg.num_success_steps)
        except DemoFormatError as e:
            raise ConfigError(f"replay.demo_dir: {directory}: {e}") from e
        return {k: jnp.asarray(data[k], jnp.float32) for k in ROW_KEYS}, len(data["rewards"])

    # ------------------------------------------------------------------------------------------- data
    def insert(self, obs: Mapping[str, Any], action: Any, next_obs: Mapping[str, Any], terminated: bool,
               truncated: bool, actor_id: str, episode: int, success: bool) -> None:
        """One transition of `actor_id`'s `episode` (flat observations); at the episode's end its transitions are
        labelled (`success`: the env's success flag at the last step) and join the online data."""
        open_ = self._open.get(actor_id)
        if open_ is not None and open_.episode != episode:
            self.episodes_dropped += 1  # restarted before the end: no outcome to label it with
            open_ = None
        if open_ is None:
            open_ = self._open[actor_id] = _Episode(episode)
        open_.observations.append(to_vector(obs, self.keys))
        open_.actions.append(np.asarray(action, np.float32).reshape(-1))
        open_.next_observations.append(to_vector(next_obs, self.keys))
        open_.terminated.append(bool(terminated))
        if terminated or truncated:
            del self._open[actor_id]
            self.online = self.online.insert(self.label(open_, success))
            self.episodes_labelled += 1

    def label(self, episode: _Episode, success: bool) -> dict[str, np.ndarray]:
        """An ended episode's rows with V-GPS labels (`data.labels.label_episode`, the critic's discount and
        success window)."""
        labels = label_episode(len(episode.actions), success, episode.terminated, self.calql_cfg.discount,
                               self.calql_cfg.num_success_steps)
        return {"observations": np.stack(episode.observations), "actions": np.stack(episode.actions),
                "next_observations": np.stack(episode.next_observations), **labels}

    # ------------------------------------------------------------------------------------------- agent
    def init_agent(self) -> None:
        """Start from the critic run's state (its normalization stays: the actors' scorer standardizes with it)."""
        self.agent = self.initial

    def step(self) -> Info:
        """One steered Cal-QL update; returns device scalars."""
        assert self.agent is not None, "init_agent() first"
        key = jax.random.fold_in(self._base_key, self.updates)
        self.agent, info = _online_step(self.agent, self.online, self.offline, self._base_params, key,
                                        self._sampler, self.target_k, self.calql_cfg.batch_size,
                                        self.num_offline)
        self.updates += 1
        return info

    def broadcast_params(self, with_critic: bool = True) -> Any:
        """What the actors' `CriticScorer.load` takes: the target critic (V-GPS scores with it) and normalization."""
        del with_critic  # the critic is all an online-steered actor needs
        assert self.agent is not None
        return {"critic": self.agent.target_critic.params, "obs_norm": self.agent.obs_norm}

    # ------------------------------------------------------------------------------------------- checkpoints
    def checkpoint_template(self) -> Any:
        from serl_stack.train_critic import checkpoint_item

        return checkpoint_item(self.initial)

    def checkpoint_items(self) -> tuple[Any, Any]:
        """(the `state` item: `serl train-critic`'s layout, the `policy` item: none, the learner trains no policy)."""
        from serl_stack.train_critic import checkpoint_item

        assert self.agent is not None
        return checkpoint_item(self.agent), None

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"updates": self.updates, "critic_run": str(self.cfg.steering.critic_run),
                "critic_step": self.critic_step}

    def restore(self, item: Any, meta: Mapping[str, Any]) -> None:
        self.agent = item["calql"]
        self.updates = int(meta["updates"])
