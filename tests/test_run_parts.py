"""The pieces a run is made of, one at a time: actors' shares and ids, the learner's admission of actors and its
choice of action to learn from, combining the actors' final evaluations, Ctrl-C at safe points, the spool's cap,
and the `Policy` protocol of the SAC and scripted policies."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

import jax
import numpy as np
import pytest

from serl_stack.config import Config, ConfigError, EnvConfig, TrainConfig, TransportConfig
from serl_stack.errors import SpoolFullError
from serl_stack.rundir import actor_index, share
from serl_stack.transport.spool import ActorSpool


@pytest.mark.parametrize(("total", "n"), [(20_000, 1), (20_001, 2), (7, 3), (2, 3), (1000, 7)])
def test_actor_shares_sum_to_the_total_and_differ_by_at_most_one(total: int, n: int) -> None:
    parts = [share(total, n, i) for i in range(n)]
    assert sum(parts) == total and max(parts) - min(parts) <= 1


def test_actor_ids_map_to_distinct_indices() -> None:
    assert actor_index("anything", 1) == 0  # one actor: any id
    assert [actor_index(f"actor-{i}", 3) for i in range(3)] == [0, 1, 2]
    assert actor_index("franka-left-1", 2) == 1
    for bad in ("actor-2", "left", "actor-"):
        with pytest.raises(ConfigError, match=r"transport.actor_id: got .*expected an id ending in -<i> with i in 0"):
            actor_index(bad, 2)


def test_final_evaluations_of_several_actors_combine_episode_weighted() -> None:
    from serl_stack.learner import combine_evaluations

    a = {"episodes": 2, "first_seed": 100, "success_rate": 1.0, "return_mean": 1.0, "return_std": 0.0,
         "length_mean": 10.0, "params_version": 5}
    b = {"episodes": 6, "first_seed": 102, "success_rate": 0.5, "return_mean": 3.0, "return_std": 1.0,
         "length_mean": 20.0, "params_version": 5}
    r = combine_evaluations({"actor-1": b, "actor-0": a}, env_steps=900)
    returns = [1.0, 1.0] + [2.0, 4.0] * 3  # two sets of returns with exactly these means and stds
    assert r["episodes"] == 8 and r["first_seed"] == 100 and r["env_steps"] == 900 and r["final"] is True
    assert r["success_rate"] == pytest.approx((2 * 1.0 + 6 * 0.5) / 8)
    assert r["return_mean"] == pytest.approx(np.mean(returns))
    assert r["return_std"] == pytest.approx(np.std(returns))
    assert r["length_mean"] == pytest.approx((2 * 10 + 6 * 20) / 8)
    assert list(r["actors"]) == ["actor-0", "actor-1"]
    assert combine_evaluations({"a-0": {**a, "success_rate": None}}, 1)["success_rate"] is None


def test_ctrl_c_waits_for_a_safe_point_and_a_second_one_stops_at_once() -> None:
    from serl_stack import interrupt

    old = signal.getsignal(signal.SIGINT)
    interrupt.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert interrupt.requested()  # flagged, not raised where the signal landed
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
        interrupt.check()  # handled: the next check passes
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C while one is pending raises where it lands
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()  # the first of the two is still pending until a safe point takes it
        assert not interrupt.requested()
    finally:
        signal.signal(signal.SIGINT, old)
        interrupt._requested.clear()


def test_the_spool_stops_at_its_cap_and_frees_space_once_acknowledged(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 16  # 4 KiB
    spool = ActorSpool(tmp_path / "spool", fsync=False, segment_bytes=16 * 1024, max_bytes=64 * 1024)
    put = 0
    with pytest.raises(SpoolFullError, match=r"spool_max_bytes=65536.*nothing is lost|Nothing is lost"):
        while True:
            spool.put(spool.next_seq(), payload)
            put += 1
    assert 10 <= put < 16 and spool.disk_bytes <= 64 * 1024
    assert sum(f.stat().st_size for f in (tmp_path / "spool").glob("*.spool")) == spool.disk_bytes
    spool.ack(put)  # the learner has everything: full segments are deleted, room again
    assert spool.disk_bytes < 32 * 1024
    spool.put(spool.next_seq(), payload)
    spool.close()
    reopened = ActorSpool(tmp_path / "spool", max_bytes=64 * 1024)
    assert reopened.disk_bytes == sum(f.stat().st_size for f in (tmp_path / "spool").glob("*.spool"))
    assert [seq for seq, _ in reopened.pending()] == [put + 1]
    reopened.close()


# ----------------------------------------------------------------------------------------------- the learner


def _learner(tmp_path: Path, **changes):
    from serl_stack.learner import Learner

    cfg = Config(train=TrainConfig(start_steps=10, **changes.pop("train", {})),
                 transport=TransportConfig(), **changes)
    return Learner(cfg, tmp_path / "run")


def test_the_learner_admits_only_the_actors_of_its_run(tmp_path: Path) -> None:
    learner = _learner(tmp_path, train={"num_actors": 2})
    try:
        assert learner._admit("actor-0") is None
        learner.done["actor-0"] = 5  # known from now on
        assert learner._admit("actor-0") is None  # a restarted actor is welcome back
        assert "index 0 is already taken by 'actor-0'" in learner._admit("franka-0")
        assert "i in 0..1" in learner._admit("actor-2")
        assert learner._admit("actor-1") is None
        learner.done["actor-1"] = 5
        assert "already has the actors ['actor-0', 'actor-1']" in learner._admit("other-1")
    finally:
        learner.server.close()
        learner.log.close()
        learner.writer.close()
        learner.checkpointer.close()


@pytest.mark.parametrize("source", ["executed", "policy", None])
def test_the_learner_learns_from_the_action_source_it_is_told(tmp_path: Path, source: str | None) -> None:
    """`replay.action_source`: the command that entered the safety filter (`policy`, the default) or what the filter
    let through (`executed`); the transition carries both either way."""
    from serl_stack.envs import make_env

    cfg = Config()
    replay = dataclasses.replace(cfg.replay, capacity=10)
    if source is not None:
        replay = dataclasses.replace(replay, action_source=source)
    learner = _learner(tmp_path, replay=replay)
    env = make_env(EnvConfig())
    try:
        obs, _ = env.reset(seed=0)
        asked = np.full(7, 0.9, np.float32)
        next_obs, reward, terminated, truncated, info = env.step(asked)
        executed = np.asarray(info["executed_action"], np.float32)
        learner._insert("actor-0", {"observation": obs, "action": asked, "executed_action": executed,
                                    "reward": reward, "next_observation": next_obs, "terminated": terminated,
                                    "truncated": truncated, "episode": 0})
        stored = learner.updater.replay.take(np.arange(1))["actions"][0]
        np.testing.assert_array_equal(stored, executed if source == "executed" else asked)
        assert not np.array_equal(executed, asked)  # the filter did change this command: the two differ
    finally:
        env.close()
        learner.server.close()
        learner.log.close()
        learner.writer.close()
        learner.checkpointer.close()


# ----------------------------------------------------------------------------------------------- policies


def test_the_sac_policy_and_the_scripted_baselines_follow_the_policy_protocol() -> None:
    from serl_stack.agents.sac import SACAgent
    from serl_stack.envs import make_env
    from serl_stack.envs.scripted import make_scripted
    from serl_stack.inference import Policy, PolicyRunner

    cfg = Config()
    env = make_env(cfg.env)
    obs, _ = env.reset(seed=0)
    runner = PolicyRunner(obs, 7, cfg.agent)
    agent = SACAgent.create(0, sum(np.size(v) for v in runner.observe(obs)[None]), 7, cfg.agent)
    from flax import serialization

    runner.load(1, serialization.to_state_dict(agent.actor_params))
    scripted = make_scripted(cfg.env, noise=0.3, rng=np.random.default_rng(0))
    key = jax.random.PRNGKey(3)
    for policy in (runner, scripted):
        assert isinstance(policy, Policy)
        policy.reset()
        a = policy.act(obs, key, deterministic=False)
        assert a.shape == (7,) and np.all(np.abs(a) <= 1)
        np.testing.assert_array_equal(policy.act(obs, key, True), policy.act(obs, key, True))  # the mode
        k = policy.sample_actions(obs, 5, key)
        assert k.shape == (5, 1, 7) and np.all(np.abs(k) <= 1)
        assert len({tuple(row) for row in k[:, 0]}) == 5  # five different proposals
        np.testing.assert_array_equal(k, policy.sample_actions(obs, 5, key))  # the key decides them
    # The scripted controller's deterministic action is its noise-free one.
    np.testing.assert_array_equal(scripted.act(obs, None, True), make_scripted(cfg.env)(obs))
    env.close()
