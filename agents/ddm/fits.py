"""Fitting the deep dynamical model: the optimiser every fit uses, the joint fit (images, latents, rewards)
and the transition alone on frozen latents (the `fit:` block, :class:`Fit`), and the pixel score that picks the
best of several fits."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from agents.core.config import ConfigError, at_least
from agents.ddm.data import TrialBuffer, Windows
from nets.ddm import DeepDynamicalModel


def adam(parameters: Iterable[nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam as every DDM fit uses it: fused (one kernel for all parameters' updates, on CPU as on CUDA), which
    takes a third of the time of the default per-parameter loop on the small networks here."""
    return torch.optim.Adam(parameters, lr=lr, fused=True)


@contextmanager
def single_torch_thread() -> Iterator[None]:
    """torch's intra-op threads set to one for the block (parallel fits bring their own threads), then restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def optimise(
    updates: int,
    sample: Callable[[], Windows],
    loss: Callable[[Windows, int], tuple[torch.Tensor, dict[str, torch.Tensor]]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    clip: tuple[list[nn.Parameter], float] | None = None,
) -> dict[str, float]:
    """The one fitting loop: `updates` steps of `loss(sample(), update)` -> (minimised total, named terms).

    `clip` (parameters, max norm) clips their gradient norm before each step. Returns the mean of each term
    over the last 50 updates as `train/<name>` (empty for no updates or no terms).
    """
    history, names = [], ()
    for update in range(updates):
        total, terms = loss(sample(), update)
        optimizer.zero_grad()
        total.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(*clip)
        optimizer.step()
        scheduler.step()
        if terms:
            names = tuple(terms)
            history.append(torch.stack([term.detach() for term in terms.values()]))
    if not history:
        return {}
    means = torch.stack(history[-50:]).mean(0).tolist()
    return {f"train/{name}": value for name, value in zip(names, means, strict=True)}


@torch.no_grad()
def pixel_score(model: DeepDynamicalModel, buffer: TrialBuffer, prediction_horizon: int, stride: int = 4) -> float:
    """The model's pixel loss (reconstruction + open-loop prediction) on every `stride`-th window of the data:
    the same windows for every model fitted on the same data, so fits can be compared."""
    loss = model.loss(*buffer.every(buffer.window_length(model.context + prediction_horizon), stride))
    return float(loss.reconstruction + loss.prediction_pixels)


@dataclass
class Fit:
    """How the model is fitted to the trials before each controlled trial (the `fit:` block)."""

    refit_from_scratch: bool = False  # re-initialise the model before each fit (see the module docstring)
    fits: int = 1  # models fitted from scratch each time; the one with the lowest pixel_score is kept (the fits run
    # at once, one torch thread each, when the run has that many threads; each draws from its own seeded generator)
    updates: int = 600  # joint updates of a fit from scratch (after the random trials, or every refit)
    warm_updates: int = 300  # joint updates of a warm-started fit (refit_from_scratch false)
    batch_size: int = 16  # windows per joint update
    prediction_horizon: int = 10  # open-loop steps in the joint loss (windows of model.context + this frames)
    lr: float = 1e-3  # Adam learning rate of the model (the peak, with a cosine schedule)
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: each fit's rate decays to zero over its
    # updates (joint and dynamics fits): the last updates average out the batch noise, so fits end less far apart
    latent_weight: float = 10.0  # weight of the latent prediction error in the joint loss
    reward_weight: float = 10.0  # weight of the reward error in the joint loss
    latent_warmup: float = 0.0  # fraction of a from-scratch fit's first updates without the latent prediction
    # term: at initialisation that term (measured in units of the latents' spread) can shrink the latents
    # to a point before the auto-encoder spreads them (seen: seed 4 never recovered); 0 = off
    focus: float = 0.0  # fraction of windows drawn preferring high reward (TrialBuffer.sample)
    mirror: bool = False  # fit on every trial and its mirror image (Trial.mirrored: frames flipped left-right,
    # actions negated; the policy search starts from both too), twice the data for a task symmetric under that
    # reflection (the pendulum, the cart-pole); wrong for one that is not
    dynamics_updates: int = 1000  # then updates of the transition and reward head alone, on frozen latents
    dynamics_batch: int = 64  # windows per dynamics-only update

    def validate(self) -> None:
        at_least(self, 1, "fits", "batch_size", "prediction_horizon", "dynamics_batch")
        at_least(self, 0, "updates", "warm_updates", "dynamics_updates")
        if not 0.0 <= self.latent_warmup < 1.0:
            raise ConfigError(f"latent_warmup: must be in [0, 1), got {self.latent_warmup}")
        if not 0.0 <= self.focus <= 1.0:
            raise ConfigError(f"focus: must be in [0, 1], got {self.focus}")
        if self.lr <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr}")

    def scheduler(self, optimizer: torch.optim.Optimizer, updates: int) -> torch.optim.lr_scheduler.LRScheduler:
        """The learning-rate schedule of one fit of `updates` updates, starting from `lr` (also when the
        optimiser is warm-started and ended the last fit near zero)."""
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] = self.lr
        if self.lr_schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(updates, 1))
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)

    def joint(self, model: DeepDynamicalModel, optimizer: torch.optim.Optimizer, buffer: TrialBuffer, updates: int,
              warmup: int = 0, generator: torch.Generator | None = None) -> dict[str, float]:
        """`updates` joint updates (DeepDynamicalModel.loss) on random windows (drawn from `generator`, torch's
        global one if None); the first `warmup` leave out the latent prediction term (`latent_warmup`). Returns
        the mean loss terms of the last 50 updates."""
        length = buffer.window_length(model.context + self.prediction_horizon)

        def loss(windows: Windows, update: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            terms = model.loss(*windows, latent_weight=0.0 if update < warmup else self.latent_weight,
                               reward_weight=self.reward_weight)
            return terms.total, terms._asdict()

        model.train()
        losses = optimise(updates, lambda: buffer.sample(length, self.batch_size, self.focus, generator), loss,
                          optimizer, self.scheduler(optimizer, updates), clip=(list(model.parameters()), 100.0))
        model.eval()
        return losses

    def dynamics(self, model: DeepDynamicalModel, buffer: TrialBuffer) -> dict[str, float]:
        """`dynamics_updates` updates of the transition and reward head alone, with a fresh Adam, on latents
        encoded once, with the same open-loop multi-step latent and reward losses as the joint fit."""
        latents = buffer.encoded(model)
        length = buffer.window_length(model.context + self.prediction_horizon)
        heads = [*model.reward_net.parameters(), *(model.continue_net.parameters() if model.continue_net else ())]
        optimizer = adam([*model.transition_net.parameters(), *heads], self.lr)

        def loss(windows: Windows, update: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            _, latent_error, reward_error = model.latent_losses(*windows)
            total = self.latent_weight * latent_error + self.reward_weight * reward_error
            return total, {"dynamics_latent": latent_error, "dynamics_reward": reward_error}

        return optimise(self.dynamics_updates, lambda: latents.sample(length, self.dynamics_batch, self.focus), loss,
                        optimizer, self.scheduler(optimizer, self.dynamics_updates))
