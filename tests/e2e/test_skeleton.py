"""End to end over real processes and real mTLS: both tiers, denials, bad input, budget."""

from __future__ import annotations

import time

import grpc
import pytest

from yumen.errors import Code, exit_code
from yumen.identity import Role, init_ca, issue
from yumen.localspace import OPERATOR_LICENSE
from yumen.rpc import TlsFiles, secure_channel
from yumen.v1 import catalog_pb2, catalog_pb2_grpc

ALGOS = __import__("pathlib").Path(__file__).parent / "algorithms"

pytestmark = pytest.mark.e2e


def test_catalog_lists_metadata_of_every_connected_dataset(operator):
    out = operator.json("catalog", "list")
    ids = {d["id"]: d for d in out["datasets"]}
    assert {"weather-daily", "outpatient-visits", "bus-trips", "scenic-visits"} <= set(ids)
    ov = ids["outpatient-visits"]
    assert ov["online"] and ov["level"] == "L3" and ov["version"].startswith("sha256:")
    assert all("rows" not in d and "data" not in d for d in out["datasets"])


def test_dp_query_is_released_with_noise_scale_and_provenance(operator):
    out = operator.json("submit", "query", "--dataset", "outpatient-visits", "--aggregate", "count",
                        "--epsilon", "0.25", "--purpose", "research")
    assert out["job"]["state"] == "succeeded"
    (v,) = out["result"]["values"]
    assert v["name"] == "count" and v["noise_scale"] > 0 and v["ci95"] > 0
    # 20,000 rows; with ε 0.25 and 10 rows per patient the noise is in the hundreds, not thousands
    assert abs(v["value"] - 20_000) < 2_000
    (p,) = out["result"]["provenance"]
    assert p["department"] == "health-commission" and p["dataset_version"].startswith("sha256:")
    assert out["result"]["result_digest"].startswith("sha256:")


def test_grouped_mean_returns_each_declared_category_once_released_or_suppressed(operator):
    catalog = operator.json("catalog", "show", "outpatient-visits")
    regions = next(c["categories"] for c in catalog["columns"] if c["name"] == "region")
    out = operator.json("submit", "query", "--dataset", "outpatient-visits", "--aggregate", "mean",
                        "--column", "cost_yuan", "--group-by", "region", "--epsilon", "0.25", "--purpose", "research")
    groups = [v["group"] for v in out["result"]["values"]]
    suppressed = out["result"]["suppressed_groups"]  # L3 data: groups under 10 people are left out
    assert [g for g in regions if g not in suppressed] == groups
    assert set(suppressed) <= set(regions)


def test_policy_denial_is_permission_denied_with_an_actionable_reason(operator):
    proc = operator("submit", "query", "--dataset", "outpatient-visits", "--aggregate", "count",
                    "--epsilon", "0.1", "--purpose", "commercial")
    assert proc.returncode == exit_code(Code.POLICY_DENIED)
    assert "denied by policy" in proc.stderr and "allowed purposes: public-interest, research" in proc.stderr


def test_unknown_dataset_is_not_found_with_a_hint(operator):
    proc = operator("submit", "query", "--dataset", "no-such-data", "--aggregate", "count",
                    "--epsilon", "0.1", "--purpose", "research")
    assert proc.returncode == exit_code(Code.NOT_FOUND)
    assert "no dataset 'no-such-data'" in proc.stderr and "yumen catalog list" in proc.stderr


@pytest.mark.parametrize("args,needle", [
    (["--aggregate", "sum", "--epsilon", "0.1"], "needs a column"),
    (["--aggregate", "count", "--group-by", "cost_yuan", "--epsilon", "0.1"], "not a declared category column"),
    (["--aggregate", "sum", "--column", "no_such_column", "--epsilon", "0.1"], "has no column"),
    (["--aggregate", "count", "--epsilon", "-1"], "not a positive decimal"),
    (["--aggregate", "count", "--epsilon", "5"], "above the"),
])
def test_malformed_query_gets_a_clear_error_and_spends_nothing(space, operator, args, needle):
    job_id = f"bad-{abs(hash(tuple(args))) % 10**8}"
    proc = operator("submit", "query", "--dataset", "outpatient-visits", *args, "--purpose", "research", "--job-id", job_id)
    assert proc.returncode != 0
    assert needle in proc.stderr
    status = operator("job", "status", job_id)
    assert status.returncode == exit_code(Code.NOT_FOUND)


