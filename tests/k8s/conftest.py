"""Rendering the k8s/ overlays once per session, and the pinned checkov in its own venv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2] / "k8s"
OVERLAYS = sorted(p.name for p in (ROOT / "overlays").iterdir() if (p / "kustomization.yaml").exists())
CHECKOV = "3.3.30"


def render(overlay: str) -> tuple[str, list[dict]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (it renders the overlays with `kubectl kustomize`)")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "overlays" / overlay)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout, [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="session")
def rendered() -> dict[str, tuple[str, list[dict]]]:
    return {name: render(name) for name in OVERLAYS}


@pytest.fixture(scope="session")
def checkov() -> Path:
    """checkov pinned, in a venv of its own: its ~100 dependencies (boto3, networkx, a pinned
    jsonschema and packaging, ...) are not the project's, and must not move the project's pins.
    Created once per machine under ~/.cache (or $YUMEN_TOOLS_DIR) from PyPI."""
    tools = Path(os.environ.get("YUMEN_TOOLS_DIR", Path.home() / ".cache" / "yumen-tools"))
    venv = tools / f"checkov-{CHECKOV}"
    exe = venv / "bin" / "checkov"
    if not exe.exists():
        tools.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"checkov=={CHECKOV}"],
                             capture_output=True, text=True, timeout=1200)
        if pip.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            pytest.fail(f"installing checkov {CHECKOV} failed:\n{pip.stderr[-2000:]}")
    return exe
