"""Table-driven decisions of the default policy, per level, tier and purpose."""

import pytest

from yumen.policy import DecisionRequest, PolicyEngine, default_policy_paths


@pytest.fixture(scope="module")
def engine():
    model, policy = default_policy_paths()
    return PolicyEngine(model.read_text(), policy.read_text() + "\ng, LIC-1, licensed\n")


TABLE = [
    # level, tier, purpose, allowed, rule
    ("L1", "query", "commercial", True, "open-data"),
    ("L1", "custom-algorithm", "research", True, "open-data"),
    ("L2", "query", "research", True, "conditional-noncommercial"),
    ("L2", "custom-algorithm", "commercial", False, ""),
    ("L2", "query", "commercial", True, "conditional-commercial-query"),
    ("L3", "query", "public-interest", True, "restricted-query"),
    ("L3", "query", "commercial", False, ""),
    ("L3", "custom-algorithm", "research", False, ""),
    ("L4", "query", "public-interest", False, ""),
]


@pytest.mark.parametrize("level,tier,purpose,allowed,rule", TABLE)
def test_default_policy_decision(engine, level, tier, purpose, allowed, rule):
    d = engine.decide(DecisionRequest(license="LIC-1", department="dept", dataset="ds", level=level, tier=tier, purpose=purpose))
    assert d.allowed is allowed
    assert d.rule == rule
    assert d.policy_version == engine.version
    if allowed:
        assert d.obligations is not None and d.obligations.max_epsilon > 0
    else:
        assert d.reason


def test_denial_names_the_missing_condition_and_what_would_satisfy_it(engine):
    d = engine.decide(DecisionRequest(license="LIC-1", department="h", dataset="ov", level="L3", tier="query", purpose="commercial"))
    assert "purpose 'commercial'" in d.reason and "public-interest, research" in d.reason
    d = engine.decide(DecisionRequest(license="LIC-1", department="h", dataset="ov", level="L3", tier="custom-algorithm", purpose="research"))
    assert "allowed tiers: query" in d.reason


def test_unknown_license_is_denied_with_a_reason(engine):
    d = engine.decide(DecisionRequest(license="LIC-X", department="h", dataset="ov", level="L1", tier="query", purpose="research"))
    assert not d.allowed and "not registered" in d.reason


def test_policy_version_is_content_addressed():
    model, policy = default_policy_paths()
    a = PolicyEngine(model.read_text(), policy.read_text())
    b = PolicyEngine(model.read_text(), policy.read_text() + "\ng, LIC-9, licensed\n")
    assert a.version != b.version
    assert a.version == PolicyEngine(model.read_text(), policy.read_text()).version
