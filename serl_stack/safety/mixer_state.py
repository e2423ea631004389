"""The on-disk form of a conservative mixer (EpsMix / StepMix) and of the mixing snapshots: msgpack, never pickle.

Owns: the file format (`SCHEMA_VERSION`, `dumps` / `loads`: msgpack with numpy arrays as an extension holding
their dtype string, shape and raw bytes), the schema of a saved mixer (`mixer_to_state` / `mixer_from_state`:
explicit fields, every one checked on the way in), the actor's mixer file rewritten after every episode
(`save_mixer` / `load_mixer`) and the snapshots of the policy an episode ran (`save_snapshot` / `load_snapshot`)
that benchmarks/conservative.py measures. What a field means lives with the class that owns it (`state()` /
`load_state()` in stepmix.py and estimates.py); this module decides how it is written and what a file must hold.
Pure numpy, msgpack and the standard library, so the actor and the benchmark read these files without JAX.

A file is one msgpack map `{"format": FORMAT, "schema_version": SCHEMA_VERSION, "body": body}` with body
`{"kind": "mixer", "mixer": <mixer>}` or `{"kind": "snapshot", "episode": int, "params": None | nested map of
arrays, "mixer": None | <mixer>}`. <mixer> is `mixer_to_state`'s map: `_Mixer.state()` with the generator's
128-bit integers (EpsMix's coin, StepMix's switch step) as decimal strings (msgpack holds 64 bits). It carries
the MixingConfig and discount it ran with, so a snapshot is rebuilt without the caller's config
(`mixer_settings`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from serl_stack.config import MixingConfig
from serl_stack.safety.stepmix import SAVED_SETTINGS, EpsMix, StepMix, make_mixer

SCHEMA_VERSION = 3
"""Bumped whenever a field changes meaning or goes away; a file of another version is refused, not guessed at.
2: mixtures drawn before s1 (issue 18): L from the learned policy's returns, StepMix's switch plan and generator.
3: StepMix's kappa calibrated per switch step (`calibrator_steps`, `calibrators` instead of one `calibrator`)."""
FORMAT = "serl_stack.mixer_state"
"""The `format` tag of every file this module writes (tells it apart from other msgpack files)."""
NDARRAY_EXT = 1
"""msgpack extension code of a numpy array: a msgpack header [dtype string, shape] followed by the raw bytes."""
_ARRAY_KINDS = "biuf"  # bool, int, uint, float: object or void dtypes could carry arbitrary payloads
_MAX_NDIM = 32
_RNG_KINDS: dict[str, Callable[[], np.random.BitGenerator]] = {"PCG64": np.random.PCG64,
                                                               "PCG64DXSM": np.random.PCG64DXSM}
"""Bit generators a mixer's coin may use here: their whole state is two 128-bit integers and two small ones."""
_MIXER_CLASSES = {"epsmix": EpsMix, "stepmix": StepMix}


class MixerStateError(ValueError):
    """A mixer file or snapshot that cannot be read or does not fit this run; the message names the file and the
    problem."""


# ------------------------------------------------------------------------------------------------ codec


