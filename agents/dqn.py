"""DQN from pixels (Mnih et al. 2015) with each of Rainbow's improvements (Hessel et al. 2017) switchable.

The story, in the order this file tells it (DQNAgent.train):

    every vector-env step:
        act      epsilon-greedy on the online network's Q-values (noisy nets: the network's own noise)
        store    the step in the replay memory (each frame once, uint8; stacks are rebuilt when sampled)
        learn    every `train_every` env steps after `learning_starts`: a batch from the replay (prioritised
                 or uniform), the n-step target from the target network (double: the online network picks
                 the action), Huber loss (or C51's cross-entropy), one Adam step; new priorities
        sync     the target network every `target_update_every` env steps (a copy, or Polyak with tau < 1)
        log, record env 0's episodes, checkpoint (the replay too with train.save_replay)

All Rainbow switches on (configs/rainbow_minatar_breakout.yaml): `double`, `network.dueling`, `replay.prioritized`,
`replay.n_step` > 1, `network.noisy`, `network.atoms` > 1 (distributional C51).

Observations: the env's frames (C, H, W) uint8; the agent stacks the last `frame_stack` of them on the channel
axis itself (repeating the first frame of an episode, as Gymnasium's FrameStackObservation does), so the replay
can store each frame once. Atari recipes therefore make the env with `frame_stack: 1`.
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

import nets
from agents.common.agent import Every
from agents.common.config import ConfigError, RunConfig, at_least, config_class
from agents.common.envs import env_fps, make_env, make_vec_env
from agents.common.replay import FrameReplay, ReplaySamples
from agents.common.run import EpisodeRecorder, Run, generator_state, rng_state, set_generator_state, set_rng_state
from nets.q import QNetwork, categorical_projection

RECENT_EPISODES = 100  # mean_return in summary.json and rollout/ep_return are over this many last episodes


def _check_network(network: NetworkConfig) -> None:
    at_least(network, 0, "hidden")
    at_least(network, 1, "atoms")
    if network.atoms > 1 and network.v_min >= network.v_max:
        raise ConfigError(f"v_min: must be below v_max ({network.v_max}), got {network.v_min}")


def _check_replay(replay: ReplayConfig) -> None:
    at_least(replay, 1, "capacity", "n_step")
    if replay.alpha < 0:
        raise ConfigError(f"alpha: must be >= 0, got {replay.alpha}")
    if not 0 <= replay.beta <= 1:
        raise ConfigError(f"beta: must be in [0, 1], got {replay.beta}")


# `network:` is QNetwork(encoder, num_actions, **network) (nets/q.py documents its keys); `encoder:` is built by
# nets.build with the env's stacked frame shape as its in_shape. `replay:` is FrameReplay(**replay) (agents/common/
# replay.py); the env and the agent fill in its shapes, gamma and device.
NetworkConfig = config_class(QNetwork, skip=("encoder", "num_actions"), name="NetworkConfig", validate=_check_network)
ReplayConfig = config_class(FrameReplay, skip=("num_envs", "frame_shape", "stack", "gamma", "device", "generator"),
                            name="ReplayConfig", validate=_check_replay, defaults={"capacity": 100_000})


@dataclass
class Config:
    kind: str = "dqn"
    total_steps: int = 1_000_000  # env steps to train (summed over all envs): the frame budget
    frame_stack: int = 1  # frames stacked on the channel axis (4 for Atari, 1 for MinAtar's object channels)
    learning_starts: int = 5_000  # env steps of random actions before the first update (replay start)
    train_every: int = 1  # env steps per update (1: one update per env step, as the papers)
    batch_size: int = 32  # transitions per update
    gamma: float = 0.99  # discount
    double: bool = False  # double Q-learning: the online network picks the next action, the target scores it
    target_update_every: int = 1_000  # env steps between target-network updates
    tau: float = 1.0  # 1: copy the online network; < 1: Polyak averaging target <- tau online + (1 - tau) target
    lr: float = 1e-4  # Adam learning rate
    adam_eps: float = 1.5e-4  # Adam epsilon (Rainbow's 1.5e-4, scaled for the batch)
    max_grad_norm: float = 10.0  # gradient norm clip (0: off)
    reward_clip: bool = False  # clip rewards to [-1, 1] before storing (Atari: scores differ by orders of magnitude)
    epsilon_start: float = 1.0  # exploration: epsilon decays linearly from start to end ...
    epsilon_end: float = 0.1
    epsilon_decay_steps: int = 100_000  # ... over this many env steps (after which it stays at epsilon_end)
    eval_epsilon: float = 0.0  # epsilon of act() (eval, watch); noisy networks act on their mean weights there
    encoder: dict = field(default_factory=lambda: {"kind": "minatar_encoder", "features_dim": 128})
    network: NetworkConfig = field(default_factory=lambda: NetworkConfig())
    replay: ReplayConfig = field(default_factory=lambda: ReplayConfig())

    def validate(self) -> None:
        at_least(self, 1, "total_steps", "frame_stack", "train_every", "batch_size", "target_update_every")
        at_least(self, 0, "learning_starts", "epsilon_decay_steps", "max_grad_norm")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma: must be in (0, 1], got {self.gamma}")
        if not 0 < self.tau <= 1:
            raise ConfigError(f"tau: must be in (0, 1], got {self.tau}")
        if self.lr <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr}")
        for key in ("epsilon_start", "epsilon_end", "eval_epsilon"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"{key}: must be in [0, 1], got {getattr(self, key)}")
        if "kind" not in self.encoder:
            raise ConfigError(f"encoder: needs a kind (one of {sorted(nets.KINDS)}), got {self.encoder}")
        if self.batch_size > self.replay.capacity:
            raise ConfigError(f"batch_size: must be <= replay.capacity ({self.replay.capacity}), got {self.batch_size}")


class DQNAgent:
    Config = Config
    distributed = True  # ray.workers > 0 trains with Ray rollout workers (agents/dqn_distributed.py)

    def __init__(self, config: RunConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        agent = config.agent
        env = make_env(config)
        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise ConfigError(f"env.id: the dqn agent needs a discrete action space, got {env.action_space} "
                              "(give a Box env a discrete action set with env.discrete_actions: [-2, 0, 2])")
        self.num_actions = int(env.action_space.n)
        self.frame_shape = tuple(env.observation_space.shape)
        self.fps = env_fps(env)
        env.close()
        torch.manual_seed(config.seed)
        self.online = build_network(config, self.frame_shape, self.num_actions).to(device)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.online.parameters(), lr=agent.lr, eps=agent.adam_eps,
                                          **({"fused": True} if device.type in ("cpu", "cuda") else {}))
        self.rng = np.random.default_rng(config.seed)
        self.check_replay_fits(config.env.num_envs)  # before anything is written, not when training starts
        self.replay: FrameReplay | None = None  # made in train(): eval and watch never pay for it
        self.replay_start = 0  # env steps when the replay began filling (updates wait learning_starts after it)
        self.env_steps = 0
        self.updates = 0
        self.episodes = 0
        self.recent_returns: deque[float] = deque(maxlen=RECENT_EPISODES)
        self.recent_successes: deque[float] = deque(maxlen=RECENT_EPISODES)  # envs that say (info["is_success"])
        self.first_success_step: int | None = None  # env steps when a training episode first succeeded
        self.worker_restarts = 0  # rollout workers Ray restarted after they died (distributed runs)
        self.worker_nodes = 0  # machines the rollout workers were placed on (distributed runs)
        self.stack: np.ndarray | None = None  # act()'s own frame stack, (stack * C, H, W)

    # the training loop -----------------------------------------------------------------------------------
    def train(self, run: Run, until: int | None = None) -> None:
        """Train to agent.total_steps env steps, or only to `until` of them (a round of population-based
        training, agents/common/pbt.py), checkpointing at the stop either way."""
        if self.config.ray.workers > 0:  # Ape-X: rollout workers as Ray actors feed this learner
            from agents.dqn_distributed import train_distributed

            train_distributed(self, run)
            return
        agent, train = self.config.agent, self.config.train
        actor = Actor(self.config, self.online, self.rng)
        count = actor.num_envs
        if self.replay is None:  # a new run, or a resumed one whose checkpoint holds no replay: fill it first
            self.replay = self.make_replay(count)
            self.replay_start = self.env_steps
        self.replay.cut_episodes()  # the envs start new episodes below: a restored replay's running ones end here
        log_due = Every(train.log_every, start=self.env_steps)
        target_due = Every(agent.target_update_every, start=self.env_steps)
        # A resumed run reseeds from where it stopped, so its episodes differ from the first run's.
        episode = EpisodeRecorder(actor.reset(seed=self.config.seed + self.env_steps)[0])
        losses: deque[torch.Tensor] = deque(maxlen=100)
        bar = run.progress(agent.total_steps, initial=self.env_steps)
        stop = agent.total_steps if until is None else min(until, agent.total_steps)
        while self.env_steps < stop:
            step = actor.step(1.0 if self.env_steps < agent.learning_starts else self.epsilon())
            self.replay.add(*step.transition(agent.reward_clip))
            previous = self.env_steps
            self.env_steps += count
            bar.update(count)
            episode.step(step.actions[0], step.rewards[0], step.next_frames[0], step.restarted[0])
            if "episode" in step.info:
                self.finish_episodes(run, step.info, episode)
                bar.set_postfix(episodes=self.episodes, ret=f"{self.mean_return():.1f}", refresh=False)
            for _ in range(self.updates_due(previous)):
                losses.append(self.update())
            if target_due(self.env_steps):
                self.sync_target()
            if log_due(self.env_steps):
                run.log(self.env_steps, self.metrics(run, losses))
            if run.checkpoint_due(self.env_steps):
                run.save_checkpoint(self.state_dict(), self.env_steps)
        bar.close()
        actor.close()
        run.save_checkpoint(self.state_dict(), self.env_steps)

    def updates_due(self, previous: int) -> int:
        """Updates owed for the env steps from `previous` to now: one per `train_every`, from `learning_starts`
        env steps after the replay began filling."""
        agent = self.config.agent
        learning_from = self.replay_start + agent.learning_starts
        if self.env_steps < learning_from:
            return 0
        return self.env_steps // agent.train_every - max(previous, learning_from) // agent.train_every

    def check_replay_fits(self, num_envs: int) -> None:
        """ConfigError if the replay would not fit in the free memory of the agent's device."""
        capacity = self.config.agent.replay.capacity
        needed = FrameReplay.required_bytes(capacity, num_envs, self.frame_shape)
        available = available_memory(self.device)
        if needed > available:
            raise ConfigError(f"agent.replay.capacity: {capacity:,} transitions need {needed / 2**30:.1f} GiB, "
                              f"more than the {available / 2**30:.1f} GiB free on {self.device}")

    def make_replay(self, num_envs: int) -> FrameReplay:
        """The replay memory on the agent's device."""
        agent = self.config.agent
        self.check_replay_fits(num_envs)
        return FrameReplay(**asdict(agent.replay), num_envs=num_envs, frame_shape=self.frame_shape,
                           stack=agent.frame_stack, gamma=agent.gamma, device=self.device)

    def epsilon(self) -> float:
        """The exploration rate now: linear from epsilon_start to epsilon_end over epsilon_decay_steps."""
        agent = self.config.agent
        fraction = min(1.0, self.env_steps / max(agent.epsilon_decay_steps, 1))
        return agent.epsilon_start + fraction * (agent.epsilon_end - agent.epsilon_start)

    def update(self) -> torch.Tensor:
        """One gradient step on a batch from the replay; returns the loss (a tensor: no sync with the device)."""
        agent = self.config.agent
        beta = agent.replay.beta + (1.0 - agent.replay.beta) * min(1.0, self.env_steps / agent.total_steps)
        batch = self.replay.sample(agent.batch_size, beta=beta)
        if agent.network.noisy:
            self.online.reset_noise()
            self.target.reset_noise()
        loss, priorities = self.losses(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if agent.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.online.parameters(), agent.max_grad_norm, foreach=True)
        self.optimizer.step()
        if agent.replay.prioritized:
            self.replay.update_priorities(batch.indices, priorities)
        self.updates += 1
        return loss.detach()

    def losses(self, batch: ReplaySamples) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of a batch (importance-weighted) and each transition's new priority.

        atoms = 1: Huber loss of Q(s, a) against the n-step target r + g^n Q_target(s', a'), a' the target's
        argmax or (double) the online network's. atoms > 1 (C51): cross-entropy against the target distribution
        projected onto the support.
        """
        agent = self.config.agent
        rows = torch.arange(batch.actions.shape[0], device=batch.actions.device)
        if agent.network.atoms == 1:
            q = self.online(batch.observations)[rows, batch.actions]
            with torch.no_grad():
                next_target = self.target(batch.next_observations)
                chosen = (self.online(batch.next_observations) if agent.double else next_target).argmax(1)
                target = batch.returns + batch.discounts * next_target[rows, chosen]
            errors = F.smooth_l1_loss(q, target, reduction="none")
            return (batch.weights * errors).mean(), (q - target).detach().abs()
        log_probs = self.online.log_probs(batch.observations)[rows, batch.actions]  # (batch, atoms)
        with torch.no_grad():
            next_q, next_log_probs = self.target.q_and_log_probs(batch.next_observations)
            chosen = (self.online(batch.next_observations) if agent.double else next_q).argmax(1)
            projected = categorical_projection(next_log_probs[rows, chosen].exp(), batch.returns, batch.discounts,
                                               self.online.support)
        cross_entropy = -(projected * log_probs).sum(1)
        return (batch.weights * cross_entropy).mean(), cross_entropy.detach()

    @torch.no_grad()
    def sync_target(self) -> None:
        tau = self.config.agent.tau
        if tau == 1.0:
            self.target.load_state_dict(self.online.state_dict())
            return
        for target, online in zip(self.target.parameters(), self.online.parameters(), strict=True):
            target.lerp_(online, tau)

    # logging and recording -------------------------------------------------------------------------------
    def finish_episodes(self, run: Run, info: dict, episode: EpisodeRecorder) -> None:
        for index in np.flatnonzero(info["_episode"]):
            # the env's word on the episode, on its last step
            success = bool(info["is_success"][index]) if "is_success" in info else None
            self.count_episode(float(info["episode"]["r"][index]), success)
            if index == 0:
                run.record_episode({**episode.arrays(), "episode": self.episodes, "fps": self.fps})

    def count_episode(self, episode_return: float, success: bool | None) -> None:
        """An episode ended with this return and (envs that say) success."""
        self.episodes += 1
        self.recent_returns.append(episode_return)
        if success is not None:
            self.recent_successes.append(float(success))
            if success and self.first_success_step is None:
                self.first_success_step = self.env_steps

    def metrics(self, run: Run, losses: deque[torch.Tensor]) -> dict[str, float]:
        metrics = {"rollout/ep_return": self.mean_return(), "rollout/episodes": self.episodes,
                   "rollout/epsilon": self.epsilon(), "time/fps": run.steps_per_second(self.env_steps),
                   "train/updates": self.updates}
        if losses:
            metrics["train/loss"] = float(torch.stack(list(losses)).mean())
        if self.recent_successes:
            metrics["rollout/success"] = float(np.mean(self.recent_successes))
        return metrics

    def mean_return(self) -> float:
        return float(np.mean(self.recent_returns)) if self.recent_returns else float("nan")

    def summary(self) -> dict:
        """frames_to_first_success (env steps when a training episode first succeeded; null if none) and
        success_rate (of the last RECENT_EPISODES episodes) only for envs that say whether an episode succeeded."""
        summary = {"env_steps": self.env_steps, "episodes": self.episodes, "mean_return": self.mean_return(),
                   "updates": self.updates}
        if self.config.ray.workers > 0:
            summary.update(workers=self.config.ray.workers, worker_nodes=self.worker_nodes,
                           worker_restarts=self.worker_restarts)
        if self.recent_successes:
            summary["frames_to_first_success"] = self.first_success_step
            summary["success_rate"] = float(np.mean(self.recent_successes))  # over the last RECENT_EPISODES
        return summary

    def outcome(self) -> str:
        line = (f"mean return {self.mean_return():.2f} over the last {len(self.recent_returns)} episodes "
                f"({self.env_steps:,} env steps, {self.updates:,} updates)")
        if self.recent_successes:
            first = self.first_success_step
            line += f"; first success at {first:,} env steps" if first is not None else "; no success yet"
        return line

    # acting one env (eval, watch) ------------------------------------------------------------------------
    def reset(self) -> None:
        self.stack = None

    def act(self, obs: np.ndarray) -> int:
        """One observation -> the greedy action (epsilon `eval_epsilon`), on the last `frame_stack` frames."""
        stack = self.config.agent.frame_stack
        self.stack = np.repeat(obs, stack, axis=0) if self.stack is None else np.concatenate(
            [self.stack[obs.shape[0]:], obs])
        if self.rng.random() < self.config.agent.eval_epsilon:
            return int(self.rng.integers(self.num_actions))
        self.online.eval()  # noisy layers act on their mean weights
        with torch.no_grad():
            action = int(self.online(torch.as_tensor(self.stack[None], device=self.device)).argmax(1))
        self.online.train()
        return action

    # state -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"online": self.online.state_dict(), "target": self.target.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "env_steps": self.env_steps, "updates": self.updates,
                 "episodes": self.episodes, "recent_returns": list(self.recent_returns),
                 "recent_successes": list(self.recent_successes),
                 "first_success_step": -1 if self.first_success_step is None else self.first_success_step,
                 "worker_restarts": self.worker_restarts,
                 "rng": generator_state(self.rng), "global_rng": rng_state()}
        if self.config.train.save_replay and self.replay is not None:
            state["replay"] = self.replay.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.online.load_state_dict(state["online"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.env_steps, self.updates, self.episodes = (int(state[key]) for key in ("env_steps", "updates", "episodes"))
        self.recent_returns = deque(state["recent_returns"], maxlen=RECENT_EPISODES)
        # Checkpoints from before success tracking (2026-11-26) have neither key.
        self.recent_successes = deque(state.get("recent_successes", []), maxlen=RECENT_EPISODES)
        first = int(state.get("first_success_step", -1))
        self.first_success_step = None if first < 0 else first
        self.worker_restarts = int(state.get("worker_restarts", 0))
        set_generator_state(self.rng, state["rng"])
        set_rng_state(state["global_rng"])
        if "replay" in state:
            self.replay = self.make_replay(self.config.env.num_envs)
            self.replay.load_state_dict(state["replay"])


def build_network(config: RunConfig, frame_shape: tuple[int, ...], num_actions: int) -> QNetwork:
    """The config's Q-network for frames of `frame_shape` (C, H, W), `frame_stack` of them stacked on channels."""
    agent = config.agent
    obs_shape = (frame_shape[0] * agent.frame_stack, *frame_shape[1:])
    try:
        encoder = nets.build({**agent.encoder, "in_shape": obs_shape})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"agent.encoder: {err}") from None
    return QNetwork(encoder, num_actions, **asdict(agent.network))


