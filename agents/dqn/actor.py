"""DQN's acting: the Actor that steps a vector env epsilon-greedy with a Q-network (agents/core/qnets.py).

The training process's own acting (``ray.workers: 0``) and every Ray rollout worker (agents/dqn/distributed.py)
are one :class:`Actor`; only the network and the generator differ.
"""

from __future__ import annotations

from typing import NamedTuple

import gymnasium as gym
import numpy as np
import torch

from agents.core.config import RunConfig
from agents.core.envs import make_vec_env
from agents.core.qnets import build_network, first_stacks
from nets.q import QNetwork

__all__ = ["Actor", "VectorStep", "build_network", "first_stacks"]


class VectorStep(NamedTuple):
    """One vector-env step of an Actor (arrays over its envs)."""

    frames: np.ndarray  # (num_envs, C, H, W) uint8: the newest frame of each env's observation before the step
    stacks: np.ndarray  # (num_envs, stack * C, H, W) uint8: the whole stacked observation the actions were chosen on
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    next_frames: np.ndarray  # (num_envs, C, H, W) uint8: the env's observation after the step
    mask: np.ndarray  # envs whose step is a transition (not the reset after an episode's end: next-step autoreset)
    info: dict

    @property
    def restarted(self) -> np.ndarray:
        """Envs whose step only reset them (their previous step ended an episode)."""
        return ~self.mask

    def transition(self, reward_clip: bool) -> tuple:
        """The arguments of FrameReplay.add for this step (rewards clipped to [-1, 1] with `reward_clip`)."""
        rewards = np.clip(self.rewards, -1, 1) if reward_clip else self.rewards
        return self.frames, self.actions, rewards, self.terminated, self.truncated, self.next_frames, self.mask


class Actor:
    """Steps a vector env with epsilon-greedy actions of a Q-network, stacking each env's last `frame_stack`
    frames on the channel axis itself (repeating an episode's first frame, as Gymnasium's FrameStackObservation
    does), so the replay can store each frame once.

    The training process's own acting (ray.workers: 0) and every RolloutWorker of a distributed run are one of
    these; only the network and the generator differ (the online network and the agent's generator here).
    """

    def __init__(self, config: RunConfig, network: QNetwork, rng: np.random.Generator) -> None:
        self.vec = gym.wrappers.vector.RecordEpisodeStatistics(make_vec_env(config))
        self.network, self.rng = network, rng
        self.device = next(network.parameters()).device  # looked up once: parameters() walks the modules (~4 us)
        self.num_envs = self.vec.num_envs
        self.num_actions = int(self.vec.single_action_space.n)
        self.frame_stack = config.agent.frame_stack
        self.channels = self.vec.single_observation_space.shape[0]
        self.stacks: np.ndarray | None = None
        self.mask = np.ones(self.num_envs, bool)

    def reset(self, seed: int) -> np.ndarray:
        """Reset the envs (seeds seed, seed + 1, ...); returns their first observations."""
        obs, _ = self.vec.reset(seed=seed)
        self.stacks = first_stacks(obs, self.frame_stack)  # (num_envs, stack * C, H, W)
        self.mask = np.ones(self.num_envs, bool)
        return obs

    def step(self, epsilon: float) -> VectorStep:
        stacks = self.stacks
        actions = self.explore(stacks, epsilon)
        next_obs, rewards, terminated, truncated, info = self.vec.step(actions)
        step = VectorStep(stacks[:, -self.channels:], stacks, actions, rewards, terminated, truncated, next_obs,
                          self.mask, info)
        # CRUCIAL (next-step autoreset): an env that ended last step restarts now; its stack starts anew.
        self.stacks = np.concatenate([stacks[:, self.channels:], next_obs], axis=1)
        self.stacks[step.restarted] = first_stacks(next_obs[step.restarted], self.frame_stack)
        self.mask = ~(terminated | truncated)
        return step

    def explore(self, stacks: np.ndarray, epsilon: float) -> np.ndarray:
        """Epsilon-greedy actions for a batch of stacked observations."""
        count = len(stacks)
        random_actions = self.rng.integers(0, self.num_actions, count)
        explore = self.rng.random(count) < epsilon
        if explore.all():
            return random_actions
        with torch.no_grad():
            greedy = self.network(torch.as_tensor(stacks, device=self.device)).argmax(1).cpu().numpy()
        return np.where(explore, random_actions, greedy)

    def close(self) -> None:
        self.vec.close()
