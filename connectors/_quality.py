"""Quality of each published data version, measured next to the data, released with DP noise.

When the connector pins a new version of a dataset it measures, on the rows jobs will see
(the snapshot truncated to ``max_contributions`` rows per privacy unit):

* schema conformance against the registration (pandera's Polars backend: every declared
  column present, with a type of the declared family);
* per column: the share of null values, of values outside the registered bounds (which
  clamping will move), of category values the registration does not declare;
* rows without a privacy-unit id (dropped before truncation, so no job ever uses them);
* duplicate rows (rows minus distinct rows);
* freshness: how long after the previous version this one appeared, against the
  registration's ``update_frequency``;
* drift: the population stability index (PSI) of every column's histogram against the
  previous published version's.

Only aggregate figures leave the department, and each is a count released through
:func:`yumen.privacy.release_counts` (OpenDP) in one measurement, unless the registration
marks the column ``public``. Shares and PSI are computed from the released counts
(post-processing), so they cost nothing more, and so is the department's decision to
refuse a version that fails its ``[quality]`` thresholds: it is taken on the released
figures, never on the exact ones, so the decision itself reveals nothing the report does not.

Sensitivity. Adding or removing one privacy unit adds or removes at most k rows of the
truncated frame and leaves every other row alone. One row moves the row count by 1, the
duplicate count (rows − distinct rows) by at most 1, and for each non-public column either
its null count by 1, or its histogram by 1 and at most one of its out-of-bounds or
undeclared counts by 1. So the whole vector moves by at most k·(2 + Σ w_c) in L1, with
w_c = 2 for numeric and category columns and 1 for the others. Rows without a unit id
cannot be attributed to a person; the report assumes, as the registration does of every
unit, that one person has at most k of them, and adds k to the sensitivity
(docs/quality.md states what happens to a person with more).

Budget. The report costs ``[quality] epsilon`` (default 0.1) once per version, charged to
the department's own ledger for the dataset like a job, and recorded with the report's
digest in the log's ``dataset_registered`` entry. Under zCDP accounting the ε is read as
(ε, δ) at the dataset's δ and converted to ρ, as for jobs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import re
from fractions import Fraction
from typing import Any

import polars as pl

from yumen.canonical import canonical_json, digest_of
from yumen.catalog import Column, ColumnType, DatasetRegistration
from yumen.errors import Code, YumenError
from yumen.jobs import format_epsilon, parse_epsilon
from yumen.loss import Accounting, rho_of_epsilon

log = logging.getLogger(__name__)

__all__ = [
    "QualityConfig",
    "QualityReport",
    "measure",
    "build_report",
    "expected_interval_days",
    "parse_quality_config",
    "psi",
    "REPORT_PURPOSE",
]

REPORT_PURPOSE = "quality-report"  # signature domain of a signed report
_REPORT_VERSION = 1
# PSI's usual floor for an empty bin, so that a bin empty in one version stays finite
_PSI_FLOOR = 1e-4

_THRESHOLDS = ("max_null_rate", "max_out_of_bounds", "max_undeclared", "max_without_unit", "max_duplicates", "max_psi")


def _config_error(what: str, hint: str = "") -> YumenError:
    return YumenError(Code.CONFIG, f"[quality] {what}", hint=hint)


@dataclasses.dataclass(frozen=True, kw_only=True)
class QualityConfig:
    """The department's ``[quality]`` settings. Thresholds are shares in [0, 1] (PSI: ≥ 0).

    With ``refuse`` a version whose released figures pass a threshold is not published: the
    connector keeps serving the version it had, or withholds the dataset when it had none.
    """

    epsilon: Fraction = Fraction(1, 10)
    refuse: bool = False
    require_schema: bool = True
    bins: int = 10
    max_null_rate: Fraction | None = None
    max_out_of_bounds: Fraction | None = None
    max_undeclared: Fraction | None = None
    max_without_unit: Fraction | None = None
    max_duplicates: Fraction | None = None
    max_psi: Fraction | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.epsilon, Fraction) and self.epsilon > 0):
            raise _config_error("epsilon must be a positive decimal string such as \"0.1\"")
        if not 2 <= self.bins <= 100:
            raise _config_error(f"bins {self.bins} must be from 2 to 100")
        for name in _THRESHOLDS:
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, Fraction) or value < 0 or (name != "max_psi" and value > 1):
                raise _config_error(f"{name} must be a share from 0 to 1" if name != "max_psi" else
                                    "max_psi must be a non-negative number", "write it as a decimal string, e.g. \"0.05\"")

    @property
    def gates(self) -> bool:
        """True when a version's report must exist, and be judged, before the version is published."""
        return self.refuse or any(getattr(self, n) is not None for n in _THRESHOLDS)

    def thresholds(self) -> dict[str, str]:
        return {n: format_epsilon(getattr(self, n)) if getattr(self, n) else "0"
                for n in _THRESHOLDS if getattr(self, n) is not None}


