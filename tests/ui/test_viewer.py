"""The viewer as a user drives it, headless: key events, what is drawn, export, and bad input -> exit 2."""

import os

os.environ["SDL_VIDEODRIVER"] = "dummy"  # before pygame opens a display

import time  # noqa: E402
from pathlib import Path  # noqa: E402

import imageio.v3 as iio  # noqa: E402
import numpy as np  # noqa: E402
import pygame  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from agents.cli import main  # noqa: E402
from agents.core.config import config_to_dict, load_config  # noqa: E402
from agents.core.envs import make_env  # noqa: E402
from agents.ui.watch import live_episodes, recorded_episodes, watch  # noqa: E402
from envs.viewer import (  # noqa: E402
    BACKGROUND,
    BAR_NEGATIVE,
    BAR_POSITIVE,
    DIM_TEXT,
    MARGIN,
    NO_MODEL_FILL,
    Episode,
    Viewer,
    export,
    frame_to_rgb,
)

STEPS = 6  # actions per fake episode (7 frames)
SIZE = (640, 400)


def frame_value(episode: int, t: int) -> int:
    """The gray level of fake frame t of fake episode ``episode``, so a pixel says which frame is shown."""
    return 8 * (4 * episode + t) + 7


def fake_episode(episode: int, model: bool = False, trial: int = -1, fitted: bool | None = None) -> dict:
    """A recorded episode's arrays; ``fitted`` writes ``model_fitted`` (False: a DDM trial played before
    any model was fitted, which has no model arrays unless ``model`` adds some)."""
    frames = np.stack([np.full((1, 40, 40), frame_value(episode, t), np.uint8) for t in range(STEPS + 1)])
    data = {
        "frames": frames,
        "actions": np.linspace(-2, 2, STEPS, dtype=np.float32)[:, None],
        "rewards": np.full(STEPS, -1.5, np.float32),
        "episode": np.array(episode),
        "trial": np.array(trial),
        "return_": np.array(-1.5 * STEPS),
        "fps": np.array(20.0),
        "env_id": np.array("pixelpilot/Pendulum-v0"),
    }
    if model:
        data["reconstructions"] = frames // 2
        data["predictions"] = np.stack([frames // (k + 2) for k in range(1, 4)])
    if fitted is not None:
        data["model_fitted"] = np.array(fitted)
    return data


def make_run(tmp_path: Path, episodes: int = 3, model: bool = False) -> Path:
    run_dir = tmp_path / "run"
    (run_dir / "episodes").mkdir(parents=True)
    config = load_config("configs/random_pendulum.yaml")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    for index in range(episodes):
        np.savez_compressed(run_dir / "episodes" / f"ep_{index:07d}.npz", **fake_episode(index, model))
    return run_dir


def shown_value(viewer: Viewer, panel: int = 0) -> int:
    """The gray level at the centre of a panel in the rendered picture."""
    x, y = viewer.layout(SIZE).panels[panel].center
    return int(viewer.render_frame(SIZE)[y, x, 0])


def viewer_for(run_dir: Path, **kwargs) -> Viewer:
    viewer = Viewer(recorded_episodes(run_dir), **kwargs)
    viewer.size = SIZE
    return viewer


def test_keys_step_frames_and_switch_episodes_in_order(tmp_path):
    viewer = viewer_for(make_run(tmp_path))
    assert shown_value(viewer) == frame_value(0, 0)
    viewer.handle_key(pygame.K_RIGHT)
    viewer.handle_key(pygame.K_RIGHT)
    assert viewer.paused and shown_value(viewer) == frame_value(0, 2)
    viewer.handle_key(pygame.K_LEFT)
    assert shown_value(viewer) == frame_value(0, 1)
    viewer.handle_key(pygame.K_n)
    assert shown_value(viewer) == frame_value(1, 0)
    viewer.handle_key(pygame.K_p)
    viewer.handle_key(pygame.K_p)
    assert shown_value(viewer) == frame_value(2, 0)  # p from the first episode wraps to the last
    seen = []
    for _ in range(STEPS + 2):
        viewer.advance()
        seen.append(shown_value(viewer))
    # Playback runs through the last episode's frames, then wraps to the first episode.
    assert seen == [frame_value(2, t) for t in range(1, STEPS + 1)] + [frame_value(0, 0), frame_value(0, 1)]


def test_hud_draws_trial_frame_return_and_action(tmp_path):
    viewer = Viewer([Episode.from_dict(fake_episode(0, trial=3))])
    viewer.size = SIZE
    viewer.advance(4)
    expected = "Trial: 3  Frame: 4  Return: -6.0  Action: +1.2"
    assert viewer.hud_text() == expected
    text = viewer.hud_font.render(expected, True, (235, 235, 235))
    reference = pygame.Surface(SIZE)
    reference.fill(BACKGROUND)
    reference.blit(text, (MARGIN, MARGIN))
    reference_pixels = pygame.surfarray.array3d(reference).transpose(1, 0, 2)
    hud = viewer.layout(SIZE).hud
    picture = viewer.render_frame()
    assert np.array_equal(picture[: hud.height], reference_pixels[: hud.height])
    assert (picture[: hud.height] != BACKGROUND).any()
    viewer.advance()
    assert not np.array_equal(viewer.render_frame()[: hud.height], picture[: hud.height])


def test_hud_names_the_first_trial_trial_1_and_runs_without_trials_by_episode():
    assert Episode.from_dict(fake_episode(0, trial=1)).label == "Trial: 1"
    assert Viewer([Episode.from_dict(fake_episode(0, trial=1))]).hud_text().startswith("Trial: 1  Frame: 0")
    assert Episode.from_dict(fake_episode(5)).label == "Episode: 5"  # trial -1: an agent without trials
    without_key = fake_episode(5)
    del without_key["trial"]
    assert Episode.from_dict(without_key).label == "Episode: 5"


def test_action_bar_fills_from_the_centre_towards_the_action_sign(tmp_path):
    viewer = viewer_for(make_run(tmp_path, episodes=1))
    bar = viewer.layout(SIZE).action_bar
    y = bar.top + 2
    picture = viewer.render_frame()  # frame 0: action -2, the most negative
    assert tuple(picture[y, bar.left + 2]) == BAR_NEGATIVE
    assert tuple(picture[y, bar.right - 3]) != BAR_POSITIVE
    viewer.advance(STEPS - 1)  # action +2
    picture = viewer.render_frame()
    assert tuple(picture[y, bar.right - 3]) == BAR_POSITIVE
    assert tuple(picture[y, bar.left + 2]) != BAR_NEGATIVE


def test_frames_are_scaled_up_crisply_by_a_whole_factor():
    checker = (np.indices((40, 40)).sum(axis=0) % 2 * 255).astype(np.uint8)[None]
    viewer = Viewer([Episode(frames=[checker])], show_legend=False)
    for size in [(640, 400), (300, 500), (1000, 250)]:
        panel = viewer.layout(size).panels[0]
        scale = panel.width // 40
        assert panel.size == (40 * scale, 40 * scale) and scale >= 1
        drawn = viewer.render_frame(size)[panel.top: panel.bottom, panel.left: panel.right, 0]
        assert np.array_equal(drawn, np.kron(checker[0], np.ones((scale, scale), np.uint8)))


def test_model_runs_show_reconstruction_and_selectable_k_step_prediction(tmp_path):
    viewer = viewer_for(make_run(tmp_path, episodes=1, model=True), k=2)
    viewer.advance(3)
    real = frame_value(0, 3)
    assert len(viewer.layout(SIZE).panels) == 3
    assert [shown_value(viewer, panel) for panel in range(3)] == [real, real // 2, real // 4]
    assert viewer.panel_images()[2][0].startswith("2-step prediction")
    viewer.handle_key(pygame.K_RIGHTBRACKET)
    assert shown_value(viewer, 2) == real // 5
    viewer.handle_key(pygame.K_RIGHTBRACKET)  # k stops at the largest recorded horizon, 3
    assert viewer.k == 3
    viewer.handle_key(pygame.K_LEFTBRACKET)
    assert shown_value(viewer, 2) == real // 4
    plain = viewer_for(make_run(tmp_path / "plain", episodes=1))
    assert len(plain.layout(SIZE).panels) == 1


def no_model_yet_panel(viewer: Viewer, size: tuple[int, int]) -> np.ndarray:
    """How a "no model yet" panel of ``size`` should look: the text centred on the dark fill, (H, W, 3)."""
    reference = pygame.Surface(size)
    reference.fill(NO_MODEL_FILL)
    text = viewer.small_font.render("no model yet", True, DIM_TEXT)
    reference.blit(text, text.get_rect(center=reference.get_rect().center))
    return pygame.surfarray.array3d(reference).transpose(1, 0, 2)


def test_trial_before_any_model_shows_no_model_yet_panels_in_the_model_places():
    unfitted = Episode.from_dict(fake_episode(0, trial=1, fitted=False))
    fitted = Episode.from_dict(fake_episode(1, model=True, trial=2, fitted=True))
    assert unfitted.model_fitted is False and unfitted.reconstructions is None and fitted.model_fitted is True
    viewer = Viewer([unfitted, fitted])
    viewer.size = SIZE
    unfitted_layout = viewer.layout(SIZE)
    assert [(name, image is None) for name, image in viewer.panel_images()] == [
        ("real", False), ("model", True), ("1-step prediction", True)]  # no error label without a model
    picture = viewer.render_frame()
    assert shown_value(viewer) == frame_value(0, 0)
    for rect in unfitted_layout.panels[1:]:
        drawn = picture[rect.top: rect.bottom, rect.left: rect.right]
        assert np.array_equal(drawn, no_model_yet_panel(viewer, rect.size))
    viewer.handle_key(pygame.K_n)
    assert viewer.layout(SIZE).panels == unfitted_layout.panels, "the layout does not jump between trials"
    assert viewer.panel_images()[1][0].startswith("model (err ")
    assert viewer.render_frame().shape == picture.shape
    assert viewer.natural_size() == Viewer([unfitted]).natural_size() == Viewer([fitted]).natural_size()
    # An unfitted trial's arrays would be an untrained model's noise: still "no model yet".
    noisy = Viewer([Episode.from_dict(fake_episode(0, model=True, fitted=False))])
    assert [image is None for _, image in noisy.panel_images()] == [False, True, True]


def mixed_episodes() -> list[Episode]:
    """A plain episode (no model key), a DDM trial before any model was fitted, and one with a model."""
    recorded = [fake_episode(0), fake_episode(1, trial=1, fitted=False), fake_episode(2, True, trial=2, fitted=True)]
    return [Episode.from_dict(data) for data in recorded]


def test_n_and_p_switch_between_trials_with_and_without_a_model_and_plain_episodes():
    episodes = mixed_episodes()
    viewer = Viewer(episodes)
    viewer.size = SIZE
    counts = []
    for key in (pygame.K_n, pygame.K_n, pygame.K_n, pygame.K_p, pygame.K_p):
        counts.append(len(viewer.layout(SIZE).panels))
        assert viewer.render_frame().shape == (SIZE[1], SIZE[0], 3)
        assert shown_value(viewer) == frame_value(viewer.episode_index, 0)
        viewer.handle_key(key)
    assert counts == [1, 3, 3, 1, 3], "a plain episode shows its real frame only"


def test_export_of_trials_with_and_without_a_model_keeps_one_frame_size(tmp_path):
    # The plain episode first: the video's size must still make room for the three-panel trials.
    episodes = mixed_episodes()
    assert export(episodes, tmp_path / "mixed.mp4") == 3 * (STEPS + 1)
    frames = iio.imread(tmp_path / "mixed.mp4")
    viewer = Viewer(episodes, show_legend=False)
    width, height = Viewer(episodes[1:], show_legend=False).natural_size()
    assert frames.shape == (3 * (STEPS + 1), height, width, 3)
    for index in range(3):
        viewer.goto_episode(index)
        expected = viewer.render_frame((width, height)).astype(int)
        assert np.abs(frames[index * (STEPS + 1)].astype(int) - expected).mean() < 3, f"episode {index}"


def relative_luminance(rgb: np.ndarray) -> float:
    """WCAG 2's relative luminance of an sRGB colour (0 black .. 1 white)."""
    channels = np.asarray(rgb, float) / 255
    linear = np.where(channels <= 0.04045, channels / 12.92, ((channels + 0.055) / 1.055) ** 2.4)
    return float(linear @ [0.2126, 0.7152, 0.0722])


def test_key_legend_is_light_text_that_stands_out_from_the_background(tmp_path):
    viewer = viewer_for(make_run(tmp_path))
    legend = viewer.layout(SIZE).legend
    band = viewer.render_frame()[legend.top: legend.bottom, legend.left: legend.right]
    text = band[(band != BACKGROUND).any(axis=-1)]
    assert len(text) > 300, "the legend is drawn"
    contrast = (relative_luminance(text.mean(axis=0)) + 0.05) / (relative_luminance(BACKGROUND) + 0.05)
    # WCAG AA asks 4.5 of the text colour; the mean of anti-aliased glyph pixels is a stricter measure.
    assert contrast >= 4.5, f"legend contrast {contrast:.2f}"


def background_rows(picture: np.ndarray) -> list[int]:
    """Lengths of the runs of rows that are background only, top to bottom."""
    empty = np.all(picture == BACKGROUND, axis=(1, 2))
    return [len(run) for run in "".join("1" if row else "0" for row in empty).split("0") if run]


@pytest.mark.parametrize("model", [False, True], ids=["one-panel", "three-panels"])
def test_window_opens_at_the_height_of_its_content_without_an_empty_band(model):
    viewer = Viewer([Episode.from_dict(fake_episode(0, model=model))])
    picture = viewer.render_frame()  # at the size the window opens with
    assert max(background_rows(picture)) <= 3 * MARGIN, "no empty band between the parts"
    empty = np.all(picture == BACKGROUND, axis=(1, 2))
    assert np.argmin(empty[::-1]) <= 2 * MARGIN, "the window ends below the status line"
    assert viewer.layout(viewer.size).panels[0].height >= 5 * 40  # and the frames are still shown large


def test_k_step_key_is_listed_only_when_the_episodes_have_predictions():
    plain = Viewer([Episode.from_dict(fake_episode(0))])  # a random or DQN run's episode: no model
    model = Viewer([Episode.from_dict(fake_episode(0, model=True))])
    widths = []
    for viewer in (plain, model):
        legend = viewer.layout(SIZE).legend
        band = viewer.render_frame(SIZE)[legend.top: legend.bottom]
        columns = np.flatnonzero((band != BACKGROUND).any(axis=(0, 2)))
        widths.append(columns[-1] - columns[0])
    assert widths[0] < widths[1] - 40, "the plain run's legend is drawn without the k-step key"
    assert "[/] k-step" not in " ".join(plain.legend_lines(SIZE[0]))
    assert "[/] k-step" in " ".join(model.legend_lines(SIZE[0]))


def test_pause_speed_save_and_quit_keys(tmp_path):
    viewer = viewer_for(make_run(tmp_path), screenshot_dir=tmp_path / "shots")
    viewer.handle_key(pygame.K_SPACE)
    assert viewer.paused
    viewer.handle_key(pygame.K_SPACE)
    assert not viewer.paused
    viewer.handle_key(pygame.K_PLUS)
    viewer.handle_key(pygame.K_EQUALS)
    assert viewer.speed == 4.0
    viewer.handle_key(pygame.K_MINUS)
    assert viewer.speed == 2.0
    viewer.handle_key(pygame.K_s)
    saved = list((tmp_path / "shots").glob("*.png"))
    assert [path.name for path in saved] == ["episode0-frame0000.png"]
    assert iio.imread(saved[0]).shape[:2] == (SIZE[1], SIZE[0])
    assert "saved" in viewer.status_text()
    viewer.handle_key(pygame.K_q)
    assert not viewer.running


def test_window_loop_handles_posted_keys_and_resizing(tmp_path):
    viewer = viewer_for(make_run(tmp_path))
    pygame.display.init()
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_n))
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_SPACE))
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_ESCAPE))
    viewer.run()
    assert viewer.episode_index == 1 and viewer.paused and not viewer.running


