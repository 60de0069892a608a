"""A pygame viewer for pixel episodes: replay, live play and video export share one drawing path.

The picture, top to bottom: a heads-up line (``Trial: 3  Frame: 94  Return: -312.4  Action: +1.7``),
the panels (the real frame; for model-based runs also the model's reconstruction and its k-step
open-loop prediction, each labelled with its mean absolute pixel error against the real frame, or,
for trials played before any model was fitted, dark "no model yet" panels in their place), an
action bar, and (in the window) a key legend and a status line. Small frames are scaled up by a whole
factor with nearest-neighbour sampling, so pixels stay crisp. The window opens at the height of
this content, the legend right below the action bar; the legend lists only the keys that do
something for these episodes (``[/] k-step`` only when they carry model predictions).

This module knows nothing of agents or run directories: it takes :class:`Episode` objects (built from
the episode files' dicts with :meth:`Episode.from_dict`) and, for live play, an iterator that yields
the episode being played each time it gains a frame.

    viewer = Viewer([Episode.from_dict(data)])
    viewer.run()                                   # a resizable window; q or Esc quits
    export([Episode.from_dict(data)], Path("episode.mp4"))
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
import pygame  # noqa: E402  (after hiding pygame's greeting)

EXPORT_FORMATS = (".mp4", ".gif")
SPEEDS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # playback speed factors, +/- step through them
LIVE_EPISODES_KEPT = 20  # finished live episodes kept for n/p (older ones are dropped)
# The keys handle_key answers, as the legend lists them; K_STEP_KEY only for episodes with model predictions.
K_STEP_KEY = "[/] k-step"
LEGEND_KEYS = ("space pause", "left/right step", "n/p episode", "+/- speed", K_STEP_KEY, "s save PNG", "q quit")
LEGEND_GAP = "   "  # between two keys of a legend line
WINDOW_SIZE = (960, 540)  # the window opens with its panels at the largest whole scale that fits this

BACKGROUND = (18, 18, 24)
TEXT = (235, 235, 235)
DIM_TEXT = (150, 150, 160)
STATUS_TEXT = (150, 200, 255)  # the status line under the legend: light blue, as readable as TEXT on BACKGROUND
BAR_TRACK = (55, 55, 65)
BAR_POSITIVE = (90, 200, 120)
BAR_NEGATIVE = (235, 140, 60)
NO_MODEL_FILL = (34, 34, 44)  # a model panel before any model was fitted: bluish, unlike a black frame
NO_MODEL_TEXT = "no model yet"
MARGIN = 8  # pixels around and between the picture's parts
HUD_FONT_SIZE = 24  # pygame's default font; 24 is ~17 px per line
SMALL_FONT_SIZE = 18  # panel labels
LEGEND_FONT_SIZE = 20  # the key legend and status line: light on the dark background, big enough to read
ACTION_BAR_HEIGHT = 10  # per action dimension
EXPORT_PANEL_HEIGHT = 320  # frames are scaled up to at most this height in exported videos
# matplotlib's tab10: one colour per MinAtar object channel (at most 10), as envs.external renders them.
OBJECT_COLOURS = np.array([(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)],
                          np.uint8)


class NoDisplayError(RuntimeError):
    """pygame found no display to open a window on."""


@dataclass
class Episode:
    """One episode as the viewer shows it; lists, so live play can append to it.

    ``frames[t]`` is the observation the action ``actions[t]`` was chosen from, ``rewards[t]`` the reward
    that action earned; there is one frame more than actions once the episode is over.

    ``model_fitted`` is None for agents without a model; False for a model-based agent's trial played
    before its first model was fitted (no reconstructions or predictions: the viewer keeps their panels'
    places, drawn as "no model yet"); True when a fitted model made ``reconstructions``/``predictions``.
    """

    frames: list[np.ndarray]  # each (C, H, W) uint8
    actions: list[np.ndarray] = field(default_factory=list)  # each (A,) float, or () int for discrete
    rewards: list[float] = field(default_factory=list)
    label: str = "Episode: 0"  # the HUD's first item: "Trial: 3" or "Episode: 12"
    fps: float = 30.0  # the env's real frame rate
    env_id: str = ""
    reconstructions: np.ndarray | None = None  # (T+1, C, H, W) uint8, the model's reconstruction
    predictions: np.ndarray | None = None  # (K, T+1, C, H, W) uint8, [k-1, t] predicted from t-k
    model_fitted: bool | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, np.ndarray], suffix: str = "") -> Episode:
        """From a recorded episode's arrays (the episodes/*.npz format); ``suffix`` is added to the label.

        ``trial`` is 1-based (the first trial is 1); agents without trials write -1 or leave it out and
        are labelled by their ``episode`` number. ``model_fitted`` (a scalar bool) is written only by
        model-based agents.
        """
        trial = int(data.get("trial", -1))
        label = f"Trial: {trial}" if trial >= 1 else f"Episode: {int(data.get('episode', 0))}"
        model_fitted = bool(data["model_fitted"]) if "model_fitted" in data else None
        return cls(
            frames=list(data["frames"]),
            actions=list(data["actions"]),
            rewards=[float(reward) for reward in data["rewards"]],
            label=label + suffix,
            fps=float(data.get("fps", 30.0)),
            env_id=str(data.get("env_id", "")),
            reconstructions=data.get("reconstructions"),
            predictions=data.get("predictions"),
            model_fitted=model_fitted,
        )

    def return_at(self, t: int) -> float:
        """The return collected before frame ``t`` (rewards of the actions at frames 0..t-1)."""
        return float(sum(self.rewards[:t]))


@dataclass
class Layout:
    """Where each part of the picture goes, for a given surface size."""

    hud: pygame.Rect
    panels: list[pygame.Rect]  # real frame first, then reconstruction, then prediction
    labels: list[pygame.Rect]
    action_bar: pygame.Rect
    legend: pygame.Rect  # the key legend's lines, right below the action bar; empty when the legend is hidden
    status: pygame.Rect  # the status line below it; empty when the legend is hidden


def frame_to_rgb(frame: np.ndarray, env_id: str = "") -> np.ndarray:
    """One observation as a picture: (C, H, W) uint8 -> (H, W, 3) uint8.

    C = 1 is gray, C = 3 RGB; MinAtar's object channels get one colour each (the highest channel on
    top, as its renders); other stacks show their newest frame (the last 3 channels when C is a
    multiple of 3, else the last channel).
    """
    channels = frame.shape[0]
    if "MinAtar" in env_id:
        index = np.max((frame > 0) * np.arange(1, channels + 1)[:, None, None], axis=0)
        palette = np.concatenate([np.zeros((1, 3), np.uint8), OBJECT_COLOURS[:channels]])
        return palette[index]
    if channels >= 3 and channels % 3 == 0:
        return np.ascontiguousarray(np.moveaxis(frame[-3:], 0, -1))
    return np.repeat(frame[-1][:, :, None], 3, axis=2)


class Viewer:
    """Plays episodes; ``draw``/``render_frame`` are pure functions of its state, ``handle_key`` changes it.

    Args:
        episodes: the episodes to replay (may be empty when ``live`` is given).
        live: for live play, an iterator that yields the episode being played each time it gained a
            frame (a new object when a new episode starts); it is advanced only while the newest
            frame is on screen, so the env waits while you look back.
        k: which open-loop prediction to show first (1 = one step ahead), for runs that have them.
        action_space: scales the action bar; inferred from the episodes' actions when None.
        screenshot_dir: where ``s`` saves PNGs.
        show_legend: the key legend and status line (off in exported videos).
    """

    def __init__(
        self,
        episodes: Sequence[Episode],
        live: Iterator[Episode] | None = None,
        k: int = 1,
        action_space: gym.Space | None = None,
        screenshot_dir: Path = Path("."),
        show_legend: bool = True,
    ) -> None:
        self.episodes = list(episodes)
        self.live = live
        if not self.episodes:
            if live is None:
                raise ValueError("Viewer needs episodes to replay or a live iterator")
            self.episodes.append(next(live))
        self.k = k
        self.action_space = action_space
        self.screenshot_dir = screenshot_dir
        self.show_legend = show_legend
        self.episode_index = 0
        self.frame_index = 0
        self.paused = False
        self.speed_index = SPEEDS.index(1.0)
        self.running = True
        self.message = ""  # shown in the status line (e.g. where a PNG was saved)
        pygame.font.init()
        self.hud_font = pygame.font.Font(None, HUD_FONT_SIZE)
        self.small_font = pygame.font.Font(None, SMALL_FONT_SIZE)
        self.legend_font = pygame.font.Font(None, LEGEND_FONT_SIZE)
        self.size = self.window_size()  # the window size, updated when the window is resized

    # state ----------------------------------------------------------------------------------------
    @property
    def episode(self) -> Episode:
        return self.episodes[self.episode_index]

    @property
    def speed(self) -> float:
        return SPEEDS[self.speed_index]

    def advance(self, frames: int = 1) -> None:
        """Move ``frames`` frames forward (negative: back), crossing into the next/previous episode.

        Past the newest frame of live play this steps the env; past the last recorded episode it wraps
        around to the first.
        """
        for _ in range(abs(frames)):
            if frames > 0:
                self._forward()
            else:
                self._backward()

    def _forward(self) -> None:
        if self.frame_index + 1 < len(self.episode.frames):
            self.frame_index += 1
            return
        if self.live is not None and self.episode_index == len(self.episodes) - 1:
            playing = next(self.live)
            if playing is not self.episode:
                self.episodes.append(playing)
                if len(self.episodes) > LIVE_EPISODES_KEPT:
                    del self.episodes[0]
                self.episode_index = len(self.episodes) - 1
                self.frame_index = 0
            else:
                self.frame_index = len(playing.frames) - 1
            return
        self.episode_index = (self.episode_index + 1) % len(self.episodes)
        self.frame_index = 0

    def _backward(self) -> None:
        if self.frame_index > 0:
            self.frame_index -= 1
        elif self.episode_index > 0:
            self.episode_index -= 1
            self.frame_index = len(self.episode.frames) - 1

    def goto_episode(self, index: int) -> None:
        self.episode_index = index % len(self.episodes)
        self.frame_index = 0

    def max_k(self) -> int:
        return 0 if self.episode.predictions is None else self.episode.predictions.shape[0]

    def handle_key(self, key: int) -> None:
        """Apply one key press (a ``pygame.K_*`` code); see :data:`LEGEND_KEYS`."""
        if key in (pygame.K_q, pygame.K_ESCAPE):
            self.running = False
        elif key == pygame.K_SPACE:
            self.paused = not self.paused
        elif key == pygame.K_RIGHT:
            self.paused = True
            self.advance(1)
        elif key == pygame.K_LEFT:
            self.paused = True
            self.advance(-1)
        elif key == pygame.K_n:
            self.goto_episode(self.episode_index + 1)
        elif key == pygame.K_p:
            self.goto_episode(self.episode_index - 1)
        elif key in (pygame.K_PLUS, pygame.K_EQUALS, pygame.K_KP_PLUS):
            self.speed_index = min(self.speed_index + 1, len(SPEEDS) - 1)
        elif key in (pygame.K_MINUS, pygame.K_KP_MINUS):
            self.speed_index = max(self.speed_index - 1, 0)
        elif key == pygame.K_RIGHTBRACKET:
            self.k = min(self.k + 1, max(self.max_k(), 1))
        elif key == pygame.K_LEFTBRACKET:
            self.k = max(self.k - 1, 1)
        elif key == pygame.K_s:
            self.message = f"saved {self.save_png()}"

    # drawing --------------------------------------------------------------------------------------
    def panel_count(self, episode: Episode | None = None) -> int:
        """Panels of ``episode`` (default: the current one): the real frame plus its model panels."""
        episode = self.episode if episode is None else episode
        if episode.model_fitted is False:
            return 3  # the reconstruction's and the prediction's places, kept so the layout does not jump
        return 1 + (episode.reconstructions is not None) + (episode.predictions is not None)

    def panel_images(self) -> list[tuple[str, np.ndarray | None]]:
        """The panels of the current frame: (label, (H, W, 3) uint8), real frame first; the image is None
        for a model panel of a trial played before any model was fitted (drawn as "no model yet")."""
        episode, t = self.episode, self.frame_index
        real = episode.frames[t]
        if episode.model_fitted is False:
            # Any arrays such an episode carries come from an untrained model: noise, not worth showing.
            return [("real", frame_to_rgb(real, episode.env_id)), ("model", None), (f"{self.k}-step prediction", None)]
        panels = [("real", real)]
        if episode.reconstructions is not None:
            panels.append(("model", episode.reconstructions[t]))
        if episode.predictions is not None:
            k = min(self.k, episode.predictions.shape[0])
            panels.append((f"{k}-step prediction", episode.predictions[k - 1, t]))
        labelled = []
        for name, frame in panels:
            if name != "real":
                error = np.abs(frame.astype(np.int16) - real.astype(np.int16)).mean()
                name = f"{name} (err {error:.1f})"
            labelled.append((name, frame_to_rgb(frame, episode.env_id)))
        return labelled

    def hud_text(self) -> str:
        episode, t = self.episode, self.frame_index
        if t < len(episode.actions):
            action = np.asarray(episode.actions[t])
            shown = str(int(action)) if action.dtype.kind in "iu" else " ".join(f"{a:+.1f}" for a in action.ravel())
        else:
            shown = "-"
        return f"{episode.label}  Frame: {t}  Return: {episode.return_at(t):.1f}  Action: {shown}"

    def legend_lines(self, width: int) -> list[str]:
        """The key legend wrapped to a ``width``-pixel window: the keys that do something for these episodes
        (``[/] k-step`` only when they carry model predictions)."""
        has_predictions = any(episode.predictions is not None for episode in self.episodes)
        keys = [key for key in LEGEND_KEYS if key != K_STEP_KEY or has_predictions]
        lines = [keys[0]]
        for key in keys[1:]:
            joined = lines[-1] + LEGEND_GAP + key
            if self.legend_font.size(joined)[0] <= width - 2 * MARGIN:
                lines[-1] = joined
            else:
                lines.append(key)
        return lines

    def status_text(self) -> str:
        state = "paused" if self.paused else "playing"
        live = "  live" if self.live is not None else ""
        where = f"episode {self.episode_index + 1}/{len(self.episodes)}"
        return f"{state}  {self.speed:g}x  {where}{live}  {self.message}".rstrip()

    def _action_rows(self) -> int:
        if self._is_discrete():
            return 1
        return max(1, min(np.asarray(self.episode.actions[0]).size if self.episode.actions else 1, 4))

    def _is_discrete(self) -> bool:
        if self.action_space is not None:
            return isinstance(self.action_space, gym.spaces.Discrete)
        return bool(self.episode.actions) and np.asarray(self.episode.actions[0]).dtype.kind in "iu"

    def layout(self, size: tuple[int, int]) -> Layout:
        """Where the parts go on a ``size = (width, height)`` surface; panels are scaled by a whole factor."""
        width, height = size
        hud_height = self.hud_font.get_linesize() + 2 * MARGIN
        label_height = self.small_font.get_linesize()
        frame_height, frame_width = self.episode.frames[0].shape[1:]
        count = self.panel_count()
        free_width = width - (count + 1) * MARGIN
        free_height = height - self._chrome_height(width)
        scale = max(1, min(free_width // (count * frame_width), free_height // frame_height))
        panel_width, panel_height = frame_width * scale, frame_height * scale
        total = count * panel_width + (count - 1) * MARGIN
        left = (width - total) // 2
        top = hud_height + MARGIN
        panels = [pygame.Rect(left + i * (panel_width + MARGIN), top, panel_width, panel_height) for i in range(count)]
        labels = [pygame.Rect(rect.left, rect.bottom, rect.width, label_height) for rect in panels]
        bar_top = top + panel_height + label_height + MARGIN
        bar = pygame.Rect(left, bar_top, total, self._action_rows() * (ACTION_BAR_HEIGHT + 2))
        line = self.legend_font.get_linesize()
        shown = self.show_legend
        # Right below the action bar, not at the window's bottom: a taller window leaves its room below.
        legend = pygame.Rect(MARGIN, bar.bottom + MARGIN, width - 2 * MARGIN,
                             line * len(self.legend_lines(width)) if shown else 0)
        status = pygame.Rect(MARGIN, legend.bottom, width - 2 * MARGIN, line if shown else 0)
        return Layout(pygame.Rect(0, 0, width, hud_height), panels, labels, bar, legend, status)

    def _chrome_height(self, width: int) -> int:
        """Height of everything but the panels in a ``width``-pixel window: HUD, labels, action bar, legend
        (its lines wrapped to the width) and status line, and margins."""
        hud_height = self.hud_font.get_linesize() + 2 * MARGIN
        label_height = self.small_font.get_linesize()
        bar_height = self._action_rows() * (ACTION_BAR_HEIGHT + 2)
        legend_height = 0
        if self.show_legend:
            legend_height = (len(self.legend_lines(width)) + 1) * self.legend_font.get_linesize() + MARGIN
        return hud_height + label_height + bar_height + legend_height + 3 * MARGIN

    def window_size(self, largest: tuple[int, int] = WINDOW_SIZE) -> tuple[int, int]:
        """The size the window opens at: the panels at the largest whole scale within ``largest``, as wide as
        the HUD and the one-line legend need, and exactly as tall as the content (no empty band)."""
        frame_height, frame_width = self.episode.frames[0].shape[1:]
        count = max(self.panel_count(episode) for episode in self.episodes)
        legend_width = self.legend_font.size(self.legend_lines(10**6)[0])[0] if self.show_legend else 0  # one line
        text_width = max(self.widest_hud(), legend_width) + 2 * MARGIN
        scale = max(1, min((largest[0] - (count + 1) * MARGIN) // (count * frame_width),
                           (largest[1] - self._chrome_height(largest[0])) // frame_height))
        width = max(count * frame_width * scale + (count + 1) * MARGIN, text_width)
        return width, self._chrome_height(width) + frame_height * scale

    def natural_size(self, panel_height: int = EXPORT_PANEL_HEIGHT) -> tuple[int, int]:
        """A size that fits the panels scaled to about ``panel_height`` (whole multiples of 16, for video)."""
        frame_height, frame_width = self.episode.frames[0].shape[1:]
        scale = max(1, panel_height // frame_height)
        # Room for the episode with the most panels: a video's frames all have this one size.
        count = max(self.panel_count(episode) for episode in self.episodes)
        panels_width = count * frame_width * scale + (count + 1) * MARGIN
        width = max(panels_width, self.widest_hud() + 2 * MARGIN)
        height = self._chrome_height(width) + frame_height * scale
        return -(-width // 16) * 16, -(-height // 16) * 16

    def widest_hud(self) -> int:
        """Pixel width of the longest HUD line: the last action frame of each episode has the most digits."""
        current = self.episode_index, self.frame_index
        widths = []
        for index, episode in enumerate(self.episodes):
            self.episode_index, self.frame_index = index, max(len(episode.frames) - 2, 0)
            widths.append(self.hud_font.size(self.hud_text() + "0")[0])
        self.episode_index, self.frame_index = current
        return max(widths)

    def draw(self, surface: pygame.Surface) -> None:
        """Draw the current frame, HUD, action bar and legend onto ``surface`` (any size)."""
        layout = self.layout(surface.get_size())
        surface.fill(BACKGROUND)
        surface.blit(self.hud_font.render(self.hud_text(), True, TEXT), (MARGIN, MARGIN))
        for (name, image), rect, label in zip(self.panel_images(), layout.panels, layout.labels, strict=True):
            if image is None:
                self._draw_no_model(surface, rect)
            else:
                small = pygame.surfarray.make_surface(np.ascontiguousarray(image.transpose(1, 0, 2)))
                surface.blit(pygame.transform.scale(small, rect.size), rect)  # scale = nearest neighbour
            if len(layout.panels) > 1:
                text = self.small_font.render(name, True, DIM_TEXT)
                surface.blit(text, text.get_rect(midtop=label.midtop))
        self._draw_action_bar(surface, layout.action_bar)
        if self.show_legend:
            line = self.legend_font.get_linesize()
            for index, text in enumerate(self.legend_lines(surface.get_width())):
                surface.blit(self.legend_font.render(text, True, TEXT), layout.legend.move(0, index * line))
            surface.blit(self.legend_font.render(self.status_text(), True, STATUS_TEXT), layout.status.topleft)

    def _draw_no_model(self, surface: pygame.Surface, rect: pygame.Rect) -> None:
        """A model panel's place before any model was fitted: a dark panel saying "no model yet"."""
        pygame.draw.rect(surface, NO_MODEL_FILL, rect)
        text = self.small_font.render(NO_MODEL_TEXT, True, DIM_TEXT)
        clip = surface.get_clip()
        surface.set_clip(rect)  # small frames at scale 1 are narrower than the text: keep it off the neighbours
        surface.blit(text, text.get_rect(center=rect.center))
        surface.set_clip(clip)

    def _draw_action_bar(self, surface: pygame.Surface, area: pygame.Rect) -> None:
        t = self.frame_index
        rows = self._action_rows()
        row_rects = [pygame.Rect(area.left, area.top + i * (ACTION_BAR_HEIGHT + 2), area.width, ACTION_BAR_HEIGHT)
                     for i in range(rows)]
        for rect in row_rects:
            pygame.draw.rect(surface, BAR_TRACK, rect)
        if t >= len(self.episode.actions):
            return
        action = np.asarray(self.episode.actions[t])
        if self._is_discrete():
            count = self._discrete_count()
            cell = area.width / count
            chosen = pygame.Rect(round(area.left + int(action) * cell), area.top, max(1, round(cell) - 1),
                                 ACTION_BAR_HEIGHT)
            pygame.draw.rect(surface, BAR_POSITIVE, chosen)
            return
        bound = self._continuous_bound()
        for value, rect in zip(action.ravel()[:rows], row_rects, strict=True):
            half = rect.width // 2
            length = round(half * float(np.clip(value / bound, -1.0, 1.0)))
            left = rect.centerx if length >= 0 else rect.centerx + length
            colour = BAR_POSITIVE if length >= 0 else BAR_NEGATIVE
            pygame.draw.rect(surface, colour, pygame.Rect(left, rect.top, abs(length), rect.height))
            pygame.draw.line(surface, TEXT, (rect.centerx, rect.top), (rect.centerx, rect.bottom - 1))

    def _discrete_count(self) -> int:
        if isinstance(self.action_space, gym.spaces.Discrete):
            return int(self.action_space.n)
        return 1 + max(int(np.max(episode.actions)) for episode in self.episodes if episode.actions)

    def _continuous_bound(self) -> float:
        """The action value that fills half the bar: the action space's bound, or the largest |action| seen."""
        if isinstance(self.action_space, gym.spaces.Box):
            return float(np.max(np.abs([self.action_space.low, self.action_space.high])))
        seen = [np.max(np.abs(episode.actions)) for episode in self.episodes if episode.actions]
        return float(max(seen, default=1.0)) or 1.0

    def render_frame(self, size: tuple[int, int] | None = None) -> np.ndarray:
        """The picture as a read-only array: (height, width, 3) uint8, at ``size`` (default: the window size)."""
        surface = pygame.Surface(size or self.size)
        self.draw(surface)
        width, height = surface.get_size()
        return np.frombuffer(pygame.image.tobytes(surface, "RGB"), np.uint8).reshape(height, width, 3)

    def save_png(self) -> Path:
        """Save the current picture to ``screenshot_dir`` as a PNG (written to a temporary name, renamed)."""
        surface = pygame.Surface(self.size)
        self.draw(surface)
        name = self.episode.label.replace(": ", "").replace(" ", "-").replace("(", "").replace(")", "").lower()
        path = self.screenshot_dir / f"{name}-frame{self.frame_index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.png")
        pygame.image.save(surface, str(tmp))
        os.replace(tmp, path)
        return path

    # window ---------------------------------------------------------------------------------------
    def run(self, title: str = "pixelpilot") -> None:
        """Open a resizable window and play until q/Esc or the window is closed.

        Raises:
            NoDisplayError: no display is available (no X11/Wayland session and no SDL_VIDEODRIVER).
        """
        if sys.platform.startswith("linux") and not any(
            os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")
        ):
            # Checked before SDL probes, which would print its own errors and fall back to drawing nowhere.
            raise NoDisplayError("no display (neither DISPLAY, WAYLAND_DISPLAY nor SDL_VIDEODRIVER is set)")
        try:
            pygame.display.init()
        except pygame.error as err:
            raise NoDisplayError(f"no display ({err})") from None
        driver = pygame.display.get_driver()
        # Without a screen SDL falls back to drivers that draw nowhere; only accept them when asked for.
        if driver in ("offscreen", "dummy") and os.environ.get("SDL_VIDEODRIVER") != driver:
            pygame.display.quit()
            raise NoDisplayError(f"no display (SDL found only its {driver} driver)")
        owed = 0.0  # frames due at the current speed but not shown yet
        try:
            window = pygame.display.set_mode(self.size, pygame.RESIZABLE)
            pygame.display.set_caption(title)
            pygame.key.set_repeat(300, 50)  # holding an arrow key scrubs through frames
            clock = pygame.time.Clock()
            while self.running:
                for event in pygame.event.get():
                    if event.type == pygame.QUIT:
                        self.running = False
                    elif event.type == pygame.KEYDOWN:
                        self.handle_key(event.key)
                seconds = clock.tick(60) / 1000
                if not self.paused:
                    rate = self.episode.fps * self.speed
                    # Cap the backlog (a quarter second) so a slow agent or a dragged window does not
                    # fast-forward afterwards.
                    owed = min(owed + seconds * rate, max(2.0, rate / 4))
                    while owed >= 1.0 and self.running:
                        owed -= 1.0
                        self.advance(1)
                window = pygame.display.get_surface() or window
                self.size = window.get_size()
                self.draw(window)
                pygame.display.flip()
        finally:
            pygame.display.quit()


