"""One batched core, two Gymnasium faces: a single :class:`gymnasium.Env` and a
:class:`gymnasium.vector.VectorEnv`.

A :class:`Task` holds a task's physics, rewards, start states and renderer, all working on whole
batches of states ``(batch, state_dim) float64`` (NumPy arrays, or torch tensors on any device).
:class:`BatchedPixelEnv` runs it with a batch of one; :class:`BatchedPixelVectorEnv` runs it on
``num_envs`` states at once, with its own episode-length truncation and next-step autoreset.

Both report SB3's ``info["is_success"]`` on every step, by one rule: the task says which states are
on target (:meth:`Task.on_target`), the env counts consecutive on-target frames since the reset, and
an episode that ends now is a success when that count has reached ``Task.success_frames`` and the
step did not terminate.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

Array = Any  # numpy.ndarray or torch.Tensor

START_BLOCK = 128  # steps of start states the torch backend draws (and copies to its device) at once

# Success for the pole tasks (pendulum, cart-pole): the pole within 20 degrees of upright
# (|wrapped angle| <= 20 deg) in each of the last 20 frames of an episode.
SUCCESS_ANGLE = np.deg2rad(20.0)
SUCCESS_FRAMES = 20


def namespace(array: Array):
    """The array module for ``array``: ``numpy``, or ``torch`` for tensors (same names for the
    functions used here: sin, cos, clip, abs, stack, where, ...)."""
    if isinstance(array, np.ndarray):
        return np
    import torch

    return torch


def angle_normalize(angle: Array) -> Array:
    """Wrap angles to ``[-pi, pi)`` (NumPy or torch, any shape), as Gymnasium's pendulum does."""
    return ((angle + np.pi) % (2 * np.pi)) - np.pi


def within_success_angle(angle: Array) -> Array:
    """Whether poles are near upright: ``|angle| <= SUCCESS_ANGLE`` once wrapped (any winding).

    Args:
        angle: pole angles in radians, 0 = upright; NumPy or torch, any shape.

    Returns:
        bool, the same shape and backend.
    """
    return abs(angle_normalize(angle)) <= SUCCESS_ANGLE


def upscale_to_rgb(gray: np.ndarray) -> np.ndarray:
    """(height, width) uint8 gray -> (height, width, 3) uint8 RGB."""
    return np.repeat(gray[:, :, None], 3, axis=2)


class Task(ABC):
    """A task's batched core. Subclasses set the spaces and implement the methods below.

    Attributes:
        state_dim: length of one state vector.
        action_space: the single env's action space.
        image_size: (height, width) of the observation.
        success_frames: how many consecutive on-target frames make an episode a success.
    """

    state_dim: int
    action_space: spaces.Space
    image_size: tuple[int, int]
    success_frames: int = SUCCESS_FRAMES

    @abstractmethod
    def sample_start(self, rng: np.random.Generator, count: int, options: dict | None) -> np.ndarray:
        """Start states (count, state_dim) float64 drawn from ``rng`` (``options`` may fix them)."""

    @abstractmethod
    def step(self, state: Array, action: Array) -> tuple[Array, Array, Array]:
        """(batch, state_dim), (batch, *action_shape) -> next state, reward (batch,) float32,
        terminated (batch,) bool."""

    @abstractmethod
    def render(self, state: Array, height: int, width: int) -> Array:
        """(batch, state_dim) -> (batch, height, width) uint8 frames."""

    @abstractmethod
    def info(self, state: Array) -> dict[str, Array]:
        """Per-state facts for ``info``: each (batch,)."""

    @abstractmethod
    def on_target(self, state: Array) -> Array:
        """(batch, state_dim) -> (batch,) bool: whether each state counts towards success."""

    def track_success(self, frames_on_target: Array, state: Array, terminated: Array) -> tuple[Array, Array]:
        """One step of the success rule, for a batch of envs.

        Args:
            frames_on_target: (batch,) int64, consecutive on-target frames before this step (0 after a reset).
            state: (batch, state_dim) the states this step reached.
            terminated: (batch,) bool, this step's termination.

        Returns:
            The updated count (batch,) int64, and ``is_success`` (batch,) bool: ``success_frames``
            on-target frames in a row up to now and no termination (a fallen pole never succeeds).
        """
        xp = namespace(state)
        frames_on_target = xp.where(self.on_target(state), frames_on_target + 1, 0)
        return frames_on_target, (frames_on_target >= self.success_frames) & ~terminated

    @property
    def observation_space(self) -> spaces.Box:
        return spaces.Box(0, 255, (1, *self.image_size), np.uint8)

    def observe(self, state: Array) -> Array:
        """(batch, state_dim) -> (batch, 1, height, width) uint8 observations."""
        return self.render(state, *self.image_size)[:, None]


