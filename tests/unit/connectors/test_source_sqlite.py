"""SQLite specifics beyond the contract: declared types, export order, WAL writes, bad files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import polars as pl
import pytest
from yumen.connectors._sources import SourceSpec, frame_digest, open_source

from yumen.errors import Code, YumenError


def _db(path: Path, *statements: str, rows: tuple[str, list[tuple]] | None = None) -> Path:
    conn = sqlite3.connect(path)
    with conn:
        for sql in statements:
            conn.execute(sql)
        if rows:
            conn.executemany(rows[0], rows[1])
    conn.close()
    return path


def _source(path: Path, table: str = "t", **options: object):
    return open_source(SourceSpec(kind="sqlite", path=str(path), table=table, **options))  # type: ignore[arg-type]


def test_a_column_without_declared_type_is_refused_by_name(tmp_path: Path) -> None:
    db = _db(tmp_path / "a.db", "CREATE TABLE t (id INTEGER, mystery)")
    with pytest.raises(YumenError) as err:
        _source(db).check()
    assert err.value.code is Code.CONFIG and "column 'mystery'" in err.value.message


def test_a_value_that_does_not_fit_its_column_is_reported_by_column(tmp_path: Path) -> None:
    db = _db(
        tmp_path / "a.db",
        "CREATE TABLE t (id INTEGER, visits INTEGER)",
        rows=("INSERT INTO t VALUES (?, ?)", [(1, 3), (2, "three")]),
    )
    with pytest.raises(YumenError, match="column 'visits' holds a value that is not Int64"):
        _source(db).version()


def test_a_file_that_is_not_a_database_is_named_as_such(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.db"
    bogus.write_text("this is not sqlite " * 100)
    with pytest.raises(YumenError, match="not an SQLite database"):
        _source(bogus).check()


def test_the_error_for_a_missing_table_lists_the_tables_there(tmp_path: Path) -> None:
    db = _db(tmp_path / "a.db", "CREATE TABLE visits (id INTEGER)", "CREATE TABLE trips (id INTEGER)")
    with pytest.raises(YumenError) as err:
        _source(db, "visit").check()
    assert "trips, visits" in err.value.hint


def test_rows_come_in_rowid_order_and_order_by_overrides(tmp_path: Path) -> None:
    db = _db(
        tmp_path / "a.db",
        "CREATE TABLE t (id INTEGER, name TEXT)",
        rows=("INSERT INTO t VALUES (?, ?)", [(3, "c"), (1, "a"), (2, "b")]),
    )
    assert _source(db).scan().collect().get_column("id").to_list() == [3, 1, 2]
    by_id = _source(db, order_by=("id",))
    assert by_id.scan().collect().get_column("id").to_list() == [1, 2, 3]
    assert by_id.version() == frame_digest(pl.DataFrame({"id": [1, 2, 3], "name": ["a", "b", "c"]}))


def test_tables_without_rowid_follow_the_key_and_views_all_columns(tmp_path: Path) -> None:
    db = _db(
        tmp_path / "a.db",
        "CREATE TABLE k (code TEXT PRIMARY KEY, n INTEGER) WITHOUT ROWID",
        "CREATE VIEW v AS SELECT n, code FROM k",
        rows=("INSERT INTO k VALUES (?, ?)", [("b", 1), ("a", 2), ("c", 0)]),
    )
    assert _source(db, "k").scan().collect().get_column("code").to_list() == ["a", "b", "c"]
    view = _source(db, "v")
    # a view's columns carry the declared types of the table columns they select
    assert view.scan().collect().get_column("n").to_list() == [0, 1, 2]


def test_a_write_through_the_wal_changes_the_version(tmp_path: Path) -> None:
    db = tmp_path / "wal.db"
    writer = sqlite3.connect(db)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")  # keep the change in the -wal file
    writer.execute("CREATE TABLE t (id INTEGER, x REAL)")
    writer.executemany("INSERT INTO t VALUES (?, ?)", [(i, i / 2) for i in range(100)])
    writer.commit()
    source = _source(db)
    before = source.version()
    main_stat = db.stat()
    writer.execute("UPDATE t SET x = 99.5 WHERE id = 42")
    writer.commit()
    assert db.stat().st_size == main_stat.st_size  # only the -wal file moved
    after = source.version()
    writer.close()
    assert after != before
    assert source.scan().filter(pl.col("id") == 42).collect().get_column("x").item() == 99.5


def test_dates_booleans_and_timestamps_are_typed_from_declarations(tmp_path: Path) -> None:
    db = _db(
        tmp_path / "a.db",
        "CREATE TABLE t (d DATE, ok BOOLEAN, at TIMESTAMP, n NUMERIC, big BIGINT, name VARCHAR(20))",
        rows=(
            "INSERT INTO t VALUES (?, ?, ?, ?, ?, ?)",
            [("2025-03-01", 1, "2025-03-01 08:00:00.5", 2.5, 7, "x")],
        ),
    )
    got = _source(db).scan().collect()
    assert got.schema == pl.Schema(
        {
            "d": pl.Date,
            "ok": pl.Boolean,
            "at": pl.Datetime("us"),
            "n": pl.Float64,
            "big": pl.Int64,
            "name": pl.String,
        }
    )
    assert got.row(0)[1] is True
