"""Other people's environments as pixelpilot pixel envs: any rendered Gymnasium env, Atari, MinAtar.

Every env made here returns ``uint8`` channel-first observations ``(C, H, W)``, like the rest of
``envs/``. Wrapping is done with Gymnasium's own wrappers; only MinAtar, which has no Gymnasium env
with channel-first images and Gymnasium seeding, gets a class of its own (and :class:`HeadlessRender`
keeps pygame's renderers quiet on machines without a desktop).

    import gymnasium as gym
    import envs  # noqa: F401  (registers pixelpilot/...)

    gym.make("pixelpilot/Pixels-v0", env_id="Acrobot-v1", image_size=48)   # (1, 48, 48)
    gym.make("pixelpilot/Atari-v0", game="space_invaders")                # (4, 84, 84)
    gym.make("pixelpilot/MinAtar-Breakout-v0")                            # (4, 10, 10)
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.wrappers import (
    AddRenderObservation,
    AtariPreprocessing,
    FrameStackObservation,
    GrayscaleObservation,
    ReshapeObservation,
    ResizeObservation,
    TransformObservation,
)

# Module names in minatar.environments; envs.MINATAR_GAMES holds the matching registered names.
MINATAR_GAME_MODULES = ("asterix", "breakout", "freeway", "seaquest", "space_invaders")


@contextmanager
def headless_sdl_video() -> Iterator[None]:
    """Inside the block, SDL's video starts without looking for a desktop on a machine that has none.

    Gymnasium's pygame renderers (classic control, Box2D, toy text) call ``pygame.display.init()`` even
    for ``rgb_array`` frames, which they draw on plain surfaces. Without a desktop SDL then tries X11
    and Wayland in turn, and Wayland's client library prints ``error: XDG_RUNTIME_DIR is invalid or not
    set in the environment`` on the terminal. So where neither DISPLAY nor WAYLAND_DISPLAY is set (and
    the user chose no SDL_VIDEODRIVER), SDL_VIDEODRIVER is "dummy" for the block only: a viewer window
    opened later still finds the desktop, or reports that there is none.
    """
    if any(os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")):
        yield
        return
    previous = os.environ.get("SDL_VIDEODRIVER")  # None, or set but empty
    os.environ["SDL_VIDEODRIVER"] = "dummy"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["SDL_VIDEODRIVER"]
        else:
            os.environ["SDL_VIDEODRIVER"] = previous


class HeadlessRender(gym.Wrapper):
    """Renders the wrapped env inside :func:`headless_sdl_video`, so a pygame renderer starting SDL's
    video on its first frame prints nothing on a machine without a desktop."""

    def render(self) -> Any:
        with headless_sdl_video():
            return self.env.render()


def _channels_first(image: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` -> ``(C, H, W)``, contiguous so later stacking and ``torch.from_numpy`` stay cheap."""
    return np.ascontiguousarray(np.moveaxis(image, -1, 0))


def pixel_wrappers(
    env: gym.Env,
    image_size: int | tuple[int, int] = 64,
    grayscale: bool = True,
    frame_stack: int = 1,
) -> gym.Env:
    """Replace an env's observations with its rendered frames, as ``uint8`` ``(frame_stack * C, H, W)``.

    Args:
        env: any env made with ``render_mode="rgb_array"``; its own observations are discarded.
        image_size: output ``(height, width)``, or one int for a square image.
        grayscale: one luminance channel (``C = 1``) instead of RGB (``C = 3``).
        frame_stack: number of consecutive frames stacked along the channel axis, oldest first;
            after a reset the stack is filled with copies of the first frame.

    Returns:
        The wrapped env; ``observation_space`` is ``Box(0, 255, (frame_stack * C, H, W), uint8)``.
    """
    if env.render_mode != "rgb_array":
        raise ValueError(
            f"pixel_wrappers needs an env made with render_mode='rgb_array', got {env.render_mode!r}: "
            "make it with gymnasium.make(env_id, render_mode='rgb_array')."
        )
    if frame_stack < 1:
        raise ValueError(f"frame_stack must be >= 1, got {frame_stack}")
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)

    env = AddRenderObservation(HeadlessRender(env), render_only=True)
    if grayscale:
        env = GrayscaleObservation(env, keep_dim=True)
    env = ResizeObservation(env, (height, width))
    channels = env.observation_space.shape[-1]
    env = TransformObservation(
        env,
        _channels_first,
        spaces.Box(0, 255, (channels, height, width), np.uint8),
    )
    if frame_stack > 1:
        env = FrameStackObservation(env, frame_stack)
        env = ReshapeObservation(env, (frame_stack * channels, height, width))
    # Observations are the rgb_array renders, so "human" rendering of the inner env cannot be used.
    env.metadata = {**env.metadata, "render_modes": ["rgb_array"]}
    return env


