"""`serl train-bc`: behaviour-cloning a policy from demonstrations, writing it as a run folder, evaluating it.

Owns: the command's options (`BC_OPTIONS`, `agents.bc.BCSettings` fields), checking the demonstrations against the
config before anything trains (env id, observation keys and shapes, action size, at least two episodes), the
fitting with progress, and the `--out` folder (`config.yaml`, `checkpoints/<step>/policy`, `bc.json`) that
`agent.bc.prior_run`, `mixing.baseline_run` and `serl eval --run-dir` read. The model and its training are
`agents/bc.py`'s; restoring it is the inference side's (`inference.load_bc_policy`). Only the standard library is
imported at module level, so the parser can read `BC_OPTIONS` without loading JAX.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from serl_stack.config import Config

BC_OPTIONS = (
    ("steps", int, "most gradient steps; the one with the lowest validation loss is kept (default 3000)"),
    ("lr", float, "Adam learning rate (default 0.003)"),
    ("batch-size", int, "transitions per step (default 256)"),
    ("std-floor", float, "lower bound of the policy's std, pre-tanh (default 0.05)"),
    ("val-fraction", float, "share of the episodes held out for the validation loss (default 0.2)"),
)
"""`serl train-bc`'s training options: `agents.bc.BCSettings` fields (dashes for underscores) and their help."""


def train_bc(cfg: Config, args: argparse.Namespace) -> int:
    """`serl train-bc`: demonstrations -> BC policy (checkpoint, config.yaml, bc.json in --out) -> evaluation."""
    import json
    import time

    from serl_stack.checkpoint import Checkpointer
    from serl_stack.data.demos import DemoFormatError, load_episodes, load_metadata, spec_mismatch
    from serl_stack.data.obs import to_vector
    from serl_stack.inference import evaluate, example_vector_keys, load_bc_policy
    from serl_stack.rundir import BC_KIND, BC_SUMMARY, CHECKPOINTS, write_config

    def fail(message: str, code: int = 2) -> int:
        print(f"serl train-bc: {message}", file=sys.stderr)
        return code

    if (args.out / BC_SUMMARY).exists() or (args.out / CHECKPOINTS).exists():
        return fail(f"--out: {args.out} already holds a policy; expected a new folder")
    if args.episodes < 0:
        return fail(f"--episodes: got {args.episodes}, expected >= 0")
    if cfg.agent.image_keys:
        return fail(f"agent.image_keys: got {list(cfg.agent.image_keys)}, expected [] (train-bc clones from state "
                    "vectors only)")
    try:
        meta = load_metadata(args.demos)
    except DemoFormatError as e:
        return fail(f"--demos: {e}; record demonstrations with `serl record-demos --out DIR`")
    if meta["num_episodes"] < 2:
        return fail(f"--demos: {args.demos} holds {meta['num_episodes']} episode(s), expected at least 2 (one is held "
                    "out for the validation loss); record more with `serl record-demos`")
    if meta["env_id"] != cfg.env.id:
        return fail(f"--demos: {args.demos} holds demonstrations of env.id {meta['env_id']!r}, expected the config's "
                    f"env.id {cfg.env.id!r}")
    flat, keys, action_dim = example_vector_keys(cfg)
    problem = spec_mismatch(meta, flat, keys, action_dim, cfg.env.id)
    if problem is not None:
        return fail(f"--demos: {problem}")

    from serl_stack.agents.bc import BCSettings, fit, make_dataset

    given = {name.replace("-", "_"): getattr(args, name.replace("-", "_")) for name, _, _ in BC_OPTIONS}
    try:
        settings = BCSettings(hidden_dims=tuple(args.hidden_dims or cfg.agent.hidden_dims),
                              seed=cfg.train.seed if args.seed is None else args.seed,
                              **{k: v for k, v in given.items() if v is not None})
    except ValueError as e:  # BCSettings names the field: the option is the same name with dashes
        field, _, rest = str(e).partition(":")
        return fail(f"--{field.replace('_', '-')}:{rest}")
    episodes = [(to_vector(ep.observations, keys, batch_dims=1)[:-1], ep.actions) for ep in load_episodes(args.demos)]
    data = make_dataset(episodes, settings.val_fraction, settings.seed)
    print(f"train-bc: {len(data.train_obs)} transitions from {len(data.train_episodes)} episodes, "
          f"{len(data.val_obs)} from {len(data.val_episodes)} held out; MLP {list(settings.hidden_dims)}, "
          f"{settings.steps} steps at most, lr {settings.lr:g}, std floor {settings.std_floor:g}", flush=True)
    start = time.monotonic()

    def progress(step: int, train_loss: float, val_loss: float) -> None:
        if step % 500 == 0 or step == settings.steps:
            print(f"train-bc: step {step}: train loss {train_loss:.3f}, validation loss {val_loss:.3f}", flush=True)

    result = fit(data, settings, progress)
    seconds = time.monotonic() - start
    print(f"train-bc: kept step {result.best_step}: validation loss {result.val_loss:.3f} (mean -log pi per held-out "
          f"transition), deterministic-action MSE {result.val_mode_mse:.4f}, {seconds:.1f} s", flush=True)

    # The folder reads as a run folder too (config.yaml + checkpoints/<step>/policy), so `serl eval --run-dir` and
    # `mixing.baseline_run` restore it like any policy; its config says the BC network's widths.
    run_cfg = dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, hidden_dims=settings.hidden_dims))
    write_config(args.out, run_cfg)
    learner = result.learner
    checkpoints = Checkpointer(args.out / CHECKPOINTS, max_to_keep=1)
    try:
        checkpoints.save(result.best_step, learner, {"updates": result.best_step, "params_version": 1},
                         policy=learner.policy_params)
    finally:
        checkpoints.close()
    summary = {
        "kind": BC_KIND, "demos": str(args.demos), "env_id": cfg.env.id, "obs_keys": list(keys),
        "obs_dim": int(data.train_obs.shape[1]), "action_dim": action_dim,
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(settings).items()},
        "train_episodes": list(data.train_episodes), "val_episodes": list(data.val_episodes),
        "train_transitions": len(data.train_obs), "val_transitions": len(data.val_obs),
        "best_step": result.best_step, "val_loss": result.val_loss, "train_loss": result.train_loss,
        "val_mode_mse": result.val_mode_mse, "train_seconds": round(seconds, 1),
        "curve": [list(point) for point in result.curve], "eval": None,
    }
    (args.out / BC_SUMMARY).write_text(json.dumps(summary, indent=2))
    if args.episodes > 0:
        from serl_stack.envs import make_env

        policy, _ = load_bc_policy(args.out)  # evaluate what is on disk, as every later user will restore it
        env = make_env(cfg.env)
        try:
            summary["eval"] = evaluate(env, policy, args.episodes, cfg.train.eval_seed)
        finally:
            env.close()
        (args.out / BC_SUMMARY).write_text(json.dumps(summary, indent=2))
        rate = summary["eval"]["success_rate"]
        success = "n/a" if rate is None else f"{100 * rate:.0f}%"
        print(f"train-bc: evaluation on {args.episodes} held-out episodes (seeds {cfg.train.eval_seed}..): success "
              f"{success}, return {summary['eval']['return_mean']:.2f}", flush=True)
    print(f"train-bc: wrote {args.out} (use it as agent.bc.prior_run or mixing.baseline_run)", flush=True)
    return 0
