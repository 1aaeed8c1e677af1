"""Connector configuration: the one file a department writes.

```toml
[connector]
id = "weather-bureau"            # must equal the name in the connector's certificate
department = "weather-bureau"
broker = "127.0.0.1:7443"        # the connector dials out; it opens no port of its own
state_dir = "state"              # local ledger, receipts, snapshots
sandbox = "bwrap"                # bwrap | docker | gvisor
sandbox_pool = 2                 # docker/gvisor: started, never-used containers kept ready (0: off)
max_parallel_jobs = 2
snapshot_retention_days = 90     # keep pinned data versions this long, for audit re-execution
allow_reexecution = true         # the department consents to auditors re-running logged jobs
metrics = "127.0.0.1:9464"       # Prometheus /metrics (empty: off)

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

[[datasets]]                     # registration fields (see docs/catalog.md) and a source
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
from fractions import Fraction
from pathlib import Path
from typing import Any

from yumen.catalog import DatasetRegistration
from yumen.connectors._quality import QualityConfig, parse_quality_config
from yumen.connectors._sources import SourceSpec
from yumen.connectors._timing import Timing
from yumen.config import read_toml
from yumen.errors import Code, YumenError
from yumen.jobs import Purpose, Tier, format_epsilon, parse_epsilon
from yumen.rpc import TlsFiles

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
    id: str
    department: str
    broker: str
    state_dir: Path
    sandbox: str
    max_parallel_jobs: int
    tls: TlsFiles
    broker_certificate: Path
    local_policy: LocalPolicy
    datasets: tuple[DatasetConfig, ...]
    path: Path
    snapshot_retention_days: float = 90.0
    allow_reexecution: bool = True
    metrics_listen: str = ""
    timing: Timing = Timing()
    quality: QualityConfig = QualityConfig()
    scratch_dir: Path | None = None  # where jobs stage files (default /tmp/yumen-scratch-<id>)
    sandbox_pool: int = 2  # warm containers per shape for docker/gvisor (docs/sandbox.md); 0 turns it off


def _err(path: Path, what: str, hint: str = "") -> YumenError:
    return YumenError(Code.CONFIG, f"connector config {path}: {what}", hint=hint)


def load_connector_config(path: Path) -> ConnectorConfig:
    path = Path(path)
    doc, p = read_toml(path, "connector config")
    base = path.parent.resolve()

    c = doc.get("connector") or {}
    tls = doc.get("tls") or {}
    for key in ("id", "department", "broker"):
        if not c.get(key):
            raise _err(path, f"[connector] {key} is required")
    for key in ("ca", "cert", "key", "broker_certificate"):
        if not tls.get(key):
            raise _err(path, f"[tls] {key} is required", "point it at the files `yumen pki issue` wrote")
    lp = doc.get("local_policy") or {}
    try:
        local = LocalPolicy(
            max_epsilon_per_job=parse_epsilon(str(lp.get("max_epsilon_per_job", "1"))),
            tiers=frozenset(lp.get("tiers", [t.value for t in Tier])),
            purposes=frozenset(lp.get("purposes", [q.value for q in Purpose])),
            dataset_epsilon_cap=parse_epsilon(str(lp.get("dataset_epsilon_cap", "100"))),
            period_days=int(lp.get("period_days", 30)),
        )
        if local.period_days < 1:
            raise YumenError(Code.CONFIG, "period_days must be at least 1")
    except YumenError as e:
        raise _err(path, f"[local_policy] {e.message}") from None
    tm = doc.get("timing") or {}
    try:
        timing = Timing(
            allowance_s=float(tm.get("allowance_s", Timing.allowance_s)),
            wave_slack_s=float(tm.get("wave_slack_s", Timing.wave_slack_s)),
            block_parallelism=int(tm.get("block_parallelism", Timing.block_parallelism)),
        )
    except (TypeError, ValueError):
        raise _err(path, "[timing] values must be numbers of seconds (block_parallelism an integer)") from None
    except YumenError as e:
        raise _err(path, e.message) from None
    datasets = []
    raw = doc.get("datasets") or []
    if not raw:
        raise _err(path, "no [[datasets]] are configured", "add at least one dataset with its source")
    for i, d in enumerate(raw):
        d = dict(d)
        src = d.pop("source", None)
        verification = d.pop("verification", None)
        if not isinstance(src, dict):
            raise _err(path, f"datasets[{i}] ({d.get('id', '?')}) has no source table", 'add source = { kind = "parquet", path = "…" }')
        d.setdefault("department", c["department"])
        if d["department"] != c["department"]:
            raise _err(path, f"dataset {d.get('id')} names department {d['department']}, but this connector serves {c['department']}")
        try:
            reg = DatasetRegistration.from_dict(d)
            spec = SourceSpec.from_dict(src, base_dir=base)
            policy = None
            if verification is not None:
                from yumen.connectors._verification import VerificationPolicy

                policy = VerificationPolicy.from_config(verification, reg)
        except YumenError as e:
            raise _err(path, f"datasets[{i}] ({d.get('id', '?')}): {e.message}", e.hint) from None
        datasets.append(DatasetConfig(registration=reg, source=spec, verification=policy))
    ids = [d.registration.id for d in datasets]
    if len(set(ids)) != len(ids):
        raise _err(path, "a dataset id appears twice")
    try:
        quality = parse_quality_config(doc.get("quality"))
    except YumenError as e:
        raise _err(path, e.message, e.hint) from None
    sandbox = str(c.get("sandbox", "bwrap"))
    if sandbox not in ("bwrap", "docker", "gvisor"):
        raise _err(path, f"sandbox {sandbox!r} is unknown", "use bwrap, docker or gvisor")
    pool = c.get("sandbox_pool", 2)
    if isinstance(pool, bool) or not isinstance(pool, int) or not 0 <= pool <= 64:
        raise _err(path, f"sandbox_pool must be an integer from 0 to 64, got {pool!r}",
                   "it is the number of warm Docker/gVisor sandboxes kept ready; 0 turns them off")
    return ConnectorConfig(
        id=str(c["id"]), department=str(c["department"]), broker=str(c["broker"]),
        state_dir=p(str(c.get("state_dir", "state"))), sandbox=sandbox,
        max_parallel_jobs=max(1, int(c.get("max_parallel_jobs", 2))),
        tls=TlsFiles(ca=p(tls["ca"]), cert=p(tls["cert"]), key=p(tls["key"])),
        broker_certificate=p(tls["broker_certificate"]), local_policy=local,
        datasets=tuple(datasets), path=path,
        snapshot_retention_days=float(c.get("snapshot_retention_days", 90)),
        allow_reexecution=bool(c.get("allow_reexecution", True)),
        metrics_listen=str(c.get("metrics", "")),
        timing=timing,
        quality=quality,
        scratch_dir=p(str(c["scratch_dir"])) if c.get("scratch_dir") else None,
        sandbox_pool=pool,
    )
