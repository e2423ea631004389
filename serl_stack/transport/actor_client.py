"""The actor's side of the ZeroMQ link: sends transition batches, tracks acks, keeps the newest parameters.

Owns: the DEALER socket to the learner, the SUB socket for parameters, the queue of batches not yet
acknowledged, and the newest parameter version seen (an older version never replaces a newer one). Knows nothing
of learning: parameters and transitions are opaque message bodies.
"""

from __future__ import annotations

import collections
import contextlib
import time
from typing import TYPE_CHECKING, Any

import zmq

from serl_stack.transport.learner_server import TOPIC_PARAMS, TOPIC_STATUS, endpoint
from serl_stack.transport.protocol import ProtocolError, envelope, open_envelope

if TYPE_CHECKING:
    from serl_stack.transport.auth import CurveClient


class ActorClient:
    """Connects to a learner; `send` queues a message, `poll` processes acks and parameter broadcasts."""

    def __init__(
        self,
        host: str,
        transitions_port: int,
        params_port: int,
        actor_id: str,
        max_message_bytes: int,
        security: CurveClient | None = None,
    ) -> None:
        self.actor_id = actor_id
        self._max_bytes = max_message_bytes
        self._ctx = zmq.Context.instance()
        self._dealer = self._ctx.socket(zmq.DEALER)
        self._dealer.setsockopt(zmq.LINGER, 0)
        self._dealer.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        if security is not None:  # CURVE options must be set before connect
            security.configure(self._dealer)
        self._dealer.connect(endpoint(host, transitions_port))
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self._sub.setsockopt(zmq.SUBSCRIBE, TOPIC_PARAMS)
        self._sub.setsockopt(zmq.SUBSCRIBE, TOPIC_STATUS)  # the learner's heartbeat
        if security is not None:
            security.configure(self._sub)
        self._sub.connect(endpoint(host, params_port))
        self._poller = zmq.Poller()
        self._poller.register(self._dealer, zmq.POLLIN)
        self._poller.register(self._sub, zmq.POLLIN)
        self._seq = 0
        self.acked_seq = 0
        """Highest sequence number the learner has acknowledged."""
        self.params_body: dict[str, Any] | None = None
        """Body of the newest parameter message seen (a map with at least "params"), or None before the first."""
        self.params_version = -1
        self.learner_status: dict[str, Any] = {}
        """The most recent status the learner attached to an ack or a parameter message."""
        self.last_sent = 0.0
        """time.monotonic() of the last message sent (an idle actor pings to stay visible)."""
        self.last_heard = 0.0
        """time.monotonic() of the last message from the learner."""
        self.rejected: collections.Counter[str] = collections.Counter()
        self.replies: collections.deque[tuple[str, dict[str, Any]]] = collections.deque(maxlen=10_000)
        """(type, body) of replies from the learner (ack, welcome, refused), for the caller to consume."""

    @property
    def sent_seq(self) -> int:
        """Sequence number of the last message sent."""
        return self._seq

    def silent_for(self) -> float:
        """Seconds since the learner was last heard (inf before the first message)."""
        return time.monotonic() - self.last_heard if self.last_heard else float("inf")

    def send(self, msg_type: str, body: Any) -> int:
        """Send a message to the learner; returns its sequence number (`acked_seq` tells when it was answered).

        Nothing is kept for resending here: transitions live in the actor's disk spool until the learner has
        them on disk (`DurableOutbox`), and control messages are cheap to send again."""
        self._seq += 1
        self.last_sent = time.monotonic()
        data = envelope(msg_type, self.actor_id, body, self._seq)
        if len(data) > self._max_bytes:
            raise ValueError(f"{msg_type} message of {len(data)} bytes exceeds max_message_bytes={self._max_bytes}")
        # Not connected yet or queue full: dropped here; the outbox resends from the spool after a re-handshake.
        with contextlib.suppress(zmq.Again):
            self._dealer.send(data, zmq.NOBLOCK)
        return self._seq

    def poll(self, timeout_ms: int = 0) -> bool:
        """Handle waiting acks and parameters (blocking up to `timeout_ms` for the first); True if any."""
        events = dict(self._poller.poll(timeout_ms))
        got = False
        if self._dealer in events:
            while True:
                try:
                    data = self._dealer.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                got |= self._handle(data, {"ack", "welcome", "refused", "params"})
        if self._sub in events:
            while True:
                try:
                    _, data = self._sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                except ValueError:
                    self.rejected["frame count"] += 1
                    continue
                got |= self._handle(data, {"params", "status"})
        return got

    def _handle(self, data: bytes, expect: set[str]) -> bool:
        try:
            msg = open_envelope(data, self._max_bytes, expect=expect)
        except ProtocolError as e:
            self.rejected[e.reason] += 1
            return False
        body = msg["body"]
        if not isinstance(body, dict):
            self.rejected["body not a map"] += 1
            return False
        self.last_heard = time.monotonic()
        if msg["type"] in ("ack", "welcome", "refused"):
            acked = msg["seq"]
            self.acked_seq = max(self.acked_seq, acked)
            self.replies.append((msg["type"], body))
        elif msg["type"] == "params" and msg["seq"] > self.params_version:  # never go back to an older version
            self.params_version = msg["seq"]
            self.params_body = body
        status = body if msg["type"] == "status" else body.get("status")
        if isinstance(status, dict):
            self.learner_status = status
        return True

    def close(self) -> None:
        self._dealer.close(linger=0)
        self._sub.close(linger=0)
