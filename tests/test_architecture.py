"""What the code's shape promises (DESIGN.md), checked by reading the source with `ast`: no import cycles between
serl_stack modules, no pickle anywhere, no `SystemExit` below the command line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("serl_stack", "robot_bridge")


def _modules(package: str = "serl_stack") -> dict[str, Path]:
    """Dotted module name -> file, for every module of `package` (a package is its `__init__`)."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The project modules `path` imports anywhere in it (top level, inside functions, under TYPE_CHECKING):
    a lazy import hides a cycle from the interpreter, not from a reader."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                pkg = name.split(".") if is_package else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, base] if base else pkg)
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a non-module attribute: its module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _graph() -> dict[str, set[str]]:
    modules = {}
    for package in PACKAGES:
        modules.update(_modules(package))
    names = set(modules)
    graph = {name: _imports(path, name, names) for name, path in modules.items()}
    # A package's own __init__ importing its submodules is how packages re-export; an edge from a submodule
    # back to its package's __init__ would make every such package a "cycle". Keep only edges to non-ancestors.
    return {m: {t for t in deps if not m.startswith(t + ".")} for m, deps in graph.items()}


def test_no_import_cycles_between_modules() -> None:
    graph = _graph()
    assert "serl_stack.actor" in graph and "serl_stack.inference" in graph["serl_stack.actor"]
    cycles = _cycles(graph)
    assert cycles == [], "import cycles (each line: modules that import each other, directly or through others):\n" \
        + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The checker itself: a three-module ring and a two-module pair are reported, a chain is not."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}, "f": {"a"}, "g": set()}
    assert sorted(_cycles(graph)) == [["a", "b", "c"], ["d", "e"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_import_reader_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import X\n"
                   "def f():\n    import pkg.c.d\n    from pkg import e\n")
    modules = {"pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.e"}
    assert _imports(src, "pkg.a", modules) == {"pkg.b", "pkg.c", "pkg.e"}


@pytest.mark.parametrize("forbidden", ["pickle", "cPickle", "dill", "cloudpickle"])
def test_no_module_imports_pickle(forbidden: str) -> None:
    """Files on disk and messages on the wire are msgpack/JSON/orbax of explicit fields (DESIGN.md)."""
    offenders = []
    for package in PACKAGES:
        for name, path in _modules(package).items():
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                if any(n.split(".")[0] == forbidden for n in names):
                    offenders.append(name)
    assert offenders == []


def test_only_the_command_line_turns_errors_into_exits() -> None:
    """Library code raises typed errors (errors.py, ConfigError); `SystemExit` and `sys.exit` belong to the CLI."""
    offenders = []
    for name, path in _modules().items():
        if name == "serl_stack.cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Name) and node.id == "SystemExit":
                offenders.append(f"{name}:{node.lineno} SystemExit")
            if isinstance(node, ast.Attribute) and node.attr == "exit" and getattr(node.value, "id", "") == "sys":
                offenders.append(f"{name}:{node.lineno} sys.exit")
    assert offenders == []


def test_no_bridge_module_shadows_the_standard_library() -> None:
    """colcon runs robot_bridge's setup.py with the package folder on sys.path, where a module named like a
    standard one (`operator.py`) replaces it for the whole interpreter and breaks the build."""
    import sys

    clashes = [p.name for p in (ROOT / "robot_bridge").glob("*.py") if p.stem in sys.stdlib_module_names]
    assert clashes == []
