"""The batched pixel envs: Gymnasium API, determinism, physics against Gymnasium, rendering."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers pixelpilot/...)
from envs import raster
from envs.bench import bench_envs
from envs.cartpole import TRACK_LEVEL, PixelCartPoleEnv, PixelCartPoleVectorEnv, render_cartpole
from envs.pendulum import PixelPendulumEnv, PixelPendulumVectorEnv, angle_normalize, is_success, render_pendulum

PIXEL_IDS = ["pixelpilot/Pendulum-v0", "pixelpilot/CartPoleBalance-v0", "pixelpilot/CartPoleSwingUp-v0"]
VECTOR_CLASSES = {
    "pixelpilot/Pendulum-v0": (PixelPendulumVectorEnv, {}),
    "pixelpilot/CartPoleBalance-v0": (PixelCartPoleVectorEnv, {"task": "balance"}),
    "pixelpilot/CartPoleSwingUp-v0": (PixelCartPoleVectorEnv, {"task": "swingup"}),
}
# The only warnings check_env may give: Pendulum-v1's torque range [-2, 2] is kept on purpose,
# and the made env is wrapped (TimeLimit) by design.
EXPECTED_WARNINGS = ("symmetric and normalized", "different from the unwrapped")


def _rollout(env: gym.Env, seed: int, steps: int) -> tuple[list[np.ndarray], list[float]]:
    observation, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    observations, rewards = [observation], []
    for _ in range(steps):
        observation, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        observations.append(observation)
        rewards.append(reward)
        if terminated or truncated:
            observation, _ = env.reset()
            observations.append(observation)
    return observations, rewards


@pytest.mark.parametrize("env_id", PIXEL_IDS, ids=PIXEL_IDS)
def test_check_env_passes_with_no_unexpected_warnings(env_id):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(gym.make(env_id).unwrapped)
        check_env(gym.make(env_id))
        _rollout(gym.make(env_id, render_mode="rgb_array"), seed=0, steps=5)
    unexpected = [str(w.message) for w in caught if not any(e in str(w.message) for e in EXPECTED_WARNINGS)]
    assert unexpected == []


@pytest.mark.parametrize("env_id", PIXEL_IDS, ids=PIXEL_IDS)
def test_same_seed_gives_identical_episodes(env_id):
    first_obs, first_rewards = _rollout(gym.make(env_id), seed=7, steps=120)
    second_obs, second_rewards = _rollout(gym.make(env_id), seed=7, steps=120)
    other_obs, _ = _rollout(gym.make(env_id), seed=8, steps=3)
    assert len(first_obs) == len(second_obs)
    assert all(np.array_equal(a, b) for a, b in zip(first_obs, second_obs, strict=True))
    assert first_rewards == second_rewards
    assert not np.array_equal(first_obs[0], other_obs[0]), "a different seed should start elsewhere"


@pytest.mark.parametrize("env_id", PIXEL_IDS, ids=PIXEL_IDS)
def test_observations_are_channel_first_uint8_in_space(env_id):
    env = gym.make(env_id)
    observation, info = env.reset(seed=0)
    side = 40 if "Pendulum" in env_id else 64
    assert observation.shape == (1, side, side) and observation.dtype == np.uint8
    assert env.observation_space.contains(observation)
    assert observation.max() == 255, "the pole is drawn at full brightness"
    assert "angle" in info and "angular_velocity" in info


@pytest.mark.parametrize("env_id", PIXEL_IDS, ids=PIXEL_IDS)
def test_vector_env_matches_single_env_from_the_same_state(env_id):
    vector_class, kwargs = VECTOR_CLASSES[env_id]
    single = gym.make(env_id).unwrapped
    vector = vector_class(num_envs=3, **kwargs)
    single.reset(seed=0)
    vector.reset(seed=1)
    start = np.array([single.state[0]] * 3)
    keys = (
        ("angle", "angular_velocity")
        if vector.task.state_dim == 2
        else ("x", "x_velocity", "angle", "angular_velocity")
    )
    options = {key: start[:, i] for i, key in enumerate(keys)}
    single_obs, _ = single.reset(options={key: value[0] for key, value in options.items()})
    vector_obs, _ = vector.reset(options=options)
    assert np.array_equal(vector_obs[1], single_obs)
    rng = np.random.default_rng(0)
    for _ in range(10):
        action = single.action_space.sample() if vector.task.action_space.shape == () else rng.uniform(-1, 1, (1,))
        action = np.asarray(action, dtype=single.action_space.dtype)
        single_obs, single_reward, terminated, _, single_info = single.step(action)
        vector_obs, vector_rewards, _, _, vector_infos = vector.step(np.stack([action] * 3))
        assert np.array_equal(vector_obs[2], single_obs)
        assert vector_rewards[2] == np.float32(single_reward)
        assert vector_infos["angle"][2] == single_info["angle"]
        if terminated:
            break


@pytest.mark.parametrize("env_id", PIXEL_IDS, ids=PIXEL_IDS)
def test_vector_env_truncates_then_autoresets_on_the_next_step(env_id):
    vector_class, kwargs = VECTOR_CLASSES[env_id]
    vector = vector_class(num_envs=4, max_episode_steps=3, **kwargs)
    vector.reset(seed=0)
    actions = np.stack([vector.single_action_space.sample()] * 4)
    for step in range(3):
        _, rewards, terminated, truncated, _ = vector.step(actions)
        assert not terminated.any()
        assert truncated.all() == (step == 2)
    before = vector.state.copy()
    observations, rewards, terminated, truncated, infos = vector.step(actions)
    assert not truncated.any() and not terminated.any()
    assert np.all(rewards == 0.0), "the reset step reports reward 0"
    assert not np.allclose(vector.state, before)
    assert np.array_equal(observations, vector.task.observe(vector.state))
    # A fresh episode counts from zero again: two more steps do not truncate.
    for _ in range(2):
        assert not vector.step(actions)[3].any()


def test_cartpole_balance_terminates_when_the_pole_falls_and_restarts_next_step():
    vector = PixelCartPoleVectorEnv(num_envs=2, task="balance")
    vector.reset(seed=0, options={"angle": np.array([0.0, 0.25])})  # 0.25 rad > 12 degrees
    _, rewards, terminated, _, _ = vector.step(np.zeros((2, 1), np.float32))
    assert terminated.tolist() == [False, True]
    assert rewards.tolist() == [1.0, 1.0]
    _, rewards, terminated, _, infos = vector.step(np.zeros((2, 1), np.float32))
    assert terminated.tolist() == [False, False] and rewards[1] == 0.0
    assert abs(infos["angle"][1]) <= 0.05, "the restarted env begins near upright"


def test_pendulum_physics_match_gymnasium_pendulum_v1_step_by_step():
    reference = gym.make("Pendulum-v1").unwrapped
    reference.reset(seed=0)
    ours = PixelPendulumEnv(velocity_cost=0.1)  # Pendulum-v1's own reward weights
    start = (2.5, -1.0)
    reference.state = np.array(start)
    ours.reset(seed=0, options={"angle": start[0], "angular_velocity": start[1]})
    torques = np.random.default_rng(0).uniform(-3, 3, 60).astype(np.float32)  # some beyond the limit
    for torque in torques:
        action = np.array([torque], np.float32)
        _, reference_reward, *_ = reference.step(action)
        _, reward, *_ = ours.step(np.clip(action, -2, 2))
        assert np.array_equal(ours.state[0], reference.state), (ours.state, reference.state)
        assert reward == pytest.approx(reference_reward, rel=1e-6)


def test_cartpole_physics_match_gymnasium_cartpole_v1_step_by_step():
    reference = gym.make("CartPole-v1").unwrapped
    reference.reset(seed=3)
    ours = PixelCartPoleEnv(task="balance", continuous=False)
    keys = ("x", "x_velocity", "angle", "angular_velocity")
    ours.reset(seed=0, options=dict(zip(keys, reference.state, strict=True)))
    for action in np.random.default_rng(0).integers(0, 2, 40):
        _, _, reference_terminated, *_ = reference.step(int(action))
        _, _, terminated, *_ = ours.step(int(action))
        assert np.array_equal(ours.state[0], np.asarray(reference.state))
        assert terminated == reference_terminated
        if terminated:
            break


def _rows_and_cols(frame: np.ndarray) -> tuple[float, float]:
    """Brightness-weighted centre (row, col) of a (height, width) frame."""
    rows, cols = np.indices(frame.shape)
    weight = frame.astype(np.float64)
    return (rows * weight).sum() / weight.sum(), (cols * weight).sum() / weight.sum()


def test_pendulum_pole_is_drawn_where_the_angle_says():
    upright, hanging, left = render_pendulum(np.array([0.0, np.pi, np.pi / 2], np.float32), 40)
    half = 20
    assert upright[:half].sum() > 10 * upright[half:].sum(), "upright: the pole is in the upper half"
    assert hanging[half:].sum() > 10 * hanging[:half].sum(), "hanging: the pole is in the lower half"
    assert left[:, :half].sum() > 10 * left[:, half:].sum(), "positive angles turn counter-clockwise"
    row, col = _rows_and_cols(upright)
    assert col == pytest.approx(19.5, abs=0.01), "upright is centred left-right"


def test_cartpole_cart_follows_x_and_pole_follows_angle():
    right, upright, hanging = render_cartpole(
        np.array([1.5, 0.0, 0.0], np.float32), np.array([0.0, 0.0, np.pi], np.float32), 64, 64
    )
    above_track = TRACK_LEVEL + 1
    assert _rows_and_cols(right >= above_track)[1] > _rows_and_cols(upright >= above_track)[1] + 10, (
        "cart at x = 1.5 m is drawn to the right"
    )
    pole_rows = np.nonzero((upright == 255).any(axis=1))[0]
    assert pole_rows.min() < 32 - 8, "the upright pole rises above the track"
    assert np.nonzero((hanging == 255).any(axis=1))[0].max() > 32 + 8, "the hanging pole hangs below it"


def test_capsule_and_disc_cover_their_area():
    image = np.zeros((2, 40, 40), np.uint8)
    raster.draw_disc(image[:1], np.array([20.3]), np.array([17.8]), 6.0)
    raster.draw_capsule(image[1:], np.array([8.0]), np.array([20.0]), np.array([28.0]), np.array([20.0]), 3.0)
    assert image[0].sum() / 255 == pytest.approx(np.pi * 36, rel=0.02)
    assert image[1].sum() / 255 == pytest.approx(20 * 6 + np.pi * 9, rel=0.02)
    assert image[1, 20, 4] == 0 and image[1, 20, 5] > 0 and image[1, 20, 20] == 255


@pytest.fixture
def one_torch_thread():
    """torch with one CPU thread: many tiny ops on a busy 2-core machine are ~50x slower with two."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


