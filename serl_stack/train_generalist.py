"""`serl train-generalist`: the generalist stand-in for value-guided steering, recorded, trained and measured.

Owns: the command's options (`add_arguments`), recording the noisy, partly failing scripted demonstrations it
trains on (`DegradedScript`: a task's scripted controller with action noise, in a `--fail-fraction` of the
episodes deliberately degraded: a wrong target, or a gripper closed too early), the training
with progress, the evaluation of every task with the policy's samples (how it acts on its own, one sample per
chunk) and with its mode, and the `--out` folder: `checkpoints/<step>/` (orbax: the trainer's state and the
`policy` item), `configs/<task>.yaml` (each task's config, what its env and a critic on it are built from),
`demos/<task>/` (every recorded episode, successes and failures with their flags, in the `serl record-demos`
format) and `generalist.json` (model, tasks, settings, per-task success with 95 % Wilson intervals, wall times).
The model and its training are `agents/generalist.py`'s and `steering/generalist.py`'s; restoring it is
`steering.generalist.load_generalist`. Only the standard library is imported at module level, so the parser can
be built without loading JAX.

Pretrained generalists (Octo, OpenVLA) cannot be downloaded here. This one stands in for them the way that
matters to steering: one network for several tasks, conditioned on which task, stochastic (a mixture over action
chunks), trained on mixed-quality data, and therefore mediocre on its own, with good actions among its samples
for a critic to find. All recorded episodes are kept, failed ones too, as a real generalist's data is mixed.

Today's peg-insert default (55 % of its episodes `biased_target`, see BIASED_TARGET_M) gave, trained on
peg_insert,reach (seed 0, 50 episodes): peg-insert sampled 42 %, mode 26 %; reach 34 % / 72 %. The defaults before
it and what they gave (seed 0): 400 episodes per task, noise 0.1, degraded reach 15 % / pick-cube 30 % /
peg-insert 10 % (`wrong_target`), H = 2, 3,000 steps; 180 s in all on 2 CPU cores at load average 1
(recording 106 s, training 13 s, evaluation 61 s), 285 s at load 5, with the same results to the bit. Success over
50 held-out episodes, 95 % Wilson intervals:

    task        sampled (acting alone)   mode
    reach       30 % [19, 44]            96 % [87, 99]
    pick-cube   74 % [60, 84]            94 % [84, 98]
    peg-insert  44 % [31, 58]            74 % [60, 84]

One training run is not the whole story: retrained on the same data with seeds 1, 2, 3 (initialization, split,
minibatches; 30 sampled episodes each) reach succeeded in 33 / 17 / 7 %, pick-cube in 73 / 73 / 77 %, peg-insert
in 20 / 33 / 17 %, so a run's sampled success moves by about 15 points with the training seed, beyond its
interval. How the defaults were found (30 sampled episodes per task unless said): 200 episodes per task gave
reach 20 % (50 episodes); noise 0.05 and 0.2 both lowered reach and peg-insert (13 / 7 % and 20 / 3 %); a "large
noise" degradation (0.5 for a whole episode) made the samples jump (see DEGRADATIONS); pick-cube degraded 40 %
instead of 30 % (reach 10 %) left pick-cube where it was (64 % of 50; 67 / 90 / 80 % over seeds 1-3) and lowered
reach and peg-insert to 7-28 % and 10-14 % on every seed; H = 4 instead of 2 lowered peg-insert's sampled success
from 30 to 5 % and reach's from 60 to 45 % (each task trained alone, 20 episodes), and H = 1 raised neither.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from serl_stack.agents.generalist import GeneralistLearner
    from serl_stack.config import Config, EnvConfig

TASK_CONFIGS = {"reach": "sim_reach.yaml", "pick_cube": "rlpd_cpu_pick_cube.yaml",
                "peg_insert": "rlpd_cpu_peg_insert.yaml"}
"""Task name -> its config in `--config-dir` (env, and the `agent.obs_keys` the policy and a critic see)."""
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
"""The repository's configs folder (the default `--config-dir`)."""
DEFAULT_EPISODES = 400
DEFAULT_NOISE = 0.1
DEFAULT_FAIL_FRACTIONS = {"reach": 0.15, "pick_cube": 0.3, "peg_insert": 0.55}
"""Per task, the share of degraded episodes when `--fail-fraction` is not given."""
DEFAULT_CHUNK = 2
DEFAULT_EVAL_EPISODES = 50
WRONG_TARGET_M = (0.03, 0.06)
"""The `wrong_target` degradation: the script aims at its target shifted this far (m), horizontally, in a random
direction fixed for the episode: it goes, confidently, to the wrong place."""
BIASED_TARGET_M = (0.0, 0.04)
"""The `biased_target` degradation: the script aims at its target shifted by this (x, y) offset (m), the same in
every episode: a systematic error (data recorded with a miscalibrated camera, say) that the policy learns as a mode
of its own, confidently wrong. When it is the larger share of a task's data, the policy's most likely action is the
wrong one, so keeping the mode (a likelihood reranker) does not fix it, while a critic that has seen the outcomes
can."""
EARLY_CLOSE_M = (0.01, 0.03)
"""The `early_close` degradation (pick-cube): the gripper closes once the TCP is within this distance (m, uniform
per episode) of the cube horizontally, still above it, and never opens again: it grasps air and hovers there."""
STALL_STEPS, STALL_M = 5, 0.005
"""A degraded episode is stopped (its last step marked truncated) once the TCP has moved less than STALL_M (m) over
the last STALL_STEPS steps, as an operator stops a demonstration that is stuck. Left to the time limit, a
wrong-target script sat or pressed at the wrong place for up to 90 steps, and those near-copies taught the policy
to sit or press wherever it was a few millimetres off: in an earlier configuration (200 episodes per task, a third
"large noise" degradation, 30 evaluation episodes) peg-insert's samples succeeded in 3 % without stopping, 13 %
stopping after 10 still steps and 20 % after 5 (400 episodes)."""
TARGETS = {"reach": "goal_pos", "pick_cube": "object_pose", "peg_insert": "hole_pos"}
"""The `task/` observation whose position (first 3 entries) a `wrong_target` or `biased_target` script
misperceives."""
DEGRADATIONS = {"reach": ("wrong_target",), "pick_cube": ("wrong_target", "early_close"),
                "peg_insert": ("biased_target",)}
