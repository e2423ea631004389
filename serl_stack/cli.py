"""The `serl` command: `serl train` (learner + actors on one machine), `serl learner`, `serl actor`, `serl config`.

`serl keys` writes a CurveZMQ keypair for `transport.curve` (see docs/security.md). `serl record-demos` records
scripted demonstrations in the format of docs/demos.md; `serl train-bc` behaviour-clones a policy from them (the
prior of `agent.bc.*`, a mixing baseline); `serl train-critic` trains the Cal-QL critic that steers a policy
(`steering.*`); `serl serve-policy` hosts a policy for a `RemotePolicy`. `serl eval` evaluates a run's checkpoint
(evaluation.py).

Owns: argument parsing, per-process setup (XLA/BLAS thread counts and the XLA compilation cache are set here,
before JAX is imported, so each process uses the cores it was given and a restart reuses what the last one
compiled; Ctrl-C handling) and the one place where errors become messages and exit codes: a `ConfigError` or
`SerlError` from below prints one line and exits 2 (bad input) or 1; anything else is an internal error, printed
as one line too; `--debug` shows the traceback. Everything heavy is imported inside the subcommand that needs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from serl_stack.config import Config, ConfigError, dump, load
from serl_stack.errors import RunDirError, SerlError


def set_thread_env(threads: int) -> None:
    """Limit XLA's CPU backend and BLAS pools to `threads`, 0 = no limit (must run before `import jax`)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    if threads <= 0:
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(threads))
    flags = os.environ.get("XLA_FLAGS", "")
    if "intra_op_parallelism_threads" not in flags and threads == 1:
        flags += " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    os.environ["XLA_FLAGS"] = flags.strip()