def check_options(options: dict | None, allowed: tuple[str, ...]) -> dict:
    """``options`` as a dict, refusing keys not in ``allowed`` with a message naming them."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown reset options {unknown}; this env takes {list(allowed)}")
    return options


class BatchedPixelEnv(gym.Env):
    """A single Gymnasium env over a :class:`Task` (a batch of one)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, task: Task, render_mode: str | None = None, render_size: int = 256):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.task = task
        self.render_mode = render_mode
        self.render_size = render_size
        self.observation_space = task.observation_space
        self.action_space = task.action_space
        self.state: np.ndarray | None = None
        self.frames_on_target = np.zeros(1, np.int64)  # (1,): consecutive on-target frames since the reset

    def _info(self, is_success: bool) -> dict[str, Any]:
        info = {key: value[0].item() for key, value in self.task.info(self.state).items()}
        info["is_success"] = is_success
        return info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.state = self.task.sample_start(self.np_random, 1, options)
        self.frames_on_target = np.zeros(1, np.int64)  # the reset frame does not count
        return self.task.observe(self.state)[0], self._info(False)

    def step(self, action):
        assert self.state is not None, "call reset() before step()"
        action = np.asarray(action, dtype=self.action_space.dtype)
        assert self.action_space.contains(action), f"action {action!r} is not in {self.action_space}"
        self.state, reward, terminated = self.task.step(self.state, action[None])
        self.frames_on_target, is_success = self.task.track_success(self.frames_on_target, self.state, terminated)
        observation = self.task.observe(self.state)[0]
        return observation, float(reward[0]), bool(terminated[0]), False, self._info(bool(is_success[0]))

    def render(self) -> np.ndarray | None:
        """The current state drawn at ``render_size`` pixels: (size, size, 3) uint8 RGB."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; make the env with render_mode='rgb_array'")
            return None
        assert self.state is not None, "call reset() before render()"
        return upscale_to_rgb(self.task.render(self.state, self.render_size, self.render_size)[0])


class BatchedPixelVectorEnv(VectorEnv):
    """``num_envs`` copies of a :class:`Task` stepped as one batch.

    Autoreset mode is next-step (Gymnasium 1.x's default): the step after an episode ends returns
    the new episode's first observation with reward 0 and both flags false, ignoring its action.
    Episodes are truncated after ``max_episode_steps`` steps. Infos are dicts of (num_envs,) arrays:
    the task's facts and ``is_success`` (bool, see :meth:`Task.track_success`; False at reset and on
    the autoreset step). With ``backend="torch"`` the state,
    observations, rewards, flags and infos are torch tensors on ``device``; start states are
    drawn from ``self.np_random`` for the whole batch every step (so both backends draw the same
    numbers) and copied over. On torch they are drawn ``START_BLOCK`` steps ahead in one draw and one copy (the
    same numbers: a task's ``sample_start`` of ``k * n`` states draws what ``k`` calls of ``n`` do), so a GPU
    batch is not copied to from the host every step.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        task: Task,
        num_envs: int = 1,
        max_episode_steps: int = 100,
        render_mode: str | None = None,
        backend: str = "numpy",
        device: str | None = None,
        render_size: int = 256,
    ):
        if backend not in ("numpy", "torch"):
            raise ValueError(f"backend must be 'numpy' or 'torch', got {backend!r}")
        if num_envs < 1 or max_episode_steps < 1:
            raise ValueError(f"num_envs and max_episode_steps must be >= 1, got {num_envs}, {max_episode_steps}")
        self.task = task
        self.num_envs = num_envs
        self.max_episode_steps = max_episode_steps
        self.render_mode = render_mode
        self.render_size = render_size
        self.backend = backend
        self.device = device
        self.single_observation_space = task.observation_space
        self.single_action_space = task.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.state: Array | None = None
        self.episode_steps: Array | None = None
        self.previous_done: Array | None = None
        self.frames_on_target: Array | None = None  # (num_envs,) int64, consecutive on-target frames
        self._starts: Array | None = None  # torch: (START_BLOCK, num_envs, state_dim) start states drawn ahead
        self._starts_used = 0  # of them
        self._starts_rng_state: dict | None = None  # np_random's state before they were drawn

    def _to_backend(self, array: np.ndarray) -> Array:
        if self.backend == "numpy":
            return array
        import torch

        return torch.as_tensor(array, device=self.device)

    def _next_starts(self) -> Array:
        """The start states of this step's draw: NumPy draws them now; torch takes them from a block drawn ahead."""
        if self.backend == "numpy":
            return self.task.sample_start(self.np_random, self.num_envs, None)
        if self._starts is None or self._starts_used == len(self._starts):
            self._starts_rng_state = self.np_random.bit_generator.state
            block = self.task.sample_start(self.np_random, START_BLOCK * self.num_envs, None)
            self._starts = self._to_backend(block.reshape(START_BLOCK, self.num_envs, -1))
            self._starts_used = 0
        self._starts_used += 1
        return self._starts[self._starts_used - 1]

    def _drop_starts_drawn_ahead(self) -> None:
        """Put np_random back where step-by-step draws would have left it (torch's block drew ahead)."""
        if self._starts is not None:
            self.np_random.bit_generator.state = self._starts_rng_state
            if self._starts_used:
                self.task.sample_start(self.np_random, self._starts_used * self.num_envs, None)
        self._starts, self._starts_used = None, 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None:
            self._drop_starts_drawn_ahead()
        self._starts, self._starts_used = None, 0
        super().reset(seed=seed)
        self.state = self._to_backend(self.task.sample_start(self.np_random, self.num_envs, options))
        self.episode_steps = self._to_backend(np.zeros(self.num_envs, dtype=np.int64))
        self.previous_done = self._to_backend(np.zeros(self.num_envs, dtype=bool))
        self.frames_on_target = self._to_backend(np.zeros(self.num_envs, dtype=np.int64))
        info = self.task.info(self.state)
        info["is_success"] = false_like(self.episode_steps)
        return self.task.observe(self.state), info

    def step(self, actions):
        assert self.state is not None, "call reset() before step()"
        if self.backend == "numpy":
            actions = np.asarray(actions, dtype=self.single_action_space.dtype)
        elif isinstance(actions, np.ndarray):
            actions = self._to_backend(actions)
        assert tuple(actions.shape) == self.action_space.shape, (
            f"actions must have shape {self.action_space.shape}, got {tuple(actions.shape)}"
        )
        xp = namespace(self.state)
        state, reward, terminated = self.task.step(self.state, actions)
        # CRUCIAL (next-step autoreset): envs whose episode ended on the previous step start anew
        # now; their action is ignored and they report reward 0 and no termination.
        restart = self.previous_done
        self.episode_steps = xp.where(restart, 0, self.episode_steps + 1)
        starts = self._next_starts()
        self.state = xp.where(restart[:, None], starts, state)
        reward = xp.where(restart, 0.0 * reward, reward)
        terminated = terminated & ~restart
        truncated = self.episode_steps >= self.max_episode_steps
        self.previous_done = terminated | truncated
        frames_on_target, is_success = self.task.track_success(self.frames_on_target, self.state, terminated)
        # A restarted env shows its new episode's reset frame, which does not count towards success.
        self.frames_on_target = xp.where(restart, 0, frames_on_target)
        info = self.task.info(self.state)
        info["is_success"] = is_success & ~restart
        return self.task.observe(self.state), reward, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        """Every env's state drawn at ``render_size`` pixels: (num_envs, size, size, 3) uint8."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; make the env with render_mode='rgb_array'")
            return None
        assert self.state is not None, "call reset() before render()"
        state = self.state if self.backend == "numpy" else self.state.cpu().numpy()
        frames = self.task.render(state, self.render_size, self.render_size)
        return np.repeat(frames[..., None], 3, axis=3)


def false_like(array: Array) -> Array:
    """All-false bool array of ``array``'s shape, backend and device."""
    if isinstance(array, np.ndarray):
        return np.zeros(array.shape, dtype=bool)
    import torch

    return torch.zeros(array.shape, dtype=torch.bool, device=array.device)


def zeros_like_frames(shape: tuple[int, int, int], like: Array) -> Array:
    """Black uint8 frames of ``shape`` on the backend and device of ``like``."""
    if isinstance(like, np.ndarray):
        return np.zeros(shape, np.uint8)
    return _torch_zeros(shape, like)


def _torch_zeros(shape: tuple[int, ...], like: Array) -> Array:
    import torch

    return torch.zeros(shape, dtype=torch.uint8, device=like.device)
