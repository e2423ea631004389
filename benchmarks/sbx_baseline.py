"""The SBX SAC baseline of `sample_efficiency.py`, set up like for like with ours from the same serl config.

Owns: `SacRun`, the plain description of one run that the benchmark hands to a spawned worker; `train_sac`, that
worker's body (the env behind `FlatObs`, SB3's `VecNormalize`, `sbx.SAC` with our agent's settings, the periodic
evaluation callback applying the benchmark's stop rule, the timing of the update calls); `DemoReplayBuffer`
(`demo_replay_class`), the SB3 replay that fills a share of every minibatch from the demonstrations; and
`differences`, what still differs between ours and this baseline on a config. Stable-Baselines3 and SBX are
imported only inside a run, so the benchmark's `--learners ours` does not need them.

`train_sac` stays a module-level function of this module: `benchlib.run_in_worker` starts it with the spawn start
method, which pickles it by reference (`sbx_baseline.train_sac`) and imports this module in the worker, whose
`sys.path` is the parent's (holding `benchmarks/`, as for every script here). `SacRun.at_stop_level` travels the
same way, so it must be a module-level function or a `functools.partial` of one."""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serl_stack.config import Config, load


@dataclass(frozen=True)
class SacRun:
    """One SBX run: everything the worker needs, pickled to it."""

    config: Path
    """The serl config file both learners read (env, agent, replay and train settings)."""
    overrides: tuple[str, ...]
    """The run's `--set` overrides of that config (the benchmark's: seed, length, evaluation, stop rule, demos)."""
    seed: int
    """`sbx.SAC`'s seed."""
    demo_dir: Path
    """The recorded demonstrations: a share of every minibatch, and the start of the observation statistics."""
    eval_every: int
    """Env steps between evaluations (the first at the first multiple above train.start_steps)."""
    eval_episodes: int
    """Deterministic episodes per evaluation, on seeds train.eval_seed + i."""
    stop_after: int
    """The run ends after this many consecutive evaluations for which `at_stop_level` holds."""
    at_stop_level: Callable[[float], bool]
    """Whether one evaluation's success rate reaches the level that ends the run (the benchmark's rule)."""


# ------------------------------------------------------------------------------------------------ the run


def train_sac(run: SacRun) -> dict[str, Any]:
    """One SBX SAC run on `run.config` (the body of the spawned worker, see the module docstring); the run's
    evaluations, env steps and update timings."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    import gymnasium as gym
    import sbx
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from serl_stack.agents.networks import OBS_NORM_CLIP, OBS_NORM_MIN_STD
    from serl_stack.data.obs import flatten_keys, to_vector, vector_keys
    from serl_stack.envs import make_env

    serl_cfg = load(run.config, list(run.overrides))
    agent, train = serl_cfg.agent, serl_cfg.train

    class FlatObs(gym.ObservationWrapper):
        """The observation vector our agent sees (`agent.obs_keys` through `vector_keys`, same order), as a Box."""

        def __init__(self, env: gym.Env) -> None:
            super().__init__(env)
            obs, _ = env.reset(seed=0)
            self.keys = vector_keys(flatten_keys(obs), agent.obs_keys)
            dim = to_vector(flatten_keys(obs), self.keys).shape[0]
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)

        def observation(self, observation: Any) -> np.ndarray:
            return to_vector(flatten_keys(observation), self.keys).astype(np.float32)

    eval_env = FlatObs(make_env(serl_cfg.env))
    demos = demo_transitions(run.demo_dir, eval_env.keys)
    venv: Any = DummyVecEnv([lambda: FlatObs(make_env(serl_cfg.env))])
    if agent.normalize_observations:
        venv = VecNormalize(venv, norm_obs=True, norm_reward=False, clip_obs=OBS_NORM_CLIP,
                            epsilon=OBS_NORM_MIN_STD ** 2, gamma=agent.discount)
        venv.obs_rms.update(demos["observations"])  # as ours, whose statistics include the demonstrations
    steps: list[int] = []
    success: list[float] = []

    class Evaluate(BaseCallback):
        streak = 0

        def _on_step(self) -> bool:
            n = self.num_timesteps
            if n % run.eval_every or n <= train.start_steps:
                return True
            wins = 0
            for i in range(run.eval_episodes):
                obs, _ = eval_env.reset(seed=train.eval_seed + i)
                done, info = False, {}
                while not done:
                    x = venv.normalize_obs(obs) if agent.normalize_observations else obs
                    action, _ = self.model.predict(x, deterministic=True)
                    obs, _, terminated, truncated, info = eval_env.step(action)
                    done = terminated or truncated
                wins += bool(info.get("success", False))
            steps.append(n)
            success.append(wins / run.eval_episodes)
            print(f"[sbx seed {run.seed}] {n} env steps: success {success[-1]:.0%} on {run.eval_episodes} episodes "
                  f"({time.monotonic() - start:.0f} s)", file=sys.stderr, flush=True)  # progress of a long run
            self.streak = self.streak + 1 if run.at_stop_level(success[-1]) else 0
            return self.streak < run.stop_after  # False ends learn()

    model = sbx.SAC(
        "MlpPolicy", venv, learning_rate=agent.actor_lr, qf_learning_rate=agent.critic_lr,
        buffer_size=serl_cfg.replay.capacity, learning_starts=train.start_steps, batch_size=agent.batch_size,
        tau=agent.tau, gamma=agent.discount, train_freq=1, gradient_steps=agent.utd, policy_delay=agent.utd,
        ent_coef=f"auto_{agent.init_temperature}",
        target_entropy=-agent.target_entropy_scale * float(np.prod(eval_env.action_space.shape)),
        replay_buffer_class=demo_replay_class(),
        replay_buffer_kwargs={"demos": demos, "minibatch_size": agent.batch_size,
                              "demo_fraction": serl_cfg.replay.demo_fraction},
        policy_kwargs={"net_arch": list(agent.hidden_dims), "n_critics": agent.num_critics,
                       "layer_norm": agent.critic_layer_norm},
        seed=run.seed, verbose=0,
    )
    in_train = [0.0, 0]
    train_fn = model.train

    def timed_train(gradient_steps: int, batch_size: int) -> None:
        start = time.monotonic()
        train_fn(gradient_steps=gradient_steps, batch_size=batch_size)
        in_train[0] += time.monotonic() - start
        in_train[1] += 1

    model.train = timed_train  # counts and times the update calls learn() makes
    start = time.monotonic()
    model.learn(total_timesteps=train.total_env_steps, callback=Evaluate(), progress_bar=False)
    learn_s = time.monotonic() - start
    calls = in_train[1]
    return {"seed": run.seed, "eval_env_steps": steps, "eval_success": success, "eval_episodes": run.eval_episodes,
            "env_steps": int(model.num_timesteps), "learn_s": round(learn_s, 1), "updates": calls,
            "updates_per_s": calls / learn_s, "train_updates_per_s": calls / in_train[0] if in_train[0] else None,
            "sbx": sbx.__version__}


# ------------------------------------------------------------------------------------------------ demos


def demo_transitions(demo_dir: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Every transition in `demo_dir` (the project's reader, as the learner loads them) as agent-batch arrays:
    observations (N, D) in `keys` order, actions, rewards, next_observations, masks = 1 - terminated."""
    from serl_stack.data.demos import replay_from_demos
    from serl_stack.data.replay import to_agent_batch

    demos = replay_from_demos(demo_dir)
    return to_agent_batch(demos.take(np.arange(len(demos))), keys)


