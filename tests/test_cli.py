"""The pixelpilot command as a user drives it: train, resume after kill -9, eval, bad input -> exit 2."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.cli import main
from agents.core.config import CONFIG_DIR
from agents.core.run import checkpoint_paths


def pixelpilot(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agents", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})


def bad_input(capsys, *args: str) -> str:
    """Run a command that must be refused as bad input: exit 2 and one line on stderr, which is returned."""
    code = main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    return err[0]


def train(tmp_path: Path, *overrides: str, capsys) -> Path:
    code = main(["train", "random_pendulum", f"train.runs_dir={tmp_path}", *overrides])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert out[-1].startswith("run: ")
    return Path(out[-1][len("run: "):])


def test_train_writes_a_complete_run_directory(tmp_path, capsys):
    run_dir = train(tmp_path, "agent.total_steps=1600", "train.log_every=400", "train.checkpoint_every=800",
                    "train.record_every=2", capsys=capsys)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 1600
    assert summary["episodes"] == 8  # 8 envs x 200 steps: 100-step episodes, then one autoreset step
    assert -1700 < summary["mean_return"] < -300  # random torques keep the pendulum hanging
    assert summary["wall_s"] > 0
    metrics = (run_dir / "metrics.csv").read_text().splitlines()
    assert metrics[0].startswith("step,wall_s,rollout/ep_return")
    assert [line.split(",")[0] for line in metrics[1:]] == ["400", "800", "1200", "1600"]
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    payload = torch.load(checkpoint_paths(run_dir)[-1], weights_only=True)
    assert payload["step"] == 1600 and payload["agent"]["env_steps"] == 1600
    episodes = sorted((run_dir / "episodes").glob("ep_*.npz"))
    assert episodes
    with np.load(episodes[0]) as episode:
        assert episode["frames"].shape == (101, 1, 40, 40) and episode["frames"].dtype == np.uint8
        assert episode["actions"].shape == (100, 1)
        assert float(episode["return_"]) == pytest.approx(float(episode["rewards"].sum()), rel=1e-5)
        assert float(episode["fps"]) == 20.0


def test_resume_after_kill_9_finishes_with_the_unbroken_step_count(tmp_path):
    total = 60_000
    process = subprocess.Popen(
        [sys.executable, "-m", "agents", "train", "random_pendulum", f"train.runs_dir={tmp_path}",
         f"agent.total_steps={total}", "train.checkpoint_every=4000", "train.log_every=4000"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob("random_pendulum/*/checkpoints/step_*.pt")):
        time.sleep(0.05)
    time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_dir = next(tmp_path.glob("random_pendulum/*"))
    saved = torch.load(checkpoint_paths(run_dir)[-1], weights_only=True)["step"]
    assert 0 < saved < total, "the run must be killed part-way for this test to mean anything"
    assert not (run_dir / "summary.json").exists()

    config = (run_dir / "config.yaml").read_text()
    for refused, says in [("agent.total_steps=99", "agent.total_steps=99 would shorten the run"),
                          ("seed=3", "seed cannot change in a run"),
                          ("agent.trials=20", "agent.trials: agent.kind random has no such key")]:
        resumed = pixelpilot("train", "--resume", str(run_dir), refused, cwd=tmp_path)
        assert resumed.returncode == 2 and says in resumed.stderr, resumed.stderr
        assert (run_dir / "config.yaml").read_text() == config  # a refused change leaves the run as it was
    resumed = pixelpilot("train", "--resume", str(run_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip().splitlines()[-1] == f"run: {run_dir}"
    assert json.loads((run_dir / "summary.json").read_text())["env_steps"] == total
    steps = [int(line.split(",")[0]) for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)), "no metrics row may be duplicated by the resume"
    assert steps[-1] == total

    # a finished run continues for longer (SB3's learn(reset_num_timesteps=False)), and keeps the new length
    longer = pixelpilot("train", "--resume", str(run_dir), f"agent.total_steps={total + 8000}", cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr
    assert json.loads((run_dir / "summary.json").read_text())["env_steps"] == total + 8000
    assert f"total_steps: {total + 8000}" in (run_dir / "config.yaml").read_text()
    steps = [int(line.split(",")[0]) for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == total + 8000


def test_eval_prints_mean_and_spread_of_the_latest_checkpoint(tmp_path, capsys):
    run_dir = train(tmp_path, "agent.total_steps=800", capsys=capsys)
    assert main(["eval", str(run_dir), "--episodes", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["episodes"] == 3 and result["success_rate"] == 0.0  # the env's word: random torques never hold
    assert result["min_return"] <= result["mean_return"] <= result["max_return"] < 0
    assert result["std_return"] >= 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "random_pendulum", "agent.totl_steps=5"], "agent.totl_steps: unknown key"),
        (["train", "random_pendulum", "seed=x"], "seed: expected an integer"),
        (["train", "no_such.yaml"], "no_such.yaml: no such config file"),
        (["train", "random_pendulum", "env.id=pixelpilot/Nope-v0"], "env.id:"),
        (["train", "random_pendulum", "env.id=no_such_module:Nope-v0"], "env.id: No module named 'no_such_module'"),
        (["train", "random_pendulum", "env.kwargs.colour=1"], "env.kwargs:"),
        (["train", "ddm_pendulum", "agent.model.alive_bonus=1"], "agent.model.alive_bonus: 1.0 needs a continue head"),
        (["train", "ddm_cartpole_balance", "env.kwargs.reward=height"],
         "env.kwargs: reward must be one of ('task', 'tip', 'upright', 'dmc'), got 'height'"),
        (["eval", "not_a_run"], "not_a_run: no such run directory"),
        (["train", "--resume", "."], "not a run directory (no config.yaml)"),
        (["bench", "ddm", "agent.planing_horizon=5"], "agent.planing_horizon: unknown key"),
        (["bench", "ddm", "agent.planning_horizon=5"], "agent.planning_horizon: this key is now agent.cem.horizon"),
        (["bench", "ddm", "--config", "no_such"], "no_such: no such config file"),
        (["bench", "ddm", "--config", "random_pendulum"], "random_pendulum: agent.kind: bench ddm runs the ddm agent"),
        (["bench", "ddm", "--seeds", "19-10"], "--seeds 19-10: an empty block"),
        (["bench", "ddm", "--seeds", "x"], "--seeds x: expected a count (5), a block (1000-1019)"),
        (["bench", "ddm", "--seeds", "0"], "--seeds 0: must be >= 1"),
        (["bench", "ddm", "--seeds", "3,3"], "--seeds 3,3: expected distinct seeds"),
        (["bench", "dqn", "--threads", "0"], "--threads: must be >= 1, got 0"),
        (["bench", "score", "--seeds", "0"], "--seeds, --jobs, --episodes, --confirm must be >= 1"),
        (["train", "pqn_minatar_breakout", "env.id=pixelpilot/Pendulum-v0"],
         "env.id: the pqn agent needs a discrete action space"),
        (["train", "pqn_minatar_breakout", "agent.rollout=0"], "agent.rollout: must be >= 1, got 0"),
        (["train", "pqn_minatar_breakout", "agent.minibatches=5"],
         "agent.minibatches: 5 does not divide env.num_envs x agent.rollout = 32 x 16 = 512"),
        (["train", "pqn_minatar_breakout", "agent.q_lambda=1.5"], "agent.q_lambda: must be in [0, 1], got 1.5"),
        (["train", "pqn_minatar_breakout", "agent.reward_scale=0"], "agent.reward_scale: must be > 0, got 0"),
        (["train", "random_pendulum", "train.threads=0"], "train.threads: expected a whole number >= 1"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, expected):
    if args[:2] != ["train", "--resume"] and args[0] == "train":
        args = [*args, f"train.runs_dir={tmp_path / 'runs'}"]
    result = pixelpilot(*args, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not (tmp_path / "runs").exists()


def test_train_ends_with_the_outcome_then_the_run_directory(tmp_path, capsys):
    assert main(["train", "random_pendulum", f"train.runs_dir={tmp_path}", "agent.total_steps=800"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("mean return -") and lines[-2].endswith("(800 env steps)")
    assert lines[-1].startswith("run: ")


def test_resume_of_a_run_whose_config_is_not_a_mapping_is_one_line(tmp_path, capsys):
    run_dir = train(tmp_path, "agent.total_steps=400", capsys=capsys)
    (run_dir / "config.yaml").write_text("- a\n- list\n")
    result = pixelpilot("train", "--resume", str(run_dir), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "config.yaml: expected a mapping of keys at the top level, got list" in lines[0]


def test_damaged_checkpoint_is_reported_not_traced(tmp_path, capsys):
    run_dir = train(tmp_path, "agent.total_steps=400", capsys=capsys)
    checkpoint_paths(run_dir)[-1].write_bytes(b"garbage")
    result = pixelpilot("eval", str(run_dir), "--episodes", "1", cwd=tmp_path)
    assert result.returncode == 2
    assert "checkpoint cannot be read" in result.stderr and "Traceback" not in result.stderr


def test_damaged_only_checkpoint_on_resume_does_not_offer_a_previous_one(tmp_path, capsys):
    run_dir = train(tmp_path, "agent.total_steps=400", capsys=capsys)
    assert len(checkpoint_paths(run_dir)) == 1
    checkpoint_paths(run_dir)[-1].write_bytes(b"garbage")
    line = bad_input(capsys, "train", "--resume", str(run_dir))
    assert "checkpoint cannot be read" in line and "no earlier checkpoint" in line
    assert "fall back to the previous one" not in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch has a CUDA device")
def test_cuda_device_on_a_torch_without_cuda_is_one_line_naming_train_device(tmp_path, capsys):
    line = bad_input(capsys, "train", "configs/dqn_minatar_breakout.yaml", "train.device=cuda",
                     f"train.runs_dir={tmp_path / 'runs'}")
    assert "dqn_minatar_breakout.yaml: train.device: cuda asked" in line and "train.device=cpu" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("address", ["auto", "127.0.0.1:6379"])
def test_address_without_rollout_workers_is_refused_and_points_to_workers_and_sweep(tmp_path, capsys, address):
    line = bad_input(capsys, "train", "random_pendulum", "--address", address, f"train.runs_dir={tmp_path / 'runs'}")
    assert line.startswith(f"pixelpilot: error: --address {address}:")
    assert "--workers N" in line and "sweep CONFIG --address" in line
    assert not (tmp_path / "runs").exists()


def test_address_with_rollout_workers_in_the_config_is_not_refused_for_them(tmp_path, capsys):
    line = bad_input(capsys, "train", "random_pendulum", "ray.workers=2", "--address", "127.0.0.1:9",
                     f"train.runs_dir={tmp_path / 'runs'}")
    assert "agent.kind random has no rollout workers" in line  # the workers are checked, not the address's use


def test_resume_with_an_address_of_a_run_without_rollout_workers_is_refused(tmp_path, capsys):
    run_dir = train(tmp_path, "agent.total_steps=400", capsys=capsys)
    line = bad_input(capsys, "train", "--resume", str(run_dir), "--address", "auto")
    assert "--address auto:" in line and "ray.workers is 0" in line


def test_unknown_recipe_lists_the_recipes(tmp_path, capsys):
    line = bad_input(capsys, "train", "nosuch", f"train.runs_dir={tmp_path / 'runs'}")
    assert "nosuch: no such config file" in line
    assert all(path.stem in line for path in CONFIG_DIR.glob("*.yaml"))


@pytest.mark.parametrize(("env_id", "listed"), [
    ("pixelpilot/Pendulm-v0", ["pixelpilot/Pendulum-v0"]),  # a close match
    ("pixelpilot/Nope-v0", ["pixelpilot/Pendulum-v0", "pixelpilot/CartPoleSwingUp-v0", "pixelpilot/Pixels-v0"]),
])
def test_unknown_env_id_lists_close_matches_or_the_pixelpilot_ids(tmp_path, capsys, env_id, listed):
    line = bad_input(capsys, "train", "random_pendulum", f"env.id={env_id}", f"train.runs_dir={tmp_path / 'runs'}")
    assert f"env.id: no env {env_id!r} is registered" in line and all(env in line for env in listed), line


def test_unknown_encoder_kind_names_the_file_and_lists_only_encoders(tmp_path, capsys):
    line = bad_input(capsys, "train", "dqn_minatar_breakout", "agent.encoder.kind=nope", "train.device=cpu",
                     f"train.runs_dir={tmp_path / 'runs'}")
    assert line.startswith(f"pixelpilot: error: {CONFIG_DIR / 'dqn_minatar_breakout.yaml'}: agent.encoder.kind: ")
    assert "'nope'" in line and "minatar_encoder" in line and "nature_encoder" in line
    assert not any(other in line for other in ("q_network", "conv_decoder", "autoencoder", "rnn"))


@pytest.mark.parametrize("command", [[], ["train"], ["sweep"]])
def test_help_lists_the_recipes_with_what_each_is(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "recipes in configs/" in out
    for path in CONFIG_DIR.glob("*.yaml"):
        assert path.stem in out
    assert "DQN on MinAtar Breakout" in out  # the first words of the recipe's comment


def test_bench_figures_keep_three_significant_digits_so_a_ratio_near_its_goal_reads_as_measured():
    from agents.cli import format_figures

    text = format_figures({"single_steps_per_s": 5645.64, "ratio_to_machine": 0.8728, "speedup": 1.46, "ratio": 0.8472})
    assert text.splitlines() == ["single_steps_per_s: 5,645.6", "ratio_to_machine: 0.873", "speedup: 1.46",
                                 "ratio: 0.847x"]
    assert format_figures({"ratio": 16.04, "ratio_bound": "lower"}).splitlines()[-1] == "ratio: >16x"


def test_resume_gives_a_ddm_run_more_trials_and_nothing_else(tmp_path, capsys):
    from agents.core.config import load_config
    from agents.core.run import Run, extend_run, load_run_config

    run = Run.create(load_config("ddm_cartpole_balance", [f"train.runs_dir={tmp_path}", "agent.trials=10"]))
    assert extend_run(run.dir, ["agent.trials=15"]).agent.trials == 15
    assert load_run_config(run.dir).agent.trials == 15  # written, so every later resume keeps it
    line = bad_input(capsys, "train", "--resume", str(run.dir), "agent.total_steps=5000")
    assert "agent.total_steps: agent.kind ddm has no such key (its length is agent.trials)" in line
    line = bad_input(capsys, "train", "--resume", str(run.dir), "configs/ddm_pendulum.yaml")
    assert "takes no config" in line and "agent.trials=N" in line
    assert load_run_config(run.dir).agent.trials == 15