@pytest.mark.parametrize("env_id", PIXEL_IDS, ids=PIXEL_IDS)
def test_torch_backend_draws_the_same_images_as_numpy(env_id, one_torch_thread):
    torch = one_torch_thread
    vector_class, kwargs = VECTOR_CLASSES[env_id]
    numpy_env = vector_class(num_envs=16, max_episode_steps=20, **kwargs)
    torch_env = vector_class(num_envs=16, max_episode_steps=20, backend="torch", device="cpu", **kwargs)
    numpy_obs, _ = numpy_env.reset(seed=3)
    torch_obs, _ = torch_env.reset(seed=3)
    assert isinstance(torch_obs, torch.Tensor) and torch_obs.dtype == torch.uint8
    rng = np.random.default_rng(0)
    for _ in range(25):
        actions = np.stack([numpy_env.single_action_space.sample() for _ in range(16)])
        if actions.dtype == np.float32:
            actions = rng.uniform(-1, 1, actions.shape).astype(np.float32)
        numpy_obs, numpy_rewards, *_ = numpy_env.step(actions)
        torch_obs, torch_rewards, *_ = torch_env.step(torch.as_tensor(actions))
        assert np.abs(torch_obs.numpy().astype(int) - numpy_obs).max() <= 1
        np.testing.assert_allclose(torch_rewards.numpy(), numpy_rewards, rtol=1e-5, atol=1e-6)


