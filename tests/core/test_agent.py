"""The agent protocol and what every agent kind shares: the registry, train(), the episode loop, the clock."""

import csv
import json
import typing

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs  # noqa: F401  (registers pixelpilot/...)
from agents.core.agent import Agent, agent_class, train
from agents.core.config import load_config
from agents.core.episodes import evaluate, play_episode
from agents.core.registry import AGENTS
from agents.core.run import Every
from agents.random_agent import RandomAgent


@pytest.mark.parametrize("kind", sorted(AGENTS))
def test_every_agent_kind_has_every_member_of_the_protocol(kind):
    cls = agent_class(kind)
    members = [name for name in vars(Agent) if not name.startswith("_") or name == "__init__"]
    assert "Config" in typing.get_type_hints(Agent, include_extras=True)
    missing = [name for name in members if not callable(getattr(cls, name, None))]
    assert not missing, f"{kind} lacks {missing}"
    assert hasattr(cls, "Config") and cls.Config().kind == kind


def test_every_clock_fires_once_per_period_and_a_resumed_one_at_the_same_points():
    clock = Every(10)
    fired = [count for count in range(0, 45, 3) if clock(count)]
    assert fired == [12, 21, 30, 42]  # the first count at or past each multiple of 10
    resumed = Every(10, start=21)  # resumed at 21: the next point is 30, as in the unbroken run
    assert [count for count in range(24, 45, 3) if resumed(count)] == [30, 42]
    first = Every(10, start=-1)  # -1: the first count offered is due
    assert first(1) and not first(9) and first(10)


def test_play_episode_stops_at_max_steps_and_reports_the_envs_success():
    env = gym.make("pixelpilot/Pendulum-v0")
    episode = play_episode(env, lambda obs: np.zeros(1, np.float32), seed=0, max_steps=30)
    assert episode.frames.shape == (31, 1, 40, 40) and episode.actions.shape == (30, 1)
    assert episode.rewards.dtype == np.float32 and episode.return_ == pytest.approx(float(episode.rewards.sum()))
    assert episode.success is False  # hanging still: the env says no
    no_rule = play_episode(gym.make("CartPole-v1"), lambda obs: 0, seed=0)
    assert no_rule.success is None and len(no_rule.actions) < 500  # ran until the env ended it


def test_evaluate_reads_success_from_the_env_on_the_evaluation_seeds():
    class Upright:
        """Holds a pendulum that starts near upright: torque against the angle and its velocity."""

        def reset(self) -> None:
            pass

        def act(self, obs: np.ndarray) -> np.ndarray:
            state = env.unwrapped.state[0]
            return np.clip([-10 * np.sin(state[0]) - 2 * state[1]], -2, 2).astype(np.float32)

    env = gym.make("pixelpilot/Pendulum-v0", start_noise=0.0)
    env.reset(options={"angle": 0.05, "angular_velocity": 0.0})
    original_reset = env.reset
    env.reset = lambda seed=None, options=None: original_reset(seed=seed, options={"angle": 0.05,
                                                                                   "angular_velocity": 0.0})
    returns, successes = evaluate(Upright(), env, episodes=2, seed=10_000)
    assert successes.tolist() == [True, True] and np.all(returns > -5)


def test_a_run_ending_between_log_points_logs_a_final_row_at_its_last_step(tmp_path):
    config = load_config("random_pendulum", [f"train.runs_dir={tmp_path}", "agent.total_steps=1500",
                                             "train.log_every=1000"])
    run_dir = train(config, quiet=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    with open(run_dir / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [int(row["step"]) for row in rows] == [1000, summary["env_steps"]]  # 1504: 8 envs step together
    assert float(rows[-1]["rollout/ep_return"]) == pytest.approx(summary["mean_return"])
    assert int(float(rows[-1]["rollout/episodes"])) == summary["episodes"]
    assert train(resume=run_dir, quiet=True) == run_dir  # nothing left to train: no second final row
    with open(run_dir / "metrics.csv", newline="") as file:
        assert len(list(csv.DictReader(file))) == 2


def test_train_returns_the_run_directory_with_its_summary(tmp_path, capsys):
    config = load_config("random_pendulum", [f"train.runs_dir={tmp_path}", "agent.total_steps=400"])
    run_dir = train(config)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert run_dir.parent == tmp_path / "random_pendulum" and summary["env_steps"] == 400 and summary["wall_s"] > 0
    assert capsys.readouterr().out.strip().endswith("(400 env steps)")
    (run_dir / "config.yaml").write_text((run_dir / "config.yaml").read_text().replace("400", "800"))
    assert train(resume=run_dir, quiet=True) == run_dir  # resumed in place, to the new budget
    assert json.loads((run_dir / "summary.json").read_text())["env_steps"] == 800


@pytest.mark.parametrize("threads", [1, 3])
def test_train_threads_sets_torch_threads_while_the_run_trains_and_restores_them(tmp_path, monkeypatch, threads):
    seen = []
    original = RandomAgent.train
    monkeypatch.setattr(RandomAgent, "train", lambda self, run: (seen.append(torch.get_num_threads()),
                                                                  original(self, run)))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        train(load_config("random_pendulum", [f"train.runs_dir={tmp_path}", "agent.total_steps=100",
                                              f"train.threads={threads}"]), quiet=True)
        assert seen == [threads] and torch.get_num_threads() == 2
        train(load_config("random_pendulum", [f"train.runs_dir={tmp_path}", "agent.total_steps=100"]), quiet=True)
        assert seen == [threads, 2]  # null: the process's own setting
    finally:
        torch.set_num_threads(before)
