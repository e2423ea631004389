"""`serl train-critic` (serl_stack/train_critic.py): the folder it writes is one `steering.guided.load_critic` reads
and scores actions with (the target critic, the run's observation keys), `--resume` continues a run to the same
parameters as an uninterrupted one, bad input is refused naming the option, and (slow) Ctrl-C saves a checkpoint a
resumed run finishes from, and a trained critic ranks a successful episode's actions above a failed one's.

Data: reach demonstrations recorded with `serl record-demos` (successes) and rollouts of the real reach env with
the scripted action reversed (failures), saved with `data.demos.save_episode`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from serl_stack import cli
from serl_stack.agents import calql
from serl_stack.checkpoint import Checkpointer
from serl_stack.config import load, to_dict
from serl_stack.data.demos import Episode, EpisodeBuilder, load_episodes, save_episode
from serl_stack.data.obs import flatten_keys, to_vector
from serl_stack.envs import make_env
from serl_stack.envs.scripted import make_scripted
from serl_stack.rundir import read_run_config
from serl_stack.runlog import read_scalars
from serl_stack.steering.guided import load_critic
from serl_stack.train_critic import CRITIC_OPTIONS, checkpoint_item

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--hidden-dims", "32,32", "--batch-size", "32", "--log-every", "10"]


def _rollouts(out: Path, episodes: int, first_seed: int, steps: int = 15) -> Path:
    """Failed reach episodes: the real env driven away from its goal by the reversed scripted action, cut by a
    `steps` time limit."""
    cfg = load(None, [f"env.max_episode_steps={steps}"])
    env, policy, builder = make_env(cfg.env), make_scripted(cfg.env), EpisodeBuilder()
    try:
        for i in range(episodes):
            obs, info = env.reset(seed=first_seed + i)
            builder.start(obs)
            done = False
            while not done:
                action = -policy(obs)
                obs, reward, terminated, truncated, info = env.step(action)
                builder.add(action, reward, obs, terminated, truncated)
                done = terminated or truncated
            save_episode(out, builder.build(success=bool(info.get("success", False))), env_id=cfg.env.id,
                         config=to_dict(cfg))
    finally:
        env.close()
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(successes, failures) of FrankaReach-v0."""
    root = tmp_path_factory.mktemp("episodes")
    assert cli.main(["record-demos", "--out", str(root / "demos"), "--episodes", "3", "--seed", "3"]) == 0
    fails = _rollouts(root / "fails", 3, first_seed=100)
    assert not any(e.success for e in load_episodes(fails))
    return root / "demos", fails


def _train(out: Path, data: tuple[Path, Path], *argv: str) -> int:
    return cli.main(["train-critic", "--episodes", str(data[0]), "--episodes", str(data[1]), "--out", str(out),
                     *SMALL, *argv])


@pytest.fixture(scope="module")
def uninterrupted(data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("critics") / "whole"
    assert _train(out, data, "--num-updates", "40", "--checkpoint-every", "20") == 0
    return out


def _example(folder: Path) -> tuple[dict, int]:
    cfg = read_run_config(folder)
    env = make_env(cfg.env)
    try:
        obs, _ = env.reset(seed=0)
        return obs, int(np.prod(env.action_space.shape))
    finally:
        env.close()


def _state(folder: Path, step: int | None = None) -> calql.CalQLState:
    """The whole Cal-QL state of a checkpoint (the `calql` subtree a resumed run restores)."""
    summary = json.loads((folder / "critic.json").read_text())
    cfg = calql.CalQLConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in summary["calql"].items()})
    template = calql.init(0, summary["obs_dim"], summary["action_dim"], cfg)
    checkpoints = Checkpointer(folder / "checkpoints")
    try:
        restored, _ = checkpoints.restore(checkpoint_item(template), step)
    finally:
        checkpoints.close()
    return restored["calql"]


