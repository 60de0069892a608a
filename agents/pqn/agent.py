"""PQN (Gallici et al. 2024, "Simplifying Deep Temporal Difference Learning"): Q-learning on many envs stepped
as one batch, with no replay memory and no target network; layer norm in the Q-network keeps it stable.

The story, in the order this file tells it (PQNAgent.train):

    every rollout (`rollout` steps of all `env.num_envs` envs):
        act      epsilon-greedy on the Q-network's values of each env's stacked frames (one forward pass for
                 all envs), keeping the frames, actions, rewards, ends and each state's greedy value max_a Q
    then:
        targets  Q(lambda) returns, backwards through the rollout: G_t = r_t + gamma ((1 - lambda) max_a Q(s_t+1)
                 + lambda G_t+1); an episode's end cuts the chain (terminated: G_t = r_t; truncated: the final
                 state's max_a Q), the rollout's last step bootstraps on max_a Q of the state after it
        learn    `epochs` passes over the rollout's envs x steps, shuffled into `minibatches` parts: the squared
                 error of Q(s_t, a_t) to G_t, gradients clipped, one optimiser step per part; the learning rate
                 decays linearly to 0 over total_steps (`lr_decay`)
        log, record env 0's episodes, checkpoint

Everything lives on the agent's device: frames, stacks, targets, episode returns. With a batched pixel env on
torch (`env.kwargs: {backend: torch, device: cuda}`) stepping, drawing, acting and learning stay on the GPU and
nothing is copied to the host per step: finished episodes are read once per rollout. Vector envs use next-step
autoreset (Gymnasium 1.x's default): the step after an episode's end only resets that env and is no transition.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch

import nets
from agents.core.agent import Mutation
from agents.core.config import ConfigError, RunConfig, at_least, config_class
from agents.core.envs import env_fps, make_env, make_vec_env
from agents.core.episodes import EpisodeStats
from agents.core.qnets import FlatGradients, act_epsilon_greedy, build_network, first_stacks, next_stack
from agents.core.run import EpisodeRecorder, Every, Run, generator_state, rng_state, set_generator_state, set_rng_state
from nets.q import QNetwork

# `network:` is QNetwork(encoder, num_actions, **network) (nets/q.py documents its keys; PQN has no noisy layers
# and no return distribution); `encoder:` is built by nets.build with the stacked frame shape as its in_shape.
NetworkConfig = config_class(QNetwork, skip=("encoder", "num_actions", "noisy", "atoms", "v_min", "v_max", "sigma0"),
                             name="PQNNetworkConfig", defaults={"hidden": 0, "layer_norm": True})


@dataclass
class Config:
    kind: str = "pqn"
    total_steps: int = 1_000_000  # env steps to train (summed over all envs): the frame budget
    frame_stack: int = 1  # frames stacked on the channel axis (the pendulum needs 2+ to see the velocity)
    rollout: int = 32  # steps of every env per rollout (T); a rollout is envs x T transitions
    epochs: int = 2  # passes over each rollout
    minibatches: int = 4  # parts each pass is shuffled into (must divide envs x rollout); one update each
    gamma: float = 0.99  # discount
    q_lambda: float = 0.65  # lambda of the Q(lambda) returns (0: one-step Q-learning targets; 1: Monte Carlo)
    lr: float = 2.5e-4  # the optimiser's learning rate (at the start, with lr_decay)
    lr_decay: bool = True  # the rate falls linearly to 0 at total_steps
    optimizer: str = "radam"  # "radam" (the paper's) or "adam"
    max_grad_norm: float = 10.0  # gradient norm clip (0: off)
    reward_clip: bool = False  # clip rewards to [-1, 1] for the targets (Atari)
    reward_scale: float = 1.0  # rewards times this for the targets (after the clip); episode returns stay unscaled
    epsilon_start: float = 1.0  # exploration: epsilon decays linearly from start to end ...
    epsilon_end: float = 0.05
    epsilon_decay_steps: int = 250_000  # ... over this many env steps (after which it stays at epsilon_end)
    eval_epsilon: float = 0.0  # epsilon of act() (eval, watch)
    encoder: dict = field(default_factory=lambda: {"kind": "minatar_encoder", "features_dim": 128,
                                                   "layer_norm": True})
    network: NetworkConfig = field(default_factory=lambda: NetworkConfig())

    def validate(self) -> None:
        at_least(self, 1, "total_steps", "frame_stack", "rollout", "epochs", "minibatches")
        at_least(self, 0, "epsilon_decay_steps", "max_grad_norm")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma: must be in (0, 1], got {self.gamma}")
        if not 0 <= self.q_lambda <= 1:
            raise ConfigError(f"q_lambda: must be in [0, 1], got {self.q_lambda}")
        if self.lr <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr}")
        if self.reward_scale <= 0:
            raise ConfigError(f"reward_scale: must be > 0, got {self.reward_scale}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer: expected one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        for key in ("epsilon_start", "epsilon_end", "eval_epsilon"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"{key}: must be in [0, 1], got {getattr(self, key)}")
        if "kind" not in self.encoder:
            raise ConfigError(f"encoder: needs a kind (one of {sorted(nets.KINDS)}), got {self.encoder}")


OPTIMIZERS = {"radam": torch.optim.RAdam, "adam": torch.optim.Adam}


class Rollout:
    """One rollout's tensors, on the agent's device: `(T, num_envs, ...)` each."""

    def __init__(self, steps: int, num_envs: int, stack_shape: tuple[int, ...], device: torch.device) -> None:
        self.stacks = torch.zeros((steps, num_envs, *stack_shape), dtype=torch.uint8, device=device)
        self.actions = torch.zeros((steps, num_envs), dtype=torch.int64, device=device)
        self.rewards = torch.zeros((steps, num_envs), device=device)  # for the targets (clipped, scaled)
        self.env_rewards = torch.zeros((steps, num_envs), device=device)  # as the env gave them
        self.terminated = torch.zeros((steps, num_envs), dtype=torch.bool, device=device)
        self.truncated = torch.zeros((steps, num_envs), dtype=torch.bool, device=device)
        self.valid = torch.zeros((steps, num_envs), dtype=torch.bool, device=device)  # a transition, not a reset
        self.greedy_values = torch.zeros((steps, num_envs), device=device)  # max_a Q(s_t, a) when acting
        self.returns = torch.zeros((steps, num_envs), device=device)  # each env's episode return so far, after t
        self.success = torch.zeros((steps, num_envs), dtype=torch.bool, device=device)  # info["is_success"]
        self.says_success = [False] * steps  # whether step t's info had is_success (envs that say)


def q_lambda_targets(rollout: Rollout, last_values: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """Q(lambda) targets `(T, num_envs)` of a rollout (module docstring); `last_values (num_envs,)` is max_a Q
    of the state after the rollout's last step. Entries of steps that are not transitions are 0."""
    steps = rollout.rewards.shape[0]
    targets = torch.zeros_like(rollout.rewards)
    following = last_values  # G_{t+1}, or the bootstrap at the rollout's end
    for t in reversed(range(steps)):
        next_value = rollout.greedy_values[t + 1] if t + 1 < steps else last_values
        blended = (1 - lam) * next_value + lam * following
        # after a truncation the next state's value (the final frame's, acted on but ignored); after a
        # termination nothing
        continued = torch.where(rollout.truncated[t], next_value, blended)
        target = rollout.rewards[t] + gamma * torch.where(rollout.terminated[t], 0.0, continued)
        targets[t] = torch.where(rollout.valid[t], target, 0.0)
        following = targets[t]
    return targets


