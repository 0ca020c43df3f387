"""The structure of ``core`` read from its source: the import graph has no cycles, and model-family
facts stay in ``core/models/``.

Modules are read with ``ast`` (nothing is imported), every ``import``/``from ... import`` of a
``core`` module anywhere in a file is an edge, and a depth-first search reports any cycle. The
facade ``core/__init__.py`` imports lazily (PEP 562): its ``_SUBMODULES`` map (public name ->
submodule) counts as its imports.

The family guard (:func:`family_facts`) walks the code of every module of ``core`` outside
``core/models/`` and reports diffusers model classes, the layout names of their module trees and
identifiers called ``unet``: generic code asks the family's adapter (``core.models``) and calls the
network it prunes ``denoiser`` or ``model``. What is checked, per module:

* every identifier: names, attributes (``pipeline.unet``), parameters, keyword arguments, function
  and class names, imported names;
* every string constant that reads as an identifier or a dotted path (``"down_blocks"``,
  ``f"transformer_blocks.{i}"``, ``"UNet2DModel"``): such strings are attribute names, config keys
  or state-dict keys, the same facts spelled for ``getattr`` or a dict;
* not docstrings and comments, which may describe a family in words, and not prose strings (any
  string with a space or other punctuation): error messages and help texts may name a class or a
  layout for the reader.

A model class or layout name is found anywhere inside an identifier or string (``ema_UNet2DModel``
too); ``unet`` is found as a word of an identifier (``teacher_unet``) or a part of a dotted string.
"""
import ast
import re
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


# ------------------------------------------------------------------------------------------------
# family facts stay in core/models/
# ------------------------------------------------------------------------------------------------
MODELS = CORE / "models"
# diffusers model classes by name, and every class named like one (UNet*Model, *Transformer*Model,
# Autoencoder*, VQModel, ControlNet*Model).
MODEL_CLASSES = ("UNet2DModel", "UNet2DConditionModel", "Transformer2DModel", "DiTTransformer2DModel",
                 "PixArtTransformer2DModel", "SD3Transformer2DModel", "AutoencoderKL", "VQModel")
MODEL_CLASS_PATTERN = re.compile(r"UNet\w*Model|Transformer\w*Model|Autoencoder[A-Z]\w*|VQModel|ControlNet\w*Model")
# Attribute names of the families' module trees and configs.
LAYOUT_NAMES = ("down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_add_out", "block_out_channels")
IDENTIFIER_LIKE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")

# Findings that stay, each with its reason: (module, name found) -> why generic code spells it.
JUSTIFIED = {
    ("core/dtypes.py", "unet"): "DENOISER_COMPONENTS: the denoiser attributes of the registered families, read from "
                                "a folder before any network is loaded (no model code imported); checked against "
                                "the adapters by test_dtypes_denoiser_components_are_the_adapters",
}


def _docstrings(tree: ast.AST) -> set:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                found.add(id(first.value))
    return found


def _identifiers(node: ast.AST):
    if isinstance(node, ast.Name):
        yield node.id
    elif isinstance(node, ast.Attribute):
        yield node.attr
    elif isinstance(node, ast.arg):
        yield node.arg
    elif isinstance(node, ast.keyword) and node.arg:
        yield node.arg
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        yield node.name
    elif isinstance(node, ast.alias):
        yield from node.name.split(".")
        if node.asname:
            yield node.asname
    elif isinstance(node, ast.ImportFrom) and node.module:
        yield from node.module.split(".")


def _family_names(text: str) -> list:
    """Model classes and layout names inside ``text``."""
    found = [name for name in LAYOUT_NAMES if name in text]
    found += [name for name in MODEL_CLASSES if name in text]
    found += [match.group(0) for match in MODEL_CLASS_PATTERN.finditer(text) if match.group(0) not in found]
    return found


def family_facts(path: Path) -> list:
    """``[(line, name found, where)]`` for one module (see the module docstring for the rule)."""
    tree = ast.parse(path.read_text())
    docstrings = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        for identifier in _identifiers(node):
            names = _family_names(identifier)
            if "unet" in identifier.lower().split("_"):
                names.append("unet")
            found += [(node.lineno, name, f"identifier {identifier!r}") for name in names]
        if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                and IDENTIFIER_LIKE.fullmatch(node.value)):
            names = _family_names(node.value)
            if "unet" in node.value.lower().split("."):
                names.append("unet")
            found += [(node.lineno, name, f"string {node.value!r}") for name in names]
    return sorted(set(found))


def generic_modules() -> list:
    return sorted(p for p in CORE.rglob("*.py") if MODELS not in p.parents)


def test_generic_code_names_no_model_family_fact():
    failures = []
    for path in generic_modules():
        relative = path.relative_to(CORE.parent).as_posix()
        for line, name, where in family_facts(path):
            if (relative, name) not in JUSTIFIED:
                failures.append(f"{relative}:{line}: {where} ({name})")
    assert not failures, ("model-family facts in generic code (move them into a core/models/ adapter method; "
                          "call the network denoiser or model):\n" + "\n".join(failures))


def test_the_family_guard_sees_what_it_should(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text('''"""Docstrings may say UNet2DModel, down_blocks and unet."""
import diffusers


def f(unet, model):
    """A UNet's ``mid_block``."""  # a comment about transformer_blocks
    blocks = getattr(model, "transformer_blocks")
    key = f"down_blocks.{0}.resnets"
    teacher_unet = model.unet
    cls = diffusers.UNet2DConditionModel
    raise ValueError("this UNet2DModel has no mid_block: give another granularity")
''')
    found = {(name, where.split()[0]) for _, name, where in family_facts(source)}
    assert found == {("unet", "identifier"), ("transformer_blocks", "string"), ("down_blocks", "string"),
                     ("UNet2DConditionModel", "identifier")}
    lines = {line for line, _, _ in family_facts(source)}
    assert lines == {5, 7, 8, 9, 10}


def test_exceptions_name_existing_modules():
    modules = {p.relative_to(CORE.parent).as_posix() for p in generic_modules()}
    assert {module for module, _ in JUSTIFIED} <= modules
    for (module, name), reason in JUSTIFIED.items():
        assert reason and any(found == name for _, found, _ in family_facts(CORE.parent / module)), \
            f"{module}: the justified exception {name!r} is no longer needed; remove it"


def test_dtypes_denoiser_components_are_the_adapters():
    from core.dtypes import DENOISER_COMPONENTS
    from core.models import ADAPTERS

    assert set(DENOISER_COMPONENTS) == {adapter.denoiser_name for adapter in ADAPTERS.values()}
