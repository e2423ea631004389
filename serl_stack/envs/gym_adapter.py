"""Any Gymnasium env with Box or Dict-of-Box observations and a Box action, on the serl_stack contract.

Owns: `GymAdapter`, the wrapper that lets the learner train standard tasks (Pendulum, HalfCheetah, ...) so users
can sanity-check it. Observations become nested dicts under `"state"` with float32 leaves (a Box observation is
`{"state": {"observation": x}}`; a Dict keeps its keys and nesting under `"state"`), because the wire fixes its
spec from the first observation and the agent flattens every non-image leaf. Actions arrive in [-1, 1], the
policy's range, and are rescaled affinely onto the env's finite bounds. `info`, rewards and the
terminated/truncated flags pass through untouched.
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
    """Wrap `env` so its observations are `{"state": {...float32...}}` and its actions live in [-1, 1]."""

    def __init__(self, env: gym.Env) -> None:
        # Recording the (empty) constructor args puts the adapter into `env.spec`, so `spec.make()` (which
        # check_env uses for its render check) rebuilds the adapted env rather than failing.
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)
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

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, Any], dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        return self.observation(obs), info

    def step(self, action: Any) -> tuple[dict[str, Any], SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(self.action(action))
        return self.observation(obs), reward, terminated, truncated, info


__all__ = ["BOX_KEY", "GymAdapter"]
