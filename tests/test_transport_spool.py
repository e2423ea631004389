"""The actor's spool: every message put stays on disk until acknowledged, across restarts and crashes."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time
from pathlib import Path

import pytest

from serl_stack.transport.log import CorruptLogError
from serl_stack.transport.spool import ActorSpool


def message(seq: int, size: int = 100) -> bytes:
    """Deterministic bytes that depend on seq, so a misplaced payload is caught."""
    return random.Random(seq).randbytes(size)


def segments(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("segment-*.spool"))


def test_put_pending_ack_round_trip(tmp_path: Path) -> None:
    with ActorSpool(tmp_path) as spool:
        assert spool.next_seq() == 1 and len(spool) == 0 and list(spool.pending()) == []
        for seq in range(1, 6):
            spool.put(seq, message(seq))
        assert spool.next_seq() == 6 and len(spool) == 5
        assert list(spool.pending()) == [(s, message(s)) for s in range(1, 6)]
        spool.ack(3)
        assert spool.acked_seq == 3 and len(spool) == 2
        assert list(spool.pending()) == [(4, message(4)), (5, message(5))]
        spool.ack(2)  # an older ack changes nothing
        assert len(spool) == 2


def test_put_requires_the_next_seq(tmp_path: Path) -> None:
    with ActorSpool(tmp_path) as spool:
        spool.put(1, b"a")
        with pytest.raises(ValueError, match=r"seq is 3; expected next_seq\(\) = 2"):
            spool.put(3, b"c")
        with pytest.raises(ValueError, match="seq is 0; expected an int"):
            spool.put(0, b"c")
        with pytest.raises(TypeError, match="payload is a str"):
            spool.put(2, "c")  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match="already open"):
            ActorSpool(tmp_path)


def test_fsync_per_put_or_batched_by_flush(tmp_path: Path) -> None:
    with ActorSpool(tmp_path / "each") as spool:
        before = spool.fsync_count
        for seq in range(1, 11):
            spool.put(seq, message(seq))
        assert spool.fsync_count - before == 10
    with ActorSpool(tmp_path / "batched", fsync=False) as spool:
        before = spool.fsync_count
        for seq in range(1, 11):
            spool.put(seq, message(seq))
        spool.flush()
        assert spool.fsync_count - before == 1


def test_reopen_restores_pending_acked_and_next_seq(tmp_path: Path) -> None:
    with ActorSpool(tmp_path, segment_bytes=1024) as spool:
        for seq in range(1, 21):
            spool.put(seq, message(seq))
        spool.ack(7)
    with ActorSpool(tmp_path, segment_bytes=1024) as spool:
        assert spool.recovered == []
        assert spool.acked_seq == 7 and spool.next_seq() == 21 and len(spool) == 13
        assert list(spool.pending()) == [(s, message(s)) for s in range(8, 21)]
        spool.put(21, message(21))
    with ActorSpool(tmp_path, segment_bytes=1024) as spool:
        assert [s for s, _ in spool.pending()] == list(range(8, 22))


def test_ack_deletes_fully_acknowledged_segments_and_next_seq_persists(tmp_path: Path) -> None:
    with ActorSpool(tmp_path, segment_bytes=1024) as spool:
        for seq in range(1, 31):
            spool.put(seq, message(seq, size=300))  # about 3 messages per segment
        n = len(segments(tmp_path))
        assert n >= 10
        spool.ack(10)
        left = [(tmp_path / name).read_bytes() for name in segments(tmp_path)]
        assert 3 <= n - len(left) < n - 5
        assert message(11, size=300) in left[0]  # the oldest file left holds the oldest message not acked
        assert not any(message(s, size=300) in data for s in range(1, 11) for data in left[1:])
        assert [s for s, _ in spool.pending()] == list(range(11, 31))
        spool.ack(30)
        assert len(spool) == 0 and len(segments(tmp_path)) == 1
    with ActorSpool(tmp_path, segment_bytes=1024) as spool:
        assert spool.next_seq() == 31 and spool.acked_seq == 30 and len(spool) == 0
        spool.put(31, b"next")
        assert list(spool.pending()) == [(31, b"next")]


def test_active_segment_is_replaced_once_everything_is_acked(tmp_path: Path) -> None:
    with ActorSpool(tmp_path, segment_bytes=4096) as spool:
        for seq in range(1, 4):
            spool.put(seq, message(seq, size=500))
        first = segments(tmp_path)
        spool.ack(3)
        assert segments(tmp_path) != first and len(segments(tmp_path)) == 1
        assert (tmp_path / segments(tmp_path)[0]).stat().st_size < 100
    with ActorSpool(tmp_path) as spool:
        assert spool.next_seq() == 4 and len(spool) == 0


def test_ack_beyond_next_seq_moves_next_seq_past_it(tmp_path: Path) -> None:
    # A lost spool must not restart at seq 1: the learner would drop those as duplicates.
    with ActorSpool(tmp_path) as spool:
        spool.ack(500)
        assert spool.next_seq() == 501
    with ActorSpool(tmp_path) as spool:
        assert spool.next_seq() == 501
        spool.put(501, b"x")


def test_acks_while_iterating_pending_are_respected(tmp_path: Path) -> None:
    with ActorSpool(tmp_path, segment_bytes=1024) as spool:
        for seq in range(1, 21):
            spool.put(seq, message(seq, size=300))
        seen = []
        for seq, data in spool.pending():
            assert data == message(seq, size=300)
            seen.append(seq)
            if seq == 2:
                spool.ack(15)  # deletes segments the iterator has not reached
        assert seen == [1, 2, *range(16, 21)]


def test_a_failed_write_leaves_no_partial_frame(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def disk_full(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    with ActorSpool(tmp_path) as spool:
        spool.put(1, message(1))
        monkeypatch.setattr(os, "write", disk_full)
        with pytest.raises(OSError, match="No space left"):
            spool.put(2, message(2))
        monkeypatch.setattr(os, "write", real_write)
        assert spool.next_seq() == 2 and len(spool) == 1
        spool.put(2, message(2))  # usable again once there is space
    with ActorSpool(tmp_path) as spool:
        assert spool.recovered == [] and list(spool.pending()) == [(1, message(1)), (2, message(2))]


@pytest.mark.parametrize(
    "damage, survivors",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-7]), [1, 2]),
        (lambda p: p.write_bytes(p.read_bytes() + os.urandom(100)), [1, 2, 3]),
    ],
    ids=["torn-put", "garbage"],
)
def test_torn_tail_loses_at_most_the_last_put(tmp_path: Path, damage, survivors: list[int]) -> None:
    with ActorSpool(tmp_path) as spool:
        for seq in (1, 2, 3):
            spool.put(seq, message(seq))
    damage(tmp_path / segments(tmp_path)[-1])
    with ActorSpool(tmp_path) as spool:
        assert len(spool.recovered) == 1
        assert list(spool.pending()) == [(s, message(s)) for s in survivors]
        assert spool.next_seq() == survivors[-1] + 1
        spool.put(spool.next_seq(), b"after")
    with ActorSpool(tmp_path) as spool:
        assert spool.recovered == [] and list(spool.pending())[-1] == (survivors[-1] + 1, b"after")


def test_a_corrupt_put_before_valid_ones_raises_naming_file_and_offset(tmp_path: Path) -> None:
    with ActorSpool(tmp_path) as spool:
        for seq in (1, 2, 3):
            spool.put(seq, message(seq))
    path = tmp_path / segments(tmp_path)[0]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x80
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError, match=r"segment-000000\.spool: corrupt record at byte offset \d+"):
        ActorSpool(tmp_path)


# ---- crash test: SIGKILL a child that puts and acks in a loop ----


def _put_until_killed(directory: str, side_file: str) -> None:
    spool = ActorSpool(directory, fsync=False, segment_bytes=64 << 10)
    side = os.open(side_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    while True:
        seq = spool.next_seq()
        spool.put(seq, message(seq, size=random.Random(seq).choice((10, 3000, 20_000))))
        os.write(side, f"{seq}\n".encode())  # after put returned: the actor may now send it
        if seq % 16 == 0:
            spool.ack(seq - 8)


def test_sigkill_keeps_every_put_that_returned(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    directory, side = tmp_path / "spool", tmp_path / "put.txt"
    rng = random.Random(0)
    last = 0
    for _ in range(3):
        child = ctx.Process(target=_put_until_killed, args=(str(directory), str(side)), daemon=True)
        child.start()
        deadline = time.monotonic() + 15
        while _last_line(side) < last + 100 and time.monotonic() < deadline and child.is_alive():
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        assert child.exitcode == -signal.SIGKILL, "the child died before it was killed"
        last = _last_line(side)
        with ActorSpool(directory, fsync=False, segment_bytes=64 << 10) as spool:
            pending = list(spool.pending())
            assert spool.next_seq() > last
            assert [s for s, _ in pending] == list(range(spool.acked_seq + 1, spool.next_seq()))
            assert all(data == message(s, size=len(data)) for s, data in pending)


def _last_line(path: Path) -> int:
    lines = path.read_bytes().split(b"\n")[:-1] if path.exists() else []
    return int(lines[-1]) if lines else 0
