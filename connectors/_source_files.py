"""CSV and Parquet sources: native polars scans over one local file.

Rows are served in file order. Types: Parquet carries its own schema; CSV types are
inferred by polars from the first ``infer_rows`` rows, with dates parsed (``2025-01-31``
becomes a Date). A value further down that does not fit the inferred type (``n/a`` in an
integer column) surfaces as a CONFIG error from ``version()``/``snapshot()``, which read the
whole file, naming the column; raise ``infer_rows`` or clean the file.

The version digest is cached under ``(dev, inode, size, mtime_ns, ctime_ns)`` of the file.
A digest is only cached when the signal was the same before and after the read, so a file
rewritten during hashing is never cached under a stale digest.
"""

from __future__ import annotations

import abc
import logging
import os
import queue
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from yumen.errors import Code, YumenError

from ._source_digest import column_class
from ._sources import (
    VERSION_CACHE,
    SourceSpec,
    config_error,
    digest_batches,
    file_signal,
    write_snapshot,
)

__all__ = ["CsvSource", "ParquetSource", "stream_batches"]

logger = logging.getLogger(__name__)

_BATCH_ROWS = 262_144
_READ_ATTEMPTS = 3
_POLARS_COLUMN = re.compile(r"column '([^']{1,64})'")


class _FileSource(abc.ABC):
    """What CSV and Parquet share: the file checks, the cached version, the snapshot."""

    kind = ""

    def __init__(self, spec: SourceSpec) -> None:
        if spec.kind != self.kind:
            raise YumenError(Code.INTERNAL, f"{type(self).__name__} given a {spec.kind} spec")
        self.spec = spec
        self._path = Path(spec.path)

    @abc.abstractmethod
    def _lazy(self) -> pl.LazyFrame:
        """The polars scan of the file."""

    # -- protocol
    def scan(self) -> pl.LazyFrame:
        self._require_file()
        return self._lazy()

    def check(self) -> None:
        self._require_file()
        if not os.access(self._path, os.R_OK):
            raise config_error(
                f"{self.spec.describe()} is not readable by this process (user id {os.getuid()})",
                hint="grant the connector's user read permission on the file",
            )
        try:
            with open(self._path, "rb") as f:
                head = f.read(1)
        except PermissionError:
            raise config_error(
                f"{self.spec.describe()} is not readable by this process",
                hint="grant the connector's user read permission on the file",
            ) from None
        if not head:
            raise config_error(f"{self.spec.describe()} is empty", hint="point 'path' at the data file")
        schema = self._schema()
        for name, dtype in schema.items():
            column_class(name, dtype)

    def version(self) -> str:
        key = (self.spec, os.path.realpath(self._path))
        for _ in range(_READ_ATTEMPTS):
            before = self._signal()
            cached = VERSION_CACHE.get((key, before))
            if cached is not None:
                return cached
            digest = digest_batches(self._schema(), self._batches())
            if self._signal() == before:
                VERSION_CACHE.put((key, before), digest)
                logger.debug("version of %s is %s", self.spec.describe(), digest)
                return digest
            logger.info("%s changed while being hashed; hashing again", self.spec.describe())
        raise YumenError(
            Code.UNAVAILABLE,
            f"{self.spec.describe()} kept changing while its version was computed",
            hint="retry once the writer has finished; write new data to a temporary file and rename it into place",
        )

    def snapshot(self, dest_dir: Path) -> Path:
        before = self._signal()
        path, digest = write_snapshot(self._schema(), self._batches(), Path(dest_dir))
        if self._signal() == before:
            VERSION_CACHE.put(((self.spec, os.path.realpath(self._path)), before), digest)
        return path

    # -- helpers
    def _require_file(self) -> None:
        if not self._path.exists():
            raise config_error(
                f"{self.spec.describe()} does not exist",
                hint="check 'path' (a relative path is taken from the configuration file's directory)",
            )
        if not self._path.is_file():
            raise config_error(
                f"{self.spec.describe()} is not a regular file", hint="point 'path' at the data file"
            )

    def _signal(self) -> tuple[int, ...]:
        signal = file_signal(self._path)
        if signal is None:
            self._require_file()
            raise config_error(f"{self.spec.describe()} disappeared")
        return signal

    def _schema(self) -> pl.Schema:
        try:
            return self.scan().collect_schema()
        except pl.exceptions.PolarsError as exc:
            raise self._read_error(exc) from None

    def _batches(self) -> Iterator[pl.DataFrame]:
        try:
            yield from stream_batches(self.scan(), _BATCH_ROWS)
        except pl.exceptions.PolarsError as exc:
            raise self._read_error(exc) from None

    def _read_error(self, exc: Exception) -> YumenError:
        # polars messages can quote cell values; only a column name is carried over.
        m = _POLARS_COLUMN.search(str(exc))
        column = f" in column {m.group(1)!r}" if m else ""
        logger.warning("reading %s failed: %s", self.spec.describe(), type(exc).__name__)
        return config_error(
            f"{self.spec.describe()} could not be read as {self.kind}{column} ({type(exc).__name__})",
            hint=self._read_hint(),
        )

    def _read_hint(self) -> str:
        return "check that the file is a complete, valid file of this kind"


