"""The data-efficient pixel agent: a deep dynamical model (DDM), re-learned after every trial, and a controller.

After Wahlstroem et al. 2015 and Assael et al. 2015 ("Data-Efficient Learning of Feedback Policies from
Image Pixels using Deep Dynamical Models"). The agent sees only images and rewards.

    trial 0 .. random_trials - 1:  random actions at +-bound, each held for `random_hold` steps: about half
                                   the period of the hanging pendulum, so the pole swings far (exploration)
    then, each trial:
        fit the DDM on every frame so far (from scratch, or warm-started with fewer updates)
        [policy controller: improve the policy on imagined rollouts through the model]
        act for one trial with the controller, store the trial, log and record it

Controllers (``agent.controller``), all acting on the latent history of the last ``context`` frames:
    cem       model-predictive control: the cross-entropy method over ``candidates`` action sequences
              of ``planning_horizon`` steps, scored by the predicted rewards; receding horizon (only the
              first action is applied, the plan is shifted and reused as the next initial mean).
    gradient  model-predictive control by gradient-based shooting: Adam on ``candidates`` action sequences
              through the differentiable model, the best one applied; receding horizon.
    policy    a feedback policy (a small MLP on the latent history), trained by back-propagating imagined
              returns over ``policy_horizon`` steps from latent states of the data; acting is one forward pass.

Actions are squashed or clipped to the env's bound (or ``action_bound``) everywhere.

Three settings decide whether the pendulum is held (all on in configs/ddm_pendulum.yaml):
    inertia             the transition predicts the latent's acceleration (z' = 2 z - z_prev + f), so where
                        data is thin (near upright, passed only a few times, fast) the model's default is
                        "keeps moving", not "stops".
    refit_from_scratch  re-initialise the model before each fit. A warm-started encoder keeps the map it
                        formed from the first trials, which never saw the pole up: its latent space stays
                        squeezed and stretched near upright (speed per degree varying 8x within 20 degrees),
                        and its one-step error there was 4.3 degrees, against 0.4 for a model fitted from
                        scratch on the same 900 frames (the primacy bias of Nikishin et al. 2022; PILCO
                        also refits its model from scratch every trial).
    fits (with model_lr_schedule: cosine)
                        fits from scratch end far apart (held-out 5-step errors up to 3x apart between two
                        initialisations on the same data; some never learn the image at all), and a bad fit
                        costs a trial: fit `fits` models, keep the one with the lowest pixel loss on the data.
                        The cosine decay of each fit's learning rate ends it in a quieter spot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from agents.common import env_fps, make_env
from agents.config import ConfigError, RunConfig
from agents.run import Run, generator_state, rng_state, set_generator_state, set_rng_state
from nets.ddm import DeepDynamicalModel, prediction_errors
from nets.mlp import ACTIVATIONS, MLP

CONTROLLERS = ("cem", "gradient", "policy")
LR_SCHEDULES = ("constant", "cosine")
ERROR_STEPS = (1, 5, 10)  # model prediction errors logged per trial, in steps ahead
SUCCESS_ANGLE = np.deg2rad(20.0)  # success: |angle| within this of upright ...
SUCCESS_FRAMES = 20  # ... in each of the last this many frames of a trial


@dataclass
class Config:
    kind: str = "ddm"
    # trials
    trials: int = 10  # trials to play at most (random ones included)
    random_trials: int = 1  # first trials with random actions
    trial_steps: int = 100  # env steps per trial (the env's time limit may end it sooner)
    stop_on_success: bool = True  # stop after the first trial judged a success
    random_hold: int = 10  # a random action is held for this many steps (it swings the pole further)
    random_bang_bang: bool = True  # random actions at +-bound (not uniform): held, they swing the pole round
    # model (nets.ddm.DeepDynamicalModel)
    latent_dim: int = 4  # latent size of one frame
    context: int = 2  # latents the transition reads (one frame shows no velocity)
    encoder: str = "mlp"  # "mlp" (fast on a CPU, as in the paper) or "conv"
    encoder_hidden: list[int] = field(default_factory=lambda: [256, 64])  # MLP sizes or conv channels
    transition_hidden: list[int] = field(default_factory=lambda: [128, 128])  # transition MLP sizes
    reward_hidden: list[int] = field(default_factory=lambda: [64, 64])  # reward head MLP sizes
    stochastic: bool = False  # Gaussian latent transition (the probabilistic variant)
    inertia: bool = False  # transition predicts the latent's acceleration: z' = 2 z - z_prev + f(...)
    activation: str = "elu"  # hidden activation of all the model's networks (silu: as smooth, ~2x cheaper on a CPU)
    latent_grad: bool = True  # the latent prediction term also trains the encoder; false: the transition only
    # (the encoder is shaped for prediction by the pixel prediction term alone, which cannot collapse it)
    # model training
    prediction_horizon: int = 10  # open-loop steps in the joint loss
    batch_size: int = 16  # windows per update
    refit_from_scratch: bool = False  # re-initialise the model before each fit (see the module docstring)
    first_train_steps: int = 600  # updates of a fit from scratch (after the random trials, or every refit)
    fits: int = 1  # models fitted from scratch each time; the one with the lowest pixel loss on a fixed set of
    # windows is kept (fits from different initialisations end far apart, and a bad one costs a trial)
    train_steps: int = 300  # updates of a warm-started fit (refit_from_scratch false)
    latent_warmup: float = 0.0  # fraction of a from-scratch fit's first updates without the latent prediction
    # term: at initialisation that term (measured in units of the latents' spread) can shrink the latents
    # to a point before the auto-encoder spreads them (seen: seed 4 never recovered); 0 = off
    model_lr: float = 1e-3  # Adam learning rate of the model (the peak, with a cosine schedule)
    model_lr_schedule: str = "constant"  # "cosine": each fit's learning rate decays to zero over its updates
    # (joint and dynamics fits): the last updates average out the batch noise, so fits end less far apart
    dynamics_steps: int = 1000  # then updates of the transition and reward head alone, on frozen latents (cheap)
    dynamics_batch: int = 64  # windows per dynamics-only update
    focus: float = 0.0  # fraction of training windows drawn preferring high reward (see sample_windows)
    latent_weight: float = 10.0  # weight of the latent prediction error in the joint loss
    reward_weight: float = 10.0  # weight of the reward error in the joint loss
    # control
    controller: str = "cem"  # "cem", "gradient" or "policy" (see the module docstring)
    action_bound: list[float] | None = None  # largest |action| per dimension; None: the env's bound
    planning_horizon: int = 25  # steps each plan looks ahead (cem, gradient)
    candidates: int = 500  # action sequences scored at once (cem, gradient)
    elites: int = 50  # best sequences refitted each CEM iteration
    cem_iterations: int = 5  # CEM refits per action
    particles: int = 8  # sampled rollouts per CEM candidate of a stochastic model, their mean return its score
    gradient_iterations: int = 10  # Adam steps on the action sequences per action (gradient)
    gradient_lr: float = 0.1  # Adam learning rate of the action sequences (gradient)
    exploration_noise: float = 0.0  # Gaussian noise (fraction of the bound) added to acted actions
    # feedback policy (controller: policy)
    policy_hidden: list[int] = field(default_factory=lambda: [64, 64])  # policy MLP sizes
    policy_horizon: int = 30  # imagined steps per policy update
    policy_batch: int = 256  # imagined rollouts per policy update (starts drawn from the data)
    policy_steps: int = 200  # policy updates per trial
    policy_lr: float = 3e-3  # Adam learning rate of the policy

    def validate(self) -> None:
        if self.controller not in CONTROLLERS:
            raise ConfigError(f"agent.controller: unknown controller {self.controller!r} "
                              f"(choose one of {', '.join(CONTROLLERS)})")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"agent.activation: unknown activation {self.activation!r} "
                              f"(choose one of {', '.join(sorted(ACTIVATIONS))})")
        if self.model_lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"agent.model_lr_schedule: expected one of {', '.join(LR_SCHEDULES)}, "
                              f"got {self.model_lr_schedule!r}")
        if self.encoder not in ("mlp", "conv"):
            raise ConfigError(f"agent.encoder: expected 'mlp' or 'conv', got {self.encoder!r}")
        if self.latent_dim < 1:
            raise ConfigError(f"agent.latent_dim: the decoder needs a latent of at least 1 dim, got {self.latent_dim}")
        for key in ("trials", "fits", "trial_steps", "context", "prediction_horizon", "batch_size", "planning_horizon",
                    "candidates", "elites", "cem_iterations", "particles", "gradient_iterations", "policy_horizon",
                    "policy_batch", "random_hold", "dynamics_batch"):
            if getattr(self, key) < 1:
                raise ConfigError(f"agent.{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("random_trials", "first_train_steps", "train_steps", "policy_steps", "dynamics_steps"):
            if getattr(self, key) < 0:
                raise ConfigError(f"agent.{key}: must be >= 0, got {getattr(self, key)}")
        if not 1 <= self.random_trials < self.trials:
            raise ConfigError(f"agent.random_trials: must be in [1, trials - 1 = {self.trials - 1}], "
                              f"got {self.random_trials}")
        if self.elites > self.candidates:
            raise ConfigError(f"agent.elites: must be <= candidates ({self.candidates}), got {self.elites}")
        if self.context + self.prediction_horizon > self.trial_steps + 1:
            raise ConfigError(f"agent.prediction_horizon: context + horizon must fit in a trial of "
                              f"{self.trial_steps + 1} frames, got {self.context} + {self.prediction_horizon}")
        if self.action_bound is not None and (not self.action_bound or min(self.action_bound) <= 0):
            raise ConfigError(f"agent.action_bound: expected a list of positive numbers, got {self.action_bound}")
        if self.inertia and self.context < 2:
            raise ConfigError(f"agent.inertia: needs agent.context >= 2 (a velocity), got context {self.context}")
        if not 0.0 <= self.latent_warmup < 1.0:
            raise ConfigError(f"agent.latent_warmup: must be in [0, 1), got {self.latent_warmup}")
        if not 0.0 <= self.focus <= 1.0:
            raise ConfigError(f"agent.focus: must be in [0, 1], got {self.focus}")
        for key in ("model_lr", "gradient_lr", "policy_lr"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"agent.{key}: must be > 0, got {getattr(self, key)}")


class Trial(NamedTuple):
    """One played trial."""

    frames: np.ndarray  # (T + 1, C, H, W) uint8
    actions: np.ndarray  # (T, A) float32
    rewards: np.ndarray  # (T,) float32
    angles: np.ndarray  # (T,) the env's info["angle"] after each step (NaN if it has none)


# controllers --------------------------------------------------------------------------------------------
@torch.no_grad()
def cem_plan(
    model: DeepDynamicalModel,
    history: torch.Tensor,
    mean: torch.Tensor,
    bound: torch.Tensor,
    candidates: int,
    elites: int,
    iterations: int,
    generator: torch.Generator | None = None,
    particles: int = 1,
) -> torch.Tensor:
    """Cross-entropy method over action sequences, scored by the model's summed predicted rewards.

    A stochastic model scores each sequence by the mean return of `particles` sampled rollouts (as PETS
    does): scored on one sample each, the elites are the luckiest draws, which favours the sequences whose
    outcome the model is least sure of.

    Shapes: `history (context, latent_dim)`, `mean (horizon, action_dim)` (the initial mean, e.g. the last
    plan shifted), `bound (action_dim,)` -> the refitted mean `(horizon, action_dim)`, within the bound.
    """
    std = bound.expand_as(mean).clone()
    particles = particles if model.stochastic else 1
    histories = history.expand(particles * candidates, *history.shape)
    for _ in range(iterations):
        noise = torch.randn(candidates, *mean.shape, generator=generator, device=mean.device)
        actions = torch.maximum(torch.minimum(mean + std * noise, bound), -bound)
        actions[0] = torch.maximum(torch.minimum(mean, bound), -bound)  # the mean itself competes: never worse
        rollouts = model.imagine(histories, actions.repeat(particles, 1, 1), sample=True)
        returns = model.reward(rollouts).sum(-1).view(particles, candidates).mean(0)
        best = actions[returns.topk(elites).indices]
        mean, std = best.mean(0), best.std(0) + 1e-3 * bound
    return mean


def gradient_plan(
    model: DeepDynamicalModel,
    history: torch.Tensor,
    mean: torch.Tensor,
    bound: torch.Tensor,
    candidates: int,
    iterations: int,
    lr: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Gradient-based shooting: Adam on `candidates` action sequences (the first is `mean`, the rest random)
    through the model, maximising the summed predicted reward; actions are `bound * tanh(parameters)`.

    Shapes as in :func:`cem_plan`; returns the best sequence `(horizon, action_dim)`.
    """
    start = torch.rand(candidates, *mean.shape, generator=generator, device=mean.device) * 2 - 1
    start[0] = mean / bound
    parameters = torch.atanh(start.clamp(-0.99, 0.99)).requires_grad_(True)
    optimizer = torch.optim.Adam([parameters], lr=lr)
    histories = history.expand(candidates, *history.shape)
    for _ in range(iterations):
        returns = model.reward(model.imagine(histories, bound * torch.tanh(parameters))).sum(-1)
        optimizer.zero_grad()
        (-returns.sum()).backward()
        optimizer.step()
    with torch.no_grad():
        actions = bound * torch.tanh(parameters)
        returns = model.reward(model.imagine(histories, actions)).sum(-1)
        return actions[returns.argmax()]


