"""Episodes, the same for every agent kind: the one episode loop, evaluation, and training-episode statistics.

    episode_steps / play_episode    the one episode loop: eval, watch --live, SB3's evaluations, DDM trials
    evaluate(agent, env, n, seed)   returns and successes of n episodes from the evaluation seeds
    EpisodeStats                    training episodes' figures: rollout/* metrics and summary.json's keys

Success is the env's word: ``info["is_success"]`` on an episode's last step (SB3's convention); agents
read it, never the env's id or its constants.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple, Protocol

import gymnasium as gym
import numpy as np

# Evaluation episodes (eval, watch --live, SB3's periodic evaluations) use seeds config.seed + this + i:
# never the seeds training episodes start from.
EVAL_SEED_OFFSET = 10_000
# mean_return and success_rate (summary.json) and rollout/ep_return, rollout/success (metrics) are over this many
# last training episodes, for every agent kind (SB3's own stats_window_size is 100 too).
RECENT_EPISODES = 100


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
    terminated: bool = False  # the last step ended the episode (not a truncation, nor a cut at max_steps)


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
                         float(sum(rewards)), None if success is None else bool(success), steps[-1].terminated)


class Evaluation(NamedTuple):
    returns: np.ndarray  # (episodes,)
    successes: np.ndarray | None  # (episodes,) bool; None if the env has no success rule


class Actor(Protocol):
    def reset(self) -> None: ...

    def act(self, obs: np.ndarray) -> Any: ...


def evaluate(agent: Actor, env: gym.Env, episodes: int, seed: int) -> Evaluation:
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


class EpisodeStats:
    """Training episodes as they end, counted the same way for every agent kind.

    The summary.json keys it gives (docs/run-directory.md has the table) mean one thing whatever the kind:
    ``episodes`` ended, ``mean_return`` of the last RECENT_EPISODES of them, and for envs that say whether an
    episode succeeded, ``success_rate`` of those last episodes and ``frames_to_first_success``: the env steps
    (summed over envs) when a training episode first ended in success (None: none yet).
    """

    def __init__(self, window: int = RECENT_EPISODES) -> None:
        self.episodes = 0
        self.returns: deque[float] = deque(maxlen=window)
        self.successes: deque[float] = deque(maxlen=window)  # only envs that say (info["is_success"])
        self.first_success_step: int | None = None

    def add(self, episode_return: float, success: bool | None, env_steps: int) -> None:
        """One episode ended with this return and (envs that say) success, ``env_steps`` into training."""
        self.episodes += 1
        self.returns.append(float(episode_return))
        if success is not None:
            self.successes.append(float(success))
            if success and self.first_success_step is None:
                self.first_success_step = int(env_steps)

    def add_vector_info(self, info: Mapping[str, Any], env_steps: int) -> np.ndarray:
        """The episodes a vector env's step ended (``RecordEpisodeStatistics``' ``info["episode"]``); returns the
        indices of the envs whose episode ended."""
        if "episode" not in info:
            return np.zeros(0, dtype=np.int64)
        ended = np.flatnonzero(info["_episode"])
        for index in ended:
            success = bool(info["is_success"][index]) if "is_success" in info else None
            self.add(float(info["episode"]["r"][index]), success, env_steps)
        return ended

    def mean_return(self) -> float:
        return float(np.mean(self.returns)) if self.returns else float("nan")

    def success_rate(self) -> float | None:
        return float(np.mean(self.successes)) if self.successes else None

    def metrics(self) -> dict[str, float]:
        """``rollout/ep_return``, ``rollout/episodes`` and (envs that say) ``rollout/success``."""
        metrics = {"rollout/ep_return": self.mean_return(), "rollout/episodes": self.episodes}
        if self.successes:
            metrics["rollout/success"] = self.success_rate()
        return metrics

    def summary(self) -> dict[str, Any]:
        """``episodes``, ``mean_return`` and (envs that say) ``success_rate`` and ``frames_to_first_success``."""
        summary: dict[str, Any] = {"episodes": self.episodes, "mean_return": self.mean_return()}
        if self.successes:
            summary.update(success_rate=self.success_rate(), frames_to_first_success=self.first_success_step)
        return summary

    def outcome(self) -> str:
        """``mean return R over the last N episodes`` and, envs that say, when the first success came."""
        line = f"mean return {self.mean_return():.2f} over the last {len(self.returns)} episodes"
        if self.successes:
            first = self.first_success_step
            line += f"; first success at {first:,} env steps" if first is not None else "; no success yet"
        return line

    def state_dict(self) -> dict[str, Any]:
        """Top-level checkpoint entries (the names agents' checkpoints have always used)."""
        return {"episodes": self.episodes, "recent_returns": list(self.returns),
                "recent_successes": list(self.successes),
                "first_success_step": -1 if self.first_success_step is None else self.first_success_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.episodes = int(state["episodes"])
        self.returns = deque(state["recent_returns"], maxlen=self.returns.maxlen)
        # Checkpoints from before success tracking (2026-11-26) have neither key.
        self.successes = deque(state.get("recent_successes", []), maxlen=self.successes.maxlen)
        first = int(state.get("first_success_step", -1))
        self.first_success_step = None if first < 0 else first
