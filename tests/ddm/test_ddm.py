"""The deep dynamical model, its controllers and the data-efficient trial loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from agents.core.agent import train
from agents.core.config import ConfigError, load_config
from agents.core.envs import make_env
from agents.core.run import Run, checkpoint_paths, load_checkpoint, load_episode
from agents.ddm import bench
from agents.ddm.agent import DDMAgent
from agents.ddm.bench import bench_ddm, best_model_free, compare_model_quality, frame_ratio
from agents.ddm.data import Trial, TrialBuffer
from agents.ddm.fits import pixel_score
from agents.ddm.planners import CEM, GradientShooting
from agents.ddm.policy import Policy, PolicySearch, imagined_return, lambda_returns
from nets.ddm import DeepDynamicalModel

OBS_SHAPE = (1, 40, 40)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(tmp_path, *overrides: str):
    return load_config("ddm_pendulum_tiny", [f"train.runs_dir={tmp_path}", *overrides])


@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("encoder, hidden", [("mlp", (32,)), ("conv", (8, 16)), ("fovea", (32,))])
def test_model_shapes(encoder, hidden, stochastic):
    model = DeepDynamicalModel(OBS_SHAPE, 1, 2.0, latent_dim=3, context=2, encoder=encoder, encoder_hidden=hidden,
                               stochastic=stochastic)
    ensemble = DeepDynamicalModel(OBS_SHAPE, 1, 2.0, latent_dim=3, encoder=encoder, encoder_hidden=hidden,
                                  stochastic=stochastic, ensemble=4)
    frames = torch.randint(0, 256, (5, 7, *OBS_SHAPE), dtype=torch.uint8)
    members = ensemble.with_members(ensemble.encode(frames[:, :2]))
    assert members.shape == (4, 5, 2, 3)
    assert ensemble.imagine(members, torch.zeros(5, 4, 1), sample=True).shape == (4, 5, 4, 3)
    assert ensemble.predict_frames(frames[0], torch.zeros(6, 1), steps=3).shape == (3, 7, *OBS_SHAPE)
    predicted, latent_error, _ = ensemble.latent_losses(ensemble.encode(frames), torch.zeros(5, 6, 1),
                                                        torch.zeros(5, 6))
    assert predicted.shape == (5, 5, 3) and latent_error.shape == ()
    frames = torch.randint(0, 256, (5, 7, *OBS_SHAPE), dtype=torch.uint8)
    latents = model.encode(frames)
    assert latents.shape == (5, 7, 3)
    assert model.decode(latents).shape == (5, 7, *OBS_SHAPE)
    history = latents[:, :2]
    assert model.step(history, torch.zeros(5, 1)).shape == (5, 2, 3)
    assert model.imagine(history, torch.zeros(5, 4, 1), sample=True).shape == (5, 4, 3)
    assert model.reward(latents).shape == (5, 7)
    predictions = model.predict_frames(frames[0], torch.zeros(6, 1), steps=3)
    assert predictions.shape == (3, 7, *OBS_SHAPE)
    # predictions[k-1, t] exists only from a full history at t - k (t - k >= context - 1 = 1).
    assert torch.all(predictions[2, :4] == 0) and torch.all(predictions[2, 4:] > 0)


@pytest.mark.parametrize("encoder, hidden", [("mlp", (32,)), ("conv", (8, 16)), ("fovea", (32,))])
def test_activation_reaches_every_network_of_the_model(encoder, hidden):
    model = DeepDynamicalModel(OBS_SHAPE, 1, 2.0, latent_dim=3, encoder=encoder, encoder_hidden=hidden,
                               activation="silu")
    for net in (model.encoder, model.decoder, model.transition_net, model.reward_net):
        kinds = {type(module) for module in net.modules()}
        assert nn.SiLU in kinds and nn.ELU not in kinds, f"{type(net).__name__}: {kinds}"


def test_inertia_transition_keeps_the_latent_velocity_when_its_network_adds_nothing():
    model = DeepDynamicalModel(OBS_SHAPE, 1, 2.0, latent_dim=2, context=2, inertia=True, encoder_hidden=(16,))
    last = model.transition_net.layers[-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    history = torch.tensor([[[0.0, 1.0], [0.5, 0.8]]])
    rollout = model.imagine(history, torch.ones(1, 3, 1))
    # Constant velocity (0.5, -0.2) per step: the pole keeps turning unless the network predicts a force.
    assert torch.allclose(rollout, torch.tensor([[[1.0, 0.6], [1.5, 0.4], [2.0, 0.2]]]))
    plain = DeepDynamicalModel(OBS_SHAPE, 1, 2.0, latent_dim=2, context=2, encoder_hidden=(16,))
    nn.init.zeros_(plain.transition_net.layers[-1].weight)
    nn.init.zeros_(plain.transition_net.layers[-1].bias)
    assert torch.allclose(plain.imagine(history, torch.ones(1, 3, 1)), history[:, 1:].expand(1, 3, 2))
    with pytest.raises(ValueError, match="inertia needs a context of at least 2"):
        DeepDynamicalModel(OBS_SHAPE, 1, 2.0, latent_dim=2, context=1, inertia=True)


@pytest.mark.parametrize("latent_grad", [True, False])
def test_latent_grad_false_keeps_the_latent_prediction_term_out_of_the_encoder(latent_grad):
    torch.manual_seed(0)
    frames, actions, rewards = moving_dot_data(4, 6)
    model = DeepDynamicalModel(OBS_SHAPE, 1, 1.0, latent_dim=2, encoder_hidden=(16,), latent_grad=latent_grad)
    loss = model.loss(frames, actions, rewards)
    loss.prediction_latent.backward(retain_graph=True)
    encoder_grad = sum(parameter.grad.abs().sum() for parameter in model.encoder.parameters()
                       if parameter.grad is not None)
    transition_grad = sum(parameter.grad.abs().sum() for parameter in model.transition_net.parameters())
    assert transition_grad > 0
    assert (encoder_grad > 0) == latent_grad
    model.zero_grad()
    loss.prediction_pixels.backward()  # the encoder is still shaped for prediction through the pixels
    assert sum(parameter.grad.abs().sum() for parameter in model.encoder.parameters()) > 0


def moving_dot_data(count: int, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frames of a dot moved left/right by the action, and reward = -|position|: (count, length, 1, 40, 40)."""
    generator = torch.Generator().manual_seed(0)
    actions = torch.randint(-1, 2, (count, length - 1, 1), generator=generator).float()
    position = torch.cat([torch.zeros(count, 1), actions[..., 0].cumsum(1)], 1).clamp(-15, 15)
    frames = torch.zeros(count, length, *OBS_SHAPE, dtype=torch.uint8)
    columns = (position + 20).long()
    frames[torch.arange(count)[:, None], torch.arange(length), 0, 18:22, :] = 0
    for row in range(18, 22):
        frames[torch.arange(count)[:, None], torch.arange(length), 0, row, columns] = 255
    return frames, actions, -position[:, :-1].abs()


def test_joint_training_loss_falls():
    torch.manual_seed(0)
    frames, actions, rewards = moving_dot_data(8, 8)
    model = DeepDynamicalModel(OBS_SHAPE, 1, 1.0, latent_dim=2, encoder_hidden=(32,))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model.loss(frames, actions, rewards)
    for _ in range(100):
        loss = model.loss(frames, actions, rewards)
        optimizer.zero_grad()
        loss.total.backward()
        optimizer.step()
    assert loss.total.item() < 0.3 * first.total.item()
    assert loss.prediction_pixels.item() < 0.3 * first.prediction_pixels.item()


@pytest.mark.parametrize("ensemble", [1, 3])
def test_pixel_terms_are_each_frames_reconstruction_and_the_decoded_open_loop_prediction(ensemble):
    """The loss decodes reconstructions and predictions in one pass; each term must still be its own mean."""
    torch.manual_seed(0)
    frames, actions, rewards = moving_dot_data(3, 7)
    model = DeepDynamicalModel(OBS_SHAPE, 1, 1.0, latent_dim=2, encoder_hidden=(16,), ensemble=ensemble)
    loss = model.loss(frames, actions, rewards)
    images = frames.float() / 255
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    latents = model.encode(frames)
    reconstruction = bce(model.decode(latents), images, reduction="none").sum((-3, -2, -1)).mean()
    predicted = model.latent_losses(latents, actions, rewards)[0]  # (3, 5, 2): after the 2 context frames
    prediction = bce(model.decode(predicted), images[:, 2:], reduction="none").sum((-3, -2, -1)).mean()
    assert torch.allclose(loss.reconstruction, reconstruction) and torch.allclose(loss.prediction_pixels, prediction)
    assert not torch.allclose(reconstruction, prediction)


def test_stochastic_training_rollout_carries_the_means_and_scores_the_spread_against_their_error():
    torch.manual_seed(0)
    model = DeepDynamicalModel(OBS_SHAPE, 1, 2.0, latent_dim=3, context=2, encoder_hidden=(32,), stochastic=True,
                               inertia=True)
    latents, actions, rewards = torch.randn(4, 7, 3), torch.randn(4, 6, 1), torch.randn(4, 6)
    first = model.latent_losses(latents, actions, rewards)
    second = model.latent_losses(latents, actions, rewards)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])  # no sampling in training
    history = latents[:, :2]
    for step in range(5):  # the predictions are the open-loop means
        history = model.step(history, actions[:, 1 + step])
        assert torch.allclose(first[0][:, step], history[:, -1])