class Step(NamedTuple):
    """One vector-env step of an Actor (arrays over its envs)."""

    frames: np.ndarray  # (num_envs, C, H, W) uint8: the newest frame of each env's observation before the step
    stacks: np.ndarray  # (num_envs, stack * C, H, W) uint8: the whole stacked observation the actions were chosen on
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    next_frames: np.ndarray  # (num_envs, C, H, W) uint8: the env's observation after the step
    mask: np.ndarray  # envs whose step is a transition (not the reset after an episode's end: next-step autoreset)
    info: dict

    @property
    def restarted(self) -> np.ndarray:
        """Envs whose step only reset them (their previous step ended an episode)."""
        return ~self.mask

    def transition(self, reward_clip: bool) -> tuple:
        """The arguments of FrameReplay.add for this step (rewards clipped to [-1, 1] with `reward_clip`)."""
        rewards = np.clip(self.rewards, -1, 1) if reward_clip else self.rewards
        return self.frames, self.actions, rewards, self.terminated, self.truncated, self.next_frames, self.mask


class Actor:
    """Steps a vector env with epsilon-greedy actions of a Q-network, stacking each env's last `frame_stack`
    frames on the channel axis itself (repeating an episode's first frame, as Gymnasium's FrameStackObservation
    does), so the replay can store each frame once.

    The training process's own acting (ray.workers: 0) and every RolloutWorker of a distributed run are one of
    these; only the network and the generator differ (the online network and the agent's generator here).
    """

    def __init__(self, config: RunConfig, network: QNetwork, rng: np.random.Generator) -> None:
        self.vec = gym.wrappers.vector.RecordEpisodeStatistics(make_vec_env(config))
        self.network, self.rng = network, rng
        self.num_envs = self.vec.num_envs
        self.num_actions = int(self.vec.single_action_space.n)
        self.frame_stack = config.agent.frame_stack
        self.channels = self.vec.single_observation_space.shape[0]
        self.stacks: np.ndarray | None = None
        self.mask = np.ones(self.num_envs, bool)

    def reset(self, seed: int) -> np.ndarray:
        """Reset the envs (seeds seed, seed + 1, ...); returns their first observations."""
        obs, _ = self.vec.reset(seed=seed)
        self.stacks = np.repeat(obs, self.frame_stack, axis=1)  # (num_envs, stack * C, H, W)
        self.mask = np.ones(self.num_envs, bool)
        return obs

    def step(self, epsilon: float) -> Step:
        stacks = self.stacks
        actions = self.explore(stacks, epsilon)
        next_obs, rewards, terminated, truncated, info = self.vec.step(actions)
        step = Step(stacks[:, -self.channels:], stacks, actions, rewards, terminated, truncated, next_obs, self.mask,
                    info)
        # CRUCIAL (next-step autoreset): an env that ended last step restarts now; its stack starts anew.
        self.stacks = np.concatenate([stacks[:, self.channels:], next_obs], axis=1)
        self.stacks[step.restarted] = np.repeat(next_obs[step.restarted], self.frame_stack, axis=1)
        self.mask = ~(terminated | truncated)
        return step

    def explore(self, stacks: np.ndarray, epsilon: float) -> np.ndarray:
        """Epsilon-greedy actions for a batch of stacked observations."""
        count = len(stacks)
        random_actions = self.rng.integers(0, self.num_actions, count)
        explore = self.rng.random(count) < epsilon
        if explore.all():
            return random_actions
        device = next(self.network.parameters()).device
        with torch.no_grad():
            greedy = self.network(torch.as_tensor(stacks, device=device)).argmax(1).cpu().numpy()
        return np.where(explore, random_actions, greedy)

    def close(self) -> None:
        self.vec.close()


def available_memory(device: torch.device) -> int:
    """Bytes free for the replay: the GPU's free memory, or the machine's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as file:
        fields = dict(line.split(":", 1) for line in file)
    return int(fields["MemAvailable"].split()[0]) * 1024
