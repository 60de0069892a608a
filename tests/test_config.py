"""Config loading: overrides, types, unknown keys, and the one-line errors that name file and key."""

from pathlib import Path

import pytest

from agents.config import CONFIG_DIR, ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


MINIMAL = """
name: test
seed: 1
env: {id: pixelpilot/Pendulum-v0}
agent: {kind: random, total_steps: 100}
"""


def test_every_shipped_config_loads():
    paths = sorted(CONFIG_DIR.glob("*.yaml"))
    assert paths, "no configs shipped"
    for path in paths:
        config = load_config(str(path))
        assert isinstance(config.seed, int)


def test_recipe_name_resolves_to_configs_dir():
    assert load_config("random_pendulum").name == "random_pendulum"


def test_overrides_are_parsed_as_yaml_values(tmp_path):
    config = load_config(str(write(tmp_path, MINIMAL)), ["seed=7", "agent.total_steps=55", "env.kwargs.image_size=32"])
    assert config.seed == 7
    assert config.agent.total_steps == 55
    assert config.env.kwargs == {"image_size": 32}


def test_exponent_floats_without_a_dot_are_numbers():
    config = load_config("ddm_pendulum", ["agent.model_lr=2e-3"])
    assert config.agent.model_lr == 0.002


def test_defaults_fill_missing_sections(tmp_path):
    config = load_config(str(write(tmp_path, MINIMAL)))
    assert config.train.log_every == 1000
    assert config.env.num_envs == 1


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        (MINIMAL, ["agent.totl_steps=5"], "agent.totl_steps: unknown key"),
        (MINIMAL, ["train.bogus=1"], "train.bogus: unknown key"),
        (MINIMAL, ["seed=abc"], "seed: expected an integer, got 'abc'"),
        (MINIMAL, ["agent.total_steps=0"], "agent.total_steps: must be >= 1"),
        (MINIMAL, ["env.num_envs=1.5"], "env.num_envs: expected an integer"),
        ("name: x\nseed: 1\nagent: {kind: ddm, model_lr: fast}\n", [], "agent.model_lr: expected a number, got 'fast'"),
        (MINIMAL, ["agent.kind=nope"], "agent.kind: unknown agent kind 'nope'"),
        (MINIMAL, ["train.device=tpu"], "train.device: expected auto, cpu or cuda"),
        ("name: x\nagent: {kind: random}\n", [], "seed: missing required key"),
        ("name: x\nseed: 1\n", [], "agent.kind: missing"),
        (MINIMAL, ["noequals"], "is not of the form key.sub=value"),
        ("name: [unclosed\n", [], "not valid YAML"),
    ],
)
def test_bad_config_names_file_and_key_in_one_line(tmp_path, text, overrides, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path), overrides)
    message = str(info.value)
    assert expected in message
    assert str(path) in message
    assert "\n" not in message


def test_missing_file_is_named():
    with pytest.raises(ConfigError, match="no_such_recipe: no such config file"):
        load_config("no_such_recipe")
