"""The learner process loop: receive transitions, fill the replay buffer, update the agent, publish parameters.

Owns: the learner's bookkeeping — counters (per actor too), pacing against the actors, logging, checkpoint
cadence, and the end of the run: it ends once every one of `train.num_actors` actors has reported done and its
final evaluation (`eval.json` then holds all of them). The algorithm lives in `agents/`, the wire in
`transport/`, the buffer in `data/`; what is updated is `updater.Updater`'s SAC agent, or under `steering.online`
`online_critic.OnlineCriticUpdater`'s Cal-QL critic (the actors then steer with what it broadcasts). Started by
`serl learner` (or by `serl train`, which spawns it as its own process); it says where it listens, shows progress
and ends with one summary line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections import Counter, deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from flax import serialization
from tensorboardX import SummaryWriter

from serl_stack import interrupt
from serl_stack.checkpoint import Checkpointer
from serl_stack.config import Config, ConfigError
from serl_stack.data.demos import DemoFormatError
from serl_stack.data.obs import flatten_keys
from serl_stack.errors import ProcessGone
from serl_stack.rundir import CHECKPOINTS, TRANSITIONS, actor_index, check_new_or_resumed, write_config
from serl_stack.transport.auth import curve_server_from_config
from serl_stack.transport.inbox import DurableInbox
from serl_stack.transport.learner_server import TOPIC_PARAMS, TOPIC_STATUS, LearnerServer, endpoint
from serl_stack.transport.log import TransitionLog
from serl_stack.transport.protocol import make_spec, unpack
from serl_stack.updater import Updater

if TYPE_CHECKING:
    from serl_stack.online_critic import OnlineCriticUpdater

STATUS_PERIOD_S = 0.5
PROGRESS_EVERY_S = 15.0
CLOSE_LINGER_MS = 2000
"""At the end of a run the last acknowledgements still queued get this long to reach the actors."""


def learner_may_update(updates: int, env_steps: int, start_steps: int) -> bool:
    """One update (of `utd` critic steps) per env step after the random warm-up, never ahead of the data."""
    return env_steps >= start_steps and updates < env_steps - start_steps + 1


def recorded_config(cfg: Config) -> Config:
    """The config a run folder records. Under `steering.online` the learner trains `steering.critic_run`'s critic,
    not the SAC agent of `agent.*`: its `agent.hidden_dims / num_critics / critic_layer_norm` are recorded as the
    critic's (what a `serl train-critic` folder records too), so the run folder reads as a critic run wherever one
    is expected (`steering.guided.load_critic(run, read_run_config(run).agent, ...)`, `serl eval --steer-critic`)."""
    if not (cfg.steering.enabled and cfg.steering.online):
        return cfg
    from serl_stack.errors import RunDirError
    from serl_stack.rundir import read_run_config

    try:
        critic = read_run_config(Path(cfg.steering.critic_run).expanduser()).agent
    except RunDirError as e:
        raise ConfigError(f"steering.critic_run: {str(e).removeprefix('--run-dir: ')}") from e
    agent = dataclasses.replace(cfg.agent, hidden_dims=critic.hidden_dims, num_critics=critic.num_critics,
                                critic_layer_norm=critic.critic_layer_norm)
    return dataclasses.replace(cfg, agent=agent)


def combine_evaluations(results: dict[str, dict[str, Any]], env_steps: int) -> dict[str, Any]:
    """One final evaluation from the actors' (each on its own held-out seeds): episode-weighted means, the
    pooled standard deviation of the returns, and every actor's own result under `actors`."""
    rs = list(results.values())
    n = np.array([r["episodes"] for r in rs], float)
    w = n / n.sum()
    mean = float(np.sum(w * [r["return_mean"] for r in rs]))
    second = float(np.sum(w * [r["return_std"] ** 2 + r["return_mean"] ** 2 for r in rs]))
    rates = [r.get("success_rate") for r in rs]
    return {
        "episodes": int(n.sum()),
        "first_seed": min(int(r["first_seed"]) for r in rs),
        "success_rate": None if any(x is None for x in rates) else float(np.sum(w * np.asarray(rates, float))),
        "return_mean": mean,
        "return_std": math.sqrt(max(second - mean**2, 0.0)),
        "length_mean": float(np.sum(w * [r["length_mean"] for r in rs])),
        "params_version": max(int(r.get("params_version") or 0) for r in rs),
        "env_steps": env_steps,
        "final": True,
        "actors": dict(sorted(results.items())),
    }


