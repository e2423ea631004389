"""The learner's durable delivery: handshakes, schema checks, the on-disk log and acknowledgements.

Owns: what the learner promises an actor. An actor first says `hello` with the spec of its observations and
actions; a spec that differs from the one this learner expects is refused with the reason. Then every
`transitions` item `[seq, payload]` (payload = one msgpack-encoded transition) is checked against that spec and
appended to the `TransitionLog`, or quarantined with its reason; after each batch of messages the log is
committed (one fsync) and every actor that sent data is told the highest contiguous sequence number that is on
disk. Only then are the new transitions handed to the caller. Knows nothing of learning.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from serl_stack.transport.learner_server import Incoming, LearnerServer
from serl_stack.transport.log import TransitionLog
from serl_stack.transport.protocol import ProtocolError, Spec, check_spec, check_transition, unpack


@dataclass(frozen=True)
class Delivered:
    """One transition that is now durable on disk."""

    actor_id: str
    seq: int
    transition: dict[str, Any]


class DurableInbox:
    """Turns validated messages from a `LearnerServer` into durable transitions and acks."""

    def __init__(
        self,
        server: LearnerServer,
        log: TransitionLog,
        expected_spec: Spec | None = None,
        status: Callable[[], dict[str, Any]] = dict,
        max_item_bytes: int = 64 * 1024 * 1024,
        on_welcome: Callable[[bytes], None] | None = None,
        admit: Callable[[str], str | None] | None = None,
    ) -> None:
        self.server = server
        self.log = log
        self.expected_spec = expected_spec
        """Spec every actor must announce; None = adopt the first one announced."""
        self.status = status
        self.max_item_bytes = max_item_bytes
        self.on_welcome = on_welcome
        """Called with the routing id of each welcomed actor (the learner sends it the current parameters)."""
        self.admit = admit
        """Called with each actor id that says hello: None admits it, a string is the reason to refuse it (e.g. a
        run that already has all the actors it was configured for)."""
        self.specs: dict[str, Spec] = {}
        self.quarantined = 0
        self.refused = 0

    def _refuse(self, msg: Incoming, reason: str, rehello: bool = False) -> None:
        """Refuse a message; `rehello` tells the actor to handshake and resend (e.g. after a learner restart)."""
        self.refused += 1
        body = {"reason": reason, "rehello": rehello, "status": self.status()}
        self.server.reply(msg.identity, "refused", body, seq=msg.seq)

    def _hello(self, msg: Incoming) -> None:
        try:
            spec = check_spec(msg.body.get("spec") if isinstance(msg.body, dict) else None)
        except ProtocolError as e:
            self._refuse(msg, str(e))
            return
        if self.admit is not None and (reason := self.admit(msg.sender)) is not None:
            self._refuse(msg, reason)
            return
        if self.expected_spec is None:
            self.expected_spec = spec
        elif spec != self.expected_spec:
            self._refuse(msg, f"spec mismatch: actor announced {spec}, this learner expects {self.expected_spec}")
            return
        self.specs[msg.sender] = spec
        body = {"durable_seq": self.log.durable_seq(msg.sender), "status": self.status()}
        self.server.reply(msg.identity, "welcome", body, seq=msg.seq)
        if self.on_welcome is not None:
            self.on_welcome(msg.identity)

    def _transitions(self, msg: Incoming, out: list[Delivered], quarantined: dict[str, list]) -> bool:
        spec = self.specs.get(msg.sender)
        if spec is None:
            self._refuse(msg, f"actor '{msg.sender}' sent transitions before its hello handshake", rehello=True)
            return False
        items = msg.body.get("items") if isinstance(msg.body, dict) else None
        if not isinstance(items, list):
            self._refuse(msg, "transitions body: expected {'items': [[seq, payload], ...]}")
            return False
        for item in items:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], bytes)):
                self.quarantined += 1  # without a usable seq there is nothing to acknowledge
                continue
            seq, payload = item
            if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq < 2**63:
                self.quarantined += 1
                continue
            try:
                t = unpack(payload, self.max_item_bytes)
                check_transition(t, spec)
            except ProtocolError as e:
                # Not storable either with an actor id the log cannot key on; it is still counted below.
                with contextlib.suppress(ValueError, TypeError):
                    self.log.quarantine(msg.sender, seq, payload, str(e))
                quarantined.setdefault(msg.sender, []).append([seq, str(e)])
                self.quarantined += 1
                continue
            try:
                stored = self.log.append(msg.sender, seq, payload)
            except (ValueError, TypeError) as e:  # e.g. an actor id the log cannot key on
                self.quarantined += 1
                quarantined.setdefault(msg.sender, []).append([seq, str(e)])
                continue
            if stored:
                out.append(Delivered(msg.sender, seq, t))
        return True

    def handle(self, messages: list[Incoming]) -> tuple[list[Delivered], list[Incoming]]:
        """Process one batch; returns (transitions now durable, the other messages for the caller)."""
        delivered: list[Delivered] = []
        others: list[Incoming] = []
        to_ack: dict[str, Incoming] = {}
        quarantined: dict[str, list] = {}
        for msg in messages:
            if msg.msg_type == "hello":
                self._hello(msg)
            elif msg.msg_type == "transitions":
                if self._transitions(msg, delivered, quarantined):
                    to_ack[msg.sender] = msg  # the newest message of each actor carries the ack
            else:
                others.append(msg)
        if to_ack:
            durable = self.log.commit()  # one fsync for the whole batch
            for actor, msg in to_ack.items():
                body = {"durable_seq": durable.get(actor, self.log.durable_seq(actor)),
                        "quarantined": quarantined.get(actor, []), "status": self.status()}
                self.server.reply(msg.identity, "ack", body, seq=msg.seq)
        return delivered, others