def test_is_success_needs_the_last_20_frames_within_20_degrees():
    held = np.concatenate([np.full(80, np.pi), np.full(20, np.deg2rad(19.0))])
    assert is_success(held)
    late = held.copy()
    late[-1] = np.deg2rad(21.0)
    assert not is_success(late)
    wound = held + 4 * np.pi  # any number of full turns
    assert is_success(np.stack([held, late, wound])).tolist() == [True, False, True]
    assert not is_success(held[-19:]), "too short to judge"
    assert angle_normalize(np.array([np.pi + 0.1]))[0] == pytest.approx(-np.pi + 0.1)


def _hold_upright(info: dict) -> np.ndarray:
    """Actions that keep a pole that starts near upright within a few degrees of it (PD on the pole
    angle): pendulum torque or cart-pole force, (1,) float32 for a single env's info, (n, 1) for a
    vector env's."""
    angle, velocity = np.asarray(info["angle"]), np.asarray(info["angular_velocity"])
    if "x" in info:  # cart-pole: move the cart under the pole
        return np.clip(10 * angle + 2 * velocity, -1, 1)[..., None].astype(np.float32)
    return np.clip(-(10 * angle + 2 * velocity), -2, 2)[..., None].astype(np.float32)


# Episodes of 60 steps: random actions, held upright throughout, held for 35 steps then pushed over.
SUCCESS_POLICIES = {"random": False, "held": True, "pushed_over": False}


