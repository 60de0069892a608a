"""Distributed DQN/Rainbow (Ape-X, Horgan et al. 2018): Ray rollout workers feed one learner.

    pixelpilot train configs/dqn_minatar_breakout.yaml --workers 4                  # an embedded Ray here
    pixelpilot train configs/dqn_minatar_breakout.yaml --workers 16 --address auto  # the cluster of `ray start`

The learner is the training process itself (on its GPU when `train.device` has one): it holds the replay, the
online and target networks and the optimiser, and writes the run directory as a one-process run does (metrics,
checkpoints, episodes, `--resume`). Each `RolloutWorker` (a Ray actor) is the one-process run's `Actor` on its own
vector env, with a CPU copy of the network and its own epsilon, worker i of N: `agent.worker_epsilon ** (1 +
agent.worker_epsilon_alpha * i / (N - 1))` (Ape-X's 0.4 and 7). The learner loop:

    wait for whichever worker's batch is ready first (ray.wait: never for the slowest); send it off for its next
        (each worker has `ray.batches_in_flight` calls queued, so it collects while its last batch travels)
    add its `ray.steps_per_batch` vector steps to the replay (each env of each worker is one replay stream), with
        their initial priorities (prioritised replay: the worker's 1-step |TD error|; Ape-X uses n-step)
    the updates those env steps owe (one per `train_every`, as a one-process run), the target sync when due
    every `ray.weights_every` updates: the weights into the object store (ray.put) for the next batches
    log, checkpoint, record worker 0's env 0 episodes

A worker that dies is restarted by Ray (`ray.max_restarts`); its envs' running episodes are cut in the replay
and it goes on with fresh ones. Each batch carries its process and its number in that process: wherever a worker's
batches do not follow on (a new process, or a lost result Ray ran again after later calls) its episodes are cut, so
no transition joins steps that did not follow each other (`Sequence`). Distributed runs are not bit-reproducible
(batches arrive in whatever order the workers finish them); a one-process run is.
"""

from __future__ import annotations

import os
from collections import deque

import numpy as np
import torch

from agents.core.config import ConfigError, RunConfig
from agents.core.envs import make_env
from agents.core.run import EpisodeRecorder
from agents.dqn.actor import Actor, build_network


class Collects:
    """A learner's queued `collect` calls: `in_flight` on each worker at all times (a Ray actor runs them in turn),
    so none idles while its last batch travels to the learner, and each worker's batches taken in the order it
    collected them (the replay's episode streams need that: ray.wait alone would take any ready one)."""

    def __init__(self, workers: list, weights, steps: int, in_flight: int) -> None:
        self.workers, self.steps = workers, steps
        self.queues = [deque(worker.collect.remote(weights, steps) for _ in range(in_flight)) for worker in workers]

    def next(self, ray) -> tuple[int, object]:
        """Waits until some worker's oldest call is done: (that worker's index, the call's object ref)."""
        heads = {queue[0]: index for index, queue in enumerate(self.queues)}
        [ready], _ = ray.wait(list(heads), num_returns=1)
        index = heads[ready]
        return index, self.queues[index].popleft()

    def send(self, index: int, weights) -> None:
        """Queue another call on worker `index` (with these weights)."""
        self.queues[index].append(self.workers[index].collect.remote(weights, self.steps))


class Sequence:
    """Which of a worker's batches follow on from the last one stored. Each batch names its process (pid) and its
    number in that process; any other batch than the next of the same process is a gap: a restarted worker (its
    envs begin new episodes) or a lost result Ray ran again after later calls. At a gap the learner cuts the
    worker's running episodes, so no transition joins steps that did not follow each other."""

    def __init__(self, workers: int) -> None:
        self.pids = [0] * workers  # the process of the worker's last batch stored (0: none yet)
        self.numbers = [0] * workers  # that batch's number in its process
        self.restarts = 0  # new processes seen after a worker's first

    def gap(self, index: int, pid: int, number: int) -> bool:
        """Takes worker `index`'s batch `number` of process `pid`: True if it does not follow on from the last."""
        gap = (pid, number) != (self.pids[index], self.numbers[index] + 1)
        self.restarts += self.pids[index] not in (0, pid)
        self.pids[index], self.numbers[index] = pid, number
        return gap

    def restarted_since(self, pids: list[int]) -> int:
        """How many workers now run in another process than the one of their last batch stored."""
        return sum(last not in (0, now) for last, now in zip(self.pids, pids, strict=True))


def worker_epsilons(workers: int, epsilon: float, alpha: float) -> list[float]:
    """Ape-X's exploration rates: worker i of N explores with epsilon ** (1 + alpha * i / (N - 1))."""
    return [epsilon ** (1 + alpha * index / max(workers - 1, 1)) for index in range(workers)]


