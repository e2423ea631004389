"""The on-disk form of conservative mixers (serl_stack.safety.mixer_state): a mixer saved and loaded again keeps
deciding exactly like the original (coin flips, U, kappa, cap, switch steps), snapshots carry parameters and a
mixer that rebuilds without the caller's config, and every broken file is a MixerStateError naming the problem."""

from __future__ import annotations

import ast
import copy
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from serl_stack.config import MixingConfig
from serl_stack.safety import mixer_state
from serl_stack.safety.estimates import ValueBound
from serl_stack.safety.mixer_state import (
    MixerStateError,
    dumps,
    load_mixer,
    load_snapshot,
    loads,
    mixer_from_state,
    mixer_to_state,
    save_mixer,
    save_snapshot,
)
from serl_stack.safety.stepmix import LEARNED, EpsMix, StepMix, make_mixer

DISCOUNT = 0.9
MODES = ("epsmix", "stepmix")


def _cfg(mode: str, **kw: Any) -> MixingConfig:
    # A finite kappa, a short warm-up and short calibration windows: within a few dozen episodes U, kappa, the cap
    # and EpsMix's eps all take values that matter to the decisions.
    return MixingConfig(mode=mode, **{"alpha": 0.3, "kappa": 1.0, "baseline_episodes": 5, "calibration_runs": 3,
                                      "cap_runs": 4, **kw})


def _mixer(mode: str, seed: int = 1, **kw: Any) -> EpsMix | StepMix:
    mixer = make_mixer(_cfg(mode, **kw), discount=DISCOUNT, rng=np.random.default_rng(seed))
    assert isinstance(mixer, (EpsMix, StepMix))
    return mixer


def _scenario(seed: int, episodes: int, horizon: int = 6, dim: int = 3) -> list[dict[str, Any]]:
    """Synthetic episodes fixed in advance, so two mixers can be driven through the same world: per step a state,
    the reward each policy would earn there and the critic's bound."""
    # The baseline banks most of its reward in the first three steps (1 a step, then 0.1); the learned policy
    # earns nothing there and 0.3 a step after: worth the end of an episode, not all of it (alpha 0.3), so EpsMix's
    # eps stays inside (0, 1) and StepMix switches mid-episode. The critic roughly knows the learned tail's value.
    rng = np.random.default_rng(seed)

    def tail(t: int) -> float:
        return 0.01 * max(3 - t, 0) + 0.3 * (horizon - max(t, 3))

    early = np.arange(horizon) < 3
    return [{"states": rng.normal(size=(horizon, dim)),
             "baseline": np.where(early, rng.uniform(0.0, 2.0, horizon), rng.uniform(0.0, 0.2, horizon)),
             "learned": np.where(early, rng.uniform(0.0, 0.02, horizon), rng.uniform(0.0, 0.6, horizon)),
             "bounds": [ValueBound(tail(t) + float(rng.normal(0.0, 0.3)), float(rng.uniform(0.05, 0.5)))
                        for t in range(horizon)]}
            for _ in range(episodes)]


def _steps(mixer: EpsMix | StepMix, episode: dict[str, Any], start: int = 0, stop: int | None = None) -> list[str]:
    choices = []
    for t in range(start, len(episode["states"]) if stop is None else stop):
        bound = episode["bounds"][t] if mixer.needs_bound else None
        choice = mixer.choose(episode["states"][t], bound)
        choices.append(choice)
        mixer.record_reward(float(episode["learned" if choice == LEARNED else "baseline"][t]))
    return choices


def _drive(mixer: EpsMix | StepMix, scenario: list[dict[str, Any]]) -> list[tuple[dict[str, float], list[str]]]:
    """Each episode's log record and per-step choices."""
    records = []
    for episode in scenario:
        mixer.begin_episode()
        choices = _steps(mixer, episode)
        records.append((mixer.end_episode(), choices))
    return records


