"""A real broker over real mTLS against hostile and concurrent clients.

Its own small data space (one department), so floods, policy changes and limits here do not
disturb the shared one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from fractions import Fraction

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from yumen.errors import CODE_KEY, Code, YumenError
from yumen.identity import Role, init_ca, issue
from yumen.localspace import Department, LocalSpace
from yumen.rpc import TlsFiles, error_of, secure_channel
from yumen.v1 import admin_pb2, catalog_pb2, catalog_pb2_grpc, connector_pb2, connector_pb2_grpc, jobs_pb2

pytestmark = pytest.mark.e2e

DATASET = "weather-daily"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    space = LocalSpace(tmp_path_factory.mktemp("hostile"),
                       departments=(Department(id="weather-bureau", datasets=((DATASET, 3_650),)),),
                       broker_settings="sweep_interval_s = 1")
    space.setup()
    # Tight stream limits, so the tests reach them with a handful of calls.
    with (space.root / "broker.toml").open("a") as f:
        f.write("\n[limits]\nstreams_per_identity = 4\nhealth_watches_per_identity = 2\nstreams_total = 24\n")
    try:
        space.start(timeout=90)
        yield space
    finally:
        space.stop()


def _rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _raw(space: LocalSpace, who: str, method: str, payload: bytes, *, timeout: float = 10) -> grpc.RpcError | bytes:
    """Send ``payload`` as the request bytes of a unary ``method``; the error, or the reply's bytes."""
    with secure_channel(space.address, space.tls(who)) as ch:
        try:
            return ch.unary_unary(method)(payload, timeout=timeout)
        except grpc.RpcError as e:
            return e


def _catalog_answers(space: LocalSpace) -> bool:
    with space.client() as c:
        return any(reg.id == DATASET for reg, _ in c.catalog())


def _health(space: LocalSpace, timeout: float = 5) -> int:
    with secure_channel(space.address, space.tls("auditor-1")) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=timeout).status


# -- issue: the health service froze the broker ---------------------------------------------
def test_a_flood_of_short_health_watches_leaves_the_broker_serving(hostile):
    """~20 concurrent Health/Watch calls with 0.2 s deadlines, round after round, froze the
    broker for good with grpcio-health-checking's servicer. Here Check and real RPCs answer
    during and after the flood."""
    stop = threading.Event()
    outcomes: dict[str, int] = {}
    lock = threading.Lock()

    def watcher(name: str) -> None:
        with secure_channel(hostile.address, hostile.tls(name)) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while not stop.is_set():
                try:
                    for _ in stub.Watch(health_pb2.HealthCheckRequest(), timeout=0.2):
                        pass
                    code = "ended"
                except grpc.RpcError as e:
                    code = e.code().name
                with lock:
                    outcomes[code] = outcomes.get(code, 0) + 1

    threads = [threading.Thread(target=watcher, args=(name,), daemon=True)
               for name in ("operator-1", "auditor-1", "admin-1", "weather-bureau") * 6]
    for t in threads:
        t.start()
    try:
        during = []
        for _ in range(10):
            time.sleep(0.5)
            during.append((_health(hostile), _catalog_answers(hostile)))
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert all(status == health_pb2.HealthCheckResponse.SERVING and ok for status, ok in during), during
    assert sum(outcomes.values()) > 100, outcomes  # the flood really ran
    assert outcomes.get("RESOURCE_EXHAUSTED", 0) > 0, outcomes  # and the per-certificate limit refused some
    time.sleep(1)
    assert _health(hostile) == health_pb2.HealthCheckResponse.SERVING and _catalog_answers(hostile)


def test_watch_streams_past_the_per_certificate_limit_are_refused_at_once_and_counted_back(hostile):
    with secure_channel(hostile.address, hostile.tls("auditor-1")) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        open_streams = [stub.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(2)]
        for s in open_streams:
            assert next(s).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as refused:
            next(stub.Watch(health_pb2.HealthCheckRequest(), timeout=30))
        err = error_of(refused.value)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and err.code is Code.LIMIT_EXCEEDED
        assert "health watches" in err.message and err.hint
        for s in open_streams:
            s.cancel()
        deadline = time.monotonic() + 10
        while True:  # the slots come back when the streams end
            try:
                assert next(stub.Watch(health_pb2.HealthCheckRequest(), timeout=5)).status == 1
                break
            except grpc.RpcError as e:
                if e.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


