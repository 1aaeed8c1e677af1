"""Every exit code of docs/cli.md is what the CLI returns, with the error coming across the wire
from a real broker wherever the broker is where it arises.

Several Yumen codes share a gRPC status (JOB_NOT_READY and CONFIG are both
FAILED_PRECONDITION; POLICY_DENIED and PERMISSION_DENIED both PERMISSION_DENIED), so the
broker sends the code and the hint as trailing metadata and the client rebuilds the exact
error. Before that, ``yumen job result`` of an unfinished job exited 2 instead of 7.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from yumen.identity import Role, issue
from yumen.localspace import OPERATOR_LICENSE, Department, LocalSpace

pytestmark = pytest.mark.e2e

DATASET = "weather-daily"


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    s = LocalSpace(tmp_path_factory.mktemp("exits"),
                   departments=(Department(id="weather-bureau", datasets=((DATASET, 3_650),)),))
    s.setup()
    issue(s.pki, role=Role.OPERATOR, name="operator-2", license=OPERATOR_LICENSE)
    settings = s.root / "policy.toml"  # a small cap, so a second job of ε 1 overruns it
    settings.write_text(settings.read_text().replace('[rules.open-data]\nmax_epsilon = "2"                # per job\n'
                                                     'epsilon_cap = "10"', '[rules.open-data]\nmax_epsilon = "2"\n'
                                                     'epsilon_cap = "1.5"'))
    assert 'epsilon_cap = "1.5"' in settings.read_text()
    try:
        s.start(timeout=90)
        yield s
    finally:
        s.stop()


def _yumen(space: LocalSpace, who: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    e = dict(space.cli_env(who), **(env or {}))
    return subprocess.run([sys.executable, "-m", "yumen", *args], env=e, text=True, capture_output=True, timeout=300)


def _query(*extra: str) -> list[str]:
    return ["submit", "query", "--dataset", DATASET, "--aggregate", "count", "--purpose", "research", *extra]


def test_exit_0_on_success(space):
    proc = _yumen(space, "operator-1", "catalog", "list")
    assert proc.returncode == 0 and DATASET in proc.stdout


def test_exit_1_for_an_internal_error_of_the_broker_with_a_sanitized_message(space):
    db = sqlite3.connect(space.root / "broker-state" / "broker.db", timeout=30)
    with db:  # a job row the broker cannot read: a bug or a damaged database, never the caller's fault
        db.execute("INSERT INTO jobs(job_id, operator, license, request_digest, request, algorithm_source, state, "
                   "message, decision, created_ms, updated_ms) VALUES ('damaged', 'operator-1', 'L', 'd', "
                   "'{not json', x'', 'pending', '', '{}', 0, 0)")
    db.close()
    try:
        proc = _yumen(space, "admin-1", "job", "status", "damaged")
        assert proc.returncode == 1, proc.stderr
        assert "internal error" in proc.stderr and "not json" not in proc.stderr
    finally:  # a queued job nobody can read would break every later dispatch in this space
        db = sqlite3.connect(space.root / "broker-state" / "broker.db", timeout=30)
        with db:
            db.execute("DELETE FROM jobs WHERE job_id='damaged'")
        db.close()


def test_exit_2_for_an_invalid_argument_from_the_broker(space):
    proc = _yumen(space, "operator-1", "submit", "query", "--dataset", DATASET, "--aggregate", "sum", "--column",
                  "no_such_column", "--epsilon", "0.1", "--purpose", "research")
    assert proc.returncode == 2, proc.stderr
    assert "no_such_column" in proc.stderr and "hint: declared columns" in proc.stderr


def test_exit_2_for_a_policy_change_on_a_replaced_version(space):
    proc = _yumen(space, "admin-1", "admin", "policy", "set", "--rules", str(space.root / "policy.csv"), "--settings",
                  str(space.root / "policy.toml"), "--replaces", "sha256:" + "0" * 64)
    assert proc.returncode == 2, proc.stderr
    assert "changed it meanwhile" in proc.stderr and "hint: read it again" in proc.stderr


def test_exit_3_when_the_broker_has_no_such_job(space):
    proc = _yumen(space, "operator-1", "job", "status", "no-such-job")
    assert proc.returncode == 3 and "no job 'no-such-job'" in proc.stderr and "hint: check the job id" in proc.stderr


def test_exit_4_for_a_certificate_of_the_wrong_role(space):
    proc = _yumen(space, "auditor-1", *_query("--epsilon", "0.1"))
    assert proc.returncode == 4 and "operator certificates" in proc.stderr


def test_exit_4_when_the_department_refuses_the_job_and_its_budget_comes_back(space):
    # ε 1.2 is within policy (2 per job, cap 1.5) but above the department's own limit (1 per job)
    proc = _yumen(space, "operator-1", *_query("--epsilon", "1.2", "--job-id", "refused-1"))
    assert proc.returncode == 4, proc.stderr
    assert "refused by department weather-bureau" in proc.stderr


def test_exit_5_when_the_budget_is_exhausted_with_what_is_left(space):
    first = _yumen(space, "operator-1", *_query("--epsilon", "1", "--job-id", "budget-1"))
    assert first.returncode == 0, first.stderr
    second = _yumen(space, "operator-1", *_query("--epsilon", "1", "--job-id", "budget-2"))
    assert second.returncode == 5, second.stderr
    assert "budget exhausted: 0.5 of 1.5 ε left" in second.stderr and "hint: ask for ε ≤ 0.5" in second.stderr


def test_exit_6_when_no_broker_answers(space):
    proc = _yumen(space, "operator-1", "catalog", "list", env={"YUMEN_BROKER": "127.0.0.1:1"})
    assert proc.returncode == 6 and "hint: is the broker running" in proc.stderr


def test_exit_7_when_the_result_is_not_ready_not_2(space):
    space.stop_process("weather-bureau")  # no connector: the job waits
    try:
        sub = _yumen(space, "operator-1", *_query("--epsilon", "0.01", "--job-id", "waiting-1", "--no-wait"))
        assert sub.returncode == 0, sub.stderr
        proc = _yumen(space, "operator-1", "job", "result", "waiting-1")
        assert proc.returncode == 7, proc.stderr
        assert "is pending" in proc.stderr and "hint: wait with `yumen job watch`" in proc.stderr
    finally:
        space.start_connector("weather-bureau")
        space.wait_online([DATASET])


def test_exit_8_when_the_sandbox_backend_is_unavailable(space, tmp_path):
    algo = tmp_path / "a.py"
    algo.write_text("print(1)\n")
    proc = _yumen(space, "operator-1", "sandbox", "run", str(algo), "--backend", "docker",
                  env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"})
    assert proc.returncode == 8, proc.stderr


def test_exit_9_when_the_broker_log_does_not_verify_against_the_pinned_key(space, tmp_path):
    from yumen.audit import generate_log_key
    from yumen.audit._note import NoteSigner

    key = generate_log_key()
    wrong = tmp_path / "wrong.vkey"
    wrong.write_text(NoteSigner("yumen.local/log", key).verifier.vkey + "\n")
    proc = _yumen(space, "auditor-1", "audit", "verify", "--vkey", str(wrong))
    assert proc.returncode == 9, proc.stdout + proc.stderr


# -- yumen job cancel ---------------------------------------------------------------------------


def test_exit_0_when_an_operator_cancels_its_queued_job_and_7_for_its_result(space):
    space.stop_process("weather-bureau")  # no connector: the job waits
    try:
        assert _yumen(space, "operator-1", *_query("--epsilon", "0.01", "--job-id", "cancel-0", "--no-wait")).returncode == 0
        proc = _yumen(space, "operator-1", "job", "cancel", "cancel-0")
        assert proc.returncode == 0, proc.stderr
        assert "cancelled" in proc.stdout
        result = _yumen(space, "operator-1", "job", "result", "cancel-0")
        assert result.returncode == 7 and "cancelled" in result.stderr
    finally:
        space.start_connector("weather-bureau")
        space.wait_online([DATASET])


def test_exit_2_when_the_job_to_cancel_already_ended(space):
    done = _yumen(space, "operator-1", *_query("--epsilon", "0.01", "--job-id", "cancel-done"))
    assert done.returncode == 0, done.stderr
    proc = _yumen(space, "operator-1", "job", "cancel", "cancel-done")
    assert proc.returncode == 2, proc.stderr
    assert "already succeeded" in proc.stderr and "hint: see it with `yumen job status" in proc.stderr


def test_exit_3_when_cancelling_another_operators_job_or_none(space):
    space.stop_process("weather-bureau")
    try:
        assert _yumen(space, "operator-1", *_query("--epsilon", "0.01", "--job-id", "cancel-mine", "--no-wait")).returncode == 0
        other = _yumen(space, "operator-2", "job", "cancel", "cancel-mine")
        assert other.returncode == 3 and "no job 'cancel-mine' of yours" in other.stderr
        unknown = _yumen(space, "operator-1", "job", "cancel", "no-such-job")
        assert unknown.returncode == 3, unknown.stderr
        assert _yumen(space, "operator-1", "job", "cancel", "cancel-mine").returncode == 0
    finally:
        space.start_connector("weather-bureau")
        space.wait_online([DATASET])


def test_exit_4_when_a_certificate_that_is_not_an_operators_cancels(space):
    for who in ("auditor-1", "admin-1"):
        proc = _yumen(space, who, "job", "cancel", "cancel-done")
        assert proc.returncode == 4, proc.stderr


# -- output handling ------------------------------------------------------------------------------


def test_json_prints_one_error_object_on_stdout_with_the_exit_code(space):
    proc = _yumen(space, "operator-1", "job", "result", "no-such-job", "--json")
    assert proc.returncode == 3
    error = json.loads(proc.stdout)["error"]
    assert error == {"code": "not-found", "message": "no job 'no-such-job' of yours", "hint": "check the job id",
                     "exit_code": 3}
    audit = _yumen(space, "auditor-1", "audit", "verify", "--from", "/nonexistent-export", "--json")
    assert audit.returncode != 0 and json.loads(audit.stdout)["error"]["exit_code"] == audit.returncode


def test_exit_141_and_no_traceback_when_stdout_is_a_pipe_closed_by_its_reader(space):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written (as `| head` after its lines)
    try:
        proc = subprocess.run([sys.executable, "-m", "yumen", "catalog", "show", DATASET], env=space.cli_env("operator-1"),
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 141
    assert proc.stderr == ""
    head = subprocess.run(f"{sys.executable} -m yumen catalog show {DATASET} | head -n 1", shell=True,
                          env=space.cli_env("operator-1"), capture_output=True, text=True, timeout=120)
    assert head.stdout.startswith(DATASET) and "Traceback" not in head.stderr and "Exception" not in head.stderr


def test_an_unreadable_file_argument_is_exit_2_without_a_traceback(space, tmp_path):
    proc = _yumen(space, "operator-1", "policy", "explain", "--dataset", DATASET, "--tier", "custom-algorithm",
                  "--purpose", "research", "--epsilon", "0.1", "--algorithm", str(tmp_path / "missing.py"))
    assert proc.returncode == 2, proc.stderr
    assert "missing.py" in proc.stderr and "Traceback" not in proc.stderr


def test_a_quantile_is_parsed_as_a_quantile_and_its_accuracy_is_shown_in_ranks(space):
    bad = _yumen(space, "operator-1", "submit", "query", "--dataset", DATASET, "--aggregate", "quantile", "--column",
                 "temp_mean_c", "--quantile", "1.5", "--epsilon", "0.1", "--purpose", "research")
    assert bad.returncode == 2 and "quantile '1.5' is not a decimal between 0 and 1" in bad.stderr and "ε" not in bad.stderr
    ok = _yumen(space, "operator-1", "submit", "query", "--dataset", DATASET, "--aggregate", "quantile", "--column",
                "temp_mean_c", "--quantile", "0.5", "--epsilon", "0.1", "--purpose", "research")
    assert ok.returncode == 0, ok.stderr
    assert " ranks (95%" in ok.stdout and "not a ± in value units" in ok.stdout


# -- yumen sandbox run: one code per status ------------------------------------------------------

_ALGORITHMS = {
    10: "raise SystemExit(3)\n",
    11: "import time\nwhile True:\n    time.sleep(1)\n",
    12: "x = bytearray(400 << 20)\nfor i in range(0, len(x), 4096):\n    x[i] = 1\n",
    13: "open('/data/output/result.json', 'w').write('{\"a\": 1, \"pad\": \"' + 'x' * 200000 + '\"}')\n",
    14: "open('/data/output/result.json', 'w').write('not json')\n",
    15: "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
}


@pytest.mark.parametrize("code", sorted(_ALGORITHMS))
def test_sandbox_run_exits_with_the_code_of_its_status(code, tmp_path):
    algo = tmp_path / "algo.py"
    algo.write_text(_ALGORITHMS[code])
    proc = subprocess.run([sys.executable, "-m", "yumen", "sandbox", "run", str(algo), "--timeout", "5", "--memory", "128",
                           "--output-limit", "65536"], text=True, capture_output=True, timeout=300)
    assert proc.returncode == code, proc.stdout + proc.stderr
