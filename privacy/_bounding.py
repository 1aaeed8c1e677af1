"""Contribution bounding: every privacy unit keeps at most ``max_contributions`` rows.

Which k rows survive depends only on that unit's own rows (its first k in frame order), so
adding or removing one unit adds or removes at most k rows and leaves every other row alone:
the transformation is k-stable from units to rows. Everything downstream is row-wise
(filters, clamping) or a sum, so sensitivities are k times a per-row bound.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import polars as pl

from yumen.catalog import DatasetRegistration
from yumen.errors import Code, YumenError

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BoundedFrame:
    """A frame already truncated to ``max_contributions`` rows per privacy unit.

    Truncation costs a stable sort by the unit column (0.6-4 s on 10 M rows here, 10-40
    times a plain group-by), and its result depends only on the pinned dataset version. The
    connector therefore builds one ``BoundedFrame`` per (dataset version, registration) with
    ``bound_contributions`` and passes it to every ``dp_query`` on that version. It is only
    made by ``bound_contributions``; ``dp_query`` checks that it was made for the same
    registration.
    """

    frame: pl.DataFrame = dataclasses.field(repr=False)
    registration_digest: str
    rows: int

    def __post_init__(self) -> None:
        if not isinstance(self.frame, pl.DataFrame):
            raise YumenError(Code.INTERNAL, "a BoundedFrame holds a collected polars DataFrame")
        if self.rows != self.frame.height:
            raise YumenError(Code.INTERNAL, "BoundedFrame row count does not match its frame")


def truncate(frame: pl.LazyFrame, registration: DatasetRegistration) -> pl.LazyFrame:
    """Keep each unit's first ``k`` rows (in frame order); the result is grouped by unit.

    Measured on 10 M rows / 2 M units (2 cores): ``int_range(len).over(unit)`` 1.5-3 s,
    ``group_by(unit).head(k)`` + semi-join 2.1 s, a stable sort by unit followed by "row
    index minus the index where this unit's run starts" 0.6-1.3 s (55-130 ms on 1 M rows).
    Sorting string ids directly is 10x slower, so we sort by a 64-bit hash of the id. The
    stable sort keeps each unit's rows in frame order, so the same k rows survive as with
    the window version. Two ids colliding in the hash would be truncated together to k rows,
    which only lowers contributions (still sound). Null ids hash alike: rows without a unit
    id are one unit (conservative).
    """
    unit = registration.privacy_unit
    if not unit.column:
        return frame  # each row is its own unit and contributes one row
    k = unit.max_contributions
    i = pl.int_range(pl.len(), dtype=pl.Int64)
    uid = pl.col("__unit")
    start = pl.when(uid.ne_missing(uid.shift(1)) | (i == 0)).then(i).otherwise(None).forward_fill()
    return (
        frame.with_columns(pl.col(unit.column).hash(seed=0).alias("__unit"))
        .sort("__unit", maintain_order=True)
        .filter((i - start) < k)
        .drop("__unit")
    )


def bound_contributions(frame: pl.LazyFrame | pl.DataFrame, registration: DatasetRegistration) -> BoundedFrame:
    """Truncate every privacy unit to ``max_contributions`` rows once, for many queries."""
    lf = frame.lazy()
    check_columns(lf, registration, [registration.privacy_unit.column] if registration.privacy_unit.column else [])
    df = truncate(lf, registration).collect()
    logger.info("bounded contributions for dataset %s", registration.id)
    return BoundedFrame(frame=df, registration_digest=registration.digest(), rows=df.height)


def check_columns(lf: pl.LazyFrame, registration: DatasetRegistration, names: Sequence[str]) -> None:
    schema = lf.collect_schema()
    missing = [n for n in names if n and n not in schema]
    if missing:
        raise YumenError(
            Code.JOB_FAILED,
            f"dataset {registration.id!r}: the data source has no column(s) {', '.join(missing)}",
            hint="the registration and the data source disagree; the department must fix its registration",
        )
