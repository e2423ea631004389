"""The inference boundary: turning observations into actions, without the learner's machinery.

Owns: the `Policy` protocol every acting policy follows (the SAC policy here, the scripted baselines in
envs/scripted.py, behaviour cloning, and later steering and remote policies), `PolicyRunner` (the SAC policy over
env observations, adopting the parameters the learner broadcasts, with the critic's view of its value when the
learner sends the critic too), deterministic evaluation (`evaluate`), and restoring a policy from a run's
checkpoint (`load_policy`: the learner's actor-only `policy` item, restored into the policy's own template);
and the behaviour-cloned policy `serl train-bc` writes (`BCPolicy`, `load_bc_policy`: the SAC actor's network
with its std floored, restored from the folder's `policy` item and its `bc.json`).

The actor process, `serl eval`, the conservative mixers and the coming ROS 2 bridge node import this module and
never the learner's: no `updater`, `learner`, `agents.sac`, `agents.losses`, `data.replay`, `data.demos` or optax
(a test runs an actor and `serl eval` in fresh interpreters and checks `sys.modules`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from serl_stack import interrupt
from serl_stack.config import AgentConfig, Config, ConfigError
from serl_stack.data.obs import IMAGE_PREFIX, agent_obs, flatten_keys, image_keys_of, vector_dim, vector_keys
from serl_stack.errors import EvalError, RunDirError
from serl_stack.rundir import (
    BC_SUMMARY,
    CHECKPOINTS,
    CONFIG_FILE,
    checkpoint_steps,
    read_bc_summary,
    read_run_config,
)

if TYPE_CHECKING:
    import gymnasium as gym

FrameFn = Callable[[np.ndarray], None]
EpisodeFn = Callable[[int, dict[str, Any]], None]


class KeyStream:
    """The per-step PRNG keys of an acting loop, made `block` at a time by one jitted split; each step's key is a
    host array, handed to the jitted policy like any input. A split per step, unpacked into two keys, is two
    dispatches (~130 us on a CPU: more than the SAC policy's forward pass itself). The keys are a pure function
    of the seed; the first block is made (and its split compiled) when the stream is created, so the first step
    of a control loop never waits for a compile."""

    def __init__(self, seed: int, block: int = 1024) -> None:
        if block < 1:
            raise ValueError(f"block: got {block}, expected >= 1")
        self._block = int(block)
        self._key: Any = jax.random.PRNGKey(seed)
        self._keys = np.empty((0, 2), np.uint32)
        self._next = 0
        self._refill()

    def _refill(self) -> None:
        keys = np.asarray(jax.random.split(self._key, self._block + 1))
        self._key, self._keys, self._next = keys[0], keys[1:], 0

    def __iter__(self) -> KeyStream:
        return self

    def __next__(self) -> np.ndarray:
        if self._next == len(self._keys):
            self._refill()
        key = self._keys[self._next]
        self._next += 1
        return key


def step_noise(key: Any, shape: tuple[int, ...]) -> np.ndarray:
    """float32 standard normal noise of `shape` drawn by numpy's generator seeded with a PRNG key's words (a
    `KeyStream` key, `jax.random.PRNGKey`, or a typed `jax.random.key`): the same noise for the same key."""
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key, np.uint32).ravel()).standard_normal(shape, np.float32)


@runtime_checkable
class Policy(Protocol):
    """What acts in an env, on its dict observation (DESIGN.md's observation contract).

    - `act(obs, key, deterministic) -> (A,)` float32 in [-1, 1]: one action; `deterministic` asks for the
      policy's mode (evaluation, a baseline), else a sample drawn with `key` (a JAX PRNG key; policies that draw
      from their own generator may ignore it).
    - `sample_actions(obs, k, key) -> (k, H, A)`: k proposals for reranking, H = the action-chunk length (1 for
      single-step policies); the chosen chunk is executed step by step.
    - `reset()`: a new episode begins (policies with memory, e.g. action chunks, clear it).
    """

    def act(self, obs: Mapping[str, Any], key: Any, deterministic: bool = False) -> np.ndarray: ...

    def sample_actions(self, obs: Mapping[str, Any], k: int, key: Any) -> np.ndarray: ...

    def reset(self) -> None: ...


class PolicyRunner:
    """The SAC policy over env observations with the newest parameters it was given (`load`).

    `critic_samples > 0` makes it also hold the critic ensemble (the learner then broadcasts `value_params`) and
    answer `q_values`: the E critics' Q-values of that many actions sampled at one state (conservative mixing's
    bound on the policy's value). Observations are flattened once per step: `observe(obs)` gives the agent's
    input, which `act_on`, `q_values` and `sample_on` take, so a caller that needs several of them converts once.
    """

    chunk = 1
    """Action-chunk length H of `sample_actions` (SAC acts one step at a time)."""

    def __init__(self, example_obs: Mapping[str, Any], action_dim: int, agent: AgentConfig,
                 critic_samples: int = 0) -> None:
        from serl_stack.agents.policy import make_policy_fn, make_sample_fn, make_value_fn

        flat = flatten_keys(example_obs)
        self.keys = vector_keys(flat, agent.obs_keys)
        self.image_keys = image_keys_of(flat, agent.image_keys)
        image_shapes = {k[len(IMAGE_PREFIX):]: tuple(np.shape(flat[k])) for k in self.image_keys} or None
        obs_dim = vector_dim(flat, self.keys)
        self.action_dim = int(action_dim)
        init_params, self._policy = make_policy_fn(obs_dim, action_dim, agent, image_shapes)
        self._sample = make_sample_fn(obs_dim, action_dim, agent, image_shapes)
        self._q_values = None
        if critic_samples > 0:  # the learner then broadcasts the critic too
            init_params, self._q_values = make_value_fn(obs_dim, action_dim, agent, critic_samples, image_shapes)
        self.template: Any = init_params(jax.random.PRNGKey(0))
        """A parameter pytree of the right structure: what broadcast or checkpointed parameters restore into."""
        self.params: Any = None
        self._fast: Any = None  # NumpyActor of _fast_params, built on the first act after they change
        self._fast_params: Any = None
        self.version = -1
        self.adopted = 0
        """How many parameter versions it has taken on (what an actor's summary reports)."""

    # ------------------------------------------------------------------------------------------ parameters

    def load(self, version: int, state_dict: Any) -> None:
        """Adopt parameters (a nested dict of arrays, as broadcast or checkpointed) if newer than what we have."""
        if version <= self.version:
            return
        self.params = serialization.from_state_dict(self.template, state_dict)
        self.version = version
        self.adopted += 1

    def compile(self, obs: Mapping[str, Any]) -> None:
        """Compile the jitted calls now, on the template parameters (nothing is adopted): on a robot, the first
        learned step must not stall the arm for a compile."""
        x, key = self.observe(obs), jax.random.PRNGKey(0)
        if self.image_keys:  # a state policy acts in numpy (act_on): nothing of it to compile
            for deterministic in (False, True):
                jax.block_until_ready(self._policy(self.template, x, key, deterministic))
        if self._q_values is not None:
            jax.block_until_ready(self._q_values(self.template, x, key))

    def prepare(self) -> None:
        """Build the numpy policy of the current parameters now (a state policy; a no-op otherwise or when it is
        built), rather than in the first `act` after they changed: a control loop calls it while it waits for
        the next period (`Actor.idle_step`)."""
        if self.params is not None and not self.image_keys:
            self._numpy_actor(self.params)

    def _numpy_actor(self, params: Any) -> Any:
        """The `NumpyActor` of `params`, rebuilt when the parameters object changed."""
        if self._fast_params is not params:
            from serl_stack.agents.policy import NumpyActor

            self._fast, self._fast_params = NumpyActor(params), params
        return self._fast

    def _params(self) -> Any:
        if self.params is None:
            raise RuntimeError("PolicyRunner: no parameters yet; load() the learner's broadcast or a checkpoint first")
        return self.params

    # ------------------------------------------------------------------------------------------ acting

    def observe(self, obs: Mapping[str, Any]) -> Any:
        """The agent's input for one env observation (the same conversion the learner applies to its batches)."""
        return agent_obs(flatten_keys(obs), self.keys, self.image_keys)

    def act_on(self, x: Any, key: jax.Array | None, deterministic: bool = False) -> np.ndarray:
        """`act` on an observation already converted by `observe`.

        A state policy runs in numpy (`NumpyActor`, rebuilt when the parameters change) on the calling thread,
        its Gaussian noise drawn from numpy's generator seeded with the key (`step_noise`): the same action
        distribution as the jitted policy, a deterministic function of (parameters, observation, key), without
        a JAX dispatch in the control step. A pixel policy calls the jitted network."""
        params = self._params()
        if self.image_keys:
            return np.asarray(self._policy(params, x, key, deterministic))
        mean, log_std = self._numpy_actor(params)(x)
        if deterministic:
            return np.tanh(mean)
        if key is None:
            raise ValueError("key: got None, expected a PRNG key for a stochastic action (deterministic=False)")
        u = np.exp(log_std)
        u *= step_noise(key, mean.shape)
        u += mean
        return np.tanh(u, out=u)

    def act(self, obs: Mapping[str, Any], key: jax.Array | None, deterministic: bool = False) -> np.ndarray:
        return self.act_on(self.observe(obs), key, deterministic)

    def sample_on(self, x: Any, k: int, key: jax.Array) -> np.ndarray:
        """`sample_actions` on an observation already converted by `observe`."""
        return np.asarray(self._sample(self._params(), x, key, int(k)))[:, None, :]

    def sample_actions(self, obs: Mapping[str, Any], k: int, key: jax.Array) -> np.ndarray:
        return self.sample_on(self.observe(obs), k, key)

    def reset(self) -> None:
        """SAC keeps no memory between steps."""

    def q_values(self, x: Any, key: jax.Array) -> np.ndarray:
        """(E, M) Q-values of M = `critic_samples` actions sampled at the converted observation `x`."""
        if self._q_values is None:
            raise RuntimeError("PolicyRunner.q_values: built without critic_samples, so it holds no critic")
        return np.asarray(self._q_values(self._params(), x, key))


# ----------------------------------------------------------------------------------------------- evaluating


def evaluate(
    env: gym.Env,
    policy: Policy,
    episodes: int,
    first_seed: int,
    on_frame: FrameFn | None = None,
    on_episode: EpisodeFn | None = None,
) -> dict[str, Any]:
    """Deterministic episodes on seeds `first_seed, first_seed+1, ...`; success from `info["success"]`.

    `on_frame(env.render())` is called after every reset and after every step (so an episode of `n` steps gives
    `n + 1` frames); the env must then have been made with `render_mode="rgb_array"`. `on_episode(i, stats)`
    gets each finished episode's `{"return", "length", "success"}` (success None when the env reports none).
    `success_rate` is None when no episode's last `info` has a `"success"` key (e.g. Pendulum): such a task has
    no notion of success, and 0 would read as "always failed". Ctrl-C stops it between steps.
    """
    if episodes < 1:
        raise EvalError(f"episodes: got {episodes}, expected >= 1")
    returns, successes, lengths = [], [], []
    reports_success = False
    # A fresh key per step: a deterministic SAC policy ignores it, but one that samples even when deterministic
    # (V-GPS: the best of K proposals) must not draw the same proposals at every step.
    keys = KeyStream(first_seed)

    def frame() -> None:
        if on_frame is None:
            return
        image = env.render()
        if image is None:
            raise EvalError(f"env.render_mode: got {env.render_mode!r}, expected 'rgb_array' to record frames")
        on_frame(np.asarray(image))

    for i in range(episodes):
        obs, _ = env.reset(seed=first_seed + i)
        policy.reset()
        frame()
        ret, length, done, info = 0.0, 0, False, {}
        while not done:
            interrupt.check()
            obs, reward, terminated, truncated, info = env.step(policy.act(obs, next(keys), True))
            frame()
            ret += float(reward)
            length += 1
            done = terminated or truncated
        returns.append(ret)
        successes.append(bool(info.get("success", False)))
        reports_success = reports_success or "success" in info
        lengths.append(length)
        if on_episode is not None:
            on_episode(i, {"return": ret, "length": length,
                           "success": bool(info["success"]) if "success" in info else None})
    return {
        "episodes": episodes,
        "first_seed": first_seed,
        "success_rate": float(np.mean(successes)) if reports_success else None,
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        "length_mean": float(np.mean(lengths)),
        "params_version": getattr(policy, "version", None),
    }


# ------------------------------------------------------------------------------------------ from a checkpoint


def _check_step(run_dir: Path, step: int | None) -> int:
    """The checkpoint step to load: `step` if the run has it, else the latest one."""
    steps = checkpoint_steps(run_dir)
    if not steps:
        raise EvalError(f"--run-dir: no checkpoint in {run_dir / CHECKPOINTS}; run `serl train` first (the "
                        "learner writes checkpoints every train.checkpoint_every updates and at the end)")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise EvalError(f"--step: got {step}, expected one of the checkpoints in {run_dir / CHECKPOINTS}: "
                        f"{', '.join(map(str, steps))}")
    return step


def example_observation(cfg: Config) -> tuple[dict[str, Any], int]:
    """One reset observation of `cfg.env` and its action size (what a policy's template is shaped by)."""
    from serl_stack.envs import make_env

    env = make_env(cfg.env)
    try:
        obs, _ = env.reset(seed=cfg.train.seed)
        return obs, int(np.prod(env.action_space.shape))
    finally:
        env.close()


def example_vector_keys(cfg: Config) -> tuple[dict[str, Any], tuple[str, ...], int]:
    """(one flattened reset observation of `cfg.env`, the agent's vector keys `agent.obs_keys` resolves to, the
    action size); `ConfigError` naming `agent.obs_keys` when it asks for what the env does not have."""
    obs, action_dim = example_observation(cfg)
    flat = flatten_keys(obs)
    try:
        return flat, vector_keys(flat, cfg.agent.obs_keys), action_dim
    except KeyError as e:
        raise ConfigError(str(e.args[0])) from e


def load_policy(
    run_dir: Path, step: int | None = None, example: tuple[Mapping[str, Any], int] | None = None
) -> tuple[Config, PolicyRunner, dict[str, Any]]:
    """The policy of checkpoint `step` (default: the latest) of the run in `run_dir`.

    Restores only the checkpoint's actor-only `policy` item (what the learner broadcast: actor, observation
    normalization, encoder) into a fresh `PolicyRunner` of the run's config; `example` = (an observation, the
    action size) shapes it, else the run's env is built once for them. Returns `(cfg, policy, info)`: the
    run's config, the policy, and `{"run_dir", "checkpoint_step", "checkpoint_dir", "updates", "env_steps",
    "params_version"}`. Raises `EvalError` naming the problem for a missing run, config or checkpoint, or a
    checkpoint that does not fit the config's agent.
    """
    from serl_stack.checkpoint import POLICY_ITEM, Checkpointer

    cfg = read_run_config(run_dir)
    step = _check_step(run_dir, step)
    try:
        obs, action_dim = example if example is not None else example_observation(cfg)
        policy = PolicyRunner(obs, action_dim, cfg.agent)
    except KeyError as e:  # agent.obs_keys / image_keys name what the env does not have
        raise EvalError(f"{run_dir / CONFIG_FILE}: {e.args[0]}") from e
    except ValueError as e:  # an env id this install does not register, sizes the networks refuse, ...
        raise EvalError(f"{run_dir / CONFIG_FILE}: {e}") from e
    checkpoints = Checkpointer(run_dir / CHECKPOINTS, max_to_keep=cfg.train.keep_checkpoints)
    try:
        if POLICY_ITEM not in checkpoints.items(step):
            raise EvalError(f"checkpoint {step} in {run_dir / CHECKPOINTS} has no '{POLICY_ITEM}' item (it was written "
                            "before the learner saved the actor's parameters separately); resume the run with "
                            "`serl train --resume` for one more checkpoint, or train it again")
        misfit = (
            f"checkpoint {step} in {run_dir / CHECKPOINTS} does not fit the policy of {run_dir / CONFIG_FILE} "
            f"(env {cfg.env.id}, agent.hidden_dims={list(cfg.agent.hidden_dims)}, observation keys "
            f"{list(policy.keys + policy.image_keys)}); was config.yaml edited after training?"
        )
        differences = _shape_differences(checkpoints.stored_shapes(step, POLICY_ITEM), policy.template)
        if differences:
            raise EvalError(f"{misfit} " + "; ".join(differences))
        try:
            params, meta = checkpoints.restore_policy(policy.template, step)
        except (ValueError, KeyError, TypeError) as e:  # what the shape check cannot see (e.g. dtypes)
            raise EvalError(f"{misfit} orbax: {_orbax_reason(e)}") from e
    finally:
        checkpoints.close()
    policy.load(max(int(meta.get("params_version", step)), 0), serialization.to_state_dict(params))
    info = {
        "run_dir": str(run_dir),
        "checkpoint_step": step,
        "checkpoint_dir": str(run_dir / CHECKPOINTS / str(step)),
        "updates": int(meta.get("updates", step)),
        "env_steps": meta.get("env_steps"),
        "params_version": policy.version,
    }
    return cfg, policy, info


def _shape_differences(stored: Mapping[str, tuple[int, ...]], template: Any, limit: int = 4) -> list[str]:
    """How the arrays stored in a checkpoint item differ from `template`'s (missing, extra, other shape).

    Checked before restoring because a failed orbax restore names no array and leaves its reader threads
    failing noisily on a closed event loop.
    """
    from serl_stack.checkpoint import leaf_shapes

    wanted = leaf_shapes(template)
    out = [f"{k}: the checkpoint has {stored[k]}, the config gives {wanted[k]}"
           for k in sorted(stored.keys() & wanted.keys()) if stored[k] != wanted[k]]
    out += [f"{k}: in the config's policy, not in the checkpoint" for k in sorted(wanted.keys() - stored.keys())]
    out += [f"{k}: in the checkpoint, not in the config's policy" for k in sorted(stored.keys() - wanted.keys())]
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


def _orbax_reason(error: Exception, max_lines: int = 8) -> str:
    """The part of an orbax restore error a user can act on: which shape or subtree differs. Its advice to
    disable strict shape checks would load a different network, so it is cut, and long tree diffs are shortened."""
    text = str(error).split(" Truncating/padding is disabled")[0].strip()
    lines = [line for line in text.splitlines() if line.strip()]
    more = f"\n... ({len(lines) - max_lines} more lines)" if len(lines) > max_lines else ""
    return "\n".join(lines[:max_lines]) + more


# ------------------------------------------------------------------------------------------ behaviour cloning

class BCPolicy:
    """A behaviour-cloned policy over env observations: `tanh(N(mean(s), max(std(s), std_floor)))`, the SAC actor's
    network (`networks.make_actor`) on the observation vector of `keys`, standardized by its own statistics.

    Follows the `Policy` protocol: deterministic `act` is `tanh(mean)` (what a mixing baseline or an evaluation
    runs); stochastic actions and `sample_actions` (a steering base policy's proposals) draw with the floored std.
    `vector_sampler()` is the same draw as a pure function over a batch of observation vectors, for code that
    samples the base inside its own jit (the learner's online steering target).
    """

    chunk = 1
    """Action-chunk length H of `sample_actions` (one step at a time)."""

    def __init__(self, params: Any, keys: tuple[str, ...], action_dim: int, hidden_dims: tuple[int, ...],
                 std_floor: float) -> None:
        from functools import partial

        from serl_stack.agents.networks import make_actor, normalize_obs, tanh_gaussian_mode, tanh_gaussian_sample

        if not std_floor > 0:
            raise ValueError(f"std_floor: got {std_floor!r}, expected > 0")
        self.params = params
        """`{"actor", "obs_norm"}`: the same pytree as `SACAgent.actor_params` of a state agent."""
        self.keys, self.action_dim = tuple(keys), int(action_dim)
        self.obs_keys = self.keys
        """The observation vector's keys, in order (`data.obs.vector_keys`): what `vector_sampler`'s input holds."""
        self.hidden_dims, self.std_floor = tuple(hidden_dims), float(std_floor)
        actor, log_std_min = make_actor(self.action_dim, self.hidden_dims), float(np.log(std_floor))

        def dist(p: Any, x: jax.Array) -> tuple[jax.Array, jax.Array]:
            mean, log_std = actor.apply({"params": p["actor"]}, normalize_obs(x, p["obs_norm"]))
            return mean, jnp.maximum(log_std, log_std_min)

        def sample_batch(p: Any, x: jax.Array, key: jax.Array, k: int) -> jax.Array:
            mean, log_std = dist(p, x)  # (B, A) each
            shape = (x.shape[0], k, self.action_dim)
            return tanh_gaussian_sample(jnp.broadcast_to(mean[:, None], shape),
                                        jnp.broadcast_to(log_std[:, None], shape), key)[0]

        @partial(jax.jit, static_argnames="deterministic")
        def act_fn(p: Any, x: jax.Array, key: jax.Array | None, deterministic: bool) -> jax.Array:
            mean, log_std = dist(p, x)
            return tanh_gaussian_mode(mean) if deterministic else tanh_gaussian_sample(mean, log_std, key)[0]

        @partial(jax.jit, static_argnames="k")
        def sample_fn(p: Any, x: jax.Array, key: jax.Array, k: int) -> jax.Array:
            # One observation is a batch of one: the same normal draws, so the same actions, as `vector_sampler`.
            return sample_batch(p, x[None], key, k)[0]

        self._act, self._sample, self._sample_batch = act_fn, sample_fn, sample_batch

    def vector_sampler(self) -> tuple[Any, Callable[[Any, jax.Array, jax.Array, int], jax.Array]]:
        """`(params, fn)`: `fn(params, obs, key, k) -> (B, k, A)`, k proposals at each of the B raw float32
        observation vectors `obs` (B, D) in `obs_keys` order; pure JAX, jit-able with `k` static. The function is
        the one `sample_actions` draws with (one row of it is `sample_actions` of that observation) and the same
        object at every call, so a jit that takes it as a static argument compiles once."""
        return self.params, self._sample_batch

    def observe(self, obs: Mapping[str, Any]) -> np.ndarray:
        """The policy's input for one env observation: the float32 vector of `keys`."""
        return agent_obs(flatten_keys(obs), self.keys)

    def act(self, obs: Mapping[str, Any], key: Any, deterministic: bool = False) -> np.ndarray:
        return np.asarray(self._act(self.params, self.observe(obs), None if deterministic else key, deterministic))

    def sample_actions(self, obs: Mapping[str, Any], k: int, key: Any) -> np.ndarray:
        return np.asarray(self._sample(self.params, self.observe(obs), key, int(k)))[:, None, :]

    def reset(self) -> None:
        """BC keeps no memory between steps."""


def restore_latest_policy(folder: Path, step: int, template: Any, summary_name: str) -> Any:
    """The `policy` item of checkpoint `step` in `folder/checkpoints`, restored into `template` (the structure the
    folder's summary `summary_name` describes) after checking every stored shape against it; `RunDirError` naming
    the arrays that do not fit. What `load_bc_policy` and `steering.generalist.load_generalist` share."""
    from serl_stack.checkpoint import POLICY_ITEM, Checkpointer

    checkpoints = Checkpointer(folder / CHECKPOINTS)
    try:
        differences = _shape_differences(checkpoints.stored_shapes(step, POLICY_ITEM), template)
        if differences:
            raise RunDirError(f"checkpoint {step} in {folder / CHECKPOINTS} does not fit {folder / summary_name}: "
                              + "; ".join(differences))
        params, _ = checkpoints.restore_policy(template, step)
    finally:
        checkpoints.close()
    return params


def load_bc_policy(folder: Path) -> tuple[BCPolicy, dict[str, Any]]:
    """The BC policy in `folder` (a `serl train-bc --out` folder) and its `bc.json` summary.

    Restores the latest checkpoint's `policy` item into the template its summary describes (no env is built, no
    optimizer is read). `RunDirError` names a folder, summary or checkpoint that is missing or does not fit."""
    from serl_stack.agents.networks import identity_obs_norm, make_actor

    summary = read_bc_summary(folder)
    steps = checkpoint_steps(folder)
    if not steps:
        raise RunDirError(f"{folder}: no checkpoint in {folder / CHECKPOINTS}; expected the one `serl train-bc` wrote")
    obs_dim, action_dim = int(summary["obs_dim"]), int(summary["action_dim"])
    hidden = tuple(int(h) for h in summary["hidden_dims"])
    zeros = jnp.zeros((1, obs_dim), jnp.float32)
    template = {"actor": make_actor(action_dim, hidden).init(jax.random.PRNGKey(0), zeros)["params"],
                "obs_norm": identity_obs_norm(obs_dim)}
    params = restore_latest_policy(folder, steps[-1], template, BC_SUMMARY)
    policy = BCPolicy(params, tuple(summary["obs_keys"]), action_dim, hidden, float(summary["std_floor"]))
    return policy, summary


__all__ = ["BCPolicy", "EvalError", "Policy", "PolicyRunner", "evaluate", "example_observation", "load_bc_policy",
           "load_policy", "read_bc_summary", "restore_latest_policy"]
