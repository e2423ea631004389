"""Any Gymnasium env with Box or Dict-of-Box observations and a Box action, on the serl_stack contract.

Owns: `GymAdapter`, the wrapper that lets the learner train standard tasks (Pendulum, HalfCheetah, ...) and the
user's own Gymnasium envs. Observations become nested dicts under `"state"` with float32 leaves (a Box observation
is `{"state": {"observation": x}}`; a Dict keeps its keys and nesting under `"state"`), because the wire fixes its
spec from the first observation and the agent flattens every non-image leaf. Actions arrive in [-1, 1], the
policy's range, and are rescaled affinely onto the env's finite bounds. Rewards and the terminated/truncated flags
pass through untouched; `info` too, except that the env's success flag (under `success_key`) is also reported as
`info["success"]`, the one key everything downstream (episode logs, evaluation) reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from serl_stack.data.obs import SEP

BOX_KEY = "observation"
"""The key a plain Box observation gets under `"state"`."""

SUPPORTED = "observation: Box or a (nested) Dict of Box; action: Box with finite bounds"


def _float32_box(box: spaces.Box) -> spaces.Box:
    # float64 bounds round monotonically to float32, so an observation inside the old bounds stays inside.
    return spaces.Box(box.low.astype(np.float32), box.high.astype(np.float32), box.shape, np.float32)


def _convert_space(space: gym.Space, path: str) -> spaces.Box | spaces.Dict:
    """The float32 counterpart of a Box or (nested) Dict-of-Box space; anything else is a ValueError."""
    if isinstance(space, spaces.Box):
        return _float32_box(space)
    if isinstance(space, spaces.Dict):
        out: dict[str, gym.Space] = {}
        for key, sub in space.spaces.items():
            if not isinstance(key, str) or SEP in key or not key:
                raise ValueError(f"{path}: Dict key {key!r} is not usable; expected a non-empty str without '{SEP}' "
                                 "(keys become observation paths like 'state/<key>')")
            out[key] = _convert_space(sub, f"{path}.{key}")
        return spaces.Dict(out)
    raise ValueError(f"{path}: unsupported space {space}; supported: {SUPPORTED}")


def _convert_obs(obs: Any, space: gym.Space) -> Any:
    if isinstance(space, spaces.Dict):
        if not isinstance(obs, Mapping):
            raise TypeError(f"observation: expected a mapping for {space}, got {type(obs).__name__}")
        return {key: _convert_obs(obs[key], sub) for key, sub in space.spaces.items()}
    return np.asarray(obs, dtype=np.float32)


class GymAdapter(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Wrap `env` so its observations are `{"state": {...float32...}}` and its actions live in [-1, 1].

    `info["success"]` is `bool(info[success_key])` at every reset and step whose `info` has `success_key` (with a
    value other than None); at the others there is no `"success"` key, so an env that never reports success has no
    success rate rather than a rate of 0. With a `success_key` other than "success", an env's own `"success"`
    entry is replaced by (or, where `success_key` is missing, dropped for) the mapped one, so `"success"` always
    means what `success_key` names.
    """

    def __init__(self, env: gym.Env, success_key: str = "success") -> None:
        # Recording the constructor args puts the adapter into `env.spec`, so `spec.make()` (which check_env uses
        # for its render and close checks) rebuilds the adapted env, success key included, rather than failing.
        gym.utils.RecordConstructorArgs.__init__(self, success_key=success_key)
        gym.Wrapper.__init__(self, env)
        self.success_key = success_key
        inner = _convert_space(env.observation_space, "observation_space")
        self._inner_obs_space = env.observation_space
        state = spaces.Dict({BOX_KEY: inner}) if isinstance(inner, spaces.Box) else inner
        self.observation_space = spaces.Dict({"state": state})
        act = env.action_space
        if not isinstance(act, spaces.Box):
            raise ValueError(f"action_space: unsupported space {act}; supported: {SUPPORTED}")
        if not (np.all(np.isfinite(act.low)) and np.all(np.isfinite(act.high))):
            raise ValueError(f"action_space: bounds low={act.low.tolist()} high={act.high.tolist()} are not all "
                             "finite; expected finite bounds to rescale the policy's [-1, 1] onto")
        if np.any(act.high <= act.low):
            raise ValueError(f"action_space: bounds low={act.low.tolist()} high={act.high.tolist()}; expected "
                             "high > low in every dimension")
        self._low = act.low.astype(np.float64)
        self._high = act.high.astype(np.float64)
        self.action_space = spaces.Box(-1.0, 1.0, act.shape, np.float32)

    def observation(self, obs: Any) -> dict[str, Any]:
        """The contract form of one env observation."""
        inner = _convert_obs(obs, self._inner_obs_space)
        return {"state": {BOX_KEY: inner} if isinstance(self._inner_obs_space, spaces.Box) else inner}

    def action(self, action: Any) -> np.ndarray:
        """[-1, 1] -> [low, high], affine: -1 is low, 1 is high, 0 the midpoint."""
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(self._low.shape), -1.0, 1.0)
        scaled = 0.5 * (self._high + self._low) + 0.5 * (self._high - self._low) * a
        # The clip only absorbs float rounding at the ends, so the inner env never sees an out-of-bounds action.
        return np.clip(scaled, self._low, self._high).astype(self.env.action_space.dtype)

    def map_info(self, info: dict[str, Any]) -> dict[str, Any]:
        """`info` with `"success"` mapped from `success_key` (a new dict: the env's own is left as it was)."""
        out = dict(info)
        value = out.get(self.success_key)
        if value is None:
            out.pop("success", None)
            return out
        try:
            out["success"] = bool(value)
        except (TypeError, ValueError) as e:  # e.g. a multi-element array: no single truth value
            raise ValueError(f"info[{self.success_key!r}] (env.success_key): got {value!r}, expected a bool-like "
                             "scalar") from e
        return out

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, Any], dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        return self.observation(obs), self.map_info(info)

    def step(self, action: Any) -> tuple[dict[str, Any], SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(self.action(action))
        return self.observation(obs), reward, terminated, truncated, self.map_info(info)


__all__ = ["BOX_KEY", "GymAdapter"]
