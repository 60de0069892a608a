"""Replay memory for DQN/Rainbow: each frame stored once in uint8, frame stacks and n-step returns built when sampled.

Like Dopamine's replay (and unlike SB3's, which stores whole stacks, ``stack`` times the memory), every env step
stores only the newest frame of its observation; the stack of ``stack`` frames and the n-step return are
rebuilt at sampling time. Optional prioritised replay (Schaul et al. 2016, proportional variant) samples from a
sum-tree; uniform sampling draws over the entries held and redraws the few not sampleable (cheaper than a tree
descent, and the tree is then not maintained). The tree has BRANCHING children per node, not 2: a descent costs
a few kernel launches per level whatever the branching, and 32 children take 1M slots in 4 levels instead of 20
(on a GPU the launches, not the arithmetic, are the cost).

    replay = FrameReplay(capacity=100_000, num_envs=8, frame_shape=(1, 84, 84), stack=4, n_step=3,
                         prioritized=True, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    store = torch.ones(8, dtype=torch.bool)
    ...
    replay.add(newest_frames, actions, rewards, terminated, truncated, next_newest_frames, mask=store)
    store = ~(terminated | truncated)  # next-step autoreset: the step after an episode's end is no transition
    batch = replay.sample(32, beta=0.4)
    replay.update_priorities(batch.indices, td_errors.abs())

Layout. The capacity is split evenly into one stream per env (``capacity // num_envs`` slots each); the entries
of a stream are written one after another, wrapping around. Each stored env step is one entry (its frame,
action, reward, flags); a step that ends an episode adds a second, non-sampleable entry holding the episode's
final frame, so the episode's last transition has its true next observation. The entries of one episode are
therefore consecutive in their stream, and the next episode starts right after the final-frame entry.

Validity. Each slot records the absolute position of its entry in the stream (counting every entry ever
written, -1 = empty) and the position of its episode's first entry; each stream counts the entries written
to it (``cursor``). An entry at position ``p`` is sampleable when
    * it is a transition (not a final-frame entry),
    * the frames of its stack are still held: ``max(p - stack + 1, episode_start) >= cursor - slots``,
    * its n-step window is complete: every entry it reads up to its next observation ``p + k`` has been
      written (``p + k < cursor``), ``k = n_step`` or fewer when the episode ends within the window.
Validity is a pure function of these counters, so after each ``add`` it is recomputed for the only slots
whose status can change: each stream's newest ``n_step + 2`` entries (windows completed, entries written)
and its oldest ``stack - 1`` (stack history overwritten). With prioritisation the cached flag sets each slot's
tree leaf: 0 while invalid, so an invalid slot is never drawn, and the current maximum priority when it becomes
valid. A window
does not change once complete, so its return, discount and length are kept per slot from then on: sampling
reads them instead of summing again.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["ENTRY_FIELDS", "FrameReplay", "ReplaySamples"]


class ReplaySamples(NamedTuple):
    """A batch of n-step transitions (all tensors on the replay's device)."""

    observations: torch.Tensor  # (batch, stack * C, H, W) uint8: the stacked observation at t, oldest frame first
    actions: torch.Tensor  # (batch,) int64
    returns: torch.Tensor  # (batch,) float32: r_t + g r_{t+1} + ... + g^(k-1) r_{t+k-1}, k <= n (cut at episode end)
    next_observations: torch.Tensor  # (batch, stack * C, H, W) uint8: the stacked observation at t + k
    discounts: torch.Tensor  # (batch,) float32: g^k, or 0 when the episode terminated within those k steps
    weights: torch.Tensor  # (batch,) float32 importance weights, max-normalised to 1 (all 1 without priorities)
    indices: torch.Tensor  # (batch,) int64 slots, for update_priorities


class _Window(NamedTuple):
    """The n-step windows of a set of entries."""

    complete: torch.Tensor  # (m,) bool: a stored transition, and every entry read up to the next observation
    # at t + k is written
    steps: torch.Tensor  # (m,) int64: k, the rewards summed (n, or fewer when the episode ends)
    returns: torch.Tensor  # (m,) float32
    discounts: torch.Tensor  # (m,) float32: gamma^k, or 0 when the episode terminated within the window


BRANCHING = 32  # children per node of the sum-tree


class _TorchOps:
    """What the bookkeeping's arithmetic (add, the validity refresh, sampling's index work) needs beyond the
    operators and methods NumPy and torch share, on torch tensors of `device` (a replay off the CPU)."""

    int64, float32, float64, bool = torch.int64, torch.float32, torch.float64, torch.bool
    where, maximum, minimum = staticmethod(torch.where), staticmethod(torch.maximum), staticmethod(torch.minimum)

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def view(self, tensor: torch.Tensor) -> torch.Tensor:
        """A storage tensor (or one of the replay's own) as this namespace's array, sharing its memory."""
        return tensor

    def tensor(self, array: torch.Tensor) -> torch.Tensor:
        """An array of this namespace as a torch tensor on the replay's device."""
        return array

    def asarray(self, values, dtype) -> torch.Tensor:
        return torch.as_tensor(values, dtype=dtype, device=self.device)

    def arange(self, *bounds: int) -> torch.Tensor:
        return torch.arange(*bounds, device=self.device)

    def nonzero(self, mask: torch.Tensor) -> torch.Tensor:
        return mask.nonzero().flatten()

    def cat(self, arrays: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
        return torch.cat(arrays, dim)

    def stack(self, arrays: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(arrays)

    def cast(self, array: torch.Tensor, dtype) -> torch.Tensor:
        return array.to(dtype)

    def unique_count(self, array: torch.Tensor) -> int:
        return array.unique().numel()

    def searchsorted(self, ends: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(ends, values, right=True)

    def randint(self, high: int, size: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randint(0, high, (size,), device=self.device, generator=generator)


class _NumpyOps(_TorchOps):
    """The same on NumPy views of a CPU replay's storage: an add and a uniform sample are ~60 small operations
    each, ~5 us apiece in torch against ~1 in NumPy (a third of a DQN step's time on one CPU thread went there).
    Random draws still come from the replay's torch generator, so both give the same batches."""

    int64, float32, float64, bool = np.int64, np.float32, np.float64, np.bool_
    where, maximum, minimum = staticmethod(np.where), staticmethod(np.maximum), staticmethod(np.minimum)

    def view(self, tensor: torch.Tensor) -> np.ndarray:
        return tensor.numpy()

    def tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array))

    def asarray(self, values, dtype) -> np.ndarray:
        if isinstance(values, torch.Tensor):
            values = values.cpu().numpy()
        return np.asarray(values, dtype=dtype)

    def arange(self, *bounds: int) -> np.ndarray:
        return np.arange(*bounds)

    def nonzero(self, mask: np.ndarray) -> np.ndarray:
        return np.flatnonzero(mask)

    def cat(self, arrays: list[np.ndarray], dim: int = 0) -> np.ndarray:
        return np.concatenate(arrays, dim)

    def stack(self, arrays: list[np.ndarray]) -> np.ndarray:
        return np.stack(arrays)

    def cast(self, array: np.ndarray, dtype) -> np.ndarray:
        return array.astype(dtype, copy=False)

    def unique_count(self, array: np.ndarray) -> int:
        return np.unique(array).size

    def searchsorted(self, ends: np.ndarray, values: np.ndarray) -> np.ndarray:
        return np.searchsorted(ends, values, side="right")

    def randint(self, high: int, size: int, generator: torch.Generator | None) -> np.ndarray:
        return torch.randint(0, high, (size,), generator=generator).numpy()


def _tree_sizes(slots: int) -> list[int]:
    """Nodes per level of the sum-tree, leaves first, each a multiple of BRANCHING: node i of a level sums nodes
    BRANCHING * i .. BRANCHING * i + BRANCHING - 1 of the level below; the BRANCHING nodes of the last sum to the
    total."""
    sizes = [-(-slots // BRANCHING) * BRANCHING]
    while sizes[-1] > BRANCHING:
        sizes.append(-(-sizes[-1] // BRANCHING**2) * BRANCHING)
    return sizes


def _storage(capacity: int, num_envs: int, frame_shape: tuple[int, int, int]) -> dict[str, tuple[tuple, torch.dtype]]:
    """Name -> (shape, dtype) of every storage tensor: one list for allocating, sizing and resuming."""
    slots = (capacity // num_envs) * num_envs
    return {
        "frames": ((slots, *frame_shape), torch.uint8),
        "actions": ((slots,), torch.int64),
        "rewards": ((slots,), torch.float32),
        "terminated": ((slots,), torch.bool),
        "truncated": ((slots,), torch.bool),
        "final": ((slots,), torch.bool),  # the entry holds an episode's final frame: not a transition
        "position": ((slots,), torch.int64),  # absolute position of the entry in its stream; -1 = empty
        "episode_start": ((slots,), torch.int64),  # position of the first entry of the entry's episode
        "valid": ((slots,), torch.bool),  # sampleable (cached; see the module docstring)
        # The n-step window of a sampleable entry (fixed once complete), computed when it becomes sampleable:
        "steps": ((slots,), torch.int32),  # k: its next observation is the entry k later
        "returns": ((slots,), torch.float32),
        "discounts": ((slots,), torch.float32),
        "tree": ((sum(_tree_sizes(slots)),), torch.float64),  # the sum-tree's levels one after another
        "cursor": ((num_envs,), torch.int64),  # entries ever written to each stream
        "episode_open": ((num_envs,), torch.bool),  # the stream's last entry is a transition of a running episode
        "open_start": ((num_envs,), torch.int64),  # position of the first entry of that running episode
        "initial": ((slots,), torch.float32),  # priority given with the transition (-1: none, use max_priority)
        "max_priority": ((), torch.float64),  # largest priority seen (before ** alpha): new transitions get it
    }


_STATE = tuple(_storage(1, 1, (1, 1, 1)))  # the names of the storage tensors
# The storage an entry writes once and never changes (cut_episodes changes `truncated` and `final`, sampling the
# tree, the refresh the windows): what agents/dqn/replay_files.py writes once to chunk files, all the rest going
# into each checkpoint. The frames are nearly all of the bytes.
ENTRY_FIELDS = ("frames", "actions", "rewards", "terminated", "episode_start", "initial")


class FrameReplay:
    """Replay of frames from ``num_envs`` envs stepped together, sampled as stacked n-step transitions.

    Args:
        capacity: entries held in all (split evenly into ``capacity // num_envs`` per env). An episode's final
            frame takes one entry besides its transitions.
        num_envs: envs of the vector env; each ``add`` takes one step of each.
        frame_shape: (C, H, W) of one frame (the newest frame of an observation, not the stack).
        stack: frames per observation, oldest first; before an episode's first frame that frame is repeated
            (as gymnasium.wrappers.FrameStackObservation's default padding).
        n_step: rewards summed per transition (fewer where the episode ends).
        gamma: discount in (0, 1].
        prioritized: sample proportionally to priority ** alpha (else uniformly over sampleable transitions).
        alpha: priority exponent (0 = uniform).
        beta: default importance-weight exponent of :meth:`sample` (the agent anneals it to 1).
        priority_eps: priorities are clamped below by this, so no transition becomes unreachable.
        device: where the storage lives and the batches are returned.
        numpy_bookkeeping: do add's and sampling's index arithmetic on NumPy views of the storage (None: on a CPU
            replay, where it is ~4x faster per operation); the batches and storage are torch tensors either way,
            and the results the same.
        generator: random generator on ``device`` for sampling (None: torch's global one). Its state is part
            of :meth:`state_dict`, so a resumed run samples the same batches.
    """

    def __init__(
        self,
        capacity: int,
        num_envs: int,
        frame_shape: tuple[int, int, int],
        stack: int = 1,
        n_step: int = 1,
        gamma: float = 0.99,
        prioritized: bool = False,
        alpha: float = 0.5,
        beta: float = 0.4,
        priority_eps: float = 1e-6,
        device: str | torch.device = "cpu",
        generator: torch.Generator | None = None,
        numpy_bookkeeping: bool | None = None,
    ):
        if num_envs < 1 or stack < 1 or n_step < 1:
            raise ValueError(f"num_envs, stack and n_step must be >= 1, got {num_envs}, {stack}, {n_step}")
        if len(frame_shape) != 3 or min(frame_shape) < 1:
            raise ValueError(f"frame_shape must be (C, H, W) of positive sizes, got {frame_shape}")
        minimum = num_envs * (stack + n_step + 1)
        if capacity < minimum:
            raise ValueError(
                f"capacity {capacity} is too small for {num_envs} envs with stack {stack} and n_step {n_step}: each "
                f"env's stream needs at least stack + n_step + 1 entries; use capacity >= {minimum}"
            )
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        if alpha < 0 or beta < 0 or priority_eps <= 0:
            raise ValueError(f"need alpha >= 0, beta >= 0 and priority_eps > 0, got {alpha}, {beta}, {priority_eps}")
        self.device = torch.device(device)
        if generator is not None and generator.device.type != self.device.type:
            raise ValueError(f"the generator is on {generator.device} but the replay on {self.device}: make it with "
                             f"torch.Generator(device={str(self.device)!r})")
        self.capacity, self.num_envs, self.frame_shape = capacity, num_envs, tuple(frame_shape)
        self.stack, self.n_step, self.gamma = stack, n_step, gamma
        self.prioritized, self.alpha, self.beta, self.priority_eps = prioritized, alpha, beta, priority_eps
        self.generator = generator
        self.slots_per_env = capacity // num_envs
        for name, (shape, dtype) in _storage(capacity, num_envs, self.frame_shape).items():
            setattr(self, name, torch.zeros(shape, dtype=dtype, device=self.device))
        self.position.fill_(-1)
        self.initial.fill_(-1.0)
        self.max_priority.fill_(1.0)
        self._levels = list(self.tree.split(_tree_sizes(self.position.shape[0])))  # views, leaves first
        if numpy_bookkeeping is None:
            numpy_bookkeeping = self.device.type == "cpu"
        elif numpy_bookkeeping and self.device.type != "cpu":
            raise ValueError(f"numpy_bookkeeping needs a replay on the CPU, this one is on {self.device}")
        ops = self._ops = _NumpyOps(self.device) if numpy_bookkeeping else _TorchOps(self.device)
        # the storage as the bookkeeping's arrays (NumPy views sharing the tensors' memory, or the tensors)
        self._a = {name: ops.view(getattr(self, name)) for name in _STATE}
        self._tree_levels = [ops.view(level) for level in self._levels]
        self._offsets = ops.arange(n_step)
        powers = gamma ** torch.arange(n_step + 1, dtype=torch.float64, device=self.device).float()  # g^k
        self._powers = ops.view(powers)
        self._all_envs = ops.arange(num_envs)
        self._refresh_newest = ops.arange(n_step + 2) - (n_step + 2)  # each stream's newest n_step + 2 entries...
        self._refresh_oldest = ops.arange(stack - 1)  # ...and its oldest stack - 1
        self._stack_offsets = ops.arange(1 - stack, 1)
        self._stream_starts = ops.arange(num_envs)[:, None] * self.slots_per_env

    # ----------------------------------------------------------------------------------------------- sizes

    @staticmethod
    def required_bytes(capacity: int, num_envs: int, frame_shape: tuple[int, int, int]) -> int:
        """Bytes the storage of a replay of this size takes, computed without allocating it (equals its
        :attr:`nbytes`): check it against free memory before choosing the device."""
        storage = _storage(capacity, num_envs, frame_shape)
        return sum(math.prod(shape) * dtype.itemsize for shape, dtype in storage.values())

    @property
    def nbytes(self) -> int:
        """Bytes held by the storage tensors."""
        return sum(getattr(self, name).nbytes for name in _STATE)

    @property
    def bytes_per_entry(self) -> float:
        """Storage bytes per stored entry (one per env step, one more per episode end): the frame's
        ``C * H * W`` plus about 50 bytes of actions, rewards, flags, counters and sum-tree."""
        return self.nbytes / (self.slots_per_env * self.num_envs)

    def __len__(self) -> int:
        """Transitions stored (sampleable or not; final-frame entries not counted)."""
        return int(((self.position >= 0) & ~self.final).sum())

    @property
    def sampleable(self) -> int:
        """Transitions :meth:`sample` can return now."""
        return int(self.valid.sum())

    # ------------------------------------------------------------------------------------------------- add

    def add(
        self,
        frames: torch.Tensor | np.ndarray,
        actions: torch.Tensor | np.ndarray,
        rewards: torch.Tensor | np.ndarray,
        terminated: torch.Tensor | np.ndarray,
        truncated: torch.Tensor | np.ndarray,
        next_frames: torch.Tensor | np.ndarray,
        mask: torch.Tensor | np.ndarray | None = None,
        envs: torch.Tensor | np.ndarray | None = None,
        priorities: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        """Store one vector-env step of the envs in ``mask``.

        Args:
            frames: (rows, C, H, W) uint8, the newest frame of each env's observation at t (not the stack).
            actions: (rows,) integer actions taken at t.
            rewards: (rows,) rewards of the step.
            terminated, truncated: (rows,) bool flags of the step.
            next_frames: (rows, C, H, W) uint8, the newest frame of the observation after the step; read only
                where the episode ended (its final observation), as the next step's ``frames`` holds the others.
            mask: (rows,) bool, the envs whose step is a transition to store (None: all). With next-step
                autoreset this is ``~(terminated | truncated)`` of the previous step: the step after an
                episode's end only resets the env and must not be stored. The other envs' streams are untouched.
            envs: (rows,) the envs (streams) the rows belong to; None: all ``num_envs``, in order (rows = num_envs).
                A rollout worker's step fills only its own envs' streams.
            priorities: (rows,) initial priorities of the transitions (with ``prioritized``; a rollout worker's
                |TD error|); None: the largest priority seen so far, as Schaul et al.
        """
        ops, a = self._ops, self._a
        if envs is None:
            envs = self._all_envs
        else:
            envs = ops.asarray(envs, ops.int64)
            if (envs.ndim != 1 or not bool(((envs >= 0) & (envs < self.num_envs)).all())
                    or ops.unique_count(envs) != envs.shape[0]):
                raise ValueError(f"envs must be distinct env indices in [0, {self.num_envs}), got {envs.tolist()}")
        rows = envs.shape[0]
        frames = self._frames(frames, "frames", rows)
        next_frames = self._frames(next_frames, "next_frames", rows)
        actions = self._per_env(actions, ops.int64, "actions", rows)
        rewards = self._per_env(rewards, ops.float32, "rewards", rows)
        terminated = self._per_env(terminated, ops.bool, "terminated", rows)
        truncated = self._per_env(truncated, ops.bool, "truncated", rows)
        mask = None if mask is None else self._per_env(mask, ops.bool, "mask", rows)
        initial = None if priorities is None else self._per_env(priorities, ops.float32, "priorities", rows)
        skipped = a["episode_open"][envs] if mask is None else a["episode_open"][envs] & ~mask
        if mask is not None and bool(skipped.any()):
            # Skipping a step in the middle of an episode would join its neighbours into one false transition.
            raise ValueError(
                f"mask leaves out envs {envs[skipped].tolist()} whose last stored "
                f"step did not end their episode; only the step after an episode's end (next-step autoreset) may "
                f"be left out: pass mask = ~(terminated | truncated) of the previous step"
            )
        slots = self.slots_per_env
        row = self._all_envs[:rows] if mask is None else ops.nonzero(mask)  # (m,) rows to store
        stream = envs[row]  # (m,) their envs
        position = a["cursor"][stream]
        start = ops.where(a["episode_open"][stream], a["open_start"][stream], position)
        terminated, truncated = terminated[row], truncated[row]
        ended = terminated | truncated
        self._write(stream * slots + position % slots, frames[row], actions[row], rewards[row], terminated,
                    truncated, False, position, start, None if initial is None else initial[row])
        # The final frame of an ended episode becomes the entry after its last transition.
        last = ops.nonzero(ended)  # (ended,) rows of `stream` (indices, not a mask: one device sync)
        if last.shape[0]:
            env, after = stream[last], position[last] + 1
            self._write(env * slots + after % slots, next_frames[row[last]], 0, 0.0, False, False, True, after,
                        start[last])
        a["cursor"][stream] += 1 + ops.cast(ended, ops.int64)
        a["episode_open"][stream] = ~ended
        a["open_start"][stream] = start
        self._refresh()

    def cut_episodes(self, envs: torch.Tensor | np.ndarray | None = None) -> None:
        """End every episode still running in the streams of `envs` (None: all), for when their envs are reset
        without a last step (a killed run resumes, a rollout worker is restarted, with fresh episodes): the newest
        entry becomes the final observation of a truncated episode (its own action and reward are dropped), so
        no transition joins two episodes.
        """
        open_ = self.episode_open.clone()
        if envs is not None:
            open_ &= torch.isin(torch.arange(self.num_envs, device=self.device),
                                torch.as_tensor(envs, device=self.device))
        stream = open_.nonzero().flatten()
        if not stream.numel():
            return
        slots = self.slots_per_env
        last = self.cursor[stream] - 1
        self.final[stream * slots + last % slots] = True
        before = last - 1 >= self.open_start[stream]  # the episode has a transition before its newest entry
        previous = stream[before] * slots + (last[before] - 1) % slots
        self.truncated[previous] = True
        self.episode_open[stream] = False
        self._refresh()

    def _frames(self, frames: torch.Tensor | np.ndarray, name: str, rows: int):
        if isinstance(frames, np.ndarray) and frames.dtype != np.uint8 or (
                isinstance(frames, torch.Tensor) and frames.dtype != torch.uint8):
            raise ValueError(f"{name} must be {(rows, *self.frame_shape)} uint8 (the newest frame of each env's "
                             f"observation, not the stack), got {tuple(frames.shape)} {frames.dtype}")
        frames = self._ops.asarray(frames, self._a["frames"].dtype)
        if tuple(frames.shape) != (rows, *self.frame_shape):
            raise ValueError(f"{name} must be {(rows, *self.frame_shape)} uint8 (the newest frame of each env's "
                             f"observation, not the stack), got {tuple(frames.shape)} {frames.dtype}")
        return frames

    def _per_env(self, values: torch.Tensor | np.ndarray, dtype, name: str, rows: int):
        values = self._ops.asarray(values, dtype)
        if tuple(values.shape) != (rows,):
            raise ValueError(f"{name} must have shape ({rows},), got {tuple(values.shape)}")
        return values

    def _write(self, slot, frames, actions, rewards, terminated, truncated, final: bool, position, start,
               initial=None) -> None:
        """Write entries to `slot` (m,) (arrays of the bookkeeping's namespace, or scalars); they start invalid,
        so a reused slot does not keep the old priority. `initial`: their first priorities (None: -1, the max
        priority when they become sampleable)."""
        a = self._a
        a["frames"][slot] = frames
        a["actions"][slot], a["rewards"][slot] = actions, rewards
        a["terminated"][slot], a["truncated"][slot], a["final"][slot] = terminated, truncated, final
        a["position"][slot], a["episode_start"][slot] = position, start
        a["valid"][slot] = False
        if self.prioritized:
            a["initial"][slot] = -1.0 if initial is None else initial.clip(min=self.priority_eps)

    def _refresh(self) -> None:
        """Recompute validity and n-step windows where an add can change them, and set those tree leaves (see the
        module docstring)."""
        ops, a, slots = self._ops, self._a, self.slots_per_env
        cursor = a["cursor"]
        newest = cursor[:, None] + self._refresh_newest
        oldest = (cursor - slots).clip(min=0)[:, None] + self._refresh_oldest
        index = (self._stream_starts + ops.cat([newest, oldest], 1) % slots).flatten()
        held_from = cursor[index // slots] - slots  # the oldest position still held in the stream
        history = ops.maximum(a["position"][index] - (self.stack - 1), a["episode_start"][index]) >= held_from
        window = self._window(index)
        valid = window.complete & history
        a["steps"][index] = ops.cast(window.steps, a["steps"].dtype)
        a["returns"][index], a["discounts"][index] = window.returns, window.discounts
        if not self.prioritized:  # uniform sampling reads `valid` alone
            a["valid"][index] = valid
            return
        leaf = ops.where(a["valid"][index], self._tree_levels[0][index], self._new_leaf(index))
        a["valid"][index] = valid
        self._set_leaves(index, ops.where(valid, leaf, 0.0))

    def _new_leaf(self, index):
        """The leaves of the transitions in slots `index` as they become sampleable: their initial priority **
        alpha, or the max priority's where they came without one."""
        ops, a = self._ops, self._a
        initial = ops.cast(a["initial"][index], ops.float64)
        return ops.where(initial >= 0, initial, a["max_priority"]) ** self.alpha

    # ------------------------------------------------------------------------------------------- validity

    def _window(self, index) -> _Window:
        """The n-step windows of the entries in slots `index` (m,), all n steps at once."""
        ops, a, slots = self._ops, self._a, self.slots_per_env
        stream = index // slots
        position = a["position"][index]
        # (m, n_step): entries t .. t + n - 1. Up to the episode's end they are transitions of its episode, in
        # order. Past the newest entry a slot holds old data; whatever its flags say, such a window ends at or
        # past the cursor and fails the completeness check below.
        entry = (stream * slots)[:, None] + (position[:, None] + self._offsets) % slots
        terminal = a["terminated"][entry]
        ends = terminal | a["truncated"][entry]
        inside = ends.cumsum(1) <= ends  # no episode end before the entry: the window is up to the first end
        steps = inside.sum(1)
        returns = (a["rewards"][entry] * self._powers[:-1] * inside).sum(1)
        terminated = (inside & terminal).any(1)
        # Written up to the next observation (an episode's final frame is written with its last transition).
        complete = (position >= 0) & ~a["final"][index] & (position + steps < a["cursor"][stream])
        return _Window(complete, steps, returns, ops.where(terminated, 0.0, self._powers[steps]))

    # ---------------------------------------------------------------------------------------------- sample

    def sample(self, batch_size: int, beta: float | None = None) -> ReplaySamples:
        """`batch_size` sampleable transitions, drawn with replacement.

        Uniform, or with probability P(i) = p_i^alpha / sum_j p_j^alpha (stratified: one draw from each of
        `batch_size` equal parts of the total) and importance weights w_i = (N P(i))^-beta / max_j w_j over the
        batch (``beta``: None = the constructor's). N cancels in the normalisation, so w_i = (P(i) / P_min)^-beta.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        total = self._levels[-1].sum() if self.prioritized else self._a["valid"].any()
        if not bool(total > 0):
            raise ValueError(f"nothing to sample yet ({len(self)} transitions stored, none with a complete stack and "
                             f"{self.n_step}-step window): add more steps before sampling")
        if not self.prioritized:
            return self._gather(self._uniform(batch_size))
        draws = torch.rand(batch_size, dtype=torch.float64, device=self.device, generator=self.generator)
        index = self._find((torch.arange(batch_size, device=self.device) + draws) / batch_size * total)
        samples = self._gather(self._ops.view(index))
        beta = self.beta if beta is None else beta
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        leaf = self._levels[0][index]
        return samples._replace(weights=(leaf / leaf.min()).pow(-beta).float())

    def _uniform(self, batch_size: int):
        """`batch_size` slots drawn uniformly from the sampleable ones: uniform over the entries held (each stream
        holds slots 0 .. held - 1), redrawing the few that are not sampleable (final frames, the newest n-step
        windows). Cheaper than descending the sum-tree, which uniform sampling does not need."""
        ops, a = self._ops, self._a
        held = a["cursor"].clip(max=self.slots_per_env)  # (num_envs,)
        ends = held.cumsum(0)

        def draw(count: int):
            flat = ops.randint(int(ends[-1]), count, self.generator)
            stream = ops.searchsorted(ends, flat)
            return stream * self.slots_per_env + flat - (ends - held)[stream]

        index = draw(batch_size)
        todo = ops.nonzero(~a["valid"][index])
        while todo.shape[0]:
            index[todo] = draw(todo.shape[0])
            todo = todo[~a["valid"][index[todo]]]
        return index

    def transitions(self, indices: torch.Tensor | np.ndarray) -> ReplaySamples:
        """The transitions in slots `indices` (batch,) (weights 1); raises ValueError for a slot that is not
        sampleable now."""
        index = self._ops.asarray(indices, self._ops.int64)
        valid = self._a["valid"][index]
        if not bool(valid.all()):
            raise ValueError(f"slots {index[~valid].tolist()} hold no sampleable transition")
        return self._gather(index)

    def _gather(self, index) -> ReplaySamples:
        """Rebuild the stacked n-step transitions of the (sampleable) entries in slots `index` (batch,), an array of
        the bookkeeping's namespace; the batch is torch tensors on the replay's device."""
        ops, a = self._ops, self._a
        position = a["position"][index]
        ends = ops.stack([position, position + a["steps"][index]])  # (2, batch): t and t + k
        frames = self._stacks(index // self.slots_per_env, ends, a["episode_start"][index])
        return ReplaySamples(
            observations=frames[0],
            actions=ops.tensor(a["actions"][index]),
            returns=ops.tensor(a["returns"][index]),
            next_observations=frames[1],
            discounts=ops.tensor(a["discounts"][index]),
            weights=torch.ones(index.shape, dtype=torch.float32, device=self.device),
            indices=ops.tensor(index),
        )

    def _stacks(self, stream, position, start) -> torch.Tensor:
        """(m, batch, stack * C, H, W): for `position` (m, batch) in `stream` (batch,), frames position - stack + 1
        .. position, oldest first, the episode's first frame (at `start` (batch,)) repeated before it."""
        history = self._ops.maximum(position[..., None] + self._stack_offsets, start[:, None])  # (m, batch, stack)
        slot = stream[:, None] * self.slots_per_env + history % self.slots_per_env
        # index_select copies whole frames: ~15x faster on CPU than advanced indexing, which goes byte by byte.
        frames = self.frames.index_select(0, self._ops.tensor(slot.reshape(-1)))
        return frames.view(*position.shape, self.stack * self.frame_shape[0], *self.frame_shape[1:])

    # ---------------------------------------------------------------------------------------------- sum-tree

    def _find(self, prefix: torch.Tensor) -> torch.Tensor:
        """The leaves where the prefix sums `prefix` (batch,) fall, descending the tree for all at once: (batch,)
        slots, each with a positive leaf (a draw that rounding puts past a node's last non-empty child goes to
        that child, never to an empty one)."""
        group = torch.zeros_like(prefix, dtype=torch.int64)  # the node whose children are searched, per sample
        child_number = torch.arange(BRANCHING, device=self.device)
        for level in reversed(self._levels):
            sums = level.view(-1, BRANCHING)[group]  # (batch, BRANCHING)
            ends = sums.cumsum(1)
            child = torch.minimum((ends <= prefix[:, None]).sum(1), (child_number * (sums > 0)).amax(1))
            # Clamped: rounding must not make the prefix negative, which would pick a leading empty child.
            prefix = (prefix - (ends - sums).gather(1, child[:, None]).squeeze(1)).clamp(min=0)
            group = group * BRANCHING + child
        return group

    def _set_leaves(self, index, values) -> None:
        """Set the leaves of slots `index` (m,) and recompute their ancestors from their children (so repeated
        slots and rounding never drift the sums). Arrays of the bookkeeping's namespace."""
        levels = self._tree_levels
        levels[0][index] = self._ops.cast(values, self._ops.float64)
        for lower, upper in zip(levels, levels[1:], strict=False):
            index = index // BRANCHING
            upper[index] = lower.reshape(-1, BRANCHING)[index].sum(1)

    def update_priorities(self, indices: torch.Tensor | np.ndarray, priorities: torch.Tensor | np.ndarray) -> None:
        """Set the priorities of slots `indices` (batch,) from a sample: `priorities` (batch,) >= 0 (|TD error| or
        the C51 cross-entropy), clamped below by priority_eps. Slots no longer sampleable keep priority 0."""
        index = torch.as_tensor(indices, device=self.device).long()
        priorities = torch.as_tensor(priorities, device=self.device).detach().to(torch.float64)
        if priorities.shape != index.shape:
            raise ValueError(f"priorities {tuple(priorities.shape)} must match indices {tuple(index.shape)}")
        if not bool((priorities >= 0).all()):  # also catches NaN
            raise ValueError(f"priorities must be >= 0 and not NaN (|TD error| or a cross-entropy), got min "
                             f"{priorities.min().item()}")
        if not self.prioritized:
            return
        priorities = priorities.clamp(min=self.priority_eps)
        self.max_priority.copy_(torch.maximum(self.max_priority, priorities.max()))
        index, priorities = self._ops.view(index), self._ops.view(priorities)
        self._set_leaves(index, self._ops.where(self._a["valid"][index], priorities**self.alpha, 0.0))

    # --------------------------------------------------------------------------------------------- resume

    def _config(self) -> dict:
        return {"capacity": self.capacity, "num_envs": self.num_envs, "frame_shape": list(self.frame_shape),
                "stack": self.stack, "n_step": self.n_step, "gamma": self.gamma, "prioritized": self.prioritized,
                "alpha": self.alpha}

    def state_dict(self, entries: bool = True) -> dict:
        """Everything needed to resume exactly: storage, counters, tree, and the generator's state (if one was
        given). Tensors and plain Python values only, so torch.load(weights_only=True) accepts it. The storage
        tensors are the replay's own, not copies (a copy of a GPU replay may not fit): save it before adding more.

        ``entries=False`` leaves out the :data:`ENTRY_FIELDS` (and a uniform replay's tree, all zeros): the small
        state, a few dozen bytes per slot, whose entries are saved elsewhere (agents/dqn/replay_files.py)."""
        skip = () if entries else ENTRY_FIELDS if self.prioritized else (*ENTRY_FIELDS, "tree")
        state = {name: getattr(self, name) for name in _STATE if name not in skip}
        state["config"] = self._config()
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict, entries: bool = True) -> None:
        """Restore :meth:`state_dict` (from any device) into this replay, which must have the same configuration.
        ``entries=False``: a state saved so, whose :data:`ENTRY_FIELDS` the caller has written into the storage."""
        if state["config"] != self._config():
            raise ValueError(f"the saved replay was made with {state['config']}, this one with {self._config()}")
        for name in _STATE:
            if not entries and (name in ENTRY_FIELDS or name == "tree" and not self.prioritized):
                continue
            if name == "initial" and name not in state:  # saved before initial priorities (2026-11-26)
                self.initial.fill_(-1.0)
                continue
            getattr(self, name).copy_(state[name])
        if self.generator is not None and "generator" in state:
            self.generator.set_state(state["generator"])
