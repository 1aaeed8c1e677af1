"""The registrations of the demo datasets: schema, units, bounds, categories, privacy unit,
classification level and catalog metadata, as a department would declare them.

Kept apart from the generators in ``_demodata`` so each file stays readable; the bounds and
category lists are the generators' own constants, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from yumen.connectors._demodata import (
    AGE_BANDS,
    BUS_LINES,
    CARD_TYPES,
    CLINICS,
    COUNTIES,
    CROPS,
    INSURANCE,
    MAX_FARM_ROWS,
    MAX_SITE_VISITS,
    MAX_TRIPS,
    MAX_VISITS,
    ORIGINS,
    REGIONS,
    SEXES,
    SITES,
    TICKETS,
)

__all__ = ["REGISTRATIONS"]


def _num(name: str, type_: str, unit: str, lower: float, upper: float, description: str) -> dict[str, Any]:
    return dict(name=name, type=type_, unit=unit, lower=lower, upper=upper, description=description)


def _category(name: str, categories: tuple[str, ...], description: str) -> dict[str, Any]:
    return dict(name=name, type="category", categories=list(categories), description=description)


def _plain(name: str, type_: str, description: str) -> dict[str, Any]:
    return dict(name=name, type=type_, description=description)


REGISTRATIONS: dict[str, dict[str, Any]] = {
    "weather-daily": {
        "id": "weather-daily",
        "title": "Daily weather observations, Gansu stations, 2025",
        "description": "Daily mean temperature, precipitation and wind speed per automatic weather station.",
        "department": "weather-bureau",
        "level": "L1",
        "columns": [
            _plain("station_id", "string", "station identifier"),
            _plain("date", "date", "observation day"),
            _category("region", REGIONS, "prefecture-level city of the station"),
            _num("temp_mean_c", "float", "°C", -40.0, 45.0, "daily mean air temperature"),
            _num("precip_mm", "float", "mm", 0.0, 300.0, "daily precipitation"),
            _num("wind_ms", "float", "m/s", 0.0, 40.0, "daily mean wind speed"),
        ],
        "privacy_unit": {"column": "station_id", "max_contributions": 366},
        "update_frequency": "daily",
        "source_system": "provincial automatic weather station network (CIMISS export)",
        "price_class": "free",
    },
    "outpatient-visits": {
        "id": "outpatient-visits",
        "title": "Hospital outpatient visits, Gansu, 2025",
        "description": "One row per outpatient visit at public hospitals, with the patient's age band, sex and cost.",
        "department": "health-commission",
        "level": "L3",
        "columns": [
            _plain("patient_id", "string", "pseudonymous patient identifier"),
            _plain("visit_date", "date", "day of the visit"),
            _category("region", REGIONS, "prefecture-level city of the hospital"),
            _category("age_band", AGE_BANDS, "patient's age band in years"),
            _category("sex", SEXES, "patient's sex"),
            _category("department", CLINICS, "clinical department visited"),
            _category("insurance", INSURANCE, "basic medical insurance scheme"),
            _num("cost_yuan", "float", "CNY", 0.0, 50_000.0, "total cost of the visit"),
        ],
        "privacy_unit": {"column": "patient_id", "max_contributions": MAX_VISITS},
        "update_frequency": "daily",
        "source_system": "hospital information systems via the provincial health data platform",
        "price_class": "premium",
    },
    "bus-trips": {
        "id": "bus-trips",
        "title": "Lanzhou bus smart-card trips, March 2025",
        "description": "One row per boarding recorded by the smart-card fare system.",
        "department": "transport-dept",
        "level": "L2",
        "columns": [
            _plain("card_id", "string", "pseudonymous smart-card identifier"),
            _plain("trip_date", "date", "day of the trip"),
            _category("line", BUS_LINES, "bus line"),
            _num("boarding_hour", "int", "h", 0.0, 23.0, "hour of boarding (local time)"),
            _category("card_type", CARD_TYPES, "fare category of the card"),
            _num("fare_yuan", "float", "CNY", 0.0, 5.0, "fare charged"),
            _num(
                "distance_km", "float", "km", 0.0, 45.0, "ride distance between boarding and alighting stops"
            ),
        ],
        "privacy_unit": {"column": "card_id", "max_contributions": MAX_TRIPS},
        "update_frequency": "daily",
        "source_system": "smart-card automatic fare collection (AFC) system",
        "price_class": "standard",
    },
    "scenic-visits": {
        "id": "scenic-visits",
        "title": "Visitor entries at major scenic sites, Gansu, 2025",
        "description": "One row per ticketed entry at ten major scenic sites, with visitor origin and spending.",
        "department": "culture-tourism",
        "level": "L2",
        "columns": [
            _plain("visitor_id", "string", "pseudonymous visitor identifier (real-name ticketing)"),
            _category("site", SITES, "scenic site"),
            _num("visit_month", "int", "month", 1.0, 12.0, "month of the visit"),
            _category("origin", ORIGINS, "where the visitor comes from"),
            _category("ticket_type", TICKETS, "ticket category"),
            _num("spend_yuan", "float", "CNY", 0.0, 20_000.0, "ticket plus on-site spending"),
        ],
        "privacy_unit": {"column": "visitor_id", "max_contributions": MAX_SITE_VISITS},
        "update_frequency": "monthly",
        "source_system": "real-name ticketing and payment systems of the scenic sites",
        "price_class": "standard",
    },
    "farm-yields": {
        "id": "farm-yields",
        "title": "Crop area and yield per farm, Gansu, 2016-2025",
        "description": "Sown area and yield per farm, crop and year from the agricultural statistics survey.",
        "department": "agriculture-dept",
        "level": "L1",
        "columns": [
            _plain("farm_id", "string", "pseudonymous farm identifier"),
            _num("year", "int", "year", 2016.0, 2025.0, "harvest year"),
            _category("county", COUNTIES, "county of the farm"),
            _category("crop", CROPS, "crop"),
            _category("irrigation", ("irrigated", "rainfed"), "water regime"),
            _num("area_mu", "float", "mu", 0.1, 5000.0, "sown area (1 mu = 1/15 ha)"),
            _num(
                "yield_kg_per_mu",
                "float",
                "kg/mu",
                0.0,
                8000.0,
                "yield per mu (potato and apple fresh weight)",
            ),
        ],
        "privacy_unit": {"column": "farm_id", "max_contributions": MAX_FARM_ROWS},
        "update_frequency": "yearly",
        "source_system": "agricultural statistics survey system",
        "price_class": "free",
    },
}