def _encode(obj: Any, path: str) -> Any:
    """`obj` as msgpack-native values; arrays become extensions. TypeError naming `path` for anything else."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        if not -(2**63) <= obj < 2**64:
            raise TypeError(f"{path}: integer {obj} is outside msgpack's 64-bit range; store it as a string")
        return obj
    if isinstance(obj, float):  # np.float64 included (a float subclass)
        return float(obj)
    if isinstance(obj, np.generic) and obj.dtype.kind in _ARRAY_KINDS:
        return _encode(obj.item(), path)  # a numpy scalar is stored as the Python scalar of the same value
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _ARRAY_KINDS:
            raise TypeError(f"{path}: array of dtype {obj.dtype} cannot be saved; expected bool, int, uint or float")
        header = msgpack.packb([obj.dtype.str, list(obj.shape)])
        return msgpack.ExtType(NDARRAY_EXT, header + np.ascontiguousarray(obj).tobytes())
    if isinstance(obj, (list, tuple)):
        return [_encode(x, f"{path}[{i}]") for i, x in enumerate(obj)]
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"{path}: key {key!r} of type {type(key).__name__}, expected str keys")
            out[key] = _encode(value, f"{path}.{key}")
        return out
    raise TypeError(f"{path}: cannot save a {type(obj).__name__}; expected None, bool, int, float, str, a numpy "
                    "array, a list or a map with str keys")


def _decode_array(code: int, data: bytes) -> np.ndarray:
    if code != NDARRAY_EXT:
        raise MixerStateError(f"msgpack extension code {code}, expected {NDARRAY_EXT} (a numpy array)")
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    try:
        header = unpacker.unpack()
    except Exception as e:  # msgpack raises several unrelated types (OutOfData, FormatError, ...) for bad bytes
        raise MixerStateError(f"array header is not valid msgpack ({type(e).__name__}: {e})") from e
    body = data[unpacker.tell():]
    if not (isinstance(header, list) and len(header) == 2 and isinstance(header[0], str)
            and isinstance(header[1], list) and len(header[1]) <= _MAX_NDIM
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in header[1])):
        raise MixerStateError(f"array header {header!r:.80}, expected [dtype: str, shape: list of ints >= 0]")
    dtype_str, shape = header
    try:
        dtype = np.dtype(dtype_str)
    except (TypeError, ValueError) as e:
        raise MixerStateError(f"array dtype {dtype_str!r:.40} is not a numpy dtype") from e
    if dtype.kind not in _ARRAY_KINDS:
        raise MixerStateError(f"array dtype {dtype_str!r}, expected a bool, int, uint or float dtype")
    size = int(np.prod(shape, dtype=object)) * dtype.itemsize  # Python ints: a forged shape cannot overflow
    if size != len(body):
        raise MixerStateError(f"array of dtype {dtype_str} and shape {shape} needs {size} bytes, got {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(shape).copy()  # a copy: writable, not a view of the file


def dumps(obj: Any) -> bytes:
    """`obj` (None, bool, int, float, str, numpy arrays, lists/tuples and maps with str keys, nested) as a file
    body in this module's format. Tuples come back as lists and numpy scalars as Python scalars; arrays keep
    their dtype, shape and bytes."""
    top = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "body": _encode(obj, "body")}
    return msgpack.packb(top, use_bin_type=True)


def loads(data: bytes, source: str = "data") -> Any:
    """The body `dumps` wrote. `MixerStateError` naming `source` (a file name) when `data` is not msgpack, not
    this format, of another schema version, or holds a malformed array."""
    try:
        top = msgpack.unpackb(data, ext_hook=_decode_array, raw=False, strict_map_key=True)
    except MixerStateError as e:
        raise MixerStateError(f"{source}: {e}") from e
    except Exception as e:  # msgpack raises several unrelated types (ValueError, FormatError, StackError, ...)
        raise MixerStateError(f"{source}: not a mixer state file: not valid msgpack ({type(e).__name__}: {e}); "
                              "truncated or overwritten?") from e
    if not isinstance(top, dict) or top.get("format") != FORMAT:
        seen = top.get("format") if isinstance(top, dict) else type(top).__name__
        raise MixerStateError(f"{source}: not a mixer state file: format {seen!r:.60}, expected {FORMAT!r}")
    version = top.get("schema_version")
    if version != SCHEMA_VERSION:
        raise MixerStateError(f"{source}: schema_version {version!r}, this serl_stack reads {SCHEMA_VERSION}; the "
                              "file comes from another serl_stack version")
    if "body" not in top:
        raise MixerStateError(f"{source}: missing field 'body'")
    return top["body"]


# ------------------------------------------------------------------------------------------------ schema
# A check takes (value, path) and returns the value as the classes' load_state expects it, or raises
# MixerStateError naming the path; `_record` maps give a state's exact set of fields.

Check = Callable[[Any, str], Any]


def _fail(path: str, value: Any, expected: str) -> MixerStateError:
    return MixerStateError(f"{path}: got {value!r:.80} ({type(value).__name__}), expected {expected}")


def _num(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(path, value, "a number")
    return float(value)


def _int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, value, "an integer")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, value, "true or false")
    return value


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _fail(path, value, "a string")
    return value


def _uint128(value: Any, path: str) -> int:
    if not (isinstance(value, str) and re.fullmatch(r"[0-9]{1,39}", value) and int(value) < 2**128):
        raise _fail(path, value, "a 128-bit unsigned integer as a decimal string")
    return int(value)


def _optional(check: Check) -> Check:
    return lambda value, path: None if value is None else check(value, path)


def _array(kinds: str, ndim: int | None) -> Check:
    def check(value: Any, path: str) -> np.ndarray:
        wrong_ndim = ndim is not None and isinstance(value, np.ndarray) and value.ndim != ndim
        if not isinstance(value, np.ndarray) or value.dtype.kind not in kinds or wrong_ndim:
            shown = f"array {value.dtype}{value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
            raise MixerStateError(f"{path}: got {shown}, expected a {ndim or 'n'}-D array of dtype kind "
                                  f"{' or '.join(kinds)}")
        return value

    return check


def _list(check: Check) -> Check:
    def check_list(value: Any, path: str) -> list[Any]:
        if not isinstance(value, list):
            raise _fail(path, value, "a list")
        return [check(x, f"{path}[{i}]") for i, x in enumerate(value)]

    return check_list


def _map(check: Check) -> Check:
    def check_map(value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _fail(path, value, "a map")
        return {k: check(v, f"{path}.{k}") for k, v in value.items()}

    return check_map


def _check_fields(value: Any, path: str, required: Any, allowed: Any, what: str) -> None:
    """`value` is a map holding every `required` field and no field outside `allowed` (`what` names them)."""
    if not isinstance(value, dict):
        raise _fail(path, value, f"a map of {what}")
    missing = [k for k in required if k not in value]
    if missing:
        raise MixerStateError(f"{path}: missing field {missing[0]!r}")
    unexpected = sorted(set(value) - set(allowed))
    if unexpected:
        raise MixerStateError(f"{path}: unexpected field {unexpected[0]!r}, expected {what}")


def _record(fields: dict[str, Check]) -> Check:
    def check_record(value: Any, path: str) -> dict[str, Any]:
        _check_fields(value, path, fields, fields, f"only the fields {', '.join(fields)}")
        return {k: check(value[k], f"{path}.{k}") for k, check in fields.items()}

    return check_record


def _config(value: Any, path: str) -> dict[str, Any]:
    """MixingConfig's fields: the ones a mixer depends on (SAVED_SETTINGS) are required, the others default."""
    known = {f.name: f for f in dataclasses.fields(MixingConfig)}
    _check_fields(value, path, SAVED_SETTINGS, known, "MixingConfig fields")
    by_type: dict[type, Check] = {float: _num, int: _int, str: _str, bool: _bool}
    return {k: by_type[type(known[k].default)](v, f"{path}.{k}") for k, v in value.items()}


