"""The import graph of ``core`` has no cycles (issue 14): imports inside functions count too.

Modules are read with ``ast`` (nothing is imported), every ``import``/``from ... import`` of a
``core`` module anywhere in a file is an edge, and a depth-first search reports any cycle. The
facade ``core/__init__.py`` imports lazily (PEP 562): its ``_SUBMODULES`` map (public name ->
submodule) counts as its imports.
"""
import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "core"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(current: str, is_package: bool, level: int, module: str | None) -> str:
    base = current.split(".") if is_package else current.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def lazy_submodules() -> dict[str, str]:
    """The facade's ``_SUBMODULES`` literal: public name -> submodule of ``core`` it imports on use."""
    for node in ast.parse((CORE / "__init__.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_SUBMODULES" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in CORE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}

    def known(name: str) -> str | None:
        while name:  # "core.models.base.X" -> the longest prefix that is a module
            if name in modules:
                return name
            name = name.rpartition(".")[0]
        return None

    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names if alias.name.startswith("core")]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module) if node.level else (node.module or "")
                if not base.startswith("core"):
                    continue
                # "from . import obs" imports the submodule core.obs
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            if name == "core" and isinstance(node, ast.Assign) and any(
                    getattr(t, "id", None) == "_SUBMODULES" for t in node.targets):
                targets = [f"core.{module}" for module in ast.literal_eval(node.value).values()]
            for target in targets:
                resolved = known(target)
                if resolved is not None and resolved != name:
                    graph[name].add(resolved)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str):
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if state.get(target) is None:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node == "core":
            continue  # the facade imports everything; nothing imports it back (checked below)
        if state.get(node) is None:
            found = visit(node)
            if found:
                return found
    return None


def test_core_import_graph_has_no_cycles():
    graph = import_graph()
    graph_without_facade = {name: {t for t in targets if t != "core"} for name, targets in graph.items() if name != "core"}
    cycle = find_cycle(graph_without_facade)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
    importers_of_facade = sorted(name for name, targets in graph.items() if "core" in targets and name != "core")
    assert not importers_of_facade, f"modules of core import the facade core/__init__.py: {importers_of_facade}"


def test_registry_imports_nothing_of_core():
    assert import_graph()["core.registry"] == set()


def test_the_lazy_facade_names_modules_of_core():
    lazy = lazy_submodules()
    assert lazy, "core/__init__.py has no _SUBMODULES map"
    graph = import_graph()
    missing = sorted(module for module in set(lazy.values()) if f"core.{module}" not in graph)
    assert not missing, f"the facade's lazy map names modules that do not exist: {missing}"
    assert graph["core"] == {f"core.{module}" for module in lazy.values()}