def set_compile_cache_env() -> None:
    """Let every process reuse XLA programs compiled by an earlier one (a resume, the next actor, `serl eval`): JAX's
    persistent compilation cache in `$XDG_CACHE_HOME/serl_stack/xla` (default `~/.cache/serl_stack/xla`), every
    program cached however quickly it compiled (most of ours take well under JAX's 1 s default, yet together they
    cost seconds at every start). Settings the user made win: `JAX_COMPILATION_CACHE_DIR` moves the cache,
    `JAX_ENABLE_COMPILATION_CACHE=false` turns it off. A default folder that cannot be created or written (a
    read-only home) leaves the cache off rather than warn at every compile. Must run before `import jax`."""
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "serl_stack" / "xla"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return
        if not os.access(folder, os.W_OK):
            return
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(folder)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, default=None, help="YAML config (default: the built-in sim reach)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field by dotted path, e.g. --set agent.utd=4 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serl", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error (default: one line)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", parents=[common],
                       help="train in sim: spawn a learner and train.num_actors actor processes talking ZeroMQ")
    _add_config_args(p)
    p.add_argument("--run-dir", type=Path, default=None, help="where logs and checkpoints go (default: a new folder)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --run-dir (its config.yaml unless --config is given)")

    for name, what in (("learner", "run the learner process"), ("actor", "run one actor process")):
        p = sub.add_parser(name, parents=[common], help=what)
        _add_config_args(p)
        p.add_argument("--run-dir", type=Path, required=True, help="run folder for logs/checkpoints")
        p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
        if name == "actor":
            p.add_argument("--env", choices=("sim", "franka"), default=None,
                           help="franka: the task on a Franka through the ROS 2 bridge (sets env.kind; bridge.*)")
            p.add_argument("--dry-run", action="store_true",
                           help="with --env franka: publish targets on bridge.dry_run_topic, not to the controller "
                           "(sets bridge.dry_run), to watch them in RViz before arming")
            p.add_argument("--actor-id", default=None,
                           help="this actor's id (sets transport.actor_id; with train.num_actors > 1 it ends in "
                           "-<i>, e.g. actor-1)")
        else:
            p.add_argument("--resume", action="store_true",
                           help="continue the run in --run-dir: rebuild the replay from its log, restore the "
                           "latest checkpoint (needed when the folder already holds a run)")

    p = sub.add_parser("config", parents=[common],
                       help="check a config (ranges, the env, the baseline, demos, keys) and print it as YAML")
    _add_config_args(p)

    p = sub.add_parser("keys", parents=[common],
                       help="write a CurveZMQ keypair (NAME.key public, NAME.key_secret secret, mode 0600)")
    p.add_argument("--out", type=Path, required=True, help="folder for the two files (created if missing)")
    p.add_argument("--name", required=True, help="file name stem, e.g. learner or actor-0")
    p.add_argument("--actor-id", default=None, help="bind the key to this actor id (default: the file name stem)")

    p = sub.add_parser("fake-franka", parents=[common],
                       help="run the MuJoCo-backed fake Franka, speaking franka_ros2 + CRISP's topics over DDS "
                       "(bridge.namespace, bridge.domain_id), until Ctrl-C")
    _add_config_args(p)
    p.add_argument("--rate", type=float, default=250.0, help="state topics' rate (Hz; 250)")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: at Ctrl-C)")

    p = sub.add_parser("teach", parents=[common],
                       help="record the workspace corners, home pose and reach goal from the robot's TCP pose")
    _add_config_args(p)
    p.add_argument("--out", type=Path, required=True, help="YAML to write (use it as bridge.teach_file)")

    p = sub.add_parser("record-demos", parents=[common],
                       help="record scripted (or --policy) episodes, successful ones only unless --all (docs/demos.md)")
    _add_config_args(p)
    p.add_argument("--out", type=Path, required=True, help="new demo folder (must not already hold demos)")
    p.add_argument("--episodes", type=int, required=True,
                   help="episodes to run at most; only the successful ones are kept")
    p.add_argument("--keep", type=int, default=None,
                   help="stop once this many successful episodes are kept (default: run all --episodes)")
    p.add_argument("--noise", type=float, default=0.1,
                   help="std of Gaussian noise on the scripted action (0.1; not with --policy)")
    p.add_argument("--seed", type=int, default=None, help="first reset seed and noise seed (default: train.seed)")
    p.add_argument("--policy", type=Path, default=None,
                   help="record this policy's episodes instead of the scripted controller's: a `serl train` run, a "
                        "`serl train-bc` folder or a `serl train-generalist` folder (on env.id's task), sampling its "
                        "actions (the rollouts a steering critic learns from)")
    p.add_argument("--all", action="store_true",
                   help="keep failed episodes too, each with its success flag (for serl train-critic)")
    p = sub.add_parser("train-bc", parents=[common],
                       help="behaviour-clone a policy from demonstrations (the prior of agent.bc.*), evaluate it")
    _add_config_args(p)
    p.add_argument("--demos", type=Path, required=True, help="demo folder (`serl record-demos --out`) of the task")
    p.add_argument("--out", type=Path, required=True, help="new folder for the policy's checkpoint, config and bc.json")
    p.add_argument("--episodes", type=int, default=20,
                   help="deterministic evaluation episodes on seeds train.eval_seed + i (20; 0 = none)")
    p.add_argument("--hidden-dims", type=lambda t: tuple(int(x) for x in t.split(",")), default=None,
                   help="MLP widths, e.g. 256,256 (default: agent.hidden_dims, so the weights can start the SAC actor)")
    # Defaults are `agents.bc.BCSettings`' (None here: the parser must not import JAX); the help states them and
    # tests/test_bc.py checks that it states them right.
    from serl_stack.train_bc import BC_OPTIONS  # standard library only: no JAX at parse time

    for name, kind, what in BC_OPTIONS:
        p.add_argument(f"--{name}", type=kind, default=None, help=what)
    p.add_argument("--seed", type=int, default=None, help="initialization, split and minibatches (default: train.seed)")
    p = sub.add_parser("train-critic", parents=[common],
                       help="train the Cal-QL offline critic (V-GPS steering) on recorded successes and failures")
    _add_config_args(p)
    p.add_argument("--episodes", type=Path, action="append", default=[], metavar="DIR",
                   help="folder of recorded episodes of env.id (demonstrations, base-policy rollouts; repeatable)")
    p.add_argument("--out", type=Path, required=True,
                   help="new folder for the critic (steering.critic_run, serl eval --steer-critic)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out from its last checkpoint (its config and settings)")
    p.add_argument("--hidden-dims", type=lambda t: tuple(int(x) for x in t.split(",")), default=None,
                   help="critic (and Cal-QL actor) MLP widths, e.g. 256,256 (default 256,256)")
    from serl_stack.train_critic import CRITIC_OPTIONS  # standard library only: no JAX at parse time

    for name, kind, what in CRITIC_OPTIONS:
        p.add_argument(f"--{name}", type=kind, default=None, help=what)
    p.add_argument("--checkpoint-every", type=int, default=None, help="updates between checkpoints (default 2000)")
    p.add_argument("--seed", type=int, default=None, help="initialization and minibatches (default: train.seed)")

    p = sub.add_parser("train-generalist", parents=[common],
                       help="train the multi-task generalist stand-in a steering critic steers (docs/steering.md)")
    from serl_stack.train_generalist import add_arguments as generalist_arguments  # standard library only

    generalist_arguments(p)

    p = sub.add_parser("eval", parents=[common],
                       help="evaluate a run's checkpoint with deterministic episodes, optionally as an MP4")
    p.add_argument("--run-dir", type=Path, required=True, help="the run folder (its config.yaml and checkpoints/)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step to load (default: the latest)")
    p.add_argument("--episodes", type=int, default=10, help="deterministic episodes to run (10)")
    p.add_argument("--first-seed", type=int, default=None,
                   help="reset seed of the first episode, then +1 each (default: the run's train.eval_seed)")
    p.add_argument("--video", type=Path, default=None, help="write every frame of every episode to this .mp4")
    p.add_argument("--fps", type=float, default=None, help="video frame rate (default: the env's env.control_hz)")
    p.add_argument("--steer-critic", type=Path, default=None,
                   help="a run folder whose critic reranks --k proposals of the policy each step (V-GPS)")
    p.add_argument("--k", type=int, default=32, help="with --steer-critic: proposals per step (32)")
    p = sub.add_parser("serve-policy", parents=[common],
                       help="serve a trained or behaviour-cloned policy over ZeroMQ (a RemotePolicy's server)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run-dir", type=Path, help="a `serl train` run folder: serve its latest (or --step) policy")
    which.add_argument("--bc", type=Path, help="a `serl train-bc --out` folder: serve its behaviour-cloned policy")
    p.add_argument("--step", type=int, default=None, help="with --run-dir: checkpoint step (default: the latest)")
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5600",
                   help="where to listen, e.g. tcp://0.0.0.0:5600 (port * picks a free one; default %(default)s)")
    p.add_argument("--action-low", type=_floats, default=None,
                   help="the range the policy's actions are in: one number or a comma list (default -1)")
    p.add_argument("--action-high", type=_floats, default=None, help="as --action-low (default 1)")
    p.add_argument("--name", default="", help="a name the clients see in `hello` (default: the folder)")
    return parser


