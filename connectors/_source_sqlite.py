"""SQLite source: one table (or view) of a local database file, read in batches.

Reading uses the standard library's ``sqlite3`` (no extra dependency). The database is
opened read-only (``mode=ro``), so a wrong path never creates an empty database. Each read
is one ``SELECT`` statement, hence one consistent read transaction even while a writer is
active (WAL mode). Rows arrive ``batch_rows`` at a time and are turned into columns at
once; memory holds one batch of Python values, never the whole table.

Types come from the declared column types, by SQLite's affinity rules, with dates made
explicit: ``INT…`` -> Int64; ``CHAR``/``CLOB``/``TEXT`` -> String; ``REAL``/``FLOA``/``DOUB``
and ``NUMERIC``/``DECIMAL`` -> Float64; ``BOOL…`` -> Boolean; ``DATE`` -> Date (ISO text
``YYYY-MM-DD``); ``DATETIME``/``TIMESTAMP`` -> Datetime (ISO text); ``BLOB`` -> Binary. A
column without a declared type is refused (its values could be anything); a value that
does not fit its column's type is reported naming the column.

Order: by ``rowid`` (the table's physical order, free to read); for tables without rowid
by the primary key, for views by all columns; ``order_by`` overrides, with the remaining
columns appended so ties among distinct rows are broken deterministically.

Version cache signal: ``(dev, inode, size, mtime_ns, ctime_ns)`` of the database file and
``(dev, inode, size, mtime_ns)`` of its ``-wal`` file. Every committed write changes one of
them (a rollback-journal commit rewrites the database file, a WAL commit appends to the
``-wal`` file, a checkpoint rewrites the database file).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from operator import itemgetter
from pathlib import Path

import polars as pl

from yumen.errors import Code, YumenError

from ._sources import (
    VERSION_CACHE,
    SourceSpec,
    config_error,
    digest_batches,
    file_signal,
    io_plugin_frame,
    write_snapshot,
)

__all__ = ["SqliteSource", "write_sqlite_table"]

logger = logging.getLogger(__name__)

_READ_ATTEMPTS = 3


def _q(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def _dtype(declared: str) -> pl.DataType | None:
    t = declared.upper()
    if t in ("DATE",):
        return pl.Date()
    if t in ("DATETIME", "TIMESTAMP"):
        return pl.Datetime("us")
    if t.startswith("BOOL"):
        return pl.Boolean()
    if "INT" in t:
        return pl.Int64()
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return pl.String()
    if "BLOB" in t:
        return pl.Binary()
    if "REAL" in t or "FLOA" in t or "DOUB" in t or "NUMERIC" in t or "DECIMAL" in t:
        return pl.Float64()
    return None


class SqliteSource:
    """A table or view in an SQLite database file."""

    def __init__(self, spec: SourceSpec) -> None:
        if spec.kind != "sqlite":
            raise YumenError(Code.INTERNAL, f"SqliteSource given a {spec.kind} spec")
        self.spec = spec
        self._path = Path(spec.path)

    # -- protocol
    def scan(self) -> pl.LazyFrame:
        schema, order = self._layout()
        return io_plugin_frame(
            schema, lambda cols, n, size: self._read(schema, order, cols, n, size), self.spec.batch_rows
        )

    def check(self) -> None:
        self._require_file()
        if not os.access(self._path, os.R_OK):
            raise config_error(
                f"{self.spec.describe()}: the database file is not readable by this process (user id {os.getuid()})",
                hint="grant the connector's user read permission on the file",
            )
        schema, order = self._layout()
        # read one row: catches views that fail to evaluate and undecodable values early
        # one row, unordered: proves the rows decode without sorting a view
        for _ in self._read(schema, [], None, 1, 1):
            pass

    def version(self) -> str:
        key = (self.spec, os.path.realpath(self._path))
        for _ in range(_READ_ATTEMPTS):
            before = self._signal()
            cached = VERSION_CACHE.get((key, before))
            if cached is not None:
                return cached
            schema, order = self._layout()
            digest = digest_batches(schema, self._read(schema, order, None, None, self.spec.batch_rows))
            if self._signal() == before:
                VERSION_CACHE.put((key, before), digest)
                return digest
            # The SELECT was one consistent snapshot, but we cannot tell which signal it
            # matches; hash again rather than cache a digest under the wrong signal.
            logger.info("%s changed while being hashed; hashing again", self.spec.describe())
        raise YumenError(
            Code.UNAVAILABLE,
            f"{self.spec.describe()} kept changing while its version was computed",
            hint="retry when the writer is idle",
        )

    def snapshot(self, dest_dir: Path) -> Path:
        before = self._signal()
        schema, order = self._layout()
        path, digest = write_snapshot(
            schema, self._read(schema, order, None, None, self.spec.batch_rows), Path(dest_dir)
        )
        if self._signal() == before:
            VERSION_CACHE.put(((self.spec, os.path.realpath(self._path)), before), digest)
        return path

    # -- helpers
    def _require_file(self) -> None:
        if not self._path.exists():
            raise config_error(
                f"{self.spec.describe()}: the database file does not exist",
                hint="check 'path' (a relative path is taken from the configuration file's directory)",
            )
        if not self._path.is_file():
            raise config_error(f"{self.spec.describe()}: the path is not a regular file")

    def _signal(self) -> tuple[object, ...]:
        self._require_file()
        wal = file_signal(Path(str(self._path) + "-wal"))
        # SQLite running as root fchown()s the -wal file on every open, which moves its
        # ctime; writes still move its size or mtime, so ctime is left out for the WAL.
        return (file_signal(self._path), wal[:4] if wal else None)

    def _connect(self) -> sqlite3.Connection:
        self._require_file()
        uri = self._path.resolve().as_uri() + "?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            conn.execute("SELECT 1 FROM sqlite_schema LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from None
        return conn

    def _error(self, exc: sqlite3.Error) -> YumenError:
        text = str(exc)
        if "not a database" in text or "malformed" in text:
            return config_error(
                f"{self.spec.describe()}: the file is not an SQLite database or is damaged",
                hint="point 'path' at the database file",
            )
        if "unable to open" in text or "readonly" in text or "permission" in text.lower():
            return config_error(
                f"{self.spec.describe()}: the database cannot be opened read-only ({text})",
                hint="grant the connector's user read access to the file and its directory (WAL databases need the -shm file)",
            )
        if "locked" in text or "busy" in text:
            return YumenError(
                Code.UNAVAILABLE, f"{self.spec.describe()}: the database is locked", hint="retry later"
            )
        return config_error(f"{self.spec.describe()}: SQLite reports {type(exc).__name__}: {text}")

    def _layout(self) -> tuple[dict[str, pl.DataType], list[str]]:
        """The table's schema and its ORDER BY terms."""
        table = self.spec.table
        conn = self._connect()
        try:
            info = conn.execute(f"PRAGMA table_info({_q(table)})").fetchall()
            if not info:
                names = [
                    r[0]
                    for r in conn.execute(
                        "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' ORDER BY name"
                    )
                ]
                raise config_error(
                    f"{self.spec.describe()}: the database has no table or view {table!r}",
                    hint=f"tables here: {', '.join(names) or 'none'}",
                )
            schema: dict[str, pl.DataType] = {}
            for _cid, name, declared, _notnull, _default, _pk in info:
                dtype = _dtype(declared or "")
                if dtype is None:
                    raise config_error(
                        f"{self.spec.describe()}: column {name!r} has declared type {declared or '(none)'!r}, "
                        "which does not say what its values are",
                        hint="declare it INTEGER, REAL, TEXT, DATE, TIMESTAMP, BOOLEAN or BLOB",
                    )
                schema[name] = dtype
            if self.spec.order_by:
                missing = [c for c in self.spec.order_by if c not in schema]
                if missing:
                    raise config_error(
                        f"{self.spec.describe()}: order_by names column(s) the table lacks: {', '.join(missing)}"
                    )
                order = [_q(c) for c in self.spec.order_by] + [
                    _q(c) for c in schema if c not in self.spec.order_by
                ]
            else:
                pk = [r[1] for r in sorted(info, key=lambda r: r[5]) if r[5] > 0]
                kind = conn.execute("SELECT type FROM sqlite_schema WHERE name = ?", (table,)).fetchone()
                has_rowid = False
                if kind is not None and kind[0] == "table" and "rowid" not in {c.lower() for c in schema}:
                    try:
                        conn.execute(f"SELECT rowid FROM {_q(table)} LIMIT 0")
                        has_rowid = True
                    except sqlite3.OperationalError:  # a WITHOUT ROWID table
                        pass
                if has_rowid:
                    order = ["rowid"]
                elif pk:
                    order = [_q(c) for c in pk]
                else:
                    order = [_q(c) for c in schema]
            return schema, order
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        finally:
            conn.close()

    def _read(
        self,
        schema: dict[str, pl.DataType],
        order: list[str],
        columns: list[str] | None,
        n_rows: int | None,
        batch_rows: int,
    ) -> Iterator[pl.DataFrame]:
        cols = list(schema) if columns is None else list(columns)
        select = ", ".join(_q(c) for c in cols) if cols else "1"
        sql = f"SELECT {select} FROM {_q(self.spec.table)}"
        if order:
            sql += f" ORDER BY {', '.join(order)}"
        if n_rows is not None:
            sql += f" LIMIT {int(n_rows)}"
        conn = self._connect()
        try:
            cur = conn.execute(sql)
            while True:
                rows = cur.fetchmany(batch_rows)
                if not rows:
                    break
                yield self._frame(rows, cols, schema)
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        finally:
            conn.close()

    def _frame(
        self, rows: list[tuple[object, ...]], cols: list[str], schema: dict[str, pl.DataType]
    ) -> pl.DataFrame:
        if not cols:
            return pl.DataFrame(height=len(rows))
        series = []
        for i, name in enumerate(cols):
            # per-column gather; zip(*rows) would build one iterator per row
            values = list(map(itemgetter(i), rows))
            dtype = schema[name]
            try:
                if dtype == pl.Date:
                    s = pl.Series(name, values, dtype=pl.String).str.to_date("%Y-%m-%d")
                elif isinstance(dtype, pl.Datetime):
                    s = (
                        pl.Series(name, values, dtype=pl.String)
                        .str.replace("T", " ", literal=True)
                        .str.to_datetime("%Y-%m-%d %H:%M:%S%.f", time_unit="us")
                    )
                elif dtype == pl.Boolean:
                    s = pl.Series(name, values, dtype=pl.Int64).cast(pl.Boolean)
                else:
                    s = pl.Series(name, values, dtype=dtype, strict=True)
            except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):
                raise config_error(
                    f"{self.spec.describe()}: column {name!r} holds a value that is not {dtype}",
                    hint="fix the stored values or declare the column with the type its values have",
                ) from None
            series.append(s)
        return pl.DataFrame(series)


