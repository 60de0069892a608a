"""The replay memory of DQN checkpoints (train.save_replay), written incrementally under the run directory.

A replay is nearly all frames (an Atari replay of 1M entries holds 7 GB of them) and an entry never changes once
written, so each checkpoint writes only the entries added since the previous one, to a chunk file of its own;
the rest of the replay, a few dozen bytes per slot, goes into the checkpoint itself:

    runs/<name>/<stamp>/
        checkpoints/step_<step>.pt       ... "replay": FrameReplay.state_dict(entries=False) (positions, the flags
                                         cut_episodes changes, n-step windows, sum-tree, cursors, episode state),
                                         the lineage and its table of chunks and saves
        replay/from_<start>-<id>/        one folder per replay memory (a lineage): the run's, or the one begun
                                         empty at env step <start> where a run resumed without one
            step_<step>.chunk            written by the checkpoint at <step>: for each stream (env), the
                                         ENTRY_FIELDS (frames, actions, rewards, ...) of its entries at stream
                                         positions [start, end), field after field, raw (the replay's dtypes,
                                         native byte order)

Only what an entry writes once goes to the chunks: cut_episodes later changes the flags of stored entries, each
update their priorities, and an n-step window is completed steps after its entry, so those (small) go into each
checkpoint whole.

Entries are addressed by their position in their stream (FrameReplay counts every entry ever written to a
stream), not by slot: a position is written once, while a slot is reused when its stream wraps round. That is why
the files are not one slot-indexed file updated in place: such a file would change under the older checkpoint
kept as a fallback, and a kill during the update would leave it half old, half new. A checkpoint reads, for each
stream, the chunks that cover the positions it holds, [cursor - slots, cursor), and nothing else.

A kill at any point leaves every checkpoint readable. A save writes, in this order: the chunk (temporary name,
fsync, rename, as every run file), the checkpoint (likewise), then deletes what no checkpoint on disk reads:
chunks whose positions every kept checkpoint of the lineage has overwritten, chunks no checkpoint lists (written
by a run killed before the checkpoint that would have listed them; a resume never reads them) and half-written
temporary files, and the folders of other lineages once every kept checkpoint is this lineage's.
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path
from typing import BinaryIO, NamedTuple

import torch

from agents.core.run import CHECKPOINT_PREFIX, RunDirError, atomic_write, checkpoint_paths
from agents.dqn.replay import ENTRY_FIELDS, FrameReplay

__all__ = ["ReplayFiles"]

FOLDER = "replay"  # in the run directory
BLOCK_BYTES = 64 * 2**20  # read and write at most this much at once (a GPU replay's entries pass through the CPU)


class Chunk(NamedTuple):
    """One chunk file: the entries of each stream at positions [start, end), written by the checkpoint at step."""

    step: int
    start: torch.Tensor  # (streams,) int64
    end: torch.Tensor  # (streams,) int64


class Save(NamedTuple):
    """A checkpoint of this lineage: its step and its streams' cursors (the positions it holds end there)."""

    step: int
    cursor: torch.Tensor  # (streams,) int64


