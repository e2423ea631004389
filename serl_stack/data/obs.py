"""How dict observations become what agents see.

Owns: flattening nested observation dicts into `"state/tcp_pose"`-style key paths (the form the replay buffer
and the wire use) and concatenating the non-image leaves into one float32 vector in a fixed, sorted key order.
Images (anything under `images/`) are kept apart for the image encoders. An `agent.obs_keys` entry `"A - B"` (a
*relative position*) adds `A[:3] - B[:3]`, the offset between the positions of two poses (every pose here starts with
its position: `state/tcp_pose`, `task/object_pose`, `task/peg_pose`, `task/hole_pos`), e.g.
`"task/object_pose - state/tcp_pose"`: the network gets the offset it acts on directly instead of having to subtract
two separately normalized features to centimetre precision. An entry `"tanh((A - B) / S)"` (a *fine offset*) adds
`tanh((A[:3] - B[:3]) / S)` with S a length in metres: linear within a few S of zero and saturated beyond, so after
normalization a millimetre near the target still moves the input by a visible amount (a plain offset spread over
decimetres moves it by about 1/100 of its scale), e.g. `"tanh((task/peg_pose - task/hole_pos) / 0.005)"` for a hole
with 1 mm of play.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

SEP = "/"
IMAGE_PREFIX = "images" + SEP
RELATIVE = " - "
"""Separator of a relative-position entry `"A - B"` in `agent.obs_keys`."""
_FINE = re.compile(r"^tanh\(\((?P<rel>.+)\) / (?P<scale>[^()]+)\)$")
"""A fine-offset entry `"tanh((A - B) / S)"`."""


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


@functools.lru_cache(maxsize=256)  # called per key on every control step (to_vector): parse each entry once
def relative_parts(key: str) -> tuple[str, str] | None:
    """`("A", "B")` for a relative-position entry `"A - B"` or a fine offset `"tanh((A - B) / S)"`, else None."""
    fine = _FINE.match(key.strip())
    if fine is not None:
        key = fine["rel"]
    if RELATIVE not in key:
        return None
    a, b = key.split(RELATIVE, 1)
    return a.strip(), b.strip()


@functools.lru_cache(maxsize=256)
def fine_scale(key: str) -> float | None:
    """S (metres) of a fine-offset entry `"tanh((A - B) / S)"`, None for any other entry; a KeyError naming the
    entry when S is not a positive number."""
    fine = _FINE.match(key.strip())
    if fine is None:
        return None
    try:
        scale = float(fine["scale"])
    except ValueError:
        scale = math.nan
    if not (math.isfinite(scale) and scale > 0) or RELATIVE not in fine["rel"]:
        raise KeyError(f"agent.obs_keys: '{key}' is not a fine offset; expected 'tanh((A - B) / S)' with two pose keys "
                       "A and B and S a length in metres > 0, e.g. 'tanh((task/peg_pose - task/hole_pos) / 0.005)'")
    return scale


def source_keys(keys: tuple[str, ...]) -> tuple[str, ...]:
    """The stored observation keys that `keys` (possibly with relative-position entries) are computed from."""
    out: list[str] = []
    for k in keys:
        for s in relative_parts(k) or (k,):
            if s not in out:
                out.append(s)
    return tuple(out)


def vector_keys(flat: Mapping[str, Any], selected: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The sorted key paths that go into the agent's flat vector: `selected` if given, else all but images.

    A selected key that the observation does not have is an error naming it and the keys there are; so is a
    relative-position entry `"A - B"` whose A or B is missing or has fewer than 3 components.
    """
    available = sorted(k for k in flat if not k.startswith(IMAGE_PREFIX))
    if not selected:
        return tuple(available)
    for k in selected:
        fine_scale(k)
    missing = [k for k in source_keys(selected) if k not in available]
    if missing:
        raise KeyError(f"agent.obs_keys: {missing} not in the observation; expected some of {available}")
    for k in selected:
        for part in relative_parts(k) or ():
            if np.asarray(flat[part]).size < 3:
                raise KeyError(f"agent.obs_keys: '{k}' needs a position (3 components first) in '{part}', which has "
                               f"shape {np.asarray(flat[part]).shape}")
    return tuple(sorted(selected))


def to_vector(flat: Mapping[str, Any], keys: tuple[str, ...], batch_dims: int = 0) -> np.ndarray:
    """Concatenate `flat[k]` for `k in keys` into float32 `(*batch, D)`; `batch_dims` leading axes are kept."""
    parts = []
    for k in keys:
        rel = relative_parts(k)
        if rel is not None:
            a, b = (np.asarray(flat[p], dtype=np.float32) for p in rel)
            a = a.reshape(a.shape[:batch_dims] + (-1,))
            b = b.reshape(b.shape[:batch_dims] + (-1,))
            offset = a[..., :3] - b[..., :3]
            scale = fine_scale(k)
            parts.append(offset if scale is None else np.tanh(offset / np.float32(scale)))
            continue
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
    return int(sum(3 if relative_parts(k) else np.asarray(flat[k]).size for k in keys))
