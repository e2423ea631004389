"""Conservative baseline mixing in the actor process: which policy acts at each step of a training episode.

Owns: `check_mixing` (what mixing needs besides the config's own ranges: a baseline that exists for this task,
checked before anything starts), `MixedActing` (the per-step glue between a mixer from safety/stepmix.py, which
only decides, the baseline policy, the learned policy and the critic's value bound at the current state),
keeping the mixer's state across actor restarts, and the snapshots of "the policy an episode ran"
(`save_snapshot` / `load_snapshot`) that benchmarks/conservative.py measures offline. The on-disk forms are
safety/mixer_state.py's (msgpack of explicit fields, never pickle). The baseline is any `inference.Policy`: the
task's scripted controller (`envs.scripted.make_scripted`) or a checkpointed policy (`mixing.baseline_run`, e.g.
behaviour cloning), acting deterministically. JAX is imported only where a policy acts, so this module imports
without it (the `serl train` parent process checks configs with it).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serl_stack.config import Config, ConfigError
from serl_stack.safety import mixer_state
from serl_stack.safety.estimates import ValueBound
from serl_stack.safety.stepmix import LEARNED, EpsMix, StepMix, make_mixer

if TYPE_CHECKING:
    import jax

    from serl_stack.inference import Policy, PolicyRunner

SNAPSHOT_DIR = "mixing-snapshots"
MIXER_STATE = "mixer-{actor_id}.msgpack"
"""The mixer's state (U's baseline episodes, L's learned returns, StepMix's step data and kappa's calibration
runs, the coin generator, the episode count), rewritten after every episode so a restarted actor continues with
it instead of repeating the baseline warm-up."""


def check_mixing(cfg: Config) -> None:
    """`ConfigError` naming the field when `cfg.mixing` has no baseline to mix with (nothing to check when off).
    The fields' ranges and the rule that mixing needs rewards >= 0 are `config.validate`'s."""
    if cfg.mixing.mode == "off":
        return
    from serl_stack.envs.scripted import SCRIPTED  # MuJoCo, but no JAX

    if cfg.mixing.baseline_run:
        baseline_run_config(cfg)
    elif cfg.env.id not in SCRIPTED:
        raise ConfigError(f"mixing.mode={cfg.mixing.mode} needs a baseline policy: env.id {cfg.env.id!r} has no "
                          f"scripted one (expected one of {sorted(SCRIPTED)}); set mixing.baseline_run to a run "
                          "folder whose checkpoint should act as the baseline")


def baseline_run_config(cfg: Config) -> Config:
    """The config of the run `mixing.baseline_run` names, checked to fit this run (same task, a checkpoint)."""
    from serl_stack.rundir import check_run_folder

    return check_run_folder(cfg.mixing.baseline_run, cfg.env.id, "mixing.baseline_run")


def make_baseline(cfg: Config, example: tuple[Mapping[str, Any], int]) -> Policy:
    """The baseline `cfg.mixing` names: the scripted controller, or a checkpointed policy (its own config's
    observation keys and network, restored through the inference boundary; `example` = an observation of this
    run's env and its action size, which shape it)."""
    if not cfg.mixing.baseline_run:
        from serl_stack.envs.scripted import make_scripted

        return make_scripted(cfg.env)
    from serl_stack.inference import load_policy

    baseline_run_config(cfg)
    return load_policy(Path(cfg.mixing.baseline_run).expanduser(), example=example)[1]


def state_vector(agent_obs: Any) -> np.ndarray:
    """The flat state part of an agent observation (StepMix compares states; images are left out)."""
    x = agent_obs["state"] if isinstance(agent_obs, Mapping) else agent_obs
    return np.asarray(x, np.float64).reshape(-1)


class MixedActing:
    """One training episode's actions under a mixer: `begin_episode()` (the mixer draws the episode's mixture
    there, before the first observation), then per step `act(obs, key)` and `record_reward(r)`, then
    `end_episode()` for the log record (eps_k or the switch plan, L, U, kappa, return).

    The learned policy acts through `runner` (its current parameters, sampled unless `deterministic`); the mixers'
    L comes from the returns of the learned policy's own episodes, and StepMix also asks, while the baseline acts,
    for the bound of the critic the learner broadcasts with the parameters (`mixer.needs_bound`). The baseline
    acts deterministically. Until the first parameters arrive every episode is a baseline warm-up episode
    (`mixer.learned_available`), so the actor never waits on the learner to act. The observation is converted for
    the agent once per step.
    """

    def __init__(
        self, mixer: EpsMix | StepMix, baseline: Policy, runner: PolicyRunner, deterministic: bool = False,
        learned: Policy | None = None,
    ) -> None:
        self.mixer, self.baseline, self.runner, self.deterministic = mixer, baseline, runner, deterministic
        self.learned = learned
        """What acts when the mixer picks the learned side, when it is not `runner` itself (`steering.*`: the
        runner's proposals reranked by a critic); None: `runner`."""
        self.choices: list[str] = []

    @classmethod
    def from_config(cls, cfg: Config, runner: PolicyRunner, seed: int,
                    example: tuple[Mapping[str, Any], int], learned: Policy | None = None) -> MixedActing | None:
        """The mixer `cfg.mixing.mode` names with its baseline (`make_baseline`); None when mixing is off."""
        mixer = make_mixer(cfg.mixing, discount=cfg.agent.discount, rng=np.random.default_rng(seed))
        if mixer is None:
            return None
        check_mixing(cfg)
        return cls(mixer, make_baseline(cfg, example), runner, learned=learned)

    def begin_episode(self) -> None:
        self.mixer.learned_available = self.runner.params is not None
        self.mixer.begin_episode()
        self.baseline.reset()
        if self.learned is not None:
            self.learned.reset()
        self.choices = []

    def act(self, obs: Mapping[str, Any], key: jax.Array) -> np.ndarray:
        import jax

        x = self.runner.observe(obs)
        bound = None
        if self.mixer.needs_bound:
            key, value_key = jax.random.split(key)
            bound = ValueBound.from_q_values(self.runner.q_values(x, value_key))
        choice = self.mixer.choose(state_vector(x), bound)
        self.choices.append(choice)
        if choice == LEARNED:
            if self.learned is not None:
                return np.asarray(self.learned.act(obs, key, self.deterministic), np.float32)
            return self.runner.act_on(x, key, self.deterministic)
        return np.asarray(self.baseline.act(obs, key, True), np.float32)

    def record_reward(self, reward: float) -> None:
        self.mixer.record_reward(reward)

    def end_episode(self) -> dict[str, float]:
        fields = self.mixer.end_episode()
        fields["learned_steps"] = float(sum(c == LEARNED for c in self.choices))
        return fields

    # ------------------------------------------------------------------------------------------ persistence

    def save_state(self, path: Path) -> None:
        """Write the mixer atomically (a crash mid-write leaves the previous state)."""
        mixer_state.save_mixer(path, self.mixer)

    def restore_state(self, path: Path, cfg: Config) -> bool:
        """Continue with a mixer saved by an earlier run of this actor (its coin stream included); False when
        there is none. A file of another mode or schema is a `mixer_state.MixerStateError` naming it."""
        if not path.is_file():
            return False
        self.mixer = mixer_state.load_mixer(path, cfg.mixing, cfg.agent.discount)
        return True


# ----------------------------------------------------------------------------------------------- snapshots


def save_snapshot(run_dir: Path, episode: int, params: Any, mixer: EpsMix | StepMix | None) -> Path:
    """Store the policy training episode `episode` is about to run: the parameters (a numpy pytree, None before
    the first ones: the warm-up policy) and the mixer as it stands before `begin_episode`."""
    folder = run_dir / SNAPSHOT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"episode-{episode:06d}.msgpack"
    mixer_state.save_snapshot(path, episode, params, mixer)
    return path


def load_snapshot(path: Path) -> dict[str, Any]:
    """`{"episode", "params", "mixer"}` as `save_snapshot` wrote them."""
    return mixer_state.load_snapshot(path)


def snapshots(run_dir: Path) -> list[Path]:
    """A run's snapshots in episode order."""
    return sorted((run_dir / SNAPSHOT_DIR).glob("episode-*.msgpack"))
