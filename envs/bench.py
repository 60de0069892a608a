"""Frames per second of the batched pixel pendulum against Gymnasium's own pixel pipeline.

from envs.bench import bench_envs
result = bench_envs(seconds=3.0, batch_size=4096)   # {"baseline": ..., "numpy": ..., "ratio": ...}
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import numpy as np

from envs.external import headless_sdl_video
from envs.pendulum import PixelPendulumVectorEnv


def _frames_per_second(step: Callable[[], int], seconds: float, synchronize: Callable[[], None]) -> float:
    """Call ``step`` (which returns the frames it made) for about ``seconds`` after one warm-up call."""
    step()
    synchronize()
    frames, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        frames += step()
    synchronize()
    return frames / (time.perf_counter() - start)


def _baseline(seconds: float, image_size: int) -> dict:
    """Gymnasium Pendulum-v1 drawn by pygame, observed through Gymnasium's wrappers as gray
    ``image_size`` x ``image_size`` frames, stepped with random actions."""
    import gymnasium as gym
    from gymnasium.wrappers import AddRenderObservation, GrayscaleObservation, ResizeObservation


    # Gymnasium's renderer starts SDL's video, which on a machine without a desktop prints an
    # XDG_RUNTIME_DIR error; the frames go to plain surfaces either way, so the speed is the same.
    with headless_sdl_video():
        env = AddRenderObservation(gym.make("Pendulum-v1", render_mode="rgb_array"), render_only=True)
        env = ResizeObservation(GrayscaleObservation(env), (image_size, image_size))
        env.reset(seed=0)
        env.action_space.seed(0)

        def step() -> int:
            observation, _, terminated, truncated, _ = env.step(env.action_space.sample())
            assert observation.shape == (image_size, image_size), observation.shape
            if terminated or truncated:
                env.reset()
            return 1

        fps = _frames_per_second(step, seconds, lambda: None)
        env.close()
    return {"name": f"gymnasium Pendulum-v1 rgb_array (pygame) -> gray {image_size}x{image_size}", "frames_per_s": fps}


def _batched(seconds: float, batch_size: int, image_size: int, backend: str, device: str | None) -> dict:

    env = PixelPendulumVectorEnv(
        num_envs=batch_size, image_size=image_size, backend=backend, device=device, max_episode_steps=100
    )
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    if backend == "torch":
        import torch

        generator = torch.Generator(device=device).manual_seed(0)

        def actions():
            return torch.rand((batch_size, 1), device=device, generator=generator) * 4 - 2

        synchronize = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    else:

        def actions():
            return rng.uniform(-2, 2, (batch_size, 1)).astype(np.float32)

        def synchronize() -> None:
            return None

    def step() -> int:
        observation, *_ = env.step(actions())
        assert tuple(observation.shape) == (batch_size, 1, image_size, image_size), observation.shape
        return batch_size

    fps = _frames_per_second(step, seconds, synchronize)
    name = f"pixelpilot/Pendulum-v0 vector env, {backend}{'' if device is None else ' ' + device}, batch {batch_size}"
    return {"name": name, "frames_per_s": fps, "batch_size": batch_size}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench_envs(seconds: float = 3.0, batch_size: int = 4096, device: str | None = None, image_size: int = 40) -> dict:
    """Measure pixel-pendulum frames per second: Gymnasium's pipeline (the baseline), the batched
    NumPy vector env and, when CUDA is there (or ``device`` names one), the torch backend.

    Each measurement runs about ``seconds / 3`` seconds for the baseline and ``seconds`` for the
    others (about 2.5 x ``seconds`` in all, plus start-up).

    Returns:
        ``{"baseline": {"name", "frames_per_s"}, "numpy": {"name", "frames_per_s", "batch_size"},
        "gpu": {...} or None, "hardware": {"cpu", "cores", "torch", "gpu"}, "ratio": numpy /
        baseline, "gpu_ratio": gpu / baseline or None}``.
    """
    import torch

    if device is None and torch.cuda.is_available():
        device = "cuda"
    baseline = _baseline(max(seconds / 3, 0.5), image_size)
    numpy_result = _batched(seconds, batch_size, image_size, "numpy", None)
    gpu = _batched(seconds, batch_size, image_size, "torch", device) if device is not None else None
    return {
        "baseline": baseline,
        "numpy": numpy_result,
        "gpu": gpu,
        "hardware": {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(device) if device is not None and "cuda" in str(device) else None,
        },
        "ratio": numpy_result["frames_per_s"] / baseline["frames_per_s"],
        "gpu_ratio": None if gpu is None else gpu["frames_per_s"] / baseline["frames_per_s"],
    }