@pytest.mark.parametrize("policy", SUCCESS_POLICIES)
@pytest.mark.parametrize("env_id", PIXEL_IDS, ids=PIXEL_IDS)
def test_is_success_on_every_step_follows_the_reference_rule(env_id, policy):
    env = gym.make(env_id, max_episode_steps=60)
    env.action_space.seed(0)
    _, info = env.reset(seed=0, options=None if policy == "random" else {"angle": 0.1})
    assert info["is_success"] is False
    angles = []
    for step in range(60):
        if policy == "random":
            action = env.action_space.sample()
        elif policy == "pushed_over" and step >= 35:
            action = env.action_space.high
        else:
            action = _hold_upright(info)
        _, _, terminated, truncated, info = env.step(action)
        angles.append(info["angle"])  # the states after each step; the reset frame does not count
        assert info["is_success"] is (bool(is_success(angles)) and not terminated), f"step {step}"
        if terminated or truncated:
            break
    assert info["is_success"] is SUCCESS_POLICIES[policy], "the last step says whether the episode succeeded"


def test_cartpole_balance_step_that_drops_the_pole_is_not_a_success():
    env = PixelCartPoleEnv(task="balance")
    _, info = env.reset(seed=0, options={"angle": 0.05})
    angles = []
    for _ in range(30):
        _, _, terminated, _, info = env.step(_hold_upright(info))
        angles.append(info["angle"])
    assert info["is_success"] and not terminated
    while not terminated:
        _, _, terminated, _, info = env.step(np.array([1.0], np.float32))
        angles.append(info["angle"])
    assert is_success(angles), "the pole fell only past 12 degrees: within 20 in the last 20 frames"
    assert info["is_success"] is False


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("env_id", PIXEL_IDS, ids=PIXEL_IDS)
def test_vector_is_success_follows_the_reference_rule_through_autoresets(env_id, backend, request):
    if backend == "torch":
        request.getfixturevalue("one_torch_thread")
    vector_class, kwargs = VECTOR_CLASSES[env_id]
    device = {"device": "cpu"} if backend == "torch" else {}
    vector = vector_class(num_envs=4, max_episode_steps=40, backend=backend, **device, **kwargs)
    _, infos = vector.reset(seed=0, options={"angle": 0.1})
    assert np.asarray(infos["is_success"]).tolist() == [False] * 4
    plays_randomly = np.array([True, False, True, False])  # the others are held upright
    space = vector.single_action_space
    rng = np.random.default_rng(0)
    angles = [[] for _ in range(4)]
    restarting = np.zeros(4, bool)
    endings = []
    for step in range(100):
        random_actions = rng.uniform(space.low, space.high, (4, 1)).astype(np.float32)
        actions = np.where(plays_randomly[:, None], random_actions, _hold_upright(infos))
        _, _, terminated, truncated, infos = vector.step(actions)
        terminated, truncated, success = (np.asarray(x) for x in (terminated, truncated, infos["is_success"]))
        assert success.shape == (4,) and success.dtype == bool
        for index in range(4):
            if restarting[index]:  # the autoreset step shows the new episode's reset frame
                angles[index] = []
                assert not success[index], f"step {step}, env {index}"
                continue
            angles[index].append(float(infos["angle"][index]))
            expected = bool(is_success(angles[index])) and not terminated[index]
            assert success[index] == expected, f"step {step}, env {index}"
            if terminated[index] or truncated[index]:
                endings.append(bool(success[index]))
        restarting = terminated | truncated
    assert True in endings and False in endings, "held envs succeed, random ones fail"


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_vector_success_count_restarts_after_autoreset(backend, request):
    if backend == "torch":
        request.getfixturevalue("one_torch_thread")
    device = {"device": "cpu"} if backend == "torch" else {}
    vector = PixelCartPoleVectorEnv(num_envs=2, task="balance", max_episode_steps=30, backend=backend, **device)
    _, infos = vector.reset(seed=0)
    successes = []
    for _ in range(70):
        _, _, terminated, _, infos = vector.step(_hold_upright(infos))
        assert not np.asarray(terminated).any(), "held upright, the pole never falls"
        successes.append(np.asarray(infos["is_success"]).tolist())
    # Steps 1-30: episode 1's frames 1-30; step 31: the autoreset (frame 0 of episode 2); steps 32-61:
    # its frames 1-30; step 62: the next autoreset; steps 63-70: frames 1-8 of episode 3.
    frame = [step if step <= 30 else (step - 31 if step <= 61 else step - 62) for step in range(1, 71)]
    assert successes == [[index >= 20] * 2 for index in frame]


