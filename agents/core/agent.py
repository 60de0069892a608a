"""The agent protocol, defined once, and the one training entry point every command walks through.

    Agent                           the protocol every kind follows (random, sb3, ddm, dqn)
    agent_class(kind)               the kinds by name (agents/core/registry.py), imported only when used
    train(config) -> run directory  what `pixelpilot train`, `bench`, sweeps and PBT call
    load_trained_agent(run_dir)     a run's agent with its latest checkpoint, for eval and watch
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol

import numpy as np
import torch

from agents.core.config import ConfigError, RunConfig
from agents.core.envs import make_env
from agents.core.registry import agent_class
from agents.core.run import Run, RunDirError, checkpoint_paths, load_checkpoint, load_run_config

__all__ = ["Agent", "Mutation", "agent_class", "load_trained_agent", "resolve_device", "seed_everything", "train"]


class Mutation(NamedTuple):
    """One hyperparameter population-based training may perturb (an agent class's ``pbt_mutations``)."""

    key: str  # its config key path, e.g. "agent.lr"
    low: float = 0.0  # a range [low, high] ...
    high: float = 0.0
    log: bool = False  # ... drawn log-uniform (else uniform)
    integer: bool = False  # ... of whole numbers
    choices: tuple = ()  # or one of these values instead of a range

    def draw(self, rng: np.random.Generator) -> float | int:
        """A first value for a member (4 significant digits for a real one)."""
        if self.choices:
            return rng.choice(self.choices).item()
        if self.integer:
            return int(rng.integers(int(self.low), int(self.high) + 1))
        if self.log:
            return float(f"{np.exp(rng.uniform(np.log(self.low), np.log(self.high))):.4g}")
        return float(f"{rng.uniform(self.low, self.high):.4g}")


class Agent(Protocol):
    """What every agent kind is. Constructed as ``kind(config, device)``; local runs call it in one process.

    ``Config`` is the dataclass its ``agent:`` config block maps onto (validated by the loader).
    """

    Config: ClassVar[type]
    # What sweeps and population-based training read from the class (agents/tune/), so they never ask for a kind:
    metric: ClassVar[str]  # the summary.json key a sweep ranks trials by ("mean_return")
    metric_mode: ClassVar[str]  # "max" or "min": which way is better
    # True: the agent logs rollout/ep_return as it learns over agent.total_steps, so ASHA may stop a poor trial early
    early_stopping: ClassVar[bool]
    distributed: ClassVar[bool]  # ray.workers > 0 trains with Ray rollout workers

    @classmethod
    def pbt_mutations(cls, config: RunConfig) -> dict[str, Mutation]:
        """What population-based training may perturb in this config, by name; empty: the kind has no PBT."""

    @classmethod
    def check(cls, config: RunConfig) -> None:
        """ConfigError for what the config asks that this kind cannot do here (called before a run directory
        is made: e.g. a Ray address for rollout workers that does not answer)."""

    def __init__(self, config: RunConfig, device: torch.device) -> None: ...

    def train(self, run: Any) -> None:
        """Train into ``run`` (an :class:`agents.core.run.Run`) until the config's budget is spent, logging,
        recording and checkpointing as it goes; continues from a loaded state."""

    def act(self, obs: np.ndarray) -> Any:
        """One observation ``(C, H, W)`` uint8 -> the action to take (deterministic where the agent can be)."""

    def reset(self) -> None:
        """Forget the episode so far (frame stacks, plans); called before each episode's first ``act``."""

    def state_dict(self) -> dict:
        """Everything needed to resume, in a form ``torch.load(weights_only=True)`` accepts."""

    def load_state_dict(self, state: dict) -> None: ...

    def summary(self) -> dict[str, Any]:
        """The run's figures for summary.json: ``env_steps``, ``episodes``, ``mean_return`` and the kind's own."""

    def outcome(self) -> str:
        """One line for a person, printed when training ends (e.g. ``solved at trial 8 (800 frames)``)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` is cuda when there is one, else cpu; a device this torch cannot use is a ConfigError naming
    train.device (before anything is written)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name} asked, but this torch ({torch.__version__}) has no CUDA device; "
                          "use train.device=cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"train.device: {name} asked, this machine has {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device: {name} asked, but MPS is not available here; use train.device=cpu")
    return device


def train(config: RunConfig | None = None, resume: str | Path | None = None, quiet: bool = False,
          address: str | None = None, source: str | Path | None = None) -> Path:
    """Train ``config`` into a new run directory, or continue the run at ``resume``; returns the run directory.

    The env is made once first, so a bad env id or kwarg fails before the run directory exists; so do a device
    this machine lacks, what the agent kind's ``check`` rejects (a Ray address for rollout workers that does
    not answer; ``address``: a resumed run's new cluster) and what its constructor rejects. Those errors about
    config keys start with ``source``, the config's file (a resumed run's config.yaml), as the loader's do.
    At the end, summary.json holds the agent's summary and ``wall_s``, and (unless ``quiet``) the agent's
    outcome line is printed.
    """
    if (config is None) == (resume is None):
        raise ValueError("train: give a config or a run directory to resume, not both")
    if resume is not None:
        run = Run.open(resume)
        config = run.config
        source = run.dir / "config.yaml"
        if address is not None:
            config.ray.address = address
    else:
        run = None
    with errors_name(source):
        if run is None:
            make_env(config).close()
        device = resolve_device(config.train.device)
        kind = agent_class(config.agent.kind)
        if config.ray.workers > 0 and not kind.distributed:
            raise ConfigError(f"ray.workers: agent.kind {config.agent.kind} has no rollout workers (dqn has); "
                              "leave --workers out")
    kind.check(config)  # its errors name the key, or the --address it was given
    seed_everything(config.seed)
    with errors_name(source):
        agent = kind(config, device)
    if run is None:
        run = Run.create(config)
    else:
        state = run.load_latest_checkpoint()
        if state is not None:
            agent.load_state_dict(state)
    threads = torch.get_num_threads()
    if config.train.threads is not None:
        torch.set_num_threads(config.train.threads)
    try:
        agent.train(run)
        summary = agent.summary()
        if run.last_logged_step() != summary["env_steps"]:
            # A run shorter than train.log_every, or ending between two log points, still ends on a row at its
            # last step: plot, sweeps and a reader of metrics.csv find where it finished. (Trial agents log a row
            # per trial at their frame count, so they always end on one.)
            run.log(summary["env_steps"], final_metrics(summary))
    finally:
        run.close()
        torch.set_num_threads(threads)
    run.write_summary({**summary, "wall_s": round(time.time() - run.started, 2)})
    if not quiet:
        print(agent.outcome())
    return run.dir


# summary.json's episode figures (EpisodeStats.summary, every kind's) and the metrics.csv columns of the same figures
FINAL_ROW_KEYS = {"mean_return": "rollout/ep_return", "episodes": "rollout/episodes", "success_rate": "rollout/success"}


def final_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The metrics row a run ends on when its last log point was not its last step, from the agent's summary."""
    return {column: summary[key] for key, column in FINAL_ROW_KEYS.items() if summary.get(key) is not None}


@contextmanager
def errors_name(source: str | Path | None) -> Iterator[None]:
    """A ConfigError raised in the block (``key.path: what is wrong``) starts with ``source``, unless it is None."""
    try:
        yield
    except ConfigError as err:
        if source is None:
            raise
        raise ConfigError(f"{source}: {err}") from None


def load_trained_agent(run_dir: str | Path, device: str = "cpu") -> tuple[Agent, RunConfig]:
    """The agent of a run directory with its latest checkpoint loaded, and the run's config."""
    config = load_run_config(run_dir)
    paths = checkpoint_paths(run_dir)
    if not paths:
        raise RunDirError(f"{run_dir}: run has no checkpoint yet")
    agent = agent_class(config.agent.kind)(config, torch.device(device))
    agent.load_state_dict(load_checkpoint(paths[-1])["agent"])
    return agent, config
