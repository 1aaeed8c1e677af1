"""The content digest of a table: ``sha256:<hex>`` over a canonical encoding of its rows.

Why not hash the file's bytes: the same rows can be stored as CSV, Parquet, an SQLite
table or a PostgreSQL table, and a re-encoding (new Parquet compression, a CSV rewritten
with other quoting) does not change the data. The digest is therefore computed over the
*values*, so that

* the same rows give the same digest whatever the source kind (the contract tests check it),
* a snapshot written as Parquet has the digest of the source it was taken from, so an
  auditor can verify a pinned version by re-hashing the snapshot file,
* the digest does not depend on how the rows were cut into batches.

Canonical encoding (format ``yumen-table-v1``), fixed here and never to change silently:

* Each column gets a *class* from its polars dtype: ``int`` (every integer width),
  ``float`` (Float32/Float64), ``bool``, ``string`` (String, Categorical, Enum),
  ``binary``, ``decimal``, ``date``, ``time``, ``datetime[<unit-normalised to us>,<tz>]``,
  ``duration``. Other dtypes (lists, structs, objects) are refused.
* Per column, three SHA-256 streams, fed batch after batch (so batch boundaries vanish):
  validity (one byte per row: 1 value, 0 null), values, and for strings/binary/decimal the
  byte lengths. Values are little-endian: ints as int64, floats as float64 with -0.0 made
  0.0 and every NaN the same NaN, bools as one byte, dates as int64 days since 1970-01-01,
  datetimes as int64 microseconds since the epoch (UTC for zoned ones), times as int64 ns,
  durations as int64 us, strings as their UTF-8 bytes back to back (lengths in their own
  stream), decimals as their canonical text. Nulls contribute a zero value (and a 0 in the
  validity stream).
* The digest is SHA-256 of ``canonical_json({"format", "columns": [[name, class], ...],
  "rows"})`` followed by each column's three 32-byte stream digests in column order.

Row order is part of the data: a reordered table has another digest. Sources that have no
natural order (database tables) export in a declared order (see the sources).
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import polars as pl

from yumen.canonical import canonical_json
from yumen.errors import Code, YumenError

__all__ = ["FORMAT", "TableHasher", "column_class"]

logger = logging.getLogger(__name__)

FORMAT = "yumen-table-v1"
_CANONICAL_NAN = np.float64("nan")


def column_class(name: str, dtype: pl.DataType) -> str:
    """The canonical class of a column, or a CONFIG error naming the column."""
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    if dtype == pl.Boolean:
        return "bool"
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, (pl.Categorical, pl.Enum)):
        return "string"
    if dtype == pl.Binary:
        return "binary"
    if isinstance(dtype, pl.Decimal):
        return "decimal"
    if dtype == pl.Date:
        return "date"
    if dtype == pl.Time:
        return "time"
    if isinstance(dtype, pl.Datetime):
        return f"datetime[us,{dtype.time_zone or ''}]"
    if isinstance(dtype, pl.Duration):
        return "duration"
    if dtype == pl.Null:
        # An all-null column (e.g. an empty CSV column). Encoded as an all-null string
        # column so that it stays comparable with a typed source holding only nulls.
        return "string"
    raise YumenError(
        Code.CONFIG,
        f"column {name!r} has type {dtype} which Yumen cannot serve",
        hint="store it as a number, text, boolean, date or timestamp column",
    )


def _le(arr: np.ndarray, dtype: str) -> memoryview:
    out = np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("<"))
    return memoryview(out).cast("B")


class _ColumnHasher:
    __slots__ = ("name", "cls", "validity", "values", "lengths")

    def __init__(self, name: str, cls: str) -> None:
        self.name = name
        self.cls = cls
        self.validity = hashlib.sha256()
        self.values = hashlib.sha256()
        self.lengths = hashlib.sha256()

    def update(self, s: pl.Series) -> None:
        if len(s) == 0:
            return
        valid = s.is_not_null().to_numpy()
        self.validity.update(_le(valid.astype(np.uint8), "u1"))
        cls = self.cls
        if cls == "int":
            self.values.update(_le(s.cast(pl.Int64).fill_null(0).to_numpy(), "i8"))
        elif cls == "float":
            arr = s.cast(pl.Float64).fill_null(0.0).to_numpy() + 0.0  # -0.0 + 0.0 == +0.0
            nan = np.isnan(arr)
            if nan.any():
                arr[nan] = _CANONICAL_NAN
            self.values.update(_le(arr, "f8"))
        elif cls == "bool":
            self.values.update(_le(s.fill_null(False).to_numpy().astype(np.uint8), "u1"))
        elif cls in ("date", "time") or cls == "duration" or cls.startswith("datetime"):
            if cls.startswith("datetime"):
                s = s.cast(pl.Datetime("us", s.dtype.time_zone))  # type: ignore[union-attr]
            elif cls == "duration":
                s = s.cast(pl.Duration("us"))
            self.values.update(_le(s.to_physical().cast(pl.Int64).fill_null(0).to_numpy(), "i8"))
        else:  # string, binary, decimal: lengths + concatenated bytes
            if cls == "binary":
                s = s.fill_null(b"")
                lengths = s.bin.size("b")
            else:
                s = s.cast(pl.String).fill_null("")
                lengths = s.str.len_bytes()
            self.lengths.update(_le(lengths.cast(pl.UInt64).to_numpy(), "u8"))
            arr = s.rechunk().to_arrow()
            if hasattr(arr, "combine_chunks"):
                arr = arr.combine_chunks()
            _, offsets_buf, data_buf = arr.buffers()[:3]
            if data_buf is None:  # every value empty
                return
            width = 8 if str(arr.type).startswith("large_") else 4
            offsets = np.frombuffer(offsets_buf, dtype=f"<i{width}")[arr.offset : arr.offset + len(arr) + 1]
            self.values.update(memoryview(data_buf)[int(offsets[0]) : int(offsets[-1])])

    def digests(self) -> bytes:
        return self.validity.digest() + self.values.digest() + self.lengths.digest()


class TableHasher:
    """Feed batches of one table in order; ``hexdigest()`` gives ``sha256:<hex>``."""

    def __init__(self, schema: pl.Schema | dict[str, pl.DataType]) -> None:
        self._columns = [_ColumnHasher(n, column_class(n, t)) for n, t in schema.items()]
        self._names = [c.name for c in self._columns]
        self.rows = 0

    def update(self, batch: pl.DataFrame) -> None:
        if batch.columns != self._names:
            raise YumenError(
                Code.INTERNAL,
                "a batch's columns differ from the table's schema while hashing",
                hint="the source changed its schema during a read; retry",
            )
        for col in self._columns:
            col.update(batch.get_column(col.name))
        self.rows += batch.height

    def digest(self) -> str:
        header = canonical_json(
            {
                "format": FORMAT,
                "columns": [[c.name, c.cls] for c in self._columns],
                "rows": self.rows,
            }
        )
        h = hashlib.sha256(header)
        for col in self._columns:
            h.update(col.digests())
        return "sha256:" + h.hexdigest()