@pytest.mark.parametrize("task", ["balance", "swingup"])
def test_cartpole_tip_reward_is_one_upright_at_the_centre_and_falls_with_the_tips_distance(task, one_torch_thread):
    import torch

    env = PixelCartPoleEnv(task=task, reward="tip")
    rewards = {}
    for x, angle in [(0.0, 0.0), (0.0, 0.2), (0.5, 0.0), (0.0, np.pi)]:
        env.reset(seed=0, options={"x": x, "angle": angle, "x_velocity": 0.0, "angular_velocity": 0.0})
        _, rewards[x, angle], _, _, info = env.step(np.zeros(1, np.float32))
        tip = np.hypot(info["x"] + np.sin(info["angle"]), 1 - np.cos(info["angle"]))  # the 1 m pole's tip
        assert rewards[x, angle] == pytest.approx(np.exp(-tip**2 / (2 * 0.25**2)), rel=1e-4)
    assert rewards[0.0, 0.0] > 0.99 > rewards[0.0, 0.2] > rewards[0.5, 0.0] > rewards[0.0, np.pi]
    numpy_core = PixelCartPoleVectorEnv(num_envs=3, task=task, reward="tip")
    torch_core = PixelCartPoleVectorEnv(num_envs=3, task=task, reward="tip", backend="torch", device="cpu")
    for vector in (numpy_core, torch_core):
        vector.reset(seed=3)
    actions = np.array([[1.0], [-0.5], [0.0]], np.float32)
    _, numpy_rewards, *_ = numpy_core.step(actions)
    _, torch_rewards, *_ = torch_core.step(torch.from_numpy(actions))
    np.testing.assert_allclose(np.asarray(torch_rewards), numpy_rewards, rtol=1e-5)
    assert (numpy_rewards > 0).all() and (numpy_rewards <= 1).all()