class LinearModel(nn.Module):
    """A known latent system for the planners: z' = z + a, reward = -(z - 1.5)^2 (1-d, context 1)."""

    context, latent_dim, stochastic, ensemble = 1, 1, False, 1
    continue_net = None

    def with_members(self, history: torch.Tensor) -> torch.Tensor:
        return history

    def imagined_return(self, latents: torch.Tensor, before: torch.Tensor | None = None) -> torch.Tensor:
        return self.reward(latents).sum(-1)

    def members_mean(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def step(self, history: torch.Tensor, action: torch.Tensor, sample: bool = False) -> torch.Tensor:
        return history + action.unsqueeze(-2)

    def imagine(self, history: torch.Tensor, actions: torch.Tensor, sample: bool = False) -> torch.Tensor:
        return history[..., -1:, :] + actions.cumsum(-2)

    def reward(self, latents: torch.Tensor) -> torch.Tensor:
        return -((latents[..., 0] - 1.5) ** 2)

    def history_reward(self, history: torch.Tensor) -> torch.Tensor:
        return self.reward(history[..., -1, :])


def test_cem_finds_the_best_action_sequence_of_a_known_system():
    # From z = 0 with |a| <= 1, the best 3-step plan is a = (1, 0.5, 0): z reaches 1.5 and stays.
    torch.manual_seed(0)
    plan = CEM(horizon=3, candidates=500, elites=50, iterations=8).plan(
        LinearModel(), torch.zeros(1, 1), torch.zeros(3, 1), torch.ones(1))
    assert torch.allclose(plan[:, 0], torch.tensor([1.0, 0.5, 0.0]), atol=0.1)
    assert plan.abs().max() <= 1.0


class GambleModel(LinearModel):
    """A stochastic toy: a negative action gains 1 for sure, a non-negative one 0 on average but +-3 (sampled)."""

    stochastic = True

    def imagine(self, history: torch.Tensor, actions: torch.Tensor, sample: bool = False) -> torch.Tensor:
        gamble = 3.0 * torch.randn_like(actions) if sample else torch.zeros_like(actions)
        return history[..., -1:, :] + torch.where(actions < 0, torch.ones_like(actions), gamble).cumsum(-2)

    def reward(self, latents: torch.Tensor) -> torch.Tensor:
        return latents[..., 0]


def test_cem_on_a_stochastic_model_scores_the_mean_of_particles_not_the_luckiest_sample():
    torch.manual_seed(0)
    args = (GambleModel(), torch.zeros(1, 1), torch.zeros(3, 1), torch.ones(1))
    one = CEM(horizon=3, candidates=500, elites=50, iterations=5, particles=1).plan(*args)
    many = CEM(horizon=3, candidates=500, elites=50, iterations=5, particles=64).plan(*args)
    assert torch.all(many < 0)  # the sure gain
    assert not torch.all(one < 0)  # one sample per sequence: the elites are lucky gambles


class SplitModel(LinearModel):
    """An ensemble toy of two members: a negative action gains a sure 1 per step in both; a non-negative one
    gains 3 in member 0 and nothing in member 1 (1.5 on average, the members disagreeing)."""

    ensemble = 2

    def with_members(self, history: torch.Tensor) -> torch.Tensor:
        return history.expand(2, *history.shape)

    def members_mean(self, values: torch.Tensor) -> torch.Tensor:
        return values.mean(0)

    def imagine(self, history: torch.Tensor, actions: torch.Tensor, sample: bool = False) -> torch.Tensor:
        member_gain = torch.tensor([3.0, 0.0]).view(2, *[1] * actions.dim())
        return history[..., -1:, :] + torch.where(actions < 0, torch.ones_like(actions), member_gain).cumsum(-2)

    def reward(self, latents: torch.Tensor) -> torch.Tensor:
        return latents[..., 0]


@pytest.mark.parametrize("risk, sure", [(0.0, False), (1.0, True)])
def test_cem_on_an_ensemble_scores_the_members_mean_minus_risk_times_their_spread(risk, sure):
    # Over 3 steps the gamble returns 18 or 0 (mean 9, std 12.7) against a sure 6: the mean prefers the gamble,
    # one standard deviation of risk the sure plan.
    torch.manual_seed(0)
    plan = CEM(horizon=3, candidates=500, elites=50, iterations=5, risk=risk).plan(
        SplitModel(), torch.zeros(1, 1), torch.zeros(3, 1), torch.ones(1))
    assert bool(torch.all(plan < 0)) == sure and bool(torch.all(plan >= 0)) == (not sure)


def test_an_ensembles_spread_is_larger_away_from_its_data():
    # Members fitted on latents of z' = z + 0.1 a with z in [-1, 1] agree there and disagree far from it.
    torch.manual_seed(0)
    model = DeepDynamicalModel(OBS_SHAPE, 1, 1.0, latent_dim=1, context=2, encoder_hidden=(8,),
                               transition_hidden=(32, 32), ensemble=5)
    optimizer = torch.optim.Adam([*model.transition_net.parameters(), *model.reward_net.parameters()], lr=3e-3)
    for _ in range(400):
        actions = torch.rand(64, 5, 1) * 2 - 1
        start = torch.rand(64, 1) * 1.5 - 0.75
        latents = torch.cat([start, start + 0.1 * actions[..., 0].cumsum(1)], 1).unsqueeze(-1)  # (64, 6, 1)
        _, latent_error, reward_error = model.latent_losses(latents, actions, torch.zeros(64, 5))
        optimizer.zero_grad()
        (latent_error + reward_error).backward()
        optimizer.step()

    def spread(z: float) -> float:
        history = model.with_members(torch.tensor([[[z], [z]]]))
        with torch.no_grad():
            return float(model.transition(history, torch.zeros(1, 1)).mean.std(0).mean())

    near = max(spread(z) for z in (-0.5, 0.0, 0.5))
    assert latent_error < 0.05  # the members learnt the data
    assert min(spread(4.0), spread(-4.0)) > 10 * near


def test_gradient_planner_finds_the_best_action_sequence_of_a_known_system():
    torch.manual_seed(0)
    plan = GradientShooting(horizon=3, candidates=64, iterations=100, lr=0.1).plan(
        LinearModel(), torch.zeros(1, 1), torch.zeros(3, 1), torch.ones(1))
    assert abs(plan[:, 0].sum().item() - 1.5) < 0.05 and plan[0, 0] > 0.9
    assert plan.abs().max() <= 1.0


class CartPolePhysics(LinearModel):
    """The cart-pole's true physics as the planners' model: a latent is the state (x, its velocity, the angle, its
    velocity) with the step's reward and whether the episode still runs, so a plan's return is the env's."""

    context, latent_dim = 1, 6

    def __init__(self, task):
        super().__init__()
        self.task = task

    def imagine(self, history: torch.Tensor, actions: torch.Tensor, sample: bool = False) -> torch.Tensor:
        state, running, latents = history[..., -1, :4], torch.ones_like(history[..., -1, 0]), []
        for index in range(actions.shape[-2]):
            state, reward, terminated = self.task.step(state, actions[..., index, :])
            running = running * ~terminated
            latents.append(torch.cat([state, reward[..., None].to(state), running[..., None]], -1))
        return torch.stack(latents, -2)

    def imagined_return(self, latents: torch.Tensor, before: torch.Tensor | None = None) -> torch.Tensor:
        return (latents[..., 4] * latents[..., 5]).sum(-1)


def swing_up_by_cem_on_the_true_physics(action_repeat: int, horizon: int) -> tuple[int, bool]:
    """One 4 s swing-up episode planned by the recipe's CEM through the true physics: (steps, success)."""
    from envs.cartpole import PixelCartPoleEnv

    torch.manual_seed(0)
    env = PixelCartPoleEnv(task="swingup", image_size=16, action_repeat=action_repeat, position_cost=1.0)
    env.reset(seed=0)
    model, planner = CartPolePhysics(env.task), CEM(horizon=horizon, candidates=500, elites=50, iterations=4)
    plan, steps = torch.zeros(horizon, 1), round(4.0 / (0.02 * action_repeat))
    for step in range(1, steps + 1):
        history = torch.cat([torch.from_numpy(env.state[0]), torch.zeros(2, dtype=torch.float64)])[None]
        plan = planner.plan(model, history, plan, torch.ones(1))
        _, _, terminated, _, info = env.step(plan[0].numpy().astype(np.float32))
        plan = torch.cat([plan[1:], torch.zeros_like(plan[:1])])
        if terminated:
            return step, False
    return step, bool(info["is_success"])


def test_the_cartpole_swing_up_needs_a_second_of_look_ahead_even_through_the_true_physics():
    # The DDM recipe's setting (configs/ddm_cartpole.yaml): each action held 4 steps, plans of 15 (1.2 s) swing it up
    # and hold it; the earlier recipe's plans of 20 single steps (0.4 s, a quarter of a swing) drive the cart off
    # the track, so no learned model could have done better with them.
    assert swing_up_by_cem_on_the_true_physics(action_repeat=4, horizon=15) == (50, True)
    steps, success = swing_up_by_cem_on_the_true_physics(action_repeat=1, horizon=20)
    assert not success and steps < 200, "the cart left the track"


def test_policy_search_improves_imagined_return():
    torch.manual_seed(0)
    model = LinearModel()
    policy = Policy(1, 1, torch.ones(1), [16])
    starts = torch.empty(64, 1, 1).uniform_(-3, 3)
    before = imagined_return(model, policy, starts, 5).mean().item()
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    after = PolicySearch(horizon=5, batch=64, updates=200).improve(model, policy, optimizer, starts)
    assert after > before + 1.0
    # The learned feedback drives z towards 1.5 from both sides.
    assert policy(torch.tensor([[[-2.0]]])).item() > 0.5 and policy(torch.tensor([[[3.0]]])).item() < -0.5


class StartsSpy(LinearModel):
    """LinearModel recording the start histories of every imagined rollout."""

    def __init__(self) -> None:
        super().__init__()
        self.starts: list[torch.Tensor] = []

    def with_members(self, history: torch.Tensor) -> torch.Tensor:
        self.starts.append(history.detach().clone())
        return history


@pytest.mark.parametrize("focus", [0.0, 0.5])
def test_focus_draws_its_share_of_starts_from_the_most_rewarded_histories(focus):
    # 200 starts, z from -3 to 3: the model's reward -(z - 1.5)^2 is highest for the 20 nearest 1.5 (focus_top
    # 0.1); with focus 0.5 half of every batch comes from them, the rest uniformly from all 200.
    torch.manual_seed(0)
    model, policy = StartsSpy(), Policy(1, 1, torch.ones(1), [16])
    starts = torch.linspace(-3, 3, 200).view(200, 1, 1)
    top = set((starts[(starts.flatten() - 1.5).abs().argsort()[:20]]).flatten().tolist())
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    PolicySearch(horizon=2, batch=64, updates=20, focus=focus, focus_top=0.1).improve(model, policy, optimizer, starts)
    assert len(model.starts) == 20
    for batch in model.starts:
        chosen = batch.flatten().tolist()
        assert len(chosen) == 64
        if focus:
            assert all(z in top for z in chosen[32:])
            assert sum(z in top for z in chosen[:32]) < 16  # the uniform half: ~10% from the top
    share = sum(z in top for batch in model.starts for z in batch.flatten().tolist()) / (20 * 64)
    assert (0.5 < share < 0.6) if focus else (share < 0.2)


def test_restarts_keep_the_policy_with_the_highest_imagined_return_from_every_start():
    torch.manual_seed(0)
    model, starts = LinearModel(), torch.empty(64, 1, 1).uniform_(-3, 3)
    search = PolicySearch(horizon=3, batch=16, updates=5, restarts=4)
    made = []

    def fresh():
        policy = Policy(1, 1, torch.ones(1), [8])
        made.append(policy)
        return policy, torch.optim.Adam(policy.parameters(), lr=1e-2)

    first, optimizer = fresh()
    chosen, chosen_optimizer, figures = search.search(model, first, optimizer, starts, fresh)
    assert len(made) == 4  # the first and three restarts
    scores = [search.score(model, policy, starts) for policy in made]
    assert len(set(scores)) == 4  # the restarts ended apart, so the choice matters
    assert chosen is made[scores.index(max(scores))] and figures["train/policy_chosen"] == scores.index(max(scores))
    assert chosen_optimizer.param_groups[0]["params"][0] is next(chosen.parameters())
    assert figures["train/policy_score"] == max(scores)


def test_restarts_with_a_teacher_are_refused():
    with pytest.raises(ConfigError, match="restarts"):
        PolicySearch(restarts=2, teacher="cem").validate()


def test_focus_must_be_a_share():
    with pytest.raises(ConfigError, match="focus"):
        PolicySearch(focus=1.5).validate()


@pytest.mark.parametrize("key, value", [("episode_horizon", -1), ("episode_batch", 0)])
def test_episode_rollouts_need_a_horizon_and_a_batch(key, value):
    with pytest.raises(ConfigError, match=key):
        PolicySearch(**{key: value}).validate()


def test_episode_rollouts_with_a_critic_are_refused():
    with pytest.raises(ConfigError, match="episode_horizon.*value: true"):
        PolicySearch(episode_horizon=50, value=True).validate()


@pytest.mark.parametrize("value", [False, True])
def test_the_search_computes_no_gradient_for_the_model_and_leaves_it_trainable(value):
    torch.manual_seed(0)
    model = DeepDynamicalModel(OBS_SHAPE, 1, 2.0, latent_dim=2, context=2, encoder_hidden=(16,), ensemble=3)
    policy = Policy(2, 2, torch.full((1,), 2.0), [16], [16] if value else None)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in policy.parameters()]
    PolicySearch(horizon=4, batch=32, updates=3, value=value).improve(model, policy, optimizer, torch.randn(40, 2, 2))
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert any(not torch.equal(p, b) for p, b in zip(policy.parameters(), before, strict=True))


