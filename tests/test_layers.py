"""The import graph: no module imports from a layer above its own, and there is no cycle.

Layers, bottom to top (docs/code.md): errors and atomic file writes; data and models;
batches; training; config; report; the job, the benchmark and the summarize command.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = [  # (module prefix, layer)
    ("experiments.errors", 0), ("experiments.atomic", 0), ("experiments.values", 0),
    ("experiments.ranks", 0), ("experiments.timing", 0),
    ("experiments.groups", 0), ("experiments.identity", 0), ("experiments.command_line", 0),
    ("experiments.data", 1), ("experiments.models", 1),
    ("experiments.batches", 2),
    ("experiments.training", 3),
    ("experiments.config", 4),
    ("experiments.report", 5),
    ("experiments.job", 6), ("experiments.job_dir", 6), ("experiments.task", 6),
    ("experiments.spawn", 6), ("experiments.bench", 6), ("experiments.search", 6),
    ("experiments.summarize", 6), ("experiments.evaluate", 6),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    for prefix, level in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return level
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and to docs/code.md")


def imports(path: Path) -> set[str]:
    """Every experiments.* module this file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("experiments")}


MODULES = {module_name(p): p for p in sorted((SRC / "experiments").rglob("*.py"))}
GRAPH = {m: {i for i in imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_from_a_higher_layer(module):
    upward = {i for i in GRAPH[module] if layer(i) > layer(module)}
    assert not upward, f"{module} (layer {layer(module)}) imports from above: {sorted(upward)}"


def test_the_import_graph_has_no_cycle():
    """Depth-first search; a package's __init__ importing its own submodules is not a cycle
    unless a submodule imports the package back through it."""
    state, path = {}, []

    def visit(m):
        state[m] = "open"
        path.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = "done"

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
