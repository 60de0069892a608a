"""``pixelpilot sweep``: a grid (and random draws) of config overrides over seeds, every trial one ``train()``
run, scheduled by Ray Tune on this machine or a cluster.

    pixelpilot sweep dqn_pendulum --grid agent.lr=1e-4,3e-4 --grid agent.n_step=1,3 --seeds 3
    pixelpilot sweep ddm_pendulum --random agent.fit.lr=1e-4:1e-2:log --samples 4 --seeds 2
    pixelpilot sweep --resume runs/dqn_pendulum/sweep-20261126-180000

A configuration is one combination of the grid's values (with one of the ``--samples`` random draws); a trial
is a configuration with one seed (seeds 0..S-1 are one more grid axis). Random values are drawn here, once,
before Tune starts (not by Tune per trial), so every seed of a configuration trains with the same values.
Every trial is ``train()`` of the recipe plus its overrides, into its own run directory:

    runs/<name>/sweep-<stamp>/
        sweep.json                        what was asked: the config, its configurations, seeds, metric
        c<i>_<overrides>/<stamp>-seed<N>/  the trials' run directories; their config's `name` is c<i>_<overrides>,
                                          so plot.py draws a configuration's seeds as one mean and spread
        tune/                             Ray Tune's experiment state (what --resume restores) and trial logs
        results.csv                       one row per trial: its overrides, seed, metric, status, attempts,
                                          wall_s, run_dir
        metric.png                        the metric per configuration: each seed, the mean and std
        curves.png                        learning curves of every configuration (plot.py)

The metric is the one the agent class declares (``metric``, ``metric_mode``, ``early_stopping``), never looked up by
kind: ``mean_return`` (higher is better) for dqn, sb3 and random, each metrics.csv row's rollout/ep_return as the
run writes it and summary.json's value at the end, ASHA stopping the poor configurations early (compared at 1/9 and
1/3 of agent.total_steps) where the class allows it (dqn, sb3); ``trials_to_success`` (lower is better) for ddm,
known only at the end of a run (a seed that never succeeds counts as agent.trials + 1), so reported once.

A trial runs ``train()`` in a thread and reports the rows its run appends to metrics.csv: every agent kind
writes that file as it trains, so Tune (and ASHA) sees each learning curve without the agents knowing of Tune.
A trial that crashes (its train() raises, or its worker process dies) is retried up to MAX_FAILURES times; a
retry continues its run directory from the last checkpoint (train(resume=...)), as ``train --resume`` does.
Ctrl-C or SIGTERM stops a sweep after Tune saves its state; ``--resume SWEEP_DIR`` restores it (Tuner.restore):
finished trials are kept, the others run (an interrupted one continues its run directory).

On a cluster (``--address``) the trials write their run directories at the sweep directory's path on the node
they run on: give every node that path on a shared filesystem, and install pixelpilot on each.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from agents.core.agent import agent_class, train
from agents.core.config import (
    ConfigError,
    RunConfig,
    apply_override,
    config_from_dict,
    config_to_dict,
    load_config,
)
from agents.core.envs import make_env
from agents.core.run import atomic_write, checkpoint_paths
from agents.tune.cluster import check_address
from agents.tune.tasks import ray_session, sigterm_as_ctrl_c
from agents.ui.plot import find_runs, plot_runs

PLAN_FILE = "sweep.json"
TUNE_DIR = "tune"
RESULTS_FILE = "results.csv"
METRIC_PLOT = "metric.png"
CURVES_PLOT = "curves.png"
MAX_FAILURES = 2  # retries of a crashed trial
POLL_S = 1.0  # a trial looks at its metrics.csv this often
RANDOM_SEED = 0  # the draws of --random: the same command draws the same values
ASHA_RUNGS = 9  # first comparison at 1/ASHA_RUNGS of the budget, then x3
RESERVED_KEYS = {"seed": "--seeds", "name": "the sweep", "train.runs_dir": "the sweep"}  # set per trial


@dataclass
class SweepPlan:
    """What a sweep runs, written to sweep.json before Tune starts; --resume reads it back."""

    config: str  # the config as given (a path or recipe name)
    base: dict  # the resolved config with the command's own overrides: every trial starts from it
    keys: list[str]  # the swept keys, in the order given
    configurations: list[list[str]]  # each configuration's overrides, "key=value"
    seeds: int  # seeds 0..seeds-1 of every configuration
    kind: str  # agent.kind
    metric: str  # "trials_to_success" or "mean_return"
    mode: str  # "min" or "max"
    max_steps: int | None  # the largest agent.total_steps of the configurations (ASHA's budget), if the kind has one
    sweep_dir: str
    stops_early: bool = False  # the agent class's early_stopping: ASHA may stop its poor trials

    @property
    def early_stopping(self) -> bool:
        return self.stops_early and self.max_steps is not None

    def label(self, index: int) -> str:
        """The configuration's name: c<index>_<its overrides>, fit for a directory name (c<index> if too long)."""
        text = ",".join(self.configurations[index]).replace("/", "_").replace(" ", "")
        return f"c{index}_{text}" if text and len(text) <= 100 else f"c{index}"

    def trial_config(self, index: int, seed: int) -> RunConfig:
        """The RunConfig of configuration `index` with `seed`, its run directory under the sweep directory."""
        data = json.loads(json.dumps(self.base))
        for override in self.configurations[index]:
            apply_override(data, override)
        data.update(seed=seed, name=self.label(index))
        data["train"]["runs_dir"] = self.sweep_dir
        return config_from_dict(data, source=f"sweep configuration c{index}")


