"""Entries have one canonical encoding, and decoding refuses anything else."""

from __future__ import annotations

import json

import pytest

from yumen.audit import ENTRY_TYPES, CatalogueChanged, ChargeRecorded, JobDecided, decode_entry, encode_entry, entry_from_dict
from yumen.canonical import canonical_json
from yumen.errors import Code, YumenError

from audit_samples import T, destroyed_entry, digest, sample_entries, verification_entry


def test_every_type_round_trips_through_its_leaf():
    seen = set()
    billing = [
        CatalogueChanged(kind="cap", changed_by="admin-1", role="admin",
                         fields={"product": "standard", "purpose": "commercial", "unit": "job", "amount": "60",
                                 "start": "2026-01-01T00:00:00Z"}),
        ChargeRecorded(job_id="job-1", kind="hold", license_id="LIC-1", operator="op-1", product="standard",
                       purpose="commercial", amount="250.5", currency="CNY",
                       details={"lines": [{"unit": "job", "quantity": "1", "unit_price": "50", "cap": "60",
                                           "amount": "50.00"}]}),
    ]
    for entry in [*sample_entries(1), verification_entry("v-1"), destroyed_entry(digest("ds1")), *billing]:
        leaf = encode_entry(entry)
        assert leaf == canonical_json(entry.to_dict())
        assert decode_entry(leaf) == entry
        assert entry_from_dict(json.loads(leaf)) == entry
        d = json.loads(leaf)
        assert d["type"] == entry.TYPE and d["v"] == 1
        seen.add(entry.TYPE)
    assert seen == set(ENTRY_TYPES)


def _leaf_dict():
    return json.loads(encode_entry(sample_entries(1)[3]))


@pytest.mark.parametrize(
    "mutate,reason",
    [
        (lambda d: d.update(type="job_teleported"), "unknown entry type"),
        (lambda d: d.update(surprise=1), "unknown field"),
        (lambda d: d.pop("operator"), "missing field"),
        (lambda d: d.update(v=2), "version"),
        (lambda d: d.update(allowed="yes"), "true or false"),
        (lambda d: d.update(epsilon="1e-3"), "plain decimal"),
        (lambda d: d.update(policy_version="v1"), "not a digest"),
        (lambda d: d.update(datasets=[]), "non-empty list"),
    ],
)
def test_decoding_refuses_unknown_types_fields_and_bad_values(mutate, reason):
    d = _leaf_dict()
    mutate(d)
    with pytest.raises(YumenError, match=reason) as e:
        decode_entry(canonical_json(d))
    assert e.value.code is Code.VERIFICATION_FAILED
    with pytest.raises(YumenError) as e2:
        entry_from_dict(d)
    assert e2.value.code is Code.INVALID_ARGUMENT


def test_non_canonical_leaf_bytes_are_refused():
    leaf = encode_entry(sample_entries(1)[3])
    spaced = json.dumps(json.loads(leaf), sort_keys=True).encode()
    assert json.loads(spaced) == json.loads(leaf)
    with pytest.raises(YumenError, match="canonical"):
        decode_entry(spaced)


def test_floats_are_refused_everywhere_including_details():
    with pytest.raises(YumenError, match="float"):
        JobDecided(time=T, job_id="j", allowed=True, policy_version=digest(1), operator="o", datasets=("d",),
                   tier="query", purpose="research", epsilon="0.1", details={"x": [1, 0.5]})
    d = _leaf_dict()
    leaf = canonical_json(d).replace(b'"cpu_ms"', b'"cpu_ms"') .replace(b'"epsilon_max":"0.5"', b'"epsilon_max":0.5')
    with pytest.raises(YumenError, match="float|integer"):
        decode_entry(leaf)


def test_a_denial_needs_a_reason():
    with pytest.raises(YumenError, match="reason"):
        JobDecided(time=T, job_id="j", allowed=False, policy_version=digest(1), operator="o", datasets=("d",),
                   tier="query", purpose="research", epsilon="0.1")


def test_entries_are_frozen_and_maps_are_copied():
    details = {"k": "v"}
    e = JobDecided(time=T, job_id="j", allowed=True, policy_version=digest(1), operator="o", datasets=["d"],
                   tier="query", purpose="research", epsilon="0.1", details=details)
    details["k"] = "changed"
    assert e.details == {"k": "v"} and e.datasets == ("d",)
    with pytest.raises(AttributeError):
        e.job_id = "other"  # type: ignore[misc]


def test_prebuilt_canonical_encoder_agrees_with_yumen_canonical():
    from yumen.audit._entries import _canonical_str

    for entry in sample_entries(1):
        d = entry.to_dict()
        assert _canonical_str(d).encode() == canonical_json(d)
    odd = {"ü": ["\u2028", "\\", "\x01"], "a": {"z": 1, "b": -2}, "n": None, "t": True}
    assert _canonical_str(odd).encode() == canonical_json(odd)


@pytest.mark.parametrize("index", range(6))
def test_fast_validator_and_full_decoder_accept_and_refuse_the_same_leaves(index):
    from yumen.audit._entries import _VALIDATORS

    base = json.loads(encode_entry(sample_entries(1)[index]))
    assert _VALIDATORS[base["type"]](base)
    variants = []
    for key, value in base.items():
        for bad in ("", 0, None, [], {}, True, "x", "sha256:zz", ["a", ""], "1.50", "2026-01-01T00:00:00Z"):
            if bad != value:
                variants.append({**base, key: bad})
        variants.append({k: v for k, v in base.items() if k != key})
    variants.append({**base, "allowed": False, "reason": ""})
    variants.append({**base, "action": "stolen"})
    for v in variants:
        try:
            entry_from_dict(v)  # the constructor's checks, the reference
            full_ok = True
        except YumenError:
            full_ok = False
        fast_ok = _VALIDATORS[base["type"]](v) if v.get("type") == base["type"] else None
        if fast_ok is not None:
            assert fast_ok == full_ok, v
