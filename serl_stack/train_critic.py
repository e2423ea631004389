"""`serl train-critic`: the Cal-QL offline critic of value-guided steering (V-GPS), trained on recorded episodes.

Owns: the command's options (`CRITIC_OPTIONS`), checking the episode folders against the config before anything
trains (each folder exists and holds episodes of the config's env.id, the observation keys and shapes, the action
size, at least one successful and one failed episode overall, finite actions in [-1, 1]), the update loop around
`agents.calql.train_critic` with progress lines, TensorBoard scalars, periodic and Ctrl-C checkpoints, `--resume`,
and the `--out` folder that `steering.critic_run` and `serl eval --steer-critic` read:

- `config.yaml`: the run config with `agent.hidden_dims/num_critics/critic_layer_norm` the critic's
  (`CalQLConfig.agent_config()`), its env and `agent.obs_keys` unchanged, so `steering.guided.load_critic(folder,
  read_run_config(folder).agent, ...)` builds this critic;
- `checkpoints/<updates>/state`: `{"critic": {"params": target critic}, "obs_norm": ..., "calql": CalQLState}`,
  the first two in the layout `load_critic` reads (V-GPS scores with the target critic), the whole learner state
  under `calql` for `--resume`;
- `critic.json` (`CRITIC_SUMMARY`): what was trained on what, how far, with which settings and final metrics;
- `tb/critic/`: TensorBoard scalars `critic/<metric>` at the update count (`runlog.read_scalars` reads them).

The critic, its labels and its training are `agents/calql.py`'s and `data/labels.py`'s. Only the standard library
is imported at module level, so the parser can read `CRITIC_OPTIONS` without loading JAX.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serl_stack.config import Config

CRITIC_SUMMARY = "critic.json"
"""What `serl train-critic` writes beside its checkpoints: data, settings, progress and final metrics."""
CRITIC_KIND = "serl_stack.calql_critic"
"""`critic.json`'s `kind`: tells a critic folder from a `serl train` run or a `serl train-bc` folder."""
TB_SUBDIR = ("tb", "critic")
"""Where the TensorBoard scalars go, under --out."""
DEFAULT_CHECKPOINT_EVERY = 2000

CRITIC_OPTIONS = (
    ("num-updates", int, "the run's total update budget (default 20000; with --resume: the run's own, or a larger "
                         "one to train further)"),
    ("batch-size", int, "transitions per update (default 256)"),
    ("log-every", int, "updates per jitted chunk and progress line (default 500)"),
    ("tau", float, "Polyak rate of the target critics (default 0.005, V-GPS's for 1M updates; a budget of a few "
                   "thousand updates learns faster with a faster target, e.g. 0.02: docs/steering.md)"),
)
"""`serl train-critic`'s `CalQLConfig` options (dashes for underscores) and their help, defaults stated as text:
the parser must not import JAX (tests/test_train_critic.py checks the text against `CalQLConfig`)."""
SETTINGS = ("hidden_dims", "num_updates", "batch_size", "log_every", "tau")
"""The `CalQLConfig` fields the command sets (`--hidden-dims` and `CRITIC_OPTIONS`); the rest are its defaults."""


class _Refused(Exception):
    """Bad input: the message names the option or field, what was seen and what was expected (exit 2)."""


def train_critic(cfg: Config, args: argparse.Namespace) -> int:
    """`serl train-critic`: episode folders -> Cal-QL critic (config.yaml, checkpoints, critic.json in --out)."""
    try:
        return _train(cfg, args)
    except _Refused as e:
        print(f"serl train-critic: {e}", file=sys.stderr)
        return 2


# ------------------------------------------------------------------------------------------- the run's settings


def _previous(args: argparse.Namespace) -> dict[str, Any] | None:
    """The summary of the run --resume continues (None for a new run); refuses a folder that does not fit."""
    import json

    out: Path = args.out
    if not args.resume:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise _Refused(f"--out: {out} already exists; expected a new folder (or --resume to continue the "
                           "interrupted run in it)")
        return None
    path = out / CRITIC_SUMMARY
    if not path.is_file():
        what = "does not exist" if not out.exists() else f"has no {CRITIC_SUMMARY}"
        raise _Refused(f"--out: {out} {what}; --resume continues an interrupted `serl train-critic` run, expected "
                       "its --out folder")
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise _Refused(f"--out: {path}: not valid JSON: {e}") from e
    if not isinstance(summary, dict) or summary.get("kind") != CRITIC_KIND:
        kind = summary.get("kind") if isinstance(summary, dict) else None
        raise _Refused(f"--out: {path}: kind {kind!r}, expected {CRITIC_KIND!r} (written by `serl train-critic`)")
    return summary


