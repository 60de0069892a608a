"""Making an agent's envs from its config: one env, the vector env, and the env's frame rate."""

from __future__ import annotations

import gymnasium as gym

import envs  # noqa: F401  (registers pixelpilot/...)
from agents.common.config import ConfigError, RunConfig


def make_env(config: RunConfig, render_mode: str | None = None) -> gym.Env:
    """One env as the config describes it; a bad id or kwarg is a ConfigError naming env.id/env.kwargs."""
    kwargs = dict(config.env.kwargs)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    try:
        return gym.make(config.env.id, **kwargs)
    except gym.error.Error as err:
        raise ConfigError(f"env.id: {err}") from None
    except TypeError as err:
        raise ConfigError(f"env.kwargs: {err}") from None


def make_vec_env(config: RunConfig) -> gym.vector.VectorEnv:
    """``env.num_envs`` envs stepped together; the env's own batched implementation when it has one."""
    try:
        spec = gym.spec(config.env.id)
    except gym.error.Error as err:
        raise ConfigError(f"env.id: {err}") from None
    mode = "vector_entry_point" if spec.vector_entry_point is not None else "sync"
    try:
        return gym.make_vec(config.env.id, num_envs=config.env.num_envs, vectorization_mode=mode,
                            **config.env.kwargs)
    except TypeError as err:
        raise ConfigError(f"env.kwargs: {err}") from None


def env_fps(env: gym.Env | gym.vector.VectorEnv) -> float:
    """The env's real frame rate (its ``render_fps``), 30 if it does not say."""
    return float(env.metadata.get("render_fps") or 30)
