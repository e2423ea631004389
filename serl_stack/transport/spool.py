"""The actor's disk spool: every message put here stays on disk until the learner acknowledges it.

Owns: the segment files `segment-NNNNNN.spool` of one spool directory, the index of unacknowledged messages, the
acknowledged watermark and the next sequence number (which survives restarts, also when everything is
acknowledged), the cap on its size on disk (`max_bytes`: a put beyond it raises `SpoolFullError`, so a
learner that stays away cannot fill the robot PC's disk), and, with `background_sync`, the flusher thread that
fsyncs off the caller's thread. Frames are the transition log's (`log.py`), so a crash mid-put loses at most that
one record and never corrupts the others. Space is reclaimed by deleting a segment once all its messages are
acknowledged.

When a message is durable: a `put` has written it to the OS before it returns, so killing this process (or the
learner) at any instant loses nothing put; fsync only adds survival of a power loss or kernel crash. With
`fsync=True` each put is synced before it returns; with `fsync=False` `flush()` syncs a batch; with
`background_sync=True` `flush()` only asks the flusher thread and returns, and at most `max_unsynced` puts are
ever unsynced (`synced_seq` says how far the disk is): a put beyond that waits for the flusher.
Format and recovery rules: docs/transport-storage.md.
"""

from __future__ import annotations

