"""Usage control end to end: licenses, explain, queued-job cancellation, policy versions."""

from __future__ import annotations

import time

import pytest

from yumen.errors import Code, exit_code
from yumen.identity import Role, issue

pytestmark = pytest.mark.e2e


def _cli(space, name):
    import json
    import subprocess
    import sys

    env = space.cli_env(name)

    def run(*args, check=None):
        proc = subprocess.run([sys.executable, "-m", "yumen", *args], env=env, text=True, capture_output=True, timeout=120)
        if check is not None:
            assert proc.returncode == check, proc.stderr
        return proc

    def js(*args):
        proc = run(*args, "--json")
        assert proc.stdout, proc.stderr
        return json.loads(proc.stdout)

    run.json = js
    return run


@pytest.fixture(scope="module")
def second_operator(space):
    """A second licensed operator, so revoking its license leaves the others untouched."""
    admin = _cli(space, "admin-1")
    out = admin.json("admin", "license", "issue", "--id", "LIC-TEST-2", "--organization", "Test Org",
                     "--level", "L1", "--level", "L2")
    assert out["status"] == "active"
    issue(space.pki, role=Role.OPERATOR, name="operator-2", license="LIC-TEST-2")
    return _cli(space, "operator-2"), admin


def test_explain_reports_rule_obligations_budget_and_price_without_spending(space, second_operator):
    op, _ = second_operator
    args = ["policy", "explain", "--dataset", "bus-trips", "--purpose", "commercial", "--epsilon", "0.5"]
    first = op.json(*args)
    again = op.json(*args)
    assert first["allowed"] and first["matched_rule"] == "conditional-commercial-query"
    assert first["obligations"]["max_epsilon"] == "0.5" and first["obligations"]["min_group_size"] == "5"
    assert first["epsilon_remaining"] == "2" and first["epsilon_remaining_after"] == "1.5"
    assert first["price"] == "250.00"
    assert again == first  # nothing was spent


def test_explain_names_the_missing_condition(second_operator):
    op, _ = second_operator
    out = op.json("policy", "explain", "--dataset", "outpatient-visits", "--purpose", "research", "--epsilon", "0.1")
    assert not out["allowed"] and out["gate"] == "license" and "does not cover L3 data" in out["reason"]


def test_suspension_cancels_a_queued_job_and_gives_its_budget_back(space, second_operator):
    op, admin = second_operator
    space.stop_process("transport-dept")
    try:
        out = op.json("submit", "query", "--dataset", "bus-trips", "--aggregate", "count", "--epsilon", "0.25",
                      "--purpose", "research", "--job-id", "queued-1", "--no-wait")
        assert out["job"]["state"] == "pending"
        mid = op.json("policy", "explain", "--dataset", "bus-trips", "--purpose", "research", "--epsilon", "0.25")
        assert mid["epsilon_remaining"] == "4.75"
        admin("admin", "license", "suspend", "LIC-TEST-2", "--reason", "audit finding", check=0)
        status = op.json("job", "status", "queued-1")["job"]
        assert status["state"] == "cancelled" and "suspended" in status["message"]
        denied = op("submit", "query", "--dataset", "weather-daily", "--aggregate", "count", "--epsilon", "0.1",
                    "--purpose", "research")
        assert denied.returncode == exit_code(Code.POLICY_DENIED) and "suspended" in denied.stderr
        admin("admin", "license", "resume", "LIC-TEST-2", check=0)
        after = op.json("policy", "explain", "--dataset", "bus-trips", "--purpose", "research", "--epsilon", "0.25")
        assert after["epsilon_remaining"] == "5"
    finally:
        space.start_connector("transport-dept")
        space.wait_online(["bus-trips"])
    assert op.json("job", "status", "queued-1")["job"]["state"] == "cancelled"  # not revived by the reconnect


