"""The actor process loop: step the env with the newest policy, stream transitions, evaluate.

Owns: one actor's bookkeeping — its share of the run (`train.total_env_steps` and `train.max_episodes` are split
over `train.num_actors` actors by `share`), its own seed, spool, episode counter and mixer state (all keyed by
its id, so a restarted actor continues where it stopped), pacing against the learner (the sim throttle counts
every actor's steps), evaluations during training (actor 0 only) and early stopping, the final evaluation,
progress lines and the closing summary. Under `steering.online` the learner's broadcasts are the steering critic's
(the policy the actor steers, `steering.base`, is fixed), the steered policy acts from the first step (no random
warm-up), and every transition carries the env's `success` flag (the learner labels the critic's data with it).
It imports only the inference boundary (`serl_stack.inference`), the mixers and the transport, never the learner,
so it starts fast and runs next to the robot.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from serl_stack import interrupt
from serl_stack.config import Config, ConfigError
from serl_stack.errors import ProcessGone, TransportError
from serl_stack.inference import KeyStream, Policy, PolicyRunner, evaluate
from serl_stack.mixing import MIXER_STATE, MixedActing, save_snapshot
from serl_stack.rundir import actor_index, share, write_config
from serl_stack.steering.acting import steered_policy
from serl_stack.transport.actor_client import ActorClient
from serl_stack.transport.auth import curve_client_from_config
from serl_stack.transport.learner_server import endpoint
from serl_stack.transport.outbox import DurableOutbox
from serl_stack.transport.protocol import make_spec, pack
from serl_stack.transport.spool import ActorSpool

FLUSH_EVERY = 16
"""Transitions per message; a batch is also sent at every episode end and before waiting on the learner. Each flush
also asks the spool's flusher thread to fsync what was put."""
_WARM_KEY = np.zeros(2, np.uint32)
"""The key of `warm_step`'s discarded policy call."""
SPOOL_MAX_UNSYNCED = 4 * FLUSH_EVERY
"""The power-loss window: at most this many transitions are spooled (in the OS, so a killed actor loses none) but
not yet fsynced. Normally it is one flush's worth plus the steps one fsync takes (16 steps + a few ms: ~1.6 s at
10 Hz); a put waits for the disk only when an fsync stalls this long (64 steps: 6.4 s at 10 Hz)."""
LEARNER_SILENCE_WARN_S = 30.0
PROGRESS_EVERY_S = 15.0
SEED_STRIDE = 1000
"""Actor i resets its env and draws its random warm-up actions from `train.seed + SEED_STRIDE * i` (actor 0 keeps
the run's seed; held-out evaluation seeds start at `train.eval_seed`, far above)."""
STATE_FILE = "actor-{actor_id}.json"
"""`{"schema": 1, "next_episode": n}`: the episode counter, so a restarted actor neither repeats episode ids nor
counts `train.max_episodes` from 0 again."""


def actor_may_step(env_steps: int, updates: int, start_steps: int, slack: int) -> bool:
    """Sim pacing: env steps (of all actors) after the warm-up may lead learner updates by at most `slack`."""
    return env_steps < start_steps or env_steps - start_steps <= updates + slack


