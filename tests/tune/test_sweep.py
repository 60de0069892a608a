"""`pixelpilot sweep` on a 2-CPU embedded Ray: trials, the results, retries of crashed trials, resuming, bad input."""

from __future__ import annotations

import csv
import importlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

from agents.cli import EXIT_BAD_INPUT, main
from agents.tune import tasks as ray_tasks
from agents.tune.sweep import RESULTS_FILE, make_scheduler, plan_sweep, read_plan, result_rows, sweep, trial_metric

RANDOM = ["random_pendulum", "env.num_envs=1", "train.log_every=100"]  # 100-step episodes, a return per 100 steps


def read_results(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / RESULTS_FILE, newline="") as file:
        return list(csv.DictReader(file))


def run_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(path.parent for path in sweep_dir.glob("c*/*/config.yaml"))


def wait_for(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while not (found := condition()):
        assert time.time() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.2)
    return found


@pytest.mark.parametrize("args, named", [
    (["--grid", "agent.totl_steps=300,400"], "--grid agent.totl_steps=300,400"),
    (["--grid", "agent.total_steps=300,lots"], "--grid agent.total_steps=300,lots"),
    (["--grid", "agent.total_steps"], "--grid agent.total_steps"),
    (["--random", "agent.total_steps=300-400"], "--random agent.total_steps=300-400"),
    (["--random", "agent.total_steps=400:300"], "--random agent.total_steps=400:300"),
    (["--grid", "agent.total_steps=300,400", "--samples", "3"], "--samples 3"),
    (["--seeds", "0"], "--seeds"),
    (["--grid", "seed=1,2"], "--grid seed=1,2"),
])
def test_bad_input_exits_2_with_one_line_naming_it_before_ray_starts(args, named, tmp_path, capsys, monkeypatch):

    monkeypatch.setattr(ray_tasks, "start_ray", lambda *a, **k: pytest.fail("Ray started on bad input"))
    code = main(["sweep", *RANDOM, f"train.runs_dir={tmp_path}", *args])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"pixelpilot: error: {named}")
    assert not list(tmp_path.iterdir())


def test_a_cluster_that_does_not_answer_is_one_line_exit_2_and_writes_no_sweep_folder(tmp_path, capsys):
    code = main(["sweep", *RANDOM, f"train.runs_dir={tmp_path}", "--address", "127.0.0.1:1"])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == EXIT_BAD_INPUT
    assert len(err) == 1 and err[0].startswith("pixelpilot: error: --address 127.0.0.1:1: no Ray cluster answers")
    assert not list(tmp_path.iterdir()) and "sweep:" not in captured.out


def test_the_metric_is_trials_to_success_for_ddm_and_the_mean_return_with_asha_for_dqn():
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler


    ddm = plan_sweep("ddm_pendulum_tiny", ["agent.trials=4"], grid=["agent.cem.iterations=1,2"], seeds=2)
    config = ddm.trial_config(1, seed=1)
    assert (ddm.metric, ddm.mode, len(ddm.configurations)) == ("trials_to_success", "min", 2)
    assert config.seed == 1 and config.agent.cem.iterations == 2 and config.name == "c1_agent.cem.iterations=2"
    assert trial_metric(ddm, {"trials_to_success": 3, "mean_return": -300.0}) == 3  # the class's key, not another
    assert isinstance(make_scheduler(ddm), FIFOScheduler)
    dqn = plan_sweep("dqn_pendulum", ["agent.total_steps=9000"], grid=["agent.total_steps=900,1800"],
                     random=["agent.lr=1e-4:1e-3:log", "agent.batch_size=8:64"], samples=3)
    assert (dqn.metric, dqn.mode, dqn.max_steps, len(dqn.configurations)) == ("mean_return", "max", 1800, 6)
    draws = {tuple(configuration[1:]) for configuration in dqn.configurations}
    assert len(draws) == 3  # each grid value is tried with the same 3 draws
    assert all(8 <= dqn.trial_config(index, 0).agent.batch_size <= 64 for index in range(6))
    scheduler = make_scheduler(dqn)
    assert isinstance(scheduler, ASHAScheduler) and scheduler._time_attr == "env_steps"


def test_each_trial_is_done_stopped_early_failed_interrupted_or_not_run():
    from types import SimpleNamespace


    plan = plan_sweep("random_pendulum", grid=["agent.total_steps=300,400"], seeds=3, runs_dir="/tmp/runs")

    def result(configuration, seed, error=None, **metrics):
        return SimpleNamespace(config={"configuration": configuration, "seed": seed}, error=error,
                               metrics={"config": {"configuration": configuration, "seed": seed}, **metrics})

    results = [result(0, 0, final=True, done=True, mean_return=-800.0, attempts=1),
               result(0, 1, final=False, done=True, mean_return=-900.0, attempts=1),  # ASHA stopped it
               result(0, 2, error=RuntimeError("Traceback ...\nValueError: boom"), mean_return=-950.0, attempts=3),
               result(1, 0, final=False, mean_return=-850.0, attempts=1),  # running when the sweep stopped
               SimpleNamespace(config=None, error=None, metrics={})]  # never started
    rows = result_rows(plan, results)
    assert [(row.configuration, row.seed, row.status) for row in rows] == [
        (0, 0, "done"), (0, 1, "stopped early"), (0, 2, "error"), (1, 0, "interrupted"), (1, 1, "not run"),
        (1, 2, "not run")]
    assert rows[2].error == "ValueError: boom" and rows[4].value is None


