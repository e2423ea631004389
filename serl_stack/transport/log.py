"""The learner's durable transition log: chunked, append-only, group-committed, CRC-framed records on disk.

Owns: the on-disk record framing (also used by `spool.py`), the chunk files `chunk-NNNNNN.log` and
`quarantine.log` of one log directory, the per-actor delivery watermarks restored from them, and recovery from
a crash at any instant (a torn record at the tail is cut off; damage anywhere else is an error naming the file
and byte offset). Knows nothing of learning: a payload is opaque bytes (the caller encodes with
`protocol.pack`). An acknowledged sequence number means "on disk after fsync", so nothing acknowledged is lost
whichever process is killed. Format and recovery rules: docs/transport-storage.md.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import struct
import zlib
from collections.abc import Iterator
from typing import NamedTuple

log = logging.getLogger(__name__)

MAGIC = b"SRL\x01"
"""First bytes of every frame; the last byte is the format version."""
# magic, kind, reserved, key_len, meta_len, seq, payload_len, body_crc; then header_crc over these 28 bytes.
_HEADER = struct.Struct("<4sBBHIQII")
_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER.size + _CRC.size  # 32
MAX_SEQ = 2**63 - 1
_MAX_PAYLOAD = 2**32 - 1

KIND_RECORD = 1
KIND_QUARANTINE = 2

DEFAULT_CHUNK_BYTES = 64 << 20
_CHUNK_RE = re.compile(r"^chunk-(\d{6,})\.log$")
QUARANTINE_FILE = "quarantine.log"


class CorruptLogError(Exception):
    """A frame that is damaged where a torn write cannot explain it; names the file and byte offset."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"{path}: corrupt record at byte offset {offset}: {reason}")
        self.path = path
        self.offset = offset


class Frame(NamedTuple):
    """One framed record as found in a file; positions are absolute byte offsets in that file."""

    pos: int
    end: int
    kind: int
    seq: int
    key: str
    meta: str
    payload_start: int


class LogOffset(NamedTuple):
    """A position in the log: where the next record starts. Tuples compare in log order."""

    chunk: int
    pos: int


def encode_frame(kind: int, seq: int, payload: bytes, key: bytes = b"", meta: bytes = b"") -> tuple[bytes, bytes]:
    """Frame a record; returns (header + key + meta, payload) so a large payload is never copied here."""
    body_crc = zlib.crc32(payload, zlib.crc32(meta, zlib.crc32(key)))
    head = _HEADER.pack(MAGIC, kind, 0, len(key), len(meta), seq, len(payload), body_crc)
    return head + _CRC.pack(zlib.crc32(head)) + key + meta, payload


def read_frame(data: memoryview, pos: int, base: int = 0) -> Frame | str:
    """Parse the frame at `pos` of `data` (which starts at file offset `base`); a str says why it is invalid."""
    left = len(data) - pos
    if left < HEADER_SIZE:
        return f"truncated header: {left} bytes left, expected {HEADER_SIZE}"
    magic, kind, _, key_len, meta_len, seq, payload_len, body_crc = _HEADER.unpack_from(data, pos)
    if magic != MAGIC:
        return f"magic is {bytes(magic)!r}, expected {MAGIC!r}"
    (header_crc,) = _CRC.unpack_from(data, pos + _HEADER.size)
    if zlib.crc32(data[pos : pos + _HEADER.size]) != header_crc:
        return "header CRC32 mismatch"
    body = pos + HEADER_SIZE
    end = body + key_len + meta_len + payload_len
    if end > len(data):
        return f"truncated body: record needs {end - pos} bytes, {left} left"
    if zlib.crc32(data[body:end]) != body_crc:
        return f"body CRC32 mismatch (expected {body_crc:#010x})"
    try:
        key = str(data[body : body + key_len], "utf-8")
        meta = str(data[body + key_len : body + key_len + meta_len], "utf-8")
    except UnicodeDecodeError as e:
        return f"key or meta is not UTF-8: {e}"
    return Frame(base + pos, base + end, kind, seq, key, meta, base + body + key_len + meta_len)


