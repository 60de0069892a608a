"""Config loading: overrides, types, unknown keys, and the one-line errors that name file and key."""

from pathlib import Path

import pytest

from agents.core.config import CONFIG_DIR, ConfigError, config_from_dict, load_config
from nets.ddm import DeepDynamicalModel


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
    config = load_config("ddm_pendulum", ["agent.fit.lr=2e-3"])
    assert config.agent.fit.lr == 0.002


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
        ("name: x\nseed: 1\nagent: {kind: ddm, fit: {lr: fast}}\n", [], "agent.fit.lr: expected a number, got 'fast'"),
        ("name: x\nseed: 1\nagent: {kind: ddm, fit: 3}\n", [], "agent.fit: expected a mapping, got int"),
        ("- name: x\n- seed: 1\n", [], "expected a mapping of keys at the top level, got list"),
        ("base: no_such_recipe\nname: x\n", [], "base: no recipe 'no_such_recipe'"),
        (MINIMAL, ["agent.kind=nope"], "agent.kind: unknown agent kind 'nope'"),
        (MINIMAL, ["train.device=tpu"], "train.device: expected auto, cpu or cuda"),
        ("name: x\nagent: {kind: random}\n", [], "seed: missing required key"),
        ("name: x\nseed: 1\n", [], "agent.kind: missing"),
        (MINIMAL, ["noequals"], "is not of the form key.sub=value"),
        ("name: [unclosed\n", [], "not valid YAML"),
        ("", [], "empty config: expected keys such as name, seed and agent.kind"),
        ("# only a comment\n", [], "empty config: expected keys such as name, seed and agent.kind"),
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


def test_missing_recipe_lists_the_recipes_there_are():
    with pytest.raises(ConfigError) as info:
        load_config("no_such_recipe")
    names = sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))
    assert str(info.value).endswith(f"recipes: {', '.join(names)})")


def test_an_empty_run_config_is_called_empty():
    with pytest.raises(ConfigError, match=r"^runs/x/config.yaml: empty config: expected keys such as"):
        config_from_dict(None, source="runs/x/config.yaml")


def test_a_recipe_with_a_base_overrides_only_what_differs(tmp_path):
    (tmp_path / "parent.yaml").write_text(MINIMAL)
    path = write(tmp_path, "base: parent\nname: child\nagent: {total_steps: 7}\nenv: {num_envs: 2}\n")
    config = load_config(str(path))
    assert config.name == "child" and config.seed == 1  # seed comes from the base
    assert config.agent.kind == "random" and config.agent.total_steps == 7
    assert config.env.id == "pixelpilot/Pendulum-v0" and config.env.num_envs == 2  # sections merge key by key


def test_shipped_variants_share_their_base_recipe():
    base, tiny, cartpole = (load_config(name) for name in ("ddm_pendulum", "ddm_pendulum_tiny", "ddm_cartpole"))
    for variant in (tiny, cartpole):  # what the variants do not change is the base recipe's, never a stale copy
        assert variant.agent.fit.fits == base.agent.fit.fits and variant.agent.fit.lr == base.agent.fit.lr
        assert variant.agent.fit.lr_schedule == "cosine" and variant.agent.model.inertia
    assert cartpole.agent.random_trials == base.agent.random_trials
    assert tiny.agent.model.latent_dim == 3 and tiny.agent.trial_steps == 20


def test_recipes_that_name_each_other_as_base_are_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b\nname: a\n")
    (tmp_path / "b.yaml").write_text("base: a\nname: b\n")
    with pytest.raises(ConfigError, match="base: recipes name each other in a loop"):
        load_config(str(tmp_path / "a.yaml"))


def test_model_block_takes_the_model_constructors_arguments_and_defaults():
    import inspect


    model = load_config("ddm_pendulum_tiny").agent.model
    parameters = inspect.signature(DeepDynamicalModel).parameters
    assert set(vars(model)) == set(parameters) - {"obs_shape", "action_dim", "action_bound"}
    assert model.min_std == parameters["min_std"].default  # not set in the recipe: the constructor's default
