"""Dependencies point one way. The import graph of the source tree (every import statement, those inside
functions included, read with `ast`) has no cycle, and every import points down the layer table of
docs/design.md (orchestration, evaluation, stages, reward sources, shared library), with no exception."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "stages", "reward_models")
# Highest first; a module may import its own layer and the layers below it. The shared library is the
# rest of pipeline/.
LAYERS = {
    "orchestration": (
        "pipeline.__main__",
        "pipeline.cli",
        "pipeline.runner",
        "pipeline.compare",
        "pipeline.rundir",
        "pipeline.config",
    ),
    "evaluation": ("pipeline.evaluation",),
    "stages": ("stages",),
    "reward sources": ("reward_models",),
    "shared library": ("pipeline",),
}


def layer(module: str) -> int:
    """The module's row in LAYERS, 0 at the top: the first row naming it or a package above it."""
    for rank, prefixes in enumerate(LAYERS.values()):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (`from a import b` is module a.b when that is a module)."""
    known = modules()

    def project_module(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            else:
                continue
            for target in targets:
                resolved = project_module(target)
                if resolved and resolved != name:
                    graph[name].add(resolved)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_import_points_down_the_layer_table():
    names = list(LAYERS)
    upward = sorted(
        f"{module} ({names[layer(module)]}) imports {target} ({names[layer(target)]})"
        for module, targets in import_graph().items()
        for target in targets
        if layer(target) < layer(module)
    )
    assert upward == []


def test_the_layer_check_sees_an_upward_import():
    assert layer("stages.rl.stage") > layer("pipeline.evaluation.report") > layer("pipeline.runner")
    assert layer("pipeline.demo.reviews") > layer("reward_models.gold") > layer("stages.sft")
    assert layer("pipeline.config") < layer("pipeline.stage_config")


def test_project_modules_are_imported_at_the_top():
    """An import of the project inside a function is how a cycle hides; only the CLI has them, so that
    `rlhf --help` starts without loading torch (its commands import what they need when they run)."""
    inside = []
    for name, path in modules().items():
        if name == "pipeline.cli":
            continue
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and node.level == 0:
                    targets = [node.module or ""]
                elif isinstance(node, ast.Import):
                    targets = [alias.name for alias in node.names]
                else:
                    continue
                inside += [f"{name}:{node.lineno} {t}" for t in targets if t.split(".")[0] in PACKAGES]
    assert inside == []
