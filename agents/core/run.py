"""The run directory: the contract between training, resuming, evaluating and watching.

    runs/<name>/<stamp>/
        config.yaml          the fully resolved config (the run can be repeated exactly)
        metrics.csv          one row per log call: step, wall_s, namespaced keys (rollout/ep_return, ...)
        tb/                  TensorBoard events with the same keys
        checkpoints/         step_<step>.pt, written atomically, torch.load(weights_only=True)
        replay/              the replay memory the checkpoints read, in chunks (dqn: agents/dqn/replay_files.py)
        episodes/            ep_<episode>.npz every record_every episodes, and best.npz
        summary.json         written at the end: env_steps, episodes, mean_return, wall_s, ...

Everything that could be half-written when a run is killed (checkpoints, episodes, metrics rewrites,
summary) is written to a temporary name and renamed, so a crashed run leaves only whole files.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from agents.core.config import ConfigError, RunConfig, apply_override, config_from_dict, config_to_dict

CHECKPOINT_PREFIX = "step_"
# The keys `train --resume RUN_DIR key=value` may change: a run's length (a DDM run's trials, every other kind's
# frame budget), as SB3's learn(reset_num_timesteps=False) continues a model for more steps. Anything else would
# make the checkpoint and the config disagree.
LENGTH_KEYS = ("agent.trials", "agent.total_steps")
CHECKPOINTS_KEPT = 2


class RunDirError(ConfigError):
    """A path that is not a usable run directory, or a run file that cannot be read."""


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write ``path`` through ``write(file)`` into a temporary sibling, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def rng_state() -> dict:
    """The global Python, NumPy, torch and CUDA RNG states, in a form torch.load(weights_only=True) accepts."""
    return {
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "torch": torch.get_rng_state(),
        # one state per visible GPU (dropout, noisy layers and sampling on a CUDA device draw from these)
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda", [])  # absent from checkpoints written before 2026-12-06
    if cuda and torch.cuda.is_available():  # a GPU run resumed on a CPU-only machine has no CUDA state to set
        for device, device_state in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state, device)


def generator_state(generator: np.random.Generator) -> dict:
    """A NumPy Generator's state as plain ints and strings (its 128-bit words kept as decimal strings)."""
    return json.loads(json.dumps(generator.bit_generator.state, default=int), parse_int=str)


def set_generator_state(generator: np.random.Generator, state: Mapping[str, Any]) -> None:
    """Restore what :func:`generator_state` returned."""

    def restore(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: restore(value) for key, value in node.items()}
        return int(node) if isinstance(node, str) and node.lstrip("-").isdigit() else node

    generator.bit_generator.state = restore(dict(state))


