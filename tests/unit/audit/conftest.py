"""Shared fixtures: a log over each storage implementation."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from yumen.audit import SQLiteLogStorage, TransparencyLog, generate_log_key

# The suite runs with --import-mode=importlib, which does not put test folders on sys.path;
# the audit tests share their sample history through this one helper module.
sys.path.insert(0, str(Path(__file__).parent))
from audit_samples import ORIGIN  # noqa: E402


ROOT = Path(__file__).resolve().parents[3]
DSN_ENV = "YUMEN_TEST_POSTGRES_DSN"


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """``YUMEN_TEST_POSTGRES_DSN``, else a local server from scripts/setup_postgres.sh.

    Skipped when neither works, except under CI (``CI`` set), which must provide one.
    """
    dsn = os.environ.get(DSN_ENV, "")
    if dsn:
        return dsn
    reason = ""
    try:
        out = subprocess.run(["bash", str(ROOT / "scripts" / "setup_postgres.sh")], capture_output=True, text=True, timeout=180)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[-1]
        reason = (out.stderr.strip().splitlines() or ["no output"])[-1]
    except (OSError, subprocess.TimeoutExpired) as exc:
        reason = str(exc)
    message = f"{DSN_ENV} is unset and scripts/setup_postgres.sh could not start a server: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _sqlite(request, tmp_path):
    return SQLiteLogStorage(tmp_path / "broker.db"), lambda: None


def _postgres(request, tmp_path):
    import psycopg

    from yumen.audit import PostgresLogStorage

    dsn = request.getfixturevalue("postgres_dsn")
    schema = f"log_test_{uuid.uuid4().hex[:12]}"

    def drop() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    return PostgresLogStorage(dsn, schema=schema), drop


# The LogStorage contract tests run against every implementation listed here.
STORAGE_FACTORIES = {"sqlite": _sqlite, "postgres": _postgres}


@pytest.fixture(params=sorted(STORAGE_FACTORIES))
def storage(request, tmp_path):
    s, cleanup = STORAGE_FACTORIES[request.param](request, tmp_path)
    yield s
    s.close()
    cleanup()


@pytest.fixture
def key():
    return generate_log_key()


@pytest.fixture
def log(tmp_path, key):
    lg = TransparencyLog(SQLiteLogStorage(tmp_path / "log.db"), origin=ORIGIN, signing_key=key)
    yield lg
    lg.close()
