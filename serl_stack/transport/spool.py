"""The actor's disk spool: every message put here stays on disk until the learner acknowledges it.

Owns: the segment files `segment-NNNNNN.spool` of one spool directory, the index of unacknowledged messages, the
acknowledged watermark and the next sequence number (which survives restarts, also when everything is
acknowledged), and the cap on its size on disk (`max_bytes`: a put beyond it raises `SpoolFullError`, so a
learner that stays away cannot fill the robot PC's disk). Frames are the transition log's (`log.py`), so a
crash mid-put loses at most that one record and never corrupts the others. Space is reclaimed by deleting a
segment once all its messages are acknowledged.
Format and recovery rules: docs/transport-storage.md.
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Iterator
from typing import NamedTuple

from serl_stack.errors import SpoolFullError
from serl_stack.transport.log import (
    CorruptLogError,
    FrameReader,
    check_payload,
    check_seq,
    encode_frame,
    lock_dir,
    read_file,
    read_frame,
    sync_dir,
    sync_file,
    truncate_torn_tail,
    write_all,
)

KIND_PUT = 3
"""A message: seq and payload."""
KIND_ACK = 4
"""The learner acknowledged every seq up to this one."""
KIND_HIGH = 5
"""The highest seq ever put, written first in each segment so deleting older segments never loses it."""

DEFAULT_SEGMENT_BYTES = 16 << 20
_SEGMENT_RE = re.compile(r"^segment-(\d{6,})\.spool$")


class _Entry(NamedTuple):
    seq: int
    segment: int
    pos: int
    end: int


class ActorSpool:
    """On-disk queue of unacknowledged (seq, payload) messages, seq = 1, 2, 3, ... in put order."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        fsync: bool = True,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        max_bytes: int | None = None,
    ) -> None:
        """`fsync=True`: each `put` is on disk (fsync) before it returns. `fsync=False`: a `put` reaches the OS
        before it returns (it survives a crash of the actor, not of the machine) and `flush()` fsyncs a batch.
        `max_bytes`: the largest the spool's files may grow (None: no cap)."""
        if segment_bytes < 1024:
            raise ValueError(f"segment_bytes is {segment_bytes}; expected at least 1024")
        if max_bytes is not None and max_bytes < 1024:
            raise ValueError(f"max_bytes is {max_bytes}; expected at least 1024 or None")
        self.directory = os.fspath(directory)
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self._sizes: dict[int, int] = {}  # segment -> bytes in its file
        self.fsync_count = 0
        self.recovered: list[str] = []
        """What opening had to repair (a torn tail cut off), one line each."""
        os.makedirs(self.directory, exist_ok=True)
        self._lock_fd = lock_dir(self.directory)
        self._index: collections.deque[_Entry] = collections.deque()
        self._segment_max: dict[int, int] = {}  # segment -> highest seq put in it (0: none)
        self._read_fds: dict[int, int] = {}
        self._acked = 0
        self._high = 0
        self._fd = -1
        self._broken: OSError | None = None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _path(self, segment: int) -> str:
        return os.path.join(self.directory, f"segment-{segment:06d}.spool")

    def _open(self) -> None:
        segments = sorted(int(m.group(1)) for n in os.listdir(self.directory) if (m := _SEGMENT_RE.match(n)))
        for expected, segment in enumerate(segments, start=segments[0] if segments else 0):
            if segment != expected:
                raise CorruptLogError(self._path(expected), 0, f"segment file is missing (found segment {segment})")
        for i, segment in enumerate(segments):
            path = self._path(segment)
            reader = read_file(path, allow_torn_tail=i == len(segments) - 1)
            self._segment_max[segment] = 0
            for frame in reader:
                if frame.kind == KIND_PUT:
                    if frame.seq <= self._high:
                        raise CorruptLogError(path, frame.pos, f"seq is {frame.seq}, expected > {self._high}")
                    self._index.append(_Entry(frame.seq, segment, frame.pos, frame.end))
                    self._segment_max[segment] = frame.seq
                elif frame.kind == KIND_ACK:
                    self._acked = max(self._acked, frame.seq)
                elif frame.kind != KIND_HIGH:
                    raise CorruptLogError(path, frame.pos, f"record kind is {frame.kind}, expected 3, 4 or 5")
                self._high = max(self._high, frame.seq)
            if (torn := truncate_torn_tail(reader)) is not None:
                self.recovered.append(torn)
            self._sizes[segment] = os.path.getsize(path)
        if segments:
            self._segment = segments[-1]
            self._fd = os.open(self._path(self._segment), os.O_WRONLY | os.O_APPEND)
            self._pos = os.fstat(self._fd).st_size
            self._drop_acked()
        else:
            self._segment = -1
            self._roll()

    # ---- writing ----

    def next_seq(self) -> int:
        """The seq the next `put` must carry: one more than the highest seq ever put or acknowledged."""
        return self._high + 1

    @property
    def acked_seq(self) -> int:
        """Highest seq acknowledged so far (every message up to it is dropped)."""
        return self._acked

    def put(self, seq: int, payload: bytes) -> None:
        """Keep a message until it is acknowledged; `seq` must equal `next_seq()`."""
        check_seq(seq)
        if seq != self._high + 1:
            raise ValueError(f"seq is {seq}; expected next_seq() = {self._high + 1}")
        head, body = encode_frame(KIND_PUT, seq, check_payload(payload))
        size = len(head) + len(body)
        if self.max_bytes is not None and self.disk_bytes + size > self.max_bytes:
            raise SpoolFullError(
                f"{self.directory}: the spool holds {self.disk_bytes} bytes of transitions the learner has not "
                f"acknowledged ({len(self._index)} messages) and the next one would pass transport.spool_max_bytes="
                f"{self.max_bytes}; stopping rather than filling this disk. Nothing is lost: get the learner "
                "running (or the link up) and restart this actor, which resends the spool"
            )
        if self._pos + size > self.segment_bytes and self._segment_max[self._segment] > 0:
            self._roll()
        self._append([head, body])
        self._index.append(_Entry(seq, self._segment, self._pos, self._pos + size))
        self._pos += size
        self._segment_max[self._segment] = seq
        self._high = seq
        if self.fsync:
            self._sync()

    @property
    def disk_bytes(self) -> int:
        """Bytes of the spool's segment files on disk (what `max_bytes` caps)."""
        return sum(self._sizes.values())

    def flush(self) -> None:
        """fsync what was put so far (the batched form of `fsync=True`)."""
        self._sync()

    def ack(self, upto_seq: int) -> None:
        """The learner has every seq up to `upto_seq`: drop those messages and delete segments left empty. An
        ack beyond `next_seq()` (the spool was lost but the learner remembers) moves `next_seq()` past it."""
        if upto_seq == 0:
            return  # "nothing delivered yet" is a valid ack
        check_seq(upto_seq, "upto_seq")
        if upto_seq <= self._acked:
            return
        # Not synced by itself: a lost ACK frame only makes the actor resend messages the learner drops as duplicates.
        head, _ = encode_frame(KIND_ACK, upto_seq, b"")
        self._append([head])
        self._pos += len(head)
        self._acked = upto_seq
        if upto_seq > self._high:
            self._high = upto_seq
            if self.fsync:
                self._sync()  # a seq that appears nowhere else must survive to keep next_seq() from going back
        self._drop_acked()

    def _drop_acked(self) -> None:
        while self._index and self._index[0].seq <= self._acked:
            self._index.popleft()
        if not self._index and self._pos > self.segment_bytes // 4:
            self._roll()  # everything acknowledged: start afresh so the old segment can go
        dead = [s for s, top in self._segment_max.items() if s != self._segment and top <= self._acked]
        if not dead:
            return
        # The active segment starts with HIGH and ACK frames, so the deleted files held nothing still needed.
        for segment in dead:
            fd = self._read_fds.pop(segment, None)
            if fd is not None:
                os.close(fd)
            os.remove(self._path(segment))
            del self._segment_max[segment]
            self._sizes.pop(segment, None)
        if self.fsync:
            sync_dir(self.directory)
            self.fsync_count += 1

    def _roll(self) -> None:
        if self._fd >= 0:
            # Synced even when not `fsync`: sealed segments never end in a torn frame, and `flush()`, which syncs
            # only the active segment, still covers every put since the last flush.
            self._sync()
            os.close(self._fd)
        self._segment += 1
        self._fd = os.open(self._path(self._segment), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        parts = [encode_frame(KIND_HIGH, self._high, b"")[0], encode_frame(KIND_ACK, self._acked, b"")[0]]
        write_all(self._fd, parts)
        self._pos = sum(map(len, parts))
        self._sizes[self._segment] = self._pos
        self._segment_max[self._segment] = 0
        self._sync()
        sync_dir(self.directory)
        self.fsync_count += 1

    def _append(self, parts: list[bytes]) -> None:
        if self._broken is not None:
            raise RuntimeError(f"{self.directory}: an earlier write failed ({self._broken}); reopen the spool")
        try:
            write_all(self._fd, parts)
            self._sizes[self._segment] = self._sizes.get(self._segment, 0) + sum(map(len, parts))
        except OSError:  # e.g. disk full while the learner is away: drop the partial frame, stay usable
            try:
                os.ftruncate(self._fd, self._pos)
            except OSError as e2:
                self._broken = e2  # a partial frame is left; appending after it would bury it
            raise

    def _sync(self) -> None:
        sync_file(self._fd)
        self.fsync_count += 1

    # ---- reading ----

    def __len__(self) -> int:
        """Number of messages not yet acknowledged."""
        return len(self._index)

    def pending(self) -> Iterator[tuple[int, bytes]]:
        """Unacknowledged (seq, payload) in seq order; each read back from disk and CRC-checked. Acks made while
        iterating are respected."""
        for entry in list(self._index):
            if entry.seq <= self._acked:
                continue
            fd = self._read_fds.get(entry.segment)
            if fd is None:
                fd = self._read_fds[entry.segment] = os.open(self._path(entry.segment), os.O_RDONLY)
            data = os.pread(fd, entry.end - entry.pos, entry.pos)
            frame = read_frame(memoryview(data), 0, base=entry.pos)
            if isinstance(frame, str) or frame.kind != KIND_PUT or frame.seq != entry.seq:
                why = frame if isinstance(frame, str) else f"found kind {frame.kind} seq {frame.seq}"
                raise CorruptLogError(self._path(entry.segment), entry.pos, f"expected seq {entry.seq}: {why}")
            yield entry.seq, FrameReader(self._path(entry.segment), data, base=entry.pos).payload(frame)

    # ---- lifetime ----

    def close(self) -> None:
        """Flush (when `fsync`) and release files and the directory lock."""
        try:
            if self._fd >= 0 and self.fsync:
                self._sync()
        finally:
            for fd in (self._fd, self._lock_fd, *self._read_fds.values()):
                if fd >= 0:
                    os.close(fd)
            self._fd = self._lock_fd = -1
            self._read_fds.clear()

    def __enter__(self) -> ActorSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
