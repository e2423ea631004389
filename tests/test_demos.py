"""Demonstrations: the on-disk format round trip, fill_replay, MixedSampler, the scripted reach policy and
`serl record-demos`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from serl_stack import cli
from serl_stack.config import EnvConfig, ReplayConfig
from serl_stack.data.demos import (
    FORMAT_VERSION,
    DemoFormatError,
    Episode,
    MixedSampler,
    fill_replay,
    load_episodes,
    load_metadata,
    replay_from_demos,
    save_episode,
)
from serl_stack.data.replay import ReplayBuffer
from serl_stack.envs import make_env
from serl_stack.envs.scripted import ReachScripted, make_scripted

# Velocity and wrench are unbounded by nature (contacts); Gymnasium warns about infinite bounds.
pytestmark = pytest.mark.filterwarnings("ignore:.*infinity.*:UserWarning")


def make_episode(t: int = 5, seed: int = 0, terminal: bool = True) -> Episode:
    rng = np.random.default_rng(seed)
    terminated = np.zeros(t, bool)
    truncated = np.zeros(t, bool)
    if terminal:
        terminated[-1] = True
    else:
        truncated[-1] = True
    return Episode(
        observations={
            "state/tcp_pose": rng.normal(size=(t + 1, 7)).astype(np.float32),
            "images/wrist": rng.integers(0, 255, (t + 1, 4, 4, 3), dtype=np.uint8),
            "task/goal_pos": rng.normal(size=(t + 1, 3)).astype(np.float32),
        },
        actions=rng.uniform(-1, 1, (t, 7)).astype(np.float32),
        rewards=rng.normal(size=t).astype(np.float32),
        terminated=terminated,
        truncated=truncated,
        success=terminal,
    )


def obs_spec() -> dict:
    return {
        "state/tcp_pose": ((7,), np.float32),
        "images/wrist": ((4, 4, 3), np.uint8),
        "task/goal_pos": ((3,), np.float32),
    }


def make_buffer(capacity: int = 100) -> ReplayBuffer:
    return ReplayBuffer(obs_spec(), (7,), ReplayConfig(capacity=capacity))


# --------------------------------------------------------------------------------------------------- format


def test_round_trip_is_exact(tmp_path: Path):
    saved = [make_episode(5, 0, True), make_episode(3, 1, False)]
    for ep in saved:
        save_episode(tmp_path, ep, env_id="FrankaReach-v0", config={"env": {"id": "FrankaReach-v0"}})
    loaded = list(load_episodes(tmp_path))
    assert len(loaded) == 2
    for a, b in zip(saved, loaded, strict=True):
        assert a.observations.keys() == b.observations.keys()
        for k in a.observations:
            assert b.observations[k].dtype == a.observations[k].dtype
            assert b.observations[k].shape == a.observations[k].shape
            np.testing.assert_array_equal(b.observations[k], a.observations[k])
        dtypes = {"actions": np.float32, "rewards": np.float32, "terminated": bool, "truncated": bool}
        for name, dtype in dtypes.items():
            assert getattr(b, name).dtype == np.dtype(dtype), name
            np.testing.assert_array_equal(getattr(b, name), getattr(a, name))
        assert b.success == a.success
    meta = load_metadata(tmp_path)
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["num_episodes"] == 2 and meta["num_transitions"] == 8
    assert [e["success"] for e in meta["episodes"]] == [True, False]
    assert meta["spec"]["observations/images/wrist"] == {"dtype": "uint8", "shape": [4, 4, 3]}


def test_files_are_plain_numpy(tmp_path: Path):
    save_episode(tmp_path, make_episode(4), env_id="X")
    with np.load(tmp_path / "episode_000000.npz", allow_pickle=False) as z:
        assert sorted(z.files) == sorted(
            ["actions", "rewards", "terminated", "truncated", "observations/state/tcp_pose",
             "observations/images/wrist", "observations/task/goal_pos"]
        )
        assert z["observations/state/tcp_pose"].shape == (5, 7)
        assert z["actions"].shape == (4, 7)


def test_missing_directory_is_named(tmp_path: Path):
    with pytest.raises(DemoFormatError, match="demo directory not found: .*nowhere"):
        load_episodes(tmp_path / "nowhere")
    with pytest.raises(DemoFormatError, match=r"metadata\.json: missing"):
        load_episodes(tmp_path)


def test_wrong_format_version_is_named(tmp_path: Path):
    save_episode(tmp_path, make_episode(), env_id="X")
    meta = json.loads((tmp_path / "metadata.json").read_text())
    meta["format_version"] = 99
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DemoFormatError, match=r"metadata\.json: format_version is 99, expected 1"):
        list(load_episodes(tmp_path))


def test_dtype_and_shape_different_from_metadata_name_file_and_key(tmp_path: Path):
    save_episode(tmp_path, make_episode(4), env_id="X")
    path = tmp_path / "episode_000000.npz"
    with np.load(path) as z:
        arrays = dict(z)
    np.savez(path, **{**arrays, "actions": arrays["actions"].astype(np.float64)})
    with pytest.raises(DemoFormatError, match=r"000000\.npz: key 'actions' has dtype float64, expected float32"):
        list(load_episodes(tmp_path))
    np.savez(path, **{**arrays, "observations/task/goal_pos": np.zeros((5, 2), np.float32)})
    with pytest.raises(DemoFormatError, match=r"episode_000000\.npz: key 'observations/task/goal_pos' has shape"):
        list(load_episodes(tmp_path))
    del arrays["rewards"]
    np.savez(path, **arrays)
    with pytest.raises(DemoFormatError, match=r"episode_000000\.npz: missing keys \['rewards'\]"):
        list(load_episodes(tmp_path))


def test_save_refuses_a_different_spec_or_bad_lengths(tmp_path: Path):
    save_episode(tmp_path, make_episode(), env_id="X")
    ep = make_episode()
    ep.observations["task/goal_pos"] = np.zeros((6, 4), np.float32)
    with pytest.raises(DemoFormatError, match="observations/task/goal_pos"):
        save_episode(tmp_path, ep, env_id="X")
    with pytest.raises(DemoFormatError, match="env_id"):
        save_episode(tmp_path, make_episode(), env_id="Y")
    ep = make_episode(5)
    ep.rewards = ep.rewards[:4]
    with pytest.raises(DemoFormatError, match=r"rewards: got shape \(4,\), expected \(5,\)"):
        save_episode(tmp_path, ep, env_id="X")
    assert load_metadata(tmp_path)["num_episodes"] == 1


# --------------------------------------------------------------------------------------------------- replay


def test_fill_replay_inserts_every_transition_with_masks(tmp_path: Path):
    eps = [make_episode(5, 0, terminal=True), make_episode(3, 1, terminal=False)]
    for ep in eps:
        save_episode(tmp_path, ep, env_id="X")
    buf = make_buffer()
    assert fill_replay(buf, tmp_path) == 8
    assert len(buf) == 8
    # Slots in insertion order: episode 0 steps 0..4, then episode 1 steps 0..2.
    idx = np.arange(8)
    obs, next_obs = buf._gather(idx)
    poses = [ep.observations["state/tcp_pose"] for ep in eps]
    expect_obs = np.concatenate([p[:-1] for p in poses])
    expect_next = np.concatenate([p[1:] for p in poses])
    np.testing.assert_array_equal(obs["state/tcp_pose"], expect_obs)
    np.testing.assert_array_equal(next_obs["state/tcp_pose"], expect_next)
    np.testing.assert_array_equal(buf._actions[:8], np.concatenate([eps[0].actions, eps[1].actions]))
    np.testing.assert_array_equal(buf._terminated[:8], [0, 0, 0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(buf._truncated[:8], [0, 0, 0, 0, 0, 0, 0, 1])
    batch = buf.sample(64, np.random.default_rng(0))
    np.testing.assert_array_equal(batch["masks"], 1.0 - batch["terminated"].astype(np.float32))
    assert len(replay_from_demos(tmp_path)) == 8


def test_fill_replay_refuses_a_buffer_with_another_spec(tmp_path: Path):
    save_episode(tmp_path, make_episode(), env_id="X")
    buf = ReplayBuffer({"state/tcp_pose": ((7,), np.float32)}, (7,), ReplayConfig(capacity=10))
    with pytest.raises(DemoFormatError, match="images/wrist"):
        fill_replay(buf, tmp_path)
    assert len(buf) == 0


def _filled(n: int, offset: float) -> ReplayBuffer:
    buf = make_buffer()
    for i in range(n):
        o = {k: np.full(shape, offset + i, dtype) for k, (shape, dtype) in obs_spec().items()}
        buf.insert(o, np.zeros(7, np.float32), offset, o, False, False)
    return buf


@pytest.mark.parametrize(("fraction", "batch", "n_demo"), [(0.5, 256, 128), (0.25, 10, 2), (0.0, 8, 0), (1.0, 8, 8)])
def test_mixed_sampler_fraction_is_exact(fraction: float, batch: int, n_demo: int):
    online, demos = _filled(20, 0.0), _filled(20, 1000.0)
    out = MixedSampler(online, demos, fraction).sample(batch, np.random.default_rng(0))
    from_demos = out["rewards"] == 1000.0
    assert from_demos.sum() == n_demo == round(fraction * batch)
    assert out["actions"].shape == (batch, 7)
    assert out["observations"]["images/wrist"].shape == (batch, 4, 4, 3)
    assert out["observations"]["images/wrist"].dtype == np.uint8
    assert set(out) == set(online.sample(1, np.random.default_rng(0)))


def test_mixed_sampler_falls_back_to_online_and_checks_fraction():
    online, empty = _filled(5, 0.0), make_buffer()
    out = MixedSampler(online, empty, 0.5).sample(16, np.random.default_rng(0))
    assert out["rewards"].shape == (16,) and np.all(out["rewards"] == 0.0)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="demo_fraction"):
            MixedSampler(online, empty, bad)


# --------------------------------------------------------------------------------------------------- scripted


def test_scripted_reach_succeeds_on_20_seeds():
    cfg = EnvConfig()
    env = make_env(cfg)
    policy = ReachScripted.from_config(cfg, noise=0.1, rng=np.random.default_rng(0))
    successes = 0
    for seed in range(20):
        obs, info = env.reset(seed=seed)
        done = False
        while not done:
            action = policy(obs)
            assert action.shape == (7,) and action.dtype == np.float32
            assert np.all(np.abs(action) <= 1) and np.all(action[3:] == 0)
            obs, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
        successes += bool(info["success"])
    env.close()
    assert successes >= 18


def test_scripted_errors():
    with pytest.raises(ValueError, match="rng"):
        ReachScripted(noise=0.1)
    with pytest.raises(ValueError, match="env.id"):
        make_scripted(EnvConfig(id="Nope-v0"))


# --------------------------------------------------------------------------------------------------- cli


def test_record_demos_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "demos"
    assert cli.main(["record-demos", "--out", str(out), "--episodes", "3", "--seed", "7"]) == 0
    printed = capsys.readouterr().out
    meta = json.loads((out / "metadata.json").read_text())
    assert f"kept {meta['num_episodes']} of 3" in printed
    assert meta["num_episodes"] >= 2 and meta["env_id"] == "FrankaReach-v0"
    assert meta["config"]["env"]["id"] == "FrankaReach-v0"
    assert all(e["success"] for e in meta["episodes"])
    for entry in meta["episodes"]:
        with np.load(out / entry["file"], allow_pickle=False) as z:
            for key, spec in meta["spec"].items():
                rows = entry["length"] + 1 if key.startswith("observations/") else entry["length"]
                assert z[key].shape == (rows, *spec["shape"]) and z[key].dtype.name == spec["dtype"]
            assert z["terminated"][-1] and not z["terminated"][:-1].any()
    assert sum(len(e) for e in load_episodes(out)) == meta["num_transitions"]
    # A folder that already holds demos is refused.
    assert cli.main(["record-demos", "--out", str(out), "--episodes", "1"]) == 2


def test_record_demos_keep_stops_at_that_many_successes(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """`--keep K` ends the recording at the K-th successful episode (pick-cube's scripted grasp), and reports
    failure when --episodes runs out first."""
    config = str(Path(__file__).resolve().parents[1] / "configs" / "sim_pick_cube.yaml")
    out = tmp_path / "demos"
    assert cli.main(["record-demos", "--config", config, "--out", str(out), "--episodes", "10", "--keep", "2"]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["num_episodes"] == 2 and meta["env_id"] == "FrankaPickCube-v0"
    assert "kept 2 of 2 episodes" in capsys.readouterr().out
    # --noise 5 drowns the grasp in noise: no success in 2 tries is fewer than --keep asks for.
    bad = ["record-demos", "--config", config, "--out", str(tmp_path / "noisy"), "--episodes", "2", "--keep", "2"]
    assert cli.main([*bad, "--noise", "5"]) == 1
    assert "only 0 of --keep 2" in capsys.readouterr().err
    assert cli.main(["record-demos", "--out", str(tmp_path / "x"), "--episodes", "2", "--keep", "3"]) == 2


def test_record_demos_with_a_policy_keeps_failures_with_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """`serl record-demos --policy BC_DIR --all`: the episodes of a (weak) behaviour-cloned policy, failures kept with
    their success flag (what `serl train-critic` needs); its actions are sampled, not the policy's mean."""
    from serl_stack.data.demos import load_episodes
    from serl_stack.inference import load_bc_policy

    demos, bc, rollouts = tmp_path / "demos", tmp_path / "bc", tmp_path / "rollouts"
    assert cli.main(["record-demos", "--out", str(demos), "--episodes", "4"]) == 0
    assert cli.main(["train-bc", "--demos", str(demos), "--out", str(bc), "--steps", "20", "--episodes", "0",
                     "--set", "agent.hidden_dims=[32, 32]"]) == 0
    capsys.readouterr()
    assert cli.main(["record-demos", "--out", str(rollouts), "--episodes", "3", "--policy", str(bc), "--all",
                     "--seed", "5"]) == 0
    episodes = list(load_episodes(rollouts))
    kept = capsys.readouterr().out
    assert len(episodes) == 3 and f"kept all 3 episodes ({sum(e.success for e in episodes)} successful" in kept
    assert not all(e.success for e in episodes)  # 20 BC steps on 3 demos: it fails, and the failures are kept
    policy, _ = load_bc_policy(bc)
    first = episodes[0]
    obs0 = {k.split("/", 1)[0]: {} for k in first.observations}
    for k, v in first.observations.items():
        group, name = k.split("/", 1)
        obs0[group][name] = v[0]
    mean_action = policy.act(obs0, None, deterministic=True)
    assert not np.allclose(first.actions[0], mean_action, atol=1e-4)  # sampled around the mean, not the mean
    assert np.abs(first.actions[0] - mean_action).max() < 1.0