_CONFIG_KEYS = {"epsilon", "refuse", "require_schema", "bins", *_THRESHOLDS}


def _share(name: str, value: Any) -> Fraction:
    if isinstance(value, (bool, float)):
        raise _config_error(f"{name} {value!r}: write it as a decimal string, e.g. \"0.05\"")
    try:
        f = Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        raise _config_error(f"{name} {value!r} is not a decimal number") from None
    return f


def parse_quality_config(table: Any) -> QualityConfig:
    """Parse the ``[quality]`` table; unknown keys and wrong kinds are errors that say so."""
    if table is None:
        return QualityConfig()
    if not isinstance(table, dict):
        raise _config_error("must be a table")
    unknown = sorted(set(table) - _CONFIG_KEYS)
    if unknown:
        from yumen.config import did_you_mean

        raise _config_error(f"has no key {unknown[0]!r}{did_you_mean(unknown[0], _CONFIG_KEYS)}",
                            f"known keys: {', '.join(sorted(_CONFIG_KEYS))}")
    kw: dict[str, Any] = {}
    for key, value in table.items():
        if key in ("refuse", "require_schema"):
            if not isinstance(value, bool):
                raise _config_error(f"{key} must be true or false")
            kw[key] = value
        elif key == "bins":
            if isinstance(value, bool) or not isinstance(value, int):
                raise _config_error("bins must be an integer")
            kw[key] = value
        elif key == "epsilon":
            if not isinstance(value, str):
                raise _config_error("epsilon must be a decimal string, e.g. \"0.1\"")
            try:
                kw[key] = parse_epsilon(value)
            except YumenError as e:
                raise _config_error(f"epsilon: {e.message}") from None
        else:
            kw[key] = _share(key, value)
    return QualityConfig(**kw)


# -- freshness -----------------------------------------------------------------------------
_FREQUENCIES = {"hourly": Fraction(1, 24), "daily": Fraction(1), "weekly": Fraction(7), "monthly": Fraction(31),
                "quarterly": Fraction(92), "yearly": Fraction(366), "annually": Fraction(366), "annual": Fraction(366)}
_EVERY = re.compile(r"^(?:every\s+)?(\d{1,4})\s*(?:d|days?)$")


def expected_interval_days(update_frequency: str) -> Fraction | None:
    """The longest interval between versions that ``update_frequency`` promises (None: not stated)."""
    text = update_frequency.strip().lower()
    if text in _FREQUENCIES:
        return _FREQUENCIES[text]
    m = _EVERY.match(text)
    return Fraction(int(m.group(1))) if m and int(m.group(1)) > 0 else None


# -- schema ------------------------------------------------------------------------------------
def _family(ctype: ColumnType, dtype: pl.DataType) -> pl.DataType | None:
    """The canonical dtype a column of ``dtype`` is checked as, when it belongs to the declared family."""
    if ctype is ColumnType.INT and dtype.is_integer():
        return pl.Int64
    if ctype is ColumnType.FLOAT and (dtype.is_float() or dtype.is_integer()):
        return pl.Float64
    if ctype in (ColumnType.CATEGORY, ColumnType.STRING) and dtype in (pl.String, pl.Categorical) or (
            ctype in (ColumnType.CATEGORY, ColumnType.STRING) and isinstance(dtype, pl.Enum)):
        return pl.String
    if ctype is ColumnType.DATE and (dtype == pl.Date or isinstance(dtype, pl.Datetime)):
        return pl.Date
    return None


_EXPECTED = {ColumnType.INT: pl.Int64, ColumnType.FLOAT: pl.Float64, ColumnType.CATEGORY: pl.String,
             ColumnType.STRING: pl.String, ColumnType.DATE: pl.Date}


