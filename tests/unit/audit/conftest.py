"""Shared fixtures: a log over each storage implementation."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from yumen.audit import SQLiteLogStorage, TransparencyLog, generate_log_key

# The suite runs with --import-mode=importlib, which does not put test folders on sys.path;
# the audit tests share their sample history through this one helper module.
sys.path.insert(0, str(Path(__file__).parent))
from audit_samples import ORIGIN  # noqa: E402


# postgres_dsn: the fixture of tests/conftest.py (skipped without a server, a failure under CI).


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