_BOUND = _record({"mean": _num, "std": _num})
_BASELINE = _record({"confidence": _num, "discount": _num, "max_return": _optional(_num), "returns": _array("f", 1)})
_BASELINE_STEPS = _record({"confidence": _num, "discount": _num, "window": _int,
                           "returns_to_go": _list(_array("f", 1))})
_LEARNED = _record({"confidence": _num, "window": _int, "min_runs": _int, "returns": _array("f", 1)})
_PREFIXES = _record({"confidence": _num, "discount": _num, "window": _int, "bounds": _list(_array("f", 2)),
                     "planned": _array("i", 1)})
_CALIBRATOR = _record({"initial": _num, "target": _num, "window": _int, "min_runs": _int, "cap_window": _int,
                       "runs": _array("f", 2), "kappa": _num, "cap": _num})
_RNG = _record({"bit_generator": _str, "state": _record({"state": _uint128, "inc": _uint128}), "has_uint32": _int,
                "uinteger": _int})
_COMMON = {"mode": _str, "config": _config, "episode": _int, "learned_available": _bool, "warmup": _optional(_bool),
           "rewards": _array("f", 1), "steps": _int, "fields": _map(_num), "baseline": _BASELINE,
           "learned": _LEARNED, "rng": _RNG}
_MIXER: dict[str, Check] = {
    "epsmix": _record({**_COMMON, "choice": _str}),
    "stepmix": _record({**_COMMON, "baseline_steps": _BASELINE_STEPS, "prefixes": _PREFIXES,
                        "calibrator_steps": _array("i", 1), "calibrators": _list(_CALIBRATOR), "planned": _int,
                        "switch_step": _optional(_int),
                        "bounds": _array("f", 2), "switch_bound": _optional(_BOUND)}),
}


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _mode_of(state: Any, source: str) -> str:
    if not isinstance(state, dict):
        raise MixerStateError(f"{source}: mixer: got {type(state).__name__}, expected a map")
    if "mode" not in state:
        raise MixerStateError(f"{source}: mixer: missing field 'mode'")
    mode = state["mode"]
    if not isinstance(mode, str) or mode not in _MIXER:
        raise MixerStateError(f"{source}: mixer.mode: got {mode!r:.40}, expected one of {', '.join(_MIXER)}")
    return mode