@pytest.mark.parametrize("squash", ["sin", "tanh"])
def test_a_saturated_policy_recovers_with_sin_squashing_and_stays_stuck_with_tanh(squash):
    # Every output pushed far past full torque (what a search through the pendulum model did to the tanh
    # policy: the constant lean, its gradient norm 0 from then on): sin still has a gradient there, tanh has
    # none, so only sin learns the feedback.
    torch.manual_seed(0)
    model = LinearModel()
    policy = Policy(1, 1, torch.ones(1), [16], squash=squash)
    last = policy.net.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(12.0)  # tanh(12) is 1 in float32: its gradient exactly 0, which no optimiser rescales
    starts = torch.empty(64, 1, 1).uniform_(-3, 3)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    PolicySearch(horizon=5, batch=64, updates=300, squash=squash).improve(model, policy, optimizer, starts)
    pushes_up = policy(torch.tensor([[[-2.0]]])).item() > 0.5
    pushes_down = policy(torch.tensor([[[3.0]]])).item() < -0.5
    assert (pushes_up and pushes_down) == (squash == "sin")


class TwoGainModel(SplitModel):
    """An ensemble toy of two members that disagree on the action's effect: z' = z + g a with g = 1 in member 0
    and 3 in member 1; the reward -(z - 1)^2."""

    def step(self, history: torch.Tensor, action: torch.Tensor, sample: bool = False) -> torch.Tensor:
        gain = torch.tensor([1.0, 3.0]).view(2, *[1] * (action.dim() - 1))
        return history + (gain * action).unsqueeze(-2)

    def reward(self, latents: torch.Tensor) -> torch.Tensor:
        return -((latents[..., 0] - 1.0) ** 2)


def test_policy_search_through_an_ensemble_ascends_the_members_mean_return():
    # One step from z: member 0 alone wants a = 1 - z, member 1 alone (1 - z) / 3, and their mean return
    # -((z + a - 1)^2 + (z + 3a - 1)^2) / 2 peaks at a = 0.4 (1 - z): the policy must act for both at once.
    torch.manual_seed(0)
    policy = Policy(1, 1, torch.ones(1), [32])
    starts = torch.empty(256, 1, 1).uniform_(-1, 1)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    PolicySearch(horizon=1, batch=128, updates=500).improve(TwoGainModel(), policy, optimizer, starts)
    with torch.no_grad():
        acted = policy(torch.tensor([[[-0.5]], [[0.0]], [[0.5]]])).flatten()
    assert torch.allclose(acted, torch.tensor([0.6, 0.4, 0.2]), atol=0.03)


def test_lambda_returns_are_n_step_returns_at_lambda_1_and_one_step_targets_at_0():
    rewards, values = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[9.0, 10.0, 20.0, 30.0]])
    full = lambda_returns(rewards, values, 0.5, 1.0)  # r_t + 0.5 r_t+1 + ... + 0.5^(H - t) v_H
    assert torch.allclose(full, torch.tensor([[1 + 0.5 * 2 + 0.25 * 3 + 0.125 * 30, 2 + 0.5 * 3 + 0.25 * 30,
                                               3 + 0.5 * 30]]))
    one = lambda_returns(rewards, values, 0.5, 0.0)  # r_t + 0.5 v_t+1
    assert torch.allclose(one, torch.tensor([[1 + 5.0, 2 + 10.0, 3 + 15.0]]))


def test_actor_critic_search_learns_the_value_and_the_feedback_of_a_known_system():
    torch.manual_seed(0)
    model = LinearModel()
    policy = Policy(1, 1, torch.ones(1), [32, 32], critic_hidden=[32, 32])
    starts = torch.empty(256, 1, 1).uniform_(-3, 3)
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    search = PolicySearch(horizon=3, batch=128, updates=600, value=True, discount=0.9)
    before = imagined_return(model, policy, starts, 10).mean().item()
    search.improve(model, policy, optimizer, starts)
    after = imagined_return(model, policy, starts, 10).mean().item()
    assert after > before + 5.0
    # A 3-step horizon, yet from z = -3 (4.5 steps away) the policy pushes at full torque towards 1.5.
    assert policy(torch.tensor([[[-3.0]]])).item() > 0.8 and policy(torch.tensor([[[3.0]]])).item() < -0.5
    with torch.no_grad():  # the critic ranks histories as their value does: far from 1.5 is worse
        values = policy.value(torch.tensor([[[-3.0]], [[0.0]], [[1.5]]]))
    assert values[0] < values[1] < values[2]


@pytest.mark.parametrize("squash", ["sin", "tanh"])
def test_a_policy_imitating_a_known_controller_acts_as_it_does(squash):
    # The controller a = clip(1.5 - z, -0.8, 0.8) drives the toy's z to 1.5 (the policy's bound is 1); the
    # policy sees it on 256 states only.
    torch.manual_seed(0)
    policy = Policy(1, 1, torch.ones(1), [64, 64], squash=squash)
    controller = lambda z: (1.5 - z[..., -1, :]).clamp(-0.8, 0.8)  # noqa: E731
    histories = torch.empty(256, 1, 1).uniform_(-3, 3)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    loss = PolicySearch(imitation_updates=500).imitate(policy, optimizer, histories, controller(histories))
    assert loss < 0.01
    unseen = torch.linspace(-2.5, 2.5, 50).view(50, 1, 1)
    # on average close; sin's periodic map may fold where the output nears the bound (0.2 off at one point)
    assert (policy(unseen) - controller(unseen)).abs().mean() < 0.05
    with torch.no_grad():  # acting, it brings z from both sides to the controller's target and holds it there
        z = torch.tensor([[[-2.5]], [[2.5]]])
        for _ in range(10):
            z = z + policy(z).unsqueeze(-1)
    assert torch.allclose(z.flatten(), torch.tensor([1.5, 1.5]), atol=0.1)


