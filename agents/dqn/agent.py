"""DQN from pixels (Mnih et al. 2015) with each of Rainbow's improvements (Hessel et al. 2017) switchable.

The story, in the order this file tells it (DQNAgent.train):

    every vector-env step:
        act      epsilon-greedy on the online network's Q-values (noisy nets: the network's own noise)
        store    the step in the replay memory (each frame once, uint8; stacks are rebuilt when sampled)
        learn    every `train_every` env steps after `learning_starts`: a batch from the replay (prioritised
                 or uniform), the n-step target from the target network (double: the online network picks
                 the action), Huber loss (or C51's cross-entropy), one Adam step; new priorities
        sync     the target network every `target_update_every` env steps (a copy, or Polyak with tau < 1)
        log, record env 0's episodes, checkpoint (with train.save_replay, on by default, the replay too: the
                 entries added since the last checkpoint to a chunk file, agents/dqn/replay_files.py)

All Rainbow switches on (configs/rainbow_minatar_breakout.yaml): `double`, `network.dueling`, `replay.prioritized`,
`replay.n_step` > 1, `network.noisy`, `network.atoms` > 1 (distributional C51).

Observations: the env's frames (C, H, W) uint8; the agent stacks the last `frame_stack` of them on the channel
axis itself (repeating the first frame of an episode, as Gymnasium's FrameStackObservation does), so the replay
can store each frame once. Atari recipes therefore make the env with `frame_stack: 1`.
"""

from __future__ import annotations

import copy
import os
import sys
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

import nets
from agents.core.agent import Mutation
from agents.core.config import ConfigError, RunConfig, at_least, config_class
from agents.core.envs import env_fps, make_env
from agents.core.episodes import EpisodeStats
from agents.core.qnets import FlatGradients, act_epsilon_greedy, next_stack
from agents.core.run import (
    EpisodeRecorder,
    Every,
    Run,
    generator_state,
    rng_state,
    set_generator_state,
    set_rng_state,
)
from agents.dqn.actor import Actor, build_network
from agents.dqn.distributed import Collects, RolloutWorker, Sequence, check_cluster, weights_of, worker_epsilons
from agents.dqn.replay import FrameReplay, ReplaySamples
from agents.dqn.replay_files import ReplayFiles
from agents.tune.cluster import check_reachable, resolve_address, start_ray, stop_ray
from nets.q import QNetwork, categorical_projection


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
# nets.build with the env's stacked frame shape as its in_shape. `replay:` is FrameReplay(**replay) (agents/dqn/
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
    # compile: the update's forward passes and loss (and with them its backward) through torch.compile; on a GPU
    # in mode "reduce-overhead", which captures them as CUDA graphs (one launch instead of ~100 small kernels).
    # On this project's 2-core CPU it made the update slower (2.5 against 2.2 ms): off there. The first updates
    # wait for the compilation (tens of seconds).
    compile: bool = False
    # Ape-X (ray.workers > 0): rollout worker i of N explores with worker_epsilon ** (1 + worker_epsilon_alpha * i /
    # (N - 1)) instead of the schedule above (Horgan et al. 2018's 0.4 and 7)
    worker_epsilon: float = 0.4
    worker_epsilon_alpha: float = 7.0
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
        for key in ("epsilon_start", "epsilon_end", "eval_epsilon", "worker_epsilon"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"{key}: must be in [0, 1], got {getattr(self, key)}")
        if "kind" not in self.encoder:
            raise ConfigError(f"encoder: needs a kind (one of {sorted(nets.KINDS)}), got {self.encoder}")
        if self.batch_size > self.replay.capacity:
            raise ConfigError(f"batch_size: must be <= replay.capacity ({self.replay.capacity}), got {self.batch_size}")


