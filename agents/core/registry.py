"""The agent kinds by name: ``agent.kind`` in a config -> the class that implements it.

A kind is registered as ``"module:Class"`` and imported the first time it is asked for, as Gymnasium's
registry does with entry points: the core never imports an agent package, and a config that names ``random``
never pays for importing SB3 or Ray. Another package adds its own kind with :func:`register`.
"""

from __future__ import annotations

import importlib

AGENTS: dict[str, str] = {
    "random": "agents.random_agent:RandomAgent",
    "sb3": "agents.sb3:SB3Agent",
    "ddm": "agents.ddm.agent:DDMAgent",
    "dqn": "agents.dqn.agent:DQNAgent",
    "pqn": "agents.pqn.agent:PQNAgent",
}


def register(kind: str, entry_point: str) -> None:
    """Make ``agent.kind: <kind>`` load the class at ``entry_point`` ("package.module:Class")."""
    AGENTS[kind] = entry_point


def agent_class(kind: str) -> type:
    """The agent class registered as ``kind``; KeyError with the known kinds otherwise."""
    if kind not in AGENTS:
        raise KeyError(f"unknown agent kind {kind!r} (known: {', '.join(sorted(AGENTS))})")
    module_name, class_name = AGENTS[kind].split(":")
    return getattr(importlib.import_module(module_name), class_name)
