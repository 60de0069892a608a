"""`pixelpilot bench score`: wall-clock and frames until a greedy evaluation reaches a score, a baseline recipe
(SB3's DQN) against ours, several seeds each, side by side in one command.

Every run trains in rounds of `eval_seconds` of training wall-clock (the next round's env steps are estimated
from the last round's rate); after each round the agent plays `episodes` greedy episodes on the same evaluation
seeds, for every agent the same way (agents.core.episodes.evaluate: `act()`, deterministic). The evaluation's
own time is not counted: a run's clock is the sum of its rounds. The score is reached at the first of `confirm`
evaluations in a row at or above the target (the mean of 10 episodes is noisy: one lucky evaluation does not
count), and its wall-clock and frames are that first evaluation's. A run stops there, or at its recipe's
total_steps (its schedules are the recipe's) or `max_seconds` (then it counts as not reached, and the median
takes it as above every reached run). SB3's own periodic evaluation is switched off: it would run inside the
rounds' clock.

A task names its two recipes, the measure (the greedy mean return, or the success rate of the evaluation's
episodes) and the target. `ratio` = the baseline's median wall-clock to the score / ours; where one side's median
run never reached it, `ratio_bound` says the ratio is a lower (the baseline's) or upper (ours) bound.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from agents.core.agent import resolve_device, seed_everything
from agents.core.bench import hardware
from agents.core.config import ConfigError, config_from_dict, config_to_dict, load_config
from agents.core.envs import make_env
from agents.core.episodes import EVAL_SEED_OFFSET, evaluate
from agents.core.registry import agent_class
from agents.core.run import Run
from agents.tune.tasks import map_tasks, ray_session, sigterm_as_ctrl_c

FIRST_ROUND_STEPS = 2_000  # the first round's env steps, before any rate is known
# a round has at most this many times the last round's env steps: a rate measured before learning starts (random
# acting, no updates) is many times the learning rate, and SB3's second round was 145k steps (~10 min) long
ROUND_GROWTH = 4


@dataclass(frozen=True)
class ScoreTask:
    ours: str  # our recipe
    baseline: str  # the baseline's recipe (the same env)
    measure: str  # "return": the evaluation's mean return; "success": its success rate
    target: float


TASKS = {
    # MinAtar Breakout to a greedy return of 10 (mean of 10 episodes)
    "breakout": ScoreTask("pqn_minatar_breakout", "sb3_dqn_minatar_breakout", "return", 10.0),
    # the pixel pendulum, five torques: the first greedy evaluation with a held swing-up (success rate > 0);
    # ours is DQN on four batched envs, an update per four frames (pqn_pendulum: 1.5x SB3 to its 3.1x, docs/pqn.md)
    "pendulum": ScoreTask("dqn_pendulum_fast", "sb3_dqn_pendulum", "success", 0.1),
    # pixel cart-pole balance, three pushes: the first greedy evaluation with a held balance (200 steps, the pole
    # upright at the end); the baseline is SB3's PPO on the same env (continuous pushes), as in bench ddm
    "cartpole": ScoreTask("pqn_cartpole_balance", "sb3_ppo_cartpole_balance", "success", 0.1),
}


def score_run(job: dict) -> dict:
    """One recipe and seed trained in rounds with greedy evaluations between them (module docstring)."""
    torch.set_num_threads(1)
    config = config_from_dict(job["config"])
    seed_everything(config.seed)
    agent = agent_class(config.agent.kind)(config, resolve_device(config.train.device))
    env = make_env(config)
    run = Run.create(config)
    clock, evaluations, reached = 0.0, [], None
    steps_per_round = FIRST_ROUND_STEPS
    try:
        while agent.env_steps < config.agent.total_steps and clock < job["max_seconds"]:
            before, started = agent.env_steps, time.perf_counter()
            agent.train(run, until=agent.env_steps + steps_per_round)
            elapsed = time.perf_counter() - started
            clock += elapsed
            done = agent.env_steps - before
            steps_per_round = max(1, min(int(done / max(elapsed, 1e-6) * job["eval_seconds"]), ROUND_GROWTH * done))
            result = evaluate(agent, env, job["episodes"], config.seed + EVAL_SEED_OFFSET)
            value = float(result.returns.mean()) if job["measure"] == "return" else (
                float(result.successes.mean()) if result.successes is not None else float("nan"))
            evaluations.append({"env_steps": agent.env_steps, "wall_s": round(clock, 2), "score": value})
            recent = evaluations[-job["confirm"]:]
            if len(recent) == job["confirm"] and all(item["score"] >= job["target"] for item in recent):
                reached = recent[0]
                break
    finally:
        run.close()
        env.close()
    return {"recipe": job["recipe"], "seed": config.seed, "reached": reached is not None,
            "wall_s": reached["wall_s"] if reached else None, "env_steps": reached["env_steps"] if reached else None,
            "trained_s": round(clock, 2), "trained_steps": agent.env_steps, "evaluations": evaluations}


def bench_score(task: str = "breakout", seeds: int = 3, jobs: int = 2, eval_seconds: float = 15.0,
                episodes: int = 10, confirm: int = 2, max_seconds: float = 1800.0, ours: str | None = None,
                baseline: str | None = None, runs_dir: str | None = None, address: str | None = None,
                device: str = "cpu", seed_start: int = 0, skip_baseline: bool = False,
                overrides: Sequence[str] = ()) -> dict:
    """Time to score of `ours` and `baseline` (a task's recipes unless named), `seeds` seeds each, `jobs` runs at
    once (one torch thread each; as Ray tasks, or with `jobs` 1 and no `address` one after another in this
    process), both sides on `device` (cpu, or cuda: the `jobs` runs at once share one GPU, each
    a Ray task asking for 1/jobs of it), on seeds `seed_start`, `seed_start` + 1, ...; `skip_baseline` runs ours
    alone (no ratio). `overrides` (key=value) apply to our recipe only."""
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device: expected cpu or cuda, got {device!r}")
    if device == "cuda" and address is None and not torch.cuda.is_available():
        raise ConfigError("--device cuda: this machine has no CUDA device (torch.cuda.is_available() is False)")
    if task not in TASKS:
        raise ConfigError(f"--task: expected one of {', '.join(TASKS)}, got {task!r}")
    if seed_start < 0:
        raise ConfigError(f"--seed-start: must be >= 0, got {seed_start}")
    if min(seeds, jobs, episodes, confirm) < 1 or eval_seconds <= 0 or max_seconds <= 0:
        raise ConfigError(f"--seeds, --jobs, --episodes, --confirm must be >= 1 and --eval-seconds, --max-seconds "
                          f"> 0, got {seeds}, {jobs}, {episodes}, {confirm}, {eval_seconds}, {max_seconds}")
    spec = TASKS[task]
    recipes = {"ours": (ours or spec.ours, list(overrides))}
    if not skip_baseline:
        recipes["baseline"] = (baseline or spec.baseline, [])
    with tempfile.TemporaryDirectory() as temporary:
        jobs_list = []
        for seed in range(seed_start, seed_start + seeds):  # ours and the baseline of a seed next to each other
            for side, (recipe, extra) in recipes.items():
                config = load_config(recipe, [f"seed={seed}", f"train.runs_dir={runs_dir or temporary}",
                                              "train.threads=1", "train.save_replay=false", f"train.device={device}",
                                              *extra])
                if config.agent.kind == "sb3":
                    config.agent.eval_every = 10**12
                jobs_list.append({"side": side, "recipe": recipe, "measure": spec.measure, "target": spec.target,
                                  "episodes": episodes, "confirm": confirm, "eval_seconds": eval_seconds,
                                  "max_seconds": max_seconds, "config": config_to_dict(config)})
        if jobs == 1 and address is None:  # one at a time in this process: no Ray (the GPU machine has none)
            results = [score_run(job) for job in jobs_list]
        else:
            with ray_session(address, num_cpus=jobs), sigterm_as_ctrl_c():
                results = map_tasks(score_run, jobs_list, jobs, gpus=1 / jobs if device == "cuda" else 0)
    sides = {}
    for side, (recipe, _) in recipes.items():
        runs = [result for job, result in zip(jobs_list, results, strict=True) if job["side"] == side]
        sides[side] = {"recipe": recipe, "reached": sum(run["reached"] for run in runs),
                       "median_wall_s": median_or_none([run["wall_s"] for run in runs]),
                       "median_env_steps": median_or_none([run["env_steps"] for run in runs]),
                       "runs": runs}
    ratio, bound = score_ratio(sides["ours"]["runs"], sides["baseline"]["runs"]) if not skip_baseline else (None, None)
    return {"task": task, "measure": spec.measure, "target": spec.target, "confirm": confirm,
            "episodes": episodes, "eval_seconds": eval_seconds, "seeds": seeds, "seed_start": seed_start, "jobs": jobs,
            "evaluation_time": "excluded (a run's clock is the sum of its training rounds)",
            **sides,
            "hardware": {**hardware(), "torch_threads": 1, "device": device,
                         **({"gpu": torch.cuda.get_device_name(0)} if device == "cuda" and torch.cuda.is_available()
                            else {})},
            **({"ratio_bound": bound} if bound else {}), "ratio": ratio}


def score_ratio(ours: list[dict], baseline: list[dict]) -> tuple[float | None, str | None]:
    """The baseline's median wall-clock to the score over ours, and None or the side of a bound: where one side's
    median run never reached the score, its median over the clock each run reached it at or trained for (less than
    it would have needed) gives a lower bound of the ratio ("lower", the baseline's) or an upper one ("upper",
    ours); None where neither median run reached it."""
    ours_wall = median_or_none([run["wall_s"] for run in ours])
    base_wall = median_or_none([run["wall_s"] for run in baseline])
    if ours_wall and base_wall:
        return base_wall / ours_wall, None
    if ours_wall:
        return clock_at_least(baseline) / ours_wall, "lower"
    if base_wall:
        return base_wall / clock_at_least(ours), "upper"
    return None, None


def clock_at_least(runs: list[dict]) -> float:
    """The median of each run's clock at the score, or of its whole training clock where it never got there."""
    return float(statistics.median(run["wall_s"] if run["reached"] else run["trained_s"] for run in runs))


def median_or_none(values: list) -> float | None:
    """The median where more than half the runs reached the score (the others count as above every reached
    run); None otherwise."""
    reached = sorted(value for value in values if value is not None)
    if len(reached) * 2 <= len(values):
        return None
    padded = reached + [float("inf")] * (len(values) - len(reached))
    return float(statistics.median(padded))