@dataclass
class TrialRow:
    """One trial of the results table."""

    configuration: int
    seed: int
    value: float | None  # the metric: the trial's last report (None: it reported nothing)
    status: str  # done, stopped early (ASHA), error, interrupted, not run
    attempts: int
    wall_s: float | None
    run_dir: str | None
    error: str = ""


# ------------------------------------------------------------------------------------------------ the command's input
def split_values(text: str) -> list[str]:
    """``a,b,[1, 2]`` -> ["a", "b", "[1, 2]"]: commas inside brackets belong to the value."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    values.append(current.strip())
    return values


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """``--grid key=a,b,c`` arguments -> {key: [a, b, c]} (the values as written)."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        values = split_values(text) if sep else []
        if not key or not values or any(not value for value in values):
            raise ConfigError(f"--grid {item}: expected key.sub=value1,value2,...")
        check_key(key, f"--grid {item}")
        if key in grid:
            raise ConfigError(f"--grid {item}: {key} is swept twice")
        grid[key] = values
    return grid


def parse_random(items: Sequence[str]) -> dict[str, tuple[float, float, bool]]:
    """``--random key=lo:hi`` (uniform; integers if both are) or ``key=lo:hi:log`` (log-uniform) -> {key: range}."""
    ranges: dict[str, tuple[float, float, bool]] = {}
    for item in items:
        key, _, text = item.partition("=")
        parts = text.split(":")
        log = len(parts) == 3 and parts[2] == "log"
        try:
            if not key or len(parts) != (3 if log else 2):
                raise ValueError
            low, high = (number(part) for part in parts[:2])
            if not (math.isfinite(low) and math.isfinite(high)):
                raise ValueError
        except ValueError:
            raise ConfigError(f"--random {item}: expected key.sub=low:high or key.sub=low:high:log") from None
        if not low < high or (log and low <= 0):
            raise ConfigError(f"--random {item}: needs low < high{' and low > 0 for :log' if log else ''}")
        check_key(key, f"--random {item}")
        if key in ranges:
            raise ConfigError(f"--random {item}: {key} is swept twice")
        ranges[key] = (low, high, log)
    return ranges