"""The ways each task's script is degraded (one drawn uniformly per degraded episode). Failures with a cause, not
more noise: a third kind, five times the action noise for a whole episode, made the policy's samples jump (the
peg thrown out of the hole it had nearly found, the TCP sent off from 2 cm before the goal), and its samples
succeeded in 12 % (peg-insert) and 24 % (reach) of 50 episodes while its mode succeeded in 92 % and 82 %."""
SUMMARY_PREFIX = "train-generalist"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`serl train-generalist`'s options."""
    parser.add_argument("--out", type=Path, required=True,
                        help="new folder for the generalist (checkpoint, generalist.json, configs/, demos/)")
    parser.add_argument("--tasks", default=",".join(TASK_CONFIGS),
                        help=f"comma-separated tasks among {','.join(TASK_CONFIGS)} (default: all three)")
    parser.add_argument("--episodes-per-task", type=int, default=DEFAULT_EPISODES,
                        help=f"scripted episodes recorded per task, all kept (default {DEFAULT_EPISODES})")
    parser.add_argument("--noise", type=float, default=DEFAULT_NOISE,
                        help=f"std of the scripts' Gaussian action noise (default {DEFAULT_NOISE})")
    defaults = ", ".join(f"{t} {f:g}" for t, f in DEFAULT_FAIL_FRACTIONS.items())
    parser.add_argument("--fail-fraction", type=float, default=None,
                        help="share of the episodes whose script is degraded: wrong target (reach, pick-cube), gripper "
                             "closed too early (pick-cube), the same biased target every time (peg-insert); one value "
                             f"for every task (default per task: {defaults})")
    parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK,
                        help=f"actions per chunk, H (default {DEFAULT_CHUNK})")
    parser.add_argument("--steps", type=int, default=None,
                        help="gradient steps (default 3000)")
    parser.add_argument("--seed", type=int, default=0,
                        help="recording (reset seeds SEED + i, action noise), initialization, split (default 0)")
    parser.add_argument("--eval-episodes", type=int, default=DEFAULT_EVAL_EPISODES,
                        help="evaluation episodes per task and mode (sampled, mode) on seeds train.eval_seed + i "
                             f"(default {DEFAULT_EVAL_EPISODES}; 0 = none)")
    parser.add_argument("--config-dir", type=Path, default=CONFIG_DIR,
                        help=f"folder holding {', '.join(TASK_CONFIGS.values())} (default: the repository's configs)")


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a success rate (95 % for z = 1.96); (0, 1) for n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