def check_schema(frame: pl.LazyFrame, reg: DatasetRegistration) -> list[dict[str, str]]:
    """Schema problems of ``frame`` against the registration, found by pandera (empty: conforms).

    Types are compared by family (any integer width for ``int``, any float or integer for
    ``float``, text or categorical for ``category`` and ``string``, date or datetime for
    ``date``): each column of the declared family is cast to the family's canonical type
    first, so pandera reports only a missing column or a type outside the family. Only the
    schema is read, never a value.
    """
    import pandera.polars as pa

    schema = frame.collect_schema()
    casts = []
    for col in reg.columns:
        if col.name in schema:
            canonical = _family(col.type, schema[col.name])
            if canonical is not None:
                casts.append(pl.col(col.name).cast(canonical, strict=False) if canonical != pl.Date
                             else pl.col(col.name).cast(pl.Date, strict=False))
    checked = frame.with_columns(casts) if casts else frame
    model = pa.DataFrameSchema({c.name: pa.Column(_EXPECTED[c.type], nullable=True) for c in reg.columns},
                               strict=False)
    try:
        model.validate(checked.head(0), lazy=True)
    except pa.errors.SchemaErrors as e:
        cases = e.failure_cases
        problems = []
        for row in cases.iter_rows(named=True):
            column = row.get("column") or row.get("failure_case") or ""
            check = str(row.get("check") or "")
            what = "missing" if check == "column_in_dataframe" else f"type {row.get('failure_case')} is not {check}"
            problems.append({"column": str(column), "problem": what})
        return sorted(problems, key=lambda p: (p["column"], p["problem"]))
    return []


# -- measuring ------------------------------------------------------------------------------------
def _numeric_edges(col: Column, bins: int) -> list[float]:
    lo, hi = float(col.lower), float(col.upper)  # type: ignore[arg-type]
    return [lo + (hi - lo) * i / bins for i in range(1, bins)]


def _bin_labels(col: Column, bins: int) -> list[str]:
    if col.type is ColumnType.CATEGORY:
        return list(col.categories)
    if col.numeric:
        return [f"b{i}" for i in range(bins)]
    return []


def measure(frame: pl.DataFrame, reg: DatasetRegistration, *, bins: int, rows_without_unit: int) -> dict[str, int]:
    """The exact counts of a report, as one flat mapping (``name`` → count). Stays at the department.

    ``frame`` is the truncated frame jobs see; names are ``rows``, ``without_unit``,
    ``duplicates`` and ``COLUMN/nulls``, ``COLUMN/out_of_bounds``, ``COLUMN/undeclared``,
    ``COLUMN/hist/LABEL``. A declared column the frame lacks is measured as all null.
    """
    present = set(frame.columns)
    exprs: list[pl.Expr] = [pl.len().alias("rows")]
    # each histogrammed column gets a small integer code per row (its bin, or its category's
    # position; null when missing or undeclared), counted by one group-by pass per column:
    # one comparison per bin or category per row would be a full pass each
    codes: dict[str, tuple[str, list[str]]] = {}
    code_exprs: list[pl.Expr] = []
    for col in reg.columns:
        if col.name not in present:
            continue
        c = pl.col(col.name)
        if col.type is ColumnType.FLOAT:
            c = c.cast(pl.Float64, strict=False)
            missing = c.is_null() | c.is_nan()
        elif col.numeric:
            c = c.cast(pl.Float64, strict=False)
            missing = c.is_null()
        else:
            missing = c.is_null()
        exprs.append(missing.sum().alias(f"{col.name}/nulls"))
        code = f"__code_{len(codes)}"
        if col.numeric:
            valid = ~missing
            exprs.append((valid & ((c < col.lower) | (c > col.upper))).sum().alias(f"{col.name}/out_of_bounds"))
            clamped = c.clip(col.lower, col.upper)
            index = pl.lit(0, dtype=pl.Int32)
            for e in _numeric_edges(col, bins):
                index = index + (clamped >= e).cast(pl.Int32)
            code_exprs.append(pl.when(valid).then(index).otherwise(None).alias(code))
            codes[col.name] = (code, [f"b{i}" for i in range(bins)])
        elif col.type is ColumnType.CATEGORY:
            text = pl.col(col.name).cast(pl.String, strict=False)
            declared = text.is_in(list(col.categories))
            exprs.append((text.is_not_null() & ~declared).sum().alias(f"{col.name}/undeclared"))
            code_exprs.append(text.replace_strict(list(col.categories), list(range(len(col.categories))), default=None,
                                                  return_dtype=pl.Int32).alias(code))
            codes[col.name] = (code, list(col.categories))
    lazy = frame.lazy().with_columns(code_exprs) if code_exprs else frame.lazy()
    queries = [lazy.select(exprs)] + [lazy.group_by(code).agg(pl.len().alias("n")) for code, _ in codes.values()]
    results = pl.collect_all(queries)
    out = results[0].row(0, named=True)
    for (name, (code, labels)), found in zip(codes.items(), results[1:]):
        per_code = {k: v for k, v in found.iter_rows() if k is not None}
        for i, label in enumerate(labels):
            out[f"{name}/hist/{label}"] = per_code.get(i, 0)
    counts = {k: int(v or 0) for k, v in out.items()}
    rows = counts["rows"]
    for col in reg.columns:
        if col.name not in present:  # missing column: all its values are missing
            counts[f"{col.name}/nulls"] = rows
            if col.numeric:
                counts[f"{col.name}/out_of_bounds"] = 0
            if col.type is ColumnType.CATEGORY:
                counts[f"{col.name}/undeclared"] = 0
            for label in _bin_labels(col, bins):
                counts[f"{col.name}/hist/{label}"] = 0
    counts["without_unit"] = int(rows_without_unit)
    counts["duplicates"] = rows - (frame.n_unique() if rows else 0)
    return counts


