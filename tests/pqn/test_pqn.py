"""The pqn agent kind: its Q(lambda) targets, learning, the torch-backend path, checkpoints and resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.cli import main
from agents.core.agent import train
from agents.core.config import load_config
from agents.core.envs import make_env
from agents.core.episodes import evaluate
from agents.core.run import checkpoint_paths, load_checkpoint
from agents.pqn import PQNAgent
from agents.pqn.agent import Rollout, q_lambda_targets
from envs.batched import BatchedPixelVectorEnv

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dot_config(tmp_path: Path, *overrides: str):
    """PQN on the DQN tests' DotEnv: the goal's side must be read from the pixels, the reward carried back."""
    return load_config("pqn_minatar_breakout", [
        f"train.runs_dir={tmp_path}", "train.device=cpu", "env.id=test_dqn:test/Dot-v0", "env.num_envs=8",
        "agent.rollout=8", "agent.total_steps=6000", "agent.epsilon_decay_steps=3000", "agent.gamma=0.8",
        "agent.lr=0.001", "agent.encoder={kind: minatar_encoder, features_dim: 32, layer_norm: true}",
        "train.log_every=1000", *overrides])


def one_env_rollout(rewards, terminated, truncated, valid, greedy_values) -> Rollout:
    rollout = Rollout(len(rewards), 1, (1, 1, 1), torch.device("cpu"))
    rollout.rewards[:, 0] = torch.tensor(rewards, dtype=torch.float32)
    rollout.terminated[:, 0] = torch.tensor(terminated)
    rollout.truncated[:, 0] = torch.tensor(truncated)
    rollout.valid[:, 0] = torch.tensor(valid)
    rollout.greedy_values[:, 0] = torch.tensor(greedy_values, dtype=torch.float32)
    return rollout


def test_q_lambda_targets_blend_bootstraps_and_stop_at_episode_ends():
    gamma = 0.5
    # steps: 0 plain, 1 terminates, 2 the reset step (no transition), 3 plain, 4 truncated, 5 reset, 6 plain
    rollout = one_env_rollout(rewards=[1, 2, 0, 3, 4, 0, 5], terminated=[0, 1, 0, 0, 0, 0, 0],
                              truncated=[0, 0, 0, 0, 1, 0, 0], valid=[1, 1, 0, 1, 1, 0, 1],
                              greedy_values=[10, 20, 30, 40, 50, 60, 70])
    last = torch.tensor([80.0])
    for lam in (0.0, 0.5, 1.0):
        g6 = 5 + gamma * 80  # the rollout's end bootstraps
        g5 = 0.0  # a reset step is no transition
        g4 = 4 + gamma * 60  # truncated: the final state's value (the value acted on at the reset step)
        g3 = 3 + gamma * ((1 - lam) * 50 + lam * g4)
        g2 = 0.0
        g1 = 2.0  # terminated
        g0 = 1 + gamma * ((1 - lam) * 20 + lam * g1)
        expected = torch.tensor([g0, g1, g2, g3, g4, g5, g6])
        assert torch.allclose(q_lambda_targets(rollout, last, gamma, lam)[:, 0], expected), lam


def test_pqn_learns_to_walk_to_the_reward(tmp_path):
    torch.manual_seed(0)
    config = dot_config(tmp_path)
    env = make_env(config)
    before = evaluate(PQNAgent(config, torch.device("cpu")), env, episodes=10, seed=100)
    run_dir = train(config, quiet=True)
    agent = PQNAgent(config, torch.device("cpu"))
    agent.load_state_dict(load_checkpoint(checkpoint_paths(run_dir)[-1])["agent"])
    after = evaluate(agent, env, episodes=10, seed=100)
    assert before.returns.mean() <= 0.6  # an untrained network does not read the goal
    assert after.returns.mean() == 1.0 and after.successes.all()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] >= 6000 and summary["updates"] > 0
    assert 0 < summary["frames_to_first_success"] <= 6000
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("rollout/ep_return", "rollout/success", "rollout/epsilon", "train/loss", "train/lr", "time/fps"):
        assert key in header
    assert list((run_dir / "episodes").glob("ep_*.npz"))  # env 0's episodes recorded
    assert main(["eval", str(run_dir), "--episodes", "2", "--json"]) == 0


def test_a_stopped_run_resumes_to_the_same_budget_and_updates(tmp_path):
    config = dot_config(tmp_path, "agent.total_steps=2048", "train.checkpoint_every=1024")
    whole = json.loads((train(config, quiet=True) / "summary.json").read_text())
    halted = dot_config(tmp_path / "b", "agent.total_steps=1024")
    run_dir = train(halted, quiet=True)
    (run_dir / "config.yaml").write_text((run_dir / "config.yaml").read_text().replace("1024", "2048"))
    resumed = json.loads((train(resume=run_dir, quiet=True) / "summary.json").read_text())
    assert resumed["env_steps"] == whole["env_steps"] == 2048
    assert resumed["updates"] == whole["updates"] == 2048 // 64 * 2 * 4


def test_the_pendulum_on_the_torch_backend_trains_with_actions_and_frames_as_tensors(tmp_path, monkeypatch):
    seen = []
    original = BatchedPixelVectorEnv.step
    monkeypatch.setattr(BatchedPixelVectorEnv, "step",
                        lambda self, actions: (seen.append(type(actions)), original(self, actions))[1])
    config = load_config("pqn_minatar_breakout", [
        f"train.runs_dir={tmp_path}", "train.device=cpu", "env.id=pixelpilot/Pendulum-v0",
        "env.vector_kwargs={backend: torch}", "env.num_envs=4", "env.discrete_actions=[-2, 0, 2]",
        "agent.frame_stack=2", "agent.rollout=8", "agent.total_steps=1024",
        "agent.encoder={kind: nature_encoder, features_dim: 32, layer_norm: true}", "train.log_every=128"])
    summary = json.loads((train(config, quiet=True) / "summary.json").read_text())
    assert summary["env_steps"] == 1024 and summary["episodes"] == 8  # 256 steps of each env: 2 episodes of 100
    assert set(seen) == {torch.Tensor}  # actions went to the env as tensors, never through NumPy
    assert np.isfinite(summary["mean_return"])


def test_reward_scale_scales_the_targets_only_not_the_returns_or_the_recorded_rewards(tmp_path):
    config = dot_config(tmp_path, "agent.total_steps=1024", "agent.reward_scale=0.1", "train.record_every=1")
    run_dir = train(config, quiet=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    rewards = np.concatenate([np.load(path)["rewards"] for path in (run_dir / "episodes").glob("ep_*.npz")])
    assert set(np.unique(rewards)) <= {0.0, 1.0} and rewards.max() == 1.0  # the env's own rewards
    assert summary["mean_return"] > 0.1  # unscaled: an episode scores 0 or 1
