"""`pixelpilot sweep --pbt`: population-based training of DQN on test_dqn.py's DotEnv, on a 2-CPU embedded Ray.

The members make the env by the id "test_dqn:test/Dot-v0" (Gymnasium imports the module first), so Ray's worker
processes get tests/dqn/ on their PYTHONPATH, as in test_distributed.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from agents.cli import EXIT_BAD_INPUT, main
from agents.tune import tasks as ray_tasks
from agents.tune.pbt import COMPARE_PLOT, HISTORY_CSV, plan_pbt
from agents.tune.sweep import RESULTS_FILE

ROOT = Path(__file__).resolve().parents[2]
DOT = "test_dqn:test/Dot-v0"
BUDGET, ROUND = 500, 50


def dot_recipe(tmp_path: Path) -> Path:
    """test_dqn.py's DotEnv settings, shrunk, as a recipe file; checkpoints only at the rounds' ends."""
    recipe = tmp_path / "dqn_dot.yaml"
    recipe.write_text(
        f"base: {ROOT / 'configs' / 'dqn_minatar_breakout.yaml'}\nname: dqn_dot\n"
        f"env: {{id: '{DOT}'}}\n"
        f"agent: {{total_steps: {BUDGET}, learning_starts: 100, epsilon_decay_steps: 400, epsilon_end: 0.05,\n"
        "  target_update_every: 100, lr: 0.001, gamma: 0.8, replay: {capacity: 2000},\n"
        "  encoder: {kind: minatar_encoder, features_dim: 32}}\n"
        f"train: {{device: cpu, log_every: {ROUND}, checkpoint_every: 100000, runs_dir: '{tmp_path}'}}\n")
    return recipe


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


@pytest.mark.parametrize("recipe, args, named", [
    (None, ["--population", "1"], "--population"),
    (None, ["--perturb-every", str(BUDGET)], "--perturb-every"),
    (None, ["--grid", "agent.lr=1e-3,1e-4"], "sweep --pbt"),
    ("random_pendulum", ["--population", "2"], "--pbt: agent.kind random"),
])
def test_bad_input_exits_2_with_one_line_before_ray_starts(recipe, args, named, tmp_path, capsys, monkeypatch):

    monkeypatch.setattr(ray_tasks, "start_ray", lambda *a, **k: pytest.fail("Ray started on bad input"))
    config = recipe or str(dot_recipe(tmp_path))
    code = main(["sweep", config, f"train.runs_dir={tmp_path}", "--pbt", *args])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"pixelpilot: error: {named}"), err
    assert not list(tmp_path.glob("*/"))  # no sweep directory


def test_a_cluster_that_does_not_answer_is_one_line_exit_2_and_writes_no_sweep_folder(tmp_path, capsys):
    code = main(["sweep", str(dot_recipe(tmp_path)), "--pbt", "--address", "127.0.0.1:1"])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == EXIT_BAD_INPUT
    assert len(err) == 1 and err[0].startswith("pixelpilot: error: --address 127.0.0.1:1: no Ray cluster answers")
    assert not list(tmp_path.glob("*/")) and "sweep:" not in captured.out


def test_control_without_pbt_exits_2(tmp_path, capsys):
    assert main(["sweep", str(dot_recipe(tmp_path)), "--control"]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.startswith("pixelpilot: error: --population, --perturb-every and --control")


def test_the_first_draws_and_the_bounds_come_from_the_config(tmp_path):
    plan = plan_pbt(str(dot_recipe(tmp_path)), population=3, perturb_every=ROUND)
    bounds = {name: [mutation["low"], mutation["high"]] for name, mutation in plan.mutations.items()}
    assert bounds["lr"] == pytest.approx([1e-4, 1e-2]) and bounds["epsilon_decay_steps"] == [100, 1600]
    assert len(plan.initial) == 3 and len({member["lr"] for member in plan.initial}) == 3
    clipped = plan.clip({"lr": 1.0, "epsilon_end": 0.0, "epsilon_decay_steps": 1e6, "n_step": 3})
    assert clipped == {"lr": 1e-2, "epsilon_end": 0.01, "epsilon_decay_steps": 1600, "n_step": 3}


def test_a_population_of_2_trains_to_the_end_and_a_member_continues_from_the_better_ones_checkpoint(
        workers_import_tests, local_ray, tmp_path, capsys):
    code = main(["sweep", str(dot_recipe(tmp_path)), "--pbt", "--population", "2", "--perturb-every", str(ROUND),
                 "--control"])
    out = capsys.readouterr().out
    assert code == 0, out
    sweep_dir = Path(out.strip().splitlines()[-1].removeprefix("sweep: "))
    plan = json.loads((sweep_dir / "pbt.json").read_text())
    every = read_csv(sweep_dir / RESULTS_FILE)
    rows = [row for row in every if row["population"] == "pbt"]
    assert [row["member"] for row in rows] == ["m0", "m1"] and all(row["status"] == "done" for row in every)
    # --control: the same members (seeds, first draws) to the same budget, never exploiting, drawn beside PBT's
    control = [row for row in every if row["population"] == "control"]
    assert [row["member"] for row in control] == ["c0", "c1"]
    for member, row in enumerate(control):
        run_dir = Path(row["run_dir"])
        assert run_dir.parent == sweep_dir / row["member"] and run_dir.name.endswith(f"seed{member}")
        assert json.loads((run_dir / "summary.json").read_text())["env_steps"] == BUDGET
        assert int(row["exploits"]) == 0
        first = plan["initial"][member]
        assert {name: float(row[name]) for name in first} == pytest.approx(first)
    assert (sweep_dir / COMPARE_PLOT).stat().st_size > 10_000
    assert "pbt: best m" in out and "control: best c" in out
    for row in rows:
        run_dir = Path(row["run_dir"])
        assert run_dir.parent == sweep_dir / row["member"]
        assert json.loads((run_dir / "summary.json").read_text())["env_steps"] == BUDGET
        steps = [int(line["step"]) for line in read_csv(run_dir / "metrics.csv")]
        assert steps == sorted(set(steps))  # an exploit drops the rows after the donor's step, none are doubled
    history = read_csv(sweep_dir / HISTORY_CSV)
    exploits = [event for event in history if event["event"].startswith("exploit")]
    assert exploits, f"no member exploited another in {BUDGET // ROUND} rounds"
    for event in exploits:  # the counters it continued from are the donor's at that step, as the donor logged
        donor_dir = Path(next(row["run_dir"] for row in rows if row["member"] == event["event"].split()[1]))
        logged = {int(line["step"]): line for line in read_csv(donor_dir / "metrics.csv")}[int(event["step"])]
        assert int(float(logged["rollout/episodes"])) == int(event["episodes"])
        assert int(float(logged["train/updates"])) == int(event["updates"])
    for values in [*history, *rows]:  # every value any member trained with stays within its bounds
        for name in ("lr", "epsilon_end", "epsilon_decay_steps"):
            low, high = plan["mutations"][name]["low"], plan["mutations"][name]["high"]
            assert low <= float(values[name]) <= high, (name, values)
        assert int(values["n_step"]) in (1, 3, 5)  # DQNAgent.pbt_mutations' n-step choices
