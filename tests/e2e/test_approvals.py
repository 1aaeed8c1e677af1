"""Department approval of algorithms, bound to the code digest, end to end."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

ALGOS = __import__("pathlib").Path(__file__).parent / "algorithms"

pytestmark = pytest.mark.e2e


def _department(space, *args):
    return subprocess.run([sys.executable, "-m", "yumen", "approvals", *args, "--config", "weather-bureau.toml"],
                          cwd=space.root, text=True, capture_output=True, timeout=60)


def _digest(path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _submit(operator, algo, job_id, *extra):
    return operator.json("submit", "algorithm", str(algo), "--tier", "approved-algorithm", "--dataset", "weather-daily",
                         "--output", "mean_temp=-40:45", "--timeout", "3", *extra, "--epsilon", "0.5", "--purpose", "research",
                         "--job-id", job_id)


def test_an_algorithm_runs_only_after_the_department_approves_its_digest(space, operator, tmp_path):
    algo = tmp_path / "mean_temp.py"
    algo.write_text(
        "import glob, json, polars as pl\n"
        "df = pl.read_parquet(glob.glob('/data/input/*.parquet')[0])\n"
        "json.dump({'mean_temp': float(df['temp_mean_c'].mean())}, open('/data/output/result.json', 'w'))\n"
    )
    first = _submit(operator, algo, "appr-1")
    assert first["job"]["state"] == "refused" and "awaits review" in first["job"]["message"]
    listing = _department(space, "list")
    assert _digest(algo)[:23] in listing.stdout and "pending" in listing.stdout
    shown = _department(space, "show", _digest(algo)[:20])
    assert "mean_temp" in shown.stdout and "operator-1" in shown.stdout and "df['temp_mean_c']" in shown.stdout
    assert _department(space, "approve", _digest(algo), "--max-runs", "1", "--note", "fine").returncode == 0
    second = _submit(operator, algo, "appr-2")
    assert second["job"]["state"] == "succeeded"
    (v,) = second["result"]["values"]
    assert v["name"] == "mean_temp" and v["noise_scale"] == 170.0  # range width 85 at ε 0.5
    third = _submit(operator, algo, "appr-3")  # the approval allows one run
    assert third["job"]["state"] == "refused" and "runs, all used" in third["job"]["message"]


def test_a_rejected_algorithm_is_refused_with_the_department_note(space, operator, tmp_path):
    algo = tmp_path / "rejected.py"
    algo.write_text("import json\njson.dump({'mean_temp': 1.0}, open('/data/output/result.json', 'w'))\n")
    assert _submit(operator, algo, "rej-1")["job"]["state"] == "refused"
    assert _department(space, "reject", _digest(algo), "--note", "purpose unclear").returncode == 0
    out = _submit(operator, algo, "rej-2")
    assert out["job"]["state"] == "refused" and "purpose unclear" in out["job"]["message"]


def test_an_approved_algorithm_that_crashes_gets_a_clear_error(space, operator):
    algo = ALGOS / "crash.py"
    _submit(operator, algo, "crash-1")
    _department(space, "approve", _digest(algo))
    out = _submit(operator, algo, "crash-2")
    assert out["job"]["state"] == "failed" and "the algorithm ended with an error" in out["job"]["message"]
    assert "fell over" not in out["job"]["message"]  # the algorithm's output never reaches the operator
    stderr = space.root / "weather-bureau-state" / "job-logs" / "crash-2" / "weather-daily" / "run.stderr"
    assert b"the algorithm fell over" in stderr.read_bytes()  # the department keeps it