def test_revocation_is_final_and_immediate(second_operator):
    op, admin = second_operator
    admin("admin", "license", "revoke", "LIC-TEST-2", "--reason", "terminated", check=0)
    proc = op("submit", "query", "--dataset", "weather-daily", "--aggregate", "count", "--epsilon", "0.1", "--purpose", "research")
    assert proc.returncode == exit_code(Code.POLICY_DENIED) and "revoked" in proc.stderr
    again = admin("admin", "license", "resume", "LIC-TEST-2")
    assert again.returncode == exit_code(Code.INVALID_ARGUMENT) and "revocation is final" in again.stderr


def test_operator_cannot_administer_licenses(operator):
    proc = operator("admin", "license", "revoke", "LIC-2026-0001")
    assert proc.returncode == exit_code(Code.PERMISSION_DENIED)


def test_policy_change_is_atomic_versioned_and_named_by_later_decisions(space, operator, tmp_path):
    admin = _cli(space, "admin-1")
    before = admin.json("admin", "policy", "show")
    rules = tmp_path / "rules.csv"
    settings = tmp_path / "settings.toml"
    rules.write_text(before["rules"] + "\n# tightened\n")
    settings.write_text(before["settings"])
    bad = tmp_path / "bad.toml"
    bad.write_text("[levels.L1]\ntiers = ['query']\n")
    refused = admin("admin", "policy", "set", "--rules", str(rules), "--settings", str(bad))
    assert refused.returncode == exit_code(Code.CONFIG) and "levels.L2" in refused.stderr
    assert admin.json("admin", "policy", "show")["version"] == before["version"]  # nothing half-applied
    new = admin.json("admin", "policy", "set", "--rules", str(rules), "--settings", str(settings))["version"]
    assert new != before["version"]
    out = operator.json("submit", "query", "--dataset", "weather-daily", "--aggregate", "count", "--epsilon", "0.1",
                        "--purpose", "research")
    assert out["job"]["policy_version"] == new
    old = admin.json("admin", "policy", "show", "--version", before["version"])
    assert old["rules"] == before["rules"]  # history is kept, never rewritten


def test_a_revoked_certificate_is_refused_at_once(space):
    admin = _cli(space, "admin-1")
    cert, _ = issue(space.pki, role=Role.OPERATOR, name="operator-3", license="LIC-2026-0001")
    op = _cli(space, "operator-3")
    assert op("catalog", "list").returncode == 0
    admin("admin", "cert", "revoke", "--certificate", str(cert), "--reason", "laptop stolen", check=0)
    proc = op("catalog", "list")
    assert proc.returncode == exit_code(Code.UNAUTHENTICATED) and "revoked: laptop stolen" in proc.stderr
    assert "operator-3" in admin("admin", "cert", "list", check=0).stdout
    assert _cli(space, "operator-1")("catalog", "list").returncode == 0  # nobody else is affected


def test_revoking_a_connector_certificate_cuts_its_stream(space):
    admin = _cli(space, "admin-1")
    cert, _ = issue(space.pki, role=Role.CONNECTOR, name="farm-office", department="agriculture-dept")
    from yumen.identity import identity_from_pem

    fp = identity_from_pem(cert.read_bytes()).fingerprint
    admin("admin", "cert", "revoke", "--fingerprint", fp, "--name", "farm-office", check=0)
    from yumen.rpc import TlsFiles, secure_channel
    from yumen.v1 import connector_pb2, connector_pb2_grpc
    import grpc

    ch = secure_channel(space.address, TlsFiles(ca=space.pki / "ca.crt", cert=cert, key=space.pki / "farm-office.key"))
    stream = connector_pb2_grpc.ConnectorServiceStub(ch).Connect(
        iter([connector_pb2.ConnectorMessage(hello=connector_pb2.Hello(connector_id="farm-office"))]), timeout=10)
    with pytest.raises(grpc.RpcError) as e:
        list(stream)
    ch.close()
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
