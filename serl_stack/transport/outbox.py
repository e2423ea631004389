"""The actor's durable sending: every transition goes to the disk spool first, leaves it only when acknowledged.

Owns: the actor side of delivery. `add` gives a transition the next sequence number and puts its encoded bytes
in the `ActorSpool` (so it survives an actor crash); `flush` sends what is new; acks from the learner (the
highest contiguous sequence durable on its disk) drop spooled entries; when the learner has been silent for
`resend_after_s` with entries still spooled (it restarted, or the link dropped), the handshake is repeated and
everything spooled is sent again — the learner's log drops duplicates, so at-least-once sending gives
exactly-once storage. A resend goes out at most `resend_chunk_bytes` per `flush` / `maintain` call, so a large
backlog (image transitions behind a slow learner) never stalls the actor's control step for longer than one chunk
takes to read and send. Knows nothing of learning.
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
RESEND_CHUNK_BYTES = 1024 * 1024
"""Default most bytes of a resend read from the spool and sent per `flush` / `maintain` call (at least one entry):
a few ms of the control step; a 10 Hz actor catches up by 10 MB/s (50 camera transitions) while it keeps acting."""


class DurableOutbox:
    """Spool-backed sending of transitions through an `ActorClient`."""

    def __init__(
        self,
        client: ActorClient,
        spool: ActorSpool,
        spec: Spec,
        resend_after_s: float = 2.0,
        ledger: Path | None = None,
        resend_chunk_bytes: int = RESEND_CHUNK_BYTES,
    ) -> None:
        if resend_chunk_bytes < 1:
            raise ValueError(f"resend_chunk_bytes: got {resend_chunk_bytes}, expected >= 1")
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
        self.resend_chunk_bytes = resend_chunk_bytes
        self._resend_after: int | None = None
        """While a resend is under way: the last seq it sent (entries above it go next); None otherwise."""
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
        if not self.welcomed:
            return
        if self._resend_after is not None:
            self._new = []  # spooled, so the resend walking up the spool sends them in turn
            self._resend_chunk()
        elif self._new:
            self._send(self._new)
            self._new = []

    @property
    def resending(self) -> bool:
        """Whether a resend of spooled entries is still under way (a chunk goes out per flush / maintain)."""
        return self._resend_after is not None

    def _resend_chunk(self) -> None:
        """Send the next spooled entries above the resend's position, about `resend_chunk_bytes` of them; the
        resend ends when it has sent the last spooled entry."""
        assert self._resend_after is not None
        items: list[list[Any]] = []
        size = 0
        for seq, payload in self.spool.pending(after=max(self._resend_after, self.durable_seq)):
            items.append([seq, payload])
            size += len(payload)
            if size >= self.resend_chunk_bytes:
                break
        else:
            self._resend_after = None  # everything spooled has gone out (again)
        if items:
            self._send(items)
            if self._resend_after is not None:
                self._resend_after = items[-1][0]

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
            # contact when a previous actor run left entries in the spool. A chunk now, the rest a chunk per
            # flush / maintain call.
            self._new = []
            if len(self.spool):  # acked up to durable_seq just above: whatever is left, the learner lacks
                self.resends += 0 if first else 1
                self._resend_after = self.durable_seq
                self._resend_chunk()
            else:
                self._resend_after = None
        for item in body.get("quarantined", []) or []:
            self.quarantined.append(item)

    def maintain(self) -> None:
        """Re-handshake (which resends) when spooled entries got no progress for `resend_after_s`."""
        if len(self.spool) and time.monotonic() - self._last_progress > self.resend_after_s:
            self._last_progress = time.monotonic()
            self.welcomed = False
            self._resend_after = None  # the welcome starts it again from what the learner holds
            self.hello()
        elif self.welcomed and self._resend_after is not None:
            self._resend_chunk()

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