def test_window_plays_at_the_episode_frame_rate(tmp_path):
    viewer = viewer_for(make_run(tmp_path))
    pygame.display.init()
    pygame.time.set_timer(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_q), 600, loops=1)
    started = time.perf_counter()
    viewer.run()
    elapsed = time.perf_counter() - started
    shown = viewer.episode_index * (STEPS + 1) + viewer.frame_index
    assert abs(shown - 20 * elapsed) <= 3  # the fake episodes say fps = 20


def test_frame_to_rgb_shows_gray_rgb_newest_stacked_frame_and_minatar_objects():
    gray = np.full((1, 2, 2), 9, np.uint8)
    assert np.array_equal(frame_to_rgb(gray), np.full((2, 2, 3), 9, np.uint8))
    rgb = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    assert np.array_equal(frame_to_rgb(rgb), np.moveaxis(rgb, 0, -1))
    stacked = np.stack([np.full((2, 2), value, np.uint8) for value in (1, 2, 3, 4)])
    assert np.array_equal(frame_to_rgb(stacked), np.full((2, 2, 3), 4, np.uint8))
    objects = np.zeros((4, 2, 2), np.uint8)
    objects[0, 0, 0] = objects[3, 0, 0] = objects[1, 1, 1] = 255
    shown = frame_to_rgb(objects, "pixelpilot/MinAtar-Breakout-v0")
    assert tuple(shown[0, 0]) == (214, 39, 40)  # channel 3 drawn over channel 0
    assert tuple(shown[1, 1]) == (255, 127, 14) and tuple(shown[0, 1]) == (0, 0, 0)


