"""The dqn agent kind: DQN and Rainbow from pixels, learning, checkpoints and resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.cli import main
from agents.core.agent import train
from agents.core.config import ConfigError, load_config
from agents.core.envs import make_env
from agents.core.episodes import evaluate
from agents.core.run import checkpoint_paths, load_checkpoint
from agents.dqn import DQNAgent
from agents.dqn.bench import bench_dqn
from agents.sb3 import SB3Agent

ROOT = Path(__file__).resolve().parents[2]


class DotEnv(gym.Env):
    """A dot in the middle of a row of 7 cells and a goal marker at one end (drawn at random each episode), seen
    as a (1, 3, 7) image; actions left/right; reaching either end ends the episode, with reward 1 at the goal and
    0 at the other end; 10 steps at most. No fixed action sequence scores more than half: the policy must read
    the goal from the pixels, and the target must carry the reward back over the 3 steps to it (gamma 0.8 keeps
    the values of a step towards and a step away from the goal far apart)."""

    metadata = {"render_modes": [], "render_fps": 10}
    cells = 7

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(0, 255, (1, 3, self.cells), np.uint8)
        self.action_space = gym.spaces.Discrete(2)
        self.position, self.goal, self.steps = 3, 0, 0

    def observe(self) -> np.ndarray:
        frame = np.zeros((1, 3, self.cells), np.uint8)
        frame[0, 0, self.goal] = 255
        frame[0, 1, self.position] = 255
        return frame

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.position, self.steps = 3, 0
        self.goal = int(self.np_random.choice([0, self.cells - 1]))
        return self.observe(), {}

    def step(self, action: int):
        self.position += 1 if action == 1 else -1
        self.steps += 1
        ended = self.position in (0, self.cells - 1)
        reached = self.position == self.goal
        return self.observe(), float(reached), ended, self.steps >= 10 and not ended, {"is_success": reached}


if "test/Dot-v0" not in gym.registry:
    gym.register("test/Dot-v0", entry_point=DotEnv)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dot_config(tmp_path: Path, recipe: str, *overrides: str):
    return load_config(recipe, [
        f"train.runs_dir={tmp_path}", "train.device=cpu", "env.id=test/Dot-v0", "agent.total_steps=1500",
        "agent.learning_starts=200", "agent.epsilon_decay_steps=800", "agent.epsilon_end=0.05",
        "agent.target_update_every=200", "agent.lr=0.001", "agent.replay.capacity=5000", "agent.gamma=0.8",
        "agent.encoder={kind: minatar_encoder, features_dim: 32}", "train.log_every=500", *overrides])


@pytest.mark.parametrize("recipe", ["dqn_minatar_breakout", "rainbow_minatar_breakout"])
def test_dqn_and_rainbow_learn_to_walk_to_the_reward(tmp_path, recipe):
    torch.manual_seed(0)
    config = dot_config(tmp_path, recipe)
    untrained = DQNAgent(config, torch.device("cpu"))
    env = make_env(config)
    before = evaluate(untrained, env, episodes=10, seed=100)
    run_dir = train(config, quiet=True)
    agent = DQNAgent(config, torch.device("cpu"))
    agent.load_state_dict(load_checkpoint(checkpoint_paths(run_dir)[-1])["agent"])
    after = evaluate(agent, env, episodes=10, seed=100)
    assert before.returns.mean() <= 0.6  # an untrained network does not read the goal
    assert after.returns.mean() == 1.0 and after.successes.all()
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    losses = [float(row.split(",")[rows[0].split(",").index("train/loss")]) for row in rows[2:]]
    assert all(np.isfinite(losses))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0 < summary["frames_to_first_success"] <= 1500  # the env's is_success, read at episodes' ends
    assert "rollout/success" in rows[0].split(",")


def test_dqn_on_batched_envs_with_an_update_per_vector_step_learns_with_a_quarter_of_the_updates(tmp_path):
    """dqn_pendulum_fast's way (four envs, an update per four frames): the updates owed are counted in frames
    summed over the envs, and the agent still learns the task."""
    torch.manual_seed(0)
    config = dot_config(tmp_path, "dqn_minatar_breakout", "env.num_envs=4", "agent.train_every=4",
                        "agent.total_steps=4000", "agent.epsilon_decay_steps=2000", "agent.replay.n_step=3")
    run_dir = train(config, quiet=True)
    agent = DQNAgent(config, torch.device("cpu"))
    agent.load_state_dict(load_checkpoint(checkpoint_paths(run_dir)[-1])["agent"])
    assert agent.env_steps == 4000 and agent.updates == (4000 - 200) // 4
    after = evaluate(agent, make_env(config), episodes=10, seed=100)
    assert after.returns.mean() == 1.0 and after.successes.all()


def test_a_tiny_minatar_run_writes_the_run_directory_and_evaluates(tmp_path, capsys):
    config = load_config("rainbow_minatar_breakout", [
        f"train.runs_dir={tmp_path}", "train.device=cpu", "agent.total_steps=600", "agent.learning_starts=200",
        "agent.replay.capacity=1000", "train.log_every=200", "train.record_every=1"])
    run_dir = train(config, quiet=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 600 and summary["updates"] == 400
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("rollout/ep_return", "rollout/epsilon", "time/fps", "train/loss", "train/updates"):
        assert key in header
    episode = np.load(sorted((run_dir / "episodes").glob("ep_*.npz"))[0])
    assert episode["frames"].shape[1:] == (4, 10, 10) and episode["actions"].dtype == np.int64
    assert len(episode["frames"]) == len(episode["actions"]) + 1
    assert main(["eval", str(run_dir), "--episodes", "2", "--json"]) == 0  # the trained agent plays greedily


def test_frame_stack_is_built_by_the_agent_and_its_replay(tmp_path):
    config = dot_config(tmp_path, "dqn_minatar_breakout", "agent.frame_stack=3", "agent.total_steps=400",
                        "agent.learning_starts=100")
    agent = DQNAgent(config, torch.device("cpu"))
    assert agent.online.encoder.in_shape == (3, 3, 7)  # three stacked one-channel frames
    run_dir = train(config, quiet=True)
    assert json.loads((run_dir / "summary.json").read_text())["env_steps"] == 400
    agent.reset()
    first = DotEnv().reset()[0]
    agent.act(first)
    assert np.array_equal(agent.stack, np.repeat(first, 3, axis=0))  # an episode starts with its frame repeated


def test_checkpoint_with_save_replay_restores_the_replay_exactly(tmp_path):
    config = dot_config(tmp_path, "rainbow_minatar_breakout", "agent.total_steps=600", "train.save_replay=true")
    run_dir = train(config, quiet=True)
    state = load_checkpoint(checkpoint_paths(run_dir)[-1])["agent"]
    assert "replay" in state
    restored = DQNAgent(config, torch.device("cpu"))
    restored.load_state_dict(state)
    restored.start_replay(run_dir, config.env.num_envs)  # the replay is rebuilt from the run's replay/ files
    assert restored.env_steps == 600 and len(restored.replay) > 0
    torch.manual_seed(1)
    first = restored.replay.sample(8)
    again = DQNAgent(config, torch.device("cpu"))
    again.load_state_dict(state)
    again.start_replay(run_dir, config.env.num_envs)
    torch.manual_seed(1)
    second = again.replay.sample(8)
    for name in first._fields:
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    without = load_config(str(run_dir / "config.yaml"), ["train.save_replay=false"])
    agent = DQNAgent(without, torch.device("cpu"))
    assert "replay" not in agent.state_dict()


def test_resume_after_kill_9_finishes_at_the_step_count_with_its_replay(tmp_path):
    recipe = tmp_path / "dqn_kill.yaml"
    recipe.write_text(
        f"base: {ROOT / 'configs' / 'dqn_minatar_breakout.yaml'}\nname: dqn_kill\n"
        "agent: {total_steps: 4000, learning_starts: 300, replay: {capacity: 3000}}\n"
        "train: {device: cpu, checkpoint_every: 500, log_every: 500, save_replay: true}\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "agents", "train", str(recipe), f"train.runs_dir={tmp_path}"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and len(list(tmp_path.glob("dqn_kill/*/checkpoints/step_*.pt"))) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_dir = next(tmp_path.glob("dqn_kill/*"))
    saved = load_checkpoint(checkpoint_paths(run_dir)[-1])
    assert 0 < saved["step"] < 4000, "the run must be killed part-way for this test to mean anything"
    assert len(saved["agent"]["replay"]["position"]) > 0
    assert main(["train", "--resume", str(run_dir)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 4000 and summary["updates"] == 4000 - 300
    steps = [int(line.split(",")[0]) for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == 4000


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["env.id=pixelpilot/Pendulum-v0"], "env.id: the dqn agent needs a discrete action space"),
        (["agent.replay.n_step=0"], "agent.replay.n_step: must be >= 1"),
        (["agent.network.atoms=51", "agent.network.v_min=5", "agent.network.v_max=5"],
         "agent.network.v_min: must be below v_max"),
        (["agent.batch_size=200", "agent.replay.capacity=100"], "agent.batch_size: must be <= replay.capacity"),
        (["agent.replay.capacity=100000000000"], "agent.replay.capacity: 100,000,000,000 transitions need"),
        (["env.id=pixelpilot/Pendulum-v0", "env.discrete_actions=[-3, 0, 3]"], "env.discrete_actions: [-3.0] is"),
        (["agent.encoder={features_dim: 3}"], "agent.encoder: needs a kind"),
    ],
)
def test_bad_input_is_one_line_exit_2_before_anything_is_written(tmp_path, capsys, overrides, message):
    code = main(["train", "dqn_minatar_breakout", f"train.runs_dir={tmp_path / 'runs'}", "train.device=cpu",
                 *overrides])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "runs").exists()


def test_pendulum_with_a_discrete_action_set_trains(tmp_path):
    config = load_config("dqn_pendulum", [f"train.runs_dir={tmp_path}", "train.device=cpu", "agent.total_steps=300",
                                          "agent.learning_starts=100", "agent.replay.capacity=1000"])
    assert make_env(config).action_space == gym.spaces.Discrete(len(config.env.discrete_actions))
    run_dir = train(config, quiet=True)
    assert json.loads((run_dir / "summary.json").read_text())["env_steps"] == 300


def test_sb3_dqn_recipe_runs_with_the_same_network(tmp_path):
    config = load_config("sb3_dqn_minatar_breakout", [f"train.runs_dir={tmp_path}", "train.device=cpu",
                                                      "agent.total_steps=300", "agent.algo_kwargs.learning_starts=100",
                                                      "agent.eval_episodes=1"])

    agent = SB3Agent(config, torch.device("cpu"))
    ours = DQNAgent(load_config("dqn_minatar_breakout", ["train.device=cpu"]), torch.device("cpu"))
    count = lambda module: sum(parameter.numel() for parameter in module.parameters())  # noqa: E731
    assert count(agent.model.q_net) == count(ours.online)  # the same network, parameter for parameter
    run_dir = train(config, quiet=True)
    assert json.loads((run_dir / "summary.json").read_text())["env_steps"] == 300


def test_dqn_bench_reports_both_rates_the_ratio_and_replay_sizes():

    result = bench_dqn(steps=200, warmup=200)
    assert result["ours_steps_per_s"] > 0 and result["sb3_steps_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["ours_steps_per_s"] / result["sb3_steps_per_s"])
    assert 400 <= result["replay_bytes_per_frame"] < 500  # one (4, 10, 10) frame and a few bytes
    assert result["atari_1m_replay_gb"] < 8 < result["sb3_atari_1m_replay_gb"]
    assert result["hardware"]["torch_threads"] == 1  # both agents on one thread unless --threads says otherwise
    # an update's network passes alone are a fraction of a whole step (acting, sampling, the optimiser)
    assert 0 < result["update_arithmetic_ms"] < result["ours_ms_per_step"]
    ratio = result["ours_ms_per_step"] / result["update_arithmetic_ms"]
    assert result["ours_step_over_arithmetic"] == pytest.approx(ratio)


def test_a_continuous_env_without_a_discrete_set_is_refused_naming_the_fix(tmp_path):
    config = load_config("dqn_minatar_breakout", ["env.id=pixelpilot/Pendulum-v0"])
    with pytest.raises(ConfigError, match="env.discrete_actions"):
        DQNAgent(config, torch.device("cpu"))


def test_a_resume_without_the_replay_refills_it_before_learning_again(tmp_path):
    config = dot_config(tmp_path, "dqn_minatar_breakout", "agent.total_steps=500", "agent.learning_starts=200",
                        "train.save_replay=false")
    run_dir = train(config, quiet=True)
    assert json.loads((run_dir / "summary.json").read_text())["updates"] == 300
    (run_dir / "config.yaml").write_text((run_dir / "config.yaml").read_text().replace("total_steps: 500",
                                                                                      "total_steps: 800"))
    train(resume=run_dir, quiet=True)  # the checkpoint holds no replay (train.save_replay is off)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 800 and summary["updates"] == 300 + 100  # 200 steps to refill, then 100


def agent_with_random_steps(config, steps: int = 300) -> DQNAgent:
    """A CPU DQNAgent of `config` whose replay holds `steps` random MinAtar steps, the same ones every call."""
    agent = DQNAgent(config, torch.device("cpu"))
    agent.replay = agent.make_replay(1)
    env = make_env(config)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        action = int(rng.integers(3))
        following, reward, terminated, truncated, _ = env.step(action)
        agent.replay.add(obs[None], [action], [reward], [terminated], [truncated], following[None])
        obs = env.reset()[0] if terminated or truncated else following
    return agent


@pytest.mark.parametrize("overrides", [[], ["agent.replay.n_step=3", "agent.double=true", "agent.network.atoms=11",
                                              "agent.replay.prioritized=true"]], ids=["dqn", "rainbow-ish"])
def test_the_compiled_update_learns_as_the_eager_one(overrides):
    # agent.compile (torch.compile of the forward passes and loss; CUDA graphs on a GPU): the same losses and weights
    # as the eager update from the same start, to float rounding.
    config = load_config("dqn_minatar_breakout", ["agent.replay.capacity=2000", *overrides])
    agents = []
    for compiled in (False, True):
        config.agent.compile = compiled
        agent = agent_with_random_steps(config)
        torch.manual_seed(1)
        agent.losses_seen = [float(agent.update()) for _ in range(8)]
        agents.append(agent)
    eager, compiled = agents
    np.testing.assert_allclose(compiled.losses_seen, eager.losses_seen, rtol=1e-4, atol=1e-6)
    for a, b in zip(eager.online.parameters(), compiled.online.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("max_grad_norm", [10.0, 0.01], ids=["clip-idle", "clip-bites"])
def test_the_update_through_flat_gradients_is_the_textbook_update(max_grad_norm):
    # FlatGradients (one buffer for every gradient: one zeroing, a four-operation clip) against zero_grad, backward,
    # clip_grad_norm_ and Adam's step, from the same start on the same batches: the same losses and weights.
    config = load_config("dqn_minatar_breakout", ["agent.replay.capacity=2000", f"agent.max_grad_norm={max_grad_norm}"])
    flat, textbook = agent_with_random_steps(config), agent_with_random_steps(config)
    torch.manual_seed(1)  # the replay samples with torch's global generator
    flat_losses = [float(flat.update()) for _ in range(8)]
    textbook_losses, norms = [], []
    torch.manual_seed(1)
    for _ in range(8):
        loss, _ = textbook.losses(textbook.replay.sample(config.agent.batch_size, beta=1.0))
        textbook.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(textbook.online.parameters(), max_grad_norm)))
        textbook.optimizer.step()
        textbook_losses.append(float(loss))
    np.testing.assert_allclose(flat_losses, textbook_losses, rtol=1e-5)
    if max_grad_norm < 1:
        assert min(norms) > max_grad_norm  # the clip did scale every step
    for a, b in zip(flat.online.parameters(), textbook.online.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # zero_grad() (None gradients) in between does not break it: the views are attached again
    flat.optimizer.zero_grad(set_to_none=True)
    flat.update()
    assert all(p.grad.untyped_storage().data_ptr() == flat.gradients.buffer.untyped_storage().data_ptr()
               for p in flat.online.parameters())
