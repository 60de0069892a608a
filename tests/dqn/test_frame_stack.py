"""DQN's frame stacks on frames of more than one channel, against Gymnasium's FrameStackObservation: the Actor's
stacks (training, and the reset after an episode's end), the frames it stores, `act()` (eval, watch) and the
stacks the replay rebuilds when sampled."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.core.config import load_config
from agents.dqn import DQNAgent
from agents.dqn.actor import Actor, build_network
from agents.dqn.replay import FrameReplay

EPISODE = 4  # steps before an episode terminates


class StripesEnv(gym.Env):
    """A (channels, 4, 4) image whose every pixel of channel c reads 1 + 40 * episode + 4 * step + c (at most
    255 for the lengths used here): each frame, and each channel in it, is told apart by its value."""

    metadata = {"render_modes": []}

    def __init__(self, channels: int = 1) -> None:
        self.channels = channels
        self.observation_space = gym.spaces.Box(0, 255, (channels, 4, 4), np.uint8)
        self.action_space = gym.spaces.Discrete(2)
        self.episode, self.steps = -1, 0

    def observe(self) -> np.ndarray:
        values = 1 + 40 * self.episode + 4 * self.steps + np.arange(self.channels)
        return np.broadcast_to(values[:, None, None], (self.channels, 4, 4)).astype(np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.episode, self.steps = self.episode + 1, 0
        return self.observe(), {}

    def step(self, action: int):
        self.steps += 1
        return self.observe(), 0.0, self.steps >= EPISODE, False, {}


if "test/Stripes-v0" not in gym.registry:
    gym.register("test/Stripes-v0", entry_point=StripesEnv)


def reference_stacks(channels: int, stack: int, episodes: int) -> list[np.ndarray]:
    """The observations an agent acts on, episode after episode, through FrameStackObservation (padding with the
    episode's first frame), flattened to (stack * channels, 4, 4) as the agent stacks them on channels."""
    env = gym.wrappers.FrameStackObservation(StripesEnv(channels), stack, padding_type="reset")
    seen = []
    for _ in range(episodes):
        obs, _ = env.reset()
        done = False
        while not done:
            seen.append(obs.reshape(stack * channels, 4, 4))
            obs, _, terminated, truncated, _ = env.step(0)
            done = terminated or truncated
    return seen


def stripes_config(tmp_path, channels: int, stack: int):
    return load_config("dqn_minatar_breakout", [
        f"train.runs_dir={tmp_path}", "train.device=cpu", "env.id=test/Stripes-v0",
        f"env.kwargs={{channels: {channels}}}", "env.num_envs=2",
        f"agent.frame_stack={stack}", "agent.encoder={kind: minatar_encoder, features_dim: 8}"])


@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("stack", [2, 3])
def test_actor_act_and_replay_stack_frames_as_frame_stack_observation_does(tmp_path, channels, stack):
    config = stripes_config(tmp_path, channels, stack)
    expected = reference_stacks(channels, stack, episodes=3)
    by_newest = {e[-channels:].tobytes(): e for e in expected}

    network = build_network(config, (channels, 4, 4), 2)
    actor = Actor(config, network, np.random.default_rng(0))
    actor.reset(seed=0)
    replay = FrameReplay(capacity=200, num_envs=2, frame_shape=(channels, 4, 4), stack=stack)
    acted: list[list[np.ndarray]] = [[], []]
    for _ in range(3 * (EPISODE + 1)):  # three episodes each, with the reset step after each end
        step = actor.step(epsilon=1.0)
        for env in range(2):
            if step.mask[env]:
                acted[env].append(step.stacks[env])
                assert np.array_equal(step.frames[env], step.stacks[env][-channels:])  # what the replay stores
        replay.add(*step.transition(reward_clip=False))
    for env in range(2):  # training's stacks, across two autoresets
        assert len(acted[env]) == len(expected)
        for got, want in zip(acted[env], expected, strict=True):
            np.testing.assert_array_equal(got, want)

    samples = replay.sample(64)
    for obs, following in zip(samples.observations.numpy(), samples.next_observations.numpy(), strict=True):
        np.testing.assert_array_equal(obs, by_newest[obs[-channels:].tobytes()])
        if following[-channels:].tobytes() in by_newest:  # not an episode's terminal frame (never acted on)
            np.testing.assert_array_equal(following, by_newest[following[-channels:].tobytes()])

    agent = DQNAgent(config, torch.device("cpu"))  # act(): eval and watch
    env = StripesEnv(channels)
    played = []
    for _ in range(2):
        agent.reset()
        obs, _ = env.reset()
        done = False
        while not done:
            agent.act(obs)
            played.append(agent.stack.copy())
            obs, _, done, _, _ = env.step(0)
    for got, want in zip(played, expected, strict=False):
        np.testing.assert_array_equal(got, want)