def number(text: str) -> int | float:
    """``3`` -> 3, ``1e-4`` -> 0.0001 (YAML 1.1 would read that as a string); ValueError if neither."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def check_key(key: str, where: str) -> None:
    if key in RESERVED_KEYS:
        raise ConfigError(f"{where}: {key} is set by {RESERVED_KEYS[key]}, it cannot be swept")


def draw_random(ranges: dict[str, tuple[float, float, bool]], samples: int) -> list[list[str]]:
    """`samples` draws of every random key, as overrides; integers when both bounds are (high included)."""
    rng = np.random.default_rng(RANDOM_SEED)
    draws = []
    for _ in range(samples):
        draw = []
        for key, (low, high, log) in ranges.items():
            if log:
                value = float(np.exp(rng.uniform(np.log(low), np.log(high))))
            elif isinstance(low, int) and isinstance(high, int):
                value = int(rng.integers(low, high + 1))
            else:
                value = float(rng.uniform(low, high))
            draw.append(f"{key}={value if isinstance(value, int) else f'{value:.4g}'}")
        draws.append(draw)
    return draws


def plan_sweep(config: str, overrides: Sequence[str] = (), grid: Sequence[str] = (), random: Sequence[str] = (),
               samples: int | None = None, seeds: int = 1, runs_dir: str | Path | None = None) -> SweepPlan:
    """Check the command's input and list its configurations (ConfigError, one line, on anything wrong: before
    Ray starts and before anything is written)."""
    if seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1, got {seeds}")
    if samples is not None and not random:
        raise ConfigError(f"--samples {samples}: only with --random (the grid is swept whole)")
    if samples is not None and samples < 1:
        raise ConfigError(f"--samples: must be >= 1, got {samples}")
    grid_values = parse_grid(grid)
    ranges = parse_random(random)
    both = set(grid_values) & set(ranges)
    if both:
        raise ConfigError(f"--random {sorted(both)[0]}: also in --grid")
    base = load_config(config, overrides)
    for key, values in grid_values.items():
        for value in values:
            try:
                load_config(config, [*overrides, f"{key}={value}"])
            except ConfigError as err:
                raise ConfigError(f"--grid {key}={','.join(values)}: {err}") from None
    for key, (low, high, _) in ranges.items():
        for value in (low, high):
            try:
                load_config(config, [*overrides, f"{key}={value}"])
            except ConfigError as err:
                raise ConfigError(f"--random {key}={low}:{high}: {err}") from None
    axes = [[f"{key}={value}" for value in values] for key, values in grid_values.items()]
    draws = draw_random(ranges, samples or 1) if ranges else [[]]
    configurations = [[*combination, *draw] for combination in itertools.product(*axes) for draw in draws]
    budgets, envs_made = [], []
    for configuration in configurations:
        try:
            loaded = load_config(config, [*overrides, *configuration])
            if loaded.env not in envs_made:  # a bad env id or kwarg fails here, as in train(), not in every trial
                make_env(loaded).close()
                envs_made.append(loaded.env)
        except ConfigError as err:
            raise ConfigError(f"configuration {' '.join(configuration) or '(the config as it is)'}: {err}") from None
        budgets.append(getattr(loaded.agent, "total_steps", None))
    root = Path(runs_dir if runs_dir is not None else base.train.runs_dir).resolve() / base.name
    kind = agent_class(base.agent.kind)
    return SweepPlan(config=config, base=config_to_dict(base), keys=[*grid_values, *ranges],
                     configurations=configurations, seeds=seeds, kind=base.agent.kind, metric=kind.metric,
                     mode=kind.metric_mode, stops_early=kind.early_stopping,
                     max_steps=max(budgets) if None not in budgets else None,
                     sweep_dir=str(root / f"sweep-{datetime.now().strftime('%Y%m%d-%H%M%S')}"))


def read_plan(sweep_dir: str | Path) -> SweepPlan:
    """A sweep directory's plan, its trials' run directories under the directory where it is now."""
    path = Path(sweep_dir) / PLAN_FILE
    if not path.is_file():
        raise ConfigError(f"--resume {sweep_dir}: not a sweep directory (no {PLAN_FILE} in it)")
    if not (Path(sweep_dir) / TUNE_DIR).is_dir():
        raise ConfigError(f"--resume {sweep_dir}: stopped before Tune started (no {TUNE_DIR}/): run the sweep again")
    return SweepPlan(**{**json.loads(path.read_text()), "sweep_dir": str(Path(sweep_dir).resolve())})


# ------------------------------------------------------------------------------------------------ one trial
def trial_metric(plan: SweepPlan, summary: dict) -> float:
    """A finished run's metric: its summary.json's value of the agent class's metric key."""
    return float(summary[plan.metric])