def test_a_2x2_grid_trains_4_trials_and_writes_the_table_csv_and_plots(local_ray, tmp_path, capsys):
    code = main(["sweep", *RANDOM, f"train.runs_dir={tmp_path}", "--grid", "agent.total_steps=300,400",
                 "--grid", "train.checkpoint_every=100,200"])
    out = capsys.readouterr().out
    assert code == 0
    sweep_dir = Path(out.strip().splitlines()[-1].removeprefix("sweep: "))
    assert sweep_dir.parent == tmp_path / "random_pendulum" and sweep_dir.name.startswith("sweep-")
    rows = read_results(sweep_dir)
    assert [(row["agent.total_steps"], row["train.checkpoint_every"]) for row in rows] == [
        ("300", "100"), ("300", "200"), ("400", "100"), ("400", "200")]
    for row in rows:
        run_dir = Path(row["run_dir"])
        summary = json.loads((run_dir / "summary.json").read_text())
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert row["status"] == "done" and row["attempts"] == "1" and float(row["wall_s"]) > 0
        assert float(row["mean_return"]) == pytest.approx(summary["mean_return"])
        assert summary["env_steps"] == config["agent"]["total_steps"] == int(row["agent.total_steps"])
        assert run_dir.parent.parent == sweep_dir and config["name"] == run_dir.parent.name
    for line in ("configuration  agent.total_steps  train.checkpoint_every  seed  mean_return",
                 "c3 agent.total_steps=400 train.checkpoint_every=200: mean_return"):
        assert line in out
    for plot in ("metric.png", "curves.png"):
        assert (sweep_dir / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_ddm_sweep_reports_trials_to_success(local_ray, tmp_path):
    sweep_dir, rows = sweep("ddm_pendulum_tiny", ["agent.trials=2", f"train.runs_dir={tmp_path}"])
    summary = json.loads((Path(rows[0].run_dir) / "summary.json").read_text())
    assert [row.status for row in rows] == ["done"] and summary["episodes"] == 2
    assert rows[0].value == (summary["success_trial"] or 3)  # unsolved in 2 trials counts as 3
    assert read_results(sweep_dir)[0]["trials_to_success"] == str(rows[0].value)


def test_a_trial_whose_worker_dies_is_retried_and_continues_its_run(local_ray, tmp_path):
    import ray  # noqa: F401

    psutil = importlib.import_module("psutil")  # the copy ray ships, on sys.path once ray is imported
    killed = []

    def kill_the_trial_after_its_first_checkpoint() -> None:
        wait_for(lambda: list(tmp_path.glob("random_pendulum/sweep-*/c0*/*/checkpoints/step_*.pt")), 60,
                 "checkpoint")
        for process in psutil.Process().children(recursive=True):
            if "ImplicitFunc" in " ".join(process.cmdline()):  # the Tune trainable's actor
                process.kill()
                killed.append(process.pid)

    killer = threading.Thread(target=kill_the_trial_after_its_first_checkpoint, daemon=True)
    killer.start()
    sweep_dir, rows = sweep("random_pendulum", ["agent.total_steps=100000", "train.checkpoint_every=5000",
                                                "train.log_every=5000", f"train.runs_dir={tmp_path}"])
    killer.join(timeout=5)
    assert killed
    assert [(row.status, row.attempts) for row in rows] == [("done", 2)]
    assert run_dirs(sweep_dir) == [Path(rows[0].run_dir)]  # the retry continued the run, no second one
    summary = json.loads((Path(rows[0].run_dir) / "summary.json").read_text())
    assert summary["env_steps"] == 100000


def test_an_interrupted_sweep_resumes_and_runs_only_its_missing_trials(local_ray, tmp_path):
    interrupts = []
    previous = signal.signal(signal.SIGINT, lambda *_: interrupts.append("late"))  # a stray Ctrl-C stays harmless
    try:
        def ctrl_c_after_the_first_trial() -> None:
            # One trial at a time (jobs=1): the second run directory means Tune has recorded the first as done.
            wait_for(lambda: len(list(tmp_path.glob("random_pendulum/sweep-*/c*/*/"))) >= 2, 60, "second trial")
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=ctrl_c_after_the_first_trial, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            sweep(RANDOM[0], [*RANDOM[1:], f"train.runs_dir={tmp_path}"], grid=["agent.total_steps=2000,3000"],
                  seeds=2, jobs=1)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not interrupts
    sweep_dir = next(tmp_path.glob("random_pendulum/sweep-*"))
    # A trial that was just writing its summary when Ctrl-C came may not be done in Tune's eyes: it runs again.
    done = {row["run_dir"] for row in read_results(sweep_dir) if row["status"] == "done"}
    finished = {path: path.stat().st_mtime_ns for path in sweep_dir.glob("c*/*/summary.json")
                if str(path.parent) in done}
    assert 1 <= len(finished) == len(done) < 4

    _, rows = sweep(resume=sweep_dir)
    assert [row.status for row in rows] == ["done"] * 4
    assert len(run_dirs(sweep_dir)) == 4
    assert {path: path.stat().st_mtime_ns for path in finished} == finished  # the finished trials did not run again
    done_before = {str(path.parent) for path in finished}
    assert all(row.attempts == 1 for row in rows if row.run_dir in done_before)
    assert read_plan(sweep_dir).seeds == 2