def _run_config(cfg: Config, args: argparse.Namespace, previous: dict[str, Any] | None) -> Config:
    """The config to train with: --config/--set for a new run; the run's own config.yaml for --resume (a given
    config must then agree on env.id and agent.obs_keys)."""
    if previous is None:
        return cfg
    from serl_stack.errors import RunDirError
    from serl_stack.rundir import read_run_config

    try:
        own = read_run_config(args.out)
    except RunDirError as e:
        raise _Refused(f"--out: {e}") from e
    if args.config is not None or args.overrides:
        for name, mine, given in (("env.id", own.env.id, cfg.env.id),
                                  ("agent.obs_keys", list(own.agent.obs_keys), list(cfg.agent.obs_keys))):
            if mine != given:
                raise _Refused(f"{name}: got {given!r}, expected {mine!r}, the value of the run being resumed "
                               f"({args.out / 'config.yaml'}); leave out --config/--set to use it")
    return own


def _settings(cfg: Config, args: argparse.Namespace, previous: dict[str, Any] | None) -> tuple[Any, int, int]:
    """(CalQLConfig, seed, checkpoint interval): the options over `CalQLConfig`'s defaults for a new run; the run's
    own for --resume, where only a larger --num-updates may differ."""
    from serl_stack.agents.calql import CalQLConfig

    given = {"hidden_dims": args.hidden_dims, **{name.replace("-", "_"): getattr(args, name.replace("-", "_"))
                                                 for name, _, _ in CRITIC_OPTIONS}}
    seed = args.seed
    every = args.checkpoint_every
    if every is not None and every < 1:
        raise _Refused(f"--checkpoint-every: got {every}, expected >= 1")
    if previous is not None:
        stored = previous["calql"]
        for name, value in given.items():
            if name == "num_updates" or value is None:
                continue
            if (tuple(value) if name == "hidden_dims" else value) != (
                    tuple(stored[name]) if name == "hidden_dims" else stored[name]):
                raise _Refused(f"--{name.replace('_', '-')}: got {value}, expected the resumed run's "
                               f"{stored[name]} (or leave it out)")
        if seed is not None and seed != previous["seed"]:
            raise _Refused(f"--seed: got {seed}, expected the resumed run's {previous['seed']} (or leave it out)")
        done = int(previous.get("updates_done", 0))
        total = previous["num_updates"] if args.num_updates is None else args.num_updates
        if total < done:
            raise _Refused(f"--num-updates: got {total}, expected >= {done}, the updates the run has done")
        known = {f.name for f in dataclasses.fields(CalQLConfig)}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in stored.items() if k in known}
        return CalQLConfig(**{**values, "num_updates": max(total, 1)}), int(previous["seed"]), \
            int(previous["checkpoint_every"] if every is None else every)
    try:
        calql_cfg = CalQLConfig(**{k: v for k, v in given.items() if v is not None})
    except ValueError as e:  # "calql.<field>: ..." -> the option of that field
        field, _, rest = str(e).partition(":")
        raise _Refused(f"--{field.removeprefix('calql.').replace('_', '-')}:{rest}") from e
    return calql_cfg, cfg.train.seed if seed is None else seed, DEFAULT_CHECKPOINT_EVERY if every is None else every


# ------------------------------------------------------------------------------------------- the data


def _sources(cfg: Config, folders: list[Path], keys: tuple[str, ...], flat: dict[str, Any],
             action_dim: int) -> list[dict[str, Any]]:
    """Each folder's metadata checked against the config (env id, observation keys and shapes, action size);
    `[{"path", "episodes", "successes", "transitions"}]`."""
    from serl_stack.data.demos import DemoFormatError, load_metadata, spec_mismatch

    if not folders:
        raise _Refused("--episodes: none given; expected at least one folder of recorded episodes (demonstrations "
                       "from `serl record-demos`, base-policy rollouts in the same format)")
    out = []
    for folder in folders:
        try:
            meta = load_metadata(folder)
        except DemoFormatError as e:
            raise _Refused(f"--episodes: {e}; expected a folder of recorded episodes (`serl record-demos --out`, or "
                           "`data.demos.save_episode`)") from e
        if meta["env_id"] != cfg.env.id:
            raise _Refused(f"--episodes: {folder} holds episodes of env.id {meta['env_id']!r}, expected the config's "
                           f"env.id {cfg.env.id!r}")
        if meta["num_episodes"] < 1:
            raise _Refused(f"--episodes: {folder} holds no episodes, expected at least 1")
        problem = spec_mismatch(meta, flat, keys, action_dim, cfg.env.id)
        if problem is not None:
            raise _Refused(f"--episodes: {folder}: {problem}")
        successes = sum(bool(e["success"]) for e in meta["episodes"])
        out.append({"path": str(folder.resolve()), "episodes": meta["num_episodes"], "successes": successes,
                    "transitions": sum(int(e["length"]) for e in meta["episodes"])})
    won = sum(s["successes"] for s in out)
    lost = sum(s["episodes"] - s["successes"] for s in out)
    if won == 0 or lost == 0:
        raise _Refused(f"--episodes: got {won} successful and {lost} failed episodes, expected at least one of each: "
                       "the critic must see both to rank actions (successes alone value every action alike); record "
                       "base-policy rollouts, failures included, with their success flag")
    return out


