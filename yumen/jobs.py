"""Job records: what an operator asks for, independent of how it travels.

Privacy budgets are exact: ``epsilon`` is a ``Fraction`` parsed from a decimal string,
never a float, so that the ledger's sums are exact (0.1 + 0.2 == 0.3 here).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import time
import uuid
from fractions import Fraction
from typing import Any

from yumen.canonical import digest_of, sha256_hex
from yumen.errors import Code, YumenError, echo

__all__ = [
    "Tier",
    "Purpose",
    "Aggregate",
    "Query",
    "QueryFilter",
    "OutputRange",
    "Algorithm",
    "JobRequest",
    "JobState",
    "parse_epsilon",
    "parse_quantile",
    "format_epsilon",
]


def _bad(what: str, hint: str = "") -> YumenError:
    return YumenError(Code.INVALID_ARGUMENT, what, hint=hint)


class Tier(enum.Enum):
    QUERY = "query"
    APPROVED_ALGORITHM = "approved-algorithm"
    CUSTOM_ALGORITHM = "custom-algorithm"


class Purpose(enum.Enum):
    PUBLIC_INTEREST = "public-interest"
    RESEARCH = "research"
    COMMERCIAL = "commercial"


class Aggregate(enum.Enum):
    COUNT = "count"
    SUM = "sum"
    MEAN = "mean"
    VARIANCE = "variance"
    HISTOGRAM = "histogram"
    QUANTILE = "quantile"

    @property
    def combinable(self) -> bool:
        """Whether partial results of several departments can be added (or encrypted and added)."""
        return self in (Aggregate.COUNT, Aggregate.SUM, Aggregate.MEAN, Aggregate.HISTOGRAM)


_FILTER_OPS = ("==", "!=", "<", "<=", ">", ">=", "in")


class JobState(enum.Enum):
    PENDING = "pending"        # accepted, budget reserved, waiting for a connector
    RUNNING = "running"        # ticket delivered
    SUCCEEDED = "succeeded"    # result released
    FAILED = "failed"          # ran and failed; budget stays spent once data was touched
    REFUSED = "refused"        # refused by the department's connector before touching data
    CANCELLED = "cancelled"    # stopped before any ticket ran (e.g. its license was revoked)

    @property
    def final(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.REFUSED, JobState.CANCELLED)


def parse_epsilon(text: str | int | Fraction) -> Fraction:
    """Parse ε from a decimal string exactly ("0.5" -> 1/2). Floats are refused."""
    if isinstance(text, float):
        raise _bad("ε must be given as a decimal string, not a float", "write it as \"0.5\"")
    if isinstance(text, (int, Fraction)):
        eps = Fraction(text)
    else:
        if not re.fullmatch(r"\d+(\.\d{1,9})?", text.strip()):
            raise _bad(f"ε {echo(text)} is not a positive decimal", "write it like 0.5 (up to 9 decimals)")
        eps = Fraction(text.strip())
    if eps <= 0:
        raise _bad(f"ε must be positive, got {text}", "ask for a positive ε such as 0.5")
    return eps


def parse_quantile(text: str | Fraction) -> Fraction:
    """Parse which quantile a query asks for, exactly ("0.5" -> 1/2, the median), in (0, 1)."""
    if isinstance(text, Fraction):
        q = text
    else:
        if not isinstance(text, str) or not re.fullmatch(r"0?\.\d{1,9}", text.strip()):
            raise _bad(f"quantile {echo(str(text))} is not a decimal between 0 and 1",
                       "e.g. --quantile 0.5 for the median, 0.9 for the 90th percentile")
        q = Fraction(text.strip())
    if not 0 < q < 1:
        raise _bad(f"quantile {echo(str(text))} is not between 0 and 1", "e.g. --quantile 0.5 for the median")
    return q


def format_epsilon(eps: Fraction) -> str:
    """Render an exact ε as a decimal string, rounding *up* past 9 places (conservative)."""
    scaled = eps * 10**9
    units = math.ceil(scaled)
    whole, frac = divmod(units, 10**9)
    if frac == 0:
        return str(whole)
    return f"{whole}.{frac:09d}".rstrip("0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class QueryFilter:
    """Keep rows where ``column op value`` (``in`` takes a tuple of declared categories)."""

    column: str
    op: str
    value: float | str | tuple[str, ...]

    def __post_init__(self) -> None:
        if self.op not in _FILTER_OPS:
            raise _bad(f"filter operator {echo(self.op)} is unknown", f"use one of {' '.join(_FILTER_OPS)}")

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "op": self.op,
                "value": list(self.value) if isinstance(self.value, tuple) else self.value}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QueryFilter":
        v = d.get("value")
        return cls(column=str(d.get("column", "")), op=str(d.get("op", "")),
                   value=tuple(str(x) for x in v) if isinstance(v, list) else v)  # type: ignore[arg-type]

    @classmethod
    def parse(cls, text: str) -> "QueryFilter":
        """``"cost_yuan >= 100"``, ``"region == lanzhou"``, ``"age_band in 65-74,75+"``."""
        m = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(==|!=|<=|>=|<|>|\sin\s)\s*(.+?)\s*", text)
        if not m:
            raise _bad(f"filter {echo(text)} is not COLUMN OP VALUE", 'e.g. "cost_yuan >= 100" or "age_band in 65-74,75+"')
        col, op, raw = m.group(1), m.group(2).strip(), m.group(3)
        if op == "in":
            return cls(column=col, op=op, value=tuple(x.strip() for x in raw.split(",") if x.strip()))
        try:
            number = float(raw)
            if math.isfinite(number):
                return cls(column=col, op=op, value=number)
        except ValueError:
            pass
        return cls(column=col, op=op, value=raw)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Query:
    """A declarative aggregate. Bounds come from the dataset registration, never from here."""

    aggregate: Aggregate
    column: str = ""  # required for every aggregate but count
    group_by: str = ""  # a category column declared in the registration
    filters: tuple[QueryFilter, ...] = ()
    bins: int = 0  # histogram of a numeric column: equal-width bins over its registered bounds
    quantile: Fraction | None = None  # quantile in (0, 1), e.g. Fraction(1, 2) for the median

    def __post_init__(self) -> None:
        if self.aggregate is not Aggregate.COUNT and not self.column:
            raise _bad(f"a {self.aggregate.value} query needs a column", "pass --column NAME")
        if (self.aggregate is Aggregate.QUANTILE) != (self.quantile is not None):
            raise _bad("a quantile query, and only a quantile query, takes --quantile", "e.g. --quantile 0.5")
        if self.quantile is not None and not 0 < self.quantile < 1:
            raise _bad(f"quantile {self.quantile} is not between 0 and 1")
        if self.bins and self.aggregate is not Aggregate.HISTOGRAM:
            raise _bad("--bins applies to histograms only")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"aggregate": self.aggregate.value, "column": self.column, "group_by": self.group_by}
        if self.filters:
            d["filters"] = [f.to_dict() for f in self.filters]
        if self.bins:
            d["bins"] = self.bins
        if self.quantile is not None:
            d["quantile"] = format_epsilon(self.quantile)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Query":
        try:
            agg = Aggregate(d.get("aggregate", ""))
        except ValueError:
            raise _bad(
                f"unknown aggregate {d.get('aggregate')!r}",
                f"use one of {', '.join(a.value for a in Aggregate)}",
            ) from None
        q = d.get("quantile")
        return cls(
            aggregate=agg, column=str(d.get("column", "")), group_by=str(d.get("group_by", "")),
            filters=tuple(QueryFilter.from_dict(f) for f in d.get("filters", ())),
            bins=int(d.get("bins", 0)), quantile=Fraction(q) if q else None,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class OutputRange:
    """A named output of an algorithm and the range the connector clamps it to before noise."""

    name: str
    lower: float
    upper: float

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", self.name):
            raise _bad(f"output name {echo(self.name)} is not a plain identifier")
        if not (math.isfinite(self.lower) and math.isfinite(self.upper) and self.lower < self.upper):
            raise _bad(
                f"output {self.name!r}: range [{self.lower}, {self.upper}] is not a finite interval with lower < upper",
                "declare it as NAME=LOWER:UPPER, e.g. mean_temp=-40:50",
            )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "lower": self.lower, "upper": self.upper}


MAX_ALGORITHM_BYTES = 256 * 1024


@dataclasses.dataclass(frozen=True, kw_only=True)
class Algorithm:
    source: bytes
    outputs: tuple[OutputRange, ...]
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The whole job's time limit: its result is released this long (plus the department's
    # fixed allowance) after it starts, whatever the code does; sample-and-aggregate shares
    # it out over the waves of blocks.
    timeout_s: float = 30.0
    memory_mb: int = 512
    blocks: int = 10  # sample-and-aggregate blocks for the custom-algorithm tier

    def __post_init__(self) -> None:
        if not 2 <= self.blocks <= 100:
            raise _bad(f"blocks {self.blocks} is outside 2–100", "more blocks: less noise, but each block sees less data")
        if not self.source:
            raise _bad("the algorithm file is empty")
        if len(self.source) > MAX_ALGORITHM_BYTES:
            raise _bad(f"the algorithm is {len(self.source)} bytes; the limit is {MAX_ALGORITHM_BYTES}")
        if not self.outputs:
            raise _bad("an algorithm must declare its outputs and their ranges", "pass --output NAME=LOWER:UPPER")
        names = [o.name for o in self.outputs]
        if len(set(names)) != len(names):
            raise _bad("output names repeat")
        if any(n.startswith("_") for n in names):
            raise _bad("output names starting with '_' are reserved for the platform", "rename the output")
        if not 0 < self.timeout_s <= 3600:
            raise _bad(f"timeout {self.timeout_s}s is outside 0–3600 s")
        if not 16 <= self.memory_mb <= 16384:
            raise _bad(f"memory {self.memory_mb} MB is outside 16–16384 MB")

    @property
    def digest(self) -> str:
        return "sha256:" + sha256_hex(self.source)


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobRequest:
    """What the operator submits. The broker adds identity, decision and ticket."""

    job_id: str
    datasets: tuple[str, ...]
    tier: Tier
    purpose: Purpose
    epsilon: Fraction
    query: Query | None = None
    algorithm: Algorithm | None = None
    # A TenSEAL CKKS public context (no secret key): results come back encrypted under it,
    # and only the operator, holding the secret context, can read them.
    he_context: bytes = b""

    def __post_init__(self) -> None:
        if len(self.datasets) > 1 and self.tier is not Tier.QUERY:
            raise _bad("a job over several datasets must be a query", "run an algorithm on one dataset at a time")
        if (len(self.datasets) > 1 or self.he_context) and self.query is not None and not self.query.aggregate.combinable:
            raise _bad(f"a {self.query.aggregate.value} cannot be combined across departments or encrypted",
                       "use count, sum, mean or histogram, or one dataset without --he")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}", self.job_id):
            raise _bad(f"job id {echo(self.job_id)} is not valid", "use letters, digits, '.', '_' or '-' (max 80)")
        if not self.datasets:
            raise _bad("a job must name at least one dataset")
        if len(set(self.datasets)) != len(self.datasets):
            raise _bad("a dataset is named twice")
        if self.epsilon <= 0:
            raise _bad("ε must be positive")
        if self.tier is Tier.QUERY:
            if self.query is None or self.algorithm is not None:
                raise _bad("a query job carries exactly one query")
        else:
            if self.algorithm is None or self.query is not None:
                raise _bad("an algorithm job carries exactly one algorithm")

    def to_dict(self) -> dict[str, Any]:
        """Canonical description (no source bytes, only their digest)."""
        d: dict[str, Any] = {
            "job_id": self.job_id,
            "datasets": list(self.datasets),
            "tier": self.tier.value,
            "purpose": self.purpose.value,
            "epsilon": format_epsilon(self.epsilon),
        }
        if self.he_context:
            d["he_context"] = "sha256:" + sha256_hex(self.he_context)
        if self.query is not None:
            d["query"] = self.query.to_dict()
        if self.algorithm is not None:
            a = self.algorithm
            d["algorithm"] = {
                "digest": a.digest,
                "outputs": [o.to_dict() for o in a.outputs],
                "params": a.params,
                "timeout_s": a.timeout_s,
                "memory_mb": a.memory_mb,
                "blocks": a.blocks,
            }
        return d

    def digest(self) -> str:
        return digest_of(self.to_dict())


def new_job_id() -> str:
    """A fresh job id: the day it was made and 48 random bits (``job-20261202-1a2b3c4d5e6f``)."""
    return "job-" + time.strftime("%Y%m%d") + "-" + uuid.uuid4().hex[:12]
