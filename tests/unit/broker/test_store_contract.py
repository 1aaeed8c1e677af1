"""The broker ``Store`` contract, run against every implementation in ``BACKENDS``.

SQLite runs in a temporary folder; PostgreSQL in a fresh schema per test, dropped
afterwards, on ``YUMEN_TEST_POSTGRES_DSN`` or else the server ``scripts/setup_postgres.sh``
starts. The PostgreSQL cases are skipped only when no server can be reached and ``CI`` is
not ``true``; under CI they fail, because CI must provide the server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import multiprocessing
import queue
import re
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from yumen.broker._store import JobRecord, SqliteStore, Store
from yumen.broker._store_postgres import PostgresStore
from yumen.catalog import DatasetRegistration
from yumen.connectors import demo_registration
from yumen.errors import Code, YumenError
from yumen.jobs import JobState
from yumen.loss import Accounting
from yumen.policy import Limit, Reservation

ROOT = Path(__file__).resolve().parents[3]
DSN_ENV = "YUMEN_TEST_POSTGRES_DSN"
P = "30d:683"  # a budget period


@dataclasses.dataclass(frozen=True)
class Backend:
    """One store under test, and how to open more stores over the same state (replicas)."""

    kind: str
    spec: tuple[str, ...]  # picklable: ("sqlite", path) or ("postgres", dsn, schema)
    store: Any

    def open(self) -> Any:
        return open_store(self.spec)


def open_store(spec: tuple[str, ...]) -> Any:
    if spec[0] == "sqlite":
        return SqliteStore(Path(spec[1]))
    return PostgresStore(spec[1], schema=spec[2])


def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[tuple[str, ...], Callable[[], None]]:
    return ("sqlite", str(tmp_path / "broker.db")), lambda: None


def _postgres(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[tuple[str, ...], Callable[[], None]]:
    import psycopg

    dsn = request.getfixturevalue("postgres_dsn")
    schema = f"store_test_{uuid.uuid4().hex[:12]}"

    def drop() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    return ("postgres", dsn, schema), drop


# The Store contract runs against every implementation listed here.
BACKENDS = {"sqlite": _sqlite, "postgres": _postgres}


@pytest.fixture(params=[pytest.param(k, marks=pytest.mark.postgres) if k == "postgres" else k for k in BACKENDS])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    spec, cleanup = BACKENDS[request.param](request, tmp_path)
    store = open_store(spec)
    yield Backend(request.param, spec, store)
    if hasattr(store, "close"):
        store.close()
    cleanup()


@pytest.fixture
def store(backend: Backend) -> Any:
    return backend.store


def _job(job_id: str, *, digest: str = "sha256:aa", operator: str = "op", license: str = "LIC-1",
         source: bytes = b"", he: bytes = b"") -> JobRecord:
    return JobRecord(job_id=job_id, operator=operator, license=license, request_digest=digest,
                     request={"datasets": ["ds"], "note": "兰州 \"q\"\n"}, algorithm_source=source,
                     state=JobState.PENDING, message="accepted", decision={"policy_version": "v1", "eps": "1/10"},
                     created_ms=1000, updated_ms=1000, he_context=he)


def _ns(dataset: str = "ds") -> str:
    return f"ns:dataset/{dataset}"


def _res(eps: Fraction | str, cap: Fraction | str = "1", *, dataset: str = "ds", license: str = "LIC-1",
         period: str = P, max_runs: int = 0, dataset_cap: Fraction | str = "0", lifetime: Fraction | str = "1000",
         namespace: str = "") -> Reservation:
    """A reservation against the license's, the namespace's period and lifetime accounts."""
    ns = namespace or _ns(dataset)
    limits = [Limit(kind="license", account=(license, dataset, period), cap=Fraction(cap), max_runs=max_runs)]
    if Fraction(dataset_cap):
        limits.append(Limit(kind="namespace", account=("*", ns, period), cap=Fraction(dataset_cap)))
    limits.append(Limit(kind="lifetime", account=("*", ns, "lifetime"), cap=Fraction(lifetime)))
    return Reservation(dataset=dataset, license=license, epsilon=Fraction(eps), accounting=Accounting.PURE,
                       delta=Fraction(0), amount=Fraction(eps), namespace=ns, period=period, limits=tuple(limits))


def _reg(dataset_id: str = "weather-daily", version: str = "ab") -> DatasetRegistration:
    return DatasetRegistration.from_dict({**demo_registration(dataset_id), "version": "sha256:" + version * 32})


def _given_back(released: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[str, Fraction]]:
    """(dataset, amount) of each released reservation; every account got the same amount back."""
    out = []
    for ds, charges in released:
        assert len({c.amount for c in charges}) == 1
        out.append((ds, charges[0].amount))
    return out


def _refused(store: Any, job: JobRecord, reservations: list[Reservation]) -> YumenError:
    with pytest.raises(YumenError) as e:
        store.create_job(job, reservations)
    assert e.value.code is Code.BUDGET_EXHAUSTED
    return e.value


# -- the implementations agree on the surface ------------------------------------------------


def test_every_store_offers_the_contract_and_the_sqlite_store_methods_with_the_same_signatures(store):
    assert isinstance(store, Store)
    names = {n for n in dir(SqliteStore) if not n.startswith("_")}
    names |= {n for n in dir(Store) if not n.startswith("_")}
    for name in sorted(names):
        assert callable(getattr(store, name, None)), f"{type(store).__name__} lacks {name}"
        assert inspect.signature(getattr(type(store), name)) == inspect.signature(getattr(SqliteStore, name)), name


def _parameters(fn: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("cls", [SqliteStore, PostgresStore])
def test_both_stores_implement_every_abstract_method_of_the_contract(cls):
    assert issubclass(cls, Store) and not inspect.isabstract(cls) and cls.__abstractmethods__ == frozenset()
    for name in Store.__abstractmethods__:
        assert getattr(cls, name) is not getattr(Store, name), f"{cls.__name__} does not implement {name}"
        assert _parameters(getattr(cls, name)) == _parameters(getattr(Store, name)), name
        assert (getattr(Store, name).__doc__ or "").strip(), f"Store.{name} has no contract docstring"


def test_a_store_missing_a_method_fails_when_it_is_constructed():
    incomplete = type("Incomplete", (Store,), {
        n: getattr(SqliteStore, n) for n in Store.__abstractmethods__ if n != "ticket_states"})
    with pytest.raises(TypeError, match="ticket_states"):
        incomplete()


def _abstract_methods() -> list[str]:
    return sorted(Store.__abstractmethods__)


def test_every_abstract_method_is_exercised_by_a_contract_test():
    source = Path(__file__).read_text()
    tests = [chunk for chunk in re.split(r"\n(?=def test_)", source) if chunk.startswith("def test_")]
    missing = [n for n in _abstract_methods()
               if not any(re.search(rf"\bstore\.{n}\(", chunk) for chunk in tests)]
    assert not missing, f"no contract test calls store.<name>( for: {missing}"
    assert len(_abstract_methods()) >= 30  # the scan itself found the contract


# What the broker, its audit and its administration call on a store: the code is scanned, so a
# new call to a method the contract lacks fails here (stewardship has a store of its own).
_CALLERS = [p for folder in ("broker", "audit", "yumen") for p in sorted((ROOT / folder).rglob("*.py"))
            if p.name not in ("_store.py", "_store_postgres.py", "_steward_store.py", "_stewardship.py")]
_CALL = re.compile(r"(?<!steward\.)\bstore\.([a-z_]+)\(")


def test_every_method_callers_use_on_a_store_is_declared_by_the_contract():
    used = {name: path.relative_to(ROOT).as_posix() for path in _CALLERS for name in _CALL.findall(path.read_text())}
    assert {"create_job", "runs", "ledger", "list_revoked", "iter_reservations"} & set(used)  # the scan sees callers
    undeclared = {n: where for n, where in used.items() if n not in Store.__abstractmethods__}
    assert not undeclared, f"callers use store methods the Store contract does not declare: {undeclared}"


# -- catalog ----------------------------------------------------------------------------------


def test_catalog_put_get_list_and_replace(store):
    assert store.list_datasets() == [] and store.get_dataset("weather-daily") is None
    store.put_dataset(_reg("weather-daily"), "conn-a")
    store.put_dataset(_reg("bus-trips"), "conn-b")
    assert [(r.id, c) for r, c in store.list_datasets()] == [("bus-trips", "conn-b"), ("weather-daily", "conn-a")]
    store.put_dataset(_reg("weather-daily", "cd"), "conn-c")  # a re-registration replaces
    reg, connector = store.get_dataset("weather-daily")
    assert reg == _reg("weather-daily", "cd") and connector == "conn-c"
    assert reg.digest() == _reg("weather-daily", "cd").digest()
    assert len(store.list_datasets()) == 2


# -- jobs -------------------------------------------------------------------------------------


def test_a_created_job_reads_back_exactly_with_its_bytes_and_first_event(store):
    source, he = bytes(range(256)) + b"\x00end", b"\x00\xff" * 100
    job, created = store.create_job(_job("j1", source=source, he=he), [_res("0.5")])
    assert created and job == _job("j1", source=source, he=he)
    got = store.get_job("j1")
    assert got == job and got.algorithm_source == source and got.he_context == he
    assert got.request["note"] == "兰州 \"q\"\n" and got.result is None
    assert [(e.seq, e.state, e.message, e.at_ms) for e in store.events("j1")] == [(1, JobState.PENDING, "accepted", 1000)]
    assert store.get_job("nope") is None


def test_same_job_id_and_request_is_idempotent_and_charges_once(store):
    _, created = store.create_job(_job("j1"), [_res("0.5")])
    again, created_again = store.create_job(_job("j1"), [_res("0.5")])
    assert created and not created_again and again == _job("j1")
    assert store.spent("LIC-1", "ds", P) == Fraction(1, 2) and store.runs("LIC-1", "ds", P) == 1
    assert len(store.events("j1")) == 1 and len(list(store.iter_reservations())) == 1


@pytest.mark.parametrize("change", [{"digest": "sha256:bb"}, {"operator": "someone-else"}])
def test_same_job_id_with_another_request_or_operator_is_refused_and_writes_nothing(store, change):
    store.create_job(_job("j1"), [_res("0.5")])
    before = store.ledger()
    with pytest.raises(YumenError) as e:
        store.create_job(_job("j1", **change), [_res("0.1")])
    assert e.value.code is Code.ALREADY_EXISTS and "j1" in e.value.message and e.value.hint
    assert store.ledger() == before and store.get_job("j1") == _job("j1")


def test_jobs_in_state_lists_by_creation_and_follows_state_changes(store):
    for i, ms in ((1, 3000), (2, 1000), (3, 2000)):
        store.create_job(dataclasses.replace(_job(f"j{i}"), created_ms=ms, updated_ms=ms), [_res("0.1")])
    assert [j.job_id for j in store.jobs_in_state(JobState.PENDING)] == ["j2", "j3", "j1"]
    store.set_state("j3", JobState.RUNNING, "ticket sent")
    assert [j.job_id for j in store.jobs_in_state(JobState.RUNNING)] == ["j3"]
    assert [j.job_id for j in store.jobs_in_state(JobState.PENDING, JobState.RUNNING)] == ["j2", "j3", "j1"]
    assert store.jobs_in_state(JobState.SUCCEEDED) == []


def test_events_record_each_state_and_a_final_job_cannot_move(store):
    store.create_job(_job("j1"), [_res("0.1")])
    running = store.set_state("j1", JobState.RUNNING, "ticket sent")
    done = store.set_state("j1", JobState.SUCCEEDED, "released", result={"value": "12.5", "ε": "1/10"})
    assert (running.seq, done.seq, done.state) == (2, 3, JobState.SUCCEEDED)
    assert [e.state for e in store.events("j1")] == [JobState.PENDING, JobState.RUNNING, JobState.SUCCEEDED]
    assert [e.seq for e in store.events("j1", after_seq=1)] == [2, 3]
    job = store.get_job("j1")
    assert job.state is JobState.SUCCEEDED and job.message == "released" and job.result == {"value": "12.5", "ε": "1/10"}
    assert job.updated_ms == done.at_ms
    with pytest.raises(YumenError) as e:
        store.set_state("j1", JobState.FAILED, "late")
    assert e.value.code is Code.INTERNAL
    assert len(store.events("j1")) == 3 and store.get_job("j1").state is JobState.SUCCEEDED
    with pytest.raises(YumenError) as missing:
        store.set_state("nope", JobState.RUNNING, "x")
    assert missing.value.code is Code.NOT_FOUND


def test_a_state_change_without_a_result_keeps_the_earlier_result(store):
    store.create_job(_job("j1"), [_res("0.1")])
    store.set_state("j1", JobState.RUNNING, "partial", result={"partial": 1})
    store.set_state("j1", JobState.FAILED, "connector lost")
    assert store.get_job("j1").result == {"partial": 1}


def test_count_jobs_counts_a_license_s_jobs_in_the_given_states(store):
    store.create_job(_job("j1"), [_res("0.1")])
    store.create_job(_job("j2"), [_res("0.1")])
    store.create_job(_job("j3", license="LIC-2"), [_res("0.1", license="LIC-2")])
    store.set_state("j2", JobState.RUNNING, "ticket sent")
    assert store.count_jobs("LIC-1", JobState.PENDING) == 1
    assert store.count_jobs("LIC-1", JobState.PENDING, JobState.RUNNING) == 2
    assert store.count_jobs("LIC-2", JobState.PENDING, JobState.RUNNING) == 1
    assert store.count_jobs("LIC-9", JobState.PENDING) == 0 and store.count_jobs("LIC-1", JobState.FAILED) == 0
    store.set_state("j2", JobState.FAILED, "lost")
    assert store.count_jobs("LIC-1", JobState.PENDING, JobState.RUNNING) == 1


def test_a_compare_and_set_moves_only_from_the_expected_state(store):
    store.create_job(_job("j1"), [_res("0.1")])
    assert store.set_state("j1", JobState.CANCELLED, "too late", expect=JobState.RUNNING) is None
    assert store.get_job("j1").state is JobState.PENDING and len(store.events("j1")) == 1
    moved = store.set_state("j1", JobState.RUNNING, "ticket sent", expect=JobState.PENDING)
    assert moved is not None and moved.seq == 2 and store.get_job("j1").state is JobState.RUNNING


def test_an_atomic_block_commits_whole_or_not_at_all_and_does_not_nest(store):
    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.atomic():
        store.create_job(_job("j1"), [_res("0.5")])
        store.put_license({"id": "LIC-1"})
        assert store.get_job("j1") is not None  # the block sees its own writes
        raise Boom
    assert store.get_job("j1") is None and store.get_license("LIC-1") is None
    assert store.ledger() == [] and list(store.iter_reservations()) == []
    with store.atomic():
        store.create_job(_job("j1"), [_res("0.5")])
        _refused(store, _job("j2"), [_res("0.9")])  # a refused write undoes only its own rows
        store.set_state("j1", JobState.RUNNING, "ticket sent")
        with pytest.raises(YumenError) as nested:
            with store.atomic():
                pass
        assert nested.value.code is Code.INTERNAL
    assert store.get_job("j1").state is JobState.RUNNING and store.get_job("j2") is None
    assert store.spent("LIC-1", "ds", P) == Fraction(1, 2)


# -- budget -----------------------------------------------------------------------------------


def test_a_reservation_over_the_cap_is_refused_with_what_is_left_and_writes_nothing(store):
    store.create_job(_job("j1"), [_res("0.7")])
    before = (store.ledger(), list(store.iter_reservations()))
    err = _refused(store, _job("j2"), [_res("0.5")])
    assert err.message == ("budget exhausted: 0.3 of 1 ε left on dataset ds for license LIC-1 in period 30d:683; "
                           "this job asks for 0.5")
    assert err.hint == "ask for ε ≤ 0.3"
    assert store.get_job("j2") is None and store.events("j2") == []
    assert (store.ledger(), list(store.iter_reservations())) == before


def test_a_refusal_on_a_fresh_key_leaves_no_budget_row_behind(store):
    err = _refused(store, _job("j1"), [_res("2", dataset_cap="5")])
    assert err.message.startswith("budget exhausted: 1 of 1 ε left")
    assert store.ledger() == [] and list(store.iter_reservations()) == [] and store.get_job("j1") is None


def test_a_job_on_two_datasets_is_refused_whole_when_one_dataset_is_exhausted(store):
    store.create_job(_job("j0"), [_res("1", dataset="b")])
    before = store.ledger()
    _refused(store, _job("j1"), [_res("0.5", dataset="a"), _res("0.5", dataset="b")])
    assert store.ledger() == before and store.spent("LIC-1", "a", P) == 0 and store.get_job("j1") is None
    store.create_job(_job("j2"), [_res("0.5", dataset="a"), _res("0.5", dataset="c")])
    assert store.spent("LIC-1", "a", P) == store.spent("LIC-1", "c", P) == Fraction(1, 2)


def test_an_exhausted_budget_says_wait_for_the_next_period_and_the_next_period_is_fresh(store):
    store.create_job(_job("j1"), [_res("1")])
    err = _refused(store, _job("j2"), [_res("0.1")])
    assert "0 of 1 ε left" in err.message and err.hint == "wait for the next budget period"
    store.create_job(_job("j3"), [_res("1", period="30d:684")])
    assert store.spent("LIC-1", "ds", P) == store.spent("LIC-1", "ds", "30d:684") == 1
    assert store.spent("LIC-1", "ds") == 0  # the default period "total" is a key of its own


def test_the_run_limit_counts_jobs_per_license_dataset_and_period(store):
    for i in range(2):
        store.create_job(_job(f"j{i}"), [_res("0.1", max_runs=2)])
    assert store.runs("LIC-1", "ds", P) == 2
    err = _refused(store, _job("j2"), [_res("0.1", max_runs=2)])
    assert err.message == "run limit reached: license LIC-1 has run 2 of 2 jobs allowed on dataset ds in period 30d:683"
    assert store.runs("LIC-1", "ds", P) == 2 and store.spent("LIC-1", "ds", P) == Fraction(1, 5)
    store.create_job(_job("j3", license="LIC-2"), [_res("0.1", license="LIC-2", max_runs=2)])
    assert store.runs("LIC-2", "ds", P) == 1


def test_the_dataset_total_binds_all_licenses_together(store):
    store.create_job(_job("a1", license="LIC-A"), [_res("0.6", license="LIC-A", dataset_cap="1")])
    store.create_job(_job("b1", license="LIC-B"), [_res("0.3", license="LIC-B", dataset_cap="1")])
    with pytest.raises(YumenError) as e:
        store.create_job(_job("b2", license="LIC-B"), [_res("0.2", license="LIC-B", dataset_cap="1")])
    assert e.value.code is Code.BUDGET_EXHAUSTED
    assert e.value.message == "dataset budget exhausted: 0.1 of 1 ε left on dataset ds for all licenses together in period 30d:683"
    assert e.value.hint == "ask for ε ≤ 0.1"
    assert store.spent("*", _ns(), P) == Fraction(9, 10) and store.runs("*", _ns(), P) == 2
    assert store.spent("LIC-B", "ds", P) == Fraction(3, 10)


def test_the_ledger_lists_every_budget_row_in_key_order(store):
    store.create_job(_job("j1", license="LIC-B"), [_res("1/3", license="LIC-B", dataset_cap="2"), _res("0.25", dataset="a", license="LIC-B")])
    store.create_job(_job("j2", license="LIC-A"), [_res("0.5", license="LIC-A", dataset_cap="2")])
    assert store.ledger() == [
        ("*", _ns("a"), "lifetime", Fraction(1, 4), 1),
        ("*", _ns(), P, Fraction(5, 6), 2),
        ("*", _ns(), "lifetime", Fraction(5, 6), 2),
        ("LIC-A", "ds", P, Fraction(1, 2), 1),
        ("LIC-B", "a", P, Fraction(1, 4), 1),
        ("LIC-B", "ds", P, Fraction(1, 3), 1),
    ]
    assert sorted(row[:6] for row in store.iter_reservations()) == [
        ("j1", "a", "LIC-B", P, Fraction(1, 4), False),
        ("j1", "ds", "LIC-B", P, Fraction(1, 3), False),
        ("j2", "ds", "LIC-A", P, Fraction(1, 2), False),
    ]


def test_balance_reads_an_account_s_spent_and_runs_together(store):
    assert store.balance(("LIC-1", "ds", P)) == (Fraction(0), 0)
    store.create_job(_job("j1"), [_res("0.2")])
    store.create_job(_job("j2"), [_res("0.3")])
    assert store.balance(("LIC-1", "ds", P)) == (Fraction(1, 2), 2)
    assert store.balance(("*", _ns(), "lifetime")) == (Fraction(1, 2), 2)
    assert store.balance(("LIC-1", "ds", P)) == (store.spent("LIC-1", "ds", P), store.runs("LIC-1", "ds", P))
    store.release_reservation("j1")
    assert store.balance(("LIC-1", "ds", P)) == (Fraction(3, 10), 1)


def test_budget_arithmetic_is_exact(store):
    store.create_job(_job("j1"), [_res("0.1", cap="0.3")])
    store.create_job(_job("j2"), [_res("0.2", cap="0.3")])
    assert store.spent("LIC-1", "ds", P) == Fraction(3, 10)  # not 0.30000000000000004
    _refused(store, _job("j3"), [_res(Fraction(1, 10**9), cap="0.3")])
    for i in range(3):
        store.create_job(_job(f"t{i}"), [_res(Fraction(1, 3), period="thirds")])
    assert store.spent("LIC-1", "ds", "thirds") == 1
    assert ("LIC-1", "ds", "thirds", Fraction(1), 3) in store.ledger()


def test_release_gives_the_budget_back_once(store):
    store.create_job(_job("j1"), [_res("0.4", dataset_cap="1"), _res("0.3", dataset="b")])
    store.create_job(_job("j2"), [_res("0.1", dataset_cap="1")])
    assert _given_back(store.release_reservation("j1")) == [("b", Fraction(3, 10)), ("ds", Fraction(2, 5))]
    assert store.spent("LIC-1", "ds", P) == store.spent("*", _ns(), P) == Fraction(1, 10)
    assert store.runs("LIC-1", "ds", P) == store.runs("*", _ns(), P) == 1
    assert store.spent("LIC-1", "b", P) == 0 and store.runs("LIC-1", "b", P) == 0
    assert store.release_reservation("j1") == []
    assert store.spent("LIC-1", "ds", P) == Fraction(1, 10)
    assert sorted(row[:6] for row in store.iter_reservations()) == [
        ("j1", "b", "LIC-1", P, Fraction(3, 10), True),
        ("j1", "ds", "LIC-1", P, Fraction(2, 5), True),
        ("j2", "ds", "LIC-1", P, Fraction(1, 10), False),
    ]
    store.create_job(_job("j3"), [_res("0.9", dataset_cap="1")])  # the freed budget is usable again
    assert store.spent("*", _ns(), P) == 1 and store.release_reservation("unknown") == []


def test_release_of_one_dataset_leaves_the_others_reserved(store):
    store.create_job(_job("j1"), [_res("0.4", dataset_cap="1"), _res("0.3", dataset="b")])
    assert _given_back(store.release_reservation("j1", dataset="b")) == [("b", Fraction(3, 10))]
    assert store.release_reservation("j1", dataset="b") == []
    assert store.spent("LIC-1", "b", P) == 0 and store.spent("LIC-1", "ds", P) == store.spent("*", _ns(), P) == Fraction(2, 5)
    assert _given_back(store.release_reservation("j1")) == [("ds", Fraction(2, 5))]
    assert store.spent("*", _ns(), P) == 0 and all(row[5] for row in store.iter_reservations())


def test_a_ticket_expiry_is_fixed_at_its_first_issue_and_never_extended(store):
    store.create_job(_job("j1"), [_res("0.4"), _res("0.3", dataset="b")])
    assert store.ticket_expiry("j1", "ds", 5_000) == 5_000
    assert store.ticket_expiry("j1", "ds", 9_000) == 5_000  # a re-issue keeps the first expiry
    states = store.ticket_states("j1")
    assert (states["ds"].expires_ms, states["ds"].started_ms, states["ds"].released) == (5_000, 0, False)
    assert states["b"].expires_ms == 0  # no ticket issued there yet


def test_a_ticket_starts_once_before_its_expiry_and_never_after_a_refund_or_a_final_state(store):
    store.create_job(_job("j1"), [_res("0.4"), _res("0.3", dataset="b")])
    store.set_state("j1", JobState.RUNNING, "ticket sent")
    store.ticket_expiry("j1", "ds", 5_000)
    store.ticket_expiry("j1", "b", 5_000)
    assert "expired" in store.start_ticket("j1", "ds", 5_001)
    assert store.start_ticket("j1", "ds", 4_000) == ""
    assert store.start_ticket("j1", "ds", 6_000) == ""  # asked again after it started: the same answer
    assert store.ticket_states("j1")["ds"].started_ms == 4_000
    assert "no such job" in store.start_ticket("j1", "nope", 4_000)
    assert "no such job" in store.start_ticket("unknown", "ds", 4_000)
    # a cancellation gives back only what never started, and then nothing else may start
    assert _given_back(store.release_reservation("j1", keep_started=True)) == [("b", Fraction(3, 10))]
    assert store.spent("LIC-1", "ds", P) == Fraction(2, 5) and store.spent("LIC-1", "b", P) == 0
    assert "given back" in store.start_ticket("j1", "b", 4_000)
    store.create_job(_job("j2"), [_res("0.1")])
    store.set_state("j2", JobState.CANCELLED, "cancelled")
    assert "cancelled" in store.start_ticket("j2", "ds", 1_000)


def test_starts_racing_a_cancellation_either_start_or_are_given_back_never_both(backend):
    """Threads asking to start a job's tickets while another cancels it: each dataset is started
    (and keeps its charge) or given back, never both and never neither."""
    store = backend.store
    datasets = [f"d{i}" for i in range(8)]
    store.create_job(_job("j1"), [_res("0.1", dataset=d) for d in datasets])
    store.set_state("j1", JobState.RUNNING, "ticket sent")
    answers: dict[str, str] = {}
    released: list[str] = []
    barrier = threading.Barrier(len(datasets) + 1)

    def start(ds: str) -> None:
        other = backend.open()
        barrier.wait()
        answers[ds] = other.start_ticket("j1", ds, 1_000)

    def cancel() -> None:
        barrier.wait()
        with store.atomic():
            store.set_state("j1", JobState.CANCELLED, "cancelled", expect=JobState.RUNNING)
            released.extend(ds for ds, _ in store.release_reservation("j1", keep_started=True))

    threads = [threading.Thread(target=start, args=(d,)) for d in datasets] + [threading.Thread(target=cancel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    started = {d for d, why in answers.items() if not why}
    assert started.isdisjoint(released) and started | set(released) == set(datasets)
    states = store.ticket_states("j1")
    assert {d for d, st in states.items() if st.started_ms} == started
    assert {d for d, st in states.items() if st.released} == set(released)
    for d in datasets:
        assert store.spent("LIC-1", d, P) == (Fraction(1, 10) if d in started else 0)


# -- receipts, licenses, policy, revocation -----------------------------------------------------


def test_a_partial_is_stored_once_with_its_ciphertext_bytes(store):
    ct = b"\x00\x01ciphertext\xff" * 50
    assert store.put_partial("j1", "ds", {"payload": "p1", "signature": "s1"}, ct) is True
    assert store.put_partial("j1", "ds", {"payload": "p2", "signature": "s2"}, b"other") is False
    assert store.put_partial("j1", "b", {"payload": "p3", "signature": "s3"}) is True
    assert store.partials("j1") == {
        "ds": {"payload": "p1", "signature": "s1", "ciphertext": ct},
        "b": {"payload": "p3", "signature": "s3", "ciphertext": b""},
    }
    assert store.partials("j2") == {}


def test_licenses_are_stored_replaced_and_listed_by_id(store):
    assert store.get_license("LIC-2") is None and store.list_licenses() == []
    store.put_license({"id": "LIC-2", "organization": "Org B", "levels": ["L1"]})
    store.put_license({"id": "LIC-1", "organization": "Org A", "levels": ["L1", "L2"]})
    store.put_license({"id": "LIC-2", "organization": "Org B", "levels": ["L1"], "revoked": True})
    assert store.get_license("LIC-2") == {"id": "LIC-2", "organization": "Org B", "levels": ["L1"], "revoked": True}
    assert [lic["id"] for lic in store.list_licenses()] == ["LIC-1", "LIC-2"]


def test_policy_versions_are_kept_once_and_the_current_pointer_moves_only_when_asked(store):
    assert store.current_policy_version() == "" and store.policy_version("v1") is None
    store.put_policy_version("v1", {"rules": "p, a", "model": "m1"}, current=True)
    store.put_policy_version("v2", {"rules": "p, b", "model": "m2"}, current=False)
    assert store.current_policy_version() == "v1"
    assert store.policy_version("v2") == {"rules": "p, b", "model": "m2"}
    store.put_policy_version("v1", {"rules": "changed", "model": "m1"}, current=False)  # a version never changes
    assert store.policy_version("v1") == {"rules": "p, a", "model": "m1"}
    store.put_policy_version("v2", {"rules": "p, b", "model": "m2"}, current=True)
    assert store.current_policy_version() == "v2"


def test_revoking_a_certificate_is_recorded_once(store):
    assert store.revoked("sha256:f1") is None and store.list_revoked() == []
    first = store.revoke_certificate("sha256:f1", name="op", reason="key lost", by="admin")
    assert {k: first[k] for k in ("fingerprint", "name", "reason", "revoked_by")} == {
        "fingerprint": "sha256:f1", "name": "op", "reason": "key lost", "revoked_by": "admin"}
    assert isinstance(first["at_ms"], int) and first["at_ms"] > 0
    again = store.revoke_certificate("sha256:f1", name="op", reason="other", by="admin2")
    assert again == first == store.revoked("sha256:f1")
    store.revoke_certificate("sha256:f2", name="op2", reason="left", by="admin")
    assert sorted(r["fingerprint"] for r in store.list_revoked()) == ["sha256:f1", "sha256:f2"]


# -- several stores over one state (replicas) ---------------------------------------------------


def test_a_second_store_over_the_same_state_sees_every_write_and_reopening_keeps_it(backend):
    other = backend.open()
    try:
        backend.store.create_job(_job("j1"), [_res("0.6")])
        backend.store.put_license({"id": "LIC-1"})
        assert other.get_job("j1") == _job("j1") and other.get_license("LIC-1") == {"id": "LIC-1"}
        _refused(other, _job("j2"), [_res("0.5")])  # the other replica enforces the same ledger
        other.set_state("j1", JobState.RUNNING, "ticket sent")
        assert backend.store.get_job("j1").state is JobState.RUNNING
    finally:
        if hasattr(other, "close"):
            other.close()
    assert backend.store.spent("LIC-1", "ds", P) == Fraction(3, 5)


# -- concurrency --------------------------------------------------------------------------------


def _race(n: int, attempt: Callable[[int], Any], store: Any) -> tuple[list[Any], list[YumenError], list[BaseException]]:
    """Run ``attempt(i)`` in ``n`` threads released together.

    Each thread first reads from the store, so connections are open before the gate: the
    threads then contend on the budget rows, not on connecting one after another.
    """
    wins: list[Any] = []
    refusals: list[YumenError] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(n)

    def go(i: int) -> None:
        store.get_job("warm-up")
        gate.wait()
        try:
            wins.append(attempt(i))
        except YumenError as e:
            refusals.append(e)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return wins, refusals, errors


def test_100_threads_asking_for_the_whole_budget_exactly_one_wins(store):
    store.create_job(_job("warm"), [_res("0.25", cap="1", dataset_cap="10")])
    wins, refusals, errors = _race(100, lambda i: store.create_job(_job(f"j{i}"), [_res("0.75", dataset_cap="10")]), store)
    assert errors == [] and len(wins) == 1 and len(refusals) == 99
    assert {e.code for e in refusals} == {Code.BUDGET_EXHAUSTED}
    assert store.spent("LIC-1", "ds", P) == store.spent("*", _ns(), P) == 1
    assert store.runs("LIC-1", "ds", P) == 2 and len(list(store.iter_reservations())) == 2


def test_100_threads_on_fresh_keys_and_the_dataset_total_never_overspend(store):
    # every thread has its own license (a fresh row to create) but all share the dataset total
    wins, refusals, errors = _race(100, lambda i: store.create_job(
        _job(f"j{i}", license=f"L{i:03d}"), [_res("0.1", license=f"L{i:03d}", dataset_cap="1")]), store)
    assert errors == [] and len(wins) == 10 and len(refusals) == 90
    assert store.spent("*", _ns(), P) == 1 and store.runs("*", _ns(), P) == 10
    assert sum(row[3] for row in store.ledger() if row[0] != "*") == 1


def test_concurrent_retries_of_one_job_id_create_it_once(store):
    wins, refusals, errors = _race(50, lambda i: store.create_job(_job("same"), [_res("0.5")]), store)
    assert errors == [] and refusals == [] and [created for _, created in wins].count(True) == 1
    assert store.spent("LIC-1", "ds", P) == Fraction(1, 2) and len(store.events("same")) == 1


def test_concurrent_releases_give_the_budget_back_once(store):
    store.create_job(_job("j1"), [_res("0.5", dataset_cap="1")])
    wins, refusals, errors = _race(20, lambda i: _given_back(store.release_reservation("j1")), store)
    assert errors == [] and refusals == [] and sorted(wins, key=len) == [[]] * 19 + [[("ds", Fraction(1, 2))]]
    assert store.spent("LIC-1", "ds", P) == store.spent("*", _ns(), P) == 0


def _attempts_in_a_process(spec: tuple[str, ...], worker: int, attempts: int, start: Any, out: Any) -> None:
    """One broker replica: its own store, ``attempts`` concurrent jobs each asking for the whole budget."""
    store = open_store(spec)
    store.get_job("warm-up")
    start.wait()
    wins, refusals, errors = _race(
        attempts, lambda i: store.create_job(_job(f"p{worker}-{i}"), [_res("0.75", dataset_cap="1")]), store)
    out.put((len(wins), sorted({e.code.value for e in refusals}), [repr(e) for e in errors], len(refusals)))
    if hasattr(store, "close"):
        store.close()


def test_4_processes_with_25_attempts_each_asking_for_the_whole_budget_exactly_one_wins(backend):
    # fork, not spawn: a spawned child re-imports this test file by module name, which works
    # only when the repository root happens to be on sys.path. Each child opens its own
    # store and never touches the connections it inherited.
    backend.store.create_job(_job("warm"), [_res("0.25", dataset_cap="1")])  # the rows exist: no insert race
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_attempts_in_a_process, args=(backend.spec, w, 25, start, out)) for w in range(4)]
    for p in procs:
        p.start()
    results: list[Any] = []
    deadline = time.monotonic() + 60
    while len(results) < len(procs) and time.monotonic() < deadline:
        try:
            results.append(out.get(timeout=0.5))
        except queue.Empty:
            if all(p.exitcode is not None for p in procs):
                break  # a child died without reporting: fail now, not after the deadline
    for p in procs:
        p.join(timeout=30)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert [r[2] for r in results] == [[]] * 4, results
    assert sum(r[0] for r in results) == 1 and sum(r[3] for r in results) == 99
    assert all(r[1] in ([], ["budget-exhausted"]) for r in results)
    assert backend.store.spent("LIC-1", "ds", P) == backend.store.spent("*", _ns(), P) == 1
    assert len(list(backend.store.iter_reservations())) == 2


# -- PostgreSQL's own guarantees -----------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_store_refuses_an_unsafe_schema_name(postgres_dsn):
    with pytest.raises(YumenError) as e:
        PostgresStore(postgres_dsn, schema='x"; DROP TABLE jobs; --')
    assert e.value.code is Code.CONFIG


@pytest.mark.postgres
def test_postgres_store_refuses_to_run_without_durable_commits(postgres_dsn):
    with pytest.raises(YumenError) as e, _own_postgres_store(postgres_dsn, options="-c synchronous_commit=off"):
        pass
    assert e.value.code is Code.CONFIG and "synchronous_commit" in e.value.message


@pytest.mark.postgres
def test_postgres_store_reports_an_unreachable_server_as_unavailable():
    with pytest.raises(YumenError) as e:
        PostgresStore("postgresql://nobody:x@127.0.0.1:1/none?connect_timeout=2")
    assert e.value.code is Code.UNAVAILABLE and "x@" not in e.value.message



@contextlib.contextmanager
def _own_postgres_store(dsn: str, *, options: str = "") -> Iterator[PostgresStore]:
    """A PostgresStore in a fresh schema, with server ``options`` (e.g. ``-c name=value``) on its connections."""
    import psycopg

    schema = f"store_test_{uuid.uuid4().hex[:12]}"
    if options:
        dsn += ("&" if "?" in dsn else "?") + "options=" + urllib.parse.quote(options)
    store = PostgresStore(dsn, schema=schema)
    try:
        yield store
    finally:
        store.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.mark.postgres
def test_postgres_store_retries_serialization_failures_and_still_one_job_wins(postgres_dsn, caplog):
    # Under SERIALIZABLE a waiter on a budget row that another job updated gets a
    # serialization failure instead of the new row; the store must retry it whole.
    with _own_postgres_store(postgres_dsn, options="-c default_transaction_isolation=serializable") as store:
        store.create_job(_job("warm"), [_res("0.25")])
        with caplog.at_level("INFO", logger="yumen.broker._store_postgres"):
            wins, refusals, errors = _race(8, lambda i: store.create_job(_job(f"j{i}"), [_res("0.75")]), store)
        assert errors == [] and len(wins) == 1 and {e.code for e in refusals} == {Code.BUDGET_EXHAUSTED}
        assert any("SerializationFailure" in r.getMessage() for r in caplog.records)
        assert store.spent("LIC-1", "ds", P) == 1


@pytest.mark.postgres
def test_postgres_store_recovers_after_its_connections_are_killed(postgres_dsn):
    import psycopg

    with _own_postgres_store(postgres_dsn) as store:
        store.create_job(_job("j1"), [_res("0.5")])
        pids = [c.info.backend_pid for c in store._idle]  # the pool's open connections
        assert pids
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            for pid in pids:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(YumenError) as e:
            store.get_job("j1")
        assert e.value.code is Code.UNAVAILABLE and "lost the connection" in e.value.message
        assert store.get_job("j1") == _job("j1")  # the dead connections were dropped; a fresh one works
