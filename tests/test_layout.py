"""The package's layout (DESIGN.md section 5), checked from the source with ``ast``.

Packages follow the data and import only downward, in this order (a package may import any
package of a lower row, never one of its own row or above; ``nas_sepconv/__init__.py`` is the
facade and may import anything):

    cli
    export
    search
    oneshot (the weight-sharing supernet: search runs it)
    results, train, io
    recipe (holds an Arch and a Plan: above the models and the conversion)
    conversion
    models, data
    blocks, measure
    storage, files, progress, search_spaces (the bundled YAML spaces)
    jsonfile, tables
    errors

No import cycle between modules, no module over 400 lines, no function over 80 lines, no class
over 250 lines (as the formatter lays them out), no module imports another module's private name,
and no test imports a private name (``_x``) from a package other than the one it tests.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "nas_sepconv"
LAYERS: list[set[str]] = [
    {"cli"},
    {"export"},
    {"search"},
    {"oneshot"},
    {"results", "train", "io"},
    {"recipe"},
    {"conversion"},
    {"models", "data"},
    {"blocks", "measure"},
    {"storage", "files", "progress", "search_spaces"},
    {"jsonfile", "tables"},
    {"errors"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 250


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(module: str, is_package: bool, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The nas_sepconv modules an import statement loads (the deepest that exist)."""
    targets = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names if a.name.startswith("nas_sepconv")]
        bases = names
        extra: list[str] = []
    else:
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        if not base.startswith("nas_sepconv"):
            return []
        # ``from X import y``: the module X.y where y is a module, else X itself
        submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
        bases = [base] if len(submodules) < len(node.names) else []
        extra = submodules
    for name in bases + extra:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name:
            targets.append(name)
    return sorted(set(targets))


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(t for t in _resolve(module, is_package, node) if t != module)
        graph[module] = edges
    return graph


GRAPH = _imports()


