"""Data stewardship end to end: quality reports, feedback, verification queries, destruction confirmations.

Real broker and connector processes over mutual TLS (the shared local space of conftest.py).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from yumen.destruction import MECHANISM


def _export(auditor, where: Path) -> list[dict]:
    proc = auditor("audit", "export", "--out", str(where))
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line)["entry"] for line in (where / "entries.jsonl").read_text().splitlines()]


def _department(space, department: str, *args: str) -> dict:
    """A department's own command, run where its connector runs (its config, its state)."""
    proc = subprocess.run([sys.executable, "-m", "yumen", "connector", *args, "--config", str(space.root / f"{department}.toml"),
                           "--json"], capture_output=True, text=True, timeout=120, cwd=space.root, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _until(check, *, timeout: float = 90.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.5)


# -- quality ----------------------------------------------------------------------------------
def test_a_quality_report_reaches_the_catalog_with_its_digest_and_the_log(space, operator, auditor, tmp_path):
    shown = _until(lambda: (lambda d: d if d["quality"] else None)(operator.json("catalog", "show", "bus-trips")),
                   what="a quality report for bus-trips")
    report, digest = shown["quality"], shown["quality_digest"]
    assert report["dataset"] == "bus-trips" and report["version"] == shown["version"]
    assert digest.startswith("sha256:") and report["passed"] is True
    assert report["loss"]["withheld"] is False and report["noise"]["mechanism"]  # released with noise
    assert set(report["columns"]) == {c["name"] for c in shown["columns"]}
    text = operator("catalog", "show", "bus-trips")
    assert text.returncode == 0 and f"quality report {digest}" in text.stdout
    # the log records the digest with the version: in its registration, or in an entry of its own
    entries = _export(auditor, tmp_path / "log")
    logged = [e for e in entries if e.get("dataset_id") == "bus-trips" and (
        (e["type"] == "dataset_registered" and e["version"] == shown["version"]
         and (e.get("details") or {}).get("quality", {}).get("digest") == digest)
        or (e["type"] == "stewardship" and e["kind"] == "quality_report" and e["dataset_version"] == shown["version"]
            and e["details"]["quality"]["digest"] == digest))]
    assert logged, "the report's digest is not in the log"
    # the department sees the same report, published
    mine = _department(space, "transport-dept", "quality", "--dataset", "bus-trips")["reports"]
    assert any(r["digest"] == digest and r["published"] for r in mine)


def test_operator_feedback_reaches_the_department_and_is_counted(space, operator):
    before = operator.json("catalog", "show", "weather-daily")["feedback_count"]
    message = f"temp_mean_c looks shifted by one day at station 7 ({time.time_ns()})"
    ack = operator.json("catalog", "feedback", "weather-daily", "--message", message, "--category", "drift")
    assert ack["id"].startswith("fb-") and ack["count"] == before + 1
    assert operator.json("catalog", "show", "weather-daily")["feedback_count"] == before + 1
    got = _until(lambda: [f for f in _department(space, "weather-bureau", "feedback")["feedback"]
                          if f["message"] == message], what="the feedback at the department")
    assert got[0]["category"] == "drift" and got[0]["operator"] == "operator-1" and got[0]["id"] == ack["id"]
    bad = operator("catalog", "feedback", "weather-daily", "--message", "   ")
    assert bad.returncode == 2 and "1 to 2000 characters" in bad.stderr


# -- verification --------------------------------------------------------------------------------
def _farms(space) -> pl.DataFrame:
    frame = pl.read_parquet(space.root / "data" / "agriculture-dept" / "farm-yields.parquet",
                            columns=["farm_id", "county", "irrigation"])
    return frame.unique("farm_id", keep="first").sort("farm_id")


def test_verification_answers_yes_or_no_caps_a_subject_and_every_answer_is_logged(space, operator, auditor, tmp_path):
    farms = _farms(space).head(2).to_dicts()
    shown = operator.json("catalog", "show", "farm-yields")
    assert shown["verification"]["fields"] == ["county", "irrigation"] and shown["verification"]["per_subject_per_day"] == 1
    a, b = farms
    yes = operator("verify", "--dataset", "farm-yields", "--subject", a["farm_id"], "--claim", f"county={a['county']}",
                   "--claim", f"irrigation={a['irrigation']}", "--purpose", "research", "--json")
    assert yes.returncode == 0, yes.stderr
    yes = json.loads(yes.stdout)
    assert yes["answer"] == "yes" and yes["subject_hash"].startswith("hmac:")
    wrong = "rainfed" if b["irrigation"] == "irrigated" else "irrigated"
    no = operator("verify", "--dataset", "farm-yields", "--subject", b["farm_id"], "--claim", f"irrigation={wrong}",
                  "--purpose", "research", "--which", "--json")
    assert no.returncode == 16, no.stderr  # answered no
    assert json.loads(no.stdout)["mismatched"] == ["irrigation"]
    # a second question about the first farm today is beyond the per-subject cap
    again = operator("verify", "--dataset", "farm-yields", "--subject", a["farm_id"], "--claim", f"county={a['county']}",
                     "--purpose", "research", "--json")
    assert again.returncode == 4
    refused = json.loads(again.stdout)
    assert refused["answer"] == "refused" and "cap" in refused["message"]
    # the broker never saw the identifier: what it logged names the keyed hash only
    entries = _export(auditor, tmp_path / "log")
    answers = {e["statement"]["request_id"]: e for e in entries if e["type"] == "stewardship" and e["kind"] == "verification"}
    for answer in (yes, json.loads(no.stdout), refused):
        assert answers[answer["request_id"]]["statement"]["answer"] == answer["answer"]
    assert not any(a["farm_id"] in json.dumps(e) for e in entries)
    assert answers[refused["request_id"]]["statement"]["subject"] == yes["subject_hash"]
    verify = auditor("audit", "verify", "--from", str(tmp_path / "log"))
    assert verify.returncode == 0, verify.stderr
    replay = auditor("audit", "replay", "--from", str(tmp_path / "log"))
    assert replay.returncode == 0, replay.stdout + replay.stderr


def test_verification_of_an_unapproved_field_or_dataset_is_refused_before_anything_is_counted(operator):
    proc = operator("verify", "--dataset", "farm-yields", "--subject", "F000000001", "--claim", "crop=wheat",
                    "--purpose", "research")
    assert proc.returncode == 2 and "may not be verified" in proc.stderr and "county, irrigation" in proc.stderr
    proc = operator("verify", "--dataset", "bus-trips", "--subject", "C1", "--claim", "line=1", "--purpose", "research")
    assert proc.returncode == 4 and "not open to verification" in proc.stderr


# -- destruction -------------------------------------------------------------------------------
def test_a_jobs_receipt_carries_a_destruction_confirmation_that_audit_verify_accepts(operator, auditor, tmp_path):
    out = operator.json("submit", "query", "--dataset", "scenic-visits", "--aggregate", "count", "--epsilon", "0.1",
                        "--purpose", "research")
    job = out["job"]["job_id"]
    entries = _export(auditor, tmp_path / "log")
    (executed,) = [e for e in entries if e["type"] == "job_executed" and e["job_id"] == job]
    receipt = json.loads(base64.b64decode(executed["details"]["receipt"]))
    confirmation = receipt["destruction"]
    assert confirmation["verified"] is True and confirmation["at_ms"] == receipt["at_ms"]
    assert confirmation["mechanism"] == MECHANISM and confirmation["items"] == []  # a query stages no file
    # the connector's certificate is in the log, so the receipt's signature is checked offline
    fingerprint = executed["details"]["connector_certificate"]
    assert any((e.get("details") or {}).get("connector_certificate") == fingerprint
               and "BEGIN CERTIFICATE" in (e.get("details") or {}).get("connector_certificate_pem", "")
               for e in entries if e["type"] == "dataset_registered")
    proc = auditor("audit", "verify", "--from", str(tmp_path / "log"))
    assert proc.returncode == 0, proc.stderr
    # the same export with that receipt altered fails, and says where
    lines = (tmp_path / "log" / "entries.jsonl").read_text().splitlines()
    for n, line in enumerate(lines):
        record = json.loads(line)
        if record["entry"].get("job_id") == job and record["entry"]["type"] == "job_executed":
            receipt["metering"] = {"rows": 1}
            record["entry"]["details"]["receipt"] = base64.b64encode(json.dumps(receipt).encode()).decode()
            record["leaf"] = base64.b64encode(json.dumps(record["entry"], sort_keys=True, separators=(",", ":"),
                                                         ensure_ascii=False).encode()).decode()
            lines[n] = json.dumps(record)
    (tmp_path / "log" / "entries.jsonl").write_text("\n".join(lines) + "\n")
    proc = auditor("audit", "verify", "--from", str(tmp_path / "log"))
    assert proc.returncode == 9 and "signature does not verify" in proc.stderr


# -- a department refusing a failing version -----------------------------------------------------
def test_a_department_refusing_a_failing_version_keeps_serving_the_previous_one(space, operator):
    first = operator.json("catalog", "show", "scenic-visits-audited")
    assert first["quality"] is not None and first["quality"]["passed"] is True  # judged before it was published
    path = space.root / "data" / "statistics-bureau" / "scenic-visits-audited.parquet"
    frame = pl.read_parquet(path)
    broken = frame.with_columns(pl.when(pl.int_range(pl.len()) % 10 < 8).then(None).otherwise(pl.col("site")).alias("site"))
    tmp = path.with_suffix(".new")
    broken.write_parquet(tmp)
    os.replace(tmp, path)  # the department's source now holds a version with 80 % of sites missing
    out = operator.json("submit", "query", "--dataset", "scenic-visits-audited", "--aggregate", "count", "--epsilon", "0.1",
                        "--purpose", "research")
    assert out["job"]["state"] == "succeeded", out
    (provenance,) = out["result"]["provenance"]
    assert provenance["dataset_version"] == first["version"]  # the job ran on the passing version
    assert operator.json("catalog", "show", "scenic-visits-audited")["version"] == first["version"]
    reports = _department(space, "statistics-bureau", "quality", "--dataset", "scenic-visits-audited")["reports"]
    withheld = [r for r in reports if not r["published"]]
    assert len(withheld) == 1 and withheld[0]["version"] != first["version"]
    assert any("site null_rate" in f for f in withheld[0]["report"]["failures"])