@functools.cache
def demo_replay_class() -> type:
    """`DemoReplayBuffer`, built on first use so `--learners ours` needs no Stable-Baselines3."""
    from stable_baselines3.common.buffers import ReplayBuffer
    from stable_baselines3.common.type_aliases import ReplayBufferSamples

    class DemoReplayBuffer(ReplayBuffer):
        """SB3's replay plus fixed demonstration transitions that fill `round(demo_fraction * minibatch_size)`
        rows of every minibatch: SBX samples `gradient_steps * batch_size` rows at once and slices them into
        consecutive minibatches, so each slice gets its demo rows first, then the online ones (as ours). Demo
        observations are stored raw and normalized at sample time like SB3's own (`env`: the VecNormalize)."""

        def __init__(self, buffer_size: int, observation_space: Any, action_space: Any, *args: Any,
                     demos: dict[str, np.ndarray], minibatch_size: int, demo_fraction: float = 0.5,
                     **kwargs: Any) -> None:
            super().__init__(buffer_size, observation_space, action_space, *args, **kwargs)
            n = len(demos["actions"])
            want = {"observations": (n, *self.obs_shape), "next_observations": (n, *self.obs_shape),
                    "actions": (n, self.action_dim), "rewards": (n,), "masks": (n,)}
            for key, shape in want.items():
                if np.shape(demos[key]) != shape:
                    raise ValueError(f"demos[{key!r}]: got shape {np.shape(demos[key])}, expected {shape}")
            if n < 1 or minibatch_size < 1 or not 0 <= demo_fraction <= 1:
                raise ValueError(f"demos, minibatch_size, demo_fraction: got {n} transitions, {minibatch_size}, "
                                 f"{demo_fraction}; expected >= 1, >= 1, in [0, 1]")
            low, high = action_space.low, action_space.high
            self.demos = {k: np.asarray(v, np.float32) for k, v in demos.items()}
            # SB3 stores actions scaled to [-1, 1]; the demonstrations hold the env's own action units.
            self.demos["actions"] = (2.0 * (self.demos["actions"] - low) / (high - low) - 1.0).astype(np.float32)
            self.minibatch_size = minibatch_size
            self.n_demo = round(demo_fraction * minibatch_size)

        def sample(self, batch_size: int, env: Any = None) -> ReplayBufferSamples:
            if batch_size % self.minibatch_size:
                raise ValueError(f"batch_size: got {batch_size}, expected a multiple of {self.minibatch_size}")
            k, n_online = batch_size // self.minibatch_size, self.minibatch_size - self.n_demo
            idx = np.random.randint(0, len(self.demos["actions"]), size=k * self.n_demo)
            d = self.demos
            demo = [self._normalize_obs(d["observations"][idx], env), d["actions"][idx],
                    self._normalize_obs(d["next_observations"][idx], env), (1.0 - d["masks"][idx])[:, None],
                    self._normalize_reward(d["rewards"][idx][:, None], env)]
            if n_online == 0:
                return ReplayBufferSamples(*(self.to_torch(np.asarray(x, np.float32)) for x in demo))
            online = [x.numpy() for x in super().sample(k * n_online, env)[:5]]
            parts = [interleave(np.asarray(a, np.float32), np.asarray(b, np.float32), k)
                     for a, b in zip(demo, online, strict=True)]
            return ReplayBufferSamples(*(self.to_torch(x) for x in parts))

    return DemoReplayBuffer


