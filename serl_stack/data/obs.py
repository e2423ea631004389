"""How dict observations become what agents see.

Owns: flattening nested observation dicts into `"state/tcp_pose"`-style key paths (the form the replay buffer
and the wire use) and concatenating the non-image leaves into one float32 vector in a fixed, sorted key order.
Images (anything under `images/`) are kept apart for the image encoders.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

SEP = "/"
IMAGE_PREFIX = "images" + SEP


def flatten_keys(obs: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """`{"state": {"tcp_pose": x}}` -> `{"state/tcp_pose": x}`; leaves become numpy arrays."""
    out: dict[str, np.ndarray] = {}
    for key, value in obs.items():
        path = f"{prefix}{SEP}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten_keys(value, path))
        else:
            out[path] = np.asarray(value)
    return out


def unflatten_keys(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of `flatten_keys`."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        node = out
        parts = path.split(SEP)
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def vector_keys(flat: Mapping[str, Any], selected: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The sorted key paths that go into the agent's flat vector: `selected` if given, else all but images.

    A selected key that the observation does not have is an error naming it and the keys there are.
    """
    available = sorted(k for k in flat if not k.startswith(IMAGE_PREFIX))
    if not selected:
        return tuple(available)
    missing = [k for k in selected if k not in available]
    if missing:
        raise KeyError(f"agent.obs_keys: {missing} not in the observation; expected some of {available}")
    return tuple(sorted(selected))


def to_vector(flat: Mapping[str, Any], keys: tuple[str, ...], batch_dims: int = 0) -> np.ndarray:
    """Concatenate `flat[k]` for `k in keys` into float32 `(*batch, D)`; `batch_dims` leading axes are kept."""
    parts = []
    for k in keys:
        if k not in flat:
            raise KeyError(f"observation is missing '{k}' (expected keys: {', '.join(keys)})")
        a = np.asarray(flat[k], dtype=np.float32)
        parts.append(a.reshape(a.shape[:batch_dims] + (-1,)))
    return np.concatenate(parts, axis=-1)


def image_keys_of(flat: Mapping[str, Any], selected: tuple[str, ...]) -> tuple[str, ...]:
    """`agent.image_keys`, checked: each must be an image (under `images/`) that the observation has."""
    available = sorted(k for k in flat if k.startswith(IMAGE_PREFIX))
    for k in selected:
        if k not in available:
            raise KeyError(f"agent.image_keys: '{k}' is not an image of the observation; expected some of {available} "
                           "(set env.cameras to render cameras)")
        if np.asarray(flat[k]).dtype != np.uint8 or np.asarray(flat[k]).ndim != 3:
            raise KeyError(f"agent.image_keys: '{k}' has dtype {np.asarray(flat[k]).dtype} and shape "
                           f"{np.asarray(flat[k]).shape}; expected uint8 (H, W, C)")
    return tuple(sorted(selected))


def agent_obs(flat: Mapping[str, Any], keys: tuple[str, ...], image_keys: tuple[str, ...] = (),
              batch_dims: int = 0) -> Any:
    """What the agent takes: the float32 vector of `keys`, or with `image_keys` a dict
    `{"state": vector, "images": {camera: uint8 array}}` (camera = key path without `images/`)."""
    vec = to_vector(flat, keys, batch_dims)
    if not image_keys:
        return vec
    return {"state": vec, "images": {k[len(IMAGE_PREFIX):]: np.asarray(flat[k], np.uint8) for k in image_keys}}


def vector_dim(flat: Mapping[str, Any], keys: tuple[str, ...]) -> int:
    """Length of the vector `to_vector` makes from one (unbatched) observation."""
    return int(sum(np.asarray(flat[k]).size for k in keys))
