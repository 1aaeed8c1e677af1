"""Sample data for the audit tests: a plausible history of every entry type."""

from __future__ import annotations

import base64
import hashlib

from yumen.audit import DatasetRegistered, JobDecided, JobExecuted, JobReleased, LicenseChanged, PolicyChanged

ORIGIN = "yumen.test/log"
T = "2026-11-27T03:30:00Z"


def digest(n: int | str) -> str:
    return "sha256:" + hashlib.sha256(str(n).encode()).hexdigest()


def sample_entries(jobs: int = 3) -> list:
    """A plausible history: a dataset, a policy, a license, then jobs (decided, executed, released)."""
    out = [
        DatasetRegistered(time=T, dataset_id="weather-2025", version=digest("ds1"), department="cma",
                          registration_digest=digest("reg1"), level="L2"),
        PolicyChanged(time=T, policy_version=digest("pol1"), changed_by="admin-1", summary="initial policy"),
        LicenseChanged(time=T, license_id="LIC-7", operator="op-1", action="issued", license_digest=digest("lic"),
                       changed_by="admin-1"),
    ]
    for j in range(jobs):
        jid = f"job-{j}"
        out.append(JobDecided(time=T, job_id=jid, allowed=True, policy_version=digest("pol1"), matched_rule="p, operator, L2, query",
                              obligations={"mechanism": "laplace", "epsilon_max": "0.5"}, operator="op-1", license_id="LIC-7",
                              datasets=("weather-2025",), tier="query", purpose="research", epsilon="0.25", reason="",
                              request_digest=digest(jid)))
        out.append(JobExecuted(time=T, job_id=jid, connector="conn-cma", dataset_id="weather-2025", dataset_version=digest("ds1"),
                               mechanism="laplace", mechanism_params={"scale": "4"}, epsilon_charged="0.25",
                               output_commitment=digest(f"c{j}"), metering={"rows": 1000, "cpu_ms": 12},
                               receipt_signature=base64.b64encode(bytes(64)).decode()))
        out.append(JobReleased(time=T, job_id=jid, result_digest=digest(f"r{j}"), bill={"amount": "1.50", "currency": "CNY"}))
    return out


