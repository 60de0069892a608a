"""Typed, validated run configs: YAML files in ``configs/`` plus ``key.sub=value`` overrides.

A config file maps onto :class:`RunConfig`; its ``agent:`` section maps onto the ``Config`` dataclass of
the agent kind named by ``agent.kind`` (see ``agents/registry.py``). Every key is checked against the
dataclass fields and their type hints, so a typo or a wrong type fails at load time with one line naming
the file and the key path, before anything is written.

    config = load_config("configs/random_pendulum.yaml", ["seed=3", "agent.total_steps=500"])
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A config problem the user must fix; its message is one line naming the file and key path."""


@dataclass
class EnvConfig:
    id: str = "pixelpilot/Pendulum-v0"  # a registered Gymnasium id (pixelpilot/... or any other)
    num_envs: int = 1  # environments stepped together (agents that batch acting use this)
    kwargs: dict = field(default_factory=dict)  # passed to gymnasium.make / make_vec

    def validate(self) -> None:
        if self.num_envs < 1:
            raise ConfigError(f"env.num_envs: must be >= 1, got {self.num_envs}")


@dataclass
class TrainConfig:
    device: str = "auto"  # "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1", ...
    log_every: int = 1000  # env steps between rows of metrics.csv / TensorBoard
    checkpoint_every: int = 10_000  # env steps between checkpoints (one is always written at the end)
    record_every: int = 10  # record every N-th episode to episodes/ (the best so far is kept as well)
    max_episode_files: int = 20  # recorded episodes kept on disk (oldest removed first)
    runs_dir: str = "runs"  # run directories go to <runs_dir>/<name>/<stamp>/

    def validate(self) -> None:
        for key in ("log_every", "checkpoint_every", "record_every", "max_episode_files"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key}: must be >= 1, got {getattr(self, key)}")
        if self.device != "auto" and not self.device.startswith(("cpu", "cuda", "mps")):
            raise ConfigError(f"train.device: expected auto, cpu or cuda[:N], got {self.device!r}")


@dataclass
class RunConfig:
    name: str  # recipe name; runs go to <runs_dir>/<name>/<stamp>
    seed: int  # seeds envs, networks and action sampling
    agent: Any  # the agent kind's own Config dataclass, chosen by agent.kind
    env: EnvConfig = field(default_factory=EnvConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def resolve_config_path(name_or_path: str) -> Path:
    """A path to a YAML file, or a recipe name looked up in ``configs/`` (``ddm_pendulum``)."""
    candidates = [Path(name_or_path)]
    if not name_or_path.endswith((".yaml", ".yml")):
        candidates.append(CONFIG_DIR / f"{name_or_path}.yaml")
    candidates.append(CONFIG_DIR / Path(name_or_path).name)
    for path in candidates:
        if path.is_file():
            return path
    raise ConfigError(f"{name_or_path}: no such config file (nor a recipe in {CONFIG_DIR})")


def load_config(name_or_path: str, overrides: Sequence[str] = ()) -> RunConfig:
    """Load, override and validate a config. Raises :class:`ConfigError` with a one-line message."""
    path = resolve_config_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    for override in overrides:
        apply_override(data, override, source=path)
    return config_from_dict(data, source=path)


def apply_override(data: dict, override: str, source: Path | str = "<override>") -> None:
    """Apply ``key.sub=value`` (value parsed as YAML, so ``3``, ``0.5``, ``true``, ``[1, 2]`` work)."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"{source}: override {override!r} is not of the form key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: override {key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def config_from_dict(data: Mapping[str, Any], source: Path | str = "<config>") -> RunConfig:
    """Build and validate a :class:`RunConfig` from plain data (a parsed YAML file)."""
    from agents.registry import agent_config_class

    data = dict(data)
    agent_data = data.get("agent")
    if not isinstance(agent_data, dict) or "kind" not in agent_data:
        raise ConfigError(f"{source}: agent.kind: missing (the agent section must name its kind)")
    try:
        agent_cls = agent_config_class(agent_data["kind"])
    except KeyError as err:
        raise ConfigError(f"{source}: agent.kind: {err.args[0]}") from None
    try:
        config = _build(RunConfig, data, "", {"agent": agent_cls})
        _validate(config)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return config


def config_to_dict(config: Any) -> dict:
    """The plain-data form of a config (what ``config.yaml`` in a run directory holds)."""
    return dataclasses.asdict(config)


def _validate(node: Any) -> None:
    if dataclasses.is_dataclass(node):
        for item in dataclasses.fields(node):
            _validate(getattr(node, item.name))
        if hasattr(node, "validate"):
            node.validate()


def _build(cls: type, data: Any, path: str, field_classes: Mapping[str, type] | None = None) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'top level'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {item.name: item for item in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(fields)
        raise ConfigError(f"{path}{unknown[0]}: unknown key (known keys: {known})")
    values = {}
    for name, item in fields.items():
        key_path = f"{path}{name}"
        if name not in data:
            if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key_path}: missing required key")
            continue
        hint = (field_classes or {}).get(name, hints[name])
        values[name] = _convert(hint, data[name], key_path)
    return cls(**values)


def _convert(hint: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value if value is not None else {}, f"{path}.")
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (arg for arg in args if arg is not type(None)):
            try:
                return _convert(option, value, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{path}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
        item_hint = args[0] if args else Any
        items = [_convert(item_hint, item, f"{path}[{i}]") for i, item in enumerate(value)]
        return tuple(items) if origin is tuple or hint is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 2e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{path}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value