def _component(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_package_is_placed_in_a_layer():
    components = {_component(m) for m in MODULES} - {None}
    assert components <= set(RANK), f"place {sorted(components - set(RANK))} in LAYERS (and DESIGN.md section 5)"


def test_imports_only_run_downward():
    upward = []
    for module, targets in GRAPH.items():
        source = _component(module)
        if source is None:  # nas_sepconv/__init__.py: the facade
            continue
        for target in targets:
            dest = _component(target)
            if dest is None:
                upward.append(f"{module} imports the facade nas_sepconv")
            elif dest != source and RANK[dest] <= RANK[source]:
                upward.append(f"{module} -> {target} ({source} may not import {dest})")
    assert not upward, "\n".join(sorted(upward))


def test_results_never_imports_search():
    assert not [m for m, t in GRAPH.items() if _component(m) == "results" for x in t if _component(x) == "search"]


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph`` (module -> modules it imports): its strongly connected
    components of more than one module (Tarjan's algorithm, iterative so that a deep chain of
    imports cannot exhaust Python's recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, successors = work[-1]
            w = next(successors, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_no_import_cycle():
    cycles = find_cycles(GRAPH)
    assert not cycles, f"import cycles: {cycles}"


def test_the_cycle_finder_finds_a_planted_cycle():
    """The cycle check must be able to fail: a planted three-module cycle beside a clean chain
    and a self-contained module is found, and nothing else is."""
    planted = {
        "a": {"b"},
        "b": {"c"},
        "c": {"a", "d"},
        "d": {"e"},
        "e": set(),
        "lone": set(),
    }
    assert find_cycles(planted) == [["a", "b", "c"]]
    assert find_cycles({"x": {"y"}, "y": {"x"}, "z": {"x"}}) == [["x", "y"]]
    assert find_cycles({m: set() for m in "abc"}) == []
    chain = {f"m{i}": {f"m{i + 1}"} for i in range(5000)} | {"m5000": {"m0"}}
    assert [len(c) for c in find_cycles(chain)] == [5001]  # deep, and no RecursionError


def test_the_checker_sees_a_cycle_and_an_upward_import():
    """The checks above must be able to fail: resolve two planted imports."""
    planted = ast.parse("from ..search import search\nfrom . import frame\n")
    up, same = planted.body
    assert _resolve("nas_sepconv.results.front", False, up) == ["nas_sepconv.search"]
    assert _resolve("nas_sepconv.results.front", False, same) == ["nas_sepconv.results.frame"]
    assert RANK["search"] < RANK["results"]  # so results -> search is reported as upward


def _long_definitions(source: str) -> list[str]:
    """The functions over MAX_FUNCTION_LINES and classes over MAX_CLASS_LINES of ``source``, as
    the formatter left it (CI checks that the code is formatted, so the counts are of its shape)."""
    limits = {
        ast.FunctionDef: MAX_FUNCTION_LINES,
        ast.AsyncFunctionDef: MAX_FUNCTION_LINES,
        ast.ClassDef: MAX_CLASS_LINES,
    }
    long = []
    for node in ast.walk(ast.parse(source)):
        limit = limits.get(type(node))
        if limit is not None and node.end_lineno - node.lineno + 1 > limit:
            long.append(f"{node.name} ({node.end_lineno - node.lineno + 1} lines, at most {limit})")
    return long


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_functions_and_classes_are_short(module):
    path = MODULES[module]
    lines = path.read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)} has {lines} lines (at most {MAX_MODULE_LINES})"
    long = _long_definitions(path.read_text())
    assert not long, f"{path.relative_to(ROOT)}: too long: {long}"


def test_the_length_check_sees_a_long_function_and_a_long_class():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_CLASS_LINES))
    source = f"def f():\n{body}\nclass C:\n{body}\nclass Short:\n    def g(self):\n        return 1\n"
    assert _long_definitions(source) == [
        f"f ({MAX_CLASS_LINES + 1} lines, at most {MAX_FUNCTION_LINES})",
        f"C ({MAX_CLASS_LINES + 1} lines, at most {MAX_CLASS_LINES})",
    ]


def _private_imports(module: str, source: str, is_package: bool = False) -> list[str]:
    """The private names (``_x``, not dunders) that ``module`` imports from other nas_sepconv modules."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and _resolve(module, is_package, node):
            found += [
                f"{a.name} from {node.module or '.'}"
                for a in node.names
                if a.name.startswith("_") and not a.name.startswith("__")
            ]
    return found


def test_no_private_name_crosses_modules():
    """A module's private name used by another module is a seam in the wrong place: the two are
    one concept, or the shared part has a public name (DESIGN.md section 5)."""
    crossing = {m: _private_imports(m, p.read_text(), p.name == "__init__.py") for m, p in MODULES.items()}
    assert not {m: names for m, names in crossing.items() if names}


def test_the_private_import_check_sees_one():
    planted = (
        "from .frame import _typed, load\nfrom ..errors import UserInputError\nfrom __future__ import annotations\n"
    )
    assert _private_imports("nas_sepconv.results.front", planted) == ["_typed from frame"]


def _test_files() -> list[Path]:
    return sorted((ROOT / "tests").rglob("test_*.py"))


@pytest.mark.parametrize("path", _test_files(), ids=lambda p: str(p.relative_to(ROOT / "tests")))
def test_tests_import_no_private_name_of_another_package(path):
    """A test of package P (``tests/P/...``, or ``tests/test_P.py`` for a top-level module such as
    ``io`` or ``export``) may use P's private names, no other package's."""
    own = path.parent.name if path.parent != ROOT / "tests" else path.stem.removeprefix("test_")
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nas_sepconv"):
            package = _component(node.module) if "." in node.module else None
            for alias in node.names:
                if alias.name.startswith("_") and package != own:
                    bad.append(f"{alias.name} from {node.module}")
    assert not bad, f"{path.name} imports private names of other packages: {bad}"
