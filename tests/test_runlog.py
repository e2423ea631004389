"""Reading a run's TensorBoard scalars back (serl_stack.runlog), from files written by tensorboardX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tensorboardX import SummaryWriter

from serl_stack.runlog import episodes, read_scalars


def test_episode_table_round_trips_what_the_learner_logs(tmp_path: Path) -> None:
    writer = SummaryWriter(str(tmp_path / "tb" / "learner"))
    rows = [(10.0, 1.0, 13), (-2.5, 0.0, 100), (7.0, 1.0, 21)]
    received = 0
    for ret, success, length in rows:
        received += length - 3  # the learner logs at the steps it has received, which lag the actor
        writer.add_scalar("episode/return", ret, received)
        writer.add_scalar("episode/success", success, received)
        writer.add_scalar("episode/length", float(length), received)
        writer.add_scalar("learner/critic_loss", 0.5, received)
    writer.close()
    table = episodes(tmp_path)
    np.testing.assert_array_equal(table["end_step"], [13, 113, 134])
    np.testing.assert_array_equal(table["return"], [10.0, -2.5, 7.0])
    np.testing.assert_array_equal(table["success"], [1.0, 0.0, 1.0])
    (events,) = (tmp_path / "tb" / "learner").glob("events.out.tfevents.*")
    assert ("learner/critic_loss", 10, 0.5) in read_scalars(events)


def test_a_torn_last_record_ends_the_read_and_a_missing_log_is_named(tmp_path: Path) -> None:
    writer = SummaryWriter(str(tmp_path / "tb" / "learner"))
    for i in range(3):
        writer.add_scalar("episode/return", float(i), i)
    writer.close()
    (events,) = (tmp_path / "tb" / "learner").glob("events.out.tfevents.*")
    full = read_scalars(events)
    events.write_bytes(events.read_bytes()[:-7])  # a writer killed mid-record
    assert read_scalars(events) == full[:-1]
    with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
        episodes(tmp_path / "nothing")


def test_envs_without_success_get_nan_success(tmp_path: Path) -> None:
    writer = SummaryWriter(str(tmp_path / "tb" / "learner"))
    for i in range(2):
        writer.add_scalar("episode/return", float(i), i)
        writer.add_scalar("episode/length", 1000.0, i)
    writer.close()
    table = episodes(tmp_path)
    np.testing.assert_array_equal(table["end_step"], [1000, 2000])
    assert np.isnan(table["success"]).all()