class Policy(nn.Module):
    """A feedback policy on the latent history: `(..., context, latent_dim) -> (..., action_dim)` in the bound."""

    def __init__(self, context: int, latent_dim: int, bound: torch.Tensor, hidden: list[int]) -> None:
        super().__init__()
        self.net = MLP(context * latent_dim, bound.numel(), hidden)
        self.register_buffer("bound", bound.clone())

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        return self.bound * torch.tanh(self.net(history.flatten(-2)))


def imagined_return(model: DeepDynamicalModel, policy: Policy, histories: torch.Tensor, horizon: int) -> torch.Tensor:
    """Summed predicted rewards of `policy` acting for `horizon` steps in the model from each history.

    Shapes: `histories (batch, context, latent_dim)` -> `(batch,)`.
    """
    total = torch.zeros(histories.shape[0], device=histories.device)
    for _ in range(horizon):
        histories = model.step(histories, policy(histories), sample=True)
        total = total + model.reward(histories[:, -1])
    return total


def improve_policy(
    model: DeepDynamicalModel,
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    starts: torch.Tensor,
    steps: int,
    batch: int,
    horizon: int,
) -> float:
    """Policy search through the model: ascend the imagined return from start histories drawn from the data.

    The model is not updated here (only the policy's parameters are in `optimizer`).
    Shapes: `starts (N, context, latent_dim)`. Returns the mean imagined return of the last update.
    """
    value = float("nan")
    for _ in range(steps):
        chosen = starts[torch.randint(0, starts.shape[0], (batch,), device=starts.device)]
        returns = imagined_return(model, policy, chosen, horizon)
        optimizer.zero_grad()
        (-returns.mean()).backward()
        optimizer.step()
        value = float(returns.detach().mean())
    return value


