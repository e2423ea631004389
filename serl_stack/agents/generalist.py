"""Training the generalist stand-in: a multi-task Gaussian-mixture policy over action chunks, by maximum likelihood.

Owns: the training data (`ChunkSet`: every step of every episode as (observation, the next H actions), padded to the
largest task's sizes, with a mask of the entries that exist; `make_dataset`, split by episode within each task),
the training as an immutable value (`GeneralistLearner`: a jitted `train` that scans `n` steps over task-balanced
minibatches drawn inside the jit, a jitted per-task `nll`), and the fitting loop (`fit`: the validation loss on
held-out episodes every `eval_every` steps; it keeps the last parameters, or with `select="best_val"` stops early,
keeping the lowest validation loss's). Pure JAX, optax and numpy: the demonstrations are recorded and the
checkpoint written by `serl train-generalist` (train_generalist.py). The model itself (network, density, sampler)
is the inference side's, `steering/generalist.py`, so an actor acts with it without importing optax; this module
adds the loss and the optimizer.

The loss is the mean negative log-likelihood of the demonstrated chunk, `-log sum_k w_k prod_{h,a} p_k(...)` under
clipped Gaussians (`chunk_log_prob`: an action entry on +-1, the scripts' clip and the gripper's command, is scored
by the mass beyond the bound), over the entries that exist: a chunk that runs past its episode's end is scored on
the steps it has (no padding is invented), and a 6-D task's 7th action entry is never scored. Each minibatch holds
every task equally often (a task is drawn uniformly, then one of its transitions): reach's failed episodes are 100
steps long, its successful ones 15, and drawing transitions uniformly would train mostly on whichever task has the
longest episodes. Adam on gradients clipped to global norm 1 (a mixture's log-likelihood has rare large gradients
where a component's std is small).

Why the last parameters and not the lowest validation loss (behaviour cloning's rule): on this data the held-out
likelihood stops predicting closed-loop success after a few hundred steps. Reach alone (200 episodes, noise 0.1,
15 % degraded, H = 4; 20 evaluation episodes each): at 300 / 1,000 / 3,000 / 4,500 / 6,000 steps the validation
loss was -8.5 / -4.5 / +10.8 / +15.4 / +24.4 nats per chunk (its minimum at 200-300) while the sampled policy
succeeded in 0 / 10 / 45 / 55 / 50 % and its mode in 0 / 60 / 75 / 85 / 85 %; the median per-row loss, a 90 %
trimmed mean, the mode's squared error, a std floor of 0.1 or 0.2 and observation-noise augmentation all moved
the same way. Maximum likelihood first fits the broad shape of the data and then sharpens the components on the
training episodes; the sharpening costs held-out likelihood (other goals, other noise) and is what makes the
samples act. The curve is still measured and written (`curve`, and the lowest point's step), and `select="best_val"`
gives early stopping for data where the two agree.

Defaults (`GeneralistSettings`): 256x256, 5 components, H = 2, batch 256, Adam 1e-3 decayed to 0 along a cosine,
std floor 0.05, 3,000 steps, 20 % of each task's episodes held out; 20-30 s on 2 shared CPU cores for the three
tasks. Tried on the command's data (30 sampled evaluation episodes per task, one training seed, so +-15 points
of noise): 512x512, three layers of 256, batch 512 or 768, 3 components, 4,500-6,000 steps and H = 1 moved no
task's sampled success beyond that noise; the cosine decay lifted reach from 27 / 13 % to 33 / 37 % on two
seeds. What moved it is in train_generalist.py (data size, noise, the kinds of degradation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training.train_state import TrainState

from serl_stack.agents.bc import split_episodes
from serl_stack.steering.generalist import GeneralistSpec, chunk_log_prob, init_params, make_net, mixture

Params = Any
SELECTIONS = ("last", "best_val")
"""`GeneralistSettings.select`: the parameters `fit` keeps."""
Episodes = Sequence[tuple[np.ndarray, np.ndarray]]
"""Per episode `(observations (T, D), actions (T, A))`: the observation vector each action was taken at."""


@dataclass(frozen=True)
class GeneralistSettings:
    """How `serl train-generalist` trains the model (its network, chunk and optimization)."""

    hidden_dims: tuple[int, ...] = (256, 256)
    """MLP widths."""
    components: int = 5
    """Gaussians in the mixture over a chunk."""
    chunk: int = 2
    """H: actions per chunk (executed open-loop, H steps per draw)."""
    steps: int = 3_000
    """Gradient steps."""
    select: str = "last"
    """Which parameters `fit` keeps: "last" (after `steps`), or "best_val" (the lowest validation loss: early
    stopping). See the module docstring for why "last"."""
    lr: float = 1e-3
    """Adam learning rate (the initial one with `cosine`)."""
    cosine: bool = True
    """Decay the learning rate to 0 over `steps` along a cosine."""
    batch_size: int = 256
    """Transitions per step, drawn task-balanced, with replacement, from the training episodes."""
    std_floor: float = 0.05
    """Lower bound of every component's std (pre-tanh)."""
    val_fraction: float = 0.2
    """Share of each task's episodes held out for the validation loss (at least one episode each side)."""
    eval_every: int = 250
    """Steps between validation losses."""
    seed: int = 0
    """Network initialization, the split and the minibatches."""

    def __post_init__(self) -> None:
        checks = (("hidden_dims", len(self.hidden_dims) >= 1 and min(self.hidden_dims) >= 1, ">= 1 layer of >= 1"),
                  ("components", self.components >= 1, ">= 1"), ("chunk", self.chunk >= 1, ">= 1"),
                  ("steps", self.steps >= 1, ">= 1"), ("lr", self.lr > 0 and math.isfinite(self.lr), "> 0"),
                  ("batch_size", self.batch_size >= 1, ">= 1"),
                  ("std_floor", self.std_floor > 0 and math.isfinite(self.std_floor), "> 0"),
                  ("val_fraction", 0 < self.val_fraction < 1, "in (0, 1)"),
                  ("eval_every", self.eval_every >= 1, ">= 1"),
                  ("select", self.select in SELECTIONS, f"one of {list(SELECTIONS)}"))
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name}: got {getattr(self, name)!r}, expected {expected}")