class DQNAgent:
    Config = Config
    metric, metric_mode, early_stopping = "mean_return", "max", True
    distributed = True  # ray.workers > 0 trains with Ray rollout workers (agents/dqn/distributed.py)

    @classmethod
    def check(cls, config: RunConfig) -> None:
        """Rollout workers: the Ray address (if any) answers, or this machine has the learner's GPUs."""
        if config.ray.workers == 0:
            return
        if config.ray.address is not None:
            check_reachable(resolve_address(config.ray.address))
        elif config.ray.learner_gpus > torch.cuda.device_count():
            raise ConfigError(f"ray.learner_gpus: {config.ray.learner_gpus} GPUs asked, this machine has "
                              f"{torch.cuda.device_count()}")

    @classmethod
    def pbt_mutations(cls, config: RunConfig) -> dict[str, Mutation]:
        """The learning rate, the epsilon schedule and n-step, with bounds around the config's own values."""
        agent = config.agent
        decay = max(agent.epsilon_decay_steps, 4)
        return {"lr": Mutation("agent.lr", agent.lr / 10, agent.lr * 10, log=True),
                "epsilon_end": Mutation("agent.epsilon_end", min(0.01, agent.epsilon_end), max(0.2, agent.epsilon_end)),
                "epsilon_decay_steps": Mutation("agent.epsilon_decay_steps", decay // 4, decay * 4, integer=True),
                "n_step": Mutation("agent.replay.n_step", choices=(1, 3, 5))}

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
        self.gradients = FlatGradients(self.online.parameters())
        self.compute_losses = self.losses
        if agent.compile:
            self.compute_losses = torch.compile(self.losses, mode="reduce-overhead" if device.type == "cuda" else None)
        self.rng = np.random.default_rng(config.seed)
        self.check_replay_fits(config.env.num_envs)  # before anything is written, not when training starts
        self.replay: FrameReplay | None = None  # made in train() (start_replay): eval and watch never pay for it
        self.replay_files: ReplayFiles | None = None  # where checkpoints write it (train.save_replay)
        self.saved_replay: dict | None = None  # the loaded checkpoint's replay, rebuilt by start_replay
        self.replay_start = 0  # env steps when the replay began filling (updates wait learning_starts after it)
        self.env_steps = 0
        self.updates = 0
        self.stats = EpisodeStats()  # training episodes: rollout/* metrics, summary.json
        self.worker_restarts = 0  # rollout workers Ray restarted after they died (distributed runs)
        self.worker_nodes = 0  # machines the rollout workers were placed on (distributed runs)
        self.stack: np.ndarray | None = None  # act()'s own frame stack, (stack * C, H, W)

    # the training loop -----------------------------------------------------------------------------------
    def train(self, run: Run, until: int | None = None) -> None:
        """Train to agent.total_steps env steps, or only to `until` of them (a round of population-based
        training, agents/tune/pbt.py), checkpointing at the stop either way."""
        if self.config.ray.workers > 0:  # Ape-X: rollout workers as Ray actors feed this learner
            self.train_distributed(run)
            return
        agent, train = self.config.agent, self.config.train
        actor = Actor(self.config, self.online, self.rng)
        count = actor.num_envs
        self.start_replay(run.dir, count)
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
                bar.set_postfix(episodes=self.stats.episodes, ret=f"{self.stats.mean_return():.1f}", refresh=False)
            for _ in range(self.updates_due(previous)):
                losses.append(self.update())
            if target_due(self.env_steps):
                self.sync_target()
            if log_due(self.env_steps):
                run.log(self.env_steps, self.metrics(run, losses))
            if run.checkpoint_due(self.env_steps):
                self.save_checkpoint(run)
        bar.close()
        actor.close()
        self.save_checkpoint(run)

    def updates_due(self, previous: int) -> int:
        """Updates owed for the env steps from `previous` to now: one per `train_every`, from `learning_starts`
        env steps after the replay began filling."""
        agent = self.config.agent
        learning_from = self.replay_start + agent.learning_starts
        if self.env_steps < learning_from:
            return 0
        return self.env_steps // agent.train_every - max(previous, learning_from) // agent.train_every

    def start_replay(self, run_dir: Path, num_envs: int) -> None:
        """Give the agent its replay before it trains (no-op if it has one): the one its loaded checkpoint saved,
        rebuilt from `run_dir`'s replay files, else an empty one, which fills for agent.learning_starts env steps
        before updates (re)start. A resumed run that starts empty says so in one line on stderr, with whether any
        update is left before agent.total_steps: a resume must never end with no updates unannounced."""
        if self.replay is not None:  # the next round of a PBT member, in the same process
            return
        agent, train, saved = self.config.agent, self.config.train, self.saved_replay
        self.replay, self.saved_replay = self.make_replay(num_envs), None
        if saved is not None and train.save_replay and "lineage" in saved:
            self.replay_files = ReplayFiles.restore(run_dir, self.replay, saved)
            self.replay_start = int(saved["replay_start"])
            return
        self.replay_files = ReplayFiles.create(run_dir, self.replay, self.env_steps) if train.save_replay else None
        if saved is not None and train.save_replay:  # a checkpoint from before replay files: the whole replay
            self.replay.load_state_dict(saved)  # inline (the next checkpoint writes all of it to a chunk)
            self.replay_start = 0
            return
        self.replay_start = self.env_steps
        if not 0 < self.env_steps < agent.total_steps:  # a new run, or a finished one: nothing to announce
            return
        why = ("train.save_replay is false" if not train.save_replay else
               "its checkpoint holds none: written with train.save_replay false, or a PBT donor's")
        learning_from = self.env_steps + agent.learning_starts
        updates = max(0, agent.total_steps // agent.train_every - learning_from // agent.train_every)
        line = (f"warning: resuming at env step {self.env_steps:,} with an empty replay ({why}); it refills for "
                f"agent.learning_starts={agent.learning_starts:,} env steps before updates restart at step "
                f"{learning_from:,}")
        if updates:
            line += f": {updates:,} updates left before agent.total_steps={agent.total_steps:,}"
        else:
            line += (f", but agent.total_steps={agent.total_steps:,} comes first: no update will happen in this run "
                     "(raise agent.total_steps, or keep train.save_replay: true so a resume keeps its replay)")
        print(line, file=sys.stderr)

    def save_checkpoint(self, run: Run) -> None:
        """Checkpoint into `run`: :meth:`state_dict` and, with train.save_replay, the replay: the entries added since
        the previous checkpoint go to a chunk file first, the rest of the replay (a few dozen bytes per slot) into
        the checkpoint; then chunks no kept checkpoint reads are deleted (agents/dqn/replay_files.py)."""
        state = self.state_dict()
        if self.replay_files is not None:
            state["replay"] = {**self.replay_files.save(self.replay, self.env_steps), "replay_start": self.replay_start}
        run.save_checkpoint(state, self.env_steps)
        if self.replay_files is not None:
            self.replay_files.prune()

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
        if agent.compile:  # a new step for CUDA graphs: the last step's outputs may be overwritten from here on
            torch.compiler.cudagraph_mark_step_begin()
        loss, priorities = self.compute_losses(batch)
        self.gradients.zero()
        loss.backward()
        if agent.max_grad_norm > 0:
            self.gradients.clip_norm_(agent.max_grad_norm)
        self.optimizer.step()
        if agent.replay.prioritized:
            self.replay.update_priorities(batch.indices, priorities)
        self.updates += 1
        return loss.detach().clone() if agent.compile else loss.detach()  # a graph's output is reused next step

    def losses(self, batch: ReplaySamples) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The loss of a batch (importance-weighted) and each transition's new priority (None without priorities
        and one atom).

        atoms = 1: Huber loss of Q(s, a) against the n-step target r + g^n Q_target(s', a'), a' the target's
        argmax or (double) the online network's. atoms > 1 (C51): cross-entropy against the target distribution
        projected onto the support.
        """
        agent = self.config.agent
        if agent.network.atoms == 1:
            # gather and max rather than indexing by (rows, actions) and argmax: the same values in fewer
            # operations (each costs ~15-30 us on a CPU core at these sizes); without priorities the weights (all
            # 1) and the new priorities are left out (None)
            q = self.online(batch.observations).gather(1, batch.actions.unsqueeze(1)).squeeze(1)
            with torch.no_grad():
                next_target = self.target(batch.next_observations)
                if agent.double:
                    chosen = self.online(batch.next_observations).argmax(1, keepdim=True)
                    next_value = next_target.gather(1, chosen).squeeze(1)
                else:
                    next_value = next_target.amax(1)
                target = batch.returns + batch.discounts * next_value
            if not agent.replay.prioritized:
                return F.smooth_l1_loss(q, target), None
            errors = F.smooth_l1_loss(q, target, reduction="none")
            return (batch.weights * errors).mean(), (q - target).detach().abs()
        rows = torch.arange(batch.actions.shape[0], device=batch.actions.device)
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
        if 0 in self.stats.add_vector_info(info, self.env_steps):
            run.record_episode({**episode.arrays(), "episode": self.stats.episodes, "fps": self.fps})

    @property
    def episodes(self) -> int:
        return self.stats.episodes

    def mean_return(self) -> float:
        return self.stats.mean_return()

    def metrics(self, run: Run, losses: deque[torch.Tensor]) -> dict[str, float]:
        metrics = {**self.stats.metrics(), "rollout/epsilon": self.epsilon(),
                   "time/fps": run.steps_per_second(self.env_steps), "train/updates": self.updates}
        if losses:
            metrics["train/loss"] = float(torch.stack(list(losses)).mean())
        return metrics

    def summary(self) -> dict:
        summary = {"env_steps": self.env_steps, **self.stats.summary(), "updates": self.updates}
        if self.config.ray.workers > 0:
            summary.update(workers=self.config.ray.workers, worker_nodes=self.worker_nodes,
                           worker_restarts=self.worker_restarts)
        return summary

    def outcome(self) -> str:
        return f"{self.stats.outcome()} ({self.env_steps:,} env steps, {self.updates:,} updates)"

    # acting one env (eval, watch) ------------------------------------------------------------------------
    def reset(self) -> None:
        self.stack = None

    def act(self, obs: np.ndarray) -> int:
        """One observation -> the greedy action (epsilon `eval_epsilon`), on the last `frame_stack` frames."""
        self.stack = next_stack(self.stack, obs, self.config.agent.frame_stack)
        return act_epsilon_greedy(self.online, self.stack, self.config.agent.eval_epsilon, self.rng, self.device)

    # state -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to resume but the replay, which lives in the run directory (:meth:`save_checkpoint`
        adds its part of the checkpoint)."""
        return {"online": self.online.state_dict(), "target": self.target.state_dict(),
                "optimizer": self.optimizer.state_dict(), "env_steps": self.env_steps, "updates": self.updates,
                **self.stats.state_dict(), "worker_restarts": self.worker_restarts,
                "rng": generator_state(self.rng), "global_rng": rng_state()}

    def load_state_dict(self, state: dict) -> None:
        self.online.load_state_dict(state["online"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        # The config's lr, not the one saved with the optimiser's state (PBT changes it between rounds).
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.agent.lr
        self.env_steps, self.updates = int(state["env_steps"]), int(state["updates"])
        self.stats.load_state_dict(state)
        self.worker_restarts = int(state.get("worker_restarts", 0))
        set_generator_state(self.rng, state["rng"])
        set_rng_state(state["global_rng"])
        # Kept for start_replay, which reads the replay's files from the run directory when training starts.
        self.replay, self.replay_files, self.saved_replay = None, None, state.get("replay")


    # Ape-X: the learner of distributed runs (ray.workers > 0) ----------------------------------------------
    def train_distributed(self, run: Run) -> None:
        """Ape-X: rollout workers as Ray actors feed this learner (agents/dqn/distributed.py has the picture)."""
        import ray
        from ray.exceptions import RayActorError

        agent = self
        config, settings = agent.config, agent.config.ray
        embedded = settings.address is None
        started = not ray.is_initialized()  # (a Ray this process already runs, as in tests, is left running)
        # The embedded Ray gets at least a CPU per worker: Ray counts CPUs as reservations, not cores.
        cpus = max(os.cpu_count() or 1, int(np.ceil(settings.workers * settings.worker_cpus))) if embedded else None
        resources = start_ray(settings.address, num_cpus=cpus, dashboard=settings.dashboard, log_dir=run.dir)
        try:
            check_cluster(config, resources)
            # SPREAD: one worker per node before two on any (a cluster's envs step on every machine). A worker that
            # dies is restarted (max_restarts) and its pending batch asked of the new one (max_task_retries).
            remote = ray.remote(num_cpus=settings.worker_cpus, max_restarts=settings.max_restarts, max_task_retries=-1,
                                scheduling_strategy="SPREAD")(RolloutWorker)
            epsilons = worker_epsilons(settings.workers, config.agent.worker_epsilon, config.agent.worker_epsilon_alpha)
            workers = [remote.remote(config, index, epsilon) for index, epsilon in enumerate(epsilons)]
            agent.worker_nodes = len(set(ray.get([worker.node_id.remote() for worker in workers])))
            agent.learn_from_workers(run, workers, RayActorError)
        finally:
            if started:
                stop_ray()


    def learn_from_workers(self, run: Run, workers: list, actor_error: type[Exception]) -> None:
        """The learner's loop: store each worker's batch as it comes, update, broadcast weights, log, checkpoint."""
        import ray

        agent = self
        config, settings = agent.config, agent.config.ray
        envs = config.env.num_envs
        streams = [np.arange(index * envs, (index + 1) * envs) for index in range(len(workers))]
        agent.start_replay(run.dir, envs * len(workers))
        agent.replay.cut_episodes()  # the workers start new episodes
        log_due = Every(config.train.log_every, start=agent.env_steps)
        target_due = Every(config.agent.target_update_every, start=agent.env_steps)
        losses: deque[torch.Tensor] = deque(maxlen=100)
        weights = ray.put(weights_of(agent.online))
        updates_sent = agent.updates
        collects = Collects(workers, weights, settings.steps_per_batch, settings.batches_in_flight)
        sequence = Sequence(len(workers))
        restarts_before = agent.worker_restarts  # a resumed run's
        bar = run.progress(config.agent.total_steps, initial=agent.env_steps)
        while agent.env_steps < config.agent.total_steps:
            index, ready = collects.next(ray)
            try:
                # Arrays from the object store are read-only views of it: copies for the replay (a few KB).
                batch = {key: np.array(value) if isinstance(value, np.ndarray) else value
                         for key, value in ray.get(ready).items()}
            except actor_error:  # died more often than ray.max_restarts
                raise RuntimeError(f"rollout worker {index} died and was restarted {settings.max_restarts} times "
                                   f"(ray.max_restarts); the logs: {run.dir / 'ray'}") from None
            # Off again at once, with the weights it has, while this process stores and learns from its batch.
            collects.send(index, weights)
            if sequence.gap(index, batch["pid"], batch["batch"]):
                agent.replay.cut_episodes(streams[index])
            agent.worker_restarts = restarts_before + sequence.restarts
            steps = min(len(batch["actions"]), -(-(config.agent.total_steps - agent.env_steps) // envs))
            for t in range(steps):
                agent.replay.add(batch["frames"][t], batch["actions"][t], batch["rewards"][t], batch["terminated"][t],
                                 batch["truncated"][t], batch["next_frames"][t], mask=batch["mask"][t],
                                 envs=streams[index],
                                 priorities=batch["priorities"][t] if "priorities" in batch else None)
            previous = agent.env_steps
            agent.env_steps += steps * envs
            bar.update(steps * envs)
            for episode_return, success in batch["episodes"]:
                agent.stats.add(episode_return, success, agent.env_steps)
            for arrays in batch["recorded"]:
                run.record_episode({**arrays, "episode": agent.episodes, "fps": agent.fps})
            for _ in range(agent.updates_due(previous)):
                losses.append(agent.update())
            if target_due(agent.env_steps):
                agent.sync_target()
            if agent.updates - updates_sent >= settings.weights_every:
                weights, updates_sent = ray.put(weights_of(agent.online)), agent.updates
            if log_due(agent.env_steps):
                run.log(agent.env_steps, {**agent.metrics(run, losses), "ray/worker_restarts": agent.worker_restarts})
                bar.set_postfix(episodes=agent.episodes, ret=f"{agent.mean_return():.1f}", refresh=False)
            if run.checkpoint_due(agent.env_steps):
                agent.save_checkpoint(run)
        bar.close()
        # A worker restarted near the end may not have sent its batch yet (the others filled the budget): count it.
        try:
            now = ray.get([worker.pid.remote() for worker in workers], timeout=60)
            agent.worker_restarts += sequence.restarted_since(now)
        except (ray.exceptions.GetTimeoutError, actor_error):
            pass
        for worker in workers:
            ray.kill(worker)
        agent.save_checkpoint(run)


def available_memory(device: torch.device) -> int:
    """Bytes free for the replay: the GPU's free memory, or the machine's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as file:
        fields = dict(line.split(":", 1) for line in file)
    return int(fields["MemAvailable"].split()[0]) * 1024