# -- malformed input: INVALID_ARGUMENT, never INTERNAL ---------------------------------------
@pytest.mark.parametrize("who,method,payload,status", [
    ("operator-1", "/yumen.v1.JobService/SubmitJob", b"\xff\xfe garbage", grpc.StatusCode.INVALID_ARGUMENT),
    ("operator-1", "/yumen.v1.CatalogService/GetDataset", b"\x0a\xff\xff\xff\xff\x0f", grpc.StatusCode.INVALID_ARGUMENT),
    ("auditor-1", "/yumen.v1.AuditService/GetEntries", b"\x08", grpc.StatusCode.INVALID_ARGUMENT),
    ("admin-1", "/yumen.v1.AdminService/SetPolicy", b"\x12\x05\xff\xfe\xfd\xfc\xfb", grpc.StatusCode.INVALID_ARGUMENT),
    # authorization first: a wrong role is PERMISSION_DENIED whatever the payload carries
    ("operator-1", "/yumen.v1.AdminService/SetPolicy", b"\xff\xfe garbage", grpc.StatusCode.PERMISSION_DENIED),
    ("weather-bureau", "/yumen.v1.JobService/SubmitJob", b"\xff" * 10, grpc.StatusCode.PERMISSION_DENIED),
    ("auditor-1", "/yumen.v1.JobService/SubmitJob", b"\x00" * 3_000_000, grpc.StatusCode.PERMISSION_DENIED),
    # over the method's size limit (64 KiB for a catalog lookup)
    ("operator-1", "/yumen.v1.CatalogService/GetDataset", b"\x0a\x80\x80\x04" + b"a" * 65_536, grpc.StatusCode.RESOURCE_EXHAUSTED),
], ids=["garbage-job", "truncated-varint", "truncated-entries", "invalid-utf8-policy", "operator-sets-policy",
        "connector-submits", "auditor-submits-3mb", "oversized-lookup"])
def test_malformed_requests_get_the_documented_code_and_a_message(hostile, who, method, payload, status):
    e = _raw(hostile, who, method, payload)
    assert isinstance(e, grpc.RpcError), e
    assert e.code() is status, (e.code(), e.details())
    assert dict(e.trailing_metadata()).get(CODE_KEY), "the Yumen code travels as trailing metadata"
    assert e.details() and "internal" not in e.details().lower()


def _submit_raw(space: LocalSpace, job: jobs_pb2.Job, who: str = "operator-1") -> grpc.RpcError | bytes:
    return _raw(space, who, "/yumen.v1.JobService/SubmitJob", jobs_pb2.SubmitJobRequest(job=job).SerializeToString())


def _query_job(job_id: str, value_json: str) -> jobs_pb2.Job:
    return jobs_pb2.Job(job_id=job_id, datasets=[DATASET], tier="query", purpose="research", epsilon="0.1",
                        query=jobs_pb2.Query(aggregate="count", filters=[
                            jobs_pb2.QueryFilter(column="station", op="==", value_json=value_json)]))


def _algorithm_job(job_id: str, params_json: str) -> jobs_pb2.Job:
    return jobs_pb2.Job(job_id=job_id, datasets=[DATASET], tier="custom-algorithm", purpose="research", epsilon="0.1",
                        algorithm=jobs_pb2.Algorithm(source=b"print(1)\n", params_json=params_json,
                                                     outputs=[jobs_pb2.OutputRange(name="x", lower=0, upper=1)]))