# ----------------------------------------------------------------------------------------------- recording


class DegradedScript:
    """One episode's demonstrator: `task`'s scripted controller with action noise `noise`, degraded by `mode`
    (None: not degraded; `wrong_target`, `early_close`: see the module's constants). Callable on an
    env observation, like the scripted policies; draws everything from `rng`."""

    def __init__(self, task: str, env_cfg: EnvConfig, noise: float, rng: np.random.Generator,
                 mode: str | None = None) -> None:
        import numpy as np

        from serl_stack.envs.scripted import make_scripted

        if mode is not None and mode not in DEGRADATIONS[task]:
            raise ValueError(f"mode: got {mode!r}, expected None or one of {list(DEGRADATIONS[task])} for {task}")
        self.task, self.mode = task, mode
        self.script = make_scripted(env_cfg, noise, rng)
        self.offset = np.zeros(3)
        if mode == "biased_target":
            self.offset[:2] = BIASED_TARGET_M
        if mode == "wrong_target":
            angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(*WRONG_TARGET_M)
            self.offset[:2] = radius * np.cos(angle), radius * np.sin(angle)
        self.close_within = float(rng.uniform(*EARLY_CLOSE_M))
        self.closed = False

    def __call__(self, obs: Mapping[str, Any]) -> np.ndarray:
        import numpy as np

        seen = obs
        if self.mode in ("wrong_target", "biased_target"):
            key = TARGETS[self.task]
            target = np.array(obs["task"][key], np.float64)
            target[:3] += self.offset
            seen = {**obs, "task": {**obs["task"], key: target.astype(np.asarray(obs["task"][key]).dtype)}}
        action = np.array(self.script(seen), np.float32)
        if self.mode == "early_close":
            cube, tcp = np.asarray(obs["task"]["object_pose"])[:2], np.asarray(obs["state"]["tcp_pose"])[:2]
            self.closed = self.closed or float(np.linalg.norm(cube - tcp)) < self.close_within
            if self.closed:
                action[6] = 1.0
        return action


def record_task(task: str, cfg: Config, episodes: int, noise: float, fail_fraction: float, seed: int,
                out: Path, say: Callable[[str], None]) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    """`episodes` scripted episodes of `task` on reset seeds `seed + i`, a `fail_fraction` share of them degraded
    (which ones and how: drawn from `seed`; a degraded one stops once it is stuck, see STALL_STEPS), all saved to
    `out` (`serl record-demos --all`'s format); returns per
    episode (observation vectors (T, D) of the config's `agent.obs_keys`, actions (T, A)) and the counts."""
    import numpy as np

    from serl_stack.config import to_dict
    from serl_stack.data.demos import EpisodeBuilder, save_episode
    from serl_stack.data.obs import flatten_keys, to_vector, vector_keys
    from serl_stack.envs import make_env

    rng = np.random.default_rng([seed, list(TASK_CONFIGS).index(task)])
    degraded = np.zeros(episodes, bool)
    degraded[rng.permutation(episodes)[: round(fail_fraction * episodes)]] = True
    env = make_env(cfg.env)
    builder, data = EpisodeBuilder(), []
    stats: dict[str, Any] = {"episodes": episodes, "successes": 0, "degraded": int(degraded.sum()),
                             "degraded_successes": 0, "stopped_stuck": 0, "modes": {}}
    keys: tuple[str, ...] = ()
    try:
        for i in range(episodes):
            mode = str(rng.choice(DEGRADATIONS[task])) if degraded[i] else None
            script = DegradedScript(task, cfg.env, noise, rng, mode)
            obs, info = env.reset(seed=seed + i)
            if not keys:
                keys = vector_keys(flatten_keys(obs), cfg.agent.obs_keys)
            builder.start(obs)
            path = [np.asarray(obs["state"]["tcp_pose"][:3], np.float64)]
            done = stalled = False
            while not done:
                action = script(obs)
                obs, reward, terminated, truncated, info = env.step(action)
                path.append(np.asarray(obs["state"]["tcp_pose"][:3], np.float64))
                stalled = mode is not None and len(path) > STALL_STEPS \
                    and float(np.linalg.norm(path[-1] - path[-1 - STALL_STEPS])) < STALL_M
                builder.add(action, reward, obs, terminated, truncated or stalled)
                done = terminated or truncated or stalled
            success = bool(info.get("success", False))
            episode = builder.build(success=success)
            save_episode(out, episode, env_id=cfg.env.id, config=to_dict(cfg))
            data.append((to_vector(episode.observations, keys, batch_dims=1)[:-1], episode.actions))
            stats["stopped_stuck"] += stalled
            stats["successes"] += success
            stats["degraded_successes"] += success and mode is not None
            if mode is not None:
                stats["modes"][mode] = stats["modes"].get(mode, 0) + 1
            if (i + 1) % 50 == 0 or i + 1 == episodes:
                say(f"{task}: recorded {i + 1}/{episodes} episodes ({stats['successes']} successful; "
                    f"{int(degraded[: i + 1].sum())} degraded, {stats['degraded_successes']} of them successful)")
    finally:
        env.close()
    stats["obs_keys"] = list(keys)
    return data, stats


