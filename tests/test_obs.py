"""Observation flattening: key paths, the agent vector's order, and key selection."""

from __future__ import annotations

import numpy as np
import pytest

from serl_stack.data.obs import flatten_keys, source_keys, to_vector, unflatten_keys, vector_dim, vector_keys

OBS = {
    "state": {"tcp_pose": np.arange(7, dtype=np.float32), "gripper_pos": np.array([0.04], np.float32)},
    "task": {"goal_pos": np.array([1.0, 2.0, 3.0])},
    "images": {"wrist": np.zeros((4, 4, 3), np.uint8)},
}


def test_flatten_round_trip_and_sorted_vector_without_images() -> None:
    flat = flatten_keys(OBS)
    assert set(flat) == {"state/tcp_pose", "state/gripper_pos", "task/goal_pos", "images/wrist"}
    assert unflatten_keys(flat)["state"]["tcp_pose"] is flat["state/tcp_pose"]
    keys = vector_keys(flat)
    assert keys == ("state/gripper_pos", "state/tcp_pose", "task/goal_pos")
    vec = to_vector(flat, keys)
    assert vec.dtype == np.float32 and vec.shape == (11,) == (vector_dim(flat, keys),)
    np.testing.assert_allclose(vec, [0.04, 0, 1, 2, 3, 4, 5, 6, 1, 2, 3], rtol=1e-6)


def test_batched_vector_keeps_leading_axes() -> None:
    flat = {k: np.stack([v, v + 1]) for k, v in flatten_keys(OBS).items()}
    vec = to_vector(flat, ("state/tcp_pose", "task/goal_pos"), batch_dims=1)
    assert vec.shape == (2, 10)
    np.testing.assert_array_equal(vec[1] - vec[0], np.ones(10))


def test_selected_keys_are_sorted_and_unknown_ones_named() -> None:
    flat = flatten_keys(OBS)
    assert vector_keys(flat, ("task/goal_pos", "state/tcp_pose")) == ("state/tcp_pose", "task/goal_pos")
    with pytest.raises(KeyError, match="state/tcp_vel"):
        vector_keys(flat, ("state/tcp_vel",))
    with pytest.raises(KeyError, match="images/wrist"):  # images never go into the vector
        vector_keys(flat, ("images/wrist",))
    with pytest.raises(KeyError, match="missing 'task/other'"):
        to_vector(flat, ("task/other",))


def test_relative_position_entry_is_the_offset_of_two_positions() -> None:
    flat = flatten_keys(OBS)
    keys = vector_keys(flat, ("task/goal_pos - state/tcp_pose", "state/gripper_pos"))
    assert keys == ("state/gripper_pos", "task/goal_pos - state/tcp_pose")
    assert vector_dim(flat, keys) == 4
    np.testing.assert_allclose(to_vector(flat, keys), [0.04, 1.0, 1.0, 1.0], rtol=1e-6)  # (1,2,3) - (0,1,2)
    batched = {k: np.stack([v, v + 1, 2 * v]) for k, v in flat.items()}
    vec = to_vector(batched, keys, batch_dims=1)
    assert vec.shape == (3, 4)
    np.testing.assert_allclose(vec[:, 1:], [[1, 1, 1], [1, 1, 1], [2, 2, 2]], rtol=1e-6)
    assert source_keys(keys) == ("state/gripper_pos", "task/goal_pos", "state/tcp_pose")


def test_relative_position_entry_names_what_it_cannot_use() -> None:
    flat = flatten_keys(OBS)
    with pytest.raises(KeyError, match="task/object_pose"):
        vector_keys(flat, ("task/object_pose - state/tcp_pose",))
    with pytest.raises(KeyError, match="needs a position .* 'state/gripper_pos'"):
        vector_keys(flat, ("task/goal_pos - state/gripper_pos",))


def test_replay_vectors_compute_relative_entries_from_the_stored_keys() -> None:
    from serl_stack.config import ReplayConfig
    from serl_stack.data.replay import ReplayBuffer

    flat = {k: v.astype(np.float32) for k, v in flatten_keys(OBS).items() if not k.startswith("images/")}
    replay = ReplayBuffer.from_example(flat, np.zeros(2, np.float32), ReplayConfig(capacity=4))
    for i in range(3):
        obs = {k: v + np.float32(i) for k, v in flat.items()}
        replay.insert(obs, np.zeros(2, np.float32), 0.0, obs, False, False)
    keys = ("task/goal_pos - state/tcp_pose",)
    np.testing.assert_allclose(replay.vectors(keys), np.ones((3, 3)), rtol=1e-6)


def test_fine_offset_entry_resolves_millimetres_near_zero_and_saturates_far_away() -> None:
    flat = flatten_keys(OBS)  # goal (1, 2, 3), tcp position (0, 1, 2)
    keys = vector_keys(flat, ("tanh((task/goal_pos - state/tcp_pose) / 0.005)", "task/goal_pos - state/tcp_pose"))
    assert keys[0].startswith("tanh") and vector_dim(flat, keys) == 6  # sorted: the fine offset first
    assert source_keys(keys) == ("task/goal_pos", "state/tcp_pose")
    near = dict(flat, **{"task/goal_pos": flat["state/tcp_pose"][:3] + np.array([0.001, -0.002, 0.0], np.float32)})
    vec = to_vector(near, keys)
    np.testing.assert_allclose(vec[:3], np.tanh(np.array([0.2, -0.4, 0.0])), atol=1e-5)  # 1 mm -> 0.2, not 0.001
    np.testing.assert_allclose(vec[3:], [0.001, -0.002, 0.0], atol=1e-6)  # the plain offset beside it
    np.testing.assert_allclose(to_vector(flat, keys)[:3], [1.0, 1.0, 1.0], atol=1e-6)  # 1 m away: saturated
    batched = {k: np.stack([v, v]) for k, v in near.items()}
    np.testing.assert_allclose(to_vector(batched, keys, batch_dims=1), np.stack([vec, vec]), rtol=1e-6)


@pytest.mark.parametrize("entry", ["tanh((task/goal_pos - state/tcp_pose) / 0)",
                                   "tanh((task/goal_pos - state/tcp_pose) / -0.01)",
                                   "tanh((task/goal_pos - state/tcp_pose) / 5mm)",
                                   "tanh((task/goal_pos) / 0.005)"])
def test_fine_offset_entry_names_a_bad_scale_or_a_missing_offset(entry: str) -> None:
    with pytest.raises(KeyError, match=r"is not a fine offset; expected 'tanh\(\(A - B\) / S\)'"):
        vector_keys(flatten_keys(OBS), (entry,))
