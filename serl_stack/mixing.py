"""Conservative baseline mixing in the actor process: which policy acts at each step of a training episode.

Owns: `check_mixing` (what mixing needs from a config, checked before anything starts), `MixedActing` (the
per-step glue between a mixer from safety/stepmix.py, which only decides, the baseline policy, the learned policy
and the critic's value bound at the current state), keeping the mixer's state across actor restarts, and the
snapshots of "the policy an episode ran" (`save_snapshot` / `load_snapshot`) that benchmarks/conservative.py
measures offline. The baseline is the task's scripted controller (`envs.scripted.make_scripted`), a
checkpointed policy (`mixing.baseline_run`, e.g. behaviour cloning) or any `obs -> action` callable. JAX is
imported only where a policy acts, so this module imports without it (the `serl train` parent process checks
configs with it).
"""

from __future__ import annotations

import copy
import os
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serl_stack.config import Config
from serl_stack.safety.stepmix import LEARNED, EpsMix, StepMix, make_mixer

if TYPE_CHECKING:
    import jax

    from serl_stack.actor import PolicyRunner

BaselinePolicy = Callable[[Mapping[str, Any]], np.ndarray]
SNAPSHOT_DIR = "mixing-snapshots"
MIXER_STATE = "mixer-{actor_id}.pkl"
"""The mixer's state (U's baseline episodes, kappa's calibration runs, the episode count), rewritten after every
episode so a restarted actor continues with it instead of repeating the baseline warm-up."""


def check_mixing(cfg: Config) -> None:
    """ValueError naming the field when `cfg` cannot run with `cfg.mixing` (nothing to check when it is off)."""
    make_mixer(cfg.mixing, discount=cfg.agent.discount, rng=np.random.default_rng(0))  # validates mixing.*
    if cfg.mixing.snapshot_every < 0:
        raise ValueError(f"mixing.snapshot_every: got {cfg.mixing.snapshot_every}, expected >= 0 (0 = never)")
    if cfg.mixing.mode == "off":
        return
    if cfg.env.dense_reward:
        raise ValueError(f"mixing.mode={cfg.mixing.mode} needs rewards >= 0, but env.dense_reward: true adds "
                         "potential shaping that can be negative; expected env.dense_reward: false")
    from serl_stack.envs.scripted import SCRIPTED  # MuJoCo, but no JAX

    if cfg.mixing.baseline_run:
        baseline_run_config(cfg)
    elif cfg.env.id not in SCRIPTED:
        raise ValueError(f"mixing.mode={cfg.mixing.mode} needs a baseline policy: env.id {cfg.env.id!r} has no "
                         f"scripted one (expected one of {sorted(SCRIPTED)}); set mixing.baseline_run to a run "
                         "folder whose checkpoint should act as the baseline")


def baseline_run_config(cfg: Config) -> Config:
    """The config of the run `mixing.baseline_run` names, checked to fit this run (same task, a checkpoint)."""
    from serl_stack.evaluation import EvalError, checkpoint_steps, read_run_config

    run = Path(cfg.mixing.baseline_run).expanduser()
    try:
        run_cfg = read_run_config(run)
    except EvalError as e:
        raise ValueError(f"mixing.baseline_run: {str(e).removeprefix('--run-dir: ')}") from e
    if run_cfg.env.id != cfg.env.id:
        raise ValueError(f"mixing.baseline_run: {run} was trained on env.id {run_cfg.env.id!r}, expected this "
                         f"run's {cfg.env.id!r}")
    if not checkpoint_steps(run):
        raise ValueError(f"mixing.baseline_run: {run} has no checkpoint; expected a finished or interrupted "
                         "`serl train` run folder")
    return run_cfg


def make_baseline(cfg: Config) -> BaselinePolicy:
    """The baseline `cfg.mixing` names: the scripted controller, or a checkpointed policy acting
    deterministically (its own config's observation keys and network; JAX is imported only then)."""
    if not cfg.mixing.baseline_run:
        from serl_stack.envs.scripted import make_scripted

        return make_scripted(cfg.env)
    import jax

    from serl_stack.evaluation import load_policy

    baseline_run_config(cfg)
    _, runner, _ = load_policy(Path(cfg.mixing.baseline_run).expanduser())
    key = jax.random.PRNGKey(0)  # unused by a deterministic policy

    def act(obs: Mapping[str, Any]) -> np.ndarray:
        return runner.act(runner.observe(obs), key, True)

    return act


