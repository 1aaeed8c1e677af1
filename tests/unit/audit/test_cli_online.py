"""`yumen audit export/verify` against a real AuditService over mutual TLS."""

from __future__ import annotations

import argparse
from concurrent import futures

import grpc
import pytest

from yumen.audit import add_audit_service
from yumen.audit._cli import register
from yumen.errors import Code, YumenError
from yumen.identity import Role, init_ca, issue
from yumen.rpc import TlsFiles, caller, require_role, server_credentials

from audit_samples import sample_entries


def _run(argv):
    parser = argparse.ArgumentParser(prog="yumen")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def mtls_broker(tmp_path, log):
    pki = tmp_path / "pki"
    ca = init_ca(pki)
    broker_crt, broker_key = issue(pki, role=Role.BROKER, name="broker-1")
    auditor = issue(pki, role=Role.AUDITOR, name="auditor-1")
    operator = issue(pki, role=Role.OPERATOR, name="operator-1", license="LIC-7")
    conn_crt, conn_key = issue(pki, role=Role.CONNECTOR, name="conn-cma", department="cma")
    from yumen.identity import load_private_key

    log.append_many(sample_entries(2, connector=(load_private_key(conn_key), conn_crt.read_text())))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    add_audit_service(server, log, lambda ctx: require_role(caller(ctx), Role.AUDITOR, Role.ADMIN))
    port = server.add_secure_port("127.0.0.1:0", server_credentials(TlsFiles(ca=ca, cert=broker_crt, key=broker_key)))
    server.start()
    (tmp_path / "log.vkey").write_text(log.vkey + "\n")
    yield f"127.0.0.1:{port}", ca, auditor, operator, log
    server.stop(None)


def _tls(ca, pair):
    return ["--ca", str(ca), "--cert", str(pair[0]), "--key", str(pair[1])]


def test_auditor_exports_and_verifies_online_over_mtls(mtls_broker, tmp_path, capsys):
    address, ca, auditor, _operator, log = mtls_broker
    assert _run(["audit", "export", "--out", str(tmp_path / "x"), "--broker", address, *_tls(ca, auditor)]) == 0
    assert _run(["audit", "verify", "--from", str(tmp_path / "x"), "--vkey", str(tmp_path / "log.vkey")]) == 0
    assert _run(["audit", "verify", "--broker", address, *_tls(ca, auditor), "--vkey", str(tmp_path / "log.vkey"),
                 "--state", str(tmp_path / "state")]) == 0
    log.append_many(sample_entries(1)[3:])
    assert _run(["audit", "verify", "--broker", address, *_tls(ca, auditor), "--state", str(tmp_path / "state"),
                 "--light"]) == 0
    out = capsys.readouterr().out
    assert "exported 9 entries" in out and "extends the checkpoint of size 9" in out


def test_an_operator_certificate_is_refused(mtls_broker, tmp_path):
    address, ca, _auditor, operator, _log = mtls_broker
    with pytest.raises(YumenError) as e:
        _run(["audit", "verify", "--broker", address, *_tls(ca, operator)])
    assert e.value.code is Code.PERMISSION_DENIED
    assert "auditor" in e.value.message
