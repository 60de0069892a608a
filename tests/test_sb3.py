"""The sb3 agent kind: SB3 algorithms trained through `pixelpilot train`, resumable, evaluated with the
pendulum's success rule, and config mistakes named before anything runs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.cli import main
from agents.core.config import ConfigError, load_config
from agents.core.run import Run, checkpoint_paths, load_checkpoint, load_episode
from agents.sb3 import SB3Agent

# A few hundred pendulum steps on 2 envs: 100-step episodes, short rollouts, one evaluation episode.
TINY = ["env.num_envs=2", "agent.total_steps=256", "agent.eval_every=128", "agent.eval_episodes=1",
        "train.log_every=64", "train.checkpoint_every=128", "train.record_every=1"]
ALGO_KWARGS = {
    "ppo": "{n_steps: 32, batch_size: 32, n_epochs: 2}",
    "a2c": "{n_steps: 8}",
    "sac": "{learning_starts: 64, buffer_size: 1000, batch_size: 16, train_freq: 32, gradient_steps: 1}",
}


def train(tmp_path: Path, capsys, *overrides: str) -> Path:
    code = main(["train", "sb3_ppo_pendulum", f"train.runs_dir={tmp_path}", *TINY, *overrides])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    return Path(out[-1][len("run: "):])


@pytest.mark.parametrize("algo", ["ppo", "a2c", "sac"])
def test_train_writes_summary_checkpoint_metrics_and_episodes(tmp_path, capsys, algo):
    run_dir = train(tmp_path, capsys, f"agent.algo={algo}", f"agent.algo_kwargs={ALGO_KWARGS[algo]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 256  # stopped exactly at the budget, not at the end of a rollout
    assert summary["episodes"] == 2  # 2 envs x 128 steps: one finished 100-step episode each
    assert -1700 < summary["mean_return"] < 0
    assert summary["eval_success"] == 0.0 and summary["eval_frames_to_first_success"] is None
    payload = load_checkpoint(checkpoint_paths(run_dir)[-1])  # torch.load(weights_only=True)
    assert payload["step"] == 256 and payload["agent"]["num_timesteps"] == 256
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"rollout/ep_return", "time/fps", "eval/return", "eval/success", "rollout/success"} <= set(header)
    assert any(key.startswith("train/") for key in header)  # SB3's losses
    episode = load_episode(sorted((run_dir / "episodes").glob("ep_*.npz"))[0])
    assert episode["frames"].shape == (101, 1, 40, 40) and episode["frames"].dtype == np.uint8
    assert episode["actions"].shape == (100, 1) and episode["actions"].dtype == np.float32
    assert np.all(np.abs(episode["actions"]) <= 2.0)
    assert float(episode["fps"]) == 20.0
    assert np.isclose(episode["rewards"].sum(), float(episode["return_"]), rtol=1e-4)
    assert np.all(episode["rewards"] <= 0) and episode["rewards"].min() > -17  # unscaled pendulum rewards


def test_dqn_trains_on_a_discrete_env_with_integer_actions(tmp_path, capsys):
    run_dir = train(tmp_path, capsys, "env.id=pixelpilot/MinAtar-Breakout-v0", "agent.algo=dqn",
                    "agent.policy=MlpPolicy", "agent.frame_stack=1", "agent.reward_scale=1.0",
                    "agent.algo_kwargs={learning_starts: 64, buffer_size: 1000, batch_size: 16, train_freq: 8}")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 256
    assert "eval_success" not in summary  # MinAtar has no success rule
    episodes = sorted((run_dir / "episodes").glob("*.npz"))
    assert episodes
    episode = load_episode(episodes[0])
    assert episode["actions"].dtype == np.int64 and episode["actions"].ndim == 1
    assert episode["frames"].shape[1:] == (4, 10, 10)


def test_state_dict_round_trip_gives_the_same_actions(tmp_path):
    # 128 steps: one 64-step rollout and its update, then a rollout cut short at the budget.
    config = load_config("sb3_ppo_pendulum", [f"train.runs_dir={tmp_path}", *TINY, "agent.total_steps=128",
                                              f"agent.algo_kwargs={ALGO_KWARGS['ppo']}"])
    agent = SB3Agent(config, torch.device("cpu"))
    run = Run.create(config)
    agent.train(run)
    run.close()
    path = tmp_path / "state.pt"
    torch.save(agent.state_dict(), path)
    restored = SB3Agent(config, torch.device("cpu"))
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert restored.env_steps == agent.env_steps == 128 and restored.episodes == agent.episodes
    frames = np.random.default_rng(0).integers(0, 256, size=(5, 1, 40, 40), dtype=np.uint8)

    def actions(player: SB3Agent) -> np.ndarray:
        player.reset()
        return np.stack([player.act(frame) for frame in frames])  # the frame stack is part of the input

    np.testing.assert_array_equal(actions(restored), actions(agent))
    untrained = SB3Agent(config, torch.device("cpu"))
    assert not np.allclose(actions(untrained), actions(agent))  # so the equality above is the loaded weights


def test_resume_continues_at_the_saved_step_up_to_total_steps(tmp_path, capsys):
    run_dir = train(tmp_path, capsys, f"agent.algo_kwargs={ALGO_KWARGS['ppo']}")
    checkpoint_paths(run_dir)[-1].unlink()  # as if killed after the checkpoint at step 128
    assert load_checkpoint(checkpoint_paths(run_dir)[-1])["step"] == 128
    assert main(["train", "--resume", str(run_dir)]) == 0
    capsys.readouterr()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 256
    steps = [int(line.split(",")[0]) for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(steps) and steps[-1] == 256  # rows after the checkpoint were replaced, not doubled


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("agent.algo=ddpgg", "agent.algo: expected one of 'ppo', 'a2c', 'sac', 'td3', 'dqn', got 'ddpgg'"),
        ("agent.policy=ResNetPolicy", "agent.policy: PPO has no policy 'ResNetPolicy'"),
        ("agent.algo_kwargs={n_stepz: 8}", "agent.algo_kwargs.n_stepz: not an argument of PPO"),
        ("agent.algo_kwargs={seed: 3}", "agent.algo_kwargs.seed: set by pixelpilot (set it with seed)"),
        ("agent.policy_kwargs={activation_fn: Relu}", "agent.policy_kwargs.activation_fn: cannot import 'Relu'"),
        ("agent.frame_stack=0", "agent.frame_stack: must be >= 1"),
    ],
)
def test_bad_agent_keys_are_named_at_load(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config("sb3_ppo_pendulum", [override])


def test_an_algorithm_that_cannot_act_in_the_env_is_refused_before_the_run_exists(tmp_path, capsys):
    code = main(["train", "sb3_ppo_pendulum", f"train.runs_dir={tmp_path}", "agent.algo=dqn",
                 "agent.algo_kwargs={}"])
    assert code == 2
    assert "agent.algo: dqn cannot act in pixelpilot/Pendulum-v0's action space" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