# ----------------------------------------------------------------------------------------------- evaluating


class _Sampling:
    """A policy acting with its samples even when `evaluate` asks for its mode: how a generalist acts on its own."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy

    def act(self, obs: Mapping[str, Any], key: Any, deterministic: bool = False) -> np.ndarray:
        return self.policy.act(obs, key, False)

    def sample_actions(self, obs: Mapping[str, Any], k: int, key: Any) -> np.ndarray:
        return self.policy.sample_actions(obs, k, key)

    def reset(self) -> None:
        self.policy.reset()


def evaluate_task(folder: Path, task: str, cfg: Config, episodes: int) -> dict[str, Any]:
    """The policy restored from `folder` on `task`: `episodes` episodes sampling its chunks, and as many with its
    mode, both on reset seeds `cfg.train.eval_seed + i`; success with its 95 % Wilson interval per mode."""
    from serl_stack.envs import make_env
    from serl_stack.inference import evaluate
    from serl_stack.steering.generalist import load_generalist

    policy, _ = load_generalist(folder, task)  # evaluate what is on disk, as every later user will restore it
    env = make_env(cfg.env)
    out: dict[str, Any] = {"episodes": episodes, "first_seed": cfg.train.eval_seed}
    try:
        for mode, acting in (("stochastic", _Sampling(policy)), ("deterministic", policy)):
            result = evaluate(env, acting, episodes, cfg.train.eval_seed)
            wins = round(result["success_rate"] * episodes)
            out[mode] = result["success_rate"]
            out[f"{mode}_ci95"] = list(wilson_interval(wins, episodes))
            out[f"{mode}_return"] = result["return_mean"]
            out[f"{mode}_length"] = result["length_mean"]
    finally:
        env.close()
    return out


# ----------------------------------------------------------------------------------------------- the command


def _check(args: argparse.Namespace) -> tuple[list[str], str | None]:
    """The tasks asked for, and the first problem with the options (None when there is none)."""
    from serl_stack.rundir import CHECKPOINTS, GENERALIST_SUMMARY

    tasks = [t.strip() for t in str(args.tasks).split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASK_CONFIGS]
    problems = [
        ((args.out / GENERALIST_SUMMARY).exists() or (args.out / CHECKPOINTS).exists() or (args.out / "demos").exists(),
         f"--out: {args.out} already holds a generalist; expected a new folder"),
        (not tasks or bool(unknown) or len(set(tasks)) != len(tasks),
         f"--tasks: got {args.tasks!r}, expected distinct names among {','.join(TASK_CONFIGS)}"),
        (args.episodes_per_task < 2, f"--episodes-per-task: got {args.episodes_per_task}, expected >= 2 (one is held "
                                     "out per task for the validation loss)"),
        (not (args.noise >= 0 and math.isfinite(args.noise)), f"--noise: got {args.noise}, expected >= 0"),
        (args.fail_fraction is not None and not 0 <= args.fail_fraction <= 1,
         f"--fail-fraction: got {args.fail_fraction}, expected in [0, 1]"),
        (args.chunk < 1, f"--chunk: got {args.chunk}, expected >= 1"),
        (args.steps is not None and args.steps < 1, f"--steps: got {args.steps}, expected >= 1"),
        (args.eval_episodes < 0, f"--eval-episodes: got {args.eval_episodes}, expected >= 0"),
    ]
    return tasks, next((message for bad, message in problems if bad), None)


def _configs(tasks: list[str], config_dir: Path) -> dict[str, Config]:
    """Each task's config from `config_dir`, checked to be of its env; ConfigError naming the file otherwise."""
    from serl_stack.config import ConfigError, load
    from serl_stack.steering.generalist import TASK_ENV_IDS

    configs = {}
    for task in tasks:
        path = config_dir / TASK_CONFIGS[task]
        cfg = load(path)
        if cfg.env.id != TASK_ENV_IDS[task]:
            raise ConfigError(f"{path}: env.id {cfg.env.id!r}, expected {TASK_ENV_IDS[task]!r} for task {task}")
        if cfg.agent.image_keys:
            raise ConfigError(f"{path}: agent.image_keys {list(cfg.agent.image_keys)}, expected [] (the generalist "
                              "stand-in acts on state vectors)")
        configs[task] = cfg
    return configs


