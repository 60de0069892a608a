"""``pixelpilot plot RUN_DIR ...``: learning curves from metrics.csv, written as one PNG.

    pixelpilot plot runs/random_pendulum/20250101-120000-seed0          one run -> RUN_DIR/curves.png
    pixelpilot plot runs/ddm_pendulum runs/random_pendulum --out cmp.png  every seed of two configs
    pixelpilot plot runs/dqn_pendulum/sweep-20261126-180000             a sweep's configurations

Each argument is a run directory or a folder holding runs at any depth (``runs/<name>``, a sweep
folder, ``runs``). Runs are grouped by the ``name`` in their config.yaml; a group of several seeds is
drawn as the mean with a band of one standard deviation, over the steps all its seeds reached. The
panels: the return against env steps and against wall time, and, when runs log ``trial/return`` (the
DDM agent: one row per trial, step = frames so far), the return per trial with a star where at least
half the seeds succeeded (``trial/success``).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from agents.core.config import ConfigError
from agents.core.run import RunDirError, atomic_write, load_run_config

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_KEYS = ("rollout/ep_return", "trial/return")  # the first one a run logs is plotted by default
TRIAL_RETURN = "trial/return"
TRIAL_SUCCESS = "trial/success"
# Columns in words, for axis labels ("episode return (rollout/ep_return)"); others get their last part's words.
KEY_NAMES = {
    "rollout/ep_return": "episode return",
    "rollout/success": "success rate",
    "rollout/episodes": "episodes ended",
    "rollout/epsilon": "exploration epsilon",
    "eval/return": "evaluation return",
    "eval/success": "evaluation success rate",
    "trial/return": "return per trial",
    "time/fps": "env steps per second",
}
GRID_POINTS = 200  # seeds are interpolated onto this many common x values before averaging
SHOW_POINTS = 30  # curves with fewer points than this get a marker on each


@dataclass
class Curve:
    """One run's metric: the rows of metrics.csv where it has a value."""

    name: str  # the config name (seeds of one config share it)
    key: str  # the metrics.csv column plotted
    step: np.ndarray  # (N,) env steps
    wall_s: np.ndarray  # (N,) seconds since the run (or its last resume) started
    value: np.ndarray  # (N,)


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories named by ``paths``: each a run directory, or a folder holding runs at any depth
    (``runs/<name>``, a sweep's ``runs/<name>/sweep-<stamp>``, ``runs`` itself).

    Runs in a folder that have not logged yet (no metrics.csv) are left out; a run named directly is not.
    """
    runs: list[Path] = []
    for path in map(Path, paths):
        if (path / "config.yaml").is_file():
            runs.append(path)
            continue
        beneath = runs_beneath(path)
        if not beneath:
            load_run_config(path)  # raises the RunDirError that says what is wrong with it
        logged = [run for run in beneath if (run / "metrics.csv").is_file()]
        if not logged:
            raise RunDirError(f"{path}: none of its {len(beneath)} runs has logged metrics yet")
        runs.extend(logged)
    return runs


def runs_beneath(folder: Path) -> list[Path]:
    """The run directories (those with a config.yaml) anywhere under ``folder``, in name order; a run's own
    folders (checkpoints/, episodes/, tb/) are not searched."""
    runs: list[Path] = []
    for child in sorted(path for path in folder.glob("*/") if path.is_dir()):
        runs.extend([child] if (child / "config.yaml").is_file() else runs_beneath(child))
    return runs


def read_metrics(run_dir: Path) -> dict[str, np.ndarray]:
    """metrics.csv as columns of floats (NaN where a row has no value for a key)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        raise RunDirError(f"{run_dir}: no metrics.csv yet (the run has not logged anything)")
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    if not rows:
        raise RunDirError(f"{path}: no rows yet")
    return {key: np.array([float(row[key]) if row.get(key) else np.nan for row in rows]) for key in rows[0]}


def load_curve(run_dir: Path, key: str | None) -> Curve:
    """``key`` (default: the first of :data:`DEFAULT_KEYS` the run logs) against step and wall time."""
    metrics = read_metrics(run_dir)
    if key is None:
        key = next((name for name in DEFAULT_KEYS if name in metrics), None)
        if key is None:
            raise ConfigError(f"{run_dir}/metrics.csv: none of {', '.join(DEFAULT_KEYS)}; "
                              f"name one with --key (has: {', '.join(list(metrics)[2:])})")
    elif key not in metrics:
        raise ConfigError(f"--key {key}: not in {run_dir}/metrics.csv (has: {', '.join(list(metrics)[2:])})")
    keep = ~np.isnan(metrics[key])
    name = load_run_config(run_dir).name
    return Curve(name, key, metrics["step"][keep], metrics["wall_s"][keep], metrics[key][keep])


def axis_label(key: str) -> str:
    """A metrics.csv column as an axis names it: in words, then the key (``episode return (rollout/ep_return)``)."""
    return f"{KEY_NAMES.get(key, key.rsplit('/', 1)[-1].replace('_', ' '))} ({key})"


def mean_and_spread(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Seeds' curves on a common grid: (x, mean, std), each (GRID_POINTS,) or the one curve as it is.

    The grid spans only the x range every seed covers, so the mean never mixes in a seed's extrapolation.
    """
    if len(xs) == 1:
        return xs[0], ys[0], np.zeros_like(ys[0])
    grid, values = on_common_grid(xs, ys)
    return grid, values.mean(axis=0), values.std(axis=0)


def on_common_grid(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Curves interpolated onto GRID_POINTS x values spanning only the range every curve covers: (grid, values
    (curves, GRID_POINTS)), or a single point where the ranges only touch."""
    low = max(x[0] for x in xs)
    high = min(x[-1] for x in xs)
    grid = np.linspace(low, high, GRID_POINTS) if high > low else np.array([low])
    return grid, np.stack([np.interp(grid, x, y) for x, y in zip(xs, ys, strict=True)])


def trial_curve(run_dir: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """A trial agent's per-trial (return, success) rows, each (trials,); None if the run logs no trials."""
    metrics = read_metrics(run_dir)
    if TRIAL_RETURN not in metrics:
        return None
    keep = ~np.isnan(metrics[TRIAL_RETURN])
    success = metrics.get(TRIAL_SUCCESS, np.zeros(len(keep)))[keep]
    return metrics[TRIAL_RETURN][keep], np.nan_to_num(success)


def plot_runs(paths: Sequence[str | Path], out: str | Path | None = None, key: str | None = None) -> Path:
    """Draw the learning curves of the runs under ``paths`` into a PNG; returns its path.

    Default ``out``: ``curves.png`` in the run directory when there is one run, else
    ``learning_curves.png`` in the current directory.
    """
    runs = find_runs(paths)
    figure = curves_figure(runs, key)
    import matplotlib.pyplot as plt  # after curves_figure chose the Agg backend

    target = Path(out) if out is not None else (runs[0] / "curves.png" if len(runs) == 1
                                                 else Path("learning_curves.png"))
    atomic_write(target, lambda file: figure.savefig(file, format="png", dpi=100))
    plt.close(figure)
    return target


def curves_figure(runs: Sequence[Path], key: str | None = None) -> Figure:
    """The figure :func:`plot_runs` saves, for run directories ``runs`` (close it with ``plt.close``).

    A config whose seeds have no value of the key yet (no episode ended) is named in the legend, undrawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    curves = [load_curve(run, key) for run in runs]
    trials = {run: trial_curve(run) for run in runs}
    groups: dict[str, list[int]] = {}
    for index, curve in enumerate(curves):
        groups.setdefault(curve.name, []).append(index)
    has_trials = any(value is not None for value in trials.values())
    keys = {curve.key for curve in curves}
    label = axis_label(keys.pop()) if len(keys) == 1 else f"return ({', '.join(sorted(keys))})"
    figure, axes = plt.subplots(1, 3 if has_trials else 2, figsize=(15 if has_trials else 10, 4), squeeze=False)
    axes = axes[0]
    for colour_index, (name, members) in enumerate(groups.items()):
        colour = f"C{colour_index % 10}"
        valued = [index for index in members if len(curves[index].value)]
        seeds = f" ({len(valued)} seeds, mean ± std)" if len(valued) > 1 else ""
        for axis, x_name in zip(axes[:2], ("step", "wall_s"), strict=True):
            if not valued:
                axis.plot([], [], color=colour, label=f"{name} (no {curves[members[0]].key} yet)")
                continue
            x, mean, std = mean_and_spread([getattr(curves[i], x_name) for i in valued],
                                           [curves[i].value for i in valued])
            axis.plot(x, mean, color=colour, label=name + seeds, marker="." if len(x) < SHOW_POINTS else None)
            if len(valued) > 1:
                axis.fill_between(x, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
        trial_rows = [trials[runs[i]] for i in members if trials[runs[i]] is not None and len(trials[runs[i]][0])]
        if trial_rows:
            seeds = f" ({len(trial_rows)} seeds, mean ± std)" if len(trial_rows) > 1 else ""
            count = min(len(returns) for returns, _ in trial_rows)
            returns = np.stack([returns[:count] for returns, _ in trial_rows])
            success = np.stack([success[:count] for _, success in trial_rows]).mean(axis=0)
            number = np.arange(1, count + 1)
            axes[2].plot(number, returns.mean(axis=0), color=colour, marker=".", label=name + seeds)
            if len(trial_rows) > 1:
                axes[2].fill_between(number, returns.mean(axis=0) - returns.std(axis=0),
                                     returns.mean(axis=0) + returns.std(axis=0), color=colour, alpha=0.2, linewidth=0)
            solved = success >= 0.5
            axes[2].scatter(number[solved], returns.mean(axis=0)[solved], color=colour, marker="*", s=80, zorder=3,
                            label=f"{name}: success" if solved.any() else None)
    axes[0].set_xlabel("env steps")
    axes[1].set_xlabel("wall time (s)")
    for axis in axes[:2]:
        axis.set_ylabel(label)
    if has_trials:
        axes[2].set_xlabel("trial")
        axes[2].xaxis.set_major_locator(MaxNLocator(integer=True))  # trial 1, 2, 3: no trial 1.5
        axes[2].set_ylabel(axis_label(TRIAL_RETURN))
        axes[2].set_title("return per trial (* = success)")
    for axis in axes:
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize="small")
    figure.tight_layout()
    return figure
