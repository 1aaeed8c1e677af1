"""The broker's stewardship store contract, run against SQLite and PostgreSQL.

SQLite in a temporary folder; PostgreSQL in a fresh schema per test, dropped afterwards
(``postgres_dsn`` of tests/conftest.py: skipped without a server except under CI).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from yumen.broker._steward_store import PostgresStewardStore, SqliteStewardStore
from yumen.errors import Code, YumenError


def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    yield lambda: SqliteStewardStore(tmp_path / "broker.db")


def _postgres(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    import psycopg

    dsn = request.getfixturevalue("postgres_dsn")
    schema = f"steward_test_{uuid.uuid4().hex[:12]}"
    yield lambda: PostgresStewardStore(dsn, schema=schema)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


BACKENDS = {"sqlite": _sqlite, "postgres": _postgres}


@pytest.fixture(params=[pytest.param(k, marks=pytest.mark.postgres) if k == "postgres" else k for k in BACKENDS])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Opens a store over one shared state (each call: another replica's view of it)."""
    yield from BACKENDS[request.param](request, tmp_path)


@pytest.fixture
def store(opener: Any) -> Any:
    return opener()


V1, V2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def test_a_versions_report_is_kept_once_and_the_first_one_stays(store):
    assert store.put_quality("ds", V1, '{"v":1}', "c2ln", "sha256:aa", "conn", "PEM-1") is True
    assert store.put_quality("ds", V1, '{"v":2}', "c2ln", "sha256:bb", "conn", "PEM-2") is False
    assert store.quality("ds", V1) == {"report": '{"v":1}', "signature": "c2ln", "digest": "sha256:aa", "version": V1,
                                       "certificate": "PEM-1"}
    assert store.quality("ds", V2) is None and store.quality("other") is None
    store.put_quality("ds", V2, '{"v":3}', "c2ln", "sha256:cc", "conn")
    assert store.quality_versions("ds") == 2 and store.quality_versions("other") == 0


def test_an_offer_is_replaced_by_the_connectors_newer_one(store):
    assert store.offer("ds") is None
    store.put_offer("ds", '{"a":1}', "sig1", "PEM", "conn")
    store.put_offer("ds", '{"a":2}', "sig2", "PEM", "conn")
    assert store.offer("ds") == {"offer": '{"a":2}', "signature": "sig2", "certificate": "PEM", "connector": "conn"}


def test_feedback_is_counted_per_dataset_and_delivered_once(opener):
    store, replica = opener(), opener()
    ident, count = store.add_feedback("ds", json.dumps({"id": "{id}", "message": "兰州 \"nulls\""}), "conn")
    assert ident.startswith("fb-") and count == 1
    _, count = replica.add_feedback("ds", json.dumps({"id": "{id}"}), "conn")
    assert count == 2 and store.feedback_count("ds") == 2 and store.feedback_count("other") == 0
    waiting = store.undelivered_feedback("conn")
    assert [json.loads(p)["id"] for _, p in waiting][0] == ident  # the id is written into the payload
    assert json.loads(waiting[0][1])["message"] == "兰州 \"nulls\""
    for fid, _ in waiting:
        replica.mark_delivered(fid)
    assert store.undelivered_feedback("conn") == [] and store.feedback_count("ds") == 2


def test_a_cap_counts_up_to_its_limit_and_no_further_across_replicas(opener):
    stores = [opener() for _ in range(4)]
    results: list[bool] = []
    lock = threading.Lock()

    def take(s: Any) -> None:
        for _ in range(5):
            ok = s.take("day:1", "license:L:ds", 7)
            with lock:
                results.append(ok)

    threads = [threading.Thread(target=take, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 7 and len(results) == 20
    assert stores[0].take("day:2", "license:L:ds", 7) is True  # a new window starts from zero


def test_an_answer_is_kept_per_operator_and_request_id(store):
    assert store.answer("op", "r1") is None
    store.put_answer("op", "r1", '{"answer":"yes"}')
    store.put_answer("op", "r1", '{"answer":"no"}')  # a retry never replaces what was answered and logged
    assert store.answer("op", "r1") == '{"answer":"yes"}' and store.answer("op-2", "r1") is None


def test_a_destroyed_version_and_a_logged_certificate_are_recorded_once(opener):
    store, replica = opener(), opener()
    assert store.mark_destroyed("ds", V1) is True and replica.mark_destroyed("ds", V1) is False
    assert store.certificate_logged("ab" * 32) is False
    store.mark_certificate_logged("ab" * 32, "conn")
    replica.mark_certificate_logged("ab" * 32, "conn")
    assert replica.certificate_logged("ab" * 32) is True


def test_a_bad_postgres_schema_name_is_refused_with_a_clear_error():
    with pytest.raises(YumenError, match="not a plain lowercase identifier") as e:
        PostgresStewardStore("postgresql://nowhere", schema="x; DROP TABLE y")
    assert e.value.code is Code.CONFIG
