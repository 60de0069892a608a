"""The data-efficient pixel agent: a deep dynamical model (DDM), re-learned after every trial, and a controller.

After Wahlstroem et al. 2015 and Assael et al. 2015 ("Data-Efficient Learning of Feedback Policies from
Image Pixels using Deep Dynamical Models"). The agent sees only images and rewards. The story, in the
order this file tells it:

    trials 1 .. random_trials:   random actions at +-bound, each held for `random_hold` steps: about half
                                 the period of the hanging pendulum, so the pole swings far (exploration)
    then, each trial (DDMAgent.train):
        fit    the DDM on every frame so far (`fit:`, the Fit block: from scratch or warm-started, the best
               of `fit.fits` fits kept, then the transition alone on frozen latents)
               [controller policy: improve the feedback policy on imagined rollouts (`policy:`)]
        act    for one trial with the controller on the latent history of the last `model.context` frames
        record the trial (with the model's reconstructions and k-step predictions), log it, checkpoint
    until a trial succeeds (the env's info["is_success"] on its last step) or `trials` are played.

Trials are numbered from 1 wherever a person reads them (progress bar, metrics, episode files, the viewer,
summary.json's success_trial).

Controllers (``agent.controller``), each configured by its own block:
    cem       (`cem:`, CEM) model-predictive control: the cross-entropy method over `cem.candidates` action
              sequences of `cem.horizon` steps, scored by the predicted rewards; receding horizon (only the
              first action is applied, the plan is shifted and reused as the next initial mean).
    gradient  (`gradient:`, GradientShooting) the same by gradient-based shooting: Adam on action sequences
              through the differentiable model, the best one applied.
    policy    (`policy:`, PolicySearch) a feedback policy (a small MLP on the latent history), trained by
              back-propagating imagined returns through the model; acting is one forward pass.

Actions are squashed or clipped to the env's bound (or ``action_bound``) everywhere.

Three settings decide whether the pendulum is held (all on in configs/ddm_pendulum.yaml):
    model.inertia           the transition predicts the latent's acceleration (z' = 2 z - z_prev + f), so
                            where data is thin (near upright, passed only a few times, fast) the model's
                            default is "keeps moving", not "stops".
    fit.refit_from_scratch  re-initialise the model before each fit. A warm-started encoder keeps the map it
                            formed from the first trials, which never saw the pole up: its latent space stays
                            squeezed and stretched near upright (speed per degree varying 8x within 20
                            degrees), and its one-step error there was 4.3 degrees, against 0.4 for a model
                            fitted from scratch on the same 900 frames (the primacy bias of Nikishin et al.
                            2022; PILCO also refits its model from scratch every trial).
    fit.fits (with fit.lr_schedule: cosine)
                            fits from scratch end far apart (held-out 5-step errors up to 3x apart between
                            two initialisations on the same data; some never learn the image at all), and a
                            bad fit costs a trial: fit `fits` models, keep the one with the lowest pixel loss
                            on the data. The cosine decay of each fit's learning rate ends it in a quieter spot.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from agents.common.agent import play_episode
from agents.common.config import ConfigError, RunConfig, at_least, config_class
from agents.common.envs import env_fps, make_env
from agents.common.run import Run, atomic_write, generator_state, rng_state, set_generator_state, set_rng_state
from nets.ddm import DeepDynamicalModel, prediction_errors
from nets.mlp import MLP

ERROR_STEPS = (1, 5, 10)  # model prediction errors logged per trial, in steps ahead
SPREAD_ANGLES = np.arange(-180, 180, 5)  # degrees from upright where an ensemble's spread is probed (pendulum)
SPREAD_STEPS = 10  # steps ahead of the probed spread
SPREAD_FILE, SPREAD_PLOT = "spread.csv", "spread.png"  # in the run directory, for an ensemble on the pendulum
RECENT_TRIALS = 10  # mean_return in summary.json is over this many last trials


def _check_model(model: ModelConfig) -> None:
    at_least(model, 1, "latent_dim", "context", "ensemble")
    if model.inertia and model.context < 2:
        raise ConfigError(f"inertia: needs model.context >= 2 (a velocity), got context {model.context}")
    if model.min_std <= 0:
        raise ConfigError(f"min_std: must be > 0, got {model.min_std}")


# `model:` is DeepDynamicalModel(**model): its keys are the constructor's keyword arguments, with the
# constructor's defaults, documented in nets/ddm.py (the env fills in obs_shape, action_dim and action_bound).
ModelConfig = config_class(DeepDynamicalModel, skip=("obs_shape", "action_dim", "action_bound"), name="ModelConfig",
                           validate=_check_model)


@dataclass
class Config:
    kind: str = "ddm"
    # trials
    trials: int = 10  # trials to play at most (random ones included)
    random_trials: int = 1  # first trials with random actions
    trial_steps: int = 100  # env steps per trial (the env's time limit may end it sooner)
    stop_on_success: bool = True  # stop after the first trial the env calls a success
    random_hold: int = 10  # a random action is held for this many steps (it swings the pole further)
    random_bang_bang: bool = True  # random actions at +-bound (not uniform): held, they swing the pole round
    # control
    controller: Literal["cem", "gradient", "policy"] = "cem"  # which block below acts (module docstring)
    action_bound: list[float] | None = None  # largest |action| per dimension; None: the env's bound
    exploration_noise: float = 0.0  # Gaussian noise (fraction of the bound) added to acted actions
    # blocks, each mapping one-to-one onto what it configures
    model: ModelConfig = field(default_factory=lambda: ModelConfig())  # DeepDynamicalModel(**model), nets/ddm.py
    fit: Fit = field(default_factory=lambda: Fit())  # how the model is fitted after each trial
    cem: CEM = field(default_factory=lambda: CEM())  # controller: cem
    gradient: GradientShooting = field(default_factory=lambda: GradientShooting())  # controller: gradient
    policy: PolicySearch = field(default_factory=lambda: PolicySearch())  # controller: policy

    # The flat keys of configs before 2026-11-26, and where each went: an old key gets a one-line pointer.
    MOVED_KEYS: ClassVar[dict[str, str]] = {
        **{key: f"model.{key}" for key in ("latent_dim", "context", "encoder", "encoder_hidden", "transition_hidden",
                                           "reward_hidden", "stochastic", "inertia", "activation", "latent_grad")},
        **{key: f"fit.{key}" for key in ("prediction_horizon", "batch_size", "refit_from_scratch", "fits",
                                         "latent_warmup", "dynamics_batch", "focus", "latent_weight",
                                         "reward_weight")},
        "first_train_steps": "fit.updates", "train_steps": "fit.warm_updates", "model_lr": "fit.lr",
        "model_lr_schedule": "fit.lr_schedule", "dynamics_steps": "fit.dynamics_updates",
        "planning_horizon": "cem.horizon (and gradient.horizon)", "candidates": "cem.candidates (and "
        "gradient.candidates)", "elites": "cem.elites", "cem_iterations": "cem.iterations",
        "particles": "cem.particles", "gradient_iterations": "gradient.iterations", "gradient_lr": "gradient.lr",
        "policy_hidden": "policy.hidden", "policy_horizon": "policy.horizon", "policy_batch": "policy.batch",
        "policy_steps": "policy.updates", "policy_lr": "policy.lr",
    }

    def validate(self) -> None:
        at_least(self, 1, "trials", "trial_steps", "random_hold")
        if not 1 <= self.random_trials < self.trials:
            raise ConfigError(f"random_trials: must be in [1, trials - 1 = {self.trials - 1}], "
                              f"got {self.random_trials}")
        if self.model.context + self.fit.prediction_horizon > self.trial_steps + 1:
            raise ConfigError(f"fit.prediction_horizon: model.context + prediction_horizon must fit in a trial of "
                              f"{self.trial_steps + 1} frames, got {self.model.context} + "
                              f"{self.fit.prediction_horizon}")
        if self.action_bound is not None and (not self.action_bound or min(self.action_bound) <= 0):
            raise ConfigError(f"action_bound: expected a list of positive numbers, got {self.action_bound}")
        if self.exploration_noise < 0:
            raise ConfigError(f"exploration_noise: must be >= 0, got {self.exploration_noise}")


class Trial(NamedTuple):
    """One played trial."""

    frames: np.ndarray  # (T + 1, C, H, W) uint8
    actions: np.ndarray  # (T, A) float32
    rewards: np.ndarray  # (T,) float32


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
        self.teacher_labels: list[tuple[int, int, np.ndarray]] = []  # (trial, window, action): policy.teacher
        self.probe = probe_frames(config) if agent.model.ensemble > 1 else None  # (angles, 2, C, H, W) or None

    def new_model(self) -> None:
        """Freshly initialised model and policy network (their latent space is the model's), fresh optimisers."""
        agent = self.config.agent
        self.model = DeepDynamicalModel(self.obs_shape, self.action_dim, self.bound.cpu(), **asdict(agent.model)
                                        ).to(self.device)
        self.model_optimizer = adam(self.model.parameters(), agent.fit.lr)
        self.policy_net = Policy(agent.model.context, agent.model.latent_dim, self.bound, agent.policy.hidden,
                                 agent.policy.critic_hidden if agent.policy.value else None,
                                 agent.policy.squash).to(self.device)
        self.policy_optimizer = adam(self.policy_net.parameters(), agent.policy.lr)

    # the trial loop --------------------------------------------------------------------------------------
    def train(self, run: Run) -> None:
        agent = self.config.agent
        env = make_env(self.config)
        bar = run.progress(agent.trials, initial=len(self.trials), unit="trial")
        while len(self.trials) < agent.trials and not (agent.stop_on_success and any(self.successes)):
            number = len(self.trials) + 1
            started = time.time()
            controlled = number > agent.random_trials
            losses = self.fit() if controlled else {}
            acting = time.time()
            trial, success = self.play(env, seed=self.config.seed * 1000 + number - 1, controlled=controlled)
            if controlled:
                losses["time/acting_s"] = time.time() - acting
            self.record(run, trial, success, controlled, losses, time.time() - started)
            bar.set_postfix(ret=f"{self.returns[-1]:.1f}", success=success, refresh=False)
            bar.update(1)  # refreshes the bar with this trial's postfix
            run.save_checkpoint(self.state_dict(), self.frames())
        bar.close()
        env.close()
        if (run.dir / SPREAD_FILE).exists():
            plot_spread(run.dir / SPREAD_FILE, run.dir / SPREAD_PLOT)

    def fit(self) -> dict[str, float]:
        """Fit the model to every trial so far (and the feedback policy, if it acts); the fits' losses.

        From scratch (`fit.refit_from_scratch`, and always right after the random trials, keeping the model
        made at construction for the first of those fits) or warm-started (the model keeps its weights and
        optimiser and gets `fit.warm_updates` updates). Then the transition and reward head alone on
        frozen latents. The losses include each phase's wall time (`time/fits_s`, `time/dynamics_s`, and
        `time/policy_s` for the feedback policy).
        """
        agent = self.config.agent
        started = time.time()
        buffer = TrialBuffer.of(self.trials, self.device)
        first = len(self.trials) == agent.random_trials
        if first or agent.fit.refit_from_scratch:
            losses = self.fit_from_scratch(buffer, keep_current=first)
        else:
            losses = agent.fit.joint(self.model, self.model_optimizer, buffer, agent.fit.warm_updates)
        losses["time/fits_s"], started = time.time() - started, time.time()
        losses.update(agent.fit.dynamics(self.model, buffer))
        losses["time/dynamics_s"], started = time.time() - started, time.time()
        if agent.controller == "policy":
            histories = self.latent_histories()
            if agent.policy.teacher == "cem":
                losses.update(self.imitate_planner(histories))
            losses["train/imagined_return"] = agent.policy.improve(self.model, self.policy_net, self.policy_optimizer,
                                                                   histories)
            losses["time/policy_s"] = time.time() - started
        return losses

    def imitate_planner(self, histories: torch.Tensor) -> dict[str, float]:
        """DAgger with the CEM planner as the teacher (`policy.teacher: cem`): the policy (fresh with every
        model) is first fitted to the labels so far, re-encoded by the model just fitted; then the planner labels
        up to `policy.labels` states of the data not labelled yet, newest trial first (random order within a
        trial), each plan starting from the actions the policy takes in the model from that state (as the
        receding-horizon planner starts from its last plan); then the policy is fitted to every label.

        `histories (N, context, latent_dim)` are :meth:`latent_histories`: window w of trial i is row
        offset[i] + w. A label keeps (trial, window, action) so the next model re-encodes its frames."""
        agent = self.config.agent
        windows = [len(trial.frames) - self.model.context + 1 for trial in self.trials]
        offsets = np.concatenate([[0], np.cumsum(windows)[:-1]])

        def fit_to_labels(more_histories: torch.Tensor | None = None, more_actions: torch.Tensor | None = None
                          ) -> float:
            rows = torch.as_tensor([offsets[trial] + window for trial, window, _ in self.teacher_labels],
                                   device=self.device)
            actions = torch.as_tensor(np.stack([action for _, _, action in self.teacher_labels]), device=self.device)
            labelled_histories = histories[rows]
            if more_histories is not None:
                labelled_histories = torch.cat([labelled_histories, more_histories])
                actions = torch.cat([actions, more_actions])
            return agent.policy.imitate(self.policy_net, self.policy_optimizer, labelled_histories, actions)

        if self.teacher_labels:
            fit_to_labels()
        labelled = {(trial, window) for trial, window, _ in self.teacher_labels}
        chosen = []
        for trial in reversed(range(len(self.trials))):
            free = [window for window in self.rng.permutation(windows[trial]) if (trial, window) not in labelled]
            chosen += [(trial, int(window)) for window in free[: agent.policy.labels - len(chosen)]]
            if len(chosen) == agent.policy.labels:
                break
        started = time.time()
        if chosen:
            rows = torch.as_tensor([offsets[trial] + window for trial, window in chosen], device=self.device)
            with torch.no_grad():  # the policy's own plan from each state: the planner's starting mean
                state, mean = self.model.with_members(histories[rows]), []
                for _ in range(agent.cem.horizon):
                    action = self.policy_net(state)
                    mean.append(self.model.members_mean(action))
                    state = self.model.step(state, action)
            plans = agent.cem.plan(self.model, histories[rows], torch.stack(mean, 1), self.bound)
            self.teacher_labels += [(trial, window, action) for (trial, window), action
                                    in zip(chosen, plans[:, 0].cpu().numpy(), strict=True)]
        path_histories = path_actions = None
        if chosen and agent.policy.path_labels:  # each plan's own imagined path, labelled with its actions there
            with torch.no_grad():
                state, states = self.model.with_members(histories[rows]), []
                for step in range(agent.cem.horizon - 1):
                    state = self.model.step(state, plans[:, step])
                    states.append(state)
            stacked = torch.stack(states, -3)  # ([members,] rows, steps, context, latent_dim)
            path_histories = stacked.reshape(-1, *histories.shape[-2:])
            path_actions = plans[:, 1:].expand(*stacked.shape[:-2], plans.shape[-1]).reshape(-1, plans.shape[-1])
        seconds = time.time() - started
        return {"train/imitation_loss": fit_to_labels(path_histories, path_actions),
                "train/labels": float(len(self.teacher_labels)), "time/labelling_s": seconds}

    def fit_from_scratch(self, buffer: TrialBuffer, keep_current: bool = False) -> dict[str, float]:
        """`fit.fits` fits of freshly initialised models (the first on the current model if `keep_current`);
        the one with the lowest :func:`pixel_score` is kept. Returns its training losses, plus (when
        `fit.fits` > 1) `train/fit_score` (its score) and `train/fit_chosen` (which fit it was, from 0)."""
        fit = self.config.agent.fit
        candidates = []  # each fit's model, optimisers and policy, initialised here one after another
        for attempt in range(fit.fits):
            if attempt > 0 or not keep_current:
                self.new_model()
            candidates.append((self.model, self.model_optimizer, self.policy_net, self.policy_optimizer))
        # every fit draws its windows from its own generator, seeded here: a fit's numbers are the same whether
        # the fits run one after another or at once
        seeds = torch.randint(0, 2**62, (fit.fits,)).tolist()

        def run(attempt: int) -> dict[str, float]:
            model, optimizer = candidates[attempt][:2]
            generator = torch.Generator(self.device).manual_seed(seeds[attempt])
            losses = fit.joint(model, optimizer, buffer, fit.updates, warmup=int(fit.latent_warmup * fit.updates),
                               generator=generator)
            if fit.fits > 1:  # something to choose between: a score
                losses.update({"train/fit_score": pixel_score(model, buffer, fit.prediction_horizon),
                               "train/fit_chosen": float(attempt)})
            return losses

        threads = min(fit.fits, torch.get_num_threads()) if self.device.type == "cpu" else 1
        if threads > 1:  # the fits at once, one torch thread each (torch releases the GIL inside its ops)
            with single_torch_thread(), ThreadPoolExecutor(threads) as pool:
                results = list(pool.map(run, range(fit.fits)))
        else:
            results = [run(attempt) for attempt in range(fit.fits)]
        best = min(range(fit.fits), key=lambda attempt: results[attempt].get("train/fit_score", 0.0))
        self.model, self.model_optimizer, self.policy_net, self.policy_optimizer = candidates[best]
        return results[best]

    def play(self, env: gym.Env, seed: int, controlled: bool) -> tuple[Trial, bool]:
        """One trial, random held actions or the controller's (plus exploration noise); the trial and whether
        the env called it a success (its info["is_success"] after the last step)."""
        agent = self.config.agent
        bound = self.bound.cpu().numpy()
        self.reset()
        if controlled:
            def act(obs: np.ndarray) -> np.ndarray:
                action = self.act(obs)
                if agent.exploration_noise > 0:
                    action = action + agent.exploration_noise * bound * self.rng.standard_normal(bound.shape)
                return np.clip(action, -bound, bound).astype(np.float32)
        else:
            act = HeldRandomActions(bound, agent.random_hold, agent.random_bang_bang, self.rng)
        episode = play_episode(env, act, seed, max_steps=agent.trial_steps)
        return Trial(episode.frames, episode.actions, episode.rewards), bool(episode.success)

    # acting ----------------------------------------------------------------------------------------------
    def reset(self) -> None:
        self.plan = None
        self.history = []

    def act(self, obs: np.ndarray) -> np.ndarray:
        """One observation -> the controller's action (deterministic given the agent's RNG state)."""
        agent = self.config.agent
        self.history.append(np.asarray(obs))
        history = self.latest_history()
        if agent.controller == "policy":
            with torch.no_grad():
                action = self.policy_net(history)
        else:
            planner = agent.cem if agent.controller == "cem" else agent.gradient
            if self.plan is None:
                self.plan = torch.zeros(planner.horizon, self.bound.numel(), device=self.device)
            plan = planner.plan(self.model, history, self.plan, self.bound)
            # Receding horizon: apply the first action, keep the rest as the next plan's starting point.
            self.plan = torch.cat([plan[1:], torch.zeros_like(plan[:1])])
            action = plan[0]
        return action.cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def latest_history(self) -> torch.Tensor:
        """The latent history of the last `context` observations seen (the first repeated at the start)."""
        context = self.model.context
        frames = self.history[-context:]
        frames = [frames[0]] * (context - len(frames)) + frames
        return self.model.encode(torch.from_numpy(np.stack(frames)).to(self.device))

    def latent_histories(self) -> torch.Tensor:
        """The latent history at every frame of the data that has one: (N, context, latent_dim)."""
        context = self.model.context
        with torch.no_grad():
            starts = []
            for trial in self.trials:
                latents = self.model.encode(torch.from_numpy(trial.frames).to(self.device))
                starts.append(latents.unfold(0, context, 1).transpose(1, 2))
        return torch.cat(starts)

    # recording -------------------------------------------------------------------------------------------
    def record(self, run: Run, trial: Trial, success: bool, controlled: bool, losses: dict[str, float],
               seconds: float) -> None:
        """Store the trial, log its figures and record it; a controlled trial with the model's reconstructions
        and predictions (a random trial was played before any model was fitted: it has none)."""
        self.trials.append(trial)
        self.successes.append(success)
        self.returns.append(float(trial.rewards.sum()))
        number = len(self.trials)
        metrics = {"trial/return": self.returns[-1], "trial/success": float(success), "trial/number": number,
                   "time/trial_s": seconds, **losses}
        episode = {"frames": trial.frames, "actions": trial.actions, "rewards": trial.rewards, "episode": number,
                   "trial": number, "fps": self.fps, "model_fitted": controlled}
        if controlled:
            frames = torch.from_numpy(trial.frames).to(self.device)
            predictions = self.model.predict_frames(frames, torch.from_numpy(trial.actions).to(self.device),
                                                    max(ERROR_STEPS))
            errors = prediction_errors(predictions, frames, ERROR_STEPS, self.model.context)
            self.model_error_10 = errors.get(10, float("nan"))
            metrics.update({f"model/error_{k}": value for k, value in errors.items()})
            to_uint8 = lambda images: (images * 255).round().to(torch.uint8).cpu().numpy()  # noqa: E731
            episode.update(reconstructions=to_uint8(self.model.reconstruct(frames)), predictions=to_uint8(predictions))
            if self.probe is not None:
                spread = self.spread()
                upright, hanging = np.abs(SPREAD_ANGLES) <= 30, np.abs(SPREAD_ANGLES) >= 150
                metrics.update({"model/spread_upright": float(spread[upright].mean()),
                                "model/spread_hanging": float(spread[hanging].mean())})
                append_spread(run.dir / SPREAD_FILE, number, spread)
        run.log(self.frames(), metrics)
        run.record_episode(episode)

    @torch.no_grad()
    def spread(self) -> np.ndarray:
        """The ensemble's disagreement at each of SPREAD_ANGLES (the pole at rest there): the members' standard
        deviation of the latents predicted `SPREAD_STEPS` steps ahead with no torque, in units of the spread of
        the latents of every frame so far, averaged over the steps and latent dimensions. `(angles,)`"""
        data = torch.cat([self.model.encode(torch.from_numpy(trial.frames).to(self.device)) for trial in self.trials])
        histories = self.model.with_members(self.model.encode(torch.from_numpy(self.probe).to(self.device)))
        actions = torch.zeros(self.probe.shape[0], SPREAD_STEPS, self.action_dim, device=self.device)
        rollouts = self.model.imagine(histories, actions)  # (members, angles, steps, latent_dim)
        return (rollouts.std(0) / data.std(0).clamp(min=1e-6)).mean((-2, -1)).cpu().numpy()

    def frames(self, trials: int | None = None) -> int:
        """Env steps (frames acted on) of all trials, or of the first `trials`."""
        return int(sum(len(trial.actions) for trial in self.trials[:trials]))

    def success_trial(self) -> int | None:
        """The number (from 1) of the first trial the env called a success, or None."""
        return next((index + 1 for index, success in enumerate(self.successes) if success), None)

    def summary(self) -> dict:
        """env_steps are the frames acted on and episodes the trials played; success_trial counts from 1."""
        return {"env_steps": self.frames(), "episodes": len(self.trials),
                "mean_return": float(np.mean(self.returns[-RECENT_TRIALS:])) if self.returns else float("nan"),
                "success_trial": self.success_trial(), "model_error_10": self.model_error_10,
                "returns": list(self.returns), "successes": list(self.successes)}

    def outcome(self) -> str:
        number = self.success_trial()
        if number is None:
            return f"not solved in {len(self.trials)} trials ({self.frames():,} frames)"
        return f"solved at trial {number} ({self.frames(number):,} frames)"

    # state -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(), "model_optimizer": self.model_optimizer.state_dict(),
            "policy": self.policy_net.state_dict(), "policy_optimizer": self.policy_optimizer.state_dict(),
            "trials": [{"frames": torch.from_numpy(trial.frames), "actions": torch.from_numpy(trial.actions),
                        "rewards": torch.from_numpy(trial.rewards)} for trial in self.trials],
            "successes": list(self.successes), "returns": list(self.returns), "model_error_10": self.model_error_10,
            "teacher_labels": [(trial, window, torch.from_numpy(action)) for trial, window, action
                               in self.teacher_labels],
            "rng": generator_state(self.rng), "global_rng": rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.model_optimizer.load_state_dict(state["model_optimizer"])
        self.policy_net.load_state_dict(state["policy"])
        self.policy_optimizer.load_state_dict(state["policy_optimizer"])
        self.trials = [Trial(item["frames"].numpy(), item["actions"].numpy(), item["rewards"].numpy())
                       for item in state["trials"]]
        self.successes = [bool(value) for value in state["successes"]]
        self.returns = [float(value) for value in state["returns"]]
        self.model_error_10 = float(state["model_error_10"])
        self.teacher_labels = [(int(trial), int(window), action.numpy()) for trial, window, action
                               in state.get("teacher_labels", [])]  # none in checkpoints before 2026-11-26
        set_generator_state(self.rng, state["rng"])
        set_rng_state(state["global_rng"])


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


def probe_frames(config: RunConfig) -> np.ndarray | None:
    """The frames an ensemble's spread is probed on: for each of SPREAD_ANGLES, the pole at rest there and one
    step later (no torque), `(angles, 2, C, H, W)` (two frames: the model's context on the pendulum). None for an
    env that cannot be reset to an angle (`reset(options={"angle": ...})`, the pixel pendulum's)."""
    env = make_env(config)
    try:
        frames = []
        for angle in SPREAD_ANGLES:
            first, _ = env.reset(seed=0, options={"angle": float(np.deg2rad(angle)), "angular_velocity": 0.0})
            second = env.step(np.zeros(env.action_space.shape, env.action_space.dtype))[0]
            frames.append(np.stack([first, second]))
    except ValueError:  # check_options: this env takes no angle
        return None
    finally:
        env.close()
    return np.stack(frames)


def append_spread(path: Path, trial: int, spread: np.ndarray) -> None:
    """One row of spread.csv: the trial and the spread at each of SPREAD_ANGLES (the header names them)."""
    new = not path.exists()
    with path.open("a") as file:
        if new:
            file.write("trial," + ",".join(f"{angle}" for angle in SPREAD_ANGLES) + "\n")
        file.write(f"{trial}," + ",".join(f"{value:.5g}" for value in spread) + "\n")


def plot_spread(path: Path, out: Path) -> Path:
    """spread.png: the ensemble's spread against the pole's angle, one line per controlled trial (light: early,
    dark: late). Written to a temporary name, then renamed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    angles = np.asarray(path.read_text().splitlines()[0].split(",")[1:], dtype=float)
    figure, axes = plt.subplots(figsize=(7, 4))
    colours = plt.cm.viridis(np.linspace(0.9, 0.0, len(table)))
    for row, colour in zip(table, colours, strict=True):
        axes.plot(angles, row[1:], color=colour, label=f"after trial {int(row[0]) - 1}")
    axes.set_xlabel("pole angle from upright (degrees), at rest")
    axes.set_ylabel(f"members' spread, {SPREAD_STEPS} steps ahead\n(latent std units)")
    axes.set_title("Where the ensemble disagrees")
    axes.legend(fontsize=7)
    figure.tight_layout()
    atomic_write(out, lambda file: figure.savefig(file, format="png", dpi=100))
    plt.close(figure)
    return out


class HeldRandomActions:
    """Exploration for the first trials: a random action every `hold` steps, held in between; at +-bound
    (`bang_bang`) or uniform within it. Call it with each observation (it ignores them)."""

    def __init__(self, bound: np.ndarray, hold: int, bang_bang: bool, rng: np.random.Generator) -> None:
        self.bound, self.hold, self.bang_bang, self.rng = bound, hold, bang_bang, rng
        self.steps = 0
        self.action = np.zeros_like(bound)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if self.steps % self.hold == 0:
            self.action = (self.bound * self.rng.choice([-1.0, 1.0], size=self.bound.shape) if self.bang_bang
                           else self.rng.uniform(-self.bound, self.bound))
        self.steps += 1
        return np.clip(self.action, -self.bound, self.bound).astype(np.float32)


# fitting -------------------------------------------------------------------------------------------------
class Windows(NamedTuple):
    """A batch of windows of consecutive frames of the trials: what the model's losses take."""

    observations: torch.Tensor  # (batch, length, C, H, W) uint8 frames, or (batch, length, latent_dim) latents
    actions: torch.Tensor  # (batch, length - 1, action_dim): the action out of each frame but the last
    rewards: torch.Tensor  # (batch, length - 1): the reward of each of those steps
    valid: torch.Tensor  # (batch, length - 1): 1 where the step happened (0 past a trial's end)


class TrialBuffer(NamedTuple):
    """Every trial so far, padded once to the longest (:meth:`of`), sampled as :class:`Windows`."""

    observations: torch.Tensor  # (N, T + 1, C, H, W) uint8, the last frame repeated past a trial's end
    actions: torch.Tensor  # (N, T, action_dim)
    rewards: torch.Tensor  # (N, T)
    valid: torch.Tensor  # (N, T): 1 where the step happened

    @classmethod
    def of(cls, trials: Iterable[Trial], device: torch.device | str = "cpu") -> TrialBuffer:
        trials = list(trials)
        steps = max(len(trial.actions) for trial in trials)
        count = len(trials)
        frames = np.zeros((count, steps + 1, *trials[0].frames.shape[1:]), np.uint8)
        actions = np.zeros((count, steps, trials[0].actions.shape[1]), np.float32)
        rewards = np.zeros((count, steps), np.float32)
        valid = np.zeros((count, steps), np.float32)
        for index, trial in enumerate(trials):
            length = len(trial.actions)
            frames[index, : length + 1] = trial.frames
            frames[index, length + 1 :] = trial.frames[-1]
            actions[index, :length], rewards[index, :length], valid[index, :length] = trial.actions, trial.rewards, 1
        return cls(*(torch.from_numpy(array).to(device) for array in (frames, actions, rewards, valid)))

    @torch.no_grad()
    def encoded(self, model: DeepDynamicalModel) -> TrialBuffer:
        """The same buffer with each frame replaced by its latent `(N, T + 1, latent_dim)` (no gradients):
        fitting the transition on these involves no images (~100x cheaper per update than a joint one)."""
        return self._replace(observations=model.encode(self.observations))

    def windows(self, trial: torch.Tensor, start: torch.Tensor, length: int) -> Windows:
        """The windows of `length` frames starting at `start` in `trial` (each `(batch, 1)` indices)."""
        index = start + torch.arange(length, device=start.device)  # (batch, length) frame indices
        steps = index[:, :-1]
        return Windows(self.observations[trial, index], self.actions[trial, steps], self.rewards[trial, steps],
                       self.valid[trial, steps])

    def sample(self, length: int, batch: int, focus: float = 0.0, generator: torch.Generator | None = None) -> Windows:
        """`batch` random windows of `length` frames (uniform over starts; from `generator`, or torch's global one).

        A `focus` fraction is drawn with probability growing with the window's mean reward (standardised,
        softmax): the states that matter for control (the pole near upright) are rare in the data, and
        the model's errors there decide whether it can be held.
        """
        count, steps = self.rewards.shape
        starts = steps + 2 - length
        windows = self.rewards.unfold(1, length - 1, 1)[:, :starts].mean(-1)  # (count, starts)
        usable = self.valid.unfold(1, length - 1, 1)[:, :starts].amin(-1) > 0
        score = (windows - windows[usable].mean()) / windows[usable].std().clamp(min=1e-6)
        weights = torch.where(usable, score.exp(), torch.zeros_like(score)).flatten()
        focused = int(round(focus * batch)) if weights.sum() > 0 else 0
        flat = torch.randint(0, count * starts, (batch,), device=self.rewards.device, generator=generator)
        if focused:
            flat[:focused] = torch.multinomial(weights, focused, replacement=True, generator=generator)
        return self.windows((flat // starts).unsqueeze(1), (flat % starts).unsqueeze(1), length)

    def every(self, length: int, stride: int) -> Windows:
        """Every `stride`-th window of `length` frames that lies within its trial: the same windows each call."""
        usable = self.valid.unfold(1, length - 1, stride).amin(-1) > 0  # (trials, windows)
        trial, window = usable.nonzero(as_tuple=True)
        return self.windows(trial.unsqueeze(1), (window * stride).unsqueeze(1), length)


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
    loss = model.loss(*buffer.every(model.context + prediction_horizon, stride))
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
        length = model.context + self.prediction_horizon

        def loss(windows: Windows, update: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            terms = model.loss(*windows, 0.0 if update < warmup else self.latent_weight, self.reward_weight)
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
        length = model.context + self.prediction_horizon
        optimizer = adam([*model.transition_net.parameters(), *model.reward_net.parameters()], self.lr)

        def loss(windows: Windows, update: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            _, latent_error, reward_error = model.latent_losses(*windows)
            total = self.latent_weight * latent_error + self.reward_weight * reward_error
            return total, {"dynamics_latent": latent_error, "dynamics_reward": reward_error}

        return optimise(self.dynamics_updates, lambda: latents.sample(length, self.dynamics_batch, self.focus), loss,
                        optimizer, self.scheduler(optimizer, self.dynamics_updates))


# planning (model-predictive control) ---------------------------------------------------------------------
@dataclass
class CEM:
    """The cross-entropy method over action sequences, scored by the model's summed predicted rewards (the
    `cem:` block).

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
            if members == 1:
                returns = model.reward(rollouts).sum(-1).view(count, particles, self.candidates).mean(1)
            else:  # (members, count, candidates): each member's mean over its particles
                returns = model.reward(rollouts).sum(-1).view(members, count, particles, self.candidates).mean(2)
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
            returns = model.members_mean(model.reward(model.imagine(histories, bound * torch.tanh(parameters))).sum(-1))
            optimizer.zero_grad()
            (-returns.sum()).backward()
            optimizer.step()
        with torch.no_grad():
            actions = bound * torch.tanh(parameters)
            returns = model.members_mean(model.reward(model.imagine(histories, actions)).sum(-1))
            return actions[returns.argmax()]


# the feedback policy -------------------------------------------------------------------------------------
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
    """Summed predicted rewards of `policy` acting for `horizon` steps in the model from each history.

    Shapes: `histories (batch, context, latent_dim)` -> `(batch,)` (an ensemble's: the members' mean).
    """
    histories = model.with_members(histories)
    total = torch.zeros(histories.shape[:-2], device=histories.device)
    for _ in range(horizon):
        histories = model.step(histories, policy(histories), sample=True)
        total = total + model.reward(histories[..., -1, :])
    return model.members_mean(total)


@dataclass
class PolicySearch:
    """Policy search through the model (the `policy:` block): ascend the imagined return of the feedback
    policy from start histories drawn from the data."""

    hidden: list[int] = field(default_factory=lambda: [64, 64])  # policy MLP sizes
    squash: Literal["sin", "tanh"] = "sin"  # the output's map into the bound (see Policy)
    max_grad_norm: float = 1.0  # the search's gradients clipped to this norm (imagined returns are long chains)
    horizon: int = 30  # imagined steps per update
    batch: int = 256  # imagined rollouts per update (starts drawn from the data)
    updates: int = 200  # policy updates per trial
    lr: float = 3e-3  # Adam learning rate of the policy
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
        at_least(self, 1, "horizon", "batch", "labels")
        at_least(self, 0, "updates", "imitation_updates")
        if self.lr <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr}")
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

    def improve(self, model: DeepDynamicalModel, policy: Policy, optimizer: torch.optim.Optimizer,
                starts: torch.Tensor) -> float:
        """`updates` updates of `policy` (the model is not updated: only the policy is in `optimizer`).

        Shapes: `starts (N, context, latent_dim)`. Returns the mean imagined return of the last update.
        """
        value = float("nan")
        for _ in range(self.updates):
            chosen = starts[torch.randint(0, starts.shape[0], (self.batch,), device=starts.device)]
            if self.value:
                value = self.actor_critic_update(model, policy, optimizer, chosen)
                continue
            returns = imagined_return(model, policy, chosen, self.horizon)
            optimizer.zero_grad()
            (-returns.mean()).backward()
            nn.utils.clip_grad_norm_(policy.parameters(), self.max_grad_norm)
            optimizer.step()
            value = float(returns.detach().mean())
        return value

    def actor_critic_update(self, model: DeepDynamicalModel, policy: Policy, optimizer: torch.optim.Optimizer,
                            starts: torch.Tensor) -> float:
        """One update of `value: true`: the policy acts `horizon` steps in the model from `starts`; the actor
        ascends the mean lambda-return (through the model), the critic regresses each imagined history's value
        on its lambda-return (no gradient into the rollout). Returns the mean lambda-return from the starts."""
        histories, rewards = [model.with_members(starts)], []
        for _ in range(self.horizon):
            histories.append(model.step(histories[-1], policy(histories[-1]), sample=True))
            rewards.append(model.reward(histories[-1][..., -1, :]))
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
