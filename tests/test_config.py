"""Config loading: YAML files map onto the dataclasses; bad keys, wrong types, values outside a declared range and
broken cross-field rules fail naming the key, and `check_section` gives components the same checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from serl_stack.cli import main
from serl_stack.config import (
    PHYSICS_HZ,
    PHYSICS_TIMESTEP,
    RULES,
    AgentConfig,
    Config,
    ConfigError,
    ControllerConfig,
    EnvConfig,
    MixingConfig,
    PegInsertConfig,
    RandomizationConfig,
    ReplayConfig,
    TrainConfig,
    apply_overrides,
    check_section,
    dump,
    from_dict,
    load,
    parse_override,
    validate,
)

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


# ------------------------------------------------------------------------------------------ ranges and rules
# (every declared range, just outside, through `load` and the CLI: tests/test_config_ranges.py)

RULE_CASES: dict[str, tuple[str, list[str], list[str]]] = {
    # rule name: (the field its error names, overrides that break it, overrides that satisfy it)
    "env.workspace_low < env.workspace_high": (
        "env.workspace_low", ["env.workspace_low=[0.25, -0.25, 0.55]"], ["env.workspace_low=[0.25, -0.25, 0.54]"]),
    "env.reach_min < env.reach_max": ("env.reach_min", ["env.reach_min=0.7"], ["env.reach_min=0.69"]),
    "env.goal_low <= env.goal_high": (
        "env.goal_low", ["env.goal_low=[0.35, -0.15, 0.36]"], ["env.goal_low=[0.35, -0.15, 0.35]"]),
    "env.cameras without repeats": ("env.cameras", ["env.cameras=[front, front]"], ["env.cameras=[front, wrist]"]),
    "env.pick_cube.cube_low <= env.pick_cube.cube_high": (
        "env.pick_cube.cube_low", ["env.pick_cube.cube_low=[0.56, -0.1]"], ["env.pick_cube.cube_low=[0.55, 0.1]"]),
    "env.peg_insert.hole_low <= env.peg_insert.hole_high": (
        "env.peg_insert.hole_low", ["env.peg_insert.hole_low=[0.45, 0.09]"], ["env.peg_insert.hole_low=[0.55, 0.08]"]),
    "env.peg_insert.success_depth < env.peg_insert.hole_depth": (
        "env.peg_insert.success_depth", ["env.peg_insert.success_depth=0.03"], ["env.peg_insert.success_depth=0.029"]),
    "agent.critic_subset <= agent.num_critics": (
        "agent.critic_subset", ["agent.critic_subset=3"], ["agent.critic_subset=3", "agent.num_critics=3"]),
    "agent.encoder_* of equal length": (
        "agent.encoder_kernels", ["agent.encoder_kernels=[4]"],
        ["agent.encoder_channels=[32]", "agent.encoder_kernels=[4]", "agent.encoder_strides=[4]"]),
    "transport.params_port != transport.transitions_port": (
        "transport.params_port", ["transport.transitions_port=5555", "transport.params_port=5555"],
        ["transport.transitions_port=5555", "transport.params_port=5556"]),
    "agent.bc.enabled needs agent.bc.prior_run": (
        "agent.bc.prior_run", ["agent.bc.enabled=true"], ["agent.bc.enabled=true", "agent.bc.prior_run=runs/bc"]),
    "agent.bc.init_actor_from_bc needs agent.bc.enabled": (
        "agent.bc.init_actor_from_bc", ["agent.bc.init_actor_from_bc=true"],
        ["agent.bc.init_actor_from_bc=true", "agent.bc.enabled=true", "agent.bc.prior_run=runs/bc"]),
    "agent.bc.lambda_mode: dual needs agent.bc.lambda_init > 0": (
        "agent.bc.lambda_init", ["agent.bc.lambda_init=0"],
        ["agent.bc.lambda_init=0", "agent.bc.lambda_mode=schedule"]),
    "agent.bc.target_entropy: prior needs agent.bc.enabled and replay.demo_dir": (
        "replay.demo_dir", ["agent.bc.target_entropy=prior", "agent.bc.enabled=true", "agent.bc.prior_run=runs/bc"],
        ["agent.bc.target_entropy=prior", "agent.bc.enabled=true", "agent.bc.prior_run=runs/bc",
         "replay.demo_dir=demos"]),
    "agent.bc.enabled needs a state-only agent (no agent.image_keys)": (
        "agent.bc.enabled", ["agent.bc.enabled=true", "agent.bc.prior_run=runs/bc", "agent.image_keys=[images/front]"],
        ["agent.bc.enabled=true", "agent.bc.prior_run=runs/bc"]),
    "train.stop_at_success > 0 needs train.eval_every > 0": (
        "train.stop_at_success", ["train.stop_at_success=0.9"], ["train.stop_at_success=0.9", "train.eval_every=500"]),
    "train.total_env_steps >= train.num_actors": (
        "train.total_env_steps", ["train.num_actors=4", "train.total_env_steps=3"],
        ["train.num_actors=4", "train.total_env_steps=4"]),
    "train.seed < train.eval_seed": ("train.seed", ["train.seed=1000000"], ["train.seed=999999"]),
    "mixing.cap_runs >= mixing.calibration_runs": ("mixing.cap_runs", ["mixing.cap_runs=9"], ["mixing.cap_runs=10"]),
    "mixing.mode != off needs env.dense_reward: false (serl_stack tasks)": (
        "mixing.mode", ["mixing.mode=epsmix"], ["mixing.mode=epsmix", "env.dense_reward=false"]),
    "steering.enabled needs steering.critic_run": (
        "steering.critic_run", ["steering.enabled=true"], ["steering.enabled=true", "steering.critic_run=runs/x"]),
    "steering.base: bc / generalist / remote needs steering.base_dir / remote_endpoint": (
        "steering.remote_endpoint", ["steering.enabled=true", "steering.critic_run=r", "steering.base=remote"],
        ["steering.enabled=true", "steering.critic_run=r", "steering.base=remote",
         "steering.remote_endpoint=tcp://127.0.0.1:5600"]),
    "steering.remote_timeout_s <= 1 / env.control_hz": (
        "steering.remote_timeout_s",
        ["steering.enabled=true", "steering.critic_run=r", "steering.base=remote", "steering.remote_endpoint=tcp://h:1",
         "steering.remote_timeout_s=0.2"],
        ["steering.enabled=true", "steering.critic_run=r", "steering.base=remote", "steering.remote_endpoint=tcp://h:1",
         "steering.remote_timeout_s=0.1"]),
    "steering.online needs steering.enabled and a base the learner samples (bc, generalist)": (
        "steering.enabled", ["steering.online=true"],
        ["steering.online=true", "steering.enabled=true", "steering.critic_run=r", "steering.base=bc",
         "steering.base_dir=b", "replay.demo_dir=d"]),
    "steering.online needs replay.demo_dir and mixing.mode: off": (
        "replay.demo_dir", ["steering.enabled=true", "steering.critic_run=r", "steering.base=bc", "steering.base_dir=b",
                            "steering.online=true"],
        ["steering.enabled=true", "steering.critic_run=r", "steering.base=bc", "steering.base_dir=b",
         "steering.online=true", "replay.demo_dir=d"]),
    "steering.target_k needs steering.online": (
        "steering.target_k", ["steering.target_k=8"],
        ["steering.enabled=true", "steering.critic_run=r", "steering.base=bc", "steering.base_dir=b",
         "steering.online=true", "replay.demo_dir=d", "steering.target_k=8"]),
}


def test_a_foreign_env_may_mix_with_its_own_rewards() -> None:
    """Only the serl_stack tasks have shaping to turn off: a foreign env keeps env.dense_reward at its default
    (it refuses any other value) and may still mix; its rewards are checked as they arrive."""
    cfg = load(None, ["env.id=Pendulum-v1", "mixing.mode=epsmix"])
    assert cfg.env.dense_reward and cfg.mixing.mode == "epsmix"


def test_every_rule_has_a_case() -> None:
    assert sorted(RULE_CASES) == sorted(rule.name for rule in RULES)


@pytest.mark.parametrize("name", sorted(RULE_CASES))
def test_each_rule_fails_naming_its_field_and_passes_when_it_holds(name: str) -> None:
    field, bad, good = RULE_CASES[name]
    with pytest.raises(ConfigError) as e:
        load(None, bad)
    message = str(e.value)
    assert message.startswith(f"{field}: got ") and "expected" in message and "\n" not in message, message
    cfg = load(None, good)  # the same field set so that the rule holds: no error
    for text in good:
        key, value = parse_override(text)
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        assert node == (tuple(value) if isinstance(value, list) else value)


def test_a_range_error_reads_field_value_expected() -> None:
    with pytest.raises(ConfigError, match=r"^agent\.tau: got 5\.0, expected a value in \(0, 1\]$"):
        load(None, ["agent.tau=5"])
    with pytest.raises(ConfigError, match=r"^env\.workspace_low: got \(0\.25, 0\.0\), expected 3 items$"):
        load(None, ["env.workspace_low=[0.25, 0.0]"])
    with pytest.raises(ConfigError, match=r"^env\.workspace_high\[1\]: got inf, expected a finite value$"):
        load(None, ["env.workspace_high=[0.65, .inf, 0.55]"])
    with pytest.raises(ConfigError, match=r"^env\.randomization\.action_latency: got 2, expected one of 0, 1"):
        load(None, ["env.randomization.action_latency=2"])
    with pytest.raises(ConfigError, match=r"^env\.control_hz: got 501\.0, expected a value in \(0, 500\]"):
        load(None, ["env.control_hz=501"])
    assert load(None, ["mixing.kappa=inf"]).mixing.kappa == math.inf  # kappa declares inf allowed


def test_load_validates_once_after_the_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("agent:\n  tau: 5.0\n")
    with pytest.raises(ConfigError, match=r"^agent\.tau: got 5\.0"):
        load(f)
    assert load(f, ["agent.tau=0.01"]).agent.tau == 0.01  # an override may repair the file
    with pytest.raises(ConfigError, match=r"^agent\.critic_subset: got 3"):
        from_dict({"agent": {"critic_subset": 3}})
    with pytest.raises(ConfigError, match=r"^agent\.discount: got 1\.5"):
        apply_overrides(Config(), ["agent.discount=1.5"])


def test_validate_returns_the_config_itself() -> None:
    cfg = Config()
    assert validate(cfg) is cfg


def test_check_section_names_fields_by_their_path_in_config() -> None:
    with pytest.raises(ConfigError, match=r"^env\.controller\.kp_pos: got 0\.0, expected a finite value > 0$"):
        check_section(ControllerConfig(kp_pos=0.0))
    with pytest.raises(ConfigError, match=r"^env\.controller\.kp_pos: got -1\.0"):  # a section below the one given
        check_section(EnvConfig(controller=ControllerConfig(kp_pos=-1.0)))
    with pytest.raises(ConfigError, match=r"^agent\.critic_subset: got 3, expected <= agent\.num_critics \(2\)"):
        check_section(AgentConfig(critic_subset=3))  # a rule within the section
    with pytest.raises(ConfigError, match=r"^env\.peg_insert\.success_depth: got 0\.05"):
        check_section(EnvConfig(peg_insert=PegInsertConfig(success_depth=0.05)))  # a rule of a section below
    with pytest.raises(TypeError, match="config sections"):
        check_section(object())


def test_check_section_gives_the_same_error_as_load() -> None:
    for section, override in (
        (AgentConfig(tau=5.0), "agent.tau=5.0"),
        (RandomizationConfig(friction=1.0), "env.randomization.friction=1.0"),
        (ReplayConfig(capacity=0), "replay.capacity=0"),
        (TrainConfig(stop_at_success=0.5), "train.stop_at_success=0.5"),
    ):
        with pytest.raises(ConfigError) as direct:
            check_section(section)
        with pytest.raises(ConfigError) as loaded:
            load(None, [override])
        assert str(direct.value) == str(loaded.value)


def test_check_section_leaves_rules_across_sections_to_validate() -> None:
    mixing = MixingConfig(mode="epsmix")
    check_section(mixing)  # fine on its own: the dense-reward rule reads env.* as well
    with pytest.raises(ConfigError, match=r"^mixing\.mode: got 'epsmix'"):
        validate(Config(mixing=mixing))
    validate(Config(env=EnvConfig(dense_reward=False), mixing=mixing))


def test_from_dict_of_a_section_validates_it() -> None:
    assert from_dict({"kp_pos": 5.0}, ControllerConfig).kp_pos == 5.0
    with pytest.raises(ConfigError, match=r"^env\.controller\.kp_pos: got -5\.0"):
        from_dict({"kp_pos": -5.0}, ControllerConfig)


def test_a_float_written_with_an_exponent_reads_as_a_float() -> None:
    # YAML 1.1 reads 1e-3 (no dot in the mantissa) as a string; the docstring of parse_override promises 1e-3.
    assert load(None, ["agent.actor_lr=1e-3"]).agent.actor_lr == 1e-3
    assert from_dict({"agent": {"critic_lr": "2E-4"}}).agent.critic_lr == 2e-4
    with pytest.raises(ConfigError, match="expected int"):
        load(None, ["agent.utd=1e3"])  # ints stay ints


def test_control_hz_limit_is_the_models_physics_rate() -> None:
    from serl_stack.envs.panda import TIMESTEP, load_model

    assert load_model().opt.timestep == TIMESTEP == PHYSICS_TIMESTEP
    assert PHYSICS_HZ == 1 / PHYSICS_TIMESTEP
    load(None, [f"env.control_hz={PHYSICS_HZ}"])  # one physics step per action is the fastest


def test_check_section_checks_choices_of_a_section_built_in_code() -> None:
    # `load` refuses these while parsing; check_section catches the same mistake in a section made in code.
    with pytest.raises(ConfigError, match=r"^mixing\.mode: got 'eps', expected one of off, epsmix, stepmix$"):
        check_section(MixingConfig(mode="eps"))
    with pytest.raises(ConfigError, match=r"^replay\.action_source: got False, expected one of executed, policy$"):
        check_section(ReplayConfig(action_source=False))
