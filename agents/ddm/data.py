"""The DDM agent's data: played trials, the random exploration of the first trials, and the windows of
consecutive frames that fits and planners read out of the trials."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import torch

from nets.ddm import DeepDynamicalModel


class Trial(NamedTuple):
    """One played trial."""

    frames: np.ndarray  # (T + 1, C, H, W) uint8
    actions: np.ndarray  # (T, A) float32
    rewards: np.ndarray  # (T,) float32
    terminated: bool = False  # the trial's last step ended the episode (the cart off its track, the pole fallen)

    def mirrored(self) -> Trial:
        """The trial seen in a mirror: every frame flipped left-right and every action negated. For a task
        whose images, dynamics and rewards are symmetric under that reflection (the pendulum, the cart-pole:
        tests/ddm/test_ddm.py checks it) this is a trial the env could have played."""
        return self._replace(frames=np.ascontiguousarray(self.frames[..., ::-1]), actions=-self.actions)


class HeldRandomActions:
    """Exploration for the first trials: a random action every `hold` steps, held in between; at +-bound
    (`bang_bang`) or uniform within it. Call it with each observation (it ignores them)."""

    def __init__(self, bound: np.ndarray, hold: int, bang_bang: bool, rng: np.random.Generator) -> None:
        self.bound, self.hold, self.bang_bang, self.rng = bound, hold, bang_bang, rng
        self.steps = 0
        self.action = np.zeros_like(bound)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if self.steps % self.hold == 0:
            self.action = (self.bound * self.rng.choice([-1.0, 1.0], size=self.bound.shape) if self.bang_bang
                           else self.rng.uniform(-self.bound, self.bound))
        self.steps += 1
        return np.clip(self.action, -self.bound, self.bound).astype(np.float32)


class Windows(NamedTuple):
    """A batch of windows of consecutive frames of the trials: what the model's losses take."""

    observations: torch.Tensor  # (batch, length, C, H, W) uint8 frames, or (batch, length, latent_dim) latents
    actions: torch.Tensor  # (batch, length - 1, action_dim): the action out of each frame but the last
    rewards: torch.Tensor  # (batch, length - 1): the reward of each of those steps
    valid: torch.Tensor  # (batch, length - 1): 1 where the step happened (0 past a trial's end)
    continues: torch.Tensor | None = None  # (batch, length - 1): 0 where the step ended the episode, else 1


class TrialBuffer(NamedTuple):
    """Every trial so far, padded once to the longest (:meth:`of`), sampled as :class:`Windows`."""

    observations: torch.Tensor  # (N, T + 1, C, H, W) uint8, the last frame repeated past a trial's end
    actions: torch.Tensor  # (N, T, action_dim)
    rewards: torch.Tensor  # (N, T)
    valid: torch.Tensor  # (N, T): 1 where the step happened
    continues: torch.Tensor | None = None  # (N, T): 0 at the step that ended a terminated trial, else 1

    @classmethod
    def of(cls, trials: Iterable[Trial], device: torch.device | str = "cpu") -> TrialBuffer:
        trials = list(trials)
        steps = max(len(trial.actions) for trial in trials)
        count = len(trials)
        frames = np.zeros((count, steps + 1, *trials[0].frames.shape[1:]), np.uint8)
        actions = np.zeros((count, steps, trials[0].actions.shape[1]), np.float32)
        rewards = np.zeros((count, steps), np.float32)
        valid = np.zeros((count, steps), np.float32)
        continues = np.ones((count, steps), np.float32)
        for index, trial in enumerate(trials):
            length = len(trial.actions)
            frames[index, : length + 1] = trial.frames
            frames[index, length + 1 :] = trial.frames[-1]
            actions[index, :length], rewards[index, :length], valid[index, :length] = trial.actions, trial.rewards, 1
            if trial.terminated:
                continues[index, length - 1] = 0.0
        return cls(*(torch.from_numpy(array).to(device) for array in (frames, actions, rewards, valid, continues)))

    def window_length(self, wanted: int) -> int:
        """`wanted` frames, or as many as the longest trial has where every trial is shorter (a balance task's
        first trials end after a few steps, when the pole falls): windows lie within a trial."""
        return min(wanted, int(self.valid.sum(1).max()) + 1)

    @torch.no_grad()
    def encoded(self, model: DeepDynamicalModel) -> TrialBuffer:
        """The same buffer with each frame replaced by its latent `(N, T + 1, latent_dim)` (no gradients):
        fitting the transition on these involves no images (~100x cheaper per update than a joint one)."""
        return self._replace(observations=model.encode(self.observations))

    def windows(self, trial: torch.Tensor, start: torch.Tensor, length: int) -> Windows:
        """The windows of `length` frames starting at `start` in `trial` (each `(batch, 1)` indices)."""
        index = start + torch.arange(length, device=start.device)  # (batch, length) frame indices
        steps = index[:, :-1]
        return Windows(self.observations[trial, index], self.actions[trial, steps], self.rewards[trial, steps],
                       self.valid[trial, steps], None if self.continues is None else self.continues[trial, steps])

    def sample(self, length: int, batch: int, focus: float = 0.0, generator: torch.Generator | None = None) -> Windows:
        """`batch` random windows of `length` frames (uniform over starts; from `generator`, or torch's global one).

        A `focus` fraction is drawn with probability growing with the window's mean reward (standardised,
        softmax): the states that matter for control (the pole near upright) are rare in the data, and
        the model's errors there decide whether it can be held.
        """
        count, steps = self.rewards.shape
        starts = steps + 2 - length
        windows = self.rewards.unfold(1, length - 1, 1)[:, :starts].mean(-1)  # (count, starts)
        usable = self.valid.unfold(1, length - 1, 1)[:, :starts].amin(-1) > 0
        spread = windows[usable].std().clamp(min=1e-6) if usable.sum() > 1 else torch.ones((), device=windows.device)
        score = (windows - windows[usable].mean()) / spread
        weights = torch.where(usable, score.exp(), torch.zeros_like(score)).flatten()
        focused = int(round(focus * batch)) if weights.sum() > 0 else 0
        flat = torch.randint(0, count * starts, (batch,), device=self.rewards.device, generator=generator)
        if focused:
            flat[:focused] = torch.multinomial(weights, focused, replacement=True, generator=generator)
        return self.windows((flat // starts).unsqueeze(1), (flat % starts).unsqueeze(1), length)

    def every(self, length: int, stride: int) -> Windows:
        """Every `stride`-th window of `length` frames that lies within its trial: the same windows each call."""
        usable = self.valid.unfold(1, length - 1, stride).amin(-1) > 0  # (trials, windows)
        trial, window = usable.nonzero(as_tuple=True)
        return self.windows(trial.unsqueeze(1), (window * stride).unsqueeze(1), length)
