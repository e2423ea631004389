"""The generalist stand-in on the inference side: a multi-task Gaussian-mixture policy over action chunks.

Owns: the model `serl train-generalist` trains (`GeneralistSpec`, its shape; `MixturePolicyNet`, the network;
`mixture`, `chunk_log_prob`, `sample_chunks`, `mode_chunks`, the pure functions of its density, shared by the
trainer in `agents/generalist.py` and the acting side), `GeneralistPolicy`, one task's `Policy` over env
observations (action chunks executed step by step, k chunks for steering, a jit-friendly `vector_sampler` for a
learner's update, `log_prob` of first actions for a likelihood reranker), `load_generalist` (a `serl
train-generalist --out` folder's `generalist.json` and checkpoint), and which env id is which task (`TASK_ENV_IDS`,
`task_of_env`).

The model. Per task the observation is that task's `agent.obs_keys` vector (the sorted order `data.obs.vector_keys`
gives, so a critic trained on the same config sees the same vector), standardized with the task's own statistics
(`networks.normalize_obs`), zero-padded to the largest task's size and concatenated with a one-hot task id. An
MLP maps that to a mixture of `components` diagonal Gaussians over the action chunk, H steps by the largest
action size (7; a 6-D task uses the first 6 entries of each step and ignores the rest): mixture logits, means,
log-stds (clipped to [LOG_STD_MIN, LOG_STD_MAX], then floored at `log(std_floor)`).

Actions are *clipped* Gaussians: a sample is `clip(x, -1, 1)`, `x ~ N(mean, std)`, and an entry at exactly +-1 is
scored by the probability mass beyond the bound (`log Phi`), an entry inside by the density (a censored, "Tobit",
likelihood; `clipped_gaussian_log_prob`). This is how the demonstrations are made: the scripted controllers add
Gaussian noise to a command and clip it to [-1, 1], so full-speed moves and the binary gripper sit exactly on the
bounds. A tanh-squashed Gaussian (the BC policy's choice) must put those at a finite pre-tanh value and widens
its components to cover the jump from 0.7 to atanh(0.999): on reach (200 clean episodes, H = 4, 20 evaluation
episodes) it succeeded in 10 % sampling and 25 % with its mode, the clipped one in 35 % and 75 %. The mode
(`deterministic=True`) is the most likely component's mean, clipped.

Imports only network definitions (no optax, losses, replay, demos): an actor can act with it, as with any
inference-side policy.
"""

from __future__ import annotations

import collections
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from serl_stack.agents.networks import (
    LOG_STD_MAX,
    LOG_STD_MIN,
    MLP,
    default_init,
    normalize_obs,
)
from serl_stack.config import SERL_TASK_IDS
from serl_stack.data.obs import agent_obs, flatten_keys
from serl_stack.errors import RunDirError
from serl_stack.rundir import CHECKPOINTS, GENERALIST_KIND, GENERALIST_SUMMARY, checkpoint_steps

Params = Any
TASK_ENV_IDS: dict[str, str] = dict(zip(("reach", "pick_cube", "peg_insert"), SERL_TASK_IDS, strict=True))
"""Task name -> the env id it is trained and evaluated on."""


def task_of_env(env_id: str) -> str:
    """The task name (`reach`, `pick_cube`, `peg_insert`) of an env id; ValueError naming the known ids."""
    for task, known in TASK_ENV_IDS.items():
        if known == env_id:
            return task
    raise ValueError(f"env id: got {env_id!r}, expected one of {list(TASK_ENV_IDS.values())} (the tasks a generalist "
                     "stand-in knows)")