def assert_torch_reward_is_numpys(reward: str) -> None:
    """The swing-up's `reward` on the torch backend equals numpy's, for three pushes from one start."""
    import torch

    numpy_core = PixelCartPoleVectorEnv(num_envs=3, task="swingup", reward=reward)
    torch_core = PixelCartPoleVectorEnv(num_envs=3, task="swingup", reward=reward, backend="torch", device="cpu")
    for vector in (numpy_core, torch_core):
        vector.reset(seed=3)
    actions = np.array([[1.0], [-0.5], [0.0]], np.float32)
    _, numpy_rewards, *_ = numpy_core.step(actions)
    _, torch_rewards, *_ = torch_core.step(torch.from_numpy(actions))
    np.testing.assert_allclose(np.asarray(torch_rewards), numpy_rewards, rtol=1e-5, atol=1e-30)


def test_cartpole_upright_reward_sees_the_lean_the_tip_reward_hardly_sees(one_torch_thread):
    rewards = {}
    for reward in ("tip", "upright"):
        env = PixelCartPoleEnv(task="balance", reward=reward)
        for x, angle in [(0.0, 0.0), (0.0, 0.2), (-0.2, 0.2), (1.0, 0.0), (0.0, 2 * np.pi + 0.1)]:
            env.reset(seed=0, options={"x": x, "angle": angle, "x_velocity": 0.0, "angular_velocity": 0.0})
            _, rewards[reward, x, angle], _, _, info = env.step(np.zeros(1, np.float32))
            if reward == "upright":
                expected = np.exp(-info["angle"] ** 2 / (2 * 0.1**2) - info["x"] ** 2 / 2)
                assert rewards[reward, x, angle] == pytest.approx(expected, rel=1e-4)
    # a cart pushed away from a 0.2 rad lean keeps the tip over the centre: the tip reward likes it, upright does not
    assert rewards["tip", -0.2, 0.2] > rewards["tip", 0.0, 0.2]
    assert rewards["upright", -0.2, 0.2] < rewards["upright", 0.0, 0.2] < 0.2
    assert rewards["upright", 0.0, 0.0] > 0.99 and rewards["upright", 1.0, 0.0] == pytest.approx(np.exp(-0.5), rel=1e-2)
    assert rewards["upright", 0.0, 2 * np.pi + 0.1] == pytest.approx(rewards["upright", 0.0, 0.2] ** 0.25, rel=0.2)
    assert_torch_reward_is_numpys("upright")


def test_cartpole_dmc_reward_pays_a_held_pole_twice_a_spun_one(one_torch_thread):
    env = PixelCartPoleEnv(task="swingup", reward="dmc")

    def reward(x=0.0, angle=0.0, spin=0.0):
        env.reset(seed=0, options={"x": x, "angle": angle, "x_velocity": 0.0, "angular_velocity": spin})
        return env.step(np.zeros(1, np.float32))[1]

    assert reward() > 0.99 and reward(angle=np.pi) < 0.01
    assert reward(spin=12.0) == pytest.approx(0.5, abs=0.03)  # through the top at 12 rad/s: about half
    assert reward(x=2.0) == pytest.approx(0.55, abs=0.02)  # DMC's centred factor: (1 + 0.1) / 2 at 2 m
    assert reward(spin=5.0) == pytest.approx(0.55, abs=0.05)
    assert_torch_reward_is_numpys("dmc")


