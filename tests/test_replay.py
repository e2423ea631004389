"""Tests of serl_stack.data.replay: ring wraparound, dtypes, bootstrap masks, validation messages."""

from __future__ import annotations

import numpy as np
import pytest

from serl_stack.config import ReplayConfig
from serl_stack.data.obs import vector_keys
from serl_stack.data.replay import ReplayBuffer, spec_from_example, to_agent_batch


def make_obs(value: float = 0.0) -> dict:
    return {
        "state": {"tcp_pose": np.full(7, value, np.float32), "gripper_pos": np.full(1, value, np.float32)},
        "images": {"wrist": np.full((4, 4, 3), int(value) % 256, np.uint8)},
        "task": {"grasped": np.array([bool(int(value) % 2)])},
    }


def make_buffer(capacity: int = 8) -> ReplayBuffer:
    return ReplayBuffer.from_example(make_obs(), np.zeros(3, np.float32), ReplayConfig(capacity=capacity))


def insert(buf: ReplayBuffer, i: int, terminated: bool = False, truncated: bool = False) -> None:
    buf.insert(make_obs(i), np.full(3, i / 100, np.float32), float(i), make_obs(i + 1), terminated, truncated)


def test_spec_from_nested_example_uses_flat_keys():
    spec = spec_from_example(make_obs())
    assert spec["state/tcp_pose"] == ((7,), np.dtype(np.float32))
    assert spec["images/wrist"] == ((4, 4, 3), np.dtype(np.uint8))
    assert spec["task/grasped"] == ((1,), np.dtype(bool))


def test_ring_wraps_around_and_keeps_the_newest():
    buf = make_buffer(capacity=5)
    for i in range(12):
        insert(buf, i)
    assert len(buf) == 5
    sample = buf.sample(200, np.random.default_rng(0))
    # Only the last 5 transitions (7..11) survive, each still paired with its own next observation.
    assert set(sample["rewards"].tolist()) == {7.0, 8.0, 9.0, 10.0, 11.0}
    np.testing.assert_array_equal(sample["observations"]["state/tcp_pose"][:, 0], sample["rewards"])
    np.testing.assert_array_equal(sample["next_observations"]["state/tcp_pose"][:, 0], sample["rewards"] + 1)
    np.testing.assert_allclose(sample["actions"][:, 0], sample["rewards"] / 100, rtol=1e-6)


def test_len_grows_until_capacity():
    buf = make_buffer(capacity=3)
    lengths = []
    for i in range(5):
        insert(buf, i)
        lengths.append(len(buf))
    assert lengths == [1, 2, 3, 3, 3]


def test_sample_shapes_and_dtypes_are_preserved():
    buf = make_buffer()
    for i in range(4):
        insert(buf, i)
    s = buf.sample(6, np.random.default_rng(1))
    for part in ("observations", "next_observations"):
        assert s[part]["state/tcp_pose"].shape == (6, 7) and s[part]["state/tcp_pose"].dtype == np.float32
        assert s[part]["images/wrist"].shape == (6, 4, 4, 3) and s[part]["images/wrist"].dtype == np.uint8
        assert s[part]["task/grasped"].shape == (6, 1) and s[part]["task/grasped"].dtype == bool
    assert s["actions"].shape == (6, 3) and s["actions"].dtype == np.float32
    assert s["rewards"].shape == (6,) and s["rewards"].dtype == np.float32
    assert s["masks"].dtype == np.float32
    assert s["terminated"].dtype == bool and s["truncated"].dtype == bool


def test_flat_and_nested_observations_are_the_same_thing():
    buf = make_buffer()
    flat = {
        "state/tcp_pose": np.ones(7, np.float32),
        "state/gripper_pos": np.ones(1, np.float32),
        "images/wrist": np.ones((4, 4, 3), np.uint8),
        "task/grasped": np.array([True]),
    }
    buf.insert(flat, np.zeros(3, np.float32), 0.0, make_obs(), False, False)
    assert len(buf) == 1


@pytest.mark.parametrize(
    ("terminated", "truncated", "mask"),
    [
        (False, False, 1.0),  # mid-episode: bootstrap
        (True, False, 0.0),  # termination: the episode's value ends here
        (False, True, 1.0),  # time-limit truncation: the state still has a future, bootstrap
        (True, True, 0.0),  # terminated on the last step: termination wins
    ],
)
def test_masks_from_terminated_and_truncated(terminated, truncated, mask):
    buf = make_buffer()
    insert(buf, 0, terminated=terminated, truncated=truncated)
    s = buf.sample(4, np.random.default_rng(0))
    assert s["masks"].tolist() == [mask] * 4
    assert s["terminated"].tolist() == [terminated] * 4
    assert s["truncated"].tolist() == [truncated] * 4


def test_wrong_shape_names_key_and_expected_shape():
    buf = make_buffer()
    bad = make_obs()
    bad["state"]["tcp_pose"] = np.zeros(6, np.float32)
    with pytest.raises(ValueError, match=r"obs\['state/tcp_pose'\]: got shape \(6,\), expected \(7,\)"):
        buf.insert(bad, np.zeros(3, np.float32), 0.0, make_obs(), False, False)
    assert len(buf) == 0


