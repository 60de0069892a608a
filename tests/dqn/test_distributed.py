"""Distributed DQN (ray.workers > 0): Ray rollout workers feed one learner; faults and bad input.

The runs use test_dqn.py's DotEnv by the id "test_dqn:test/Dot-v0" (Gymnasium imports the module first), with
tests/dqn/ on PYTHONPATH, so the Ray worker processes can make it too.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.cli import main
from agents.core.agent import load_trained_agent, train
from agents.core.config import load_config
from agents.core.envs import make_env
from agents.core.episodes import evaluate
from agents.dqn.bench_ray import bench_ray
from agents.dqn.distributed import Collects, RolloutWorker, Sequence, worker_epsilons
from agents.dqn.replay import FrameReplay

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests" / "dqn"  # where test_dqn.py (its DotEnv) is
DOT = "test_dqn:test/Dot-v0"
PYTHONPATH = f"{ROOT}{os.pathsep}{TESTS}"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dot_recipe(tmp_path: Path, total_steps: int = 2500) -> Path:
    """test_dqn.py's DotEnv settings as a recipe file (subprocesses load it by path)."""
    recipe = tmp_path / "dqn_dot.yaml"
    recipe.write_text(
        f"base: {ROOT / 'configs' / 'dqn_minatar_breakout.yaml'}\nname: dqn_dot\n"
        f"env: {{id: '{DOT}'}}\n"
        f"agent: {{total_steps: {total_steps}, learning_starts: 200, epsilon_decay_steps: 800, epsilon_end: 0.05,\n"
        "  target_update_every: 200, lr: 0.001, gamma: 0.8, replay: {capacity: 5000},\n"
        "  encoder: {kind: minatar_encoder, features_dim: 32}}\n"
        f"train: {{device: cpu, log_every: 250, checkpoint_every: 1000, runs_dir: '{tmp_path}'}}\n"
        "ray: {steps_per_batch: 16, weights_every: 20}\n")
    return recipe


def pixelpilot(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "agents", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": PYTHONPATH, "OMP_NUM_THREADS": "1"})


def rollout_worker_pids() -> list[int]:
    found = subprocess.run(["pgrep", "-f", "ray::RolloutWorker"], capture_output=True, text=True).stdout
    return [int(pid) for pid in found.split()]


def stop_leftovers(temp_dir: str) -> None:
    """Ray's dashboard and runtime-env agents of an embedded Ray whose driver was SIGKILLed outlive it (its
    workers, raylet and GCS do not); they hold files open under the Ray's temp dir (Linux: /proc)."""
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd).startswith(temp_dir) for fd in fd_dir.iterdir()):
                os.kill(int(fd_dir.parent.name), signal.SIGKILL)
        except OSError:  # gone meanwhile, or not ours to read
            pass


def logged_steps(run_dir: Path) -> list[int]:
    return [int(line.split(",")[0]) for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]


