"""The learner's side of the ZeroMQ link: receives transition batches, acknowledges them, publishes parameters.

Owns: the ROUTER socket actors send to, the PUB socket that broadcasts topics (`params`, `status`), message
validation and per-reason rejection counts. Knows nothing of learning: bodies are opaque to it beyond the
envelope.
"""

from __future__ import annotations

import collections
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq

from serl_stack.errors import TransportError
from serl_stack.transport.protocol import ProtocolError, envelope, open_envelope

if TYPE_CHECKING:
    from serl_stack.transport.auth import CurveServer

TOPIC_PARAMS = b"params"
TOPIC_STATUS = b"status"
ACTOR_MESSAGE_TYPES = {"hello", "transitions", "episode", "done", "eval", "ping"}


@dataclass(frozen=True)
class Incoming:
    """One validated message from an actor."""

    identity: bytes
    """ZeroMQ routing id of the sending socket (used to reply)."""
    msg_type: str
    sender: str
    seq: int
    body: Any
    user_id: str | None = None
    """Actor id the CURVE handshake authenticated (equal to `sender`), or None when security is off."""


def endpoint(host: str, port: int | None = None) -> str:
    """`tcp://host:port` (or `tcp://host` without a port), bracketing IPv6 literals."""
    base = f"tcp://[{host}]" if ":" in host else f"tcp://{host}"
    return base if port is None else f"{base}:{port}"


def _bind(sock: zmq.Socket, host: str, port: int) -> int:
    if port == 0:
        return sock.bind_to_random_port(endpoint(host))
    sock.bind(endpoint(host, port))
    return port


class LearnerServer:
    """Binds the learner's sockets; `recv` returns validated actor messages, `reply`/`publish` answer."""

    def __init__(
        self,
        host: str,
        transitions_port: int,
        params_port: int,
        max_message_bytes: int,
        security: CurveServer | None = None,
    ) -> None:
        # With CURVE the sockets live in the CurveServer's context: its ZAP handler only sees that context.
        self._ctx = zmq.Context.instance() if security is None else security.context
        self._security = security
        self._max_bytes = max_message_bytes
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        if security is not None:  # the PUB too, so an unlisted actor receives no parameters
            security.configure(self._router)
            security.configure(self._pub)
        try:
            self.transitions_port = _bind(self._router, host, transitions_port)
            self.params_port = _bind(self._pub, host, params_port)
        except zmq.ZMQError as e:
            self.close()
            raise TransportError(
                f"transport.transitions_port/params_port: cannot bind the learner on {host} (transitions_port="
                f"{transitions_port}, params_port={params_port}): {e}; pick free ports, or 0 to let the OS choose"
            ) from e
        self._poller = zmq.Poller()
        self._poller.register(self._router, zmq.POLLIN)
        self.rejected: collections.Counter[str] = collections.Counter()
        """Messages refused, counted by reason (the first words of the error)."""

    def recv(self, timeout_ms: int = 0, max_messages: int = 1000) -> list[Incoming]:
        """Validated messages waiting (blocking up to `timeout_ms` for the first); malformed ones are counted."""
        out: list[Incoming] = []
        if not self._poller.poll(timeout_ms):
            return out
        while len(out) < max_messages:
            try:
                frames, user_id = self._recv_frames()
            except zmq.Again:
                break
            if len(frames) != 2:
                self.rejected["frame count"] += 1
                continue
            identity, data = frames
            try:
                msg = open_envelope(data, self._max_bytes, expect=ACTOR_MESSAGE_TYPES)
            except ProtocolError as e:
                self.rejected[e.reason] += 1
                continue
            if self._security is not None and msg["from"] != user_id:
                # The key proved who connected; a different `from` is an actor posing as another.
                self.rejected["spoofed actor id"] += 1
                continue
            out.append(Incoming(identity, msg["type"], msg["from"], msg["seq"], msg["body"], user_id))
        return out

    def _recv_frames(self) -> tuple[list[bytes], str | None]:
        """One multipart message and, with CURVE, the actor id its connection authenticated as."""
        if self._security is None:
            return self._router.recv_multipart(zmq.NOBLOCK), None
        # Only zero-copy Frames expose the connection's metadata (the ZAP handler's User-Id).
        frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
        return [f.bytes for f in frames], frames[-1].get("User-Id")

    def reply(self, identity: bytes, msg_type: str, body: Any, seq: int = 0) -> None:
        """Send a message to one actor (an ack, typically); dropped if that actor is gone."""
        # The peer's queue is full or it disconnected: it resynchronises from the next ack.
        with contextlib.suppress(zmq.Again):
            self._router.send_multipart([identity, envelope(msg_type, "learner", body, seq)], zmq.NOBLOCK)

    def publish(self, topic: bytes, msg_type: str, body: Any, seq: int = 0) -> None:
        """Broadcast to every subscriber of `topic`."""
        self._pub.send_multipart([topic, envelope(msg_type, "learner", body, seq)])

    def close(self, linger_ms: int = 0) -> None:
        """Close both sockets; `linger_ms` > 0 first gives queued replies (the last acks) that long to leave."""
        for sock in (getattr(self, "_router", None), getattr(self, "_pub", None)):
            if sock is not None:
                sock.close(linger=linger_ms)
