"""`pixelpilot bench ray`: env steps per second collected by 1, 2, ... Ray rollout workers against one process.

In the same run, on the DQN config's env (MinAtar Breakout by default) and network, acting epsilon-greedy with
Ape-X's worker epsilons:

    single      the one-process path: an Actor stepping its vector env in this process, `seconds` long (acting
                only: storing the steps is the learner's work in both paths), measured before the workers and
                again after them, the mean of the two its rate (the machine's speed drifts: a one-sided
                measurement moved the ratio by 0.15 between runs)
    workers k   k RolloutWorker actors collecting `ray.steps_per_batch` steps a batch, `ray.batches_in_flight`
                calls queued on each, as a distributed run does, every batch fetched by this process (the
                learner's side of the transfer included), `seconds` long;
                every worker explores with the single path's epsilon (Ape-X's first worker's), so each does the
                same work per step: with Ape-X's spread a second worker is nearly greedy, a network pass on every
                step instead of on 60% of them, which is not Ray's cost
    learner     DQN updates per second of this process (sample + gradient step), on 1,000 stored steps

    machine     the machine's own scaling: k plain processes (no Ray) each stepping the same Actor for the same
                `seconds`, all at once, against one such process: (their summed rate / k) / the one's rate. Two
                processes on this 2-core VM do not give twice one (two plain Python loops gave 0.62-0.84 of it):
                that is the bound Ray's workers are measured against.

`ratio` = (workers' rate with the most workers / single rate) / that number of workers: 1.0 is a perfect
speed-up; `ratio_to_machine` = ratio / the machine's scaling at that many processes (the goal: >= 0.9). The
single rate, the workers and the machine's scaling are measured `repeats` times in one command (Ray kept up
between them, idle while the plain processes run) and each figure is the median over the repeats. Ray's start-up
(ray.init and the workers' construction) is timed apart and not in any rate.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from collections.abc import Sequence

import numpy as np
import torch

from agents.core.bench import hardware
from agents.core.config import ConfigError, RunConfig, config_from_dict, config_to_dict, load_config
from agents.dqn.actor import Actor
from agents.dqn.agent import DQNAgent
from agents.dqn.distributed import Collects, RolloutWorker, worker_epsilons
from agents.tune.cluster import start_ray, stop_ray


def bench_ray(workers: int | None = None, seconds: float = 10.0, repeats: int = 3, address: str | None = None,
              config: str = "dqn_minatar_breakout", overrides: Sequence[str] = ()) -> dict:
    """Collection rates with 1..`workers` rollout workers (default: this machine's CPUs), in one process and in
    plain processes (the machine's scaling), `repeats` times; the medians (module docstring)."""
    import ray

    most = workers if workers is not None else os.cpu_count() or 1
    if most < 1 or seconds <= 0 or repeats < 1:
        raise ConfigError(f"--workers, --seconds and --repeats: must be >= 1, > 0 and >= 1, got {most}, {seconds} "
                          f"and {repeats}")
    run_config = load_config(config, list(overrides))
    torch.set_num_threads(1)
    agent = DQNAgent(run_config, torch.device("cpu"))
    epsilon = worker_epsilons(1, run_config.agent.worker_epsilon, run_config.agent.worker_epsilon_alpha)[0]
    actor = Actor(run_config, agent.online, np.random.default_rng(0))
    actor.reset(seed=0)

    agent.replay = agent.make_replay(actor.num_envs)
    for _ in range(max(run_config.agent.batch_size, 1000 // actor.num_envs)):
        agent.replay.add(*actor.step(epsilon).transition(run_config.agent.reward_clip))
    updates, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        agent.update()
        updates += 1
    learner = updates / (time.perf_counter() - started)

    result = {"config": config, "overrides": list(overrides), "seconds": seconds, "repeats": repeats,
              "steps_per_batch": run_config.ray.steps_per_batch, "batches_in_flight": run_config.ray.batches_in_flight,
              "learner_updates_per_s": learner}
    started = time.perf_counter()
    resources = start_ray(address, num_cpus=max(most, os.cpu_count() or 1) if address is None else None)
    result["ray_start_s"] = time.perf_counter() - started
    rounds = []
    try:
        remote = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(RolloutWorker)
        weights = ray.put({name: value.numpy() for name, value in agent.online.state_dict().items()})
        for _ in range(repeats):
            before = collect_steps(actor, epsilon, seconds)
            rates, starts = {}, {}
            for count in range(1, most + 1):
                rates[count], starts[count] = collect_with_workers(ray, remote, run_config, weights, count, seconds,
                                                                   epsilon)
            after = collect_steps(actor, epsilon, seconds)
            machine = machine_scaling(run_config, most, seconds)
            single = (before + after) / 2
            ratio = rates[most] / single / most
            rounds.append({"single_steps_per_s": single, "single_before_after": [before, after], "workers": rates,
                           "workers_start_s": starts, "machine_scaling": machine, "ratio": ratio,
                           "ratio_to_machine": ratio / machine})
    finally:
        stop_ray()
    actor.close()

    def median(key: str) -> float:
        return float(statistics.median(item[key] for item in rounds))

    result.update(single_steps_per_s=median("single_steps_per_s"),
                  workers={count: float(statistics.median(item["workers"][count] for item in rounds))
                           for count in range(1, most + 1)},
                  machine_scaling=median("machine_scaling"), ratio_to_machine=median("ratio_to_machine"),
                  rounds=rounds, ratio=median("ratio"))
    result["hardware"] = {**hardware(), "torch_threads": 1, "ray_cpus": resources.get("CPU"),
                          "ray_nodes": address or "embedded"}
    result["ratio"] = result.pop("ratio")  # the headline last
    return result


def collect_steps(actor: Actor, epsilon: float, seconds: float) -> float:
    """Env steps per second of an Actor stepping for `seconds` (acting only: storing is the learner's work)."""
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        actor.step(epsilon)
        steps += actor.num_envs
    return steps / (time.perf_counter() - started)


def collect_with_workers(ray, remote, run_config: RunConfig, weights, count: int, seconds: float,
                         epsilon: float) -> tuple:
    """`count` RolloutWorker actors, each exploring with `epsilon`, collecting batches for `seconds`, every batch
    fetched here: (env steps per second, the workers' start-up seconds); the workers are killed after."""
    started = time.perf_counter()
    pool = [remote.remote(run_config, index, epsilon) for index in range(count)]
    ray.get([worker.pid.remote() for worker in pool])
    start_s = time.perf_counter() - started
    batch = run_config.ray.steps_per_batch
    collects = Collects(pool, weights, batch, run_config.ray.batches_in_flight)
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        index, ready = collects.next(ray)
        steps += int(np.prod(ray.get(ready)["actions"].shape))
        collects.send(index, weights)
    rate = steps / (time.perf_counter() - started)
    for worker in pool:
        ray.kill(worker)
    return rate, start_s


def plain_collect(config_data: dict, seconds: float, index: int, barrier, results) -> None:
    """One plain process of a machine-scaling measurement: an Actor on the config's env, one torch thread,
    stepping for `seconds` once every process of the measurement has built its own (`barrier`); its rate goes
    to `results`."""
    torch.set_num_threads(1)
    config = config_from_dict(config_data)
    agent = DQNAgent(config, torch.device("cpu"))
    epsilon = worker_epsilons(1, config.agent.worker_epsilon, config.agent.worker_epsilon_alpha)[0]
    actor = Actor(config, agent.online, np.random.default_rng(index))
    actor.reset(seed=index)
    barrier.wait()
    results.put(collect_steps(actor, epsilon, seconds))
    actor.close()


def machine_scaling(run_config: RunConfig, count: int, seconds: float) -> float:
    """(The summed rate of `count` plain processes stepping at once / count) / the rate of one alone."""
    data, context = config_to_dict(run_config), multiprocessing.get_context("spawn")

    def total_rate(processes: int) -> float:
        barrier, results = context.Barrier(processes), context.Queue()
        pool = [context.Process(target=plain_collect, args=(data, seconds, index, barrier, results))
                for index in range(processes)]
        for process in pool:
            process.start()
        rates = [results.get() for _ in pool]
        for process in pool:
            process.join()
        return sum(rates)

    one = total_rate(1)
    return total_rate(count) / count / one