class PQNAgent:
    Config = Config
    metric, metric_mode, early_stopping = "mean_return", "max", True
    distributed = False

    @classmethod
    def check(cls, config: RunConfig) -> None:
        """envs x rollout must split into `minibatches` equal parts."""
        agent, count = config.agent, config.env.num_envs * config.agent.rollout
        if count % agent.minibatches:
            raise ConfigError(f"agent.minibatches: {agent.minibatches} does not divide env.num_envs x agent.rollout "
                              f"= {config.env.num_envs} x {agent.rollout} = {count}")

    @classmethod
    def pbt_mutations(cls, config: RunConfig) -> dict[str, Mutation]:
        """The learning rate, lambda and the exploration floor, around the config's own values."""
        agent = config.agent
        return {"lr": Mutation("agent.lr", agent.lr / 10, agent.lr * 10, log=True),
                "q_lambda": Mutation("agent.q_lambda", choices=(0.0, 0.3, 0.5, 0.65, 0.8, 0.9)),
                "epsilon_end": Mutation("agent.epsilon_end", min(0.01, agent.epsilon_end), max(0.2, agent.epsilon_end))}

    def __init__(self, config: RunConfig, device: torch.device) -> None:
        self.check(config)
        self.config = config
        self.device = device
        agent = config.agent
        env = make_env(config)
        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise ConfigError(f"env.id: the pqn agent needs a discrete action space, got {env.action_space} "
                              "(give a Box env a discrete action set with env.discrete_actions: [-2, 0, 2])")
        self.num_actions = int(env.action_space.n)
        self.frame_shape = tuple(env.observation_space.shape)
        self.fps = env_fps(env)
        env.close()
        torch.manual_seed(config.seed)
        self.network = build_network(config, self.frame_shape, self.num_actions).to(device)
        kwargs = {"foreach": True} if agent.optimizer == "radam" else {}
        self.optimizer = OPTIMIZERS[agent.optimizer](self.network.parameters(), lr=agent.lr, **kwargs)
        self.gradients = FlatGradients(self.network.parameters())
        self.rng = np.random.default_rng(config.seed)  # act()'s exploration
        self.env_steps = 0
        self.updates = 0
        self.stats = EpisodeStats()
        self.stack: np.ndarray | None = None  # act()'s own frame stack

    # the training loop -----------------------------------------------------------------------------------
    def train(self, run: Run, until: int | None = None) -> None:
        """Train to agent.total_steps env steps (or to `until`: a PBT round), checkpointing at the stop."""
        agent, train = self.config.agent, self.config.train
        vec = make_vec_env(self.config)
        count, channels = vec.num_envs, self.frame_shape[0]
        stop = agent.total_steps if until is None else min(until, agent.total_steps)
        obs, _ = vec.reset(seed=self.config.seed + self.env_steps)  # a resumed run plays new episodes
        on_torch = isinstance(obs, torch.Tensor)
        obs = torch.as_tensor(obs, device=self.device)
        stacks = first_stacks(obs, agent.frame_stack)
        valid = torch.ones(count, dtype=torch.bool, device=self.device)  # this step is a transition
        returns = torch.zeros(count, device=self.device)
        episode = EpisodeRecorder(obs[0].cpu().numpy())
        rollout = Rollout(agent.rollout, count, tuple(stacks.shape[1:]), self.device)
        log_due = Every(train.log_every, start=self.env_steps)
        losses: list[torch.Tensor] = []
        bar = run.progress(agent.total_steps, initial=self.env_steps)
        while self.env_steps < stop:
            started_at = self.env_steps
            for t in range(agent.rollout):
                epsilon = self.epsilon()
                with torch.no_grad():
                    q = self.network(stacks)
                explore = torch.rand(count, device=self.device) < epsilon
                random_actions = torch.randint(0, self.num_actions, (count,), device=self.device)
                actions = torch.where(explore, random_actions, q.argmax(1))
                stepped = vec.step(actions if on_torch else actions.cpu().numpy())
                next_obs, rewards, terminated, truncated, info = stepped
                next_obs = torch.as_tensor(next_obs, device=self.device)
                rewards = torch.as_tensor(rewards, device=self.device, dtype=torch.float32)
                terminated = torch.as_tensor(terminated, device=self.device)
                truncated = torch.as_tensor(truncated, device=self.device)
                returns = returns + rewards
                rollout.stacks[t], rollout.actions[t], rollout.valid[t] = stacks, actions, valid
                rollout.env_rewards[t] = rewards
                rollout.rewards[t] = (rewards.clamp(-1, 1) if agent.reward_clip else rewards) * agent.reward_scale
                rollout.terminated[t], rollout.truncated[t] = terminated, truncated
                rollout.greedy_values[t] = q.max(1).values
                rollout.returns[t] = returns
                rollout.says_success[t] = "is_success" in info
                rollout.success[t] = torch.as_tensor(info["is_success"], device=self.device) if "is_success" in info \
                    else False
                ended = terminated | truncated
                returns = torch.where(ended, 0.0, returns)
                # CRUCIAL (next-step autoreset): an env that ended this step only resets on the next one; the
                # stack then starts anew from the reset frame.
                stacks = torch.cat([stacks[:, channels:], next_obs], 1)
                stacks = torch.where((~valid)[:, None, None, None], first_stacks(next_obs, agent.frame_stack), stacks)
                valid = ~ended
                self.env_steps += count
            with torch.no_grad():
                last_values = self.network(stacks).max(1).values
            targets = q_lambda_targets(rollout, last_values, agent.gamma, agent.q_lambda)
            losses.extend(self.learn(rollout, targets))
            self.finish_episodes(run, rollout, stacks, started_at, episode, count)
            bar.update(self.env_steps - started_at)
            if log_due(self.env_steps):
                run.log(self.env_steps, self.metrics(run, losses))
                losses = []
            if run.checkpoint_due(self.env_steps):
                run.save_checkpoint(self.state_dict(), self.env_steps)
        bar.close()
        vec.close()
        run.save_checkpoint(self.state_dict(), self.env_steps)

    def epsilon(self) -> float:
        """The exploration rate now: linear from epsilon_start to epsilon_end over epsilon_decay_steps."""
        agent = self.config.agent
        fraction = min(1.0, self.env_steps / max(agent.epsilon_decay_steps, 1))
        return agent.epsilon_start + fraction * (agent.epsilon_end - agent.epsilon_start)

    def learn(self, rollout: Rollout, targets: torch.Tensor) -> list[torch.Tensor]:
        """`epochs` passes over the rollout in `minibatches` shuffled parts; the losses (tensors: no sync)."""
        agent = self.config.agent
        if agent.lr_decay:
            for group in self.optimizer.param_groups:
                group["lr"] = agent.lr * max(0.0, 1.0 - self.env_steps / agent.total_steps)
        stacks = rollout.stacks.flatten(0, 1)
        actions, valid, targets = rollout.actions.flatten(), rollout.valid.flatten().float(), targets.flatten()
        size = stacks.shape[0] // agent.minibatches
        losses = []
        for _ in range(agent.epochs):
            order = torch.randperm(stacks.shape[0], device=self.device)
            for part in order.split(size):
                q = self.network(stacks[part]).gather(1, actions[part, None]).squeeze(1)
                weights = valid[part]
                loss = (weights * (q - targets[part]) ** 2).sum() / weights.sum().clamp(min=1)
                self.gradients.zero()
                loss.backward()
                if agent.max_grad_norm > 0:
                    self.gradients.clip_norm_(agent.max_grad_norm)
                self.optimizer.step()
                self.updates += 1
                losses.append(loss.detach())
        return losses

    # logging and recording -------------------------------------------------------------------------------
    def finish_episodes(self, run: Run, rollout: Rollout, stacks: torch.Tensor, started_at: int,
                        episode: EpisodeRecorder, count: int) -> None:
        """The rollout's finished episodes into the statistics, and env 0's steps into its recording: one copy
        from the device per rollout."""
        channels = self.frame_shape[0]
        ended = (rollout.terminated | rollout.truncated).cpu().numpy()
        returns, success = rollout.returns.cpu().numpy(), rollout.success.cpu().numpy()
        # env 0's frame after each step: the newest frame of the next acting stack
        next_frames = torch.cat([rollout.stacks[1:, 0, -channels:], stacks[None, 0, -channels:]]).cpu().numpy()
        actions, rewards = rollout.actions[:, 0].cpu().numpy(), rollout.env_rewards[:, 0].cpu().numpy()
        restarted = (~rollout.valid[:, 0]).cpu().numpy()
        for t in range(ended.shape[0]):
            episode.step(actions[t], rewards[t], next_frames[t], bool(restarted[t]))
            for index in np.flatnonzero(ended[t]):
                steps = started_at + (t + 1) * count
                said = bool(success[t, index]) if rollout.says_success[t] else None
                self.stats.add(float(returns[t, index]), said, steps)
                if index == 0:
                    run.record_episode({**episode.arrays(), "episode": self.stats.episodes, "fps": self.fps})

    def metrics(self, run: Run, losses: list[torch.Tensor]) -> dict[str, float]:
        metrics = {**self.stats.metrics(), "rollout/epsilon": self.epsilon(),
                   "time/fps": run.steps_per_second(self.env_steps), "train/updates": self.updates,
                   "train/lr": self.optimizer.param_groups[0]["lr"]}
        if losses:
            metrics["train/loss"] = float(torch.stack(losses).mean())
        return metrics

    @property
    def episodes(self) -> int:
        return self.stats.episodes

    def mean_return(self) -> float:
        return self.stats.mean_return()

    def summary(self) -> dict:
        return {"env_steps": self.env_steps, **self.stats.summary(), "updates": self.updates}

    def outcome(self) -> str:
        return f"{self.stats.outcome()} ({self.env_steps:,} env steps, {self.updates:,} updates)"

    # acting one env (eval, watch) ------------------------------------------------------------------------
    def reset(self) -> None:
        self.stack = None

    def act(self, obs: np.ndarray) -> int:
        """One observation -> the greedy action (epsilon `eval_epsilon`), on the last `frame_stack` frames."""
        self.stack = next_stack(self.stack, obs, self.config.agent.frame_stack)
        return act_epsilon_greedy(self.network, self.stack, self.config.agent.eval_epsilon, self.rng, self.device)

    # state -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"network": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
                "env_steps": self.env_steps, "updates": self.updates, **self.stats.state_dict(),
                "rng": generator_state(self.rng), "global_rng": rng_state()}

    def load_state_dict(self, state: dict) -> None:
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # the config's lr (PBT changes it between rounds)
            group["lr"] = self.config.agent.lr
        self.env_steps, self.updates = int(state["env_steps"]), int(state["updates"])
        self.stats.load_state_dict(state)
        set_generator_state(self.rng, state["rng"])
        set_rng_state(state["global_rng"])
