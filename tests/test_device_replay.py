"""Tests of the device-resident replay: ring inserts, in-jit sampling, and `SACAgent.update_from_replay`."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from test_sac import ACTION_DIM, OBS_DIM, random_batch  # one batch generator for all agent tests

from serl_stack.agents.sac import SACAgent
from serl_stack.config import AgentConfig
from serl_stack.data.device_replay import DeviceReplay

SMALL = AgentConfig(hidden_dims=(32, 32), batch_size=16)


def tagged_batch(start: int, n: int) -> dict[str, np.ndarray]:
    """`n` transitions whose every field encodes the row id `start + i`, so a sampled row can be traced back."""
    ids = np.arange(start, start + n, dtype=np.float32)
    return {
        "observations": np.repeat(ids[:, None], OBS_DIM, 1),
        "actions": np.repeat(ids[:, None], ACTION_DIM, 1) / 1000.0,
        "rewards": ids,
        "next_observations": np.repeat(ids[:, None], OBS_DIM, 1) + 0.5,
        "masks": (ids % 2).astype(np.float32),
    }


def assert_consistent_rows(batch: dict, allowed_ids: set[int]) -> None:
    ids = np.asarray(batch["rewards"])
    assert set(ids.astype(int).tolist()) <= allowed_ids, "sampled a row that was never inserted (or was evicted)"
    np.testing.assert_array_equal(np.asarray(batch["observations"]), np.repeat(ids[:, None], OBS_DIM, 1))
    np.testing.assert_array_equal(np.asarray(batch["next_observations"]), np.repeat(ids[:, None], OBS_DIM, 1) + 0.5)
    np.testing.assert_array_equal(np.asarray(batch["actions"]), np.repeat(ids[:, None], ACTION_DIM, 1) / 1000.0)
    np.testing.assert_array_equal(np.asarray(batch["masks"]), ids % 2)


def test_sampling_inside_jit_returns_only_inserted_rows_and_the_ring_evicts_the_oldest():
    sample = jax.jit(lambda replay, key: replay.sample(key, 2000))
    replay = DeviceReplay.create(capacity=64, obs_dim=OBS_DIM, action_dim=ACTION_DIM)
    replay = replay.insert_batch(tagged_batch(1, 10))
    assert int(replay.size) == 10 and int(replay.cursor) == 10
    batch = sample(replay, jax.random.PRNGKey(0))
    assert batch["observations"].shape == (2000, OBS_DIM) and batch["rewards"].shape == (2000,)
    assert_consistent_rows(batch, set(range(1, 11)))
    assert set(np.asarray(batch["rewards"]).astype(int).tolist()) == set(range(1, 11)), "uniform over valid rows"

    # 100 more rows wrap the 64-slot ring: only ids 47..110 survive.
    for start in (11, 51, 91):
        replay = replay.insert_batch(tagged_batch(start, 40 if start < 91 else 20))
    assert int(replay.size) == 64 and int(replay.cursor) == 110 % 64
    batch = sample(replay, jax.random.PRNGKey(1))
    assert_consistent_rows(batch, set(range(47, 111)))
    assert sample._cache_size() == 1, "sampling re-traced after inserts"


def test_insert_rejects_malformed_batches_by_name():
    replay = DeviceReplay.create(capacity=8, obs_dim=OBS_DIM, action_dim=ACTION_DIM)
    bad = tagged_batch(0, 4)
    del bad["masks"]
    with pytest.raises(ValueError, match=r"missing \['masks'\]"):
        replay.insert_batch(bad)
    bad = tagged_batch(0, 4)
    bad["actions"] = bad["actions"][:, :1]
    with pytest.raises(ValueError, match=r"batch\['actions'\]: got shape \(4, 1\), expected \(4, 2\)"):
        replay.insert_batch(bad)
    with pytest.raises(ValueError, match=r"1 <= n <= capacity=8"):
        replay.insert_batch(tagged_batch(0, 9))
    with pytest.raises(ValueError, match=r"^capacity: got 0, expected >= 1"):
        DeviceReplay.create(capacity=0, obs_dim=OBS_DIM, action_dim=ACTION_DIM)


def test_update_from_replay_equals_update_on_the_batch_sampled_with_that_key():
    cfg = dataclasses.replace(SMALL, utd=3, num_critics=4, critic_subset=2)
    agent = SACAgent.create(0, OBS_DIM, ACTION_DIM, cfg)
    replay = DeviceReplay.create(capacity=500, obs_dim=OBS_DIM, action_dim=ACTION_DIM)
    replay = replay.insert_batch(random_batch(300, seed=1))
    key = jax.random.PRNGKey(42)

    fused, fused_info = agent.update_from_replay(replay, key)
    batch = replay.sample(key, cfg.utd * cfg.batch_size)
    separate, separate_info = agent.update(batch)
    # Same computation, but XLA may fuse the gather into the update differently: allow float32 rounding.
    for x, y in zip(jax.tree.leaves((fused, fused_info)), jax.tree.leaves((separate, separate_info)), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    assert int(fused.critic.step) == cfg.utd and int(fused.actor.step) == 1


def test_update_from_replay_compiles_once():
    agent = SACAgent.create(0, OBS_DIM, ACTION_DIM, dataclasses.replace(SMALL, utd=2))
    replay = DeviceReplay.create(capacity=256, obs_dim=OBS_DIM, action_dim=ACTION_DIM)
    replay = replay.insert_batch(random_batch(64, seed=0))
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    agent, _ = agent.update_from_replay(replay, keys[0])
    compiled = SACAgent.update_from_replay._cache_size()
    for i in (1, 2):
        replay = replay.insert_batch(random_batch(64, seed=i))  # a filled buffer keeps its pytree signature
        agent, info = agent.update_from_replay(replay, keys[i])
    assert SACAgent.update_from_replay._cache_size() == compiled, "update_from_replay re-traced"
    assert int(agent.actor.step) == 3 and all(np.isfinite(v) for v in info.values())
