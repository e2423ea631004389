"""MuJoCo Franka tasks on the DESIGN.md observation/action contract, and any Gymnasium env adapted to it.

Owns: the Gymnasium registration of the sim tasks, `make_env` (the one way the rest of serl_stack builds an env
from an `EnvConfig`) and `preflight` (build and reset the configured env once, so a config that cannot run is a
`ConfigError` before any process starts). Importing this module registers `FrankaReach-v0`, `FrankaPickCube-v0`
and `FrankaPegInsert-v0`; each env truncates itself from `EnvConfig.max_episode_steps`, so the registration adds
no TimeLimit wrapper. Any other ("foreign") Gymnasium env, registered or named `module:EnvId`, is built with
`env.kwargs` under a TimeLimit of `env.max_episode_steps` and wrapped by `GymAdapter` (see gym_adapter.py).
Nothing here imports JAX: `preflight` runs in the CLI before the learner and actor processes start.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
from typing import Any

import gymnasium as gym
import numpy as np

from serl_stack.config import SERL_TASK_IDS, BridgeConfig, Config, ConfigError, EnvConfig
from serl_stack.data.obs import flatten_keys, image_keys_of, vector_keys
from serl_stack.envs.gym_adapter import GymAdapter

REACH_ID, PICK_CUBE_ID, PEG_INSERT_ID = SERL_TASK_IDS  # the names live in config.py (its rules need them)

_TASKS = {
    REACH_ID: "serl_stack.envs.reach:FrankaReachEnv",
    PICK_CUBE_ID: "serl_stack.envs.pick_cube:FrankaPickCubeEnv",
    PEG_INSERT_ID: "serl_stack.envs.peg_insert:FrankaPegInsertEnv",
}
for _id, _entry_point in _TASKS.items():
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_entry_point)

GENERIC_FIELDS = ("id", "kwargs", "success_key", "max_episode_steps")
"""The `EnvConfig` fields that apply to every env. Every other field (including any added later) configures the
serl_stack tasks only, so a foreign env refuses a non-default value of it rather than ignoring it."""

_MAKE_OWNED_KWARGS = {"max_episode_steps": "set env.max_episode_steps instead (it becomes the TimeLimit)"}
"""`gymnasium.make` arguments that `make_env` sets itself from other fields, so `env.kwargs` may not carry them."""


def serl_task_ids() -> list[str]:
    """The registered ids whose env lives in serl_stack (they take an `EnvConfig`)."""
    return sorted(i for i, spec in gym.registry.items()
                  if isinstance(spec.entry_point, str) and spec.entry_point.startswith("serl_stack."))


def _registered_by(module: str) -> list[str]:
    """The ids whose entry point lives in `module` (what importing it registered, for the error message)."""
    out = []
    for env_id, spec in gym.registry.items():
        entry = spec.entry_point
        where = entry.partition(":")[0] if isinstance(entry, str) else getattr(entry, "__module__", None)
        if where == module:
            out.append(env_id)
    return sorted(out)


def _resolve_id(value: str) -> str:
    """The registry id that `env.id` names, importing the module of a `module:EnvId` id first (Gymnasium's own
    convention: importing the module registers the env). ConfigError when that fails or the id is unknown."""
    module, sep, env_id = value.partition(":")
    if not sep:
        module, env_id = "", value
    elif not module or not env_id:
        raise ConfigError(f"env.id: {value!r} is not a usable id; expected a registered id (e.g. Pendulum-v1) or "
                          "module:EnvId (e.g. my_pkg.envs:MyEnv-v0)")
    if module:
        try:
            importlib.import_module(module)
        except Exception as e:  # whatever the module raises on import, the user must see it, named
            raise ConfigError(
                f"env.id: {value!r}: importing module {module!r} failed ({type(e).__name__}: {e}); expected a module "
                "this Python can import that registers the env (installed, or its folder on sys.path: `python -m "
                "serl_stack.cli` puts the current folder there, the `serl` script does not; PYTHONPATH=. does)"
            ) from e
    if env_id in gym.registry:
        return env_id
    if module:
        registered = _registered_by(module)
        raise ConfigError(f"env.id: {value!r}: module {module!r} imported but registered no env {env_id!r}; "
                          f"expected one of the ids it registers: {registered or 'none found'}")
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3)
    hint = f" (close: {', '.join(close)})" if close else ""
    raise ConfigError(f"env.id: unknown env {env_id!r}{hint}; expected a serl_stack task "
                      f"({', '.join(serl_task_ids())}), an id registered with Gymnasium (e.g. Pendulum-v1, "
                      "HalfCheetah-v5) or module:EnvId, whose module registers the env when imported")


def _changed_fields(cfg: Any, default: Any, prefix: str) -> list[tuple[str, Any, Any]]:
    """(dotted path, value, default) of every leaf of dataclass `cfg` that differs from `default`."""
    out = []
    for f in dataclasses.fields(cfg):
        value, base = getattr(cfg, f.name), getattr(default, f.name)
        path = f"{prefix}.{f.name}"
        if dataclasses.is_dataclass(value):
            out.extend(_changed_fields(value, base, path))
        elif value != base:
            out.append((path, value, base))
    return out


def _check_serl_task(cfg: EnvConfig) -> None:
    """The generic fields a serl_stack task cannot honour (it reads the `EnvConfig` itself)."""
    if cfg.kwargs:
        raise ConfigError(f"env.kwargs: got {cfg.kwargs!r} for the serl_stack task {cfg.id!r}, expected {{}}: the "
                          "serl_stack tasks take their settings from the env section itself (e.g. env.dense_reward, "
                          "env.pick_cube.cube_size), not from gymnasium.make keyword arguments")
    if cfg.success_key != "success":
        raise ConfigError(f"env.success_key: got {cfg.success_key!r} for the serl_stack task {cfg.id!r}, expected "
                          "'success' (the key these tasks report success under)")


def _check_foreign(cfg: EnvConfig, env_id: str) -> None:
    """Everything about `cfg` that cannot apply to the foreign env `env_id`, as one ConfigError."""
    changed = [(p, v, d) for p, v, d in _changed_fields(cfg, EnvConfig(), "env")
               if p.split(".")[1] not in GENERIC_FIELDS]
    if changed:
        listed = ", ".join(f"{p}={v!r} (default {d!r})" for p, v, d in changed)
        raise ConfigError(f"{listed}: {'these apply' if len(changed) > 1 else 'this applies'} only to the serl_stack "
                          f"tasks ({', '.join(serl_task_ids())}), and env.id={cfg.id!r} is not one of them; expected "
                          "the default (pass the env's own settings through env.kwargs)")
    if not cfg.success_key:
        raise ConfigError("env.success_key: got '', expected the name of the info key the env reports success "
                          "under (an env that never reports it simply has no success rate)")
    if cfg.max_episode_steps < 1:
        raise ConfigError(f"env.max_episode_steps: got {cfg.max_episode_steps}, expected >= 1 (the TimeLimit of "
                          f"{env_id!r})")
    for key, why in _MAKE_OWNED_KWARGS.items():
        if key in cfg.kwargs:
            raise ConfigError(f"env.kwargs.{key}: got {cfg.kwargs[key]!r}, expected no such entry: {why}")
    _check_kwargs_names(cfg, env_id)


def _check_kwargs_names(cfg: EnvConfig, env_id: str) -> None:
    """Unknown names in `env.kwargs` for a creator whose signature says which it takes (no **kwargs)."""
    if not cfg.kwargs:
        return
    entry = gym.registry[env_id].entry_point
    try:
        creator = gym.envs.registration.load_env_creator(entry) if isinstance(entry, str) else entry
    except Exception as e:  # the entry point's module is missing or broken: gym.make would fail the same way
        raise ConfigError(f"env.id={cfg.id!r}: its entry point {entry!r} cannot be loaded "
                          f"({type(e).__name__}: {e}); expected an importable env class or function") from e
    try:
        params = inspect.signature(creator).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature: gym.make reports what it rejects
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = [p.name for p in params if p.kind in named]
    unknown = sorted(set(cfg.kwargs) - set(names))
    if unknown:
        raise ConfigError(f"env.kwargs: {unknown} not taken by {env_id!r} (entry point {entry!r}); expected some "
                          f"of {names}")


def make_env(cfg: EnvConfig, render_mode: str | None = None, bridge: BridgeConfig | None = None) -> gym.Env:
    """Build the env `cfg.id` through `gymnasium.make` (so it carries Gymnasium's checkers).

    With `env.kind: franka` the task runs on a Franka through the ROS 2 bridge (`bridge`, default
    `BridgeConfig()`): robot_bridge/franka_env.py, same observation/action contract.

    A serl_stack task gets `cfg` and follows DESIGN.md as is (`env.kwargs` must be empty and `env.success_key`
    "success"). Any other env, a registered id (e.g. `Pendulum-v1`, `HalfCheetah-v5`) or `module:EnvId`, is made
    with `cfg.kwargs` and a TimeLimit of `cfg.max_episode_steps` (replacing its registered limit), and wrapped by
    `GymAdapter` (Box or Dict-of-Box observations, Box actions), which reports `info["success"]` from
    `info[cfg.success_key]`. The Franka-only fields of `cfg` must keep their defaults for such an env.
    Raises ConfigError naming the field for an unknown id, a module that fails to import, kwargs the env does not
    take, a Franka-only field set for a foreign env, or an env whose spaces do not fit.
    """
    env_id = _resolve_id(cfg.id)
    if cfg.kind == "franka":
        _check_serl_task(cfg)
        from robot_bridge.franka_env import make_robot_env  # the ROS side loads only for the robot

        return make_robot_env(cfg, bridge)
    if env_id in serl_task_ids():
        _check_serl_task(cfg)
        return gym.make(env_id, config=cfg, render_mode=render_mode)
    _check_foreign(cfg, env_id)
    kwargs = dict(cfg.kwargs)
    if render_mode is not None:
        if kwargs.get("render_mode", render_mode) != render_mode:
            raise ConfigError(f"env.kwargs.render_mode: got {kwargs['render_mode']!r}, but this env is built to "
                              f"render {render_mode!r} (e.g. `serl eval --video`); expected no render_mode entry "
                              f"or {render_mode!r}")
        # Only when asked for: an env without rendering need not take a render_mode argument at all.
        kwargs["render_mode"] = render_mode
    try:
        env = gym.make(env_id, max_episode_steps=cfg.max_episode_steps, **kwargs)
    except (TypeError, ValueError) as e:
        field = "env.kwargs" if cfg.kwargs else "env.id"
        raise ConfigError(f"{field}: building {cfg.id!r} with env.kwargs={cfg.kwargs!r} failed "
                          f"({type(e).__name__}: {e})") from e
    try:
        return GymAdapter(env, success_key=cfg.success_key)
    except ValueError as e:
        env.close()
        raise ConfigError(f"env.id={cfg.id!r}: {e}") from e


def preflight(cfg: Config) -> None:
    """Build `cfg.env` once, reset it, and check `agent.obs_keys` / `agent.image_keys` against its observation.

    Raises ConfigError naming the field for anything that would make the learner or actor fail at start-up; the
    env is closed either way. Fast (one env build and reset, no JAX), so the CLI runs it before spawning processes.
    With `env.kind: franka` nothing connects to the robot here: the task and the taught poses are checked, and the
    keys against the sim task's observation, which the robot env's equals (cameras: `bridge.camera_serials`).
    """
    if cfg.env.kind == "franka":
        _preflight_robot(cfg)
        return
    env = make_env(cfg.env)
    try:
        obs, _ = env.reset(seed=cfg.train.seed)
    finally:
        env.close()
    flat = flatten_keys(obs)
    problems = []
    for check, selected in ((vector_keys, cfg.agent.obs_keys), (image_keys_of, cfg.agent.image_keys)):
        try:
            check(flat, selected)
        except KeyError as e:  # data.obs names the field; a KeyError's str() would add quotes around it
            problems.append(str(e.args[0]))
    if problems:
        raise ConfigError("; ".join(problems) + f" (the observation of env.id={cfg.env.id!r})")


def _preflight_robot(cfg: Config) -> None:
    from robot_bridge.franka_env import TASKS, load_teach

    if cfg.env.id not in TASKS:
        raise ConfigError(f"env.id: got {cfg.env.id!r} with env.kind franka, expected one of {list(TASKS)} (the "
                          "tasks whose reward the robot env computes from the TCP pose)")
    if cfg.bridge.teach_file:
        load_teach(cfg.bridge.teach_file)
    env = make_env(dataclasses.replace(cfg.env, kind="sim", cameras=()))
    try:
        obs, _ = env.reset(seed=cfg.train.seed)
    finally:
        env.close()
    flat = flatten_keys(obs)
    for name in cfg.bridge.camera_serials:  # the robot's images: one per RealSense named in the config
        flat[f"images/{name}"] = np.zeros((cfg.env.image_size, cfg.env.image_size, 3), np.uint8)
    problems = []
    for check, selected in ((vector_keys, cfg.agent.obs_keys), (image_keys_of, cfg.agent.image_keys)):
        try:
            check(flat, selected)
        except KeyError as e:
            problems.append(str(e.args[0]))
    if problems:
        raise ConfigError("; ".join(problems) + f" (the robot env's observation of env.id={cfg.env.id!r})")


__all__ = ["GENERIC_FIELDS", "PEG_INSERT_ID", "PICK_CUBE_ID", "REACH_ID", "make_env", "preflight", "serl_task_ids"]
