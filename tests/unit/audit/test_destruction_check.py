"""The auditor's verify refuses a log where an executed job's destruction confirmation is missing or false."""

from __future__ import annotations

import pytest

from yumen.audit import TransparencyLog, SQLiteLogStorage, export, generate_log_key, verify_export
from yumen.audit._replay import replay
from yumen.destruction import confirmation
from yumen.errors import Code, YumenError

from audit_samples import ORIGIN, destroyed_entry, digest, executed, receipt_details, sample_entries, verification_entry


def _export(tmp_path, entries):
    log = TransparencyLog(SQLiteLogStorage(tmp_path / "log.db"), origin=ORIGIN, signing_key=generate_log_key())
    for e in entries:
        log.append(e)
    export(log, tmp_path / "out")
    return tmp_path / "out"


def _with_job0_details(details):
    entries = sample_entries(1)
    entries[4] = executed(entries[4], details)
    return entries


def test_an_executed_job_with_a_true_confirmation_verifies(tmp_path):
    report = verify_export(_export(tmp_path, sample_entries(2)))
    assert report.entries_checked == 9


@pytest.mark.parametrize("details,needle", [
    (receipt_details("job-0", destruction={}), "without a destruction confirmation"),
    ({"status": "ok"}, "the signed receipt in the entry is missing"),
    (receipt_details("job-0", destruction=confirmation("query", 0, at_ms=1_800_000_000_000, verified=False)),
     "could not confirm"),
    (receipt_details("job-0", destruction=confirmation("query", 0, at_ms=1_700_000_000_000, verified=True)),
     "time is not the receipt's"),
    # a sample-and-aggregate job of 10 runs that claims to have staged nothing
    (receipt_details("job-0", runs=10, destruction=confirmation("query", 0, at_ms=1_800_000_000_000, verified=True)),
     "does not match the job's shape"),
    (receipt_details("job-0", runs=10, destruction=confirmation("custom-algorithm", 4, at_ms=1_800_000_000_000,
                                                                verified=True)), "does not match the job's shape"),
])
def test_a_missing_or_false_destruction_confirmation_is_caught_by_verify(tmp_path, details, needle):
    with pytest.raises(YumenError, match=needle) as e:
        verify_export(_export(tmp_path, _with_job0_details(details)))
    assert e.value.code is Code.VERIFICATION_FAILED
    assert "entry 4" in e.value.message


def test_a_refused_job_needs_no_confirmation(tmp_path):
    entries = _with_job0_details(receipt_details("job-0", status="refused", destruction={}))
    assert verify_export(_export(tmp_path, entries)).entries_checked == 6


def test_an_unverified_destruction_of_an_expired_version_is_caught(tmp_path):
    with pytest.raises(YumenError, match="could not confirm that the snapshot was destroyed"):
        verify_export(_export(tmp_path, [*sample_entries(1), destroyed_entry(digest("ds1"), verified=False)]))


def test_replay_refuses_a_job_on_a_version_confirmed_destroyed_before_it(tmp_path):
    entries = sample_entries(2)
    broken = entries[:6] + [destroyed_entry(digest("ds1"))] + entries[6:]
    with pytest.raises(YumenError, match="after the department confirmed it destroyed"):
        replay(enumerate(broken))
    replay(enumerate([*entries, destroyed_entry(digest("ds1"))]))  # destroyed after its last job: fine


def test_replay_counts_verifications_per_subject_against_the_departments_cap():
    base = sample_entries(1)
    ok = [*base, *(verification_entry(f"v-{i}", per_subject=3) for i in range(3))]
    assert replay(enumerate(ok)).entries == len(ok)
    over = [*base, *(verification_entry(f"v-{i}", per_subject=3) for i in range(4))]
    with pytest.raises(YumenError, match=r"exceeds the department's cap \(subject: 4 > 3\)"):
        replay(enumerate(over))
    # refusals are logged but not counted
    refused = [*ok, verification_entry("v-9", answer="refused")]
    assert replay(enumerate(refused)).entries == len(refused)


# -- receipt and statement signatures, checked offline against the certificate the log carries --
def test_a_forged_receipt_is_caught_by_verify(tmp_path):
    import base64
    import dataclasses
    import json

    entries = sample_entries(2)
    receipt = json.loads(base64.b64decode(entries[4].details["receipt"]))
    receipt["metering"] = {"wall_ms": 1}  # the broker rewrites what the department signed
    forged = dict(entries[4].details, receipt=base64.b64encode(json.dumps(receipt).encode()).decode())
    entries[4] = dataclasses.replace(entries[4], details=forged)
    with pytest.raises(YumenError, match="job-0's receipt: the department's signature does not verify") as e:
        verify_export(_export(tmp_path, entries))
    assert e.value.code is Code.VERIFICATION_FAILED and "entry 4" in e.value.message


def test_a_receipt_signed_by_a_key_of_the_brokers_making_is_caught(tmp_path):
    import base64
    import dataclasses

    from cryptography.hazmat.primitives.asymmetric import ec

    from yumen.identity import sign_payload

    entries = sample_entries(1)
    payload = base64.b64decode(entries[4].details["receipt"])
    other = sign_payload(ec.generate_private_key(ec.SECP256R1()), "receipt", payload)
    entries[4] = dataclasses.replace(entries[4], receipt_signature=base64.b64encode(other).decode())
    with pytest.raises(YumenError, match="signature does not verify"):
        verify_export(_export(tmp_path, entries))


def test_a_receipt_of_another_job_is_caught(tmp_path):
    import dataclasses

    entries = sample_entries(2)
    entries[4] = dataclasses.replace(entries[4], details=entries[7].details,
                                     receipt_signature=entries[7].receipt_signature)  # job-1's, validly signed
    with pytest.raises(YumenError, match="the receipt's job_id 'job-1' is not the entry's 'job-0'"):
        verify_export(_export(tmp_path, entries))


def test_a_receipt_whose_certificate_the_log_never_carried_is_caught(tmp_path):
    import dataclasses

    entries = sample_entries(1)
    entries[0] = dataclasses.replace(entries[0], details={"connector": "conn-cma"})  # no certificate logged
    with pytest.raises(YumenError, match="which the log does not carry before it"):
        verify_export(_export(tmp_path, entries))


def test_a_forged_verification_answer_is_caught(tmp_path):
    import dataclasses

    entry = verification_entry("v-1", answer="yes")
    forged = dataclasses.replace(entry, statement=dict(entry.statement, answer="no"))
    with pytest.raises(YumenError, match="verification statement on weather-2025: the department's signature"):
        verify_export(_export(tmp_path, [*sample_entries(1), forged]))
    (tmp_path / "ok").mkdir()
    assert verify_export(_export(tmp_path / "ok", [*sample_entries(1), entry])).entries_checked == 7


def test_logged_certificates_must_come_from_the_data_space_ca_when_it_is_given(tmp_path):
    from yumen.identity import Role, init_ca

    init_ca(tmp_path / "pki")
    with pytest.raises(YumenError, match="not issued by the data space CA"):
        verify_export(_export(tmp_path, sample_entries(1)), ca_pem=(tmp_path / "pki" / "ca.crt").read_bytes())