# ----------------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class GeneralistSpec:
    """The model's shape (hashable: the jitted functions take it as a static argument)."""

    tasks: tuple[str, ...]
    """Task names in task-id order (the one-hot's order)."""
    obs_dims: tuple[int, ...]
    """Each task's observation vector size."""
    action_dims: tuple[int, ...]
    """Each task's action size (7, or 6 for peg-insert)."""
    chunk: int
    """H: actions per chunk."""
    components: int
    """Gaussians in the mixture."""
    hidden_dims: tuple[int, ...]
    """MLP widths."""
    std_floor: float
    """Lower bound of every component's std (pre-tanh), so the density stays finite off the data."""

    def __post_init__(self) -> None:
        n = len(self.tasks)
        checks = (("tasks", n >= 1 and len(set(self.tasks)) == n, "distinct names, at least one"),
                  ("obs_dims", len(self.obs_dims) == n and min(self.obs_dims, default=0) >= 1, f"{n} sizes >= 1"),
                  ("action_dims", len(self.action_dims) == n and min(self.action_dims, default=0) >= 1,
                   f"{n} sizes >= 1"),
                  ("chunk", self.chunk >= 1, ">= 1"), ("components", self.components >= 1, ">= 1"),
                  ("hidden_dims", len(self.hidden_dims) >= 1 and min(self.hidden_dims) >= 1, ">= 1 layer of >= 1"),
                  ("std_floor", self.std_floor > 0 and math.isfinite(self.std_floor), "> 0"))
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name}: got {getattr(self, name)!r}, expected {expected}")

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def max_obs_dim(self) -> int:
        return max(self.obs_dims)

    @property
    def max_action_dim(self) -> int:
        return max(self.action_dims)

    def index(self, task: str) -> int:
        """The task id of `task`; ValueError naming the tasks this model knows."""
        if task not in self.tasks:
            raise ValueError(f"task: got {task!r}, expected one of {list(self.tasks)}")
        return self.tasks.index(task)

    def obs_mask(self) -> np.ndarray:
        """(T, D_max) float32: 1 on each task's own observation entries, 0 on its padding."""
        return (np.arange(self.max_obs_dim)[None] < np.asarray(self.obs_dims)[:, None]).astype(np.float32)

    def action_mask(self) -> np.ndarray:
        """(T, A_max) float32: 1 on each task's own action entries, 0 on the ones it does not have."""
        return (np.arange(self.max_action_dim)[None] < np.asarray(self.action_dims)[:, None]).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GeneralistSpec:
        return cls(tasks=tuple(str(t) for t in data["tasks"]), obs_dims=tuple(int(d) for d in data["obs_dims"]),
                   action_dims=tuple(int(d) for d in data["action_dims"]), chunk=int(data["chunk"]),
                   components=int(data["components"]), hidden_dims=tuple(int(h) for h in data["hidden_dims"]),
                   std_floor=float(data["std_floor"]))


class MixturePolicyNet(nn.Module):
    """MLP -> (mixture logits (..., K), means (..., K, H, A), log-stds (..., K, H, A) clipped to the actor's range)."""

    hidden_dims: Sequence[int]
    components: int
    chunk: int
    action_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        h = MLP(self.hidden_dims, activate_final=True)(x)
        shape = (*x.shape[:-1], self.components, self.chunk, self.action_dim)
        size = self.components * self.chunk * self.action_dim
        logits = nn.Dense(self.components, kernel_init=default_init())(h)
        mean = nn.Dense(size, kernel_init=default_init())(h).reshape(shape)
        log_std = nn.Dense(size, kernel_init=default_init())(h).reshape(shape)
        return logits, mean, jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)


def make_net(spec: GeneralistSpec) -> MixturePolicyNet:
    """The one place the network's architecture is chosen (trainer and acting side)."""
    return MixturePolicyNet(spec.hidden_dims, spec.components, spec.chunk, spec.max_action_dim)


def init_params(spec: GeneralistSpec, key: jax.Array) -> Params:
    """`{"net", "obs_norm"}`: fresh network weights and identity statistics `{"mean", "std"}` of shape (T, D_max)."""
    x = jnp.zeros((1, spec.max_obs_dim + spec.num_tasks), jnp.float32)
    shape = (spec.num_tasks, spec.max_obs_dim)
    return {"net": make_net(spec).init(key, x)["params"],
            "obs_norm": {"mean": jnp.zeros(shape, jnp.float32), "std": jnp.ones(shape, jnp.float32)}}


def pad_obs(spec: GeneralistSpec, obs: jax.Array, task: int) -> jax.Array:
    """(B, D_task) raw observation vectors of task `task` -> (B, D_max), zeros after the task's own entries."""
    if obs.ndim != 2 or obs.shape[-1] != spec.obs_dims[task]:
        raise ValueError(f"observations: got shape {tuple(obs.shape)}, expected (B, {spec.obs_dims[task]}) for task "
                         f"{spec.tasks[task]!r}")
    return jnp.pad(jnp.asarray(obs, jnp.float32), ((0, 0), (0, spec.max_obs_dim - obs.shape[-1])))


