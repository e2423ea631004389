"""The actor process loop: step the env with the newest policy, stream transitions, evaluate.

Owns: the actor's bookkeeping (episodes, pacing against the learner, evaluations every `train.eval_every` env
steps on a separate env, early stopping at `train.stop_at_success`, the final evaluation). It imports only the
policy's inference function and never the learner, so it starts fast and runs next to the robot.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from serl_stack.config import Config, TrainConfig
from serl_stack.data.obs import IMAGE_PREFIX, agent_obs, flatten_keys, image_keys_of, vector_dim, vector_keys
from serl_stack.evaluation import evaluate
from serl_stack.mixing import MIXER_STATE, MixedActing, save_snapshot
from serl_stack.safety.estimates import ValueBound
from serl_stack.transport.actor_client import ActorClient
from serl_stack.transport.auth import curve_client_from_config
from serl_stack.transport.outbox import DurableOutbox
from serl_stack.transport.protocol import make_spec
from serl_stack.transport.spool import ActorSpool

FLUSH_EVERY = 16
"""Transitions per message; a batch is also sent at every episode end and before waiting on the learner."""
LEARNER_SILENCE_WARN_S = 30.0


def actor_may_step(env_steps: int, updates: int, start_steps: int, slack: int) -> bool:
    """Sim pacing: env steps after the warm-up may lead learner updates by at most `slack`."""
    return env_steps < start_steps or env_steps - start_steps <= updates + slack


class PolicyRunner:
    """The newest policy parameters and a jitted inference function over env observations."""

    def __init__(self, example_obs: dict[str, Any], action_dim: int, cfg: Config) -> None:
        from serl_stack.agents.policy import make_policy_fn, make_value_fn

        flat = flatten_keys(example_obs)
        self.keys = vector_keys(flat, cfg.agent.obs_keys)
        self.image_keys = image_keys_of(flat, cfg.agent.image_keys)
        image_shapes = {k[len(IMAGE_PREFIX):]: tuple(np.shape(flat[k])) for k in self.image_keys}
        obs_dim = vector_dim(flat, self.keys)
        init_params, self._policy = make_policy_fn(obs_dim, action_dim, cfg.agent, image_shapes or None)
        self._q_values = None
        if cfg.mixing.mode != "off":  # the learner then broadcasts the critic too
            init_params, self._q_values = make_value_fn(obs_dim, action_dim, cfg.agent, cfg.mixing.value_samples,
                                                        image_shapes or None)
        self._template = init_params(jax.random.PRNGKey(0))
        self.params: Any = None
        self.version = -1

    def observe(self, obs: dict[str, Any]) -> Any:
        """The agent's input for one env observation (the same conversion the learner applies to its batches)."""
        return agent_obs(flatten_keys(obs), self.keys, self.image_keys)

    def load(self, version: int, state_dict: Any) -> None:
        """Adopt broadcast parameters (a nested dict of arrays) if newer than what we have."""
        if version <= self.version:
            return
        self.params = serialization.from_state_dict(self._template, state_dict)
        self.version = version

    def act(self, obs_vec: np.ndarray, key: jax.Array, deterministic: bool) -> np.ndarray:
        return np.asarray(self._policy(self.params, obs_vec, key, deterministic))

    def value_bound(self, obs_vec: Any, key: jax.Array) -> ValueBound:
        """The critic ensemble's bound on the current policy's value at one observation (mixing only)."""
        if self._q_values is None:
            raise RuntimeError("PolicyRunner.value_bound: mixing.mode is off, so the learner sends no critic")
        return ValueBound.from_q_values(np.asarray(self._q_values(self.params, obs_vec, key)))