def _floats(text: str) -> list[float] | float:
    """One number or a comma-separated list (an action bound per dimension)."""
    values = [float(t) for t in text.split(",")]
    return values[0] if len(values) == 1 else values


def _serve_policy(args: argparse.Namespace) -> int:
    """`serl serve-policy`: host a run's or a BC folder's policy until Ctrl-C; a JSON summary on stdout."""
    import json

    from serl_stack.rundir import read_run_config

    folder = args.run_dir if args.run_dir is not None else args.bc
    if args.bc is not None and args.step is not None:
        raise ConfigError("--step: only with --run-dir (a `serl train-bc` folder holds one policy)")
    cfg = read_run_config(folder)  # before JAX is imported: its thread count comes from the run
    set_thread_env(cfg.train.actor_threads)
    from serl_stack.inference import load_bc_policy, load_policy
    from serl_stack.steering.remote import serve_policy

    if args.run_dir is not None:
        _, policy, _ = load_policy(args.run_dir, args.step)
    else:
        policy, _ = load_bc_policy(args.bc)

    def ready(server: object) -> None:
        endpoint = getattr(server, "endpoint", args.endpoint)
        print(f"serl serve-policy: serving {folder} on {endpoint} (Ctrl-C stops)", file=sys.stderr, flush=True)

    result = serve_policy(policy, args.endpoint, action_dim=policy.action_dim, action_low=args.action_low,
                          action_high=args.action_high, name=args.name or str(folder), on_ready=ready)
    print(json.dumps(result), flush=True)
    return 0


