"""The package layout docs/architecture.md draws: imports between sidecar's modules point one
way (no cycle), and the value objects at the bottom import nothing above them."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SIDECAR = Path(__file__).resolve().parents[2] / "sidecar"
#: Value objects and leaves: no I/O, and nothing of the sidecar above them.
BOTTOM = {
    "errors": set(),
    "clock": set(),
    # brokers: the Lease value object (brokers/base.py), for annotations only; clock and
    # resources (themselves at the bottom): a task's flow as the policy gets it (TaskFlow)
    "model": {"brokers", "clock", "resources"},
    "events": set(),
    "resources": {"errors"},
}


def import_graph() -> dict[str, set[str]]:
    """Top-level module or package of sidecar/ → the ones it imports (generated code aside)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in SIDECAR.rglob("*.py"):
        parts = list(path.relative_to(SIDECAR).with_suffix("").parts)
        if parts[0] == "_proto":
            continue
        package = parts[:-1]  # the package a relative import starts from
        top = parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.startswith("sidecar."):
                target = node.module.split(".")[1:]
            else:
                continue
            if target and target[0] != top and not target[0].startswith("_"):
                graph[top].add(target[0])
    return graph


def test_imports_between_modules_have_no_cycle() -> None:
    """Depth-first search over the module graph finds no back edge."""
    graph = import_graph()
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append([*path, node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert cycles == []


def test_value_objects_import_nothing_above_them() -> None:
    """errors, clock, model, events and resources stay at the bottom of the picture."""
    graph = import_graph()
    assert {name: graph.get(name, set()) for name in BOTTOM} == BOTTOM
