"""The agent protocol, defined once, and what every agent kind shares around it.

    AGENTS / agent_class(kind)      the kinds by name, imported only when used (a config never pays for SB3)
    Agent                           the protocol random, ddm, sb3 (and next dqn) follow
    train(config) -> run directory  what `pixelpilot train`, `bench ddm` and (next) Ray and Tune call
    load_trained_agent(run_dir)     a run's agent with its latest checkpoint, for eval and watch
    episode_steps / play_episode    the one episode loop: eval, watch --live, SB3's evaluations, DDM trials
    evaluate(agent, config, n)      returns and successes of n episodes on the evaluation seeds
    Every(period)                   the one "every N steps" clock: logging, checkpoints, recording, evaluations

Success is the env's word: ``info["is_success"]`` on an episode's last step (SB3's convention); agents
read it, never the env's id or its constants.
"""

from __future__ import annotations

import importlib
import itertools
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol

import gymnasium as gym
import numpy as np
import torch

from agents.common.config import ConfigError, RunConfig
from agents.common.envs import make_env

AGENTS: dict[str, str] = {
    "random": "agents.random_agent:RandomAgent",
    "sb3": "agents.sb3:SB3Agent",
    "ddm": "agents.ddm:DDMAgent",
    "dqn": "agents.dqn:DQNAgent",
}
# Evaluation episodes (eval, watch --live, SB3's periodic evaluations) use seeds config.seed + this + i:
# never the seeds training episodes start from.
EVAL_SEED_OFFSET = 10_000


