"""Wire format between actor and learner: versioned msgpack messages, numpy arrays as dtype/shape/bytes.

Owns: encoding and decoding of messages and the validation of every field a peer sends. Knows nothing of
learning. Pickle is never used: a numpy array travels as a msgpack extension holding its dtype string, its shape
and its raw bytes, so dtype, shape and bytes (NaN payloads included) arrive identical, and a hostile peer can
at worst produce a `ProtocolError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
"""Bumped on any incompatible change of the envelope or of a message body."""

NDARRAY_EXT = 1
"""msgpack extension code of a numpy array."""

# Only plain numeric/bool dtypes cross the wire: object or void dtypes could smuggle arbitrary payloads.
_ALLOWED_KINDS = frozenset("biuf")
_MAX_NDIM = 8


class ProtocolError(ValueError):
    """A message that does not follow the protocol; the text names the field and what was expected."""

    @property
    def reason(self) -> str:
        """A short category from a fixed set, for counting rejections (the text itself holds peer values)."""
        text = str(self)
        for prefix, reason in _REASONS:
            if text.startswith(prefix):
                return reason
        return "malformed"


_REASONS = (
    ("message of ", "too large"),
    ("message is not valid msgpack", "not msgpack"),
    ("message field 'v'", "wrong version"),
    ("message field", "bad envelope"),
    ("message:", "bad envelope"),
    ("message has no", "bad envelope"),
    ("unknown msgpack extension", "bad array"),
    ("ndarray", "bad array"),
    ("array dtype", "bad array"),
    ("transition", "bad transition"),
    ("spec", "bad spec"),
    ("observation key", "bad transition"),
)


def _pack_array(a: np.ndarray) -> msgpack.ExtType:
    if a.dtype.kind not in _ALLOWED_KINDS:
        raise ProtocolError(f"array dtype {a.dtype} cannot be sent; expected bool, int, uint or float")
    header = msgpack.packb([a.dtype.str, list(a.shape)])
    # Fortran-ordered or strided views are copied to C order so the bytes match the shape.
    return msgpack.ExtType(NDARRAY_EXT, header + np.ascontiguousarray(a).tobytes())


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return _pack_array(obj)
    if isinstance(obj, np.generic):
        return _pack_array(np.asarray(obj))
    raise TypeError(f"cannot encode {type(obj).__name__} on the wire; expected numpy arrays, numbers, str, dict, list")


def _ext_hook(code: int, data: bytes) -> Any:
    if code != NDARRAY_EXT:
        raise ProtocolError(f"unknown msgpack extension code {code}; expected {NDARRAY_EXT} (ndarray)")
    unpacker = msgpack.Unpacker(max_buffer_size=len(data) or 1, raw=False)
    unpacker.feed(data)
    try:
        header = unpacker.unpack()
    except Exception as e:  # msgpack raises several unrelated types for truncated or bad input
        raise ProtocolError(f"ndarray header is not valid msgpack: {e}") from e
    if not (isinstance(header, list) and len(header) == 2 and isinstance(header[0], str)):
        raise ProtocolError(f"ndarray header: expected [dtype: str, shape: list], got {header!r:.80}")
    dtype_str, shape = header
    try:
        dtype = np.dtype(dtype_str)
    except TypeError as e:
        raise ProtocolError(f"ndarray dtype {dtype_str!r:.40} is not a numpy dtype") from e
    if dtype.kind not in _ALLOWED_KINDS:
        raise ProtocolError(f"ndarray dtype {dtype_str!r}: expected a bool, int, uint or float dtype")
    if not isinstance(shape, list) or len(shape) > _MAX_NDIM:
        raise ProtocolError(f"ndarray shape: expected a list of at most {_MAX_NDIM} ints, got {shape!r:.80}")
    count = 1
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise ProtocolError(f"ndarray shape {shape!r:.80}: expected non-negative ints")
        count *= dim
    body = data[unpacker.tell() :]
    if count * dtype.itemsize != len(body):
        raise ProtocolError(
            f"ndarray of dtype {dtype_str} and shape {shape} needs {count * dtype.itemsize} bytes, got {len(body)}"
        )
    return np.frombuffer(body, dtype=dtype).reshape(shape).copy()


def pack(obj: Any) -> bytes:
    """Encode a message body (dicts, lists, str, numbers, numpy arrays) to bytes."""
    return msgpack.packb(obj, default=_default, use_bin_type=True)


def unpack(data: bytes, max_bytes: int | None = None) -> Any:
    """Decode bytes from `pack`; raises `ProtocolError` on anything malformed or larger than `max_bytes`."""
    if max_bytes is not None and len(data) > max_bytes:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=True)
    except ProtocolError:
        raise
    except Exception as e:  # msgpack's own errors (truncated data, bad types) all mean "malformed"
        raise ProtocolError(f"message is not valid msgpack: {type(e).__name__}: {e}") from e


def envelope(msg_type: str, sender: str, body: Any, seq: int = 0) -> bytes:
    """Encode a message with its protocol envelope."""
    return pack({"v": PROTOCOL_VERSION, "type": msg_type, "from": sender, "seq": seq, "body": body})


def open_envelope(data: bytes, max_bytes: int | None = None, expect: set[str] | None = None) -> dict[str, Any]:
    """Decode and validate an envelope; returns the dict with keys v, type, from, seq, body."""
    msg = unpack(data, max_bytes)
    if not isinstance(msg, Mapping):
        raise ProtocolError(f"message: expected a map envelope, got {type(msg).__name__}")
    version = msg.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"message field 'v' is {version!r}; this peer speaks protocol {PROTOCOL_VERSION}")
    msg_type = msg.get("type")
    if not isinstance(msg_type, str) or (expect is not None and msg_type not in expect):
        raise ProtocolError(f"message field 'type' is {msg_type!r}; expected one of {sorted(expect or [])}")
    if not isinstance(msg.get("from"), str):
        raise ProtocolError(f"message field 'from' is {msg.get('from')!r:.40}; expected a str")
    seq = msg.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise ProtocolError(f"message field 'seq' is {seq!r:.40}; expected a non-negative int")
    if "body" not in msg:
        raise ProtocolError("message has no 'body' field")
    return dict(msg)


# ------------------------------------------------------------------------------------------- transition schema

Spec = dict[str, Any]
"""What an actor announces in its handshake: {"observation": {key path: [dtype, shape]}, "action": [dtype, shape]}."""

TRANSITION_FIELDS = ("observation", "action", "executed_action", "reward", "next_observation", "terminated",
                     "truncated", "episode")


def _leaves(obs: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(obs, Mapping):
        return {prefix: obs}
    out: dict[str, Any] = {}
    for k, v in obs.items():
        if not isinstance(k, str):
            raise ProtocolError(f"observation key {k!r:.40} under '{prefix}': expected a str")
        out.update(_leaves(v, f"{prefix}/{k}" if prefix else k))
    return out


def make_spec(observation: Mapping[str, Any], action: np.ndarray) -> Spec:
    """The spec of one example observation and action, as the actor announces it."""
    obs = {k: [np.asarray(v).dtype.str, list(np.asarray(v).shape)] for k, v in _leaves(observation).items()}
    a = np.asarray(action)
    return {"observation": obs, "action": [a.dtype.str, list(a.shape)]}


def check_spec(spec: Any) -> Spec:
    """Validate a spec received in a handshake; returns it."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("observation"), Mapping):
        raise ProtocolError("spec: expected a map with 'observation' (map) and 'action'")
    entries = {**{f"observation/{k}": v for k, v in spec["observation"].items()}, "action": spec.get("action")}
    for name, entry in entries.items():
        ok = isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and isinstance(entry[1], list)
        if not ok or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in entry[1]):
            raise ProtocolError(f"spec '{name}': expected [dtype: str, shape: list of non-negative ints]")
        try:
            kind = np.dtype(entry[0]).kind
        except TypeError as e:
            raise ProtocolError(f"spec '{name}': {entry[0]!r:.40} is not a numpy dtype") from e
        if kind not in _ALLOWED_KINDS:
            raise ProtocolError(f"spec '{name}': dtype {entry[0]!r}; expected bool, int, uint or float")
    return dict(spec)