def test_the_planner_labels_the_newest_trial_first_and_each_state_once(tmp_path):
    config = tiny_config(tmp_path, "agent.controller=policy", "agent.policy.teacher=cem", "agent.policy.labels=15",
                         "agent.policy.imitation_updates=5", "agent.policy.updates=0")
    agent = DDMAgent(config, torch.device("cpu"))
    rng = np.random.default_rng(0)
    for _ in range(2):  # trials of 20 steps: 20 windows of 2 frames each
        frames = rng.integers(0, 255, (21, *OBS_SHAPE), dtype=np.uint8)
        agent.trials.append(Trial(frames, rng.uniform(-2, 2, (20, 1)).astype(np.float32),
                                  rng.normal(size=20).astype(np.float32)))
    first = agent.imitate_planner(agent.latent_histories())
    assert first["train/labels"] == 15 and {trial for trial, _, _ in agent.teacher_labels} == {1}
    second = agent.imitate_planner(agent.latent_histories())  # 5 left in trial 2, then 10 from trial 1
    keys = [(trial, window) for trial, window, _ in agent.teacher_labels]
    assert second["train/labels"] == 30 and len(set(keys)) == 30
    assert sum(trial == 0 for trial, _ in keys) == 10
    assert all(abs(action).max() <= 2.0 for _, _, action in agent.teacher_labels)  # within the bound
    restored = DDMAgent(config, torch.device("cpu"))
    restored.load_state_dict(agent.state_dict())
    assert [(t, w) for t, w, _ in restored.teacher_labels] == keys


def test_path_labels_add_each_plans_imagined_states_with_its_actions_for_this_fit_only(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, "agent.controller=policy", "agent.policy.teacher=cem", "agent.policy.labels=15",
                         "agent.policy.imitation_updates=5", "agent.policy.updates=0", "agent.policy.path_labels=true")
    agent = DDMAgent(config, torch.device("cpu"))
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (21, *OBS_SHAPE), dtype=np.uint8)
    agent.trials.append(Trial(frames, rng.uniform(-2, 2, (20, 1)).astype(np.float32), np.zeros(20, np.float32)))
    fitted = []
    original = PolicySearch.imitate
    monkeypatch.setattr(PolicySearch, "imitate", lambda search, policy, optimizer, histories, actions: fitted.append(
        (histories, actions)) or original(search, policy, optimizer, histories, actions))
    agent.imitate_planner(agent.latent_histories())
    histories, actions = fitted[-1]
    horizon = config.agent.cem.horizon
    assert len(agent.teacher_labels) == 15  # stored: the real states only
    assert histories.shape[0] == actions.shape[0] == 15 * horizon  # + horizon - 1 imagined states per plan
    # the first imagined state of each plan is the model's step from its real state with the plan's first action
    real = torch.as_tensor(np.stack([action for _, _, action in agent.teacher_labels]))
    first = agent.model.step(histories[:15], real)
    assert torch.allclose(histories[15 :: horizon - 1], first, atol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [["agent.controller=cem"], ["agent.controller=gradient"], ["agent.controller=policy"],
     ["agent.controller=policy", "agent.policy.teacher=cem", "agent.policy.labels=10", "agent.policy.value=true"],
     ["agent.controller=cem", "agent.model.stochastic=true"],
     ["agent.controller=cem", "agent.model.ensemble=3", "agent.model.stochastic=true", "agent.cem.risk=0.5"],
     ["agent.controller=policy", "agent.model.ensemble=2", "agent.policy.teacher=cem", "agent.policy.labels=10",
      "agent.policy.value=true", "agent.policy.path_labels=true"],
     ["agent.controller=gradient", "agent.model.ensemble=2"],
     ["agent.controller=policy", "agent.model.ensemble=2", "agent.policy.episode_horizon=10",
      "agent.policy.episode_batch=4"]],
    ids=["cem", "gradient", "policy", "policy-teacher-value", "cem-stochastic", "cem-ensemble",
         "policy-ensemble", "gradient-ensemble", "policy-episode"],
)
def test_tiny_trial_loop_logs_every_trial_and_records_predictions(tmp_path, overrides):
    config = tiny_config(tmp_path, *overrides)
    run_dir = train(config)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["episodes"] == 3 and summary["env_steps"] == 60
    assert summary["success_trial"] is None or 1 <= summary["success_trial"] <= 3  # trials count from 1
    assert np.isfinite(summary["model_error_10"])
    assert len(summary["returns"]) == len(summary["successes"]) == 3
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    for key in ("trial/return", "trial/success", "trial/number", "model/error_1", "model/error_5", "model/error_10",
                "time/trial_s"):
        assert key in header
    assert [int(row.split(",")[0]) for row in rows[1:]] == [20, 40, 60]
    numbers = [float(row.split(",")[header.index("trial/number")]) for row in rows[1:]]
    assert numbers == [1.0, 2.0, 3.0]
    phases = ["time/fits_s", "time/dynamics_s", "time/acting_s"]
    phases += ["time/policy_s"] if "policy" in overrides[0] else []
    for row in rows[2:]:  # the controlled trials: each phase's seconds, together within the trial's
        values = dict(zip(header, row.split(","), strict=True))
        assert all(float(values[phase]) > 0 for phase in phases)
        assert sum(float(values[phase]) for phase in phases) <= float(values["time/trial_s"])
    assert rows[1].split(",")[header.index("time/acting_s")] == ""  # the random trial has no model phases
    random_trial = load_episode(run_dir / "episodes" / "ep_0000001.npz")  # played before any model was fitted
    assert int(random_trial["trial"]) == 1 and not bool(random_trial["model_fitted"])
    assert "reconstructions" not in random_trial and "predictions" not in random_trial
    episode = load_episode(run_dir / "episodes" / "ep_0000002.npz")
    assert int(episode["trial"]) == 2 and bool(episode["model_fitted"])
    assert episode["frames"].shape == (21, *OBS_SHAPE)
    assert episode["reconstructions"].shape == (21, *OBS_SHAPE) and episode["reconstructions"].dtype == np.uint8
    assert episode["predictions"].shape == (10, 21, *OBS_SHAPE)
    ensemble = any(override.startswith("agent.model.ensemble") for override in overrides)
    assert ("model/spread_upright" in header) == ensemble and (run_dir / "spread.png").exists() == ensemble
    if ensemble:  # a row of the members' spread at each probed angle per controlled trial
        spread = np.loadtxt(run_dir / "spread.csv", delimiter=",", skiprows=1)
        assert spread.shape == (2, 1 + 72) and list(spread[:, 0]) == [2, 3] and np.all(spread[:, 1:] > 0)


def test_run_ends_with_a_line_that_says_the_outcome(tmp_path, capsys):
    train(tiny_config(tmp_path))
    assert capsys.readouterr().out.strip().splitlines()[-1] == "not solved in 3 trials (60 frames)"
    agent = DDMAgent(tiny_config(tmp_path), torch.device("cpu"))
    agent.trials = [Trial(np.zeros((21, *OBS_SHAPE), np.uint8), np.zeros((20, 1), np.float32), np.zeros(20, np.float32))
                    for _ in range(3)]
    agent.successes = [False, True, True]
    agent.returns = [-10.0, -5.0, -1.0]
    assert agent.outcome() == "solved at trial 2 (40 frames)" and agent.success_trial() == 2
    summary = agent.summary()  # the keys every agent shares, with a trial as the episode
    assert summary["trials_to_success"] == 2 and summary["frames_to_first_success"] == 40
    assert summary["episodes"] == 3 and summary["success_rate"] == pytest.approx(2 / 3)
    agent.successes = [False, False, False]
    assert agent.summary()["trials_to_success"] == agent.config.agent.trials + 1  # never solved: its budget + 1


@pytest.mark.parametrize("refit, fresh_fits", [(True, [True, True]), (False, [True, False])])
def test_refit_from_scratch_fits_a_freshly_initialised_model_before_every_controlled_trial(
        tmp_path, monkeypatch, refit, fresh_fits):
    config = tiny_config(tmp_path, f"agent.fit.refit_from_scratch={str(refit).lower()}", "agent.fit.fits=1")
    agent = DDMAgent(config, torch.device("cpu"))
    fitted: list[dict] = []  # the encoder's weights after each fit (the dynamics-only fit leaves them alone)
    seen: list[bool] = []  # whether each fit started from weights no earlier fit produced
    joint = type(config.agent.fit).joint

    def watched(fit, model, optimizer, buffer, updates, *args, **kwargs):
        weights = {name: value.clone() for name, value in model.encoder.state_dict().items()}
        seen.append(not any(all(torch.equal(weights[name], old[name]) for name in weights) for old in fitted))
        assert updates == (fit.updates if seen[-1] else fit.warm_updates)
        result = joint(fit, model, optimizer, buffer, updates, *args, **kwargs)
        fitted.append({name: value.clone() for name, value in model.encoder.state_dict().items()})
        return result

    monkeypatch.setattr(type(config.agent.fit), "joint", watched)
    run = Run.create(config)
    agent.train(run)
    run.close()
    assert seen == fresh_fits


