"""Durable delivery end to end in one process: real sockets, real log, real spool (inbox <-> outbox)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from serl_stack.errors import TransportError
from serl_stack.transport.actor_client import ActorClient
from serl_stack.transport.inbox import DurableInbox
from serl_stack.transport.learner_server import LearnerServer
from serl_stack.transport.log import TransitionLog
from serl_stack.transport.outbox import DurableOutbox
from serl_stack.transport.protocol import make_spec, pack
from serl_stack.transport.spool import ActorSpool

MAX = 1 << 24


def transition(i: int, nan: bool = False) -> dict:
    obs = {"state": {"tcp_pose": np.full(7, i, np.float32)}}
    action = np.full(7, np.nan if nan else 0.1, np.float32)
    return {"observation": obs, "next_observation": obs, "action": action, "executed_action": action,
            "reward": float(i), "terminated": False, "truncated": False, "episode": 0}


class Link:
    """A learner-side inbox and an actor-side outbox pumped by hand."""

    def __init__(self, tmp: Path, actor_id: str = "a0", spec=None) -> None:
        self.server = LearnerServer("127.0.0.1", 0, 0, MAX)
        self.log = TransitionLog(tmp / "log")
        self.inbox = DurableInbox(self.server, self.log)
        self.client = ActorClient("127.0.0.1", self.server.transitions_port, self.server.params_port, actor_id, MAX)
        self.spool = ActorSpool(tmp / f"spool-{actor_id}", fsync=False)
        t = transition(0)
        self.outbox = DurableOutbox(self.client, self.spool, spec or make_spec(t["observation"], t["action"]),
                                    resend_after_s=0.3)
        self.delivered: list = []

    def pump(self, seconds: float = 0.5, until=None) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (until and until()):
            got, _ = self.inbox.handle(self.server.recv(5))
            self.delivered += got
            self.client.poll(5)
            while self.client.replies:
                self.outbox.on_reply(*self.client.replies.popleft())
            self.outbox.flush()
            self.outbox.maintain()

    def pump_with(self, client: ActorClient, outbox: DurableOutbox, until, seconds: float = 5.0) -> None:
        """Pump this link and a second actor's client/outbox until `until()`."""
        deadline = time.monotonic() + seconds
        while not until() and time.monotonic() < deadline:
            self.pump(0.02)
            client.poll(5)
            while client.replies:
                outbox.on_reply(*client.replies.popleft())
            outbox.flush()

    def close(self) -> None:
        self.client.close()
        self.server.close()
        self.spool.close()
        self.log.close()


def test_transitions_are_logged_acked_and_unspooled(tmp_path: Path) -> None:
    link = Link(tmp_path)
    try:
        link.pump(until=lambda: link.outbox.welcomed)
        for i in range(50):
            link.outbox.add(transition(i))
        link.pump(5, until=lambda: len(link.spool) == 0)
        assert len(link.spool) == 0 and link.outbox.durable_seq == 50
        assert [d.seq for d in link.delivered] == list(range(1, 51))
        logged = [(seq, payload) for _, _, seq, payload in link.log.replay()]
        assert logged == [(i + 1, pack(transition(i))) for i in range(50)]  # byte-identical
    finally:
        link.close()


def test_bad_transition_is_quarantined_with_its_reason_and_does_not_stall(tmp_path: Path) -> None:
    link = Link(tmp_path)
    try:
        link.pump(until=lambda: link.outbox.welcomed)
        link.outbox.add(transition(1))
        link.outbox.add(transition(2, nan=True))
        link.outbox.add(transition(3))
        link.pump(5, until=lambda: len(link.spool) == 0)
        assert link.outbox.durable_seq == 3 and len(link.spool) == 0
        assert [d.seq for d in link.delivered] == [1, 3]
        assert link.outbox.quarantined == [[2, "transition field 'action': holds NaN or inf"]]
        (actor, seq, _, reason), = list(link.log.quarantined())
        assert (actor, seq) == ("a0", 2) and "NaN" in reason
    finally:
        link.close()


def test_spec_mismatch_is_refused_with_the_reason(tmp_path: Path) -> None:
    link = Link(tmp_path)
    try:
        link.pump(until=lambda: link.outbox.welcomed)
        other = ActorClient("127.0.0.1", link.server.transitions_port, link.server.params_port, "a1", MAX)
        spool = ActorSpool(tmp_path / "spool-a1", fsync=False)
        bad = DurableOutbox(other, spool, make_spec({"state": {"x": np.zeros(2, np.float32)}}, np.zeros(7, np.float32)))
        link.pump_with(other, bad, until=lambda: bad.refused_reason is not None)
        assert bad.refused_reason is not None and "spec mismatch" in bad.refused_reason
        other.close()
        spool.close()
    finally:
        link.close()