class Actor:
    """Runs this actor's share of `train.total_env_steps` (fewer when `train.stop_at_success` is reached or
    `train.max_episodes` is), then its final evaluation; `run()` returns an exit code."""

    def __init__(self, cfg: Config, run_dir: Path, parent_pid: int | None = None):
        from serl_stack.envs import make_env

        self.cfg = cfg
        self.run_dir = run_dir
        self.parent_pid = parent_pid
        t, train = cfg.transport, cfg.train
        self.actor_id = t.actor_id
        self.index = actor_index(t.actor_id, train.num_actors)
        self.quota = share(train.total_env_steps, train.num_actors, self.index)
        self.episode_limit = share(train.max_episodes, train.num_actors, self.index) if train.max_episodes else None
        self.seed = train.seed + SEED_STRIDE * self.index
        for name in ("transitions_port", "params_port"):
            if getattr(t, name) == 0:
                raise ConfigError(f"transport.{name}: got 0, expected the learner's port (1..65535; `serl learner` "
                                  "prints the ports it listens on)")
        security = curve_client_from_config(t)
        if security is not None and security.actor_id not in (None, t.actor_id):
            raise ConfigError(f"transport.actor_id: got {t.actor_id!r}, but the key {t.actor_secret_key} is bound to "
                              f"{security.actor_id!r}; the learner would reject every message as spoofed")
        self.learner_at = f"{endpoint(t.host, t.transitions_port)} (transitions), {endpoint(t.host, t.params_port)} " \
                          "(parameters)"
        self.client = ActorClient(t.host, t.transitions_port, t.params_port, t.actor_id, t.max_message_bytes, security)
        self._warned_silent = False
        self.on_robot = cfg.env.kind == "franka"
        """The real (or fake) arm through the ROS 2 bridge: paced by the wall clock, never by the sim throttle, and
        one arm for training and evaluation episodes alike."""
        self.env = make_env(cfg.env, bridge=cfg.bridge)
        self.eval_env: Any = None
        if train.eval_every > 0 and self.index == 0:
            # In sim, evaluations run on their own env, so the training episode in progress is not cut; a robot
            # has one arm: evaluations then wait for the end of a training episode and use it.
            self.eval_env = self.env if self.on_robot else make_env(cfg.env)
        # Each put reaches the OS at once (survives a crash of this process); the fsync each flush asks for runs on
        # the spool's flusher thread, so the control step never waits on the disk (an fsync took up to ~5 ms).
        self.spool = ActorSpool(run_dir / f"spool-{t.actor_id}", fsync=False, max_bytes=t.spool_max_bytes,
                                background_sync=True, max_unsynced=SPOOL_MAX_UNSYNCED)
        self.outbox: DurableOutbox | None = None
        self._unflushed = 0
        self.policy: PolicyRunner | None = None
        self.steered: Policy | None = None
        """`steering.*`: the policy training episodes and evaluations act with (proposals reranked by a critic)."""
        self.online = cfg.steering.enabled and cfg.steering.online
        """`steering.online`: the learner broadcasts the critic that steers, fine-tuned on this run's transitions."""
        self.steps = 0
        """This actor's env steps so far, earlier runs of it included (its spool's sequence numbers)."""
        self.episodes = 0
        self._successes: list[bool] = []
        self._next_progress = time.monotonic() + PROGRESS_EVERY_S
        self._last_progress = (0, 0)
        self._said_no_params = False
        self.warm_input: dict[str, Any] | None = None
        """The last step's transition: what `warm_step` runs the step's work on (its next observation, action)."""
        self._next_eval = 0
        self._eval_streak = 0
        """Consecutive evaluations during training at or above `train.stop_at_success`."""

    # ------------------------------------------------------------------------------------------- the link

    def warm_step(self) -> None:
        """The control step's own work once more on the last step's input, every result discarded: the policy's
        action (`PolicyRunner.act`, a fixed key), the env's command path (`preview_action`: command limits and the
        safety filter, nothing changed or sent) and the transition's encoding. A robot env calls it in each
        period's wait just before the deadline (`RobotFrankaEnv.warm`, set by `run`): a core left idle for most
        of a period is handed to other work that evicts the step's code and data, and the step after the wait
        would pay for reloading them (benchmarks/actor_step.py: the measured effect). A pixel policy is not run: its
        forward pass (~3 ms on a CPU) is longer than the spin window it would run in, so it would make every step
        late."""
        if self.warm_input is None:
            return
        transition = self.warm_input
        obs, action = transition["next_observation"], transition["action"]
        if self.policy is not None and self.policy.params is not None and not self.policy.image_keys:
            self.policy.act(obs, _WARM_KEY, False)
        preview = getattr(self.env.unwrapped, "preview_action", None)
        if preview is not None:
            preview(action)
        pack(transition)

    def idle_step(self) -> None:
        """The control loop's bookkeeping, done where a robot's loop would sleep (`RobotFrankaEnv.idle`, called late
        in each period's sleep): receive the learner's messages (acknowledgements, resends, parameters),
        adopt new parameters and build their numpy policy (`PolicyRunner.prepare`). The step's own `_poll` then
        finds little or nothing queued, so a parameter broadcast (decoding ~0.3 MB, restoring the pytree, building
        the policy's matrices) no longer lands between an observation and its command (benchmarks/actor_step.py).
        Raises nothing a step would not: a refusal, an interrupt or a vanished parent is left for the step's own
        `_poll` to report between steps."""
        self._receive(0)
        self._adopt()
        if self.policy is not None:
            self.policy.prepare()

    def _receive(self, timeout_ms: int) -> None:
        """Read the learner's messages (waiting up to `timeout_ms` for the first), feed its replies to the outbox
        and let the outbox resend what is due (not once the learner has refused this actor)."""
        self.client.poll(timeout_ms)
        if self.outbox is not None:
            while self.client.replies:
                self.outbox.on_reply(*self.client.replies.popleft())
            if self.outbox.refused_reason is None:
                self.outbox.maintain()

    def _adopt(self) -> None:
        """Hand the newest broadcast parameters to what adopts them (a no-op when they are not newer)."""
        body = self.client.params_body
        target = self._receiver()
        if target is not None and body is not None and "params" in body:
            target.load(self.client.params_version, body["params"])

    def _flush(self) -> None:
        if self.outbox is not None:
            self.outbox.flush()
        self._unflushed = 0

    def _poll(self, timeout_ms: int) -> None:
        interrupt.check()
        self._receive(timeout_ms)
        if self.outbox is not None and self.outbox.refused_reason is not None:
            raise TransportError(f"actor {self.actor_id}: the learner at {self.learner_at} refused this actor: "
                                 f"{self.outbox.refused_reason}")
        t = self.cfg.transport
        if time.monotonic() - self.client.last_sent > t.heartbeat_s:
            self.client.send("ping", {})
        silent = self.client.silent_for() > t.learner_silent_warn_s
        if silent and not self._warned_silent:
            target = self._receiver()
            if target is not None and target.params is not None:
                doing = f"acting on its last parameters (version {target.version})"
            else:
                doing = "no parameters received yet; collecting warm-up steps while the learner is away"
            print(f"actor {self.actor_id}: the learner at {self.learner_at} has been silent for over "
                  f"{t.learner_silent_warn_s:g} s; {doing}, spooling transitions", flush=True)
        self._warned_silent = silent
        self._adopt()
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            raise ProcessGone(f"actor {self.actor_id}: the parent process (serl train) is gone; stopping")

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        """Poll the learner until `ready()`; say what we wait for, and where, when it takes long."""
        self._flush()
        since = time.monotonic()
        while not ready():
            self._poll(100)
            if time.monotonic() - since > LEARNER_SILENCE_WARN_S:
                print(f"actor {self.actor_id}: still waiting for {what} from the learner at {self.learner_at}; "
                      "is it running?", flush=True)
                since = time.monotonic()

    def _picked_q(self) -> float:
        """The steering critic's (reduced) value of the proposal it just picked."""
        assert self.steered is not None
        return float(self.steered.last_scores[self.steered.last_index])

    def _receiver(self) -> Any:
        """What adopts the learner's broadcasts (`load(version, params)`, `version`, `adopted`, `params`): the
        learned policy, or under `steering.online` the steering critic; None before either exists."""
        if self.online:
            return None if self.steered is None else self.steered.critic
        return self.policy

    def _status(self) -> dict[str, Any]:
        return self.client.learner_status

    def _updates(self) -> int:
        return int(self._status().get("updates", 0))

    def _run_steps(self) -> int:
        """Env steps of the whole run as this actor knows them: its own, plus the others' the learner reports."""
        others = self._status().get("actor_steps") or {}
        return self.steps + sum(int(n) for a, n in others.items() if a != self.actor_id and isinstance(n, int))

    # ------------------------------------------------------------------------------------------- state

    def _state_path(self) -> Path:
        return self.run_dir / STATE_FILE.format(actor_id=self.actor_id)

    def _load_episode(self) -> int:
        path = self._state_path()
        if not path.is_file():
            return 0
        try:
            state = json.loads(path.read_text())
            return int(state["next_episode"])
        except (ValueError, KeyError, TypeError) as e:
            raise TransportError(f"{path}: not an actor state file ({e}); expected {{\"schema\": 1, "
                                 "\"next_episode\": <int>}; remove it to restart the episode count at 0") from e

    def _save_episode(self, next_episode: int) -> None:
        path = self._state_path()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"schema": 1, "next_episode": next_episode}))
        os.replace(tmp, path)

    # ------------------------------------------------------------------------------------------- the loop

    def run(self) -> int:
        t = self.cfg.train
        limit = "" if self.episode_limit is None else f", at most {self.episode_limit} episodes"
        print(f"actor {self.actor_id} ({self.index + 1} of {t.num_actors}): learner at {self.learner_at}; "
              f"run folder {self.run_dir}; this actor's share: {self.quota} env steps{limit}", flush=True)
        keys = KeyStream(self.seed + 1)
        self.env.action_space.seed(self.seed)
        obs, _ = self.env.reset(seed=self.seed)
        action_dim = int(np.prod(self.env.action_space.shape))
        mixing_on = self.cfg.mixing.mode != "off"
        try:
            self.policy = PolicyRunner(obs, action_dim, self.cfg.agent,
                                       critic_samples=self.cfg.mixing.value_samples if mixing_on else 0)
        except KeyError as e:  # agent.obs_keys / image_keys name what the env does not have: a config error
            raise ConfigError(str(e.args[0])) from e
        # steering.*: the policy's (or a BC / remote base's) proposals reranked by a critic; None when off.
        self.steered = steered_policy(self.cfg, self.policy, obs, action_dim)
        acting: Policy = self.steered if self.steered is not None else self.policy
        if self.steered is not None:
            st = self.cfg.steering
            base = {"policy": "the learned policy", "bc": f"the BC policy in {st.base_dir}",
                    "generalist": f"the generalist in {st.base_dir}",
                    "remote": f"the policy served at {st.remote_endpoint}"}[st.base]
            pick = "the argmax" if st.temperature == 0 else f"softmax(Q / {st.temperature:g})"
            online = ", fine-tuned online by the learner (each broadcast adopted; no random warm-up)" \
                if self.online else ""
            print(f"actor {self.actor_id}: steering: each step {st.k} proposals of {base}, {pick} of the critic of "
                  f"{st.critic_run}{online} (evaluations: the argmax)", flush=True)
        ledger = self.run_dir / f"ledger-{self.actor_id}.txt" if self.cfg.transport.ledger else None
        spec = make_spec(obs, np.zeros(action_dim, np.float32))
        self.outbox = DurableOutbox(self.client, self.spool, spec, ledger=ledger)
        # Transitions spooled by an earlier run of this actor count: a restarted actor continues, not repeats.
        self.steps = self.spool.next_seq() - 1
        episode = self._load_episode()
        self.episodes = episode
        ep_return, ep_len, ep_jitter = 0.0, 0, 0.0
        ep_q: list[float] = []  # steering: the critic's value of each step's pick
        stop_early = False
        try:
            mixing = MixedActing.from_config(self.cfg, self.policy, self.seed + 2, example=(obs, action_dim),
                                             learned=self.steered)
            mixer_state = self.run_dir / MIXER_STATE.format(actor_id=self.actor_id)
            if mixing is not None and mixing.restore_state(mixer_state, self.cfg):
                print(f"actor {self.actor_id}: {self.cfg.mixing.mode} continues with U from "
                      f"{mixing.mixer.baseline.n} baseline episodes", flush=True)
            if self.steps:
                print(f"actor {self.actor_id}: continuing after {self.steps} env steps and {episode} episodes",
                      flush=True)
            if self.on_robot:
                # The set-up above took seconds while the arm held: compile the policy now (not at its first step)
                # and start the control schedule afresh from a new reset.
                self.policy.compile(obs)  # (the key stream compiled its split when it was made)
                if hasattr(self.env.unwrapped, "warm"):  # each period's wait warms the next step (warm_step)
                    self.env.unwrapped.warm = self.warm_step
                if hasattr(self.env.unwrapped, "idle"):  # ... and first receives and adopts parameters (idle_step)
                    self.env.unwrapped.idle = self.idle_step
                obs, _ = self.env.reset(seed=self.seed)
            self._next_eval = self._eval_after(self._run_steps())
            stopped = self.steps >= self.quota or (self.episode_limit is not None and episode >= self.episode_limit)
            if not stopped:
                self._begin_episode(mixing, episode)
            while not stopped:
                self._poll(0)
                run_steps = self._run_steps()
                if not self.on_robot and not actor_may_step(run_steps, self._updates(), t.start_steps,
                                                            t.throttle_slack):
                    self._wait(lambda: actor_may_step(self._run_steps(), self._updates(), t.start_steps,
                                                      t.throttle_slack), "updates to catch up")
                if mixing is None and not self.online and self._run_steps() < t.start_steps:
                    action = self.env.action_space.sample()  # random warm-up: no key to split (~30 us a step)
                else:
                    key = next(keys)
                    if mixing is not None:  # the mixer picks the baseline or the learned policy (never random)
                        action = mixing.act(obs, key)
                    elif self.online:  # the steered base acts from the first step, with the critic it has
                        action = acting.act(obs, key, False)
                        ep_q.append(self._picked_q())
                    elif self.policy.params is None and self.on_robot:
                        # A robot does not stand still waiting for the learner's first parameters: the warm-up's
                        # random actions go on (inside the safety filter) until they arrive.
                        if not self._said_no_params:
                            print(f"actor {self.actor_id}: no parameters yet after train.start_steps; random "
                                  "actions continue until the learner's first ones arrive", flush=True)
                            self._said_no_params = True
                        action = self.env.action_space.sample()
                    else:
                        if self.policy.params is None:
                            self._wait(lambda: self.policy is not None and self.policy.params is not None,
                                       "the first parameters")
                        action = acting.act(obs, key, False)
                        if self.steered is not None:
                            ep_q.append(self._picked_q())
                next_obs, reward, terminated, truncated, info = self.env.step(action)
                if mixing is not None:
                    try:
                        mixing.record_reward(float(reward))
                    except ValueError as e:  # a negative reward: the mixers' guarantee does not hold
                        raise ConfigError(f"mixing.mode={self.cfg.mixing.mode}: {e}") from e
                ep_return += float(reward)
                ep_len += 1
                if "jitter_s" in info:
                    late = float(info["jitter_s"])
                    ep_jitter = max(ep_jitter, late)
                    if late > 1.0 / self.cfg.env.control_hz:  # a whole period missed: the robot held meanwhile
                        print(f"actor {self.actor_id}: control step {self.steps + 1} ended {1000 * late:.0f} ms late "
                              f"(period {1000 / self.cfg.env.control_hz:.0f} ms); the watchdog holds the arm during "
                              "such a stall", flush=True)
                transition = {
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
                if self.online:  # the critic's labels need the outcome; in the log, so a resume relabels the same
                    transition["success"] = bool(info.get("success", False))
                self.outbox.add(transition)
                self.warm_input = transition
                self.steps += 1
                obs = next_obs
                if terminated or truncated:
                    self._flush()
                    success = bool(info["success"]) if "success" in info else None
                    body = {"episode": episode, "return": ep_return, "length": ep_len,
                            # None where the env has no notion of success (e.g. HalfCheetah), not "failed".
                            "success": success}
                    if success is not None:
                        self._successes = (self._successes + [success])[-20:]
                    if "safety_counts" in info:
                        body["safety"] = {k: int(v) for k, v in info["safety_counts"].items()}
                    if self.on_robot:  # how well the wall-clock pacing held, and whether the watchdog had to act
                        body["robot"] = {"jitter_max_ms": 1000 * ep_jitter,
                                         "watchdog_holds": int(getattr(self.env.unwrapped, "watchdog_holds", 0))}
                    if ep_q and self.steered is not None:  # which critic steered, and how it valued its picks
                        body["steering"] = {"critic_version": float(self.steered.critic.version),
                                            "q_picked_mean": float(np.mean(ep_q))}
                    ep_q = []
                    if mixing is not None:
                        body["mixing"] = mixing.end_episode()
                        mixing.save_state(mixer_state)
                        self._log_mixing({**body["mixing"], "env_steps": self.steps, "length": ep_len,
                                          "success": success})
                    self.client.send("episode", body)
                    episode, ep_return, ep_len, ep_jitter = episode + 1, 0.0, 0, 0.0
                    self.episodes = episode
                    if self.episode_limit is not None and episode >= self.episode_limit:
                        print(f"actor {self.actor_id}: its share of train.max_episodes={t.max_episodes} "
                              f"({self.episode_limit}) reached after {self.steps} env steps; ending", flush=True)
                        break
                    # One arm: on a robot, evaluations during training run between training episodes.
                    stop_early = self.on_robot and self._periodic_eval()
                    if not stop_early:
                        obs, _ = self.env.reset()
                        if self.steps < self.quota:
                            self._begin_episode(mixing, episode)
                else:
                    self._unflushed += 1
                    if self._unflushed >= FLUSH_EVERY:
                        self._flush()
                self._poll(0)
                self._progress()
                if stop_early or (not self.on_robot and self._periodic_eval()):
                    print(f"actor {self.actor_id}: evaluation success reached train.stop_at_success="
                          f"{t.stop_at_success:g} after {self._run_steps()} env steps of the run; ending",
                          flush=True)
                    break
                if self._status().get("stop"):
                    print(f"actor {self.actor_id}: an evaluation reached train.stop_at_success="
                          f"{t.stop_at_success:g}; ending after {self.steps} env steps", flush=True)
                    break
                stopped = self.steps >= self.quota
            return self._finish()
        except KeyboardInterrupt:
            self._flush()
            print(f"actor {self.actor_id}: interrupted after {self.steps} env steps (episode {episode}); the spool "
                  "keeps every transition the learner has not acknowledged", flush=True)
            return 130
        finally:
            self._close()

    def _finish(self) -> int:
        """Hand everything over, report done, run the final evaluation on the final parameters, say so."""
        t = self.cfg.train
        assert self.policy is not None
        self._wait(lambda: len(self.spool) == 0, "acknowledgement of every spooled transition")
        self.client.send("done", {"env_steps": self.steps, "episodes": self.episodes})
        print(f"actor {self.actor_id}: collection finished after {self.steps} env steps; waiting for the final "
              "parameters (the learner sends them once every actor is done)", flush=True)
        self._wait(lambda: bool((self.client.params_body or {}).get("final")), "the final parameters")
        first_seed = t.eval_seed + self.index * t.eval_episodes  # actors evaluate on disjoint held-out seeds
        result = {**evaluate(self.env, self._evaluated(), t.eval_episodes, first_seed),
                  "env_steps": self.steps, "final": True, "actor": self.actor_id}
        path = self.run_dir / f"eval-{self.actor_id}.json"
        path.write_text(json.dumps(result, indent=2))
        seq = self.client.send("eval", result)
        self._wait(lambda: self.client.acked_seq >= seq or self.actor_id in self._status().get("evaluated", []),
                   "acknowledgement of the final evaluation")
        success = "n/a" if result["success_rate"] is None else f"{100 * result['success_rate']:.1f}%"
        what = "critic" if self.online else "parameter"
        print(f"actor {self.actor_id}: finished: {self.steps} env steps in {self.episodes} episodes, adopted "
              f"{self._receiver().adopted} {what} versions; final evaluation of {result['episodes']} episodes: success "
              f"{success}, return {result['return_mean']:.2f} (written to {path})", flush=True)
        return 0

    def _close(self) -> None:
        self.client.close()
        if self.outbox is not None:
            self.outbox.close()
        self.spool.close()
        self.env.close()
        if self.eval_env is not None:
            self.eval_env.close()

    def _progress(self) -> None:
        """A status line every PROGRESS_EVERY_S seconds (the standalone actor's progress display)."""
        now = time.monotonic()
        if now < self._next_progress:
            return
        self._next_progress = now + PROGRESS_EVERY_S
        status = self._status()
        success = f"{100 * np.mean(self._successes):.0f}%" if self._successes else "-"
        updates, run_steps = int(status.get("updates", 0)), self._run_steps()
        line = (f"actor {self.actor_id}: {self.steps}/{self.quota} env steps (run {run_steps}/"
                f"{self.cfg.train.total_env_steps}), {self.episodes} episodes, success {success} (last "
                f"{len(self._successes)}), learner updates {updates}, parameters "
                f"v{self._receiver().version if self._receiver() is not None else -1}")
        last_updates, last_steps = self._last_progress
        self._last_progress = (updates, run_steps)
        if self.on_robot and run_steps > last_steps and updates > 0:
            # At the robot's rate the learner may not keep up with agent.utd: say what it achieves.
            effective = self.cfg.agent.utd * (updates - last_updates) / (run_steps - last_steps)
            line += f", effective UTD {effective:.1f} (agent.utd {self.cfg.agent.utd})"
            if effective < 0.5 * self.cfg.agent.utd:
                line += ": the learner is slower than the robot; a GPU learner box would keep up"
        print(line, flush=True)

    def _evaluated(self) -> Policy:
        """What evaluations run (deterministically): the steered policy under `steering.*` (the critic's argmax of
        the proposals), else the learned policy's mean action."""
        assert self.policy is not None
        return self.steered if self.steered is not None else self.policy

    def _begin_episode(self, mixing: MixedActing | None, episode: int) -> None:
        """Start a training episode: count it, snapshot the policy it runs (every `mixing.snapshot_every`
        episodes), then let the mixer decide its warm-up status."""
        self._save_episode(episode + 1)
        assert self.policy is not None
        self.policy.reset()
        if self.steered is not None:
            self.steered.reset()  # drops the rest of a chunk: a new episode decides afresh
        every = self.cfg.mixing.snapshot_every
        if every and episode % every == 0:
            params = self.policy.params
            if params is not None:
                params = jax.tree.map(np.asarray, serialization.to_state_dict(params))
            save_snapshot(self.run_dir, episode, params, mixing.mixer if mixing is not None else None)
        if mixing is not None:
            mixing.begin_episode()

    def _log_mixing(self, record: dict[str, Any]) -> None:
        """One line per mixed training episode in `<run>/mixing-<actor id>.jsonl` (eps_k / switch step, L, U)."""
        with open(self.run_dir / f"mixing-{self.actor_id}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def _eval_after(self, run_steps: int) -> int:
        """The run's env step of the next evaluation during training: the next multiple of `train.eval_every`
        after both `run_steps` and the warm-up (the policy acts only after it)."""
        every = self.cfg.train.eval_every
        if every <= 0 or self.eval_env is None:
            return -1
        return (max(run_steps, self.cfg.train.start_steps) // every + 1) * every

    def _periodic_eval(self) -> bool:
        """Actor 0, every `train.eval_every` env steps of the run once the policy acts: evaluate the current
        parameters on the held-out seeds and send the result (logged by the learner over env steps). True = stop
        the run (`train.stop_at_success` reached)."""
        t = self.cfg.train
        run_steps = self._run_steps()
        if self._next_eval < 0 or run_steps < self._next_eval:
            return False
        self._next_eval = self._eval_after(run_steps)
        assert self.policy is not None and self.eval_env is not None
        if self._receiver().params is None:  # the learner is behind: skip rather than evaluate no policy
            return False
        self._flush()
        result = {**evaluate(self.eval_env, self._evaluated(), t.eval_every_episodes, t.eval_seed),
                  "env_steps": run_steps, "final": False, "actor": self.actor_id}
        self.client.send("eval", result)
        success = result["success_rate"]
        reached = t.stop_at_success > 0 and success is not None and success >= t.stop_at_success
        self._eval_streak = self._eval_streak + 1 if reached else 0
        return self._eval_streak >= t.stop_after_evals


def run_actor(cfg: Config, run_dir: Path, parent_pid: int | None = None) -> int:
    """`serl actor`: one actor of the run in `run_dir` (which gets the run's config.yaml if it has none)."""
    write_config(run_dir, cfg, replace=False)
    return Actor(cfg, run_dir, parent_pid=parent_pid).run()
