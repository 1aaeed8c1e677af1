"""A department serving a PostgreSQL table with pushdown: a real broker and connector over
mTLS register it, run a DP query in the database, and the log verifies."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from fractions import Fraction

import polars as pl
import psycopg
import pytest

from yumen.connectors._source_postgres import write_postgres_table
from yumen.jobs import Aggregate, JobRequest, Purpose, Query, Tier
from yumen.localspace import Department, LocalSpace

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def test_a_query_on_a_pushdown_dataset_runs_in_postgres_and_the_log_verifies(postgres_dsn, tmp_path, monkeypatch):
    table = f"weather_{uuid.uuid4().hex[:10]}"
    space = LocalSpace(tmp_path / "space", departments=(Department(id="weather-bureau",
                                                                   datasets=(("weather-daily", 3_650),)),))
    space.setup()
    parquet = space.root / "data" / "weather-bureau" / "weather-daily.parquet"
    df = pl.read_parquet(parquet).with_row_index("rid").with_columns(pl.col("rid").cast(pl.Int64))
    write_postgres_table(df, postgres_dsn, table, primary_key="rid")
    parquet.unlink()  # the connector can only read the database now
    monkeypatch.setenv("YUMEN_E2E_PUSHDOWN_DSN", postgres_dsn)
    conf = space.root / "weather-bureau.toml"
    text = conf.read_text()
    old = re.search(r"source = \{[^}]*\}", text).group(0)
    conf.write_text(text.replace(old, f'source = {{ kind = "postgres", table = "{table}", '
                                      'dsn_env = "YUMEN_E2E_PUSHDOWN_DSN", pushdown = true }'))
    try:
        space.start(timeout=120)
        with space.client() as c:
            reg = next(r for r, on in c.catalog() if r.id == "weather-daily")
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", reg.version)
            c.submit(JobRequest(job_id="push-1", datasets=("weather-daily",), tier=Tier.QUERY,
                                purpose=Purpose.RESEARCH, epsilon=Fraction(1, 2),
                                query=Query(aggregate=Aggregate.MEAN, column="temp_mean_c", group_by="region")))
            states = [u.state for u in c.watch("push-1", timeout=120)]
            assert states[-1] == "succeeded", states
            result = c.result("push-1")
            assert len(result.values) == len(reg.column("region").categories)
            assert all(-40 <= v["value"] <= 45 for v in result.values)
        assert not list((space.root / "weather-bureau-state" / "snapshots").glob("*.parquet"))
        env = dict(space.cli_env("auditor-1"))
        out = tmp_path / "export"
        run = lambda *a: subprocess.run([sys.executable, "-m", "yumen", *a], env=env, text=True,
                                        capture_output=True, timeout=300)
        assert run("audit", "export", "--out", str(out)).returncode == 0
        vkey = space.root / "broker-state" / "log.vkey"
        verify = run("audit", "verify", "--from", str(out), "--vkey", str(vkey))
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        space.stop()
        with psycopg.connect(postgres_dsn, autocommit=True) as db:
            db.execute(f'DROP TABLE IF EXISTS "{table}"')
