"""Synthetic mock data for a dataset, made from its public registration and nothing else.

Operators may see a dataset's registration (columns, types, bounds, categories, privacy
unit) but never its rows. A mock lets them write and debug an algorithm against a frame of
exactly the registered shape, in the same sandbox contract a real job runs in, before any
privacy budget is spent.

Why a mock contains no real values and no real counts: it is a function of public
metadata only. The generator reads the registration's schema (id, columns, privacy unit)
and the caller's ``rows`` and ``seed``; it never opens a data source, and it ignores even
the registration's ``version`` (a digest of the real content), so no bit of the data, not
its size nor its hash, can reach the mock. Consequently every distribution is neutral:

* int and float columns are uniform over ``[lower, upper]``. Any other shape would need a
  parameter (a mean, a skew) that could only be learned from the data.
* category columns draw each declared category with equal probability.
* date columns are uniform over the fixed public range ``MOCK_DATE_RANGE`` (2025), because
  a registration declares no date bounds and the data's own range is not public.
* string (identifier) columns hold synthetic ids that start with ``MOCK_ID_PREFIX``
  ("mock-000123"), which no real identifier needs to share. The privacy-unit column gets one
  id per unit and each unit between 1 and ``max_contributions`` rows (uniformly), so an
  algorithm that groups by the unit sees the structure it will meet; every other string
  column gets a distinct id per row.
* the row count is the caller's (default 1000), never the real one.
* columns are drawn independently and hold no nulls; relationships between columns are
  part of what the data would reveal, so the mock does not pretend to know them.

This is not differential privacy and needs none: nothing private goes in. numpy's
``Generator`` is used because the values only need to be reproducible, not secret. A mock
is deterministic in (schema digest, rows, seed): the same inputs give the same frame on
every machine, so an operator and a department can talk about the same mock.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from pathlib import Path

import numpy as np
import polars as pl

from yumen.canonical import digest_of
from yumen.catalog import Column, ColumnType, DatasetRegistration
from yumen.errors import Code, YumenError

__all__ = [
    "MAX_ROWS",
    "MOCK_DATE_RANGE",
    "MOCK_FORMATS",
    "MOCK_ID_PREFIX",
    "mock_frame",
    "schema_digest",
    "write_mock",
]

log = logging.getLogger(__name__)

MAX_ROWS = 10_000_000
MOCK_ID_PREFIX = "mock-"
MOCK_DATE_RANGE = (dt.date(2025, 1, 1), dt.date(2025, 12, 31))
MOCK_FORMATS = ("parquet", "csv")

_ID_WIDTH = 6  # "mock-000123"; widened when there are more ids than six digits hold
_INT64 = (-(2**63), 2**63 - 1)


def schema_digest(registration: DatasetRegistration) -> str:
    """``sha256:`` digest of the registration parts that shape a mock: id, columns, privacy unit.

    Title, description, prices and the data ``version`` are left out on purpose: editing
    prose must not change a mock, and the version is a digest of the real rows.
    """
    d = registration.to_dict()
    return digest_of({"id": d["id"], "columns": d["columns"], "privacy_unit": d["privacy_unit"]})


_COUNT_HINTS = {
    "rows": "any row count in that range will do: it need not match the real dataset, whose size stays private",
    "seed": "use 0 or any other non-negative integer",
}


def _check_count(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise YumenError(
            Code.INVALID_ARGUMENT,
            f"mock {name} must be an integer between {low:,} and {high:,}, got {value!r}",
            hint=_COUNT_HINTS[name],
        )


def _rng(registration: DatasetRegistration, rows: int, seed: int) -> np.random.Generator:
    digest = bytes.fromhex(schema_digest(registration).removeprefix("sha256:"))
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, len(digest), 4)]
    return np.random.default_rng(np.random.SeedSequence([seed, rows, *words]))


def _ids(numbers: np.ndarray, name: str, infix: str = "") -> pl.Series:
    """``mock-`` + optional infix + zero-padded number, built in polars (no per-row Python)."""
    width = max(_ID_WIDTH, len(str(int(numbers.max())))) if len(numbers) else _ID_WIDTH
    digits = pl.Series(name, numbers, dtype=pl.Int64).cast(pl.String).str.zfill(width)
    return (MOCK_ID_PREFIX + infix + digits).alias(name)


def _units(rng: np.random.Generator, rows: int, max_contributions: int) -> np.ndarray:
    """The unit number of each row: units in order, each with 1..max_contributions rows.

    Counts are drawn in batches sized to cover the remaining rows on average; only the last
    unit is cut short, so no unit ever exceeds ``max_contributions``.
    """
    parts: list[np.ndarray] = []
    total = 0
    mean = (1 + max_contributions) / 2
    while total < rows:
        batch = rng.integers(1, max_contributions, size=int((rows - total) / mean) + 16, endpoint=True)
        parts.append(batch)
        total += int(batch.sum())
    counts = np.concatenate(parts)
    cum = np.cumsum(counts)
    units = int(np.searchsorted(cum, rows, side="left")) + 1
    counts = counts[:units].copy()
    counts[-1] -= int(cum[units - 1]) - rows
    return np.repeat(np.arange(units, dtype=np.int64), counts)


def _numeric(rng: np.random.Generator, col: Column, rows: int) -> pl.Series:
    lower, upper = float(col.lower), float(col.upper)  # type: ignore[arg-type]
    if col.type is ColumnType.INT:
        lo, hi = max(math.ceil(lower), _INT64[0]), min(math.floor(upper), _INT64[1])
        if lo > hi:
            raise YumenError(
                Code.INVALID_ARGUMENT,
                f"int column {col.name!r} has bounds [{lower:g}, {upper:g}] that hold no integer",
                hint="the registration's bounds must contain at least one integer",
            )
        return pl.Series(col.name, rng.integers(lo, hi, size=rows, endpoint=True, dtype=np.int64), dtype=pl.Int64)
    # lower*(1-u) + upper*u rather than lower + u*(upper-lower): the width of bounds such as
    # [-1e308, 1e308] overflows to infinity, the two products never do.
    u = rng.random(rows)
    values = np.clip(lower * (1.0 - u) + upper * u, lower, upper)
    return pl.Series(col.name, values, dtype=pl.Float64)


def _column(rng: np.random.Generator, col: Column, rows: int, units: np.ndarray | None) -> pl.Series:
    if col.numeric:
        return _numeric(rng, col, rows)
    if col.type is ColumnType.CATEGORY:
        codes = rng.integers(0, len(col.categories), size=rows)
        return pl.Series(col.name, list(col.categories), dtype=pl.String).gather(codes)
    if col.type is ColumnType.DATE:
        first, last = MOCK_DATE_RANGE
        epoch = (first - dt.date(1970, 1, 1)).days
        days = rng.integers(0, (last - first).days, size=rows, endpoint=True) + epoch
        return pl.Series(col.name, days.astype(np.int32), dtype=pl.Int32).cast(pl.Date)
    if col.type is ColumnType.STRING:
        if units is not None:
            return _ids(units, col.name)
        return _ids(np.arange(rows, dtype=np.int64), col.name, infix=f"{col.name}-")
    raise YumenError(Code.INTERNAL, f"no mock generator for column type {col.type.value!r}")


def mock_frame(registration: DatasetRegistration, *, rows: int = 1000, seed: int = 0) -> pl.DataFrame:
    """A synthetic frame with exactly the registered columns, in order, with their types.

    ``rows`` (1 to ``MAX_ROWS``) is the caller's choice and has nothing to do with the
    real dataset's size; ``seed`` (a non-negative integer) picks one of many mocks. The
    result depends only on ``schema_digest(registration)``, ``rows`` and ``seed``.
    """
    if not isinstance(registration, DatasetRegistration):
        raise YumenError(
            Code.INVALID_ARGUMENT,
            f"a mock needs a DatasetRegistration, got {type(registration).__name__}",
            hint="build one with DatasetRegistration.from_dict(...)",
        )
    _check_count("rows", rows, 1, MAX_ROWS)
    _check_count("seed", seed, 0, 2**63 - 1)
    rng = _rng(registration, rows, seed)
    pu = registration.privacy_unit
    units = _units(rng, rows, pu.max_contributions) if pu.column else None
    series = [
        _column(rng, col, rows, units if col.name == pu.column else None) for col in registration.columns
    ]
    frame = pl.DataFrame(series)
    log.debug("mock of %s: %d rows, seed %d, schema %s", registration.id, rows, seed, schema_digest(registration))
    return frame


def _discard(tmp: Path) -> None:
    """Remove a half-written file; a path that cannot even be reached holds nothing to remove."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