class Every:
    """True once each time a counter (env steps, episodes) reaches the next multiple of ``period``.

    ``start`` is where the counter stands now (a resumed run's step): the first due point is the next
    multiple after it, so a resumed run logs and checkpoints at the same steps as an unbroken one.
    ``start=-1`` makes 0 (or the first count offered) due.
    """

    def __init__(self, period: int, start: int = 0) -> None:
        self.period = period
        self.next = (start // period + 1) * period

    def __call__(self, count: int) -> bool:
        if count < self.next:
            return False
        self.next = (count // self.period + 1) * self.period
        return True


class Run:
    """One run directory, open for writing (a new run or a resumed one)."""

    def __init__(self, directory: Path, config: RunConfig) -> None:
        self.dir = directory
        self.config = config
        self.checkpoint_dir = directory / "checkpoints"
        self.episode_dir = directory / "episodes"
        self.metrics_path = directory / "metrics.csv"
        self.started = time.time()
        self._checkpoint_clock = Every(config.train.checkpoint_every)
        self._columns: list[str] = []
        self._writer = None
        self._best_return = -float("inf")
        # Agents may offer only some episodes (e.g. those of env 0), so "due" means the first one offered in
        # each block of record_every episodes, not only exact multiples.
        self._record_clock = Every(config.train.record_every, start=-1)
        self._rate_mark = (self.started, 0)  # (time, env step) of the last steps_per_second call

    @classmethod
    def create(cls, config: RunConfig) -> Run:
        """Make ``<runs_dir>/<name>/<stamp>-seed<seed>/`` and write the resolved config into it."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        base = Path(config.train.runs_dir) / config.name
        directory = base / f"{stamp}-seed{config.seed}"
        suffix = 1
        while directory.exists():
            suffix += 1
            directory = base / f"{stamp}-seed{config.seed}-{suffix}"
        directory.mkdir(parents=True)
        text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
        atomic_write(directory / "config.yaml", lambda file: file.write(text.encode()))
        return cls(directory, config)

    @classmethod
    def open(cls, directory: str | Path) -> Run:
        """Reopen an existing run directory (to resume it)."""
        directory = Path(directory)
        run = cls(directory, load_run_config(directory))
        if run.metrics_path.exists():
            with open(run.metrics_path, newline="") as file:
                run._columns = next(csv.reader(file), [])[2:]
        recorded = sorted(run.episode_dir.glob("ep_*.npz"))
        if recorded:
            run._record_clock = Every(run.config.train.record_every, start=int(recorded[-1].stem[3:]))
        best = run.episode_dir / "best.npz"
        if best.exists():
            run._best_return = float(load_episode(best)["return_"])
        return run

    # metrics --------------------------------------------------------------------------------------
    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Append one row (``step``, ``wall_s``, the metrics) to metrics.csv and TensorBoard."""
        values = {key: float(value) for key, value in metrics.items()}
        new = [key for key in values if key not in self._columns]
        if new:
            self._columns.extend(new)
            self._rewrite_metrics()
        row = [step, round(time.time() - self.started, 3)] + [values.get(key, "") for key in self._columns]
        with open(self.metrics_path, "a", newline="") as file:
            csv.writer(file).writerow(row)
        writer = self._tensorboard()
        for key, value in values.items():
            writer.add_scalar(key, value, step)
        writer.flush()

    def last_logged_step(self) -> int | None:
        """The step of metrics.csv's last row (a resumed run's earlier rows included); None before the first."""
        if not self.metrics_path.exists():
            return None
        with open(self.metrics_path, newline="") as file:
            steps = [row[0] for row in csv.reader(file) if row][1:]
        return int(float(steps[-1])) if steps else None

    def _rewrite_metrics(self, keep: Callable[[dict], bool] = lambda row: True) -> list[dict]:
        """Rewrite metrics.csv with the current columns and the rows ``keep`` accepts; returns those rows."""
        rows: list[dict] = []
        if self.metrics_path.exists():
            with open(self.metrics_path, newline="") as file:
                rows = [row for row in csv.DictReader(file) if keep(row)]
        header = ["step", "wall_s", *self._columns]

        def write(file: io.BufferedWriter) -> None:
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=header, restval="", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
            file.write(text.getvalue().encode())

        atomic_write(self.metrics_path, write)
        return rows

    def _tensorboard(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.dir / "tb"))
        return self._writer

    def steps_per_second(self, step: int) -> float:
        """Env steps per second since the previous call (or since :meth:`progress` was opened)."""
        now = time.time()
        last_time, last_step = self._rate_mark
        self._rate_mark = (now, step)
        return (step - last_step) / max(now - last_time, 1e-9)

    def progress(self, total: int, initial: int = 0, unit: str = "step") -> tqdm:
        """A progress bar on the terminal; its rate is steps/s. Set episodes/returns with set_postfix."""
        self._rate_mark = (time.time(), initial)
        # unit_scale writes 20000 steps as 20.0k, but would write 3 of 10 trials as 3.00/10.0
        return tqdm(total=total, initial=initial, unit=unit, unit_scale=unit == "step", dynamic_ncols=True,
                    mininterval=0.5, desc=self.config.name)

    # checkpoints ----------------------------------------------------------------------------------
    def checkpoint_due(self, step: int) -> bool:
        """True once per ``train.checkpoint_every`` env steps."""
        return self._checkpoint_clock(step)

    def save_checkpoint(self, state: dict, step: int) -> Path:
        """Write ``checkpoints/step_<step>.pt`` atomically; keep the newest few."""
        path = self.checkpoint_dir / f"{CHECKPOINT_PREFIX}{step:010d}.pt"
        atomic_write(path, lambda file: torch.save({"step": step, "agent": state}, file))
        for old in checkpoint_paths(self.dir)[:-CHECKPOINTS_KEPT]:
            old.unlink(missing_ok=True)
        return path

    def load_latest_checkpoint(self) -> dict | None:
        """The newest checkpoint's agent state, or None. Drops metrics rows logged after it."""
        paths = checkpoint_paths(self.dir)
        if not paths:
            return None
        payload = load_checkpoint(paths[-1])
        self._checkpoint_clock = Every(self.config.train.checkpoint_every, start=payload["step"])
        if self.metrics_path.exists():
            kept = self._rewrite_metrics(lambda row: int(row["step"]) <= payload["step"])
            if kept:  # wall time continues from the checkpoint instead of restarting at 0
                self.started = time.time() - float(kept[-1]["wall_s"])
        return payload["agent"]

    # episodes -------------------------------------------------------------------------------------
    def record_episode(self, episode: Mapping[str, Any]) -> Path | None:
        """Keep an episode (see the module docstring for the format) if it is due or the best so far.

        ``episode`` needs ``frames``, ``actions``, ``rewards`` and ``episode`` (its number); ``return_``,
        ``trial`` (-1: not a trial agent; trials are numbered from 1), ``fps`` and ``env_id`` are filled in
        when missing.
        """
        data = dict(episode)
        data.setdefault("return_", float(np.sum(data["rewards"])))
        data.setdefault("trial", -1)
        data.setdefault("fps", 30.0)
        data.setdefault("env_id", self.config.env.id)
        index = int(data["episode"])
        is_best = data["return_"] > self._best_return
        due = self._record_clock(index)
        if not (is_best or due):
            return None
        payload = {key: np.asarray(value) for key, value in data.items()}
        written = None
        if due:
            written = self.episode_dir / f"ep_{index:07d}.npz"
            atomic_write(written, lambda file: np.savez_compressed(file, **payload))
            for old in sorted(self.episode_dir.glob("ep_*.npz"))[: -self.config.train.max_episode_files]:
                old.unlink(missing_ok=True)
        if is_best:
            self._best_return = float(data["return_"])
            best = self.episode_dir / "best.npz"
            atomic_write(best, lambda file: np.savez_compressed(file, **payload))
            written = written or best
        return written

    # end ------------------------------------------------------------------------------------------
    def write_summary(self, summary: Mapping[str, Any]) -> Path:
        path = self.dir / "summary.json"
        text = json.dumps(dict(summary), indent=2, default=float) + "\n"
        atomic_write(path, lambda file: file.write(text.encode()))
        return path

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class EpisodeRecorder:
    """One env's episode of a vector env with next-step autoreset, as it is played, for the episode files.

    ``step`` gets each vector step's action, reward and next observation of that env, and whether this step only
    reset it (its previous step ended an episode): that observation then starts the next episode.
    """

    def __init__(self, first: np.ndarray) -> None:
        self.frames, self.actions, self.rewards = [first], [], []

    def step(self, action: Any, reward: float, next_obs: np.ndarray, restarted: bool) -> None:
        if restarted:  # this step only reset env 0: its observation starts the next episode
            self.frames, self.actions, self.rewards = [next_obs], [], []
            return
        self.frames.append(next_obs)
        self.actions.append(action)
        self.rewards.append(float(reward))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"frames": np.stack(self.frames), "actions": np.stack(self.actions),
                "rewards": np.asarray(self.rewards, np.float32)}


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    return sorted((Path(run_dir) / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*.pt"))


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint with ``weights_only=True``; a damaged file gives a RunDirError naming it."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a damaged file
        earlier = [other for other in sorted(path.parent.glob(f"{CHECKPOINT_PREFIX}*.pt")) if other.name < path.name]
        fix = (f"delete it to fall back to {earlier[-1].name}" if earlier
               else "the run has no earlier checkpoint: train its config again")
        raise RunDirError(f"{path}: checkpoint cannot be read ({type(err).__name__}); {fix}") from None
    if not isinstance(payload, dict) or "agent" not in payload or "step" not in payload:
        raise RunDirError(f"{path}: not a pixelpilot checkpoint (no 'step'/'agent' entries)")
    return payload


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The config a run directory was made with; RunDirError if the path is not a run directory."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory")
    if not path.is_file():
        raise RunDirError(f"{run_dir}: not a run directory (no config.yaml)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise RunDirError(f"{path}: not valid YAML") from None
    return config_from_dict(data, source=path)


def extend_run(run_dir: str | Path, overrides: list[str]) -> RunConfig:
    """Give a run directory a longer length before it is resumed: apply ``overrides`` (keys of LENGTH_KEYS only,
    no shorter than before) to its config.yaml, validate the result as a new config's, and rewrite the file (to a
    temporary name, then renamed). Schedules tied to the budget (exploration, a decaying learning rate) stretch to
    the new length. ConfigError naming the key for any other key, or a value the agent's config refuses."""
    path = Path(run_dir) / "config.yaml"
    config = load_run_config(run_dir)
    data = config_to_dict(config)
    lengths = [key for key in LENGTH_KEYS if key.split(".", 1)[1] in data["agent"]]
    for override in overrides:
        key = override.partition("=")[0]
        if key not in LENGTH_KEYS:
            raise ConfigError(f"train --resume: {key} cannot change in a run (its checkpoints were made with the "
                              f"run's own config); only its length can: {' or '.join(LENGTH_KEYS)}")
        if key not in lengths:
            raise ConfigError(f"train --resume: {key}: agent.kind {config.agent.kind} has no such key (its length "
                              f"is {' or '.join(lengths)})")
        name = key.split(".", 1)[1]
        before = data["agent"][name]
        apply_override(data, override, source=path)
        after = data["agent"][name]
        if isinstance(after, int) and not isinstance(after, bool) and after < before:
            raise ConfigError(f"train --resume: {key}={after} would shorten the run (its {key} is {before}); a "
                              f"resume gives a run more, not less")
    extended = config_from_dict(data, source=path)
    text = yaml.safe_dump(config_to_dict(extended), sort_keys=False)
    atomic_write(path, lambda file: file.write(text.encode()))
    return extended


def load_episode(path: Path) -> dict[str, np.ndarray]:
    """Load a recorded episode; RunDirError naming the file if it is truncated or not an episode."""
    try:
        with np.load(path, allow_pickle=False) as data:
            episode = {key: data[key] for key in data.files}
    except Exception as err:  # zipfile.BadZipFile, EOFError, ValueError, OSError ...
        raise RunDirError(f"{path}: episode file cannot be read ({type(err).__name__}: {err})") from None
    missing = {"frames", "actions", "rewards"} - set(episode)
    if missing:
        raise RunDirError(f"{path}: not an episode file (missing {', '.join(sorted(missing))})")
    return episode
