"""The actor's spool: every message put stays on disk until acknowledged, across restarts and crashes."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from serl_stack.transport import spool as spool_module
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
        assert list(spool.pending(after=3)) == [(4, message(4)), (5, message(5))]  # where a resend goes on from
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


# ---- the background flusher: fsync off the caller's thread, within a bounded window ----


class StalledDisk:
    """Fault injection for the spool's fsync (`sync_file`): each call blocks until `release()`, then syncs for
    real, or raises `error` instead; `calls` counts the syncs that were asked for."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, error: OSError | None = None) -> None:
        self.real = spool_module.sync_file
        self.gate = threading.Event()
        self.error = error
        self.calls = 0
        monkeypatch.setattr(spool_module, "sync_file", self)

    def __call__(self, fd: int) -> None:
        self.calls += 1
        self.gate.wait(10)
        if self.error is not None:
            raise self.error
        self.real(fd)

    def release(self) -> None:
        self.gate.set()


def _wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.005)
    return predicate()


def test_background_flush_returns_before_the_fsync_and_syncs_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = ActorSpool(tmp_path, fsync=False, background_sync=True, max_unsynced=100)
    try:
        disk = StalledDisk(monkeypatch)  # after opening: the opening's own syncs are not stalled
        for seq in range(1, 17):
            spool.put(seq, message(seq))
        start = time.monotonic()
        spool.flush()  # the disk is stalled: a synchronous flush would hang here
        assert time.monotonic() - start < 1.0
        assert _wait_until(lambda: disk.calls == 1) and spool.synced_seq == 0
        for seq in range(17, 33):  # the control thread goes on while the fsync is in flight
            spool.put(seq, message(seq))
        spool.flush()  # a second request while the first is in flight: queued, one more fsync
        disk.release()
        assert _wait_until(lambda: spool.synced_seq == 32) and disk.calls == 2
        spool.flush()  # nothing new since: no fsync asked
        spool.flush(wait=True)
        assert disk.calls == 2
    finally:
        spool.close()
    with ActorSpool(tmp_path) as reopened:
        assert list(reopened.pending()) == [(s, message(s)) for s in range(1, 33)]


def test_a_put_waits_for_the_disk_only_beyond_max_unsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with ActorSpool(tmp_path, fsync=False, background_sync=True, max_unsynced=8) as spool:
        disk = StalledDisk(monkeypatch)
        done: list[int] = []

        def producer() -> None:
            for seq in range(1, 21):
                spool.put(seq, message(seq))
                done.append(seq)
                if seq % 4 == 0:
                    spool.flush()

        thread = threading.Thread(target=producer)
        thread.start()
        # 8 puts may be unsynced; the 9th waits for the (stalled) fsync the flush at seq 4 asked for.
        assert _wait_until(lambda: len(done) == 8)
        time.sleep(0.2)
        assert done == list(range(1, 9)) and spool.synced_seq == 0
        disk.release()
        thread.join(10)
        assert done == list(range(1, 21))
        assert spool.next_seq() - 1 - spool.synced_seq <= 8
    assert spool.synced_seq == 20  # close's final fsync


def test_close_stops_the_flusher_and_fsyncs(tmp_path: Path) -> None:
    fds_before = set(os.listdir("/proc/self/fd"))
    spool = ActorSpool(tmp_path, fsync=False, background_sync=True, segment_bytes=1024)
    (flusher,) = [t for t in threading.enumerate() if t.name == f"spool-flusher {tmp_path}"]
    for seq in range(1, 41):  # about 3 messages per segment: rolls while syncs are in flight
        spool.put(seq, message(seq, size=300))
        spool.flush()
        if seq % 10 == 0:
            spool.ack(seq - 5)
    before = spool.fsync_count
    spool.close()
    assert not flusher.is_alive()
    assert spool.fsync_count > before and spool.synced_seq == 40
    assert set(os.listdir("/proc/self/fd")) == fds_before  # no duplicate descriptor left open
    with ActorSpool(tmp_path, segment_bytes=1024) as reopened:
        assert reopened.recovered == [] and [s for s, _ in reopened.pending()] == list(range(36, 41))


def test_a_failed_background_fsync_stops_the_spool_and_names_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = ActorSpool(tmp_path, fsync=False, background_sync=True)
    disk = StalledDisk(monkeypatch, error=OSError(5, "Input/output error"))
    disk.release()
    spool.put(1, message(1))
    spool.flush()
    assert _wait_until(lambda: spool._sync_error is not None)
    with pytest.raises(RuntimeError, match=r"background fsync failed \(\[Errno 5\] Input/output error\)"):
        spool.put(2, message(2))
    with pytest.raises(RuntimeError, match="background fsync failed"):
        spool.close()  # still raised, after releasing the files and the lock
    monkeypatch.setattr(spool_module, "sync_file", disk.real)
    with ActorSpool(tmp_path) as reopened:
        assert list(reopened.pending()) == [(1, message(1))]


def test_background_sync_with_fsync_per_put_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="background_sync=True with fsync=True"):
        ActorSpool(tmp_path, fsync=True, background_sync=True)
    with pytest.raises(ValueError, match="max_unsynced is 0; expected an int >= 1"):
        ActorSpool(tmp_path, fsync=False, background_sync=True, max_unsynced=0)


# ---- crash test: SIGKILL a child that puts and acks in a loop ----


def _put_until_killed(directory: str, side_file: str, background: bool) -> None:
    spool = ActorSpool(directory, fsync=False, segment_bytes=64 << 10, background_sync=background, max_unsynced=8)
    side = os.open(side_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    while True:
        seq = spool.next_seq()
        spool.put(seq, message(seq, size=random.Random(seq).choice((10, 3000, 20_000))))
        os.write(side, f"{seq}\n".encode())  # after put returned: the actor may now send it
        if seq % 4 == 0:
            spool.flush()  # with `background`, killed while the flusher syncs, too
        if seq % 16 == 0:
            spool.ack(seq - 8)


@pytest.mark.parametrize("background", [False, True], ids=["flush", "background-flusher"])
def test_sigkill_keeps_every_put_that_returned(tmp_path: Path, background: bool) -> None:
    ctx = mp.get_context("spawn")
    directory, side = tmp_path / "spool", tmp_path / "put.txt"
    rng = random.Random(0)
    last = 0
    for _ in range(3):
        child = ctx.Process(target=_put_until_killed, args=(str(directory), str(side), background), daemon=True)
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
