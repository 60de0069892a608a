"""Agent kinds by name. Each entry is ``module:Class``; the class has a ``Config`` dataclass attribute.

Modules are imported only when their kind is used, so a config for one agent never pays for another's
imports (SB3, Ray).
"""

from __future__ import annotations

import importlib

AGENTS: dict[str, str] = {
    "random": "agents.random_agent:RandomAgent",
    "sb3": "agents.sb3:SB3Agent",
    "ddm": "agents.ddm:DDMAgent",
}


def agent_class(kind: str) -> type:
    """The agent class registered as ``kind``; KeyError with the known kinds otherwise."""
    if kind not in AGENTS:
        raise KeyError(f"unknown agent kind {kind!r} (known: {', '.join(sorted(AGENTS))})")
    module_name, class_name = AGENTS[kind].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def agent_config_class(kind: str) -> type:
    """The ``Config`` dataclass of agent kind ``kind``."""
    return agent_class(kind).Config
