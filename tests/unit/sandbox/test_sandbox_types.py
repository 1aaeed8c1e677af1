"""Request validation, result parsing and the operator-safe JSON of a report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from yumen.errors import Code, YumenError
from yumen.sandbox import SandboxReport, SandboxRequest, Status, Usage, parse_result
from yumen.sandbox._types import InvalidResult


def test_request_defaults_are_the_documented_safe_limits():
    r = SandboxRequest(algorithm=b"pass")
    assert (r.timeout_s, r.memory_mb, r.output_limit_bytes) == (60.0, 512, 64 * 1024)
    assert r.max_processes == 64 and r.scratch_mb == 64 and r.cpu_limit_s == 60


@pytest.mark.parametrize("dataset", ["../etc", "a/b", ".hidden", "", "x" * 200])
def test_request_rejects_dataset_ids_that_are_not_plain_file_names(dataset):
    with pytest.raises(YumenError) as e:
        SandboxRequest(algorithm=b"", inputs={dataset: Path("/tmp/x.parquet")})
    assert e.value.code is Code.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout_s": 0},
        {"timeout_s": -1},
        {"memory_mb": 1},
        {"output_limit_bytes": 0},
        {"max_processes": 1},
        {"params": {"x": float("nan")}},
        {"params": {"x": object()}},
        {"algorithm": "print(1)"},
        {"algorithm": b"#" * (2 << 20)},
    ],
)
def test_request_rejects_unsafe_or_malformed_limits(kwargs):
    base = {"algorithm": b"pass"}
    base.update(kwargs)
    with pytest.raises(YumenError) as e:
        SandboxRequest(**base)
    assert e.value.code is Code.INVALID_ARGUMENT


def test_parse_result_accepts_a_flat_object_of_finite_numbers():
    assert parse_result(b'{"mean": 2.5, "n": 3}', max_keys=10) == {"mean": 2.5, "n": 3.0}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": -Infinity}',
        b'{"a": 1e999}',
        b'{"a": true}',
        b'{"a": "1"}',
        b'{"a": {"b": 1}}',
        b'{"a": [1]}',
        b'{"a": null}',
        b'[1, 2]',
        b'3',
        b'{"a": 1, "a": 2}',
        b'{"": 1}',
        b"not json",
        b"\xff\xfe",
        b"[" * 100000 + b"]" * 100000,
        b'{"a": ' + b"9" * 400 + b"}",
    ],
)
def test_parse_result_rejects_anything_but_named_finite_numbers(raw):
    with pytest.raises(InvalidResult):
        parse_result(raw, max_keys=10)


def test_parse_result_enforces_the_key_limit():
    raw = json.dumps({f"k{i}": i for i in range(11)}).encode()
    with pytest.raises(InvalidResult, match="limit is 10"):
        parse_result(raw, max_keys=10)


def test_parse_result_reasons_never_quote_keys_or_values():
    secret = "row-4711-alice"
    for raw in (json.dumps({secret: "x"}), json.dumps({secret: 1, "b": [secret]})):
        with pytest.raises(InvalidResult) as e:
            parse_result(raw.encode(), max_keys=10)
        assert secret not in str(e.value)


@given(st.dictionaries(st.text(min_size=1, max_size=20), st.floats(allow_nan=False, allow_infinity=False), max_size=20))
def test_parse_result_round_trips_any_object_of_finite_floats(values):
    parsed = parse_result(json.dumps(values).encode(), max_keys=100)
    assert parsed == values
    assert all(math.isfinite(v) for v in parsed.values())


def _report(status: Status, result=None) -> SandboxReport:
    return SandboxReport(
        status=status, result=result, usage=Usage(wall_ms=5), error="e",
        stdout=b"secret-out", stderr=b"secret-err", backend="bwrap", runtime_digest="sha256:ab",
    )


def test_report_json_has_the_public_keys_and_never_the_logs():
    doc = _report(Status.OK, {"a": 1.0}).to_json()
    assert {"status", "result", "usage", "error", "backend", "runtime_digest"} <= set(doc)
    assert doc["status"] == "ok" and doc["result"] == {"a": 1.0} and doc["usage"]["wall_ms"] == 5
    text = json.dumps(doc)
    assert "secret-out" not in text and "secret-err" not in text and "stdout" not in doc


def test_report_carries_a_result_only_when_ok():
    with pytest.raises(YumenError):
        _report(Status.OK, None)
    with pytest.raises(YumenError):
        _report(Status.ERROR, {"a": 1.0})
    assert _report(Status.ERROR).result is None
