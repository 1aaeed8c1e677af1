"""The one list of sandbox backends and their strength order."""

import ast
from pathlib import Path

import pytest

from yumen.errors import YumenError
from yumen.sandboxes import BACKENDS, at_least, strength, stronger

ROOT = Path(__file__).resolve().parents[3]


def test_the_order_is_bwrap_docker_gvisor():
    assert BACKENDS == ("bwrap", "docker", "gvisor")
    assert [strength(b) for b in BACKENDS] == [0, 1, 2]
    assert at_least("gvisor", "docker") and at_least("docker", "docker") and not at_least("bwrap", "docker")
    assert stronger("bwrap", "gvisor") == "gvisor" and stronger("gvisor", "bwrap") == "gvisor" and stronger("docker", "") == "docker"
    with pytest.raises(YumenError):
        strength("chroot")


def test_no_other_module_spells_out_the_list_or_the_order():
    """A second copy of the backend list or its ranks is how they drift apart."""
    found = []
    for folder in ("yumen", "broker", "connectors", "sandbox", "policy", "privacy", "audit", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "sandboxes.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                    names = [e.value for e in node.elts if isinstance(e, ast.Constant)]
                    if set(BACKENDS) <= set(names):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
                if isinstance(node, ast.Dict) and set(BACKENDS) <= {k.value for k in node.keys if isinstance(k, ast.Constant)}:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []
