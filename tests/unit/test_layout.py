"""The package layout: which part of criproxy may import which, and no import circle.

Read from the source with `ast` (nothing is imported), every import counts:
at the top, inside functions, under TYPE_CHECKING. The parts and their rules
are the ones the subpackages' docstrings state (criproxy/__init__.py,
docs/architecture.md):

    base      criproxy/settings.py, criproxy/setting_values.py, criproxy/logs.py,
              criproxy/registrations.py, criproxy/inotify.py: nothing of criproxy's but each other
    wire      front ⇄ worker envelopes, sockets, trace context: base only
    record    the pod record: base only
    process   supervisord and its plugins, systemd readiness: base only
    ops       metrics, status, doctor, install, spans: base, record, wire
    front     the request path: all of the above, never workers/
    workers   a runtime's worker: base, wire, process, ops; never front/ or record/
    top       criproxy/cli.py, criproxy/__main__.py: anything
"""
from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

from tests.support.harness import REPO

PACKAGES = ("criproxy", "workers")
SUBPACKAGES = ("front", "wire", "record", "process", "ops")
BASE = {"criproxy.settings", "criproxy.setting_values", "criproxy.logs", "criproxy.registrations", "criproxy.inotify"}
TOP = {"criproxy", "criproxy.cli", "criproxy.__main__"}

# part -> the parts it may import (its own always included)
ALLOWED = {
    "base": {"base"},
    "wire": {"base", "wire"},
    "record": {"base", "record"},
    "process": {"base", "process"},
    "ops": {"base", "ops", "record", "wire"},
    "front": {"base", "front", "wire", "record", "ops", "process"},
    "workers": {"base", "workers", "wire", "process", "ops"},
    "top": {"base", "top", "front", "wire", "record", "process", "ops"},
}


def modules(root: Path = REPO) -> dict[str, Path]:
    """Every module of criproxy/ and workers/, by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def part(module: str) -> str:
    if module in BASE:
        return "base"
    if module in TOP:
        return "top"
    names = module.split(".")
    if names[0] == "workers":
        return "workers"
    if len(names) > 1 and names[1] in SUBPACKAGES:
        return names[1]
    raise AssertionError(f"{module} belongs to no part: put it in a subpackage, or "
                         "add it to this test's BASE or TOP (and say why in criproxy/__init__.py)")


def imports(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported criproxy/workers module, line) for every import in `path`."""
    found = []
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((full if full in known else base, node.lineno))
    return [(name, line) for name, line in found if name.split(".")[0] in PACKAGES]


def graph(root: Path = REPO) -> tuple[dict[str, set[str]], list[str]]:
    """The import graph between criproxy's modules, and the imports breaking the rules."""
    known = modules(root)
    edges: dict[str, set[str]] = {name: set() for name in known}
    broken = []
    for name, path in known.items():
        for imported, line in imports(name, path, known):
            if imported not in known:
                broken.append(f"{path.relative_to(root)}:{line}: imports {imported}, "
                              "which does not exist")
                continue
            if imported != name:
                edges[name].add(imported)
            if part(imported) not in ALLOWED[part(name)]:
                broken.append(f"{path.relative_to(root)}:{line}: {part(name)} may not import "
                              f"{part(imported)} ({imported})")
    return edges, broken


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for after in sorted(edges[node]):
            if after not in index:
                visit(after)
                low[node] = min(low[node], low[after])
            elif after in on_stack:
                low[node] = min(low[node], index[after])
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

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_imports_run_one_way() -> None:
    _, broken = graph()
    assert not broken, "\n".join(broken)


def test_no_import_circle() -> None:
    edges, _ = graph()
    found = circles(edges)
    assert not found, "import circles: " + "; ".join(" ⇄ ".join(c) for c in found)


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    """A copy of the tree with a record module importing the front, and a circle."""
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            copy = tmp_path / path.relative_to(REPO)
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(path.read_text())
    listfilter = tmp_path / "criproxy" / "record" / "listfilter.py"
    listfilter.write_text(listfilter.read_text() + "\nfrom criproxy.front import routing\n")
    findings = tmp_path / "criproxy" / "ops" / "findings.py"
    findings.write_text(findings.read_text() + "\nfrom criproxy.ops import doctor\n")
    edges, broken = graph(tmp_path)
    assert any("record may not import front (criproxy.front.routing)" in b for b in broken)
    assert any({"criproxy.ops.doctor", "criproxy.ops.findings"} <= set(circle)
               for circle in circles(edges))


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_each_subpackage_says_its_job_and_imports_nothing(package: str) -> None:
    """An __init__ that imported its modules would load them in every process using one."""
    tree = ast.parse((REPO / "criproxy" / package / "__init__.py").read_text())
    assert ast.get_docstring(tree) and "May import" in ast.get_docstring(tree)
    assert all(isinstance(node, ast.Expr) for node in tree.body), \
        f"criproxy/{package}/__init__.py: a docstring and nothing else"


def test_every_package_is_installed() -> None:
    """setuptools installs only the packages pyproject.toml lists: a missing one
    would be left out of the wheel and the .deb, silently."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    present = {".".join(p.parent.relative_to(REPO).parts)
               for package in PACKAGES for p in (REPO / package).rglob("__init__.py")}
    assert listed == present


def test_supervisord_plugins_exist() -> None:
    """supervisord.conf names its plugins' factories by dotted path."""
    conf = (REPO / "supervisord.conf").read_text()
    factories = re.findall(r"rpcinterface_factory = (criproxy[\w.]*):(\w+)", conf)
    assert factories
    known = modules()
    for module, function in factories:
        assert module in known, module
        tree = ast.parse(known[module].read_text())
        assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, \
            f"{module}:{function}"
