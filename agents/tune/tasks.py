"""What a command that fans work out over Ray needs around cluster.py: a Ray for the length of the command,
SIGTERM taken as Ctrl-C, and seeds as Ray tasks that are cancelled when the command stops.

    with ray_session(address, num_cpus=jobs), sigterm_as_ctrl_c():
        summaries = map_tasks(run_one, items, jobs)   # one CPU per task, at most `jobs` at once, results in order

`bench ddm --jobs N` runs its seeds this way; `sweep` uses ray_session and sigterm_as_ctrl_c around Ray Tune.
Ray is imported only inside these functions.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from agents.tune.cluster import start_ray, stop_ray

WAIT_S = 1.0  # ray.wait returns this often, so Ctrl-C and SIGTERM are seen within a second


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """An embedded Ray (`address` None, `num_cpus` CPUs) or the cluster at `address`, for the body of the with.

    A Ray this process already runs (a test's, a caller's) is used as it is and left running; one started
    here is shut down on the way out, whatever the way out, and its worker processes with it."""
    started_here = "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        start_ray(address, num_cpus=num_cpus if address is None else None)
        if main_thread:
            # ray.init puts a handler of its own (log a stack trace, abort) in place of this process's.
            signal.signal(signal.SIGTERM, sigterm)
        yield
    finally:
        if started_here:
            stop_ray()


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM does what Ctrl-C does for the body of the with: it calls SIGINT's handler of the moment (Python's,
    raising KeyboardInterrupt, or Ray Tune's, which stops a sweep after saving its state), so `finally` blocks
    run and shut workers down instead of the process dying with them left behind. Off the main thread, where
    handlers cannot be set, it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def as_ctrl_c(signum: int, frame: Any) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if not callable(handler):  # SIG_IGN or SIG_DFL: nothing of Python's to call
            raise KeyboardInterrupt
        handler(signal.SIGINT, frame)

    previous = signal.signal(signal.SIGTERM, as_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def map_tasks(function: Callable[[Any], Any], items: Sequence[Any], jobs: int, gpus: float = 0) -> list:
    """`function(item)` for every item as a Ray task of one CPU (and `gpus` of a GPU: Ray gives GPUs only to tasks
    that ask for them, and sets CUDA_VISIBLE_DEVICES to those), at most `jobs` running at once; the results in the
    order of `items`. Needs a Ray (ray_session).

    If anything stops the loop (Ctrl-C, SIGTERM under sigterm_as_ctrl_c, a task's error), the tasks not yet
    finished are cancelled with force, which kills their worker processes, before the exception goes on."""
    import ray

    remote = ray.remote(num_cpus=1, num_gpus=gpus)(function)
    results: dict[int, Any] = {}
    running: dict[ray.ObjectRef, int] = {}
    queue = list(enumerate(items))
    try:
        while queue or running:
            while queue and len(running) < jobs:
                index, item = queue.pop(0)
                running[remote.remote(item)] = index
            done, _ = ray.wait(list(running), num_returns=1, timeout=WAIT_S)
            for ref in done:
                results[running.pop(ref)] = ray.get(ref)
    finally:
        for ref in running:
            ray.cancel(ref, force=True)
    return [results[index] for index in range(len(items))]