# ----------------------------------------------------------------------------------------------- the data


class ChunkSet(struct.PyTreeNode):
    """Transitions of several tasks, grouped by task in task-id order (what the jitted steps take)."""

    obs: Any
    """(N, D_max) float32: raw observation vectors, zero after each task's own entries."""
    task: Any
    """(N,) int32: task ids."""
    chunks: Any
    """(N, H, A_max) float32: the action taken and the H - 1 after it, clipped to [-1, 1], 0 where missing."""
    mask: Any
    """(N, H, A_max) float32: 1 where `chunks` holds a real action entry (inside the episode, inside the task's A)."""
    starts: Any
    """(T,) int32: each task's first row."""
    counts: Any
    """(T,) int32: each task's number of rows."""

    def __len__(self) -> int:
        return int(np.shape(self.task)[0])


@dataclass(frozen=True)
class GeneralistData:
    """Training and validation transitions of every task, split by episode within each task."""

    tasks: tuple[str, ...]
    obs_dims: tuple[int, ...]
    action_dims: tuple[int, ...]
    chunk: int
    train: ChunkSet
    val: ChunkSet
    train_episodes: dict[str, tuple[int, ...]]
    """Per task, the indices (in its episode list) trained on."""
    val_episodes: dict[str, tuple[int, ...]]
    """Per task, the indices held out."""