def stream_batches(lf: pl.LazyFrame, chunk_size: int) -> Iterator[pl.DataFrame]:
    """The frame's rows in order, ``chunk_size`` at a time, with errors raised to the reader.

    Why not ``LazyFrame.collect_batches``: in polars 1.36 it runs the query in a worker
    thread and, when the query fails (a CSV value that does not parse), simply ends the
    iteration; the error only surfaces in ``__del__`` as an unraisable exception. A digest
    over the rows read so far would then silently describe a truncated table. Here the
    streaming engine runs ``sink_batches`` in a thread of our own and any failure is raised
    from the iterator. The queue holds at most two batches, so memory stays bounded.
    """
    done = object()
    chunks: queue.Queue[object] = queue.Queue(maxsize=2)
    stop = threading.Event()
    failure: list[BaseException] = []

    def put(df: pl.DataFrame) -> bool:
        if stop.is_set():
            return True  # tells polars no more batches are wanted
        chunks.put(df)
        return stop.is_set()

    def run() -> None:
        try:
            lf.sink_batches(put, chunk_size=chunk_size, maintain_order=True)
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread below
            failure.append(exc)
        finally:
            chunks.put(done)

    worker = threading.Thread(target=run, name="yumen-source-batches", daemon=True)
    worker.start()
    try:
        while (item := chunks.get()) is not done:
            yield item  # type: ignore[misc]
        worker.join()
        if failure:
            raise failure[0]
    finally:
        if worker.is_alive():  # the reader stopped early: release the producer
            stop.set()
            while chunks.get() is not done:
                pass
            worker.join()


class CsvSource(_FileSource):
    """A CSV file (UTF-8), read with ``pl.scan_csv``."""

    kind = "csv"

    def _lazy(self) -> pl.LazyFrame:
        s = self.spec
        return pl.scan_csv(
            self._path,
            separator=s.separator,
            has_header=s.has_header,
            infer_schema_length=s.infer_rows,
            try_parse_dates=True,
            null_values=list(s.null_values) or None,
        )

    def _read_hint(self) -> str:
        return (
            f"types are inferred from the first {self.spec.infer_rows} rows: raise 'infer_rows', "
            "declare missing-value markers in 'null_values', or fix the offending values"
        )

    def _read_error(self, exc: Exception) -> YumenError:
        """Name the first row and column whose value does not fit the type inferred for it.

        polars says which column failed but not where (and its message may quote the value):
        on failure the file is read once more as text, and each typed column is checked with
        a non-strict cast. The message carries the row and the column, never the value.
        """
        err = super()._read_error(exc)
        try:
            where = self._first_unparsable()
        except Exception:  # noqa: BLE001 - locating is best effort; the error above stands
            where = None
        if where is None:
            return err
        row, column, dtype = where
        line = f", line {row + 1:,} of the file" if self.spec.has_header else ""
        return config_error(
            f"{self.spec.describe()}: row {row:,}{line}, column {column!r}: a value that is not {dtype} "
            f"(the type inferred from the first {self.spec.infer_rows:,} rows)",
            hint=self._read_hint(),
        )

    def _first_unparsable(self) -> tuple[int, str, str] | None:
        s = self.spec
        typed = self._lazy().collect_schema()
        raw = pl.scan_csv(self._path, separator=s.separator, has_header=s.has_header, infer_schema=False,
                          null_values=list(s.null_values) or None)
        best: tuple[int, str, str] | None = None
        for name, dtype in typed.items():
            if dtype == pl.String:
                continue
            c = pl.col(name)
            try:
                found = raw.select((c.is_not_null() & c.cast(dtype, strict=False).is_null()).arg_true().min()).collect(
                    engine="streaming").item()
            except pl.exceptions.PolarsError:
                continue
            if found is not None and (best is None or found + 1 < best[0]):
                best = (int(found) + 1, name, str(dtype))
        return best


class ParquetSource(_FileSource):
    """A Parquet file, read with ``pl.scan_parquet``."""

    kind = "parquet"

    def _lazy(self) -> pl.LazyFrame:
        return pl.scan_parquet(self._path)
