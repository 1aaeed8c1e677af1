"""Revenue per period and the maximum allowed revenue, with the excess carried into the next year."""

from __future__ import annotations

from decimal import Decimal

from yumen.audit._billing import BillingBook, revenue_report


def _book():
    book = BillingBook()
    book.departments = {"bus-trips": "transport-dept", "visits-a": "health-a", "visits-b": "health-b"}
    book.revenue = {("2026-11", "bus-trips"): Decimal("100.00"), ("2026-11", "visits-a"): Decimal("30.01"),
                    ("2026-12", "visits-b"): Decimal("20.00"), ("2027-01", "bus-trips"): Decimal("90.00")}
    book.catalogue.allowed_revenue = {"2026": Decimal("120"), "2027": Decimal("100")}
    return book


def test_a_month_lists_departments_and_datasets_and_adds_up():
    rep = revenue_report(_book(), "2026-11")
    assert rep["departments"] == [{"department": "health-a", "revenue": "30.01"},
                                  {"department": "transport-dept", "revenue": "100.00"}]
    assert rep["total"] == "130.01"


def test_revenue_above_the_allowed_maximum_is_deducted_next_year():
    rep = revenue_report(_book(), "2027")
    y2026, y2027 = rep["years"][0], rep["years"][1]
    assert y2026 == {"year": "2026", "revenue": "150.01", "deduction_carried_in": "0.00", "net_revenue": "150.01",
                     "allowed_revenue": "120.00", "excess_carried_to_next_year": "30.01"}
    assert y2027["deduction_carried_in"] == "30.01" and y2027["net_revenue"] == "59.99"
    assert y2027["excess_carried_to_next_year"] == "0.00"
    assert rep["year"] == y2027