def write_sqlite_table(df: pl.DataFrame, path: Path | str, table: str, *, replace: bool = False) -> None:
    """Load a frame into an SQLite table with declared types a :class:`SqliteSource` reads back.

    For demos, tests and benchmarks. Dates are stored as ISO text in ``DATE`` columns.
    """
    SourceSpec(kind="sqlite", path=str(path), table=table)  # validates the table name
    decl = []
    for name, dtype in df.schema.items():
        if dtype.is_integer():
            t = "INTEGER"
        elif dtype.is_float():
            t = "REAL"
        elif dtype == pl.Boolean:
            t = "BOOLEAN"
        elif dtype == pl.Date:
            t = "DATE"
        elif isinstance(dtype, pl.Datetime):
            t = "TIMESTAMP"
        elif dtype == pl.Binary:
            t = "BLOB"
        else:
            t = "TEXT"
        decl.append(f"{_q(name)} {t}")
    conv = df.with_columns(
        [pl.col(n).dt.strftime("%Y-%m-%d") for n, t in df.schema.items() if t == pl.Date]
        + [
            pl.col(n).dt.strftime("%Y-%m-%d %H:%M:%S%.f")
            for n, t in df.schema.items()
            if isinstance(t, pl.Datetime)
        ]
        + [pl.col(n).cast(pl.Int64) for n, t in df.schema.items() if t == pl.Boolean]
        + [
            pl.col(n).cast(pl.String)
            for n, t in df.schema.items()
            if isinstance(t, (pl.Categorical, pl.Enum))
        ]
    )
    conn = sqlite3.connect(path)
    try:
        with conn:
            if replace:
                conn.execute(f"DROP TABLE IF EXISTS {_q(table)}")
            conn.execute(f"CREATE TABLE {_q(table)} ({', '.join(decl)})")
            marks = ", ".join("?" * len(df.columns))
            for batch in conv.iter_slices(100_000):
                conn.executemany(f"INSERT INTO {_q(table)} VALUES ({marks})", batch.iter_rows())
    finally:
        conn.close()
