"""The frame replay: stacks, n-step returns, autoreset masks, wrap-around, priorities, sizes, resume."""

from __future__ import annotations

import io

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.wrappers import FrameStackObservation

import envs  # noqa: F401  (registers pixelpilot/...)
from agents.dqn.replay import FrameReplay, ReplaySamples

MARKER = 65535  # frame id of the steps that must not be stored (the autoreset steps)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True, params=[None, False], ids=["numpy", "torch"])
def bookkeeping(request, monkeypatch):
    """Every test on both of the replay's bookkeeping namespaces: NumPy views (a CPU replay's default) and torch
    (the GPU's, here on the CPU)."""
    if request.param is False:
        defaults = FrameReplay.__init__.__defaults__
        monkeypatch.setattr(FrameReplay.__init__, "__defaults__", (*defaults[:-1], False))


def encode(ids: np.ndarray, channels: int = 1) -> np.ndarray:
    """Frames that spell their id: (n,) ids < 65536 -> (n, channels, 1, 2) uint8, every channel the same."""
    ids = np.asarray(ids, dtype=np.int64)
    frame = np.stack([ids % 256, ids // 256], -1).astype(np.uint8)[:, None, None, :]
    return np.repeat(frame, channels, axis=1)


def decode(stacks: torch.Tensor, stack: int, channels: int) -> np.ndarray:
    """(batch, stack * channels, 1, 2) stacked frames -> (batch, stack) ids, checking that channels agree (so
    a stack laid out other than oldest frame first, its channels together, fails)."""
    frames = stacks.view(-1, stack, channels, 1, 2).long().cpu().numpy()
    ids = frames[..., 0, 0] + 256 * frames[..., 0, 1]  # (batch, stack, channels)
    assert (ids == ids[..., :1]).all()
    return ids[..., 0]


class Reference:
    """A slow replay model in plain Python: every env's stream of entries and the rule for what is sampleable."""

    def __init__(self, num_envs: int, slots_per_env: int, stack: int, n_step: int, gamma: float):
        self.streams: list[list[dict]] = [[] for _ in range(num_envs)]
        self.slots, self.stack, self.n_step, self.gamma = slots_per_env, stack, n_step, gamma
        self.where: dict[int, tuple[int, int]] = {}  # action id -> (env, position in its stream)

    def add(self, frame_ids, actions, rewards, terminated, truncated, next_frame_ids, mask) -> None:
        for env in np.flatnonzero(mask):
            stream = self.streams[env]
            running = stream and not (stream[-1]["final"] or stream[-1]["terminated"] or stream[-1]["truncated"])
            start = stream[-1]["start"] if running else len(stream)
            self.where[int(actions[env])] = (env, len(stream))
            stream.append(dict(frame=int(frame_ids[env]), reward=float(rewards[env]), final=False, start=start,
                               terminated=bool(terminated[env]), truncated=bool(truncated[env])))
            if terminated[env] or truncated[env]:
                stream.append(dict(frame=int(next_frame_ids[env]), reward=0.0, final=True, start=start,
                                   terminated=False, truncated=False))

    def transition(self, action: int) -> tuple[list[int], float, list[int], float] | None:
        """(frame ids of the stack at t, n-step return, frame ids of the stack at t + k, discount) of the step
        that took `action`, or None if it may not be sampled now."""
        env, position = self.where[action]
        stream = self.streams[env]
        start = stream[position]["start"]
        if max(position - self.stack + 1, start) < len(stream) - self.slots:
            return None  # its stack history (or itself) was overwritten
        total, steps = 0.0, 0
        for offset in range(self.n_step):
            if position + offset >= len(stream):
                return None
            entry = stream[position + offset]
            total += self.gamma**offset * entry["reward"]
            steps = offset + 1
            if entry["terminated"] or entry["truncated"]:
                break
        if position + steps >= len(stream):
            return None
        discount = 0.0 if stream[position + steps - 1]["terminated"] else self.gamma**steps

        def stacked(at: int) -> list[int]:
            return [stream[max(at - back, start)]["frame"] for back in reversed(range(self.stack))]

        return stacked(position), total, stacked(position + steps), discount

    def sampleable(self) -> set[int]:
        return {action for action in self.where if self.transition(action) is not None}


class IdEnv:
    """A vector env with next-step autoreset whose frames spell unique ids and whose actions are unique ids.

    :meth:`step` returns the arguments of FrameReplay.add (NumPy) and the frame ids; the autoreset steps (mask
    False) show the MARKER frame and action -1, which must never come back from the replay.
    """

    def __init__(self, num_envs: int, seed: int, end_probability: float = 0.15, channels: int = 1):
        self.num_envs, self.end_probability, self.channels = num_envs, end_probability, channels
        self.rng = np.random.default_rng(seed)
        self.next_id = 0
        self.frame_ids = self._new_ids(num_envs)
        self.done = np.zeros(num_envs, dtype=bool)

    def _new_ids(self, count: int) -> np.ndarray:
        ids = np.arange(self.next_id, self.next_id + count)
        self.next_id += count
        return ids

    def step(self) -> tuple[dict, np.ndarray, np.ndarray]:
        mask = ~self.done
        frame_ids = np.where(mask, self.frame_ids, MARKER)
        next_frame_ids = self._new_ids(self.num_envs)
        actions = np.where(mask, self._new_ids(self.num_envs), -1)
        rewards = np.where(mask, self.rng.normal(size=self.num_envs), 0.0).astype(np.float32)
        terminated = mask & (self.rng.random(self.num_envs) < self.end_probability / 2)
        truncated = mask & (self.rng.random(self.num_envs) < self.end_probability / 2)
        self.frame_ids, self.done = next_frame_ids, terminated | truncated
        arguments = dict(frames=encode(frame_ids, self.channels), actions=actions, rewards=rewards,
                         terminated=terminated, truncated=truncated,
                         next_frames=encode(next_frame_ids, self.channels), mask=mask)
        return arguments, frame_ids, next_frame_ids


def add_both(replay: FrameReplay, reference: Reference, env: IdEnv) -> None:
    arguments, frame_ids, next_frame_ids = env.step()
    replay.add(**arguments)
    reference.add(frame_ids, arguments["actions"], arguments["rewards"], arguments["terminated"],
                  arguments["truncated"], next_frame_ids, arguments["mask"])


def fill(replay: FrameReplay, env: IdEnv, steps: int) -> None:
    for _ in range(steps):
        replay.add(**env.step()[0])


def check_samples(samples: ReplaySamples, reference: Reference, channels: int = 1) -> None:
    """Every sampled transition is sampleable in the reference and equals it."""
    observations = decode(samples.observations, reference.stack, channels)
    next_observations = decode(samples.next_observations, reference.stack, channels)
    assert samples.observations.dtype == torch.uint8 and samples.actions.dtype == torch.int64
    assert samples.returns.dtype == samples.discounts.dtype == samples.weights.dtype == torch.float32
    for row, action in enumerate(samples.actions.tolist()):
        expected = reference.transition(action)
        assert expected is not None, f"sampled action {action}, which may not be sampled"
        stack, total, next_stack, discount = expected
        assert observations[row].tolist() == stack
        assert next_observations[row].tolist() == next_stack
        assert samples.returns[row].item() == pytest.approx(total, rel=1e-5, abs=1e-6)
        assert samples.discounts[row].item() == pytest.approx(discount, rel=1e-6)


def sampled_actions(replay: FrameReplay, draws: int = 4000) -> set[int]:
    return set(replay.sample(draws).actions.tolist())


def test_stacks_equal_frame_stack_observation_across_episode_boundaries():
    stack, num_envs, gamma = 4, 3, 0.9
    vector = gym.vector.SyncVectorEnv([
        lambda length=length: FrameStackObservation(
            gym.make("pixelpilot/Pendulum-v0", max_episode_steps=length), stack)
        for length in (5, 7, 9)  # episodes end at different steps, so the streams' boundaries differ
    ])
    replay = FrameReplay(300, num_envs, (1, 40, 40), stack=stack, gamma=gamma,
                         generator=torch.Generator().manual_seed(0))
    rng = np.random.default_rng(0)
    observations, _ = vector.reset(seed=0)  # (num_envs, stack, 1, 40, 40) uint8
    store = np.ones(num_envs, dtype=bool)
    expected, pending, ends = {}, set(), np.zeros(num_envs, dtype=int)
    for step in range(30):
        next_observations, rewards, terminated, truncated, _ = vector.step(
            rng.uniform(-2, 2, (num_envs, 1)).astype(np.float32))
        actions = step * num_envs + np.arange(num_envs)
        replay.add(observations[:, -1], actions, rewards, terminated, truncated, next_observations[:, -1],
                   mask=store)
        for env in np.flatnonzero(store):
            expected[actions[env]] = (observations[env], next_observations[env], rewards[env])
        done = terminated | truncated
        ends += done
        # The newest step of a running episode has no next frame stored yet.
        pending = {actions[env] for env in np.flatnonzero(store & ~done)}
        store, observations = ~done, next_observations
    vector.close()
    assert (ends >= 3).all()
    assert replay.sampleable == len(expected) - len(pending)
    samples = replay.sample(3000)
    assert set(samples.actions.tolist()) == set(expected) - pending
    for row, action in enumerate(samples.actions.tolist()):
        observation, next_observation, reward = expected[action]
        assert torch.equal(samples.observations[row], torch.from_numpy(observation).flatten(0, 1))
        assert torch.equal(samples.next_observations[row], torch.from_numpy(next_observation).flatten(0, 1))
        assert samples.returns[row].item() == pytest.approx(reward, rel=1e-6)
        assert samples.discounts[row].item() == pytest.approx(gamma)  # pendulum episodes only truncate


def test_n_step_returns_and_discounts_match_reference_on_hand_made_episodes():
    stack, n_step, gamma = 2, 3, 0.9
    # (length, how it ends): terminated, truncated, a one-step termination, a long truncation, still running.
    episodes = [(5, "terminated"), (2, "truncated"), (1, "terminated"), (6, "truncated"), (4, None)]
    replay = FrameReplay(64, 1, (1, 1, 2), stack=stack, n_step=n_step, gamma=gamma)
    reference = Reference(1, 64, stack, n_step, gamma)
    frame, action = 0, 0
    for length, end in episodes:
        for step in range(length):
            last = step == length - 1
            arguments = dict(frames=encode([frame]), actions=[action], rewards=[2.0**action],
                             terminated=[last and end == "terminated"], truncated=[last and end == "truncated"],
                             next_frames=encode([frame + 1]), mask=[True])
            replay.add(**arguments)
            reference.add([frame], [action], [2.0**action], arguments["terminated"], arguments["truncated"],
                          [frame + 1], [True])
            frame, action = frame + 1, action + 1
        if end is not None:
            replay.add(encode([MARKER]), [-1], [0.0], [False], [False], encode([frame]), mask=[False])
            frame += 1
    # The running episode's last 3 steps (actions 15, 16, 17) have incomplete windows.
    assert reference.sampleable() == set(range(15))
    assert replay.sampleable == 15 and len(replay) == 18
    samples = replay.sample(2000)
    assert set(samples.actions.tolist()) == set(range(15))
    check_samples(samples, reference)
    # Spot checks by hand: a window cut by termination, one cut by truncation, a full one.
    by_action = {action: row for row, action in enumerate(samples.actions.tolist())}
    row = by_action[3]  # rewards 8, 16 then the episode terminates
    assert samples.returns[row].item() == pytest.approx(8 + 0.9 * 16) and samples.discounts[row].item() == 0
    row = by_action[5]  # rewards 32, 64 then truncation: bootstrap from the final frame with gamma^2
    assert samples.returns[row].item() == pytest.approx(32 + 0.9 * 64)
    assert samples.discounts[row].item() == pytest.approx(0.81)
    row = by_action[8]  # a full window of 3 inside the long episode
    assert samples.returns[row].item() == pytest.approx(256 + 0.9 * 512 + 0.81 * 1024)
    assert samples.discounts[row].item() == pytest.approx(0.729)


def test_transitions_become_sampleable_when_their_n_step_window_completes():
    replay = FrameReplay(16, 1, (1, 1, 2), n_step=3)
    for step in range(3):
        replay.add(encode([step]), [step], [1.0], [False], [False], encode([step + 1]))
        assert replay.sampleable == 0 and len(replay) == step + 1
    with pytest.raises(ValueError, match="nothing to sample yet"):
        replay.sample(1)
    replay.add(encode([3]), [3], [1.0], [False], [False], encode([4]))
    assert replay.sampleable == 1
    # The episode's end completes every open window at once.
    replay.add(encode([4]), [4], [1.0], [False], [True], encode([5]))
    assert replay.sampleable == 5


def test_masked_autoreset_steps_are_not_stored_and_leave_streams_untouched():
    replay = FrameReplay(40, 2, (1, 1, 2), stack=3)
    reference = Reference(2, 20, 3, 1, 0.99)
    env = IdEnv(2, seed=1, end_probability=0.4)
    masked = 0
    for _ in range(15):
        masked += int(env.done.sum())
        add_both(replay, reference, env)
    assert masked > 0
    assert len(replay) == sum(not entry["final"] for stream in reference.streams for entry in stream)
    samples = replay.sample(2000)
    assert -1 not in samples.actions.tolist()
    for stacks in (samples.observations, samples.next_observations):
        assert MARKER not in decode(stacks, 3, 1)
    check_samples(samples, reference)
    assert set(samples.actions.tolist()) == reference.sampleable()


def test_leaving_out_a_step_in_the_middle_of_an_episode_raises():
    replay = FrameReplay(16, 2, (1, 1, 2))
    frames = encode([0, 1])
    replay.add(frames, [0, 1], [0.0, 0.0], [True, False], [False, False], frames)
    with pytest.raises(ValueError, match=r"leaves out envs \[1\]"):
        replay.add(frames, [2, 3], [0.0, 0.0], [False, False], [False, False], frames, mask=[False, False])
    replay.add(frames, [2, 3], [0.0, 0.0], [False, False], [False, False], frames, mask=[False, True])


@pytest.mark.parametrize("prioritized", [False, True], ids=["uniform", "prioritized"])
def test_overwritten_entries_are_never_sampled_after_wrap_around(prioritized):
    num_envs, slots, stack, n_step, channels = 2, 16, 3, 3, 2
    generator = torch.Generator().manual_seed(0)
    replay = FrameReplay(num_envs * slots, num_envs, (channels, 1, 2), stack=stack, n_step=n_step, gamma=0.8,
                         prioritized=prioritized, alpha=0.6, generator=generator)
    reference = Reference(num_envs, slots, stack, n_step, 0.8)
    env = IdEnv(num_envs, seed=2, channels=channels)
    priorities = np.random.default_rng(3)
    for _ in range(3 * slots):  # each stream wraps about three times
        add_both(replay, reference, env)
        assert replay.sampleable == len(reference.sampleable())
        if replay.sampleable:
            samples = replay.sample(64)
            check_samples(samples, reference, channels)
            replay.update_priorities(samples.indices, priorities.exponential(size=64) * (priorities.random(64) > 0.2))
    assert all(len(stream) > 2 * slots for stream in reference.streams)
    if not prioritized:  # (with priorities, those set to 0 are drawn with probability ~1e-6)
        assert sampled_actions(replay) == reference.sampleable()


@pytest.mark.parametrize("prioritized", [False, True], ids=["uniform", "prioritized"])
def test_sampling_frequencies_follow_priorities(prioritized):
    alpha = 0.7
    replay = FrameReplay(16, 1, (1, 1, 2), prioritized=prioritized, alpha=alpha,
                         generator=torch.Generator().manual_seed(0))
    for step in range(8):
        replay.add(encode([step]), [step], [0.0], [False], [step == 7], encode([step + 1]))
    samples = replay.sample(256)
    slot = dict(zip(samples.actions.tolist(), samples.indices.tolist(), strict=False))
    assert sorted(slot) == list(range(8))
    priority = np.arange(1.0, 9.0)
    replay.update_priorities(torch.tensor([slot[action] for action in range(8)]), torch.from_numpy(priority))
    counts = np.zeros(8)
    for _ in range(40):
        counts += np.bincount(replay.sample(500).actions.numpy(), minlength=8)
    probability = priority**alpha / (priority**alpha).sum() if prioritized else np.full(8, 1 / 8)
    expected = counts.sum() * probability
    chi_square = ((counts - expected) ** 2 / expected).sum()
    assert chi_square < 30  # 7 degrees of freedom: P(chi2 > 30) ~ 1e-4


def test_stratified_draws_match_priorities_through_a_tree_of_several_levels():
    # 1100 slots: a sum-tree of 3 levels, so the descent crosses nodes of several children each.
    replay = FrameReplay(1100, 2, (1, 1, 2), stack=2, n_step=2, prioritized=True, alpha=0.6,
                         generator=torch.Generator().manual_seed(0))
    fill(replay, IdEnv(2, seed=5), 520)
    draws = 100_000
    indices = replay.sample(draws).indices.unique()  # all equal priorities: every sampleable slot is drawn
    assert len(indices) == replay.sampleable > 800
    rng = np.random.default_rng(6)
    priorities = torch.from_numpy(rng.exponential(size=len(indices)) * (rng.random(len(indices)) > 0.1))
    replay.update_priorities(indices, priorities)
    leaves = priorities.clamp(min=replay.priority_eps) ** 0.6
    expected = torch.zeros(1100, dtype=torch.float64).index_put_((indices,), draws * leaves / leaves.sum())
    counts = torch.bincount(replay.sample(draws).indices, minlength=1100)
    # One draw from each of `draws` equal parts of the total: a slot gets its expected count to within 2.
    assert (counts - expected).abs().max() < 2


def test_importance_weights_and_max_priority_of_new_transitions():
    replay = FrameReplay(16, 1, (1, 1, 2), prioritized=True, alpha=0.5, beta=0.5,
                         generator=torch.Generator().manual_seed(0))
    for step in range(3):
        replay.add(encode([step]), [step], [0.0], [False], [False], encode([step + 1]))
    replay.add(encode([3]), [3], [0.0], [False], [False], encode([4]))  # completes action 2's window
    samples = replay.sample(64)
    slot = dict(zip(samples.actions.tolist(), samples.indices.tolist(), strict=False))
    assert torch.equal(samples.weights, torch.ones(64))  # new transitions all have the max priority, 1
    replay.update_priorities(torch.tensor([slot[0], slot[1], slot[2]]), torch.tensor([1.0, 4.0, 9.0]))
    # Leaves 1, 2, 3: P = 1/6, 2/6, 3/6. Stratified over 30 draws, each gets at least one.
    samples = replay.sample(30, beta=0.5)
    weight = dict(zip(samples.actions.tolist(), samples.weights.tolist(), strict=False))
    assert weight == pytest.approx({0: 1.0, 1: 2**-0.5, 2: 3**-0.5})
    counts = np.bincount(samples.actions.numpy(), minlength=3)
    assert counts.tolist() == [5, 10, 15]
    # A transition that becomes sampleable now gets the largest priority so far, 9 (leaf 3).
    replay.add(encode([4]), [4], [0.0], [False], [False], encode([5]))
    samples = replay.sample(30, beta=1.0)
    weight = dict(zip(samples.actions.tolist(), samples.weights.tolist(), strict=False))
    assert weight[3] == pytest.approx(1 / 3) and weight[0] == pytest.approx(1.0)


def test_a_reused_slot_starts_at_the_max_priority_not_its_old_one():
    # 4 slots; one-step episodes take two (transition, final frame), so slot 0 is reused by the third episode.
    replay = FrameReplay(4, 1, (1, 1, 2), prioritized=True, alpha=1.0, generator=torch.Generator().manual_seed(0))
    for episode in range(3):
        if episode:
            replay.add(encode([MARKER]), [-1], [0.0], [False], [False], encode([MARKER]), mask=[False])
        replay.add(encode([2 * episode]), [episode], [0.0], [True], [False], encode([2 * episode + 1]))
        if episode == 0:
            replay.update_priorities(replay.sample(1).indices, torch.tensor([0.0]))
    samples = replay.sample(100)
    assert set(samples.actions.tolist()) == {1, 2} and torch.equal(samples.weights, torch.ones(100))


def test_a_draw_at_the_top_edge_of_the_tree_lands_on_a_sampleable_slot():
    replay = FrameReplay(64, 1, (1, 1, 2), prioritized=True)  # the tree serves prioritised sampling
    for step in range(3):
        replay.add(encode([step]), [step], [0.0], [False], [False], encode([step + 1]))
    # Rounding can put a prefix sum at the total; the empty right half of the tree must not take it.
    slot = replay._find(replay._levels[-1].sum().view(1))
    assert replay.transitions(slot).actions.tolist() == [1]


def test_update_priorities_rejects_negative_and_clamps_zero_to_eps():
    replay = FrameReplay(16, 1, (1, 1, 2), prioritized=True, alpha=1.0, priority_eps=0.1,
                         generator=torch.Generator().manual_seed(0))
    for step in range(2):
        replay.add(encode([step]), [step], [0.0], [False], [step == 1], encode([step + 1]))
    samples = replay.sample(16)
    slot = dict(zip(samples.actions.tolist(), samples.indices.tolist(), strict=False))
    with pytest.raises(ValueError, match=">= 0"):
        replay.update_priorities(torch.tensor([slot[0]]), torch.tensor([-0.5]))
    with pytest.raises(ValueError, match=">= 0"):
        replay.update_priorities(torch.tensor([slot[0]]), torch.tensor([float("nan")]))
    replay.update_priorities(torch.tensor([slot[0], slot[1]]), torch.tensor([0.0, 1.0]))
    # Priority 0 is clamped to 0.1, so action 0 keeps probability 0.1 / 1.1 (stratified: exactly 100 of 1100).
    assert (replay.sample(1100).actions == 0).sum().item() == 100


def test_a_million_atari_transitions_take_about_one_frame_each():
    frame = 84 * 84
    required = FrameReplay.required_bytes(1_000_000, 1, (1, 84, 84))
    assert frame * 1_000_000 < required < (frame + 100) * 1_000_000
    assert required < 8e9  # SB3 stores 4-frame stacks: 28 GB with optimize_memory_usage, 56 GB without
    assert FrameReplay.required_bytes(1_000_000, 16, (1, 84, 84)) < (frame + 100) * 1_000_000
    replay = FrameReplay(4096, 4, (1, 84, 84), stack=4, n_step=3)
    assert replay.nbytes == FrameReplay.required_bytes(4096, 4, (1, 84, 84))
    assert frame < replay.bytes_per_entry < frame + 100


@pytest.mark.parametrize("prioritized", [False, True], ids=["uniform", "prioritized"])
def test_resumed_replay_continues_with_identical_samples(prioritized):
    def make(seed: int) -> FrameReplay:
        return FrameReplay(48, 3, (1, 1, 2), stack=2, n_step=2, prioritized=prioritized,
                           generator=torch.Generator().manual_seed(seed))

    original, env = make(0), IdEnv(3, seed=4)
    fill(original, env, 30)  # wrapped already
    original.update_priorities(original.sample(8).indices, torch.arange(8.0))
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    resumed = make(1)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert len(resumed) == len(original) and resumed.sampleable == original.sampleable
    for step in range(10):
        arguments = env.step()[0]
        original.add(**arguments)
        resumed.add(**arguments)
        first, second = original.sample(16, beta=0.5), resumed.sample(16, beta=0.5)
        for name, tensor in first._asdict().items():
            assert torch.equal(tensor, getattr(second, name)), name
        for replay in (original, resumed):
            replay.update_priorities(first.indices, first.returns.abs() + step)


def test_loading_a_replay_of_another_configuration_raises():
    state = FrameReplay(48, 3, (1, 1, 2), stack=2).state_dict()
    with pytest.raises(ValueError, match="saved replay was made with"):
        FrameReplay(48, 3, (1, 1, 2), stack=3).load_state_dict(state)


@pytest.mark.parametrize(
    "arguments",
    [
        dict(capacity=7),  # 2 envs * (stack 1 + n_step 2 + 1) = 8
        dict(n_step=0),
        dict(stack=0),
        dict(gamma=0.0),
        dict(gamma=1.5),
        dict(alpha=-0.1),
        dict(priority_eps=0.0),
        dict(num_envs=0),
        dict(frame_shape=(84, 84)),
    ],
    ids=lambda arguments: ",".join(f"{key}={value}" for key, value in arguments.items()),
)
def test_invalid_arguments_raise(arguments):
    with pytest.raises(ValueError):
        FrameReplay(**{**dict(capacity=64, num_envs=2, frame_shape=(1, 4, 4), n_step=2), **arguments})


def test_add_rejects_stacked_or_float_frames():
    replay = FrameReplay(16, 1, (1, 4, 4), stack=4)
    with pytest.raises(ValueError, match="not the stack"):
        replay.add(np.zeros((1, 4, 4, 4), np.uint8), [0], [0.0], [False], [False], np.zeros((1, 1, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        replay.add(np.zeros((1, 1, 4, 4)), [0], [0.0], [False], [False], np.zeros((1, 1, 4, 4), np.uint8))


def test_cut_episodes_keeps_a_resumed_run_from_joining_two_episodes():
    replay = FrameReplay(64, 2, (1, 1, 2), stack=2, n_step=3, gamma=0.5)
    for step in range(4):  # each env runs an episode of 4 steps: env 0 frames 0..3, env 1 frames 10..13
        replay.add(encode([step, 10 + step]), [step, 10 + step], [1.0, 1.0], [False, False], [False, False],
                   encode([step + 1, 11 + step]))
    replay.cut_episodes()  # the run was killed here: both episodes end where they stand
    for step in range(4):  # fresh episodes after the resume: frames 100.. and 200..
        replay.add(encode([100 + step, 200 + step]), [100 + step, 200 + step], [1.0, 1.0], [False, False],
                   [False, False], encode([101 + step, 201 + step]))
    samples = replay.transitions(replay.valid.nonzero().flatten())
    now = decode(samples.observations, 2, 1)[:, -1]
    after = decode(samples.next_observations, 2, 1)
    actions = samples.actions.tolist()
    assert {0, 1, 2, 10, 11, 12} <= set(actions)  # the transitions before the cut stay sampleable
    assert 3 not in actions and 13 not in actions  # the newest entries became the episodes' final frames
    for frame, stacked, action, discount in zip(now, after, actions, samples.discounts.tolist(), strict=True):
        assert (frame < 100) == (stacked[0] < 100) == (stacked[-1] < 100)  # never across the cut
        if action in (2, 12):  # the last transition before the cut: truncated, bootstraps from the next frame
            assert stacked[-1] == action + 1 and discount == pytest.approx(0.5)


def test_cut_of_a_one_step_episode_leaves_no_transition_of_it():
    replay = FrameReplay(16, 1, (1, 1, 2))
    replay.add(encode([0]), [0], [1.0], [False], [False], encode([1]))
    replay.cut_episodes()
    assert replay.sampleable == 0
    for step in range(3):
        replay.add(encode([10 + step]), [10 + step], [1.0], [False], [False], encode([11 + step]))
    assert set(replay.sample(50).actions.tolist()) <= {10, 11}


@pytest.mark.parametrize("prioritized", [False, True], ids=["uniform", "prioritized"])
def test_numpy_and_torch_bookkeeping_store_and_sample_the_same(prioritized, bookkeeping):
    # The same steps (episode ends, autoreset masks, wrap-around, priorities) into a replay of each namespace, with
    # generators seeded alike: the same storage after every step and the same batches, bit for bit; only the
    # sum-tree's sums may differ in their last bit (NumPy sums 32 children pairwise, torch in its own order).
    env = IdEnv(3, seed=5)
    replays = [FrameReplay(60, 3, (1, 1, 2), stack=2, n_step=3, gamma=0.9, prioritized=prioritized, alpha=0.6,
                           generator=torch.Generator().manual_seed(1), numpy_bookkeeping=numpy)
               for numpy in (True, False)]
    for step in range(120):
        arguments = env.step()[0]
        for replay in replays:
            replay.add(**arguments)
        states = [replay.state_dict() for replay in replays]
        for name in states[0]:
            if name == "tree":
                torch.testing.assert_close(states[0][name], states[1][name], rtol=1e-14, atol=0)
            elif name not in ("config", "generator"):
                assert torch.equal(states[0][name], states[1][name]), name
        if step > 10 and step % 3 == 0:
            batches = [replay.sample(8, beta=0.5) for replay in replays]
            for field in ReplaySamples._fields:
                assert torch.equal(getattr(batches[0], field), getattr(batches[1], field)), field
            priorities = torch.rand(8, generator=torch.Generator().manual_seed(step))
            for replay, batch in zip(replays, batches, strict=True):
                replay.update_priorities(batch.indices, priorities)