def _check_array(name: str, value: Any, entry: list) -> None:
    dtype, shape = entry
    if not isinstance(value, np.ndarray):
        got = type(value).__name__
        raise ProtocolError(f"transition field '{name}': expected an array of {dtype} {shape}, got {got}")
    if value.dtype.str != dtype or list(value.shape) != shape:
        raise ProtocolError(
            f"transition field '{name}': expected {dtype} {shape}, got {value.dtype.str} {list(value.shape)}"
        )
    if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        raise ProtocolError(f"transition field '{name}': holds NaN or inf")


def check_transition(t: Any, spec: Spec) -> None:
    """Raise `ProtocolError` naming the first field of `t` that does not match the announced `spec`."""
    if not isinstance(t, Mapping):
        raise ProtocolError(f"transition: expected a map, got {type(t).__name__}")
    missing = [f for f in TRANSITION_FIELDS if f not in t]
    if missing:
        raise ProtocolError(f"transition: missing fields {missing}; expected {list(TRANSITION_FIELDS)}")
    for field in ("observation", "next_observation"):
        leaves = _leaves(t[field])
        expected = spec["observation"]
        if set(leaves) != set(expected):
            raise ProtocolError(
                f"transition field '{field}': keys {sorted(leaves)} do not match the handshake {sorted(expected)}"
            )
        for key, value in leaves.items():
            _check_array(f"{field}/{key}", value, expected[key])
    for field in ("action", "executed_action"):
        _check_array(field, t[field], spec["action"])
    reward = t["reward"]
    if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not np.isfinite(reward):
        raise ProtocolError(f"transition field 'reward': expected a finite number, got {reward!r:.40}")
    for field in ("terminated", "truncated"):
        if not isinstance(t[field], bool):
            raise ProtocolError(f"transition field '{field}': expected a bool, got {t[field]!r:.40}")
    if isinstance(t["episode"], bool) or not isinstance(t["episode"], int) or t["episode"] < 0:
        raise ProtocolError(f"transition field 'episode': expected a non-negative int, got {t['episode']!r:.40}")
