"""`steering.*` in the actor: preflight refuses what does not fit by field name, the steered policy the actor builds
reranks the learned policy's proposals with the critic of another run, the mixers act with it, and a short `serl
train` runs steered end to end (real MuJoCo, real ZeroMQ, real orbax checkpoints)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_eval_cli import SETTINGS, _write_run

from serl_stack.config import ConfigError, dump, load

pytestmark = [pytest.mark.filterwarnings("ignore:.*infinity.*:UserWarning"),
              pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def critic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder as the learner leaves it (config.yaml + a checkpoint whose critic was updated)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    run = tmp_path_factory.mktemp("steer") / "critic"
    _write_run(run, load(None, SETTINGS))
    return run


def steering(critic: Path | str, *more: str) -> list[str]:
    return [*SETTINGS, "steering.enabled=true", f"steering.critic_run={critic}", *more]


def steered_setup(critic_run: Path, k: int) -> tuple[Any, Any, Any, int, Any]:
    """(config, the critic run's policy, an observation of its env, the action size, the policy the actor builds
    with `steering.k = k` and that run's critic)."""
    from serl_stack.envs import make_env
    from serl_stack.inference import load_policy
    from serl_stack.steering.acting import steered_policy

    cfg = load(None, steering(critic_run, f"steering.k={k}"))
    _, runner, _ = load_policy(critic_run)
    env = make_env(cfg.env)
    obs, _ = env.reset(seed=4)
    action_dim = int(np.prod(env.action_space.shape))
    env.close()
    return cfg, runner, obs, action_dim, steered_policy(cfg, runner, obs, action_dim)


def test_preflight_names_a_missing_critic_run_a_run_of_another_task_and_a_missing_bc_folder(
        critic_run: Path, tmp_path: Path) -> None:
    from serl_stack.steering.acting import check_steering

    check_steering(load(None, steering(critic_run)))  # fits: no error
    with pytest.raises(ConfigError, match=r"^steering.critic_run: .*nowhere is not a folder"):
        check_steering(load(None, steering(tmp_path / "nowhere")))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.yaml").write_text((critic_run / "config.yaml").read_text())
    with pytest.raises(ConfigError, match=r"^steering.critic_run: .* has no checkpoint"):
        check_steering(load(None, steering(empty)))
    other = tmp_path / "other"
    (other / "checkpoints" / "5").mkdir(parents=True)
    (other / "checkpoints" / "5" / "_CHECKPOINT_METADATA").write_text("{}")
    (other / "config.yaml").write_text(dump(load(None, ["env.id=FrankaPickCube-v0"])))
    with pytest.raises(ConfigError, match=r"trained on env.id 'FrankaPickCube-v0', expected this run's env.id"):
        check_steering(load(None, steering(other)))
    with pytest.raises(ConfigError, match=r"^steering.base_dir: .*nobc is not a folder"):
        check_steering(load(None, steering(critic_run, "steering.base=bc", f"steering.base_dir={tmp_path / 'nobc'}")))


def test_preflight_names_a_policy_server_that_is_not_there(critic_run: Path) -> None:
    from serl_stack.steering.acting import check_steering

    cfg = load(None, steering(critic_run, "steering.base=remote", "steering.remote_endpoint=tcp://127.0.0.1:9"))
    with pytest.raises(ConfigError, match=r"^steering.remote_endpoint: .*tcp://127.0.0.1:9.*no server reachable"):
        check_steering(cfg)


def test_the_actor_acts_with_the_best_of_k_proposals_by_the_critic(critic_run: Path) -> None:
    """What `steered_policy` builds picks, among the runner's K samples on the step key, the one the critic of the
    other run scores highest (min over 2 members)."""
    import jax

    from serl_stack.steering.acting import steered_policy
    from serl_stack.steering.guided import load_critic

    cfg, runner, obs, action_dim, steered = steered_setup(critic_run, 16)
    assert steered is not None and steered.base is runner and steered.k == 16
    critic, _ = load_critic(critic_run, cfg.agent, obs, action_dim)
    key = jax.random.PRNGKey(11)
    proposals = np.asarray(runner.sample_actions(obs, 16, key))[:, 0, :]
    best = proposals[int(np.argmax(critic.scores(obs, proposals)))]
    np.testing.assert_array_equal(steered.act(obs, key, False), best)
    assert len({p.tobytes() for p in proposals}) == 16  # there was a choice to make

    assert steered_policy(load(None, SETTINGS), runner, obs, action_dim) is None  # off by default


def test_the_mixers_learned_side_acts_through_the_steered_policy(critic_run: Path) -> None:
    """EpsMix (epsilon = alpha before any learned return) over 60 episodes: every learned step is the steered
    policy's pick on that step's key, every baseline step the baseline's action."""
    import jax

    from serl_stack.config import MixingConfig
    from serl_stack.mixing import LEARNED, MixedActing
    from serl_stack.safety.stepmix import make_mixer

    _, runner, obs, action_dim, steered = steered_setup(critic_run, 8)

    class Hold:
        def act(self, obs: object, key: object, deterministic: bool = False) -> np.ndarray:
            return np.zeros(action_dim, np.float32)

        def reset(self) -> None:
            pass

    mixer = make_mixer(MixingConfig(mode="epsmix", baseline_episodes=2), discount=0.99,
                       rng=np.random.default_rng(0))
    acting = MixedActing(mixer, Hold(), runner, learned=steered)
    kinds = []
    for episode in range(60):
        acting.begin_episode()
        key = jax.random.PRNGKey(episode)
        action = acting.act(obs, key)
        if acting.choices[-1] == LEARNED:
            np.testing.assert_array_equal(action, steered.act(obs, key, False))
        else:
            np.testing.assert_array_equal(action, np.zeros(action_dim, np.float32))
        kinds.append(acting.choices[-1])
        acting.record_reward(0.1)
        acting.end_episode()
    assert LEARNED in kinds and len(set(kinds)) == 2


@pytest.mark.slow
def test_serl_train_steered_by_another_runs_critic_runs_end_to_end(critic_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    sets = [f"--set={s}" for s in steering(critic_run, "steering.k=8")]
    done = subprocess.run(
        [sys.executable, "-m", "serl_stack.cli", "train", "--run-dir", str(run), *sets,
         "--set=train.total_env_steps=300", "--set=train.start_steps=100", "--set=train.eval_episodes=3"],
        cwd=ROOT, env={**os.environ, "MUJOCO_GL": "egl"}, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = (run / "actor-0.log").read_text()
    assert f"steering: each step 8 proposals of the learned policy, the argmax of the critic of {critic_run}" in log
    result = json.loads((run / "eval-actor-0.json").read_text())
    assert result["episodes"] == 3 and result["env_steps"] == 300