class ReplayFiles:
    """The chunk files of one replay memory in a run directory, and the checkpoints of it saved so far.

    A new replay starts a lineage (:meth:`create`); a resumed one continues its checkpoint's (:meth:`restore`).
    Each checkpoint calls :meth:`save` before writing the checkpoint file and :meth:`prune` after.
    """

    def __init__(self, run_dir: Path, lineage: str, slots_per_env: int, chunks: list[Chunk],
                 saves: list[Save]) -> None:
        self.root = Path(run_dir) / FOLDER
        self.folder = self.root / lineage
        self.run_dir, self.lineage, self.slots_per_env = Path(run_dir), lineage, slots_per_env
        self.chunks, self.saves = chunks, saves

    @classmethod
    def create(cls, run_dir: Path, replay: FrameReplay, step: int) -> ReplayFiles:
        """A new lineage for an empty replay begun at env `step`."""
        return cls(run_dir, f"from_{step:010d}-{secrets.token_hex(4)}", replay.slots_per_env, [], [])

    # ------------------------------------------------------------------------------------------------ save

    def save(self, replay: FrameReplay, step: int) -> dict:
        """Write the chunk of the entries added since the previous save (none if nothing was added) and return
        the replay's part of the checkpoint at `step` (torch.load(weights_only=True) accepts it)."""
        cursor = replay.cursor.cpu()
        # Positions an earlier chunk holds, or that the ring has overwritten already (a checkpoint_every longer
        # than a stream), are not written again.
        start = torch.maximum(self.chunks[-1].end if self.chunks else torch.zeros_like(cursor),
                              cursor - self.slots_per_env)
        if bool((cursor > start).any()):
            chunk = Chunk(step, start, cursor.clone())
            atomic_write(self.path(chunk), lambda file: _write_entries(file, replay, chunk))
            self.chunks.append(chunk)
        self.saves = [save for save in self.saves if save.step != step] + [Save(step, cursor.clone())]
        return {**replay.state_dict(entries=False), "lineage": self.lineage,
                "chunk_steps": torch.tensor([chunk.step for chunk in self.chunks], dtype=torch.int64),
                "chunk_starts": _rows([chunk.start for chunk in self.chunks], cursor),
                "chunk_ends": _rows([chunk.end for chunk in self.chunks], cursor),
                "save_steps": torch.tensor([save.step for save in self.saves], dtype=torch.int64),
                "save_cursors": _rows([save.cursor for save in self.saves], cursor)}

    def prune(self) -> None:
        """Delete what no checkpoint on disk reads (see the module docstring); call after writing a checkpoint."""
        kept = {int(path.stem.removeprefix(CHECKPOINT_PREFIX)) for path in checkpoint_paths(self.run_dir)}
        self.saves = [save for save in self.saves if save.step in kept]
        self.chunks = [chunk for chunk in self.chunks if any(self._reads(save, chunk) for save in self.saves)]
        names = {self.path(chunk).name for chunk in self.chunks}
        for path in self.folder.iterdir() if self.folder.is_dir() else ():
            if path.name not in names:
                path.unlink(missing_ok=True)
        if kept <= {save.step for save in self.saves} and self.root.is_dir():  # none kept reads another lineage
            for path in self.root.iterdir():
                if path.is_dir() and path != self.folder:
                    shutil.rmtree(path, ignore_errors=True)

    def _reads(self, save: Save, chunk: Chunk) -> bool:
        """The checkpoint `save` reads `chunk`: it was written by then and holds a position still held then."""
        held = (chunk.end > save.cursor - self.slots_per_env) & (chunk.end > chunk.start)
        return chunk.step <= save.step and bool(held.any())

    def path(self, chunk: Chunk) -> Path:
        return self.folder / f"{CHECKPOINT_PREFIX}{chunk.step:010d}.chunk"

    # --------------------------------------------------------------------------------------------- restore

    @classmethod
    def restore(cls, run_dir: Path, replay: FrameReplay, state: dict) -> ReplayFiles:
        """Rebuild in `replay` (new, empty) exactly the replay a checkpoint saw, from its part of the checkpoint
        (:meth:`save`'s dict) and the chunks it lists; returns the lineage, to go on saving it. Chunks it does not
        list (written after it by a run then killed) are not read. RunDirError if a chunk it reads is missing or
        of the wrong size."""
        files = cls(run_dir, state["lineage"], replay.slots_per_env,
                    [Chunk(int(step), start, end) for step, start, end in
                     zip(state["chunk_steps"].tolist(), state["chunk_starts"], state["chunk_ends"], strict=True)],
                    [Save(int(step), cursor) for step, cursor in
                     zip(state["save_steps"].tolist(), state["save_cursors"], strict=True)])
        cursor = state["cursor"].cpu()
        held_from = (cursor - replay.slots_per_env).clamp(min=0)
        covered = torch.zeros_like(cursor)
        for chunk in files.chunks:
            low, high = torch.maximum(chunk.start, held_from), torch.minimum(chunk.end, cursor)
            if not bool((high > low).any()):
                continue
            path = files.path(chunk)
            size = path.stat().st_size if path.is_file() else -1
            if size != _chunk_bytes(replay, chunk):
                found = "is missing" if size < 0 else f"has {size:,} bytes, not {_chunk_bytes(replay, chunk):,}"
                raise RunDirError(f"{path} {found}: the checkpoint's replay needs it. Put it back, or resume with an "
                                  f"empty replay: set train.save_replay: false in {Path(run_dir) / 'config.yaml'}")
            with open(path, "rb") as file:
                _read_entries(file, replay, chunk, low, high)
            covered += (high - low).clamp(min=0)
        if not torch.equal(covered, cursor - held_from):
            raise RunDirError(f"{files.folder}: the checkpoint's chunks cover {covered.tolist()} of the "
                              f"{(cursor - held_from).tolist()} entries per stream it holds (a damaged checkpoint)")
        replay.load_state_dict(state, entries=False)
        return files