class Learner:
    """State of a running learner; `run()` loops until every actor is done (or Ctrl-C) and returns an exit
    code."""

    def __init__(self, cfg: Config, run_dir: Path, parent_pid: int | None = None, resume: bool = False) -> None:
        check_new_or_resumed(run_dir, resume)
        self.cfg = cfg
        self.run_dir = run_dir
        self.parent_pid = parent_pid
        t = cfg.transport
        self.security = curve_server_from_config(t)
        self.server = LearnerServer(t.host, t.transitions_port, t.params_port, t.max_message_bytes, self.security)
        write_config(run_dir, recorded_config(cfg))  # the run's config, for `serl eval` and for a resume
        self.actor_last_heard: dict[str, float] = {}
        self.log = TransitionLog(run_dir / TRANSITIONS)
        self.inbox = DurableInbox(self.server, self.log, status=self.status, max_item_bytes=t.max_message_bytes,
                                  on_welcome=self._send_params_to, admit=self._admit)
        self.writer = SummaryWriter(str(run_dir / "tb" / "learner"))
        self.checkpointer = Checkpointer(run_dir / CHECKPOINTS, max_to_keep=cfg.train.keep_checkpoints)
        self.updater: Updater | OnlineCriticUpdater | None = None
        self.online = cfg.steering.enabled and cfg.steering.online
        """`steering.online`: the learner fine-tunes the steering critic instead of training a SAC agent."""
        self.env_steps = 0
        self.params_version = 0
        self.episodes = 0
        self.actor_steps: Counter[str] = Counter()
        self.actor_episodes: Counter[str] = Counter()
        self.returns: deque[float] = deque(maxlen=20)
        self.successes: deque[float] = deque(maxlen=20)
        self.done: dict[str, int] = {}
        """Actor id -> the env steps it reported when it finished collecting."""
        self.final_evals: dict[str, dict[str, Any]] = {}
        self.stop_collecting = False
        """`train.stop_after_evals` consecutive evaluations during training reached `train.stop_at_success`: actors
        end their collection."""
        self.eval_streak = 0
        """Consecutive evaluations during training at or above `train.stop_at_success`."""
        self.final_sent = False
        self.eval_result: dict[str, Any] | None = None
        self._ups_window: deque[tuple[float, int]] = deque(maxlen=50)
        self._last_status = 0.0
        self._next_progress = time.monotonic() + PROGRESS_EVERY_S
        self._use_policy_action = cfg.replay.action_source == "policy"

    # ------------------------------------------------------------------------------------------- messages
    @property
    def agent(self) -> Any:
        return None if self.updater is None else self.updater.agent

    @property
    def updates(self) -> int:
        return 0 if self.updater is None else self.updater.updates

    @property
    def all_done(self) -> bool:
        return len(self.done) >= self.cfg.train.num_actors

    def _admit(self, actor_id: str) -> str | None:
        """Refuse an actor this run has no place for: more ids than `train.num_actors`, or an id whose index
        another actor already has (their env seeds and step shares would collide)."""
        n = self.cfg.train.num_actors
        known = set(self.log.actors()) | set(self.inbox.specs) | set(self.done)
        if actor_id in known:
            return None
        try:
            index = actor_index(actor_id, n)
        except ConfigError as e:
            return str(e)
        if len(known) >= n:
            return (f"this run has train.num_actors={n} and already has the actors {sorted(known)}; start the "
                    f"learner with a larger train.num_actors, or reuse one of these ids")
        for other in known:
            try:
                if actor_index(other, n) == index:
                    return f"actor index {index} is already taken by {other!r}; give each actor its own -<i> suffix"
            except ConfigError:
                continue
        return None

    def _init_agent(self) -> None:
        """Build the agent once the warm-up data is in (its observation statistics fix the normalization)."""
        assert self.updater is not None
        self.updater.init_agent()
        self._publish_params()

    def _insert(self, actor_id: str, tr: dict[str, Any]) -> None:
        """Put one durable, schema-checked transition into the replay buffer (observations flattened once)."""
        obs, next_obs = flatten_keys(tr["observation"]), flatten_keys(tr["next_observation"])
        # What the robot did (safety filter, a human) by default; the log keeps both actions either way.
        action = tr["action"] if self._use_policy_action else tr["executed_action"]
        if self.updater is None and self.online:
            from serl_stack.online_critic import OnlineCriticUpdater  # deferred: Cal-QL only when it is used

            self.updater = OnlineCriticUpdater(self.cfg, obs, action)
            self._say_online(self.updater)
        if self.updater is None:
            try:
                self.updater = Updater(self.cfg, obs, action)
            except KeyError as e:  # agent.obs_keys names a key the env does not have: a config error
                raise ConfigError(str(e.args[0])) from e
            except DemoFormatError as e:  # demonstrations of another observation or action shape
                raise ConfigError(f"replay.demo_dir: {e}") from e
            u = self.updater
            if u.demos is not None:
                print(f"learner: {len(u.demos)} demonstration transitions from {self.cfg.replay.demo_dir} make up "
                      f"{self.cfg.replay.demo_fraction:.0%} of every minibatch", flush=True)
            if u.image_keys and self.cfg.replay.on_device:
                print("learner: image batches are sampled on the host (replay.on_device covers state vectors only)",
                      flush=True)
            if u.mesh is not None:
                print(f"learner: data parallel over {u.mesh.devices.size} devices", flush=True)
            bc = self.cfg.agent.bc
            if u.prior is not None:
                how = (f"dual descent toward {bc.kl_target:g} nats per action dimension" if bc.lambda_mode == "dual"
                       else f"lambda {bc.lambda_init:g} fading to 0 over {bc.schedule_updates} updates")
                print(f"learner: the actor is regularized toward the BC prior in {bc.prior_run} ({how}); "
                      "learner/bc_lambda and learner/bc_kl in TensorBoard", flush=True)
                if u.prior.entropy is not None and bc.target_entropy == "prior":
                    print(f"learner: target entropy {u.prior.entropy:.2f} nats, the prior's at the demonstrations' "
                          f"states (agent.bc.target_entropy: prior; -|A| x agent.target_entropy_scale would be "
                          f"{-self.cfg.agent.target_entropy_scale * u.action_dim:.2f})", flush=True)
        if self.online:
            # The critic's own labels, given at the episode's end from the success flag the actor sends with
            # every transition under steering.online (so the log alone rebuilds them on a resume).
            self.updater.insert(obs, action, next_obs, tr["terminated"], tr["truncated"], actor_id,
                                int(tr["episode"]), bool(tr.get("success", False)))
        else:
            self.updater.insert(obs, action, float(tr["reward"]), next_obs, tr["terminated"], tr["truncated"])
        self.env_steps += 1
        self.actor_steps[actor_id] += 1

    def _say_online(self, u: OnlineCriticUpdater) -> None:
        s, c = self.cfg.steering, u.calql_cfg
        print(f"learner: fine-tuning the Cal-QL critic of {s.critic_run} (checkpoint {u.critic_step}) online: one "
              f"update per env step on {c.batch_size} transitions, {u.num_offline} of them from the "
              f"{u.num_offline_transitions} demonstration transitions in {self.cfg.replay.demo_dir}, the rest from "
              f"this run's episodes (V-GPS labels at each episode's end); TD target: the best of {u.target_k} "
              f"samples of the {'generalist' if s.base == 'generalist' else 'BC policy'} in {s.base_dir} at s' (the "
              f"actors draw {s.k}); the critic goes to the actors every {self.cfg.transport.params_every} updates",
              flush=True)

    def rebuild_from_log(self) -> int:
        """Refill the replay buffer from the durable log (after a restart); returns how many transitions."""
        for _, actor_id, _, payload in self.log.replay():
            t = unpack(payload)
            if self.inbox.expected_spec is None:  # actors must keep announcing what the log already holds
                self.inbox.expected_spec = make_spec(t["observation"], t["action"])
            self._insert(actor_id, t)
            if t["terminated"] or t["truncated"]:  # counters continue across a resume
                self.episodes += 1
                self.actor_episodes[actor_id] += 1
        return self.env_steps

    def resume(self) -> None:
        """After a restart: refill the replay buffer from the log and restore the latest checkpoint, if any."""
        n = self.rebuild_from_log()
        step = self.checkpointer.latest_step()
        if step is not None and self.updater is not None:
            try:
                agent, meta = self.checkpointer.restore(self.updater.checkpoint_template(), step)
            except (ValueError, KeyError) as e:
                raise ConfigError(
                    f"checkpoint {step} in {self.checkpointer.directory} does not fit this config's agent "
                    f"(network sizes, critic count and observation keys must stay the same to resume): {e}"
                ) from e
            self.updater.restore(agent, meta)
            self.params_version = int(meta.get("params_version", 0))
            self._publish_params()
        if n or step is not None:
            print(f"learner: resumed with {n} transitions from the log, checkpoint {step}", flush=True)

    def _handle_messages(self, timeout_ms: int) -> None:
        messages = self.server.recv(timeout_ms)
        now = time.monotonic()
        for msg in messages:
            self.actor_last_heard[msg.sender] = now
        delivered, others = self.inbox.handle(messages)
        for d in delivered:
            self._insert(d.actor_id, d.transition)
        for msg in others:
            body = msg.body if isinstance(msg.body, dict) else {}
            if msg.msg_type == "episode":
                self._log_episode(msg.sender, body)
            elif msg.msg_type == "done":
                steps = body.get("env_steps")
                self.done[msg.sender] = steps if isinstance(steps, int) else self.actor_steps[msg.sender]
            elif msg.msg_type == "eval":
                self._on_eval(msg.sender, body)
            self.server.reply(msg.identity, "ack", {"status": self.status()}, seq=msg.seq)

    def _on_eval(self, actor_id: str, body: dict[str, Any]) -> None:
        """An evaluation during training (logged at once over env steps; may stop the run) or an actor's final
        one (kept until every actor's is in, then logged once, combined)."""
        if body.get("final", True):
            self.final_evals[actor_id] = body
            return
        step = body.get("env_steps", self.env_steps)
        step = int(step) if isinstance(step, int) and not isinstance(step, bool) else self.env_steps
        self._log_eval(body, step)
        target, success = self.cfg.train.stop_at_success, body.get("success_rate")
        reached = target > 0 and isinstance(success, (int, float)) and success >= target
        self.eval_streak = self.eval_streak + 1 if reached else 0
        if self.eval_streak >= self.cfg.train.stop_after_evals:
            self.stop_collecting = True

    def _log_eval(self, body: dict[str, Any], step: int) -> None:
        # `eval/episodes` first: runlog.evaluations starts a row at it.
        for k, v in sorted(body.items(), key=lambda kv: kv[0] != "episodes"):
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "env_steps":
                self.writer.add_scalar(f"eval/{k}", v, step)

    def _log_episode(self, actor_id: str, body: dict[str, Any]) -> None:
        self.episodes += 1
        self.actor_episodes[actor_id] += 1
        ret = float(body.get("return", 0.0))
        self.returns.append(ret)
        self.writer.add_scalar("episode/return", ret, self.env_steps)
        if body.get("success") is not None:  # None: the env has no notion of success
            success = float(bool(body["success"]))
            self.successes.append(success)
            self.writer.add_scalar("episode/success", success, self.env_steps)
        self.writer.add_scalar("episode/length", float(body.get("length", 0)), self.env_steps)
        # The actor's per-episode records: mixing (eps_k / switch step, L, U, kappa), safety-filter counts, steering
        # (the critic's version and its mean Q of the picks) and, on a robot, the control loop's worst jitter and
        # the watchdog's holds.
        for section in ("mixing", "safety", "steering", "robot"):
            fields = body.get(section)
            if isinstance(fields, dict):
                for k, v in fields.items():
                    numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
                    if isinstance(k, str) and numeric and np.isfinite(v):
                        self.writer.add_scalar(f"{section}/{k}", float(v), self.env_steps)

    # ------------------------------------------------------------------------------------------- outputs
    def status(self) -> dict[str, Any]:
        ups = 0.0
        if len(self._ups_window) >= 2:
            (t0, u0), (t1, u1) = self._ups_window[0], self._ups_window[-1]
            ups = (u1 - u0) / max(t1 - t0, 1e-9)
        return {
            "env_steps": self.env_steps,
            "updates": self.updates,
            "updates_per_s": ups,
            "episodes": self.episodes,
            "return_mean": float(np.mean(self.returns)) if self.returns else None,
            "success_rate": float(np.mean(self.successes)) if self.successes else None,
            "quarantined": self.inbox.quarantined,
            "rejected": dict(self.server.rejected),
            "actors_silent_s": {a: round(time.monotonic() - t, 2) for a, t in self.actor_last_heard.items()},
            "actor_steps": dict(self.actor_steps),
            "num_actors": self.cfg.train.num_actors,
            "done": sorted(self.done),
            "evaluated": sorted(self.final_evals),
            "stop": self.stop_collecting,
            "params_version": self.params_version,
            "phase": "evaluating" if self.final_sent else "training",
        }

    def _params_body(self, final: bool = False) -> dict[str, Any]:
        # With conservative mixing the actor also needs the critic, for its bound on the policy's value.
        assert self.updater is not None
        tree = self.updater.broadcast_params(with_critic=self.cfg.mixing.mode != "off")
        params = jax.tree.map(np.asarray, serialization.to_state_dict(tree))
        return {"params": params, "final": final, "status": self.status()}

    def _publish_params(self, final: bool = False) -> None:
        self.params_version += 1
        self.server.publish(TOPIC_PARAMS, "params", self._params_body(final), seq=self.params_version)

    def _send_params_to(self, identity: bytes) -> None:
        """A (re)joining actor gets the current parameters at once, not at the next broadcast."""
        if self.agent is not None:
            self.server.reply(identity, "params", self._params_body(self.final_sent), seq=self.params_version)

    def _checkpoint(self) -> Path:
        assert self.updater is not None
        meta = {
            **self.updater.checkpoint_meta(),
            "env_steps": self.env_steps,
            # The replay buffer is rebuilt from the log on restart; this is how much of it the agent had seen.
            "log_offset": self.env_steps,
            "params_version": self.params_version,
        }
        state, policy = self.updater.checkpoint_items()
        return self.checkpointer.save(self.updates, state, meta, policy=policy)

    def _update(self) -> None:
        assert self.updater is not None
        info = self.updater.step()
        self._ups_window.append((time.monotonic(), self.updates))
        t = self.cfg.train
        if self.updates % self.cfg.transport.params_every == 0:
            self._publish_params()
        if self.updates % t.log_every == 0:
            for k, v in jax.device_get(info).items():
                self.writer.add_scalar(f"learner/{k}", float(np.mean(v)), self.updates)
            self.writer.add_scalar("learner/updates_per_s", self.status()["updates_per_s"], self.updates)
        if self.updates % t.checkpoint_every == 0:
            self._checkpoint()

    def _progress(self, now: float) -> None:
        """A status line every PROGRESS_EVERY_S seconds (the standalone learner's progress display)."""
        if now < self._next_progress:
            return
        self._next_progress = now + PROGRESS_EVERY_S
        s = self.status()
        success = "-" if s["success_rate"] is None else f"{100 * s['success_rate']:.0f}%"
        actors = ", ".join(f"{a} {n}" for a, n in sorted(self.actor_steps.items())) or "none yet"
        print(f"learner: {self.env_steps}/{self.cfg.train.total_env_steps} env steps (actors: {actors}), "
              f"{self.updates} updates ({s['updates_per_s']:.1f}/s), {self.episodes} episodes, success {success} "
              f"(last {len(self.successes)}), {len(self.done)}/{self.cfg.train.num_actors} actors done", flush=True)

    # ------------------------------------------------------------------------------------------- loop
    def run(self) -> int:
        t, tc = self.cfg.train, self.cfg.transport
        print(f"learner: listening on {endpoint(tc.host, self.server.transitions_port)} (transitions) and "
              f"{endpoint(tc.host, self.server.params_port)} (parameters) for {t.num_actors} actor(s); run folder "
              f"{self.run_dir}", flush=True)
        final_at = 0.0
        self.resume()
        try:
            while True:
                interrupt.check()
                if self.agent is None and self.updater is not None:
                    if self.env_steps >= max(1, t.start_steps):
                        self._init_agent()
                    elif self.all_done and self.env_steps >= sum(self.done.values()):
                        # Collection ended inside the warm-up: build the agent anyway so the actors get their final
                        # parameters (an untrained policy) instead of waiting for them forever.
                        print(f"learner: the actors finished after {self.env_steps} env steps, before "
                              f"train.start_steps={t.start_steps}; the final policy is untrained", flush=True)
                        self._init_agent()
                can_update = self.agent is not None and learner_may_update(
                    self.updates, self.env_steps, t.start_steps
                )
                self._handle_messages(0 if can_update else 20)
                if can_update:
                    self._update()
                now = time.monotonic()
                if now - self._last_status > STATUS_PERIOD_S:
                    self._last_status = now
                    self.server.publish(TOPIC_STATUS, "status", self.status())
                    if self.parent_pid is not None and os.getppid() != self.parent_pid:
                        raise ProcessGone("learner: the parent process (serl train) is gone; stopping")
                self._progress(now)
                caught_up = self.all_done and not learner_may_update(self.updates, self.env_steps, t.start_steps)
                if caught_up and self.env_steps >= sum(self.done.values()) and self.agent is not None:
                    if not self.final_sent:
                        self._checkpoint()
                        self.final_sent = True
                    if now - final_at > 1.0:
                        final_at = now  # resent until every actor reports its evaluation
                        self._publish_params(final=True)
                if self.final_sent and len(self.final_evals) >= t.num_actors:
                    return self._finish()
        except (KeyboardInterrupt, ProcessGone) as e:
            if self.agent is not None:
                path = self._checkpoint()
                print(f"learner: {'interrupted' if isinstance(e, KeyboardInterrupt) else e}; checkpoint saved to "
                      f"{path}", flush=True)
            if isinstance(e, ProcessGone):
                raise
            return 130
        finally:
            self.writer.close()
            self.checkpointer.close()
            self.server.close(linger_ms=CLOSE_LINGER_MS if self.eval_result is not None else 0)
            self.log.close()
            if self.security is not None:
                self.security.close()

    def _finish(self) -> int:
        """Every actor's final evaluation is in: write the combined one, log it, tell the actors, say so."""
        self.eval_result = combine_evaluations(self.final_evals, self.env_steps)
        (self.run_dir / "eval.json").write_text(json.dumps(self.eval_result, indent=2))
        self._log_eval(self.eval_result, self.env_steps)
        self.server.publish(TOPIC_STATUS, "status", {**self.status(), "phase": "done"})
        r = self.eval_result
        success = "n/a" if r["success_rate"] is None else f"{100 * r['success_rate']:.1f}%"
        print(f"learner: run finished: {self.env_steps} env steps from {len(self.done)} actor(s), {self.updates} "
              f"updates, checkpoint {self.checkpointer.latest_step()}; final evaluation of {r['episodes']} episodes: "
              f"success {success}, return {r['return_mean']:.2f} (written to {self.run_dir / 'eval.json'})",
              flush=True)
        return 0


def run_learner(cfg: Config, run_dir: Path, parent_pid: int | None = None, resume: bool = False) -> int:
    """`serl learner`: the learner of the run in `run_dir` (writes its config.yaml)."""
    return Learner(cfg, run_dir, parent_pid, resume).run()