def _rewrite(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Change a saved file's decoded msgpack map in place (arrays stay opaque msgpack extensions)."""
    top = msgpack.unpackb(path.read_bytes(), raw=False)
    edit(top)
    path.write_bytes(msgpack.packb(top, use_bin_type=True))


def _forged_array(dtype: str, shape: list[int], body: bytes) -> msgpack.ExtType:
    return msgpack.ExtType(mixer_state.NDARRAY_EXT, msgpack.packb([dtype, shape]) + body)


# ------------------------------------------------------------------------------------ behaviour round trips


@pytest.mark.parametrize("mode", MODES)
def test_a_restored_mixer_decides_exactly_like_the_original(mode: str, tmp_path: Path) -> None:
    original = _mixer(mode)
    _drive(original, _scenario(0, 30))
    # What is saved must matter: U from the warm-up, L from learned returns, StepMix's calibrated kappa.
    assert original.baseline.n >= 5 and original.learned.n >= 1
    if isinstance(original, StepMix):
        calibrated = [tau for tau, c in original.calibrators.items() if c.kappa not in (1.0, np.inf)]
        assert calibrated and original.prefixes.n >= 3  # some switch step's kappa was fitted to its runs
    else:
        assert original.learned.lower() > 0.0
    path = tmp_path / "mixer.msgpack"
    save_mixer(path, original)
    assert not list(tmp_path.glob("*.tmp"))

    restored = load_mixer(path, _cfg(mode), DISCOUNT)
    assert type(restored) is type(original) and restored.episode == original.episode == 29
    assert restored.log_fields() == original.log_fields()
    later = _scenario(1, 30)
    expected, got = _drive(original, later), _drive(restored, later)
    assert got == expected
    fields = [f for f, _ in expected]
    if mode == "epsmix":
        # The coin decided: eps strictly between 0 and 1, and both outcomes, in the continued episodes.
        coin = [f["learned"] for f in fields if 0.0 < f["epsilon"] < 1.0]
        assert 0.0 in coin and 1.0 in coin
    else:
        switches = {f["switch_step"] for f in fields}
        assert -1.0 in switches and len(switches - {-1.0, 0.0}) >= 1  # never, and mid-episode switches
    assert original.rng.bit_generator.state == restored.rng.bit_generator.state


def test_an_epsmix_that_lost_its_coin_stream_would_decide_differently(tmp_path: Path) -> None:
    """The control for the round trip above: the same saved U and kappa with the generator restarted from its
    seed (what a restore without the generator state gives) flips other coins."""
    original = _mixer("epsmix")
    _drive(original, _scenario(0, 30))
    path = tmp_path / "mixer.msgpack"
    save_mixer(path, original)
    reseeded = load_mixer(path, _cfg("epsmix"), DISCOUNT)
    reseeded.rng = np.random.default_rng(1)
    later = _scenario(1, 30)
    assert [c for _, c in _drive(reseeded, later)] != [c for _, c in _drive(original, later)]


@pytest.mark.parametrize("mode", MODES)
def test_a_mixer_saved_mid_episode_continues_that_episode(mode: str) -> None:
    """Saved mid-episode (after `choose`, before its reward; at steps 1 to 5 in turn) in each of a dozen episodes:
    the restored copy finishes the episode like the original, including what only lives mid-episode (StepMix's
    planned switch, the bounds gathered so far, a switch made before the save and its bound, a switch still to
    come; EpsMix's choice, whose return feeds L at the end)."""
    original = _mixer(mode)
    scenario = _scenario(2, 30)
    _drive(original, scenario[:12])
    before, after = 0, 0  # episodes whose decision came before / after the save point
    for i, episode in enumerate(scenario[12:24]):
        save_at = 1 + i % 5
        original.begin_episode()
        _steps(original, episode, stop=save_at)
        bound = episode["bounds"][save_at] if original.needs_bound else None
        choice = original.choose(episode["states"][save_at], bound)
        restored = mixer_from_state(loads(dumps(mixer_to_state(original)), "test"), _cfg(mode), DISCOUNT)
        assert restored.needs_bound == original.needs_bound and restored.log_fields() == original.log_fields()
        for mixer in (original, restored):
            mixer.record_reward(float(episode["learned" if choice == LEARNED else "baseline"][save_at]))
        assert _steps(restored, episode, start=save_at + 1) == _steps(original, episode, start=save_at + 1)
        fields = original.end_episode()
        assert restored.end_episode() == fields
        assert restored.learned.lower() == original.learned.lower()
        if mode == "stepmix":
            assert {t: (c.kappa, c.cap) for t, c in restored.calibrators.items()} == {
                t: (c.kappa, c.cap) for t, c in original.calibrators.items()}
        decided = fields["switch_step"] if mode == "stepmix" else (0.0 if fields["learned"] else -1.0)
        before += 0 <= decided <= save_at
        after += decided > save_at
    assert before >= 1 and (mode == "epsmix" or after >= 1)  # the saved episode state mattered afterwards
    assert _drive(restored, scenario[24:]) == _drive(original, scenario[24:])


# ---------------------------------------------------------------------------------------------- snapshots


def _assert_same_tree(got: Any, expected: Any, path: str = "params") -> None:
    assert isinstance(got, dict) and got.keys() == expected.keys(), path
    for key, value in expected.items():
        if isinstance(value, dict):
            _assert_same_tree(got[key], value, f"{path}.{key}")
        else:
            assert isinstance(got[key], np.ndarray), f"{path}.{key}"
            assert got[key].dtype == value.dtype and got[key].shape == value.shape, f"{path}.{key}"
            np.testing.assert_array_equal(got[key], value)


@pytest.mark.parametrize("mode", MODES)
def test_a_snapshot_keeps_the_params_and_the_mixer_as_it_stood(mode: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    params = {"params": {"Dense_0": {"kernel": rng.normal(size=(3, 4)).astype(np.float32),
                                     "bias": np.zeros(4, np.float32)},
                         "log_std": np.array(-0.5, np.float32)},
              "step": np.array([7, 8], np.int32), "mask": np.array([[True, False]]), "empty": np.zeros((0, 3))}
    mixer = _mixer(mode, alpha=0.25)
    _drive(mixer, _scenario(3, 20))
    frozen = copy.deepcopy(mixer)  # what the pickle-based snapshot held
    path = tmp_path / "episode-000020.msgpack"
    save_snapshot(path, 20, params, mixer)
    _drive(mixer, _scenario(4, 3))  # the live mixer moves on; the snapshot must not

    body = load_snapshot(path)
    assert set(body) == {"episode", "params", "mixer"} and body["episode"] == 20
    _assert_same_tree(body["params"], params)
    snap = body["mixer"]
    # Rebuilt from the snapshot alone: the config and discount it ran with.
    assert type(snap) is type(frozen) and snap.cfg == frozen.cfg and snap.cfg.alpha == 0.25
    assert snap.baseline.discount == DISCOUNT and snap.episode == frozen.episode == 19 and mixer.episode == 22
    later = _scenario(5, 15)
    assert _drive(snap, later) == _drive(frozen, later)


def test_a_snapshot_before_any_params_or_without_mixing(tmp_path: Path) -> None:
    path = tmp_path / "episode-000000.msgpack"
    save_snapshot(path, 0, None, None)
    assert load_snapshot(path) == {"episode": 0, "params": None, "mixer": None}
    save_snapshot(path, 3, None, _mixer("stepmix"))  # a fresh mixer: episode -1, nothing gathered yet
    body = load_snapshot(path)
    assert body["params"] is None and isinstance(body["mixer"], StepMix) and body["mixer"].episode == -1
    with pytest.raises(ValueError, match=r"episode: got -1"):
        save_snapshot(path, -1, None, None)
    with pytest.raises(MixerStateError, match=r"params\.a: got 1 \(int\), expected a numpy array or a map of them"):
        save_snapshot(path, 1, {"a": 1}, None)


# ------------------------------------------------------------------------------------------------ codec


@pytest.mark.parametrize("dtype", ["bool", "int8", "int64", "uint16", "uint64", "float16", "float32", "float64",
                                   ">f4", "<i2"])
@pytest.mark.parametrize("shape", [(), (0,), (2, 3), (1, 0, 2), (2, 1, 3)])
def test_arrays_keep_dtype_shape_and_bytes(dtype: str, shape: tuple[int, ...]) -> None:
    a = (np.arange(int(np.prod(shape))) % 5).astype(dtype).reshape(shape)
    if a.dtype.kind == "f" and a.size:
        a.flat[0] = np.nan  # NaN payloads survive too: bytes, not values, are stored
    out = loads(dumps({"x": [a, (a, 1)]}))
    got = out["x"][0]
    assert got.dtype == a.dtype and got.shape == a.shape and got.tobytes() == a.tobytes()
    assert got.flags.writeable
    assert out["x"][1][1] == 1 and isinstance(out["x"][1], list)  # tuples come back as lists


def test_dumps_refuses_what_it_cannot_store_explicitly() -> None:
    with pytest.raises(TypeError, match=r"body\.a\[1\]: array of dtype object"):
        dumps({"a": [1, np.array([object()])]})
    with pytest.raises(TypeError, match=r"body\.c: array of dtype complex128"):
        dumps({"c": np.zeros(2, complex)})
    with pytest.raises(TypeError, match=r"body: key 1 of type int"):
        dumps({1: 2})
    with pytest.raises(TypeError, match=r"body\.s: cannot save a set"):
        dumps({"s": {1}})
    with pytest.raises(TypeError, match="outside msgpack's 64-bit range"):
        dumps(2**100)


# ----------------------------------------------------------------------------------------- broken files


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    mixer = _mixer("epsmix")
    _drive(mixer, _scenario(0, 12))
    path = tmp_path / "mixer-actor-0.msgpack"
    save_mixer(path, mixer)
    return path


def _load(path: Path, mode: str = "epsmix", discount: float = DISCOUNT, **kw: Any) -> EpsMix | StepMix:
    return load_mixer(path, _cfg(mode, **kw), discount)


def test_garbage_and_truncated_files_name_the_file(saved: Path, tmp_path: Path) -> None:
    data = saved.read_bytes()
    garbage = tmp_path / "garbage.msgpack"
    where = re.escape(str(garbage))
    for junk in (b"", b"\xc1\xc1\xc1", b"this is not msgpack", data[:1], data[: len(data) // 2], data[:-1]):
        garbage.write_bytes(junk)
        with pytest.raises(MixerStateError, match=rf"^{where}: not a mixer state file: not valid msgpack"):
            _load(garbage)
    garbage.write_bytes(msgpack.packb({"episode": 1}))
    with pytest.raises(MixerStateError, match=rf"^{where}: not a mixer state file: format None"):
        _load(garbage)
    assert issubclass(MixerStateError, ValueError)


def test_another_schema_version_is_refused(saved: Path) -> None:
    _rewrite(saved, lambda top: top.update(schema_version=mixer_state.SCHEMA_VERSION + 1))
    version = mixer_state.SCHEMA_VERSION
    where = re.escape(str(saved))
    expected = rf"^{where}: schema_version {version + 1}, this serl_stack reads {version}"
    with pytest.raises(MixerStateError, match=expected):
        _load(saved)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [(lambda m: m.pop("learned"), r"mixer: missing field 'learned'"),
     (lambda m: m["learned"].pop("returns"), r"mixer\.learned: missing field 'returns'"),
     (lambda m: m["baseline"].pop("returns"), r"mixer\.baseline: missing field 'returns'"),
     (lambda m: m["rng"]["state"].pop("inc"), r"mixer\.rng\.state: missing field 'inc'"),
     (lambda m: m["config"].pop("alpha"), r"mixer\.config: missing field 'alpha'"),
     (lambda m: m.update(extra=1), r"mixer: unexpected field 'extra'"),
     (lambda m: m.update(episode="3"), r"mixer\.episode: got '3' \(str\), expected an integer"),
     (lambda m: m["rng"]["state"].update(state="12x"), r"mixer\.rng\.state\.state: .*128-bit unsigned integer"),
     (lambda m: m["rng"].update(bit_generator="MT19937"), r"bit_generator: got 'MT19937', expected one of PCG64"),
     (lambda m: m.update(choice="maybe"), r"choice: got 'maybe'"),
     (lambda m: m["baseline"].update(returns=_forged_array("<f8", [2], np.array([1.0, -1.0]).tobytes())),
      r"BaselineValue\.returns: .*expected a 1-D array of finite returns"),
     (lambda m: m.update(rewards=_forged_array("|O", [2], b"\0" * 16)), r"array dtype '\|O'"),
     (lambda m: m.update(rewards=_forged_array("<f8", [3], b"\0" * 16)), r"needs 24 bytes, got 16"),
     (lambda m: m.update(rewards=_forged_array("nonsense", [1], b"\0" * 8)), r"not a numpy dtype"),
     (lambda m: m.update(mode="lucky"), r"mixer\.mode: got 'lucky', expected one of epsmix, stepmix")],
)
def test_a_missing_or_malformed_field_is_named(saved: Path, edit: Callable[[dict], Any], problem: str) -> None:
    _rewrite(saved, lambda top: edit(top["body"]["mixer"]))
    with pytest.raises(MixerStateError, match=rf"^{re.escape(str(saved))}: .*{problem}"):
        _load(saved)


def test_a_mixer_of_another_mode_or_setting_is_refused(saved: Path) -> None:
    where = re.escape(str(saved))
    with pytest.raises(MixerStateError, match=rf"^{where}: holds an epsmix mixer, but mixing.mode asks for stepmix; "
                                              "start a new run folder or restore the mode$"):
        _load(saved, "stepmix")
    with pytest.raises(MixerStateError, match=r"mixing\.alpha: the saved mixer ran with 0\.3, this config has 0\.2"):
        _load(saved, alpha=0.2)
    with pytest.raises(MixerStateError, match=r"discounted with 0\.9, but this run's agent\.discount is 0\.99"):
        _load(saved, discount=0.99)
    _load(saved, value_samples=3, snapshot_every=5)  # what the actor does with the mixer may change
    with pytest.raises(MixerStateError, match=rf"^{where}: holds a 'mixer' file, expected a 'snapshot' file"):
        load_snapshot(saved)


def test_a_failed_save_keeps_the_previous_file(saved: Path) -> None:
    before = saved.read_bytes()
    odd = make_mixer(_cfg("epsmix"), discount=DISCOUNT, rng=np.random.Generator(np.random.MT19937(0)))
    with pytest.raises(MixerStateError, match="EpsMix.rng: a MT19937 generator cannot be saved"):
        save_mixer(saved, odd)
    assert saved.read_bytes() == before and not list(saved.parent.glob("*.tmp"))
    assert _load(saved).episode == 11


# ---------------------------------------------------------------------------------------------- imports


def test_the_module_imports_no_pickle_jax_flax_or_transport() -> None:
    source = Path(mixer_state.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert not {m for m in imported if m.split(".")[0] in {"pickle", "cPickle", "dill", "shelve", "jax", "flax"}}
    assert not {m for m in imported if m.startswith("serl_stack.transport")}
    # And nothing it imports pulls them in (scipy imports pickle itself, so that one is checked in the source).
    probe = ("import sys, serl_stack.safety.mixer_state; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax') "
             "or m.startswith('serl_stack.transport')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

