"""Wrapped external envs: Gymnasium API, channel-first uint8 pixels, seeding, Atari and MinAtar specifics."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.external import MinAtarEnv, make_pixel_env, pixel_wrappers

EXTERNAL_IDS = sorted(
    env_id
    for env_id, spec in gym.registry.items()
    if env_id.startswith("pixelpilot/") and str(spec.entry_point).startswith("envs.external:")
)
MINATAR_IDS = [env_id for env_id in EXTERNAL_IDS if "MinAtar" in env_id]
WRAPPED_NOTE = "is different from the unwrapped version"
DEFAULT_SHAPES = {
    "pixelpilot/Pixels-v0": (1, 64, 64),
    "pixelpilot/Atari-v0": (4, 84, 84),
    "pixelpilot/MinAtar-Asterix-v0": (4, 10, 10),
    "pixelpilot/MinAtar-Breakout-v0": (4, 10, 10),
    "pixelpilot/MinAtar-Freeway-v0": (7, 10, 10),
    "pixelpilot/MinAtar-Seaquest-v0": (10, 10, 10),
    "pixelpilot/MinAtar-SpaceInvaders-v0": (6, 10, 10),
}


def test_every_external_id_is_covered() -> None:
    assert EXTERNAL_IDS == sorted(DEFAULT_SHAPES)
    assert MINATAR_IDS == sorted(f"pixelpilot/MinAtar-{game}-v0" for game in envs.MINATAR_GAMES)


def rollout(env: gym.Env, seed: int, steps: int = 50) -> tuple[list[np.ndarray], list[float]]:
    """Observations (reset first) and rewards of ``steps`` seeded random actions, resetting on episode end."""
    env.action_space.seed(seed)
    observation, _ = env.reset(seed=seed)
    observations, rewards = [observation], []
    for _ in range(steps):
        observation, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        observations.append(observation)
        rewards.append(float(reward))
        if terminated or truncated:
            observation, _ = env.reset()
            observations.append(observation)
    return observations, rewards


@pytest.mark.parametrize("env_id", EXTERNAL_IDS)
def test_check_env_passes_without_other_warnings(env_id: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if env_id in MINATAR_IDS:
            check_env(gym.make(env_id, render_mode="rgb_array").unwrapped)
        elif env_id == "pixelpilot/Atari-v0":
            # ALE also declares "human" rendering, which check_env would open a window for.
            check_env(gym.make(env_id), skip_render_check=True)
        else:
            check_env(gym.make(env_id))
    unexpected = [str(warning.message) for warning in caught if WRAPPED_NOTE not in str(warning.message)]
    assert unexpected == []


@pytest.mark.parametrize("env_id", EXTERNAL_IDS)
def test_observations_are_channel_first_uint8_in_the_space(env_id: str) -> None:
    env = gym.make(env_id)
    assert env.observation_space.shape == DEFAULT_SHAPES[env_id]
    assert env.observation_space.dtype == np.uint8
    observations, _ = rollout(env, seed=0, steps=10)
    for observation in observations:
        assert observation.shape == DEFAULT_SHAPES[env_id]
        assert observation.dtype == np.uint8
        assert env.observation_space.contains(observation)


@pytest.mark.parametrize("env_id", EXTERNAL_IDS)
def test_same_seed_gives_the_same_episode_bit_for_bit(env_id: str) -> None:
    first_observations, first_rewards = rollout(gym.make(env_id), seed=42)
    second_observations, second_rewards = rollout(gym.make(env_id), seed=42)
    assert first_rewards == second_rewards
    assert len(first_observations) == len(second_observations)
    for first, second in zip(first_observations, second_observations, strict=True):
        np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("env_id", EXTERNAL_IDS)
def test_reset_with_a_seed_replays_the_episode_after_earlier_play(env_id: str) -> None:
    played = gym.make(env_id)
    rollout(played, seed=1, steps=20)
    replayed_observations, replayed_rewards = rollout(played, seed=7, steps=30)
    fresh_observations, fresh_rewards = rollout(gym.make(env_id), seed=7, steps=30)
    assert replayed_rewards == fresh_rewards
    for replayed, fresh in zip(replayed_observations, fresh_observations, strict=True):
        np.testing.assert_array_equal(replayed, fresh)


@pytest.mark.parametrize("env_id", MINATAR_IDS)
def test_minatar_different_seeds_give_different_episodes(env_id: str) -> None:
    first_observations, _ = rollout(gym.make(env_id), seed=1)
    second_observations, _ = rollout(gym.make(env_id), seed=2)
    assert any(
        not np.array_equal(first, second)
        for first, second in zip(first_observations, second_observations, strict=False)
    )


def test_pixel_observation_is_the_channel_first_render() -> None:
    env = make_pixel_env("CartPole-v1", image_size=(400, 600), grayscale=False)
    observation, _ = env.reset(seed=0)
    assert observation.shape == (3, 400, 600)
    np.testing.assert_array_equal(observation, env.render().transpose(2, 0, 1))


def test_pixel_cartpole_frame_changes_when_the_pole_moves() -> None:
    env = make_pixel_env("CartPole-v1", image_size=64)
    first, _ = env.reset(seed=0)
    start_angle = env.unwrapped.state[2]
    for _ in range(6):
        observation, _, terminated, _, _ = env.step(1)
    assert not terminated
    assert abs(env.unwrapped.state[2] - start_angle) > 0.05
    assert 0 < first.mean() < 255  # a picture, not a blank frame
    assert np.count_nonzero(observation != first) > 20


def test_pixel_frame_stack_keeps_the_last_frames_oldest_first() -> None:
    env = make_pixel_env("CartPole-v1", image_size=32, grayscale=False, frame_stack=3)
    observation, _ = env.reset(seed=0)
    assert observation.shape == (9, 32, 32)
    # After a reset the stack is padded with the first frame.
    np.testing.assert_array_equal(observation[0:3], observation[6:9])
    for _ in range(3):
        previous = observation
        observation, *_ = env.step(1)
        np.testing.assert_array_equal(observation[0:6], previous[3:9])
    assert not np.array_equal(observation[6:9], previous[6:9])


def test_pixel_wrappers_wrap_a_user_made_env() -> None:
    env = pixel_wrappers(gym.make("Acrobot-v1", render_mode="rgb_array"), image_size=24, frame_stack=2)
    observation, _ = env.reset(seed=0)
    assert observation.shape == env.observation_space.shape == (2, 24, 24)
    assert env.metadata["render_modes"] == ["rgb_array"]


def test_pixel_wrappers_reject_an_env_without_rgb_array_rendering() -> None:
    with pytest.raises(ValueError, match="render_mode='rgb_array'"):
        pixel_wrappers(gym.make("CartPole-v1"))


def test_atari_stacks_four_84x84_frames_that_shift_each_step() -> None:
    env = gym.make("pixelpilot/Atari-v0", game="breakout")
    assert env.observation_space.shape == (4, 84, 84)
    assert env.action_space.n == 4  # minimal action set by default
    observation, _ = env.reset(seed=0)
    assert observation.shape == (4, 84, 84) and observation.dtype == np.uint8
    for _ in range(3):
        previous = observation
        observation, *_ = env.step(1)
        np.testing.assert_array_equal(observation[:3], previous[1:])


def test_atari_converts_snake_case_names_and_options() -> None:
    env = gym.make(
        "pixelpilot/Atari-v0",
        game="space_invaders",
        full_action_space=True,
        repeat_action_probability=0.0,
        frame_stack=2,
        screen_size=64,
        render_mode="rgb_array",
    )
    assert env.unwrapped._game == "space_invaders"
    assert env.unwrapped.ale.getFloat("repeat_action_probability") == 0.0
    assert env.action_space.n == 18
    assert env.observation_space.shape == (2, 64, 64)
    env.reset(seed=0)
    assert env.render().shape == (210, 160, 3)


def test_atari_step_advances_frame_skip_emulator_frames() -> None:
    env = gym.make("pixelpilot/Atari-v0", game="pong", frame_skip=3)
    env.reset(seed=0)
    frame = env.unwrapped.ale.getEpisodeFrameNumber()
    env.step(0)
    # ALE's own frameskip must be off, or each step would run frame_skip**2 frames.
    assert env.unwrapped.ale.getEpisodeFrameNumber() - frame == 3


@pytest.mark.parametrize("game", ["pongx", "SpaceInvaders"])
def test_unknown_atari_game_error_names_it_and_suggests_valid_ones(game: str) -> None:
    with pytest.raises(ValueError, match=f"Unknown Atari game '{game}'.*Did you mean.*Valid games include"):
        gym.make("pixelpilot/Atari-v0", game=game)


def test_minatar_breakout_start_screen_is_channel_first() -> None:
    observation, _ = gym.make("pixelpilot/MinAtar-Breakout-v0").reset(seed=0)
    assert set(np.unique(observation)) == {0, 255}
    paddle, _, _, brick = observation
    assert paddle[9, 4] == 255 and np.count_nonzero(paddle) == 1  # bottom row, middle
    assert (brick[1:4] == 255).all() and np.count_nonzero(brick) == 30  # rows 1 to 3


def test_minatar_action_sets() -> None:
    assert gym.make("pixelpilot/MinAtar-Breakout-v0").action_space.n == 3
    assert gym.make("pixelpilot/MinAtar-SpaceInvaders-v0").action_space.n == 4
    assert gym.make("pixelpilot/MinAtar-Breakout-v0", use_minimal_action_set=False).action_space.n == 6


def test_minatar_minimal_actions_map_to_the_game_actions() -> None:
    env = MinAtarEnv("breakout", sticky_action_prob=0.0)
    env.reset(seed=0)
    for _ in range(3):
        observation, *_ = env.step(2)  # minimal set [no-op, left, right]: right
    assert observation[0, 9, 7] == 255


def test_minatar_sticky_action_does_not_carry_over_a_reset() -> None:
    env = MinAtarEnv("breakout", sticky_action_prob=0.9)
    env.reset(seed=0)
    for _ in range(10):
        env.step(2)  # right: becomes minatar's remembered last action
    observation, _ = env.reset(seed=0)
    for _ in range(5):
        observation, *_ = env.step(0)  # no-op, or a repeat of the previous no-op
    assert observation[0, 9, 4] == 255  # the paddle has not moved from the middle


@pytest.mark.parametrize("env_id", MINATAR_IDS)
def test_minatar_render_colours_the_occupied_cells(env_id: str) -> None:
    env = gym.make(env_id, render_mode="rgb_array", render_scale=4)
    observation, _ = env.reset(seed=0)
    image = env.render()
    assert image.shape == (40, 40, 3) and image.dtype == np.uint8
    cells = image[::4, ::4]
    np.testing.assert_array_equal(np.repeat(np.repeat(cells, 4, axis=0), 4, axis=1), image)
    np.testing.assert_array_equal(cells.any(axis=-1), observation.any(axis=0))


def test_minatar_unknown_game_is_rejected() -> None:
    with pytest.raises(ValueError, match="Unknown MinAtar game 'pong'.*space_invaders"):
        MinAtarEnv("pong")
