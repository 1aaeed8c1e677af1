"""PostgreSQL pushdown through the connector: queries answered in the database, nothing
injectable from a query, and versions named by the engine's fingerprint."""

from __future__ import annotations

import re
import time
import uuid
from fractions import Fraction

import polars as pl
import psycopg
import pytest
from cryptography import x509

from yumen.catalog import DatasetRegistration
from yumen.connectors import LocalPolicy, SourceSpec
from yumen.connectors._config import ConnectorConfig, DatasetConfig
from yumen.connectors._executor import Executor
from yumen.connectors._source_postgres import write_postgres_table
from yumen.connectors._sources import open_source
from yumen.connectors._timing import Timing
from yumen.identity import Role, init_ca, issue, load_private_key
from yumen.privacy import Filter, FilterOp, PolarsEngine, QuerySpec, Statistic, bound_contributions
from yumen.privacy._plan import make_plan
from yumen.rpc import TlsFiles
from yumen.tickets import Receipt, Ticket

pytestmark = [pytest.mark.postgres]

# category values that would break a statement pasted together from strings
NASTY = ["o'brien", "a\"; DROP TABLE victims; --", "back\\slash", "%s", "$1", "'); DELETE FROM victims; --"]

REG = DatasetRegistration.from_dict({
    "id": "victims", "title": "t", "department": "weather-bureau", "level": "L1",
    "privacy_unit": {"column": "select", "max_contributions": 3},
    "columns": [
        {"name": "select", "type": "string"},
        {"name": "order", "type": "category", "categories": NASTY},
        {"name": "value", "type": "float", "lower": -10, "upper": 10},
    ],
})


@pytest.fixture
def table(postgres_dsn, monkeypatch):
    name = f"victims_{uuid.uuid4().hex[:10]}"
    n = 3000
    df = pl.DataFrame({
        "select": [f"u{i % 400}" if i % 97 else None for i in range(n)],
        "order": [NASTY[i % len(NASTY)] if i % 13 else "undeclared" for i in range(n)],
        "value": [((i * 7919) % 400) / 10 - 20 for i in range(n)],
        "rid": list(range(n)),
    })
    write_postgres_table(df, postgres_dsn, name, primary_key="rid")
    monkeypatch.setenv("YUMEN_TEST_PUSHDOWN_DSN", postgres_dsn)
    yield name
    with psycopg.connect(postgres_dsn, autocommit=True) as db:
        db.execute(f'DROP TABLE IF EXISTS "{name}"')


def _source(table: str):
    return open_source(SourceSpec(kind="postgres", table=table, dsn_env="YUMEN_TEST_PUSHDOWN_DSN", pushdown=True))


def test_quotes_and_placeholders_in_declared_values_and_keyword_column_names_are_data_not_sql(table, postgres_dsn):
    src = _source(table)
    polars = PolarsEngine(bound_contributions(src.scan(), REG).frame.lazy())
    specs = [QuerySpec(statistic=Statistic.MEAN, column="value", group_by="order"),
             *(QuerySpec(statistic=Statistic.COUNT, filters=(Filter(column="order", op=FilterOp.EQ, value=v),)) for v in NASTY),
             QuerySpec(statistic=Statistic.SUM, column="value",
                       filters=(Filter(column="order", op=FilterOp.IN, value=tuple(NASTY[1:4])),
                                Filter(column="order", op=FilterOp.NE, value=NASTY[0])))]
    with src.pushdown_engine() as engine:
        for spec in specs:
            plan = make_plan(REG, spec, Fraction(1))
            got = engine.aggregate(REG, [plan])
            assert got == polars.aggregate(REG, [plan]), spec
        counts = [engine.aggregate(REG, [make_plan(REG, s, Fraction(1))])[0]["count"][0] for s in specs[1:-1]]
    assert all(c > 0 for c in counts) and len(set(counts)) > 1  # each value matched its own rows
    with psycopg.connect(postgres_dsn) as db:
        assert db.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] == 3000  # nothing was deleted


def test_the_engine_session_is_read_only(table):
    with _source(table).pushdown_engine() as engine:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            engine.conn.execute(f'DELETE FROM "{table}"')


