"""The connector as an enforcement point: what it checks before touching data, and after."""

from __future__ import annotations

import dataclasses
import json
import time
from fractions import Fraction

import pytest
from cryptography import x509

from yumen.catalog import DatasetRegistration
from yumen.connectors import LocalPolicy, SourceSpec, demo_registration, generate_demo
from yumen.connectors._config import ConnectorConfig, DatasetConfig
from yumen.connectors._executor import Executor
from yumen.connectors._timing import Timing
from yumen.identity import Role, init_ca, issue, load_private_key
from yumen.rpc import TlsFiles
from yumen.tickets import Receipt, Ticket


@pytest.fixture
def world(tmp_path):
    init_ca(tmp_path / "pki")
    bcert, bkey = issue(tmp_path / "pki", role=Role.BROKER, name="broker")
    ccert, ckey = issue(tmp_path / "pki", role=Role.CONNECTOR, name="wb", department="weather-bureau")
    data = generate_demo("weather-daily", 3_650, 1, tmp_path / "w.parquet")
    reg = DatasetRegistration.from_dict(demo_registration("weather-daily"))
    config = ConnectorConfig(
        id="wb", department="weather-bureau", broker="127.0.0.1:1", state_dir=tmp_path / "state", sandbox="bwrap",
        max_parallel_jobs=1, tls=TlsFiles(ca=tmp_path / "pki" / "ca.crt", cert=ccert, key=ckey), broker_certificate=bcert,
        local_policy=LocalPolicy(max_epsilon_per_job=Fraction(1), dataset_epsilon_cap=Fraction(3, 2)),
        datasets=(DatasetConfig(registration=reg, source=SourceSpec(kind="parquet", path=str(data))),), path=tmp_path / "c.toml",
        timing=Timing(allowance_s=0.5, wave_slack_s=0.1),
    )
    broker_key = load_private_key(bkey)
    executor = Executor(config, load_private_key(ckey), x509.load_pem_x509_certificate(bcert.read_bytes()))
    connector_cert = x509.load_pem_x509_certificate(ccert.read_bytes())
    version = executor.datasets["weather-daily"].refresh().version

    def ticket(job_id: str = "j1", **kw):
        fields = dict(job_id=job_id, broker="broker", connector="wb", department="weather-bureau", dataset="weather-daily",
                      dataset_version=version, operator="op", license="L", tier="query", purpose="research",
                      epsilon=Fraction(1, 2), work={"query": {"aggregate": "count", "column": "", "group_by": ""}},
                      obligations={}, policy_version="sha256:" + "0" * 64, rule="r",
                      issued_at_ms=int(time.time() * 1000), expires_at_ms=int(time.time() * 1000) + 60_000)
        fields.update(kw)
        return Ticket(**fields).sign(broker_key)

    def run(payload_sig, executor=executor):
        out = executor.handle(*payload_sig, b"")
        return None if out is None else Receipt.verify(out[0], out[1], connector_cert)

    return {"ticket": ticket, "run": run, "config": config, "executor": executor, "bkey": broker_key,
            "ckey": load_private_key(ckey), "bcert": bcert, "tmp": tmp_path}


def test_a_ticket_signed_by_another_key_is_dropped_unanswered(world, tmp_path):
    init_ca(tmp_path / "rogue")
    _, rogue = issue(tmp_path / "rogue", role=Role.BROKER, name="broker")
    payload, _ = world["ticket"]()
    from yumen.identity import sign_payload

    assert world["run"]((payload, sign_payload(load_private_key(rogue), "ticket", payload))) is None


def test_a_valid_ticket_runs_once_and_a_redelivery_gets_the_same_receipt(world):
    first = world["run"](world["ticket"]())
    again = world["run"](world["ticket"]())  # re-signed, same job and dataset
    assert first.status == "ok" and first.values and first.commitment.startswith("sha256:")
    assert again.digest() == first.digest()


@pytest.mark.parametrize("change,needle", [
    ({"connector": "other"}, "addressed to connector other"),
    ({"dataset": "no-such"}, "does not serve dataset no-such"),
    ({"expires_at_ms": 1}, "expired"),
    ({"epsilon": Fraction(2)}, "above the department's limit of 1"),
])
def test_the_department_refuses_before_touching_data(world, change, needle):
    r = world["run"](world["ticket"](**change))
    assert r.status == "refused" and needle in r.error and r.epsilon_charged == 0


