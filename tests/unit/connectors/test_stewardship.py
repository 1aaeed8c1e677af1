"""The department's stewardship at the connector: destruction after jobs, quality per version, verification."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import time
from fractions import Fraction
from pathlib import Path

import polars as pl
import pytest
from cryptography import x509

from yumen.canonical import canonical_json
from yumen.catalog import DatasetRegistration
from yumen.connectors import LocalPolicy, SourceSpec
from yumen.connectors._config import ConnectorConfig, DatasetConfig
from yumen.connectors._destruction import JobScratch
from yumen.connectors._executor import Executor
from yumen.connectors._quality import QualityConfig, QualityReport, parse_quality_config
from yumen.connectors._timing import Timing
from yumen.connectors._verification import VerificationPolicy
from yumen.destruction import check_confirmation
from yumen.errors import Code, YumenError
from yumen.identity import Role, init_ca, issue, load_private_key, sign_payload, verify_payload
from yumen.rpc import TlsFiles
from yumen.tickets import Receipt, Ticket
from yumen.verification import ORDER_PURPOSE, open_sealed, request_aad, seal_request, sealed_digest

REG = {
    "id": "residents", "title": "Resident register", "department": "civil-affairs", "level": "L2",
    "update_frequency": "daily",
    "columns": [
        {"name": "resident_id", "type": "string"},
        {"name": "region", "type": "category", "categories": ["north", "south"]},
        {"name": "age", "type": "int", "lower": 0, "upper": 110},
        {"name": "station", "type": "category", "categories": ["s1", "s2"], "public": True},
    ],
    "privacy_unit": {"column": "resident_id", "max_contributions": 1},
}


def _frame(n: int = 2000, *, bad_age: int = 0, null_region: int = 0) -> pl.DataFrame:
    return pl.DataFrame({
        "resident_id": [f"id-{i}" for i in range(n)],
        "region": [None if i < null_region else ("north" if i % 2 else "south") for i in range(n)],
        "age": [500 if i < bad_age else 20 + i % 60 for i in range(n)],
        "station": ["s1" if i % 3 else "s2" for i in range(n)],
    })


@pytest.fixture
def make(tmp_path):
    init_ca(tmp_path / "pki")
    bcert, bkey = issue(tmp_path / "pki", role=Role.BROKER, name="broker")
    ccert, ckey = issue(tmp_path / "pki", role=Role.CONNECTOR, name="ca1", department="civil-affairs")
    reg = DatasetRegistration.from_dict(REG)
    data = tmp_path / "residents.parquet"

    def build(frame: pl.DataFrame, *, quality: QualityConfig = QualityConfig(), verification: dict | None = None,
              name: str = "state") -> Executor:
        frame.write_parquet(data)
        policy = VerificationPolicy.from_config(verification, reg) if verification else None
        config = ConnectorConfig(
            id="ca1", department="civil-affairs", broker="127.0.0.1:1", state_dir=tmp_path / name, sandbox="bwrap",
            max_parallel_jobs=1, tls=TlsFiles(ca=tmp_path / "pki" / "ca.crt", cert=ccert, key=ckey),
            broker_certificate=bcert, local_policy=LocalPolicy(),
            datasets=(DatasetConfig(registration=reg, source=SourceSpec(kind="parquet", path=str(data)),
                                    verification=policy),),
            path=tmp_path / "c.toml", timing=Timing(allowance_s=0.5, wave_slack_s=0.1), quality=quality,
            scratch_dir=tmp_path / "scratch")
        return Executor(config, load_private_key(ckey), x509.load_pem_x509_certificate(bcert.read_bytes()))

    return {"build": build, "bkey": load_private_key(bkey), "ccert": x509.load_pem_x509_certificate(ccert.read_bytes()),
            "tmp": tmp_path, "data": data}


def _ticket(make, executor, job_id, **kw):
    version = executor.datasets["residents"].refresh().version
    now = int(time.time() * 1000)
    fields = dict(job_id=job_id, broker="broker", connector="ca1", department="civil-affairs", dataset="residents",
                  dataset_version=version, operator="op", license="L", tier="query", purpose="research",
                  epsilon=Fraction(1, 2), work={"query": {"aggregate": "count", "column": "", "group_by": ""}},
                  obligations={}, policy_version="sha256:" + "0" * 64, rule="r", issued_at_ms=now,
                  expires_at_ms=now + 60_000)
    fields.update(kw)
    return Ticket(**fields).sign(make["bkey"])


# -- destruction --------------------------------------------------------------------------
def test_a_query_receipt_carries_a_verified_confirmation_at_its_own_time(make):
    ex = make["build"](_frame())
    payload, sig, _ = ex.handle(*_ticket(make, ex, "q1"), b"")
    receipt = Receipt.verify(payload, sig, make["ccert"])
    assert receipt.status == "ok"
    assert receipt.destruction["verified"] is True and receipt.destruction["items"] == []
    assert receipt.destruction["at_ms"] == receipt.at_ms
    check_confirmation(json.loads(payload))  # what the auditor's verify runs


def test_a_refused_job_carries_no_confirmation(make):
    ex = make["build"](_frame())
    payload, sig, _ = ex.handle(*_ticket(make, ex, "r1", purpose="commercial", tier="custom-algorithm",
                                         work={"algorithm": {"digest": "sha256:" + "1" * 64, "outputs": []}}), b"x")
    receipt = Receipt.verify(payload, sig, make["ccert"])
    assert receipt.status == "refused" and receipt.destruction == {}


def test_job_scratch_is_destroyed_and_checked_gone(make, tmp_path):
    snapshot = tmp_path / "snap.parquet"
    _frame(10).write_parquet(snapshot)
    scratch = JobScratch(tmp_path / "scratch", "j", "residents").create()
    staged = scratch.stage_input(snapshot)
    (scratch.blocks / "block-0.parquet").write_bytes(b"rows")
    scratch.own(scratch.blocks / "block-0.parquet")
    (scratch.sandbox / "yumen-stage-x").mkdir()
    # a private copy (a link would share the snapshot's owner and mode), in private folders
    assert staged.read_bytes() == snapshot.read_bytes() and os.stat(staged).st_ino != os.stat(snapshot).st_ino
    assert os.stat(staged).st_mode & 0o777 == 0o400 and os.stat(scratch.blocks / "block-0.parquet").st_mode & 0o777 == 0o400
    assert all(os.stat(d).st_mode & 0o777 == 0o700 for d in (scratch.path, scratch.blocks, scratch.sandbox))
    assert os.stat(scratch.root).st_mode & 0o777 == 0o711
    assert scratch.destroy() == []
    assert not scratch.path.exists() and snapshot.exists()  # the pinned snapshot itself stays


def test_start_up_sweeps_only_job_scratch_directories(tmp_path):
    from yumen.connectors._destruction import sweep_scratch

    root = tmp_path / "scratch"
    left = JobScratch(root, "j", "residents").create()
    (left.blocks / "block-0.parquet").write_bytes(b"rows")
    (root / "not-a-job").mkdir()
    (root / "notes.txt").write_text("kept")
    assert sweep_scratch(root) == [left.path.name]
    assert not left.path.exists() and (root / "not-a-job").is_dir() and (root / "notes.txt").exists()
    assert sweep_scratch(tmp_path / "missing") == []


def test_a_destruction_that_leaves_files_is_not_confirmed(make, tmp_path):
    scratch = JobScratch(tmp_path / "scratch", "j", "residents").create()
    (scratch.blocks / "block-0.parquet").write_bytes(b"rows")
    left = scratch.destroy(unlink=lambda p: None)  # an unlink that silently fails (a fault at the I/O edge)
    assert any(p.endswith("block-0.parquet") for p in left)
    with pytest.raises(YumenError, match="could not confirm"):
        from yumen.destruction import confirmation

        check_confirmation({"job_id": "j", "status": "ok", "at_ms": 5, "metering": {},
                            "destruction": confirmation("query", 0, at_ms=5, verified=not left)})


def test_an_expired_snapshot_is_destroyed_with_a_signed_confirmation(make):
    ex = make["build"](_frame())
    served = ex.datasets["residents"]
    old = served.pin().snapshot
    os.utime(old, (0, 0))
    served.retention_days = 0.0
    _frame(2100).write_parquet(make["data"])  # a new version; pinning it prunes the old one
    served.pin()
    assert not old.exists()
    (record,) = ex.steward.state.destructions()
    assert record["verified"] is True and record["version"] == "sha256:" + old.stem
    kinds = [k for k, _, _ in ex.steward.drain()]
    assert "destroyed" in kinds


# -- quality ------------------------------------------------------------------------------
def test_the_quality_report_releases_noisy_shares_and_exact_public_columns(make):
    ex = make["build"](_frame(4000, bad_age=400, null_region=800))
    reg = ex.datasets["residents"].refresh()
    ex.steward.wait_idle(120)  # no thresholds: the report is made off the job path
    payload, signature, published = ex.steward.state.report("residents", reg.version)
    verify_payload(make["ccert"], "quality-report", payload, signature)
    report = QualityReport.from_payload(payload).body
    assert published and report["schema"]["conforms"]
    # what OpenDP's privacy map certifies, never above the [quality] epsilon the ledger was charged
    assert Fraction(99, 1000) < Fraction(report["loss"]["epsilon"]) <= Fraction(1, 10)
    assert report["loss"]["withheld"] is False and report["loss"]["unmeasured"] is False
    cols = report["columns"]
    # noisy: sensitivity 1·(3 + 1 + 2 + 2) = 8 at ε 0.1 → scale 80 counts, i.e. about 0.02 of 4000 rows
    assert abs(cols["age"]["out_of_bounds"] - 0.1) < 0.15 and abs(cols["region"]["null_rate"] - 0.2) < 0.15
    assert report["noise"]["sensitivity"] == 8
    assert cols["station"]["histogram"] == [2666.0, 1334.0]  # public column: exact
    assert abs(report["table"]["rows"] - 4000) < 800  # noised (10 scales: fails about never)
    # the department's own ledger was charged the report's ε
    assert ex.state.spent("residents", f"30d:{int(time.time() // 86400) // 30}") == Fraction(1, 10)


def test_a_version_failing_the_thresholds_is_withheld_and_the_previous_one_served(make):
    quality = parse_quality_config({"refuse": True, "max_out_of_bounds": "0.3", "epsilon": "1"})
    ex = make["build"](_frame(4000), quality=quality)
    first = ex.datasets["residents"].refresh().version
    _frame(4000, bad_age=3000).write_parquet(make["data"])  # 75 % of ages out of bounds
    assert ex.datasets["residents"].refresh().version == first  # still the passing version
    withheld = [r for r in ex.steward.state.reports("residents") if not r["published"]]
    assert len(withheld) == 1 and "age out_of_bounds" in withheld[0]["report"]["failures"][0]


def test_with_thresholds_a_version_has_its_report_before_it_is_published(make):
    quality = parse_quality_config({"max_null_rate": "0.5"})  # a threshold, no refusal: still judged first
    ex = make["build"](_frame(4000), quality=quality)
    reg = ex.datasets["residents"].refresh()
    stored = ex.steward.state.report("residents", reg.version)  # no waiting: made on the pinning path
    assert stored is not None and stored[2] is True
    assert [k for k, _, _ in ex.steward.drain()] == ["quality"]


def test_without_thresholds_the_report_is_made_off_the_job_path_and_sent_when_ready(make):
    ex = make["build"](_frame(4000))
    sent = []
    ex.steward.listener = lambda: sent.extend(k for k, _, _ in ex.steward.drain())
    reg = ex.datasets["residents"].refresh()  # published at once
    assert ex.datasets["residents"].registration.version == reg.version
    ex.steward.wait_idle(120)
    assert ex.steward.state.report("residents", reg.version)[2] is True
    assert sent == ["quality"]  # handed to the stream by the worker, without a job to carry it


def test_a_failing_first_version_is_withheld_with_a_clear_error(make):
    quality = parse_quality_config({"refuse": True, "max_out_of_bounds": "0.3", "epsilon": "1"})
    ex = make["build"](_frame(4000, bad_age=3000), quality=quality)
    with pytest.raises(YumenError, match="withholds version .* quality thresholds") as e:
        ex.datasets["residents"].refresh()
    assert e.value.code is Code.DEPARTMENT_REFUSED


def test_drift_and_freshness_are_measured_against_the_previous_version(make):
    ex = make["build"](_frame(4000), quality=parse_quality_config({"epsilon": "2"}))
    ex.datasets["residents"].refresh()
    ex.steward.wait_idle(120)
    shifted = _frame(4000).with_columns(pl.lit("north").alias("region"))
    shifted.write_parquet(make["data"])
    reg = ex.datasets["residents"].refresh()
    ex.steward.wait_idle(120)
    report = QualityReport.from_payload(ex.steward.state.report("residents", reg.version)[0]).body
    assert report["columns"]["region"]["psi"] > 1.0  # half the rows moved category
    assert report["columns"]["station"]["psi"] == pytest.approx(0.0, abs=1e-9)  # public, unchanged
    assert report["freshness"]["expected_days"] == 1.0 and report["freshness"]["late"] is False


def test_schema_problems_are_reported_by_pandera(make):
    ex = make["build"](_frame().with_columns(pl.col("age").cast(pl.String)).drop("station"))
    reg = ex.datasets["residents"].refresh()
    ex.steward.wait_idle(120)
    report = QualityReport.from_payload(ex.steward.state.report("residents", reg.version)[0]).body
    problems = {(p["column"], p["problem"].split(" ")[0]) for p in report["schema"]["problems"]}
    assert ("station", "missing") in problems and ("age", "type") in problems
    assert report["passed"] is False


@pytest.mark.parametrize("table,needle", [
    ({"epsilon": 0.1}, "decimal string"), ({"max_null_rate": "1.5"}, "share from 0 to 1"),
    ({"refuse": "yes"}, "true or false"), ({"maxnull": "0.1"}, "has no key .maxnull."), ({"bins": 1}, "from 2 to 100"),
])
def test_bad_quality_config_says_what_is_wrong(table, needle):
    with pytest.raises(YumenError, match=needle) as e:
        parse_quality_config(table)
    assert e.value.code is Code.CONFIG


# -- verification -------------------------------------------------------------------------
VPOLICY = {"subject": "resident_id", "fields": ["region", "age"], "purposes": ["public-interest"],
           "per_license_per_day": 5, "per_subject_per_day": 2, "reveal_mismatches": True}


def _order(make, ex, request_id, subject, claims, *, license="LIC-1", want=False, purpose="public-interest"):
    (offer_payload, offer_sig), = ex.steward.verifier(ex.datasets).offers()
    offer = json.loads(offer_payload)
    sealed = seal_request(offer, request_id=request_id, license=license, purpose=purpose, subject=subject, claims=claims)
    now = int(time.time() * 1000)
    order = canonical_json({"request_id": request_id, "dataset": "residents", "operator": "op", "license": license,
                            "purpose": purpose, "fields": sorted(claims), "want_mismatches": want,
                            "sealed_digest": sealed_digest(sealed), "issued_at_ms": now, "expires_at_ms": now + 60_000})
    return order, sign_payload(make["bkey"], ORDER_PURPOSE, order), sealed


def _answer(make, ex, *args, **kw):
    order, sig, sealed = _order(make, ex, *args, **kw)
    payload, signature = ex.steward.verifier(ex.datasets).answer(order, sig, sealed, ex._broker_cert)
    verify_payload(make["ccert"], "verification-answer", payload, signature)
    return json.loads(payload)


def test_a_verification_answers_yes_or_no_and_names_only_a_keyed_hash(make):
    ex = make["build"](_frame(), verification=VPOLICY)
    yes = _answer(make, ex, "r1", "id-7", {"region": "north", "age": 27})
    assert yes["answer"] == "yes" and yes["subject"].startswith("hmac:") and "id-7" not in json.dumps(yes)
    no = _answer(make, ex, "r2", "id-8", {"region": "north", "age": 28}, want=True)
    assert no["answer"] == "no" and no["mismatched"] == ["region"]
    unknown = _answer(make, ex, "r3", "nobody", {"region": "north"})
    assert unknown["answer"] == "no" and unknown["mismatched"] == []


def test_caps_per_subject_and_per_license_refuse_further_tests(make):
    ex = make["build"](_frame(), verification=VPOLICY)
    answers = [_answer(make, ex, f"s{i}", "id-7", {"region": "south"})["answer"] for i in range(3)]
    assert answers == ["no", "no", "refused"]  # two tests of one person a day, then nothing
    more = [_answer(make, ex, f"l{i}", f"id-{100 + i}", {"region": "south"})["answer"] for i in range(4)]
    assert more[:3] != ["refused"] * 3 and more[-1] == "refused"  # 5 per license per day in all


def test_a_sealed_request_cannot_be_rebound_to_another_license(make):
    ex = make["build"](_frame(), verification=VPOLICY)
    order, sig, sealed = _order(make, ex, "r1", "id-7", {"region": "north"}, license="LIC-1")
    forged = json.loads(order)
    forged["license"] = "LIC-2"  # the broker relabels the request
    forged_payload = canonical_json(forged)
    payload, _ = ex.steward.verifier(ex.datasets).answer(
        forged_payload, sign_payload(make["bkey"], ORDER_PURPOSE, forged_payload), sealed, ex._broker_cert)
    answer = json.loads(payload)
    assert answer["answer"] == "refused" and "does not open" in answer["reason"]


def test_the_broker_cannot_open_a_sealed_request(make):
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    ex = make["build"](_frame(), verification=VPOLICY)
    _, _, sealed = _order(make, ex, "r1", "id-7", {"region": "north"})
    aad = request_aad(request_id="r1", dataset="residents", license="LIC-1", purpose="public-interest", fields=["region"])
    with pytest.raises(YumenError, match="does not open"):
        open_sealed(X25519PrivateKey.generate(), sealed, aad)


@pytest.mark.parametrize("policy,needle", [
    ({**VPOLICY, "fields": ["nope"]}, "no column 'nope'"),
    ({**VPOLICY, "subject": "age", "fields": ["region"]}, None),
    ({**VPOLICY, "fields": ["resident_id"]}, "nor include the subject"),
    ({**VPOLICY, "per_subject_per_day": 0}, "from 1 to"),
    ({**VPOLICY, "colour": 1}, "has no key .colour."),
])
def test_bad_verification_policy_says_what_is_wrong(policy, needle):
    reg = DatasetRegistration.from_dict(REG)
    if needle is None:
        assert VerificationPolicy.from_config(policy, reg).subject == "age"
        return
    with pytest.raises(YumenError, match=needle):
        VerificationPolicy.from_config(policy, reg)


def test_concurrent_cap_counts_share_commits_and_never_exceed_the_cap(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from yumen.connectors._steward_state import StewardState

    state = StewardState(tmp_path / "steward.db")
    with ThreadPoolExecutor(max_workers=16) as pool:
        hits = list(pool.map(lambda i: state.take("day:1", [("license:L:d", 1000), (f"subject:d:s{i % 2}", 7)]),
                             range(40)))
    assert hits.count("") == 14  # 7 per subject, two subjects
    assert state.used("day:1", "subject:d:s0") == 7 and state.used("day:1", "license:L:d") == 14
    assert set(hits) - {""} <= {"subject:d:s0", "subject:d:s1"}
    # durable: a new connection reads the same counts
    assert StewardState(tmp_path / "steward.db").used("day:1", "subject:d:s1") == 7


def test_the_subject_index_finds_normalised_identifiers_and_only_them():
    from yumen.connectors._verification import SubjectIndex

    frame = pl.DataFrame({"rid": ["b", " a ", "c", None, "a", "e\u0301"], "f": ["1", "2", "3", "4", "5", "6"]})
    index = SubjectIndex(frame, "rid")
    assert sorted(index._columns["f"][r] for r in index.rows_of("a")) == ["2", "5"]
    assert [index._columns["f"][r] for r in index.rows_of("\u00e9")] == ["6"]  # NFC of e + combining accent
    assert index.rows_of("d") == [] and index.rows_of("") == []
    assert index.compare("a", {"f": "5"}) == (True, [])
    ints = SubjectIndex(pl.DataFrame({"n": [3, 1, 2], "f": ["x", "y", "z"]}), "n")
    assert ints.compare("2", {"f": "z"}) == (True, []) and ints.compare("2", {"f": "x"}) == (False, ["f"])