def latest_run(label_dir: Path, seed: int) -> Path | None:
    """The run directory an earlier attempt of this trial made, if any."""
    runs = sorted(path for path in label_dir.glob(f"*-seed{seed}*") if (path / "config.yaml").is_file()
                  and path.name.split("-seed")[-1].split("-")[0] == str(seed))
    return runs[-1] if runs else None


def run_trial(params: dict, plan: dict) -> None:
    """The Tune trainable: train() one configuration and seed in a thread, reporting its metrics.csv rows as
    they come (mean-return metrics) and the summary's metric at the end (``final``: it ran to its end)."""
    import torch
    from ray import tune


    torch.set_num_threads(1)  # one CPU per trial
    sweep = SweepPlan(**plan)
    index, seed = params["configuration"], params["seed"]
    config = sweep.trial_config(index, seed)
    label_dir = Path(config.train.runs_dir) / config.name
    attempts_path = Path(tune.get_context().get_trial_dir()) / "attempts.json"
    earlier = json.loads(attempts_path.read_text()) if attempts_path.is_file() else {"attempts": 0, "wall_s": 0.0}
    attempt = {"attempts": earlier["attempts"] + 1, "wall_s": earlier["wall_s"]}
    started = time.time()

    def report(value: float, env_steps: int, run_dir: Path, final: bool) -> None:
        attempt["wall_s"] = round(earlier["wall_s"] + time.time() - started, 2)
        attempts_path.write_text(json.dumps(attempt))
        tune.report({sweep.metric: value, "env_steps": env_steps, "run_dir": str(run_dir), "final": final,
                     "attempts": attempt["attempts"], "wall_s": attempt["wall_s"]})

    attempts_path.write_text(json.dumps(attempt))
    run_dir = latest_run(label_dir, seed)
    if run_dir is not None and not (run_dir / "summary.json").is_file() and not checkpoint_paths(run_dir):
        shutil.rmtree(run_dir)  # an earlier attempt died before its first checkpoint: start again clean
        run_dir = None
    if run_dir is None or not (run_dir / "summary.json").is_file():
        outcome: dict = {}

        def target() -> None:
            try:
                outcome["run_dir"] = train(config, quiet=True) if run_dir is None else train(resume=run_dir,
                                                                                              quiet=True)
            except BaseException as err:  # handed to the trial's thread, which raises it to Tune
                outcome["error"] = err

        thread = threading.Thread(target=target, name="train", daemon=True)
        thread.start()
        # The row at the budget is left to the final report: at max_t ASHA stops whatever reaches it, and the
        # trial would end there, unmarked as finished, without its summary.
        budget = getattr(config.agent, "total_steps", None)
        reported = 0
        while thread.is_alive():
            thread.join(POLL_S)
            run_dir = run_dir or latest_run(label_dir, seed)
            if sweep.metric == "mean_return" and run_dir is not None:
                for step, value in new_returns(run_dir, reported):
                    reported += 1
                    if budget is None or step < budget:
                        report(value, step, run_dir, final=False)
        if "error" in outcome:
            raise outcome["error"]
        run_dir = outcome["run_dir"]
    summary = json.loads((run_dir / "summary.json").read_text())
    report(trial_metric(sweep, summary), int(summary["env_steps"]), run_dir, final=True)


def new_returns(run_dir: Path, seen: int) -> list[tuple[int, float]]:
    """(step, rollout/ep_return) of metrics.csv's rows after the first `seen` rows that had a return."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as file:
        rows = [(int(float(row["step"])), float(row["rollout/ep_return"])) for row in csv.DictReader(file)
                if row.get("rollout/ep_return") and math.isfinite(float(row["rollout/ep_return"]))]
    return rows[seen:]


def trial_dirname(trial) -> str:
    """Tune's folder for a trial, under tune/: c<configuration>-seed<seed>."""
    return f"c{trial.config['configuration']}-seed{trial.config['seed']}"