def episode_chunks(obs: np.ndarray, actions: np.ndarray, chunk: int, max_obs_dim: int,
                   max_action_dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One episode's rows: `(obs (T, D_max), chunks (T, H, A_max), mask (T, H, A_max))`; row t holds actions t ..
    t + H - 1 where the episode has them."""
    t_len, a_dim = actions.shape
    if obs.shape[0] != t_len:
        raise ValueError(f"observations: got {obs.shape[0]} rows, expected one per action ({t_len})")
    padded = np.zeros((t_len + chunk - 1, max_action_dim), np.float32)
    padded[:t_len, :a_dim] = np.clip(actions, -1.0, 1.0)
    steps = np.arange(t_len)[:, None] + np.arange(chunk)[None]  # (T, H)
    chunks = padded[steps]
    mask = np.broadcast_to(((steps < t_len)[..., None] & (np.arange(max_action_dim) < a_dim)), chunks.shape)
    obs_p = np.zeros((t_len, max_obs_dim), np.float32)
    obs_p[:, : obs.shape[1]] = obs
    return obs_p, chunks, mask.astype(np.float32)


def _chunk_set(per_task: list[list[tuple[np.ndarray, np.ndarray]]], chunk: int, max_obs_dim: int,
               max_action_dim: int) -> ChunkSet:
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    counts = []
    for task, episodes in enumerate(per_task):
        rows = [episode_chunks(o, a, chunk, max_obs_dim, max_action_dim) for o, a in episodes]
        n = sum(len(r[0]) for r in rows)
        counts.append(n)
        parts.extend((o, c, m, np.full(len(o), task, np.int32)) for o, c, m in rows)
    counts_arr = np.asarray(counts, np.int32)
    return ChunkSet(obs=np.concatenate([p[0] for p in parts]), chunks=np.concatenate([p[1] for p in parts]),
                    mask=np.concatenate([p[2] for p in parts]), task=np.concatenate([p[3] for p in parts]),
                    starts=np.concatenate([[0], np.cumsum(counts_arr)[:-1]]).astype(np.int32), counts=counts_arr)


def make_dataset(episodes: Mapping[str, Episodes], chunk: int, val_fraction: float, seed: int) -> GeneralistData:
    """Per task (in `episodes`' order, the task ids), its episodes split with `bc.split_episodes` (by episode: a
    held-out step whose neighbours were trained on measures memory), then every step as a chunk row."""
    tasks = tuple(episodes)
    if not tasks:
        raise ValueError("episodes: got no tasks, expected at least one")
    obs_dims, action_dims = [], []
    for task in tasks:
        eps = episodes[task]
        dims = {(int(o.shape[1]), int(a.shape[1])) for o, a in eps}
        if len(dims) != 1:
            raise ValueError(f"episodes[{task!r}]: observation/action sizes {sorted(dims)}, expected one pair per task")
        (d, a), = dims
        obs_dims.append(d)
        action_dims.append(a)
    max_d, max_a = max(obs_dims), max(action_dims)
    train_idx, val_idx, train, val = {}, {}, [], []
    for i, task in enumerate(tasks):
        tr, va = split_episodes(len(episodes[task]), val_fraction, seed + i)
        train_idx[task], val_idx[task] = tuple(tr), tuple(va)
        train.append([episodes[task][j] for j in tr])
        val.append([episodes[task][j] for j in va])
    return GeneralistData(tasks, tuple(obs_dims), tuple(action_dims), int(chunk),
                          _chunk_set(train, chunk, max_d, max_a), _chunk_set(val, chunk, max_d, max_a),
                          train_idx, val_idx)


def observation_stats(data: ChunkSet, obs_dims: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-task standardization `{"mean", "std"}` (T, D_max) of the rows of `data` (on padding: mean 0, std 1)."""
    obs, task = np.asarray(data.obs), np.asarray(data.task)
    mean = np.zeros((len(obs_dims), obs.shape[1]), np.float32)
    std = np.ones((len(obs_dims), obs.shape[1]), np.float32)
    for t, d in enumerate(obs_dims):
        rows = obs[task == t, :d]
        mean[t, :d], std[t, :d] = rows.mean(axis=0), rows.std(axis=0)
    return {"mean": mean, "std": std}


# ----------------------------------------------------------------------------------------------- training


def mixture_nll(spec: GeneralistSpec, params: Params, batch: ChunkSet) -> jax.Array:
    """(N,) `-log p(chunk | s, task)` of each row of `batch` under the model `params` = {"net", "obs_norm"}."""
    log_w, mean, log_std = mixture(spec, params, jnp.asarray(batch.obs), jnp.asarray(batch.task))
    return -chunk_log_prob(log_w, mean, log_std, jnp.asarray(batch.chunks), jnp.asarray(batch.mask))


class GeneralistLearner(struct.PyTreeNode):
    """The model in training. Every method returns a new learner; the jitted ones compile once per shape."""

    state: TrainState
    obs_norm: dict[str, jax.Array]
    rng: jax.Array
    spec: GeneralistSpec = struct.field(pytree_node=False)
    batch_size: int = struct.field(pytree_node=False)

    @classmethod
    def create(cls, spec: GeneralistSpec, obs_norm: Mapping[str, Any], settings: GeneralistSettings
               ) -> GeneralistLearner:
        """A fresh model for observations standardized by `obs_norm` = {"mean", "std"} (T, D_max)."""
        norm = {k: jnp.asarray(obs_norm[k], jnp.float32) for k in ("mean", "std")}
        wanted = (spec.num_tasks, spec.max_obs_dim)
        if norm["mean"].shape != wanted or norm["std"].shape != wanted:
            raise ValueError(f"obs_norm: got shapes {norm['mean'].shape} / {norm['std'].shape}, expected {wanted}")
        rng, key = jax.random.split(jax.random.PRNGKey(settings.seed))
        params = init_params(spec, key)["net"]
        lr = optax.cosine_decay_schedule(settings.lr, settings.steps) if settings.cosine else settings.lr
        tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))
        state = TrainState.create(apply_fn=make_net(spec).apply, params=params, tx=tx)
        state = state.replace(step=jnp.zeros((), jnp.int32))  # the int32 it becomes after one update: one trace
        return cls(state=state, obs_norm=norm, rng=rng, spec=spec, batch_size=int(settings.batch_size))

    @property
    def policy_params(self) -> Params:
        """`{"net", "obs_norm"}`: the pytree the inference side restores (`steering.generalist.load_generalist`)."""
        return {"net": self.state.params, "obs_norm": self.obs_norm}

    def _batch(self, data: ChunkSet, key: jax.Array) -> ChunkSet:
        """A task-balanced minibatch: a task drawn uniformly per row, then one of its rows."""
        task_key, row_key = jax.random.split(key)
        task = jax.random.randint(task_key, (self.batch_size,), 0, self.spec.num_tasks)
        idx = data.starts[task] + jax.random.randint(row_key, (self.batch_size,), 0, data.counts[task])
        return jax.tree.map(lambda a: a[idx], data.replace(starts=None, counts=None))

    def _step(self, data: ChunkSet) -> tuple[GeneralistLearner, jax.Array]:
        rng, key = jax.random.split(self.rng)
        batch = self._batch(data, key)

        def loss_fn(params: Params) -> jax.Array:
            return mixture_nll(self.spec, {"net": params, "obs_norm": self.obs_norm}, batch).mean()

        loss, grads = jax.value_and_grad(loss_fn)(self.state.params)
        return self.replace(state=self.state.apply_gradients(grads=grads), rng=rng), loss

    @partial(jax.jit, static_argnames="n")
    def train(self, data: ChunkSet, n: int) -> tuple[GeneralistLearner, jax.Array]:
        """`n` maximum-likelihood steps in one compiled `lax.scan`; returns the learner and the mean minibatch loss."""
        learner, losses = jax.lax.scan(lambda s, _: s._step(data), self, None, length=n)
        return learner, losses.mean()

    @jax.jit
    def nll(self, data: ChunkSet) -> jax.Array:
        """(T,): each task's mean `-log p(chunk | s, task)` over its rows of `data` (a task without rows: nan)."""
        per_row = mixture_nll(self.spec, self.policy_params, data.replace(starts=None, counts=None))
        task = jnp.asarray(data.task)
        total = jax.ops.segment_sum(per_row, task, num_segments=self.spec.num_tasks)
        count = jax.ops.segment_sum(jnp.ones_like(per_row), task, num_segments=self.spec.num_tasks)
        return total / count