def _leaves_equal(a: object, b: object) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_tau_sets_the_target_critics_polyak_rate(data: tuple[Path, Path], uninterrupted: Path,
                                               tmp_path: Path) -> None:
    """`--tau 1` copies the critic into its target after every update; the default (0.005) keeps them apart."""
    out = tmp_path / "tau1"
    assert _train(out, data, "--num-updates", "40", "--checkpoint-every", "20", "--tau", "1") == 0
    assert json.loads((out / "critic.json").read_text())["calql"]["tau"] == 1.0
    state = _state(out)
    assert _leaves_equal(state.critic.params, state.target_critic.params)
    default = _state(uninterrupted)
    assert json.loads((uninterrupted / "critic.json").read_text())["calql"]["tau"] == 0.005
    assert not _leaves_equal(default.critic.params, default.target_critic.params)


# ------------------------------------------------------------------------------------------ the folder


def test_the_folder_is_a_critic_run_that_load_critic_scores_actions_with(uninterrupted: Path,
                                                                         data: tuple[Path, Path]) -> None:
    out = uninterrupted
    summary = json.loads((out / "critic.json").read_text())
    assert summary["kind"] == "serl_stack.calql_critic" and summary["env_id"] == "FrankaReach-v0"
    assert (summary["episodes"], summary["successes"], summary["failures"]) == (6, 3, 3)
    assert summary["transitions"] == sum(len(e) for d in data for e in load_episodes(d))
    assert summary["updates_done"] == summary["num_updates"] == 40 and summary["status"] == "done"
    assert [s["path"] for s in summary["sources"]] == [str(d.resolve()) for d in data]
    assert {"td_loss", "cql_gap", "critic_loss"} <= summary["metrics"].keys() and summary["train_seconds"] > 0
    assert sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == [20, 40]

    cfg = read_run_config(out)  # the agent section builds the Cal-QL critic, the obs keys are the config's
    assert cfg.agent.hidden_dims == (32, 32) and cfg.agent.num_critics == 2 and cfg.agent.obs_keys == ()
    obs, action_dim = _example(out)
    scorer, step = load_critic(out, cfg.agent, obs, action_dim)
    assert step == 40 and scorer.keys == tuple(summary["obs_keys"])

    # It scores with the target critic and the run's standardization: the values of `calql.q_values`.
    state = _state(out)
    actions = np.random.default_rng(0).uniform(-1, 1, (5, action_dim)).astype(np.float32)
    x = to_vector(flatten_keys(obs), scorer.keys)
    expected = np.asarray(calql.q_values(state, np.broadcast_to(x, (5, x.shape[0])), actions))
    np.testing.assert_allclose(scorer.q_values(obs, actions), expected, rtol=1e-5, atol=1e-6)
    assert _leaves_equal(scorer.params["critic"], state.target_critic.params)  # V-GPS scores with the target
    assert not _leaves_equal(scorer.params["critic"], state.critic.params)
    np.testing.assert_allclose(state.obs_norm["mean"],
                               np.concatenate([to_vector(e.observations, scorer.keys, batch_dims=1)[:-1]
                                               for d in data for e in load_episodes(d)]).mean(axis=0), rtol=1e-5)
    assert scorer.scores(obs, actions).shape == (5,)

    scalars = read_scalars(next((out / "tb" / "critic").glob("events.out.tfevents.*")))
    td = [(step, value) for tag, step, value in scalars if tag == "critic/td_loss"]
    assert [s for s, _ in td] == [10, 20, 30, 40] and td[-1][1] == pytest.approx(summary["metrics"]["td_loss"])
    assert any(tag == "critic/updates_per_s" for tag, _, _ in scalars)