def test_latent_warmup_leaves_the_latent_term_out_of_the_first_updates_of_a_fit_from_scratch(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, "agent.fit.latent_warmup=0.4", "agent.fit.updates=5", "agent.fit.fits=1",
                         "agent.trials=2")
    agent = DDMAgent(config, torch.device("cpu"))
    weights: list[float] = []
    loss = agent.model.loss

    def watched(*args, **kwargs):
        weights.append(kwargs["latent_weight"])
        return loss(*args, **kwargs)

    monkeypatch.setattr(agent.model, "loss", watched)
    run = Run.create(config)
    agent.train(run)
    run.close()
    assert weights == [0.0, 0.0] + [config.agent.fit.latent_weight] * 3


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_each_fit_starts_at_model_lr_and_a_cosine_schedule_decays_it_to_zero(tmp_path, schedule):
    config = tiny_config(tmp_path, f"agent.fit.lr_schedule={schedule}", "agent.fit.lr=0.01")
    agent = DDMAgent(config, torch.device("cpu"))
    buffer = TrialBuffer.of([agent.play(make_env(config), seed=0, controlled=False)[0]])
    rates: list[float] = []
    loss = agent.model.loss

    def watched(*args, **kwargs):  # called once per update, before the step that uses this rate
        rates.append(agent.model_optimizer.param_groups[0]["lr"])
        return loss(*args, **kwargs)

    agent.model.loss = watched
    for _ in range(2):  # a warm-started optimiser starts its next fit at fit.lr again
        config.agent.fit.joint(agent.model, agent.model_optimizer, buffer, 10)
        assert rates[0] == pytest.approx(0.01)
        if schedule == "cosine":
            assert rates == sorted(rates, reverse=True) and rates[-1] < 0.001
        else:
            assert rates == [pytest.approx(0.01)] * 10
        rates.clear()


def test_fits_keeps_the_model_with_the_lowest_pixel_score_of_several_fits_from_scratch(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, "agent.fit.fits=3", "agent.trials=2")
    agent = DDMAgent(config, torch.device("cpu"))
    scored: list[tuple[float, DeepDynamicalModel]] = []

    def watched(model, buffer, horizon):
        scored.append((pixel_score(model, buffer, horizon), model))
        return scored[-1][0]

    monkeypatch.setattr("agents.ddm.agent.pixel_score", watched)
    run = Run.create(config)
    agent.train(run)
    run.close()
    assert len(scored) == 3 and len({id(model) for _, model in scored}) == 3  # three distinct fits
    _, model = min(scored, key=lambda item: item[0])
    assert agent.model is model  # the one with the lowest score, whichever fit it was
    rows = (run.dir / "metrics.csv").read_text().splitlines()
    assert "train/fit_score" in rows[0].split(",")


def test_fits_at_once_on_two_threads_give_the_same_models_as_one_after_another(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, "agent.fit.fits=3", "agent.fit.updates=20")
    threads = torch.get_num_threads()
    pools: list[tuple[int, int]] = []  # (torch threads of the run, workers of a pool it opened)
    original = ThreadPoolExecutor.map
    monkeypatch.setattr(ThreadPoolExecutor, "map", lambda pool, *args: pools.append(
        (current[0], pool._max_workers)) or original(pool, *args))
    current = [0]

    def fitted(torch_threads: int) -> DDMAgent:
        current[0] = torch_threads
        torch.set_num_threads(torch_threads)
        torch.manual_seed(0)
        agent = DDMAgent(config, torch.device("cpu"))
        agent.trials = [agent.play(make_env(config), seed, controlled=False)[0] for seed in range(2)]
        agent.fit_from_scratch(TrialBuffer.of(agent.trials))
        return agent

    try:
        one, two = fitted(1), fitted(2)
    finally:
        torch.set_num_threads(threads)
    assert pools == [(2, 3)]  # one thread: one fit after another; two threads: all three fits at once
    for name, value in one.model.state_dict().items():
        assert torch.equal(value, two.model.state_dict()[name]), name


@pytest.mark.parametrize("ensemble", [1, 3])
def test_checkpoint_round_trip_gives_the_same_predictions_and_resumes_at_the_next_trial(tmp_path, ensemble):
    config = tiny_config(tmp_path, "agent.trials=2", f"agent.model.ensemble={ensemble}")
    agent = DDMAgent(config, torch.device("cpu"))
    run = Run.create(config)
    agent.train(run)
    state = load_checkpoint(checkpoint_paths(run.dir)[-1])["agent"]
    restored = DDMAgent(config, torch.device("cpu"))
    restored.load_state_dict(state)
    frames = torch.from_numpy(agent.trials[-1].frames)
    actions = torch.from_numpy(agent.trials[-1].actions)
    expected = agent.model.predict_frames(frames, actions, 5)
    assert torch.equal(restored.model.predict_frames(frames, actions, 5), expected)
    assert restored.frames() == 40 and len(restored.trials) == 2
    restored.config = tiny_config(tmp_path, "agent.trials=3", f"agent.model.ensemble={ensemble}")
    restored.train(run)
    summary = restored.summary()
    assert summary["episodes"] == 3 and summary["env_steps"] == 60


@pytest.mark.parametrize(
    "override, key",
    [
        ("agent.controller=lqr", "agent.controller: expected one of 'cem', 'gradient', 'policy'"),
        ("agent.cem.horizon=0", "agent.cem.horizon: must be >= 1"),
        ("agent.model.latent_dim=0", "agent.model.latent_dim: must be >= 1"),
        ("agent.cem.elites=50", "agent.cem.elites: must be <= candidates"),
        ("agent.action_bound=[]", "agent.action_bound"),
        ("agent.fit.latent_warmup=1.0", "agent.fit.latent_warmup"),
        ("agent.model.activation=swish", "agent.model.activation: expected one of"),
        ("agent.model.encoder=resnet", "agent.model.encoder: expected one of 'mlp', 'conv'"),
        ("agent.fit.fits=0", "agent.fit.fits: must be >= 1"),
        ("agent.fit.lr_schedule=step", "agent.fit.lr_schedule: expected one of 'constant', 'cosine'"),
        ("agent.fit.prediction_horizon=30", "agent.fit.prediction_horizon: model.context"),
        ("agent.model.nosuch=1", "agent.model.nosuch: unknown key"),
        # the flat keys of older configs point to where they went
        ("agent.cem_iterations=3", "agent.cem_iterations: this key is now agent.cem.iterations"),
        ("agent.model_lr=0.01", "agent.model_lr: this key is now agent.fit.lr"),
        ("agent.latent_dim=3", "agent.latent_dim: this key is now agent.model.latent_dim"),
        ("agent.first_train_steps=3", "agent.first_train_steps: this key is now agent.fit.updates"),
    ],
)
def test_config_rejects_bad_input_naming_the_key(tmp_path, override, key):
    with pytest.raises(ConfigError, match=key.replace("(", r"\(")):
        tiny_config(tmp_path, override)


def test_inertia_without_a_velocity_in_the_context_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="agent.model.inertia"):
        tiny_config(tmp_path, "agent.model.inertia=true", "agent.model.context=1")


def test_action_bound_of_the_wrong_shape_is_rejected_before_anything_is_written(tmp_path):
    config = tiny_config(tmp_path, "agent.action_bound=[1.0, 2.0]")
    with pytest.raises(ConfigError, match="agent.action_bound"):
        DDMAgent(config, torch.device("cpu"))
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_pendulum_swings_up_within_ten_trials(tmp_path):
    run_dir = train(load_config("ddm_pendulum", [f"train.runs_dir={tmp_path}"]))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["success_trial"] is not None and summary["episodes"] <= 10


def test_bench_reports_trials_frames_and_the_sb3_ratio():

    result = bench_ddm(seeds=2, config="ddm_pendulum_tiny", model_quality=False)
    assert result["frames_per_seed"] == [60, 60] and len(result["trials_to_success"]) == 2
    assert result["wall_per_trial_s"] > 0 and result["hardware"]["cpu_count"] >= 1
    assert result["ratio"] == pytest.approx(result["sb3"]["frames_to_first_success"] / 60)
    assert result["sac"]["algo"] == "sac" and result["sac"]["frame_budget"] > 0  # the stored SAC run
    rows = [result["sb3"]["frame_budget"], result["sac"]["frame_budget"], result["sb3"]["frames_to_first_success"]]
    assert result["best_model_free"]["frames"] <= min(frames for frames in rows if frames is not None)


def test_bench_compares_a_cartpole_recipe_with_the_cartpole_baseline_not_the_pendulums(tmp_path, monkeypatch):
    """The frame ratio is against the SB3 run of the recipe's own env; the pendulum-only rows stay out, an env
    with no stored run says so, and a rerun that has nothing to run is refused before any seed runs."""
    stored = {"algo": "ppo", "env_id": "pixelpilot/CartPoleBalance-v0", "frame_budget": 200_000,
              "frames_to_first_success": 30_000, "run_summary": {}}
    (tmp_path / "sb3_cartpole_balance.json").write_text(json.dumps(stored))
    monkeypatch.setattr(bench, "BASELINES", tmp_path)
    monkeypatch.delitem(bench.SB3_BASELINES, "pixelpilot/CartPoleSwingUp-v0")  # the swing-up plays an env with none
    cartpole = ["env.id=pixelpilot/CartPoleBalance-v0", "env.kwargs={image_size: 40, reward: tip}",
                "agent.model.latent_grad=false"]
    result = bench_ddm(seeds=1, config="ddm_pendulum_tiny", overrides=cartpole, model_quality=False)
    assert result["env_id"] == "pixelpilot/CartPoleBalance-v0" and result["sb3"]["frames_to_first_success"] == 30_000
    bound = "exact" if result["solved_seeds"] else "upper"  # 20-step trials: a pole that stays up 20 steps "holds"
    assert result["ratio"] == pytest.approx(30_000 / result["ddm_frames_mean"]) and result["ratio_bound"] == bound
    assert "sac" not in result and "value_based" not in result
    assert result["best_model_free"]["row"] == "ppo"
    swing = ["env.id=pixelpilot/CartPoleSwingUp-v0", "env.kwargs={image_size: 40}"]
    result = bench_ddm(seeds=1, config="ddm_pendulum_tiny", overrides=swing, model_quality=False)
    assert "sb3" not in result and "ratio" not in result and "CartPoleSwingUp-v0" in result["sb3_missing"]
    with pytest.raises(ConfigError, match="--rerun-dqn: the value-based rows are the pendulum's"):
        bench_ddm(seeds=1, config="ddm_pendulum_tiny", overrides=cartpole, rerun_dqn=True, runs_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="--rerun-sb3: no SB3 baseline config for env.id pixelpilot/CartPoleSwingUp"):
        bench_ddm(seeds=1, config="ddm_pendulum_tiny", overrides=swing, rerun_sb3=True, runs_dir=str(tmp_path))
    assert not (tmp_path / "ddm_pendulum_tiny").exists()  # refused before any seed ran


