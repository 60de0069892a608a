"""Stable-Baselines3 algorithms (PPO, A2C, SAC, TD3, DQN) as the pixelpilot agent kind ``sb3``.

SB3 does the learning; this module gives it pixelpilot's envs (with frames stacked on the channel axis,
so a velocity is visible), logs to the run directory, records env 0's episodes, writes resumable
checkpoints (weights, optimisers, counters, RNG states, loadable with ``torch.load(weights_only=True)``;
not SB3's zip), and evaluates the deterministic policy every ``eval_every`` env steps. On an env that
says whether an episode succeeded (``info["is_success"]`` on its last step, as the pixel pendulum does)
it also logs the success rate, so "frames until first success" can be read from the run.

    agent:
      kind: sb3
      algo: ppo
      policy: CnnPolicy
      total_steps: 200000
      algo_kwargs: {n_steps: 512, gamma: 0.9}

Off-policy algorithms (SAC, TD3, DQN) resume with an empty replay buffer: a checkpoint holds weights
and optimisers, not the buffer.
"""

from __future__ import annotations

import importlib
import inspect
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from gymnasium.wrappers import FrameStackObservation, ReshapeObservation, TransformReward
from stable_baselines3 import A2C, DQN, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.save_util import recursive_getattr
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.core.config import ConfigError, RunConfig, at_least
from agents.core.envs import env_fps, make_env
from agents.core.episodes import EVAL_SEED_OFFSET, EpisodeStats, evaluate
from agents.core.run import Every, Run, generator_state, rng_state, set_generator_state, set_rng_state

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "a2c": A2C, "sac": SAC, "td3": TD3, "dqn": DQN}
ACTION_SPACES: dict[str, tuple[type[gym.Space], ...]] = {
    "ppo": (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary),
    "a2c": (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary),
    "sac": (gym.spaces.Box,),
    "td3": (gym.spaces.Box,),
    "dqn": (gym.spaces.Discrete,),
}
# Constructor arguments pixelpilot sets itself, from the config's other keys.
RESERVED_KWARGS = {"policy": "agent.policy", "env": "env", "seed": "seed", "device": "train.device",
                   "policy_kwargs": "agent.policy_kwargs", "verbose": "", "tensorboard_log": "",
                   "_init_setup_model": ""}


def resolve_classes(kwargs: Mapping[str, Any], section: str) -> dict:
    """YAML cannot hold classes, so ``activation_fn`` and ``*_class`` values name them: a ``torch.nn``
    (or for ``optimizer_class`` a ``torch.optim``) name such as ``"ReLU"``, or ``"module:Name"``."""
    resolved = dict(kwargs)
    for key, value in kwargs.items():
        if not isinstance(value, str) or not (key == "activation_fn" or key.endswith("_class")):
            continue
        module_name, _, name = value.rpartition(":")
        module_name = module_name or ("torch.optim" if key == "optimizer_class" else "torch.nn")
        try:
            resolved[key] = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError):
            raise ConfigError(f"{section}.{key}: cannot import {value!r} "
                              "(give a torch.nn name such as ReLU, or module:Name)") from None
    return resolved


@dataclass
class Config:
    kind: str = "sb3"
    # SB3 algorithm: ppo, a2c (any action space), sac, td3 (continuous), dqn (discrete)
    algo: Literal["ppo", "a2c", "sac", "td3", "dqn"] = "ppo"
    policy: str = "CnnPolicy"  # SB3 policy alias: CnnPolicy (NatureCNN, images >= 36x36) or MlpPolicy
    total_steps: int = 100_000  # env steps to train (summed over all envs); the frame budget
    frame_stack: int = 3  # consecutive frames stacked on the channel axis, so the policy can see velocity
    reward_scale: float = 1.0  # SB3 learns from reward * reward_scale (logged returns stay unscaled)
    algo_kwargs: dict = field(default_factory=dict)  # passed to the SB3 constructor; SB3's defaults otherwise
    policy_kwargs: dict = field(default_factory=dict)  # SB3 policy_kwargs (activation_fn: "ReLU", ...)
    eval_every: int = 10_000  # env steps between evaluations of the deterministic policy
    eval_episodes: int = 5  # episodes per evaluation (the evaluation seeds, the same each time)

    def validate(self) -> None:
        algorithm = ALGORITHMS[self.algo]
        if self.policy not in algorithm.policy_aliases:
            raise ConfigError(f"policy: {algorithm.__name__} has no policy {self.policy!r} "
                              f"(known: {', '.join(algorithm.policy_aliases)})")
        at_least(self, 1, "total_steps", "frame_stack", "eval_every", "eval_episodes")
        if self.reward_scale <= 0:
            raise ConfigError(f"reward_scale: must be > 0, got {self.reward_scale}")
        arguments = inspect.signature(algorithm.__init__).parameters
        for key in self.algo_kwargs:
            if key in RESERVED_KWARGS:
                where = f" (set it with {RESERVED_KWARGS[key]})" if RESERVED_KWARGS[key] else ""
                raise ConfigError(f"algo_kwargs.{key}: set by pixelpilot{where}")
            if key not in arguments:
                raise ConfigError(f"algo_kwargs.{key}: not an argument of {algorithm.__name__} "
                                  f"(known: {', '.join(name for name in arguments if name not in RESERVED_KWARGS)})")
        resolve_classes(self.algo_kwargs, "algo_kwargs")
        resolve_classes(self.policy_kwargs, "policy_kwargs")


