"""Everything about a run that can be checked before any process starts.

Owns: `preflight(cfg, role)`, what `serl config`, `serl train`, `serl learner` and `serl actor` check after
loading the config and before they start anything. The config's own ranges and cross-field rules are
`config.validate`'s (run on every load); these checks look at the world: the env builds and has the observation
keys the agent asks for (`envs.preflight`), the conservative mixers' baseline exists, the demonstrations folder
holds demonstrations of this task, the behaviour-cloned prior of `agent.bc.*` is a `serl train-bc` folder of this
task and observation keys, the steering critic's run, BC folder or policy server (`steering.*`) are there (under
`steering.online` also: the critic is a `serl train-critic` folder reading the base policy's observation keys), the
CurveZMQ key files load, fixed ports are free (learner) or set (actor), and an actor's id fits `train.num_actors`.
Every error is a `ConfigError` naming the field. No JAX: the `serl train` parent process runs this.
"""

from __future__ import annotations

import socket
from typing import Literal

from serl_stack.config import Config, ConfigError

Role = Literal["config", "train", "learner", "actor"]


def port_free(host: str, port: int) -> bool:
    """Whether a TCP listener could bind `host:port` right now (as ZeroMQ binds: with SO_REUSEADDR, so a port
    left in TIME_WAIT by an earlier run counts as free)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_ports_free(cfg: Config) -> None:
    """The learner's fixed ports (non-zero) must be free on `transport.host`."""
    t = cfg.transport
    for name in ("transitions_port", "params_port"):
        port = getattr(t, name)
        if port and not port_free(t.host, port):
            raise ConfigError(f"transport.{name}: port {port} on {t.host} is in use (another learner?); expected a "
                              "free port, or 0 to let the OS choose one")


def check_demos(cfg: Config) -> None:
    """`replay.demo_dir`, when set, is a folder of demonstrations recorded on this run's task."""
    if not cfg.replay.demo_dir:
        return
    from serl_stack.data.demos import DemoFormatError, load_metadata

    try:
        meta = load_metadata(cfg.replay.demo_dir)
    except DemoFormatError as e:
        raise ConfigError(f"replay.demo_dir: {e}; record demonstrations with `serl record-demos --out DIR`") from e
    if meta["env_id"] != cfg.env.id:
        raise ConfigError(f"replay.demo_dir: {cfg.replay.demo_dir} holds demonstrations of {meta['env_id']!r}, "
                          f"expected this run's env.id {cfg.env.id!r}")


def check_bc_prior(cfg: Config) -> None:
    """`agent.bc.prior_run`, with `agent.bc.enabled`, is a `serl train-bc` folder for this task and these observation
    keys (its checkpoint's shapes and the action size are checked again when the learner restores it)."""
    bc = cfg.agent.bc
    if not bc.enabled:
        return
    from serl_stack.rundir import check_bc_folder

    summary = check_bc_folder(bc.prior_run, cfg.env.id, "agent.bc.prior_run")
    keys = sorted(cfg.agent.obs_keys)  # the agent's vector is in sorted key order (data/obs.vector_keys), as bc.json's
    if keys and list(summary["obs_keys"]) != keys:
        raise ConfigError(f"agent.bc.prior_run: {bc.prior_run} sees the observation keys {summary['obs_keys']}, "
                          f"expected this agent's {keys} (agent.obs_keys; train the prior with the same config)")


def check_keys(cfg: Config, role: Role) -> None:
    """With `transport.curve`, the key files the role needs load (the learner's allow-list included)."""
    from serl_stack.transport.auth import curve_client_from_config, curve_server_from_config

    if role in ("train", "learner"):
        server = curve_server_from_config(cfg.transport)
        if server is not None:
            server.close()
    if role in ("train", "actor"):
        curve_client_from_config(cfg.transport)


def check_actor(cfg: Config) -> None:
    """A standalone actor needs the learner's ports and an id that fits `train.num_actors`."""
    from serl_stack.rundir import actor_index

    for name in ("transitions_port", "params_port"):
        if getattr(cfg.transport, name) == 0:
            raise ConfigError(f"transport.{name}: got 0, expected the learner's port (1..65535; `serl learner` prints "
                              "the ports it listens on)")
    actor_index(cfg.transport.actor_id, cfg.train.num_actors)


def preflight(cfg: Config, role: Role) -> None:
    """Everything `role` can check before it starts a process; `ConfigError` naming the field at the first
    problem."""
    from serl_stack.envs import preflight as env_preflight
    from serl_stack.mixing import check_mixing
    from serl_stack.steering.acting import check_steering

    env_preflight(cfg)
    check_mixing(cfg)
    # A learner checks steering only when it trains the steering critic itself (steering.online).
    if role in ("config", "train", "actor") or (role == "learner" and cfg.steering.online):
        check_steering(cfg)
    if role in ("config", "train", "learner"):
        check_demos(cfg)
        check_bc_prior(cfg)
    if role in ("train", "learner"):
        check_ports_free(cfg)
    if role == "actor":
        check_actor(cfg)
    check_keys(cfg, role)
