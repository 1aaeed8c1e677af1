"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import subprocess
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