@dataclass(frozen=True)
class FitResult:
    """What `fit` returns: the kept learner and the validation curve."""

    learner: GeneralistLearner
    kept_step: int
    val_loss: float
    """Mean over tasks of each task's mean -log p(chunk) per held-out transition, of the kept parameters."""
    val_loss_per_task: dict[str, float]
    train_loss_per_task: dict[str, float]
    best_val_step: int
    """The step of the lowest validation loss (the kept one with `select="best_val"`)."""
    best_val_loss: float
    curve: tuple[tuple[int, float, float], ...]
    """(step, mean minibatch loss since the previous point, validation loss) every `eval_every` steps."""


def fit(data: GeneralistData, settings: GeneralistSettings,
        progress: Callable[[int, float, float], None] | None = None) -> FitResult:
    """Train the model on `data.train` for `settings.steps` steps; every `eval_every` steps measure the validation
    loss (`progress(step, train_loss, val_loss)` is told). Keeps the last parameters, or with `select="best_val"`
    those of the lowest validation loss."""
    if data.chunk != settings.chunk:
        raise ValueError(f"chunk: the data's chunks are {data.chunk} steps, the settings say {settings.chunk}")
    spec = GeneralistSpec(data.tasks, data.obs_dims, data.action_dims, settings.chunk, settings.components,
                          tuple(settings.hidden_dims), settings.std_floor)
    learner = GeneralistLearner.create(spec, observation_stats(data.train, spec.obs_dims), settings)
    train, val = jax.tree.map(jnp.asarray, data.train), jax.tree.map(jnp.asarray, data.val)

    def val_loss(lr: GeneralistLearner) -> float:
        return float(jnp.mean(lr.nll(val)))

    best, best_step, best_val = learner, 0, val_loss(learner)
    curve = [(0, float(jnp.mean(learner.nll(train))), best_val)]
    step = 0
    while step < settings.steps:
        n = min(settings.eval_every, settings.steps - step)
        learner, loss = learner.train(train, n)
        step += n
        val_now = val_loss(learner)
        curve.append((step, float(loss), val_now))
        if progress is not None:
            progress(step, float(loss), val_now)
        if val_now < best_val:
            best, best_step, best_val = learner, step, val_now
    kept, kept_step = (best, best_step) if settings.select == "best_val" else (learner, step)
    per_task_val, per_task_train = np.asarray(kept.nll(val)), np.asarray(kept.nll(train))
    return FitResult(kept, kept_step, float(per_task_val.mean()),
                     {t: float(v) for t, v in zip(data.tasks, per_task_val, strict=True)},
                     {t: float(v) for t, v in zip(data.tasks, per_task_train, strict=True)},
                     best_step, best_val, tuple(curve))