def state_vector(agent_obs: Any) -> np.ndarray:
    """The flat state part of an agent observation (StepMix compares states; images are left out)."""
    x = agent_obs["state"] if isinstance(agent_obs, Mapping) else agent_obs
    return np.asarray(x, np.float64).reshape(-1)


class MixedActing:
    """One training episode's actions under a mixer: `begin_episode()`, then per step `act(obs, key)` and
    `record_reward(r)`, then `end_episode()` for the log record (eps_k or the switch step, L, U, kappa, return).

    The learned policy acts through `runner` (its current parameters, sampled unless `deterministic`); L comes
    from the critic that the learner broadcasts with them. Until the first parameters arrive every episode is a
    baseline warm-up episode (`mixer.learned_available`), so the actor never waits on the learner to act.
    """

    def __init__(
        self, mixer: EpsMix | StepMix, baseline: BaselinePolicy, runner: PolicyRunner, deterministic: bool = False
    ) -> None:
        self.mixer, self.baseline, self.runner, self.deterministic = mixer, baseline, runner, deterministic
        self.choices: list[str] = []

    @classmethod
    def from_config(cls, cfg: Config, runner: PolicyRunner, seed: int) -> MixedActing | None:
        """The mixer `cfg.mixing.mode` names with its baseline (`make_baseline`); None when mixing is off."""
        check_mixing(cfg)
        mixer = make_mixer(cfg.mixing, discount=cfg.agent.discount, rng=np.random.default_rng(seed))
        if mixer is None:
            return None
        return cls(mixer, make_baseline(cfg), runner)

    def begin_episode(self) -> None:
        self.mixer.learned_available = self.runner.params is not None
        self.mixer.begin_episode()
        self.choices = []

    def act(self, obs: Mapping[str, Any], key: jax.Array) -> np.ndarray:
        import jax

        x = self.runner.observe(obs)
        bound = None
        if self.mixer.needs_bound:
            key, value_key = jax.random.split(key)
            bound = self.runner.value_bound(x, value_key)
        choice = self.mixer.choose(state_vector(x), bound)
        self.choices.append(choice)
        if choice == LEARNED:
            return self.runner.act(x, key, self.deterministic)
        return np.asarray(self.baseline(obs), np.float32)

    def record_reward(self, reward: float) -> None:
        self.mixer.record_reward(reward)

    def end_episode(self) -> dict[str, float]:
        fields = self.mixer.end_episode()
        fields["learned_steps"] = float(sum(c == LEARNED for c in self.choices))
        return fields

    # ------------------------------------------------------------------------------------------ persistence

    def save_state(self, path: Path) -> None:
        """Write the mixer atomically (a crash mid-write leaves the previous state)."""
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            pickle.dump(self.mixer, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def restore_state(self, path: Path) -> bool:
        """Continue with a mixer saved by an earlier run of this actor; False when there is none."""
        if not path.is_file():
            return False
        with open(path, "rb") as f:
            mixer = pickle.load(f)  # our own file in our own run folder
        if type(mixer) is not type(self.mixer):
            raise ValueError(f"{path}: holds a {type(mixer).__name__} mixer, but mixing.mode asks for "
                             f"{type(self.mixer).__name__}; start a new run folder or restore the mode")
        self.mixer = mixer  # EpsMix's generator included: its coin stream continues
        return True


# ----------------------------------------------------------------------------------------------- snapshots


def save_snapshot(run_dir: Path, episode: int, params: Any, mixer: EpsMix | StepMix | None) -> Path:
    """Store the policy training episode `episode` is about to run: the parameters (a numpy pytree, None before
    the first ones: the warm-up policy) and a copy of the mixer as it stands before `begin_episode`."""
    folder = run_dir / SNAPSHOT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"episode-{episode:06d}.pkl"
    body = {"episode": episode, "params": params, "mixer": copy.deepcopy(mixer)}
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(body, f)
    os.replace(tmp, path)
    return path


def load_snapshot(path: Path) -> dict[str, Any]:
    """`{"episode", "params", "mixer"}` as `save_snapshot` wrote them."""
    with open(path, "rb") as f:
        body = pickle.load(f)
    if not isinstance(body, dict) or not {"episode", "params", "mixer"} <= set(body):
        raise ValueError(f"{path}: not a mixing snapshot (expected the keys episode, params, mixer)")
    return body


def snapshots(run_dir: Path) -> list[Path]:
    """A run's snapshots in episode order."""
    return sorted((run_dir / SNAPSHOT_DIR).glob("episode-*.pkl"))
