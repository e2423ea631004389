"""The generalist stand-in (issue 19): its mixture density against a hand computation, training on a two-task,
two-mode dataset (it learns both modes and which task is which), chunk execution, the pure sampler a learner jits,
the folder round trip and its errors, the degraded scripts it learns from (real MuJoCo), the inference boundary,
and (slow) `serl train-generalist` end to end."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from serl_stack.agents.generalist import (
    GeneralistLearner,
    GeneralistSettings,
    episode_chunks,
    fit,
    make_dataset,
    mixture_nll,
)
from serl_stack.errors import RunDirError
from serl_stack.inference import Policy
from serl_stack.steering.generalist import (
    GENERALIST_SUMMARY,
    GeneralistPolicy,
    GeneralistSpec,
    chunk_log_prob,
    init_params,
    load_generalist,
    network_input,
    sample_chunks,
    task_of_env,
)
from serl_stack.train_generalist import (
    BIASED_TARGET_M,
    DegradedScript,
    add_arguments,
    save_generalist,
    train_generalist,
    wilson_interval,
)

ROOT = Path(__file__).resolve().parents[1]
OBS = {"state": {"a": np.array([0.3, -0.2], np.float32)}, "task": {"b": np.array([0.5], np.float32)}}
KEYS = ("state/a", "task/b")
"""Both synthetic tasks see this 3-D observation vector."""
MODE = 0.6


# ------------------------------------------------------------------------------------------ the density


def normal_pdf(x: float, m: float, s: float) -> float:
    return math.exp(-0.5 * ((x - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))


def normal_cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_the_mixture_log_likelihood_is_the_hand_computed_one() -> None:
    """Two components over a chunk of 2 steps x 2 entries, where step 0 is real (entry 0 inside the bounds, entry 1
    on the upper bound) and step 1 is masked: log(sum_k w_k N(a0; m_k0, s_k0) P_k(x1 >= 1)), whatever the masked
    entries hold."""
    w = np.array([0.3, 0.7])
    m, s = np.array([[0.2, 1.1], [-0.5, 0.4]]), np.array([[0.4, 0.3], [0.9, 0.2]])  # (K, entry)
    a0 = 0.35
    expected = math.log(sum(w[k] * normal_pdf(a0, m[k, 0], s[k, 0]) * (1 - normal_cdf((1 - m[k, 1]) / s[k, 1]))
                            for k in range(2)))

    rng = np.random.default_rng(0)
    mean = rng.normal(size=(1, 2, 2, 2)).astype(np.float32)  # (B, K, H, A): junk except step 0
    log_std = rng.normal(size=(1, 2, 2, 2)).astype(np.float32)
    mean[0, :, 0], log_std[0, :, 0] = m, np.log(s)
    actions = rng.uniform(-0.9, 0.9, size=(1, 2, 2)).astype(np.float32)
    actions[0, 0] = a0, 1.0
    mask = np.zeros((1, 2, 2), np.float32)
    mask[0, 0] = 1.0
    got = chunk_log_prob(jnp.log(jnp.asarray(w, jnp.float32))[None], jnp.asarray(mean), jnp.asarray(log_std),
                         jnp.asarray(actions), jnp.asarray(mask))
    assert float(got[0]) == pytest.approx(expected, abs=1e-4)


def test_samples_are_clipped_gaussians() -> None:
    """One component N(0.8, 0.5) per entry: a sample is on the upper bound with probability P(x >= 1) and its
    mean inside the bounds is that of the truncated normal."""
    spec = GeneralistSpec(("reach",), (3,), (1,), 1, 1, (4,), 0.05)
    params = init_params(spec, jax.random.PRNGKey(0))
    # All weights 0: the heads output their biases (Dense_0 the logits, Dense_1 the means, Dense_2 the log-stds).
    zero = jax.tree.map(jnp.zeros_like, params["net"])
    zero["Dense_1"]["bias"] = jnp.array([0.8])
    zero["Dense_2"]["bias"] = jnp.array([math.log(0.5)])
    params = {**params, "net": zero}
    draws = np.asarray(sample_chunks(spec, params, jnp.zeros((1, 3)), 0, jax.random.PRNGKey(1), 20000))[0, :, 0, 0]
    assert np.all(np.abs(draws) <= 1)
    assert np.mean(draws == 1.0) == pytest.approx(1 - normal_cdf(0.4), abs=0.01)
    assert np.mean(draws == -1.0) == pytest.approx(normal_cdf(-3.6), abs=0.002)


def test_chunk_rows_hold_the_next_actions_and_mask_what_is_missing() -> None:
    """Row t holds actions t..t+H-1; the steps past the episode's end and a 6-D task's 7th entry are masked."""
    actions = np.arange(3 * 6, dtype=np.float32).reshape(3, 6) / 100
    obs, chunks, mask = episode_chunks(np.ones((3, 2), np.float32), actions, chunk=2, max_obs_dim=4,
                                       max_action_dim=7)
    assert obs.shape == (3, 4) and np.all(obs[:, 2:] == 0)
    np.testing.assert_allclose(chunks[0, 1, :6], actions[1])
    np.testing.assert_allclose(chunks[1, 0, :6], actions[1])
    assert mask[:2].sum() == 2 * 2 * 6 and mask[2].sum() == 6 and np.all(mask[..., 6] == 0)


def test_padding_stays_zero_and_the_task_is_one_hot() -> None:
    spec = GeneralistSpec(("x", "y"), (3, 1), (2, 2), 1, 2, (8,), 0.05)
    norm = {"mean": jnp.full((2, 3), 5.0), "std": jnp.full((2, 3), 0.5)}
    x = network_input(spec, norm, jnp.zeros((2, 3)), jnp.array([0, 1]))
    np.testing.assert_allclose(np.asarray(x), [[-10, -10, -10, 1, 0], [-10, 0, 0, 0, 1]])


# ------------------------------------------------------------------------------------------ training


def two_task_episodes(n: int = 40, steps: int = 12, seed: int = 0) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Task `reach` (2-D actions): entry 0 is +MODE in half of the episodes and -MODE in the others (nothing in
    the observation says which), entry 1 follows the observation; task `pick_cube` (1-D): -0.3 always. Both see
    the same kind of 3-D observations."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"reach": [], "pick_cube": []}
    for i in range(n):
        obs = rng.normal(size=(steps, 3)).astype(np.float32)
        sign = 1.0 if i % 2 else -1.0
        act = np.stack([np.full(steps, sign * MODE), 0.5 * np.tanh(obs[:, 0])], -1) + rng.normal(0, 0.03, (steps, 2))
        out["reach"].append((obs, act.astype(np.float32)))
        out["pick_cube"].append((rng.normal(size=(steps, 3)).astype(np.float32),
                                 (-0.3 + rng.normal(0, 0.03, (steps, 1))).astype(np.float32)))
    return out


def summary_of(spec: GeneralistSpec) -> dict[str, Any]:
    """What `generalist.json` holds for the synthetic tasks (their observation keys and env ids)."""
    info = {t: {"obs_keys": list(KEYS), "env_id": {"reach": "FrankaReach-v0", "pick_cube": "FrankaPickCube-v0"}[t]}
            for t in spec.tasks}
    return {"kind": "serl_stack.generalist", "model": spec.to_json(), "task_info": info, "tasks": list(spec.tasks)}


@pytest.fixture(scope="module")
def trained() -> tuple[Any, Any]:
    settings = GeneralistSettings(hidden_dims=(64, 64), components=3, chunk=2, steps=800, lr=3e-3, eval_every=100,
                                  select="best_val")
    data = make_dataset(two_task_episodes(), settings.chunk, settings.val_fraction, settings.seed)
    return fit(data, settings), data


def test_training_lowers_the_held_out_loss_and_early_stopping_keeps_its_lowest_point(
        trained: tuple[Any, Any]) -> None:
    result, data = trained
    steps, vals = [c[0] for c in result.curve], [c[2] for c in result.curve]
    assert steps == list(range(0, 801, 100))
    assert result.kept_step == result.best_val_step == steps[int(np.argmin(vals))] > 0
    assert result.val_loss == pytest.approx(min(vals), abs=1e-5)
    assert vals[0] - result.val_loss > 3.0  # nats per held-out chunk
    assert set(result.val_loss_per_task) == {"reach", "pick_cube"}
    # The default keeps the last parameters, whatever the curve says.
    last = fit(data, GeneralistSettings(hidden_dims=(16,), components=2, chunk=2, steps=30, eval_every=20))
    assert last.kept_step == 30 and [c[0] for c in last.curve] == [0, 20, 30]
    with pytest.raises(ValueError, match="select: got 'best', expected one of"):
        GeneralistSettings(select="best")


def test_the_learned_mixture_puts_mass_on_both_modes_and_tells_the_tasks_apart(trained: tuple[Any, Any]) -> None:
    result, _ = trained
    summary = summary_of(result.learner.spec)
    reach = GeneralistPolicy(result.learner.policy_params, summary, "reach")
    pick = GeneralistPolicy(result.learner.policy_params, summary, "pick_cube")
    assert isinstance(reach, Policy) and reach.chunk == 2 and reach.obs_keys == KEYS
    samples = reach.sample_actions(OBS, 2000, jax.random.PRNGKey(0))
    assert samples.shape == (2000, 2, 2) and samples.dtype == np.float32 and np.all(np.abs(samples) <= 1)
    first = samples[:, 0, 0]
    up, down = np.mean(np.abs(first - MODE) < 0.15), np.mean(np.abs(first + MODE) < 0.15)
    # Both modes and nothing in between: a single (tanh-)Gaussian, tanh being monotonic, cannot put > 95 % of its
    # mass near +-0.6 and almost none near 0.
    assert 0.3 < up < 0.7 and 0.3 < down < 0.7 and up + down > 0.95
    # Same observation, the other task id: the other task's behaviour, in its own action size.
    other = pick.sample_actions(OBS, 500, jax.random.PRNGKey(0))
    assert other.shape == (500, 2, 1) and abs(float(other.mean()) + 0.3) < 0.05 and other.std() < 0.1
    mode = reach.act(OBS, None, deterministic=True)
    assert abs(abs(float(mode[0])) - MODE) < 0.1  # the mode is one of the two, not their average


def test_act_executes_one_chunk_over_h_calls_and_reset_starts_a_new_one(trained: tuple[Any, Any]) -> None:
    result, _ = trained
    policy = GeneralistPolicy(result.learner.policy_params, summary_of(result.learner.spec), "reach")
    keys = [jax.random.PRNGKey(i) for i in range(4)]
    other = {"state": {"a": np.array([-1.0, 1.0], np.float32)}, "task": {"b": np.array([0.0], np.float32)}}
    chunk = policy.sample_actions(OBS, 1, keys[0])[0]
    np.testing.assert_array_equal(policy.act(OBS, keys[0]), chunk[0])
    np.testing.assert_array_equal(policy.act(other, keys[1]), chunk[1])  # the chunk's, not a new draw
    np.testing.assert_array_equal(policy.act(other, keys[2]), policy.sample_actions(other, 1, keys[2])[0, 0])
    policy.reset()  # mid-chunk: the rest is dropped
    np.testing.assert_array_equal(policy.act(OBS, keys[3]), policy.sample_actions(OBS, 1, keys[3])[0, 0])
    policy.reset()
    with pytest.raises(ValueError, match="key: got None"):
        policy.act(OBS, None)


def test_the_vector_sampler_draws_what_sample_actions_draws_and_jits(trained: tuple[Any, Any]) -> None:
    """Row 0 of a batch is `sample_actions`' first actions for the same key; inside a jitted function of a
    learner's kind (raw observation vectors in, a scalar out) it traces with k static."""
    result, _ = trained
    policy = GeneralistPolicy(result.learner.policy_params, summary_of(result.learner.spec), "reach")
    params, fn = policy.vector_sampler()
    obs = np.stack([policy.observe(OBS), np.array([-1.0, 1.0, 0.0], np.float32), np.zeros(3, np.float32)])
    key = jax.random.PRNGKey(5)
    batch = jax.jit(fn, static_argnames="k")(params, obs, key, k=16)
    assert batch.shape == (3, 16, 2)
    np.testing.assert_allclose(np.asarray(batch[0]), policy.sample_actions(OBS, 16, key)[:, 0], atol=1e-6)

    @jax.jit
    def update_like(p: Any, o: jax.Array, k: jax.Array) -> jax.Array:
        return jnp.mean(fn(p, o, k, 4) ** 2)

    assert np.isfinite(float(update_like(params, obs, key)))
    assert policy.vector_sampler()[1] is fn  # one object: a jit taking it as a static argument compiles once
    with pytest.raises(ValueError, match=r"expected \(B, 3\)"):
        fn(params, obs[:, :2], key, 4)


