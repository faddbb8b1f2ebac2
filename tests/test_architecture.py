"""The package's shape, read from its source with ``ast``: no import circle (an import inside a function
counts as much as one at the top), no engine module importing a method or a tool, no file over 500 lines,
no private name imported from another module. README "Architecture" describes the layers checked here."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "autoglm_bench"
MAX_LINES = 500
# the layers above the engine: methods, then the tools (and the command line) on top of both
METHODS = ("methods",)
TOOLS = ("serve", "bench", "report", "compare", "__main__")


def module_name(path: Path, root: Path) -> str:
    """``autoglm_bench/lm/hf.py`` -> ``autoglm_bench.lm.hf``; a package's ``__init__.py`` is the package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path, modules: set[str]) -> list[tuple[str, list[str], int]]:
    """Every import of a package module in ``path`` (at any depth, functions included): (module imported,
    names taken from it, line). ``from . import x`` counts as importing the submodule ``x`` when it is one."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, list[str], int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == root.name]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != root.name:
                continue
            names = [a.name for a in node.names]
            subs = [n for n in names if f"{target}.{n}" in modules]
            found += [(f"{target}.{n}", [], node.lineno) for n in subs]
            rest = [n for n in names if n not in subs]
            if rest or not subs:
                found.append((target, rest, node.lineno))
    return found


def import_graph(root: Path = PACKAGE) -> tuple[dict[str, set[str]], list[str]]:
    """The package's module graph (module -> modules it imports, by any import anywhere in its file) and
    the cross-module imports of private names, as ``file:line name`` strings."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {m: set() for m in files}
    private: list[str] = []
    for mod, path in files.items():
        for target, names, line in imports_of(path, root, set(files)):
            while target not in files and "." in target:  # a name inside a module, not a module
                target = target.rpartition(".")[0]
            if target != mod:
                graph[mod].add(target)
            private += [
                f"{path.relative_to(root.parent)}:{line} {n}"
                for n in names
                if n.startswith("_") and not n.endswith("__") and target != mod
            ]
    return graph, private


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as [a, b, ..., a], or None. A package importing its own submodules
    (``lm/__init__`` re-exporting ``lm.cache``) is not a circle with them unless they import it back."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def layer(module: str) -> str:
    """engine, methods or tools, from the module's first name below the package."""
    first = module.split(".")[1] if "." in module else ""
    if first in METHODS:
        return "methods"
    if first in TOOLS:
        return "tools"
    return "engine"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a lower layer into a higher one (engine -> methods or tools, methods -> tools)."""
    rank = {"engine": 0, "methods": 1, "tools": 2}
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if rank[layer(b)] > rank[layer(a)])


def long_files(root: Path = PACKAGE) -> list[str]:
    return [
        f"{p.relative_to(root.parent)}: {n}"
        for p in root.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    ]


def test_no_import_circle():
    graph, _ = import_graph()
    assert find_cycle(graph) is None


def test_engine_imports_no_method_or_tool_and_methods_no_tool():
    graph, _ = import_graph()
    assert upward_imports(graph) == []


def test_no_private_name_imported_across_modules():
    assert import_graph()[1] == []


def test_no_file_over_500_lines():
    assert long_files() == []


def test_checker_finds_a_circle_and_an_upward_import_in_a_package(tmp_path):
    """The checks above can fail: a small package with a circle made by function-level imports, an engine
    module importing a method, and a private import."""
    pkg = tmp_path / "autoglm_bench"
    (pkg / "methods").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "methods" / "__init__.py").write_text("")
    (pkg / "scoring.py").write_text("def f():\n    from .prompts import render\n")
    (pkg / "prompts.py").write_text("def render():\n    from . import scoring\n")
    (pkg / "results.py").write_text("from .methods.evaluate import run\nfrom .prompts import _env\n")
    (pkg / "methods" / "evaluate.py").write_text("from ..scoring import f\n")
    graph, private = import_graph(pkg)
    cycle = find_cycle(graph)
    assert cycle is not None and set(cycle) == {"autoglm_bench.scoring", "autoglm_bench.prompts"}
    assert upward_imports(graph) == ["autoglm_bench.results -> autoglm_bench.methods.evaluate"]
    assert private == ["autoglm_bench/results.py:2 _env"]
    (pkg / "prompts.py").write_text("def render():\n    pass\n")
    assert find_cycle(import_graph(pkg)[0]) is None


def shadowed_submodules(root: Path = PACKAGE) -> list[str]:
    """Names a package's ``__init__`` defines that are also its submodules: importing the submodule rebinds
    the package attribute, so e.g. a method's ``run`` function becomes the module ``run`` after first use."""
    found = []
    for init in root.rglob("__init__.py"):
        submodules = {p.stem for p in init.parent.glob("*.py")} | {p.name for p in init.parent.iterdir() if p.is_dir()}
        for node in ast.parse(init.read_text()).body:
            names = [node.name] if isinstance(node, ast.FunctionDef | ast.ClassDef) else []
            if isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            found += [f"{module_name(init, root)}.{n}" for n in names if n in submodules]
    return sorted(found)


def test_no_package_attribute_is_shadowed_by_a_submodule(tmp_path):
    assert shadowed_submodules() == []
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("def run():\n    from .run import go\n")
    (package / "run.py").write_text("def go():\n    pass\n")
    assert shadowed_submodules(package) == ["pkg.run"]