def _rebind(port: int, pport: int, timeout_s: float = 10.0) -> LearnerServer:
    """A new server on the ports of one just closed: ZeroMQ closes a listener on its I/O thread, after
    `close()` returns, so on a loaded machine the port can still be taken for a moment."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return LearnerServer("127.0.0.1", port, pport, MAX)
        except TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_learner_restart_resends_spooled_and_drops_duplicates(tmp_path: Path) -> None:
    link = Link(tmp_path)
    try:
        link.pump(until=lambda: link.outbox.welcomed)
        for i in range(20):
            link.outbox.add(transition(i))
        link.pump(5, until=lambda: link.outbox.durable_seq == 20)
        # The learner "restarts": a new inbox over the same log, on a new socket at the same port.
        port, pport = link.server.transitions_port, link.server.params_port
        link.server.close()
        link.log.close()
        link.log = TransitionLog(tmp_path / "log")
        for i in range(20, 30):
            link.outbox.add(transition(i))
        link.outbox.flush()  # sent into the void while the learner is down
        link.server = _rebind(port, pport)
        link.inbox = DurableInbox(link.server, link.log)
        link.pump(10, until=lambda: len(link.spool) == 0)
        seqs = [seq for _, _, seq, _ in link.log.replay()]
        assert seqs == list(range(1, 31)), seqs
    finally:
        link.close()


def test_a_resend_goes_out_a_chunk_per_call_and_still_delivers_everything_once(tmp_path: Path) -> None:
    """A backlog far larger than `resend_chunk_bytes` (what a previous actor run, or a slow learner, leaves
    spooled) is sent a chunk per welcome / flush / maintain call, so no single call of the control loop carries it
    all, and every entry still reaches the log exactly once, in order."""
    link = Link(tmp_path)
    entry = len(pack(transition(0)))
    link.outbox.resend_chunk_bytes = 4 * entry
    sent: list[int] = []  # transitions per `transitions` message, in the order sent
    real_send = link.client.send

    def counting_send(msg_type: str, body):
        if msg_type == "transitions":
            sent.append(len(body["items"]))
        return real_send(msg_type, body)

    link.client.send = counting_send
    try:
        for i in range(60):  # spooled before any welcome: nothing can go out yet
            link.outbox.add(transition(i))
        link.outbox.flush()
        assert sent == [] and not link.outbox.welcomed
        deadline = time.monotonic() + 5
        while not link.client.replies and time.monotonic() < deadline:  # the learner's welcome, handled below
            link.inbox.handle(link.server.recv(5))
            link.client.poll(5)
        assert [m for m, _ in link.client.replies] == ["welcome"]
        link.outbox.on_reply(*link.client.replies.popleft())
        assert sent == [4] and link.outbox.resending  # one chunk, not the 60 spooled entries
        link.outbox.flush()
        link.outbox.maintain()
        assert sent == [4, 4, 4]
        link.pump(10, until=lambda: len(link.spool) == 0)
        assert not link.outbox.resending and sum(sent) == 60 and max(sent) == 4
        assert [seq for _, _, seq, _ in link.log.replay()] == list(range(1, 61))
        for i in range(60, 63):  # after the resend, new transitions go out as before: one message per flush
            link.outbox.add(transition(i))
        link.outbox.flush()
        assert sent[-1] == 3
        link.pump(5, until=lambda: len(link.spool) == 0)
        assert [seq for _, _, seq, _ in link.log.replay()] == list(range(1, 64))
    finally:
        link.close()


def test_resend_chunk_must_be_positive(tmp_path: Path) -> None:
    server = LearnerServer("127.0.0.1", 0, 0, MAX)
    client = ActorClient("127.0.0.1", server.transitions_port, server.params_port, "a0", MAX)
    spool = ActorSpool(tmp_path / "spool", fsync=False)
    t = transition(0)
    try:
        with pytest.raises(ValueError, match="resend_chunk_bytes: got 0, expected >= 1"):
            DurableOutbox(client, spool, make_spec(t["observation"], t["action"]), resend_chunk_bytes=0)
    finally:
        client.close()
        server.close()
        spool.close()


@pytest.mark.parametrize("seq", [0, -1, 2**63, True, "7"])
def test_items_with_unusable_seq_are_counted_not_fatal(tmp_path: Path, seq) -> None:
    link = Link(tmp_path)
    try:
        link.pump(until=lambda: link.outbox.welcomed)
        link.client.send("transitions", {"items": [[seq, pack(transition(0))]]})
        link.pump(0.3)
        assert link.inbox.quarantined == 1 and not link.delivered
    finally:
        link.close()


def test_a_welcomed_actor_gets_the_current_parameters_at_once(tmp_path: Path) -> None:
    link = Link(tmp_path)
    params = {"w": np.arange(4, dtype=np.float32)}
    link.inbox.on_welcome = lambda identity: link.server.reply(identity, "params", {"params": params}, seq=5)
    try:
        link.pump(2, until=lambda: link.client.params_body is not None)
        assert link.outbox.welcomed and link.client.params_version == 5
        np.testing.assert_array_equal(link.client.params_body["params"]["w"], params["w"])
    finally:
        link.close()


def test_several_actors_feed_one_learner(tmp_path: Path) -> None:
    link = Link(tmp_path, actor_id="a0")
    other = ActorClient("127.0.0.1", link.server.transitions_port, link.server.params_port, "a1", MAX)
    spool = ActorSpool(tmp_path / "spool-a1", fsync=False)
    t0 = transition(0)
    second = DurableOutbox(other, spool, make_spec(t0["observation"], t0["action"]), resend_after_s=0.3)
    try:
        link.pump_with(other, second, until=lambda: link.outbox.welcomed and second.welcomed)
        for i in range(30):
            link.outbox.add(transition(i))
            second.add(transition(100 + i))
        link.pump_with(other, second, until=lambda: not (len(link.spool) or len(spool)))
        by_actor: dict[str, list[int]] = {}
        for _, actor, seq, _ in link.log.replay():
            by_actor.setdefault(actor, []).append(seq)
        assert by_actor == {"a0": list(range(1, 31)), "a1": list(range(1, 31))}
    finally:
        other.close()
        spool.close()
        link.close()
