"""Replay of cancellations and ticket expiries: what they give back, and what may follow them.

A cancellation (``job_decided``, ``cancelled``) names the datasets whose budget it gave back;
none of them may have run (a refusal aside), before or after it. Datasets it kept (a
department had started them) may still report their execution; nothing may be released.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import pytest

from yumen.audit import JobDecided, JobExecuted, JobReleased
from yumen.audit._reconcile import Ledger, reevaluate
from yumen.audit._replay import replay
from yumen.errors import Code, YumenError

from audit_samples import digest, executed, receipt_details, sample_entries

ACCOUNT = ("LIC-7", "weather-2025", "30d:1")


def _allowed(entries: list) -> list:
    """The sample history with job-0's decision charging ε 1/4 to ACCOUNT (as the broker logs it)."""
    out = list(entries)
    decision = out[3]
    assert decision.job_id == "job-0"
    per = {"weather-2025": {"charges": [[*ACCOUNT, "1/4", 1]]}}
    out[3] = dataclasses.replace(decision, details={"per_dataset": per})
    return out


def _cancel(gate: str, refunded: list[str], *, by: str = "op-1", expires: dict | None = None,
            time: str = "2026-11-27T03:30:00.000Z") -> JobDecided:
    details = {"cancelled": True, "gate": gate, "refunded": refunded, "cancelled_by": by}
    if expires is not None:
        details["expires_ms"] = expires
    return JobDecided(time=time, job_id="job-0", allowed=False, policy_version=digest("pol1"),
                      matched_rule="p, operator, L2, query", obligations={}, operator="op-1", license_id="LIC-7",
                      datasets=("weather-2025",), tier="query", purpose="research", epsilon="0.25",
                      reason="cancelled by its operator", request_digest=digest("job-0"), details=details)


def _run(entries: list) -> Ledger:
    ledger = Ledger()
    replay(enumerate(entries), accumulators={"ledger": ledger})
    return ledger


def _history(cancel: JobDecided, *, executed_before: bool = False, executed_after: bool = False,
             released: bool = False, status: str = "ok") -> list:
    """job-0 decided, optionally executed, cancelled, optionally executed after and released."""
    entries = _allowed(sample_entries(1))
    decision, execution, release = entries[3:6]
    execution = executed(execution, receipt_details("job-0", status=status)) if status != "ok" else execution
    out = entries[:3] + [decision]
    if executed_before:
        out.append(execution)
    out.append(cancel)
    if executed_after:
        out.append(execution)
    if released:
        out.append(release)
    return out


def test_an_operator_cancel_before_any_start_gives_back_exactly_what_was_charged():
    ledger = _run(_history(_cancel("operator", ["weather-2025"])))
    assert ledger.balance(ACCOUNT) == (Fraction(0), 0)


def test_a_started_dataset_keeps_its_charge_and_may_report_its_execution_after_the_cancel():
    ledger = _run(_history(_cancel("operator", []), executed_after=True))
    assert ledger.balance(ACCOUNT) == (Fraction(1, 4), 1)


def test_a_cancel_that_gives_back_a_dataset_that_ran_does_not_replay():
    with pytest.raises(YumenError, match="gives back the budget of weather-2025, where it ran") as e:
        _run(_history(_cancel("operator", ["weather-2025"]), executed_before=True))
    assert e.value.code is Code.VERIFICATION_FAILED
    with pytest.raises(YumenError, match="ran on weather-2025 after its budget there was given back"):
        _run(_history(_cancel("operator", ["weather-2025"]), executed_after=True))


def test_a_refusal_after_a_cancel_is_no_execution_and_gives_back_nothing_twice():
    ledger = _run(_history(_cancel("operator", ["weather-2025"]), executed_after=True, status="refused"))
    assert ledger.balance(ACCOUNT) == (Fraction(0), 0)


def test_nothing_is_released_after_a_cancel_and_nothing_is_cancelled_twice():
    with pytest.raises(YumenError, match="released a result after it was cancelled"):
        _run(_history(_cancel("operator", []), executed_after=True, released=True))
    entries = _history(_cancel("operator", []))
    with pytest.raises(YumenError, match="cancelled twice"):
        _run(entries + [_cancel("operator", [])])


def test_a_license_lapse_cancels_only_jobs_that_never_ran():
    with pytest.raises(YumenError, match="was cancelled after it ran"):
        _run(_history(_cancel("license", []), executed_before=True))


def test_reevaluation_checks_who_cancelled_and_that_an_expiry_came_after_the_ticket_expired():
    entries = _history(_cancel("operator", ["weather-2025"]))
    ctx_entries = entries[:-1]

    def check(cancel: JobDecided) -> None:
        from yumen.audit._replay import ReplayContext, _step

        ctx = ReplayContext()
        for entry in ctx_entries:
            _step(entry, ctx)
        reevaluate(cancel, ctx)

    check(_cancel("operator", ["weather-2025"]))
    with pytest.raises(YumenError, match="cancelled by 'op-2', not by its operator"):
        check(_cancel("operator", ["weather-2025"], by="op-2"))
    logged_at_ms = 1_795_750_200_000  # 2026-11-27T03:30:00Z, when the cancellation was logged
    check(_cancel("expired", ["weather-2025"], by="broker", expires={"weather-2025": logged_at_ms - 1}))
    with pytest.raises(YumenError, match="as expired before its ticket expired"):
        check(_cancel("expired", ["weather-2025"], by="broker", expires={"weather-2025": logged_at_ms + 60_000}))
    with pytest.raises(YumenError, match="unknown reason"):
        check(_cancel("whim", []))