def test_log_prob_scores_the_modes_above_the_middle(trained: tuple[Any, Any]) -> None:
    result, _ = trained
    policy = GeneralistPolicy(result.learner.policy_params, summary_of(result.learner.spec), "reach")
    x0 = float(0.5 * np.tanh(policy.observe(OBS)[0]))
    scores = policy.log_prob(OBS, np.array([[MODE, x0], [-MODE, x0], [0.0, x0]], np.float32))
    assert scores.shape == (3,) and min(scores[:2]) > scores[2] + 5


# ------------------------------------------------------------------------------------------ the folder


def test_a_saved_generalist_loads_and_samples_identically(trained: tuple[Any, Any], tmp_path: Path) -> None:
    result, _ = trained
    save_generalist(tmp_path, result.learner, result.kept_step, summary_of(result.learner.spec))
    in_memory = GeneralistPolicy(result.learner.policy_params, summary_of(result.learner.spec), "pick_cube")
    for name in ("pick_cube", "FrankaPickCube-v0"):  # by task or by env id
        loaded, summary = load_generalist(tmp_path, name)
        assert loaded.task == "pick_cube" and summary["model"]["chunk"] == 2
        key = jax.random.PRNGKey(9)
        np.testing.assert_array_equal(loaded.sample_actions(OBS, 8, key), in_memory.sample_actions(OBS, 8, key))
        in_memory.reset()
        np.testing.assert_array_equal(loaded.act(OBS, None, True), in_memory.act(OBS, None, True))