# the agent -----------------------------------------------------------------------------------------------
class DDMAgent:
    Config = Config

    def __init__(self, config: RunConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        agent = config.agent
        env = make_env(config)
        space = env.action_space
        self.obs_shape = tuple(env.observation_space.shape)
        self.fps = env_fps(env)
        env.close()
        if not isinstance(space, gym.spaces.Box):
            raise ConfigError(f"env.id: the ddm agent needs a continuous (Box) action space, got {space}")
        if agent.action_bound is None:
            bound = np.minimum(np.abs(space.low), np.abs(space.high)).astype(np.float32)
        elif len(agent.action_bound) != space.shape[0]:
            raise ConfigError(f"agent.action_bound: expected {space.shape[0]} values (the env's action shape "
                              f"{space.shape}), got {len(agent.action_bound)}")
        else:
            bound = np.asarray(agent.action_bound, np.float32)
        self.bound = torch.as_tensor(bound, device=device)
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        self.action_dim = space.shape[0]
        self.new_model()
        self.trials: list[Trial] = []
        self.successes: list[bool] = []
        self.returns: list[float] = []
        self.model_error_10 = float("nan")
        self.plan: torch.Tensor | None = None
        self.history: list[np.ndarray] = []

    def new_model(self) -> None:
        """Freshly initialised model and policy (their latent space is the model's), with fresh optimisers."""
        agent = self.config.agent
        self.model = DeepDynamicalModel(
            self.obs_shape, self.action_dim, self.bound.cpu(), latent_dim=agent.latent_dim, context=agent.context,
            encoder=agent.encoder, encoder_hidden=agent.encoder_hidden, transition_hidden=agent.transition_hidden,
            reward_hidden=agent.reward_hidden, stochastic=agent.stochastic, inertia=agent.inertia,
            activation=agent.activation, latent_grad=agent.latent_grad,
        ).to(self.device)
        self.model_optimizer = torch.optim.Adam(self.model.parameters(), lr=agent.model_lr)
        self.policy = Policy(agent.context, agent.latent_dim, self.bound, agent.policy_hidden).to(self.device)
        self.policy_optimizer = torch.optim.Adam(self.policy.parameters(), lr=agent.policy_lr)

    # data ------------------------------------------------------------------------------------------------
    def dataset(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every trial so far, padded to the longest: frames (N, T + 1, C, H, W) uint8, actions (N, T, A),
        rewards (N, T), valid (N, T) (1 where the step happened)."""
        steps = max(len(trial.actions) for trial in self.trials)
        count = len(self.trials)
        frames = np.zeros((count, steps + 1, *self.obs_shape), np.uint8)
        actions = np.zeros((count, steps, self.bound.numel()), np.float32)
        rewards = np.zeros((count, steps), np.float32)
        valid = np.zeros((count, steps), np.float32)
        for index, trial in enumerate(self.trials):
            length = len(trial.actions)
            frames[index, : length + 1] = trial.frames
            frames[index, length + 1 :] = trial.frames[-1]
            actions[index, :length], rewards[index, :length], valid[index, :length] = (
                trial.actions, trial.rewards, 1.0)
        to = lambda array: torch.from_numpy(array).to(self.device)  # noqa: E731
        return to(frames), to(actions), to(rewards), to(valid)

    def sample_windows(
        self, rewards: torch.Tensor, valid: torch.Tensor, length: int, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Trial and start indices `(batch, 1)` each of windows of `length` frames.

        A `focus` fraction is drawn with probability growing with the window's mean reward (standardised,
        softmax): the states that matter for control (the pole near upright) are rare in the data, and
        the model's errors there decide whether it can be held. The rest are uniform.
        """
        count, steps = rewards.shape
        starts = steps + 2 - length
        windows = rewards.unfold(1, length - 1, 1)[:, :starts].mean(-1)  # (count, starts)
        usable = valid.unfold(1, length - 1, 1)[:, :starts].amin(-1) > 0
        score = (windows - windows[usable].mean()) / windows[usable].std().clamp(min=1e-6)
        weights = torch.where(usable, score.exp(), torch.zeros_like(score)).flatten()
        focused = int(round(self.config.agent.focus * batch)) if weights.sum() > 0 else 0
        flat = torch.randint(0, count * starts, (batch,), device=rewards.device)
        if focused:
            flat[:focused] = torch.multinomial(weights, focused, replacement=True)
        return (flat // starts).unsqueeze(1), (flat % starts).unsqueeze(1)

    def train_model(
        self, updates: int, parameters: list[nn.Parameter] | None = None, terms: tuple[str, ...] | None = None,
        warmup: int = 0,
    ) -> dict[str, float]:
        """`updates` joint updates on random windows of all trials so far; mean loss terms of the last 50.

        The first `warmup` updates leave out the latent prediction term (see `Config.latent_warmup`).

        `parameters` and `terms` (names of `DDMLoss` fields) restrict the update to some parameters (with a
        fresh Adam) and some loss terms: how the auto-encoder-then-dynamics baseline is fitted.
        """
        agent = self.config.agent
        frames, actions, rewards, valid = self.dataset()
        length = agent.context + agent.prediction_horizon
        optimizer = self.model_optimizer if parameters is None else torch.optim.Adam(parameters, lr=agent.model_lr)
        scheduler = self.lr_scheduler(optimizer, updates)
        weights = {"reconstruction": 1.0, "prediction_pixels": 1.0, "prediction_latent": agent.latent_weight,
                   "reward": agent.reward_weight}
        history = []
        offsets = torch.arange(length, device=self.device)
        self.model.train()
        for update in range(updates):
            trial, start = self.sample_windows(rewards, valid, length, agent.batch_size)
            index = start + offsets  # (batch, length) frame indices
            latent_weight = 0.0 if update < warmup else agent.latent_weight
            loss = self.model.loss(frames[trial, index], actions[trial, index[:, :-1]], rewards[trial, index[:, :-1]],
                                   valid[trial, index[:, :-1]], latent_weight, agent.reward_weight)
            total = loss.total if terms is None else sum(weights[name] * getattr(loss, name) for name in terms)
            optimizer.zero_grad()
            total.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), 100.0)
            optimizer.step()
            scheduler.step()
            history.append(torch.stack([term.detach() for term in loss]))
        self.model.eval()
        if not history:
            return {}
        means = torch.stack(history[-50:]).mean(0).tolist()
        return {f"train/{name}": value for name, value in zip(loss._fields, means, strict=True)}

    def fit_from_scratch(self, fresh_model: bool = True) -> dict[str, float]:
        """`fits` fits of freshly initialised models (the first keeps the current model if not `fresh_model`);
        the one with the lowest `pixel_score` is kept. Returns its training losses, plus (when `fits` > 1)
        `train/fit_score` (its score) and `train/fit_chosen` (which fit it was, from 0)."""
        agent = self.config.agent
        updates = agent.first_train_steps
        best = None
        for fit in range(agent.fits):
            if fresh_model or fit > 0:
                self.new_model()
            losses = self.train_model(updates, warmup=int(agent.latent_warmup * updates))
            if agent.fits == 1:  # nothing to choose between: no score
                return losses
            losses.update({"train/fit_score": self.pixel_score(), "train/fit_chosen": float(fit)})
            if best is None or losses["train/fit_score"] < best[0]["train/fit_score"]:
                best = (losses, self.model, self.model_optimizer, self.policy, self.policy_optimizer)
        losses, self.model, self.model_optimizer, self.policy, self.policy_optimizer = best
        return losses

    @torch.no_grad()
    def pixel_score(self, stride: int = 4) -> float:
        """The model's pixel loss (reconstruction + open-loop prediction) on every `stride`-th window of the
        data: the same windows for every model fitted on the same data, so fits can be compared."""
        agent = self.config.agent
        frames, actions, rewards, valid = self.dataset()
        length = agent.context + agent.prediction_horizon
        usable = valid.unfold(1, length - 1, stride).amin(-1) > 0  # (trials, windows), as in sample_windows
        trial, window = usable.nonzero(as_tuple=True)
        trial, index = trial.unsqueeze(1), (window * stride).unsqueeze(1) + torch.arange(length, device=self.device)
        loss = self.model.loss(frames[trial, index], actions[trial, index[:, :-1]], rewards[trial, index[:, :-1]],
                               valid[trial, index[:, :-1]])
        return float(loss.reconstruction + loss.prediction_pixels)

    def lr_scheduler(self, optimizer: torch.optim.Optimizer, updates: int) -> torch.optim.lr_scheduler.LRScheduler:
        """The learning-rate schedule of one fit of `updates` updates, starting from `model_lr` (also when the
        optimiser is warm-started and ended the last fit near zero)."""
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] = self.config.agent.model_lr
        if self.config.agent.model_lr_schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(updates, 1))
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)

    def train_dynamics(self, updates: int) -> dict[str, float]:
        """Fit the transition and reward head alone on latents encoded once (no images: ~100x cheaper
        per update than a joint one), with the same open-loop multi-step latent and reward losses."""
        agent = self.config.agent
        frames, actions, rewards, valid = self.dataset()
        with torch.no_grad():
            latents = self.model.encode(frames)  # (N, T + 1, latent_dim)
        parameters = [*self.model.transition_net.parameters(), *self.model.reward_net.parameters()]
        optimizer = torch.optim.Adam(parameters, lr=agent.model_lr)
        scheduler = self.lr_scheduler(optimizer, updates)
        length = agent.context + agent.prediction_horizon
        offsets = torch.arange(length, device=self.device)
        history = []
        for _ in range(updates):
            trial, start = self.sample_windows(rewards, valid, length, agent.dynamics_batch)
            index = start + offsets
            _, latent_error, reward_error = self.model.latent_losses(
                latents[trial, index], actions[trial, index[:, :-1]], rewards[trial, index[:, :-1]],
                valid[trial, index[:, :-1]])
            optimizer.zero_grad()
            (agent.latent_weight * latent_error + agent.reward_weight * reward_error).backward()
            optimizer.step()
            scheduler.step()
            history.append(torch.stack([latent_error.detach(), reward_error.detach()]))
        if not history:
            return {}
        latent_error, reward_error = torch.stack(history[-50:]).mean(0).tolist()
        return {"train/dynamics_latent": latent_error, "train/dynamics_reward": reward_error}

    def latent_histories(self) -> torch.Tensor:
        """The latent history at every frame of the data that has one: (N, context, latent_dim)."""
        context = self.config.agent.context
        with torch.no_grad():
            starts = []
            for trial in self.trials:
                latents = self.model.encode(torch.from_numpy(trial.frames).to(self.device))
                starts.append(latents.unfold(0, context, 1).transpose(1, 2))
        return torch.cat(starts)

    # acting ----------------------------------------------------------------------------------------------
    def reset(self) -> None:
        self.plan = None
        self.history = []

    @torch.no_grad()
    def latest_history(self) -> torch.Tensor:
        """The latent history of the last `context` observations seen (the first repeated at the start)."""
        context = self.config.agent.context
        frames = self.history[-context:]
        frames = [frames[0]] * (context - len(frames)) + frames
        return self.model.encode(torch.from_numpy(np.stack(frames)).to(self.device))

    def act(self, obs: np.ndarray) -> np.ndarray:
        """One observation -> the controller's action (deterministic given the agent's RNG state)."""
        agent = self.config.agent
        self.history.append(np.asarray(obs))
        history = self.latest_history()
        if agent.controller == "policy":
            with torch.no_grad():
                action = self.policy(history)
        else:
            if self.plan is None:
                self.plan = torch.zeros(agent.planning_horizon, self.bound.numel(), device=self.device)
            if agent.controller == "cem":
                plan = cem_plan(self.model, history, self.plan, self.bound, agent.candidates, agent.elites,
                                agent.cem_iterations, particles=agent.particles)
            else:
                plan = gradient_plan(self.model, history, self.plan, self.bound, agent.candidates,
                                     agent.gradient_iterations, agent.gradient_lr)
            # Receding horizon: apply the first action, keep the rest as the next plan's starting point.
            self.plan = torch.cat([plan[1:], torch.zeros_like(plan[:1])])
            action = plan[0]
        return action.cpu().numpy().astype(np.float32)

    def play(self, env: gym.Env, seed: int, controlled: bool) -> Trial:
        """One trial: random held actions, or the controller (plus exploration noise)."""
        agent = self.config.agent
        bound = self.bound.cpu().numpy()
        obs, info = env.reset(seed=seed)
        self.reset()
        frames, actions, rewards, angles = [obs], [], [], []
        action = np.zeros_like(bound)
        for step in range(agent.trial_steps):
            if controlled:
                action = self.act(obs)
                if agent.exploration_noise > 0:
                    action = action + agent.exploration_noise * bound * self.rng.standard_normal(bound.shape)
            elif step % agent.random_hold == 0:
                action = (bound * self.rng.choice([-1.0, 1.0], size=bound.shape) if agent.random_bang_bang
                          else self.rng.uniform(-bound, bound))
            action = np.clip(action, -bound, bound).astype(np.float32)
            obs, reward, terminated, truncated, info = env.step(action)
            frames.append(obs)
            actions.append(action)
            rewards.append(float(reward))
            angles.append(float(info.get("angle", np.nan)))
            if terminated or truncated:
                break
        return Trial(np.stack(frames), np.stack(actions), np.asarray(rewards, np.float32), np.asarray(angles))

    # the trial loop --------------------------------------------------------------------------------------
    def train(self, run: Run) -> dict:
        agent = self.config.agent
        env = make_env(self.config)
        bar = run.progress(agent.trials, initial=len(self.trials), unit="trial")
        while len(self.trials) < agent.trials and not (agent.stop_on_success and any(self.successes)):
            index = len(self.trials)
            started = time.time()
            controlled = index >= agent.random_trials
            losses: dict[str, float] = {}
            if controlled:
                # From scratch (refit_from_scratch) or warm-started (the model keeps its weights and optimiser
                # and gets fewer updates); the first fit after the random trials is always from scratch.
                fresh = index == agent.random_trials or agent.refit_from_scratch
                losses = self.fit_from_scratch(fresh_model=index > agent.random_trials) if fresh else (
                    self.train_model(agent.train_steps))
                losses.update(self.train_dynamics(agent.dynamics_steps))
                if agent.controller == "policy":
                    losses["train/imagined_return"] = improve_policy(
                        self.model, self.policy, self.policy_optimizer, self.latent_histories(), agent.policy_steps,
                        agent.policy_batch, agent.policy_horizon)
            trial = self.play(env, seed=self.config.seed * 1000 + index, controlled=controlled)
            self.record(run, index, trial, losses, time.time() - started)
            bar.set_postfix(ret=f"{self.returns[-1]:.1f}", success=self.successes[-1], refresh=False)
            bar.update(1)  # refreshes the bar with this trial's postfix
            run.save_checkpoint(self.state_dict(), self.frames())
        bar.close()
        env.close()
        return self.summary()

    def record(self, run: Run, index: int, trial: Trial, losses: dict[str, float], seconds: float) -> None:
        """Store the trial, log its figures and record it with the model's reconstructions and predictions."""
        self.trials.append(trial)
        success = bool(len(trial.angles) >= SUCCESS_FRAMES
                       and np.all(np.abs(trial.angles[-SUCCESS_FRAMES:]) < SUCCESS_ANGLE))
        self.successes.append(success)
        self.returns.append(float(trial.rewards.sum()))
        steps = max(ERROR_STEPS)
        frames = torch.from_numpy(trial.frames).to(self.device)
        predictions = self.model.predict_frames(frames, torch.from_numpy(trial.actions).to(self.device), steps)
        errors = prediction_errors(predictions, frames, ERROR_STEPS, self.config.agent.context)
        self.model_error_10 = errors[10] if 10 in errors else float("nan")
        metrics = {"trial/return": self.returns[-1], "trial/success": float(success), "trial/index": index,
                   **{f"model/error_{k}": value for k, value in errors.items()}, "time/trial_s": seconds, **losses}
        run.log(self.frames(), metrics)
        to_uint8 = lambda images: (images * 255).round().to(torch.uint8).cpu().numpy()  # noqa: E731
        run.record_episode({"frames": trial.frames, "actions": trial.actions, "rewards": trial.rewards,
                            "episode": index, "trial": index, "fps": self.fps,
                            "reconstructions": to_uint8(self.model.reconstruct(frames)),
                            "predictions": to_uint8(predictions)})

    def frames(self) -> int:
        return int(sum(len(trial.actions) for trial in self.trials))

    def summary(self) -> dict:
        success_trial = next((index for index, success in enumerate(self.successes) if success), None)
        return {"env_steps": self.frames(), "episodes": len(self.trials),
                "mean_return": float(np.mean(self.returns[-10:])) if self.returns else float("nan"),
                "trials": len(self.trials), "success_trial": success_trial, "frames": self.frames(),
                "model_error_10": self.model_error_10, "returns": list(self.returns),
                "successes": list(self.successes)}

    # state -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(), "model_optimizer": self.model_optimizer.state_dict(),
            "policy": self.policy.state_dict(), "policy_optimizer": self.policy_optimizer.state_dict(),
            "trials": [{"frames": torch.from_numpy(trial.frames), "actions": torch.from_numpy(trial.actions),
                        "rewards": torch.from_numpy(trial.rewards), "angles": torch.from_numpy(trial.angles)}
                       for trial in self.trials],
            "successes": list(self.successes), "returns": list(self.returns), "model_error_10": self.model_error_10,
            "rng": generator_state(self.rng), "global_rng": rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.model_optimizer.load_state_dict(state["model_optimizer"])
        self.policy.load_state_dict(state["policy"])
        self.policy_optimizer.load_state_dict(state["policy_optimizer"])
        self.trials = [Trial(item["frames"].numpy(), item["actions"].numpy(), item["rewards"].numpy(),
                             item["angles"].numpy()) for item in state["trials"]]
        self.successes = [bool(value) for value in state["successes"]]
        self.returns = [float(value) for value in state["returns"]]
        self.model_error_10 = float(state["model_error_10"])
        set_generator_state(self.rng, state["rng"])
        set_rng_state(state["global_rng"])
