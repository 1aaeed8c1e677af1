"""Data sources: where a department's rows live, read lazily, versioned by content digest.

A connector serves each registered dataset from one :class:`DataSource`. Four kinds exist
(CSV, Parquet, SQLite, PostgreSQL); all satisfy the same :class:`DataSource` protocol and
one contract test suite (tests/unit/connectors/test_source_contract.py) runs against each.

* ``scan()`` is lazy. File sources are native polars scans; database sources are polars IO
  plugins that stream rows in batches of ``batch_rows`` with projection pushed into the SQL,
  so a 10,000,000-row table never becomes 10M Python objects at once.
* ``version()`` is ``sha256:<hex>`` over the *values* in scan order (see
  ``_source_digest``), so the same rows give the same digest in every kind, and a snapshot
  re-hashes to the version it pins. It is cached behind a cheap change signal (file size,
  mtime, ctime and inode; the SQLite database and its WAL file); PostgreSQL has no sound
  cheap signal, so its version is always a full ordered read. docs/data-sources.md discusses
  the trade-offs.
* ``snapshot(dest)`` reads once, hashing and writing Parquet in the same pass, and names the
  file by the digest of exactly what it wrote.
* ``check()`` raises ``YumenError(Code.CONFIG)`` that says in plain words what is wrong.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import polars as pl

from yumen.catalog import ColumnType, DatasetRegistration
from yumen.errors import Code, YumenError

from ._source_digest import TableHasher

__all__ = [
    "SOURCE_KINDS",
    "SourceSpec",
    "DataSource",
    "open_source",
    "infer_schema",
    "validate_against",
    "frame_digest",
]

logger = logging.getLogger(__name__)

SOURCE_KINDS = ("csv", "parquet", "sqlite", "postgres", "spark")
SPARK_FORMATS = ("parquet", "table", "jdbc")
_FILE_KINDS = ("csv", "parquet", "sqlite")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def config_error(message: str, hint: str = "") -> YumenError:
    return YumenError(Code.CONFIG, message, hint=hint)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SourceSpec:
    """Where one dataset's rows live: the ``source`` part of a connector's ``[[datasets]]``.

    ``path`` is used as given; :meth:`from_dict` resolves a relative path against the
    directory of the configuration file. For PostgreSQL the connection string comes from
    ``dsn`` (a libpq connection string or URI *without a password*: the password belongs in
    ``~/.pgpass``/``PGPASSFILE``) or from ``dsn_env``, the name of an environment variable
    holding the full connection string (read when connecting, never stored or logged).
    """

    kind: str
    path: str = ""
    table: str = ""
    dsn: str = ""
    dsn_env: str = ""
    # csv options
    separator: str = ","
    has_header: bool = True
    infer_rows: int = 10_000
    null_values: tuple[str, ...] = ()
    # database options
    order_by: tuple[str, ...] = ()
    batch_rows: int = 65_536
    # queries run in the source's engine (postgres, spark; docs/pushdown.md)
    pushdown: bool = False
    # spark options: what to read (a Parquet path, a catalog/Hive table, a JDBC table whose
    # URL is in the environment variable dsn_env), the cluster, and any Spark settings
    format: str = ""
    master: str = "local[*]"
    spark_conf: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise config_error(
                f"source kind {self.kind!r} is unknown", hint=f"use one of {', '.join(SOURCE_KINDS)}"
            )
        if self.pushdown and self.kind not in ("postgres", "spark"):
            raise config_error(f"a {self.kind} source cannot push queries down",
                               hint="pushdown applies to postgres and spark sources; remove 'pushdown'")
        if self.kind == "spark":
            self._check_spark()
            return
        if self.format or self.master != "local[*]" or self.spark_conf:
            raise config_error(f"a {self.kind} source takes no 'format', 'master' or 'spark_conf'")
        if self.kind in _FILE_KINDS and not self.path:
            raise config_error(f"a {self.kind} source needs 'path'", hint="give the file's path")
        if self.kind not in _FILE_KINDS and self.path:
            raise config_error(f"a {self.kind} source takes no 'path'", hint="remove 'path'")
        if self.kind in ("sqlite", "postgres"):
            _check_table(self.kind, self.table)
        elif self.table:
            raise config_error(f"a {self.kind} source takes no 'table'", hint="remove 'table'")
        if self.kind == "postgres":
            if bool(self.dsn) == bool(self.dsn_env):
                raise config_error(
                    "a postgres source needs exactly one of 'dsn' and 'dsn_env'",
                    hint="set dsn_env to the name of an environment variable holding the connection string",
                )
            if self.dsn_env and not _ENV_NAME.match(self.dsn_env):
                raise config_error(f"dsn_env {self.dsn_env!r} is not an environment variable name")
            if self.dsn:
                _check_literal_dsn(self.dsn)
        elif self.dsn or self.dsn_env:
            raise config_error(f"a {self.kind} source takes no 'dsn' or 'dsn_env'")
        if len(self.separator) != 1 or self.separator in ('"', "\n", "\r"):
            raise config_error(
                f"csv separator {self.separator!r} must be one character other than a quote or newline"
            )
        if not 1 <= self.infer_rows <= 100_000_000:
            raise config_error(f"infer_rows {self.infer_rows} must be between 1 and 100000000")
        if not 1 <= self.batch_rows <= 10_000_000:
            raise config_error(f"batch_rows {self.batch_rows} must be between 1 and 10000000")
        for col in self.order_by:
            if not _IDENT.match(col):
                raise config_error(f"order_by column {col!r} is not a plain identifier")
        if self.kind in ("csv", "parquet") and self.order_by:
            raise config_error("order_by applies to database sources only; files keep their row order")

    def _check_spark(self) -> None:
        if self.format not in SPARK_FORMATS:
            raise config_error(f"a spark source needs 'format', one of {', '.join(SPARK_FORMATS)}",
                               hint='e.g. format = "parquet" with path, or format = "table" with table')
        if self.format == "parquet":
            if not self.path or self.table or self.dsn_env:
                raise config_error("a spark parquet source takes 'path' only (a file or a folder of Parquet files)")
        else:
            if self.path or not self.table:
                raise config_error(f"a spark {self.format} source takes 'table' and no 'path'")
            parts = self.table.split(".")
            if len(parts) > 3 or not all(_IDENT.match(p) for p in parts):
                raise config_error(f"table name {self.table!r} is not a plain (database.)table identifier")
        if self.format == "jdbc":
            if not self.dsn_env or not _ENV_NAME.match(self.dsn_env):
                raise config_error("a spark jdbc source needs 'dsn_env', the environment variable holding its JDBC URL",
                                   hint="the URL carries the credentials, so it never goes in the file")
        elif self.dsn_env or self.dsn:
            raise config_error(f"a spark {self.format} source takes no 'dsn' or 'dsn_env'")
        if self.dsn:
            raise config_error("a spark source takes its JDBC URL from 'dsn_env' only")
        if not self.master or any(c.isspace() for c in self.master):
            raise config_error(f"spark master {self.master!r} is not a master URL", hint='e.g. "local[*]" or "spark://host:7077"')
        for key, _ in self.spark_conf:
            if not re.fullmatch(r"spark\.[A-Za-z0-9_.\-]+", key):
                raise config_error(f"spark_conf key {key!r} is not a Spark setting", hint='keys start with "spark."')
        for col in self.order_by:
            if not _IDENT.match(col):
                raise config_error(f"order_by column {col!r} is not a plain identifier")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, base_dir: Path | None = None) -> "SourceSpec":
        """Parse the source keys of a TOML table; relative paths resolve against ``base_dir``."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            from yumen.config import did_you_mean

            raise config_error(
                f"source has no key {unknown[0]!r}{did_you_mean(unknown[0], fields)}",
                hint=f"known keys: {', '.join(fields)}",
            )
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key in ("null_values", "order_by"):
                if isinstance(value, str) or not isinstance(value, (list, tuple)):
                    raise config_error(f"source key {key!r} must be a list of strings")
                kwargs[key] = tuple(str(v) for v in value)
            elif key in ("has_header", "pushdown"):
                if not isinstance(value, bool):
                    raise config_error(f"source key {key!r} must be true or false")
                kwargs[key] = value
            elif key == "spark_conf":
                if not isinstance(value, Mapping) or not all(isinstance(v, (str, int, float, bool)) for v in value.values()):
                    raise config_error("source key 'spark_conf' must be a table of Spark settings",
                                       hint='e.g. spark_conf = { "spark.executor.memory" = "4g" }')
                kwargs[key] = tuple(sorted((str(k), str(v).lower() if isinstance(v, bool) else str(v))
                                           for k, v in value.items()))
            elif key in ("infer_rows", "batch_rows"):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise config_error(f"source key {key!r} must be an integer")
                kwargs[key] = value
            else:
                if not isinstance(value, str):
                    raise config_error(f"source key {key!r} must be a string")
                kwargs[key] = value
        if "kind" not in kwargs:
            raise config_error("the source has no 'kind'", hint=f"use one of {', '.join(SOURCE_KINDS)}")
        path = kwargs.get("path")
        if path and base_dir is not None and not Path(path).is_absolute():
            kwargs["path"] = str(Path(base_dir) / path)
        return cls(**kwargs)

    def describe(self) -> str:
        """A short, secret-free description for messages and logs."""
        if self.kind in ("csv", "parquet"):
            return f"{self.kind} file {self.path}"
        if self.kind == "sqlite":
            return f"sqlite table {self.table!r} in {self.path}"
        if self.kind == "spark":
            what = f"Parquet {self.path}" if self.format == "parquet" else f"{self.format} table {self.table!r}"
            return f"spark {what} on {self.master}"
        where = f"${self.dsn_env}" if self.dsn_env else _dsn_summary(self.dsn)
        return f"postgres table {self.table!r} at {where}"


