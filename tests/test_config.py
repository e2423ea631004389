"""Config loading: YAML files map onto the dataclasses; bad keys and wrong types fail naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from serl_stack.cli import main
from serl_stack.config import Config, ConfigError, apply_overrides, dump, from_dict, load

ROOT = Path(__file__).resolve().parents[1]


def test_sim_reach_yaml_is_the_embedded_default() -> None:
    assert load(ROOT / "configs" / "sim_reach.yaml") == Config()


def test_every_yaml_in_configs_loads() -> None:
    files = sorted((ROOT / "configs").glob("*.yaml"))
    assert files, "configs/ holds no YAML file"
    for f in files:
        assert isinstance(load(f), Config)


def test_dump_load_round_trip(tmp_path: Path) -> None:
    cfg = apply_overrides(Config(), ["agent.hidden_dims=[64, 32]", "train.seed=7", "env.dense_reward=false"])
    f = tmp_path / "c.yaml"
    f.write_text(dump(cfg))
    assert load(f) == cfg
    assert cfg.agent.hidden_dims == (64, 32) and cfg.train.seed == 7 and cfg.env.dense_reward is False


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"agent": {"actor_lrr": 1e-3}}, "agent.actor_lrr"),
        ({"trian": {}}, "'trian'"),
        ({"env": {"controller": {"kp_poss": 1.0}}}, "env.controller.kp_poss"),
    ],
)
def test_unknown_key_is_named(data: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match="unknown config key") as e:
        from_dict(data)
    assert fragment in str(e.value)


@pytest.mark.parametrize(
    "data, fragment, expected",
    [
        ({"agent": {"batch_size": "256"}}, "agent.batch_size", "expected int"),
        ({"agent": {"batch_size": 2.5}}, "agent.batch_size", "expected int"),
        ({"agent": {"actor_lr": "fast"}}, "agent.actor_lr", "expected float"),
        ({"env": {"dense_reward": 1}}, "env.dense_reward", "expected bool"),
        ({"agent": {"hidden_dims": 256}}, "agent.hidden_dims", "expected a list"),
        ({"agent": {"hidden_dims": [256, "x"]}}, "agent.hidden_dims[1]", "expected int"),
        ({"env": 3}, "env", "expected a mapping"),
    ],
)
def test_wrong_type_is_named(data: dict, fragment: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        from_dict(data)
    assert fragment in str(e.value) and expected in str(e.value)


def test_int_is_accepted_for_float() -> None:
    assert from_dict({"agent": {"actor_lr": 1}}).agent.actor_lr == 1.0


def test_yaml_file_errors_name_the_file_and_key(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("agent:\n  utd: four\n")
    with pytest.raises(ConfigError) as e:
        load(f)
    assert "bad.yaml" in str(e.value) and "agent.utd" in str(e.value)
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "missing.yaml")


def test_override_of_unknown_key_fails() -> None:
    with pytest.raises(ConfigError, match="agent.nope"):
        apply_overrides(Config(), ["agent.nope=1"])
    with pytest.raises(ConfigError, match="expected the form"):
        apply_overrides(Config(), ["agent.utd"])


def test_cli_reports_bad_config_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  total_env_steps: many\n")
    assert main(["config", "--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert "train.total_env_steps" in err and "expected int" in err
    assert main(["config", "--set", "agent.utd=3"]) == 0
    assert "utd: 3" in capsys.readouterr().out


def test_fixed_length_tuples_are_checked_item_by_item() -> None:
    from serl_stack.config import _coerce

    with pytest.raises(ConfigError, match=r"x\[1\]: expected int"):
        _coerce([1, 2.5], tuple[float, int], "x")
    assert _coerce([1, 2], tuple[float, int], "x") == (1.0, 2)
    with pytest.raises(ConfigError, match="expected 2 items"):
        _coerce([1.0], tuple[float, int], "x")