# ------------------------------------------------------------------------------------------------ the sweep
def sweep(config: str | None = None, overrides: Sequence[str] = (), grid: Sequence[str] = (),
          random: Sequence[str] = (), samples: int | None = None, seeds: int = 1, address: str | None = None,
          jobs: int | None = None, resume: str | Path | None = None) -> tuple[Path, list[TrialRow]]:
    """Run (or, with `resume`, finish) a sweep; print and write its results. Returns the sweep directory and
    its rows. An interrupted sweep (Ctrl-C, SIGTERM) says how to resume it and raises KeyboardInterrupt."""
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs: must be >= 1, got {jobs}")
    if resume is not None:
        if config or overrides or grid or random or samples is not None:
            raise ConfigError("sweep --resume SWEEP_DIR takes no config, overrides, --grid, --random or --samples "
                              "(the sweep keeps its own)")
        plan = read_plan(resume)
    else:
        if not config:
            raise ConfigError("sweep: name a config (a path or a recipe in configs/) or --resume SWEEP_DIR")
        plan = plan_sweep(config, overrides, grid, random, samples, seeds)
    if address is not None:
        check_address(address)  # before the sweep folder is made: a failed sweep leaves nothing to --resume
    sweep_dir = Path(plan.sweep_dir)
    trials = len(plan.configurations) * plan.seeds
    print(f"sweep: {sweep_dir}: {len(plan.configurations)} configurations x {plural(plan.seeds, 'seed')} = "
          f"{plural(trials, 'trial')}, "
          f"{plan.metric} ({'lower' if plan.mode == 'min' else 'higher'} is better"
          f"{', ASHA stops poor ones early' if plan.early_stopping else ''})", flush=True)
    if resume is None:
        sweep_dir.mkdir(parents=True)
        (sweep_dir / PLAN_FILE).write_text(json.dumps(asdict(plan), indent=2) + "\n")


    with sigterm_as_ctrl_c(), ray_session(address, num_cpus=jobs):
        results = run_tune(plan, jobs, resume is not None)
    rows = result_rows(plan, results)
    print(format_table(plan, rows))
    write_results(plan, rows)
    unfinished = [row for row in rows if row.status in ("interrupted", "not run")]
    if unfinished:
        print(f"sweep interrupted with {len(unfinished)} of {trials} trials unfinished; finish it with: "
              f"pixelpilot sweep --resume {sweep_dir}", file=sys.stderr)
        raise KeyboardInterrupt
    return sweep_dir, rows


def run_tune(plan: SweepPlan, jobs: int | None, restore: bool):
    """Tuner.fit() of the plan's trials (or of those left, restored from tune/); its ResultGrid."""
    from ray import tune

    # Tune's newer console output prints its own tables even at verbose=0; ProgressLines says what matters.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    trainable = tune.with_resources(tune.with_parameters(run_trial, plan=asdict(plan)), {"cpu": 1})
    tune_dir = Path(plan.sweep_dir) / TUNE_DIR
    if restore:
        tuner = tune.Tuner.restore(str(tune_dir), trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"configuration": tune.grid_search(list(range(len(plan.configurations)))),
                         "seed": tune.grid_search(list(range(plan.seeds)))},
            tune_config=tune.TuneConfig(metric=plan.metric, mode=plan.mode, scheduler=make_scheduler(plan),
                                        max_concurrent_trials=jobs, trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(name=TUNE_DIR, storage_path=plan.sweep_dir, verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
                                      callbacks=[progress_lines(trial_name, trial_dirname,
                                                                trial_completed(plan.metric))]),
        )
    return fit_keeping_signals(tuner)


def fit_keeping_signals(tuner):
    """tuner.fit(), then this process's SIGINT and SIGUSR1 handlers back in place."""
    # Tune takes over SIGINT (and SIGUSR1) to stop a sweep gracefully and leaves its handler in place after fit.
    handled = (signal.SIGINT, signal.SIGUSR1)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = [signal.getsignal(signum) for signum in handled] if main_thread else []
    try:
        return tuner.fit()
    finally:
        for signum, handler in zip(handled, previous, strict=False):
            if handler is not None:  # None: a handler set outside Python, which cannot be put back
                signal.signal(signum, handler)


