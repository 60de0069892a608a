"""Fixtures shared by the test modules."""

import os

import pytest
import torch

# Ray reads this when it is first imported: every Ray the tests start listens on 127.0.0.1 only.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


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
    from agents.common.cluster import start_ray, stop_ray

    start_ray(num_cpus=2)
    yield
    stop_ray()
