"""The status rules, applied to synthetic launcher bundles (no sandbox needed)."""

from __future__ import annotations

import base64
import json
import signal

import pytest

from yumen.sandbox import SandboxRequest, Status
from yumen.sandbox._outcome import HostFacts, classify, parse_bundle

REQ = SandboxRequest(algorithm=b"", timeout_s=5, output_limit_bytes=100, log_limit_bytes=8)
FACTS = HostFacts(backend="bwrap", runtime_digest="sha256:00", wall_ms=10)


def bundle(**kw):
    b = {"v": 1, "exit": 0, "signal": None, "memory": False, "stdout_b64": "", "stderr_b64": ""}
    b.update(kw)
    return b


def result(raw: bytes) -> dict:
    return {"result_b64": base64.b64encode(raw).decode(), "result_size": len(raw)}


@pytest.mark.parametrize(
    ("facts", "b", "status"),
    [
        (FACTS, bundle(**result(b'{"a": 1}')), Status.OK),
        (HostFacts(backend="x", runtime_digest="d", wall_ms=1, timed_out=True), bundle(**result(b'{"a": 1}')), Status.TIMEOUT),
        (FACTS, bundle(exit=None, signal=int(signal.SIGXCPU)), Status.TIMEOUT),
        (HostFacts(backend="x", runtime_digest="d", wall_ms=1, oom_killed=True), bundle(exit=None, signal=9), Status.MEMORY),
        (FACTS, bundle(exit=113, memory=True), Status.MEMORY),
        (FACTS, bundle(exit=None, signal=int(signal.SIGABRT),
                       stderr_tail_b64=base64.b64encode(b"memory allocation of 8 bytes failed").decode()), Status.MEMORY),
        (FACTS, bundle(exit=None, signal=int(signal.SIGSEGV)), Status.KILLED),
        (FACTS, None, Status.KILLED),
        (FACTS, bundle(**result(b"1" * 101)), Status.OUTPUT_TOO_LARGE),
        (FACTS, bundle(exit=1, **result(b"1" * 101)), Status.OUTPUT_TOO_LARGE),
        (FACTS, bundle(exit=3, **result(b'{"a": 1}')), Status.ERROR),
        (FACTS, bundle(result_error="missing"), Status.INVALID_OUTPUT),
        (FACTS, bundle(result_error="symlink"), Status.INVALID_OUTPUT),
        (FACTS, bundle(**result(b'{"a": NaN}')), Status.INVALID_OUTPUT),
    ],
)
def test_classify_applies_the_documented_order(facts, b, status):
    report = classify(REQ, facts, b)
    assert report.status is status
    assert (report.result is not None) == (status is Status.OK)


def test_classify_caps_logs_and_never_puts_them_in_the_error():
    b = bundle(exit=2, stderr_b64=base64.b64encode(b"raw row 123456789").decode())
    report = classify(REQ, FACTS, b)
    assert report.stderr == b"raw row "
    assert "raw row" not in report.error


def test_parse_bundle_takes_the_last_json_line_and_rejects_garbage():
    assert parse_bundle(b"noise\n" + json.dumps(bundle(exit=4)).encode() + b"\n")["exit"] == 4
    assert parse_bundle(b"") is None
    assert parse_bundle(b"{not json") is None
    assert parse_bundle(b'{"v": 2}') is None
    assert parse_bundle(b"[" * 100000) is None