def test_export_writes_every_frame_with_the_hud(tmp_path):
    run_dir = make_run(tmp_path, episodes=2)
    gif = watch(run_dir, export_path=tmp_path / "out" / "episodes.gif")
    frames = iio.imread(gif)
    assert frames.shape[0] == 2 * (STEPS + 1)
    assert frames.shape[1] % 16 == 0 and frames.shape[2] % 16 == 0
    assert (np.abs(frames[:, 5:25].astype(int) - BACKGROUND).sum(axis=-1) > 100).any(axis=(1, 2)).all()  # HUD text
    mp4 = watch(run_dir, export_path=tmp_path / "episodes.mp4", episodes=1)
    assert iio.imread(mp4).shape[0] == STEPS + 1
    assert not list(tmp_path.glob(".*tmp*"))


class ConstantAgent:
    def __init__(self) -> None:
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def act(self, obs: np.ndarray) -> np.ndarray:
        assert obs.shape == (1, 40, 40) and obs.dtype == np.uint8
        return np.array([1.5], np.float32)


def test_live_play_steps_the_env_only_at_the_newest_frame():
    config = load_config("configs/random_pendulum.yaml")
    env = make_env(config)
    agent = ConstantAgent()
    viewer = Viewer([], live=live_episodes(agent, env, seed=0), action_space=env.action_space)
    assert viewer.episode.label == "Episode: 1" and viewer.episode.fps == 20.0
    assert viewer.hud_text() == "Episode: 1  Frame: 0  Return: 0.0  Action: +1.5"
    viewer.advance(100)
    assert len(viewer.episode.frames) == 101 and viewer.frame_index == 100
    assert viewer.hud_text().endswith("Action: -")  # the final frame has no action
    viewer.advance()
    assert viewer.episode.label == "Episode: 2" and viewer.frame_index == 0 and agent.resets == 2
    viewer.handle_key(pygame.K_p)
    viewer.advance(50)
    assert viewer.episode_index == 0 and len(viewer.episodes[1].frames) == 1  # looking back: env waits
    first_frames = np.stack(viewer.episodes[0].frames)
    assert not np.array_equal(first_frames[0], first_frames[-1])  # the pendulum moved
    env.close()