@pytest.mark.parametrize("make,text,needle", [
    (_query_job, "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    (_algorithm_job, '{"a":' * 100_000 + "1" + "}" * 100_000, "nested too deeply"),
    (_query_job, "NaN", "NaN"),
    (_query_job, "Infinity", "Infinity"),
    (_query_job, "1e999", "too large"),
    (_algorithm_job, '{"k": -Infinity}', "Infinity"),
    (_algorithm_job, '{"k": "\\ud800"}', "not valid Unicode"),
    (_query_job, '"\\udfff"', "not valid Unicode"),
    (_algorithm_job, "[1, 2]", "JSON object"),
], ids=["deep-filter", "deep-params", "nan", "infinity", "1e999", "neg-infinity-param", "surrogate-param",
        "surrogate-filter", "params-not-object"])
def test_hostile_json_in_filters_and_parameters_is_invalid_argument_with_a_clear_message(hostile, make, text, needle):
    e = _submit_raw(hostile, make("hostile-json", text))
    assert isinstance(e, grpc.RpcError)
    assert e.code() is grpc.StatusCode.INVALID_ARGUMENT, (e.code(), e.details())
    assert needle in e.details()


def test_error_messages_echo_only_a_bounded_part_of_the_input(hostile):
    huge = "j" * 2_000_000
    e = _submit_raw(hostile, _query_job(huge, '"x"'))
    assert isinstance(e, grpc.RpcError) and e.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert len(e.details()) < 500 and "2000000 characters" in e.details()


def test_a_garbage_policy_is_invalid_argument_and_changes_nothing(hostile):
    from yumen.client import AdminClient
    from yumen.policy import PolicyBundle

    with AdminClient(hostile.address, hostile.tls("admin-1")) as admin:
        version, bundle = admin.policy()
        for model in ("[request_definition]\nr = sub\n", "\x00garbage", "[matchers]\nm = r.sub ==\n"):
            with pytest.raises(YumenError) as bad:
                admin.set_policy(PolicyBundle(model=model, rules=bundle.rules, settings=bundle.settings))
            assert bad.value.code is Code.INVALID_ARGUMENT and "policy is not valid" in bad.value.message
        with pytest.raises(YumenError) as bad:
            admin.set_policy(PolicyBundle(model=bundle.model, rules=bundle.rules, settings="levels = 3"))
        assert bad.value.code is Code.INVALID_ARGUMENT
        assert admin.policy()[0] == version


# -- registrations -------------------------------------------------------------------------
def _fake_connector_stream(space: LocalSpace, datasets: list[catalog_pb2.Dataset], then: list[connector_pb2.ConnectorMessage]):
    """Dial in as the department's connector, say Hello with ``datasets``, then send ``then``."""
    ch = secure_channel(space.address, space.tls("weather-bureau"))
    outbox: list = [connector_pb2.ConnectorMessage(hello=connector_pb2.Hello(connector_id="weather-bureau", datasets=datasets)),
                    *then]
    done = threading.Event()

    def messages():
        yield from outbox
        done.wait(60)

    responses = connector_pb2_grpc.ConnectorServiceStub(ch).Connect(messages(), timeout=60)
    return ch, responses, done


def _registration(dataset_id: str, **column) -> catalog_pb2.Dataset:
    col = dict(name="v", type="float", lower=0.0, upper=1.0)
    col.update(column)
    return catalog_pb2.Dataset(id=dataset_id, title="t", department="weather-bureau", level="L1",
                               columns=[catalog_pb2.Column(**col)], version="sha256:" + "c" * 64)