def check_eval_settings(t: TrainConfig) -> None:
    """ValueError naming the `train.*` evaluation field that is out of range."""
    if t.eval_every < 0:
        raise ValueError(f"train.eval_every: got {t.eval_every}, expected >= 0 env steps (0 = final evaluation only)")
    if t.max_episodes < 0:
        raise ValueError(f"train.max_episodes: got {t.max_episodes}, expected >= 0 (0 = no limit)")
    if t.eval_every_episodes < 1:
        raise ValueError(f"train.eval_every_episodes: got {t.eval_every_episodes}, expected >= 1")
    if not 0.0 <= t.stop_at_success <= 1.0:
        raise ValueError(f"train.stop_at_success: got {t.stop_at_success}, expected a success rate in [0, 1]")
    if t.stop_at_success > 0 and t.eval_every == 0:
        raise ValueError("train.stop_at_success needs evaluations during training: set train.eval_every > 0")


class Actor:
    """Runs `cfg.train.total_env_steps` env steps (fewer when `train.stop_at_success` is reached), then the
    final evaluation; `run()` returns an exit code."""

    def __init__(self, cfg: Config, run_dir: Path, parent_pid: int | None = None):
        from serl_stack.envs import make_env

        check_eval_settings(cfg.train)
        self.cfg = cfg
        self.run_dir = run_dir
        self.parent_pid = parent_pid
        t = cfg.transport
        for name in ("transitions_port", "params_port"):
            if getattr(t, name) == 0:
                raise ValueError(f"transport.{name} is 0; the actor needs the learner's port (expected 1..65535)")
        security = curve_client_from_config(t)
        if security is not None and security.actor_id not in (None, t.actor_id):
            raise ValueError(
                f"transport.actor_id is {t.actor_id!r} but the key {t.actor_secret_key} is bound to "
                f"{security.actor_id!r}; the learner would reject every message as spoofed"
            )
        actor_id = t.actor_id
        self.client = ActorClient(t.host, t.transitions_port, t.params_port, actor_id, t.max_message_bytes, security)
        self._warned_silent = False
        self.env = make_env(cfg.env)
        # Evaluations during training run on their own env, so the training episode in progress is not cut.
        self.eval_env = make_env(cfg.env) if cfg.train.eval_every > 0 else None
        # Each put reaches the OS at once (survives a crash of this process); fsyncs are batched per flush.
        self.spool = ActorSpool(run_dir / f"spool-{actor_id}", fsync=False)
        self.outbox: DurableOutbox | None = None
        self._unflushed = 0
        self.policy: PolicyRunner | None = None
        self.keys: tuple[str, ...] = ()

    def _flush(self) -> None:
        if self.outbox is not None:
            self.outbox.flush()
        self._unflushed = 0

    def _poll(self, timeout_ms: int) -> None:
        self.client.poll(timeout_ms)
        if self.outbox is not None:
            while self.client.replies:
                self.outbox.on_reply(*self.client.replies.popleft())
            if self.outbox.refused_reason is not None:
                raise SystemExit(f"actor: the learner refused this actor: {self.outbox.refused_reason}")
            self.outbox.maintain()
        t = self.cfg.transport
        if time.monotonic() - self.client.last_sent > t.heartbeat_s:
            self.client.send("ping", {})
        silent = self.client.silent_for() > t.learner_silent_warn_s
        if silent and not self._warned_silent:
            print(f"actor: the learner has been silent for over {t.learner_silent_warn_s:g} s; "
                  "acting on the last parameters and spooling transitions", flush=True)
        self._warned_silent = silent
        body = self.client.params_body
        if self.policy is not None and body is not None and "params" in body:
            self.policy.load(self.client.params_version, body["params"])
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            raise SystemExit("actor: parent process is gone; stopping")

    def _wait(self, ready, what: str) -> None:
        """Poll the learner until `ready()`; warn when it has been silent for long."""
        self._flush()
        since = time.monotonic()
        while not ready():
            self._poll(100)
            if time.monotonic() - since > LEARNER_SILENCE_WARN_S:
                print(f"actor: still waiting for the learner ({what}); is it running?", flush=True)
                since = time.monotonic()

    def _updates(self) -> int:
        return int(self.client.learner_status.get("updates", 0))

    def run(self) -> int:
        t = self.cfg.train
        rng_key = jax.random.PRNGKey(t.seed + 1)
        self.env.action_space.seed(t.seed)
        obs, _ = self.env.reset(seed=t.seed)
        action_dim = int(np.prod(self.env.action_space.shape))
        try:
            self.policy = PolicyRunner(obs, action_dim, self.cfg)
        except KeyError as e:  # agent.obs_keys / image_keys name what the env does not have: a config error
            raise SystemExit(f"actor: {e.args[0]}") from e
        self.keys = self.policy.keys
        ledger = self.run_dir / f"ledger-{self.client.actor_id}.txt" if self.cfg.transport.ledger else None
        spec = make_spec(obs, np.zeros(action_dim, np.float32))
        self.outbox = DurableOutbox(self.client, self.spool, spec, ledger=ledger)
        # Transitions spooled by an earlier run of this actor count: a restarted actor continues, not repeats.
        first_step = self.spool.next_seq() - 1
        episode, ep_return, ep_len = 0, 0.0, 0
        collected = t.total_env_steps
        try:
            try:
                mixing = MixedActing.from_config(self.cfg, self.policy, t.seed + 2)
            except ValueError as e:
                raise SystemExit(f"actor: {e}") from e
            mixer_state = self.run_dir / MIXER_STATE.format(actor_id=self.client.actor_id)
            if mixing is not None and mixing.restore_state(mixer_state):
                episode = mixing.mixer.episode + 1
                print(f"actor: {self.cfg.mixing.mode} continues at episode {episode} with U from "
                      f"{mixing.mixer.baseline.n} baseline episodes", flush=True)
            self._begin_episode(mixing, episode)
            for step in range(first_step, t.total_env_steps):
                if not actor_may_step(step, self._updates(), t.start_steps, t.throttle_slack):
                    self._wait(
                        lambda s=step: actor_may_step(s, self._updates(), t.start_steps, t.throttle_slack),
                        "updates",
                    )
                if mixing is None and step < t.start_steps:
                    action = self.env.action_space.sample()  # random warm-up: no key to split (~30 us a step)
                else:
                    rng_key, key = jax.random.split(rng_key)
                    if mixing is not None:  # the mixer picks the baseline or the learned policy (never random)
                        action = mixing.act(obs, key)
                    else:
                        if self.policy.params is None:
                            self._wait(lambda: self.policy.params is not None, "first parameters")
                        action = self.policy.act(self.policy.observe(obs), key, False)
                next_obs, reward, terminated, truncated, info = self.env.step(action)
                if mixing is not None:
                    try:
                        mixing.record_reward(float(reward))
                    except ValueError as e:  # a negative reward: the mixers' guarantee does not hold
                        self._flush()
                        raise SystemExit(f"actor: {e}") from e
                ep_return += float(reward)
                ep_len += 1
                self.outbox.add(
                    {
                        "observation": obs,
                        "action": np.asarray(action, dtype=np.float32),
                        # What the robot did (a latency or safety layer may change it), else the policy's action.
                        "executed_action": np.asarray(info.get("executed_action", action), dtype=np.float32),
                        "reward": float(reward),
                        "next_observation": next_obs,
                        "terminated": bool(terminated),
                        "truncated": bool(truncated),
                        "episode": episode,
                    }
                )
                obs = next_obs
                if terminated or truncated:
                    self._flush()
                    body = {"episode": episode, "return": ep_return, "length": ep_len,
                            # None where the env has no notion of success (e.g. HalfCheetah), not "failed".
                            "success": bool(info["success"]) if "success" in info else None}
                    if "safety_counts" in info:
                        body["safety"] = {k: int(v) for k, v in info["safety_counts"].items()}
                    if mixing is not None:
                        body["mixing"] = mixing.end_episode()
                        mixing.save_state(mixer_state)
                        self._log_mixing({**body["mixing"], "env_steps": step + 1, "length": ep_len,
                                          "success": body["success"]})
                    self.client.send("episode", body)
                    episode, ep_return, ep_len = episode + 1, 0.0, 0
                    if t.max_episodes and episode >= t.max_episodes:
                        collected = step + 1
                        print(f"actor: train.max_episodes={t.max_episodes} reached after {collected} env steps; "
                              "ending the run", flush=True)
                        break
                    obs, _ = self.env.reset()
                    self._begin_episode(mixing, episode)
                else:
                    self._unflushed += 1
                    if self._unflushed >= FLUSH_EVERY:
                        self._flush()
                self._poll(0)
                if self._periodic_eval(step + 1):
                    collected = step + 1
                    print(f"actor: evaluation success reached train.stop_at_success={t.stop_at_success:g} after "
                          f"{collected} env steps; ending the run", flush=True)
                    break
            self._wait(lambda: len(self.spool) == 0, "every transition on the learner's disk")
            self.client.send("done", {"env_steps": collected})
            print("actor: collection finished; waiting for the final parameters", flush=True)
            self._wait(lambda: bool((self.client.params_body or {}).get("final")), "final parameters")
            result = {**evaluate(self.env, self.policy, t.eval_episodes, t.eval_seed),
                      "env_steps": collected, "final": True}
            (self.run_dir / "eval.json").write_text(json.dumps(result, indent=2))
            seq = self.client.send("eval", result)
            self._wait(lambda: self.client.acked_seq >= seq, "acknowledgement of the evaluation")
            return 0
        except KeyboardInterrupt:
            self._flush()
            print(f"actor: interrupted after episode {episode}", flush=True)
            return 130
        finally:
            self.client.close()
            if self.outbox is not None:
                self.outbox.close()
            self.spool.close()
            self.env.close()
            if self.eval_env is not None:
                self.eval_env.close()

    def _begin_episode(self, mixing: MixedActing | None, episode: int) -> None:
        """Start a training episode: snapshot the policy it runs (every `mixing.snapshot_every` episodes), then
        let the mixer decide its warm-up status."""
        every = self.cfg.mixing.snapshot_every
        if every and episode % every == 0:
            assert self.policy is not None
            params = self.policy.params
            if params is not None:
                params = jax.tree.map(np.asarray, serialization.to_state_dict(params))
            save_snapshot(self.run_dir, episode, params, mixing.mixer if mixing is not None else None)
        if mixing is not None:
            mixing.begin_episode()

    def _log_mixing(self, record: dict[str, Any]) -> None:
        """One line per mixed training episode in `<run>/mixing-<actor id>.jsonl` (eps_k / switch step, L, U)."""
        with open(self.run_dir / f"mixing-{self.client.actor_id}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def _periodic_eval(self, env_steps: int) -> bool:
        """Every `train.eval_every` env steps once the policy acts: evaluate the current parameters on the
        held-out seeds and send the result (logged by the learner over env steps). True = stop the run."""
        t = self.cfg.train
        if self.eval_env is None or env_steps % t.eval_every or env_steps <= t.start_steps:
            return False
        assert self.policy is not None and self.policy.params is not None  # the policy acts after start_steps
        self._flush()
        result = {**evaluate(self.eval_env, self.policy, t.eval_every_episodes, t.eval_seed),
                  "env_steps": env_steps, "final": False}
        self.client.send("eval", result)
        success = result["success_rate"]
        return t.stop_at_success > 0 and success is not None and success >= t.stop_at_success


def run_actor(cfg: Config, run_dir: Path, parent_pid: int | None = None) -> int:
    run_dir.mkdir(parents=True, exist_ok=True)
    return Actor(cfg, run_dir, parent_pid=parent_pid).run()
