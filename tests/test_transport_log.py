"""The learner's transition log: what `commit()` acknowledges is on disk exactly once, whoever is killed when."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from serl_stack.transport.log import HEADER_SIZE, CorruptLogError, LogOffset, TransitionLog
from serl_stack.transport.protocol import pack, unpack


def payload(seq: int, size: int = 64) -> bytes:
    """A deterministic transition-like message whose content depends on seq, so a misplaced record is caught."""
    rng = np.random.default_rng(seq)
    return pack({"seq": seq, "obs": rng.integers(0, 256, size=size, dtype=np.uint8), "reward": np.float32(seq)})


def records(log: TransitionLog) -> list[tuple[str, int, bytes]]:
    return [(actor, seq, data) for _, actor, seq, data in log.replay()]


def chunk_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("chunk-*.log"))


def test_round_trip_in_append_order(tmp_path: Path) -> None:
    with TransitionLog(tmp_path) as log:
        assert log.commit() == {} and log.actors() == [] and records(log) == []
        for seq in range(1, 4):
            assert log.append("actor-0", seq, payload(seq))
            assert log.append("actor-1", seq, payload(100 + seq))
        assert log.durable_seq("actor-0") == 0  # appended is not durable until commit
        assert log.commit() == {"actor-0": 3, "actor-1": 3}
        got = records(log)
    assert [(a, s) for a, s, _ in got] == [(a, s) for s in range(1, 4) for a in ("actor-0", "actor-1")]
    for actor, seq, data in got:
        msg = unpack(data)
        assert msg["seq"] == (seq if actor == "actor-0" else 100 + seq)
        assert data == payload(msg["seq"])


def test_one_fsync_per_group_commit(tmp_path: Path) -> None:
    with TransitionLog(tmp_path) as log:
        before = log.fsync_count
        for seq in range(1, 65):
            log.append("a", seq, payload(seq))
        log.commit()
        assert log.fsync_count - before == 1
        log.commit()  # nothing new: no fsync
        assert log.fsync_count - before == 1


def test_duplicates_are_dropped_before_and_after_commit(tmp_path: Path) -> None:
    with TransitionLog(tmp_path) as log:
        assert log.append("a", 1, payload(1))
        assert not log.append("a", 1, payload(999))  # duplicate of a buffered record
        assert log.commit() == {"a": 1}
        assert not log.append("a", 1, payload(999))  # duplicate of a durable record
        assert log.append("a", 2, payload(2))
        assert log.commit() == {"a": 2}
        assert [(s, d) for _, s, d in records(log)] == [(1, payload(1)), (2, payload(2))]


def test_gap_holds_the_watermark_until_filled(tmp_path: Path) -> None:
    with TransitionLog(tmp_path) as log:
        for seq in (1, 2, 4, 5):
            assert log.append("a", seq, payload(seq))
        assert log.commit() == {"a": 2}
        assert not log.append("a", 5, payload(5))  # beyond the gap, but already delivered
        assert log.append("a", 3, payload(3))
        assert log.commit() == {"a": 5}
        assert log.durable_seq("a") == 5 and log.durable_seq("nobody") == 0
        assert [s for _, s, _ in records(log)] == [1, 2, 4, 5, 3]  # append order, not seq order


def test_quarantine_advances_the_watermark_and_keeps_the_reason(tmp_path: Path) -> None:
    with TransitionLog(tmp_path) as log:
        log.append("a", 1, payload(1))
        assert log.quarantine("a", 2, b"\xc1 not msgpack", reason="message is not valid msgpack")
        assert not log.quarantine("a", 2, b"again", reason="duplicate")
        log.append("a", 3, payload(3))
        assert log.commit() == {"a": 3}
    with TransitionLog(tmp_path) as log:
        assert log.durable_seq("a") == 3
        assert [s for _, s, _ in records(log)] == [1, 3]
        assert list(log.quarantined()) == [("a", 2, b"\xc1 not msgpack", "message is not valid msgpack")]


def test_chunks_roll_over_and_replay_resumes_from_an_offset(tmp_path: Path) -> None:
    with TransitionLog(tmp_path, chunk_bytes=1000, fsync=False) as log:
        for seq in range(1, 21):
            log.append("a", seq, payload(seq, size=200))
            if seq % 7 == 0:
                log.commit()
        log.commit()
        assert len(chunk_files(tmp_path)) > 4
        assert all(p.stat().st_size <= 1000 for p in chunk_files(tmp_path))
        replayed = list(log.replay())
        offsets = [off for off, *_ in replayed]
        assert offsets == sorted(offsets) and offsets[-1] == log.end_offset()
        assert [s for _, _, s, _ in replayed] == list(range(1, 21))
        resumed = list(log.replay(offsets[9]))  # a checkpoint that consumed records 1..10
        assert [s for _, _, s, _ in resumed] == list(range(11, 21)) and resumed == replayed[10:]
        assert list(log.replay(log.end_offset())) == []
        with pytest.raises(ValueError, match="outside the log"):
            log.replay(LogOffset(log.end_offset().chunk + 1, 0))
    with TransitionLog(tmp_path, chunk_bytes=1000) as log:
        assert list(log.replay()) == replayed


def test_a_record_larger_than_a_chunk_gets_its_own_chunk(tmp_path: Path) -> None:
    with TransitionLog(tmp_path, chunk_bytes=256, fsync=False) as log:
        big = payload(1, size=1000)
        log.append("a", 1, big)
        log.append("a", 2, payload(2, size=8))
        log.commit()
        assert [d for *_, d in log.replay()] == [big, payload(2, size=8)]


def test_reopen_restores_watermarks_gaps_and_contents(tmp_path: Path) -> None:
    with TransitionLog(tmp_path, chunk_bytes=2000) as log:
        for seq in (1, 2, 4):
            log.append("a", seq, payload(seq))
        for seq in range(1, 30):
            log.append("b", seq, payload(seq, size=100))
        log.commit()
        before = records(log)
    with TransitionLog(tmp_path, chunk_bytes=2000) as log:
        assert log.recovered == []
        assert log.actors() == ["a", "b"] and log.durable_seq("a") == 2 and log.durable_seq("b") == 29
        assert records(log) == before
        assert not log.append("a", 4, payload(4)) and not log.append("b", 29, payload(29))
        assert log.append("a", 3, payload(3))
        assert log.commit() == {"a": 4, "b": 29}


def _write_three(directory: Path) -> None:
    with TransitionLog(directory) as log:
        for seq in (1, 2, 3):
            log.append("a", seq, payload(seq, size=300))
        log.commit()


@pytest.mark.parametrize(
    "damage, survivors",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-5]), [1, 2]),  # torn body
        (lambda p: p.write_bytes(p.read_bytes()[: -(p.stat().st_size // 3) + 10]), [1, 2]),  # torn header
        (lambda p: p.write_bytes(p.read_bytes() + b"\x00" * 4096), [1, 2, 3]),  # size grew, data never came
        (lambda p: p.write_bytes(p.read_bytes() + os.urandom(1000)), [1, 2, 3]),  # garbage
        (lambda p: p.write_bytes(p.read_bytes() + b"SRL\x01" + bytes(60)), [1, 2, 3]),  # a magic, then nothing
    ],
    ids=["torn-body", "torn-header", "zeros", "garbage", "magic-only"],
)
def test_torn_tail_is_cut_off_and_appending_resumes(tmp_path: Path, damage, survivors: list[int]) -> None:
    _write_three(tmp_path)
    damage(chunk_files(tmp_path)[-1])
    with TransitionLog(tmp_path) as log:
        assert len(log.recovered) == 1 and "chunk-000000.log" in log.recovered[0]
        assert [s for _, s, _ in records(log)] == survivors
        assert log.durable_seq("a") == survivors[-1]
        for seq in range(survivors[-1] + 1, 6):
            assert log.append("a", seq, payload(seq))
        assert log.commit() == {"a": 5}
    with TransitionLog(tmp_path) as log:
        assert log.recovered == []
        expected = [(s, payload(s, size=300) if s in survivors else payload(s)) for s in range(1, 6)]
        assert [(s, d) for _, s, d in records(log)] == expected


def test_torn_tail_of_the_quarantine_file_is_cut_off(tmp_path: Path) -> None:
    with TransitionLog(tmp_path) as log:
        log.quarantine("a", 1, b"bad", "reason one")
        log.quarantine("a", 2, b"worse", "reason two")
        log.commit()
    q = tmp_path / "quarantine.log"
    q.write_bytes(q.read_bytes()[:-3])
    with TransitionLog(tmp_path) as log:
        assert log.durable_seq("a") == 1
        assert [r[:2] for r in log.quarantined()] == [("a", 1)]


def test_a_corrupt_record_before_valid_ones_raises_naming_file_and_offset(tmp_path: Path) -> None:
    _write_three(tmp_path)
    with TransitionLog(tmp_path) as log:
        second_starts = next(iter(log.replay()))[0].pos
    path = chunk_files(tmp_path)[0]
    data = bytearray(path.read_bytes())
    data[second_starts + HEADER_SIZE + 40] ^= 0x01  # one bit of the second record's payload
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError, match=rf"chunk-000000\.log: corrupt record at byte offset {second_starts}: "
                       "body CRC32 mismatch") as err:
        TransitionLog(tmp_path)
    assert err.value.path == str(path) and err.value.offset == second_starts
    # A failed open releases its lock: opening again reports the damage, not "already open".
    path.write_bytes(bytes(data[:second_starts]) + b"X" + bytes(data[second_starts + 1 :]))
    with pytest.raises(CorruptLogError, match="magic is"):
        TransitionLog(tmp_path)


def test_damage_at_the_end_of_a_sealed_chunk_is_an_error_not_a_torn_tail(tmp_path: Path) -> None:
    with TransitionLog(tmp_path, chunk_bytes=1000) as log:
        for seq in range(1, 10):
            log.append("a", seq, payload(seq, size=300))
        log.commit()
    first = chunk_files(tmp_path)[0]
    first.write_bytes(first.read_bytes()[:-2])
    with pytest.raises(CorruptLogError, match=r"chunk-000000\.log: corrupt record at byte offset \d+: truncated body"):
        TransitionLog(tmp_path)
    chunk_files(tmp_path)[1].unlink()
    with pytest.raises(CorruptLogError, match=r"chunk-000001\.log.*chunk file is missing"):
        TransitionLog(tmp_path)


def test_bad_arguments_name_the_field(tmp_path: Path) -> None:
    with TransitionLog(tmp_path) as log:
        with pytest.raises(ValueError, match="seq is 0; expected an int"):
            log.append("a", 0, b"x")
        with pytest.raises(ValueError, match="seq is True"):
            log.append("a", True, b"x")
        with pytest.raises(ValueError, match="actor_id is ''"):
            log.append("", 1, b"x")
        with pytest.raises(TypeError, match="payload is a str; expected bytes"):
            log.append("a", 1, "x")  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match="already open"):
            TransitionLog(tmp_path)


# ---- crash test: SIGKILL a child that appends and commits in a loop ----


def _append_until_killed(directory: str, side_file: str, actor_id: str) -> None:
    log = TransitionLog(directory, chunk_bytes=256 << 10)
    seq = log.durable_seq(actor_id) + 1
    rng = random.Random(seq)
    side = os.open(side_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    while True:
        for _ in range(rng.randint(1, 24)):
            log.append(actor_id, seq, payload(seq, size=rng.choice((16, 2000, 40_000))))
            seq += 1
        durable = log.commit()[actor_id]
        os.write(side, f"{durable}\n".encode())  # only after commit returned: this is what would be acked


def _reported(side_file: Path) -> int:
    lines = side_file.read_bytes().split(b"\n")[:-1] if side_file.exists() else []
    return int(lines[-1]) if lines else 0


def test_sigkill_at_any_instant_loses_no_committed_record(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    directory, side = tmp_path / "log", tmp_path / "committed.txt"
    rng = random.Random(0)
    reported = 0
    for _ in range(3):
        child = ctx.Process(target=_append_until_killed, args=(str(directory), str(side), "actor-0"), daemon=True)
        child.start()
        deadline = time.monotonic() + 15
        while _reported(side) < reported + 40 and time.monotonic() < deadline and child.is_alive():
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        assert child.exitcode == -signal.SIGKILL, "the child died before it was killed"
        reported = _reported(side)
        assert reported > 0
        with TransitionLog(directory, chunk_bytes=256 << 10) as log:
            got = [(s, d) for _, a, s, d in log.replay()]
            seqs = [s for s, _ in got]
            assert seqs == list(range(1, len(seqs) + 1)), "a record is missing or present twice"
            assert len(seqs) >= reported and log.durable_seq("actor-0") == len(seqs)
            for seq, data in got:
                assert unpack(data)["seq"] == seq and data == payload(seq, size=len(unpack(data)["obs"]))
