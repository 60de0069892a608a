"""Typed, validated run configs: YAML files in ``configs/`` plus ``key.sub=value`` overrides.

A config file maps onto :class:`RunConfig`; its ``agent:`` section maps onto the ``Config`` dataclass of
the agent kind named by ``agent.kind`` (see ``agents/core/registry.py``), and each block inside it onto the
dataclass (or constructor, through :func:`config_class`) it configures, with the same names. Every key is
checked against the dataclass fields and their type hints (``Literal`` choices included), so a typo or a
wrong type fails at load time with one line naming the file and the key path, before anything is written.

A recipe may start from another and override only what differs: ``base: ddm_pendulum`` (a recipe name or
a path relative to the file) loads that recipe first and merges this file's keys into it, section by section.

    config = load_config("configs/random_pendulum.yaml", ["seed=3", "agent.total_steps=500"])
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from agents.core.registry import agent_class

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
EMPTY = "empty config: expected keys such as name, seed and agent.kind"  # what YAML reads as None


class ConfigError(ValueError):
    """A config problem the user must fix; its message is one line naming the file and key path.

    A block's ``validate`` raises it with the key relative to the block (``elites: must be ...``); the
    loader puts the block's path in front (``agent.cem.elites: must be ...``).
    """


def at_least(block: Any, minimum: float, *keys: str) -> None:
    """Raise a ConfigError naming the first of ``keys`` whose value in ``block`` is below ``minimum``."""
    for key in keys:
        value = getattr(block, key)
        if value < minimum:
            raise ConfigError(f"{key}: must be >= {minimum}, got {value}")


def config_class(constructor: Callable, skip: Sequence[str] = (), name: str | None = None,
                 validate: Callable[[Any], None] | None = None, defaults: Mapping[str, Any] | None = None) -> type:
    """A config dataclass whose fields are ``constructor``'s keyword arguments (less ``skip``, the ones the
    caller fills in), with its defaults and type hints: the block maps one-to-one onto the constructor, and
    its defaults live once, in the constructor's signature (documented in its docstring).

    ``validate(block)``, if given, becomes the dataclass's ``validate`` (the loader calls it). ``defaults``
    gives a default to arguments the constructor requires (a block's keys all have defaults).
    """
    hints = typing.get_type_hints(constructor.__init__ if isinstance(constructor, type) else constructor)
    fields = []
    for parameter in inspect.signature(constructor).parameters.values():
        if parameter.name in skip or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        default = (defaults or {}).get(parameter.name, parameter.default)
        if default is parameter.empty:
            raise TypeError(f"config_class: {constructor.__name__}({parameter.name}) has no default; skip it "
                            "or give one in defaults")
        if isinstance(default, (list, dict, tuple)):
            fields.append((parameter.name, hints.get(parameter.name, Any),
                           field(default_factory=lambda value=default: _plain(value))))
        else:
            fields.append((parameter.name, hints.get(parameter.name, Any), field(default=default)))
    namespace = {"validate": validate} if validate is not None else {}
    return dataclasses.make_dataclass(name or f"{constructor.__name__}Config", fields, namespace=namespace)


@dataclass
class EnvConfig:
    id: str = "pixelpilot/Pendulum-v0"  # a registered Gymnasium id (pixelpilot/... or any other)
    num_envs: int = 1  # environments stepped together (agents that batch acting use this)
    kwargs: dict = field(default_factory=dict)  # passed to gymnasium.make / make_vec
    # passed to make_vec only: the batched pixel envs' {backend: torch, device: cuda} keeps the training envs'
    # states, frames and rewards on the GPU (the single env that eval and watch play stays on NumPy)
    vector_kwargs: dict = field(default_factory=dict)
    # A Box env acted on through a list of actions (Discrete(n)), for value-based agents: [-2, 0, 2], or one
    # list per action for several dimensions; checked against the env's bounds when the env is made.
    discrete_actions: list | None = None

    def validate(self) -> None:
        at_least(self, 1, "num_envs")


@dataclass
class TrainConfig:
    device: str = "auto"  # "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1", ...
    log_every: int = 1000  # env steps between rows of metrics.csv / TensorBoard
    checkpoint_every: int = 10_000  # env steps between checkpoints (one is always written at the end)
    record_every: int = 10  # record every N-th episode to episodes/ (the best so far is kept as well)
    max_episode_files: int = 20  # recorded episodes kept on disk (oldest removed first)
    runs_dir: str = "runs"  # run directories go to <runs_dir>/<name>/<stamp>/
    # Checkpoints keep the replay memory (agents that have one: dqn), so a resumed run goes on learning as the unbroken
    # one would; each writes only the entries added since the previous one (agents/dqn/replay_files.py). False: a
    # resumed run refills it for agent.learning_starts env steps first (it says so on stderr).
    save_replay: bool = True
    # torch's intra-op threads while this run trains (restored after); None: torch's own choice (OMP_NUM_THREADS,
    # else one per core). Small networks lose more to threads handing work over than they gain: recipes say.
    threads: int | None = None

    def validate(self) -> None:
        at_least(self, 1, "log_every", "checkpoint_every", "record_every", "max_episode_files")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ConfigError(f"threads: expected a whole number >= 1 (or null for torch's default), "
                              f"got {self.threads!r}")
        if self.device != "auto" and not self.device.startswith(("cpu", "cuda", "mps")):
            raise ConfigError(f"device: expected auto, cpu or cuda[:N], got {self.device!r}")


@dataclass
class RayConfig:
    """Ray: distributed rollouts (agents that support them: dqn) and the cluster that sweeps and seeds run on."""

    workers: int = 0  # rollout workers (Ray actors named RolloutWorker); 0: act in the training process
    address: str | None = None  # Ray cluster to join ("auto", "HOST:6379"); None: start an embedded Ray here
    weights_every: int = 100  # learner updates between weight broadcasts to the workers (through the object store)
    # vector-env steps a worker collects before sending them to the learner: each batch costs a Ray round trip
    # (~12 ms on a 2-core VM), 256 lost ~20% of a worker's rate to them (docs/distributed.md)
    steps_per_batch: int = 1024
    # collect calls queued on each worker: with 2 the next batch is being collected while the learner fetches this
    # one; with 1 each worker idles for the round trip
    batches_in_flight: int = 2
    max_restarts: int = 3  # a rollout worker that dies is restarted this many times
    worker_cpus: float = 1.0  # CPUs reserved per rollout worker
    learner_gpus: int = 0  # GPUs the learner needs on this machine (checked against the cluster's)
    dashboard: bool = False  # the embedded Ray's dashboard (on 127.0.0.1)

    # Keys that moved out of this block (before 2026-12-06): where each went, for a one-line pointer.
    MOVED_KEYS: ClassVar[dict[str, str]] = {"epsilon": "agent.worker_epsilon (dqn)",
                                            "epsilon_alpha": "agent.worker_epsilon_alpha (dqn)"}
    MOVED_ABSOLUTE: ClassVar[bool] = True  # MOVED_KEYS' targets are full key paths

    def validate(self) -> None:
        at_least(self, 0, "workers", "max_restarts", "learner_gpus")
        at_least(self, 1, "weights_every", "steps_per_batch", "batches_in_flight")
        if self.worker_cpus <= 0:
            raise ConfigError(f"worker_cpus: must be > 0, got {self.worker_cpus}")


@dataclass
class RunConfig:
    name: str  # recipe name; runs go to <runs_dir>/<name>/<stamp>
    seed: int  # seeds envs, networks and action sampling
    agent: Any  # the agent kind's own Config dataclass, chosen by agent.kind
    env: EnvConfig = field(default_factory=EnvConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ray: RayConfig = field(default_factory=RayConfig)


def resolve_config_path(name_or_path: str) -> Path:
    """A path to a YAML file, or a recipe name looked up in ``configs/`` (``ddm_pendulum``)."""
    candidates = [Path(name_or_path)]
    if not name_or_path.endswith((".yaml", ".yml")):
        candidates.append(CONFIG_DIR / f"{name_or_path}.yaml")
    candidates.append(CONFIG_DIR / Path(name_or_path).name)
    for path in candidates:
        if path.is_file():
            return path
    raise ConfigError(f"{name_or_path}: no such config file (nor a recipe in {CONFIG_DIR}; recipes: "
                      f"{', '.join(recipe_names())})")


def recipe_names() -> list[str]:
    """The recipes in ``configs/`` by name, sorted: what ``pixelpilot train NAME`` takes."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))


def load_config(name_or_path: str, overrides: Sequence[str] = ()) -> RunConfig:
    """Load (with its base recipes), override and validate a config. Raises :class:`ConfigError` with a
    one-line message."""
    path = resolve_config_path(name_or_path)
    data = read_recipe(path)
    for override in overrides:
        apply_override(data, override, source=path)
    return config_from_dict(data, source=path)


def read_recipe(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A recipe file's keys merged over those of its ``base`` recipe (recursively); ``base`` itself is dropped."""
    if path.resolve() in seen:
        chain = " -> ".join(str(item) for item in (*seen, path.resolve()))
        raise ConfigError(f"{path}: base: recipes name each other in a loop ({chain})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} not valid YAML ({getattr(err, 'problem', err)})") from None
    if data is None:  # an empty file, or one of comments only
        raise ConfigError(f"{path}: {EMPTY}")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected a recipe name or path, got {base!r}")
    sibling = path.parent / (base if base.endswith((".yaml", ".yml")) else f"{base}.yaml")
    try:
        base_path = sibling if sibling.is_file() else resolve_config_path(base)
    except ConfigError:
        raise ConfigError(f"{path}: base: no recipe {base!r} (next to the file or in {CONFIG_DIR})") from None
    return merge(read_recipe(base_path, (*seen, path.resolve())), data)


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict:
    """``base`` with ``update``'s keys put in; mappings in both are merged the same way, anything else replaced."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


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
    if data is None:
        raise ConfigError(f"{source}: {EMPTY}")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {type(data).__name__}")
    data = dict(data)
    agent_data = data.get("agent")
    if not isinstance(agent_data, dict) or "kind" not in agent_data:
        raise ConfigError(f"{source}: agent.kind: missing (the agent section must name its kind)")
    try:
        agent_cls = agent_class(agent_data["kind"]).Config
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
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively (YAML's safe dumper writes lists, not tuples)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _validate(node: Any, path: str = "") -> None:
    """Call every block's ``validate`` (inner blocks first), putting the block's path before its messages."""
    if not dataclasses.is_dataclass(node):
        return
    for item in dataclasses.fields(node):
        _validate(getattr(node, item.name), f"{path}{item.name}.")
    if hasattr(node, "validate"):
        try:
            node.validate()
        except ConfigError as err:
            raise ConfigError(f"{path}{err}") from None


def _build(cls: type, data: Any, path: str, field_classes: Mapping[str, type] | None = None) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path.rstrip('.') or 'top level'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {item.name: item for item in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    moved = getattr(cls, "MOVED_KEYS", {})  # old key -> its new path in this block, for a one-line pointer
    for key in unknown:
        if key in moved:
            target = moved[key] if getattr(cls, "MOVED_ABSOLUTE", False) else f"{path}{moved[key]}"
            raise ConfigError(f"{path}{key}: this key is now {target}")
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
