"""The import graph of ``app``: no cycles, and the layers point one way."""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"


def _module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str, modules: set[str]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """Module → the app modules it imports, anywhere in the file (``TYPE_CHECKING`` imports count too)."""
    files = {_module_name(p): p for p in APP.rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        edges: set[str] = set()
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            for target in targets:
                if target.startswith("app.") and (found := _resolve(target, modules)) and found != name:
                    edges.add(found)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    assert _cycles(import_graph()) == []


def test_a_cycle_is_found() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers_point_one_way() -> None:
    """Services and streams never import the web layer or the composition root; services never Litestar."""
    upper = ("app.controllers", "app.factory", "app.context", "app.composition", "app.cli")
    wrong = {
        module: sorted(e for e in edges if e.startswith(upper))
        for module, edges in import_graph().items()
        if module.startswith(("app.services", "app.streams"))
    }
    assert {m: e for m, e in wrong.items() if e} == {}
    for path in (APP / "services").rglob("*.py"):
        assert "litestar" not in path.read_text(), path


DOMAIN_PACKAGES = sorted(
    _module_name(init) for init in APP.glob("*/*/__init__.py") if init.parent.parent.name in ("services", "streams")
)


def test_domain_packages_say_what_they_own() -> None:
    """Each domain package has a docstring and an ``__all__``; other packages use only what it lists."""
    graph = import_graph()
    for package in DOMAIN_PACKAGES:
        init = APP.parent / package.replace(".", "/") / "__init__.py"
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), package
        exported = next(
            (
                set(ast.literal_eval(node.value))
                for node in tree.body
                if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets)
            ),
            None,
        )
        assert exported is not None, f"{package} has no __all__"
        reached = {
            (module, edge[len(package) + 1 :].split(".")[0])
            for module, edges in graph.items()
            if not module.startswith(package + ".") and module != package
            for edge in edges
            if edge.startswith(package + ".")
        }
        assert {(m, sub) for m, sub in reached if sub not in exported} == set(), package