def test_two_rollout_workers_feed_one_learner_that_learns(tmp_path):
    process = pixelpilot("train", str(dot_recipe(tmp_path)), "--workers", "2")
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    run_dir = next(tmp_path.glob("dqn_dot/*"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 2500 and summary["workers"] == 2 and summary["worker_restarts"] == 0
    assert summary["updates"] == 2500 - 200  # one update per env step after learning_starts, as one process
    assert (run_dir / "ray").is_symlink()  # the embedded Ray's logs, linked into the run directory
    assert list((run_dir / "episodes").glob("*.npz"))  # worker 0's episodes, for pixelpilot watch
    assert not rollout_worker_pids()  # the embedded Ray went down with the run
    sys.path.insert(0, str(TESTS))
    try:
        agent, config = load_trained_agent(run_dir)
        env = make_env(config)
        returns = evaluate(agent, env, episodes=10, seed=100).returns
    finally:
        sys.path.remove(str(TESTS))
    assert returns.mean() >= 0.8  # reads the goal from the pixels (an untrained network: <= 0.6, test_dqn)


def test_a_killed_rollout_worker_is_restarted_and_no_logged_step_is_lost(tmp_path):
    process = pixelpilot("train", str(dot_recipe(tmp_path, total_steps=3000)), "--workers", "2")
    deadline = time.time() + 180
    metrics = None
    while time.time() < deadline and process.poll() is None:
        metrics = next(tmp_path.glob("dqn_dot/*/metrics.csv"), None)
        if metrics is not None and len(metrics.read_text().splitlines()) >= 3 and rollout_worker_pids():
            break
        time.sleep(0.1)
    pids = rollout_worker_pids()
    assert process.poll() is None and pids, "the run must be killed part-way for this test to mean anything"
    os.kill(pids[0], signal.SIGKILL)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    run_dir = metrics.parent
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 3000 and summary["worker_restarts"] >= 1
    steps = logged_steps(run_dir)
    # one row per 250 env steps, each at the first batch past its multiple (16 steps a batch)
    assert [step // 250 for step in steps] == list(range(1, 13)) and all(step % 250 < 16 for step in steps[:-1])


def test_workers_spread_over_two_nodes_and_training_survives_losing_one(tmp_path, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("PYTHONPATH", PYTHONPATH)  # the nodes' worker processes import test_dqn
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    node = cluster.add_node(num_cpus=2)
    config = load_config(str(dot_recipe(tmp_path, total_steps=3000)),
                         [f"ray.address={cluster.address}", "ray.workers=2"])

    def remove_node_mid_run() -> None:
        deadline = time.time() + 180
        while time.time() < deadline and not list(tmp_path.glob("dqn_dot/*/metrics.csv")):
            time.sleep(0.1)
        cluster.remove_node(node)

    remover = threading.Thread(target=remove_node_mid_run)
    remover.start()
    try:
        sys.path.insert(0, str(TESTS))
        run_dir = train(config, quiet=True)
    finally:
        sys.path.remove(str(TESTS))
        remover.join()
        ray.shutdown()
        cluster.shutdown()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["worker_nodes"] == 2  # SPREAD: one worker on each node
    assert summary["env_steps"] == 3000 and summary["worker_restarts"] >= 1
    assert [step // 250 for step in logged_steps(run_dir)] == list(range(1, 13))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "--workers: must be >= 1"),
        (["--workers", "2", "--address", "127.0.0.1:9"], "--address 127.0.0.1:9: no Ray cluster answers there"),
        (["--workers", "1", "ray.learner_gpus=64"], "ray.learner_gpus: 64 GPUs asked, this machine has"),
    ],
)
def test_bad_ray_input_is_one_line_exit_2_within_30_s(tmp_path, capsys, args, message):
    started = time.time()
    assert main(["train", str(dot_recipe(tmp_path)), *args]) == 2
    assert time.time() - started < 30
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not list(tmp_path.glob("dqn_dot/*"))  # nothing written


def test_workers_for_an_agent_without_rollout_workers_is_refused(tmp_path, capsys):
    assert main(["train", "random_pendulum", "--workers", "2", f"train.runs_dir={tmp_path}"]) == 2
    assert "agent.kind random has no rollout workers" in capsys.readouterr().err


def test_worker_epsilons_follow_ape_x():

    assert worker_epsilons(1, 0.4, 7.0) == [0.4]
    epsilons = worker_epsilons(8, 0.4, 7.0)
    assert epsilons[0] == pytest.approx(0.4) and epsilons[-1] == pytest.approx(0.4**8)
    assert np.all(np.diff(epsilons) < 0)


def test_replay_takes_one_workers_envs_and_their_initial_priorities():

    replay = FrameReplay(capacity=400, num_envs=4, frame_shape=(1, 2, 2), prioritized=True, alpha=1.0)
    frame = np.zeros((2, 1, 2, 2), np.uint8)
    step = (frame, np.zeros(2, np.int64), np.ones(2), np.zeros(2, bool), np.zeros(2, bool), frame)
    for _ in range(5):  # worker 1 owns envs 2 and 3; envs 0 and 1 (worker 0) send nothing yet
        replay.add(*step, envs=[2, 3], priorities=np.array([1.0, 9.0]))
    assert replay.cursor.tolist() == [0, 0, 5, 5]
    counts = np.bincount(replay.sample(2000).indices.numpy() // 100, minlength=4)
    assert counts[:2].sum() == 0 and 6 < counts[3] / counts[2] < 13  # priorities 9 : 1
    with pytest.raises(ValueError, match="whose last stored step did not end their episode"):
        replay.add(*step, envs=[2, 3], mask=np.array([True, False]))
    replay.cut_episodes(envs=[3])  # a restarted worker's env: its running episode ends, env 2's goes on
    assert replay.episode_open.tolist() == [False, False, True, False]
    assert torch.equal(replay.truncated[300:305], torch.tensor([False, False, False, True, False]))


def test_ray_bench_reports_the_worker_rates_the_single_rate_and_the_ratio():

    result = bench_ray(workers=1, seconds=0.5, repeats=2)  # one worker: each added one costs seconds of start-up
    assert set(result["workers"]) == {1} and result["workers"][1] > 0
    assert result["single_steps_per_s"] > 0 and result["learner_updates_per_s"] > 0 and result["ray_start_s"] > 0
    assert len(result["rounds"]) == 2
    for item in result["rounds"]:
        assert item["ratio"] == pytest.approx(item["workers"][1] / item["single_steps_per_s"])
        assert item["single_steps_per_s"] == pytest.approx(sum(item["single_before_after"]) / 2)
        assert 0.5 < item["machine_scaling"] < 2.0  # one plain process against one: the same work, twice
        assert item["ratio_to_machine"] == pytest.approx(item["ratio"] / item["machine_scaling"])
    assert result["ratio"] == pytest.approx(np.median([item["ratio"] for item in result["rounds"]]))
    assert not rollout_worker_pids()


def test_the_ray_bench_gives_every_worker_the_single_paths_epsilon():
    # Ape-X's spread (0.4, then 0.4 ** 8 for a second worker) would give a second worker a network pass on nearly
    # every step against 60% of them in the single path: more work per step, not Ray's cost.
    from agents.dqn import bench_ray as module

    made = []

    class Worker:
        def __init__(self, config, index, epsilon):
            made.append((index, epsilon))
            self.pid = self.collect = self

        def remote(self, *args):
            return self

    class FakeRay:
        @staticmethod
        def wait(pending, num_returns):
            return [pending[0]], pending[1:]

        @staticmethod
        def get(ref):
            return {"actions": np.zeros((4, 1))} if not isinstance(ref, list) else None

        @staticmethod
        def kill(worker):
            pass

    remote = type("Remote", (), {"remote": staticmethod(lambda *args: Worker(*args))})
    rate, _ = module.collect_with_workers(FakeRay, remote, load_config("dqn_minatar_breakout", []), None, 3, 0.05,
                                          0.4)
    assert made == [(0, 0.4), (1, 0.4), (2, 0.4)] and rate > 0


def test_a_distributed_run_killed_with_sigkill_resumes_with_its_workers(tmp_path):
    process = pixelpilot("train", str(dot_recipe(tmp_path, total_steps=3000)), "--workers", "2")
    deadline = time.time() + 180
    while time.time() < deadline and not list(tmp_path.glob("dqn_dot/*/checkpoints/step_*.pt")):
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_dir = next(tmp_path.glob("dqn_dot/*"))
    stop_leftovers(str((run_dir / "ray").resolve().parents[1]))
    first = logged_steps(run_dir)
    assert first and first[-1] < 3000, "the run must be killed part-way for this test to mean anything"
    resumed = pixelpilot("train", "--resume", str(run_dir))
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] == 3000 and summary["workers"] == 2
    steps = logged_steps(run_dir)
    assert steps == sorted(set(steps)) and [step // 250 for step in steps] == list(range(1, 13))


@pytest.mark.parametrize("in_flight", [1, 2, 3])
def test_each_worker_keeps_its_calls_queued_and_its_batches_come_in_the_order_collected(in_flight):
    calls = []

    class Collect:
        def __init__(self, index):
            self.index, self.made = index, 0

        def remote(self, weights, steps):
            calls.append((self.index, weights, steps))
            self.made += 1
            return (self.index, self.made)  # a ref: which worker, its how-manieth call

    class AnyReady:  # ray.wait may return any ready ref: this one takes them in a turning order
        turn = 0

        @classmethod
        def wait(cls, refs, num_returns):
            cls.turn += 1
            chosen = refs[(cls.turn * 2) % len(refs)]
            return [chosen], [ref for ref in refs if ref is not chosen]

    workers = [type("Worker", (), {"collect": Collect(index)})() for index in range(3)]
    collects = Collects(workers, "weights", 64, in_flight)
    assert sorted(calls) == sorted([(index, "weights", 64) for index in range(3)] * in_flight)
    taken = []
    for _ in range(12):
        index, ref = collects.next(AnyReady)
        taken.append(ref)
        assert ref[0] == index and len(collects.queues[index]) == in_flight - 1
        collects.send(index, "new weights")
        assert all(len(queue) == in_flight for queue in collects.queues)  # none idles
    for index in range(3):  # each worker's batches in the order it collected them
        mine = [number for worker, number in taken if worker == index]
        assert mine and mine == list(range(1, len(mine) + 1))
    assert calls[-1] == (taken[-1][0], "new weights", 64)  # the refill goes to the worker just taken from


def test_a_workers_batches_that_do_not_follow_on_are_gaps_and_a_new_process_is_a_restart():
    sequence = Sequence(2)
    assert sequence.gap(0, 100, 1) and sequence.gap(1, 200, 1)  # the first batches: the replay's streams start
    assert not sequence.gap(0, 100, 2) and not sequence.gap(0, 100, 3) and not sequence.gap(1, 200, 2)
    assert sequence.restarts == 0
    # Worker 0's process dies with calls 4 and 5 queued; the new process runs call 5 first (number 1), then Ray
    # runs call 4 again (number 2) as its result was lost with the node: the learner takes 4 first, in queue order.
    assert sequence.gap(0, 300, 2)  # a new process
    assert sequence.gap(0, 300, 1)  # follows on from nothing stored
    assert sequence.gap(0, 300, 3)  # follows number 2, stored before number 1
    assert not sequence.gap(0, 300, 4)
    assert sequence.restarts == 1
    assert sequence.restarted_since([300, 200]) == 0 and sequence.restarted_since([301, 201]) == 2


def test_a_workers_batch_holds_its_steps_in_order_with_their_td_errors_as_priorities():
    # RolloutWorker.collect in this process (no Ray): two envs, 300 steps; each step's next frame is the next step's
    # frame wherever that step is a transition, and the priorities are the worker network's 1-step |TD errors|.
    config = load_config("dqn_minatar_breakout", ["env.num_envs=2", "agent.replay.prioritized=true"])
    worker = RolloutWorker(config, 0, epsilon=0.5)
    batch = worker.collect(None, 300)
    assert batch["frames"].shape == batch["next_frames"].shape == (300, 2, 4, 10, 10)
    assert batch["actions"].shape == batch["rewards"].shape == batch["priorities"].shape == (300, 2)
    follows = batch["mask"][1:]
    np.testing.assert_array_equal(batch["next_frames"][:-1][follows], batch["frames"][1:][follows])
    assert (~batch["mask"]).any() and batch["episodes"]  # episodes ended and restarted within the batch
    with torch.no_grad():
        flat = lambda array: torch.as_tensor(array.reshape(600, *array.shape[2:]))  # noqa: E731
        q = worker.network(flat(batch["frames"])).gather(1, flat(batch["actions"]).long()[:, None]).squeeze(1)
        next_q = worker.network(flat(batch["next_frames"])).amax(1)
    ended = flat(batch["terminated"]).float()
    target = flat(batch["rewards"]).float() + config.agent.gamma * (1 - ended) * next_q
    np.testing.assert_allclose(batch["priorities"].reshape(600), (target - q).abs().numpy(), rtol=1e-5, atol=1e-6)
    assert worker.collect(None, 10)["batch"] == 2
