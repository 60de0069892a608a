"""The package layout the README describes, held: imports run one way only.

    envs/, nets/          know nothing of agents
    agents/core/          the platform: never an agent package, Ray, SB3, pygame or the user interface
    agents/ui/            watch and plot: the core (and envs' viewer), never an agent package
    agents/tune/          the cluster, Ray tasks, sweeps, PBT: the core and ui, never an agent package
    agent families        random_agent, sb3, dqn/, pqn/, ddm/: the layers below, never each other
    agents/cli.py         the roof: the only module that may import everything

and no module imports one of the project's modules inside a function (the way import circles hide).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("agents", "envs", "nets")
LAYERS = {"envs": 0, "nets": 0, "agents.core": 1, "agents.ui": 2, "agents.tune": 3, "agents.random_agent": 4,
          "agents.sb3": 4, "agents.dqn": 4, "agents.pqn": 4, "agents.ddm": 4, "agents.cli": 5, "agents.__main__": 6,
          "agents": 4}
FORBIDDEN_IN_CORE = ("ray", "stable_baselines3", "pygame")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """The layer unit a module belongs to: agents.dqn.agent -> agents.dqn, envs.pendulum -> envs."""
    parts = module.split(".")
    if parts[0] != "agents":
        return parts[0]
    return ".".join(parts[:2]) if len(parts) > 1 else "agents"


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import in the file."""
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            # `from agents.ddm import bench` imports the module agents.ddm.bench
            found += [(name if (ROOT / (name.replace(".", "/") + ".py")).exists() else node.module,
                       id(node) in top_level) for name in names]
    return found


SOURCES = sorted(path for package in PROJECT for path in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(ROOT)))
def test_imports_run_down_the_layers_and_never_inside_a_function(path):
    here = module_name(path)
    for imported, at_top in imports(path):
        if imported.split(".")[0] in PROJECT:
            assert at_top, f"{here} imports {imported} inside a function"
            if unit(here) != unit(imported):
                assert LAYERS[unit(imported)] < LAYERS[unit(here)], f"{here} imports {imported}: up or across"
        if unit(here) == "agents.core":
            assert imported.split(".")[0] not in FORBIDDEN_IN_CORE, f"the core module {here} imports {imported}"


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of the module graph (a path that comes back to its start), or None."""
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> list[str] | None:
        state[module] = "open"
        for child in sorted(graph.get(module, ())):
            if state.get(child) == "open":
                return [*trail, module, child]
            if child not in state and (circle := visit(child, [*trail, module])):
                return circle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (circle := visit(module, [])):
            return circle
    return None


def test_the_module_graph_has_no_circle():
    graph = {module_name(path): {imported for imported, _ in imports(path) if imported.split(".")[0] in PROJECT}
             for path in SOURCES}
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the finder finds one
    circle = find_circle(graph)
    assert circle is None, f"import circle: {' -> '.join(circle)}"