def _rows(rows: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """(len(rows), streams) int64, also when there are none."""
    return torch.stack(rows) if rows else like.new_zeros((0, like.shape[0]))


def _entry_bytes(replay: FrameReplay) -> dict[str, int]:
    """Bytes of one entry in each ENTRY_FIELDS tensor."""
    return {name: getattr(replay, name)[0].nbytes for name in ENTRY_FIELDS}


def _chunk_bytes(replay: FrameReplay, chunk: Chunk) -> int:
    return int((chunk.end - chunk.start).sum()) * sum(_entry_bytes(replay).values())


def _pieces(replay: FrameReplay, stream: int, low: int, high: int) -> list[tuple[int, int]]:
    """The slots of positions [low, high) of `stream`, as (first, last + 1) ranges: at most two (where the ring
    wraps round), each cut into blocks of at most BLOCK_BYTES of frames."""
    slots = replay.slots_per_env
    per_block = max(1, BLOCK_BYTES // replay.frames[0].nbytes)
    pieces = []
    position = low
    while position < high:
        first = stream * slots + position % slots
        count = min(high - position, slots - position % slots, per_block)
        pieces.append((first, first + count))
        position += count
    return pieces


def _write_entries(file: BinaryIO, replay: FrameReplay, chunk: Chunk) -> None:
    """The chunk's entries: for each stream, for each of ENTRY_FIELDS, its positions [start, end) in order."""
    for stream, (start, end) in enumerate(zip(chunk.start.tolist(), chunk.end.tolist(), strict=True)):
        for name in ENTRY_FIELDS:
            for first, last in _pieces(replay, stream, start, end):
                file.write(getattr(replay, name)[first:last].cpu().numpy().data)


def _read_entries(file: BinaryIO, replay: FrameReplay, chunk: Chunk, low: torch.Tensor, high: torch.Tensor) -> None:
    """Read positions [low, high) of each stream (within the chunk's [start, end)) into their slots."""
    entry = _entry_bytes(replay)
    offset = 0  # where the stream's first field begins in the file
    for stream, (start, end) in enumerate(zip(chunk.start.tolist(), chunk.end.tolist(), strict=True)):
        for name in ENTRY_FIELDS:
            tensor = getattr(replay, name)
            file.seek(offset + (int(low[stream]) - start) * entry[name])
            for first, last in _pieces(replay, stream, int(low[stream]), int(high[stream])):
                buffer = bytearray((last - first) * entry[name])
                if file.readinto(buffer) != len(buffer):
                    raise RunDirError(f"{file.name}: ends early (a damaged replay chunk)")
                tensor[first:last] = torch.frombuffer(buffer, dtype=tensor.dtype).view(last - first, *tensor.shape[1:])
            offset += (end - start) * entry[name]
