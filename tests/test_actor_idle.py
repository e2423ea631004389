"""`Actor.idle_step`: the bookkeeping a robot's control loop does while it waits for the next period (the learner's
parameters received, adopted and their numpy policy built; a refusal left for the step's own poll), against a real
`LearnerServer` over loopback ZeroMQ."""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import serialization

from serl_stack.actor import Actor
from serl_stack.config import load
from serl_stack.errors import TransportError
from serl_stack.inference import PolicyRunner
from serl_stack.transport.learner_server import TOPIC_PARAMS, LearnerServer
from serl_stack.transport.outbox import DurableOutbox
from serl_stack.transport.protocol import make_spec

ROOT = Path(__file__).resolve().parents[1]


def test_idle_step_adopts_the_learners_parameters_and_builds_their_policy(tmp_path: Path) -> None:
    server = LearnerServer("127.0.0.1", 0, 0, 1 << 24)
    cfg = load(ROOT / "configs" / "sim_reach.yaml",
               [f"transport.transitions_port={server.transitions_port}",
                f"transport.params_port={server.params_port}", "agent.hidden_dims=[32, 32]", "train.eval_every=0"])
    actor = Actor(cfg, tmp_path / "run")
    try:
        obs, _ = actor.env.reset(seed=0)
        actor.policy = policy = PolicyRunner(obs, 7, cfg.agent)
        actor.idle_step()  # nothing sent yet: nothing adopted, nothing raised
        assert policy.params is None and policy.version == -1
        state = jax.tree.map(np.asarray, serialization.to_state_dict(policy.template))
        head = state["actor"]["Dense_0"]  # the mean head: every action tanh(0.5), whatever the observation
        head["kernel"], head["bias"] = np.zeros_like(head["kernel"]), np.full_like(head["bias"], 0.5)
        deadline = time.monotonic() + 10
        while policy.version != 3 and time.monotonic() < deadline:  # PUB/SUB: resent until the subscription holds
            server.publish(TOPIC_PARAMS, "params", {"params": state}, seq=3)
            time.sleep(0.02)
            actor.idle_step()
        assert policy.version == 3, "idle_step never adopted the broadcast parameters"
        assert policy._fast_params is policy.params  # built in the wait, not by the next step's act
        built = policy._fast
        action = policy.act(obs, None, deterministic=True)
        assert policy._fast is built  # the step used what the wait built
        np.testing.assert_allclose(action, np.tanh(0.5), atol=1e-6)  # the broadcast weights, not the template's
    finally:
        actor._close()
        server.close()


def test_a_refusal_read_in_the_wait_is_raised_by_the_steps_own_poll(tmp_path: Path) -> None:
    """`idle_step` runs inside the robot env's step, between the command and the next observation: it must not
    end the run there. The refusal it reads is raised by the step's `_poll`, between steps, naming the reason."""
    server = LearnerServer("127.0.0.1", 0, 0, 1 << 24)
    cfg = load(ROOT / "configs" / "sim_reach.yaml",
               [f"transport.transitions_port={server.transitions_port}",
                f"transport.params_port={server.params_port}", "train.eval_every=0"])
    actor = Actor(cfg, tmp_path / "run")
    try:
        obs, _ = actor.env.reset(seed=0)
        actor.outbox = DurableOutbox(actor.client, actor.spool, make_spec(obs, np.zeros(7, np.float32)))  # hello
        deadline = time.monotonic() + 10
        hello = []
        while not hello and time.monotonic() < deadline:
            hello = [m for m in server.recv(100) if m.msg_type == "hello"]
        assert hello, "the outbox's hello never reached the learner"
        server.reply(hello[0].identity, "refused", {"reason": "observation spec differs from the run's"})
        while actor.outbox.refused_reason is None and time.monotonic() < deadline:
            actor.idle_step()  # reads the refusal, raises nothing
            time.sleep(0.01)
        assert actor.outbox.refused_reason == "observation spec differs from the run's"
        with pytest.raises(TransportError, match="refused this actor: observation spec differs"):
            actor._poll(0)
    finally:
        actor._close()
        server.close()
