"""Pixel environments on the Gymnasium API, registered under the ``pixelpilot/`` namespace.

Importing this package registers every environment; nothing heavy (ale-py, minatar, torch) is
imported until an environment is made.

    import gymnasium as gym
    import envs  # noqa: F401  (registers pixelpilot/...)

    env = gym.make("pixelpilot/Pendulum-v0")                      # (1, 40, 40) uint8
    vec = gym.make_vec("pixelpilot/Pendulum-v0", num_envs=64, vectorization_mode="vector_entry_point")
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

MINATAR_GAMES = ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")


def _register(env_id: str, **kwargs) -> None:
    if env_id not in registry:
        register(id=env_id, **kwargs)


def register_all() -> None:
    """Register every ``pixelpilot/...`` id (idempotent)."""
    _register(
        "pixelpilot/Pendulum-v0",
        entry_point="envs.pendulum:PixelPendulumEnv",
        vector_entry_point="envs.pendulum:PixelPendulumVectorEnv",
        max_episode_steps=100,
    )
    _register(
        "pixelpilot/CartPoleBalance-v0",
        entry_point="envs.cartpole:PixelCartPoleEnv",
        vector_entry_point="envs.cartpole:PixelCartPoleVectorEnv",
        max_episode_steps=500,
        kwargs={"task": "balance"},
    )
    _register(
        "pixelpilot/CartPoleSwingUp-v0",
        entry_point="envs.cartpole:PixelCartPoleEnv",
        vector_entry_point="envs.cartpole:PixelCartPoleVectorEnv",
        max_episode_steps=500,
        kwargs={"task": "swingup"},
    )
    _register("pixelpilot/Pixels-v0", entry_point="envs.external:make_pixel_env")
    _register("pixelpilot/Atari-v0", entry_point="envs.external:make_atari_env")
    for game in MINATAR_GAMES:
        _register(
            f"pixelpilot/MinAtar-{game}-v0",
            entry_point="envs.external:MinAtarEnv",
            kwargs={"game": game.lower().replace("spaceinvaders", "space_invaders")},
        )


register_all()
