"""The package's shape, checked from its own source (docs/architecture.md):

- no import circle between degen's modules, counting imports inside functions (a lazy
  import is still a dependency, and the circle comes back the day it moves up);
- layers that import downward only: each top-level package or module belongs to one
  layer of :data:`LAYERS` and may import its own layer's and lower ones';
- no module over 500 lines;
- the old import paths still work, as the very same module, with a DeprecationWarning,
  and nothing in the project itself uses them.
"""

from __future__ import annotations

import ast
import importlib
import sys
import warnings
from pathlib import Path

import pytest

from degen._compat import MOVED

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
MAX_LINES = 500

#: bottom to top; a unit is a top-level module or package of degen
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {"degen.errors", "degen.paths", "degen.records", "degen.stats",
                    "degen.store", "degen.outcomes", "degen.prompts"}),
    ("detect", {"degen.detect"}),
    ("engines", {"degen.engines"}),
    ("measurement", {"degen.measurement"}),
    ("reports", {"degen.reports"}),
    ("experiments", {"degen.experiments", "degen.diagnose"}),
    ("serving", {"degen.guard"}),
    ("integrations", {"degen.integrations"}),
    ("interface", {"degen", "degen._compat", "degen.cli", "degen.testing"}),
]
LAYER = {unit: i for i, (_, units) in enumerate(LAYERS) for unit in units}


def modules() -> dict[str, Path]:
    out = {}
    for p in (SRC / "degen").rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The degen modules ``name`` imports anywhere in its file (functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # a name inside a module: the module
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def unit(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2])


def test_the_checker_sees_a_circle_and_a_layer_break() -> None:
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]
    assert not cycles({"a": {"b"}, "b": set()})
    assert LAYER["degen.detect"] < LAYER["degen.measurement"]


def test_no_import_circle() -> None:
    found = cycles(graph())
    assert not found, "import circles (move what both sides need below them): " + \
        "; ".join(" <-> ".join(c) for c in found)


def test_every_unit_has_a_layer() -> None:
    units = {unit(name) for name in modules()}
    assert units <= set(LAYER), f"give these a layer in LAYERS: {sorted(units - set(LAYER))}"


def test_layers_import_downward_only() -> None:
    wrong = []
    for name, targets in graph().items():
        for t in targets:
            if LAYER[unit(t)] > LAYER[unit(name)]:
                wrong.append(f"{name} ({LAYERS[LAYER[unit(name)]][0]}) imports {t} "
                             f"({LAYERS[LAYER[unit(t)]][0]})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_module_over_500_lines() -> None:
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these along a seam: {long}"


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_is_the_new_module_with_a_warning(old: str) -> None:
    for name in [n for n in sys.modules if n == old or n.startswith(old + ".")]:
        del sys.modules[name]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])
    assert module.__spec__.name == MOVED[old]
    said = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert any(old in m and MOVED[old] in m for m in said), said


def test_nothing_in_the_project_uses_an_old_path() -> None:
    used = []
    for folder in ("src", "tests", "benchmarks", "examples", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "_compat.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                used += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                         if n in MOVED]
    assert not used, "\n".join(used)


def test_the_layers_as_documented() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for layer, units in LAYERS:
        assert layer in doc, f"docs/architecture.md does not describe the {layer} layer"
        for u in units - {"degen", "degen._compat"}:
            short = u.removeprefix("degen.")
            assert short in doc, f"docs/architecture.md does not place {u}"
