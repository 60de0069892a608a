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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Literal

import gymnasium as gym
import numpy as np
import torch

from agents.core.config import ConfigError, RunConfig, at_least, config_class
from agents.core.envs import env_fps, make_env
from agents.core.episodes import EpisodeStats, play_episode
from agents.core.run import Run, generator_state, rng_state, set_generator_state, set_rng_state
from agents.ddm.data import HeldRandomActions, Trial, TrialBuffer
from agents.ddm.fits import Fit, adam, pixel_score, single_torch_thread
from agents.ddm.planners import CEM, GradientShooting
from agents.ddm.policy import Policy, PolicySearch
from agents.ddm.spread import (
    SPREAD_ANGLES,
    SPREAD_FILE,
    SPREAD_PLOT,
    SPREAD_STEPS,
    append_spread,
    plot_spread,
    probe_frames,
)
from nets.ddm import DeepDynamicalModel, prediction_errors

ERROR_STEPS = (1, 5, 10)  # model prediction errors logged per trial, in steps ahead


def _check_model(model: ModelConfig) -> None:
    at_least(model, 1, "latent_dim", "context", "ensemble", "fovea_width")
    if model.encoder == "fovea" and model.latent_dim < 2:
        raise ConfigError(f"latent_dim: the fovea encoder needs at least 2 (the window's and its place), got "
                          f"{model.latent_dim}")
    if model.inertia and model.context < 2:
        raise ConfigError(f"inertia: needs model.context >= 2 (a velocity), got context {model.context}")
    if model.reward_velocity and model.context < 2:
        raise ConfigError(f"reward_velocity: needs model.context >= 2 (a velocity), got context {model.context}")
    if model.min_std <= 0:
        raise ConfigError(f"min_std: must be > 0, got {model.min_std}")
    if model.alive_bonus and model.continue_hidden is None:
        raise ConfigError(f"alive_bonus: {model.alive_bonus} needs a continue head (model.continue_hidden): without "
                          "one no imagined rollout ends, and the bonus changes no plan")


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


# the agent -----------------------------------------------------------------------------------------------
class DDMAgent:
    Config = Config
    # A sweep ranks trials by summary.json's trials_to_success (lower is better), known only at a run's end.
    metric, metric_mode, early_stopping = "trials_to_success", "min", False
    distributed = False

    @classmethod
    def check(cls, config: RunConfig) -> None:
        """Nothing beyond the config's own validation."""

    @classmethod
    def pbt_mutations(cls, config: RunConfig) -> dict:
        return {}  # no population-based training: a run is a handful of trials

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
        if agent.model.encoder == "fovea" and agent.model.fovea_width > self.obs_shape[-1]:
            raise ConfigError(f"agent.model.fovea_width: the window must fit in the image ({self.obs_shape[-1]} "
                              f"columns), got {agent.model.fovea_width}")
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
        self.policy_net, self.policy_optimizer = self.new_policy()

    def new_policy(self) -> tuple[Policy, torch.optim.Optimizer]:
        """A freshly initialised feedback policy and its optimiser."""
        agent = self.config.agent
        policy = Policy(agent.model.context, agent.model.latent_dim, self.bound, agent.policy.hidden,
                        agent.policy.critic_hidden if agent.policy.value else None, agent.policy.squash).to(self.device)
        return policy, adam(policy.parameters(), agent.policy.lr)

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
        buffer = TrialBuffer.of(self.data_trials(), self.device)
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
            first = self.first_histories() if agent.policy.episode_horizon else None
            self.policy_net, self.policy_optimizer, figures = agent.policy.search(
                self.model, self.policy_net, self.policy_optimizer, histories, self.new_policy, first)
            losses.update(figures)
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

        at_once = self.device.type == "cpu" and torch.get_num_threads() > 1 and fit.fits > 1
        if at_once:
            # every fit at once, one torch thread each (torch releases the GIL inside its ops): with more fits
            # than threads the system shares the cores among them, so three fits on two cores take ~1.5 fits'
            # time, not two rounds (two at once, then one alone on one core)
            with single_torch_thread(), ThreadPoolExecutor(fit.fits) as pool:
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
        return Trial(episode.frames, episode.actions, episode.rewards, episode.terminated), bool(episode.success)

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

    def data_trials(self) -> list[Trial]:
        """The trials the fits and the policy search read: every trial, then (`fit.mirror`) their mirror images."""
        if not self.config.agent.fit.mirror:
            return self.trials
        return self.trials + [trial.mirrored() for trial in self.trials]

    def latent_histories(self) -> torch.Tensor:
        """The latent history at every frame of :meth:`data_trials` that has one: (N, context, latent_dim); the
        real trials' rows first (window w of trial i is row offset[i] + w, as :meth:`imitate_planner` reads)."""
        context = self.model.context
        with torch.no_grad():
            starts = []
            for trial in self.data_trials():
                latents = self.model.encode(torch.from_numpy(trial.frames).to(self.device))
                starts.append(latents.unfold(0, context, 1).transpose(1, 2))
        return torch.cat(starts)

    def first_histories(self) -> torch.Tensor:
        """Each of :meth:`data_trials`' first latent history (its reset frame and the frames after it): (trials,
        context, latent_dim)."""
        context = self.model.context
        with torch.no_grad():
            return torch.stack([self.model.encode(torch.from_numpy(trial.frames[:context]).to(self.device))
                                for trial in self.data_trials()])

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

    def episode_stats(self) -> EpisodeStats:
        """The trials as training episodes, counted as every agent counts them (a trial is an episode)."""
        stats = EpisodeStats()
        for number, (episode_return, success) in enumerate(zip(self.returns, self.successes, strict=True), 1):
            stats.add(episode_return, success, self.frames(number))
        return stats

    def summary(self) -> dict:
        """env_steps are the frames acted on and episodes the trials played; success_trial counts from 1, and
        trials_to_success is the same with an unsolved run counted as agent.trials + 1 (what a sweep ranks)."""
        success_trial = self.success_trial()
        return {"env_steps": self.frames(), **self.episode_stats().summary(),
                "success_trial": success_trial,
                "trials_to_success": success_trial if success_trial is not None else self.config.agent.trials + 1,
                "model_error_10": self.model_error_10, "returns": list(self.returns),
                "successes": list(self.successes)}

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
                        "rewards": torch.from_numpy(trial.rewards), "terminated": trial.terminated}
                       for trial in self.trials],
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
        self.trials = [Trial(item["frames"].numpy(), item["actions"].numpy(), item["rewards"].numpy(),
                             bool(item.get("terminated", False)))  # not kept before 2026-12-06
                       for item in state["trials"]]
        self.successes = [bool(value) for value in state["successes"]]
        self.returns = [float(value) for value in state["returns"]]
        self.model_error_10 = float(state["model_error_10"])
        self.teacher_labels = [(int(trial), int(window), action.numpy()) for trial, window, action
                               in state.get("teacher_labels", [])]  # none in checkpoints before 2026-11-26
        set_generator_state(self.rng, state["rng"])
        set_rng_state(state["global_rng"])
