"""Data-source benchmarks: rows per second for a clamped sum read through ``DataSource.scan()``.

Metrics (added to ``results``):

``scan_sum.parquet.rows_per_s``         Parquet source, 10,000,000 rows
``scan_sum.csv.rows_per_s``             CSV source, the same 10,000,000 rows
``scan_sum.polars_parquet.rows_per_s``  baseline: plain ``pl.scan_parquet`` of the same file
``scan_sum.sqlite.rows_per_s``          SQLite source, the first 1,000,000 of those rows
``scan_sum.postgres.rows_per_s``        PostgreSQL source (primary-key order), the same 1,000,000
                                        rows (no server: the module fails)
``version.parquet.rows_per_s``          a full content digest of the Parquet file (cache cleared)
``scan_sum.file_rows`` / ``scan_sum.db_rows``  the sizes used

The query is what a DP sum does: ``clip(distance_km, 0, 45).sum()`` with the bounds taken
from the ``bus-trips`` registration. Each number is the best of three runs after one warm-up.
The databases get fewer rows because loading them dominates the run time; rows per second is
comparable across sizes because reads stream.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import polars as pl
from yumen.connectors._demodata import demo_registration, generate
from yumen.connectors._source_postgres import write_postgres_table
from yumen.connectors._source_sqlite import write_sqlite_table
from yumen.connectors._sources import VERSION_CACHE, SourceSpec, open_source

FILE_ROWS = 10_000_000
DB_ROWS = 1_000_000
DATASET = "bus-trips"
COLUMN = "distance_km"
DSN_ENV = "YUMEN_TEST_POSTGRES_DSN"
ROOT = Path(__file__).resolve().parents[1]


def _best(fn: Callable[[], object], runs: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _postgres_dsn() -> str | None:
    dsn = os.environ.get(DSN_ENV)
    if dsn:
        return dsn
    try:
        out = subprocess.run(
            ["bash", str(ROOT / "scripts" / "setup_postgres.sh")], capture_output=True, text=True, timeout=180
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else None


def run(results: dict[str, float]) -> None:
    col = next(c for c in demo_registration(DATASET)["columns"] if c["name"] == COLUMN)
    query = pl.col(COLUMN).clip(col["lower"], col["upper"]).sum()

    with tempfile.TemporaryDirectory(prefix="yumen-bench-sources-") as tmp:
        d = Path(tmp)
        parquet = generate(DATASET, FILE_ROWS, seed=1, out_path=d / "trips.parquet")
        csv = d / "trips.csv"
        pl.scan_parquet(parquet).sink_csv(csv)
        sources = {
            "parquet": open_source(SourceSpec(kind="parquet", path=str(parquet))),
            "csv": open_source(SourceSpec(kind="csv", path=str(csv))),
        }
        expected = pl.scan_parquet(parquet).select(query).collect().item()
        for kind, source in sources.items():
            got = source.scan().select(query).collect().item()
            if abs(got - expected) > 1e-6 * abs(expected):
                raise RuntimeError(f"{kind} source summed {got}, expected {expected}")
            results[f"scan_sum.{kind}.rows_per_s"] = FILE_ROWS / _best(
                lambda s=source: s.scan().select(query).collect()
            )
        results["scan_sum.polars_parquet.rows_per_s"] = FILE_ROWS / _best(
            lambda: pl.scan_parquet(parquet).select(query).collect()
        )

        def full_version() -> None:
            VERSION_CACHE.clear()
            sources["parquet"].version()

        results["version.parquet.rows_per_s"] = FILE_ROWS / _best(full_version, runs=1)

        head = (
            pl.read_parquet(parquet, n_rows=DB_ROWS)
            .with_row_index("trip_no")
            .with_columns(pl.col("trip_no").cast(pl.Int64))
        )
        db_expected = head.select(query).item()
        write_sqlite_table(head, d / "trips.db", "trips")
        db_sources = {
            "sqlite": open_source(SourceSpec(kind="sqlite", path=str(d / "trips.db"), table="trips"))
        }

        dsn = _postgres_dsn()
        table = f"bench_trips_{uuid.uuid4().hex[:8]}"
        if dsn:
            os.environ[DSN_ENV] = dsn  # the source reads its DSN from the environment, as in production
            write_postgres_table(head, dsn, table, replace=True, primary_key="trip_no")
            db_sources["postgres"] = open_source(SourceSpec(kind="postgres", table=table, dsn_env=DSN_ENV))
        else:
            raise RuntimeError(f"PostgreSQL source not measured: {DSN_ENV} is unset and scripts/setup_postgres.sh "
                               "could not start a server")
        try:
            for kind, source in db_sources.items():
                got = source.scan().select(query).collect().item()
                if abs(got - db_expected) > 1e-6 * abs(db_expected):
                    raise RuntimeError(f"{kind} source summed {got}, expected {db_expected}")
                results[f"scan_sum.{kind}.rows_per_s"] = DB_ROWS / _best(
                    lambda s=source: s.scan().select(query).collect()
                )
        finally:
            if dsn:
                import psycopg

                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(f"DROP TABLE IF EXISTS {table}")
    results["scan_sum.file_rows"] = float(FILE_ROWS)
    results["scan_sum.db_rows"] = float(DB_ROWS)