def _check_table(kind: str, table: str) -> None:
    if not table:
        raise config_error(f"a {kind} source needs 'table'", hint="name the table to serve")
    parts = table.split(".")
    if kind == "postgres" and len(parts) == 2 and all(_IDENT.match(p) for p in parts):
        return
    if len(parts) == 1 and _IDENT.match(table):
        return
    raise config_error(
        f"table name {table!r} is not a plain identifier",
        hint="use letters, digits and _ (for postgres optionally schema.table)",
    )


def _check_literal_dsn(dsn: str) -> None:
    from psycopg.conninfo import conninfo_to_dict  # imported here: only postgres needs psycopg

    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        raise config_error(
            "the postgres 'dsn' is not a valid connection string",
            hint="write it like 'host=db.local port=5432 dbname=health user=yumen_reader'",
        ) from None
    if params.get("password"):
        raise config_error(
            "the postgres 'dsn' contains a password; configuration files must not hold secrets",
            hint="put the password in ~/.pgpass (or PGPASSFILE), or use dsn_env with an environment variable",
        )


def _dsn_summary(dsn: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    try:
        p = conninfo_to_dict(dsn)
    except Exception:
        return "an unparsable connection string"
    return f"{p.get('host', 'localhost')}:{p.get('port', '5432')}/{p.get('dbname', '?')}"


@runtime_checkable
class DataSource(Protocol):
    """One dataset's rows. Every implementation passes the same contract tests."""

    spec: SourceSpec

    def scan(self) -> pl.LazyFrame:
        """The rows, lazily, in the source's canonical order (the order ``version`` hashes)."""
        ...

    def version(self) -> str:
        """``sha256:<hex>`` content digest of the current rows (see ``_source_digest``)."""
        ...

    def snapshot(self, dest_dir: Path) -> Path:
        """Write the current rows to ``dest_dir/<hex>.parquet`` and return that path."""
        ...

    def check(self) -> None:
        """Raise ``YumenError(Code.CONFIG)`` saying plainly what is wrong; return if usable."""
        ...


def open_source(spec: SourceSpec) -> DataSource:
    """The source for ``spec``; opening does no I/O (call ``check()`` for that)."""
    if spec.kind == "csv":
        from ._source_files import CsvSource

        return CsvSource(spec)
    if spec.kind == "parquet":
        from ._source_files import ParquetSource

        return ParquetSource(spec)
    if spec.kind == "sqlite":
        from ._source_sqlite import SqliteSource

        return SqliteSource(spec)
    if spec.kind == "postgres":
        from ._source_postgres import PostgresSource

        return PostgresSource(spec)
    if spec.kind == "spark":
        from ._source_spark import SparkSource

        return SparkSource(spec)
    raise YumenError(Code.INTERNAL, f"no implementation for source kind {spec.kind!r}")


def infer_schema(source: DataSource) -> list[tuple[str, pl.DataType]]:
    """The columns the source really has, as (name, polars dtype), in source order."""
    schema = source.scan().collect_schema()
    return list(schema.items())


def _compatible(ctype: ColumnType, dtype: pl.DataType) -> bool:
    is_text = dtype == pl.String or isinstance(dtype, (pl.Categorical, pl.Enum))
    if ctype is ColumnType.INT:
        return dtype.is_integer()
    if ctype is ColumnType.FLOAT:
        return dtype.is_float() or dtype.is_integer() or isinstance(dtype, pl.Decimal)
    if ctype is ColumnType.CATEGORY:
        return is_text
    if ctype is ColumnType.STRING:
        return is_text or dtype.is_integer()
    if ctype is ColumnType.DATE:
        return dtype == pl.Date or isinstance(dtype, pl.Datetime)
    return False


_EXPECTED = {
    ColumnType.INT: "an integer column",
    ColumnType.FLOAT: "a numeric column",
    ColumnType.CATEGORY: "a text column",
    ColumnType.STRING: "a text or integer column",
    ColumnType.DATE: "a date or timestamp column",
}


def validate_against(
    registration: DatasetRegistration, source: DataSource, *, check_values: bool = False
) -> None:
    """Raise ``YumenError(Code.CONFIG)`` naming the first column the source does not match.

    Every declared column must exist with a compatible type (int -> integer; float ->
    integer, float or decimal; category -> text; string -> text or integer; date -> date or
    timestamp). Undeclared source columns are allowed: they are never served.

    With ``check_values`` the data is read once more to verify that numeric values lie in
    the declared bounds and category values are declared. Values outside bounds are not
    unsafe (mechanisms clamp), but they mean the declared bounds are wrong and results will
    be biased; undeclared categories would silently vanish from histograms. The message
    gives counts only, never the offending values.
    """
    actual = dict(infer_schema(source))
    where = source.spec.describe()
    for col in registration.columns:
        if col.name not in actual:
            raise config_error(
                f"dataset {registration.id!r}: column {col.name!r} is declared but the {where} has no such column",
                hint=f"the source has: {', '.join(actual) or 'no columns'}",
            )
        dtype = actual[col.name]
        if not _compatible(col.type, dtype):
            raise config_error(
                f"dataset {registration.id!r}: column {col.name!r} is declared {col.type.value} "
                f"but the {where} holds {dtype} values",
                hint=f"declare it with a matching type or store it as {_EXPECTED[col.type]}",
            )
    if not check_values:
        return
    problems = value_problems(registration, source)
    if problems:
        message, kind = problems[0]
        raise config_error(f"dataset {registration.id!r}: {message}", hint=_VALUE_HINTS[kind])


_VALUE_HINTS = {"bounds": "widen the bounds in the registration or clean the data",
                "categories": "add the missing categories to the registration"}


def value_problems(registration: DatasetRegistration, source: DataSource) -> list[tuple[str, str]]:
    """Every column whose values stray from the registration, read over the whole source:
    ``(message, kind)`` with kind ``bounds`` (numeric values outside the declared bounds) or
    ``categories`` (values of a category column that are not declared). Counts only, never a
    value. Neither is unsafe (mechanisms clamp, and count only declared categories), but the
    results are biased or lose rows, so ``connector check`` reports them."""
    exprs: list[pl.Expr] = []
    for col in registration.columns:
        c = pl.col(col.name)
        if col.numeric and col.lower is not None and col.upper is not None:
            exprs.append(((c < col.lower) | (c > col.upper)).sum().alias(col.name))
        elif col.type is ColumnType.CATEGORY:
            exprs.append(
                (c.is_not_null() & ~c.cast(pl.String).is_in(list(col.categories))).sum().alias(col.name)
            )
    if not exprs:
        return []
    counts = source.scan().select(exprs).collect(engine="streaming").row(0, named=True)
    out = []
    for col in registration.columns:
        bad = counts.get(col.name) or 0
        if bad and col.numeric:
            out.append((f"{bad:,} value(s) of column {col.name!r} lie outside the declared bounds "
                        f"[{col.lower:g}, {col.upper:g}]", "bounds"))
        elif bad:
            out.append((f"{bad:,} value(s) of column {col.name!r} are not among its declared categories", "categories"))
    return out


# --- shared machinery for the implementations -------------------------------------------


class VersionCache:
    """Process-wide ``(source key, change signal) -> digest`` memo, bounded LRU.

    A source recomputes its digest only when its cheap change signal moves. The signal is
    conservative: when it moves although the data did not (a ``touch``, a WAL checkpoint),
    we pay one full read; the data changing without the signal moving needs a writer that
    keeps size, mtime *and* ctime, which unprivileged processes cannot do (ctime is set by
    the kernel).
    """

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._items: OrderedDict[Any, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> str | None:
        with self._lock:
            digest = self._items.get(key)
            if digest is not None:
                self._items.move_to_end(key)
            return digest

    def put(self, key: Any, digest: str) -> None:
        with self._lock:
            self._items[key] = digest
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


VERSION_CACHE = VersionCache()


def file_signal(path: Path) -> tuple[int, ...] | None:
    """``(dev, inode, size, mtime_ns, ctime_ns)`` of ``path``, or None if it is missing."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def frame_digest(df: pl.DataFrame) -> str:
    """The version digest a source holding exactly ``df`` (in this order) reports."""
    return digest_batches(df.schema, [df])


def digest_batches(schema: pl.Schema | Mapping[str, pl.DataType], batches: Iterable[pl.DataFrame]) -> str:
    hasher = TableHasher(dict(schema))
    for batch in batches:
        hasher.update(batch)
    return hasher.digest()


def write_snapshot(
    schema: pl.Schema | Mapping[str, pl.DataType],
    batches: Iterable[pl.DataFrame],
    dest_dir: Path,
) -> tuple[Path, str]:
    """Hash and write ``batches`` in one pass to ``dest_dir/<hex>.parquet``.

    The file is written under a temporary name and renamed once complete, so a reader never
    sees a partial snapshot under a digest name. An existing file of that name holds the
    same rows (same digest) and is kept.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    schema = dict(schema)
    hasher = TableHasher(schema)
    arrow_schema = pl.DataFrame(schema=schema).to_arrow().schema
    tmp = dest_dir / f".snapshot-{uuid.uuid4().hex}.parquet.tmp"
    try:
        with pq.ParquetWriter(tmp, arrow_schema, compression="zstd") as writer:
            for batch in batches:
                hasher.update(batch)
                if batch.height:
                    table = batch.to_arrow()
                    if table.schema != arrow_schema:
                        table = table.cast(arrow_schema)
                    writer.write_table(table)
            if hasher.rows == 0:
                writer.write_table(pa.Table.from_batches([], schema=arrow_schema))
        digest = hasher.digest()
        final = dest_dir / f"{digest.removeprefix('sha256:')}.parquet"
        if final.exists():
            tmp.unlink()
        else:
            os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("snapshot %s written (%d rows)", digest, hasher.rows)
    return final, digest


def io_plugin_frame(
    schema: Mapping[str, pl.DataType],
    read: Callable[[list[str] | None, int | None, int], Iterator[pl.DataFrame]],
    default_batch: int,
) -> pl.LazyFrame:
    """A LazyFrame over a batch reader; projection and row limits reach ``read``.

    Predicates are applied here on each batch (translating polars expressions into SQL is
    not worth its risk); the reader only ever holds one batch.
    """
    from polars.io.plugins import register_io_source

    def source(
        with_columns: list[str] | None,
        predicate: pl.Expr | None,
        n_rows: int | None,
        batch_size: int | None,
    ) -> Iterator[pl.DataFrame]:
        for batch in read(with_columns, n_rows, min(batch_size or default_batch, default_batch)):
            if predicate is not None:
                batch = batch.filter(predicate)
            yield batch

    return register_io_source(source, schema=dict(schema), is_pure=False)
