"""The random agent: uniform actions. The bottom row of every learning curve, and the smallest complete
example of the agent protocol (config, train loop with logging, recording and checkpoints, act, state).
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from agents.core.config import RunConfig, at_least
from agents.core.envs import env_fps, make_env, make_vec_env
from agents.core.episodes import EpisodeStats
from agents.core.run import EpisodeRecorder, Every, Run, generator_state, set_generator_state


@dataclass
class Config:
    kind: str = "random"
    total_steps: int = 10_000  # env steps to play (summed over all envs)

    def validate(self) -> None:
        at_least(self, 1, "total_steps")


class RandomAgent:
    Config = Config
    # A sweep ranks trials by mean_return; a baseline that does not learn is not stopped early.
    metric, metric_mode, early_stopping, distributed = "mean_return", "max", False, False

    @classmethod
    def check(cls, config: RunConfig) -> None:
        """Nothing beyond the config's own validation."""

    @classmethod
    def pbt_mutations(cls, config: RunConfig) -> dict:
        return {}  # nothing to tune

    def __init__(self, config: RunConfig, device: torch.device) -> None:
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.env_steps = 0
        self.stats = EpisodeStats()  # training episodes: rollout/* metrics, summary.json
        self.action_space: gym.Space | None = None

    @property
    def episodes(self) -> int:
        return self.stats.episodes

    def sample(self, space: gym.Space, count: int) -> np.ndarray:
        """``count`` uniform actions from this agent's own generator (a resumed run keeps its stream)."""
        if isinstance(space, gym.spaces.Box):
            return self.rng.uniform(space.low, space.high, size=(count, *space.shape)).astype(space.dtype)
        if isinstance(space, gym.spaces.Discrete):
            return self.rng.integers(space.start, space.start + space.n, size=count, dtype=np.int64)
        if isinstance(space, gym.spaces.MultiDiscrete):
            return self.rng.integers(0, space.nvec, size=(count, *space.shape)).astype(space.dtype)
        raise TypeError(f"random agent: unsupported action space {space}")

    def train(self, run: Run) -> None:
        total = self.config.agent.total_steps
        vec = gym.wrappers.vector.RecordEpisodeStatistics(make_vec_env(self.config))
        self.action_space = vec.single_action_space
        fps = env_fps(vec)
        # A resumed run reseeds from where it stopped, so its episodes differ from the first run's.
        obs, _ = vec.reset(seed=self.config.seed + self.env_steps)
        episode = EpisodeRecorder(obs[0])  # env 0's, for the episode files
        env0_resetting = False
        log_due = Every(self.config.train.log_every, start=self.env_steps)
        bar = run.progress(total, initial=self.env_steps)
        while self.env_steps < total:
            action = self.sample(self.action_space, vec.num_envs)
            obs, reward, terminated, truncated, info = vec.step(action)
            self.env_steps += vec.num_envs
            bar.update(vec.num_envs)
            episode.step(action[0], reward[0], obs[0], restarted=env0_resetting)
            env0_resetting = bool(terminated[0] or truncated[0])  # NEXT_STEP autoreset: the next step only resets
            if "episode" in info:
                if 0 in self.stats.add_vector_info(info, self.env_steps):
                    run.record_episode({**episode.arrays(), "episode": self.stats.episodes, "fps": fps})
                bar.set_postfix(episodes=self.stats.episodes, ret=f"{self.stats.mean_return():.1f}", refresh=False)
            if log_due(self.env_steps):
                run.log(self.env_steps, {**self.stats.metrics(), "time/fps": run.steps_per_second(self.env_steps)})
            if run.checkpoint_due(self.env_steps):
                run.save_checkpoint(self.state_dict(), self.env_steps)
        bar.close()
        vec.close()
        run.save_checkpoint(self.state_dict(), self.env_steps)

    def summary(self) -> dict:
        return {"env_steps": self.env_steps, **self.stats.summary()}

    def outcome(self) -> str:
        return f"{self.stats.outcome()} ({self.env_steps:,} env steps)"

    def reset(self) -> None:
        """Nothing to forget between episodes."""

    def act(self, obs: np.ndarray) -> np.ndarray:
        if self.action_space is None:
            self.action_space = make_env(self.config).action_space
        return self.sample(self.action_space, 1)[0]

    def state_dict(self) -> dict:
        return {"env_steps": self.env_steps, **self.stats.state_dict(), "rng": generator_state(self.rng)}

    def load_state_dict(self, state: dict) -> None:
        self.env_steps = int(state["env_steps"])
        self.stats.load_state_dict(state)
        set_generator_state(self.rng, state["rng"])