def test_budget_overrun_is_refused_with_what_is_left_and_leaves_no_job(operator):
    # bus-trips is L2: commercial queries may spend at most 0.5 per job and 2 in all.
    for i in range(4):
        out = operator.json("submit", "query", "--dataset", "bus-trips", "--aggregate", "count",
                            "--epsilon", "0.5", "--purpose", "commercial", "--job-id", f"budget-{i}")
        assert out["job"]["state"] == "succeeded"
    proc = operator("submit", "query", "--dataset", "bus-trips", "--aggregate", "count",
                    "--epsilon", "0.5", "--purpose", "commercial", "--job-id", "budget-over")
    assert proc.returncode == exit_code(Code.BUDGET_EXHAUSTED)
    assert "0 of 2 ε left on dataset bus-trips" in proc.stderr
    assert operator("job", "status", "budget-over").returncode == exit_code(Code.NOT_FOUND)


def test_resubmitting_the_same_job_id_is_idempotent(operator):
    args = ["submit", "query", "--dataset", "weather-daily", "--aggregate", "count", "--epsilon", "0.1",
            "--purpose", "research", "--job-id", "idem-1"]
    first = operator.json(*args)
    second = operator.json(*args)
    assert first["result"]["result_digest"] == second["result"]["result_digest"]


def test_department_vetoes_a_job_the_broker_allowed(operator):
    out = operator.json("submit", "query", "--dataset", "scenic-visits", "--aggregate", "count",
                        "--epsilon", "0.5", "--purpose", "research")
    assert out["job"]["state"] == "refused"
    assert "refused by department culture-tourism" in out["job"]["message"]
    assert "limit of 0.25" in out["job"]["message"]


def _catalog_call(space, tls: TlsFiles) -> None:
    ch = secure_channel(space.address, tls)
    try:
        catalog_pb2_grpc.CatalogServiceStub(ch).ListDatasets(catalog_pb2.ListDatasetsRequest(), timeout=5)
    finally:
        ch.close()


def test_client_with_a_certificate_from_another_ca_is_refused(space, tmp_path):
    init_ca(tmp_path / "rogue")
    cert, key = issue(tmp_path / "rogue", role=Role.OPERATOR, name="operator-1", license=OPERATOR_LICENSE)
    tls = TlsFiles(ca=space.pki / "ca.crt", cert=cert, key=key)
    with pytest.raises(grpc.RpcError) as e:
        _catalog_call(space, tls)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails


def test_client_without_a_certificate_is_refused(space):
    creds = grpc.ssl_channel_credentials(root_certificates=(space.pki / "ca.crt").read_bytes())
    ch = grpc.secure_channel(space.address, creds)
    with pytest.raises(grpc.RpcError) as e:
        catalog_pb2_grpc.CatalogServiceStub(ch).ListDatasets(catalog_pb2.ListDatasetsRequest(), timeout=5)
    ch.close()
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_connector_certificate_cannot_submit_jobs(space):
    from yumen.client import YumenClient
    from yumen.errors import YumenError
    from yumen.jobs import Aggregate, JobRequest, Purpose, Query, Tier
    from fractions import Fraction

    with YumenClient(space.address, space.tls("weather-bureau")) as c:
        with pytest.raises(YumenError) as e:
            c.submit(JobRequest(job_id="x1", datasets=("weather-daily",), tier=Tier.QUERY, purpose=Purpose.RESEARCH,
                                epsilon=Fraction(1, 10), query=Query(aggregate=Aggregate.COUNT)))
    assert e.value.code is Code.PERMISSION_DENIED


def test_connector_reconnects_after_the_broker_restarts(space, operator):
    space.stop_process("broker")
    space.start_broker()
    space.wait_online(["weather-daily", "outpatient-visits"], timeout=60)
    out = operator.json("submit", "query", "--dataset", "weather-daily", "--aggregate", "count",
                        "--epsilon", "0.1", "--purpose", "research")
    assert out["job"]["state"] == "succeeded"


