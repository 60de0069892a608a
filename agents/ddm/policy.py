"""The feedback policy (a small MLP on the latent history) and its search by back-propagating imagined returns
through the learned model (`policy:`, :class:`PolicySearch`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from agents.core.config import ConfigError, at_least
from nets.ddm import DeepDynamicalModel
from nets.mlp import MLP


class Policy(nn.Module):
    """A feedback policy on the latent history: `(..., context, latent_dim) -> (..., action_dim)` in the bound;
    with `critic_hidden`, also a learned value of a history (:meth:`value`, `(..., context, latent_dim) -> (...)`),
    for `policy.value`.

    `squash` maps the network's output into the bound: "sin" (`bound * sin(x)`, PILCO's saturating map) keeps
    a gradient wherever the output lands; "tanh" has none once saturated, and a search through the model
    pushes it there (full torque is the first thing that moves the pole), where it stays: the constant lean.
    """

    def __init__(self, context: int, latent_dim: int, bound: torch.Tensor, hidden: list[int],
                 critic_hidden: list[int] | None = None, squash: Literal["sin", "tanh"] = "sin") -> None:
        super().__init__()
        self.net = MLP(context * latent_dim, bound.numel(), hidden)
        self.critic = MLP(context * latent_dim, 1, critic_hidden) if critic_hidden is not None else None
        self.register_buffer("bound", bound.clone())
        self.squash = torch.sin if squash == "sin" else torch.tanh

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        return self.bound * self.squash(self.net(history.flatten(-2)))

    def value(self, history: torch.Tensor) -> torch.Tensor:
        return self.critic(history.flatten(-2)).squeeze(-1)


def lambda_returns(rewards: torch.Tensor, values: torch.Tensor, discount: float, lam: float) -> torch.Tensor:
    """TD(lambda) targets of an imagined rollout (Dreamer's V_lambda): `G_t = r_t + discount ((1 - lam) v_{t+1} +
    lam G_{t+1})`, `G_H = v_H`. Shapes: `rewards (batch, H)` (r_t: the reward of step t), `values (batch, H + 1)`
    (v_t: the value of the state before step t) -> `(batch, H)`."""
    returns, following = [], values[:, -1]
    for step in reversed(range(rewards.shape[1])):
        following = rewards[:, step] + discount * ((1 - lam) * values[:, step + 1] + lam * following)
        returns.append(following)
    return torch.stack(returns[::-1], 1)


def imagined_return(model: DeepDynamicalModel, policy: Policy, histories: torch.Tensor, horizon: int) -> torch.Tensor:
    """Summed predicted rewards of `policy` acting for `horizon` steps in the model from each history (each weighted
    by the probability that the rollout has not ended, with a continue head: as DeepDynamicalModel.imagined_return).

    Shapes: `histories (batch, context, latent_dim)` -> `(batch,)` (an ensemble's: the members' mean).
    """
    histories, latents = model.with_members(histories), []
    before = histories[..., -1, :]
    for _ in range(horizon):
        histories = model.step(histories, policy(histories), sample=True)
        latents.append(histories[..., -1, :])
    return model.members_mean(model.imagined_return(torch.stack(latents, -2), before))


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """`module`'s parameters need no gradient inside the block (restored after): a search back-propagates
    through the model to the policy, and the model's own weight gradients would be ~15% of its work, unused."""
    needed = [parameter.requires_grad for parameter in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in zip(module.parameters(), needed, strict=True):
            parameter.requires_grad_(flag)


@dataclass
class PolicySearch:
    """Policy search through the model (the `policy:` block): ascend the imagined return of the feedback
    policy from start histories drawn from the data."""

    hidden: list[int] = field(default_factory=lambda: [64, 64])  # policy MLP sizes
    squash: Literal["sin", "tanh"] = "sin"  # the output's map into the bound (see Policy)
    max_grad_norm: float = 1.0  # the search's gradients clipped to this norm (imagined returns are long chains)
    horizon: int = 30  # imagined steps per update
    batch: int = 256  # imagined rollouts per update (starts drawn from the data)
    updates: int = 200  # policy updates per trial (of each restart)
    # restarts: policies searched per trial, each from a fresh initialisation, the one with the highest imagined
    # return from every start of the data kept (searches on one model end far apart: 0 to 3 of 3 real trials held)
    restarts: int = 1
    lr: float = 3e-3  # Adam learning rate of the policy
    # focus: this share of each update's starts is drawn from the data's histories the model rewards most (its
    # top `focus_top` share): the hold near upright is where a swing-up policy fails, and the data passes
    # there seldom, so uniform starts rarely ask the search to keep the pole up; 0: all starts uniform
    focus: float = 0.0
    focus_top: float = 0.1
    # episode_horizon: each update also rolls `episode_batch` rollouts of this many steps from the trials' first
    # histories (the env's reset states) and ascends their return too: PILCO's objective, the whole episode
    # from where it starts. 30-step returns from the data's states do not contain a swing-up from rest (about
    # 50 steps) and its hold; 0: off
    episode_horizon: int = 0
    episode_batch: int = 32
    # teacher "cem": before the search, the policy imitates the CEM planner (the cem: block) on the agent's own
    # states (DAgger, Ross et al. 2011; the supervised half of guided policy search): after each fit the planner
    # labels `labels` not yet labelled states of the newest trials (the states the policy itself visited), and
    # the policy is fitted to every label so far (re-encoded by the new model) in `imitation_updates` steps
    teacher: Literal["none", "cem"] = "none"
    labels: int = 100  # states the planner labels per trial (each costs one CEM plan)
    # path_labels: each new label's plan also labels the states along its own imagined path with the plan's
    # actions there (horizon - 1 more labels per plan, in the latent space of this fit only): the states the
    # planner means to pass, the pole's hold near upright among them, before the policy has ever got there
    path_labels: bool = False
    imitation_updates: int = 500  # full-batch Adam steps on the labels, before the `updates` of the search
    # value: a critic learns the discounted value of the policy's histories from lambda-returns of the imagined
    # rollouts, and the search ascends those returns (Dreamer, Hafner et al. 2020), so what lies past the
    # horizon (holding the pole up, or losing it) counts too; false: the summed rewards of `horizon` steps
    value: bool = False
    critic_hidden: list[int] = field(default_factory=lambda: [64, 64])  # critic MLP sizes (value: true)
    discount: float = 0.99  # per imagined step (value: true)
    return_lambda: float = 0.95  # the lambda of the lambda-returns (value: true)

    def validate(self) -> None:
        at_least(self, 1, "horizon", "batch", "labels", "restarts", "episode_batch")
        at_least(self, 0, "episode_horizon")
        if self.episode_horizon and self.value:
            raise ConfigError(f"episode_horizon: {self.episode_horizon} whole-episode rollouts are ascended by the "
                              f"plain search only, not with value: true; set one of them")
        if self.restarts > 1 and self.teacher != "none":
            raise ConfigError(f"restarts: {self.restarts} restarts of a policy imitating a teacher "
                              f"(teacher: {self.teacher}) would start from the same imitation; use restarts: 1")
        at_least(self, 0, "updates", "imitation_updates")
        if self.lr <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr}")
        for name in ("focus", "focus_top"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}: must be in [0, 1], got {getattr(self, name)}")
        if self.max_grad_norm <= 0:
            raise ConfigError(f"max_grad_norm: must be > 0, got {self.max_grad_norm}")
        for name in ("discount", "return_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}: must be in [0, 1], got {getattr(self, name)}")

    def imitate(self, policy: Policy, optimizer: torch.optim.Optimizer, histories: torch.Tensor,
                actions: torch.Tensor) -> float:
        """`imitation_updates` steps of `policy` towards the teacher's `actions` on `histories` (squared error in
        units of the bound). Shapes: `histories (N, context, latent_dim)`, `actions (N, action_dim)`. Returns
        the last step's loss."""
        value = float("nan")
        for _ in range(self.imitation_updates):
            loss = (((policy(histories) - actions) / policy.bound) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
        return value

    def search(self, model: DeepDynamicalModel, policy: Policy, optimizer: torch.optim.Optimizer,
               starts: torch.Tensor, fresh: Callable[[], tuple[Policy, torch.optim.Optimizer]],
               first: torch.Tensor | None = None) -> tuple[Policy, torch.optim.Optimizer, dict[str, float]]:
        """`restarts` searches (:meth:`improve`): `policy` first, then fresh ones from `fresh()`; with more than one,
        the policy with the highest :meth:`score` is kept. Returns it, its optimiser and the search's figures.
        `first`: the trials' first histories, for `episode_horizon`."""
        best: tuple[Policy, torch.optim.Optimizer, dict[str, float]] | None = None
        for attempt in range(self.restarts):
            if attempt:
                policy, optimizer = fresh()
            figures = {"train/imagined_return": self.improve(model, policy, optimizer, starts, first)}
            if self.restarts > 1:
                figures.update({"train/policy_score": self.score(model, policy, starts),
                                "train/policy_chosen": float(attempt)})
                if best is not None and figures["train/policy_score"] <= best[2]["train/policy_score"]:
                    continue
            best = (policy, optimizer, figures)
        assert best is not None
        return best

    def score(self, model: DeepDynamicalModel, policy: Policy, starts: torch.Tensor) -> float:
        """The mean imagined return of `policy` over `horizon` steps from every start (through every member)."""
        with torch.no_grad():
            return float(imagined_return(model, policy, starts, self.horizon).mean())

    def improve(self, model: DeepDynamicalModel, policy: Policy, optimizer: torch.optim.Optimizer,
                starts: torch.Tensor, first: torch.Tensor | None = None) -> float:
        """`updates` updates of `policy` (the model is not updated, nor are its gradients computed).

        Shapes: `starts (N, context, latent_dim)`; `first (M, context, latent_dim)`, the trials' first histories
        (needed with `episode_horizon`). Returns the mean imagined return (of `horizon` steps from `starts`) of the
        last update.
        """
        if self.episode_horizon and first is None:
            raise ValueError("episode_horizon needs the trials' first histories (first=)")
        value = float("nan")
        focused = round(self.focus * self.batch)
        if focused:
            with torch.no_grad():
                rewards = model.history_reward(starts)
            top = starts[rewards >= rewards.quantile(1.0 - self.focus_top)]
        with frozen(model):
            for _ in range(self.updates):
                chosen = starts[torch.randint(0, starts.shape[0], (self.batch - focused,), device=starts.device)]
                if focused:
                    chosen = torch.cat([chosen, top[torch.randint(0, top.shape[0], (focused,), device=top.device)]])
                if self.value:
                    value = self.actor_critic_update(model, policy, optimizer, chosen)
                    continue
                returns = imagined_return(model, policy, chosen, self.horizon)
                loss = -returns.mean()
                if self.episode_horizon:
                    begun = first[torch.randint(0, first.shape[0], (self.episode_batch,), device=first.device)]
                    loss = loss - imagined_return(model, policy, begun, self.episode_horizon).mean()
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(policy.parameters(), self.max_grad_norm)
                optimizer.step()
                value = float(returns.detach().mean())
        return value

    def actor_critic_update(self, model: DeepDynamicalModel, policy: Policy, optimizer: torch.optim.Optimizer,
                            starts: torch.Tensor) -> float:
        """One update of `value: true`: the policy acts `horizon` steps in the model from `starts`; the actor
        ascends the mean lambda-return (through the model), the critic regresses each imagined history's value
        on its lambda-return (no gradient into the rollout). Returns the mean lambda-return from the starts."""
        histories, rewards, alive = [model.with_members(starts)], [], 1.0
        for _ in range(self.horizon):
            histories.append(model.step(histories[-1], policy(histories[-1]), sample=True))
            latent = histories[-1][..., -1, :]
            reward = model.history_reward(histories[-1])
            if model.continue_net is not None:  # rewards (and the alive bonus) count while the rollout has not ended
                alive = alive * model.continues(latent)
                if model.alive_bonus:
                    reward = reward + model.alive_bonus
            rewards.append(alive * reward)
        # (batch, horizon + 1, context, latent_dim); an ensemble's members' rollouts side by side in the batch
        states = torch.stack(histories, -3).reshape(-1, self.horizon + 1, *starts.shape[-2:])
        rewards = torch.stack(rewards, -1).reshape(-1, self.horizon)
        returns = lambda_returns(rewards, policy.value(states), self.discount, self.return_lambda)
        optimizer.zero_grad()
        (-returns.mean()).backward()
        for parameter in policy.critic.parameters():  # the actor's loss reaches the critic: not its gradient
            parameter.grad = None
        critic_loss = 0.5 * ((policy.value(states[:, :-1].detach()) - returns.detach()) ** 2).mean()
        critic_loss.backward()
        nn.utils.clip_grad_norm_(policy.parameters(), self.max_grad_norm)
        optimizer.step()
        return float(returns[:, 0].detach().mean())