def test_nan_in_next_obs_names_key_and_shape():
    buf = make_buffer()
    bad = make_obs()
    bad["state"]["gripper_pos"] = np.array([np.nan], np.float32)
    with pytest.raises(ValueError, match=r"next_obs\['state/gripper_pos'\]: got non-finite .*shape \(1,\)"):
        buf.insert(make_obs(), np.zeros(3, np.float32), 0.0, bad, False, False)
    assert len(buf) == 0


def test_missing_or_extra_key_is_named():
    buf = make_buffer()
    bad = make_obs()
    del bad["task"]
    bad["state"]["tcp_vel"] = np.zeros(6, np.float32)
    with pytest.raises(ValueError, match=r"missing \['task/grasped'\], unexpected \['state/tcp_vel'\]"):
        buf.insert(bad, np.zeros(3, np.float32), 0.0, make_obs(), False, False)


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("action", np.zeros(2, np.float32), r"action: got shape \(2,\), expected \(3,\)"),
        ("action", np.array([0.0, np.inf, 0.0]), r"action: got non-finite"),
        ("reward", float("nan"), r"reward: got non-finite"),
        ("terminated", 1, r"terminated: got 1 \(int\), expected a bool"),
    ],
)
def test_bad_action_reward_or_flag_is_named(field, value, pattern):
    buf = make_buffer()
    kwargs = dict(
        obs=make_obs(),
        action=np.zeros(3, np.float32),
        reward=0.0,
        next_obs=make_obs(),
        terminated=False,
        truncated=False,
    )
    kwargs[field] = value
    with pytest.raises(ValueError, match=pattern):
        buf.insert(**kwargs)


def test_float_image_is_refused_rather_than_truncated():
    buf = make_buffer()
    bad = make_obs()
    bad["images"]["wrist"] = np.full((4, 4, 3), 0.5, np.float32)
    with pytest.raises(ValueError, match=r"obs\['images/wrist'\]: got dtype float32, expected uint8"):
        buf.insert(bad, np.zeros(3, np.float32), 0.0, make_obs(), False, False)


def test_sample_from_empty_buffer_raises():
    with pytest.raises(ValueError, match="empty"):
        make_buffer().sample(1, np.random.default_rng(0))


def test_to_agent_batch_concatenates_in_key_order():
    buf = make_buffer()
    insert(buf, 3, terminated=True)
    keys = vector_keys(spec_from_example(make_obs()))
    assert keys == ("state/gripper_pos", "state/tcp_pose", "task/grasped")
    batch = to_agent_batch(buf.sample(2, np.random.default_rng(0)), keys)
    assert set(batch) == {"observations", "actions", "rewards", "next_observations", "masks"}
    assert batch["observations"].shape == (2, 1 + 7 + 1) and batch["observations"].dtype == np.float32
    np.testing.assert_array_equal(batch["observations"][0], [3.0] * 8 + [1.0])
    np.testing.assert_array_equal(batch["next_observations"][0], [4.0] * 8 + [0.0])
    assert batch["masks"].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("capacity", [7, 50])
def test_images_are_stored_once_per_frame_and_next_frames_stay_right(capacity: int) -> None:
    """Three episodes of distinct frames, through a ring that wraps (capacity 7) or not (50)."""
    spec = {"images/wrist": ((4, 4, 3), np.uint8), "state/x": ((2,), np.float32)}
    buf = ReplayBuffer(spec, (1,), ReplayConfig(capacity=capacity))
    frame_id = 0
    expected: list[tuple[int, int]] = []  # (obs frame, next frame) of every inserted transition

    def frame(k: int) -> np.ndarray:
        return np.full((4, 4, 3), k % 251, np.uint8)

    for length in (5, 9, 6):
        first = frame_id
        for t in range(length):
            o, n = first + t, first + t + 1
            obs = {"images/wrist": frame(o), "state/x": np.array([o, 0], np.float32)}
            nxt = {"images/wrist": frame(n), "state/x": np.array([n, 0], np.float32)}
            buf.insert(obs, np.zeros(1, np.float32), 0.0, nxt, t == length - 1, False)
            expected.append((o, n))
        frame_id = first + length + 1
    got = buf.take(np.arange(len(buf)))
    # Ring order: slot s holds the transition inserted at index s (mod capacity).
    for s in range(len(buf)):
        total = len(expected)
        ins = max(i for i in range(total) if i % capacity == s)
        o, n = expected[ins]
        assert (got["observations"]["images/wrist"][s] == o % 251).all()
        assert (got["next_observations"]["images/wrist"][s] == n % 251).all(), (s, o, n)
        assert got["next_observations"]["state/x"][s][0] == n
    assert len(buf) == min(capacity, len(expected))
    # One frame per transition, plus at most one aside per episode end in the buffer, the newest, the wrap slot.
    assert buf.stored_frames() <= len(buf) + 3 + 2
    assert buf.stored_frames() < 2 * len(buf)