def write_mock(
    registration: DatasetRegistration,
    path: Path | str,
    *,
    rows: int = 1000,
    seed: int = 0,
    format: str = "parquet",
) -> Path:
    """Write ``mock_frame(registration, rows=rows, seed=seed)`` to ``path`` as Parquet or CSV.

    The file appears complete or not at all: it is written under a temporary name in the
    same directory and renamed into place. Returns the path written.
    """
    if format not in MOCK_FORMATS:
        raise YumenError(
            Code.INVALID_ARGUMENT,
            f"mock format {format!r} is not one of {', '.join(MOCK_FORMATS)}",
            hint="use parquet (what the sandbox reads) or csv",
        )
    frame = mock_frame(registration, rows=rows, seed=seed)
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if format == "parquet":
            frame.write_parquet(tmp)
        else:
            frame.write_csv(tmp)
        tmp.replace(out)
    except OSError as e:
        _discard(tmp)
        raise YumenError(
            Code.INVALID_ARGUMENT,
            f"cannot write the mock of {registration.id!r} to {out}: {e.strerror or e}",
            hint="choose a writable path",
        ) from None
    except BaseException:
        _discard(tmp)
        raise
    log.info("mock of %s: %d rows, seed %d, written to %s", registration.id, rows, seed, out)
    return out