def test_infinite_bounds_and_empty_versions_are_refused_before_anything_is_stored_or_logged(hostile, tmp_path):
    from yumen.client import YumenClient

    bad_bounds = _registration("infinite-bounds", lower=float("-inf"), upper=float("inf"))
    no_version = _registration("no-version")
    no_version.version = ""
    good = _registration("fine-one")
    size_before = _log_size(hostile)
    ch, responses, done = _fake_connector_stream(hostile, [bad_bounds, no_version, good], [])
    try:
        welcome = next(responses).welcome
        assert list(welcome.accepted_datasets) == ["fine-one"]
        reasons = {r.dataset: r.reason for r in welcome.refused_datasets}
        assert "not a finite number" in reasons["infinite-bounds"] and "content digest" in reasons["no-version"]
    finally:
        done.set()
        ch.close()
    with YumenClient(hostile.address, hostile.tls("operator-1")) as c:
        ids = {reg.id for reg, _ in c.catalog()}
    assert "infinite-bounds" not in ids and "no-version" not in ids and "fine-one" in ids
    entries = _log_entries(hostile, tmp_path, size_before)
    registered = [e.dataset_id for e in entries if e.TYPE == "dataset_registered"]
    assert registered == ["fine-one"]
    env = hostile.cli_env("operator-1")
    shown = subprocess.run([sys.executable, "-m", "yumen", "catalog", "show", "fine-one", "--json"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "Infinity" not in shown.stdout and "NaN" not in shown.stdout
    json.loads(shown.stdout)
    _restore_connector(hostile)


def test_malformed_reexecution_reports_from_a_connector_do_not_drop_its_link(hostile):
    garbage = [connector_pb2.ConnectorMessage(reexecuted=connector_pb2.Signed(payload=p, signature=b"x"))
               for p in (b"\xff\xfe\x00", b"[1, 2]", b"{" * 50_000, b'{"job_id": 7}', b"null", b'"\\ud800"')]
    ch, responses, done = _fake_connector_stream(hostile, [_registration("fine-one")], garbage)
    try:
        assert next(responses).WhichOneof("kind") == "welcome"
        time.sleep(2)  # the broker reads the garbage meanwhile
        with hostile.client() as c:
            online = {reg.id: on for reg, on in c.catalog()}
        assert online.get("fine-one") is True, "the link is still up after the malformed messages"
    finally:
        done.set()
        ch.close()
    _restore_connector(hostile)


def _restore_connector(space: LocalSpace) -> None:
    """The fake connector replaced the real one's link; restart the real one."""
    space.stop_process("weather-bureau")
    space.start_connector("weather-bureau")
    space.wait_online([DATASET])


def _log_size(space: LocalSpace) -> int:
    from yumen.audit import AuditClient

    with secure_channel(space.address, space.tls("auditor-1")) as ch:
        return int(AuditClient(ch).signed_checkpoint().note.splitlines()[1])  # origin, size, root


def _log_entries(space: LocalSpace, tmp_path, start: int) -> list:
    from yumen.audit._reconcile import entries_from_export

    env = space.cli_env("auditor-1")
    out = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-m", "yumen", "audit", "export", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [entry for index, entry in entries_from_export(str(out)) if index >= start]


# -- policy changes race ---------------------------------------------------------------------
def test_concurrent_policy_changes_on_one_version_one_wins_and_the_chain_replays(hostile, tmp_path):
    from yumen.client import AdminClient
    from yumen.policy import PolicyBundle

    with AdminClient(hostile.address, hostile.tls("admin-1")) as admin:
        base, bundle = admin.policy()
    wins, conflicts, other = [], [], []
    gate = threading.Barrier(12)

    def change(i: int) -> None:
        new = PolicyBundle(model=bundle.model, rules=bundle.rules, settings=bundle.settings + f"\n# variant {i}\n")
        with AdminClient(hostile.address, hostile.tls("admin-1")) as admin:
            gate.wait()
            try:
                wins.append(admin.set_policy(new, replaces=base))
            except YumenError as e:
                (conflicts if e.code is Code.CONFLICT else other).append(e)

    threads = [threading.Thread(target=change, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not other, other[:2]
    assert len(wins) == 1 and len(conflicts) == 11
    assert "changed it meanwhile" in conflicts[0].message and conflicts[0].hint
    _replay_succeeds(hostile, tmp_path)


def _replay_succeeds(space: LocalSpace, tmp_path) -> str:
    env = space.cli_env("auditor-1")
    out = tmp_path / "replay-export"
    run = lambda *a: subprocess.run([sys.executable, "-m", "yumen", *a], env=env, capture_output=True, text=True,
                                    timeout=300)
    assert run("audit", "export", "--out", str(out)).returncode == 0
    replay = run("audit", "replay", "--from", str(out), "--vkey", str(space.root / "broker-state" / "log.vkey"))
    assert replay.returncode == 0, replay.stdout + replay.stderr
    return replay.stdout


# -- memory ----------------------------------------------------------------------------------
def test_memory_returns_near_its_baseline_after_a_flood_of_garbage(hostile):
    """Each unparseable request used to leave ~18 KB behind for good (gRPC's own failure path);
    now the broker's resident memory after 6,000 garbage calls stays within a small margin of
    what it was before (the broker trims freed memory in its sweeper, every second here)."""
    import random

    pid = hostile.procs["broker"].pid
    methods = ["/yumen.v1.JobService/SubmitJob", "/yumen.v1.CatalogService/GetDataset", "/yumen.v1.JobService/GetJob",
               "/yumen.v1.AdminService/SetPolicy", "/grpc.health.v1.Health/Check"]

    def flood(seed: int, n: int) -> None:
        rnd = random.Random(seed)
        with secure_channel(hostile.address, hostile.tls(rnd.choice(["operator-1", "admin-1", "auditor-1"]))) as ch:
            calls = {m: ch.unary_unary(m) for m in methods}
            for _ in range(n):
                try:
                    calls[rnd.choice(methods)](rnd.randbytes(rnd.randint(1, 3000)), timeout=10)
                except grpc.RpcError:
                    pass

    def rounds(k: int) -> None:
        threads = [threading.Thread(target=flood, args=(k * 100 + i, 300)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    rounds(0)  # warm up: thread stacks, caches, allocator arenas
    time.sleep(3)
    baseline = _rss_mb(pid)
    rounds(1)
    rounds(2)
    time.sleep(3)
    after = _rss_mb(pid)
    assert after - baseline < 25, f"RSS {baseline:.0f} MB before, {after:.0f} MB after 6,000 garbage calls"
    assert _health(hostile) == health_pb2.HealthCheckResponse.SERVING


# -- a second broker on the same address --------------------------------------------------------
def test_a_second_broker_on_the_same_address_refuses_to_start(hostile, tmp_path):
    text = (hostile.root / "broker.toml").read_text().replace('state_dir = "broker-state"', f'state_dir = "{tmp_path}/second"')
    (tmp_path / "second.toml").write_text(text.replace('"pki/', f'"{hostile.root}/pki/').replace(
        '"policy.csv"', f'"{hostile.root}/policy.csv"').replace('"policy.toml"', f'"{hostile.root}/policy.toml"').replace(
        '"broker-state/log.key"', f'"{tmp_path}/second/log.key"'))
    proc = subprocess.run([sys.executable, "-m", "yumen", "broker", "serve", "--config", str(tmp_path / "second.toml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"cannot listen on {hostile.address}" in proc.stderr and "in use" in proc.stderr
    assert not (tmp_path / "second" / "broker.db").exists(), "it refused before touching any state"
    assert _catalog_answers(hostile)


# -- connections --------------------------------------------------------------------------------
def test_connections_past_the_limit_are_shut_and_the_broker_serves_again_when_they_go(hostile):
    """Anyone who can reach the port can open TCP connections without a certificate. The broker
    holds at most ``[limits] connections`` of them (512 by default): past that gRPC shuts new ones
    at once, so descriptors and memory stay bounded; a connection that never finishes its TLS
    handshake is dropped after 10 s; and once the flood goes, certificate holders are served."""
    import socket

    from yumen.broker._guard import Limits

    limit = Limits().connections
    pid = hostile.procs["broker"].pid
    host, port = hostile.address.rsplit(":", 1)

    def descriptors() -> int:
        return len(os.listdir(f"/proc/{pid}/fd"))

    baseline = descriptors()
    flood: list[socket.socket] = []
    try:
        for _ in range(limit + 200):
            flood.append(socket.create_connection((host, int(port)), timeout=10))
        peak = baseline
        for _ in range(20):  # let the broker accept what is queued
            time.sleep(0.25)
            peak = max(peak, descriptors())
        assert peak - baseline <= limit + 16, f"{peak - baseline} descriptors over a limit of {limit} connections"
    finally:
        for s in flood:
            s.close()
    deadline = time.monotonic() + 60
    while True:
        try:
            assert _health(hostile) == health_pb2.HealthCheckResponse.SERVING
            break
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert _catalog_answers(hostile)
