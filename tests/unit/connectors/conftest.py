"""Fixtures for the data-source tests: the same rows stored in every kind of source.

PostgreSQL: the tests use ``YUMEN_TEST_POSTGRES_DSN`` when it is set; otherwise they run
``scripts/setup_postgres.sh`` (which initializes and starts a local server idempotently).
Only when neither works are the PostgreSQL cases skipped, and under CI (``CI`` set) they
fail instead, because CI must provide the server.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from yumen.connectors._source_postgres import write_postgres_table
from yumen.connectors._source_sqlite import write_sqlite_table
from yumen.connectors._sources import DataSource, SourceSpec, open_source

ROOT = Path(__file__).resolve().parents[3]
KINDS = ("csv", "parquet", "sqlite", "postgres")
DSN_ENV = "YUMEN_TEST_POSTGRES_DSN"


def contract_frame(rows: int = 40) -> pl.DataFrame:
    """Rows that exercise every type and the awkward values (nulls, quotes, newlines, unicode)."""
    notes = [
        "a,b",
        'quote "x"',
        "line\nbreak",
        "tab\tsep",
        "back\\slash",
        "兰州 ünïcödé",
        "",
        None,
        "\\N",
        "NULL",
    ]
    return pl.DataFrame(
        {
            "id": pl.Series(range(rows), dtype=pl.Int64),
            "region": [None if i == 3 else ("lanzhou", "wuwei", "gannan")[i % 3] for i in range(rows)],
            "count": pl.Series([None if i == 5 else (i * 7) % 11 - 2 for i in range(rows)], dtype=pl.Int64),
            "amount": [None if i == 7 else round((i - 10) * 12.345 + 0.1, 3) for i in range(rows)],
            "note": [notes[i % len(notes)] for i in range(rows)],
            "day": [None if i == 11 else dt.date(2025, 1, 1) + dt.timedelta(days=i * 9) for i in range(rows)],
            "flag": [None if i == 13 else i % 2 == 0 for i in range(rows)],
            "at": [
                None
                if i == 17
                else dt.datetime(2025, 3, 1, 8, 30) + dt.timedelta(minutes=i * 97, microseconds=i * 13)
                for i in range(rows)
            ],
        },
        schema_overrides={"amount": pl.Float64, "day": pl.Date, "at": pl.Datetime("us")},
    )


class SourceFactory:
    """Stores a frame in one kind of source and changes single rows in place."""

    def __init__(self, kind: str, tmp: Path, dsn: str | None) -> None:
        self.kind = kind
        self.tmp = tmp
        self.dsn = dsn
        self.table = f"t_{uuid.uuid4().hex[:12]}"
        self.path = tmp / f"data.{ {'csv': 'csv', 'parquet': 'parquet', 'sqlite': 'db'}.get(kind, 'none') }"
        self._frame: pl.DataFrame | None = None

    def spec(self, **options: object) -> SourceSpec:
        if self.kind in ("csv", "parquet"):
            return SourceSpec(kind=self.kind, path=str(self.path), **options)  # type: ignore[arg-type]
        if self.kind == "sqlite":
            return SourceSpec(kind="sqlite", path=str(self.path), table=self.table, **options)  # type: ignore[arg-type]
        return SourceSpec(kind="postgres", dsn_env=DSN_ENV, table=self.table, **options)  # type: ignore[arg-type]

    def store(self, df: pl.DataFrame, **options: object) -> DataSource:
        self._frame = df
        if self.kind == "csv":
            df.write_csv(self.path)
        elif self.kind == "parquet":
            df.write_parquet(self.path)
        elif self.kind == "sqlite":
            write_sqlite_table(df, self.path, self.table, replace=True)
        else:
            assert self.dsn is not None
            write_postgres_table(
                df, self.dsn, self.table, replace=True, primary_key="id" if "id" in df.columns else None
            )
        return open_source(self.spec(**options))

    def set_amount(self, row_id: int, amount: float) -> pl.DataFrame:
        """Change one value in place (an UPDATE for databases); returns the new frame."""
        assert self._frame is not None
        df = self._frame.with_columns(
            pl.when(pl.col("id") == row_id).then(pl.lit(amount)).otherwise(pl.col("amount")).alias("amount")
        )
        if self.kind in ("csv", "parquet"):
            self.store(df)
        elif self.kind == "sqlite":
            with sqlite3.connect(self.path) as conn:
                conn.execute(f'UPDATE "{self.table}" SET amount = ? WHERE id = ?', (amount, row_id))
            conn.close()
        else:
            import psycopg

            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute(f'UPDATE "{self.table}" SET amount = %s WHERE id = %s', (amount, row_id))
        self._frame = df
        return df

    def drop(self) -> None:
        if self.kind == "postgres" and self.dsn:
            import psycopg

            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute(f'DROP TABLE IF EXISTS "{self.table}"')


@pytest.fixture
def make_frame() -> object:
    """``contract_frame`` itself, for tests (conftest modules are not importable by name)."""
    return contract_frame


@pytest.fixture(params=[k if k != "postgres" else pytest.param(k, marks=pytest.mark.postgres) for k in KINDS])
def source_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SourceFactory]:
    dsn = None
    if request.param == "postgres":
        dsn = request.getfixturevalue("postgres_dsn")
        mp = pytest.MonkeyPatch()
        mp.setenv(DSN_ENV, dsn)
        request.addfinalizer(mp.undo)
    f = SourceFactory(request.param, tmp_path, dsn)
    yield f
    f.drop()