def _weight(col: Column) -> int:
    return 2 if (col.numeric or col.type is ColumnType.CATEGORY) else 1


def sensitivity(reg: DatasetRegistration) -> int:
    """L1 sensitivity of the noised part of the report's count vector (see the module docstring)."""
    k = reg.privacy_unit.max_contributions
    return k * (3 + sum(_weight(c) for c in reg.columns if not c.public))


def _is_public(name: str, reg: DatasetRegistration) -> bool:
    column = name.split("/", 1)[0] if "/" in name else ""
    if column:
        return reg.column(column).public
    return all(c.public for c in reg.columns)  # table-level counts only when every column is public


def psi(current: list[float], previous: list[float]) -> float | None:
    """Population stability index of two histograms (negative noisy counts read as 0)."""
    cur = [max(v, 0.0) for v in current]
    prev = [max(v, 0.0) for v in previous]
    tc, tp = sum(cur), sum(prev)
    if tc <= 0 or tp <= 0 or len(cur) != len(prev):
        return None
    total = 0.0
    for a, b in zip(cur, prev):
        p, q = max(a / tc, _PSI_FLOOR), max(b / tp, _PSI_FLOOR)
        total += (p - q) * math.log(p / q)
    return total


@dataclasses.dataclass(frozen=True, kw_only=True)
class QualityReport:
    """A signed-to-be report: ``body`` is canonical-JSON-able and holds only released figures."""

    body: dict[str, Any]

    @property
    def passed(self) -> bool:
        return bool(self.body["passed"])

    @property
    def dataset(self) -> str:
        return str(self.body["dataset"])

    @property
    def version(self) -> str:
        return str(self.body["version"])

    def payload(self) -> bytes:
        return canonical_json(self.body)

    def digest(self) -> str:
        return digest_of(self.body)

    def histograms(self) -> dict[str, list[float]]:
        return {name: list(c.get("histogram", [])) for name, c in self.body["columns"].items() if c.get("histogram")}

    @classmethod
    def from_payload(cls, payload: bytes) -> "QualityReport":
        import json

        try:
            body = json.loads(payload)
        except ValueError:
            raise YumenError(Code.VERIFICATION_FAILED, "the quality report is not JSON") from None
        if not isinstance(body, dict) or body.get("v") != _REPORT_VERSION:
            raise YumenError(Code.VERIFICATION_FAILED, "the quality report has an unknown format")
        for key in ("dataset", "version", "passed", "columns", "loss"):
            if key not in body:
                raise YumenError(Code.VERIFICATION_FAILED, f"the quality report has no {key!r}")
        return cls(body=body)


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return min(max(num / den, 0.0), 1.0)