def make_scheduler(plan: SweepPlan):
    """ASHA on env steps for the kinds that learn a return (dqn, sb3), else first in, first out."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if not plan.early_stopping:
        return FIFOScheduler()
    return ASHAScheduler(time_attr="env_steps", max_t=plan.max_steps, reduction_factor=3,
                         grace_period=max(1, plan.max_steps // ASHA_RUNGS))


def progress_lines(name: Callable, dirname: Callable, completed: Callable):
    """A Tune callback printing one line as each trial starts, crashes (and is retried), fails and ends, instead
    of Tune's own tables: `name(trial)` and `dirname(trial)` (its folder under tune/) say which trial,
    `completed(trial)` what its end line says after the name."""
    from ray import tune

    class ProgressLines(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            print(f"{name(trial)}: started", flush=True)

        def on_trial_recover(self, iteration, trials, trial, **info) -> None:
            print(f"{name(trial)}: crashed, retrying ({trial.num_failures} of {MAX_FAILURES} retries)", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            print(f"{name(trial)}: failed after {MAX_FAILURES} retries (tune/{dirname(trial)}/error.txt)",
                  flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            print(f"{name(trial)}: {completed(trial)}", flush=True)

    return ProgressLines()


def trial_name(trial) -> str:
    return f"c{trial.config['configuration']} seed {trial.config['seed']}"


def trial_completed(metric: str) -> Callable:
    """The end line of a sweep trial: done or stopped early, its metric and wall time."""

    def completed(trial) -> str:
        result = trial.last_result
        how = "done" if result.get("final") else f"stopped early at {result.get('env_steps', 0):,} env steps"
        value = result.get(metric)
        shown = f"{metric} {value:.4g}" if isinstance(value, float) else f"no {metric}"
        return f"{how}, {shown} ({result.get('wall_s', 0):.1f} s)"

    return completed


def result_rows(plan: SweepPlan, results) -> list[TrialRow]:
    """One row per configuration and seed, from Tune's results (a trial Tune never started: "not run")."""
    by_trial = {}
    for result in results:
        if result.config is not None:
            by_trial[(result.config["configuration"], result.config["seed"])] = result
    rows = []
    for index in range(len(plan.configurations)):
        for seed in range(plan.seeds):
            result = by_trial.get((index, seed))
            metrics = result.metrics if result is not None and result.metrics else {}
            if result is not None and result.error is not None:
                status = "error"
            elif metrics.get("final"):
                status = "done"
            elif metrics.get("done"):
                status = "stopped early"
            else:
                status = "interrupted" if metrics else "not run"
            error = str(result.error).strip().splitlines()[-1] if status == "error" else ""
            rows.append(TrialRow(index, seed, metrics.get(plan.metric), status, metrics.get("attempts", 0),
                                 metrics.get("wall_s"), metrics.get("run_dir"), error))
    return rows


# ------------------------------------------------------------------------------------------------ the results
def row_values(plan: SweepPlan, row: TrialRow) -> dict[str, object]:
    """A row as the table's columns: each swept key's value, seed, metric, status, attempts, wall_s, run_dir."""
    values = dict(override.split("=", 1) for override in plan.configurations[row.configuration])
    return {"configuration": f"c{row.configuration}", **{key: values[key] for key in plan.keys}, "seed": row.seed,
            plan.metric: row.value, "status": row.status + (f": {row.error}" if row.error else ""),
            "attempts": row.attempts, "wall_s": row.wall_s, "run_dir": row.run_dir}


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def format_table(plan: SweepPlan, rows: Sequence[TrialRow]) -> str:
    """The trials as aligned columns (run directories relative to the sweep directory), then each
    configuration's mean and std over its seeds, the best marked."""
    table = []
    for row in rows:
        cells = row_values(plan, row)
        if cells["run_dir"] and Path(cells["run_dir"]).is_relative_to(plan.sweep_dir):
            cells["run_dir"] = str(Path(cells["run_dir"]).relative_to(plan.sweep_dir))
        table.append({key: "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
                      for key, value in cells.items()})
    lines = aligned(table)
    summary = configuration_summary(plan, rows)
    if summary:
        best = (min if plan.mode == "min" else max)(summary, key=lambda item: item[1])
        lines.append("")
        for index, mean, std, count in summary:
            mark = "  <- best" if index == best[0] else ""
            lines.append(f"c{index} {' '.join(plan.configurations[index]) or '(the config as it is)'}: "
                         f"{plan.metric} {mean:.4g} ± {std:.4g} over {plural(count, 'seed')}{mark}")
    return "\n".join(lines)