class FrameReader:
    """Iterates the frames of one file's bytes; with `allow_torn_tail`, a bad frame that no valid frame follows
    ends the iteration (`torn` then says why) instead of raising `CorruptLogError`."""

    def __init__(self, path: str, data: bytes, base: int = 0, allow_torn_tail: bool = False) -> None:
        self.path, self.base, self.allow_torn_tail = path, base, allow_torn_tail
        self.data = memoryview(data)
        self.end = base  # file offset just after the last valid frame yielded so far
        self.torn: str | None = None

    def payload(self, frame: Frame) -> bytes:
        return bytes(self.data[frame.payload_start - self.base : frame.end - self.base])

    def __iter__(self) -> Iterator[Frame]:
        pos = self.end - self.base
        while pos < len(self.data):
            frame = read_frame(self.data, pos, self.base)
            if isinstance(frame, str):
                if self.allow_torn_tail and not self._valid_frame_after(pos):
                    self.torn = f"{self.path}: {frame} at byte offset {self.base + pos}"
                    return
                raise CorruptLogError(self.path, self.base + pos, frame)
            yield frame
            pos = frame.end - self.base
            self.end = frame.end

    def _valid_frame_after(self, pos: int) -> bool:
        # A crash mid-append leaves garbage only at the end; a valid frame after a bad one means real damage.
        raw = self.data.obj
        at = raw.find(MAGIC, pos + 1)
        while at >= 0:
            if isinstance(read_frame(self.data, at), Frame):
                return True
            at = raw.find(MAGIC, at + 1)
        return False


def read_file(path: str, allow_torn_tail: bool = False) -> FrameReader:
    with open(path, "rb") as f:
        return FrameReader(path, f.read(), allow_torn_tail=allow_torn_tail)


def truncate_torn_tail(reader: FrameReader) -> str | None:
    """After iterating `reader`: cut its file back to the last whole frame if it ended in a torn one (a crash
    mid-append is the expected cause); returns what was done, or None."""
    if reader.torn is None:
        return None
    log.warning("%s; truncating the file to %d bytes", reader.torn, reader.end)
    with open(reader.path, "r+b") as f:
        f.truncate(reader.end)
        os.fsync(f.fileno())
    return reader.torn


def write_all(fd: int, parts: list[bytes]) -> None:
    data = b"".join(parts)
    view = memoryview(data)
    while view:  # os.write may write less than asked (signals, huge buffers)
        view = view[os.write(fd, view) :]


def sync_file(fd: int) -> None:
    # fdatasync also flushes the file size, which is all an appended file needs.
    (os.fdatasync if hasattr(os, "fdatasync") else os.fsync)(fd)


