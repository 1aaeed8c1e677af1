"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_DSN_ENV = "YUMEN_TEST_POSTGRES_DSN"


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """A PostgreSQL DSN that answers: ``YUMEN_TEST_POSTGRES_DSN``, else the local server that
    ``scripts/setup_postgres.sh`` starts (idempotently). Without either the PostgreSQL cases
    skip, saying why, except under CI, which must provide the server: there they fail."""
    import psycopg

    dsn, source, reason = os.environ.get(POSTGRES_DSN_ENV, ""), POSTGRES_DSN_ENV, ""
    if not dsn:
        source = "scripts/setup_postgres.sh"
        try:
            out = subprocess.run(["bash", str(ROOT / "scripts" / "setup_postgres.sh")],
                                 capture_output=True, text=True, timeout=180)
            if out.returncode == 0 and out.stdout.strip():
                dsn = out.stdout.strip().splitlines()[-1]
            else:
                reason = (out.stderr.strip().splitlines() or ["no output"])[-1]
        except (OSError, subprocess.TimeoutExpired) as exc:
            reason = str(exc)
    if dsn:
        try:
            psycopg.connect(dsn, connect_timeout=10).close()
            return dsn
        except psycopg.Error as exc:
            reason = f"cannot connect ({exc.__class__.__name__})"
    message = f"no PostgreSQL server: {source}: {reason}"
    if under_ci():
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def quiet_postgres_dsn(postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A DSN on a PostgreSQL cluster of this test session's own, on a free port. Tests of what
    depends on the cluster-wide WAL position (a source's version cache) need a cluster nothing
    else writes to: on the shared server another test process may move it at any moment."""
    import socket
    import uuid

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # as root the server runs as the user 'postgres', which cannot enter pytest's 0700 tmp dirs
    base = Path("/var/lib/yumen") if os.geteuid() == 0 else tmp_path_factory.mktemp("pg")
    data = base / f"pg-quiet-{uuid.uuid4().hex[:8]}"
    out = subprocess.run(["bash", str(ROOT / "scripts" / "setup_postgres.sh"), "--dir", str(data), "--port", str(port),
                          "--db", "quiet"], capture_output=True, text=True, timeout=180)
    if out.returncode != 0:
        pytest.fail(f"cannot start a private PostgreSQL cluster: {out.stderr.strip()[-500:]}")
    try:
        yield out.stdout.strip().splitlines()[-1]
    finally:
        ctl = next(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), None) or Path("/usr/local/bin/pg_ctl")
        stop = [str(ctl), "-D", str(data), "-m", "immediate", "stop"]
        subprocess.run((["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []) + stop,
                       capture_output=True, timeout=60)
        shutil.rmtree(data, ignore_errors=True)
        Path(f"{data}.password").unlink(missing_ok=True)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``stress`` run only when asked for (``make test-stress``, ``-m stress``):
    without a marker expression they are deselected, not skipped."""
    if config.getoption("markexpr", ""):
        return
    keep, dropped = [], []
    for item in items:
        (dropped if item.get_closest_marker("stress") else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
