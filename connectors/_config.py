"""Connector configuration: the one file a department writes.

```toml
[connector]
id = "weather-bureau"            # must equal the name in the connector's certificate
department = "weather-bureau"
broker = "127.0.0.1:7443"        # the connector dials out; it opens no port of its own
state_dir = "state"              # local ledger, receipts, snapshots
sandbox = "bwrap"                # bwrap | docker | gvisor
sandbox_pool = 2                 # started, never-used sandboxes kept ready per job shape (0: off)
max_parallel_jobs = 2
snapshot_retention_days = 90     # keep pinned data versions this long, for audit re-execution
allow_reexecution = false        # true: the department consents to auditors re-running logged jobs
metrics = "127.0.0.1:9464"       # Prometheus /metrics (empty: off)
health = ""                      # plaintext HTTP /healthz and /readyz for kubelet probes (empty: off)

[tls]
ca = "pki/ca.crt"
cert = "pki/weather-bureau.crt"
key = "pki/weather-bureau.key"
broker_certificate = "pki/broker.crt"   # pinned at enrolment: tickets must verify against it

[timing]                         # results of algorithms leave at a deadline fixed from their limits
allowance_s = 10                 # per job, on top of its time limit: pinning, staging, sandbox start-up
wave_slack_s = 0.5               # per wave of sample-and-aggregate blocks
block_parallelism = 0            # blocks of one job run at once (0: min(4, cores))

[local_policy]                   # the department's own limits, checked before data is touched
max_epsilon_per_job = "1"
tiers = ["query", "approved-algorithm", "custom-algorithm"]
purposes = ["public-interest", "research", "commercial"]
dataset_epsilon_cap = "100"      # the department's own ledger: per dataset per period
period_days = 30

[quality]                        # each new data version's quality report (docs/quality.md)
epsilon = "0.1"                  # its privacy loss, once per version, from the department's own ledger
refuse = false                   # true: do not publish a version that fails a threshold below
max_null_rate = "0.2"            # shares from 0 to 1, judged on the released (noisy) figures
max_psi = "0.25"                 # drift against the previous published version

[[datasets]]                     # registration fields (docs/configuration.md) and a source
id = "weather-daily"
title = "Daily readings of weather stations"
level = "L1"
columns = [ { name = "temp_mean_c", type = "float", unit = "°C", lower = -40, upper = 45 } ]
source = { kind = "parquet", path = "data/weather-daily.parquet" }
# verification = { subject = "station_id", fields = ["region"], purposes = ["public-interest"],
#                  per_license_per_day = 1000, per_subject_per_day = 3, reveal_mismatches = false }
```
"""

from __future__ import annotations

import dataclasses
import difflib
from fractions import Fraction
from pathlib import Path
from typing import Any

from yumen.catalog import DatasetRegistration
from yumen.connectors._quality import QualityConfig, parse_quality_config
from yumen.connectors._sources import SourceSpec
from yumen.connectors._timing import Timing
from yumen.config import Table, read_toml, unknown_key_error
from yumen.errors import Code, YumenError
from yumen.jobs import Purpose, Tier, format_epsilon, parse_epsilon
from yumen.rpc import TlsFiles
from yumen.sandboxes import BACKENDS