def sync_dir(directory: str) -> None:
    """Make a created or deleted directory entry durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock_dir(directory: str) -> int:
    """Take an exclusive lock on the directory so two processes never append to the same files."""
    fd = os.open(os.path.join(directory, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        os.close(fd)
        raise RuntimeError(f"{directory} is already open in another process or object (LOCK is held)") from e
    return fd


def check_seq(seq: int, field: str = "seq") -> None:
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= MAX_SEQ:
        raise ValueError(f"{field} is {seq!r}; expected an int in [1, 2**63 - 1]")


def check_payload(payload: bytes) -> bytes:
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"payload is a {type(payload).__name__}; expected bytes (encode with protocol.pack)")
    if len(payload) > _MAX_PAYLOAD:
        raise ValueError(f"payload is {len(payload)} bytes; expected at most {_MAX_PAYLOAD}")
    return bytes(payload)


class _Watermark:
    """Delivered sequence numbers of one actor: all of 1..contiguous, plus `ahead` (beyond a gap)."""

    __slots__ = ("contiguous", "ahead")

    def __init__(self) -> None:
        self.contiguous = 0
        self.ahead: set[int] = set()

    def has(self, seq: int) -> bool:
        return seq <= self.contiguous or seq in self.ahead

    def add(self, seq: int) -> None:
        if seq == self.contiguous + 1:
            self.contiguous = seq
            while self.contiguous + 1 in self.ahead:
                self.contiguous += 1
                self.ahead.remove(self.contiguous)
        elif seq > self.contiguous:
            self.ahead.add(seq)


class TransitionLog:
    """Append-only log of (actor_id, seq, payload) records; `commit()` makes appended records durable."""

    def __init__(self, directory: str | os.PathLike[str], chunk_bytes: int = DEFAULT_CHUNK_BYTES, fsync: bool = True):
        if chunk_bytes < HEADER_SIZE:
            raise ValueError(f"chunk_bytes is {chunk_bytes}; expected at least {HEADER_SIZE}")
        self.directory = os.fspath(directory)
        self.chunk_bytes = chunk_bytes
        self.fsync = fsync
        self.fsync_count = 0  # fsync/fdatasync calls: group commit keeps it at about one per commit()
        self.recovered: list[str] = []  # what opening had to repair (torn tails cut off), one line each
        os.makedirs(self.directory, exist_ok=True)
        self._lock_fd = lock_dir(self.directory)
        self._marks: dict[str, _Watermark] = {}
        self._buffered: set[tuple[str, int]] = set()
        self._records: list[bytes] = []  # framed, in append order, alternating head and payload
        self._record_sizes: list[int] = []
        self._quarantine: list[bytes] = []
        self._failed: OSError | None = None
        self._fd = -1
        self._q_fd = -1
        try:
            self._open()
        except BaseException:
            self.close(commit=False)
            raise

    # ---- opening and recovery ----

    def _chunk_path(self, index: int) -> str:
        return os.path.join(self.directory, f"chunk-{index:06d}.log")

    def _open(self) -> None:
        indices = sorted(int(m.group(1)) for n in os.listdir(self.directory) if (m := _CHUNK_RE.match(n)))
        for expected, index in enumerate(indices, start=indices[0] if indices else 0):
            if index != expected:
                raise CorruptLogError(self._chunk_path(expected), 0, f"chunk file is missing (found chunk {index})")
        self._first_chunk = indices[0] if indices else 0
        for i, index in enumerate(indices):
            self._scan(self._chunk_path(index), KIND_RECORD, is_tail=i == len(indices) - 1)
        self._chunk = indices[-1] if indices else 0
        self._fd, self._pos = self._open_append(self._chunk_path(self._chunk))
        q_path = os.path.join(self.directory, QUARANTINE_FILE)
        if os.path.exists(q_path):
            self._scan(q_path, KIND_QUARANTINE, is_tail=True)

    def _scan(self, path: str, kind: int, is_tail: bool) -> None:
        reader = read_file(path, allow_torn_tail=is_tail)
        for frame in reader:
            if frame.kind != kind:
                raise CorruptLogError(path, frame.pos, f"record kind is {frame.kind}, expected {kind}")
            self._marks.setdefault(frame.key, _Watermark()).add(frame.seq)
        if (torn := truncate_torn_tail(reader)) is not None:
            self.recovered.append(torn)

    def _open_append(self, path: str) -> tuple[int, int]:
        existed = os.path.exists(path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if not existed and self.fsync:
            sync_dir(self.directory)  # the new file's name must survive a crash too
            self.fsync_count += 1
        return fd, os.fstat(fd).st_size

    def _sync_fd(self, fd: int) -> None:
        sync_file(fd)
        self.fsync_count += 1

    # ---- writing ----

    def _admit(self, actor_id: str, seq: int) -> bool:
        if not isinstance(actor_id, str) or not 0 < len(actor_id.encode()) <= 0xFFFF:
            raise ValueError(f"actor_id is {actor_id!r:.80}; expected a non-empty str of at most 65535 UTF-8 bytes")
        check_seq(seq)
        if self._fd < 0:
            raise RuntimeError(f"{self.directory}: the log is closed")
        if self._failed is not None:
            raise RuntimeError(f"{self.directory}: an earlier commit failed ({self._failed}); reopen the log")
        mark = self._marks.get(actor_id)
        if (mark is not None and mark.has(seq)) or (actor_id, seq) in self._buffered:
            return False
        self._buffered.add((actor_id, seq))
        return True

    def append(self, actor_id: str, seq: int, payload: bytes) -> bool:
        """Buffer a record until `commit()`; False (nothing written) if (actor_id, seq) was already delivered."""
        payload = check_payload(payload)
        if not self._admit(actor_id, seq):
            return False
        head, body = encode_frame(KIND_RECORD, seq, payload, key=actor_id.encode())
        self._records += (head, body)
        self._record_sizes.append(len(head) + len(body))
        return True

    def quarantine(self, actor_id: str, seq: int, payload: bytes, reason: str) -> bool:
        """Keep a malformed record apart in quarantine.log with its reason; it counts as delivered once
        committed, so one bad record cannot stall its actor. False if (actor_id, seq) was already delivered."""
        payload = check_payload(payload)
        if not self._admit(actor_id, seq):
            return False
        # Capped so a hostile peer cannot grow the file through the reason text; the payload is kept whole.
        meta = str(reason).encode("utf-8", "replace")[:4096]
        self._quarantine += encode_frame(KIND_QUARANTINE, seq, payload, actor_id.encode(), meta)
        return True

    def commit(self) -> dict[str, int]:
        """Write and fsync everything appended since the last commit (one fsync for all of it); returns, per
        actor, the highest seq such that 1..seq are all durable: what the learner may acknowledge."""
        if self._buffered:
            if self._failed is not None:
                raise RuntimeError(f"{self.directory}: an earlier commit failed ({self._failed}); reopen the log")
            try:
                self._write_records()
                if self._quarantine:
                    if self._q_fd < 0:
                        self._q_fd, _ = self._open_append(os.path.join(self.directory, QUARANTINE_FILE))
                    self._write_synced(self._q_fd, self._quarantine)
                    self._quarantine.clear()
            except OSError as e:
                # The file may now end in a partial frame; appending after it would bury it. Reopening repairs it.
                self._failed = e
                raise
            for actor_id, seq in self._buffered:
                self._marks.setdefault(actor_id, _Watermark()).add(seq)
            self._buffered.clear()
        return {actor_id: mark.contiguous for actor_id, mark in self._marks.items()}

    def _write_records(self) -> None:
        if not self._records:
            return
        start, pos = 0, self._pos
        for i, size in enumerate(self._record_sizes):
            if pos > 0 and pos + size > self.chunk_bytes:
                write_all(self._fd, self._records[2 * start : 2 * i])
                self._roll()
                start, pos = i, 0
            pos += size
        self._write_synced(self._fd, self._records[2 * start :])
        self._pos = pos
        self._records.clear()
        self._record_sizes.clear()

    def _write_synced(self, fd: int, parts: list[bytes]) -> None:
        write_all(fd, parts)
        if self.fsync:
            self._sync_fd(fd)

    def _roll(self) -> None:
        # The full chunk is synced before the next exists, so only the newest chunk can ever hold a torn tail.
        if self.fsync:
            self._sync_fd(self._fd)
        os.close(self._fd)
        self._chunk += 1
        self._fd, self._pos = self._open_append(self._chunk_path(self._chunk))

    # ---- reading ----

    def durable_seq(self, actor_id: str) -> int:
        """Highest seq of `actor_id` such that 1..seq are all committed (0 if none)."""
        mark = self._marks.get(actor_id)
        return 0 if mark is None else mark.contiguous

    def actors(self) -> list[str]:
        """Actor ids with at least one committed record, sorted."""
        return sorted(self._marks)

    def end_offset(self) -> LogOffset:
        """Offset just after the last committed record: `replay(end_offset())` yields nothing (yet)."""
        return LogOffset(self._chunk, self._pos)

    def replay(self, start: LogOffset | None = None) -> Iterator[tuple[LogOffset, str, int, bytes]]:
        """Committed records in append order as (offset, actor_id, seq, payload), from `start` (default: the
        beginning) up to `end_offset()` as of this call. `offset` is where the *next* record starts, so a
        checkpoint that stores the offset of the last record it consumed resumes with `replay(offset)`."""
        end = self.end_offset()
        start = LogOffset(self._first_chunk, 0) if start is None else LogOffset(*start)
        if not LogOffset(self._first_chunk, 0) <= start <= end:
            raise ValueError(f"replay start {tuple(start)} is outside the log [({self._first_chunk}, 0), {end}]")
        return self._replay(start, end)

    def _replay(self, start: LogOffset, end: LogOffset) -> Iterator[tuple[LogOffset, str, int, bytes]]:
        for chunk in range(start.chunk, end.chunk + 1):
            path = self._chunk_path(chunk)
            first = start.pos if chunk == start.chunk else 0
            with open(path, "rb") as f:
                f.seek(first)
                data = f.read(end.pos - first) if chunk == end.chunk else f.read()
            reader = FrameReader(path, data, base=first)
            for frame in reader:
                if frame.kind != KIND_RECORD:
                    raise CorruptLogError(path, frame.pos, f"record kind is {frame.kind}, expected {KIND_RECORD}")
                yield LogOffset(chunk, frame.end), frame.key, frame.seq, reader.payload(frame)

    def quarantined(self) -> Iterator[tuple[str, int, bytes, str]]:
        """Committed quarantined records as (actor_id, seq, payload, reason), in the order they were kept."""
        path = os.path.join(self.directory, QUARANTINE_FILE)
        if not os.path.exists(path):
            return
        reader = read_file(path)
        for frame in reader:
            yield frame.key, frame.seq, reader.payload(frame), frame.meta

    # ---- lifetime ----

    def close(self, commit: bool = True) -> None:
        """Commit what is buffered (unless `commit=False` or a commit failed), then release files and lock."""
        try:
            if commit and self._failed is None and self._fd >= 0:
                self.commit()
        finally:
            for fd in (self._fd, self._q_fd, self._lock_fd):
                if fd >= 0:
                    os.close(fd)
            self._fd = self._q_fd = self._lock_fd = -1

    def __enter__(self) -> TransitionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(commit=exc[0] is None)