def test_algorithm_source_that_does_not_match_the_ticket_digest_never_runs(world):
    work = {"algorithm": {"digest": "sha256:" + "0" * 64, "outputs": [{"name": "a", "lower": 0, "upper": 1}],
                          "blocks": 2}}
    out = world["executor"].handle(*world["ticket"]("algo", tier="custom-algorithm", work=work), b"print('hi')")
    r = Receipt.from_dict(json.loads(out[0]))
    assert r.status == "refused" and "does not match the digest" in r.error and r.epsilon_charged == 0


def test_the_departments_own_ledger_refuses_an_overrun_the_broker_allowed(world):
    assert world["run"](world["ticket"]("a", epsilon=Fraction(1))).status == "ok"
    world["executor"].steward.wait_idle(120)  # the version's quality report, made off the job path
    r = world["run"](world["ticket"]("b", epsilon=Fraction(1)))
    # 1.5 less the job's 1 and the version's quality report (0.1, [quality] epsilon's default)
    assert r.status == "refused" and "own budget" in r.error and "0.4 of 1.5" in r.error


def test_a_job_interrupted_by_a_crash_is_reported_failed_not_run_twice(world):
    payload, sig = world["ticket"]("crashy")
    t = Ticket.verify(payload, sig, x509.load_pem_x509_certificate(world["bcert"].read_bytes()))
    world["executor"].state.claim(t.job_id, t.dataset, Ticket.digest_of_payload(payload))  # then the process died
    fresh = Executor(world["config"], world["ckey"], x509.load_pem_x509_certificate(world["bcert"].read_bytes()))
    r = world["run"]((payload, sig), executor=fresh)
    assert r.status == "failed" and "interrupted" in r.error


def test_an_encryption_context_that_does_not_match_the_ticket_is_refused(world):
    payload, sig = world["ticket"]("he", work={"query": {"aggregate": "count", "column": "", "group_by": ""},
                                              "he_context": "sha256:" + "1" * 64})
    out = world["executor"].handle(payload, sig, b"", b"another context")
    r = Receipt.from_dict(json.loads(out[0]))
    assert r.status == "refused" and "encryption context" in r.error


def _values(receipt: Receipt, name: str) -> dict[str, float]:
    return {v.group: v.value for v in receipt.values if v.name == name}


def _executor_on(world, tmp_path, frame, *, name: str):
    """An executor serving ``frame`` as weather-daily, each row its own privacy unit (k = 1),
    so that noisy counts are within a few rows of the truth."""
    import polars as pl

    from yumen.catalog import PrivacyUnit
    from yumen.connectors._config import DatasetConfig

    path = tmp_path / f"{name}.parquet"
    frame.write_parquet(path)
    served = world["executor"].datasets["weather-daily"]
    reg = dataclasses.replace(served.base, privacy_unit=PrivacyUnit())
    config = dataclasses.replace(world["config"], state_dir=tmp_path / f"state-{name}",
                                 local_policy=LocalPolicy(max_epsilon_per_job=Fraction(1), dataset_epsilon_cap=Fraction(50)),
                                 datasets=(DatasetConfig(registration=reg, source=SourceSpec(kind="parquet", path=str(path))),))
    fresh = Executor(config, world["ckey"], x509.load_pem_x509_certificate(world["bcert"].read_bytes()))
    return fresh, fresh.datasets["weather-daily"].refresh().version


def _weather(world, tmp_path):
    import polars as pl

    return pl.read_parquet(world["executor"].datasets["weather-daily"].source.snapshot(tmp_path / "copy"))


@pytest.mark.parametrize("query", [
    {"aggregate": "variance", "column": "temp_mean_c", "group_by": "region"},
    {"aggregate": "mean", "column": "temp_mean_c", "group_by": "region"},
    {"aggregate": "quantile", "column": "temp_mean_c", "group_by": "region", "quantile": "0.5"},
    {"aggregate": "sum", "column": "precip_mm", "group_by": "region"},
])
def test_a_grouped_release_under_a_minimum_group_size_carries_each_groups_noisy_count(world, tmp_path, query):
    frame = _weather(world, tmp_path)
    executor, version = _executor_on(world, tmp_path, frame, name="mgs")
    r = world["run"](world["ticket"](f"mgs-{query['aggregate']}", work={"query": query, "counts": True},
                                     epsilon=Fraction(1), dataset_version=version), executor=executor)
    assert r.status == "ok", r.error
    counts, stat = _values(r, "count"), _values(r, query["aggregate"])
    assert set(counts) == set(stat) and len(stat) > 1
    assert r.epsilon_charged <= Fraction(1)
    truth = dict(frame.group_by("region").len().iter_rows())
    assert all(abs(counts[g] - truth.get(g, 0)) < 40 for g in counts)


