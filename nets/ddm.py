"""The deep dynamical model (DDM): an image auto-encoder and a latent transition learned jointly.

After Wahlstroem, Schoen and Deisenroth, "From Pixels to Torques" (2015) and Assael et al. (2015):

    encode:     image x_t                                  -> latent z_t              (..., latent_dim)
    transition: last `context` latents z_{t-c+1..t}, a_t   -> z_{t+1}                 (residual MLP)
    decode:     z_t                                        -> logits of x_t           (..., C, H, W)
    reward:     z_t (and z_t - z_{t-1}: reward_velocity)   -> r_t                     (the env's reward)
    continue:   z_t                                        -> P(z_t is not terminal)  (optional, continue_hidden)

A single frame shows where the pole is, not how fast it turns, so the transition reads the last two (or
more) latents. Training is joint: besides reconstructing each frame, the model rolls the transition
open-loop for `horizon` steps from encoded context frames and is penalised for the predicted latents
(against the encoder's latents of the real frames), the decoded predictions (against the real frames) and
the predicted rewards. So the latent space is shaped for long-term prediction, not only for reconstruction.

`stochastic=True` gives the probabilistic variant (in the spirit of deep Kalman filters / RSSM): the
transition outputs a diagonal Gaussian over the next latent, trained by its negative log-likelihood, and
imagined rollouts sample from it (`sample=True`), so a planner scoring many sampled rollouts prefers
plans whose outcome the model is sure of. The interface is the same as the deterministic model's. In
training the open-loop rollout carries the means and each step's Gaussian is scored against the error of
that mean: fed back, samples enter the next step's velocity (the difference of the last two latents), and the
noise compounded until the learned spread was half the latents' range (seen on the pendulum).

`ensemble=K` (K > 1) makes the transition an ensemble of K networks (PETS, Chua et al. 2018) on the one
encoder, decoder and reward head: where the data pins the dynamics down the members agree, away from it
they disagree, so their spread measures what the model does not know. The members share the training
windows and differ by their initialisation. An ensemble's rollouts carry the members on a leading
dimension: `transition`, `step` and `imagine` take histories `(K, ..., context, latent_dim)` (`with_members`
makes them from one history) and actions without it (the same actions for every member); the joint loss
scores every member's open-loop prediction and decodes the members' mean.

`continue_hidden` adds a continue head (PlaNet's and Dreamer's for episodes that end): the probability that a
latent is not a terminal state (a cart off its track, a pole past the balance threshold), learned from the
trials' ends. An imagined return (:meth:`imagined_return`) then counts each step's reward only while the rollout
has not ended, so a planner or policy search avoids termination even where the reward says nothing of it (the
cart-pole balance pays 1 per step, whatever the state).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import nn

from nets.conv import ConvDecoder, ConvEncoder, to_float
from nets.fovea import FoveaDecoder, FoveaEncoder
from nets.mlp import MLP, Activation, EnsembleMLP, MLPDecoder, MLPEncoder

Encoder = Literal["mlp", "conv", "fovea"]


class DDMLoss(NamedTuple):
    """Loss terms of one joint update; `total` is the weighted sum that is minimised (all scalars)."""

    total: torch.Tensor
    reconstruction: torch.Tensor  # Bernoulli NLL of each frame's reconstruction, summed over pixels
    prediction_pixels: torch.Tensor  # Bernoulli NLL of the decoded open-loop predictions
    prediction_latent: torch.Tensor  # squared error (or Gaussian NLL) of predicted vs encoded latents, per spread
    reward: torch.Tensor  # squared error of predicted rewards, from encoded and predicted latents


class Transition(NamedTuple):
    """A predicted next latent: its mean and standard deviation (zeros for the deterministic model)."""

    mean: torch.Tensor  # (..., latent_dim)
    std: torch.Tensor  # (..., latent_dim)


class DeepDynamicalModel(nn.Module):
    """Encoder, decoder, latent transition and reward head, trained jointly (see the module docstring).

    Args:
        obs_shape: image shape `(channels, height, width)`.
        action_dim: size of an action vector.
        action_bound: the largest action magnitude per dimension (actions are scaled by it before
            entering the transition).
        latent_dim: size of the latent state of one frame.
        context: latents the transition reads (2: position and, by difference, velocity).
        encoder: "mlp" (fully connected, as in the paper; fast on a CPU), "conv", or "fovea" (an MLP on a window
            that follows the image's one moving object, whose place is the last latent: nets/fovea.py; for an
            object that crosses the image, such as a cart on its track).
        encoder_hidden: hidden sizes of the MLP encoder (the decoder mirrors them), or the channels of
            the conv encoder (the decoder mirrors them).
        fovea_width: columns of the fovea encoder's window.
        transition_hidden: hidden sizes of the transition MLP.
        reward_hidden: hidden sizes of the reward MLP.
        stochastic: Gaussian transition (the probabilistic variant) instead of a deterministic one.
        min_std: smallest standard deviation of the Gaussian transition.
        inertia: the transition predicts the latent's acceleration (`z' = 2 z - z_prev + f(...)`).
        activation: hidden activation of every network (a name from `nets.mlp.ACTIVATIONS`); ELU is the
            paper-era choice, SiLU is as smooth and ~2x cheaper on a CPU, ReLU far cheaper.
        latent_grad: the latent prediction term of the joint loss also trains the encoder (through the
            latents it predicts from). False: it trains the transition alone, and the encoder learns to be
            predictable through the pixel prediction term only, which cannot pull the latents to a point.
        ensemble: transition networks (members); above 1, an ensemble (module docstring).
        continue_hidden: hidden sizes of the continue head (module docstring); None: no head, episodes are
            taken never to end.
        reward_velocity: the reward head also reads each latent's change from the one before it (by difference, a
            velocity: what a reward that pays a slow pole more than a spun one depends on, such as the cart-pole's
            "dmc" reward; one latent holds a place only). Needs a context of at least 2.
        alive_bonus: with a continue head, added to every imagined step's reward while the rollout has not
            ended, so a plan that ends early loses it for each step it no longer plays. For rewards that do not
            say that ending is bad: a swing-up's height reward pays a cart that leaves the track at speed more,
            within a short plan, than one that stays.

    Shapes: observations `(..., C, H, W)` uint8 (or float in [0, 1]); latents `(..., latent_dim)`;
    actions `(..., action_dim)`; histories `(..., context, latent_dim)`.
    """

    def __init__(
        self,
        obs_shape: Sequence[int],
        action_dim: int,
        action_bound: float | Sequence[float] = 1.0,
        latent_dim: int = 4,
        context: int = 2,
        encoder: Encoder = "mlp",
        encoder_hidden: Sequence[int] = (256, 64),
        fovea_width: int = 24,
        transition_hidden: Sequence[int] = (128, 128),
        reward_hidden: Sequence[int] = (64, 64),
        stochastic: bool = False,
        min_std: float = 0.01,
        inertia: bool = False,
        activation: Activation = "elu",
        latent_grad: bool = True,
        ensemble: int = 1,
        continue_hidden: Sequence[int] | None = None,
        alive_bonus: float = 0.0,
        reward_velocity: bool = False,
    ) -> None:
        super().__init__()
        if encoder not in get_args(Encoder):
            raise ValueError(f"DeepDynamicalModel: encoder must be one of {get_args(Encoder)}, got {encoder!r}")
        if latent_dim < 1 or context < 1:
            raise ValueError(f"DeepDynamicalModel: latent_dim and context must be >= 1, got {latent_dim}, {context}")
        if ensemble < 1:
            raise ValueError(f"DeepDynamicalModel: ensemble must be >= 1, got {ensemble}")
        if alive_bonus and continue_hidden is None:
            raise ValueError(f"DeepDynamicalModel: alive_bonus {alive_bonus} needs a continue head (continue_hidden): "
                             "without one no imagined rollout ends, and the bonus changes no plan")
        self.alive_bonus = float(alive_bonus)
        self.obs_shape = tuple(int(size) for size in obs_shape)
        self.action_dim = action_dim
        self.latent_dim = latent_dim
        self.context = context
        self.stochastic = stochastic
        self.min_std = min_std
        if inertia and context < 2:
            raise ValueError("DeepDynamicalModel: inertia needs a context of at least 2 latents")
        self.inertia = inertia
        if reward_velocity and context < 2:
            raise ValueError("DeepDynamicalModel: reward_velocity needs a context of at least 2 latents")
        self.reward_velocity = reward_velocity
        self.latent_grad = latent_grad
        self.ensemble = ensemble
        bound = torch.as_tensor(action_bound, dtype=torch.float32).expand(action_dim).clone()
        self.register_buffer("action_bound", bound)
        if encoder == "mlp":
            self.encoder = MLPEncoder(self.obs_shape, latent_dim, hidden=encoder_hidden, activation=activation)
            self.decoder = MLPDecoder(self.obs_shape, latent_dim, hidden=tuple(reversed(encoder_hidden)),
                                      activation=activation)
        elif encoder == "fovea":
            self.encoder = FoveaEncoder(self.obs_shape, latent_dim, fovea_width, encoder_hidden, activation)
            self.decoder = FoveaDecoder(self.obs_shape, latent_dim, fovea_width, tuple(reversed(encoder_hidden)),
                                        activation)
        else:
            self.encoder = ConvEncoder(self.obs_shape, channels=encoder_hidden, latent_dim=latent_dim,
                                       activation=activation)
            self.decoder = ConvDecoder(self.obs_shape, latent_dim, channels=tuple(reversed(encoder_hidden)),
                                       activation=activation)
        out_dim = 2 * latent_dim if stochastic else latent_dim
        if ensemble > 1:
            self.transition_net = EnsembleMLP(ensemble, context * latent_dim + action_dim, out_dim, transition_hidden,
                                              activation)
        else:
            self.transition_net = MLP(context * latent_dim + action_dim, out_dim, transition_hidden, activation)
        self.reward_net = MLP(2 * latent_dim if reward_velocity else latent_dim, 1, reward_hidden, activation)
        self.continue_net = MLP(latent_dim, 1, continue_hidden, activation) if continue_hidden is not None else None

    # the four maps ------------------------------------------------------------------------------------
    def encode(self, observations: torch.Tensor) -> torch.Tensor:
        """`(..., C, H, W)` uint8 or float images -> `(..., latent_dim)` latents."""
        images = to_float(observations) if observations.dtype == torch.uint8 else observations
        lead = images.shape[:-3]
        return self.encoder(images.reshape(-1, *self.obs_shape)).view(*lead, self.latent_dim)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """`(..., latent_dim)` latents -> `(..., C, H, W)` pixel logits."""
        lead = latents.shape[:-1]
        return self.decoder(latents.reshape(-1, self.latent_dim)).view(*lead, *self.obs_shape)

    def transition(self, history: torch.Tensor, action: torch.Tensor) -> Transition:
        """The next latent's distribution from the last `context` latents (oldest first) and the action.

        Shapes: `history (..., context, latent_dim)`, `action (..., action_dim)` -> `(..., latent_dim)` each; an
        ensemble's history has the members first, `(K, ..., context, latent_dim)`, and its action may leave them out.
        """
        assert history.shape[-2:] == (self.context, self.latent_dim), (
            f"transition expects (..., {self.context}, {self.latent_dim}) histories, got {tuple(history.shape)}"
        )
        assert self.ensemble == 1 or history.shape[0] == self.ensemble, (
            f"an ensemble of {self.ensemble} expects ({self.ensemble}, ..., {self.context}, {self.latent_dim}) "
            f"histories (with_members), got {tuple(history.shape)}")
        action = action.expand(*history.shape[:-2], action.shape[-1])
        inputs = torch.cat([history.flatten(-2), action / self.action_bound], dim=-1)
        output = self.transition_net(inputs)
        last = history[..., -1, :]
        if self.inertia:  # the network predicts the change of the latent velocity (its acceleration)
            last = last + (last - history[..., -2, :])
        if not self.stochastic:
            return Transition(last + output, torch.zeros_like(last))
        delta, std = output.chunk(2, dim=-1)
        return Transition(last + delta, F.softplus(std) + self.min_std)

    def with_members(self, history: torch.Tensor) -> torch.Tensor:
        """The same history for every member of an ensemble: `(...) -> (K, ...)`; unchanged for a single transition."""
        return history.expand(self.ensemble, *history.shape) if self.ensemble > 1 else history

    def members_mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean over an ensemble's members (the first dimension): `(K, ...) -> (...)`; unchanged for one."""
        return values.mean(0) if self.ensemble > 1 else values

    def reward(self, latents: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        """`(..., latent_dim)` -> `(...)` predicted rewards; `previous (..., latent_dim)`, the latent before each,
        is read (and needed) with `reward_velocity` only."""
        if self.reward_velocity:
            if previous is None:
                raise ValueError("DeepDynamicalModel.reward: reward_velocity needs the latents before (previous=)")
            latents = torch.cat([latents, latents - previous], -1)
        return self.reward_net(latents).squeeze(-1)

    def history_reward(self, history: torch.Tensor) -> torch.Tensor:
        """The predicted reward of each history's last latent: `(..., context, latent_dim)` -> `(...)`."""
        return self.reward(history[..., -1, :], history[..., -2, :] if self.reward_velocity else None)

    def continues(self, latents: torch.Tensor) -> torch.Tensor:
        """`(..., latent_dim)` -> `(...)` the probability that each latent is not a terminal state (1 without a
        continue head)."""
        if self.continue_net is None:
            return torch.ones(latents.shape[:-1], device=latents.device)
        return torch.sigmoid(self.continue_net(latents).squeeze(-1))

    def imagined_return(self, latents: torch.Tensor, before: torch.Tensor | None = None) -> torch.Tensor:
        """The return of an imagined rollout: `(..., horizon, latent_dim)` latents after each action -> `(...)`,
        the summed predicted rewards (plus `alive_bonus` each), each weighted by the probability that the rollout
        has not ended by then (the product of the continue head's probabilities up to that latent); the plain sum
        without a head. `before (..., latent_dim)`: the latent the rollout started from (its history's last),
        needed with `reward_velocity` only."""
        previous = None
        if self.reward_velocity:
            if before is None:
                raise ValueError("DeepDynamicalModel.imagined_return: reward_velocity needs the start (before=)")
            previous = _after(before, latents)[..., :-1, :]
        rewards = self.reward(latents, previous)
        if self.continue_net is None:
            return rewards.sum(-1)
        if self.alive_bonus:  # (an add on every plan's rollouts only when asked)
            rewards = rewards + self.alive_bonus
        return (rewards * self.continues(latents).cumprod(-1)).sum(-1)

    # rollouts -------------------------------------------------------------------------------------------
    def step(self, history: torch.Tensor, action: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """The history shifted by one predicted latent (its mean, or a reparameterised sample).

        Shapes: `history (..., context, latent_dim)`, `action (..., action_dim)` -> `(..., context, latent_dim)`.
        """
        mean, std = self.transition(history, action)
        latent = mean + std * torch.randn_like(std) if sample and self.stochastic else mean
        return torch.cat([history[..., 1:, :], latent.unsqueeze(-2)], dim=-2)

    def imagine(self, history: torch.Tensor, actions: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """Open-loop rollout: the latents after each of `actions`.

        Shapes: `history (..., context, latent_dim)`, `actions (..., horizon, action_dim)` ->
        `(..., horizon, latent_dim)`.
        """
        latents = []
        for index in range(actions.shape[-2]):
            history = self.step(history, actions[..., index, :], sample)
            latents.append(history[..., -1, :])
        return torch.stack(latents, dim=-2)

    # training -------------------------------------------------------------------------------------------
    def loss(
        self,
        observations: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        reward_mask: torch.Tensor | None = None,
        continues: torch.Tensor | None = None,
        latent_weight: float = 10.0,
        reward_weight: float = 10.0,
    ) -> DDMLoss:
        """The joint loss on windows of `context + horizon` frames.

        The first `context` frames are encoded; the transition then predicts the remaining `horizon`
        latents open-loop from them and the actions. `rewards[:, t]` is the reward of the step out of
        frame `t`; `reward_mask` (1 = valid) excludes rewards that do not exist (after a trial's end);
        `continues[:, t]` is 0 where the step out of frame `t` ended the episode (for the continue head, which
        learns it from frame `t + 1`; None: no step ended one).

        Shapes: `observations (batch, context + horizon, C, H, W)` uint8, `actions (batch, context + horizon
        - 1, action_dim)`, `rewards, reward_mask, continues (batch, context + horizon - 1)`.
        """
        batch, length = observations.shape[:2]
        horizon = length - self.context
        assert horizon >= 1 and actions.shape == (batch, length - 1, self.action_dim), (
            f"loss expects (batch, context + horizon, C, H, W) frames and (batch, length - 1, "
            f"{self.action_dim}) actions, got {tuple(observations.shape)} and {tuple(actions.shape)}"
        )
        images = to_float(observations)
        latents = self.encode(images)  # (batch, length, latent_dim)
        predicted, prediction_latent, reward_error = self.latent_losses(latents, actions, rewards, reward_mask,
                                                                        continues)
        if not self.latent_grad:  # the same rollout from latents without gradients to the encoder
            prediction_latent = self.latent_losses(latents.detach(), actions, rewards, reward_mask)[1]
        # every frame's reconstruction and the predictions decoded in one pass (one set of larger matrix products)
        nll = _bernoulli_nll(self.decode(torch.cat([latents, predicted], 1)),
                             torch.cat([images, images[:, self.context :]], 1))
        reconstruction, prediction_pixels = nll[:, :length].mean(), nll[:, length:].mean()
        total = reconstruction + prediction_pixels + latent_weight * prediction_latent + reward_weight * reward_error
        return DDMLoss(total, reconstruction, prediction_pixels, prediction_latent, reward_error)

    def latent_losses(
        self,
        latents: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        reward_mask: torch.Tensor | None = None,
        continues: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Open-loop latent prediction over windows of encoded latents, and its latent and reward errors.

        Also used alone, on latents encoded once without gradients, to fit the transition and reward head
        cheaply (no images involved).

        Shapes: `latents (batch, context + horizon, latent_dim)`, `actions (batch, context + horizon - 1,
        action_dim)`, `rewards, reward_mask (batch, context + horizon - 1)` -> predicted latents `(batch,
        horizon, latent_dim)`, latent error (scalar), reward error (scalar; with a continue head, plus its binary
        cross-entropy on whether each encoded and predicted latent after a step is terminal, `continues`).
        """
        if reward_mask is None:
            reward_mask = torch.ones_like(rewards)
        horizon = latents.shape[1] - self.context
        history = self.with_members(latents[:, : self.context])
        predicted, stds = [], []
        for index in range(horizon):  # the rollout carries the means, also when stochastic (module docstring)
            mean, std = self.transition(history, actions[:, self.context - 1 + index])
            predicted.append(mean)
            stds.append(std)
            history = torch.cat([history[..., 1:, :], mean.unsqueeze(-2)], dim=-2)
        predicted = torch.stack(predicted, -2)  # ([K,] batch, horizon, latent_dim)
        # The encoder's latents are targets here; the encoder learns predictability through the pixels.
        # Errors are measured in units of the latents' spread, so shrinking the latent space cannot
        # lower them (no pull towards collapse) and the weight means the same at any scale.
        target = latents[:, self.context :].detach()
        scale = latents.detach().flatten(0, 1).std(0).clamp(min=1e-3)
        if self.stochastic:
            mean, std = predicted / scale, torch.stack(stds, -2) / scale
            latent_error = (((target / scale - mean) / std) ** 2 / 2 + std.log() + 0.5 * math.log(2 * math.pi)).sum(-1)
        else:
            latent_error = (((predicted - target) / scale) ** 2).sum(-1)

        # Rewards from the encoded latents of every frame and from the predicted ones (what a planner uses).
        encoded = self.with_members(latents[:, :-1])
        reward_latents = torch.cat([encoded, predicted[..., :-1, :]], dim=-2)
        reward_targets = torch.cat([rewards, rewards[:, self.context :]], dim=1)
        mask = torch.cat([reward_mask, reward_mask[:, self.context :]], dim=1)
        previous = None
        if self.reward_velocity:  # the first frame has no latent before it: its reward is left out
            previous = torch.cat([_after(encoded[..., 0, :], encoded)[..., :-1, :],
                                  _after(self.with_members(latents[:, self.context - 1]), predicted)[..., :-2, :]], -2)
            mask[:, 0] = 0
        reward_error = (((self.reward(reward_latents, previous) - reward_targets) ** 2 * mask).sum()
                        / (mask.sum() * self.ensemble).clamp(min=1))
        if self.continue_net is not None:  # the latent after each step: terminal where that step ended the episode
            if continues is None:
                continues = torch.ones_like(rewards)
            after = torch.cat([self.with_members(latents[:, 1:]), predicted], dim=-2)
            targets = torch.cat([continues, continues[:, self.context - 1 :]], dim=1).expand(after.shape[:-1])
            mask = torch.cat([reward_mask, reward_mask[:, self.context - 1 :]], dim=1)
            cross_entropy = F.binary_cross_entropy_with_logits(self.continue_net(after).squeeze(-1), targets,
                                                               reduction="none")
            reward_error = reward_error + (cross_entropy * mask).sum() / (mask.sum() * self.ensemble).clamp(min=1)
        # an ensemble's members are scored one by one above; the pixels of its prediction are the members' mean
        return self.members_mean(predicted), latent_error.mean(), reward_error

    # evaluation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_frames(self, observations: torch.Tensor, actions: torch.Tensor, steps: int) -> torch.Tensor:
        """Open-loop predictions of a whole episode, `steps` ahead, from every start that has a history.

        Returns `(steps, time + 1, C, H, W)` probabilities where `[k - 1, t]` is the prediction of frame
        `t` made from the frames up to `t - k` (and the actions in between); zeros where `t - k` has no
        full history (`t - k < context - 1`).

        Shapes: `observations (time + 1, C, H, W)` uint8, `actions (time, action_dim)`.
        """
        frames = observations.shape[0]
        latents = self.encode(observations)
        predictions = torch.zeros(steps, frames, *self.obs_shape, device=latents.device)
        starts = torch.arange(self.context - 1, frames - 1, device=latents.device)
        if starts.numel() == 0:
            return predictions
        history = torch.stack([latents[starts - self.context + 1 + offset] for offset in range(self.context)], 1)
        history = self.with_members(history)
        for k in range(1, steps + 1):
            valid = starts + k < frames
            if not valid.any():
                break
            history = self.step(history[..., valid, :, :], actions[starts[valid] + k - 1])
            starts = starts[valid]
            predictions[k - 1, starts + k] = torch.sigmoid(self.decode(self.members_mean(history[..., -1, :])))
        return predictions

    @torch.no_grad()
    def reconstruct(self, observations: torch.Tensor) -> torch.Tensor:
        """`(..., C, H, W)` uint8 -> `(..., C, H, W)` reconstruction probabilities in [0, 1]."""
        return torch.sigmoid(self.decode(self.encode(observations)))


def _after(first: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """`first (..., latent_dim)` put before `latents (..., T, latent_dim)` -> `(..., T + 1, latent_dim)`."""
    return torch.cat([first.unsqueeze(-2), latents], -2)


def _bernoulli_nll(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Bernoulli NLL of each image, summed over its pixels: `(..., C, H, W)` -> `(...)`."""
    return F.binary_cross_entropy_with_logits(logits, images, reduction="none").sum((-3, -2, -1))


def prediction_errors(
    predictions: torch.Tensor, observations: torch.Tensor, steps: Sequence[int], context: int
) -> dict[int, float]:
    """Mean squared pixel error (pixels in [0, 1]) of the k-step predictions, for each k in `steps`.

    Shapes: `predictions (K, time + 1, C, H, W)` from `predict_frames` of a model with `context`;
    `observations (time + 1, C, H, W)` uint8. Only frames that have a k-step prediction count (NaN if none).
    """
    images = to_float(observations)
    errors = {}
    for k in steps:
        first = context - 1 + k
        squared = (predictions[k - 1, first:] - images[first:]) ** 2
        errors[k] = float(squared.mean()) if squared.numel() else float("nan")
    return errors