def test_cartpole_position_cost_weighs_the_carts_distance_in_the_swingup_reward(one_torch_thread):
    import torch

    rewards = {}
    for cost in (0.1, 1.0):
        env = PixelCartPoleEnv(task="swingup", position_cost=cost)
        for x in (0.0, 1.2, 2.0):
            env.reset(seed=0, options={"x": x, "angle": 0.0, "x_velocity": 0.0, "angular_velocity": 0.0})
            _, rewards[cost, x], _, _, info = env.step(np.zeros(1, np.float32))
            expected = 0.5 * (1 + np.cos(info["angle"])) - cost * (info["x"] / 2.4) ** 2
            assert rewards[cost, x] == pytest.approx(expected, rel=1e-4)
    assert rewards[0.1, 0.0] == pytest.approx(rewards[1.0, 0.0], rel=1e-6)  # no cost at the centre
    assert rewards[1.0, 2.0] < rewards[0.1, 2.0] - 0.5  # near the track's end the larger cost outweighs the height
    numpy_core = PixelCartPoleVectorEnv(num_envs=3, task="swingup", position_cost=1.0)
    torch_core = PixelCartPoleVectorEnv(num_envs=3, task="swingup", position_cost=1.0, backend="torch", device="cpu")
    for vector in (numpy_core, torch_core):
        vector.reset(seed=3, options={"x": np.array([0.0, 1.0, -2.0])})
    actions = np.array([[1.0], [-0.5], [0.0]], np.float32)
    _, numpy_rewards, *_ = numpy_core.step(actions)
    _, torch_rewards, *_ = torch_core.step(torch.from_numpy(actions))
    np.testing.assert_allclose(np.asarray(torch_rewards), numpy_rewards, rtol=1e-5)
    with pytest.raises(ValueError, match="position_cost must be >= 0"):
        PixelCartPoleEnv(task="swingup", position_cost=-1.0)


def test_bad_arguments_say_what_is_wrong():
    with pytest.raises(ValueError, match="task must be one of"):
        PixelCartPoleEnv(task="juggle")
    with pytest.raises(ValueError, match="reward must be one of"):
        PixelCartPoleEnv(reward="height")
    with pytest.raises(ValueError, match="unknown reset options"):
        PixelPendulumEnv().reset(options={"angel": 0.0})
    with pytest.raises(ValueError, match="backend"):
        PixelPendulumVectorEnv(backend="jax")


