"""The auditor's view: export, verify, replay every decision, compare the books, catch tampering."""

from __future__ import annotations

import json

import pytest

from yumen.errors import Code, exit_code

pytestmark = pytest.mark.e2e


def test_export_verify_and_replay_match_the_broker(space, operator, auditor, tmp_path):
    operator.json("submit", "query", "--dataset", "weather-daily", "--aggregate", "count", "--epsilon", "0.1",
                  "--purpose", "commercial")  # a billed job
    operator("submit", "query", "--dataset", "outpatient-visits", "--aggregate", "count", "--epsilon", "0.1",
             "--purpose", "commercial")  # a logged denial
    out = tmp_path / "export"
    assert auditor("audit", "export", "--out", str(out)).returncode == 0
    lines = [json.loads(x) for x in (out / "entries.jsonl").read_text().splitlines()]
    types = {x["entry"]["type"] for x in lines}
    assert {"policy_changed", "license_changed", "dataset_registered", "job_decided", "job_executed", "job_released"} <= types
    assert any(x["entry"]["type"] == "job_decided" and not x["entry"]["allowed"] for x in lines)
    verify = auditor("audit", "verify", "--from", str(out), "--state", str(tmp_path / "state"))
    assert verify.returncode == 0, verify.stderr
    replay = auditor("audit", "replay", "--from", str(out), "--state", str(tmp_path / "state"))
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "match the log" in replay.stdout and "all reached the same result" in replay.stdout


def test_a_tampered_export_fails_verification_and_says_where(auditor, tmp_path):
    out = tmp_path / "export"
    assert auditor("audit", "export", "--out", str(out)).returncode == 0
    lines = (out / "entries.jsonl").read_text().splitlines()
    row = json.loads(lines[3])
    row["entry"]["details"] = {"forged": True}
    lines[3] = json.dumps(row)
    (out / "entries.jsonl").write_text("\n".join(lines) + "\n")
    proc = auditor("audit", "verify", "--from", str(out))
    assert proc.returncode == exit_code(Code.VERIFICATION_FAILED)
    assert "3" in proc.stderr


def test_operators_cannot_read_the_log(operator, tmp_path):
    proc = operator("audit", "export", "--out", str(tmp_path / "x"))
    assert proc.returncode == exit_code(Code.PERMISSION_DENIED)


@pytest.mark.parametrize("args", [
    ["query", "--dataset", "weather-daily", "--aggregate", "mean", "--column", "temp_mean_c", "--group-by", "region"],
    ["query", "--dataset", "outpatient-visits", "--dataset", "outpatient-visits-tianshui", "--aggregate", "count"],
])
def test_reexecution_reproduces_the_logged_commitment(operator, auditor, args):
    out = operator.json("submit", *args, "--epsilon", "0.1", "--purpose", "research")
    job = out["job"]["job_id"]
    proc = auditor("audit", "reexecute", "--job", job, "--json")
    assert proc.returncode == 0, proc.stderr
    import json as _json

    report = _json.loads(proc.stdout)
    assert report["datasets"] and all(d["matches"] and not d["error"] for d in report["datasets"])
    assert all(d["logged_commitment"] == d["recomputed_commitment"] for d in report["datasets"])


def test_operators_cannot_ask_for_reexecution(operator):
    proc = operator("audit", "reexecute", "--job", "anything")
    assert proc.returncode == exit_code(Code.PERMISSION_DENIED)
