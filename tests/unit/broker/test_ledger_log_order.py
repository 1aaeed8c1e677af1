"""The log lists ledger changes in the order the ledger saw them, whatever the interleaving.

A refusal for budget must never be logged before the reservation that caused it, or an
auditor's replay (which re-checks every budget refusal against the ledger rebuilt from the
log) fails: "decision on job r-100 does not replay: logged as over budget, but the log shows
1/2 of 10 ε spent". These tests race whole-budget and small jobs, cancellations and policy
changes on one broker (SQLite) and on brokers sharing one PostgreSQL database (replicas),
then replay the log.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import uuid
from fractions import Fraction

import pytest

from yumen.audit import replay
from yumen.audit._reconcile import Bills, Ledger, compare_accounts, reevaluate
from yumen.broker._audit import BrokerAudit, open_log
from yumen.broker._core import Broker
from yumen.broker._store import SqliteStore
from yumen.catalog import DatasetRegistration, Level
from yumen.connectors import demo_registration
from yumen.errors import Code, YumenError
from yumen.identity import Identity, Role, init_ca, issue, load_private_key
from yumen.jobs import Aggregate, JobRequest, JobState, Purpose, Query, Tier
from yumen.policy import License, PolicyBundle, PolicyEngine, period_of

NOW = dt.datetime.now(dt.timezone.utc)
WHO = Identity(role=Role.OPERATOR, name="op", license="LIC-R")


def _bundle(note: str = "") -> PolicyBundle:
    b = PolicyBundle.default()
    settings = b.settings.replace('[rules.open-data]\nmax_epsilon = "2"', '[rules.open-data]\nmax_epsilon = "10"')
    return PolicyBundle(model=b.model, rules=b.rules, settings=settings + note)


def _sqlite_brokers(root, n: int) -> list[Broker]:
    assert n == 1, "one SQLite file serves one broker process"
    init_ca(root / "pki")
    _, key = issue(root / "pki", role=Role.BROKER, name="broker")
    audit = BrokerAudit(open_log(root / "b.db", key_path=root / "log.key", origin="test/log"), "broker")
    return [Broker(broker_id="broker", store=SqliteStore(root / "b.db"), policy=PolicyEngine(_bundle()), audit=audit,
                   signing_key=load_private_key(key))]


def _postgres_brokers(root, n: int, dsn: str, schema: str) -> list[Broker]:
    from yumen.audit import PostgresLogStorage
    from yumen.broker._store_postgres import PostgresStore

    init_ca(root / "pki")
    _, key = issue(root / "pki", role=Role.BROKER, name="broker")
    out = []
    for i in range(n):  # each "replica" with its own store, pool and log handle, as separate processes have
        audit = BrokerAudit(open_log(PostgresLogStorage(dsn, schema=schema), key_path=root / "log.key",
                                     origin="test/log"), f"broker-{i}")
        out.append(Broker(broker_id=f"broker-{i}", store=PostgresStore(dsn, schema=schema), policy=PolicyEngine(_bundle()),
                          audit=audit, signing_key=load_private_key(key)))
    return out


def _seed(b: Broker) -> None:
    b.recover(_bundle())
    reg = DatasetRegistration.from_dict({**demo_registration("weather-daily"), "version": "sha256:" + "ab" * 32})
    ident = Identity(role=Role.CONNECTOR, name="wb", department=reg.department)
    with b.recorded():
        b.store.put_dataset(reg, "wb")
        b.audit.dataset_registered(reg, ident)
    lic = License(id="LIC-R", organization="Org", levels=frozenset({Level.L1}), valid_from=NOW - dt.timedelta(days=1),
                  valid_until=NOW + dt.timedelta(days=365))
    with b.recorded():
        b.store.put_license(lic.to_dict())
        b.audit.license_changed(lic.to_dict(), "issued", "admin")


def _job(i: int, eps: str) -> JobRequest:
    return JobRequest(job_id=f"r-{i}", datasets=("weather-daily",), tier=Tier.QUERY, purpose=Purpose.RESEARCH,
                      epsilon=Fraction(eps), query=Query(aggregate=Aggregate.COUNT))


def _race(brokers: list[Broker], jobs: int = 120) -> tuple[list[str], list[str]]:
    """Whole-budget and small jobs from many threads over all brokers."""
    wins, refusals, errors = [], [], []
    gate = threading.Barrier(jobs)
    rnd = random.Random(7)
    plan = [(i, rnd.choice(["10", "9.5", "0.5", "0.25", "3"])) for i in range(jobs)]

    def go(i: int, eps: str) -> None:
        b = brokers[i % len(brokers)]
        gate.wait()
        try:
            wins.append(b.submit(WHO, _job(i, eps)).job_id)
        except YumenError as e:
            (refusals if e.code is Code.BUDGET_EXHAUSTED else errors).append(e)

    threads = [threading.Thread(target=go, args=p) for p in plan]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    return wins, refusals


def _replays(b: Broker) -> Ledger:
    b.audit.tlog.refresh()
    ledger = Ledger()
    report = replay(b.audit.tlog.entries(0, b.audit.tlog.size), reevaluate=lambda e, c: reevaluate(e, c, ledger),
                    accumulators={"ledger": ledger, "bills": Bills()})
    assert report.decisions_reevaluated == report.jobs_decided
    mine = {(lic, ds, p): (spent, runs) for lic, ds, p, spent, runs in b.store.ledger()}
    assert compare_accounts(ledger.result(), {}, {"ledger": mine, "bills": {}}) == []
    return ledger


def test_one_broker_logs_reservations_refusals_and_refunds_in_ledger_order(tmp_path):
    (b,) = _sqlite_brokers(tmp_path, 1)
    _seed(b)
    wins, refusals = _race([b])
    assert wins and refusals
    ledger = _replays(b)
    period = period_of(30, dt.datetime.now(dt.timezone.utc))
    assert ledger.spent("LIC-R", "weather-daily", period) == b.store.spent("LIC-R", "weather-daily", period) <= 10


@pytest.mark.postgres
@pytest.mark.parametrize("replicas", [2, 3])
def test_replicas_on_one_postgres_log_reservations_refusals_and_refunds_in_ledger_order(tmp_path, postgres_dsn, replicas):
    import psycopg

    schema = f"order_{uuid.uuid4().hex[:10]}"
    brokers = _postgres_brokers(tmp_path, replicas, postgres_dsn, schema)
    try:
        _seed(brokers[0])
        for b in brokers[1:]:
            b.recover(_bundle())  # a replica starting while the state exists: nothing to repair
        wins, refusals = _race(brokers)
        assert wins and refusals
        for b in brokers:  # every replica reads the same log, and it replays
            _replays(b)
    finally:
        for b in brokers:
            b.store.close()
            b.audit.tlog.close()
        with psycopg.connect(postgres_dsn, autocommit=True) as db:
            db.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _policy_race(brokers: list[Broker]) -> tuple[list[str], list[YumenError]]:
    base = brokers[0].store.current_policy_version()
    wins, conflicts, errors = [], [], []
    gate = threading.Barrier(16)

    def change(i: int) -> None:
        b = brokers[i % len(brokers)]
        gate.wait()
        try:
            wins.append(b.set_policy(_bundle(f"\n# variant {i}\n"), changed_by="admin", replaces=base).version)
        except YumenError as e:
            (conflicts if e.code is Code.CONFLICT else errors).append(e)

    threads = [threading.Thread(target=change, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    return wins, conflicts


def test_concurrent_policy_changes_on_one_broker_are_a_compare_and_set(tmp_path):
    (b,) = _sqlite_brokers(tmp_path, 1)
    _seed(b)
    wins, conflicts = _policy_race([b])
    assert len(wins) == 1 and len(conflicts) == 15
    assert b.store.current_policy_version() == wins[0] == b.policy.version
    _replays(b)  # the chain of policy_changed entries is unbroken
    with pytest.raises(YumenError) as stale:  # building on a replaced version is refused
        b.set_policy(_bundle("\n# late\n"), changed_by="admin", replaces=PolicyEngine(_bundle()).version)
    assert stale.value.code is Code.CONFLICT


@pytest.mark.postgres
def test_concurrent_policy_changes_across_replicas_are_a_compare_and_set_and_replicas_follow(tmp_path, postgres_dsn):
    import psycopg

    schema = f"policy_{uuid.uuid4().hex[:10]}"
    brokers = _postgres_brokers(tmp_path, 2, postgres_dsn, schema)
    try:
        _seed(brokers[0])
        brokers[1].recover(_bundle())
        wins, conflicts = _policy_race(brokers)
        assert len(wins) == 1 and len(conflicts) == 15
        _replays(brokers[1])
        # the replica that lost decides under the version in force, not the one it had in memory
        job = brokers[1].submit(WHO, _job(900, "0.5"))
        assert job.decision["policy_version"] == wins[0]
    finally:
        for b in brokers:
            b.store.close()
            b.audit.tlog.close()
        with psycopg.connect(postgres_dsn, autocommit=True) as db:
            db.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_a_registration_whose_log_entry_fails_leaves_no_dataset_in_the_catalog(tmp_path, monkeypatch):
    (b,) = _sqlite_brokers(tmp_path, 1)
    _seed(b)
    from cryptography import x509

    reg = DatasetRegistration.from_dict({**demo_registration("bus-trips"), "version": "sha256:" + "cd" * 32})
    who = Identity(role=Role.CONNECTOR, name="td", department=reg.department)

    def fail(*_a, **_k):
        raise YumenError(Code.UNAVAILABLE, "the log database failed")

    monkeypatch.setattr(b.audit.tlog, "append_within", fail)
    with pytest.raises(YumenError):
        b.connect(who, x509.load_pem_x509_certificate((tmp_path / "pki" / "ca.crt").read_bytes()), [reg])
    assert b.store.get_dataset("bus-trips") is None
    monkeypatch.undo()
    link, accepted = b.connect(who, x509.load_pem_x509_certificate((tmp_path / "pki" / "ca.crt").read_bytes()), [reg])
    assert accepted == ["bus-trips"] and b.store.get_dataset("bus-trips") is not None
    entries = [e for _, e in b.audit.tlog.entries(0, b.audit.tlog.size) if e.TYPE == "dataset_registered"]
    assert [e.dataset_id for e in entries] == ["weather-daily", "bus-trips"]


def test_a_queued_jobs_limit_per_license_refuses_with_limit_exceeded(tmp_path):
    (b,) = _sqlite_brokers(tmp_path, 1)
    _seed(b)
    b.max_queued_per_license = 3
    for i in range(3):
        b.submit(WHO, _job(500 + i, "0.1"))  # no connector: they stay queued
    with pytest.raises(YumenError) as limit:
        b.submit(WHO, _job(599, "0.1"))
    assert limit.value.code is Code.LIMIT_EXCEEDED and "3 jobs queued" in limit.value.message
    assert b.store.get_job("r-599") is None
    b.cancel_unstarted(b.store.get_job("r-500"), "withdrawn")  # a refund, logged with it
    assert b.submit(WHO, _job(599, "0.1")).state is JobState.PENDING
