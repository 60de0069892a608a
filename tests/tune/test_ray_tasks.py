"""Seeds as Ray tasks (`bench ddm --jobs N`): stopping the command stops every process Ray started for it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def import_psutil():
    import ray  # noqa: F401  (puts the psutil it ships with on sys.path)

    return pytest.importorskip("psutil")


def alive(process) -> bool:
    """Still running: not gone, not a zombie (reparented children may wait unreaped), not a reused pid."""
    psutil = import_psutil()
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigterm_to_bench_ddm_with_jobs_leaves_no_ray_process_behind(tmp_path):
    psutil = import_psutil()
    bench = subprocess.Popen(
        [sys.executable, "-m", "agents", "bench", "ddm", "--jobs", "2", "--seeds", "2", "--no-model-quality",
         "agent.stop_on_success=false"],  # ddm_pendulum's ten full trials per seed: still running when stopped
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.time() + 90
        while True:
            # Ray's processes for this command: its node (gcs_server, raylet, ...) and the task workers under it.
            family = psutil.Process(bench.pid).children(recursive=True)
            workers = [p for p in family if alive(p) and "run_seed_task" in " ".join(p.cmdline())]
            if len(workers) == 2:
                break
            assert bench.poll() is None, bench.communicate()[1][-2000:]
            assert time.time() < deadline, f"no two seed tasks running after 90 s: {[p.cmdline() for p in family]}"
            time.sleep(0.5)
        time.sleep(1)
        family = [p for p in psutil.Process(bench.pid).children(recursive=True) if alive(p)]
        bench.send_signal(signal.SIGTERM)
        _, stderr = bench.communicate(timeout=60)
        assert bench.returncode == 130, stderr[-2000:]
        assert stderr.strip().splitlines()[-1] == "pixelpilot: interrupted"
        deadline = time.time() + 20
        while any(alive(p) for p in family) and time.time() < deadline:
            time.sleep(0.5)
        assert not [p.cmdline() for p in family if alive(p)]
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.communicate()


GPU_TASKS = """
import os
from agents.tune.cluster import start_ray, stop_ray
from agents.tune.tasks import map_tasks

def visible(_):
    import ray
    return [int(gpu) for gpu in ray.get_gpu_ids()], os.environ.get("CUDA_VISIBLE_DEVICES")

start_ray(num_cpus=2, num_gpus=1)  # a GPU declared to Ray (none is needed to test the request)
print(map_tasks(visible, [0, 1], jobs=2, gpus=0.5))
print(map_tasks(visible, [0], jobs=1))
stop_ray()
"""


def test_tasks_that_ask_for_a_share_of_a_gpu_see_it_and_the_others_do_not():
    # bench score --device cuda: each run asks for 1/jobs of the GPU and is given it (CUDA_VISIBLE_DEVICES); a task
    # that asks for none is given none.
    result = subprocess.run([sys.executable, "-c", GPU_TASKS], capture_output=True, text=True, timeout=120,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    shared, none = result.stdout.strip().splitlines()[-2:]
    assert shared == "[([0], '0'), ([0], '0')]"
    assert none.startswith("[([], ")
