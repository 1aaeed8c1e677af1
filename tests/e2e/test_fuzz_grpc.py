"""A gRPC fuzzer against a real broker over real mTLS, on loopback only.

Random, truncated, mutated, oversized and randomly filled messages go to every method the
broker serves, with each role's certificate and with a certificate of an unknown CA. Bounded
in count and in time. Afterwards: no call ended in INTERNAL or UNKNOWN, the broker still
answers, the auditor's replay of the log succeeds, and the broker's memory stayed bounded.

The quick run is part of the normal suite; the long one (10,000 messages, 50 at a time) is
marked ``stress`` and runs in ``make test-stress``.
"""

from __future__ import annotations

import collections
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import descriptor as _d
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from yumen.broker._guard import Limits, method_rules
from yumen.identity import Role, init_ca, issue
from yumen.localspace import Department, LocalSpace
from yumen.rpc import TlsFiles, secure_channel
from yumen.v1 import admin_pb2, audit_pb2, billing_pb2, catalog_pb2, connector_pb2, jobs_pb2, stewardship_pb2

pytestmark = pytest.mark.e2e

DATASET = "weather-daily"
ROLES = ("operator-1", "auditor-1", "admin-1", "weather-bureau", "broker", "stranger")
_PLAUSIBLE = ["", DATASET, "weather-bureau", "query", "custom-algorithm", "research", "commercial", "count", "sum",
              "mean", "histogram", "quantile", "temperature_c", "region", "0.5", "1", "10", "L1", "L4", "revoke",
              "suspend", "LIC-2026-0001", "sha256:" + "a" * 64, "==", "in", "ε", "\u202e\u0000", "x" * 10_000,
              '{"a": 1}', "[" * 200, "NaN", "1e999", "-0", "job-1", "../../etc/passwd"]


@dataclass(frozen=True)
class Method:
    path: str
    request: type
    client_streaming: bool
    server_streaming: bool