def _eval(args: argparse.Namespace) -> int:
    """`serl eval`: one line of JSON on stdout (for scripts), a readable summary on stderr."""
    from serl_stack.errors import EvalError
    from serl_stack.rundir import read_run_config

    if args.episodes < 1:
        raise EvalError(f"--episodes: got {args.episodes}, expected >= 1")
    cfg = read_run_config(args.run_dir)  # before JAX is imported: its thread count comes from the run
    set_thread_env(cfg.train.actor_threads)
    from serl_stack.evaluation import run_eval, summary, to_json

    try:
        result = run_eval(args.run_dir, args.step, args.episodes, args.first_seed, args.video, args.fps,
                          steer_critic=args.steer_critic, k=args.k)
    except KeyboardInterrupt:
        print("serl eval: interrupted (a video being written is incomplete)", file=sys.stderr)
        return 130
    print(to_json(result), flush=True)
    print(summary(result), file=sys.stderr)
    return 0


def _record_demos(cfg: Config, args: argparse.Namespace) -> int:
    import numpy as np
    from rich.progress import Progress

    from serl_stack.config import to_dict
    from serl_stack.data.demos import METADATA_FILE, DemoFormatError, EpisodeBuilder, save_episode
    from serl_stack.envs import make_env
    from serl_stack.envs.scripted import make_scripted

    if args.episodes < 1:
        print(f"serl record-demos: --episodes: got {args.episodes}, expected >= 1", file=sys.stderr)
        return 2
    if args.keep is not None and not 1 <= args.keep <= args.episodes:
        print(f"serl record-demos: --keep: got {args.keep}, expected 1..--episodes ({args.episodes})", file=sys.stderr)
        return 2
    if (args.out / METADATA_FILE).exists():
        print(f"serl record-demos: --out: {args.out} already holds demos; expected a new folder", file=sys.stderr)
        return 2
    seed = cfg.train.seed if args.seed is None else args.seed
    if args.policy is not None:
        policy = _recording_policy(args.policy, seed, cfg.env.id)
    else:
        try:
            policy = make_scripted(cfg.env, args.noise, np.random.default_rng(seed))
        except ValueError as e:
            print(f"serl record-demos: {e}", file=sys.stderr)
            return 2
    env = make_env(cfg.env)
    builder = EpisodeBuilder()
    kept = failed = ran = 0
    try:
        with Progress() as progress:
            task = progress.add_task("recording", total=args.episodes)
            for i in range(args.episodes):
                obs, info = env.reset(seed=seed + i)
                if hasattr(policy, "reset"):
                    policy.reset()
                builder.start(obs)
                done = False
                while not done:
                    action = policy(obs)
                    obs, reward, terminated, truncated, info = env.step(action)
                    # The command the scripted policy sent, before the safety filter: the label the learner uses by
                    # default (replay.action_source: policy), so demonstrations and online data agree.
                    builder.add(action, reward, obs, terminated, truncated)
                    done = terminated or truncated
                success = bool(info.get("success", False))
                if success or args.all:
                    save_episode(args.out, builder.build(success=success), env_id=cfg.env.id, config=to_dict(cfg))
                    kept += success
                    failed += not success
                what = f"{kept} successful, {failed} failed kept" if args.all else f"{kept} kept"
                progress.update(task, advance=1, description=f"recording ({what})")
                ran = i + 1
                if kept == args.keep:
                    break
    except (DemoFormatError, OSError) as e:
        print(f"serl record-demos: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"serl record-demos: interrupted; the {kept} episodes kept so far are in {args.out}", file=sys.stderr)
        return 130
    finally:
        env.close()
    if args.all:
        print(f"kept all {ran} episodes ({kept} successful, {failed} failed) in {args.out}")
    else:
        print(f"kept {kept} of {ran} episodes (successful only) in {args.out}")
    if args.keep is not None and kept < args.keep:
        print(f"serl record-demos: only {kept} of --keep {args.keep} successful episodes in {args.episodes} tries",
              file=sys.stderr)
        return 1
    return 0


class _Sampled:
    """`serl record-demos --policy`: a callable obs -> action sampling a `Policy`, one fresh key per step, and
    `reset()` at each episode's start (a chunked policy then draws a new chunk)."""

    def __init__(self, policy: Any, seed: int) -> None:
        from serl_stack.inference import KeyStream

        self.policy, self.keys = policy, KeyStream(seed)

    def __call__(self, obs: Any) -> Any:
        import numpy as np

        return np.asarray(self.policy.act(obs, next(self.keys), False), np.float32)

    def reset(self) -> None:
        self.policy.reset()


def _recording_policy(folder: Path, seed: int, env_id: str) -> _Sampled:
    """The policy in `folder` (a `serl train-bc` folder, a `serl train-generalist` folder acting on `env_id`'s task,
    or a `serl train` run), sampled."""
    from serl_stack.inference import load_bc_policy, load_policy
    from serl_stack.rundir import BC_SUMMARY, GENERALIST_SUMMARY

    if (folder / BC_SUMMARY).is_file():
        return _Sampled(load_bc_policy(folder)[0], seed)
    if (folder / GENERALIST_SUMMARY).is_file():
        from serl_stack.steering.generalist import load_generalist

        return _Sampled(load_generalist(folder, env_id)[0], seed)
    return _Sampled(load_policy(folder)[1], seed)


def _fake_franka(cfg: Config, args: argparse.Namespace) -> int:
    """`serl fake-franka`: the fake arm of `cfg.env` on `cfg.bridge`'s topics, until Ctrl-C or `--duration`."""
    import time

    from robot_bridge.fake_franka import FakeFranka
    from robot_bridge.realtime import use_realtime

    use_realtime(cfg.bridge.realtime_priority)  # before its DDS participant: the threads inherit the policy
    fake = FakeFranka(cfg.env, cfg.bridge, rate_hz=args.rate)
    fake.start()
    topics = ", ".join(fake.topics.values())
    print(f"fake franka: domain {cfg.bridge.domain_id}, state at {args.rate:g} Hz on {topics}; Ctrl-C stops it",
          flush=True)
    deadline = time.monotonic() + args.duration if args.duration > 0 else float("inf")
    try:
        while fake.running and time.monotonic() < deadline:
            time.sleep(0.2)
        fake.check()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    s = fake.stats()
    print(f"fake franka: stopped after {s.wall_s:.1f} s, {s.state_rate_hz:.1f} states/s, {s.targets_applied} targets",
          flush=True)
    return 0


def _keys(args: argparse.Namespace) -> int:
    from serl_stack.transport.auth import KeyFileError, generate_keypair

    try:
        public, secret = generate_keypair(args.out, args.name, args.actor_id)
    except (KeyFileError, OSError) as e:
        print(f"serl keys: {e}", file=sys.stderr)
        return 2
    print(f"public key: {public}  (safe to share)")
    print(f"secret key: {secret}  (mode 0600; keep it on this machine only)")
    if args.actor_id is None:  # no id: the pair may serve the learner, or an actor named by the file
        print(
            f"As the learner: run it with transport.curve=true transport.learner_secret_key={secret}\n"
            "  transport.allowed_actors_dir=<folder of actors' .key files>, and give each actor a copy of\n"
            f"  {public} as its transport.learner_public_key."
        )
    prefix = "Or as" if args.actor_id is None else "As"
    print(
        f"{prefix} actor {args.actor_id or args.name!r}: copy {public} into the learner's\n"
        "  transport.allowed_actors_dir (then restart the learner), and run this actor with transport.curve=true\n"
        f"  transport.actor_secret_key={secret} transport.learner_public_key=<the learner's .key file>."
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    """The subcommand itself; errors propagate to `main`."""
    if args.command == "keys":
        return _keys(args)
    if args.command == "serve-policy":  # the config is the run's own, like eval's
        return _serve_policy(args)
    if args.command == "eval":  # the config is the run's own (read by evaluation.py), not --config
        return _eval(args)
    if args.command == "train-generalist":  # each task's config is its own (configs/), not --config
        set_thread_env(0)
        from serl_stack.train_generalist import train_generalist

        return train_generalist(args)
    if args.command == "train" and args.resume:
        if args.run_dir is None:
            raise RunDirError("--resume needs --run-dir (the run to continue)")
        if not (args.run_dir / "config.yaml").is_file():
            from serl_stack.rundir import check_new_or_resumed

            check_new_or_resumed(args.run_dir, resume=True)  # names what is missing
            raise RunDirError(f"--run-dir: {args.run_dir / 'config.yaml'} not found; expected the config of the run "
                              "to continue")
        if args.config is None:
            args.config = args.run_dir / "config.yaml"
    if args.command == "train-critic" and args.resume and args.config is None \
            and (args.out / "config.yaml").is_file():
        args.config = args.out / "config.yaml"  # the run's own (its thread count too); train_critic checks the rest
    overrides = list(args.overrides)
    if args.command == "actor" and args.env is not None:
        overrides.append(f"env.kind={args.env}")
    if args.command == "actor" and args.dry_run:
        overrides.append("bridge.dry_run=true")
    cfg = load(args.config, overrides)  # validated: a bad range fails here, before anything starts
    if args.command == "actor" and args.actor_id is not None:
        cfg = dataclasses.replace(cfg, transport=dataclasses.replace(cfg.transport, actor_id=args.actor_id))
    if args.command == "fake-franka":
        return _fake_franka(cfg, args)
    if args.command == "teach":
        from robot_bridge import make_backend
        from robot_bridge.teach import teach

        backend = make_backend(cfg.bridge)
        try:
            teach(backend, args.out)
        finally:
            backend.close()
        return 0
    if args.command == "record-demos":
        return _record_demos(cfg, args)
    if args.command == "train-bc":
        set_thread_env(cfg.train.learner_threads)
        from serl_stack.train_bc import train_bc

        return train_bc(cfg, args)
    if args.command == "train-critic":
        set_thread_env(cfg.train.learner_threads)
        from serl_stack.train_critic import train_critic

        return train_critic(cfg, args)
    from serl_stack.preflight import preflight

    preflight(cfg, args.command)
    if args.command == "config":
        print(dump(cfg), end="")
        return 0
    if args.command == "train":
        from serl_stack.orchestrate import train

        return train(cfg, args.run_dir, args.resume, debug=args.debug)
    if args.command == "learner":
        from serl_stack.rundir import check_new_or_resumed

        check_new_or_resumed(args.run_dir, args.resume)  # before JAX loads: a typo in --run-dir fails at once
        set_thread_env(cfg.train.learner_threads)
        from serl_stack.learner import run_learner

        return run_learner(cfg, args.run_dir, args.parent_pid, args.resume)
    set_thread_env(cfg.train.actor_threads)
    from serl_stack.actor import run_actor

    return run_actor(cfg, args.run_dir, args.parent_pid)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_compile_cache_env()
    if args.command in ("train", "record-demos", "train-bc", "train-critic", "train-generalist"):
        # A process started in the background by a non-interactive shell inherits SIGINT as *ignored*, and Python
        # then leaves it ignored; take it back so Ctrl-C always stops a run cleanly.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.command in ("learner", "actor", "eval", "serve-policy"):
        from serl_stack import interrupt

        # Ctrl-C stops the loop at a safe point (checkpoint saved, spool flushed), never inside a callback.
        interrupt.install()
    where = f"serl {args.command}"
    try:
        return _run(args)
    except ConfigError as e:
        if args.debug:
            traceback.print_exc()
        print(f"{where}: config error: {e}", file=sys.stderr)
        return 2
    except SerlError as e:
        if args.debug:
            traceback.print_exc()
        print(f"{where}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not bad input: one line unless --debug asks for the traceback
        if args.debug:
            raise
        print(f"{where}: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