def build_report(
    *, reg: DatasetRegistration, counts: dict[str, int], schema_problems: list[dict[str, str]], config: QualityConfig,
    loss: Fraction | None, accounting: Accounting, previous: "QualityReport | None", first_seen_ms: int,
) -> QualityReport:
    """Release the noised counts (``loss`` None: the department's budget had no room) and judge them.

    Everything judged and reported is a released figure: exact for public columns,
    otherwise noisy. The exact ``counts`` never enter the report.
    """
    from yumen.privacy import release_counts

    unmeasured = counts is None  # the rows could not be read against the registration
    counts = counts or {}
    noised = {k: v for k, v in counts.items() if not _is_public(k, reg)}
    released: dict[str, float | None] = {k: float(v) for k, v in counts.items() if k not in noised}
    noise: dict[str, Any] = {}
    if noised and loss is not None:
        release = release_counts(noised, sensitivity=sensitivity(reg), loss=loss, accounting=accounting.value,
                                 name="quality")
        released.update(release.values)
        noise = {"mechanism": release.mechanism, "scale": next(iter(release.noise_scale.values())),
                 "ci95": next(iter(release.accuracy.values())), "sensitivity": sensitivity(reg)}
        spent = release.epsilon
    else:
        released.update({k: None for k in noised})
        spent = Fraction(0)
    rows = released.get("rows")
    columns: dict[str, Any] = {}
    prev_hist = previous.histograms() if previous is not None else {}
    for col in reg.columns:
        entry: dict[str, Any] = {"public": col.public,
                                 "null_rate": _ratio(released.get(f"{col.name}/nulls"), rows)}
        labels = _bin_labels(col, config.bins)
        if labels:
            hist = [released.get(f"{col.name}/hist/{lab}") for lab in labels]
            present = [h for h in hist if h is not None]
            if len(present) == len(hist):
                entry["histogram"] = present
                entry["psi"] = psi(present, prev_hist[col.name]) if col.name in prev_hist else None
        if col.numeric:
            entry["out_of_bounds"] = _ratio(released.get(f"{col.name}/out_of_bounds"), rows)
        if col.type is ColumnType.CATEGORY:
            entry["undeclared"] = _ratio(released.get(f"{col.name}/undeclared"), rows)
        columns[col.name] = entry
    total_seen = None if rows is None or released.get("without_unit") is None else rows + max(released["without_unit"], 0.0)
    table = {
        "rows": rows,
        "without_unit": _ratio(released.get("without_unit"), total_seen),
        "duplicates": _ratio(released.get("duplicates"), rows),
    }
    expected = expected_interval_days(reg.update_frequency)
    freshness: dict[str, Any] = {"update_frequency": reg.update_frequency,
                                 "expected_days": float(expected) if expected is not None else None,
                                 "first_seen": _iso(first_seen_ms)}
    if previous is not None:
        interval = (first_seen_ms - int(previous.body["freshness"]["first_seen_ms"])) / 86_400_000
        freshness["days_since_previous"] = round(interval, 3)
        freshness["late"] = bool(expected is not None and interval > float(expected))
    freshness["first_seen_ms"] = first_seen_ms
    failures = _judge(config, schema_problems, columns, table)
    if unmeasured and not failures:
        failures = ["the rows could not be measured against the registration"]
    body = {
        "v": _REPORT_VERSION,
        "dataset": reg.id,
        "version": reg.version,
        "registration_digest": reg.digest(),
        "previous_version": previous.version if previous is not None else "",
        "schema": {"conforms": not schema_problems, "problems": schema_problems},
        "table": table,
        "columns": columns,
        "freshness": freshness,
        "loss": {"accounting": accounting.value,
                 ("epsilon" if accounting is Accounting.PURE else "rho"): f"{spent.numerator}/{spent.denominator}",
                 "withheld": loss is None and bool(noised), "unmeasured": unmeasured},
        "noise": noise,
        "thresholds": config.thresholds(),
        "failures": failures,
        "passed": not failures,
    }
    return QualityReport(body=body)


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _judge(config: QualityConfig, schema: list[dict[str, str]], columns: dict[str, Any], table: dict[str, Any]) -> list[str]:
    """The thresholds the released figures pass (one line each); empty when the version passes."""
    out = []
    if config.require_schema and schema:
        out.append("schema: " + "; ".join(f"{p['column']} {p['problem']}" for p in schema))
    per_column = (("max_null_rate", "null_rate"), ("max_out_of_bounds", "out_of_bounds"),
                  ("max_undeclared", "undeclared"), ("max_psi", "psi"))
    for limit_name, key in per_column:
        limit = getattr(config, limit_name)
        if limit is None:
            continue
        for name, entry in columns.items():
            value = entry.get(key)
            if value is not None and value > float(limit):
                out.append(f"{name} {key} {value:.4f} above {limit_name} {float(limit):g}")
    for limit_name, key in (("max_without_unit", "without_unit"), ("max_duplicates", "duplicates")):
        limit = getattr(config, limit_name)
        value = table.get(key)
        if limit is not None and value is not None and value > float(limit):
            out.append(f"{key} {value:.4f} above {limit_name} {float(limit):g}")
    return out


def report_loss(config: QualityConfig, reg: DatasetRegistration) -> tuple[Accounting, Fraction]:
    """What one report spends, in the dataset's accounting (ε, or ρ at its δ)."""
    unit = reg.privacy_unit
    if unit.accounting is Accounting.ZCDP:
        return Accounting.ZCDP, rho_of_epsilon(config.epsilon, unit.delta)
    return Accounting.PURE, config.epsilon
