"""bench score: both recipes trained in rounds, evaluated greedily between them, timed without the evaluations."""

from __future__ import annotations

import itertools

import pytest
import torch

from agents.cli import main
from agents.tune import score

PQN_DOT = """\
base: pqn_minatar_breakout
name: pqn_dot
env: {id: "test_dqn:test/Dot-v0", num_envs: 8}
agent: {rollout: 8, total_steps: 6000, epsilon_decay_steps: 3000, gamma: 0.8, lr: 0.001,
        encoder: {kind: minatar_encoder, features_dim: 32, layer_norm: true}}
train: {log_every: 500}
"""
SB3_DOT = """\
base: sb3_dqn_minatar_breakout
name: sb3_dot
env: {id: "test_dqn:test/Dot-v0"}
agent:
  total_steps: 4000
  eval_every: 500  # switched off by the bench: it would be timed with the training
  algo_kwargs: {buffer_size: 5000, learning_starts: 200, target_update_interval: 200, learning_rate: 0.001,
                gamma: 0.8, exploration_fraction: 0.2, exploration_final_eps: 0.05}
  policy_kwargs: {features_extractor_kwargs: {kind: minatar_encoder, features_dim: 32}}
train: {log_every: 500}
"""


def test_both_recipes_reach_the_score_and_the_ratio_is_the_baselines_median_over_ours(tmp_path, monkeypatch,
                                                                                      workers_import_tests, local_ray):
    (tmp_path / "pqn_dot.yaml").write_text(PQN_DOT)
    (tmp_path / "sb3_dot.yaml").write_text(SB3_DOT)
    monkeypatch.setitem(score.TASKS, "dot", score.ScoreTask(str(tmp_path / "pqn_dot.yaml"),
                                                            str(tmp_path / "sb3_dot.yaml"), "return", 0.9))
    result = score.bench_score("dot", seeds=2, jobs=2, eval_seconds=1.0, runs_dir=str(tmp_path / "runs"))
    for side in ("ours", "baseline"):
        assert result[side]["reached"] == 2
        for run in result[side]["runs"]:
            scores = [item["score"] for item in run["evaluations"]]
            confirmed = [scores[i] >= 0.9 and scores[i + 1] >= 0.9 for i in range(len(scores) - 1)]
            assert confirmed.index(True) == len(scores) - 2  # the first two at the target in a row end the run
            assert run["wall_s"] == run["evaluations"][-2]["wall_s"] <= run["trained_s"]
            walls = [item["wall_s"] for item in run["evaluations"]]
            assert walls == sorted(walls)
            steps = [0] + [item["env_steps"] for item in run["evaluations"]]
            rounds = [later - earlier for earlier, later in itertools.pairwise(steps)]
            assert rounds[0] >= score.FIRST_ROUND_STEPS
            # a round grows at most 4x the last (PQN steps a whole rollout of its 8 envs at a time: 64 steps)
            assert all(later <= score.ROUND_GROWTH * earlier + 64 for earlier, later in itertools.pairwise(rounds))
    assert result["ratio"] == pytest.approx(result["baseline"]["median_wall_s"] / result["ours"]["median_wall_s"])
    # SB3's own evaluations (every 500 steps in its recipe) were off: they would have run inside the clock
    sb3_runs = list((tmp_path / "runs" / "sb3_dot").iterdir())
    assert len(sb3_runs) == 2
    for run_dir in sb3_runs:
        metrics = run_dir / "metrics.csv"
        assert not metrics.exists() or "eval/return" not in metrics.read_text().splitlines()[0]


def test_the_median_counts_runs_that_never_reached_the_score_above_every_one_that_did():
    assert score.median_or_none([10.0, None, 30.0]) == 30.0
    assert score.median_or_none([10.0, None, None]) is None
    assert score.median_or_none([5.0, 7.0]) == 6.0


def test_a_side_that_never_reached_the_score_makes_the_ratio_a_bound():
    def runs(*walls, trained=900.0):
        return [{"reached": wall is not None, "wall_s": wall, "trained_s": trained if wall is None else wall + 10}
                for wall in walls]

    assert score.score_ratio(runs(50.0, 60.0, 40.0), runs(200.0, None, 100.0)) == (pytest.approx(200 / 50), None)
    # the baseline never got there in 900 s: at least 900 / 50
    assert score.score_ratio(runs(50.0, 60.0, 40.0), runs(None, None, 300.0)) == (pytest.approx(900 / 50), "lower")
    assert score.score_ratio(runs(None, None, 40.0), runs(100.0, 200.0, 300.0)) == (pytest.approx(200 / 900), "upper")
    assert score.score_ratio(runs(None, None), runs(None, 5.0)) == (None, None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_device_cuda_without_a_gpu_is_one_line_and_exit_2(capsys):
    assert main(["bench", "score", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda" in err[0] and "no CUDA device" in err[0]


def test_one_job_runs_in_this_process_without_ray(tmp_path, monkeypatch, workers_import_tests):
    # --jobs 1 (the GPU machine has no Ray): the runs one after another here, scored as with Ray.
    (tmp_path / "pqn_dot.yaml").write_text(PQN_DOT)
    (tmp_path / "sb3_dot.yaml").write_text(SB3_DOT)
    monkeypatch.setitem(score.TASKS, "dot", score.ScoreTask(str(tmp_path / "pqn_dot.yaml"),
                                                            str(tmp_path / "sb3_dot.yaml"), "return", 0.9))

    def no_ray(*args, **kwargs):
        raise AssertionError("--jobs 1 started Ray tasks")

    monkeypatch.setattr(score, "map_tasks", no_ray)
    result = score.bench_score("dot", seeds=1, jobs=1, eval_seconds=1.0, runs_dir=str(tmp_path / "runs"))
    assert result["ours"]["reached"] == result["baseline"]["reached"] == 1
    assert result["hardware"]["device"] == "cpu"


def test_skip_baseline_runs_ours_alone_from_the_first_seed_asked(tmp_path, monkeypatch, workers_import_tests):
    (tmp_path / "pqn_dot.yaml").write_text(PQN_DOT)
    monkeypatch.setitem(score.TASKS, "dot", score.ScoreTask(str(tmp_path / "pqn_dot.yaml"), "no_such_recipe",
                                                            "return", 0.9))
    result = score.bench_score("dot", seeds=1, jobs=1, eval_seconds=1.0, seed_start=7, skip_baseline=True)
    assert "baseline" not in result and result["ratio"] is None
    assert [run["seed"] for run in result["ours"]["runs"]] == [7] and result["ours"]["reached"] == 1
