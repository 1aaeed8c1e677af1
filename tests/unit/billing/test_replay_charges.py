"""The auditor's replay refuses a log whose catalogue or charges break the rules."""

from __future__ import annotations

import pytest

from yumen.audit import CatalogueChanged, ChargeRecorded, DatasetRegistered, JobDecided, JobExecuted, PolicyChanged
from yumen.audit._billing import BillingBook, compare_statements, logged_statements
from yumen.audit._replay import replay
from yumen.errors import Code, YumenError

D = "sha256:" + "ab" * 32
T = "2026-11-02T00:00:00.000000Z"


def rate(kind, amount, unit="job", role=None, at=T, start="2026-11-02T00:00:00Z"):
    return CatalogueChanged(time=at, kind=kind, changed_by="someone", role=role or ("admin" if kind == "cap" else "operating-body"),
                            fields={"product": "standard", "purpose": "commercial", "unit": unit, "amount": amount,
                                    "start": start})


def base():
    return [
        PolicyChanged(time=T, policy_version=D, changed_by="admin"),
        DatasetRegistered(time=T, dataset_id="bus", version=D, department="transport", registration_digest=D, level="L2"),
        rate("cap", "60"), rate("price", "50"), rate("cap", "500", unit="epsilon"), rate("price", "400", unit="epsilon"),
        JobDecided(time=T, job_id="j1", allowed=True, policy_version=D, operator="op", license_id="LIC", datasets=("bus",),
                   tier="query", purpose="commercial", epsilon="0.5",
                   details={"per_dataset": {"bus": {"price_class": "standard"}}}),
    ]


def hold(amount="250", **kw):
    lines = [{"unit": "job", "quantity": "1", "unit_price": "50", "cap": "60", "amount": "50.00"},
             {"unit": "epsilon", "quantity": "0.5", "unit_price": "400", "cap": "500", "amount": "200.00"}]
    return ChargeRecorded(time=T, job_id="j1", kind="hold", license_id="LIC", operator="op", product="standard",
                          purpose="commercial", amount=amount, currency="CNY",
                          details={"lines": lines, "revenue_rule": "epsilon", **kw})


def executed(status="ok"):
    return JobExecuted(time=T, job_id="j1", connector="c", dataset_id="bus", dataset_version=D, mechanism="laplace",
                       epsilon_charged="0.5", output_commitment=D, metering={"wall_ms": 12}, receipt_signature="AAAA",
                       details={"status": status})


def settle(amount="250"):
    lines = hold().details["lines"]
    return ChargeRecorded(time=T, job_id="j1", kind="settle", license_id="LIC", operator="op", product="standard",
                          purpose="commercial", amount=amount, currency="CNY",
                          details={"lines": lines, "datasets": ["bus"], "departments": ["transport"],
                                   "shares": {"bus": "250.00"}})


def run(entries):
    book = BillingBook()
    replay(list(enumerate(entries)), accumulators={"billing": book})
    return book


def test_an_honest_log_replays_and_its_statement_matches():
    entries = [*base(), hold(), executed(), settle()]
    book = run(entries)
    assert not book.differences
    assert compare_statements(logged_statements(list(enumerate(entries))), book.statements) == []
    (line,) = book.statements[("LIC", "2026-11")]
    assert line["amount"] == "250.00" and line["log_indices"]["settled"] == 9


@pytest.mark.parametrize("bad,words", [
    ([rate("price", "70", start="2026-11-03T00:00:00Z")], "above its cap"),  # a price above its cap, logged anyway
    ([rate("price", "40", at="2026-11-05T00:00:00.000000Z", start="2026-11-03T00:00:00Z")], "never repriced"),
    ([rate("cap", "1", role="seed")], "seed"),
    ([hold(), executed(), ChargeRecorded(time=T, job_id="j1", kind="release", license_id="LIC", operator="op",
                                         product="standard", purpose="commercial", amount="0", currency="CNY")],
     "although department"),
    ([hold(), settle()], "no department ran it"),
    ([executed(), settle()], "without a hold"),
])
def test_replay_refuses_what_the_rules_forbid(bad, words):
    with pytest.raises(YumenError, match=words) as e:
        run([*base(), *bad])
    assert e.value.code is Code.VERIFICATION_FAILED


def test_a_hold_or_settlement_at_another_amount_is_a_difference():
    book = run([*base(), hold(amount="240"), executed(), settle(amount="251")])
    assert len(book.differences) == 2 and "251.00" in book.differences[1] and "250.00" in book.differences[1]