def _encode_step(step: int | None) -> int:
    return -1 if step is None else step


def _decode_step(step: int) -> int | None:
    return None if step < 0 else int(step)


def stack_frames(env: gym.Env, frames: int) -> gym.Env:
    """``(C, H, W)`` observations -> ``(frames * C, H, W)``, oldest first; a reset fills the stack with
    copies of the first frame."""
    if frames == 1:
        return env
    channels, height, width = env.observation_space.shape
    env = FrameStackObservation(env, frames)
    return ReshapeObservation(env, (frames * channels, height, width))


def scale_reward(env: gym.Env, scale: float) -> gym.Env:
    """Multiply rewards by ``scale`` (pixel pendulum rewards reach -16 a step; PPO's value loss, which
    shares the CNN with the policy, behaves better near unit scale)."""
    return env if scale == 1.0 else TransformReward(env, lambda reward: reward * scale)


class SB3Agent:
    """An SB3 model trained on ``env.num_envs`` envs of ``config.env`` (see the module docstring)."""

    Config = Config
    # A sweep ranks trials by mean_return; ASHA may stop a poor one early (it logs rollout/ep_return as it learns).
    metric, metric_mode, early_stopping, distributed = "mean_return", "max", True, False

    @classmethod
    def check(cls, config: RunConfig) -> None:
        """Nothing beyond the config's own validation (SB3 checks the algorithm against the env when made)."""

    @classmethod
    def pbt_mutations(cls, config: RunConfig) -> dict:
        return {}  # no population-based training of SB3 models (yet)

    def __init__(self, config: RunConfig, device: torch.device) -> None:
        self.config = config
        agent = config.agent
        # The reward is scaled outside SB3's Monitor, so episode returns are logged unscaled.
        self.vec_env = sb3_make_vec_env(
            lambda: stack_frames(make_env(config), agent.frame_stack), n_envs=config.env.num_envs,
            seed=config.seed, vec_env_cls=DummyVecEnv, wrapper_class=scale_reward,
            wrapper_kwargs={"scale": agent.reward_scale})
        space = self.vec_env.action_space
        if not isinstance(space, ACTION_SPACES[agent.algo]):
            fitting = [name for name, spaces in ACTION_SPACES.items() if isinstance(space, spaces)]
            raise ConfigError(f"agent.algo: {agent.algo} cannot act in {config.env.id}'s action space {space} "
                              f"(algorithms that can: {', '.join(fitting)})")
        self.frame_channels = self.vec_env.observation_space.shape[0] // agent.frame_stack
        try:
            self.model = ALGORITHMS[agent.algo](
                agent.policy, self.vec_env, seed=config.seed, device=device, verbose=0,
                policy_kwargs=resolve_classes(agent.policy_kwargs, "agent.policy_kwargs"),
                **resolve_classes(agent.algo_kwargs, "agent.algo_kwargs"))
        except (AssertionError, TypeError, ValueError) as err:
            raise ConfigError(f"agent: {agent.algo} rejects this config or env: {err}") from None
        # No SB3 output: metrics go to the run directory; SB3's train/* values are read from name_to_value.
        self.model.set_logger(Logger(folder=None, output_formats=[]))
        self.stats = EpisodeStats()  # training episodes: rollout/* metrics, summary.json
        self.first_eval_success_step: int | None = None  # env steps at the first evaluation with a success
        self.last_eval: dict[str, float] = {}
        self.stack: deque[np.ndarray] = deque(maxlen=agent.frame_stack)
        self.eval_env: gym.Env | None = None

    @property
    def episodes(self) -> int:
        return self.stats.episodes

    @property
    def env_steps(self) -> int:
        return int(self.model.num_timesteps)

    def train(self, run: Run, until: int | None = None) -> None:
        """Train to agent.total_steps env steps, or only to `until` of them (a round of population-based
        training or of `bench score`; the next call goes on with the same envs), checkpointing at the stop."""
        total = self.config.agent.total_steps
        stop = total if until is None else min(until, total)
        if self.model._last_obs is None:
            # A resumed run reseeds from where it stopped, so its episodes differ from the first run's.
            self.vec_env.seed(self.config.seed + self.env_steps)
        bar = run.progress(total, initial=self.env_steps)
        callback = RunCallback(self, run, bar, stop)
        if self.env_steps < stop:
            # To total_steps, whatever the stop (the callback stops at it), so SB3's schedules (exploration,
            # learning rate) run over the whole budget; reset_num_timesteps=False keeps its counters where a
            # checkpoint or the previous round left them.
            self.model.learn(total_timesteps=total - self.env_steps, callback=callback, log_interval=None,
                             reset_num_timesteps=False)
        bar.close()
        if self.env_steps >= total and self.last_eval.get("step") != self.env_steps:
            run.log(self.env_steps, self.evaluate_and_track())
        run.save_checkpoint(self.state_dict(), self.env_steps)
        if self.env_steps >= total:
            self.vec_env.close()

    def summary(self) -> dict:
        result = {"env_steps": self.env_steps, **self.stats.summary(), "eval_return": self.last_eval.get("eval/return")}
        if "eval/success" in self.last_eval:
            result.update({"eval_success": self.last_eval["eval/success"],
                           "eval_frames_to_first_success": self.first_eval_success_step})
        return result

    def outcome(self) -> str:
        line = (f"mean return {self.stats.mean_return():.2f} over the last {len(self.stats.returns)} training "
                f"episodes, {self.last_eval.get('eval/return', float('nan')):.2f} evaluated ({self.env_steps:,} env "
                "steps)")
        if "eval/success" in self.last_eval:
            first = self.first_eval_success_step
            line += (f"; first evaluated success at {first:,} env steps" if first is not None
                     else "; no evaluated success")
        return line

    def evaluate_and_track(self) -> dict[str, float]:
        """Evaluate now, remember the first success, and return the eval/* metrics."""
        if self.eval_env is None:
            self.eval_env = make_env(self.config)
        # Evaluation frames do not count as training env steps.
        returns, successes = evaluate(self, self.eval_env, self.config.agent.eval_episodes,
                                      self.config.seed + EVAL_SEED_OFFSET)
        metrics = {"eval/return": float(returns.mean())}
        if successes is not None:
            metrics["eval/success"] = float(successes.mean())
            if successes.any() and self.first_eval_success_step is None:
                self.first_eval_success_step = self.env_steps
        self.last_eval = {**metrics, "step": self.env_steps}
        return metrics

    def reset(self) -> None:
        """Forget the frame stack (the next observation fills it, as the training envs' reset does)."""
        self.stack.clear()

    def act(self, obs: np.ndarray) -> np.ndarray | int:
        """One ``(C, H, W)`` observation -> the deterministic action, stacked with the previous frames."""
        if not self.stack:
            self.stack.extend([obs] * self.stack.maxlen)
        else:
            self.stack.append(obs)
        action, _ = self.model.predict(np.concatenate(self.stack, axis=0), deterministic=True)
        return int(action) if isinstance(self.model.action_space, gym.spaces.Discrete) else action

    def state_dict(self) -> dict:
        _, variables = self.model._get_torch_save_params()
        return {
            "parameters": self.model.get_parameters(),  # policy and optimiser state dicts
            "variables": {name: recursive_getattr(self.model, name).detach().cpu() for name in variables},
            "num_timesteps": self.env_steps,
            "sb3_episodes": int(self.model._episode_num),
            "n_updates": int(getattr(self.model, "_n_updates", 0)),
            "n_calls": int(getattr(self.model, "_n_calls", 0)),  # DQN's target-update clock
            **self.stats.state_dict(),
            "first_eval_success_step": _encode_step(self.first_eval_success_step),
            "rng": rng_state(),
            "action_space_rng": generator_state(self.model.action_space.np_random),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.set_parameters(state["parameters"], exact_match=True, device=self.model.device)
        with torch.no_grad():
            for name, value in state["variables"].items():
                recursive_getattr(self.model, name).copy_(value)
        self.model.num_timesteps = int(state["num_timesteps"])
        self.model._episode_num = int(state["sb3_episodes"])
        if hasattr(self.model, "_n_updates"):
            self.model._n_updates = int(state["n_updates"])
        if hasattr(self.model, "_n_calls"):
            self.model._n_calls = int(state["n_calls"])
        if "first_training_success_step" in state:  # checkpoints before 2026-12-06 kept it under this name
            state = {**state, "first_success_step": state["first_training_success_step"]}
        self.stats.load_state_dict(state)
        self.first_eval_success_step = _decode_step(state["first_eval_success_step"])
        set_rng_state(state["rng"])
        set_generator_state(self.model.action_space.np_random, state["action_space_rng"])


class RunCallback(BaseCallback):
    """Called by SB3 after every vectorised env step: counts episodes, records env 0, logs, evaluates,
    checkpoints, and stops SB3 exactly at ``stop`` (total_steps, or the end of a round)."""

    def __init__(self, agent: SB3Agent, run: Run, bar: Any, stop: int) -> None:
        super().__init__()
        self.agent = agent
        self.run = run
        self.bar = bar
        self.stop = stop  # env steps at which this call of learn() ends
        self.fps = env_fps(agent.vec_env.envs[0])

    def _on_training_start(self) -> None:
        steps = self.num_timesteps
        self.log_due = Every(self.run.config.train.log_every, start=steps)
        self.eval_due = Every(self.agent.config.agent.eval_every, start=steps)
        self.start_episode(self.model._last_obs[0])

    def start_episode(self, obs: np.ndarray) -> None:
        self.frames, self.actions, self.rewards = [self.newest_frame(obs)], [], []

    def newest_frame(self, obs: np.ndarray) -> np.ndarray:
        """The newest ``(C, H, W)`` frame of a stacked observation."""
        return obs[-self.agent.frame_channels:]

    def _on_step(self) -> bool:
        agent, steps = self.agent, self.num_timesteps
        # SB3 names the actions the envs received `clipped_actions` in on-policy rollouts, `actions` otherwise.
        actions = self.locals.get("clipped_actions", self.locals["actions"])
        new_obs, rewards, dones, infos = (self.locals[key] for key in ("new_obs", "rewards", "dones", "infos"))
        self.bar.update(steps - self.bar.n)
        self.actions.append(actions[0])
        self.rewards.append(rewards[0] / agent.config.agent.reward_scale)
        for index, info in enumerate(infos):
            if dones[index]:
                self.end_episode(index, info)
        if dones[0]:  # the envs auto-reset: new_obs[0] already starts the next episode
            self.start_episode(new_obs[0])
        else:
            self.frames.append(self.newest_frame(new_obs[0]))
        metrics: dict[str, float] = {}
        if self.log_due(steps):
            metrics.update(self.rollout_metrics(steps))
        if self.eval_due(steps):
            metrics.update(agent.evaluate_and_track())
        if metrics:
            self.run.log(steps, metrics)
        if self.run.checkpoint_due(steps):
            self.run.save_checkpoint(agent.state_dict(), steps)
        return steps < self.stop

    def end_episode(self, index: int, info: Mapping[str, Any]) -> None:
        stats = self.agent.stats
        # the env's word on the episode, read on its last step
        stats.add(float(info["episode"]["r"]), bool(info["is_success"]) if "is_success" in info else None,
                  self.num_timesteps)
        if index == 0:
            self.frames.append(self.newest_frame(info["terminal_observation"]))
            self.record_env0(stats.episodes)
        self.bar.set_postfix(episodes=stats.episodes, ret=f"{stats.mean_return():.1f}", refresh=False)

    def record_env0(self, episode: int) -> None:
        discrete = isinstance(self.model.action_space, gym.spaces.Discrete)
        actions = np.asarray(self.actions, np.int64 if discrete else np.float32)
        self.run.record_episode({"frames": np.stack(self.frames), "actions": actions,
                                 "rewards": np.asarray(self.rewards, np.float32), "episode": episode,
                                 "fps": self.fps})

    def rollout_metrics(self, steps: int) -> dict[str, float]:
        agent = self.agent
        metrics = {**agent.stats.metrics(), "time/fps": self.run.steps_per_second(steps)}
        # SB3 records its losses (train/loss, train/entropy_loss, ...) in the logger after each update.
        metrics.update({key: float(value) for key, value in self.model.logger.name_to_value.items()
                        if key.startswith("train/") and isinstance(value, (int, float, np.number))})
        return metrics
