"""The learner's update machinery: exact resume across processes, demonstrations in every minibatch, the mirror.

The resume test runs real processes and real orbax checkpoints on disk: N updates, checkpoint, a new process
restores and does M more; every leaf of the agent (parameters, optimizer moments, target critics, temperature,
RNG key) must be bitwise equal to an uninterrupted run of N + M updates with the same seed.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from serl_stack.config import AgentConfig, Config, ReplayConfig
from serl_stack.data.demos import DemoFormatError, EpisodeBuilder, save_episode
from serl_stack.updater import Updater, _chunks

OBS_DIM, ACT_DIM = 5, 2


def small_config(on_device: bool = True, demo_dir: str = "", utd: int = 2) -> Config:
    # obs_norm_refresh=3: the resume test below crosses refreshes in both processes.
    agent = AgentConfig(hidden_dims=(32, 32), batch_size=16, utd=utd, num_critics=3, critic_subset=2,
                        obs_norm_refresh=3)
    replay = ReplayConfig(capacity=1000, on_device=on_device, demo_dir=demo_dir)
    return dataclasses.replace(Config(), agent=agent, replay=replay)


def transition(rng: np.random.Generator, reward: float | None = None) -> tuple:
    obs = {"state/x": rng.normal(size=OBS_DIM).astype(np.float32)}
    nxt = {"state/x": rng.normal(size=OBS_DIM).astype(np.float32)}
    action = rng.uniform(-1, 1, ACT_DIM).astype(np.float32)
    r = float(rng.normal()) if reward is None else reward
    return obs, action, r, nxt, bool(rng.uniform() < 0.05), False


def filled_updater(cfg: Config, n: int = 300) -> Updater:
    rng = np.random.default_rng(123)
    first = transition(rng)
    updater = Updater(cfg, first[0], first[1])
    updater.insert(*first)
    for _ in range(n - 1):
        updater.insert(*transition(rng))
    return updater


def worker(mode: str, checkpoint_dir: str, n: int, m: int, out: str, on_device: bool) -> None:
    """Run in a fresh process: `first` = N updates + checkpoint; `second` = restore + M; `whole` = N + M."""
    from serl_stack.checkpoint import Checkpointer

    updater = filled_updater(small_config(on_device))
    ckpt = Checkpointer(checkpoint_dir)
    if mode == "second":
        agent, meta = ckpt.restore(updater.new_agent())
        updater.restore(agent, meta)
        steps = m
    else:
        updater.init_agent()
        steps = n if mode == "first" else n + m
    for _ in range(steps):
        updater.step()
    if mode == "first":
        ckpt.save(updater.updates, updater.agent, updater.checkpoint_meta())
    ckpt.close()
    leaves = jax.tree.leaves(jax.device_get(updater.agent))
    np.savez(out, updates=updater.updates, **{f"leaf{i}": np.asarray(x) for i, x in enumerate(leaves)})


def _run_worker(tmp_path: Path, mode: str, ckpt: Path, n: int, m: int, on_device: bool) -> dict[str, np.ndarray]:
    out = tmp_path / f"{mode}.npz"
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_updater; "
        f"test_updater.worker({mode!r}, {str(ckpt)!r}, {n}, {m}, {str(out)!r}, {on_device})"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out) as data:
        return dict(data)


@pytest.mark.parametrize("on_device", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_resume_in_a_new_process_is_bitwise_exact(tmp_path: Path, on_device: bool) -> None:
    n, m = 7, 5
    ckpt = tmp_path / "ckpt"
    _run_worker(tmp_path, "first", ckpt, n, m, on_device)
    resumed = _run_worker(tmp_path, "second", ckpt, n, m, on_device)
    whole = _run_worker(tmp_path, "whole", ckpt, n, m, on_device)
    assert int(resumed["updates"]) == int(whole["updates"]) == n + m
    leaves = [k for k in whole if k.startswith("leaf")]
    assert len(leaves) > 20  # params, Adam moments, targets, temperature, RNG: the whole agent
    for k in leaves:
        assert resumed[k].dtype == whole[k].dtype and np.array_equal(resumed[k], whole[k]), k


def test_device_and_host_sampling_both_update_the_critic() -> None:
    for on_device in (True, False):
        updater = filled_updater(small_config(on_device))
        updater.init_agent()
        before = jax.device_get(updater.agent.critic.params)
        info = updater.step()
        assert updater.updates == 1 and np.isfinite(float(info["critic_loss"]))
        after = jax.device_get(updater.agent.critic.params)
        pairs = zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
        assert any(not np.array_equal(a, b) for a, b in pairs)


def test_device_mirror_holds_exactly_what_was_inserted() -> None:
    updater = filled_updater(small_config(True), n=37)
    updater._flush()
    mirror = updater._device
    assert mirror is not None and int(mirror.size) == 37
    from serl_stack.data.replay import to_agent_batch

    rows = to_agent_batch(updater.replay.take(np.arange(37)), updater.keys)
    for key, value in rows.items():
        np.testing.assert_array_equal(np.asarray(mirror.data[key][:37]), value)


def test_insert_chunks_are_powers_of_two() -> None:
    assert _chunks(0) == [] and _chunks(1) == [1] and _chunks(16) == [16]
    assert _chunks(37) == [32, 4, 1] and sum(_chunks(1000)) == 1000


def _write_demos(directory: Path, episodes: int, reward: float, obs_dim: int = OBS_DIM) -> None:
    rng = np.random.default_rng(7)
    for _ in range(episodes):
        builder = EpisodeBuilder()
        builder.start({"state": {"x": rng.normal(size=obs_dim).astype(np.float32)}})
        for t in range(10):
            nxt = {"state": {"x": rng.normal(size=obs_dim).astype(np.float32)}}
            builder.add(rng.uniform(-1, 1, ACT_DIM).astype(np.float32), reward, nxt, False, t == 9)
        save_episode(directory, builder.build(success=True), env_id="test", config={})


@pytest.mark.parametrize("utd", [1, 3])
def test_every_minibatch_holds_the_configured_share_of_demonstrations(tmp_path: Path, utd: int) -> None:
    """Demo rewards are a sentinel (1000): count them per minibatch of the sampled UTD batch."""
    _write_demos(tmp_path / "demos", 3, reward=1000.0)
    cfg = small_config(True, str(tmp_path / "demos"), utd=utd)
    updater = filled_updater(cfg)
    updater._flush()
    from serl_stack.data.device_mix import DeviceMix

    mix = DeviceMix.create(updater._device, updater._device_demos, cfg.agent.batch_size, cfg.replay.demo_fraction)
    batch = mix.sample(jax.random.PRNGKey(0), utd * cfg.agent.batch_size)
    rewards = np.asarray(batch["rewards"]).reshape(utd, cfg.agent.batch_size)
    assert ((rewards == 1000.0).sum(axis=1) == round(0.5 * cfg.agent.batch_size)).all()
    # The host path draws the same share through MixedSampler.
    host = filled_updater(dataclasses.replace(cfg, replay=dataclasses.replace(cfg.replay, on_device=False)))
    host_rewards = host._host_batch()["rewards"].reshape(utd, cfg.agent.batch_size)
    assert ((host_rewards == 1000.0).sum(axis=1) == 8).all()


def test_demonstrations_that_do_not_fit_the_env_are_named(tmp_path: Path) -> None:
    _write_demos(tmp_path / "demos", 1, reward=0.0, obs_dim=OBS_DIM + 1)
    with pytest.raises(DemoFormatError, match=r"state/x.*\(6,\).*\(5,\)"):
        filled_updater(small_config(True, str(tmp_path / "demos")), n=1)
    with pytest.raises(ValueError, match="replay.demo_fraction"):
        cfg = small_config(True)
        filled_updater(dataclasses.replace(cfg, replay=dataclasses.replace(cfg.replay, demo_fraction=1.5)), n=1)


def test_observation_statistics_include_the_demonstrations(tmp_path: Path) -> None:
    """Warm-up data alone would miss what only demonstrations reach (a lifted cube): demo observations shifted by
    +50 must move the agent's standardization mean to the mean over both sets."""
    directory = tmp_path / "demos"
    _write_demos(directory, 2, reward=0.0)
    shifted = tmp_path / "shifted"
    from serl_stack.data.demos import load_episodes

    for episode in load_episodes(directory):
        builder = EpisodeBuilder()
        obs = episode.observations["state/x"]
        builder.start({"state": {"x": obs[0] + 50.0}})
        for t in range(len(episode)):
            builder.add(episode.actions[t], 0.0, {"state": {"x": obs[t + 1] + 50.0}}, False, t == len(episode) - 1)
        save_episode(shifted, builder.build(success=True), env_id="test", config={})
    updater = filled_updater(small_config(True, str(shifted)), n=40)
    updater.init_agent()
    warmup = updater.replay.take(np.arange(len(updater.replay)))["observations"]["state/x"]
    demos = updater.demos.take(np.arange(len(updater.demos)))["observations"]["state/x"]
    expected = np.concatenate([warmup, demos]).mean(axis=0)
    assert demos.mean() > 45  # the demos really are far from the warm-up data
    np.testing.assert_allclose(np.asarray(updater.agent.obs_norm["mean"]), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("on_device", [True, False])
def test_a_feature_that_moves_only_after_the_warmup_stays_distinguishable(on_device: bool) -> None:
    """A cube's height sits at 2 cm +- 1.4 mm through the warm-up; later episodes lift it up to 14 cm. With the
    statistics frozen, a 2 cm and a 10 cm lift both read as the clip; refreshed, they stay apart, and the
    parameters the actor receives carry the refreshed statistics."""
    from serl_stack.agents.networks import OBS_NORM_CLIP, normalize_obs

    def run(refresh: int) -> tuple[float, float, Updater]:
        cfg = small_config(on_device)
        cfg = dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, obs_norm_refresh=refresh))
        rng = np.random.default_rng(0)

        def step(height_low: float, height_high: float, noise: float) -> tuple:
            obs = {"state/x": rng.normal(size=OBS_DIM).astype(np.float32)}
            nxt = {"state/x": rng.normal(size=OBS_DIM).astype(np.float32)}
            for o in (obs, nxt):
                o["state/x"][0] = rng.uniform(height_low, height_high) + rng.normal(0, noise)
            return obs, rng.uniform(-1, 1, ACT_DIM).astype(np.float32), 0.0, nxt, False, False

        first = step(0.02, 0.02, 0.0014)
        updater = Updater(cfg, first[0], first[1])
        for t in [first] + [step(0.02, 0.02, 0.0014) for _ in range(199)]:
            updater.insert(*t)
        updater.init_agent()
        assert float(updater.agent.obs_norm["std"][0]) < 0.002  # the warm-up saw no lift
        for _ in range(300):
            updater.insert(*step(0.02, 0.14, 0.0))
        for _ in range(10):
            updater.step()
        probe = np.zeros((2, OBS_DIM), np.float32)
        probe[:, 0] = [0.04, 0.12]  # a 2 cm and a 10 cm lift
        norm = updater.agent.actor_params["obs_norm"]
        z = np.asarray(normalize_obs(jax.numpy.asarray(probe), norm))[:, 0]
        return float(z[0]), float(z[1]), updater

    frozen_2cm, frozen_10cm, _ = run(0)
    assert frozen_2cm == frozen_10cm == OBS_NORM_CLIP  # the defect this guards against
    low, high, updater = run(5)
    assert abs(low) < OBS_NORM_CLIP and abs(high) < OBS_NORM_CLIP
    assert high - low > 1.0, (low, high)
    np.testing.assert_allclose(np.asarray(updater.agent.obs_norm["std"]), updater.observation_stats()["std"])