def save_generalist(folder: Path, learner: GeneralistLearner, step: int, summary: Mapping[str, Any]) -> Path:
    """Write `learner` as checkpoint `step` of `folder` (its `policy` item is what `load_generalist` restores)
    and `summary` (with the model's shape under "model") as its `generalist.json`; returns the summary's path."""
    import json

    from serl_stack.checkpoint import Checkpointer
    from serl_stack.rundir import CHECKPOINTS, GENERALIST_SUMMARY

    checkpoints = Checkpointer(folder / CHECKPOINTS, max_to_keep=1)
    try:
        checkpoints.save(step, learner, {"updates": step, "params_version": 1}, policy=learner.policy_params)
    finally:
        checkpoints.close()
    path = folder / GENERALIST_SUMMARY
    path.write_text(json.dumps({**summary, "model": learner.spec.to_json()}, indent=2))
    return path


def train_generalist(args: argparse.Namespace) -> int:
    """`serl train-generalist`: record every task's demonstrations -> train -> write --out -> evaluate."""
    import dataclasses
    import json
    import time

    from serl_stack.config import ConfigError, dump

    def fail(message: str, code: int = 2) -> int:
        print(f"serl train-generalist: {message}", file=sys.stderr)
        return code

    def say(message: str) -> None:
        print(f"{SUMMARY_PREFIX}: {message}", flush=True)

    tasks, problem = _check(args)
    if problem is not None:
        return fail(problem)
    try:
        configs = _configs(tasks, args.config_dir)
    except ConfigError as e:
        return fail(f"--config-dir: {e}")

    from serl_stack.agents.generalist import GeneralistSettings, fit, make_dataset
    from serl_stack.steering.generalist import GENERALIST_KIND, TASK_ENV_IDS

    settings = GeneralistSettings(chunk=args.chunk, seed=args.seed,
                                  **({} if args.steps is None else {"steps": args.steps}))
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "configs").mkdir(exist_ok=True)
    episodes, task_info = {}, {}
    fail = {t: DEFAULT_FAIL_FRACTIONS[t] if args.fail_fraction is None else args.fail_fraction for t in tasks}
    say(f"recording {args.episodes_per_task} scripted episodes per task ({', '.join(tasks)}): noise "
        f"{args.noise:g}, degraded: {', '.join(f'{t} {fail[t]:.0%}' for t in tasks)}")
    for task in tasks:
        t0 = time.monotonic()
        (args.out / "configs" / f"{task}.yaml").write_text(dump(configs[task]))
        data, stats = record_task(task, configs[task], args.episodes_per_task, args.noise, fail[task],
                                  args.seed, args.out / "demos" / task, say)
        episodes[task] = data
        task_info[task] = {"env_id": TASK_ENV_IDS[task], "config": f"configs/{task}.yaml",
                           "source_config": str(args.config_dir / TASK_CONFIGS[task]), "demos": f"demos/{task}",
                           "obs_dim": int(data[0][0].shape[1]), "action_dim": int(data[0][1].shape[1]),
                           **stats, "record_s": round(time.monotonic() - t0, 1)}
    record_s = time.monotonic() - started

    dataset = make_dataset(episodes, settings.chunk, settings.val_fraction, settings.seed)
    say(f"{len(dataset.train)} transitions from {sum(map(len, dataset.train_episodes.values()))} episodes, "
        f"{len(dataset.val)} from {sum(map(len, dataset.val_episodes.values()))} held out; MLP "
        f"{list(settings.hidden_dims)}, {settings.components} components over chunks of {settings.chunk}, "
        f"{settings.steps} steps, lr {settings.lr:g}")
    t0 = time.monotonic()

    def progress(step: int, train_loss: float, val_loss: float) -> None:
        if step % 1000 == 0 or step == settings.steps:
            say(f"step {step}: train loss {train_loss:.3f}, validation loss {val_loss:.3f}")

    result = fit(dataset, settings, progress)
    train_s = time.monotonic() - t0
    per_task = ", ".join(f"{t} {v:.2f}" for t, v in result.val_loss_per_task.items())
    say(f"kept step {result.kept_step}: validation loss {result.val_loss:.3f} (mean -log p(chunk) per held-out "
        f"transition; {per_task}; lowest {result.best_val_loss:.3f} at step {result.best_val_step}), "
        f"{train_s:.1f} s")

    learner = result.learner
    for task in tasks:
        task_info[task].update(train_episodes=list(dataset.train_episodes[task]),
                               val_episodes=list(dataset.val_episodes[task]),
                               val_loss=result.val_loss_per_task[task], train_loss=result.train_loss_per_task[task])
    summary: dict[str, Any] = {
        "kind": GENERALIST_KIND, "model": learner.spec.to_json(), "tasks": tasks, "task_info": task_info,
        "recording": {"episodes_per_task": args.episodes_per_task, "noise": args.noise,
                      "fail_fraction": fail, "seed": args.seed,
                      "degradations": {t: list(DEGRADATIONS[t]) for t in tasks},
                      "wrong_target_m": list(WRONG_TARGET_M), "biased_target_m": list(BIASED_TARGET_M),
                      "early_close_m": list(EARLY_CLOSE_M)},
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(settings).items()},
        "kept_step": result.kept_step, "val_loss": result.val_loss, "best_val_step": result.best_val_step,
        "best_val_loss": result.best_val_loss,
        "curve": [list(point) for point in result.curve], "success": {},
        "wall_s": {"record": round(record_s, 1), "train": round(train_s, 1)},
    }
    path = save_generalist(args.out, learner, result.kept_step, summary)
    if args.eval_episodes > 0:
        t0 = time.monotonic()
        for task in tasks:
            ev = evaluate_task(args.out, task, configs[task], args.eval_episodes)
            task_info[task]["eval"] = ev
            summary["success"][task] = {k: ev[k] for k in ("stochastic", "stochastic_ci95", "deterministic",
                                                           "deterministic_ci95", "episodes")}
            say(f"{task}: success over {args.eval_episodes} held-out episodes (seeds {ev['first_seed']}..): sampled "
                f"{ev['stochastic']:.0%} [{ev['stochastic_ci95'][0]:.0%}, {ev['stochastic_ci95'][1]:.0%}], mode "
                f"{ev['deterministic']:.0%} [{ev['deterministic_ci95'][0]:.0%}, {ev['deterministic_ci95'][1]:.0%}]")
        summary["wall_s"]["eval"] = round(time.monotonic() - t0, 1)
    summary["wall_s"]["total"] = round(time.monotonic() - started, 1)
    path.write_text(json.dumps(summary, indent=2))
    say(f"wrote {args.out} in {summary['wall_s']['total']:.0f} s (use it as a steering base: load_generalist(folder, "
        "env id))")
    return 0
