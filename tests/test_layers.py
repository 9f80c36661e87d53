"""The package's shape, read from its imports: layers that only import downwards, no import cycle
between packages, and the bottom layers free of everything above them.

Every module of service/evoarena is parsed with `ast` (nothing is imported); an edge a -> b is an
import of evoarena module b in module a, at module level or inside a function. LAYERS lists the
layers from the top; a module's layer is that of its first name under evoarena/ (cli/, report/,
fleet/, ..., or the module itself).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "service" / "evoarena"

# From the top: a module may import its own layer's modules and the layers below, never above.
LAYERS = [
    {"__main__", "api", "cli", "report"},  # Python's entry, the commands, and the report (which draws what `evoarena sample` draws)
    {"fleet"},
    {"worker"},
    {"scheduler"},
    {"evolve"},
    {"tasks", "metrics", "tracking"},  # the task protocol, the counters of its summaries, MLflow
    {"encoding", "problems"},
    {"store"},
    {"spec"},
    {"settings", "logs", "seeding", "heartbeat", "lease", "liveness", "__init__"},
]
BOTTOM = ("settings", "spec", "store")  # import nothing from the layers above them, not even in a function
# Imports of evoarena modules inside a function: 92 before the package split, 73 after it (most in
# cli/, which imports torch, celery and the store only for the command that needs them, so that
# `evoarena --help` and `evoarena list` start fast). A ratchet: the count may fall, never grow.
FUNCTION_LEVEL_LIMIT = 73


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 2:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(found: dict[str, Path]) -> list[tuple[str, str, bool, int]]:
    """(importer, imported, inside a function, line) for every import of an evoarena module."""
    def resolve(name: str) -> str | None:
        while name and name not in found:
            name = name.rpartition(".")[0]
        return name or None

    edges = []
    for module, path in found.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                    continue  # annotations only: never imported at run time
                inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
                if isinstance(child, ast.Import):
                    targets = [alias.name for alias in child.names]
                elif isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        up = package.split(".")[: len(package.split(".")) - child.level + 1]
                        base = ".".join(up + ([child.module] if child.module else []))
                    targets = [f"{base}.{alias.name}" for alias in child.names]
                else:
                    visit(child, inside)
                    continue
                for target in {resolve(t) for t in targets if t.startswith("evoarena")} - {None, module}:
                    edges.append((module, target, inside, child.lineno))
        visit(ast.parse(path.read_text()), False)
    return edges


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(module: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if top(module) in names)


def cycles(edges: list[tuple[str, str, bool, int]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for a, b, _, _ in edges:
        graph.setdefault(a, set()).add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


FOUND = modules()
EDGES = imports(FOUND)


def test_every_module_belongs_to_a_layer():
    assert sorted({top(m) for m in FOUND} - set().union(*LAYERS)) == []


def test_no_module_level_import_goes_up_a_layer():
    upward = [f"{a}:{line} imports {b}" for a, b, inside, line in EDGES if not inside and layer(b) < layer(a)]
    assert upward == []


def test_the_bottom_layers_import_nothing_from_above_even_inside_a_function():
    upward = [f"{a}:{line} imports {b}" for a, b, _, line in EDGES
              if top(a) in BOTTOM and layer(b) < layer(a)]
    assert upward == []


def test_no_import_cycle_crosses_a_package_boundary():
    crossing = [sorted(c) for c in cycles(EDGES) if len({top(m) for m in c}) > 1]
    assert crossing == []


def test_imports_inside_functions_do_not_grow_past_the_ratchet():
    inside = [f"{a}:{line} imports {b}" for a, b, fn, line in EDGES if fn]
    assert len(inside) <= FUNCTION_LEVEL_LIMIT, "\n".join(inside)


def test_the_checks_see_an_upward_import_and_a_cycle():
    # the rules above on a made-up graph, so that a reader of this file can trust an empty answer
    made_up = [("evoarena.store.base", "evoarena.worker.worker", False, 1),
               ("evoarena.worker.worker", "evoarena.store.base", False, 2)]
    assert [(a, b) for a, b, _, _ in made_up if layer(b) < layer(a)] == [("evoarena.store.base", "evoarena.worker.worker")]
    assert cycles(made_up) == [{"evoarena.store.base", "evoarena.worker.worker"}]