def _parse(state: Any, source: str) -> dict[str, Any]:
    mode = _mode_of(state, source)
    try:
        return _MIXER[mode](state, "mixer")
    except MixerStateError as e:
        raise MixerStateError(f"{source}: {e}") from e


# ------------------------------------------------------------------------------------------------ mixers


def mixer_to_state(mixer: EpsMix | StepMix) -> dict[str, Any]:
    """The mixer as it stands (mid-episode too) as a map `dumps` can write: `mixer.state()` with the coin
    generator's 128-bit integers as decimal strings. `MixerStateError` for a generator other than PCG64(DXSM)."""
    if not isinstance(mixer, (EpsMix, StepMix)):
        raise TypeError(f"mixer: got {type(mixer).__name__}, expected an EpsMix or a StepMix")
    state = mixer.state()
    rng = state["rng"]
    if rng.get("bit_generator") not in _RNG_KINDS:
        raise MixerStateError(f"{type(mixer).__name__}.rng: a {rng.get('bit_generator')} generator cannot be saved; "
                              f"expected one of {', '.join(_RNG_KINDS)} (np.random.default_rng gives PCG64)")
    state["rng"] = {"bit_generator": rng["bit_generator"],
                    "state": {"state": str(rng["state"]["state"]), "inc": str(rng["state"]["inc"])},
                    "has_uint32": int(rng["has_uint32"]), "uinteger": int(rng["uinteger"])}
    return state


def mixer_settings(state: Any, source: str = "mixer state") -> tuple[MixingConfig, float]:
    """The MixingConfig and discount a saved mixer ran with (for a snapshot, which is restored standalone)."""
    parsed = _parse(state, source)
    try:
        cfg = MixingConfig(**parsed["config"])
    except (TypeError, ValueError) as e:  # should MixingConfig ever check its own fields
        raise MixerStateError(f"{source}: mixer.config: {e}") from e
    return cfg, parsed["baseline"]["discount"]


def mixer_from_state(state: Any, cfg: MixingConfig, discount: float, source: str = "mixer state") -> EpsMix | StepMix:
    """A mixer that continues exactly where the one `mixer_to_state` saved stood: the same coin flips, U, L,
    kappa, cap and switch steps. `cfg` must ask for its mode and agree on `stepmix.SAVED_SETTINGS`, and `discount`
    (the critic's) must be the one its returns were discounted with; otherwise, and for any missing or malformed
    field, `MixerStateError` naming `source` and the problem."""
    mode = _mode_of(state, source)
    if mode != cfg.mode:
        raise MixerStateError(f"{source}: holds {_article(mode)} {mode} mixer, but mixing.mode asks for {cfg.mode}; "
                              "start a new run folder or restore the mode")
    parsed = _parse(state, source)
    saved_discount = parsed["baseline"]["discount"]
    if saved_discount != discount:
        raise MixerStateError(f"{source}: the saved mixer's returns are discounted with {saved_discount!r}, but this "
                              f"run's agent.discount is {discount!r}; start a new run folder or restore the discount")
    kind = parsed["rng"]["bit_generator"]
    if kind not in _RNG_KINDS:
        raise MixerStateError(f"{source}: mixer.rng.bit_generator: got {kind!r:.40}, expected one of "
                              f"{', '.join(_RNG_KINDS)}")
    rng = np.random.Generator(_RNG_KINDS[kind]())  # load_state sets its state
    try:
        mixer = make_mixer(cfg, discount=discount, rng=rng, max_return=parsed["baseline"]["max_return"])
        if not isinstance(mixer, _MIXER_CLASSES[mode]):  # cannot happen: cfg.mode == mode, checked above
            raise ValueError(f"make_mixer built {type(mixer).__name__} for mixing.mode {cfg.mode!r}")
        mixer.load_state(parsed)
    except ValueError as e:  # a setting that differs, or data the classes refuse (negative returns, ...)
        raise MixerStateError(f"{source}: {e}") from e
    return mixer


