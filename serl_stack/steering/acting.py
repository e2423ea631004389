"""The actor's side of `steering.*`: building the steered policy a run acts with.

Owns: `steered_policy(cfg, runner, example_obs, action_dim)`, the `ValueGuidedPolicy` the actor runs when
`steering.enabled` (its base: the learner's SAC policy, a `serl train-bc` policy or a `RemotePolicy`; its critic:
the latest checkpoint of `steering.critic_run`), and `check_steering(cfg)`, what preflight checks before any
process starts (the critic's run folder, the BC folder, a remote server's `hello`). Errors are `ConfigError`s
naming the `steering.*` field. Imports only inference-side code (no learner, losses, replay or optax).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serl_stack.config import Config, ConfigError
from serl_stack.errors import RunDirError

if TYPE_CHECKING:
    from serl_stack.inference import Policy, PolicyRunner
    from serl_stack.steering.guided import ValueGuidedPolicy


def _critic_config(cfg: Config) -> Config:
    """The config of `steering.critic_run` (its agent shapes the critic), checked against this run's env."""
    from serl_stack.rundir import check_run_folder

    return check_run_folder(cfg.steering.critic_run, cfg.env.id, "steering.critic_run")


def _remote(cfg: Config) -> Any:
    from serl_stack.steering.remote import RemotePolicy, RemotePolicyError

    s = cfg.steering
    try:
        # "check": a server whose actions are in another range than the env's is refused, never silently mapped.
        return RemotePolicy(s.remote_endpoint, timeout_s=max(s.remote_timeout_s, 1.0), bounds="check")
    except RemotePolicyError as e:
        raise ConfigError(f"steering.remote_endpoint: {e}") from e


def check_steering(cfg: Config) -> None:
    """What can be checked before a process starts: the critic's run, the BC folder, the remote server's hello."""
    s = cfg.steering
    if not s.enabled:
        return
    _critic_config(cfg)
    if s.base == "bc":
        from serl_stack.rundir import check_bc_folder

        check_bc_folder(s.base_dir, cfg.env.id, "steering.base_dir")
    if s.base == "remote":
        _remote(cfg).close()


def steered_policy(cfg: Config, runner: PolicyRunner, example_obs: Mapping[str, Any],
                   action_dim: int) -> ValueGuidedPolicy | None:
    """The policy the actor acts with under `steering.enabled` (None when off): `steering.k` proposals of the base
    policy each step, picked by the critic of `steering.critic_run`'s latest checkpoint."""
    s = cfg.steering
    if not s.enabled:
        return None
    from serl_stack.steering.guided import ValueGuidedPolicy, load_critic

    critic_cfg = _critic_config(cfg)
    try:
        critic, _ = load_critic(Path(s.critic_run).expanduser(), critic_cfg.agent, example_obs, action_dim)
    except (RunDirError, ValueError, KeyError) as e:
        raise ConfigError(f"steering.critic_run: {e}") from e
    base: Policy
    if s.base == "policy":
        base = runner
    elif s.base == "bc":
        from serl_stack.inference import load_bc_policy

        try:
            base, _ = load_bc_policy(Path(s.base_dir).expanduser())
        except RunDirError as e:
            raise ConfigError(f"steering.base_dir: {e}") from e
    else:
        base = _remote(cfg)
        base.timeout_s = s.remote_timeout_s  # the hello may take longer; every step must fit the control period
    return ValueGuidedPolicy(base, critic, s.k, s.temperature)


__all__ = ["check_steering", "steered_policy"]
