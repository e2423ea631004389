"""The actor's durable sending: every transition goes to the disk spool first, leaves it only when acknowledged.

Owns: the actor side of delivery. `add` gives a transition the next sequence number and puts its encoded bytes
in the `ActorSpool` (so it survives an actor crash); `flush` sends what is new; acks from the learner (the
highest contiguous sequence durable on its disk) drop spooled entries; when the learner has been silent for
`resend_after_s` with entries still spooled (it restarted, or the link dropped), the handshake is repeated and
everything spooled is sent again — the learner's log drops duplicates, so at-least-once sending gives
exactly-once storage. Knows nothing of learning.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import IO, Any

from serl_stack.transport.actor_client import ActorClient
from serl_stack.transport.protocol import Spec, pack
from serl_stack.transport.spool import ActorSpool

MAX_BATCH_BYTES = 4 * 1024 * 1024
"""Largest `transitions` message the outbox builds (several are sent when more is pending)."""


class DurableOutbox:
    """Spool-backed sending of transitions through an `ActorClient`."""

    def __init__(
        self,
        client: ActorClient,
        spool: ActorSpool,
        spec: Spec,
        resend_after_s: float = 2.0,
        ledger: Path | None = None,
    ) -> None:
        self.client = client
        self._ledger: IO[str] | None = None
        """Audit trail: one `seq sha256(payload)` line per spooled transition (for checking delivery)."""
        if ledger is not None:
            # A crash between a spool put and its ledger line leaves the spool ahead: catch the ledger up.
            known = set()
            if Path(ledger).exists():
                known = {int(line.split()[0]) for line in Path(ledger).read_text().splitlines() if line.strip()}
            self._ledger = open(ledger, "a")  # noqa: SIM115 - kept open for the outbox's lifetime
            for seq, payload in spool.pending():
                if seq not in known:
                    self._write_ledger(seq, payload)
        self.spool = spool
        self.spec = spec
        self.resend_after_s = resend_after_s
        self._new: list[list[Any]] = []
        self._last_progress = time.monotonic()
        self.durable_seq = 0
        self.welcomed = False
        self.refused_reason: str | None = None
        self.resends = 0
        self.quarantined: list[list[Any]] = []
        """[seq, reason] of every transition the learner set aside."""
        self.hello()

    def hello(self) -> None:
        """Announce the spec; the learner answers `welcome` with what it already holds, or `refused`."""
        self.client.send("hello", {"spec": self.spec})

    def add(self, transition: dict[str, Any]) -> int:
        """Spool one transition (durable before this returns when the spool fsyncs); returns its seq."""
        seq = self.spool.next_seq()
        payload = pack(transition)
        self.spool.put(seq, payload)
        self._write_ledger(seq, payload)
        self._new.append([seq, payload])
        return seq

    def _write_ledger(self, seq: int, payload: bytes) -> None:
        if self._ledger is not None:
            self._ledger.write(f"{seq} {hashlib.sha256(payload).hexdigest()}\n")
            self._ledger.flush()

    def _send(self, items: list[list[Any]]) -> None:
        batch: list[list[Any]] = []
        size = 0
        for item in items:
            if batch and size + len(item[1]) > MAX_BATCH_BYTES:
                self.client.send("transitions", {"items": batch})
                batch, size = [], 0
            batch.append(item)
            size += len(item[1])
        if batch:
            self.client.send("transitions", {"items": batch})

    def flush(self) -> None:
        """Send transitions added since the last flush (only once the learner has welcomed us)."""
        # One fsync per batch (on the spool's flusher thread when it has one, so this returns at once); a put
        # alone already survives a crash of this process.
        self.spool.flush()
        if self._new and self.welcomed:
            self._send(self._new)
            self._new = []

    def on_reply(self, msg_type: str, body: dict[str, Any]) -> None:
        """Feed a reply from the learner (`welcome`, `ack`, `refused`)."""
        if msg_type == "refused":
            if body.get("rehello") is True:  # the learner restarted and does not know us yet
                if self.welcomed:  # one hello per refusal burst; `maintain` retries if it gets lost
                    self.welcomed = False
                    self.hello()
            else:
                self.refused_reason = str(body.get("reason"))
            return
        durable = body.get("durable_seq")
        if isinstance(durable, int) and not isinstance(durable, bool):
            if durable > self.durable_seq or msg_type == "welcome":
                self._last_progress = time.monotonic()
            self.durable_seq = max(self.durable_seq, durable)
            if self.durable_seq > 0:
                self.spool.ack(self.durable_seq)
        if msg_type == "welcome":
            first = not self.welcomed
            self.welcomed = True
            # Whatever the learner does not hold yet goes again: after a restart of either side, or at first
            # contact when a previous actor run left entries in the spool.
            self._new = []
            pending = [[seq, payload] for seq, payload in self.spool.pending() if seq > self.durable_seq]
            if pending:
                self.resends += 0 if first else 1
                self._send(pending)
        for item in body.get("quarantined", []) or []:
            self.quarantined.append(item)

    def maintain(self) -> None:
        """Re-handshake (which resends) when spooled entries got no progress for `resend_after_s`."""
        if len(self.spool) and time.monotonic() - self._last_progress > self.resend_after_s:
            self._last_progress = time.monotonic()
            self.welcomed = False
            self.hello()

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