__all__ = ["ConnectorConfig", "DatasetConfig", "LocalPolicy", "load_connector_config"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LocalPolicy:
    """The department's own usage limits; the safe default allows what the broker allows."""

    max_epsilon_per_job: Fraction = Fraction(1)
    tiers: frozenset[str] = frozenset(t.value for t in Tier)
    purposes: frozenset[str] = frozenset(p.value for p in Purpose)
    dataset_epsilon_cap: Fraction = Fraction(100)  # per dataset per period, all operators together
    period_days: int = 30

    def refusal(self, *, tier: str, purpose: str, epsilon: Fraction) -> str:
        """Why the department refuses this job, or ``""`` when it does not."""
        if tier not in self.tiers:
            return f"the department does not accept {tier} jobs (accepted: {', '.join(sorted(self.tiers))})"
        if purpose not in self.purposes:
            return f"the department does not accept the purpose {purpose} (accepted: {', '.join(sorted(self.purposes))})"
        if epsilon > self.max_epsilon_per_job:
            return f"ε {format_epsilon(epsilon)} is above the department's limit of {format_epsilon(self.max_epsilon_per_job)} per job"
        return ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class DatasetConfig:
    registration: DatasetRegistration  # version is empty here; the connector fills it from the source
    source: SourceSpec
    verification: Any = None  # yumen.connectors._verification.VerificationPolicy, or None: not verifiable


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConnectorConfig:
    """The connector's settings. The defaults here (and in LocalPolicy, Timing, QualityConfig)
    are the only ones (docs/configuration.md)."""

    id: str
    department: str
    broker: str
    state_dir: Path  # default: "state" next to the config file
    tls: TlsFiles
    broker_certificate: Path
    datasets: tuple[DatasetConfig, ...]
    path: Path
    sandbox: str = "bwrap"
    max_parallel_jobs: int = 2
    local_policy: LocalPolicy = LocalPolicy()
    snapshot_retention_days: float = 90.0
    # Auditors may ask a department to re-run a logged job on the same data version; that
    # touches the data again, so it happens only when the department says so.
    allow_reexecution: bool = False
    metrics_listen: str = ""
    health_listen: str = ""  # /healthz, and /readyz while the stream to the broker is up (yumen.health)
    timing: Timing = Timing()
    quality: QualityConfig = QualityConfig()
    scratch_dir: Path | None = None  # where jobs stage files (default /tmp/yumen-scratch-<id>)
    sandbox_pool: int = 2  # warm sandboxes per job shape, every backend (docs/sandbox.md); 0 turns it off

    def __post_init__(self) -> None:
        if self.sandbox not in BACKENDS:
            raise YumenError(Code.CONFIG, f"[connector] sandbox {self.sandbox!r} is unknown",
                             hint=f"use {', '.join(BACKENDS)}")
        if not 1 <= self.max_parallel_jobs <= 256:
            raise YumenError(Code.CONFIG, "[connector] max_parallel_jobs must be from 1 to 256")
        if not self.snapshot_retention_days >= 0:
            raise YumenError(Code.CONFIG, "[connector] snapshot_retention_days must not be negative")
        if not 0 <= self.sandbox_pool <= 64:
            raise YumenError(Code.CONFIG, f"[connector] sandbox_pool must be an integer from 0 to 64, got {self.sandbox_pool}",
                             hint="it is the number of warm sandboxes kept ready per job shape; 0 turns them off")


# The keys of each table. [[datasets]] entries take the registration's fields (yumen.catalog)
# plus their source and verification; every other key is an error naming the closest one.
_TOP = ("connector", "tls", "timing", "local_policy", "quality", "datasets")
_CONNECTOR = {"id": "str", "department": "str", "broker": "str", "state_dir": "str", "sandbox": "str",
              "max_parallel_jobs": "int", "snapshot_retention_days": "number", "allow_reexecution": "bool",
              "metrics": "str", "health": "str", "scratch_dir": "str", "sandbox_pool": "int"}
_TLS = ("ca", "cert", "key", "broker_certificate")
_LOCAL_POLICY = {"max_epsilon_per_job": "decimal", "tiers": "list", "purposes": "list",
                 "dataset_epsilon_cap": "decimal", "period_days": "int"}
_TIMING = {"allowance_s": "number", "wave_slack_s": "number", "block_parallelism": "int"}
_DATASET = {"id": "str", "title": "str", "description": "str", "department": "str", "level": "str",
            "columns": None, "privacy_unit": None, "update_frequency": "str", "source_system": "str",
            "price_class": "str", "source": None, "verification": None}
_COLUMN = {"name": "str", "type": "str", "unit": "str", "description": "str", "lower": "number",
           "upper": "number", "categories": "list", "public": "bool"}
_PRIVACY_UNIT = {"column": "str", "max_contributions": "int", "namespace": "str", "shared": "bool",
                 "accounting": "str", "delta": "decimal", "lifetime_epsilon": "decimal"}


def _err(path: Path, what: str, hint: str = "") -> YumenError:
    return YumenError(Code.CONFIG, f"connector config {path}: {what}", hint=hint)


def _checked(table: Table, kinds: dict[str, Any]) -> dict[str, Any]:
    """The table's keys and values, each value checked against its kind (None: checked later)."""
    return {k: (table.get(k, kinds[k]) if kinds[k] else v) for k, v in table.raw.items()}


def _local_policy(t: Table) -> LocalPolicy:
    kw: dict[str, Any] = {}
    v = _checked(t, _LOCAL_POLICY)
    try:
        for key in ("max_epsilon_per_job", "dataset_epsilon_cap"):
            if key in v:
                kw[key] = parse_epsilon(str(v[key]))
    except YumenError as e:
        raise t.error(e.message) from None
    for key, known in (("tiers", [x.value for x in Tier]), ("purposes", [x.value for x in Purpose])):
        if key in v:
            for item in v[key]:
                if item not in known:
                    close = difflib.get_close_matches(item, known, n=1)
                    raise t.error(f"{key}: {item!r} is not one of {', '.join(known)}"
                                  + (f" (did you mean {close[0]!r}?)" if close else ""))
            kw[key] = frozenset(v[key])
    if "period_days" in v:
        if v["period_days"] < 1:
            raise t.error("period_days must be at least 1")
        kw["period_days"] = v["period_days"]
    return LocalPolicy(**kw)


def _dataset(raw: Any, i: int, source: str, department: str, base: Path) -> DatasetConfig:
    label = f"datasets[{i}]"
    if isinstance(raw, dict) and isinstance(raw.get("id"), str):
        label += f" ({raw['id']})"
    t = Table(raw, _DATASET, where=label, source=source)
    d = _checked(t, _DATASET)
    columns = d.get("columns", [])
    if not isinstance(columns, list) or not all(isinstance(c, dict) for c in columns):
        raise t.error("columns must be a list of tables, e.g. [ { name = \"x\", type = \"float\" } ]")
    d["columns"] = [_checked(Table(c, _COLUMN, where=f"{label} columns[{n}]", source=source), _COLUMN)
                    for n, c in enumerate(columns)]
    if "privacy_unit" in d:
        d["privacy_unit"] = _checked(Table(d["privacy_unit"], _PRIVACY_UNIT, where=f"{label} privacy_unit",
                                           source=source), _PRIVACY_UNIT)
    src = d.pop("source", None)
    verification = d.pop("verification", None)
    if not isinstance(src, dict):
        raise t.error("has no source table", 'add source = { kind = "parquet", path = "…" }')
    d.setdefault("department", department)
    if d["department"] != department:
        raise t.error(f"names department {d['department']}, but this connector serves {department}")
    try:
        reg = DatasetRegistration.from_dict(d)
        spec = SourceSpec.from_dict(src, base_dir=base)
        policy = None
        if verification is not None:
            from yumen.connectors._verification import VerificationPolicy

            policy = VerificationPolicy.from_config(verification, reg)
    except YumenError as e:
        raise t.error(e.message, e.hint) from None
    return DatasetConfig(registration=reg, source=spec, verification=policy)


def load_connector_config(path: Path) -> ConnectorConfig:
    """Parse the department's TOML file; an unknown key anywhere, or a value of the wrong type,
    is an error naming the file, the table, the key and the closest known key."""
    path = Path(path)
    doc, p = read_toml(path, "connector config")
    base = path.parent.resolve()
    source = f"connector config {path}"
    for name in doc:
        if name not in _TOP:
            raise unknown_key_error(name, _TOP, where="", source=source)

    c = Table(doc.get("connector"), _CONNECTOR, where="[connector]", source=source)
    tls = Table(doc.get("tls"), _TLS, where="[tls]", source=source)
    for key in ("id", "department", "broker"):
        if not c.get(key, "str", ""):
            raise c.error(f"{key} is required")
    for key in _TLS:
        if not tls.get(key, "str", ""):
            raise tls.error(f"{key} is required", "point it at the files `yumen pki issue` wrote")
    local = _local_policy(Table(doc.get("local_policy"), _LOCAL_POLICY, where="[local_policy]", source=source))
    tm = Table(doc.get("timing"), _TIMING, where="[timing]", source=source)
    try:
        timing = Timing(**_checked(tm, _TIMING))
    except YumenError as e:
        raise _err(path, e.message) from None
    raw = doc.get("datasets") or []
    if not isinstance(raw, list):
        raise _err(path, "datasets must be an array of tables: write each one as [[datasets]]")
    if not raw:
        raise _err(path, "no [[datasets]] are configured", "add at least one dataset with its source")
    department = c.get("department", "str")
    datasets = [_dataset(d, i, source, department, base) for i, d in enumerate(raw)]
    ids = [d.registration.id for d in datasets]
    if len(set(ids)) != len(ids):
        raise _err(path, "a dataset id appears twice")
    try:
        quality = parse_quality_config(doc.get("quality"))
    except YumenError as e:
        raise _err(path, e.message, e.hint) from None
    kw: dict[str, Any] = {}
    v = _checked(c, _CONNECTOR)
    for key in ("sandbox", "sandbox_pool", "max_parallel_jobs", "allow_reexecution"):
        if key in v:
            kw[key] = v[key]
    if "snapshot_retention_days" in v:
        kw["snapshot_retention_days"] = float(v["snapshot_retention_days"])
    if "metrics" in v:
        kw["metrics_listen"] = v["metrics"]
    if "health" in v:
        kw["health_listen"] = v["health"]
    if v.get("scratch_dir"):
        kw["scratch_dir"] = p(v["scratch_dir"])
    try:
        return ConnectorConfig(
            id=v["id"], department=department, broker=v["broker"], state_dir=p(v.get("state_dir", "state")),
            tls=TlsFiles(ca=p(tls.get("ca", "str")), cert=p(tls.get("cert", "str")), key=p(tls.get("key", "str"))),
            broker_certificate=p(tls.get("broker_certificate", "str")), local_policy=local,
            datasets=tuple(datasets), path=path, timing=timing, quality=quality, **kw,
        )
    except YumenError as e:
        raise _err(path, e.message, e.hint) from None
