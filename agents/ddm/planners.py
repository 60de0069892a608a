"""Model-predictive control through the learned model: the cross-entropy method (`cem:`, :class:`CEM`) and
gradient-based shooting (`gradient:`, :class:`GradientShooting`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agents.core.config import ConfigError, at_least
from nets.ddm import DeepDynamicalModel


@dataclass
class CEM:
    """The cross-entropy method over action sequences, scored by the model's imagined return (the summed predicted
    rewards, while the rollout has not ended: DeepDynamicalModel.imagined_return) (the `cem:` block).

    A stochastic model scores each sequence by the mean return of `particles` sampled rollouts (as PETS
    does): scored on one sample each, the elites are the luckiest draws, which favours the sequences whose
    outcome the model is least sure of. An ensemble rolls every sequence through each member (each particle
    keeps its member for the whole horizon, PETS's TS-inf) and scores it by the members' mean return minus
    `risk` times their spread (standard deviation): risk > 0 avoids what the model does not know, < 0 seeks it.
    """

    horizon: int = 25  # steps each plan looks ahead
    candidates: int = 500  # action sequences scored at once
    elites: int = 50  # best sequences refitted each iteration
    iterations: int = 5  # refits per action
    particles: int = 8  # sampled rollouts per candidate of a stochastic model, their mean return its score
    risk: float = 0.0  # an ensemble's score: mean return over members - risk * their standard deviation

    def validate(self) -> None:
        at_least(self, 1, "horizon", "candidates", "elites", "iterations", "particles")
        if self.elites > self.candidates:
            raise ConfigError(f"elites: must be <= candidates ({self.candidates}), got {self.elites}")

    @torch.no_grad()
    def plan(self, model: DeepDynamicalModel, history: torch.Tensor, mean: torch.Tensor, bound: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Shapes: `history (..., context, latent_dim)`, `mean (..., horizon, action_dim)` (the initial mean,
        e.g. the last plan shifted), `bound (action_dim,)` -> the refitted mean `(..., horizon, action_dim)`,
        within the bound. Leading dimensions plan for many histories at once, each with its own candidates
        (one batched rollout per iteration); a single history draws the same numbers either way.
        """
        lead, (horizon, action_dim) = mean.shape[:-2], mean.shape[-2:]
        mean = mean.reshape(-1, horizon, action_dim)  # (B, horizon, action_dim)
        count = mean.shape[0]
        std = bound.expand_as(mean).clone()
        particles = self.particles if model.stochastic else 1
        members = model.ensemble
        rollouts_per_history = particles * self.candidates
        histories = history.reshape(count, 1, *history.shape[-2:]).expand(count, rollouts_per_history,
                                                                         *history.shape[-2:])
        histories = model.with_members(histories.reshape(count * rollouts_per_history, *history.shape[-2:]))
        rows = torch.arange(count, device=mean.device).unsqueeze(1)
        for _ in range(self.iterations):
            noise = torch.randn(count, self.candidates, horizon, action_dim, generator=generator, device=mean.device)
            actions = torch.maximum(torch.minimum(mean.unsqueeze(1) + std.unsqueeze(1) * noise, bound), -bound)
            actions[:, 0] = torch.maximum(torch.minimum(mean, bound), -bound)  # the mean itself competes
            repeated = actions.unsqueeze(1).expand(count, particles, *actions.shape[1:])
            rollouts = model.imagine(histories, repeated.reshape(-1, horizon, action_dim), sample=True)
            returns = model.imagined_return(rollouts, histories[..., -1, :])
            if members == 1:
                returns = returns.view(count, particles, self.candidates).mean(1)
            else:  # (members, count, candidates): each member's mean over its particles
                returns = returns.view(members, count, particles, self.candidates).mean(2)
                returns = returns.mean(0) - self.risk * returns.std(0)
            best = actions[rows, returns.topk(self.elites, dim=1).indices]  # (B, elites, horizon, action_dim)
            mean, std = best.mean(1), best.std(1) + 1e-3 * bound
        return mean.reshape(*lead, horizon, action_dim)


@dataclass
class GradientShooting:
    """Gradient-based shooting (the `gradient:` block): Adam on `candidates` action sequences (the first is
    the initial mean, the rest random) through the model, maximising the summed predicted reward; actions are
    `bound * tanh(parameters)`."""

    horizon: int = 25  # steps each plan looks ahead
    candidates: int = 500  # action sequences optimised at once
    iterations: int = 10  # Adam steps on the sequences per action
    lr: float = 0.1  # Adam learning rate of the sequences

    def validate(self) -> None:
        at_least(self, 1, "horizon", "candidates", "iterations")
        if self.lr <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr}")

    def plan(self, model: DeepDynamicalModel, history: torch.Tensor, mean: torch.Tensor, bound: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Shapes as in :meth:`CEM.plan`; returns the best sequence `(horizon, action_dim)`."""
        start = torch.rand(self.candidates, *mean.shape, generator=generator, device=mean.device) * 2 - 1
        start[0] = mean / bound
        parameters = torch.atanh(start.clamp(-0.99, 0.99)).requires_grad_(True)
        optimizer = torch.optim.Adam([parameters], lr=self.lr)
        histories = model.with_members(history.expand(self.candidates, *history.shape))
        for _ in range(self.iterations):
            rollouts = model.imagine(histories, bound * torch.tanh(parameters))
            returns = model.members_mean(model.imagined_return(rollouts, histories[..., -1, :]))
            optimizer.zero_grad()
            (-returns.sum()).backward()
            optimizer.step()
        with torch.no_grad():
            actions = bound * torch.tanh(parameters)
            rollouts = model.imagine(histories, actions)
            returns = model.members_mean(model.imagined_return(rollouts, histories[..., -1, :]))
            return actions[returns.argmax()]
