"""Online fine-tuning of the steering critic (`steering.online`, issue 19): the steered TD target, the V-GPS labels
of the actors' episodes, the learner's updater over a real `serl train-critic` critic and `serl train-bc` base, an
exact resume across processes, the config and preflight refusals, and (slow) a `serl train` run end to end with a
resume (real MuJoCo, real ZeroMQ, real orbax checkpoints).

The fixture records reach demonstrations with `serl record-demos` (successes) and failures (the scripted action
reversed, `test_train_critic._rollouts`), then trains a tiny BC base and a tiny Cal-QL critic on them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from serl_stack import cli
from serl_stack.agents import calql
from serl_stack.config import ConfigError, load
from serl_stack.data.labels import label_episode
from serl_stack.data.obs import flatten_keys, to_vector

pytestmark = [pytest.mark.filterwarnings("ignore:.*infinity.*:UserWarning"),
              pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")]
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "MUJOCO_GL": "egl"}


@dataclass(frozen=True)
class Bundle:
    demos: Path
    fails: Path
    bc: Path
    critic: Path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """Reach demonstrations and failures, a BC base cloned on the demonstrations and a Cal-QL critic trained on
    both (tiny networks, small budgets: the plumbing is under test, not the critic's quality)."""
    from test_train_critic import _rollouts

    os.environ.setdefault("MUJOCO_GL", "egl")
    root = tmp_path_factory.mktemp("online")
    demos, bc, critic = root / "demos", root / "bc", root / "critic"
    assert cli.main(["record-demos", "--out", str(demos), "--episodes", "3", "--seed", "3"]) == 0
    fails = _rollouts(root / "fails", 3, first_seed=100)
    assert cli.main(["train-bc", "--demos", str(demos), "--out", str(bc), "--set", "agent.hidden_dims=[32, 32]",
                     "--steps", "50", "--episodes", "0"]) == 0
    assert cli.main(["train-critic", "--episodes", str(demos), "--episodes", str(fails), "--out", str(critic),
                     "--hidden-dims", "32,32", "--batch-size", "32", "--log-every", "10", "--num-updates", "20"]) == 0
    return Bundle(demos, fails, bc, critic)


def online(b: Bundle, *more: str) -> list[str]:
    return ["steering.enabled=true", f"steering.critic_run={b.critic}", "steering.base=bc", f"steering.base_dir={b.bc}",
            "steering.online=true", f"replay.demo_dir={b.demos}", "steering.k=4", *more]


# ------------------------------------------------------------------------------------------- the TD target


def _candidates(p: jax.Array, obs: jax.Array, key: jax.Array, k: int) -> jax.Array:
    """A 'base policy' whose k proposals at every s' are the rows of `p` (known actions to compute with)."""
    del key
    return jnp.broadcast_to(p[:k], (obs.shape[0], k, p.shape[-1]))


def test_the_steered_target_is_the_min_of_two_target_critics_at_the_best_of_k() -> None:
    """One transition at a time, so the reported mean target is that transition's: r + discount * mask * max_j
    min(Q'_1, Q'_2)(s', a_j) over the K candidates, Q' the target critics (the critic the actors steer with)."""
    cfg = calql.CalQLConfig(hidden_dims=(16, 16), batch_size=1, warmup_steps=0)
    state = calql.init(0, 3, 2, cfg)
    # Target critics that differ from the online ones, so the test sees which of the two the target uses.
    leaves, tree = jax.tree.flatten(state.target_critic.params)
    noise = jax.random.split(jax.random.PRNGKey(5), len(leaves))
    moved = [x + 0.3 * jax.random.normal(n, x.shape) for x, n in zip(leaves, noise, strict=True)]
    state = state.replace(target_critic=state.target_critic.replace(params=jax.tree.unflatten(tree, moved)))
    rng = np.random.default_rng(1)
    candidates = jnp.asarray(rng.uniform(-1, 1, (6, 2)), jnp.float32)
    picked = set()
    for i in range(4):
        next_obs = rng.normal(size=(1, 3)).astype(np.float32)
        reward, mask = float(-1.0 + (i == 3)), float(i != 2)  # a terminal step (mask 0) and a success label (0)
        batch = {"observations": rng.normal(size=(1, 3)).astype(np.float32),
                 "actions": rng.uniform(-1, 1, (1, 2)).astype(np.float32), "rewards": np.float32([reward]),
                 "masks": np.float32([mask]), "next_observations": next_obs, "mc_returns": np.float32([-5.0])}
        _, info = calql.update_steered(state, batch, jax.random.PRNGKey(i), _candidates, candidates, 6)
        q = np.asarray(calql.q_values(state, np.repeat(next_obs, 6, axis=0), np.asarray(candidates)))  # (2, 6)
        assert q.shape == (2, 6)
        best = int(np.argmax(q.min(axis=0)))
        picked.add(best)
        expected = reward + cfg.discount * mask * q.min(axis=0)[best]
        np.testing.assert_allclose(float(info["target_q"]), expected, rtol=1e-5, atol=1e-6)
        online_q = np.asarray(calql.q_values(state, np.repeat(next_obs, 6, axis=0), np.asarray(candidates),
                                             target=False))
        if i != 2:  # with the online critics (not the target the actors steer with) the target would differ
            assert abs(reward + cfg.discount * online_q.min(axis=0).max() - expected) > 1e-4
    assert len(picked) >= 1


def test_the_steered_update_is_the_update_with_the_base_samples_drawn_from_its_key(bundle: Bundle) -> None:
    """`update_steered` = `update` on the batch plus `next_actions`: k draws of the BC base's `vector_sampler` at
    s' with the first half of the split key (up to float32 rounding: the fused program and the two separate ones
    may round the last bit differently on some CPUs; the other half of the key moves parameters by ~1e-4)."""
    from serl_stack.inference import load_bc_policy

    base, summary = load_bc_policy(bundle.bc)
    params, fn = base.vector_sampler()
    d = int(summary["obs_dim"])
    state = calql.init(0, d, base.action_dim, calql.CalQLConfig(hidden_dims=(16, 16), batch_size=8))
    rng = np.random.default_rng(2)
    batch = {"observations": rng.normal(size=(8, d)), "actions": rng.uniform(-1, 1, (8, base.action_dim)),
             "rewards": -np.ones(8), "masks": np.ones(8), "next_observations": rng.normal(size=(8, d)),
             "mc_returns": -np.ones(8)}
    batch = {k: np.asarray(v, np.float32) for k, v in batch.items()}
    key = jax.random.PRNGKey(9)
    steered, _ = calql.update_steered(state, batch, key, fn, params, 5)
    sample_key, update_key = jax.random.split(key)
    next_actions = fn(params, jnp.asarray(batch["next_observations"]), sample_key, 5)
    assert next_actions.shape == (8, 5, base.action_dim)
    by_hand, _ = calql.update(state, {**batch, "next_actions": next_actions}, update_key)
    for a, b in zip(jax.tree.leaves(steered), jax.tree.leaves(by_hand), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert fn is base.vector_sampler()[1]  # one function object: a jit keyed on it compiles once


def test_the_vector_sampler_draws_what_sample_actions_draws(bundle: Bundle) -> None:
    from serl_stack.inference import load_bc_policy

    base, _ = load_bc_policy(bundle.bc)
    assert base.obs_keys == base.keys
    episode = next(iter(_episodes(bundle.demos)))
    obs = {k: v[4] for k, v in episode.observations.items()}
    params, fn = base.vector_sampler()
    key = jax.random.PRNGKey(3)
    one = np.asarray(base.sample_actions(obs, 7, key))[:, 0, :]
    vectors = np.stack([base.observe(obs), base.observe({k: v[9] for k, v in episode.observations.items()})])
    sample = jax.jit(fn, static_argnums=3)
    np.testing.assert_array_equal(np.asarray(sample(params, vectors[:1], key, 7))[0], one)  # the same draw
    batch = np.asarray(sample(params, vectors, key, 7))
    assert batch.shape == (2, 7, base.action_dim)
    np.testing.assert_allclose(batch[0], one, atol=1e-6)  # (a batch of 2 may round the matmuls differently)
    assert not np.array_equal(batch[0], batch[1])  # each row is its own observation's draw
    assert np.all(np.abs(batch) <= 1.0)


# ------------------------------------------------------------------------------------------- the updater


def _episodes(folder: Path) -> Any:
    from serl_stack.data.demos import load_episodes

    return list(load_episodes(folder))


def _feed(updater: Any, actor: str, episode_id: int, episode: Any, success: bool, upto: int | None = None) -> None:
    """An actor's episode (a recorded `Episode`) into the updater as the learner feeds it, up to `upto` steps."""
    n = len(episode) if upto is None else upto
    for t in range(n):
        obs = flatten_keys({k: v[t] for k, v in episode.observations.items()})
        nxt = flatten_keys({k: v[t + 1] for k, v in episode.observations.items()})
        last = t == len(episode) - 1
        updater.insert(obs, episode.actions[t], nxt, bool(episode.terminated[t]), last and not episode.terminated[t],
                       actor, episode_id, success and last)


def _updater(b: Bundle, *more: str) -> Any:
    from serl_stack.online_critic import OnlineCriticUpdater

    cfg = load(None, online(b, *more))
    first = _episodes(b.demos)[0]
    obs = flatten_keys({k: v[0] for k, v in first.observations.items()})
    return OnlineCriticUpdater(cfg, obs, first.actions[0])


def test_an_online_episode_is_labelled_as_labels_py_labels_it(bundle: Bundle) -> None:
    """Two actors' episodes arrive interleaved; each joins the online data only at its end, with `label_episode`'s
    rewards, masks and MC returns (the critic's discount); an episode an actor restarted before its end is dropped."""
    updater = _updater(bundle)
    win, lose = _episodes(bundle.demos)[0], _episodes(bundle.fails)[0]
    assert win.success and not lose.success and not lose.terminated[-1]
    _feed(updater, "actor-1", 0, lose, False, upto=5)  # cut short: actor-1 restarts with episode 1
    _feed(updater, "actor-0", 0, win, True, upto=len(win) - 1)
    assert int(updater.online.size) == 0  # nothing ends yet: nothing labelled
    _feed(updater, "actor-1", 1, lose, False)
    assert updater.episodes_dropped == 1 and int(updater.online.size) == len(lose)
    last = len(win) - 1
    obs = flatten_keys({k: v[last] for k, v in win.observations.items()})
    nxt = flatten_keys({k: v[last + 1] for k, v in win.observations.items()})
    updater.insert(obs, win.actions[last], nxt, bool(win.terminated[last]), True, "actor-0", 0, True)
    assert updater.episodes_labelled == 2 and int(updater.online.size) == len(lose) + len(win)

    c = updater.calql_cfg
    rows = {k: np.asarray(v[:int(updater.online.size)]) for k, v in updater.online.data.items()}
    start = 0
    for episode, success in ((lose, False), (win, True)):
        n = len(episode)
        want = label_episode(n, success, episode.terminated, c.discount, c.num_success_steps)
        vec = to_vector(episode.observations, updater.keys, batch_dims=1)
        for k in ("rewards", "masks", "mc_returns"):
            np.testing.assert_array_equal(rows[k][start:start + n], want[k], err_msg=k)
        np.testing.assert_array_equal(rows["observations"][start:start + n], vec[:-1])
        np.testing.assert_array_equal(rows["next_observations"][start:start + n], vec[1:])
        np.testing.assert_array_equal(rows["actions"][start:start + n], episode.actions)
        start += n
    assert rows["rewards"][-c.num_success_steps:].tolist() == [0.0] * c.num_success_steps  # the success window
    assert set(rows["rewards"][:len(lose)].tolist()) == {-1.0}


def test_updates_move_the_critic_and_the_actors_scorer_adopts_each_broadcast(bundle: Bundle) -> None:
    """The updater starts from the critic run's checkpoint; its updates change the critic; what it broadcasts loads
    into the scorer the actor builds from that same run (newer versions only), and the scorer's values change."""
    from flax import serialization

    from serl_stack.rundir import read_run_config
    from serl_stack.steering.guided import load_critic

    updater = _updater(bundle)
    _feed(updater, "actor-0", 0, _episodes(bundle.fails)[1], False)
    updater.init_agent()
    initial = jax.device_get(updater.agent.target_critic.params)
    first = _episodes(bundle.demos)[0]
    example = {k: v[0] for k, v in first.observations.items()}
    scorer, step = load_critic(bundle.critic, read_run_config(bundle.critic).agent, example, first.actions.shape[1])
    assert step == updater.critic_step
    for a, b in zip(jax.tree.leaves(initial), jax.tree.leaves(scorer.params["critic"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the actor starts from the same critic
    actions = np.random.default_rng(0).uniform(-1, 1, (6, first.actions.shape[1])).astype(np.float32)
    before = scorer.q_values(example, actions)
    infos = [updater.step() for _ in range(5)]
    assert updater.updates == 5 and int(infos[-1]["online_transitions"]) == len(_episodes(bundle.fails)[1])
    assert all(np.isfinite(float(i["critic_loss"])) for i in infos)
    after = jax.device_get(updater.agent.target_critic.params)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(initial), jax.tree.leaves(after),
                                                         strict=True))
    wire = jax.tree.map(np.asarray, serialization.to_state_dict(updater.broadcast_params()))
    assert sorted(wire) == ["critic", "obs_norm"]
    assert scorer.load(1, wire) and scorer.version == 1 and scorer.adopted == 1
    assert not scorer.load(1, wire) and scorer.adopted == 1  # the same version again: ignored
    assert not np.allclose(scorer.q_values(example, actions), before)


def test_the_target_draws_target_k_base_samples_at_s_prime(bundle: Bundle) -> None:
    """`steering.target_k` sizes the TD target (the actors still draw `steering.k`): the updater's step is the
    mixed-batch steered update with that many samples, bit for bit, and not the one with `k`."""
    from serl_stack.online_critic import _online_step

    updater = _updater(bundle, "steering.target_k=2")
    assert (updater.target_k, updater.cfg.steering.k) == (2, 4)
    assert _updater(bundle).target_k == 4  # 0: as many as the actors draw
    _feed(updater, "actor-0", 0, _episodes(bundle.fails)[1], False)
    updater.init_agent()
    before = updater.agent
    key = jax.random.fold_in(updater._base_key, 0)
    by_k = {k: _online_step(before, updater.online, updater.offline, updater._base_params, key, updater._sampler, k,
                            updater.calql_cfg.batch_size, updater.num_offline)[0] for k in (2, 4)}
    updater.step()
    for a, b in zip(jax.tree.leaves(updater.agent), jax.tree.leaves(by_k[2]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(by_k[2].critic.params), jax.tree.leaves(by_k[4].critic.params),
                               strict=True))


def worker(mode: str, paths: list[str], checkpoint_dir: str, n: int, m: int, out: str) -> None:
    """In a fresh process: `first` = N updates + checkpoint; `second` = restore + M; `whole` = N + M, each over the
    same online episodes fed the same way (what a learner rebuilds from its transition log)."""
    from serl_stack.checkpoint import Checkpointer

    b = Bundle(*(Path(p) for p in paths))
    updater = _updater(b)
    for i, episode in enumerate(_episodes(b.fails) + _episodes(b.demos)):
        _feed(updater, f"actor-{i % 2}", i, episode, bool(episode.success))
    ckpt = Checkpointer(checkpoint_dir)
    if mode == "second":
        item, meta = ckpt.restore(updater.checkpoint_template())
        updater.restore(item, meta)
        steps = m
    else:
        updater.init_agent()
        steps = n if mode == "first" else n + m
    for _ in range(steps):
        updater.step()
    if mode == "first":
        state, policy = updater.checkpoint_items()
        assert policy is None
        ckpt.save(updater.updates, state, updater.checkpoint_meta())
    ckpt.close()
    leaves = jax.tree.leaves(jax.device_get(updater.agent))
    np.savez(out, updates=updater.updates, **{f"leaf{i}": np.asarray(x) for i, x in enumerate(leaves)})


def _run_worker(tmp_path: Path, b: Bundle, mode: str, n: int, m: int) -> dict[str, np.ndarray]:
    out = tmp_path / f"{mode}.npz"
    paths = [str(b.demos), str(b.fails), str(b.bc), str(b.critic)]
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_steering_online as t; "
            f"t.worker({mode!r}, {paths!r}, {str(tmp_path / 'ckpt')!r}, {n}, {m}, {str(out)!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**ENV, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out) as data:
        return dict(data)


@pytest.mark.slow
def test_a_resumed_online_critic_continues_bit_for_bit(bundle: Bundle, tmp_path: Path) -> None:
    """N updates, checkpoint, a new process restores and does M more: every leaf of the Cal-QL state (critics, their
    targets, Adam moments, actor, temperature, step counts) equals an uninterrupted run of N + M updates."""
    n, m = 3, 2
    _run_worker(tmp_path, bundle, "first", n, m)
    resumed = _run_worker(tmp_path, bundle, "second", n, m)
    whole = _run_worker(tmp_path, bundle, "whole", n, m)
    assert int(resumed["updates"]) == int(whole["updates"]) == n + m
    leaves = [k for k in whole if k.startswith("leaf")]
    assert len(leaves) > 20
    for k in leaves:
        assert resumed[k].dtype == whole[k].dtype and np.array_equal(resumed[k], whole[k]), k


# ------------------------------------------------------------------------------------------- refusals


def test_config_refuses_online_steering_without_what_it_needs(bundle: Bundle) -> None:
    with pytest.raises(ConfigError, match=r"^steering.base: got 'remote', expected one of bc, generalist while "
                                          r"steering.online is true.*another process"):
        load(None, online(bundle, "steering.base=remote", "steering.remote_endpoint=tcp://127.0.0.1:5600"))
    with pytest.raises(ConfigError, match=r"^steering.base: got 'policy', expected one of bc, generalist while "
                                          r"steering.online"):
        load(None, online(bundle, "steering.base=policy"))
    with pytest.raises(ConfigError, match=r"^steering.critic_run: got '', expected"):
        load(None, online(bundle, "steering.critic_run="))
    with pytest.raises(ConfigError, match=r"^steering.enabled: got false, expected true while steering.online"):
        load(None, online(bundle, "steering.enabled=false"))
    with pytest.raises(ConfigError, match=r"^replay.demo_dir: got '', expected a folder of demonstrations while "
                                          r"steering.online"):
        load(None, online(bundle, "replay.demo_dir="))
    with pytest.raises(ConfigError, match=r"^mixing.mode: got 'epsmix', expected 'off' while steering.online"):
        load(None, online(bundle, "mixing.mode=epsmix", "env.dense_reward=false"))
    assert load(None, online(bundle)).steering.online  # all there: no error


def test_preflight_refuses_a_critic_that_is_not_train_critics_and_other_observation_keys(
        bundle: Bundle, tmp_path: Path) -> None:
    """Before any process starts: `serl train` exits 2 naming the field, and leaves no learner or actor log."""
    import shutil

    from serl_stack.preflight import preflight

    preflight(load(None, online(bundle)), "learner")  # fits: no error
    sac_like = tmp_path / "sac"
    shutil.copytree(bundle.critic, sac_like)
    (sac_like / "critic.json").unlink()  # a `serl train` run folder has a checkpoint and config.yaml, no critic.json
    with pytest.raises(ConfigError, match=r"^steering.critic_run: .*critic.json not found; expected the critic.json "
                                          r"of a `serl train-critic --out` folder"):
        preflight(load(None, online(bundle, f"steering.critic_run={sac_like}")), "train")

    other = tmp_path / "bc-other"
    shutil.copytree(bundle.bc, other)
    summary = json.loads((other / "bc.json").read_text())
    summary["obs_keys"] = summary["obs_keys"][:-1]
    (other / "bc.json").write_text(json.dumps(summary))
    critic_keys = json.loads((bundle.critic / "critic.json").read_text())["obs_keys"]
    for role in ("train", "learner", "actor"):
        with pytest.raises(ConfigError) as e:
            preflight(load(None, online(bundle, f"steering.base_dir={other}")), role)
        assert str(e.value).startswith(f"steering.base_dir: {other} has the observation keys "), str(e.value)
        assert str(summary["obs_keys"]) in str(e.value) and str(critic_keys) in str(e.value)

    run = tmp_path / "run"
    sets = [f"--set={s}" for s in online(bundle, f"steering.base_dir={other}")]
    code = cli.main(["train", "--run-dir", str(run), *sets])
    assert code == 2 and not (run / "learner.log").exists() and not (run / "actor-0.log").exists()


def test_the_online_actor_side_stays_on_the_inference_side(bundle: Bundle) -> None:
    """In a fresh interpreter, what an online-steered actor runs (its preflight check, the steered policy, a step,
    adopting a broadcast) loads none of the learner's machinery (no optax, no Cal-QL, no replay)."""
    from test_inference_boundary import LEARNER_ONLY

    code = ("import json, sys\nimport jax, numpy as np\nfrom serl_stack.config import load\n"
            "from serl_stack.inference import PolicyRunner, example_observation\n"
            "from serl_stack.steering.acting import check_steering, steered_policy\n"
            "cfg = load(None, sys.argv[1:])\ncheck_steering(cfg)\nobs, a = example_observation(cfg)\n"
            "policy = steered_policy(cfg, PolicyRunner(obs, a, cfg.agent), obs, a)\n"
            "policy.act(obs, jax.random.PRNGKey(0))\n"
            "wire = jax.tree.map(lambda x: np.asarray(x) + 1, policy.critic.params)\n"
            "assert policy.critic.load(1, wire)\nprint(json.dumps(sorted(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code, *online(bundle)], capture_output=True, text=True,
                         timeout=300, cwd=ROOT, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    assert "serl_stack.steering.guided" in loaded and "serl_stack.inference" in loaded
    assert sorted(m for m in (*LEARNER_ONLY, "serl_stack.agents.calql", "serl_stack.online_critic")
                  if m in loaded) == []
    assert not [m for m in loaded if m.startswith("optax")]


# ------------------------------------------------------------------------------------------- serl train


@pytest.mark.slow
def test_serl_train_fine_tunes_the_critic_online_and_resumes(bundle: Bundle, tmp_path: Path) -> None:
    """A short online run on reach: the learner fine-tunes the critic and broadcasts it, the actor steers with each
    version (TensorBoard `steering/critic_version` rises over its episodes), the checkpointed critic is no longer the
    critic run's; then `--resume` with a larger budget continues from the checkpoint and the log, relabelling the
    same episodes."""
    from serl_stack.rundir import read_run_config
    from serl_stack.runlog import event_files, read_scalars
    from serl_stack.steering.guided import load_critic

    run = tmp_path / "run"
    sets = [f"--set={s}" for s in online(bundle, "env.max_episode_steps=30", "train.start_steps=30",
                                         "transport.params_every=10", "train.eval_episodes=2", "train.throttle_slack=0",
                                         "train.checkpoint_every=50")]
    done = subprocess.run([sys.executable, "-m", "serl_stack.cli", "train", "--run-dir", str(run), *sets,
                           "--set=train.total_env_steps=150"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    learner_log, actor_log = (run / "learner.log").read_text(), (run / "actor-0.log").read_text()
    assert f"fine-tuning the Cal-QL critic of {bundle.critic}" in learner_log
    assert "fine-tuned online by the learner" in actor_log
    adopted = int(actor_log.split("adopted ")[-1].split(" critic versions")[0])
    assert adopted >= 5  # 120 updates broadcast every 10, and the final one
    result = json.loads((run / "eval-actor-0.json").read_text())
    assert result["episodes"] == 2 and result["env_steps"] == 150

    scalars = [s for f in event_files(run) for s in read_scalars(f)]
    versions = [v for tag, _, v in scalars if tag == "steering/critic_version"]
    assert versions[0] <= 1 and max(versions) > versions[0] and versions == sorted(versions), versions
    assert any(tag == "steering/q_picked_mean" for tag, _, _ in scalars)

    # The run folder reads as a critic run: its config records the critic's network (32x32, not agent.*'s default).
    agent_cfg = read_run_config(bundle.critic).agent
    assert read_run_config(run).agent.hidden_dims == agent_cfg.hidden_dims == (32, 32)
    first = _episodes(bundle.demos)[0]
    example, action_dim = {k: v[0] for k, v in first.observations.items()}, first.actions.shape[1]
    tuned, step = load_critic(run, read_run_config(run).agent, example, action_dim)
    start, _ = load_critic(bundle.critic, agent_cfg, example, action_dim)
    actions = np.random.default_rng(0).uniform(-1, 1, (8, action_dim)).astype(np.float32)
    assert step >= 100 and not np.allclose(tuned.q_values(example, actions), start.q_values(example, actions))

    resumed = subprocess.run([sys.executable, "-m", "serl_stack.cli", "train", "--resume", "--run-dir", str(run),
                              "--set=train.total_env_steps=200"],
                             cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + (run / "learner.log").read_text()[-3000:]
    learner_log = (run / "learner.log").read_text()
    assert f"resumed with 150 transitions from the log, checkpoint {step}" in learner_log
    final = json.loads((run / "eval.json").read_text())
    assert final["env_steps"] == 200
    _, last = load_critic(run, agent_cfg, example, action_dim)
    assert last > step  # the restored critic kept learning
