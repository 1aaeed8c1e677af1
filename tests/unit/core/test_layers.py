"""The layers of the code, checked on every import statement of the shipped packages.

    top         yumen.cli, yumen.client, yumen.localspace, yumen.mock, yumen.__main__, and each
                component's own subcommands (its ``_cli`` module)
    components  yumen.broker, yumen.connectors, yumen.sandbox, yumen.policy, yumen.privacy, yumen.audit
    core        everything else in yumen/ (errors, canonical, jobs, catalog, tickets, wire, rpc,
                identity, config, licenses, loss, ...) and the generated yumen.v1

An import may go down or sideways, never up: the core imports no component and nothing of the top;
a component imports nothing of the top. Across components only public names count: a module
whose name starts with ``_`` is private to its component (and the CLI's to the CLI).
Tests and benchmarks are not shipped and may look inside.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
# source folder -> package it installs as (pyproject.toml's package-dir)
PACKAGES = {
    "yumen": "yumen", "protos/yumen/v1": "yumen.v1", "broker": "yumen.broker", "connectors": "yumen.connectors",
    "sandbox": "yumen.sandbox", "policy": "yumen.policy", "privacy": "yumen.privacy", "audit": "yumen.audit",
}
COMPONENTS = {"broker", "connectors", "sandbox", "policy", "privacy", "audit"}
TOP = {"cli", "client", "localspace", "mock", "__main__"}
CORE, COMPONENT, TOP_LAYER = 0, 1, 2


def _unit(module: str) -> str:
    """The part of yumen a module belongs to: a component, a top-level module, or 'core'."""
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != "yumen":
        return ""
    return parts[1] if parts[1] in COMPONENTS | TOP else "core"


def _layer(unit: str, module: str = "") -> int:
    if unit in TOP or module.endswith("._cli"):  # a component's own subcommands are user interface
        return TOP_LAYER
    return COMPONENT if unit in COMPONENTS else CORE


def _modules() -> list[tuple[str, Path]]:
    found = []
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("").parts
            if package == "yumen" and rel[0] in {"v1"}:
                continue
            name = ".".join((package, *rel)).removesuffix(".__init__")
            found.append((name, path))
    return found


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import, relative ones resolved; ``from X import y``
    counts as importing ``X.y`` too, since y may be a submodule."""
    out = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def crossings() -> list[str]:
    wrong: dict[tuple[Path, int, str], str] = {}
    for module, path in _modules():
        mine = _unit(module)
        for line, target in _imports(path, module):
            theirs = _unit(target)
            if not theirs or theirs == mine:
                continue
            where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line} imports {target}"
            if _layer(theirs) > _layer(mine, module):
                wrong.setdefault((path, line, "up"), f"{where}: {mine} may not import upward into {theirs}")
            parts = target.split(".")
            if theirs != "core" and any(p.startswith("_") and not p.startswith("__") for p in parts[2:]):
                wrong.setdefault((path, line, "private"), f"{where}: a private module of {theirs}")
    return sorted(wrong.values())


def test_no_import_crosses_a_layer_upward_or_into_another_components_private_module():
    assert crossings() == []


@pytest.mark.parametrize("module, target, why", [
    ("yumen.wire", "yumen.policy", "upward"),
    ("yumen.policy._engine", "yumen.cli", "upward"),
    ("yumen.cli._operator", "yumen.broker._core", "private"),
    ("yumen.broker._core", "yumen.client", "upward"),
])
def test_the_checker_sees_a_crossing(tmp_path, monkeypatch, module, target, why):
    """The rule itself, on modules written for the purpose: each of these would be reported."""
    path = tmp_path / "m.py"
    path.write_text(f"import {target}\n")
    monkeypatch.setitem(globals(), "_modules", lambda: [(module, path)])
    found = crossings()
    assert len(found) == 1 and why in found[0], found
