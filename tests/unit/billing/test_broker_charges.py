"""The broker's holds, settlements and releases on a real store, policy and log, checked by replay."""

from __future__ import annotations

import datetime as dt
from fractions import Fraction

import pytest

from yumen.audit._billing import BillingBook, compare_statements, logged_statements
from yumen.audit._replay import replay
from yumen.broker._audit import BrokerAudit, open_log
from yumen.broker._billing import seed_catalogue
from yumen.broker._core import Broker
from yumen.broker._store import SqliteStore
from yumen.catalog import DatasetRegistration, Level
from yumen.connectors import demo_registration
from yumen.identity import Identity, Role, init_ca, issue, load_private_key
from yumen.jobs import Aggregate, JobRequest, JobState, Purpose, Query, Tier
from yumen.policy import License, PolicyBundle, PolicyEngine, default_policy_paths
from yumen.tickets import Receipt

NOW = dt.datetime.now(dt.timezone.utc)
WHO = Identity(role=Role.OPERATOR, name="op", license="LIC-B")


@pytest.fixture
def broker(tmp_path):
    init_ca(tmp_path / "pki")
    _, key = issue(tmp_path / "pki", role=Role.BROKER, name="broker")
    _, ckey = issue(tmp_path / "pki", role=Role.CONNECTOR, name="wb", department="weather-bureau")
    store = SqliteStore(tmp_path / "b.db")
    audit = BrokerAudit(open_log(tmp_path / "b.db", key_path=tmp_path / "log.key", origin="test/log"), "broker")
    engine = PolicyEngine(PolicyBundle.default())
    b = Broker(broker_id="broker", store=store, policy=engine, audit=audit, signing_key=load_private_key(key))
    audit.policy_changed(engine)
    reg = DatasetRegistration.from_dict({**demo_registration("weather-daily"), "version": "sha256:" + "ab" * 32,
                                         "price_class": "standard"})
    store.put_dataset(reg, "wb")
    audit.dataset_registered(reg, Identity(role=Role.CONNECTOR, name="wb", department="weather-bureau"))
    lic = License(id="LIC-B", organization="Org", levels=frozenset({Level.L1}), valid_from=NOW - dt.timedelta(days=1),
                  valid_until=NOW + dt.timedelta(days=365))
    store.put_license(lic.to_dict())
    audit.license_changed(lic.to_dict(), "issued", "admin")
    assert b.billing.seed(seed_catalogue(default_policy_paths()[2].with_name("default_prices.toml"))) > 0
    assert b.billing.seed(seed_catalogue(default_policy_paths()[2].with_name("default_prices.toml"))) == 0  # once
    b.connector_key = load_private_key(ckey)
    return b


def _job(i: int) -> JobRequest:
    return JobRequest(job_id=f"b-{i}", datasets=("weather-daily",), tier=Tier.QUERY, purpose=Purpose.RESEARCH,
                      epsilon=Fraction(1), query=Query(aggregate=Aggregate.COUNT))


def _receipt(b, job_id, status):
    r = Receipt(job_id=job_id, dataset="weather-daily", connector="wb", department="weather-bureau",
                ticket_digest="sha256:" + "1" * 64, status=status, dataset_version="sha256:" + "ab" * 32,
                mechanism="geometric", epsilon_charged=Fraction(1) if status != "refused" else Fraction(0),
                commitment="sha256:" + "2" * 64, metering={"wall_ms": 40, "cpu_ms": 30, "rows_scanned": 8000},
                error="" if status == "ok" else "it failed")
    payload, sig = r.sign(b.connector_key)
    b.store.put_partial(job_id, "weather-daily", {"payload": payload.decode(), "signature": sig.hex()})


def _replayed(b):
    entries = list(b.audit.tlog.entries(0, b.audit.tlog.size))
    book = BillingBook()
    replay(entries, accumulators={"billing": book})
    assert book.differences == []
    assert compare_statements(logged_statements(entries), book.statements) == []
    return {line["job_id"]: line for lines in book.statements.values() for line in lines}


def test_a_job_failing_after_it_read_data_is_settled_in_the_same_transaction(broker):
    job = broker.submit(WHO, _job(1))
    assert job.decision["charge"]["amount"] == "20.00"  # standard research: 20 per ε
    _receipt(broker, "b-1", "failed")
    broker.recover()  # logs the receipt and moves the job on, in one transaction
    assert broker.store.get_job("b-1").state is JobState.FAILED
    line = _replayed(broker)["b-1"]
    assert line["status"] == "settled" and line["amount"] == "20.00"


def test_a_job_refused_before_any_data_was_read_has_its_hold_released(broker):
    broker.submit(WHO, _job(2))
    _receipt(broker, "b-2", "refused")
    broker.recover()
    assert broker.store.get_job("b-2").state is JobState.REFUSED
    assert _replayed(broker)["b-2"]["status"] == "released"


def test_a_cancelled_job_has_its_hold_released_and_a_succeeded_one_is_settled(broker):
    cancelled = broker.submit(WHO, _job(3))
    broker.cancel_unstarted(cancelled, "license revoked")
    broker.submit(WHO, _job(4))
    _receipt(broker, "b-4", "ok")
    broker.recover()
    job = broker.store.get_job("b-4")
    assert job.state is JobState.SUCCEEDED and job.result["bill"]["amount"] == "20.00"
    lines = _replayed(broker)
    assert lines["b-3"]["status"] == "released" and lines["b-4"]["amount"] == "20.00"
