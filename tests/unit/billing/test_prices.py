"""The price catalogue's rules, exact money and the revenue split (policy/_prices.py)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from yumen.errors import Code, YumenError
from yumen.policy._prices import (
    Catalogue,
    CatalogueChange,
    metered_quantities,
    parse_money,
    price_lines,
    split_fen,
    total_of,
)

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


def change(kind, role, **fields):
    return CatalogueChange(kind=kind, by=f"{role}-1", role=role, fields={k: str(v) for k, v in fields.items()})


def rate(kind, amount, start="2026-11-01T00:00:00Z", end="", unit="job", purpose="commercial"):
    role = "admin" if kind == "cap" else "operating-body"
    f = {"product": "standard", "purpose": purpose, "unit": unit, "amount": amount, "start": start}
    if end:
        f["end"] = end
    return change(kind, role, **f)


@pytest.fixture
def cat():
    c = Catalogue()
    c.apply(rate("cap", "60"), at=T0)
    c.apply(rate("price", "50"), at=T0)
    return c


def test_price_in_force_with_its_cap(cat):
    assert cat.in_force("standard", "commercial", T0 + dt.timedelta(days=3)) == {"job": (Decimal(50), Decimal(60))}
    assert cat.in_force("standard", "public-interest", T0) == {}  # free by the national rules


@pytest.mark.parametrize("bad,reason", [
    (rate("price", "61", start="2026-11-02T00:00:00Z"), "above its cap"),
    (rate("price", "-1", start="2026-11-02T00:00:00Z"), "negative"),
    (rate("price", "ten", start="2026-11-02T00:00:00Z"), "not a decimal"),
    (rate("price", "1e3", start="2026-11-02T00:00:00Z"), "above its cap"),
    (rate("price", "NaN", start="2026-11-02T00:00:00Z"), "not a finite"),
    (rate("price", "0.00001", start="2026-11-02T00:00:00Z"), "4 decimal places"),
    (rate("price", "1e999", start="2026-11-02T00:00:00Z"), "too large"),
    (rate("cap", "40", start="2026-11-02T00:00:00Z"), "above its cap"),  # a cap below the actual price
    (rate("cap", "70", start="2026-12-01T00:00:00Z", end="2026-12-10T00:00:00Z"), "no end but its cap"),
    (rate("price", "40", start="2026-10-01T00:00:00Z"), "never repriced"),  # back-dated
    (rate("price", "1", purpose="public-interest", start="2026-11-02T00:00:00Z"), "free"),
    (rate("price", "1", unit="byte", start="2026-11-02T00:00:00Z"), "unknown unit"),
])
def test_bad_changes_are_refused_and_change_nothing(cat, bad, reason):
    before = (cat.listing(), len(cat.history))
    with pytest.raises(YumenError, match=reason):
        cat.apply(bad, at=T0 + dt.timedelta(hours=1))
    assert (cat.listing(), len(cat.history)) == before


@pytest.mark.parametrize("kind,role,who", [("price", "admin", "operating body"), ("cap", "operating-body", "administrator"),
                                           ("revenue_rule", "operator", "administrator")])
def test_each_kind_is_changed_by_its_role_only(kind, role, who):
    with pytest.raises(YumenError, match=who) as e:
        change(kind, role, product="standard", purpose="commercial", unit="job", amount="1")
    assert e.value.code is Code.PERMISSION_DENIED


def test_overlapping_effective_dates_are_refused(cat):
    cat.apply(rate("price", "45", start="2026-12-01T00:00:00Z", end="2026-12-10T00:00:00Z"), at=T0)
    with pytest.raises(YumenError, match="overlaps") as e:
        cat.apply(rate("price", "44", start="2026-12-05T00:00:00Z", end="2026-12-20T00:00:00Z"), at=T0)
    assert e.value.code is Code.INVALID_ARGUMENT


def test_a_new_price_supersedes_the_open_one_and_past_prices_stay(cat):
    later = T0 + dt.timedelta(days=10)
    cat.apply(rate("price", "30", start="2026-11-11T00:00:00Z"), at=later)
    assert cat.in_force("standard", "commercial", T0 + dt.timedelta(days=1))["job"][0] == Decimal(50)
    assert cat.in_force("standard", "commercial", later + dt.timedelta(days=1))["job"][0] == Decimal(30)


def test_lowering_a_cap_needs_the_price_lowered_first(cat):
    at = T0 + dt.timedelta(days=1)
    with pytest.raises(YumenError, match="above its cap"):
        cat.apply(rate("cap", "40", start="2026-11-03T00:00:00Z"), at=at)
    cat.apply(rate("price", "40", start="2026-11-03T00:00:00Z"), at=at)
    cat.apply(rate("cap", "40", start="2026-11-03T00:00:00Z"), at=at)
    assert cat.in_force("standard", "commercial", T0 + dt.timedelta(days=5))["job"] == (Decimal(40), Decimal(40))


def test_lines_round_each_to_the_fen_half_up_and_add_up():
    rates = {"job": (Decimal("0.005"), Decimal("1")), "epsilon": (Decimal("333.3333"), Decimal("400"))}
    lines = price_lines(rates, {"job": Decimal(1), "epsilon": Decimal("0.5")})
    assert [x["amount"] for x in lines] == ["0.01", "166.67"]  # 0.005 -> 0.01 (half up), 166.66665 -> 166.67
    assert total_of(lines) == Decimal("166.68")


def test_algorithm_time_is_metered_by_its_fixed_limit_not_by_data():
    q = metered_quantities([("ok", Decimal("0.5"), {"held_ms": 8000, "sandbox_runs": 10}),
                            ("refused", Decimal(0), {"wall_ms": 5})])
    assert q["second"] == q["cpu_second"] == Decimal(8) and q["epsilon"] == Decimal("0.5") and q["job"] == 1


@pytest.mark.parametrize("total,weights", [
    ("0.10", {"a": "1", "b": "1", "c": "1"}),
    ("100.00", {"a": "0.1", "b": "0.2", "c": "0.7"}),
    ("0.01", {"x": "1", "y": "1"}),
    ("13.37", {"a": "0.333333333", "b": "0.333333333", "c": "0.333333334"}),
])
def test_revenue_shares_are_whole_fen_and_sum_exactly(total, weights):
    shares = split_fen(Decimal(total), {k: Decimal(v) for k, v in weights.items()})
    assert sum(shares.values()) == Decimal(total)
    assert all(s == s.quantize(Decimal("0.01")) and s >= 0 for s in shares.values())


def test_largest_remainder_gives_the_odd_fen_to_the_largest_remainder():
    assert split_fen(Decimal("0.10"), {"a": Decimal(1), "b": Decimal(1), "c": Decimal(1)}) == {
        "a": Decimal("0.04"), "b": Decimal("0.03"), "c": Decimal("0.03")}
    assert split_fen(Decimal("1.00"), {"a": Decimal(2), "b": Decimal(1)}) == {"a": Decimal("0.67"), "b": Decimal("0.33")}


def test_parse_money_refuses_floats():
    with pytest.raises(YumenError, match="decimal string"):
        parse_money(1.5, "the price")