import collections
import os
import re
import threading
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
        *,
        background_sync: bool = False,
        max_unsynced: int = 64,
    ) -> None:
        """`fsync=True`: each `put` is on disk (fsync) before it returns. `fsync=False`: a `put` reaches the OS
        before it returns (it survives a crash of the actor, not of the machine) and `flush()` fsyncs a batch.
        `background_sync=True` (needs `fsync=False`): `flush()` hands that fsync to a flusher thread and returns
        at once; a put waits for the flusher only when `max_unsynced` earlier puts are not yet on disk.
        `max_bytes`: the largest the spool's files may grow (None: no cap)."""
        if segment_bytes < 1024:
            raise ValueError(f"segment_bytes is {segment_bytes}; expected at least 1024")
        if max_bytes is not None and max_bytes < 1024:
            raise ValueError(f"max_bytes is {max_bytes}; expected at least 1024 or None")
        if background_sync and fsync:
            raise ValueError("background_sync=True with fsync=True: expected fsync=False (a put that syncs itself "
                             "leaves nothing for a background flusher)")
        if isinstance(max_unsynced, bool) or not isinstance(max_unsynced, int) or max_unsynced < 1:
            raise ValueError(f"max_unsynced is {max_unsynced!r}; expected an int >= 1")
        self.directory = os.fspath(directory)
        self.fsync = fsync
        self.background_sync = background_sync
        self.max_unsynced = max_unsynced
        # Shared with the flusher thread: the sync request, the synced watermark, the fsync count, its error.
        self._cond = threading.Condition()
        self._job: tuple[int, int] | None = None  # (dup of the active segment's fd, highest seq it must cover)
        self._requested = 0  # highest seq a sync has been requested for
        self._synced = 0  # every put up to this seq is on disk
        self._sync_error: Exception | None = None
        self._stopping = False
        self._flusher: threading.Thread | None = None
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
            # What a killed predecessor wrote may still be only in the page cache: sync it, so `synced_seq`
            # starts true (sealed segments were synced when they were sealed).
            self._sync()
            self._drop_acked()
        else:
            self._segment = -1
            self._roll()
        if self.background_sync:
            self._flusher = threading.Thread(target=self._flush_loop, name=f"spool-flusher {self.directory}",
                                             daemon=True)
            self._flusher.start()

    # ---- writing ----

    def next_seq(self) -> int:
        """The seq the next `put` must carry: one more than the highest seq ever put or acknowledged."""
        return self._high + 1

    @property
    def acked_seq(self) -> int:
        """Highest seq acknowledged so far (every message up to it is dropped)."""
        return self._acked

    @property
    def synced_seq(self) -> int:
        """Every message put up to this seq has been fsynced (survives a power loss)."""
        return self._synced

    def put(self, seq: int, payload: bytes) -> None:
        """Keep a message until it is acknowledged; `seq` must equal `next_seq()`."""
        check_seq(seq)
        if seq != self._high + 1:
            raise ValueError(f"seq is {seq}; expected next_seq() = {self._high + 1}")
        if self._flusher is not None:
            self._check_flusher()
            if self._high - self._synced >= self.max_unsynced:
                # The disk is max_unsynced puts behind (it stalled): wait rather than widen the power-loss window.
                self._wait_synced(self._high - self.max_unsynced + 1)
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

    def flush(self, wait: bool = False) -> None:
        """fsync what was put so far (the batched form of `fsync=True`). With `background_sync`, ask the flusher
        thread to and return at once, or with `wait` return once it has."""
        if self._flusher is None:
            self._sync()
            return
        self._check_flusher()
        self._request_sync()
        if wait:
            self._wait_synced(self._high)

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
            elif self._flusher is not None:
                self._request_sync()
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
            with self._cond:
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
        with self._cond:
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
        """fsync the active segment here and now; with the sealed ones synced when sealed, that is every put."""
        sync_file(self._fd)
        with self._cond:
            self.fsync_count += 1
            self._synced = max(self._synced, self._high)

    # ---- the background flusher ----

    def _request_sync(self) -> None:
        """Ask the flusher to fsync everything put so far (a no-op when that is already asked or done)."""
        if self._high <= max(self._requested, self._synced):
            return
        # The flusher syncs a duplicate of the descriptor: a roll may close ours meanwhile, and a closed (or
        # reused) descriptor number must never be synced. Sealed segments need nothing: `_roll` synced them.
        job = (os.dup(self._fd), self._high)
        with self._cond:
            stale, self._job, self._requested = self._job, job, self._high
            self._cond.notify_all()
        if stale is not None:
            os.close(stale[0])  # superseded: the newer request covers it

    def _wait_synced(self, seq: int) -> None:
        self._request_sync()
        with self._cond:
            while self._synced < seq and self._sync_error is None and not self._stopping:
                self._cond.wait()
        self._check_flusher()

    def _check_flusher(self) -> None:
        if self._sync_error is not None:
            raise RuntimeError(
                f"{self.directory}: a background fsync failed ({self._sync_error}); puts after seq {self._synced} "
                "may not be on disk: reopen the spool (a restarted actor resends everything it holds)"
            ) from self._sync_error

    def _flush_loop(self) -> None:
        """The flusher thread: fsync each requested descriptor (fdatasync releases the GIL), then mark the seq."""
        while True:
            with self._cond:
                while self._job is None and not self._stopping:
                    self._cond.wait()
                if self._job is None:
                    return
                (fd, seq), self._job = self._job, None
            try:
                sync_file(fd)
            except Exception as e:  # whatever it is, a put waiting on the flusher must not wait forever
                with self._cond:
                    self._sync_error = e
                    self._cond.notify_all()
                return  # the control thread raises it at its next put or flush
            finally:
                os.close(fd)
            with self._cond:
                self.fsync_count += 1
                self._synced = max(self._synced, seq)
                self._cond.notify_all()

    def _stop_flusher(self) -> None:
        thread, self._flusher = self._flusher, None
        if thread is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        thread.join()
        if self._job is not None:  # requested after the flusher's last round: close()'s own sync covers it
            os.close(self._job[0])
            self._job = None

    # ---- reading ----

    def __len__(self) -> int:
        """Number of messages not yet acknowledged."""
        return len(self._index)

    def pending(self, after: int = 0) -> Iterator[tuple[int, bytes]]:
        """Unacknowledged (seq, payload) with seq > `after`, in seq order; each read back from disk and CRC-checked
        (entries skipped by `after` are not read). Acks made while iterating are respected."""
        for entry in list(self._index):
            if entry.seq <= self._acked or entry.seq <= after:
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
        """Stop the flusher, fsync (when `fsync` or `background_sync`) and release files and the directory lock.
        A background fsync that failed is raised here if no put or flush has raised it yet."""
        try:
            background = self._flusher is not None
            self._stop_flusher()
            if background:
                self._check_flusher()  # a retried fsync after a failed one can report success for lost pages
            if self._fd >= 0 and (self.fsync or background):
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
