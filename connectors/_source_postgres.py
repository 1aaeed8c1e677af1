"""PostgreSQL source: one table or view, streamed with ``COPY … TO STDOUT`` into polars.

Why COPY in CSV form: the server streams rows as fast as it reads them, and polars' CSV
parser (native code) turns a few MiB of text at a time into typed columns; no per-value
Python objects are made. (A server-side cursor with ``fetchmany`` makes a Python object per
value; binary COPY would need per-value decoding in Python.) CSV keeps NULL (unquoted
empty) apart from the empty string (``""``), and quoting makes any text safe. The server
sends one COPY message per row and psycopg hands each to Python, which bounds throughput at
about 2 M rows/s per connection (measured: the parse itself is ~30 ms per million rows).

Memory: the client holds one chunk of CSV text (``_CHUNK_BYTES``, 4 MiB) and the polars
batch parsed from it. The server streams; when the export order needs a sort rather than
an index, PostgreSQL sorts within ``work_mem`` and spills to temporary files.

Order: by the primary key; without one, by every column (text compared with
``COLLATE "C"`` so the order does not depend on the server's locale); ``order_by``
overrides, with the other columns appended to break ties.

Version and its cache: the digest is always computed over one ordered read. It is cached
under the cluster's WAL insert position (``pg_current_wal_insert_lsn()``): any change to a
logged table inserts WAL, and a commit inserts its record before it becomes visible (with
``synchronous_commit=off`` too, which is why the insert position is used and not the write
position, which lags). So an unchanged position proves unchanged data. A digest is cached
only when the read's snapshot had no transaction in progress (none was between inserting
its commit record and becoming visible) and the position did not move during the read;
unlogged tables and standbys are never cached. A busy cluster moves its position
constantly; then every ``version()`` is a full read, which is always correct.

Types: smallint/integer/bigint -> Int16/32/64; real/double precision -> Float32/64;
numeric(p,s) -> Decimal(p,s), unconstrained numeric -> Float64; text/varchar/char/name/uuid
/json/jsonb -> String; boolean -> Boolean; date -> Date; timestamp -> Datetime(us);
timestamptz -> Datetime(us, UTC). Other types are refused naming the column.

Connection: ``dsn`` (no password; use ~/.pgpass) or the environment variable named by
``dsn_env``. The session is read-only (``default_transaction_read_only``), UTC, ISO dates.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from yumen.errors import Code, YumenError

from ._sources import (
    VERSION_CACHE,
    SourceSpec,
    config_error,
    digest_batches,
    io_plugin_frame,
    write_snapshot,
)

__all__ = ["PostgresSource", "write_postgres_table"]

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 4 << 20
_CONNECT_TIMEOUT_S = 10

_SIMPLE = {
    "int2": pl.Int16(),
    "int4": pl.Int32(),
    "int8": pl.Int64(),
    "float4": pl.Float32(),
    "float8": pl.Float64(),
    "text": pl.String(),
    "varchar": pl.String(),
    "bpchar": pl.String(),
    "name": pl.String(),
    "uuid": pl.String(),
    "json": pl.String(),
    "jsonb": pl.String(),
    "citext": pl.String(),
    "bool": pl.Boolean(),
    "date": pl.Date(),
    "timestamp": pl.Datetime("us"),
    "timestamptz": pl.Datetime("us", "UTC"),
}
_TEXT_TYPES = ("text", "varchar", "bpchar", "name", "citext")


def _q(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


class _Column:
    __slots__ = ("name", "typname", "dtype")

    def __init__(self, name: str, typname: str, dtype: pl.DataType) -> None:
        self.name = name
        self.typname = typname
        self.dtype = dtype

    def select_expr(self) -> str:
        """The SQL that exports this column as CSV text polars parses exactly."""
        c = _q(self.name)
        if self.typname == "bool":
            return f"({c})::int"
        if self.typname == "timestamptz":
            return f"({c} AT TIME ZONE 'UTC')"
        return c

    def csv_dtype(self) -> pl.DataType:
        if self.typname == "bool":
            return pl.Int8()
        if self.dtype in (pl.Date,) or isinstance(self.dtype, (pl.Datetime, pl.Decimal)):
            return pl.String()
        return self.dtype


class _Layout:
    __slots__ = ("columns", "order", "relid", "cacheable")

    def __init__(self, columns: list[_Column], order: list[str], relid: int, cacheable: bool) -> None:
        self.columns = columns
        self.order = order
        self.relid = relid
        self.cacheable = cacheable

    @property
    def schema(self) -> dict[str, pl.DataType]:
        return {c.name: c.dtype for c in self.columns}


class PostgresSource:
    """A table or view in a PostgreSQL database."""

    def __init__(self, spec: SourceSpec) -> None:
        if spec.kind != "postgres":
            raise YumenError(Code.INTERNAL, f"PostgresSource given a {spec.kind} spec")
        self.spec = spec

    # -- protocol
    def scan(self) -> pl.LazyFrame:
        layout = self._layout()
        return io_plugin_frame(
            layout.schema, lambda cols, n, _size: self._read(layout, cols, n), self.spec.batch_rows
        )

    def check(self) -> None:
        layout = self._layout()
        # one row, unordered: proves the role can read every column without sorting the table
        unordered = _Layout(layout.columns, [], layout.relid, layout.cacheable)
        for _ in self._read(unordered, None, 1):
            pass

    def version(self) -> str:
        return self._hash_or_snapshot(None)

    def snapshot(self, dest_dir: Path) -> Path:
        path = self._hash_or_snapshot(Path(dest_dir))
        return Path(path)

    def pushdown_engine(self):  # -> contextmanager of PostgresEngine
        """An engine computing a query's aggregates in PostgreSQL, in one read-only snapshot
        (``_pushdown_postgres``); only per-group aggregates leave the server."""
        from ._pushdown_postgres import PostgresEngine

        return PostgresEngine.open(self)

    # -- connection
    def _conninfo(self) -> str:
        if self.spec.dsn_env:
            value = os.environ.get(self.spec.dsn_env, "")
            if not value:
                raise config_error(
                    f"{self.spec.describe()}: environment variable {self.spec.dsn_env} is not set",
                    hint="set it to the connection string, e.g. postgresql://reader@db.local:5432/health",
                )
            return value
        return self.spec.dsn

    def _connect(self):  # -> psycopg.Connection
        import psycopg

        try:
            conn = psycopg.connect(
                self._conninfo(),
                connect_timeout=_CONNECT_TIMEOUT_S,
                application_name="yumen-connector",
                options="-c default_transaction_read_only=on -c TimeZone=UTC -c DateStyle=ISO,YMD "
                "-c extra_float_digits=1 -c statement_timeout=0",
                autocommit=True,
            )
        except psycopg.OperationalError as exc:
            raise self._connect_error(exc) from None
        except psycopg.ProgrammingError:
            raise config_error(
                f"{self.spec.describe()}: the connection string is not valid",
                hint="write it like postgresql://reader@db.local:5432/health",
            ) from None
        return conn

    def _connect_error(self, exc: Exception) -> YumenError:
        text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        low = text.lower()
        if (
            "password authentication failed" in low
            or "no password supplied" in low
            or "authentication" in low
        ):
            what, hint = (
                "the server refused the credentials",
                "check the user name and the password in ~/.pgpass or the DSN variable",
            )
        elif "does not exist" in low and "database" in low:
            what, hint = "the database does not exist", "check dbname in the connection string"
        elif (
            "timeout" in low
            or "refused" in low
            or "could not translate host" in low
            or "no route" in low
            or "connect" in low
        ):
            what, hint = (
                "the server cannot be reached",
                "check host and port, and that PostgreSQL is running and accepts TCP connections",
            )
        else:
            what, hint = "the connection failed", "check the connection string and the server log"
        # libpq messages name host, port, user and database, never passwords.
        return config_error(f"{self.spec.describe()}: {what} ({text})", hint=hint)

    # -- catalog
    def _layout(self) -> _Layout:
        import psycopg

        table = ".".join(_q(p) for p in self.spec.table.split("."))
        with self._connect() as conn:
            try:
                row = conn.execute(
                    "SELECT c.oid::int8, c.relpersistence, has_table_privilege(c.oid, 'SELECT'), current_user "
                    "FROM pg_class c WHERE c.oid = to_regclass(%s)",
                    (table,),
                ).fetchone()
                if row is None:
                    names = [
                        r[0]
                        for r in conn.execute(
                            "SELECT table_schema || '.' || table_name FROM information_schema.tables "
                            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') "
                            "ORDER BY 1 LIMIT 20"
                        )
                    ]
                    raise config_error(
                        f"{self.spec.describe()}: the database has no table or view {self.spec.table!r} "
                        "(or it is not on the search path)",
                        hint=f"tables visible here: {', '.join(names) or 'none'}",
                    )
                relid, persistence, can_select, user = row
                if not can_select:
                    raise config_error(
                        f"{self.spec.describe()}: role {user!r} has no SELECT permission on table {self.spec.table!r}",
                        hint=f"as the table's owner run: GRANT SELECT ON {table} TO {_q(user)}",
                    )
                attrs = conn.execute(
                    "SELECT a.attname, t.typname, a.atttypmod FROM pg_attribute a "
                    "JOIN pg_type t ON t.oid = a.atttypid "
                    "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                    (relid,),
                ).fetchall()
                pk = [
                    r[0]
                    for r in conn.execute(
                        "SELECT a.attname FROM pg_index i "
                        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                        "WHERE i.indrelid = %s AND i.indisprimary "
                        "ORDER BY array_position(i.indkey::int2[], a.attnum)",
                        (relid,),
                    )
                ]
            except psycopg.Error as exc:
                raise config_error(
                    f"{self.spec.describe()}: reading the catalog failed ({type(exc).__name__})"
                ) from None
        columns = [self._column(name, typname, typmod) for name, typname, typmod in attrs]
        by_name = {c.name: c for c in columns}

        def term(name: str) -> str:
            collate = ' COLLATE "C"' if by_name[name].typname in _TEXT_TYPES else ""
            return _q(name) + collate

        if self.spec.order_by:
            missing = [c for c in self.spec.order_by if c not in by_name]
            if missing:
                raise config_error(
                    f"{self.spec.describe()}: order_by names column(s) the table lacks: {', '.join(missing)}"
                )
            order = [term(c) for c in self.spec.order_by] + [
                term(c.name) for c in columns if c.name not in self.spec.order_by
            ]
        elif pk:
            order = [term(c) for c in pk]
        else:
            order = [term(c.name) for c in columns]
        return _Layout(columns, order, relid, cacheable=persistence == "p")

    def _column(self, name: str, typname: str, typmod: int) -> _Column:
        if typname == "numeric":
            if typmod >= 4:
                precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
                if precision <= 38:
                    return _Column(name, typname, pl.Decimal(precision, scale))
            return _Column(name, typname, pl.Float64())
        dtype = _SIMPLE.get(typname)
        if dtype is None:
            raise config_error(
                f"{self.spec.describe()}: column {name!r} has type {typname}, which Yumen cannot serve",
                hint="expose it through a view that casts it to a number, text, boolean, date or timestamp",
            )
        return _Column(name, typname, dtype)

    # -- reading
    def _copy_sql(self, layout: _Layout, columns: list[_Column], n_rows: int | None) -> str:
        table = ".".join(_q(p) for p in self.spec.table.split("."))
        select = ", ".join(c.select_expr() for c in columns) if columns else "1"
        sql = f"SELECT {select} FROM {table}"
        if layout.order:
            sql += f" ORDER BY {', '.join(layout.order)}"
        if n_rows is not None:
            sql += f" LIMIT {int(n_rows)}"
        return f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)"

    def _read(
        self, layout: _Layout, names: list[str] | None, n_rows: int | None, conn=None
    ) -> Iterator[pl.DataFrame]:
        import psycopg

        by_name = {c.name: c for c in layout.columns}
        columns = layout.columns if names is None else [by_name[n] for n in names]
        own = conn is None
        if own:
            conn = self._connect()
        try:
            with conn.cursor() as cur, cur.copy(self._copy_sql(layout, columns, n_rows)) as copy:
                buf = bytearray()
                for data in copy:
                    buf += data
                    if len(buf) >= _CHUNK_BYTES:
                        cut = _row_boundary(buf)
                        if cut:
                            yield self._parse(bytes(buf[:cut]), columns)
                            del buf[:cut]
                if buf:
                    yield self._parse(bytes(buf), columns)
        except psycopg.Error as exc:
            raise config_error(
                f"{self.spec.describe()}: reading the table failed ({type(exc).__name__}: "
                f"{(exc.diag.message_primary or '').strip()})",
                hint="check the connector role's permissions and the server log",
            ) from None
        finally:
            if own:
                conn.close()

    def _parse(self, text: bytes, columns: list[_Column]) -> pl.DataFrame:
        if not columns:
            return pl.DataFrame(height=text.count(b"\n"))
        try:
            df = pl.read_csv(
                io.BytesIO(text),
                has_header=False,
                new_columns=[c.name for c in columns],
                schema={c.name: c.csv_dtype() for c in columns},
                quote_char='"',
                missing_utf8_is_empty_string=False,
            )
        except pl.exceptions.PolarsError as exc:
            raise config_error(
                f"{self.spec.describe()}: rows could not be decoded ({type(exc).__name__})",
                hint="report this with the table's column types",
            ) from None
        fixes = []
        for c in columns:
            col = pl.col(c.name)
            if c.typname == "bool":
                fixes.append(col.cast(pl.Boolean))
            elif c.dtype == pl.Date:
                fixes.append(col.str.to_date("%Y-%m-%d", strict=True))
            elif isinstance(c.dtype, pl.Datetime):
                parsed = col.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", time_unit="us", strict=True)
                fixes.append(parsed.dt.replace_time_zone("UTC") if c.dtype.time_zone else parsed)
            elif isinstance(c.dtype, pl.Decimal):
                fixes.append(col.str.to_decimal(scale=c.dtype.scale).cast(c.dtype))
        if fixes:
            try:
                df = df.with_columns(fixes)
            except pl.exceptions.PolarsError:
                bad = next(
                    (c.name for c in columns if c.typname in ("date", "timestamp", "timestamptz")), "?"
                )
                raise config_error(
                    f"{self.spec.describe()}: a value of column {bad!r} cannot be represented "
                    "(infinite or BC dates are not supported)",
                    hint="serve the table through a view that maps such values to NULL",
                ) from None
        return df

    # -- versions
    def _hash_or_snapshot(self, dest_dir: Path | None) -> str:
        """The digest (``dest_dir`` None) or the snapshot path, from one ordered read."""
        import psycopg

        layout = self._layout()
        key = (self.spec, self._conninfo_identity(), layout.relid)
        with self._connect() as conn:
            conn.autocommit = False
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            try:
                with conn.transaction():
                    lsn_before, quiet = self._wal_state(conn, layout)
                    if dest_dir is None and lsn_before is not None:
                        cached = VERSION_CACHE.get((key, lsn_before))
                        if cached is not None:
                            return cached
                    batches = self._read(layout, None, None, conn=conn)
                    if dest_dir is None:
                        digest = digest_batches(layout.schema, batches)
                        result = digest
                    else:
                        path, digest = write_snapshot(layout.schema, batches, dest_dir)
                        result = str(path)
                    lsn_after, _ = self._wal_state(conn, layout)
            except psycopg.Error as exc:
                raise config_error(f"{self.spec.describe()}: reading failed ({type(exc).__name__})") from None
        if quiet and lsn_before is not None and lsn_before == lsn_after:
            VERSION_CACHE.put((key, lsn_before), digest)
        return result

    @staticmethod
    def _wal_state(conn, layout: _Layout) -> tuple[str | None, bool]:
        """(WAL position or None when no cache is sound, whether no transaction was in flight)."""
        if not layout.cacheable:
            return None, False
        row = conn.execute(
            "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_insert_lsn()::text END, "
            "NOT EXISTS (SELECT 1 FROM pg_snapshot_xip(pg_current_snapshot()))"
        ).fetchone()
        return row[0], bool(row[1])

    def _conninfo_identity(self) -> tuple[str, str, str]:
        from psycopg.conninfo import conninfo_to_dict

        try:
            p = conninfo_to_dict(self._conninfo())
        except Exception:
            return ("?", "?", "?")
        return (str(p.get("host", "")), str(p.get("port", "")), str(p.get("dbname", "")))


def _row_boundary(buf: bytearray) -> int:
    """Index just past the last complete CSV row in ``buf`` (0 if none).

    A newline ends a row only outside quotes; quotes inside fields are doubled, so a
    newline is outside quotes exactly when the number of quote characters before it is even.
    """
    end = len(buf)
    while True:
        pos = buf.rfind(b"\n", 0, end)
        if pos < 0:
            return 0
        if buf.count(b'"', 0, pos) % 2 == 0:
            return pos + 1
        end = pos


_PG_TYPE = [
    (lambda t: t == pl.Int16, "smallint"),
    (lambda t: t == pl.Int32, "integer"),
    (lambda t: t.is_integer(), "bigint"),
    (lambda t: t == pl.Float32, "real"),
    (lambda t: t.is_float(), "double precision"),
    (lambda t: t == pl.Boolean, "boolean"),
    (lambda t: t == pl.Date, "date"),
    (lambda t: isinstance(t, pl.Datetime) and t.time_zone is not None, "timestamptz"),
    (lambda t: isinstance(t, pl.Datetime), "timestamp"),
]


def write_postgres_table(
    df: pl.DataFrame, conninfo: str, table: str, *, replace: bool = False, primary_key: str | None = None
) -> None:
    """Load a frame into a new PostgreSQL table (for demos, tests and benchmarks) with COPY."""
    import psycopg

    SourceSpec(kind="postgres", table=table, dsn_env="UNUSED")  # validates the table name
    decl = []
    for name, dtype in df.schema.items():
        if isinstance(dtype, pl.Decimal):
            pg = f"numeric({dtype.precision},{dtype.scale})"
        else:
            pg = next((p for test, p in _PG_TYPE if test(dtype)), "text")
        pk = " PRIMARY KEY" if name == primary_key else ""
        decl.append(f"{_q(name)} {pg}{pk}")
    qtable = ".".join(_q(p) for p in table.split("."))
    out = df.with_columns(
        [pl.col(n).cast(pl.String) for n, t in df.schema.items() if isinstance(t, (pl.Categorical, pl.Enum))]
    )
    with psycopg.connect(conninfo, autocommit=False) as conn, conn.transaction():
        if replace:
            conn.execute(f"DROP TABLE IF EXISTS {qtable}")
        conn.execute(f"CREATE TABLE {qtable} ({', '.join(decl)})")
        with conn.cursor() as cur, cur.copy(f"COPY {qtable} FROM STDIN WITH (FORMAT csv)") as copy:
            for part in out.iter_slices(200_000):
                text = io.BytesIO()
                # non_numeric quoting writes "" for empty strings and nothing for NULL
                part.write_csv(text, include_header=False, quote_style="non_numeric")
                copy.write(text.getvalue())