def test_missing_folders_and_unknown_tasks_are_named(trained: tuple[Any, Any], tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="does not exist; expected the --out folder of `serl train-generalist`"):
        load_generalist(tmp_path / "nowhere", "reach")
    tmp_path.joinpath("empty").mkdir()
    with pytest.raises(RunDirError, match=f"has no {GENERALIST_SUMMARY}"):
        load_generalist(tmp_path / "empty", "reach")
    result, _ = trained
    folder = tmp_path / "no-checkpoint"
    folder.mkdir()
    (folder / GENERALIST_SUMMARY).write_text(json.dumps(summary_of(result.learner.spec)))
    with pytest.raises(RunDirError, match="no checkpoint"):
        load_generalist(folder, "reach")
    with pytest.raises(RunDirError, match=r"got 'peg_insert', expected one of the tasks .* reach \(FrankaReach-v0\), "
                                          r"pick_cube \(FrankaPickCube-v0\)"):
        load_generalist(folder, "peg_insert")
    assert task_of_env("FrankaPegInsert-v0") == "peg_insert"
    with pytest.raises(ValueError, match="env id: got 'Pendulum-v1', expected one of"):
        task_of_env("Pendulum-v1")


def test_a_checkpoint_that_does_not_fit_the_summary_is_named(trained: tuple[Any, Any], tmp_path: Path) -> None:
    result, _ = trained
    save_generalist(tmp_path, result.learner, result.kept_step, summary_of(result.learner.spec))
    summary = json.loads((tmp_path / GENERALIST_SUMMARY).read_text())
    summary["model"]["hidden_dims"] = [32, 64]
    (tmp_path / GENERALIST_SUMMARY).write_text(json.dumps(summary))
    with pytest.raises(RunDirError, match="does not fit .*Dense_0"):
        load_generalist(tmp_path, "reach")


