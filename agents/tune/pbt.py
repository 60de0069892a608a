"""``pixelpilot sweep CONFIG --pbt``: population-based training (Jaderberg et al. 2017) of a DQN/Rainbow config on
Ray Tune's PopulationBasedTraining scheduler.

    pixelpilot sweep dqn_minatar_breakout --pbt --population 4 --perturb-every 50000 [--control]

A population of members trains the config at once, each with its own seed (config seed + member) and its own
draw of the mutated hyperparameters. Training proceeds in rounds of ``--perturb-every`` env steps; at each
round's end a member reports its mean return (the last episodes' mean) and a Tune checkpoint: its pixelpilot
checkpoint file (without the replay) and its hyperparameters. Tune's scheduler (asynchronous, as in the paper)
then ranks the members that have reported: one in the bottom quantile *exploits* one in the top quantile (its
process restarts from the donor's checkpoint: network, optimiser, counters, RNG states; its replay refills, as
a resume without a saved replay does) and *explores* (the donor's hyperparameters, each perturbed or resampled
within its bounds). Mutated, with bounds derived from the config:

    lr                    log-uniform over [lr / 10, lr * 10]; perturbed x0.8 or x1.2
    epsilon_end           uniform over [0.01, 0.2] (or wider, to hold the config's own value); x0.8 or x1.2
    epsilon_decay_steps   integers over [decay / 4, decay * 4]; x0.8 or x1.2
    replay.n_step         one of 1, 3, 5; a step to a neighbour in that list

Each mutation is resampled from its bounds instead with probability RESAMPLE_PROBABILITY; a perturbation is
clipped to the bounds.

``--control`` then trains PBT's control, the same budget without PBT (Jaderberg et al.'s random-search
baseline): a second population with the same seeds and the same first hyperparameters, trained to the same
step count without exploit or explore (members c<i>, Tune's FIFO scheduler), and draws both populations'
learning curves into pbt_vs_control.png.

    runs/<name>/sweep-pbt-<stamp>/
        pbt.json                     what was asked: the config, population, interval, bounds, first draws
        m<i>/<stamp>-seed<N>/        member i's run directory: config.yaml (its hyperparameters now),
                                     metrics.csv, checkpoints/, summary.json and hyperparameters.json, the
                                     member's history: its start, then each exploit (the donor's step, episodes
                                     and updates it continues from, the new values)
        c<i>/<stamp>-seed<N>/        with --control: control member i's run directory (member i's seed and
                                     first hyperparameters, never changed)
        tune/, tune-control/         Ray Tune's experiment state, trial logs and its pbt_global.txt
        results.csv                  one row per member: population (pbt, control), final mean return, its
                                     hyperparameters at the end, exploits, status, wall_s, run_dir
        history.csv                  every member's hyperparameter history, one row per event
        curves.png                   the members' learning curves (pixelpilot plot)
        pbt_vs_control.png           with --control: each population's members (thin) and, at each step, its
                                     best member's return (thick)

A member's process restarts at each exploit, after a crash (retried from its own checkpoint, as a sweep's trials
are), and when Tune pauses it at a round's end for a member waiting for a CPU (a population larger than
``--jobs``). Every restart refills the replay before learning again (agent.learning_starts env steps) unless
train.save_replay keeps it in the member's own checkpoints; the donor's replay is never copied.

A member whose run is exploited keeps its own run directory: its checkpoints after the donor's step are
deleted, the donor's checkpoint becomes its own, and its metrics.csv rows after that step are dropped (as a
resume does), so ``train --resume`` of a member's run continues what the member last was.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import yaml

from agents.core.agent import Mutation, agent_class, resolve_device, seed_everything
from agents.core.config import ConfigError, RunConfig, config_from_dict, config_to_dict, load_config
from agents.core.envs import make_env
from agents.core.run import CHECKPOINT_PREFIX, Run, atomic_write, checkpoint_paths, load_checkpoint
from agents.tune.cluster import check_address
from agents.tune.sweep import (
    MAX_FAILURES,
    RANDOM_SEED,
    RESULTS_FILE,
    TUNE_DIR,
    aligned,
    fit_keeping_signals,
    latest_run,
    plural,
    progress_lines,
)
from agents.tune.tasks import ray_session, sigterm_as_ctrl_c
from agents.ui.plot import load_curve, on_common_grid, plot_runs

PLAN_FILE = "pbt.json"
COMPARE_PLOT = "pbt_vs_control.png"
CONTROL_TUNE_DIR = "tune-control"
PREFIXES = {"pbt": "m", "control": "c"}  # member name prefix of each population
HISTORY_FILE = "hyperparameters.json"  # in each member's run directory
HISTORY_CSV = "history.csv"
CURVES_PLOT = "curves.png"
CHECKPOINT_FILE = "agent.pt"  # in each Tune checkpoint, with MEMBER_FILE
MEMBER_FILE = "member.json"
METRIC = "mean_return"
RESAMPLE_PROBABILITY = 0.25
PERTURBATION_FACTORS = (1.2, 0.8)
ROUNDS = 10  # --perturb-every's default: agent.total_steps / ROUNDS


@dataclass
class PBTPlan:
    """What a PBT sweep runs, written to pbt.json before Tune starts."""

    config: str  # the config as given (a path or recipe name)
    base: dict  # the resolved config with the command's overrides: every member starts from it
    population: int
    perturb_every: int  # env steps per round
    total_steps: int  # agent.total_steps of every member
    mutations: dict  # Tune's name of each mutated hyperparameter -> its Mutation (the agent class's pbt_mutations)
    initial: list[dict]  # each member's first hyperparameters, by those names
    sweep_dir: str
    control: bool = False  # a control population (same seeds and first draws, no exploit) trains after PBT

    def member_config(self, member: int, values: dict, prefix: str = "m") -> RunConfig:
        """Member `member`'s RunConfig with hyperparameters `values`, its run directory under the sweep's
        (``<prefix><member>``: m for PBT's members, c for the control's)."""
        data = json.loads(json.dumps(self.base))
        for name, value in values.items():  # set as numbers: YAML 1.1 would read an override's 1e-05 as a string
            *sections, last = self.mutations[name]["key"].split(".")
            node = data
            for section in sections:
                node = node[section]
            node[last] = value
        data.update(seed=self.base["seed"] + member, name=f"{prefix}{member}")
        data["train"]["runs_dir"] = self.sweep_dir
        return config_from_dict(data, source=f"population member {prefix}{member}")

    def clip(self, values: dict) -> dict:
        """Hyperparameters put back within their bounds (a perturbation of x1.2 may leave them), to 4 digits."""
        clipped = dict(values)
        for name, mutation in self.mutations.items():
            if mutation["choices"]:
                continue
            clipped[name] = min(max(float(f"{values[name]:.4g}"), mutation["low"]), mutation["high"])
            if mutation["integer"]:
                clipped[name] = int(round(clipped[name]))
        return clipped


# ------------------------------------------------------------------------------------------------ the command's input
def plan_pbt(config: str, overrides: Sequence[str] = (), population: int = 4, perturb_every: int | None = None,
             runs_dir: str | Path | None = None, control: bool = False) -> PBTPlan:
    """Check the command's input and draw the population's first hyperparameters (ConfigError, one line, on
    anything wrong: before Ray starts and before anything is written)."""
    if population < 2:
        raise ConfigError(f"--population: must be >= 2 (members exploit each other), got {population}")
    base = load_config(config, overrides)
    kind = agent_class(base.agent.kind)
    mutations = kind.pbt_mutations(base)
    if not mutations:
        raise ConfigError(f"--pbt: agent.kind {base.agent.kind} declares nothing population-based training may "
                          "mutate; use a dqn or rainbow config")
    if base.ray.workers > 0:
        raise ConfigError("--pbt: each member trains in one process; leave ray.workers at 0")
    total = base.agent.total_steps
    every = perturb_every if perturb_every is not None else max(1, total // ROUNDS)
    if not 1 <= every < total:
        raise ConfigError(f"--perturb-every: must be in [1, agent.total_steps) = [1, {total}), got {every}")
    for mutation in mutations.values():
        for value in mutation.choices or (mutation.low, mutation.high):
            try:
                load_config(config, [*overrides, f"{mutation.key}={value}"])
            except ConfigError as err:
                raise ConfigError(f"--pbt: {mutation.key}={value} (a bound of its mutations): {err}") from None

    make_env(base).close()  # a bad env id or kwarg fails here, as in train(), not in every member
    kind(base, torch.device("cpu"))  # the env's action space and the replay's size
    rng = np.random.default_rng(RANDOM_SEED)
    initial = [{name: mutation.draw(rng) for name, mutation in mutations.items()} for _ in range(population)]
    root = Path(runs_dir if runs_dir is not None else base.train.runs_dir).resolve() / base.name
    return PBTPlan(config=config, base=config_to_dict(base), population=population, perturb_every=every,
                   total_steps=total, mutations={name: mutation._asdict() for name, mutation in mutations.items()},
                   initial=initial, control=control,
                   sweep_dir=str(root / f"sweep-pbt-{datetime.now().strftime('%Y%m%d-%H%M%S')}"))


# ------------------------------------------------------------------------------------------------ one member
def run_member(params: dict, plan: dict, prefix: str = "m") -> None:
    """The Tune trainable: one member's rounds. A restart from another member's Tune checkpoint is an exploit;
    from its own (a pause, a crash), the member continues its run directory's latest checkpoint. `prefix`: the
    population's member names (m: PBT, c: the control, which Tune never exploits)."""
    import torch
    from ray import tune


    torch.set_num_threads(1)  # one CPU per member
    pbt = PBTPlan(**plan)
    # The trial's name, not its config: an exploit copies the donor's whole config, "member" included.
    member = int(tune.get_context().get_trial_name().removeprefix(prefix))
    values = {name: params[name] for name in pbt.mutations}
    config = pbt.member_config(member, values, prefix)
    seed_everything(config.seed)
    agent = agent_class(config.agent.kind)(config, resolve_device(config.train.device))
    run_dir = latest_run(Path(pbt.sweep_dir) / config.name, config.seed)
    if run_dir is None:
        run, history = Run.create(config), [{"step": 0, "event": "start", "episodes": 0, "updates": 0, **values}]
    else:
        text = yaml.safe_dump(config_to_dict(config), sort_keys=False)  # the hyperparameters the member has now
        atomic_write(run_dir / "config.yaml", lambda file: file.write(text.encode()))
        run, history = Run.open(run_dir), json.loads((run_dir / HISTORY_FILE).read_text())
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            donor = json.loads((Path(folder) / MEMBER_FILE).read_text())["member"]
            if donor != member:
                payload = load_checkpoint(Path(folder) / CHECKPOINT_FILE)
                for path in checkpoint_paths(run.dir):  # its own later checkpoints would otherwise be "latest"
                    if int(path.stem.removeprefix(CHECKPOINT_PREFIX)) > payload["step"]:
                        path.unlink()
                run.save_checkpoint(payload["agent"], payload["step"])
                history.append({"step": payload["step"], "event": f"exploit {prefix}{donor}",
                                "episodes": payload["agent"]["episodes"], "updates": payload["agent"].get("updates", 0),
                                **values})
    write_history = json.dumps(history, indent=2) + "\n"
    atomic_write(run.dir / HISTORY_FILE, lambda file: file.write(write_history.encode()))
    state = run.load_latest_checkpoint()  # drops metrics.csv rows after it
    if state is not None:
        agent.load_state_dict(state)
    attempts_path = Path(tune.get_context().get_trial_dir()) / "attempts.json"
    attempts = json.loads(attempts_path.read_text())["attempts"] + 1 if attempts_path.is_file() else 1
    attempts_path.write_text(json.dumps({"attempts": attempts}))
    budget = config.agent.total_steps
    while True:
        if agent.env_steps < budget:
            agent.train(run, until=(agent.env_steps // pbt.perturb_every + 1) * pbt.perturb_every)
        finished = agent.env_steps >= budget
        if finished:
            run.close()
            run.write_summary({**agent.summary(), "wall_s": round(time.time() - run.started, 2)})
        with tempfile.TemporaryDirectory() as folder:
            state = {key: value for key, value in agent.state_dict().items() if key != "replay"}
            torch.save({"step": agent.env_steps, "agent": state}, Path(folder) / CHECKPOINT_FILE)
            (Path(folder) / MEMBER_FILE).write_text(json.dumps({"member": member, **values}))
            tune.report({METRIC: agent.mean_return(), "env_steps": agent.env_steps, "member": member,
                         "final": finished, "exploits": sum(event["event"] != "start" for event in history),
                         "attempts": attempts, "run_dir": str(run.dir),
                         "wall_s": round(time.time() - run.started, 2), **values},
                        checkpoint=tune.Checkpoint.from_directory(folder))
        if finished:
            return


# ------------------------------------------------------------------------------------------------ the population
def pbt(config: str, overrides: Sequence[str] = (), population: int = 4, perturb_every: int | None = None,
        address: str | None = None, jobs: int | None = None, control: bool = False) -> tuple[Path, list[dict]]:
    """Train a population (then, with `control`, the same population without PBT); print and write the results.
    Returns the sweep directory and one row per member."""
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs: must be >= 1, got {jobs}")
    plan = plan_pbt(config, overrides, population, perturb_every, control=control)
    if address is not None:
        check_address(address)  # before the sweep folder is made: a cluster that does not answer leaves nothing
    sweep_dir = Path(plan.sweep_dir)
    print(f"sweep: {sweep_dir}: population-based training of {plural(plan.population, 'member')}, "
          f"{plan.total_steps:,} env steps each in rounds of {plan.perturb_every:,}, {METRIC} (higher is better)"
          + (", then the control: the same members without exploit" if control else ""), flush=True)
    sweep_dir.mkdir(parents=True)
    (sweep_dir / PLAN_FILE).write_text(json.dumps(asdict(plan), indent=2) + "\n")


    rows = []
    with sigterm_as_ctrl_c(), ray_session(address, num_cpus=jobs):
        for population in ("pbt", "control") if control else ("pbt",):
            rows += result_rows(plan, run_tune(plan, jobs, population), population)
            if any(row["status"] in ("interrupted", "not run") for row in rows):
                break  # Ctrl-C during PBT: no control
    print("\n".join(aligned([{key: "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
                              for key, value in row.items() if key != "run_dir"} for row in rows])))
    write_results(plan, rows)
    if plan.control:
        print(population_summary(rows))
    if any(row["status"] in ("interrupted", "not run") for row in rows):
        print("population-based training interrupted", file=sys.stderr)
        raise KeyboardInterrupt
    return sweep_dir, rows


def run_tune(plan: PBTPlan, jobs: int | None, population: str = "pbt"):
    """Tuner.fit() of the population under Tune's PopulationBasedTraining (`population` "pbt") or of the same
    members without a scheduler ("control"); its ResultGrid."""
    import os

    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining


    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    scheduler = PopulationBasedTraining(
        time_attr="env_steps", perturbation_interval=plan.perturb_every, resample_probability=RESAMPLE_PROBABILITY,
        perturbation_factors=PERTURBATION_FACTORS, custom_explore_fn=plan.clip,
        hyperparam_mutations={name: search_space(Mutation(**mutation))
                              for name, mutation in plan.mutations.items()})

    def first(name: str):
        return tune.sample_from(lambda spec: plan.initial[spec.config.member][name])

    prefix = PREFIXES[population]

    def member_name(trial) -> str:
        return f"{prefix}{trial.config['member']}"  # called when the trial is made, before any exploit

    # Every round's Tune checkpoint is kept (no CheckpointConfig.num_to_keep): an exploit may restore a donor's
    # checkpoint from rounds ago, and Tune deleting it first fails the member. Each is one model without replay.
    trainable = tune.with_resources(tune.with_parameters(run_member, plan=asdict(plan), prefix=prefix), {"cpu": 1})
    tuner = tune.Tuner(
        trainable,
        param_space={"member": tune.grid_search(list(range(plan.population))),
                     **{name: first(name) for name in plan.mutations}},
        tune_config=tune.TuneConfig(metric=METRIC, mode="max", scheduler=scheduler if population == "pbt" else None,
                                    max_concurrent_trials=jobs, trial_name_creator=member_name,
                                    trial_dirname_creator=member_name),
        run_config=tune.RunConfig(name=TUNE_DIR if population == "pbt" else CONTROL_TUNE_DIR,
                                  storage_path=plan.sweep_dir, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
                                  callbacks=[progress_lines(str, member_name, member_completed)]),
    )
    return fit_keeping_signals(tuner)


def search_space(mutation: Mutation):
    """A mutation as Tune's PBT resamples it: its choices, or a (log-)uniform or integer range."""
    from ray import tune

    if mutation.choices:
        return list(mutation.choices)
    if mutation.integer:
        return tune.randint(int(mutation.low), int(mutation.high) + 1)
    return (tune.loguniform if mutation.log else tune.uniform)(mutation.low, mutation.high)


def member_completed(trial) -> str:
    """The end line of a member: its metric and exploits."""
    result = trial.last_result
    return f"done, {METRIC} {result.get(METRIC, math.nan):.4g}, {plural(result.get('exploits', 0), 'exploit')}"

def result_rows(plan: PBTPlan, results, population: str = "pbt") -> list[dict]:
    """One row per member of `population` (pbt, control): its final return and hyperparameters, exploits, status
    and run directory."""
    by_member = {}
    for result in results:
        if result.metrics and "member" in result.metrics:
            by_member[result.metrics["member"]] = result
    rows = []
    for member in range(plan.population):
        result = by_member.get(member)
        metrics = result.metrics if result is not None else {}
        if result is not None and result.error is not None:
            status = "error: " + str(result.error).strip().splitlines()[-1]
        else:
            status = "done" if metrics.get("final") else "interrupted" if metrics else "not run"
        rows.append({"population": population, "member": f"{PREFIXES[population]}{member}",
                     METRIC: metrics.get(METRIC), "status": status,
                     **{name: metrics.get(name) for name in plan.mutations}, "exploits": metrics.get("exploits"),
                     "env_steps": metrics.get("env_steps"), "wall_s": metrics.get("wall_s"),
                     "run_dir": metrics.get("run_dir")})
    return rows


def write_results(plan: PBTPlan, rows: Sequence[dict]) -> None:
    """results.csv, history.csv and curves.png in the sweep directory."""

    sweep_dir = Path(plan.sweep_dir)
    history = []
    for row in rows:
        path = Path(row["run_dir"]) / HISTORY_FILE if row["run_dir"] else None
        if path is not None and path.is_file():
            history += [{"member": row["member"], **event} for event in json.loads(path.read_text())]
    for name, table in ((RESULTS_FILE, rows), (HISTORY_CSV, history)):
        if table:
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
            atomic_write(sweep_dir / name, lambda file, text=text: file.write(text.getvalue().encode()))
    runs = [Path(row["run_dir"]) for row in rows if row["run_dir"] and (Path(row["run_dir"]) / "metrics.csv").is_file()]
    if runs:
        try:
            plot_runs(runs, out=sweep_dir / CURVES_PLOT)
        except (ConfigError, ValueError, IndexError) as err:  # runs with nothing to draw: the table still stands
            print(f"{CURVES_PLOT}: not drawn ({err})", file=sys.stderr)
    compared = plan.control and runs and compare_populations(rows, sweep_dir / COMPARE_PLOT)
    print(f"wrote: {sweep_dir / RESULTS_FILE}, {HISTORY_CSV}, {CURVES_PLOT if runs else '(no curves)'}"
          + (f", {COMPARE_PLOT}" if compared else ""))


def population_summary(rows: Sequence[dict]) -> str:
    """One line per population: its best member's final return and the members' mean ± std."""
    lines = []
    for population in PREFIXES:
        finals = [(row[METRIC], row["member"]) for row in rows
                  if row["population"] == population and row[METRIC] is not None]
        if finals:
            values = np.array([value for value, _ in finals])
            best, member = max(finals)
            lines.append(f"{population}: best {member} {best:.3g}, mean {values.mean():.3g} ± {values.std():.2g} "
                         f"over {plural(len(finals), 'member')}")
    return "\n".join(lines)


def compare_populations(rows: Sequence[dict], out: Path) -> bool:
    """pbt_vs_control.png: each population's members' return against env steps (thin; x where a member
    exploited) and, on the steps all its members reached, the best member's (thick). False if not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    figure, axis = plt.subplots(figsize=(8, 4.5))
    drawn = False
    for colour, population in zip(("C0", "C1"), PREFIXES, strict=True):
        curves = []
        for row in rows:
            if row["population"] != population or not row["run_dir"]:
                continue
            run_dir = Path(row["run_dir"])
            try:
                curve = load_curve(run_dir, None)
            except (ConfigError, OSError, ValueError):  # a member that never logged
                continue
            if len(curve.step) == 0:
                continue
            curves.append(curve)
            axis.plot(curve.step, curve.value, color=colour, linewidth=0.8, alpha=0.45)
            history = run_dir / HISTORY_FILE
            events = json.loads(history.read_text()) if history.is_file() else []
            exploits = [event["step"] for event in events if event["event"].startswith("exploit")]
            if exploits:
                axis.plot(exploits, np.interp(exploits, curve.step, curve.value), "x", color=colour, markersize=5)
        if not curves:
            continue
        grid, values = on_common_grid([curve.step for curve in curves], [curve.value for curve in curves])
        best = values.max(axis=0)
        axis.plot(grid, best, color=colour, linewidth=2.2,
                  label=f"{'PBT' if population == 'pbt' else 'no PBT (same first draws)'}: best of {len(curves)}")
        drawn = True
    if not drawn:
        plt.close(figure)
        return False
    axis.set_xlabel("env steps (each member)")
    axis.set_ylabel(f"{curves[0].key} (mean of the last episodes)")
    axis.set_title(population_summary(rows).replace("\n", "   "), fontsize=8)
    axis.legend(loc="upper left")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    atomic_write(out, lambda file: figure.savefig(file, format="png", dpi=110))
    plt.close(figure)
    return True
