"""Disjoint blocks by privacy unit, for sample-and-aggregate (GUPT-style).

Runs inside the department's connector. The connector runs the sandbox once per block and
passes the outputs to ``aggregate_blocks``.

Privacy needs only that every unit's rows land in exactly one block and that where a unit
lands depends on nothing but that unit: then adding or removing one unit changes exactly one
block. Any such rule is sound; we key it with a per-job secret so that the operator can
neither predict nor steer which rows share a block (for example isolating one person in a
block of their own would not break DP, but would waste the job's accuracy on the attacker's
terms). The key is BLAKE2b (a PRF when keyed) over a canonical text form of the unit id,
rather than Polars' ``hash``, because Polars' hash may change between versions and a
department must be able to re-run a logged job on the same data version and get the same
blocks (for the commitment check).

Rows without a unit id (null, or NaN in a float id column) are dropped, as truncation drops
them for queries: whose rows they are is unknown, so they cannot be kept in one block per
person.

Without a unit column each row is its own unit; its id is the row's content (all columns
rendered as text). Identical rows then share a block, which is still one block per unit.
Using the row index instead would be wrong: inserting one row would shift every later row
to another block.
"""

from __future__ import annotations

import hashlib
import logging

import polars as pl

from yumen.catalog import DatasetRegistration
from yumen.errors import Code, YumenError

logger = logging.getLogger(__name__)

MIN_SEED_BYTES = 16
MAX_BLOCKS = 10_000
_SEP = "\x1f"
_NULL = "\x00"


def _bad(what: str, hint: str = "") -> YumenError:
    return YumenError(Code.INVALID_ARGUMENT, what, hint=hint)


def _unit_id(frame: pl.LazyFrame, registration: DatasetRegistration) -> pl.Expr:
    unit = registration.privacy_unit.column
    if unit:
        return pl.col(unit).cast(pl.String, strict=False).fill_null(_NULL)
    names = frame.collect_schema().names()
    return pl.concat_str(
        [pl.col(n).cast(pl.String, strict=False).fill_null(_NULL) for n in names],
        separator=_SEP,
    )


def partition_blocks(
    frame: pl.LazyFrame | pl.DataFrame,
    registration: DatasetRegistration,
    k: int,
    seed_bytes: bytes,
) -> list[pl.DataFrame]:
    """Split the rows into ``k`` disjoint blocks, all rows of one privacy unit in one block.

    ``seed_bytes`` is a per-job secret made by the connector (at least 16 bytes; never chosen
    by the operator). Block ``i`` holds the rows whose unit id maps to ``i`` under the keyed
    hash, in frame order; a block may be empty. Cost: one BLAKE2b per distinct unit (about
    1 µs each) plus a join.
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_BLOCKS:
        raise _bad(f"the number of blocks must be an integer from 1 to {MAX_BLOCKS}, got {k!r}")
    if not isinstance(seed_bytes, (bytes, bytearray)) or len(seed_bytes) < MIN_SEED_BYTES:
        raise _bad(f"the block seed must be at least {MIN_SEED_BYTES} secret bytes made by the connector")
    lf = frame.lazy()
    unit = registration.privacy_unit.column
    if unit and unit not in lf.collect_schema():
        raise YumenError(
            Code.JOB_FAILED,
            f"dataset {registration.id!r}: the data source has no unit column {unit!r}",
            hint="the registration and the data source disagree; the department must fix its registration",
        )
    key = hashlib.blake2b(b"yumen/sample-and-aggregate/blocks/v1\x00" + bytes(seed_bytes), digest_size=32).digest()
    if unit:
        present = pl.col(unit).is_not_null()
        if lf.collect_schema()[unit].is_float():
            present = present & pl.col(unit).is_not_nan()
        lf = lf.filter(present)
    df = lf.with_columns(_unit_id(lf, registration).alias("__unit")).collect()
    ids = df.get_column("__unit").unique().to_list()
    blocks = [
        int.from_bytes(hashlib.blake2b(i.encode("utf-8"), key=key, digest_size=8).digest(), "big") % k for i in ids
    ]
    mapping = pl.DataFrame({"__unit": ids, "__block": blocks}, schema={"__unit": pl.String, "__block": pl.Int64})
    df = df.join(mapping, on="__unit", how="left", maintain_order="left").drop("__unit")
    parts = df.partition_by("__block", as_dict=True, include_key=False, maintain_order=True)
    empty = df.clear().drop("__block")
    out = [parts.get((b,), empty) for b in range(k)]
    logger.info("partitioned dataset %s into %d blocks", registration.id, k)
    return out