def test_resume_continues_to_the_parameters_of_an_uninterrupted_run(
    uninterrupted: Path, data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "parts"
    assert _train(out, data, "--num-updates", "20", "--checkpoint-every", "20") == 0
    capsys.readouterr()
    # The run's own config, data, seed and settings; only the budget grows. No --episodes: the run's sources.
    assert cli.main(["train-critic", "--out", str(out), "--resume", "--num-updates", "40"]) == 0
    printed = capsys.readouterr().out
    assert "resumed from checkpoint 20" in printed and "30/40 updates" in printed and "10/40" not in printed
    assert _leaves_equal(_state(out), _state(uninterrupted))
    summary = json.loads((out / "critic.json").read_text())
    assert summary["updates_done"] == 40 and summary["num_updates"] == 40 and summary["status"] == "done"
    assert summary["calql"]["num_updates"] == 40

    # What it refuses: settings or data that are not the run's, a smaller budget than done.
    def refused(*argv: str) -> str:
        assert cli.main(["train-critic", "--out", str(out), "--resume", *argv]) == 2
        return capsys.readouterr().err

    assert "--batch-size: got 64, expected the resumed run's 32" in refused("--batch-size", "64")
    assert "--seed: got 9, expected the resumed run's 0" in refused("--seed", "9")
    assert "--num-updates: got 30, expected >= 40, the updates the run has done" in refused("--num-updates", "30")
    assert "not the ones the resumed run trained on" in refused("--episodes", str(data[0]), "--episodes",
                                                                str(data[1]), "--episodes", str(data[1]))
    assert ("env.id: got 'FrankaPickCube-v0', expected 'FrankaReach-v0', the value of the run being resumed"
            in refused("--set", "env.id=FrankaPickCube-v0"))


def test_bad_input_is_refused_naming_the_option(data: tuple[Path, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    def err(*argv: str) -> str:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        assert cli.main(["train-critic", "--out", str(out), *SMALL, "--num-updates", "10", *argv]) == 2
        assert not (out / "checkpoints").exists()
        return capsys.readouterr().err.strip()

    both = ("--episodes", str(data[0]), "--episodes", str(data[1]))
    missing = err("--episodes", str(tmp_path / "nope"), "--episodes", str(data[1]))
    assert missing.startswith("serl train-critic: --episodes: demo directory not found:")
    assert "--episodes: none given" in err()
    only = err("--episodes", str(data[0]))
    assert "got 3 successful and 0 failed episodes, expected at least one of each: the critic must see both" in only

    def copy(dst: Path, env_id: str = "FrankaReach-v0", obs_fn=None, actions_fn=None) -> Path:
        for ep in load_episodes(data[1]):
            obs = obs_fn(dict(ep.observations)) if obs_fn else ep.observations
            actions = actions_fn(ep.actions) if actions_fn else ep.actions
            save_episode(dst, Episode(obs, actions, ep.rewards, ep.terminated, ep.truncated, False), env_id=env_id)
        return dst

    other = copy(tmp_path / "pick", env_id="FrankaPickCube-v0")
    assert (f"--episodes: {other} holds episodes of env.id 'FrankaPickCube-v0', expected the config's env.id "
            "'FrankaReach-v0'" in err("--episodes", str(data[0]), "--episodes", str(other)))
    short = copy(tmp_path / "short", obs_fn=lambda o: {**o, "state/tcp_pose": o["state/tcp_pose"][:, :6]})
    assert "observation 'state/tcp_pose' has shape [6], expected shape [7]" in err("--episodes", str(data[0]),
                                                                                 "--episodes", str(short))
    six = copy(tmp_path / "six", actions_fn=lambda a: a[:, :6])
    assert "actions have shape [6], expected [7]" in err("--episodes", str(data[0]), "--episodes", str(six))

    def poisoned(a: np.ndarray) -> np.ndarray:
        a = a.copy()
        a[2, 0] = np.nan
        return a

    nan = copy(tmp_path / "nan", actions_fn=poisoned)
    assert (f"--episodes: {nan}: episode 0 has non-finite observations or actions"
            in err("--episodes", str(data[0]), "--episodes", str(nan)))
    big = copy(tmp_path / "big", actions_fn=lambda a: 3 * a)
    assert "expected actions in [-1, 1]" in err("--episodes", str(data[0]), "--episodes", str(big))
    assert "--batch-size: got 0, expected >= 1" in err(*both, "--batch-size", "0")
    assert "--checkpoint-every: got 0, expected >= 1" in err(*both, "--checkpoint-every", "0")
    assert "--tau: got 0.0, expected in (0, 1]" in err(*both, "--tau", "0")
    assert "agent.image_keys: got ['images/front'], expected []" in err(*both, "--set",
                                                                       "agent.image_keys=[images/front]")

    taken = tmp_path / "taken"
    (taken / "x").mkdir(parents=True)
    assert f"--out: {taken} already exists; expected a new folder (or --resume" in err(*both, "--out", str(taken))
    assert cli.main(["train-critic", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "does not exist; --resume continues an interrupted `serl train-critic` run" in capsys.readouterr().err


def test_help_states_the_defaults_of_calql_config() -> None:
    """The parser cannot import JAX, so its help carries the defaults as text; they must be `CalQLConfig`'s."""
    defaults = calql.CalQLConfig()
    for name, _, text in CRITIC_OPTIONS:
        assert f"(default {getattr(defaults, name.replace('-', '_'))}" in text, (name, text)
    helps = {a.dest: a.help for a in _subparser("train-critic")._actions}
    assert f"(default {','.join(map(str, defaults.hidden_dims))})" in helps["hidden_dims"]


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[name]


# ------------------------------------------------------------------------------------------ slow


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_that_resume_finishes_as_one_run(data: tuple[Path, Path], tmp_path: Path) -> None:
    """A real SIGINT to a `serl train-critic` process: exit 130, a checkpoint at the last finished chunk and the
    command to resume in the message; resumed, it ends where an uninterrupted run of the same budget ends."""
    out = tmp_path / "cut"
    argv = [sys.executable, "-m", "serl_stack.cli", "train-critic", "--episodes", str(data[0]), "--episodes",
            str(data[1]), "--out", str(out), *SMALL, "--num-updates", "1000000"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MUJOCO_GL": "egl"})
    try:
        deadline = time.monotonic() + 120
        lines = []
        while time.monotonic() < deadline:  # wait for a few chunks to finish
            line = proc.stdout.readline()
            lines.append(line)
            if "30/1000000 updates" in line:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (lines, err)
    summary = json.loads((out / "critic.json").read_text())
    done = summary["updates_done"]
    assert summary["status"] == "interrupted" and done >= 30 and done % 10 == 0
    assert f"interrupted after {done} of 1000000 updates" in err and f"--out {out} --resume" in err
    assert _state(out, done).critic.step == done

    total = str(done + 20)
    assert cli.main(["train-critic", "--out", str(out), "--resume", "--num-updates", total]) == 0
    whole = tmp_path / "whole"
    assert _train(whole, data, "--num-updates", total) == 0
    assert _leaves_equal(_state(out), _state(whole))


@pytest.mark.slow
def test_a_short_run_ranks_successful_actions_above_failed_ones(tmp_path: Path) -> None:
    """Six successful and six failed reach episodes, 3,000 updates of a 64x64 critic: every successful episode's
    mean Q over its transitions is above every failed episode's (the failures' value is -1 / (1 - 0.98) = -50)."""
    demos, fails = tmp_path / "demos", _rollouts(tmp_path / "fails", 6, first_seed=200)
    assert cli.main(["record-demos", "--out", str(demos), "--episodes", "6", "--seed", "11"]) == 0
    out = tmp_path / "critic"
    assert cli.main(["train-critic", "--episodes", str(demos), "--episodes", str(fails), "--out", str(out),
                     "--hidden-dims", "64,64", "--batch-size", "64", "--num-updates", "3000", "--log-every",
                     "1000"]) == 0
    cfg = read_run_config(out)
    obs, action_dim = _example(out)
    scorer, _ = load_critic(out, cfg.agent, obs, action_dim)

    def mean_q(episode: Episode) -> float:
        steps = [({k: v[t] for k, v in episode.observations.items()}, episode.actions[t]) for t in range(len(episode))]
        return float(np.mean([scorer.scores(o, a[None])[0] for o, a in steps]))

    won = [mean_q(e) for e in load_episodes(demos)]
    lost = [mean_q(e) for e in load_episodes(fails)]
    assert min(won) > max(lost), (won, lost)
