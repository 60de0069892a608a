"""`pixelpilot bench dqn`: env steps per second of pixelpilot's DQN against Stable-Baselines3's DQN, same run.

Both train on MinAtar Breakout with the same network (the MinAtar paper's, conv 16 -> dense 128 -> Q), batch
size, one update per env step, replay size and target-update period (configs/dqn_minatar_breakout.yaml and
configs/sb3_dqn_minatar_breakout.yaml), on one env, one after the other in this process, each on the same
number of torch threads (`--threads`, default one: the threads a small network hands its work to cost it more
than they give, and two processes side by side on two cores want one each), exploring alike (epsilon at its end,
0.1, from the first timed step: each greedy step costs a forward pass; until 2026-12-07 SB3 was already there
while ours was still at ~0.95, which flattered ours by ~0.2 ms a step). The rate counts only the steps after
learning starts (each with its update), timed from the run directory's metrics rows, which both agents
log the same way; `ratio` = ours / SB3's.

The result also holds the replay's bytes per stored frame, and what a 1M-transition Atari replay (84x84 frames,
4 stacked) takes stored this way against SB3's stacked storage.
"""

from __future__ import annotations

import csv
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from agents.core.agent import train
from agents.core.bench import hardware
from agents.core.config import ConfigError, load_config
from agents.core.envs import make_env
from agents.core.qnets import build_network
from agents.dqn.replay import FrameReplay

OURS = "dqn_minatar_breakout"
SB3 = "sb3_dqn_minatar_breakout"
ATARI_FRAME = (1, 84, 84)


def bench_dqn(steps: int = 3_000, warmup: int = 1_000, device: str = "cpu", threads: int = 1,
              overrides: Sequence[str] = ()) -> dict:
    """Env steps per second of both DQNs over `steps` env steps with updates, after `warmup` steps of random
    acting that fill the replay, each agent on `threads` torch threads. `overrides` (key=value) apply to our
    agent only (e.g. agent.batch_size=64)."""
    if steps < 100 or warmup < 100:
        raise ConfigError(f"--steps and --warmup: must be >= 100, got {steps} and {warmup}")
    if threads < 1:
        raise ConfigError(f"--threads: must be >= 1, got {threads}")
    # Both explore alike over the timed steps: epsilon reaches its end (0.1) as updates start, so most timed steps
    # act greedily (a forward pass each), as most of a real run does. SB3's schedule is a share of its total.
    ours = measure(OURS, [f"agent.learning_starts={warmup}", f"agent.total_steps={warmup + steps}",
                          f"agent.epsilon_decay_steps={warmup}", f"train.log_every={warmup}", f"train.device={device}",
                          f"train.threads={threads}", *overrides], warmup)
    sb3 = measure(SB3, [f"agent.algo_kwargs.learning_starts={warmup}", f"agent.total_steps={warmup + steps}",
                        f"agent.algo_kwargs.exploration_fraction={warmup / (warmup + steps)}",
                        f"train.log_every={warmup}", f"train.device={device}", f"agent.eval_every={10 * steps}",
                        f"train.threads={threads}"], warmup)
    config = load_config(OURS, list(overrides))
    torch.set_num_threads(threads)
    arithmetic = update_arithmetic_ms(config)
    replay = FrameReplay.required_bytes(config.agent.replay.capacity, 1, (4, 10, 10))
    atari = FrameReplay.required_bytes(1_000_000, 1, ATARI_FRAME)
    return {
        "env": config.env.id, "steps": steps, "warmup": warmup, "device": device, "overrides": list(overrides),
        "ours_steps_per_s": ours, "sb3_steps_per_s": sb3,
        "ours_ms_per_step": 1000 / ours, "sb3_ms_per_step": 1000 / sb3,
        # the bound: an update's network passes alone on fixed tensors (see update_arithmetic_ms)
        "update_arithmetic_ms": arithmetic, "ours_step_over_arithmetic": 1000 / ours / arithmetic,
        "replay_bytes_per_frame": replay / config.agent.replay.capacity,
        "atari_1m_replay_gb": atari / 1e9,
        "sb3_atari_1m_replay_gb": 1_000_000 * 4 * 84 * 84 / 1e9,  # stacks, optimize_memory_usage (obs only once)
        "hardware": {**hardware(), "torch_threads": threads,
                     **({"gpu": torch.cuda.get_device_name(0)} if device.startswith("cuda") else {})},
        "ratio": ours / sb3,
    }


def measure(recipe: str, overrides: Sequence[str], warmup: int) -> float:
    """Train `recipe` in a temporary run directory; env steps per second from the first logged row at or after
    `warmup` steps to the last one."""
    with tempfile.TemporaryDirectory() as runs_dir:
        run_dir = train(load_config(recipe, [*overrides, f"train.runs_dir={runs_dir}"]), quiet=True)
        with open(Path(run_dir) / "metrics.csv", newline="") as file:
            rows = [(int(row["step"]), float(row["wall_s"])) for row in csv.DictReader(file)]
    rows = [row for row in rows if row[0] >= warmup]
    (first_step, first_wall), (last_step, last_wall) = rows[0], rows[-1]
    return (last_step - first_step) / (last_wall - first_wall)


def update_arithmetic_ms(config, repeats: int = 300) -> float:
    """Milliseconds of an update's bare arithmetic on this machine: the online network's forward and backward
    on a batch, and the target network's forward on the next observations (the online's too, with `double`),
    on tensors made once, with no sampling, loss bookkeeping or optimiser step: what one update per env step
    cannot go below, whatever the per-operation overhead. The median of `repeats` timed passes."""
    env = make_env(config)
    shape = (config.agent.batch_size, env.observation_space.shape[0] * config.agent.frame_stack,
             *env.observation_space.shape[1:])
    num_actions = int(env.action_space.n)
    env.close()
    online = build_network(config, (shape[1] // config.agent.frame_stack, *shape[2:]), num_actions)
    target = build_network(config, (shape[1] // config.agent.frame_stack, *shape[2:]), num_actions)
    observations = torch.randint(0, 2, shape, dtype=torch.uint8)
    following = torch.randint(0, 2, shape, dtype=torch.uint8)
    times = []
    for index in range(repeats + 20):  # the first 20 warm the allocator and the kernels up
        started = time.perf_counter()
        with torch.no_grad():
            target(following)
            if config.agent.double:
                online(following)
        online(observations).sum().backward()
        if index >= 20:
            times.append(time.perf_counter() - started)
    return 1000 * float(statistics.median(times))
