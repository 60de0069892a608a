"""Fixtures shared by the test modules."""

import os
import sys
from pathlib import Path

import pytest
import torch

from agents.tune.cluster import start_ray, stop_ray

# Ray reads this when it is first imported: every Ray the tests start listens on 127.0.0.1 only.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# test_dqn.py's DotEnv is made by the id "test_dqn:test/Dot-v0" in the DQN, Ape-X and PBT tests: importable from any.
sys.path.insert(0, str(Path(__file__).parent / "dqn"))


@pytest.fixture
def one_torch_thread():
    """Small networks run faster on one torch thread, and one thread keeps their results repeatable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local_ray():
    """An embedded 2-CPU Ray shared by a test module's sweeps and tasks, shut down after the module."""

    start_ray(num_cpus=2)
    yield
    stop_ray()


@pytest.fixture(scope="module")
def workers_import_tests():
    """Ray's worker processes, started by local_ray after this (list it first), import test_dqn (its DotEnv)."""
    root, tests = Path(__file__).resolve().parents[1], Path(__file__).parent / "dqn"
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(root), str(tests), *([before] if before else [])])
    yield
    if before is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = before