def test_only_one_row_per_group_comes_back(table):
    plan = make_plan(REG, QuerySpec(statistic=Statistic.VARIANCE, column="value", group_by="order"), Fraction(1))
    with _source(table).pushdown_engine() as engine:
        from psycopg import sql  # noqa: F401 - the statement is the engine's own

        rows = []
        real_run = engine._run
        engine._run = lambda q, p: rows.extend(real_run(q, p)) or rows
        engine.aggregate(REG, [plan])
    assert 0 < len(rows) <= len(NASTY) + 1  # declared values and the undeclared one, never 3000 rows


@pytest.fixture
def executor(tmp_path, table):
    init_ca(tmp_path / "pki")
    bcert, bkey = issue(tmp_path / "pki", role=Role.BROKER, name="broker")
    ccert, ckey = issue(tmp_path / "pki", role=Role.CONNECTOR, name="wb", department="weather-bureau")
    config = ConnectorConfig(
        id="wb", department="weather-bureau", broker="127.0.0.1:1", state_dir=tmp_path / "state", sandbox="bwrap",
        max_parallel_jobs=1, tls=TlsFiles(ca=tmp_path / "pki" / "ca.crt", cert=ccert, key=ckey), broker_certificate=bcert,
        local_policy=LocalPolicy(max_epsilon_per_job=Fraction(1), dataset_epsilon_cap=Fraction(10)),
        datasets=(DatasetConfig(registration=REG, source=SourceSpec(kind="postgres", table=table,
                                                                    dsn_env="YUMEN_TEST_PUSHDOWN_DSN", pushdown=True)),),
        path=tmp_path / "c.toml", timing=Timing(allowance_s=0.5, wave_slack_s=0.1),
    )
    ex = Executor(config, load_private_key(ckey), x509.load_pem_x509_certificate(bcert.read_bytes()))
    key, cert = load_private_key(bkey), x509.load_pem_x509_certificate(ccert.read_bytes())

    def run(job_id: str, work: dict, tier: str = "query") -> Receipt:
        version = ex.datasets["victims"].refresh().version
        payload, sig = Ticket(job_id=job_id, broker="broker", connector="wb", department="weather-bureau",
                              dataset="victims", dataset_version=version, operator="op", license="L", tier=tier,
                              purpose="research", epsilon=Fraction(1, 2), work=work, obligations={},
                              policy_version="sha256:" + "0" * 64, rule="r", issued_at_ms=int(time.time() * 1000),
                              expires_at_ms=int(time.time() * 1000) + 60_000).sign(key)
        out = ex.handle(payload, sig, b"")
        return Receipt.verify(out[0], out[1], cert)

    return ex, run, tmp_path


def test_a_connector_answers_a_pushdown_query_without_a_snapshot_and_names_the_engine_version(executor, table,
                                                                                              postgres_dsn):
    ex, run, tmp = executor
    receipt = run("j1", {"query": {"aggregate": "mean", "column": "value", "group_by": "order"}})
    assert receipt.status == "ok", receipt.error
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", receipt.dataset_version)  # the form the broker requires
    assert receipt.dataset_version == ex.datasets["victims"].registration.version
    assert {v.group for v in receipt.values} == set(NASTY)
    assert not list((tmp / "state" / "snapshots").glob("*.parquet"))  # no rows were copied out
    # the data changes: the next receipt names the new version
    with psycopg.connect(postgres_dsn, autocommit=True) as db:
        db.execute(f'UPDATE "{table}" SET "value" = "value" + 1 WHERE rid < 10')
    again = run("j2", {"query": {"aggregate": "count", "column": "", "group_by": ""}})
    assert again.status == "ok" and re.fullmatch(r"sha256:[0-9a-f]{64}", again.dataset_version)
    assert again.dataset_version != receipt.dataset_version


def test_an_algorithm_on_a_pushdown_dataset_fails_without_reading_rows(executor):
    ex, run, tmp = executor
    import hashlib

    digest = "sha256:" + hashlib.sha256(b"").hexdigest()
    ex.state.request_approval(digest, b"", {})
    assert ex.state.decide_approval(digest, "approved", limits={}, note="", by="test")
    work = {"algorithm": {"digest": digest, "outputs": [], "timeout_s": 1}}
    receipt = run("j3", work, tier="approved-algorithm")
    assert receipt.status == "failed" and not receipt.values
    detail = (tmp / "state").rglob("*")
    assert not [p for p in detail if p.suffix == ".parquet"]
    assert any("served by pushdown" in f["detail"] for f in ex.state.failures())
