"""Table-driven decisions of the default policy, per level, tier and purpose, and the gates."""

import datetime as dt
from decimal import Decimal
from fractions import Fraction

import pytest

from yumen.catalog import Level
from yumen.errors import YumenError
from yumen.jobs import Purpose
from yumen.policy import DecisionRequest, License, LicenseStatus, PolicyBundle, PolicyEngine

NOW = dt.datetime(2026, 11, 27, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def engine():
    return PolicyEngine.default()


def lic(**kw):
    base = dict(id="LIC-1", organization="Acme", purposes=frozenset(Purpose), levels=frozenset({Level.L1, Level.L2, Level.L3}),
                valid_from=NOW - dt.timedelta(days=1), valid_until=NOW + dt.timedelta(days=30))
    return License(**{**base, **kw})


def req(level="L1", tier="query", purpose="research", eps="0.5", price_class="standard", at=NOW):
    return DecisionRequest(license="LIC-1", department="dept", dataset="ds", level=level, tier=tier, purpose=purpose,
                           epsilon=Fraction(eps), price_class=price_class, at=at)


TABLE = [
    # level, tier, purpose, allowed, rule, gate
    ("L1", "query", "commercial", True, "open-data", ""),
    ("L1", "custom-algorithm", "research", True, "open-data", ""),
    ("L1", "approved-algorithm", "public-interest", True, "open-data", ""),
    ("L2", "query", "research", True, "conditional-noncommercial", ""),
    ("L2", "custom-algorithm", "public-interest", True, "conditional-noncommercial", ""),
    ("L2", "custom-algorithm", "commercial", False, "", "rule"),
    ("L2", "query", "commercial", True, "conditional-commercial-query", ""),
    ("L3", "query", "public-interest", True, "restricted", ""),
    ("L3", "approved-algorithm", "research", True, "restricted", ""),
    ("L3", "query", "commercial", False, "", "rule"),
    ("L3", "custom-algorithm", "research", False, "", "level"),
    ("L4", "query", "public-interest", False, "", "license"),
]


@pytest.mark.parametrize("level,tier,purpose,allowed,rule,gate", TABLE)
def test_default_policy_decision(engine, level, tier, purpose, allowed, rule, gate):
    d = engine.decide(req(level, tier, purpose), lic())
    assert (d.allowed, d.rule, d.gate) == (allowed, rule, gate)
    assert d.policy_version == engine.version
    if allowed:
        assert d.obligations is not None and d.obligations.max_epsilon > 0
    else:
        assert d.reason


def test_level_defaults_drive_obligations(engine):
    l3 = engine.decide(req("L3"), lic()).obligations
    l1 = engine.decide(req("L1"), lic()).obligations
    assert (l3.sandbox, l3.approval, l3.min_group_size) == ("gvisor", True, 10)
    assert (l1.sandbox, l1.approval, l1.min_group_size) == ("bwrap", False, 0)


def test_l4_data_is_prohibited_even_for_an_unrestricted_license(engine):
    with pytest.raises(YumenError):
        lic(levels=frozenset({Level.L4}))
    d = engine.decide(req("L4"), lic())
    assert not d.allowed and "L4" in d.reason


@pytest.mark.parametrize("status,needle", [(LicenseStatus.REVOKED, "revoked"), (LicenseStatus.SUSPENDED, "suspended")])
def test_license_status_denies_at_once(engine, status, needle):
    d = engine.decide(req(), lic(status=status))
    assert not d.allowed and d.gate == "license" and needle in d.reason


def test_expired_license_is_denied_with_renewal_hint(engine):
    d = engine.decide(req(at=NOW + dt.timedelta(days=31)), lic())
    assert not d.allowed and "expired" in d.reason and "renew" in d.reason


def test_license_purposes_and_levels_bound_the_request(engine):
    d = engine.decide(req(purpose="commercial"), lic(purposes=frozenset({Purpose.RESEARCH})))
    assert not d.allowed and "does not cover the purpose commercial" in d.reason
    d = engine.decide(req(level="L3"), lic(levels=frozenset({Level.L1})))
    assert not d.allowed and "does not cover L3 data" in d.reason


def test_unregistered_license_is_denied(engine):
    d = engine.decide(req(), None)
    assert not d.allowed and "not registered" in d.reason


def test_epsilon_above_the_rule_maximum_names_the_limit(engine):
    d = engine.decide(req("L3", eps="0.75"), lic())
    assert not d.allowed and d.gate == "obligation" and "ask for ε ≤ 0.5" in d.reason


def test_denial_names_the_missing_condition_and_what_would_satisfy_it(engine):
    d = engine.decide(req("L3", purpose="commercial"), lic())
    assert "purpose 'commercial'" in d.reason and "public-interest, research" in d.reason
    d = engine.decide(req("L3", tier="custom-algorithm"), lic())
    assert "allowed tiers: query, approved-algorithm" in d.reason


_LEGACY_PRICING = """
[pricing.standard]
public-interest = { base = "0", per_epsilon = "0" }
research = { base = "0", per_epsilon = "20" }
commercial = { base = "50", per_epsilon = "400" }

[pricing.free]
public-interest = { base = "0", per_epsilon = "0" }
research = { base = "0", per_epsilon = "0" }
commercial = { base = "0", per_epsilon = "0" }
"""


def test_prices_left_the_policy_for_the_catalogue(engine):
    # the default policy prices nothing: charges come from the price catalogue (docs/billing.md)
    assert engine.decide(req("L1", purpose="commercial", eps="0.5"), lic()).price == Decimal("0.00")


def test_a_logged_policy_with_pricing_tables_still_prices_as_it_did(engine):
    """Older logs carry policy versions with [pricing] tables; replay re-decides under them."""
    b = engine.bundle
    legacy = PolicyEngine(PolicyBundle(model=b.model, rules=b.rules, settings=b.settings + _LEGACY_PRICING))
    assert legacy.decide(req("L1", purpose="public-interest", eps="2"), lic()).price == Decimal("0.00")
    assert legacy.decide(req("L1", purpose="commercial", eps="0.5"), lic()).price == Decimal("250.00")
    assert legacy.decide(req("L1", purpose="research", eps="0.25", price_class="free"), lic()).price == Decimal("0.00")


def test_policy_version_is_content_addressed():
    a = PolicyBundle.default()
    b = PolicyBundle(model=a.model, rules=a.rules + "\ng, partner, licensed\n", settings=a.settings)
    assert a.version != b.version and a.version == PolicyBundle.default().version


def test_invalid_policy_is_refused_with_the_reason():
    a = PolicyBundle.default()
    with pytest.raises(YumenError, match="no \\[rules.missing\\]"):
        PolicyEngine(PolicyBundle(model=a.model, rules="p, licensed, *, *, ^L1$, ^query$, ^research$, missing", settings=a.settings))
    with pytest.raises(YumenError, match="public-interest use is free"):
        PolicyEngine(PolicyBundle(model=a.model, rules=a.rules,
                                  settings=(a.settings + _LEGACY_PRICING).replace(
                                      'public-interest = { base = "0", per_epsilon = "0" }',
                                      'public-interest = { base = "1", per_epsilon = "0" }', 1)))


def test_a_rule_requiring_homomorphic_delivery_denies_plaintext_jobs():
    a = PolicyBundle.default()
    settings = a.settings.replace('[rules.restricted]\nmax_epsilon = "0.5"', '[rules.restricted]\nmechanism = "dp+he"\nmax_epsilon = "0.5"')
    engine = PolicyEngine(PolicyBundle(model=a.model, rules=a.rules, settings=settings))
    plain = engine.decide(req("L3"), lic())
    assert not plain.allowed and plain.gate == "obligation" and "homomorphic delivery" in plain.reason
    encrypted = engine.decide(DecisionRequest(**{**req("L3").__dict__, "encrypted": True}), lic())
    assert encrypted.allowed and encrypted.obligations.mechanism == "dp+he"
