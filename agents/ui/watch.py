"""``pixelpilot watch RUN_DIR``: a run's recorded episodes, or its latest checkpoint playing live, in the viewer.

    pixelpilot watch runs/random_pendulum/20250101-120000-seed0                  replay episodes/*.npz
    pixelpilot watch RUN_DIR --live                                              play the latest checkpoint
    pixelpilot watch RUN_DIR --export episodes.mp4                               no window: a video file
    pixelpilot watch RUN_DIR --live --export live.gif --episodes 2               two new episodes as a GIF

The drawing itself lives in :mod:`envs.viewer`; this module turns a run directory into its episodes
(or into a live iterator over an env played by the trained agent) and bad input into one-line errors.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym

from agents.core.agent import Agent, load_trained_agent
from agents.core.config import ConfigError
from agents.core.envs import env_fps, make_env
from agents.core.episodes import EVAL_SEED_OFFSET, episode_steps
from agents.core.run import RunDirError, load_episode, load_run_config
from envs.viewer import EXPORT_FORMATS, Episode, NoDisplayError, Viewer, export

NO_DISPLAY_HINT = "no display: set DISPLAY (run where a screen is, or ssh -X), or use --export FILE.mp4"


def recorded_episodes(run_dir: Path, last: int | None = None) -> list[Episode]:
    """The run's recorded episodes, oldest first, then the best one unless it is among them.

    With ``last``, only the newest ``last`` recorded episodes (best.npz is then left out).

    Raises:
        RunDirError: not a run directory, no episodes recorded, or a file that cannot be read.
    """
    load_run_config(run_dir)
    paths = sorted((run_dir / "episodes").glob("ep_*.npz"))
    if last is not None:
        paths = paths[-last:]
    loaded = [(load_episode(path), "") for path in paths]
    best_path = run_dir / "episodes" / "best.npz"
    if best_path.exists() and last is None:
        best = load_episode(best_path)
        if int(best.get("episode", -1)) not in {int(data.get("episode", -1)) for data, _ in loaded}:
            loaded.append((best, " (best)"))
    if not loaded:
        raise RunDirError(f"{run_dir}: no recorded episodes yet (episodes/ is empty); "
                          "wait for training to record one, or use --live")
    return [Episode.from_dict(data, suffix=suffix) for data, suffix in loaded]


def live_episodes(agent: Agent, env: gym.Env, seed: int) -> Iterator[Episode]:
    """Play episodes with ``agent.act`` forever (seeds ``seed``, ``seed + 1``, ...); yield the episode being
    played each time it gains a frame.

    ``frames[t]`` is shown with the action chosen from it, so each step's action is appended and yielded
    before its next frame is (the newest frame of a finished episode has no action).
    """
    fps = env_fps(env)
    env_id = env.spec.id if env.spec is not None else ""
    for index in itertools.count():
        agent.reset()
        episode = None
        for step in episode_steps(env, agent.act, seed + index):
            if episode is None:
                episode = Episode(frames=[step.obs], label=f"Episode: {index + 1}", fps=fps, env_id=env_id)
            episode.actions.append(step.action)
            yield episode
            episode.frames.append(step.next_obs)
            episode.rewards.append(step.reward)
        yield episode


def play_episodes(live: Iterator[Episode], count: int) -> list[Episode]:
    """The first ``count`` whole episodes of a live iterator."""
    episodes: list[Episode] = []
    for episode in live:
        if not episodes or episode is not episodes[-1]:
            if len(episodes) == count:
                break
            episodes.append(episode)
    return episodes


def watch(
    run_dir: str | Path,
    live: bool = False,
    export_path: str | Path | None = None,
    episodes: int | None = None,
    k: int = 1,
) -> Path | None:
    """Show a run in a window, or write it to ``export_path``; returns the written file, if any.

    Args:
        run_dir: a run directory (``runs/<name>/<stamp>``).
        live: play new episodes with the latest checkpoint instead of replaying recorded ones.
        export_path: ``.mp4`` or ``.gif``: write the picture there instead of opening a window.
        episodes: recorded: only the newest N (without best.npz); live with export: how many episodes to
            play (default 1).
        k: the open-loop prediction horizon shown first for model-based runs.

    Raises:
        ConfigError (RunDirError): bad input or no display, as one line for the CLI.
    """
    run_dir = Path(run_dir)
    target = Path(export_path) if export_path is not None else None
    if target is not None and target.suffix.lower() not in EXPORT_FORMATS:
        raise ConfigError(f"--export {target}: unknown video format {target.suffix or '(none)'!r}; "
                          f"use one of {', '.join(EXPORT_FORMATS)}")
    if episodes is not None and episodes < 1:
        raise ConfigError(f"--episodes: must be >= 1, got {episodes}")
    if k < 1:
        raise ConfigError(f"-k: must be >= 1, got {k}")
    if not live:
        shown = recorded_episodes(run_dir, episodes)
        if target is not None:
            export(shown, target, k=k)
            return target
        show(Viewer(shown, k=k, screenshot_dir=run_dir / "screenshots"), run_dir)
        return None
    agent, config = load_trained_agent(run_dir)
    env = make_env(config)
    try:
        stream = live_episodes(agent, env, config.seed + EVAL_SEED_OFFSET)
        if target is not None:
            export(play_episodes(stream, episodes or 1), target, k=k, action_space=env.action_space)
            return target
        show(Viewer([], live=stream, k=k, action_space=env.action_space, screenshot_dir=run_dir / "screenshots"),
             run_dir)
        return None
    finally:
        env.close()


def show(viewer: Viewer, run_dir: Path) -> None:
    """Open the viewer's window; no display is a one-line ConfigError saying how to fix it."""
    try:
        viewer.run(title=f"pixelpilot watch {run_dir}")
    except NoDisplayError:
        raise ConfigError(NO_DISPLAY_HINT) from None