def aligned(table: Sequence[dict[str, str]]) -> list[str]:
    """Rows of cells (the same keys in each) as lines of aligned columns, a header line first."""
    header = list(table[0])
    widths = {key: max(len(key), *(len(cells[key]) for cells in table)) for key in header}
    lines = ["  ".join(key.ljust(widths[key]) for key in header)]
    return lines + ["  ".join(cells[key].ljust(widths[key]) for key in header) for cells in table]


def configuration_summary(plan: SweepPlan, rows: Sequence[TrialRow]) -> list[tuple[int, float, float, int]]:
    """(configuration, mean, std, seeds) of the metric over the seeds that reported it."""
    summary = []
    for index in range(len(plan.configurations)):
        values = [row.value for row in rows if row.configuration == index and row.value is not None
                  and math.isfinite(row.value)]
        if values:
            summary.append((index, float(np.mean(values)), float(np.std(values)), len(values)))
    return summary


def write_results(plan: SweepPlan, rows: Sequence[TrialRow]) -> None:
    """results.csv, metric.png and curves.png in the sweep directory."""

    sweep_dir = Path(plan.sweep_dir)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(row_values(plan, rows[0])))
    writer.writeheader()
    writer.writerows(row_values(plan, row) for row in rows)
    atomic_write(sweep_dir / RESULTS_FILE, lambda file: file.write(text.getvalue().encode()))
    plot_metric(plan, rows, sweep_dir / METRIC_PLOT)
    folders = [sweep_dir / plan.label(index) for index in range(len(plan.configurations))]
    logged = [folder for folder in folders if any((run / "metrics.csv").is_file() for run in folder.glob("*/"))]
    if logged:
        try:
            plot_runs([run for folder in logged for run in find_runs([folder])], out=sweep_dir / CURVES_PLOT)
        except (ConfigError, ValueError, IndexError) as err:  # runs with nothing to draw: the table still stands
            print(f"{CURVES_PLOT}: not drawn ({err})", file=sys.stderr)
    print(f"wrote: {sweep_dir / RESULTS_FILE}, {METRIC_PLOT}, {CURVES_PLOT if logged else '(no curves)'}")


def plot_metric(plan: SweepPlan, rows: Sequence[TrialRow], out: Path) -> None:
    """The metric per configuration: a dot per seed, the mean with a bar of one std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    count = len(plan.configurations)
    figure, axis = plt.subplots(figsize=(max(5.0, 2.0 * count + 1), 4.5))
    for index in range(count):
        values = [row.value for row in rows if row.configuration == index and row.value is not None]
        if values:
            axis.scatter([index] * len(values), values, color="C0", alpha=0.5, s=20,
                         label="seeds" if index == 0 else None)
            axis.errorbar(index, np.mean(values), yerr=np.std(values), color="C1", marker="o", capsize=4,
                          label="mean ± std" if index == 0 else None)
    short = [key.rpartition(".")[2] for key in plan.keys]
    keys = short if len(set(short)) == len(short) else plan.keys  # the keys' last parts, when those are unique
    labels = ["\n".join([f"c{index}"] + [f"{key}={override.split('=', 1)[1]}" for key, override
                                         in zip(keys, plan.configurations[index], strict=True)])
              for index in range(count)]
    axis.set_xticks(range(count), labels, fontsize="small")
    better = "lower" if plan.mode == "min" else "higher"
    axis.set_ylabel(f"{plan.metric} ({better} is better)")
    axis.set_title(f"{Path(plan.sweep_dir).parent.name}: {plural(plan.seeds, 'seed')} per configuration")
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize="small")
    figure.tight_layout()
    atomic_write(out, lambda file: figure.savefig(file, format="png", dpi=100))
    plt.close(figure)
