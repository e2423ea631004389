"""The in-process rollouts of the conservative-mixing benchmark (conservative.py): the baseline's value on the fixed
check states, and the value of the policy a training episode ran, read from the actor's snapshot.

Owns: one env, the baseline policy (`mixing.make_baseline`: the `train-bc` folder the runs mix with, acting
deterministically as in training), one `PolicyRunner` per kind of snapshot, and how a snapshot's episode is
replayed: a fresh copy of the snapshot's mixer per rollout (its own coin stream) draws the episode's plan at
`begin_episode`, before s1, exactly as in training; the plan is a switch step (EpsMix: 0 or never; StepMix: its
drawn switch step), and the rollout runs the baseline before it and the learned policy (sampling, as in
training) from it. The critic's bound is not computed: every mixer draws its plan before the episode and only
follows it while the episode runs, so the bound changes what a mixer learns after the episode, never what this
episode executes. Mode off runs the learned policy alone (random actions before the first parameters, like its
warm-up). Sequential and single-process: the checks run after training, never beside it (2 cores).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from serl_stack.config import Config
from serl_stack.safety.stepmix import LEARNED, NEVER, EpsMix, StepMix


@dataclass(frozen=True)
class Rollout:
    """One episode: its discounted return (the critic's discount, what the mixers bound), whether it succeeded,
    and how many of its steps the learned policy ran (random warm-up actions are not its steps)."""

    value: float
    success: bool
    learned_steps: int
    length: int


class OracleLearned:
    """Stands in for a mixer's `LearnedValue` in the oracle-L ablation: L is the learned policy's value measured
    by Monte-Carlo returns on the check states, so what is left between the rule and the line is the algorithm
    (and U's estimation), not L's."""

    def __init__(self, value: float) -> None:
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"oracle L: got {value!r}, expected a finite value >= 0")
        self.value = float(value)
        self.n = 1_000_000  # "as many returns as wanted": the mixers log it as learned_runs

    def lower(self) -> float:
        return self.value

    def observe(self, realized_return: float) -> None:
        """A replayed episode teaches nothing (the ablation's L is fixed)."""


def planned_switch(mixer: EpsMix | StepMix) -> int:
    """The switch step the mixer drew for the episode that just began (0: the learned policy all episode,
    NEVER: the baseline all episode)."""
    if isinstance(mixer, EpsMix):
        return 0 if mixer.choice == LEARNED else NEVER
    return int(mixer.planned)


class Rollouts:
    """Episodes on fixed seeds in this process; `cfg` is a mixed mode's serl config (env, discount, baseline)."""

    def __init__(self, cfg: Config) -> None:
        from serl_stack.envs import make_env
        from serl_stack.inference import example_observation
        from serl_stack.mixing import make_baseline

        self.env = make_env(cfg.env)
        self.example = example_observation(cfg)
        self.baseline = make_baseline(cfg, self.example)
        self.discount = cfg.agent.discount
        self.agent = cfg.agent
        self.value_samples = cfg.mixing.value_samples
        self._runners: dict[bool, Any] = {}

    def run(self, seed: int, switch: int | None, learned: Callable[[Mapping[str, Any], Any], np.ndarray] | None,
            keys: Any) -> Rollout:
        """One episode from reset seed `seed`: the baseline for steps t < switch, then `learned` (None: random
        actions; switch None or NEVER: the baseline all episode)."""
        obs, _ = self.env.reset(seed=seed)
        self.baseline.reset()
        rewards: list[float] = []
        learned_steps, success, done, t = 0, False, False, 0
        while not done:
            key = next(keys)
            if switch is not None and switch != NEVER and t >= switch:
                if learned is None:  # off before its first parameters: its random warm-up, not a learned step
                    action = self.env.action_space.sample()
                else:
                    action, learned_steps = learned(obs, key), learned_steps + 1
            else:
                action = np.asarray(self.baseline.act(obs, key, True), np.float32)
            obs, reward, terminated, truncated, info = self.env.step(action)
            rewards.append(float(reward))
            success = bool(info.get("success", False))
            done, t = terminated or truncated, t + 1
        value = float(sum(self.discount**i * r for i, r in enumerate(rewards)))
        return Rollout(value, success, learned_steps, len(rewards))

    def baseline_rollouts(self, seeds: range) -> list[Rollout]:
        from serl_stack.inference import KeyStream

        keys = KeyStream(0)
        return [self.run(s, NEVER, None, keys) for s in seeds]

    def runner(self, with_critic: bool) -> Any:
        """The actor's PolicyRunner (a mixed run's snapshots hold the critic too: their layout needs it)."""
        from serl_stack.inference import PolicyRunner

        if with_critic not in self._runners:
            obs, action_dim = self.example
            self._runners[with_critic] = PolicyRunner(obs, action_dim, self.agent,
                                                      critic_samples=self.value_samples if with_critic else 0)
        return self._runners[with_critic]

    def snapshot_rollouts(self, snapshot: Mapping[str, Any], seeds: range, rng_seed: int,
                          oracle_lower: float | None = None, learned_only: bool = False) -> list[Rollout]:
        """The policy a training episode ran, replayed on `seeds` (module docstring). `oracle_lower`: the mixer
        plans with that L instead of its own; `learned_only`: the learned policy alone (its own value)."""
        from serl_stack.inference import KeyStream

        mixer0 = snapshot["mixer"]
        runner = self.runner(mixer0 is not None)
        runner.params, runner.version = None, -1
        if snapshot["params"] is not None:
            runner.load(0, snapshot["params"])
        learned = None if runner.params is None else (lambda o, k: runner.act(o, k, False))
        rng = np.random.default_rng(rng_seed)
        space = self.env.action_space
        space.seed(rng_seed)
        keys = KeyStream(rng_seed)
        out = []
        for seed in seeds:
            if mixer0 is None or learned_only:
                switch = 0
            else:
                mixer = copy.deepcopy(mixer0)  # a fresh copy per rollout: replayed episodes must not teach it
                mixer.rng = np.random.default_rng(int(rng.integers(2**31)))  # its own coins per rollout
                mixer.learned_available = runner.params is not None
                if oracle_lower is not None:
                    mixer.learned = OracleLearned(oracle_lower)
                mixer.begin_episode()
                switch = planned_switch(mixer)
            out.append(self.run(seed, switch, learned, keys))
        return out

    def close(self) -> None:
        self.env.close()
