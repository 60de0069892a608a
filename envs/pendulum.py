"""Pendulum swing-up from pixels: Gymnasium Pendulum-v1 physics, batched, observed as small images.

env = gymnasium.make("pixelpilot/Pendulum-v0")                        # (1, 40, 40) uint8
vec = PixelPendulumVectorEnv(num_envs=4096, backend="torch", device="cuda")
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from envs import raster
from envs.batched import (
    SUCCESS_ANGLE,
    SUCCESS_FRAMES,
    Array,
    BatchedPixelEnv,
    BatchedPixelVectorEnv,
    Task,
    angle_normalize,
    check_options,
    false_like,
    namespace,
    within_success_angle,
    zeros_like_frames,
)

__all__ = [
    "PendulumTask",
    "PixelPendulumEnv",
    "PixelPendulumVectorEnv",
    "angle_normalize",
    "is_success",
    "render_pendulum",
]

# Pendulum-v1's constants (gymnasium/envs/classic_control/pendulum.py).
GRAVITY = 10.0
MASS = 1.0
LENGTH = 1.0
TIME_STEP = 0.05
MAX_SPEED = 8.0
MAX_TORQUE = 2.0
TORQUE_COST = 0.001

# Drawing, as fractions of the image size: the pivot at the centre, the pole 0.4 long and
# 0.1 thick, so its rounded tip stays inside the frame.
POLE_LENGTH = 0.4
POLE_RADIUS = 0.05


def is_success(angles: Array, angle: float = SUCCESS_ANGLE, frames: int = SUCCESS_FRAMES) -> np.ndarray:
    """Whether each trial ends held upright: ``|angle| <= 20 deg`` in each of its last 20 frames.

    The envs' ``info["is_success"]`` follows the same rule step by step (with the angles after each
    step; the reset frame is not one of a trial's frames).

    Args:
        angles: (time,) or (batch, time) pole angles in radians (0 = upright, any winding).

    Returns:
        () or (batch,) bool; False for trials shorter than ``frames``.
    """
    angles = np.asarray(angles, dtype=np.float64)
    if angles.shape[-1] < frames:
        return np.zeros(angles.shape[:-1], dtype=bool)
    return np.all(np.abs(angle_normalize(angles[..., -frames:])) <= angle, axis=-1)


def render_pendulum(angles: Array, image_size: int = 40) -> Array:
    """Draw pendulums at ``angles`` (batch,) radians: (batch, image_size, image_size) uint8.

    A white pole on black, pivot at the centre; angle 0 points up, pi down, positive angles turn
    counter-clockwise (the tip moves left), as in Gymnasium's pendulum renderer.
    """
    xp = namespace(angles)
    centre = image_size / 2.0
    pole = POLE_LENGTH * image_size
    pivot = xp.full_like(angles, centre)
    frames = zeros_like_frames((angles.shape[0], image_size, image_size), angles)
    tip_x = centre - pole * xp.sin(angles)
    tip_y = centre - pole * xp.cos(angles)
    return raster.draw_capsule(frames, pivot, pivot, tip_x, tip_y, POLE_RADIUS * image_size)


class PendulumTask(Task):
    """Batched pendulum core. State (batch, 2) float64: angle (0 = upright, pi = hanging, not
    wrapped, exactly as Pendulum-v1 keeps it) and angular velocity (rad/s)."""

    state_dim = 2

    def __init__(
        self,
        image_size: int = 40,
        gravity: float = GRAVITY,
        velocity_cost: float = 0.0,
        start_noise: float = 0.05,
    ):
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
        self.image_size = (image_size, image_size)
        self.gravity = gravity
        self.velocity_cost = velocity_cost
        self.start_noise = start_noise
        self.action_space = spaces.Box(-MAX_TORQUE, MAX_TORQUE, (1,), np.float32)

    def sample_start(self, rng: np.random.Generator, count: int, options: dict | None) -> np.ndarray:
        """Hanging down with a little noise: angle ``pi + U(-n, n)``, velocity ``U(-n, n)``,
        ``n = start_noise``; ``options={"angle": a, "angular_velocity": w}`` (scalars or (count,))
        set them instead."""
        options = check_options(options, ("angle", "angular_velocity"))
        noise = rng.uniform(-self.start_noise, self.start_noise, size=(count, 2))
        state = noise + np.array([np.pi, 0.0])
        for column, key in enumerate(("angle", "angular_velocity")):
            if key in options:
                state[:, column] = np.broadcast_to(np.asarray(options[key], dtype=np.float64), (count,))
        return state

    def step(self, state: Array, action: Array) -> tuple[Array, Array, Array]:
        """Pendulum-v1's semi-implicit Euler step and its reward for the state the torque is
        applied in (as Pendulum-v1), with ``velocity_cost`` in place of its fixed 0.1."""
        xp = namespace(state)
        angle, velocity = state[:, 0], state[:, 1]
        torque = xp.clip(action[:, 0].to(state.dtype) if xp is not np else action[:, 0], -MAX_TORQUE, MAX_TORQUE)
        cost = angle_normalize(angle) ** 2 + self.velocity_cost * velocity**2 + TORQUE_COST * torque**2
        acceleration = 3 * self.gravity / (2 * LENGTH) * xp.sin(angle) + 3.0 / (MASS * LENGTH**2) * torque
        velocity = xp.clip(velocity + acceleration * TIME_STEP, -MAX_SPEED, MAX_SPEED)
        angle = angle + velocity * TIME_STEP
        reward = -cost
        reward = reward.astype(np.float32) if xp is np else reward.float()
        return xp.stack([angle, velocity], 1), reward, false_like(angle)  # never terminates

    def render(self, state: Array, height: int, width: int) -> Array:
        assert height == width, f"pendulum frames are square, got {height}x{width}"
        angles = state[:, 0]
        return render_pendulum(angles.astype(np.float32) if namespace(state) is np else angles.float(), height)

    def info(self, state: Array) -> dict[str, Array]:
        """``angle`` wrapped to [-pi, pi) (0 = upright), ``angular_velocity``, and ``upright``
        (within 20 degrees of upright)."""
        return {
            "angle": angle_normalize(state[:, 0]),
            "angular_velocity": state[:, 1],
            "upright": within_success_angle(state[:, 0]),
        }

    def on_target(self, state: Array) -> Array:
        """(batch, 2) -> (batch,) bool: the pole within 20 degrees of upright."""
        return within_success_angle(state[:, 0])


_DOC_SECTIONS = """
    ## Description
    The torque-limited pendulum swing-up of Assael, Wahlstrom, Schon and Deisenroth (2015): the
    pendulum starts hanging down and must be swung up and held upright, seen only as small
    grayscale images. Physics are Gymnasium Pendulum-v1's exactly (g = 10, m = 1, l = 1,
    dt = 0.05 s, max torque 2, max speed 8, the same semi-implicit Euler step). The angle
    convention is Pendulum-v1's too: 0 is upright, pi hanging, positive counter-clockwise.

    ## Action Space
    ``Box(-2.0, 2.0, (1,), float32)``: the torque applied at the pivot (clipped to the bounds).

    ## Observation Space
    ``Box(0, 255, (1, image_size, image_size), uint8)``: a white pole on black, pivot at the
    centre, anti-aliased (default 40x40).

    ## Rewards
    ``-(angle^2 + velocity_cost * angular_velocity^2 + 0.001 * torque^2)`` for the state the
    torque is applied in (as Pendulum-v1, which uses ``velocity_cost = 0.1``), angle wrapped to
    [-pi, pi). Between -(pi^2 + 0.004 + 64 velocity_cost) and 0.

    ## Starting State
    Hanging down: angle ``pi + U(-0.05, 0.05)``, angular velocity ``U(-0.05, 0.05)``
    (``start_noise``). ``reset(options={"angle": a, "angular_velocity": w})`` sets them exactly.

    ## Episode End
    Never terminates. Truncated after 100 steps (the registered ``max_episode_steps``; the vector
    env's ``max_episode_steps`` argument). An episode is a success when the pole is within 20
    degrees of upright (``|angle| <= 20 deg``) in each of its last 20 frames (the states after its
    steps; the reset frame does not count), the rule of :func:`envs.pendulum.is_success`.
    ``info["is_success"]`` applies it on every step: on the last step it says whether the episode
    succeeded, on any other whether it would if it ended there (False at reset).

    ``info``: ``angle`` (wrapped, 0 = upright), ``angular_velocity``, ``upright`` (this frame within
    20 degrees), ``is_success``.

    ## Arguments
    - ``image_size`` (40): side of the square observation in pixels.
    - ``gravity`` (10.0), ``velocity_cost`` (0.0), ``start_noise`` (0.05 rad and rad/s).
    - ``render_mode`` (None or "rgb_array"): ``render()`` draws the state at ``render_size``
      (256) pixels as RGB.

    ## Version History
    - v0: initial version.
"""


class PixelPendulumEnv(BatchedPixelEnv):
    __doc__ = "Pendulum swing-up from pixels (single env).\n" + _DOC_SECTIONS

    def __init__(
        self,
        render_mode: str | None = None,
        image_size: int = 40,
        gravity: float = GRAVITY,
        velocity_cost: float = 0.0,
        start_noise: float = 0.05,
        render_size: int = 256,
    ):
        super().__init__(PendulumTask(image_size, gravity, velocity_cost, start_noise), render_mode, render_size)


class PixelPendulumVectorEnv(BatchedPixelVectorEnv):
    __doc__ = (
        "Pendulum swing-up from pixels, ``num_envs`` at once (observations (num_envs, 1, H, W)).\n"
        + _DOC_SECTIONS
        + """
    Vector arguments: ``num_envs``, ``max_episode_steps`` (100), ``backend`` ("numpy" or "torch")
    and ``device`` (for torch, e.g. "cuda"). Autoreset mode: next step. Infos are dicts of arrays.
"""
    )

    def __init__(
        self,
        num_envs: int = 1,
        max_episode_steps: int = 100,
        render_mode: str | None = None,
        image_size: int = 40,
        gravity: float = GRAVITY,
        velocity_cost: float = 0.0,
        start_noise: float = 0.05,
        backend: str = "numpy",
        device: str | None = None,
        render_size: int = 256,
    ):
        super().__init__(
            PendulumTask(image_size, gravity, velocity_cost, start_noise),
            num_envs,
            max_episode_steps,
            render_mode,
            backend,
            device,
            render_size,
        )