def test_bench_envs_reports_baseline_numpy_and_ratio():

    result = bench_envs(seconds=0.3, batch_size=64, device=None)
    assert result["baseline"]["frames_per_s"] > 0 and result["numpy"]["frames_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["numpy"]["frames_per_s"] / result["baseline"]["frames_per_s"])
    assert result["hardware"]["cores"] >= 1 and isinstance(result["hardware"]["cpu"], str)


def test_gymnasium_rendering_prints_no_sdl_errors_without_a_desktop():
    # Gymnasium's pygame renderers start SDL's video; without a desktop SDL's Wayland probe prints
    # "error: XDG_RUNTIME_DIR is invalid or not set" unless envs/ steers it to the dummy driver.
    unset = ("XDG_RUNTIME_DIR", "DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER", "SDL_AUDIODRIVER")
    environment = {name: value for name, value in os.environ.items() if name not in unset}
    script = (
        "import gymnasium as gym, envs\n"
        "from envs.bench import _baseline\n"
        "_baseline(0.1, 40)\n"
        "gym.make('pixelpilot/Pixels-v0', env_id='CartPole-v1').reset(seed=0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=environment, cwd=Path(__file__).parents[2],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "XDG_RUNTIME_DIR" not in result.stderr and "ALSA" not in result.stderr, result.stderr


@pytest.mark.parametrize("env_id", PIXEL_IDS, ids=PIXEL_IDS)
def test_torch_backend_draws_start_states_ahead_yet_the_same_ones_across_resets(env_id, one_torch_thread,
                                                                               monkeypatch):
    torch = one_torch_thread
    vector_class, kwargs = VECTOR_CLASSES[env_id]
    numpy_env = vector_class(num_envs=4, max_episode_steps=7, **kwargs)
    torch_env = vector_class(num_envs=4, max_episode_steps=7, backend="torch", device="cpu", **kwargs)
    draws = []
    original = torch_env.task.sample_start
    monkeypatch.setattr(torch_env.task, "sample_start",
                        lambda rng, count, options: (draws.append(count), original(rng, count, options))[1])
    numpy_env.reset(seed=5)
    torch_env.reset(seed=5)
    actions = np.zeros(numpy_env.action_space.shape, numpy_env.single_action_space.dtype)
    for step in range(300):
        if step in (50, 200):  # resets without a seed go on with the generator where it stands
            numpy_obs, _ = numpy_env.reset()
            torch_obs, _ = torch_env.reset()
        else:
            numpy_obs, *_ = numpy_env.step(actions)
            torch_obs, *_ = torch_env.step(torch.as_tensor(actions))
        assert np.abs(torch_obs.numpy().astype(int) - numpy_obs).max() <= 1, step
        np.testing.assert_allclose(torch_env.state.numpy(), numpy_env.state, rtol=1e-6, atol=1e-8)
    # a block of 128 steps' start states per draw, not one draw (and one copy to the device) per step
    steps_drawn = [count // 4 for count in draws if count > 4]
    assert len(draws) < 12 and 128 in steps_drawn


@pytest.mark.parametrize("task", ["balance", "swingup"])
def test_cartpole_action_repeat_holds_the_action_and_sums_the_rewards_until_the_end(task, one_torch_thread):
    import torch

    repeat, kind = 4, {"balance": "upright", "swingup": "task"}[task]  # rewards that are not ~0 at the start
    actions = np.random.default_rng(1).uniform(-1, 1, (12, 2, 1)).astype(np.float32)
    single = PixelCartPoleVectorEnv(num_envs=2, task=task, reward=kind)
    repeated = PixelCartPoleVectorEnv(num_envs=2, task=task, reward=kind, action_repeat=repeat)
    on_torch = PixelCartPoleVectorEnv(num_envs=2, task=task, reward=kind, action_repeat=repeat, backend="torch",
                                      device="cpu")
    # the second env leans (balance) or moves fast (swing-up) so that it ends inside a repeat
    options = {"angle": np.array([0.0, 0.17]), "x": np.array([0.0, 2.3]), "x_velocity": np.array([0.0, 0.6])}
    if task == "swingup":
        options["angle"] = options["angle"] + np.pi
    for env in (single, repeated, on_torch):
        env.reset(seed=0, options=options)
    ended = np.zeros(2, bool)
    for action in actions:
        expected_reward, counted = np.zeros(2), np.zeros(2, int)
        for _ in range(repeat):
            _, reward, terminated, _, _ = single.step(action)
            expected_reward += np.where(ended, 0.0, reward)
            counted += ~ended
            if (terminated & ~ended).any():
                end_state = single.state.copy()  # the single env restarts on its next step: keep where it ended
            ended |= terminated
        _, reward, terminated, _, _ = repeated.step(action)
        _, torch_reward, *_ = on_torch.step(torch.from_numpy(action))
        expected_state = np.where(terminated[:, None], end_state, single.state) if terminated.any() else single.state
        np.testing.assert_allclose(repeated.state, expected_state, rtol=1e-12)
        np.testing.assert_allclose(reward, expected_reward, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(torch_reward), reward, rtol=1e-5, atol=1e-30)
        assert terminated.tolist() == ended.tolist()
        if terminated.any():
            break
    assert terminated.tolist() == [False, True], "the second env ended inside a repeat, the first held on"
    assert counted.tolist()[0] == repeat and counted[1] < repeat, "the ended env's rewards and state stop at its end"
    assert PixelCartPoleEnv(action_repeat=repeat).metadata["render_fps"] == 50 / repeat
    with pytest.raises(ValueError, match="action_repeat"):
        PixelCartPoleEnv(action_repeat=0)
