"""Imports between autoprune modules point one way: no module imports, even lazily, one that imports it back.

The module graph is read from the source with ``ast``: every ``import`` statement counts, including
those inside functions and ``if TYPE_CHECKING:`` blocks. Names a package's ``__init__`` resolves lazily in
its module-level ``__getattr__`` are not edges of the package (importing it does not import them).
"""

from __future__ import annotations

import ast
from pathlib import Path

import autoprune

ROOT = Path(autoprune.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = ["autoprune", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def lazy_getattr_imports(tree: ast.Module) -> set[int]:
    """ids of the import nodes inside a module-level ``def __getattr__``."""
    return {id(node) for fn in tree.body if isinstance(fn, ast.FunctionDef) and fn.name == "__getattr__"
            for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        skip = lazy_getattr_imports(tree) if is_package else set()
        package = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import: resolve against the current package
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from pkg import sub` imports the submodule; `from mod import name` the module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in files and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_graph_sees_function_local_imports():
    graph = import_graph()
    assert "autoprune.pruning.space" in graph["autoprune.pruning"]
    assert "autoprune.pruning.importance" in graph["autoprune.pruning.space"]
    assert "autoprune.deploy.runtime" in graph["autoprune.deploy.files"]  # imported inside evaluate_file


def test_cycle_finder_reports_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_among_autoprune_modules():
    graph = import_graph()
    found = cycles(graph)
    detail = "; ".join(" <-> ".join(c) for c in found)
    assert not found, f"import cycles among autoprune modules: {detail}"