def _transitions(folders: list[Path], keys: tuple[str, ...], calql_cfg: Any) -> dict[str, Any]:
    """Every transition of every episode with the critic's labels (`labels.episode_transitions`); an episode with
    a non-finite observation or action, or an action outside [-1, 1], is refused naming its folder and index."""
    import numpy as np

    from serl_stack.data.demos import load_episodes
    from serl_stack.data.labels import episode_transitions
    from serl_stack.data.obs import to_vector

    episodes = []
    for folder in folders:
        for i, episode in enumerate(load_episodes(folder)):
            where = f"--episodes: {folder}: episode {i}"
            vec = to_vector(episode.observations, keys, batch_dims=1)
            if not (np.all(np.isfinite(vec)) and np.all(np.isfinite(episode.actions))):
                raise _Refused(f"{where} has non-finite observations or actions (NaN or inf); expected finite numbers")
            worst = float(np.max(np.abs(episode.actions)))
            if worst > 1.0 + 1e-6:
                raise _Refused(f"{where} has actions up to |{worst:.3g}|, expected actions in [-1, 1] (the normalized "
                               "units the critic and the steered policy's proposals share)")
            episodes.append(episode)
    return episode_transitions(episodes, keys, calql_cfg.discount, calql_cfg.num_success_steps)


