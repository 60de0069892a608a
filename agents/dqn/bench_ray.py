"""`pixelpilot bench ray`: env steps per second collected by 1, 2, ... Ray rollout workers against one process.

In the same run, on the DQN config's env (MinAtar Breakout by default) and network, acting epsilon-greedy with
Ape-X's worker epsilons:

    single      the one-process path: an Actor stepping its vector env in this process, `seconds` long (acting
                only: storing the steps is the learner's work in both paths), measured before the workers and
                again after them, the mean of the two its rate (the machine's speed drifts: a one-sided
                measurement moved the ratio by 0.15 between runs)
    workers k   k RolloutWorker actors collecting `ray.steps_per_batch` steps a batch, as a distributed run does,
                every batch fetched by this process (the learner's side of the transfer included), `seconds` long
    learner     DQN updates per second of this process (sample + gradient step), on 1,000 stored steps

`ratio` = (workers' rate with the most workers / single rate) / that number of workers: 1.0 is a perfect
speed-up. Ray's start-up (ray.init and the workers' construction) is timed apart and not in any rate.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np
import torch

from agents.core.bench import hardware
from agents.core.config import ConfigError, load_config
from agents.dqn.actor import Actor
from agents.dqn.agent import DQNAgent
from agents.dqn.distributed import RolloutWorker, worker_epsilons
from agents.tune.cluster import start_ray, stop_ray


def bench_ray(workers: int | None = None, seconds: float = 10.0, address: str | None = None,
              config: str = "dqn_minatar_breakout", overrides: Sequence[str] = ()) -> dict:
    """Collection rates with 1..`workers` rollout workers (default: this machine's CPUs) and in one process."""
    import ray


    most = workers if workers is not None else os.cpu_count() or 1
    if most < 1 or seconds <= 0:
        raise ConfigError(f"--workers and --seconds: must be >= 1 and > 0, got {most} and {seconds}")
    run_config = load_config(config, list(overrides))
    torch.set_num_threads(1)
    agent = DQNAgent(run_config, torch.device("cpu"))
    epsilon = worker_epsilons(1, run_config.agent.worker_epsilon, run_config.agent.worker_epsilon_alpha)[0]

    actor = Actor(run_config, agent.online, np.random.default_rng(0))
    actor.reset(seed=0)

    def collect_here() -> float:
        """Env steps per second of the one-process path (collection only: a distributed run's learner stores)."""
        steps, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            actor.step(epsilon)
            steps += actor.num_envs
        return steps / (time.perf_counter() - started)

    single_before = collect_here()

    agent.replay = agent.make_replay(actor.num_envs)
    for _ in range(max(run_config.agent.batch_size, 1000 // actor.num_envs)):
        agent.replay.add(*actor.step(epsilon).transition(run_config.agent.reward_clip))
    updates, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        agent.update()
        updates += 1
    learner = updates / (time.perf_counter() - started)

    result = {"config": config, "overrides": list(overrides), "seconds": seconds,
              "steps_per_batch": run_config.ray.steps_per_batch, "learner_updates_per_s": learner, "workers": {}}
    started = time.perf_counter()
    resources = start_ray(address, num_cpus=max(most, os.cpu_count() or 1) if address is None else None)
    result["ray_start_s"] = time.perf_counter() - started
    try:
        remote = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(RolloutWorker)
        weights = ray.put({name: value.numpy() for name, value in agent.online.state_dict().items()})
        batch = run_config.ray.steps_per_batch
        for count in range(1, most + 1):
            started = time.perf_counter()
            pool = [remote.remote(run_config, index, epsilon)
                    for index, epsilon in enumerate(worker_epsilons(count, run_config.agent.worker_epsilon,
                                                                    run_config.agent.worker_epsilon_alpha))]
            ray.get([worker.pid.remote() for worker in pool])
            result.setdefault("workers_start_s", {})[count] = time.perf_counter() - started
            pending = {worker.collect.remote(weights, batch): worker for worker in pool}
            steps, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                [ready], _ = ray.wait(list(pending), num_returns=1)
                worker = pending.pop(ready)
                steps += int(np.prod(ray.get(ready)["actions"].shape))
                pending[worker.collect.remote(weights, batch)] = worker
            result["workers"][count] = steps / (time.perf_counter() - started)
            for worker in pool:
                ray.kill(worker)
    finally:
        stop_ray()
    single_after = collect_here()
    actor.close()
    single = (single_before + single_after) / 2
    result.update(single_steps_per_s=single, single_before_after=[single_before, single_after])
    result["ratio"] = result["workers"][most] / single / most
    result["hardware"] = {**hardware(), "ray_cpus": resources.get("CPU"), "ray_nodes": address or "embedded"}
    return result
