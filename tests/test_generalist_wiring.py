"""The generalist stand-in as a product base policy: `steering.base: generalist` (config rule, preflight's folder
check without JAX, the actor's steered policy), `serl record-demos --policy <generalist folder>` (chunks reset at
each episode) and `serl train-generalist` from the command line. The model itself is tests/test_generalist.py's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serl_stack.config import ConfigError, load
from serl_stack.rundir import GENERALIST_KIND, GENERALIST_SUMMARY, check_generalist_folder

ROOT = Path(__file__).resolve().parents[1]


def test_a_generalist_base_needs_its_folder() -> None:
    with pytest.raises(ConfigError, match=r"steering.base_dir: got '', expected a `serl train-generalist --out`"):
        load(None, ["steering.enabled=true", "steering.critic_run=r", "steering.base=generalist"])
    cfg = load(None, ["steering.enabled=true", "steering.critic_run=r", "steering.base=generalist",
                      "steering.base_dir=g", "steering.online=true", "replay.demo_dir=d"])
    assert cfg.steering.base == "generalist" and cfg.steering.online  # a base the learner can sample


def _summary(folder: Path, **task_info: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / GENERALIST_SUMMARY).write_text(json.dumps({"kind": GENERALIST_KIND, "task_info": task_info}))


def test_the_folder_check_names_the_field_and_the_tasks_it_holds(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"steering.base_dir: .*not found; expected the --out folder"):
        check_generalist_folder(str(tmp_path / "nowhere"), "FrankaReach-v0", "steering.base_dir")
    (tmp_path / "bc").mkdir()
    (tmp_path / "bc" / GENERALIST_SUMMARY).write_text(json.dumps({"kind": "serl_stack.bc"}))
    with pytest.raises(ConfigError, match=r"kind 'serl_stack.bc'; expected a 'serl_stack.generalist'"):
        check_generalist_folder(str(tmp_path / "bc"), "FrankaReach-v0", "steering.base_dir")
    _summary(tmp_path / "g", reach={"env_id": "FrankaReach-v0", "obs_keys": ["a"], "action_dim": 7})
    with pytest.raises(ConfigError, match=r"not trained on env.id 'FrankaPickCube-v0'; its tasks: reach "
                                          r"\(FrankaReach-v0\)"):
        check_generalist_folder(str(tmp_path / "g"), "FrankaPickCube-v0", "steering.base_dir")
    assert check_generalist_folder(str(tmp_path / "g"), "FrankaReach-v0", "x")["obs_keys"] == ["a"]


def test_the_folder_check_loads_no_jax(tmp_path: Path) -> None:
    """Preflight runs in `serl train`'s parent process, which must not pay for JAX."""
    _summary(tmp_path / "g", reach={"env_id": "FrankaReach-v0"})
    code = ("import sys; from serl_stack.rundir import check_generalist_folder as c; "
            f"c({str(tmp_path / 'g')!r}, 'FrankaReach-v0', 'f'); print('jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


@pytest.fixture(scope="module")
def generalist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "generalist"
    env = {**os.environ, "MUJOCO_GL": "egl"}
    subprocess.run([sys.executable, "-m", "serl_stack.cli", "train-generalist", "--out", str(out), "--tasks", "reach",
                    "--episodes-per-task", "6", "--steps", "30", "--eval-episodes", "0"],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    return out


@pytest.mark.slow
def test_record_demos_samples_a_generalist_and_keeps_failures(generalist: Path, tmp_path: Path) -> None:
    from serl_stack.data.demos import load_episodes

    out = tmp_path / "rollouts"
    env = {**os.environ, "MUJOCO_GL": "egl"}
    proc = subprocess.run([sys.executable, "-m", "serl_stack.cli", "record-demos", "--config", "configs/sim_reach.yaml",
                           "--policy", str(generalist), "--all", "--episodes", "2", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    episodes = list(load_episodes(out))
    assert len(episodes) == 2
    for ep in episodes:
        assert np.all(np.abs(ep.actions) <= 1.0)


@pytest.mark.slow
def test_the_actor_steers_a_generalist_base(generalist: Path, tmp_path: Path) -> None:
    """`steered_policy` with `steering.base: generalist`: K chunks of the generalist on this env's task, reranked."""
    import jax

    from serl_stack.envs import make_env
    from serl_stack.steering.acting import check_steering, steered_policy

    critic = tmp_path / "critic"
    env_vars = {**os.environ, "MUJOCO_GL": "egl"}
    demos = generalist / "demos" / "reach"
    subprocess.run([sys.executable, "-m", "serl_stack.cli", "train-critic", "--config", "configs/sim_reach.yaml",
                    "--episodes", str(demos), "--out", str(critic), "--num-updates", "20"],
                   cwd=ROOT, env=env_vars, check=True, capture_output=True, timeout=600)
    cfg = load(ROOT / "configs/sim_reach.yaml", ["steering.enabled=true", f"steering.critic_run={critic}",
                                                  "steering.base=generalist", f"steering.base_dir={generalist}",
                                                  "steering.k=8"])
    check_steering(cfg)
    env = make_env(cfg.env)
    obs, _ = env.reset(seed=3)
    policy = steered_policy(cfg, None, obs, int(env.action_space.shape[0]))
    assert policy is not None and policy.chunk == policy.base.chunk >= 1
    action = policy.act(obs, jax.random.PRNGKey(0), True)
    assert action.shape == env.action_space.shape and policy.last_scores.shape == (8,)
    env.close()
    wrong = load(ROOT / "configs/sim_reach.yaml", ["env.id=FrankaPickCube-v0", "steering.enabled=true",
                                                    f"steering.critic_run={critic}", "steering.base=generalist",
                                                    f"steering.base_dir={generalist}"])
    with pytest.raises(ConfigError, match="steering"):
        check_steering(wrong)
