"""The import graph of `safekeel`: no cycles, dependencies pointing one way (down the layers), and every
module importable on its own.

Every module under src/safekeel is parsed with `ast`; every `import` / `from ... import` of a safekeel
module counts, at module level or inside a function, except under `if TYPE_CHECKING:` (never run). The
lazy registries name their modules in strings ("safekeel.judges.rubric:RubricJudge") and import them with
`importlib`: those strings count as imports too. A module imports only modules of its own layer or of
lower ones (`LAYERS`; docs/design.md, "Architecture", describes them and must list the same order).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

import safekeel

SRC = Path(safekeel.__file__).resolve().parent

# lowest first; a module may import only from its own layer or a lower one. Within the data layer the
# order is finer: `tasks` below `data` below `tokens` (tasks never import data; tokens may import both).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("0 foundation", ("safekeel", "errors", "io_utils", "text", "checks", "fingerprint", "locking", "wheels")),
    ("1 models and rows", ("models", "chat", "rows", "generation", "generators", "losses")),
    ("2 judges", ("judges",)),
    ("3 data: tasks", ("tasks",)),
    ("3 data: data", ("data",)),
    ("3 data: tokens", ("tokens",)),
    ("4 defences", ("defences",)),
    ("5 workflows", ("training", "evaluation", "reporting", "experiment")),
    ("6 top", ("cli", "testing", "__main__", "integrations", "api", "api_inputs")),
]
# The package root is the lowest layer, yet offers the Python API (`safekeel.train`) by a lazy attribute
# (PEP 562 `__getattr__`, imported on first access only): that one edge is not an import of the root's.
FACADE = {"safekeel": {"safekeel.api"}}
_REGISTRY_ENTRY = re.compile(r"^(safekeel(?:\.\w+)+)(?::\w+)?$")


@cache
def modules() -> dict[str, Path]:
    """{dotted module name: file} for every module of the package (a package is its __init__)."""
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = ("safekeel", *path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path) -> dict[str, int]:
    """{imported safekeel module: first line} for one module."""
    known = modules()
    is_package = path.name == "__init__.py"
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        if target in known and target != name:
            found.setdefault(target, line)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            add(base, node.lineno)
            for alias in node.names:
                add(f"{base}.{alias.name}", node.lineno)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = _REGISTRY_ENTRY.match(node.value)
            if match:
                add(match.group(1), node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return found


@cache
def graph() -> dict[str, dict[str, int]]:
    return {name: {k: v for k, v in _imports(name, path).items() if k not in FACADE.get(name, ())}
            for name, path in modules().items()}


def test_the_package_root_offers_only_the_api_module_lazily():
    import importlib
    import subprocess

    assert set(safekeel._LAZY.values()) == {"safekeel.api"}  # the one facade edge, nothing else
    api = importlib.import_module("safekeel.api")
    assert all(getattr(safekeel, name) is getattr(api, name) for name in safekeel._LAZY)
    out = subprocess.run([sys.executable, "-c", "import sys, safekeel; print('safekeel.api' in sys.modules)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def layer_of(name: str) -> tuple[int, str]:
    """(rank, layer name) of a module: the layer listing its top-level module or package."""
    top = name.split(".")[1] if "." in name else "safekeel"
    for rank, (layer, members) in enumerate(LAYERS):
        if top in members:
            return rank, layer
    raise KeyError(name)


def cycles() -> list[list[str]]:
    """The import cycles (strongly connected components of more than one module, or a module importing
    itself), each as a closed path a -> b -> ... -> a."""
    g = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan; the graph has ~100 nodes, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                connect(w)
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
                found.append(_closed_path(set(component)))

    for v in sorted(g):
        if v not in index:
            connect(v)
    return found


def _closed_path(component: set[str]) -> list[str]:
    """One cycle through the component's first module (breadth-first, so the shortest)."""
    g = graph()
    start = min(component)
    parents = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(g[v]):
            if w == start:
                path = [v]
                while parents[path[-1]] is not None:
                    path.append(parents[path[-1]])
                return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
            if w in component and w not in parents:
                parents[w] = v
                queue.append(w)
    return sorted(component)


def dependency_order() -> list[str]:
    """Every module after the modules it imports (a topological order of an acyclic graph)."""
    g = graph()
    done: list[str] = []
    seen: set[str] = set()

    def visit(v: str) -> None:
        if v in seen:
            return
        seen.add(v)
        for w in sorted(g[v]):
            visit(w)
        done.append(v)

    for v in sorted(g):
        visit(v)
    return done


def test_every_module_is_in_a_layer():
    unplaced = []
    for name in modules():
        try:
            layer_of(name)
        except KeyError:
            unplaced.append(name)
    assert not unplaced, f"modules in no layer (add them to LAYERS and docs/design.md): {unplaced}"


def test_the_scan_sees_imports_inside_functions_and_skips_type_checking(tmp_path):
    text = ("from typing import TYPE_CHECKING\nfrom safekeel.errors import SafekeelError\n"
            "if TYPE_CHECKING:\n    from safekeel.cli import main\nelse:\n    import safekeel.chat\n"
            "def f():\n    from safekeel.data import prompts\n    return 'safekeel.judges.rubric:RubricJudge'\n")
    path = tmp_path / "probe.py"
    path.write_text(text)
    found = _imports("safekeel.probe", path)
    assert set(found) == {"safekeel.errors", "safekeel.chat", "safekeel.data", "safekeel.data.prompts",
                          "safekeel.judges.rubric"}


def test_no_import_cycles():
    found = cycles()
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_imports_point_down_the_layers():
    bad = []
    for name, imported in sorted(graph().items()):
        rank, layer = layer_of(name)
        for target, line in sorted(imported.items()):
            target_rank, target_layer = layer_of(target)
            if target_rank > rank:
                where = modules()[name].relative_to(SRC.parent)
                bad.append(f"{where}:{line}: {name} (layer {layer}) imports {target} (layer {target_layer})")
    assert not bad, "imports of a higher layer:\n" + "\n".join(bad)


def test_every_module_imports_in_dependency_order():
    if cycles():
        pytest.skip("no dependency order while there are cycles (test_no_import_cycles fails)")
    order = dependency_order()
    assert set(order) == set(modules())
    code = ("import importlib, json, sys, traceback\n"
            "for name in json.loads(sys.argv[1]):\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except BaseException:\n"
            "        print(f'importing {name} failed:'); traceback.print_exc(); sys.exit(1)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(order)], capture_output=True, text=True,
                          timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