def test_the_acting_side_never_loads_the_learners_machinery() -> None:
    """In a fresh interpreter: loading and acting with a generalist imports no optax, losses, replay or demos."""
    from test_inference_boundary import LEARNER_ONLY

    code = ("import json, sys\nimport serl_stack.steering.generalist\nprint(json.dumps(sorted(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    assert "jax" in loaded and sorted(m for m in LEARNER_ONLY if m in loaded) == []
    assert not [m for m in loaded if m.startswith("optax")]


# ------------------------------------------------------------------------------------------ the demonstrations


def run_episode(task: str, config: str, mode: str | None, seed: int) -> tuple[bool, dict[str, Any], Any]:
    from serl_stack.config import load
    from serl_stack.envs import make_env

    cfg = load(ROOT / "configs" / config)
    env = make_env(cfg.env)
    script = DegradedScript(task, cfg.env, 0.0, np.random.default_rng(seed), mode)
    obs, info = env.reset(seed=seed)
    done = False
    while not done:
        obs, _, terminated, truncated, info = env.step(script(obs))
        done = terminated or truncated
    env.close()
    return bool(info["success"]), info, script


def test_a_wrong_target_script_confidently_reaches_the_wrong_place() -> None:
    assert run_episode("reach", "sim_reach.yaml", None, 3)[0]
    success, info, script = run_episode("reach", "sim_reach.yaml", "wrong_target", 3)
    assert not success and 0.03 <= np.linalg.norm(script.offset) <= 0.06
    assert abs(info["distance"] - np.linalg.norm(script.offset)) < 0.01  # it sits where it thought the goal was


def test_a_biased_target_script_misses_by_the_same_offset_in_every_episode() -> None:
    offsets, misses = [], []
    for seed in (5, 6):
        success, info, script = run_episode("peg_insert", "rlpd_cpu_peg_insert.yaml", "biased_target", seed)
        assert not success
        offsets.append(script.offset.copy())
        misses.append(info["xy_error"])
    assert np.array_equal(offsets[0], offsets[1]) and np.allclose(offsets[0][:2], BIASED_TARGET_M)
    # it pressed down where it thought the hole was: the bias away from the hole's axis, not somewhere else
    assert all(abs(m - np.linalg.norm(BIASED_TARGET_M)) < 0.01 for m in misses), misses


def test_a_gripper_closed_too_early_never_holds_the_cube() -> None:
    assert run_episode("pick_cube", "rlpd_cpu_pick_cube.yaml", None, 4)[0]
    success, info, script = run_episode("pick_cube", "rlpd_cpu_pick_cube.yaml", "early_close", 4)
    assert not success and not info["grasped"] and script.closed
    with pytest.raises(ValueError, match="mode: got 'early_close', expected None or one of"):
        DegradedScript("reach", None, 0.0, np.random.default_rng(0), "early_close")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ the command


def wilson_solves_its_equation(successes: int, n: int) -> None:
    """Each bound p of the Wilson interval solves (p_hat - p)^2 = z^2 p (1 - p) / n (or is clipped to 0 / 1)."""
    p_hat, z = successes / n, 1.96
    for p in wilson_interval(successes, n):
        assert (p_hat - p) ** 2 == pytest.approx(z * z * p * (1 - p) / n, abs=1e-12)


def test_the_wilson_interval() -> None:
    for successes, n in ((18, 40), (1, 50), (49, 50), (0, 20), (20, 20)):
        wilson_solves_its_equation(successes, n)
    low, high = wilson_interval(18, 40)
    assert low < 18 / 40 < high


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(("argv", "message"), [
    (["--tasks", "reach,fold_laundry"], "--tasks: got 'reach,fold_laundry', expected distinct names among"),
    (["--episodes-per-task", "1"], "--episodes-per-task: got 1, expected >= 2"),
    (["--fail-fraction", "1.5"], "--fail-fraction: got 1.5, expected in [0, 1]"),
    (["--noise", "-0.1"], "--noise: got -0.1, expected >= 0"),
    (["--chunk", "0"], "--chunk: got 0, expected >= 1"),
])
def test_bad_options_are_named_before_anything_runs(argv: list[str], message: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert train_generalist(parse("--out", str(tmp_path / "g"), *argv)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


@pytest.mark.slow
def test_serl_train_generalist_writes_a_folder_every_user_loads(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Tiny settings on two tasks of different sizes (reach: 23-D observations, 7-D actions; peg-insert: 23-D, 6-D
    actions): the summary, the per-task configs, every recorded episode kept with its flag, a checkpoint that
    `load_generalist` restores by env id and that acts in the task's env; and --out is not trained over."""
    from serl_stack.config import load
    from serl_stack.data.demos import load_metadata
    from serl_stack.envs import make_env

    out = tmp_path / "g"
    argv = ("--out", str(out), "--tasks", "reach,peg_insert", "--episodes-per-task", "4", "--steps", "100",
            "--eval-episodes", "2", "--fail-fraction", "0.5")
    assert train_generalist(parse(*argv)) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / GENERALIST_SUMMARY).read_text())
    assert summary["tasks"] == ["reach", "peg_insert"] and summary["model"]["action_dims"] == [7, 6]
    for task in ("reach", "peg_insert"):
        info, success = summary["task_info"][task], summary["success"][task]
        assert info["episodes"] == 4 and info["degraded"] == 2 and len(info["val_episodes"]) == 1
        assert f"{task}: success over 2 held-out episodes" in printed
        assert 0 <= success["stochastic_ci95"][0] <= success["stochastic"] <= success["stochastic_ci95"][1] <= 1
        meta = load_metadata(out / info["demos"])
        assert meta["num_episodes"] == 4 and sum(e["success"] for e in meta["episodes"]) == info["successes"]
        cfg = load(out / info["config"])
        policy, _ = load_generalist(out, cfg.env.id)
        assert policy.obs_keys == tuple(info["obs_keys"]) and policy.chunk == 2
        env = make_env(cfg.env)
        obs, _ = env.reset(seed=0)
        action = policy.act(obs, jax.random.PRNGKey(0))
        assert action.shape == env.action_space.shape and np.all(np.abs(action) <= 1)
        env.close()
    assert summary["wall_s"]["total"] > 0 and "kept step" in printed
    assert train_generalist(parse(*argv)) == 2
    assert "already holds a generalist" in capsys.readouterr().err


def test_mixture_nll_is_what_the_learner_minimizes(trained: tuple[Any, Any]) -> None:
    """`nll` per task is the mean of `mixture_nll` over that task's rows (the early-stopping number)."""
    result, data = trained
    learner: GeneralistLearner = result.learner
    per_row = np.asarray(mixture_nll(learner.spec, learner.policy_params, data.val.replace(starts=None,
                                                                                          counts=None)))
    task = np.asarray(data.val.task)
    np.testing.assert_allclose(np.asarray(learner.nll(jax.tree.map(jnp.asarray, data.val))),
                               [per_row[task == t].mean() for t in range(2)], rtol=1e-5)
