"""Learning curves: seeds grouped by config name, per-trial panel for trial agents, bad input -> exit 2."""

import csv
from pathlib import Path

import imageio.v3 as iio
import matplotlib.pyplot as plt
import numpy as np
import pytest
import yaml

from agents.cli import main
from agents.core.config import config_to_dict, load_config
from agents.ui import plot
from agents.ui.plot import find_runs, load_curve, mean_and_spread, plot_runs


def make_run(root: Path, name: str, seed: int, rows: list[dict]) -> Path:
    """A run directory with config.yaml (name, seed) and metrics.csv holding ``rows``."""
    run_dir = root / name / f"20250101-000000-seed{seed}"
    run_dir.mkdir(parents=True)
    config = load_config("configs/random_pendulum.yaml", [f"name={name}", f"seed={seed}"])
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    columns = ["step", "wall_s", *{key: None for row in rows for key in row if key not in ("step", "wall_s")}]
    with open(run_dir / "metrics.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return run_dir


def returns_rows(offset: float, count: int = 10) -> list[dict]:
    return [{"step": 100 * (i + 1), "wall_s": 0.5 * (i + 1), "rollout/ep_return": offset + i} for i in range(count)]


def trial_rows(successes: list[int]) -> list[dict]:
    """A DDM-like run: one row per 100-frame trial, the first without a trial return (a plain log row)."""
    rows = [{"step": 50, "wall_s": 0.1, "train/loss": 1.0}]
    for trial, success in enumerate(successes):
        rows.append({"step": 100 * (trial + 1), "wall_s": trial + 1.0, "trial/return": -300.0 + 50 * trial,
                     "trial/success": success})
    return rows


def test_seeds_average_over_the_steps_all_of_them_reached():
    xs = [np.array([0.0, 10.0]), np.array([0.0, 5.0, 20.0])]
    ys = [np.array([0.0, 10.0]), np.array([2.0, 7.0, 22.0])]
    x, mean, std = mean_and_spread(xs, ys)
    assert x[0] == 0.0 and x[-1] == 10.0  # not past the shorter seed
    assert mean[0] == pytest.approx(1.0) and std[0] == pytest.approx(1.0)
    assert mean[-1] == pytest.approx((10.0 + 12.0) / 2)
    one_x, one_mean, one_std = mean_and_spread(xs[:1], ys[:1])
    assert np.array_equal(one_mean, ys[0]) and not one_std.any()


def test_plot_groups_seeds_by_config_name_and_writes_png(tmp_path):
    for seed, offset in enumerate([-900.0, -700.0]):
        make_run(tmp_path, "alpha", seed, returns_rows(offset))
    beta = make_run(tmp_path, "beta", 0, returns_rows(-500.0))
    (tmp_path / "beta" / "20250102-000000-seed1").mkdir()  # a run that has not logged yet is left out
    (tmp_path / "beta" / "20250102-000000-seed1" / "config.yaml").write_text((beta / "config.yaml").read_text())
    runs = find_runs([tmp_path / "alpha", tmp_path / "beta"])
    assert [load_curve(run, None).name for run in runs] == ["alpha", "alpha", "beta"]
    out = plot_runs([tmp_path / "alpha", tmp_path / "beta"], out=tmp_path / "plots" / "curves.png")
    image = iio.imread(out)
    assert image.shape[:2] == (400, 1000)  # two panels: against env steps and against wall time
    assert not list((tmp_path / "plots").glob(".*"))  # written through a temporary name


def test_trial_agents_get_a_per_trial_panel(tmp_path, capsys):
    run_dir = make_run(tmp_path, "ddm", 0, trial_rows([0, 0, 1, 1]))
    curve = load_curve(run_dir, None)
    assert curve.key == "trial/return" and list(curve.step) == [100, 200, 300, 400]
    assert main(["plot", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote: {run_dir / 'curves.png'}"
    assert iio.imread(run_dir / "curves.png").shape[:2] == (400, 1500)  # a third panel: return per trial


def test_a_folder_of_runs_and_a_sweep_folder_plot_every_run_beneath(tmp_path, capsys):
    folder = tmp_path / "random_pendulum"
    for seed in (0, 1):
        make_run(tmp_path, "random_pendulum", seed, returns_rows(-900.0 + 100 * seed))
    sweep_dir = folder / "sweep-20250101-000000"  # as agents/tune/sweep.py lays it out
    for label, seeds in [("c0_agent.total_steps=500", (0, 1)), ("c1_agent.total_steps=1000", (0,))]:
        for seed in seeds:
            make_run(sweep_dir, label, seed, returns_rows(-500.0 + 10 * seed))
    (sweep_dir / "tune" / "c0-seed0").mkdir(parents=True)  # Ray Tune's trial folders are no runs
    (sweep_dir / "sweep.json").write_text("{}")
    names = lambda runs: [load_curve(run, None).name for run in runs]  # noqa: E731
    assert names(find_runs([sweep_dir])) == ["c0_agent.total_steps=500"] * 2 + ["c1_agent.total_steps=1000"]
    assert names(find_runs([folder])) == ["random_pendulum"] * 2 + names(find_runs([sweep_dir]))
    assert names(find_runs([tmp_path])) == names(find_runs([folder]))  # runs/ itself: every run beneath
    for path in (folder, sweep_dir):
        capsys.readouterr()
        assert main(["plot", str(path), "--out", str(tmp_path / f"{path.name}.png")]) == 0
        assert iio.imread(tmp_path / f"{path.name}.png").shape[:2] == (400, 1000)


def test_runs_without_any_value_yet_are_named_in_the_legend_not_an_error(tmp_path):
    # Two seeds of a finished 200-step run: a row each, but no episode had ended (its return is NaN).
    for seed in (0, 1):
        make_run(tmp_path, "short", seed, [{"step": 200, "wall_s": 0.1, "rollout/ep_return": "nan"}])
    assert main(["plot", str(tmp_path / "short"), "--out", str(tmp_path / "short.png")]) == 0
    make_run(tmp_path, "long", 0, returns_rows(-500.0))
    figure = plot.curves_figure(find_runs([tmp_path]))
    labels = figure.axes[0].get_legend_handles_labels()[1]
    plt.close(figure)
    assert labels == ["long", "short (no rollout/ep_return yet)"]


def test_a_finished_run_shorter_than_log_every_ends_on_a_metrics_row_and_plots(tmp_path, capsys):
    # random_pendulum logs every 1000 env steps: before its end, a 200-step run never reached a log point
    assert main(["train", "random_pendulum", f"train.runs_dir={tmp_path}", "agent.total_steps=200"]) == 0
    run_dir = next((tmp_path / "random_pendulum").iterdir())
    with open(run_dir / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["step"] for row in rows] == ["200"] and "rollout/ep_return" in rows[0]
    capsys.readouterr()
    assert main(["plot", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote: {run_dir / 'curves.png'}"
    assert iio.imread(run_dir / "curves.png").shape[:2] == (400, 1000)


def test_axes_name_the_metric_in_words_and_count_trials_in_whole_numbers(tmp_path):
    returns = make_run(tmp_path, "alpha", 0, returns_rows(0.0))
    trials = make_run(tmp_path, "ddm", 0, trial_rows([0, 0, 1, 1]))
    figure = plot.curves_figure([returns])
    assert [axis.get_ylabel() for axis in figure.axes] == ["episode return (rollout/ep_return)"] * 2
    plt.close(figure)
    figure = plot.curves_figure([trials])
    by_step, by_time, by_trial = figure.axes
    assert by_step.get_ylabel() == by_trial.get_ylabel() == "return per trial (trial/return)"
    figure.canvas.draw()
    low, high = by_trial.get_xlim()
    ticks = [tick for tick in by_trial.get_xticks() if low <= tick <= high]
    plt.close(figure)
    assert len(ticks) >= 2 and all(tick == round(tick) for tick in ticks), ticks  # trial 1, 2, 3: never 1.5
    assert plot.axis_label("train/loss") == "loss (train/loss)"  # keys without a name of their own


@pytest.mark.parametrize("case", ["not_a_run", "no_metrics", "unknown_key"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case):
    run_dir = make_run(tmp_path, "alpha", 0, returns_rows(0.0))
    args = ["plot", str(run_dir)]
    if case == "not_a_run":
        args = ["plot", str(tmp_path / "nowhere")]
    elif case == "no_metrics":
        (run_dir / "metrics.csv").unlink()
    else:
        args += ["--key", "train/loss"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pixelpilot: error: ")
    assert {"not_a_run": "no such run directory", "no_metrics": "no metrics.csv",
            "unknown_key": "--key train/loss: not in"}[case] in err[0]
