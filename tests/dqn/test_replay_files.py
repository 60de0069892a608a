"""The replay in checkpoints (train.save_replay, on by default): a resumed run learns as the unbroken one does,
checkpoints write only the new entries, a killed run's later chunk is never read, and a resume without a replay
says so and still updates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_dqn import dot_config
from test_replay import IdEnv, fill

from agents.core.agent import seed_everything, train
from agents.core.config import load_config
from agents.core.run import Run, RunDirError, checkpoint_paths, load_checkpoint
from agents.dqn import DQNAgent
from agents.dqn.replay import ENTRY_FIELDS, FrameReplay
from agents.dqn.replay_files import ReplayFiles

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")


def stopped_run(config, until: int) -> tuple[DQNAgent, Path]:
    """A run trained to `until` env steps and stopped there, after its checkpoint (as a kill right after it)."""
    seed_everything(config.seed)
    agent = DQNAgent(config, CPU)
    run = Run.create(config)
    agent.train(run, until=until)
    run.close()
    return agent, run.dir


def replay_state(replay: FrameReplay) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in replay.state_dict().items() if isinstance(value, torch.Tensor)}


def restored_replay(config, run_dir: Path) -> FrameReplay:
    agent = DQNAgent(config, CPU)
    agent.load_state_dict(load_checkpoint(checkpoint_paths(run_dir)[-1])["agent"])
    agent.start_replay(run_dir, config.env.num_envs)
    return agent.replay


def assert_same_replay(replay: FrameReplay, expected: dict[str, torch.Tensor]) -> None:
    for name, value in replay_state(replay).items():
        assert torch.equal(value, expected[name]), name


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def chunks(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "replay").glob("*/*"))


@pytest.mark.parametrize("recipe", ["dqn_minatar_breakout", "rainbow_minatar_breakout"])
def test_a_stopped_and_resumed_run_makes_as_many_updates_as_the_unbroken_one(tmp_path, recipe):
    # Two envs, a replay of 300 entries that wraps round several times, a checkpoint every 100 env steps: the
    # chunks the ring has overwritten are deleted, and the rest rebuilds the replay exactly (priorities included).
    config = dot_config(tmp_path, recipe, "agent.total_steps=800", "agent.learning_starts=200", "env.num_envs=2",
                        "agent.replay.capacity=300", "train.checkpoint_every=100")
    unbroken = summary(train(config, quiet=True))
    assert unbroken["updates"] == 800 - 200
    agent, run_dir = stopped_run(config, until=500)
    assert_same_replay(restored_replay(config, run_dir), replay_state(agent.replay))
    # Each stream holds 150 slots and gains about 50 entries per checkpoint: the checkpoint at 400 (the older one
    # kept) still reads the chunk of 200, none reads the chunk of 100 any more, and it is gone.
    assert [path.name for path in chunks(run_dir)] == [f"step_{step:010d}.chunk" for step in (200, 300, 400, 500)]
    train(resume=run_dir, quiet=True)
    assert summary(run_dir)["env_steps"] == 800 and summary(run_dir)["updates"] == unbroken["updates"]


def test_each_checkpoint_writes_only_the_entries_added_since_the_previous_one(tmp_path):
    config = dot_config(tmp_path, "dqn_minatar_breakout", "agent.total_steps=600", "train.checkpoint_every=200")
    run_dir = train(config, quiet=True)
    state = load_checkpoint(checkpoint_paths(run_dir)[-1])["agent"]["replay"]
    replay = DQNAgent(config, CPU).make_replay(1)
    entry = sum(getattr(replay, name)[0].nbytes for name in ENTRY_FIELDS)  # frame, action, reward, ...
    assert state["chunk_steps"].tolist() == [200, 400, 600]
    # The second chunk starts where the first ended: its bytes are the 200 env steps after it (and an entry for
    # each episode's final frame), not the replay so far.
    assert torch.equal(state["chunk_starts"][1:], state["chunk_ends"][:-1]) and state["chunk_starts"][0] == 0
    added = (state["chunk_ends"] - state["chunk_starts"]).flatten().tolist()
    assert [path.stat().st_size for path in chunks(run_dir)] == [count * entry for count in added]
    assert all(200 <= count < 300 for count in added)
    assert sum(added) == int(state["cursor"].sum())  # every entry written once in all
    assert "frames" not in state and len(state["position"]) == replay.position.shape[0]  # the rest is in the .pt


def test_a_chunk_written_after_the_last_checkpoint_is_ignored_on_resume(tmp_path):
    config = dot_config(tmp_path, "rainbow_minatar_breakout", "agent.total_steps=900", "agent.learning_starts=200",
                        "train.checkpoint_every=100", "agent.replay.capacity=400")
    agent, run_dir = stopped_run(config, until=500)
    at_500 = replay_state(agent.replay)
    run = Run.open(run_dir)
    run.load_latest_checkpoint()
    agent.train(run, until=600)
    run.close()
    # Killed after writing the chunk of the checkpoint at 600 but before the checkpoint: only the chunk is there,
    # and it is damaged besides.
    checkpoint_paths(run_dir)[-1].unlink()
    late = run_dir / "replay" / agent.replay_files.lineage / "step_0000000600.chunk"
    late.write_bytes(b"not entries")
    assert_same_replay(restored_replay(config, run_dir), at_500)
    train(resume=run_dir, quiet=True)
    assert summary(run_dir)["env_steps"] == 900 and summary(run_dir)["updates"] == 900 - 200
    assert late.stat().st_size != len(b"not entries")  # rewritten by the resumed run's own checkpoint at 600


def test_a_missing_chunk_is_refused_naming_the_fix_and_save_replay_false_resumes_empty(tmp_path, capsys):
    config = dot_config(tmp_path, "dqn_minatar_breakout", "agent.total_steps=800", "agent.learning_starts=200")
    _, run_dir = stopped_run(config, until=500)
    chunks(run_dir)[0].unlink()
    with pytest.raises(RunDirError, match=r"is missing: the checkpoint's replay needs it.*train.save_replay: false"):
        train(resume=run_dir, quiet=True)
    (run_dir / "config.yaml").write_text((run_dir / "config.yaml").read_text().replace("save_replay: true",
                                                                                      "save_replay: false"))
    capsys.readouterr()
    train(resume=run_dir, quiet=True)
    assert "with an empty replay" in capsys.readouterr().err
    assert summary(run_dir)["updates"] == 300 + 100  # 200 steps to refill, then 100


@pytest.mark.parametrize(("total_steps", "updates", "message"), [
    (800, 300 + 100, "100 updates left before agent.total_steps=800"),
    (650, 300, "but agent.total_steps=650 comes first: no update will happen in this run"),
])
def test_a_resume_without_the_replay_warns_on_stderr_and_still_updates_if_it_can(tmp_path, capsys, total_steps,
                                                                                 updates, message):
    config = dot_config(tmp_path, "dqn_minatar_breakout", "agent.total_steps=500", "agent.learning_starts=200",
                        "train.save_replay=false")
    run_dir = train(config, quiet=True)
    assert not (run_dir / "replay").exists() and "replay" not in load_checkpoint(checkpoint_paths(run_dir)[-1])["agent"]
    (run_dir / "config.yaml").write_text((run_dir / "config.yaml").read_text().replace(
        "total_steps: 500", f"total_steps: {total_steps}"))
    capsys.readouterr()
    train(resume=run_dir, quiet=True)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert len(warnings) == 1, warnings
    assert "resuming at env step 500 with an empty replay (train.save_replay is false" in warnings[0]
    assert "refills for agent.learning_starts=200 env steps before updates restart at step 700" in warnings[0]
    assert message in warnings[0]
    assert summary(run_dir)["updates"] == updates


def test_a_checkpoint_with_the_whole_replay_inline_from_before_replay_files_resumes_with_it(tmp_path):
    config = dot_config(tmp_path, "dqn_minatar_breakout", "agent.total_steps=800", "agent.learning_starts=200")
    agent, run_dir = stopped_run(config, until=500)
    at_500 = replay_state(agent.replay)
    path = checkpoint_paths(run_dir)[-1]
    payload = load_checkpoint(path)
    payload["agent"]["replay"] = agent.replay.state_dict()  # what checkpoints held before
    torch.save(payload, path)
    shutil.rmtree(run_dir / "replay")
    assert_same_replay(restored_replay(config, run_dir), at_500)
    train(resume=run_dir, quiet=True)
    assert summary(run_dir)["updates"] == 800 - 200
    first = load_checkpoint(checkpoint_paths(run_dir)[-1])["agent"]["replay"]
    assert first["chunk_starts"][0].tolist() == [0]  # the first checkpoint after it wrote the whole replay


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
@pytest.mark.parametrize("prioritized", [False, True], ids=["uniform", "prioritized"])
def test_saved_replays_rebuild_exactly_at_each_kept_checkpoint_after_wrapping_round(tmp_path, prioritized, device):
    config = load_config("random_pendulum", [f"train.runs_dir={tmp_path}"])
    run = Run.create(config)
    replay = FrameReplay(60, 3, (1, 1, 2), stack=2, n_step=2, prioritized=prioritized, device=device)
    files, env = ReplayFiles.create(run.dir, replay, 0), IdEnv(3, seed=5)
    saved = {}
    for step in range(1, 13):  # each stream holds 20 slots: 7 steps between checkpoints, wrapped after 3
        fill(replay, env, 7)
        replay.update_priorities(replay.sample(4).indices, torch.arange(4.0))
        if step % 4 == 0:
            replay.cut_episodes()  # what a resumed run or a new PBT round does: changes stored entries' flags
        run.save_checkpoint({"replay": files.save(replay, step)}, step)
        files.prune()
        saved[step] = replay_state(replay)
        kept = [int(path.stem.removeprefix("step_")) for path in checkpoint_paths(run.dir)]
        for checkpoint in kept:  # the fallback too: deleting the newest checkpoint must leave a readable one
            rebuilt = FrameReplay(60, 3, (1, 1, 2), stack=2, n_step=2, prioritized=prioritized, device=device)
            ReplayFiles.restore(run.dir, rebuilt, load_checkpoint(run.checkpoint_dir / f"step_{checkpoint:010d}.pt")
                                ["agent"]["replay"])
            assert_same_replay(rebuilt, saved[checkpoint])
        # Only the chunks the kept checkpoints read stay: never more than a stream's length of entries and one
        # checkpoint's more.
        assert len(chunks(run.dir)) <= 5
    run.close()
