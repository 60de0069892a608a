"""The run directory: metrics, atomic checkpoints, bounded episode recording, RNG state round trips."""

import csv
import random
import time

import numpy as np
import pytest
import torch

from agents.core.config import load_config
from agents.core.run import (
    Run,
    RunDirError,
    checkpoint_paths,
    generator_state,
    load_checkpoint,
    load_episode,
    rng_state,
    set_generator_state,
    set_rng_state,
)


@pytest.fixture
def run(tmp_path):
    config = load_config("random_pendulum", [f"train.runs_dir={tmp_path}", "train.record_every=5",
                                             "train.max_episode_files=3", "train.checkpoint_every=100"])
    made = Run.create(config)
    yield made
    made.close()


def episode(index: int, total: float, steps: int = 4) -> dict:
    rewards = np.full(steps, total / steps, np.float32)
    frames = np.full((steps + 1, 1, 8, 8), index % 255, np.uint8)
    return {"frames": frames, "actions": np.zeros((steps, 1), np.float32), "rewards": rewards, "episode": index}


def test_run_directory_is_named_by_recipe_stamp_and_seed(run, tmp_path):
    assert run.dir.parent == tmp_path / "random_pendulum"
    assert run.dir.name.endswith("-seed0")
    assert (run.dir / "config.yaml").is_file()


def test_metrics_rows_gain_new_columns_without_losing_old_rows(run):
    run.log(10, {"rollout/ep_return": 1.0})
    run.log(20, {"rollout/ep_return": 2.0, "train/loss": 0.5})
    with open(run.dir / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["step"] for row in rows] == ["10", "20"]
    assert rows[0]["rollout/ep_return"] == "1.0" and rows[0]["train/loss"] == ""
    assert rows[1]["train/loss"] == "0.5"
    assert list((run.dir / "tb").glob("events.out.tfevents.*"))


def test_recording_keeps_due_and_best_episodes_bounded(run):
    returns = [-5.0, -4.0, -9.0, -9.0, -9.0, -9.0, 3.0, -9.0, -9.0, -9.0, -9.0, -9.0, -9.0, -9.0, -9.0, -9.0,
               -9.0, -9.0, -9.0, -9.0, -9.0, -9.0, -9.0]
    for index, total in enumerate(returns):
        run.record_episode(episode(index, total))
    kept = sorted(path.name for path in run.episode_dir.glob("ep_*.npz"))
    assert kept == ["ep_0000010.npz", "ep_0000015.npz", "ep_0000020.npz"]  # every 5th, newest 3
    best = load_episode(run.episode_dir / "best.npz")
    assert float(best["return_"]) == pytest.approx(3.0) and int(best["episode"]) == 6
    assert not list(run.episode_dir.glob(".*.tmp"))


def test_recording_counts_blocks_when_only_some_episodes_are_offered(run):
    for index in (3, 7, 8, 12):  # e.g. only env 0's episodes: none is a multiple of 5
        run.record_episode(episode(index, -1.0 - index))
    kept = sorted(int(path.stem[3:]) for path in run.episode_dir.glob("ep_*.npz"))
    assert kept == [3, 7, 12]


def test_truncated_episode_file_gives_clear_error(run, tmp_path):
    path = run.record_episode(episode(0, 1.0))
    broken = tmp_path / "broken.npz"
    broken.write_bytes(path.read_bytes()[:50])
    with pytest.raises(RunDirError, match="broken.npz: episode file cannot be read"):
        load_episode(broken)


def test_checkpoints_are_loadable_weights_only_and_only_newest_kept(run):
    assert not run.checkpoint_due(99) and run.checkpoint_due(100) and not run.checkpoint_due(150)
    for step in (100, 200, 300):
        run.save_checkpoint({"weights": torch.ones(3) * step, "step": step}, step)
    paths = checkpoint_paths(run.dir)
    assert [path.name for path in paths] == ["step_0000000200.pt", "step_0000000300.pt"]
    payload = torch.load(paths[-1], weights_only=True)
    assert payload["step"] == 300 and torch.equal(payload["agent"]["weights"], torch.full((3,), 300.0))
    assert not list(run.checkpoint_dir.glob(".*.tmp"))


def test_damaged_checkpoint_is_named(run):
    path = run.save_checkpoint({"x": 1}, 100)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(RunDirError, match=r"step_0000000100.pt: checkpoint cannot be read"):
        load_checkpoint(path)


def test_damaged_checkpoint_offers_the_previous_one_only_when_there_is_one(run):
    first = run.save_checkpoint({"x": 1}, 100)
    first.write_bytes(b"not a checkpoint")
    with pytest.raises(RunDirError) as info:
        load_checkpoint(first)
    assert "no earlier checkpoint" in str(info.value) and "fall back" not in str(info.value)
    run.save_checkpoint({"x": 1}, 100)  # a whole one in its place, then a damaged one after it
    latest = run.save_checkpoint({"x": 2}, 200)
    latest.write_bytes(b"not a checkpoint")
    with pytest.raises(RunDirError, match=r"step_0000000200.pt: .*delete it to fall back to step_0000000100.pt"):
        load_checkpoint(latest)


def test_resume_drops_metrics_logged_after_the_checkpoint(run):
    time.sleep(0.05)
    run.log(100, {"a": 1.0})
    run.save_checkpoint({"x": 1}, 100)
    run.log(200, {"a": 2.0})
    run.close()
    reopened = Run.open(run.dir)
    assert reopened.load_latest_checkpoint() == {"x": 1}
    with open(run.dir / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["step"] for row in rows] == ["100"]
    reopened.log(150, {"a": 1.5})
    with open(run.dir / "metrics.csv", newline="") as file:
        walls = [float(row["wall_s"]) for row in csv.DictReader(file)]
    assert walls[1] >= walls[0], "wall time continues across a resume"


def test_global_rng_state_round_trips_through_a_weights_only_checkpoint(run):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    path = run.save_checkpoint(rng_state(), 100)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_checkpoint(path)["agent"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rng_state_round_trips_through_a_checkpoint(run):
    torch.cuda.manual_seed_all(1)
    path = run.save_checkpoint(rng_state(), 100)
    expected = torch.rand(3, device="cuda").cpu()
    torch.cuda.manual_seed_all(2)
    set_rng_state(load_checkpoint(path)["agent"])
    assert torch.equal(torch.rand(3, device="cuda").cpu(), expected)


def test_rng_state_from_before_the_cuda_key_or_from_a_gpu_machine_restores_the_rest(run):
    torch.manual_seed(1)
    state = rng_state()
    expected = torch.rand(2)
    older = {key: value for key, value in state.items() if key != "cuda"}  # a checkpoint written before the key
    checks = [older]
    if not torch.cuda.is_available():  # a GPU run's checkpoint resumed here: its CUDA state has nowhere to go
        checks.append({**state, "cuda": [torch.zeros(16, dtype=torch.uint8)]})
    for saved in checks:
        set_rng_state(saved)
        assert torch.equal(torch.rand(2), expected)


def test_generator_state_round_trips(run):
    generator = np.random.default_rng(5)
    generator.random(3)
    path = run.save_checkpoint({"rng": generator_state(generator)}, 100)
    expected = generator.random(4)
    restored = np.random.default_rng(0)
    set_generator_state(restored, load_checkpoint(path)["agent"]["rng"])
    assert np.array_equal(restored.random(4), expected)
