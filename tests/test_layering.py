"""The data-flow rule, enforced: raw files -> pipelines -> schemas -> training; jobs joins them.

schemas imports neither pipelines nor training (nor jobs); pipelines and training never import
each other (nor jobs); only jobs may import both. Checked with an AST walk over every module,
covering `import x`, `from x import y`, and `importlib.import_module("x...")` with a literal.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FORBIDDEN: dict[str, set[str]] = {
    "schemas": {"pipelines", "training", "jobs"},
    "pipelines": {"training", "jobs"},
    "training": {"pipelines", "jobs"},
}


def imported_top_levels(source: str, filename: str) -> list[tuple[int, str]]:
    """(line, top-level package) for every absolute import in `source`."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value.split(".")[0]))
    return found


def find_violations(root: Path) -> list[str]:
    violations = []
    for layer, forbidden in FORBIDDEN.items():
        for path in sorted((root / layer).rglob("*.py")):
            for line, top in imported_top_levels(path.read_text(), str(path)):
                if top in forbidden:
                    violations.append(f"{path.relative_to(root)}:{line}: {layer} must not import {top}")
    return violations


def test_repository_respects_the_layers():
    for layer in FORBIDDEN:
        assert (REPO / layer / "__init__.py").exists(), f"missing package {layer}/"
    assert find_violations(REPO) == []


@pytest.mark.parametrize(
    ("layer", "statement", "target"),
    [
        ("schemas", "import pipelines.spark", "pipelines"),
        ("schemas", "from training import loop", "training"),
        ("pipelines", "from training.data import open_loader", "training"),
        ("training", "import pipelines", "pipelines"),
        ("training", "importlib.import_module('pipelines.spark')", "pipelines"),
        ("pipelines", "from jobs import cli", "jobs"),
    ],
)
def test_checker_catches_a_broken_rule(tmp_path, layer, statement, target):
    for name in ("schemas", "pipelines", "training", "jobs"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / layer / "bad.py").write_text(f"import importlib\n\ndef f():\n    {statement}\n")
    assert find_violations(tmp_path) == [f"{layer}/bad.py:4: {layer} must not import {target}"]


def test_jobs_may_import_both(tmp_path):
    for name in ("schemas", "pipelines", "training", "jobs"):
        (tmp_path / name).mkdir()
    (tmp_path / "jobs" / "ok.py").write_text("import pipelines\nimport training\nimport schemas\n")
    (tmp_path / "training" / "ok.py").write_text("import schemas\nfrom . import sibling\n")
    assert find_violations(tmp_path) == []


def module_imports(root: Path, package: str) -> dict[str, set[str]]:
    """{module: modules of `package` it imports}, counting imports inside functions too (a lazy import that
    only dodges a circle at load time is still a circle in the design). `from pkg import mod` names a module
    when pkg/mod.py (or pkg/mod/) exists."""
    modules = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (root / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


@pytest.mark.parametrize("package", ["schemas", "pipelines", "training", "jobs"])
def test_no_import_circles_inside_a_layer(package):
    assert import_cycles(module_imports(REPO, package)) == []


def test_the_circle_finder_finds_a_lazy_circle(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg.b import x\n")
    (tmp_path / "pkg" / "b.py").write_text("def x():\n    from pkg import a\n")
    (tmp_path / "pkg" / "c.py").write_text("import pkg.a\n")
    assert import_cycles(module_imports(tmp_path, "pkg")) == [["pkg.a", "pkg.b"]]