def test_a_custom_algorithm_that_fails_gets_a_clear_error(operator):
    # With 100 blocks the released failure share (true value 1) has noise scale 1/100 / 0.5 =
    # 0.02; it is reported as failed above 0.5 + 0.02·ln 5000 ≈ 0.67, which it misses only if
    # the noise is below -0.33: probability about 3e-8. The three run at once: each is held
    # to its deadline (the space's allowance plus its 13 s limit).
    from concurrent.futures import ThreadPoolExecutor

    def submit(algo: str) -> dict:
        return operator.json("submit", "algorithm", str(ALGOS / algo), "--dataset", "weather-daily", "--blocks", "100",
                             "--timeout", "13", "--output", "answer=0:1", "--epsilon", "1", "--purpose", "research")

    with ThreadPoolExecutor(3) as pool:
        outs = list(pool.map(submit, ("crash.py", "garbage.py", "sleep_forever.py")))
    for out in outs:
        assert out["job"]["state"] == "failed"
        assert "failed in most blocks" in out["job"]["message"] and "yumen dev run" in out["job"]["message"]


def test_l3_data_refuses_custom_algorithms(operator):
    proc = operator("submit", "algorithm", str(ALGOS / "mean_cost.py"), "--dataset", "outpatient-visits",
                    "--output", "mean_cost=0:2000", "--epsilon", "0.25", "--purpose", "research")
    assert proc.returncode == exit_code(Code.POLICY_DENIED) and "L3 data does not allow custom-algorithm" in proc.stderr


def test_custom_algorithm_result_is_released_with_noise_on_clamped_block_outputs(operator):
    out = operator.json("submit", "algorithm", str(ALGOS.parent.parent.parent / "examples" / "algorithms" / "seasonal_temperature.py"),
                        "--dataset", "weather-daily", "--output", "summer_mean_c=10:30", "--output", "winter_mean_c=-20:5",
                        "--blocks", "4", "--timeout", "8", "--epsilon", "0.5", "--purpose", "research")
    assert out["job"]["state"] == "succeeded"
    names = {v["name"] for v in out["result"]["values"]}
    assert {"summer_mean_c", "winter_mean_c"} <= names
    for v in out["result"]["values"]:
        assert v["noise_scale"] > 0


def test_connector_serves_prometheus_metrics(space, operator):
    import re
    import urllib.request

    operator.json("submit", "query", "--dataset", "weather-daily", "--aggregate", "count", "--epsilon", "0.1",
                  "--purpose", "research")
    text = (space.root / "weather-bureau.toml").read_text()
    port = re.search(r'metrics = "127.0.0.1:(\d+)"', text).group(1)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'yumen_connector_jobs_total{dataset="weather-daily",outcome="ok",tier="query"}' in body
    assert "yumen_connector_job_seconds_bucket" in body and "yumen_connector_connected 1.0" in body


def test_connector_check_says_what_is_wrong_in_plain_words(space, tmp_path):
    import subprocess
    import sys

    ok = subprocess.run([sys.executable, "-m", "yumen", "connector", "check", "--config", "weather-bureau.toml"],
                        cwd=space.root, text=True, capture_output=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "certificates: ok" in ok.stdout and "dataset weather-daily: ok" in ok.stdout and "sandbox bwrap: ok" in ok.stdout
    broken = (space.root / "weather-bureau.toml").read_text().replace("weather-daily.parquet", "missing.parquet")
    broken = broken.replace('cert = "pki/weather-bureau.crt"', 'cert = "pki/operator-1.crt"')
    (space.root / "broken.toml").write_text(broken)
    bad = subprocess.run([sys.executable, "-m", "yumen", "connector", "check", "--config", "broken.toml"],
                         cwd=space.root, text=True, capture_output=True, timeout=120)
    assert bad.returncode == 2
    assert "problem: certificates" in bad.stdout and "problem: dataset weather-daily" in bad.stdout
    assert "missing.parquet" in bad.stdout


def test_broker_serves_standard_health_checking_and_reflection(space):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from yumen.rpc import secure_channel

    ch = secure_channel(space.address, space.tls("operator-1"))
    try:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        (resp,) = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
        names = {s.name for s in resp.list_services_response.service}
        assert {"yumen.v1.JobService", "yumen.v1.CatalogService", "yumen.v1.ConnectorService", "yumen.v1.AuditService",
                "grpc.health.v1.Health"} <= names
    finally:
        ch.close()