def test_a_rerun_sb3_baseline_is_stored_with_the_command_that_reruns_it(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps({"env_steps": 4_000, "eval_frames_to_first_success": 2_000}))
    monkeypatch.setattr(bench, "train", lambda config, quiet: run_dir)  # the SB3 run itself is tests/test_sb3.py's
    result = bench.rerun_sb3_baseline(tmp_path / "sb3.json", "configs/sb3_ppo_cartpole_balance.yaml",
                                      "ddm_cartpole_balance")
    stored = json.loads((tmp_path / "sb3.json").read_text())
    assert stored["command"].startswith("pixelpilot bench ddm --config ddm_cartpole_balance --rerun-sb3 ")
    assert stored["env_id"] == "pixelpilot/CartPoleBalance-v0" and stored["frame_budget"] == 4_000
    assert result["frames_to_first_success"] == 2_000


@pytest.mark.parametrize("recipe", ["ddm_pendulum", "ddm_cartpole_balance", "ddm_cartpole"])
def test_each_ddm_recipes_sb3_baseline_plays_the_recipes_env_and_episode_length(recipe):
    import gymnasium as gym

    ddm = load_config(recipe)
    stored, sb3_config = bench.SB3_BASELINES[ddm.env.id]
    sb3 = load_config(sb3_config)
    sb3_kwargs = dict(sb3.env.kwargs)
    episode = sb3_kwargs.pop("max_episode_steps", gym.spec(ddm.env.id).max_episode_steps)
    assert (sb3.env.id, sb3_kwargs, episode) == (ddm.env.id, dict(ddm.env.kwargs), ddm.agent.trial_steps)
    assert json.loads((bench.BASELINES / stored).read_text()).get("env_kwargs", {}) == dict(sb3.env.kwargs)


def test_bench_runs_a_block_of_seeds_and_reports_held_within_10_and_the_median(tmp_path):
    """A fresh block is one command (--seeds 1000-1019): the seeds run are the block's, each seed's run directory
    is named by it, and the report counts the seeds held within 10 trials."""
    result = bench_ddm(seeds="7-8", config="ddm_pendulum_tiny", model_quality=False, runs_dir=str(tmp_path))
    assert result["seeds"] == [7, 8]
    runs = sorted(run.name[-5:] for run in (tmp_path / "ddm_pendulum_tiny").iterdir())
    assert runs == ["seed7", "seed8"]
    trials = [value or 4 for value in result["trials_to_success"]]  # ddm_pendulum_tiny: 3 trials, unsolved = 4
    assert result["median_trials"] == pytest.approx(float(np.median(trials)))
    assert result["held_within_10"] == sum(value is not None for value in result["trials_to_success"])
    assert bench.seed_list(3, start=1000) == [1000, 1001, 1002] and bench.seed_list("5,2") == [5, 2]
    assert bench.seed_list("1000-1019") == list(range(1000, 1020))


@pytest.mark.parametrize(
    ("rows", "ddm_solved", "expected"),
    [({"ppo": (90_000, True), "dqn": (23_734, True)}, True, ("dqn", 23_734 / 640, "exact")),
     # a row that never succeeded stands in with its budget: more frames than that, a lower bound on the ratio
     ({"ppo": (90_000, True), "dqn": (23_734, True), "sac": (16_000, False)}, True, ("sac", 25.0, "lower")),
     ({"ppo": (90_000, True), "dqn": (23_734, True)}, False, ("dqn", 23_734 / 640, "upper")),
     ({"sac": (16_000, False)}, False, ("sac", None, None))],
)
def test_best_model_free_is_the_row_with_the_fewest_frames_with_its_bound(rows, ddm_solved, expected):

    best = best_model_free(rows, 640.0, ddm_solved)
    assert (best["row"], best["ratio"], best["ratio_bound"]) == pytest.approx(expected)
    assert best_model_free({}, 640.0, True) is None


def test_value_based_rows_are_stored_per_seed_and_compared_with_the_ddm_frames(tmp_path, monkeypatch):

    monkeypatch.setattr(bench, "VALUE_BASED_RESULT", tmp_path / "{config}.json")
    monkeypatch.setattr(bench, "VALUE_BASED", {"dqn": "dqn_pendulum"})
    row = bench.rerun_value_based("dqn", seeds=1, budget=300)  # random actions only: no success in 300 frames
    stored = json.loads((tmp_path / "dqn_pendulum.json").read_text())
    assert stored["frames_to_first_success"] == [None] and stored["solved_seeds"] == 0
    assert stored["frame_budget"] == 300 and stored["run_summaries"][0]["env_steps"] == 300
    assert "--rerun-dqn" in stored["command"] and row["frames_mean_solved"] is None
    stored["frames_to_first_success"] = [20_000, None, 30_000]  # as if three seeds had run, one unsolved
    (tmp_path / "dqn_pendulum.json").write_text(json.dumps(stored))
    dqn = bench.value_based_rows(ddm_frames=640.0, ddm_solved=True)["dqn"]
    assert dqn["frames_mean_solved"] == 25_000
    assert dqn["ratio"] == pytest.approx(25_000 / 640) and dqn["ratio_bound"] == "lower"  # seed 1 unsolved
    assert "ratio" not in bench.value_based_rows(ddm_frames=640.0, ddm_solved=False)["dqn"]
    result = bench.bench_ddm(seeds=2, config="ddm_pendulum_tiny", model_quality=False)
    assert result["value_based"]["dqn"]["frames_to_first_success"] == [20_000, None, 30_000]


def test_bench_seeds_in_parallel_jobs_give_the_same_results_as_one_after_another(tmp_path):

    sequential = bench_ddm(seeds=2, config="ddm_pendulum_tiny", model_quality=False, runs_dir=str(tmp_path / "one"))
    parallel = bench_ddm(seeds=2, config="ddm_pendulum_tiny", model_quality=False, jobs=2,
                         runs_dir=str(tmp_path / "two"))
    assert parallel["jobs"] == 2 and parallel["frames_per_seed"] == sequential["frames_per_seed"]
    assert parallel["trials_to_success"] == sequential["trials_to_success"]
    for kept in ("one", "two"):  # --runs-dir keeps each seed's run directory, whichever way it ran
        runs = list((tmp_path / kept / "ddm_pendulum_tiny").iterdir())
        # names start with the start time: in parallel, seed 1 may start in an earlier second than seed 0
        assert sorted(run.name[-5:] for run in runs) == ["seed0", "seed1"]
        assert all((run / "summary.json").exists() and (run / "metrics.csv").exists() for run in runs)


def test_model_quality_comparison_fits_both_models_on_the_same_data():

    result = compare_model_quality(config="ddm_pendulum_tiny", train_trials=2, test_trials=1, updates=3)
    for variant in ("joint", "sequential"):
        assert set(result[variant]) == {"error_1", "error_5", "error_10", "train_s"}
        assert all(np.isfinite(value) for value in result[variant].values())


def test_focused_window_sampling_prefers_high_reward_windows(tmp_path):
    torch.manual_seed(0)
    rewards = torch.zeros(2, 40)
    rewards[1, 30:] = 5.0  # only the end of trial 1 is rewarding
    # Each window's first frame holds its trial and step, so the sampled windows say where they came from.
    frames = torch.zeros(2, 41, 1, 2, 2, dtype=torch.uint8)
    frames[:, :, 0, 0, 0] = torch.arange(2)[:, None]
    frames[:, :, 0, 0, 1] = torch.arange(41)
    buffer = TrialBuffer(frames, torch.zeros(2, 40, 1), rewards, torch.ones(2, 40))
    windows = buffer.sample(length=6, batch=400, focus=1.0)
    assert windows.observations.shape == (400, 6, 1, 2, 2) and windows.rewards.shape == (400, 5)
    trial, start = windows.observations[:, 0, 0, 0, 0], windows.observations[:, 0, 0, 0, 1]
    assert torch.equal(windows.observations[:, 5, 0, 0, 1], start + 5)  # consecutive frames
    assert (trial == 1).float().mean() > 0.8 and (start[trial == 1] >= 25).float().mean() > 0.8
    trial = buffer.sample(length=6, batch=400).observations[:, 0, 0, 0, 0]
    assert 0.3 < (trial == 1).float().mean() < 0.7


def test_trial_buffer_pads_short_trials_and_never_windows_past_their_end():
    long = Trial(np.zeros((11, 1, 2, 2), np.uint8), np.ones((10, 1), np.float32), np.ones(10, np.float32))
    short = Trial(np.full((5, 1, 2, 2), 7, np.uint8), np.ones((4, 1), np.float32), np.ones(4, np.float32))
    buffer = TrialBuffer.of([long, short])
    assert buffer.observations.shape == (2, 11, 1, 2, 2) and torch.all(buffer.observations[1, 5:] == 7)
    assert buffer.valid[1].tolist() == [1.0] * 4 + [0.0] * 6
    fixed = buffer.every(length=4, stride=1)  # windows of 3 steps: 8 in the long trial, 2 in the short one
    assert fixed.valid.shape == (10, 3) and torch.all(fixed.valid == 1)