def interleave(first: np.ndarray, second: np.ndarray, k: int) -> np.ndarray:
    """`k` minibatches, each `first`'s next slice followed by `second`'s: (k*a, ...) + (k*b, ...) -> (k*(a+b), ...)."""
    a, b = first.reshape(k, -1, *first.shape[1:]), second.reshape(k, -1, *second.shape[1:])
    return np.concatenate([a, b], axis=1).reshape(-1, *first.shape[1:])


# ------------------------------------------------------------------------------------------------ differences


def differences(serl_cfg: Config) -> list[str]:
    """What still differs between ours and the SBX baseline on this config (values read from it)."""
    from serl_stack.agents.networks import OBS_NORM_CLIP, OBS_NORM_MIN_STD

    a, t, tr = serl_cfg.agent, serl_cfg.train, serl_cfg.transport
    out = []
    if 0 < a.critic_subset < a.num_critics:
        out.append(f"TD target: ours takes the min over a random subset of agent.critic_subset={a.critic_subset} "
                   f"of the {a.num_critics} target critics, drawn per critic step (RLPD); SBX the min over all "
                   f"{a.num_critics}")
    out += [
        "actor loss: ours uses the mean of the critics' Q values (jaxrl/RLPD), SBX their min",
        "temperature loss: ours alpha * (entropy - target), SBX log(alpha) * (entropy - target); both learn "
        "log(alpha), so the gradients differ by a factor alpha",
        "critic loss scale: ours the squared error averaged over critics, SBX 0.5 x its sum over critics (Adam "
        "makes the step nearly independent of the scale)",
        "initialization: ours xavier_uniform kernels, SBX flax's default lecun_normal",
    ]
    if a.temp_lr != a.actor_lr:
        out.append(f"temperature learning rate: SBX uses its actor's ({a.actor_lr:g}), ours agent.temp_lr="
                   f"{a.temp_lr:g}")
    if a.normalize_observations:
        refresh = (f"recomputed every agent.obs_norm_refresh={a.obs_norm_refresh} updates" if a.obs_norm_refresh
                   else "frozen after the warm-up")
        out.append(f"observation statistics: ours the mean/std of every stored observation plus the "
                   f"demonstrations, {refresh} and sent to the actor with the parameters; SBX VecNormalize's "
                   "running mean/var, started from the demonstrations' observations and updated at every env step "
                   f"(replay samples normalized with the current statistics); both clip at +-{OBS_NORM_CLIP:g}; "
                   f"std floor: ours max(std, {OBS_NORM_MIN_STD:g}), SBX sqrt(var + {OBS_NORM_MIN_STD:g}**2)")
    out += [
        f"acting: ours' actor runs in its own process on parameters broadcast every transport.params_every="
        f"{tr.params_every} updates and may run up to train.throttle_slack={t.throttle_slack} env steps ahead of "
        "the learner's updates, and evaluates with the parameters it last received; SBX alternates one env step "
        "and one update in one process and evaluates with its current parameters",
        ("replay sampling: ours inside the jitted update on the device mirror (replay.on_device)" if
         serl_cfg.replay.on_device else "replay sampling: ours from its host replay (replay.on_device false)")
        + "; SBX from SB3's host (numpy) replay, copied in per update",
        "warm-up: both act uniformly at random for train.start_steps env steps; ours' first update comes at "
        "start_steps transitions, SBX's after start_steps + 1",
        "wall-clock: ours is the whole `serl train` (learner and actor processes, compilation, checkpoints every "
        "train.checkpoint_every updates, the final evaluation of train.eval_episodes); SBX's the whole worker "
        "(spawn, imports, compilation, learn(); no checkpoints, no final evaluation)",
        "updates/s: ours the median of the learner's logged rate; SBX its update calls / learn() seconds "
        "(train_updates_per_s: / seconds inside train())",
    ]
    return out
