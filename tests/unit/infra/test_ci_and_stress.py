"""The suite's own rules: under CI a skip for missing infrastructure fails; `--stress` selects
the e2e and sandbox suites plus the stress tests and keeps every core busy while they run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

SAMPLE = '''
import pytest

def test_needs_docker():
    pytest.skip("docker backend unavailable: no engine")

def test_does_not_apply():
    pytest.skip("not applicable: only for PostgreSQL")

@pytest.fixture
def server():
    pytest.skip("no PostgreSQL server")

def test_in_setup(server):
    pass
'''


def _pytest(tmp_path: Path, *args: str, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(ROOT / "tests")
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-q", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), "-c", os.devnull, *args, str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)


def test_under_ci_a_skip_for_missing_infrastructure_is_a_failure(tmp_path):
    out = _pytest(tmp_path, ci="true")
    # a skip in a fixture fails the setup: reported as an error, which fails the run as well
    assert "1 failed, 1 skipped, 1 error" in out.stdout, out.stdout
    assert "skipped under CI" in out.stdout and "docker backend unavailable" in out.stdout
    assert "no PostgreSQL server" in out.stdout


def test_outside_ci_the_same_tests_skip_saying_why(tmp_path):
    for ci in (None, "false", "0"):
        out = _pytest(tmp_path, "-rs", ci=ci)
        assert "3 skipped" in out.stdout and "failed" not in out.stdout, out.stdout


def test_the_load_generator_keeps_every_core_busy_and_stops_with_its_parent(tmp_path):
    """scripts/load.py: one spinning worker per core; SIGTERM stops them, and so does the death
    of the process it was told to follow."""
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    gen = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "load.py"), "--parent", str(parent.pid)],
                           stdout=subprocess.PIPE, text=True)
    try:
        line = gen.stdout.readline()
        pids = [int(p) for p in line.split("pids ")[1].rstrip(")\n").split()]
        assert len(pids) == os.cpu_count()
        for pid in pids:  # each worker is running, at its parent's priority (normal, unless the run is nice'd)
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            assert fields[0] in ("R", "S") and int(fields[16]) == os.nice(0)  # state; nice no lower than ours
        before = [_cpu_ticks(p) for p in pids]
        deadline = time.monotonic() + 60
        while any(_cpu_ticks(p) <= b for p, b in zip(pids, before)):
            assert time.monotonic() < deadline, "a worker never ran"
            time.sleep(0.1)
        parent.kill()
        parent.wait()
        assert gen.wait(timeout=60) == 0
        gone = time.monotonic() + 30
        while any(Path(f"/proc/{p}").exists() and _state(p) not in ("Z", "X") for p in pids):
            assert time.monotonic() < gone, "a worker outlived the generator"
            time.sleep(0.1)
    finally:
        for p in (parent, gen):
            if p.poll() is None:
                p.kill()
                p.wait()


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"