def _methods() -> list[Method]:
    out = []
    for module in (catalog_pb2, jobs_pb2, connector_pb2, admin_pb2, audit_pb2, stewardship_pb2, billing_pb2, health_pb2,
                   reflection_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                out.append(Method(path=f"/{service.full_name}/{m.name}",
                                  request=message_factory.GetMessageClass(m.input_type),
                                  client_streaming=m.client_streaming, server_streaming=m.server_streaming))
    served = set(method_rules(Limits()))
    assert {m.path for m in out} == served, "the fuzzer covers exactly the methods the broker serves"
    return out


def _scalar(field: _d.FieldDescriptor, rnd: random.Random):
    t = field.type
    if t == _d.FieldDescriptor.TYPE_STRING:
        return rnd.choice(_PLAUSIBLE) if rnd.random() < 0.7 else "".join(chr(rnd.randint(32, 0x2FFF)) for _ in range(rnd.randint(0, 40)))
    if t == _d.FieldDescriptor.TYPE_BYTES:
        return rnd.randbytes(rnd.choice([0, 1, 16, 300, 3000]))
    if t == _d.FieldDescriptor.TYPE_BOOL:
        return rnd.random() < 0.5
    if t in (_d.FieldDescriptor.TYPE_DOUBLE, _d.FieldDescriptor.TYPE_FLOAT):
        return rnd.choice([0.0, -0.0, 1.5, -1e308, 1e308, float("nan"), float("inf"), float("-inf"), rnd.uniform(-1e6, 1e6)])
    if t == _d.FieldDescriptor.TYPE_ENUM:
        return rnd.choice([v.number for v in field.enum_type.values])
    unsigned = t in (_d.FieldDescriptor.TYPE_UINT32, _d.FieldDescriptor.TYPE_UINT64, _d.FieldDescriptor.TYPE_FIXED32,
                     _d.FieldDescriptor.TYPE_FIXED64)
    big = t in (_d.FieldDescriptor.TYPE_INT64, _d.FieldDescriptor.TYPE_UINT64, _d.FieldDescriptor.TYPE_SINT64,
                _d.FieldDescriptor.TYPE_FIXED64, _d.FieldDescriptor.TYPE_SFIXED64)
    top = 2**63 - 1 if big else 2**31 - 1
    values = [0, 1, 2, 7, 100, top, rnd.randint(0, top)] + ([] if unsigned else [-1, -top])
    return rnd.choice(values)


def _fill(cls: type, rnd: random.Random, depth: int = 0):
    msg = cls()
    for f in cls.DESCRIPTOR.fields:
        if rnd.random() < 0.35:
            continue
        repeated = f.is_repeated
        try:
            if f.type == _d.FieldDescriptor.TYPE_MESSAGE:
                if depth > 2 or f.message_type.GetOptions().map_entry:
                    continue
                sub = message_factory.GetMessageClass(f.message_type)
                if repeated:
                    for _ in range(rnd.randint(0, 3)):
                        getattr(msg, f.name).add().CopyFrom(_fill(sub, rnd, depth + 1))
                else:
                    getattr(msg, f.name).CopyFrom(_fill(sub, rnd, depth + 1))
            elif repeated:
                getattr(msg, f.name).extend(_scalar(f, rnd) for _ in range(rnd.randint(0, 4)))
            else:
                setattr(msg, f.name, _scalar(f, rnd))
        except (ValueError, TypeError):
            continue
    return msg


def _payload(method: Method, rnd: random.Random, limit: int) -> tuple[str, bytes]:
    kind = rnd.choices(["random", "filled", "truncated", "mutated", "oversized", "json"], [25, 30, 15, 20, 3, 7])[0]
    if kind == "random":
        return kind, rnd.randbytes(rnd.randint(0, 2048))
    valid = _fill(method.request, rnd).SerializeToString()
    if kind == "filled":
        return kind, valid
    if kind == "truncated":
        return kind, valid[: rnd.randint(0, max(len(valid) - 1, 0))]
    if kind == "mutated":
        data = bytearray(valid or b"\x00")
        for _ in range(rnd.randint(1, 8)):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        return kind, bytes(data)
    if kind == "oversized":
        return kind, rnd.randbytes(1) * (limit + rnd.randint(1, 4096))
    deep = rnd.choice(["[" * 100_000 + "]" * 100_000, "NaN", "1e999", '"\\ud800"', '{"a": -Infinity}', "[1]" * 10])
    job = jobs_pb2.Job(job_id=f"fz-{rnd.randrange(10**9)}", datasets=[DATASET], tier="query", purpose="research",
                       epsilon="0.01", query=jobs_pb2.Query(aggregate="count", filters=[
                           jobs_pb2.QueryFilter(column="region", op="==", value_json=deep)]))
    return kind, jobs_pb2.SubmitJobRequest(job=job).SerializeToString()


def _stranger(tmp_path) -> TlsFiles:
    init_ca(tmp_path / "other-ca", name="Some Other CA")
    issue(tmp_path / "other-ca", role=Role.OPERATOR, name="stranger", license="LIC-X")
    return TlsFiles(ca=tmp_path / "other-ca" / "ca.crt", cert=tmp_path / "other-ca" / "stranger.crt",
                    key=tmp_path / "other-ca" / "stranger.key")


def _rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def fuzz(space: LocalSpace, stranger: TlsFiles, *, count: int, workers: int, seed: int, budget_s: float) -> dict:
    """Send ``count`` fuzzed calls from ``workers`` threads (stopping at ``budget_s``); return
    the status codes seen and, for INTERNAL/UNKNOWN, what provoked them."""
    methods = _methods()
    rules = method_rules(Limits())
    codes: collections.Counter = collections.Counter()
    bad: list[tuple[str, str, str, str]] = []
    lock = threading.Lock()
    counter = iter(range(count))
    deadline = time.monotonic() + budget_s

    def one(channel: grpc.Channel, role: str, rnd: random.Random) -> None:
        m = rnd.choice(methods)
        kind, data = _payload(m, rnd, rules[m.path].max_bytes)
        try:
            if m.client_streaming:
                n = rnd.randint(1, 3)
                stream = channel.stream_stream(m.path)(iter([data] + [_payload(m, rnd, 1 << 20)[1] for _ in range(n - 1)]),
                                                       timeout=2)
                for i, _ in enumerate(stream):
                    if i >= 2:
                        stream.cancel()
                        break
                code = "OK"
            elif m.server_streaming:
                stream = channel.unary_stream(m.path)(data, timeout=2)
                for i, _ in enumerate(stream):
                    if i >= 2:
                        stream.cancel()
                        break
                code = "OK"
            else:
                channel.unary_unary(m.path)(data, timeout=5)
                code = "OK"
        except grpc.RpcError as e:
            code = e.code().name
            if e.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                with lock:
                    bad.append((m.path, role, kind, (e.details() or "")[:200]))
        with lock:
            codes[code] += 1

    def worker(w: int) -> None:
        rnd = random.Random(seed * 1000 + w)
        channels = {}
        try:
            for role in ROLES:
                tls = stranger if role == "stranger" else space.tls(role)
                channels[role] = secure_channel(space.address, tls)
            while time.monotonic() < deadline:
                with lock:
                    if next(counter, None) is None:
                        return
                role = rnd.choice(ROLES)
                one(channels[role], role, rnd)
        finally:
            for ch in channels.values():
                ch.close()

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"codes": dict(codes), "bad": bad, "sent": sum(codes.values())}


