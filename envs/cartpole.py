"""Cart-pole from pixels, balance and swing-up: Gymnasium CartPole-v1 physics, batched, observed
as small images.

    env = gymnasium.make("pixelpilot/CartPoleSwingUp-v0")                 # (1, 64, 64) uint8
    vec = PixelCartPoleVectorEnv(num_envs=1024, task="balance", continuous=False)
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from envs import raster
from envs.batched import (
    Array,
    BatchedPixelEnv,
    BatchedPixelVectorEnv,
    Task,
    angle_normalize,
    check_options,
    namespace,
    within_success_angle,
    zeros_like_frames,
)

__all__ = ["CartPoleTask", "PixelCartPoleEnv", "PixelCartPoleVectorEnv", "render_cartpole"]

# CartPole-v1's constants (gymnasium/envs/classic_control/cartpole.py).
GRAVITY = 9.8
CART_MASS = 1.0
POLE_MASS = 0.1
TOTAL_MASS = CART_MASS + POLE_MASS
HALF_POLE_LENGTH = 0.5
POLE_MASS_LENGTH = POLE_MASS * HALF_POLE_LENGTH
FORCE_MAG = 10.0
TIME_STEP = 0.02
ANGLE_THRESHOLD = 12 * 2 * np.pi / 360
X_THRESHOLD = 2.4

TASKS = ("balance", "swingup")
REWARDS = ("task", "tip", "upright", "dmc")
# Swing-up reward: pole height in [0, 1] minus this times (x / X_THRESHOLD)^2 (the ``position_cost`` argument).
CART_POSITION_COST = 0.1
# The "tip" reward (PILCO's saturating cost, Deisenroth & Rasmussen 2011): exp(-d^2 / (2 TIP_WIDTH^2)), d the
# distance of the pole's tip from where it is when the pole stands upright over the track's centre.
TIP_WIDTH = 0.25
# The "upright" reward: exp(-angle^2 / (2 UPRIGHT_ANGLE_WIDTH^2) - x^2 / (2 UPRIGHT_X_WIDTH^2)), the angle wrapped.
# Near upright the tip's distance hardly sees the angle (a 12-degree lean lowers the tip by 2 cm, and a cart
# pushed away from the lean keeps the tip over the centre while the pole falls); this one weighs a 6-degree lean
# as a cart 1 m off centre.
UPRIGHT_ANGLE_WIDTH = 0.1  # rad, about 6 degrees
UPRIGHT_X_WIDTH = 1.0  # m
# The "dmc" reward, DeepMind Control's cart-pole swing-up reward less its control factor (Tassa et al. 2018):
# (1 + cos) / 2 * (1 + centred) / 2 * (1 + slow) / 2, centred and slow Gaussians of x and the angular velocity
# that fall to 0.1 at these margins; a pole spun through the top scores about half of one held there.
DMC_X_MARGIN = 2.0  # m
DMC_VELOCITY_MARGIN = 5.0  # rad/s

# Drawing: the image shows the track +-VIEW_HALF_WIDTH metres wide, the cart's centre on the
# track at mid-height, so the pole fits above (balance) and below (swing-up).
VIEW_HALF_WIDTH = 1.25 * X_THRESHOLD
CART_WIDTH = 0.6
CART_HEIGHT = 0.35
POLE_RADIUS = 0.1  # metres: a pole about 2 pixels thick at 64x64
TRACK_LEVEL, CART_LEVEL, POLE_LEVEL = 90, 170, 255


def render_cartpole(x: Array, angle: Array, height: int = 64, width: int = 64) -> Array:
    """Draw cart-poles: (batch,) cart positions (m) and pole angles (rad, 0 = upright, positive
    = tip to the right, as CartPole-v1) -> (batch, height, width) uint8.

    A grey track line, a lighter cart box and a white pole capsule on black.
    """
    xp = namespace(x)
    scale = width / (2 * VIEW_HALF_WIDTH)  # pixels per metre
    frames = zeros_like_frames((x.shape[0], height, width), x)
    centre_x = width / 2 + x * scale
    centre_y = xp.full_like(x, height / 2)
    track_half = max(0.5, 0.01 * height)
    left, right = xp.zeros_like(x), xp.full_like(x, width)
    raster.draw_box(frames, left, centre_y - track_half, right, centre_y + track_half, TRACK_LEVEL)
    half_w, half_h = CART_WIDTH / 2 * scale, CART_HEIGHT / 2 * scale
    raster.draw_box(frames, centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h, CART_LEVEL)
    pole = 2 * HALF_POLE_LENGTH * scale
    tip_x = centre_x + pole * xp.sin(angle)
    tip_y = centre_y - pole * xp.cos(angle)
    return raster.draw_capsule(frames, centre_x, centre_y, tip_x, tip_y, POLE_RADIUS * scale, POLE_LEVEL)


class CartPoleTask(Task):
    """Batched cart-pole core. State (batch, 4) float64: cart position (m), cart velocity (m/s),
    pole angle (rad, 0 = upright, not wrapped), pole angular velocity (rad/s)."""

    state_dim = 4

    def __init__(
        self,
        task: str = "balance",
        continuous: bool = True,
        image_size: int = 64,
        substeps: int | None = None,
        start_noise: float = 0.05,
        reward: str = "task",
        position_cost: float = CART_POSITION_COST,
        action_repeat: int = 1,
    ):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
        self.reward = reward
        if not position_cost >= 0:
            raise ValueError(f"position_cost must be >= 0, got {position_cost}")
        self.position_cost = position_cost
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
        self.task = task
        self.continuous = continuous
        self.image_size = (image_size, image_size)
        # Swing-up spins the pole fast, where one explicit Euler step of 0.02 s gains energy;
        # four substeps keep it stable. Balance keeps CartPole-v1's single step.
        self.substeps = substeps if substeps is not None else (1 if task == "balance" else 4)
        if self.substeps < 1:
            raise ValueError(f"substeps must be >= 1, got {self.substeps}")
        # PlaNet's and Dreamer's action repeat: one action held for several 0.02 s steps, one frame seen. A model
        # step then spans more time, so a plan of a given length looks further ahead through fewer model steps.
        if action_repeat < 1:
            raise ValueError(f"action_repeat must be >= 1, got {action_repeat}")
        self.action_repeat = action_repeat
        self.start_noise = start_noise
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32) if continuous else spaces.Discrete(2)

    def sample_start(self, rng: np.random.Generator, count: int, options: dict | None) -> np.ndarray:
        """Every variable ``U(-n, n)`` (``n = start_noise``), the pole upright for balance and
        hanging (angle pi) for swing-up; ``options`` keys ``x``, ``x_velocity``, ``angle``,
        ``angular_velocity`` (scalars or (count,)) set them instead."""
        keys = ("x", "x_velocity", "angle", "angular_velocity")
        options = check_options(options, keys)
        state = rng.uniform(-self.start_noise, self.start_noise, size=(count, 4))
        if self.task == "swingup":
            state[:, 2] += np.pi
        for column, key in enumerate(keys):
            if key in options:
                state[:, column] = np.broadcast_to(np.asarray(options[key], dtype=np.float64), (count,))
        return state

    def force(self, action: Array) -> Array:
        """Actions (batch, 1) in [-1, 1] or (batch,) in {0, 1} -> force on the cart (batch,) N."""
        xp = namespace(action)
        if self.continuous:
            return xp.clip(action[:, 0], -1.0, 1.0) * FORCE_MAG
        return (action * 2 - 1) * FORCE_MAG

    def step(self, state: Array, action: Array) -> tuple[Array, Array, Array]:
        """CartPole-v1's equations of motion and explicit Euler integration, in ``substeps``, for
        ``action_repeat`` steps of 0.02 s: the rewards summed up to the step that ends the episode, and the
        state it ended in."""
        xp = namespace(state)
        force = self.force(action)
        force = force.astype(np.float64) if xp is np else force.to(state.dtype)
        state, reward, terminated = self._step_once(state, force)
        for _ in range(self.action_repeat - 1):
            next_state, step_reward, step_terminated = self._step_once(state, force)
            # an episode that ended keeps the state it ended in (its last frame shows where it ended)
            state = xp.where(terminated[:, None], state, next_state)
            reward = reward + xp.where(terminated, 0.0, step_reward)
            terminated = terminated | step_terminated
        return state, reward, terminated

    def _step_once(self, state: Array, force: Array) -> tuple[Array, Array, Array]:
        xp = namespace(state)
        x, x_velocity, angle, angular_velocity = (state[:, i] for i in range(4))
        dt = TIME_STEP / self.substeps
        for _ in range(self.substeps):
            sin, cos = xp.sin(angle), xp.cos(angle)
            temp = (force + POLE_MASS_LENGTH * angular_velocity**2 * sin) / TOTAL_MASS
            angular_acceleration = (GRAVITY * sin - cos * temp) / (
                HALF_POLE_LENGTH * (4.0 / 3.0 - POLE_MASS * cos**2 / TOTAL_MASS)
            )
            acceleration = temp - POLE_MASS_LENGTH * angular_acceleration * cos / TOTAL_MASS
            x = x + dt * x_velocity
            x_velocity = x_velocity + dt * acceleration
            angle = angle + dt * angular_velocity
            angular_velocity = angular_velocity + dt * angular_acceleration
        off_track = (x < -X_THRESHOLD) | (x > X_THRESHOLD)
        if self.task == "balance":
            terminated = off_track | (angle < -ANGLE_THRESHOLD) | (angle > ANGLE_THRESHOLD)
            reward = x * 0 + 1.0
        else:
            terminated = off_track
            reward = 0.5 * (1 + xp.cos(angle)) - self.position_cost * (x / X_THRESHOLD) ** 2
        if self.reward == "tip":
            pole = 2 * HALF_POLE_LENGTH
            distance2 = (x + pole * xp.sin(angle)) ** 2 + (pole * (1 - xp.cos(angle))) ** 2
            reward = xp.exp(-distance2 / (2 * TIP_WIDTH**2))
        elif self.reward == "upright":
            reward = xp.exp(-angle_normalize(angle) ** 2 / (2 * UPRIGHT_ANGLE_WIDTH**2)
                            - x**2 / (2 * UPRIGHT_X_WIDTH**2))
        elif self.reward == "dmc":
            centred = 0.1 ** ((x / DMC_X_MARGIN) ** 2)  # DMC's Gaussian tolerance: 0.1 at the margin
            slow = 0.1 ** ((angular_velocity / DMC_VELOCITY_MARGIN) ** 2)
            reward = 0.5 * (1 + xp.cos(angle)) * 0.5 * (1 + centred) * 0.5 * (1 + slow)
        reward = reward.astype(np.float32) if xp is np else reward.float()
        return xp.stack([x, x_velocity, angle, angular_velocity], 1), reward, terminated

    def render(self, state: Array, height: int, width: int) -> Array:
        as_float32 = (lambda v: v.astype(np.float32)) if namespace(state) is np else (lambda v: v.float())
        return render_cartpole(as_float32(state[:, 0]), as_float32(state[:, 2]), height, width)

    def info(self, state: Array) -> dict[str, Array]:
        """``x``, ``x_velocity``, ``angle`` (wrapped to [-pi, pi), 0 = upright), ``angular_velocity``."""
        return {
            "x": state[:, 0],
            "x_velocity": state[:, 1],
            "angle": angle_normalize(state[:, 2]),
            "angular_velocity": state[:, 3],
        }

    def on_target(self, state: Array) -> Array:
        """(batch, 4) -> (batch,) bool: the pole within 20 degrees of upright."""
        return within_success_angle(state[:, 2])


_DOC_SECTIONS = """
    ## Description
    A pole hinged on a cart that moves along a track, seen only as small grayscale images.
    Physics are Gymnasium CartPole-v1's (gravity 9.8, cart 1 kg, pole 0.1 kg and 1 m long,
    force 10 N, 0.02 s explicit Euler steps). Two tasks: ``"balance"`` keeps the pole upright;
    ``"swingup"`` starts it hanging down and must swing it up and hold it (integrated in 4
    substeps of 0.005 s for stability).

    ## Action Space
    ``continuous=True`` (default): ``Box(-1.0, 1.0, (1,), float32)``, the force as a fraction of
    10 N (clipped). ``continuous=False``: ``Discrete(2)``, 0 pushes left and 1 right with 10 N.

    ## Observation Space
    ``Box(0, 255, (1, image_size, image_size), uint8)`` (default 64x64): track line (grey 90),
    cart (170) and pole (255) on black, the track +-3 m across the image.

    ## Rewards
    ``reward="task"`` (default): ``"balance"``, 1 per step, including the last (CartPole-v1's);
    ``"swingup"``, the pole's height ``(1 + cos(angle)) / 2`` minus ``position_cost * (x / 2.4)^2``
    (``position_cost`` 0.1 unless given), between ``-position_cost`` and 1. ``reward="tip"``, either
    task: PILCO's saturating reward ``exp(-d^2 / (2 * 0.25^2))``,
    ``d`` the distance (m) of the pole's tip from its place when upright over the track's centre,
    in (0, 1]: it tells a learned model how far from the goal a state is, where 1 per step tells it
    only when the episode ends. ``reward="upright"``: ``exp(-angle^2 / (2 * 0.1^2) - x^2 / 2)``
    (angle in rad, wrapped; x in m), in (0, 1]: near upright the tip's distance hardly changes with
    the angle (a 12-degree lean lowers the tip by 2 cm), this one falls to 0.14 at 12 degrees.
    ``reward="dmc"``: DeepMind Control's swing-up reward less its control factor, ``(1 + cos) / 2 *
    (1 + c(x)) / 2 * (1 + c(w)) / 2``, ``c`` Gaussians falling to 0.1 at 2 m and at 5 rad/s of the
    pole's angular velocity ``w``, in [0, 1]: a pole spun through the top scores about half of one
    held there, where the height reward pays a spin as well as a hold over a swing.

    ## Starting State
    Each of x, x velocity, angle and angular velocity ``U(-0.05, 0.05)`` (``start_noise``), plus
    pi on the angle for ``"swingup"``. ``reset(options={...})`` with keys ``x``, ``x_velocity``,
    ``angle``, ``angular_velocity`` sets them exactly.

    ## Episode End
    Terminated when the cart leaves the track (``|x| > 2.4``) and, for ``"balance"``, when the
    pole falls past 12 degrees. Truncated after 500 steps (the registered
    ``max_episode_steps``; the vector env's ``max_episode_steps`` argument). An episode is a
    success when the pole is within 20 degrees of upright (``|angle| <= 20 deg``) in each of its
    last 20 frames (the states after its steps; the reset frame does not count) and its last step
    did not terminate, the rule of :func:`envs.pendulum.is_success` plus that.
    ``info["is_success"]`` applies it on every step: on the last step it says whether the episode
    succeeded, on any other whether it would if it ended there (False at reset, and False on a
    terminating step even when the pole fell only past 12 degrees).

    ``info``: ``x``, ``x_velocity``, ``angle`` (wrapped, 0 = upright), ``angular_velocity``,
    ``is_success``.

    ## Arguments
    - ``task`` ("balance" or "swingup"), ``continuous`` (True), ``image_size`` (64),
      ``substeps`` (1 for balance, 4 for swing-up), ``start_noise`` (0.05), ``reward`` ("task", "tip"
      or "upright"), ``position_cost`` (0.1: the swing-up task reward's cost of the cart's distance from the
      centre; a larger one tells a learned reward of the track's end on every frame, not only the last),
      ``action_repeat`` (1: each action is held for this many 0.02 s steps and one frame is seen after
      them, the rewards summed up to the step that ends the episode; ``max_episode_steps`` and the
      success rule's 20 frames count the steps seen).
    - ``render_mode`` (None or "rgb_array"): ``render()`` draws the state at ``render_size``
      (256) pixels as RGB.

    ## Version History
    - v0: initial version.
"""


class PixelCartPoleEnv(BatchedPixelEnv):
    __doc__ = "Cart-pole balance or swing-up from pixels (single env).\n" + _DOC_SECTIONS
    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(
        self,
        task: str = "balance",
        render_mode: str | None = None,
        continuous: bool = True,
        image_size: int = 64,
        substeps: int | None = None,
        start_noise: float = 0.05,
        render_size: int = 256,
        reward: str = "task",
        position_cost: float = CART_POSITION_COST,
        action_repeat: int = 1,
    ):
        super().__init__(CartPoleTask(task, continuous, image_size, substeps, start_noise, reward, position_cost,
                                      action_repeat), render_mode, render_size)
        self.metadata = {**self.metadata, "render_fps": self.metadata["render_fps"] / action_repeat}


class PixelCartPoleVectorEnv(BatchedPixelVectorEnv):
    __doc__ = (
        "Cart-pole balance or swing-up from pixels, ``num_envs`` at once.\n"
        + _DOC_SECTIONS
        + """
    Vector arguments: ``num_envs``, ``max_episode_steps`` (500), ``backend`` ("numpy" or "torch")
    and ``device``. Autoreset mode: next step. Infos are dicts of arrays.
"""
    )
    metadata = {**BatchedPixelVectorEnv.metadata, "render_fps": 50}

    def __init__(
        self,
        num_envs: int = 1,
        task: str = "balance",
        max_episode_steps: int = 500,
        render_mode: str | None = None,
        continuous: bool = True,
        image_size: int = 64,
        substeps: int | None = None,
        start_noise: float = 0.05,
        backend: str = "numpy",
        device: str | None = None,
        render_size: int = 256,
        reward: str = "task",
        position_cost: float = CART_POSITION_COST,
        action_repeat: int = 1,
    ):
        super().__init__(
            CartPoleTask(task, continuous, image_size, substeps, start_noise, reward, position_cost, action_repeat),
            num_envs,
            max_episode_steps,
            render_mode,
            backend,
            device,
            render_size,
        )
        self.metadata = {**self.metadata, "render_fps": self.metadata["render_fps"] / action_repeat}