def export(
    episodes: Sequence[Episode],
    path: Path,
    k: int = 1,
    action_space: gym.Space | None = None,
) -> int:
    """Write the episodes one after another as a video (``.mp4``) or animated ``.gif``, HUD included.

    The file is written to a temporary name and renamed, so an interrupted export leaves no partial
    file. Returns the number of frames written.
    """
    viewer = Viewer(episodes, k=k, action_space=action_space, show_legend=False)
    size = viewer.natural_size()
    fps = episodes[0].fps

    def pictures() -> Iterator[np.ndarray]:
        for index in range(len(episodes)):
            viewer.goto_episode(index)
            for t in range(len(viewer.episode.frames)):
                viewer.frame_index = t
                yield viewer.render_frame(size)

    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if path.suffix.lower() == ".mp4":
            import imageio.v2 as imageio

            with imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                    pixelformat="yuv420p", macro_block_size=16, quality=8) as writer:
                for picture in pictures():
                    writer.append_data(picture)
        else:
            from PIL import Image

            # Pillow's default GIF quantizer (median cut) is ~6x slower; the picture has few colours anyway.
            images = (Image.fromarray(picture).quantize(method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
                      for picture in pictures())
            first = next(images)
            first.save(tmp, format="GIF", save_all=True, append_images=images, duration=round(1000 / fps), loop=0)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return sum(len(episode.frames) for episode in episodes)