def network_input(spec: GeneralistSpec, obs_norm: Mapping[str, jax.Array], obs: jax.Array,
                  task: jax.Array) -> jax.Array:
    """(B, D_max + T): padded raw observations (B, D_max) standardized by their task's statistics (padding held
    at 0), then the one-hot of `task` (B,) int."""
    norm = {"mean": obs_norm["mean"][task], "std": obs_norm["std"][task]}
    z = normalize_obs(obs, norm) * jnp.asarray(spec.obs_mask())[task]
    return jnp.concatenate([z, jax.nn.one_hot(task, spec.num_tasks, dtype=z.dtype)], axis=-1)


def mixture(spec: GeneralistSpec, params: Params, obs: jax.Array,
            task: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(log_weights (B, K), mean (B, K, H, A_max), log_std (B, K, H, A_max))` at padded raw observations (B,
    D_max) of tasks `task` (B,) int; log-stds floored at `log(spec.std_floor)`."""
    x = network_input(spec, params["obs_norm"], obs, task)
    logits, mean, log_std = make_net(spec).apply({"params": params["net"]}, x)
    return jax.nn.log_softmax(logits, axis=-1), mean, jnp.maximum(log_std, math.log(spec.std_floor))


BOUND_EPS = 1e-6
"""An action entry within this of +-1 counts as on the bound (scored by the mass beyond it)."""


def clipped_gaussian_log_prob(mean: jax.Array, log_std: jax.Array, actions: jax.Array) -> jax.Array:
    """Per entry (broadcast shapes): log-likelihood of `actions` in [-1, 1] under `clip(N(mean, std), -1, 1)`: the
    log-density inside, `log P(x >= 1)` on the upper bound and `log P(x <= -1)` on the lower one."""
    std = jnp.exp(log_std)
    inside = jax.scipy.stats.norm.logpdf(actions, mean, std)
    upper = jax.scipy.stats.norm.logcdf((mean - 1.0) / std)
    lower = jax.scipy.stats.norm.logcdf((-1.0 - mean) / std)
    return jnp.where(actions >= 1.0 - BOUND_EPS, upper, jnp.where(actions <= -1.0 + BOUND_EPS, lower, inside))


def chunk_log_prob(log_w: jax.Array, mean: jax.Array, log_std: jax.Array, actions: jax.Array,
                   mask: jax.Array) -> jax.Array:
    """log p(chunk) `(B,)` of action chunks `(B, H, A)` in [-1, 1] under the mixture `(B, K)`, `(B, K, H, A)`;
    only entries where `mask` (B, H, A) is 1 count (the steps after an episode's end, the dimensions a task does
    not have). The entries of one component are independent given it, so its log-likelihood is their sum."""
    per_entry = clipped_gaussian_log_prob(mean, log_std, actions[:, None])
    per_component = jnp.sum(per_entry * mask[:, None], axis=(-2, -1))
    return jax.nn.logsumexp(log_w + per_component, axis=-1)


def sample_chunks(spec: GeneralistSpec, params: Params, obs: jax.Array, task: int, key: jax.Array,
                  k: int) -> jax.Array:
    """(B, k, H, A_task): k chunks drawn at each of the raw observation vectors `obs` (B, D_task) of task `task`:
    a component by its weight, then a draw of its Gaussian, clipped to [-1, 1]. Row i draws with `fold_in(key, i)`,
    so its chunks do not depend on the other rows (a batch's row 0 is what one observation alone gets with the same
    key).
    The one sampler: `sample_actions`, `act` and `vector_sampler` all call it."""
    b = obs.shape[0]
    log_w, mean, log_std = mixture(spec, params, pad_obs(spec, obs, task), jnp.full((b,), task, jnp.int32))

    def one(row_key: jax.Array, log_w: jax.Array, mean: jax.Array, log_std: jax.Array) -> jax.Array:
        component_key, noise_key = jax.random.split(row_key)
        picked = jax.random.categorical(component_key, log_w, shape=(k,))
        mean, std = mean[picked], jnp.exp(log_std[picked])  # (k, H, A_max)
        return jnp.clip(mean + std * jax.random.normal(noise_key, mean.shape, mean.dtype), -1.0, 1.0)

    row_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(b))
    return jax.vmap(one)(row_keys, log_w, mean, log_std)[..., : spec.action_dims[task]]


def mode_chunks(spec: GeneralistSpec, params: Params, obs: jax.Array, task: int) -> jax.Array:
    """(B, H, A_task): the most likely component's mean, clipped, at each raw observation vector (B, D_task)."""
    b = obs.shape[0]
    log_w, mean, _ = mixture(spec, params, pad_obs(spec, obs, task), jnp.full((b,), task, jnp.int32))
    best = jnp.argmax(log_w, axis=-1)
    mode = jnp.take_along_axis(mean, best[:, None, None, None], axis=1)[:, 0]
    return jnp.clip(mode, -1.0, 1.0)[..., : spec.action_dims[task]]


def first_action_log_prob(spec: GeneralistSpec, params: Params, obs: jax.Array, task: int,
                          actions: jax.Array) -> jax.Array:
    """(B, M): log p(a) of M first actions (B, M, A_task) of chunks at raw observation vectors (B, D_task): the
    mixture's marginal over the chunk's first step (exact: each component is a diagonal Gaussian). An entry on a
    bound contributes its probability mass, one inside its density (see `clipped_gaussian_log_prob`)."""
    b, a_task = obs.shape[0], spec.action_dims[task]
    log_w, mean, log_std = mixture(spec, params, pad_obs(spec, obs, task), jnp.full((b,), task, jnp.int32))
    mean, log_std = mean[:, None, :, 0, :a_task], log_std[:, None, :, 0, :a_task]  # (B, 1, K, A_task)
    per_component = clipped_gaussian_log_prob(mean, log_std, actions[:, :, None, :]).sum(-1)  # (B, M, K)
    return jax.nn.logsumexp(log_w[:, None, :] + per_component, axis=-1)


# ----------------------------------------------------------------------------------------------- acting


class GeneralistPolicy:
    """One task's view of a trained generalist: a `Policy` over env observations.

    `act` executes action chunks step by step: it draws a chunk (one sample; with `deterministic`, the most likely
    component's mean) at the first call and whenever the last one is used up, and returns its next action in
    between. `sample_actions(obs, k, key)` gives k chunks `(k, H, A)` for steering. `reset()` drops the rest of a
    chunk. `vector_sampler()` is the same sampler as a pure function of raw observation vectors, for a jitted
    learner update.
    """

    def __init__(self, params: Params, summary: Mapping[str, Any], task: str) -> None:
        self.spec = GeneralistSpec.from_json(summary["model"])
        self.task = task
        self.task_id = self.spec.index(task)
        self.params = params
        """`{"net", "obs_norm"}` of the whole model (every task's statistics)."""
        info = summary["task_info"][task]
        self.obs_keys: tuple[str, ...] = tuple(info["obs_keys"])
        """The task's observation keys in the agent's vector order (what a critic on its config sees)."""
        self.keys = self.obs_keys
        self.env_id: str = str(info["env_id"])
        self.chunk: int = self.spec.chunk
        """H: actions per chunk (what `sample_actions` returns per proposal, and what `act` executes per draw)."""
        self.action_dim: int = self.spec.action_dims[self.task_id]
        self._pending: collections.deque[np.ndarray] = collections.deque()
        spec, task_id = self.spec, self.task_id
        self._sample = jax.jit(partial(sample_chunks, spec, task=task_id), static_argnames="k")
        self._mode = jax.jit(partial(mode_chunks, spec, task=task_id))
        self._log_prob = jax.jit(partial(first_action_log_prob, spec, task=task_id))

        def first_actions(params: Params, obs: jax.Array, key: jax.Array, k: int) -> jax.Array:
            return sample_chunks(spec, params, obs, task_id, key, k)[:, :, 0, :]

        self._first_actions = first_actions

    def observe(self, obs: Mapping[str, Any]) -> np.ndarray:
        """The policy's input for one env observation: the float32 vector of `obs_keys`."""
        return agent_obs(flatten_keys(obs), self.obs_keys)

    def sample_actions(self, obs: Mapping[str, Any], k: int, key: Any) -> np.ndarray:
        """(k, H, A) float32 in [-1, 1]: k chunks drawn at `obs` with `key`."""
        return np.asarray(self._sample(self.params, self.observe(obs)[None], key=key, k=int(k)))[0]

    def act(self, obs: Mapping[str, Any], key: Any, deterministic: bool = False) -> np.ndarray:
        if not self._pending:
            if deterministic:
                chunk = np.asarray(self._mode(self.params, self.observe(obs)[None]))[0]
            else:
                if key is None:
                    raise ValueError("key: got None, expected a JAX PRNG key (the generalist samples its chunk)")
                chunk = self.sample_actions(obs, 1, key)[0]
            self._pending.extend(chunk)
        return self._pending.popleft()

    def reset(self) -> None:
        """A new episode: the rest of the current chunk is dropped."""
        self._pending.clear()

    def log_prob(self, obs: Mapping[str, Any], actions: Any) -> np.ndarray:
        """(M,): log-density of M first actions of chunks (M, A) at `obs` (e.g. to rerank proposals by likelihood)."""
        a = np.asarray(actions, np.float32)
        if a.ndim != 2 or a.shape[1] != self.action_dim:
            raise ValueError(f"actions: got shape {a.shape}, expected (M, {self.action_dim})")
        return np.asarray(self._log_prob(self.params, self.observe(obs)[None], actions=a[None]))[0]

    def vector_sampler(self) -> tuple[Params, Callable[[Params, jax.Array, jax.Array, int], jax.Array]]:
        """`(params, fn)`: `fn(params, obs, key, k) -> (B, k, A)`, the FIRST action of k chunks drawn at each raw
        observation vector `obs` (B, D) float32 of this task (the `obs_keys` vector, unstandardized); pure and
        traceable (call it inside a jit with `k` static). Row 0 is `sample_actions`' draw for the same key (row i
        draws with `fold_in(key, i)`, see `sample_chunks`). `fn` is the same object at every call, so a jit that
        takes it as a static argument compiles once."""
        return self.params, self._first_actions


# ----------------------------------------------------------------------------------------------- from a folder


def read_generalist_summary(folder: Path) -> dict[str, Any]:
    """The `generalist.json` of a `serl train-generalist --out` folder; `RunDirError` naming what is missing."""
    folder = Path(folder)
    path = folder / GENERALIST_SUMMARY
    if not path.is_file():
        what = "does not exist" if not folder.exists() else (
            "is not a folder" if not folder.is_dir() else f"has no {GENERALIST_SUMMARY}")
        raise RunDirError(f"{folder} {what}; expected the --out folder of `serl train-generalist`")
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path}: not valid JSON: {e}") from e
    missing = [k for k in ("kind", "model", "task_info") if k not in summary]
    if summary.get("kind") != GENERALIST_KIND or missing:
        raise RunDirError(f"{path}: kind {summary.get('kind')!r}, missing {missing}; expected a {GENERALIST_KIND!r} "
                          "summary written by `serl train-generalist`")
    return summary


def resolve_task(summary: Mapping[str, Any], task_or_env_id: str, where: Path | str) -> str:
    """The task of `summary` that `task_or_env_id` names (a task name or its env id); `RunDirError` naming the
    tasks the folder holds otherwise."""
    tasks = list(summary["model"]["tasks"])
    task = task_or_env_id
    if task not in tasks:
        try:
            task = task_of_env(task_or_env_id)
        except ValueError:
            task = None
    if task not in tasks:
        known = ", ".join(f"{t} ({TASK_ENV_IDS.get(t, '?')})" for t in tasks)
        raise RunDirError(f"task: got {task_or_env_id!r}, expected one of the tasks {where} was trained on: {known}")
    return task


def load_generalist(folder: Path, task_or_env_id: str) -> tuple[GeneralistPolicy, dict[str, Any]]:
    """The generalist in `folder` (a `serl train-generalist --out` folder) acting on one task (its name, e.g.
    `pick_cube`, or its env id, e.g. `FrankaPickCube-v0`), and its `generalist.json` summary.

    Restores only the latest checkpoint's `policy` item (no optimizer, no env is built). `RunDirError` names a
    missing folder, summary or checkpoint, a task the folder was not trained on, or a checkpoint that does not
    fit the summary."""
    from serl_stack.inference import restore_latest_policy

    folder = Path(folder).expanduser().absolute()  # orbax reads absolute paths only
    summary = read_generalist_summary(folder)
    task = resolve_task(summary, task_or_env_id, folder)
    directory = folder / CHECKPOINTS
    steps = checkpoint_steps(folder)
    if not steps:
        raise RunDirError(f"{folder}: no checkpoint in {directory}; expected the one `serl train-generalist` wrote")
    spec = GeneralistSpec.from_json(summary["model"])
    template = jax.eval_shape(partial(init_params, spec), jax.random.PRNGKey(0))
    params = restore_latest_policy(folder, steps[-1], template, GENERALIST_SUMMARY)
    return GeneralistPolicy(params, summary, task), summary


__all__ = ["GENERALIST_KIND", "GENERALIST_SUMMARY", "TASK_ENV_IDS", "GeneralistPolicy", "GeneralistSpec",
           "MixturePolicyNet", "chunk_log_prob", "clipped_gaussian_log_prob", "first_action_log_prob", "init_params",
           "load_generalist", "mixture", "mode_chunks", "read_generalist_summary", "resolve_task", "sample_chunks",
           "task_of_env"]
