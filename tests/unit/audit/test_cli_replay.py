"""`yumen audit export/verify` end to end on files, and the replay hook."""

from __future__ import annotations

import argparse
from decimal import Decimal
from fractions import Fraction

import pytest

from yumen.audit import (
    BillTotals,
    BudgetLedger,
    JobExecuted,
    SQLiteLogStorage,
    TransparencyLog,
    generate_log_key,
    replay,
    save_log_key,
)
from yumen.audit._cli import register
from yumen.errors import Code, YumenError, exit_code

from audit_samples import ORIGIN, T, digest, receipt_details, sample_entries


def _run(argv):
    parser = argparse.ArgumentParser(prog="yumen")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def broker_files(tmp_path):
    key = generate_log_key()
    save_log_key(key, tmp_path / "log.key")
    log = TransparencyLog(SQLiteLogStorage(tmp_path / "broker.db"), origin=ORIGIN, signing_key=key)
    log.append_many(sample_entries(2))
    (tmp_path / "published.vkey").write_text(log.vkey + "\n")
    log.close()
    return tmp_path


def test_local_export_then_verify_succeeds_and_prints_a_report(broker_files, capsys):
    d = broker_files
    assert _run(["audit", "export", "--out", str(d / "x"), "--db", str(d / "broker.db"),
                 "--log-key", str(d / "log.key"), "--origin", ORIGIN]) == 0
    assert _run(["audit", "verify", "--from", str(d / "x"), "--vkey", str(d / "published.vkey"),
                 "--state", str(d / "state")]) == 0
    out = capsys.readouterr().out
    assert "exported 9 entries" in out and "size        9" in out and "first verification" in out


def test_verify_of_a_tampered_export_fails_with_the_verification_exit_code(broker_files):
    d = broker_files
    _run(["audit", "export", "--out", str(d / "x"), "--db", str(d / "broker.db"), "--log-key", str(d / "log.key"),
          "--origin", ORIGIN])
    lines = (d / "x/entries.jsonl").read_text().splitlines(keepends=True)
    (d / "x/entries.jsonl").write_text("".join(lines[:3] + lines[4:]))
    with pytest.raises(YumenError) as e:
        _run(["audit", "verify", "--from", str(d / "x"), "--vkey", str(d / "published.vkey")])
    assert e.value.code is Code.VERIFICATION_FAILED and exit_code(e.value.code) != 0
    assert "line 4" in e.value.message


def test_user_errors_say_what_to_pass(broker_files):
    with pytest.raises(YumenError, match="--db, --log-key and --origin") as e:
        _run(["audit", "export", "--out", str(broker_files / "y"), "--db", str(broker_files / "broker.db")])
    assert e.value.code is Code.INVALID_ARGUMENT
    with pytest.raises(YumenError, match="--ca") as e:
        _run(["audit", "verify", "--broker", "localhost:1", "--ca", "", "--cert", "", "--key", ""])
    assert e.value.code is Code.CONFIG


def test_replay_recomputes_budget_and_bills_and_calls_the_reevaluator():
    entries = sample_entries(3)
    seen = []
    report = replay(
        enumerate(entries),
        reevaluate=lambda decision, ctx: seen.append((decision.job_id, ctx.current_policy)),
        accumulators={"budget": BudgetLedger(), "bills": BillTotals()},
    )
    assert report.entries == 12 and report.decisions_reevaluated == 3
    assert seen == [(f"job-{j}", digest("pol1")) for j in range(3)]
    assert report.results["budget"] == {("LIC-7", "weather-2025"): Fraction(3, 4)}
    assert report.results["bills"] == {("op-1", "CNY"): Decimal("4.50")}


def test_replay_reports_where_the_story_breaks():
    entries = sample_entries(2)
    overspent = JobExecuted(time=T, job_id="job-1", connector="conn-cma", dataset_id="weather-2025",
                            dataset_version=digest("ds1"), mechanism="laplace", epsilon_charged="0.3",
                            output_commitment=digest("c"), receipt_signature="c2ln", details=receipt_details("job-1"))
    broken = entries[:7] + [overspent] + entries[8:]
    with pytest.raises(YumenError, match=r"entry 7 \(job_executed\).*above the ε 0.25") as e:
        replay(enumerate(broken))
    assert e.value.code is Code.VERIFICATION_FAILED

    def refuse(decision, ctx):
        raise YumenError(Code.VERIFICATION_FAILED, "policy now denies this job")

    with pytest.raises(YumenError, match=r"entry 3 \(job_decided\): policy now denies"):
        replay(enumerate(entries), reevaluate=refuse)


def test_keygen_writes_a_private_key_and_the_matching_vkey(tmp_path, capsys):
    import os
    import stat

    from yumen.audit import NoteSigner, load_log_key

    assert _run(["audit", "keygen", "--out", str(tmp_path / "k.pem"), "--origin", ORIGIN,
                 "--vkey-out", str(tmp_path / "log.vkey")]) == 0
    vkey = capsys.readouterr().out.strip()
    assert stat.S_IMODE(os.stat(tmp_path / "k.pem").st_mode) == 0o600
    assert NoteSigner(ORIGIN, load_log_key(tmp_path / "k.pem")).verifier.vkey == vkey
    assert (tmp_path / "log.vkey").read_text().strip() == vkey
    with pytest.raises(YumenError) as e:
        _run(["audit", "keygen", "--out", str(tmp_path / "k.pem"), "--origin", ORIGIN])
    assert e.value.code is Code.ALREADY_EXISTS