def _fingerprint(data: dict[str, Any]) -> str:
    """A SHA-256 of the transitions: --resume continues only on the data the run started with."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for k in sorted(data):
        h.update(k.encode())
        h.update(np.ascontiguousarray(data[k]).tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------- the command


def _train(cfg: Config, args: argparse.Namespace) -> int:
    import json

    previous = _previous(args)
    cfg = _run_config(cfg, args, previous)
    if cfg.agent.image_keys:
        raise _Refused(f"agent.image_keys: got {list(cfg.agent.image_keys)}, expected [] (the Cal-QL critic scores "
                       "state vectors only)")
    folders = list(args.episodes) or ([Path(s["path"]) for s in previous["sources"]] if previous else [])
    calql_cfg, seed, every = _settings(cfg, args, previous)

    from serl_stack.inference import example_vector_keys

    flat, keys, action_dim = example_vector_keys(cfg)
    sources = _sources(cfg, folders, keys, flat, action_dim)
    data = _transitions(folders, keys, calql_cfg)
    digest = _fingerprint(data)
    if previous is not None and digest != previous["data_sha256"]:
        raise _Refused(f"--episodes: the transitions of {[s['path'] for s in sources]} ({len(data['rewards'])}) are "
                       f"not the ones the resumed run trained on ({previous['transitions']} from "
                       f"{[s['path'] for s in previous['sources']]}); expected the same data")

    from serl_stack.rundir import write_config

    out: Path = args.out
    if previous is None:  # the agent section builds the critic; env and obs_keys stay the config's
        write_config(out, dataclasses.replace(cfg, agent=dataclasses.replace(
            cfg.agent, hidden_dims=calql_cfg.hidden_dims, num_critics=calql_cfg.num_critics,
            critic_layer_norm=calql_cfg.critic_layer_norm)))
    summary: dict[str, Any] = {
        "kind": CRITIC_KIND, "env_id": cfg.env.id, "obs_keys": list(keys),
        "obs_dim": int(data["observations"].shape[1]), "action_dim": action_dim, "sources": sources,
        "episodes": sum(s["episodes"] for s in sources), "successes": sum(s["successes"] for s in sources),
        "failures": sum(s["episodes"] - s["successes"] for s in sources), "transitions": len(data["rewards"]),
        "data_sha256": digest, "seed": seed, "checkpoint_every": every,
        "calql": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(calql_cfg).items()},
        "num_updates": calql_cfg.num_updates, "updates_done": 0, "status": "running", "metrics": {},
        "train_seconds": 0.0, "checkpoint": None,
    }
    if previous is not None:
        summary.update({k: previous[k] for k in ("updates_done", "metrics", "train_seconds", "checkpoint")})
    path = out / CRITIC_SUMMARY

    def write_summary() -> None:
        path.write_text(json.dumps(summary, indent=2))

    write_summary()
    print(f"train-critic: {summary['transitions']} transitions from {summary['episodes']} episodes "
          f"({summary['successes']} successful, {summary['failures']} failed) in {len(sources)} folder(s); critic "
          f"MLP {list(calql_cfg.hidden_dims)} x {calql_cfg.num_critics}, batch {calql_cfg.batch_size}, "
          f"{calql_cfg.num_updates} updates, checkpoint every {every}", flush=True)
    return _loop(out, data, calql_cfg, seed, every, summary, write_summary)


def _loop(out: Path, data: dict[str, Any], calql_cfg: Any, seed: int, every: int, summary: dict[str, Any],
          write_summary: Callable[[], None]) -> int:
    """The update loop: chunks of `log_every` updates aligned to multiples of it (so the draws are an
    uninterrupted run's, see `calql.train_critic`), a progress line and scalars after each, a checkpoint every
    `every` updates, at the end and on Ctrl-C."""
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np
    from tensorboardX import SummaryWriter

    from serl_stack.agents import calql
    from serl_stack.checkpoint import Checkpointer

    device_data = {k: jnp.asarray(v, jnp.float32) for k, v in data.items()}
    obs = np.asarray(data["observations"], np.float32)
    # `calql.train_critic`'s own initialization of a fresh run, done here so a state exists from update 0 on.
    state = calql.init(seed, obs.shape[1], data["actions"].shape[1], calql_cfg,
                       {"mean": obs.mean(axis=0), "std": obs.std(axis=0)})
    checkpoints = Checkpointer(out / "checkpoints", max_to_keep=2)
    writer = SummaryWriter(str(out.joinpath(*TB_SUBDIR)))
    total, step = calql_cfg.num_updates, 0
    try:
        saved = checkpoints.latest_step()
        if saved is not None:
            restored, _ = checkpoints.restore(checkpoint_item(state))
            state, step = restored["calql"], saved
            print(f"train-critic: resumed from checkpoint {saved} in {out / 'checkpoints'}", flush=True)
        metrics: dict[str, float] = dict(summary["metrics"])
        last_saved, seconds = (saved if saved is not None else -1), float(summary["train_seconds"])
        try:
            while step < total:
                n = min(total, (step // calql_cfg.log_every + 1) * calql_cfg.log_every) - step
                chunk = dataclasses.replace(calql_cfg, num_updates=n, log_every=n)
                start = time.monotonic()
                state = calql.train_critic(device_data, chunk, seed=seed, state=state,
                                           callback=lambda _, m: metrics.update(m))
                jax.block_until_ready(state)
                elapsed = time.monotonic() - start
                step, seconds = step + n, seconds + elapsed
                rate = n / max(elapsed, 1e-9)
                for k, v in metrics.items():
                    writer.add_scalar(f"critic/{k}", v, step)
                writer.add_scalar("critic/updates_per_s", rate, step)
                print(f"train-critic: {step}/{total} updates: td loss {metrics['td_loss']:.3f}, cql gap "
                      f"{metrics['cql_gap']:.3f}, {rate:.1f} updates/s", flush=True)
                summary.update(updates_done=step, metrics=metrics, train_seconds=round(seconds, 2))
                if step - max(last_saved, 0) >= every or step == total:  # the first at `every`
                    _save(checkpoints, state, step, seed, summary)
                    last_saved = step
                    write_summary()
        except KeyboardInterrupt:
            done = int(state.critic.step)  # the last finished chunk (the one in flight is dropped)
            if done != last_saved:
                _save(checkpoints, state, done, seed, summary)
            summary.update(updates_done=done, status="interrupted")
            write_summary()
            print(f"serl train-critic: interrupted after {done} of {total} updates; checkpoint {done} is in "
                  f"{out / 'checkpoints'}. Continue with: serl train-critic --out {out} --resume", file=sys.stderr)
            return 130
    finally:
        writer.close()
        checkpoints.close()
    summary.update(status="done", updates_done=step)
    write_summary()
    print(f"train-critic: {step} updates in {summary['train_seconds']:.1f} s; wrote {out} (use it as "
          f"steering.critic_run, or serl eval --steer-critic {out})", flush=True)
    return 0


def checkpoint_item(state: Any) -> dict[str, Any]:
    """The checkpoint's `state` item: the target critic and normalization where `steering.guided.load_critic` reads
    them (`critic.params`, `obs_norm`), and the whole Cal-QL state under `calql` for --resume."""
    return {"critic": {"params": state.target_critic.params}, "obs_norm": state.obs_norm, "calql": state}


def _save(checkpoints: Any, state: Any, step: int, seed: int, summary: dict[str, Any]) -> None:
    meta = {"updates": step, "seed": seed, "data_sha256": summary["data_sha256"]}
    checkpoints.save(step, checkpoint_item(state), meta)
    summary["checkpoint"] = step
