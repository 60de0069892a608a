"""Making an agent's envs from its config: one env, the vector env, and the env's frame rate.

``env.discrete_actions`` turns a continuous (Box) env into a discrete one for value-based agents: action ``i``
is the i-th entry of the list (Gymnasium's ``TransformAction``, single or vector).
"""

from __future__ import annotations

import difflib
import importlib

import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers pixelpilot/...)
from agents.core.config import ConfigError, RunConfig


def make_env(config: RunConfig, render_mode: str | None = None) -> gym.Env:
    """One env as the config describes it; a bad id or kwarg is a ConfigError naming env.id/env.kwargs."""
    kwargs = dict(config.env.kwargs)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    try:
        env = gym.make(config.env.id, **kwargs)
    except (gym.error.Error, ImportError) as err:  # ImportError: the module of a "module:Env-v0" id
        raise ConfigError(env_id_error(config.env.id, err)) from None
    except (TypeError, ValueError) as err:  # an argument the env does not take, or a value it refuses
        raise ConfigError(f"env.kwargs: {err}") from None
    if config.env.discrete_actions is None:
        return env
    table = action_table(config.env.discrete_actions, env.action_space)
    return gym.wrappers.TransformAction(env, lambda index: table[index], gym.spaces.Discrete(len(table)))


def make_vec_env(config: RunConfig) -> gym.vector.VectorEnv:
    """``env.num_envs`` envs stepped together; the env's own batched implementation when it has one.

    An id "module:Env-v0" imports the module first, which registers the env, as gymnasium.make does."""
    module, _, env_id = config.env.id.rpartition(":")
    try:
        if module:
            importlib.import_module(module)
        spec = gym.spec(env_id)
    except (gym.error.Error, ImportError) as err:
        raise ConfigError(env_id_error(config.env.id, err)) from None
    mode = "vector_entry_point" if spec.vector_entry_point is not None else "sync"
    try:
        vec = gym.make_vec(env_id, num_envs=config.env.num_envs, vectorization_mode=mode,
                           **config.env.kwargs, **config.env.vector_kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"env.{'vector_kwargs' if config.env.vector_kwargs else 'kwargs'}: {err}") from None
    if config.env.discrete_actions is None:
        return vec
    table = action_table(config.env.discrete_actions, vec.single_action_space)
    single = gym.spaces.Discrete(len(table))
    if getattr(vec, "backend", "numpy") == "torch":  # a batched env on torch: indices and actions stay on its device
        import torch

        on_device = torch.as_tensor(table, device=vec.device)

        def lookup(indices):
            return on_device[torch.as_tensor(indices, device=vec.device)]
    else:
        def lookup(indices):
            return table[np.asarray(indices)]
    return gym.wrappers.vector.TransformAction(vec, lookup, gym.vector.utils.batch_space(single, vec.num_envs), single)


def env_id_error(env_id: str, err: Exception) -> str:
    """The one line for an ``env.id`` Gymnasium cannot make: for an id registered under no name, the registered
    ids closest to it, or else pixelpilot's own; otherwise Gymnasium's reason (a missing version, module, ...)."""
    if not isinstance(err, (gym.error.NameNotFound, gym.error.NamespaceNotFound)):
        return f"env.id: {err}"
    namespace, name, _ = gym.envs.registration.parse_env_id(env_id.rpartition(":")[2])
    same_namespace = {spec.name: spec.id for spec in gym.registry.values() if spec.namespace == namespace}
    close = [same_namespace[match] for match in difflib.get_close_matches(name, same_namespace, n=3, cutoff=0.6)]
    if close:
        return f"env.id: no env {env_id!r} is registered; did you mean {' or '.join(close)}?"
    ours = sorted(env for env in gym.registry if env.startswith("pixelpilot/"))
    return f"env.id: no env {env_id!r} is registered (pixelpilot's envs: {', '.join(ours)})"


def action_table(actions: list, space: gym.Space) -> np.ndarray:
    """``env.discrete_actions`` as a ``(n, *action_shape)`` array of the Box's dtype, checked against its bounds.

    Each entry is a number (for a one-dimensional action) or a list of one number per action dimension.
    """
    if not isinstance(space, gym.spaces.Box):
        raise ConfigError(f"env.discrete_actions: only for a continuous (Box) action space, got {space}")
    try:
        table = np.asarray(actions, dtype=space.dtype).reshape(len(actions), *space.shape)
    except (TypeError, ValueError):
        raise ConfigError(f"env.discrete_actions: expected {len(actions)} actions of shape {space.shape}, "
                          f"got {actions!r}") from None
    if len(table) < 2:
        raise ConfigError(f"env.discrete_actions: needs at least two actions, got {actions!r}")
    outside = ~np.all((table >= space.low) & (table <= space.high), axis=tuple(range(1, table.ndim)))
    if outside.any():
        raise ConfigError(f"env.discrete_actions: {table[outside][0].tolist()} is outside the action space "
                          f"[{space.low.tolist()}, {space.high.tolist()}]")
    return table


def env_fps(env: gym.Env | gym.vector.VectorEnv) -> float:
    """The env's real frame rate (its ``render_fps``), 30 if it does not say."""
    return float(env.metadata.get("render_fps") or 30)
