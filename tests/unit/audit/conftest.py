"""Shared fixtures: a log over each storage implementation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from yumen.audit import SQLiteLogStorage, TransparencyLog, generate_log_key

# The suite runs with --import-mode=importlib, which does not put test folders on sys.path;
# the audit tests share their sample history through this one helper module.
sys.path.insert(0, str(Path(__file__).parent))
from audit_samples import ORIGIN  # noqa: E402


def _sqlite(tmp_path):
    return SQLiteLogStorage(tmp_path / "broker.db")


# Contract tests run against every storage implementation listed here (PostgreSQL joins later).
STORAGE_FACTORIES = {"sqlite": _sqlite}


@pytest.fixture(params=sorted(STORAGE_FACTORIES))
def storage(request, tmp_path):
    s = STORAGE_FACTORIES[request.param](tmp_path)
    yield s
    s.close()


@pytest.fixture
def key():
    return generate_log_key()


@pytest.fixture
def log(tmp_path, key):
    lg = TransparencyLog(SQLiteLogStorage(tmp_path / "log.db"), origin=ORIGIN, signing_key=key)
    yield lg
    lg.close()
