"""Static checks that run with the suite: ruff on the shipped code, mypy (strict) on the core and
the privacy package, and no ``type: ignore`` without a reason.

mypy sees the packages as they are installed (pyproject's package-dir maps ``privacy/`` to
``yumen.privacy`` and so on), through a tree of symbolic links built in a temporary folder.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = ("yumen", "broker", "connectors", "sandbox", "policy", "privacy", "audit")
# the top layer (tests/unit/core/test_layers.py): user interface and SDK, checked by ruff only
TOP = {"client.py", "localspace.py", "mock.py", "__main__.py", "cli"}
# ``type: ignore`` comments that predate the rule; every new one says why on its line
IGNORES_WITHOUT_REASON = ROOT / "tests" / "unit" / "core" / "type_ignores_without_reason.txt"
IGNORE = re.compile(r"#\s*type:\s*ignore(\[[^\]]*\])?(?P<rest>.*)$")


def _view(tmp: Path) -> Path:
    """A folder where ``yumen`` and its subpackages sit where the installed package has them."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    top = tmp / "yumen"
    top.mkdir(parents=True)
    for entry in (ROOT / mapping["yumen"]).iterdir():
        if entry.name != "__pycache__":
            (top / entry.name).symlink_to(entry)
    for package, folder in mapping.items():
        if package != "yumen":
            (top / package.split(".", 1)[1]).symlink_to(ROOT / folder)
    return tmp


def test_ruff_finds_nothing_in_the_shipped_code():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *SHIPPED], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict_passes_on_the_core_and_the_privacy_package(tmp_path):
    view = _view(tmp_path / "view")
    core = sorted(p.name for p in (view / "yumen").iterdir() if p.suffix == ".py" and p.name not in TOP)
    targets = [f"yumen/{name}" for name in core] + ["yumen/identity", "yumen/privacy"]
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                           "--cache-dir", str(tmp_path / "cache"), *targets], cwd=view,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    assert "no issues found" in proc.stdout


def _ignores_without_reason() -> list[str]:
    found = []
    for folder in SHIPPED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for line in path.read_text().splitlines():
                m = IGNORE.search(line)
                if m and not m.group("rest").strip(" #-"):
                    found.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    return found


def test_every_new_type_ignore_says_why_on_its_line():
    allowed = set(IGNORES_WITHOUT_REASON.read_text().splitlines())
    new = [x for x in _ignores_without_reason() if x not in allowed]
    assert not new, "add the reason after the comment (`# type: ignore[code]  # why`):\n" + "\n".join(new)
