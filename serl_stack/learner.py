"""The learner process loop: receive transitions, fill the replay buffer, update the agent, publish parameters.

Owns: the learner's bookkeeping (counters, pacing against the actor, logging, checkpoint cadence). The algorithm
lives in `agents/`, the wire in `transport/`, the buffer in `data/`. Started by `serl learner` (or by
`serl train`, which spawns it as its own process).
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization
from tensorboardX import SummaryWriter

from serl_stack.checkpoint import Checkpointer
from serl_stack.config import Config
from serl_stack.data.obs import flatten_keys
from serl_stack.rundir import previous_run
from serl_stack.transport.auth import curve_server_from_config
from serl_stack.transport.inbox import DurableInbox
from serl_stack.transport.learner_server import TOPIC_PARAMS, TOPIC_STATUS, LearnerServer
from serl_stack.transport.log import TransitionLog
from serl_stack.transport.protocol import make_spec, unpack
from serl_stack.updater import Updater

STATUS_PERIOD_S = 0.5


def learner_may_update(updates: int, env_steps: int, start_steps: int) -> bool:
    """One update (of `utd` critic steps) per env step after the random warm-up, never ahead of the data."""
    return env_steps >= start_steps and updates < env_steps - start_steps + 1


class Learner:
    """State of a running learner; `run()` loops until the actor is done (or Ctrl-C) and returns an exit code."""

    def __init__(self, cfg: Config, run_dir: Path, parent_pid: int | None = None, resume: bool = False) -> None:
        previous = previous_run(run_dir)
        if previous and not resume:
            raise SystemExit(
                f"learner: {run_dir} already holds a run ({', '.join(previous)}); pass --resume to continue it, "
                "or choose a new --run-dir"
            )
        self.cfg = cfg
        self.run_dir = run_dir
        self.parent_pid = parent_pid
        t = cfg.transport
        self.security = curve_server_from_config(t)
        self.server = LearnerServer(t.host, t.transitions_port, t.params_port, t.max_message_bytes, self.security)
        self.actor_last_heard: dict[str, float] = {}
        self.log = TransitionLog(run_dir / "transitions")
        self.inbox = DurableInbox(self.server, self.log, status=self.status, max_item_bytes=t.max_message_bytes,
                                  on_welcome=self._send_params_to)
        self.writer = SummaryWriter(str(run_dir / "tb" / "learner"))
        self.checkpointer = Checkpointer(run_dir / "checkpoints", max_to_keep=cfg.train.keep_checkpoints)
        self.updater: Updater | None = None
        self.env_steps = 0
        self.params_version = 0
        self.episodes = 0
        self.returns: deque[float] = deque(maxlen=20)
        self.successes: deque[float] = deque(maxlen=20)
        self.actor_done_steps: int | None = None
        self.final_sent = False
        self.eval_result: dict[str, Any] | None = None
        self._ups_window: deque[tuple[float, int]] = deque(maxlen=50)
        self._last_status = 0.0

    # ------------------------------------------------------------------------------------------- messages
    @property
    def agent(self) -> Any:
        return None if self.updater is None else self.updater.agent

    @property
    def updates(self) -> int:
        return 0 if self.updater is None else self.updater.updates

    def _init_agent(self) -> None:
        """Build the agent once the warm-up data is in (its observation statistics fix the normalization)."""
        assert self.updater is not None
        self.updater.init_agent()
        self._publish_params()

    def _insert(self, tr: dict[str, Any]) -> None:
        """Put one durable, schema-checked transition into the replay buffer."""
        if self.updater is None:
            try:
                self.updater = Updater(self.cfg, flatten_keys(tr["observation"]), tr["action"])
            except KeyError as e:  # agent.obs_keys names a key the env does not have: a config error, fatal
                raise SystemExit(f"learner: {e.args[0]}") from e
            except (ValueError, OSError) as e:  # bad demonstrations or settings: say which, before any update
                raise SystemExit(f"learner: {e}") from e
            u = self.updater
            if u.demos is not None:
                print(f"learner: {len(u.demos)} demonstration transitions from {self.cfg.replay.demo_dir} make up "
                      f"{self.cfg.replay.demo_fraction:.0%} of every minibatch", flush=True)
            if u.image_keys and self.cfg.replay.on_device:
                print("learner: image batches are sampled on the host (replay.on_device covers state vectors only)",
                      flush=True)
            if u.mesh is not None:
                print(f"learner: data parallel over {u.mesh.devices.size} devices", flush=True)
        self.updater.insert(
            flatten_keys(tr["observation"]),
            tr["action"],
            float(tr["reward"]),
            flatten_keys(tr["next_observation"]),
            tr["terminated"],
            tr["truncated"],
        )
        self.env_steps += 1

    def rebuild_from_log(self) -> int:
        """Refill the replay buffer from the durable log (after a restart); returns how many transitions."""
        for _, _, _, payload in self.log.replay():
            t = unpack(payload)
            if self.inbox.expected_spec is None:  # actors must keep announcing what the log already holds
                self.inbox.expected_spec = make_spec(t["observation"], t["action"])
            self._insert(t)
        return self.env_steps

    def resume(self) -> None:
        """After a restart: refill the replay buffer from the log and restore the latest checkpoint, if any."""
        n = self.rebuild_from_log()
        step = self.checkpointer.latest_step()
        if step is not None and self.updater is not None:
            try:
                agent, meta = self.checkpointer.restore(self.updater.new_agent(), step)
            except (ValueError, KeyError) as e:
                raise SystemExit(
                    f"learner: checkpoint {step} in {self.checkpointer.directory} does not fit this config's agent "
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
            self._insert(d.transition)
        for msg in others:
            body = msg.body if isinstance(msg.body, dict) else {}
            if msg.msg_type == "episode":
                self._log_episode(body)
            elif msg.msg_type == "done":
                self.actor_done_steps = int(body.get("env_steps", self.env_steps))
            elif msg.msg_type == "eval":
                # Evaluations during training (final=False) are logged; the final one also ends the run.
                if body.get("final", True):
                    self.eval_result = body
                step = body.get("env_steps", self.env_steps)
                step = int(step) if isinstance(step, int) and not isinstance(step, bool) else self.env_steps
                # `eval/episodes` first: runlog.evaluations starts a row at it.
                for k, v in sorted(body.items(), key=lambda kv: kv[0] != "episodes"):
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "env_steps":
                        self.writer.add_scalar(f"eval/{k}", v, step)
            self.server.reply(msg.identity, "ack", {"status": self.status()}, seq=msg.seq)

    def _log_episode(self, body: dict[str, Any]) -> None:
        self.episodes += 1
        ret = float(body.get("return", 0.0))
        self.returns.append(ret)
        self.writer.add_scalar("episode/return", ret, self.env_steps)
        if body.get("success") is not None:  # None: the env has no notion of success
            success = float(bool(body["success"]))
            self.successes.append(success)
            self.writer.add_scalar("episode/success", success, self.env_steps)
        self.writer.add_scalar("episode/length", float(body.get("length", 0)), self.env_steps)
        # The actor's per-episode records: mixing (eps_k / switch step, L, U, kappa) and safety-filter counts.
        for section in ("mixing", "safety"):
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
            "params_version": self.params_version,
            "phase": "evaluating" if self.final_sent else "training",
        }

    def _params_body(self, final: bool = False) -> dict[str, Any]:
        # With conservative mixing the actor also needs the critic, for its bound on the policy's value.
        tree = self.agent.actor_params if self.cfg.mixing.mode == "off" else self.agent.value_params
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
        return self.checkpointer.save(self.updates, self.agent, meta)

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

    # ------------------------------------------------------------------------------------------- loop
    def run(self) -> int:
        t = self.cfg.train
        final_at = 0.0
        self.resume()
        try:
            while True:
                if self.agent is None and self.updater is not None:
                    if self.env_steps >= max(1, t.start_steps):
                        self._init_agent()
                    elif self.actor_done_steps is not None and self.env_steps >= self.actor_done_steps:
                        # Collection ended inside the warm-up: build the agent anyway so the actor gets its final
                        # parameters (an untrained policy) instead of waiting for them forever.
                        print(f"learner: the actor finished after {self.env_steps} env steps, before "
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
                        print("learner: parent process is gone; stopping", flush=True)
                        return 1
                caught_up = self.actor_done_steps is not None and not learner_may_update(
                    self.updates, self.env_steps, t.start_steps
                )
                if caught_up and self.env_steps >= (self.actor_done_steps or 0):
                    if not self.final_sent and self.agent is not None:
                        self._checkpoint()
                        self.final_sent = True
                    if now - final_at > 1.0 and self.agent is not None:
                        final_at = now  # resent until the actor reports its evaluation
                        self._publish_params(final=True)
                if self.eval_result is not None:
                    (self.run_dir / "eval.json").write_text(json.dumps(self.eval_result, indent=2))
                    self.server.publish(TOPIC_STATUS, "status", {**self.status(), "phase": "done"})
                    return 0
        except KeyboardInterrupt:
            if self.agent is not None:
                path = self._checkpoint()
                print(f"learner: interrupted; checkpoint saved to {path}", flush=True)
            return 130
        finally:
            self.writer.close()
            self.checkpointer.close()
            self.server.close()
            self.log.close()
            if self.security is not None:
                self.security.close()


def run_learner(cfg: Config, run_dir: Path, parent_pid: int | None = None, resume: bool = False) -> int:
    run_dir.mkdir(parents=True, exist_ok=True)
    return Learner(cfg, run_dir, parent_pid, resume).run()