# ------------------------------------------------------------------------------------------------ files


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash at any moment leaves the old file or the new one, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)  # the rename itself is durable only once the folder is synced
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_body(path: Path, kind: str, fields: dict[str, Check]) -> dict[str, Any]:
    source = str(path)
    body = loads(path.read_bytes(), source)
    if isinstance(body, dict) and body.get("kind") not in (None, kind):
        raise MixerStateError(f"{source}: holds a {body['kind']!r:.40} file, expected a {kind!r} file")
    try:
        return _record({"kind": _str, **fields})(body, "body")
    except MixerStateError as e:
        raise MixerStateError(f"{source}: {e}") from e


def save_mixer(path: str | os.PathLike[str], mixer: EpsMix | StepMix) -> None:
    """Write the mixer's state to `path` atomically (a crash mid-write leaves the previous file)."""
    _write_atomic(Path(path), dumps({"kind": "mixer", "mixer": mixer_to_state(mixer)}))


def load_mixer(path: str | os.PathLike[str], cfg: MixingConfig, discount: float) -> EpsMix | StepMix:
    """The mixer `save_mixer` wrote, continuing under `cfg` and `discount` (see `mixer_from_state`).
    `MixerStateError` naming the file for anything it cannot restore; OSError when it cannot be read."""
    path = Path(path)
    body = _read_body(path, "mixer", {"mixer": lambda v, _p: v})
    return mixer_from_state(body["mixer"], cfg, discount, source=str(path))


def _params(value: Any, path: str) -> dict[str, Any]:
    """A policy parameter tree as `flax.serialization.to_state_dict` + `np.asarray` gives it."""
    if not isinstance(value, dict):
        raise _fail(path, value, "a numpy array or a map of them")
    return {k: v if isinstance(v, np.ndarray) else _params(v, f"{path}.{k}") for k, v in value.items()}


def save_snapshot(path: str | os.PathLike[str], episode: int, params: Mapping[str, Any] | None,
                  mixer: EpsMix | StepMix | None) -> None:
    """Store the policy training episode `episode` runs: `params` (None before the first ones, else a nested map
    of numpy arrays) and the mixer as it stands now (the actor calls this before `begin_episode`), with its config
    and discount so that `load_snapshot` rebuilds it alone. Atomic like `save_mixer`."""
    if isinstance(episode, bool) or not isinstance(episode, int) or episode < 0:
        raise ValueError(f"episode: got {episode!r}, expected an integer >= 0")
    if params is not None:
        _params(params, "params")
    body = {"kind": "snapshot", "episode": episode, "params": params,
            "mixer": None if mixer is None else mixer_to_state(mixer)}
    _write_atomic(Path(path), dumps(body))


def load_snapshot(path: str | os.PathLike[str]) -> dict[str, Any]:
    """`{"episode", "params", "mixer"}` as `save_snapshot` stored them: params None or a nested dict of numpy
    arrays, mixer None or a restored EpsMix / StepMix under the config it ran with. `MixerStateError` naming the
    file for anything it cannot read."""
    path = Path(path)
    body = _read_body(path, "snapshot", {"episode": _int, "params": _optional(_params), "mixer": lambda v, _p: v})
    if body["episode"] < 0:
        raise MixerStateError(f"{path}: body.episode: got {body['episode']}, expected >= 0")
    mixer = None
    if body["mixer"] is not None:
        cfg, discount = mixer_settings(body["mixer"], str(path))
        mixer = mixer_from_state(body["mixer"], cfg, discount, source=str(path))
    return {"episode": body["episode"], "params": body["params"], "mixer": mixer}