class RolloutWorker:
    """A rollout worker (run as a Ray actor): an Actor on its own vector env with a CPU copy of the Q-network.

    `collect(weights, steps)` loads the weights (a state dict of NumPy arrays; None: keep the current ones),
    steps the envs `steps` times and returns the steps as arrays for the learner's replay, with the episodes that
    ended (and, from worker 0, env 0's episodes due for recording).
    """

    def __init__(self, config: RunConfig, index: int, epsilon: float) -> None:
        torch.set_num_threads(1)
        self.config, self.index, self.epsilon = config, index, epsilon
        seed = config.seed + 1_000_003 * (index + 1)  # apart from the learner's and from every other worker's
        torch.manual_seed(seed)
        env = make_env(config)
        frame_shape, num_actions = env.observation_space.shape, int(env.action_space.n)
        env.close()
        self.network = build_network(config, frame_shape, num_actions)
        self.actor = Actor(config, self.network, np.random.default_rng(seed))
        first = self.actor.reset(seed=seed)
        self.recorder = EpisodeRecorder(first[0]) if index == 0 else None
        self.episodes = 0  # this worker's env 0 episodes (for the recording cadence)
        self.best_return = -np.inf  # of those episodes: a new best is sent for recording too, as run.py keeps it
        self.batches = 0  # collect calls this process has run: the learner cuts the worker's episodes at any gap

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def collect(self, weights: dict[str, np.ndarray] | None, steps: int) -> dict:
        if weights is not None:
            self.network.load_state_dict({name: torch.from_numpy(value) for name, value in weights.items()})
        agent = self.config.agent
        # Each step's arrays go into the batch's arrays as it comes (the steps themselves are not kept: a list of
        # them, stacked at the end, cost ~4% of the collection rate in allocation and copying).
        columns: list[np.ndarray] | None = None
        stacks = None  # the stacked observations, for the initial priorities
        ended, recorded = [], []
        for t in range(steps):
            step = self.actor.step(self.epsilon)
            transition = step.transition(agent.reward_clip)
            if columns is None:
                columns = [np.empty((steps, *np.shape(value)), np.asarray(value).dtype) for value in transition]
                if agent.replay.prioritized:
                    stacks = np.empty((steps, *step.stacks.shape), step.stacks.dtype)
            for column, value in zip(columns, transition, strict=True):
                column[t] = value
            if stacks is not None:
                stacks[t] = step.stacks
            if self.recorder is not None:
                self.recorder.step(step.actions[0], step.rewards[0], step.next_frames[0], step.restarted[0])
            if "episode" in step.info:
                for env in np.flatnonzero(step.info["_episode"]):
                    success = bool(step.info["is_success"][env]) if "is_success" in step.info else None
                    ended.append((float(step.info["episode"]["r"][env]), success))
                    if env == 0 and self.recorder is not None:
                        self.episodes += 1
                        best = ended[-1][0] > self.best_return
                        self.best_return = max(self.best_return, ended[-1][0])
                        if best or self.episodes % self.config.train.record_every == 0:
                            recorded.append(self.recorder.arrays())
        batch = dict(zip(("frames", "actions", "rewards", "terminated", "truncated", "next_frames", "mask"),
                         columns, strict=True))
        if stacks is not None:
            batch["priorities"] = self.td_errors(stacks, batch)
        self.batches += 1
        return {**batch, "episodes": ended, "recorded": recorded, "pid": os.getpid(), "batch": self.batches}

    @torch.no_grad()
    def td_errors(self, stacks: np.ndarray, batch: dict[str, np.ndarray]) -> np.ndarray:
        """(steps, num_envs) |r + gamma (1 - terminated) max_a Q(s', a) - Q(s, a)| of the worker's network on the
        batch's steps (`stacks`: (steps, envs, stack * C, H, W), the observations acted on): the transitions'
        initial priorities."""
        channels = self.actor.channels
        next_stacks = np.concatenate([stacks[:, :, channels:], batch["next_frames"]], 2)
        flat = lambda array: torch.as_tensor(array.reshape(-1, *array.shape[2:]))  # noqa: E731
        actions = flat(batch["actions"]).long()
        q = self.network(flat(stacks)).gather(1, actions[:, None]).squeeze(1)
        next_q = self.network(flat(next_stacks)).max(1).values
        terminated = flat(batch["terminated"]).float()
        rewards = batch["rewards"]
        target = flat(rewards).float() + self.config.agent.gamma * (1 - terminated) * next_q
        return (target - q).abs().reshape(rewards.shape).numpy()


def check_cluster(config: RunConfig, resources: dict) -> None:
    """ConfigError when the cluster cannot hold the workers or has fewer GPUs than the learner asks for."""
    settings = config.ray
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    if settings.workers * settings.worker_cpus > cpus:
        raise ConfigError(f"ray.workers: {settings.workers} workers of {settings.worker_cpus} CPUs need "
                          f"{settings.workers * settings.worker_cpus:g} CPUs, the cluster has {cpus:g}")
    if settings.learner_gpus > gpus:
        raise ConfigError(f"ray.learner_gpus: {settings.learner_gpus} GPUs asked, the cluster has {gpus:g}")


def weights_of(network: torch.nn.Module) -> dict[str, np.ndarray]:
    """A network's weights as NumPy arrays (what the learner puts in Ray's object store for the workers)."""
    return {name: value.detach().cpu().numpy() for name, value in network.state_dict().items()}