def make_pixel_env(
    env_id: str = "CartPole-v1",
    image_size: int | tuple[int, int] = 64,
    grayscale: bool = True,
    frame_stack: int = 1,
    render_mode: str = "rgb_array",
    **env_kwargs: Any,
) -> gym.Env:
    """Make any Gymnasium env with ``rgb_array`` rendering learnable from pixels (``pixelpilot/Pixels-v0``).

    Args:
        env_id: the Gymnasium id of the env to wrap (its registered time limit is kept).
        image_size, grayscale, frame_stack: see :func:`pixel_wrappers`.
        render_mode: must be ``"rgb_array"``: the observations are the renders. ``env.render()``
            returns the full-size colour frame for viewers.
        **env_kwargs: passed to ``gymnasium.make(env_id, ...)``.

    Returns:
        An env with observations ``uint8`` ``(frame_stack * C, H, W)``, ``C`` = 1 gray or 3 RGB.
    """
    if render_mode != "rgb_array":
        raise ValueError(
            f"pixelpilot/Pixels-v0 observes the rgb_array renders, so render_mode must be 'rgb_array', "
            f"got {render_mode!r}; show env.render() frames to watch it."
        )
    env = gym.make(env_id, render_mode=render_mode, **env_kwargs)
    return pixel_wrappers(env, image_size=image_size, grayscale=grayscale, frame_stack=frame_stack)


def atari_env_id(game: str) -> str:
    """``"space_invaders"`` -> ``"ALE/SpaceInvaders-v5"``; ValueError naming close matches if unknown."""
    import ale_py
    from ale_py.registration import rom_id_to_name
    from ale_py.roms import get_all_rom_ids

    gym.register_envs(ale_py)
    games = [rom for rom in get_all_rom_ids() if f"ALE/{rom_id_to_name(rom)}-v5" in gym.registry]
    if game not in games:
        close = difflib.get_close_matches(game.lower(), games, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"Unknown Atari game {game!r}: use the snake_case ROM id.{hint} "
            f"Valid games include {', '.join(games[:8])}, ... ({len(games)} in all)."
        )
    return f"ALE/{rom_id_to_name(game)}-v5"


def make_atari_env(
    game: str = "pong",
    frame_skip: int = 4,
    screen_size: int = 84,
    noop_max: int = 30,
    frame_stack: int = 4,
    terminal_on_life_loss: bool = False,
    full_action_space: bool = False,
    repeat_action_probability: float = 0.25,
    **kwargs: Any,
) -> gym.Env:
    """An ALE Atari game with the standard DQN preprocessing (``pixelpilot/Atari-v0``).

    ``ALE/<Game>-v5`` is made without its own frame skip, then ``AtariPreprocessing`` repeats each
    action ``frame_skip`` frames and max-pools the last two (Atari sprites flicker), converts to
    gray, resizes to ``screen_size`` and starts each episode with up to ``noop_max`` no-ops;
    ``FrameStackObservation`` stacks the last ``frame_stack`` frames.

    Args:
        game: snake_case ROM id, e.g. ``"pong"``, ``"space_invaders"``, ``"ms_pacman"``.
        frame_skip: emulator frames per env step.
        screen_size: side of the square observation.
        noop_max: maximum number of random no-op actions after a reset.
        frame_stack: frames per observation.
        terminal_on_life_loss: end episodes when a life is lost (DQN training trick; off by default).
        full_action_space: all 18 actions instead of the game's minimal set.
        repeat_action_probability: sticky actions; 0.25 is the v5 default (Machado et al. 2018),
            0 gives the deterministic emulator of the original DQN paper.
        **kwargs: passed to ``gymnasium.make`` (``render_mode``, ``mode``, ``difficulty``, ...).

    Returns:
        An env with observations ``uint8`` ``(frame_stack, screen_size, screen_size)``.
    """
    env = gym.make(
        atari_env_id(game),
        frameskip=1,  # AtariPreprocessing skips frames itself; skipping twice would be frame_skip**2.
        full_action_space=full_action_space,
        repeat_action_probability=repeat_action_probability,
        **kwargs,
    )
    env = AtariPreprocessing(
        env,
        noop_max=noop_max,
        frame_skip=frame_skip,
        screen_size=screen_size,
        terminal_on_life_loss=terminal_on_life_loss,
        grayscale_obs=True,
        scale_obs=False,
    )
    return FrameStackObservation(env, frame_stack)


