"""The actor's side of `steering.*`: building the steered policy a run acts with.

Owns: `steered_policy(cfg, runner, example_obs, action_dim)`, the `ValueGuidedPolicy` the actor runs when
`steering.enabled` (its base: the learner's SAC policy, a `serl train-bc` policy, a `serl train-generalist`
stand-in or a `RemotePolicy`; its critic:
the latest checkpoint of `steering.critic_run`, replaced by the learner's broadcasts under `steering.online`),
`check_steering(cfg)`, what preflight checks before any process starts (the critic's run folder, the BC folder, a
remote server's `hello`; under `steering.online` also that the critic is a `serl train-critic` folder that reads the
base's observation keys), and `read_critic_summary`, a `serl train-critic` folder's `critic.json`. Errors are
`ConfigError`s naming the `steering.*` field. Imports only inference-side code (no learner, losses, replay or optax).
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


def read_critic_summary(folder: str, field: str = "steering.critic_run") -> dict[str, Any]:
    """The `critic.json` of the `serl train-critic --out` folder a config field names (`ConfigError` naming the field
    when it is not one): what online fine-tuning continues from (its Cal-QL settings, observation keys, sizes)."""
    import json

    from serl_stack.train_critic import CRITIC_KIND, CRITIC_SUMMARY  # standard library only

    path = Path(folder).expanduser() / CRITIC_SUMMARY
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        summary = None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{field}: {path}: not a readable JSON file ({e}); expected the {CRITIC_SUMMARY} `serl "
                          "train-critic` writes") from e
    if not isinstance(summary, dict) or summary.get("kind") != CRITIC_KIND:
        kind = summary.get("kind") if isinstance(summary, dict) else None
        seen = f"kind {kind!r}" if summary is not None else "not found"
        raise ConfigError(f"{field}: {path} {seen}; expected the {CRITIC_SUMMARY} of a `serl train-critic --out` "
                          f"folder (kind {CRITIC_KIND!r}) while steering.online is true: online fine-tuning "
                          "continues that Cal-QL state")
    return summary


def _check_online(cfg: Config, base_summary: Mapping[str, Any]) -> None:
    """`steering.online`: the critic is a `serl train-critic` folder whose observation vector and action size are
    the base policy's (the learner feeds both the same vector)."""
    s = cfg.steering
    critic = read_critic_summary(s.critic_run)
    for name, mine, theirs in (("observation keys", list(critic["obs_keys"]), list(base_summary["obs_keys"])),
                               ("action size", critic["action_dim"], base_summary["action_dim"])):
        if mine != theirs:
            raise ConfigError(f"steering.base_dir: {s.base_dir} has the {name} {theirs}, expected those of the critic "
                              f"in steering.critic_run ({s.critic_run}): {mine} (steering.online feeds the critic and "
                              "the base the same observation vector; train both with the same agent.obs_keys)")


def check_steering(cfg: Config) -> None:
    """What can be checked before a process starts: the critic's run, the BC folder, the remote server's hello, and
    for `steering.online` the critic's `critic.json` against the base."""
    s = cfg.steering
    if not s.enabled:
        return
    _critic_config(cfg)
    if s.base == "bc":
        from serl_stack.rundir import check_bc_folder

        summary = check_bc_folder(s.base_dir, cfg.env.id, "steering.base_dir")
        if s.online:
            _check_online(cfg, summary)
    if s.base == "generalist":
        from serl_stack.rundir import check_generalist_folder

        task = check_generalist_folder(s.base_dir, cfg.env.id, "steering.base_dir")
        if s.online:
            _check_online(cfg, task)
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
    elif s.base == "generalist":
        from serl_stack.steering.generalist import load_generalist

        try:
            base, _ = load_generalist(Path(s.base_dir).expanduser(), cfg.env.id)
        except RunDirError as e:
            raise ConfigError(f"steering.base_dir: {e}") from e
    else:
        base = _remote(cfg)
        base.timeout_s = s.remote_timeout_s  # the hello may take longer; every step must fit the control period
    return ValueGuidedPolicy(base, critic, s.k, s.temperature)


__all__ = ["check_steering", "read_critic_summary", "steered_policy"]