def _replay(space: LocalSpace, tmp_path) -> subprocess.CompletedProcess[str]:
    env = space.cli_env("auditor-1")
    out = tmp_path / "fuzz-export"
    run = lambda *a: subprocess.run([sys.executable, "-m", "yumen", *a], env=env, capture_output=True, text=True,
                                    timeout=600)
    exported = run("audit", "export", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    return run("audit", "replay", "--from", str(out), "--vkey", str(space.root / "broker-state" / "log.vkey"))


@pytest.fixture(scope="module")
def fuzz_space(tmp_path_factory):
    space = LocalSpace(tmp_path_factory.mktemp("fuzz"),
                       departments=(Department(id="weather-bureau", datasets=((DATASET, 3_650),)),),
                       broker_settings="sweep_interval_s = 1")
    space.setup()
    try:
        space.start(timeout=90)
        yield space
    finally:
        space.stop()


def _check(space: LocalSpace, tmp_path, result: dict, baseline: float, *, max_growth_mb: float) -> None:
    assert not result["bad"], f"{len(result['bad'])} INTERNAL/UNKNOWN, e.g. {result['bad'][:5]}"
    assert result["sent"] > 0 and "INVALID_ARGUMENT" in result["codes"], result["codes"]
    with space.client() as c:  # still serving
        assert any(reg.id == DATASET for reg, _ in c.catalog())
    replay = _replay(space, tmp_path)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    time.sleep(3)  # one or two sweeps: freed memory goes back to the system
    after = _rss_mb(space.procs["broker"].pid)
    print(f"fuzz: {result['sent']} calls, codes {result['codes']}, broker RSS {baseline:.0f} -> {after:.0f} MB")
    assert after - baseline < max_growth_mb, f"RSS {baseline:.0f} MB before, {after:.0f} MB after {result['sent']} calls"


def test_quick_fuzz_of_every_method_with_every_role_gets_no_internal_error_and_the_log_replays(fuzz_space, tmp_path):
    stranger = _stranger(tmp_path)
    fuzz(fuzz_space, stranger, count=60, workers=4, seed=1, budget_s=60)  # warm-up
    baseline = _rss_mb(fuzz_space.procs["broker"].pid)
    result = fuzz(fuzz_space, stranger, count=600, workers=8, seed=2, budget_s=240)
    _check(fuzz_space, tmp_path, result, baseline, max_growth_mb=40)


@pytest.mark.stress
@pytest.mark.slow
def test_stress_fuzz_of_10000_messages_50_at_a_time_gets_no_internal_error_bounded_memory_and_a_replay(fuzz_space, tmp_path):
    stranger = _stranger(tmp_path)
    fuzz(fuzz_space, stranger, count=300, workers=10, seed=3, budget_s=120)  # warm-up
    baseline = _rss_mb(fuzz_space.procs["broker"].pid)
    result = fuzz(fuzz_space, stranger, count=10_000, workers=50, seed=4, budget_s=900)
    assert result["sent"] >= 5_000, result  # the time bound did not cut it short
    _check(fuzz_space, tmp_path, result, baseline, max_growth_mb=80)