class MinAtarEnv(gym.Env[np.ndarray, np.int64]):
    """The MinAtar games (Young & Tian 2019) with channel-first ``uint8`` images and Gymnasium seeding.

    ## Description
    Miniature versions of five Atari games on a 10 x 10 grid, from the ``minatar`` package. Each
    channel of the observation marks one kind of object (Breakout: paddle, ball, trail, brick).

    ## Action Space
    ``Discrete(n)``. With ``use_minimal_action_set=True`` (default) only the actions that matter in
    the game, a subset of minatar's [no-op, left, up, right, down, fire]: Asterix 5 (no fire),
    Breakout 3 (no-op, left, right), Freeway 3 (no-op, up, down), Seaquest 6, SpaceInvaders 4
    (no-op, left, right, fire). Otherwise all 6.

    ## Observation Space
    ``Box(0, 255, (C, 10, 10), uint8)`` with ``C`` = 4 (Asterix, Breakout), 7 (Freeway),
    10 (Seaquest), 6 (SpaceInvaders). Cells are 0 or 255, not minatar's 0/1: every pixelpilot
    observation is a ``uint8`` image that ``nets/`` divides by 255, which gives the network exactly
    the paper's 0/1 input, and viewers show the channels as they are.

    ## Rewards
    The game's score increment per step (e.g. +1 per brick in Breakout, +1 per crossing in Freeway).

    ## Starting State
    Each game's start screen; random elements (ball side, cars, enemies) come from minatar's own
    RNG, which ``reset(seed=...)`` seeds, so the same seed and actions give the same episode.

    ## Episode End
    Terminated when the game ends (Breakout: ball lost; Freeway: after 2500 frames, minatar's own
    time limit). Never truncated here; add ``max_episode_steps`` when making it for a time limit.

    ## Arguments
    - ``game``: one of ``"asterix"``, ``"breakout"``, ``"freeway"``, ``"seaquest"``, ``"space_invaders"``.
    - ``render_mode``: ``None`` or ``"rgb_array"`` (a ``(10 * render_scale, 10 * render_scale, 3)``
      image, one colour per channel, the highest channel on top, as minatar's own display).
    - ``use_minimal_action_set``: see Action Space.
    - ``sticky_action_prob``: probability of repeating the previous action instead (0.1 in the paper).
    - ``difficulty_ramping``: speed the game up over time (on in the paper).
    - ``render_scale``: pixels per grid cell in renders.

    ## Version History
    - v0: initial version, wrapping minatar 1.0.15.
    """

    # 20 fps matches minatar's own display (50 ms per frame).
    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        game: str = "breakout",
        render_mode: str | None = None,
        use_minimal_action_set: bool = True,
        sticky_action_prob: float = 0.1,
        difficulty_ramping: bool = True,
        render_scale: int = 16,
    ) -> None:
        import minatar

        if game not in MINATAR_GAME_MODULES:
            raise ValueError(f"Unknown MinAtar game {game!r}: choose one of {', '.join(MINATAR_GAME_MODULES)}.")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.game = game
        self.render_mode = render_mode
        self.render_scale = render_scale
        self._minatar = minatar.Environment(
            game, sticky_action_prob=sticky_action_prob, difficulty_ramping=difficulty_ramping
        )
        self._action_set = np.asarray(
            self._minatar.minimal_action_set() if use_minimal_action_set else range(self._minatar.num_actions())
        )
        _, _, channels = self._minatar.state_shape()
        self.action_space = spaces.Discrete(len(self._action_set))
        self.observation_space = spaces.Box(0, 255, (channels, 10, 10), np.uint8)
        # Row 0 is the background; row k colours channel k - 1.
        colours = np.array([(0.0, 0.0, 0.0), *_channel_colours(channels)])
        self._palette = np.round(255 * colours).astype(np.uint8)

    def _observation(self) -> np.ndarray:
        """``(C, 10, 10)`` uint8 in {0, 255} from minatar's ``(10, 10, C)`` bool state."""
        return np.moveaxis(self._minatar.state(), -1, 0).astype(np.uint8) * np.uint8(255)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            # minatar draws from a legacy RandomState (seeds < 2**32): derive one from np_random.
            self._minatar.seed(int(self.np_random.integers(2**32)))
        # minatar keeps the last action across episodes; a sticky repeat must not leak into the next.
        self._minatar.last_action = 0
        self._minatar.reset()
        return self._observation(), {}

    def step(self, action: int | np.integer) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        reward, terminated = self._minatar.act(int(self._action_set[action]))
        return self._observation(), float(reward), bool(terminated), False, {}

    def render(self) -> np.ndarray | None:
        """``(10 * render_scale, 10 * render_scale, 3)`` uint8 colour image, or None without a render mode."""
        if self.render_mode is None:
            return None
        state = self._minatar.state()
        # Where objects overlap the highest channel wins, as in minatar's own display.
        channel_index = np.max(state * np.arange(1, state.shape[-1] + 1), axis=-1)
        image = self._palette[channel_index]
        return np.repeat(np.repeat(image, self.render_scale, axis=0), self.render_scale, axis=1)


def _channel_colours(channels: int) -> np.ndarray:
    """``(channels, 3)`` distinct RGB colours in [0, 1] (matplotlib's tab10; MinAtar has at most 10 channels)."""
    from matplotlib import colormaps

    return np.asarray(colormaps["tab10"].colors[:channels])