@pytest.mark.parametrize(
    ("sb3_frames", "ddm_solved", "expected"),
    [(90_000, True, (90.0, "exact")), (None, True, (200.0, "lower")), (90_000, False, (90.0, "upper")),
     (None, False, (None, None))],
)
def test_frame_ratio_says_which_way_an_unsolved_side_bounds_it(sb3_frames, ddm_solved, expected):

    assert frame_ratio(sb3_frames, 200_000, 1000.0, ddm_solved) == expected


def test_the_first_controlled_trial_is_the_same_bit_for_bit_on_one_thread_and_on_two(tmp_path):
    """Results must not hang on the machine's thread count: on one torch thread the fits run one after another,
    on two at once (a thread each), and CEM's products run on one or two threads; the model fitted and the
    actions of the first controlled trial are the same to the bit. Default network sizes (small ones never
    split a product over threads), fewer updates and steps to keep it short."""
    root = Path(__file__).resolve().parents[2]
    overrides = ["seed=1003", "agent.trials=3", "agent.trial_steps=30", "agent.fit.updates=40",
                 "agent.fit.dynamics_updates=40", "agent.cem.candidates=200"]
    states = []
    for threads in (1, 2):
        runs = tmp_path / f"threads{threads}"
        subprocess.run([sys.executable, "-m", "agents", "train", "ddm_pendulum", *overrides, f"train.runs_dir={runs}"],
                       check=True, capture_output=True, timeout=300, cwd=root,
                       env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": str(threads)})
        [run_dir] = (runs / "ddm_pendulum").iterdir()
        states.append(load_checkpoint(checkpoint_paths(run_dir)[-1])["agent"])
    one, two = states
    assert len(one["trials"]) == len(two["trials"]) == 3  # two random trials, then the first controlled one
    assert not np.array_equal(one["trials"][2]["actions"].numpy(), one["trials"][1]["actions"].numpy())
    for name, tensor in one["model"].items():
        assert torch.equal(tensor, two["model"][name]), name
    for first, second in zip(one["trials"], two["trials"], strict=True):
        assert torch.equal(first["actions"], second["actions"]) and torch.equal(first["frames"], second["frames"])
    assert one["returns"] == two["returns"]


def test_a_terminated_trial_marks_its_last_step_as_the_end_and_windows_carry_it():
    ended = Trial(np.zeros((6, 1, 2, 2), np.uint8), np.zeros((5, 1), np.float32), np.ones(5, np.float32), True)
    cut = Trial(np.zeros((9, 1, 2, 2), np.uint8), np.zeros((8, 1), np.float32), np.ones(8, np.float32))
    buffer = TrialBuffer.of([ended, cut])
    assert buffer.continues.tolist() == [[1, 1, 1, 1, 0, 1, 1, 1], [1] * 8]
    windows = buffer.windows(torch.tensor([[0]]), torch.tensor([[2]]), 4)
    assert windows.continues.tolist() == [[1, 1, 0]]


def test_the_imagined_return_counts_rewards_while_the_rollout_has_not_ended():
    model = DeepDynamicalModel(OBS_SHAPE, 1, 1.0, latent_dim=1, context=1, encoder_hidden=(8,), continue_hidden=(4,))

    class Fixed(nn.Module):
        def __init__(self, function):
            super().__init__()
            self.function = function

        def forward(self, latents):
            return self.function(latents)

    model.reward_net = Fixed(lambda z: torch.full_like(z, 2.0))
    model.continue_net = Fixed(lambda z: torch.where(z > 1, -30.0, 30.0))  # terminal past 1
    latents = torch.tensor([[[0.5], [0.9], [1.5], [0.2]], [[0.1], [0.2], [0.3], [0.4]]])
    torch.testing.assert_close(model.imagined_return(latents), torch.tensor([4.0, 8.0]))
    model.continue_net = None
    torch.testing.assert_close(model.imagined_return(latents), torch.tensor([8.0, 8.0]))


def test_an_alive_bonus_ranks_a_rollout_that_ends_early_below_one_that_stays():
    """A swing-up's trap: a rollout that leaves the track scores high rewards until it ends; one that stays
    scores little. With the bonus the staying one wins, and a bonus without a continue head is refused."""
    model = DeepDynamicalModel(OBS_SHAPE, 1, 1.0, latent_dim=1, context=1, encoder_hidden=(8,), continue_hidden=(4,),
                               alive_bonus=1.0)
    model.reward_net = nn.Identity()  # the reward is the latent itself
    model.continue_net = nn.Sequential(nn.Identity())
    model.continue_net.forward = lambda z: torch.where(z > 1.5, -30.0, 30.0)  # a latent past 1.5 ends the rollout
    leaves = torch.tensor([[[0.9], [1.0], [1.4], [1.6], [1.6], [1.6]]])  # rewards 0.9, 1.0, 1.4, then ended
    stays = torch.tensor([[[0.2], [0.2], [0.2], [0.2], [0.2], [0.2]]])
    with_bonus = model.imagined_return(torch.cat([leaves, stays]))
    assert with_bonus[1] > with_bonus[0]  # 6 * 1.2 = 7.2 against 3.3 + 3
    model.alive_bonus = 0.0
    without = model.imagined_return(torch.cat([leaves, stays]))
    assert without[0] > without[1]  # 3.3 against 1.2: ending looks better
    with pytest.raises(ValueError, match="alive_bonus 1.0 needs a continue head"):
        DeepDynamicalModel(OBS_SHAPE, 1, 1.0, latent_dim=1, context=1, encoder_hidden=(8,), alive_bonus=1.0)


def test_the_continue_head_learns_which_latent_after_a_step_is_terminal():
    # z' = z + a; a step ends the episode when it lands past 1. Fed the latent before the step instead, the head
    # could not be sure (from z = 0.5, a step ends it a quarter of the time): it must read the latent after.
    torch.manual_seed(0)
    model = DeepDynamicalModel(OBS_SHAPE, 1, 1.0, latent_dim=1, context=1, encoder_hidden=(8,),
                               transition_hidden=(16,), continue_hidden=(16, 16))
    optimizer = torch.optim.Adam([*model.transition_net.parameters(), *model.continue_net.parameters(),
                                  *model.reward_net.parameters()], lr=1e-2)
    for _ in range(600):
        start = torch.rand(256, 1, 1) * 4 - 2
        actions = torch.rand(256, 1, 1) * 2 - 1
        latents = torch.cat([start, start + actions], 1)
        continues = (latents[:, 1, 0] <= 1).float().unsqueeze(1)
        _, latent_error, error = model.latent_losses(latents, actions, torch.zeros(256, 1), None, continues)
        optimizer.zero_grad()
        (latent_error + error).backward()
        optimizer.step()
    probabilities = model.continues(torch.tensor([[-1.0], [0.5], [0.8], [1.2], [1.5]])).tolist()
    assert min(probabilities[:3]) > 0.8 and max(probabilities[3:]) < 0.2, probabilities


def test_a_continue_head_run_keeps_the_trials_ends_through_a_resume(tmp_path):
    config = tiny_config(tmp_path, "env.id=pixelpilot/CartPoleBalance-v0", "env.kwargs={image_size: 40}",
                         "agent.model.continue_hidden=[8]", "agent.trials=2")
    run_dir = train(config, quiet=True)
    state = load_checkpoint(checkpoint_paths(run_dir)[-1])["agent"]
    assert [trial["terminated"] for trial in state["trials"]] == [True, True]  # random pushes topple the pole
    agent = DDMAgent(config, torch.device("cpu"))
    agent.load_state_dict(state)
    assert all(trial.terminated for trial in agent.trials) and agent.model.continue_net is not None
    assert TrialBuffer.of(agent.trials).continues.min() == 0


def test_episode_rollouts_start_from_the_trials_first_histories_and_run_the_whole_episode():
    torch.manual_seed(0)
    model, policy = StartsSpy(), Policy(1, 1, torch.ones(1), [8])
    starts, first = torch.linspace(1.0, 2.0, 50).view(50, 1, 1), torch.tensor([[[-8.0]], [[-7.0]]])
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    PolicySearch(horizon=2, batch=16, updates=3, episode_horizon=12, episode_batch=4).improve(
        model, policy, optimizer, starts, first)
    assert [len(batch) for batch in model.starts] == [16, 4] * 3  # the data's starts, then the episodes'
    assert all(set(batch.flatten().tolist()) <= {-8.0, -7.0} for batch in model.starts[1::2])
    with pytest.raises(ValueError, match="first histories"):
        PolicySearch(episode_horizon=12).improve(model, policy, optimizer, starts)


def test_episode_rollouts_learn_the_way_from_the_start_that_short_rollouts_from_the_data_miss():
    # The data's states lie near the goal (z in [1, 2]); the episode starts at z = -8, 9.5 unit steps away. Two-step
    # rollouts from the data teach the policy nothing about -8 (the sin map wraps what it extrapolates); the whole
    # episode from there does. At full speed z reaches 1.5 after 10 steps: the best 14-step return from -8 is
    # -(8.5^2 + 7.5^2 + ... + 0.5^2) = -242.25. Over five initialisations (a search can stall in one).
    starts, first = torch.linspace(1.0, 2.0, 50).view(50, 1, 1), torch.full((1, 1, 1), -8.0)
    best = {0: 0, 14: 0}
    for seed in range(5):
        for horizon in best:
            torch.manual_seed(seed)
            model, policy = LinearModel(), Policy(1, 1, torch.ones(1), [16])
            optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
            PolicySearch(horizon=2, batch=32, updates=600, episode_horizon=horizon, episode_batch=8).improve(
                model, policy, optimizer, starts, first)
            with torch.no_grad():
                best[horizon] += imagined_return(model, policy, first, 14).item() > -260
    assert best[14] >= 4 and best[0] <= 2, best


@pytest.mark.parametrize(("latent_grad", "holds_the_pole"), [(False, True), (True, False)])
def test_the_cartpole_recipes_latent_holds_the_pole_where_the_prediction_term_trains_the_encoder_it_collapses(
        tmp_path, latent_grad, holds_the_pole):
    # ddm_cartpole_balance's model after random trials: the latent must carry the cart and the pole (a linear map
    # recovers them) or no plan can balance; with latent_grad the prediction term pulled the latents to a point.
    config = load_config("ddm_cartpole_balance", [f"train.runs_dir={tmp_path}", "agent.fit.fits=1",
                                                  "agent.fit.updates=300", f"agent.model.latent_grad={latent_grad}"])
    agent = DDMAgent(config, torch.device("cpu"))
    env = make_env(config)
    angles, positions = [], []
    for number in range(6):
        trial, _ = agent.play(env, seed=number, controlled=False)
        agent.trials.append(trial)
        env.reset(seed=number)
        steps = [env.step(action)[-1] for action in trial.actions]  # the same trial again, for its true states
        angles += [info["angle"] for info in steps]  # the states of the frames after the reset frame
        positions += [info["x"] for info in steps]
    agent.fit_from_scratch(TrialBuffer.of(agent.trials))
    with torch.no_grad():
        latents = torch.cat([agent.model.encode(torch.from_numpy(trial.frames[1:])) for trial in agent.trials])
    features = np.c_[latents.numpy(), np.ones(len(latents))]
    for truth in (np.asarray(angles), np.asarray(positions)):
        fitted = features @ np.linalg.lstsq(features, truth, rcond=None)[0]
        explained = 1 - ((fitted - truth) ** 2).mean() / truth.var()
        assert (explained > 0.8) == holds_the_pole, explained


@pytest.mark.parametrize("env_id, kwargs, start", [
    ("pixelpilot/Pendulum-v0", {}, {"angle": 2.5, "angular_velocity": 1.0}),
    ("pixelpilot/CartPoleBalance-v0", {"image_size": 40, "reward": "upright"},
     {"x": 0.3, "x_velocity": 0.2, "angle": 0.05, "angular_velocity": -0.1}),
    ("pixelpilot/CartPoleSwingUp-v0", {"image_size": 40, "position_cost": 1.0, "action_repeat": 4},
     {"x": -0.5, "x_velocity": 0.4, "angle": 2.8, "angular_velocity": 1.5}),
])
def test_a_mirrored_trial_is_the_one_the_env_plays_from_the_mirrored_start(env_id, kwargs, start):
    """fit.mirror is sound for these tasks: the mirror image of a played trial (frames flipped, actions negated)
    is, frame for frame and reward for reward, the trial the env plays from the mirrored state."""
    actions = np.random.default_rng(0).uniform(-1, 1, (12, 1)).astype(np.float32) * 2.0

    def play(options, pushes):
        env = gym.make(env_id, **kwargs)
        frames = [env.reset(seed=0, options=options)[0]]
        rewards = []
        for action in pushes:
            frame, reward, *_ = env.step(np.clip(action, env.action_space.low, env.action_space.high))
            frames.append(frame)
            rewards.append(reward)
        return Trial(np.stack(frames), pushes, np.array(rewards, np.float32))

    played = play(start, actions)
    mirror = play({key: -value for key, value in start.items()}, -actions).frames
    assert not np.array_equal(played.frames, mirror)  # the task is not trivially symmetric: the mirror is another trial
    mirrored = played.mirrored()
    np.testing.assert_array_equal(mirrored.frames, mirror)
    np.testing.assert_array_equal(mirrored.actions, -actions)
    np.testing.assert_allclose(mirrored.rewards, play({key: -value for key, value in start.items()}, -actions).rewards,
                               rtol=1e-6)


@pytest.mark.parametrize("mirror", [False, True])
def test_mirror_fits_the_model_on_every_trial_and_its_mirror_image(tmp_path, monkeypatch, mirror):
    config = tiny_config(tmp_path, f"agent.fit.mirror={str(mirror).lower()}", "agent.fit.fits=1")
    agent = DDMAgent(config, torch.device("cpu"))
    rng = np.random.default_rng(0)
    agent.trials = [Trial(rng.integers(0, 255, (9, *agent.obs_shape), dtype=np.uint8),
                          rng.uniform(-1, 1, (8, agent.action_dim)).astype(np.float32),
                          rng.normal(size=8).astype(np.float32)) for _ in range(2)]
    seen: list[TrialBuffer] = []
    joint = type(config.agent.fit).joint
    monkeypatch.setattr(type(config.agent.fit), "joint",
                        lambda fit, model, optimizer, buffer, *a, **k: seen.append(buffer) or joint(
                            fit, model, optimizer, buffer, *a, **k))
    agent.fit()
    frames, actions = seen[0].observations, seen[0].actions
    assert len(frames) == (4 if mirror else 2)
    for index, trial in enumerate(agent.trials):
        assert torch.equal(frames[index], torch.from_numpy(trial.frames))
        if mirror:
            assert torch.equal(frames[2 + index], torch.from_numpy(trial.frames).flip(-1))
            assert torch.equal(actions[2 + index], -torch.from_numpy(trial.actions))
    # the policy search starts from the mirrored histories too, after the real ones (whose rows keep their places)
    histories, windows = agent.latent_histories(), 9 - agent.model.context + 1
    assert len(histories) == (4 if mirror else 2) * windows
    with torch.no_grad():
        first = agent.model.encode(torch.from_numpy(agent.trials[0].frames[:agent.model.context]))
        flipped = agent.model.encode(torch.from_numpy(agent.trials[0].frames[:agent.model.context]).flip(-1))
    torch.testing.assert_close(histories[0], first)
    if mirror:
        torch.testing.assert_close(histories[2 * windows], flipped)
        torch.testing.assert_close(agent.first_histories()[2], flipped)


def test_the_fovea_encoder_needs_a_latent_for_the_window_and_one_for_its_place(tmp_path):
    with pytest.raises(ConfigError, match="latent_dim.*fovea"):
        tiny_config(tmp_path, "agent.model.encoder=fovea", "agent.model.latent_dim=1")
    with pytest.raises(ConfigError, match="fovea_width"):
        tiny_config(tmp_path, "agent.model.encoder=fovea", "agent.model.fovea_width=0")
    with pytest.raises(ConfigError, match="fovea_width.*40 columns"):  # the tiny preset's images are 40 wide
        DDMAgent(tiny_config(tmp_path, "agent.model.encoder=fovea", "agent.model.fovea_width=41"), torch.device("cpu"))


def test_a_reward_head_that_reads_the_velocity_learns_a_reward_that_pays_slowness():
    """z' = z + a, paid -(z' - z)^2: one latent cannot tell a slow state from a fast one at the same place, the
    latent and its change can. The first frame of a window has no latent before it; its reward is left out."""
    errors = {}
    for velocity in (False, True):
        torch.manual_seed(0)
        model = DeepDynamicalModel(OBS_SHAPE, 1, 1.0, latent_dim=1, context=2, encoder_hidden=(8,),
                                   transition_hidden=(16,), reward_hidden=(32, 32), reward_velocity=velocity)
        optimizer = torch.optim.Adam([*model.transition_net.parameters(), *model.reward_net.parameters()], lr=1e-2)
        for _ in range(400):
            actions = torch.rand(256, 3, 1) * 2 - 1
            latents = torch.cat([torch.rand(256, 1, 1) * 4 - 2, actions], 1).cumsum(1)  # (256, 4, 1)
            steps = latents[:, 1:, 0] - latents[:, :-1, 0]  # the step into frames 1..3
            rewards = torch.cat([torch.full((256, 1), 1e3), -steps[:, :-1] ** 2], 1)  # frame t's reward: its speed
            if not velocity:
                rewards[:, 0] = 0.0
            _, latent_error, reward_error = model.latent_losses(latents, actions, rewards)
            optimizer.zero_grad()
            (latent_error + reward_error).backward()
            optimizer.step()
        errors[velocity] = reward_error.item()
    assert errors[True] < 0.01 < 0.05 < errors[False], errors  # the speed's variance is ~0.09
    with pytest.raises(ValueError, match="reward_velocity needs a context of at least 2"):
        DeepDynamicalModel(OBS_SHAPE, 1, 1.0, latent_dim=1, context=1, encoder_hidden=(8,), reward_velocity=True)


def test_an_imagined_return_reads_each_latents_change_from_the_start_of_the_rollout():
    model = DeepDynamicalModel(OBS_SHAPE, 1, 1.0, latent_dim=1, context=2, encoder_hidden=(8,), reward_velocity=True)
    model.reward_net = nn.Sequential(nn.Identity())
    model.reward_net.forward = lambda inputs: -inputs[..., 1:].abs()  # pays stillness: minus |z - z_before|
    rollouts = torch.tensor([[[1.0], [1.0], [3.0]]])
    torch.testing.assert_close(model.imagined_return(rollouts, torch.tensor([[0.0]])), torch.tensor([-3.0]))
    torch.testing.assert_close(model.imagined_return(rollouts, torch.tensor([[1.0]])), torch.tensor([-2.0]))
    torch.testing.assert_close(model.history_reward(torch.tensor([[[0.5], [1.0]]])), torch.tensor([-0.5]))
    with pytest.raises(ValueError, match="before="):
        model.imagined_return(rollouts)


def test_a_velocity_reward_head_needs_a_history_of_two(tmp_path):
    with pytest.raises(ConfigError, match="reward_velocity.*context"):
        tiny_config(tmp_path, "agent.model.reward_velocity=true", "agent.model.context=1", "agent.model.inertia=false")
