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