def test_a_partial_mean_counts_only_the_rows_its_sum_used(world, tmp_path):
    import polars as pl

    frame = _weather(world, tmp_path)
    # half of the temperatures are missing
    holes = frame.with_columns(pl.when(pl.int_range(pl.len()) % 2 == 0).then(None)
                               .otherwise(pl.col("temp_mean_c")).alias("temp_mean_c"))
    executor, version = _executor_on(world, tmp_path, holes, name="holes")
    r = world["run"](world["ticket"]("partial-mean", dataset_version=version, epsilon=Fraction(1),
                                     work={"query": {"aggregate": "mean", "column": "temp_mean_c", "group_by": ""},
                                           "partial": "sum+count"}), executor=executor)
    assert r.status == "ok", r.error
    (count,) = _values(r, "count").values()
    present = holes["temp_mean_c"].is_not_null().sum()
    assert abs(count - present) < 60 and abs(count - holes.height) > 1000


def _approved(world, source: str, job_id: str, outputs=({"name": "mean_temp", "lower": -40, "upper": 45},), timeout_s=5):
    import hashlib

    digest = "sha256:" + hashlib.sha256(source.encode()).hexdigest()
    state = world["executor"].state
    state.request_approval(digest, source.encode(), {"job_id": job_id})
    state.decide_approval(digest, "approved", limits={}, note="", by="reviewer")
    work = {"algorithm": {"digest": digest, "outputs": list(outputs), "timeout_s": timeout_s, "memory_mb": 256,
                          "blocks": 10, "params": {}}}
    out = world["executor"].handle(*world["ticket"](job_id, tier="approved-algorithm", work=work), source.encode())
    return Receipt.from_dict(json.loads(out[0])), digest


@pytest.mark.parametrize("source,kind,secret", [
    ("import json\njson.dump({'mean_temp': 1.0, 'victim_x_87_25': 1.0}, open('/data/output/result.json','w'))\n",
     "invalid-output", "victim_x_87_25"),
    ("import sys\nsys.exit(87)\n", "error", "87"),
    ("import json\njson.dump({f'k{i}': 1.0 for i in range(1112)}, open('/data/output/result.json','w'))\n",
     "invalid-output", "1112"),
])
def test_an_approved_algorithms_failure_reaches_the_operator_as_one_fixed_message_per_kind(world, source, kind, secret):
    from yumen.connectors._executor import public_failure

    receipt, digest = _approved(world, source, f"fail-{kind}-{len(source)}", timeout_s=2)
    assert receipt.status == "failed"
    assert receipt.error == public_failure(kind, algorithm=True)
    # nothing of the detail is anywhere in the signed receipt (digests, signatures and times aside:
    # a millisecond time holds any two digits now and then)
    fields = {k: v for k, v in receipt.to_dict().items() if not k.endswith("digest") and k != "at_ms"}
    fields["destruction"] = {k: v for k, v in fields.get("destruction", {}).items() if k != "at_ms"}
    text = json.dumps(fields)
    assert secret not in text
    (failure,) = world["executor"].state.failures(digest)
    assert failure["kind"] == kind and secret in failure["detail"]  # the department keeps it


def test_a_query_that_fails_after_reading_data_says_only_that(world, tmp_path):
    import polars as pl

    frame = _weather(world, tmp_path).drop("wind_ms")  # the source lost a registered column
    executor, version = _executor_on(world, tmp_path, frame, name="lost-column")
    r = world["run"](world["ticket"]("q-fail", dataset_version=version,
                                     work={"query": {"aggregate": "sum", "column": "wind_ms", "group_by": ""}}),
                     executor=executor)
    from yumen.connectors._executor import public_failure

    assert r.status == "failed" and r.error == public_failure("query", algorithm=False)
    assert "wind_ms" not in json.dumps(r.to_dict())
    assert "wind_ms" in executor.state.failures()[0]["detail"]


def test_an_algorithm_receipt_leaves_at_its_deadline_with_no_running_time_in_it(world):
    """A quick approved run is held to allowance + timeout; its receipt's time is that deadline."""
    world["executor"].config = dataclasses.replace(world["config"], timing=Timing(allowance_s=1.0))
    source = "import json\njson.dump({'mean_temp': 1.0}, open('/data/output/result.json','w'))\n"
    started = time.time()
    receipt, _ = _approved(world, source, "held", timeout_s=3)
    waited = time.time() - started
    assert receipt.status == "ok", receipt.error
    assert waited >= 4.0  # never before its deadline (1 s allowance + 3 s limit)
    assert set(receipt.metering) == {"sandbox_runs", "held_ms"} and receipt.metering["held_ms"] == 4000
    assert abs(receipt.at_ms / 1000 - (started + 4.0)) < 1.0
