"""The dependency direction between duro's packages (docs/architecture.md, "Layout"):

    duro (core: the object API, codec, wire, transport, tls)
      ▲
    duro.topology (the cluster's records in etcd, and the placement policy)
      ▲
    duro.client
      ▲
    duro.node ◀── duro.console ◀── duro.edge
      ▲
    duro.placement
      ▲
    entry points: duro.cli, duro.dev, duro._top (duro top), duro.testing and each process's
    main module (a node process may run its region's edge in-process: ``duro.node.main``
    imports ``duro.edge.main``)

A package may import its own modules and those of the layers below it, never one above: a test
that walks every module's imports with ``ast`` (module-level and inside functions; imports under
``if TYPE_CHECKING:`` are type annotations only and are not counted). A cycle between packages
cannot arise while this holds, and the test also looks for one directly.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> the packages it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "duro": set(),
    "duro.topology": {"duro"},
    "duro.client": {"duro", "duro.topology"},
    "duro.node": {"duro", "duro.topology", "duro.client"},
    # the live console reads what nodes report (their call statistics' buckets)
    "duro.console": {"duro", "duro.topology", "duro.client", "duro.node"},
    "duro.edge": {"duro", "duro.topology", "duro.client", "duro.console"},
    "duro.placement": {"duro", "duro.topology", "duro.client", "duro.node"},
    "entry": {"duro", "duro.topology", "duro.client", "duro.edge", "duro.node",
              "duro.placement", "duro.console"},
}
ENTRY_POINTS = {"duro.cli", "duro.dev", "duro._top", "duro.testing", "duro.__main__",
                "duro.node.main", "duro.edge.main", "duro.edge.__main__", "duro.placement.main",
                "duro.placement.__main__"}
PACKAGES = [p for p in ALLOWED if p not in ("duro", "entry")]


def _layer(module: str) -> str | None:
    if module in ENTRY_POINTS:
        return "entry"
    for pkg in PACKAGES:
        if module == pkg or module.startswith(pkg + "."):
            return pkg
    if module == "duro" or module.startswith("duro."):
        return "duro"
    return None


def _modules() -> dict[str, Path]:
    """Every module of the distribution (but the generated ``duro._pb``), by its dotted name."""
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"]
    found: dict[str, Path] = {}
    for pkg, rel in package_dir.items():
        base = ROOT / rel
        for path in base.rglob("*.py"):
            parts = path.relative_to(base).with_suffix("").parts
            if "_pb" in parts or "__pycache__" in parts:
                continue
            found[".".join((pkg, *parts)).removesuffix(".__init__")] = path
    return found


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                for sub in ast.walk(child):
                    if hasattr(sub, "lineno"):
                        lines.add(sub.lineno)
    return lines


def _imports(module: str, path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_lines(tree)
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")
                is_pkg = path.name == "__init__.py"
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target))
            out.extend((node.lineno, f"{target}.{a.name}") for a in node.names)
    return out


def _edges() -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = {}
    for module, path in _modules().items():
        src = _layer(module)
        for line, target in _imports(module, path):
            dst = _layer(target)
            if dst is None or dst == src or src is None:
                continue
            where = f"{path.relative_to(ROOT)}:{line} imports {target}"
            edges.setdefault((src, dst), []).append(where)
    return edges


def test_the_walk_sees_every_package_and_its_imports() -> None:
    modules = _modules()
    for pkg in PACKAGES:
        assert any(_layer(m) == pkg for m in modules), f"no module found for {pkg}"
    edges = _edges()
    # (a check of the check: these dependencies exist, so a walk that found none is broken)
    assert ("duro.node", "duro.client") in edges
    assert ("duro.edge", "duro.client") in edges
    assert ("entry", "duro.node") in edges


@pytest.mark.parametrize("pkg", list(ALLOWED))
def test_no_package_imports_a_layer_above_it(pkg: str) -> None:
    bad = [where for (src, dst), wheres in _edges().items()
           if src == pkg and dst not in ALLOWED[pkg] for where in wheres]
    assert not bad, f"{pkg} may import only {sorted(ALLOWED[pkg])}; found:\n" + "\n".join(bad)


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for src, dst in _edges():
        graph.setdefault(src, set()).add(dst)

    def reach(start: str) -> set[str]:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = sorted(p for p in graph if p in reach(p))
    assert not cycles, f"packages on an import cycle: {cycles}"