class Agent(Protocol):
    """What every agent kind is. Constructed as ``kind(config, device)``; local runs call it in one process.

    ``Config`` is the dataclass its ``agent:`` config block maps onto (validated by the loader).
    """

    Config: ClassVar[type]

    def __init__(self, config: RunConfig, device: torch.device) -> None: ...

    def train(self, run: Any) -> None:
        """Train into ``run`` (an :class:`agents.common.run.Run`) until the config's budget is spent, logging,
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


def agent_class(kind: str) -> type[Agent]:
    """The agent class registered as ``kind``; KeyError with the known kinds otherwise."""
    if kind not in AGENTS:
        raise KeyError(f"unknown agent kind {kind!r} (known: {', '.join(sorted(AGENTS))})")
    module_name, class_name = AGENTS[kind].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def agent_config_class(kind: str) -> type:
    """The ``Config`` dataclass of agent kind ``kind``."""
    return agent_class(kind).Config


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` is cuda when there is one, else cpu; anything else as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(config: RunConfig | None = None, resume: str | Path | None = None, quiet: bool = False,
          address: str | None = None) -> Path:
    """Train ``config`` into a new run directory, or continue the run at ``resume``; returns the run directory.

    The env is made once first, so a bad env id or kwarg fails before the run directory exists; so does a Ray
    address that does not answer, for a run with rollout workers (``address``: a resumed run's new cluster). At
    the end, summary.json holds the agent's summary and ``wall_s``, and (unless ``quiet``) the agent's outcome
    line is printed.
    """
    from agents.common.run import Run

    if (config is None) == (resume is None):
        raise ValueError("train: give a config or a run directory to resume, not both")
    if resume is not None:
        run = Run.open(resume)
        config = run.config
        if address is not None:
            config.ray.address = address
    else:
        make_env(config).close()
        run = None
    if config.ray.workers > 0:
        check_distributed(config)
    seed_everything(config.seed)
    agent = agent_class(config.agent.kind)(config, resolve_device(config.train.device))
    if run is None:
        run = Run.create(config)
    else:
        state = run.load_latest_checkpoint()
        if state is not None:
            agent.load_state_dict(state)
    try:
        agent.train(run)
    finally:
        run.close()
    run.write_summary({**agent.summary(), "wall_s": round(time.time() - run.started, 2)})
    if not quiet:
        print(agent.outcome())
    return run.dir


def check_distributed(config: RunConfig) -> None:
    """ConfigError unless the agent kind has rollout workers and the Ray address (if any) answers."""
    from agents.common.cluster import check_reachable, resolve_address

    if not getattr(agent_class(config.agent.kind), "distributed", False):
        raise ConfigError(f"ray.workers: agent.kind {config.agent.kind} has no rollout workers (dqn has); "
                          "leave --workers out")
    if config.ray.address is not None:
        check_reachable(resolve_address(config.ray.address))
    elif config.ray.learner_gpus > torch.cuda.device_count():
        raise ConfigError(f"ray.learner_gpus: {config.ray.learner_gpus} GPUs asked, this machine has "
                          f"{torch.cuda.device_count()}")


def load_trained_agent(run_dir: str | Path, device: str = "cpu") -> tuple[Agent, RunConfig]:
    """The agent of a run directory with its latest checkpoint loaded, and the run's config."""
    from agents.common.run import RunDirError, checkpoint_paths, load_checkpoint, load_run_config

    config = load_run_config(run_dir)
    paths = checkpoint_paths(run_dir)
    if not paths:
        raise RunDirError(f"{run_dir}: run has no checkpoint yet")
    agent = agent_class(config.agent.kind)(config, torch.device(device))
    agent.load_state_dict(load_checkpoint(paths[-1])["agent"])
    return agent, config


class Every:
    """True once each time a counter (env steps, episodes) reaches the next multiple of ``period``.

    ``start`` is where the counter stands now (a resumed run's step): the first due point is the next
    multiple after it, so a resumed run logs and checkpoints at the same steps as an unbroken one.
    ``start=-1`` makes 0 (or the first count offered) due.
    """

    def __init__(self, period: int, start: int = 0) -> None:
        self.period = period
        self.next = (start // period + 1) * period

    def __call__(self, count: int) -> bool:
        if count < self.next:
            return False
        self.next = (count // self.period + 1) * self.period
        return True


class Step(NamedTuple):
    """One env step of an episode."""

    obs: np.ndarray  # the observation the action was chosen from, (C, H, W) uint8
    action: Any
    reward: float
    next_obs: np.ndarray
    terminated: bool
    truncated: bool
    info: dict


class PlayedEpisode(NamedTuple):
    """A whole episode, as :func:`play_episode` returns it."""

    frames: np.ndarray  # (T + 1, C, H, W) uint8, the reset frame first
    actions: np.ndarray  # (T, *action_shape)
    rewards: np.ndarray  # (T,) float32
    return_: float  # the rewards' sum (in float64)
    success: bool | None  # the env's info["is_success"] on the last step; None if the env has no success rule


def episode_steps(env: gym.Env, act: Callable[[np.ndarray], Any], seed: int,
                  max_steps: int | None = None) -> Iterator[Step]:
    """The one episode loop: reset ``env`` with ``seed``, then ``act`` and step until the episode ends (or
    after ``max_steps`` steps), yielding each step as it happens."""
    obs, _ = env.reset(seed=seed)
    for _ in range(max_steps) if max_steps is not None else itertools.count():
        action = act(obs)
        next_obs, reward, terminated, truncated, info = env.step(action)
        yield Step(obs, action, float(reward), next_obs, bool(terminated), bool(truncated), info)
        if terminated or truncated:
            return
        obs = next_obs


def play_episode(env: gym.Env, act: Callable[[np.ndarray], Any], seed: int,
                 max_steps: int | None = None) -> PlayedEpisode:
    """One whole episode of :func:`episode_steps`, its frames, actions and rewards stacked."""
    steps = list(episode_steps(env, act, seed, max_steps))
    frames = np.stack([steps[0].obs, *(step.next_obs for step in steps)])
    success = steps[-1].info.get("is_success")
    rewards = [step.reward for step in steps]
    return PlayedEpisode(frames, np.stack([np.asarray(step.action) for step in steps]), np.asarray(rewards, np.float32),
                         float(sum(rewards)), None if success is None else bool(success))


class Evaluation(NamedTuple):
    returns: np.ndarray  # (episodes,)
    successes: np.ndarray | None  # (episodes,) bool; None if the env has no success rule


def evaluate(agent: Agent, env: gym.Env, episodes: int, seed: int) -> Evaluation:
    """Play ``episodes`` episodes with ``agent.act`` from seeds ``seed``, ``seed + 1``, ...

    Evaluation seeds are ``config.seed + EVAL_SEED_OFFSET`` unless a caller says otherwise.
    """
    returns, successes = np.zeros(episodes), []
    for index in range(episodes):
        agent.reset()
        episode = play_episode(env, agent.act, seed + index)
        returns[index] = episode.return_
        successes.append(episode.success)
    has_rule = all(success is not None for success in successes)
    return Evaluation(returns, np.asarray(successes, dtype=bool) if has_rule else None)
