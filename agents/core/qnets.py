"""What value-based agents (dqn, pqn) share: the Q-network a config describes, and frame stacks on channels.

A config with ``agent.encoder`` (a nets encoder config), ``agent.network`` (QNetwork's options) and
``agent.frame_stack`` gets its network from :func:`build_network`; episodes start their stack with
:func:`first_stacks`, as Gymnasium's FrameStackObservation pads.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch

import nets
from agents.core.config import ConfigError, RunConfig
from nets.q import QNetwork


def build_network(config: RunConfig, frame_shape: tuple[int, ...], num_actions: int) -> QNetwork:
    """The config's Q-network for frames of `frame_shape` (C, H, W), `frame_stack` of them stacked on channels."""
    agent = config.agent
    obs_shape = (frame_shape[0] * agent.frame_stack, *frame_shape[1:])
    if agent.encoder["kind"] not in nets.ENCODER_KINDS:
        raise ConfigError(f"agent.encoder.kind: {agent.encoder['kind']!r} is not an image encoder; choose one of "
                          f"{', '.join(nets.ENCODER_KINDS)}")
    try:
        encoder = nets.build({**agent.encoder, "in_shape": obs_shape})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"agent.encoder: {err}") from None
    return QNetwork(encoder, num_actions, **asdict(agent.network))


def first_stacks(frames: np.ndarray | torch.Tensor, stack: int) -> np.ndarray | torch.Tensor:
    """The stacked observation of an episode's first frame: the frame `stack` times, whole frames one after
    another on the channel axis (`(..., C, H, W) -> (..., stack * C, H, W)`), as FrameStackObservation pads."""
    reps = [1] * frames.ndim
    reps[-3] = stack
    return frames.repeat(*reps) if isinstance(frames, torch.Tensor) else np.tile(frames, reps)


def next_stack(stack: np.ndarray | None, obs: np.ndarray, size: int) -> np.ndarray:
    """One env's stacked observation after `obs` (C, H, W): an episode's first frame `size` times (`stack` None,
    after a reset), else the oldest frame dropped and `obs` added. For `act()` (eval, watch)."""
    return first_stacks(obs, size) if stack is None else np.concatenate([stack[obs.shape[0]:], obs])


def act_epsilon_greedy(network: QNetwork, stack: np.ndarray, epsilon: float, rng: np.random.Generator,
                       device: torch.device) -> int:
    """`act()`'s action on one stacked observation: random with probability `epsilon`, else the network's
    greedy one, with the network in eval mode (noisy layers act on their mean weights) and put back after."""
    if rng.random() < epsilon:
        return int(rng.integers(network.num_actions))
    training = network.training
    network.eval()
    with torch.no_grad():
        action = int(network(torch.as_tensor(stack[None], device=device)).argmax(1))
    network.train(training)
    return action