def test_live_plays_the_latest_checkpoint_through_the_viewer(tmp_path, capsys):
    assert main(["train", "random_pendulum", f"train.runs_dir={tmp_path}", "agent.total_steps=400",
                 "env.num_envs=2", "train.record_every=1"]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1][len("run: "):])
    assert main(["watch", str(run_dir), "--live", "--export", str(tmp_path / "live.gif"), "--episodes", "2"]) == 0
    assert iio.imread(tmp_path / "live.gif").shape[0] == 2 * 101  # two 100-step pendulum episodes
    assert main(["watch", str(run_dir), "--export", str(tmp_path / "recorded.gif"), "--episodes", "1"]) == 0
    assert iio.imread(tmp_path / "recorded.gif").shape[0] == 101


@pytest.mark.parametrize("case", ["not_a_run", "no_episodes", "truncated", "extension", "no_display"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, case):
    run_dir = make_run(tmp_path, episodes=0 if case == "no_episodes" else 1)
    args = ["watch", str(run_dir)]
    if case == "not_a_run":
        args = ["watch", str(tmp_path / "episodes-somewhere")]
    elif case == "truncated":
        path = run_dir / "episodes" / "ep_0000000.npz"
        path.write_bytes(path.read_bytes()[:200])
    elif case == "extension":
        args += ["--export", str(tmp_path / "movie.avi")]
    elif case == "no_display":
        for name in ("SDL_VIDEODRIVER", "DISPLAY", "WAYLAND_DISPLAY"):
            monkeypatch.delenv(name, raising=False)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pixelpilot: error: ")
    expected = {"not_a_run": "no such run directory", "no_episodes": "no recorded episodes",
                "truncated": "cannot be read", "extension": "unknown video format",
                "no_display": "no display: set DISPLAY"}[case]
    assert expected in err[0]
