"""Synthetic public datasets for demos, tests and benchmarks, with their registrations.

Five priority fields of the public data plan, each as a department of Gansu province would
hold it. The numbers are invented but shaped like the real thing: seasonal temperature by
city, rain concentrated in summer and in the south-east, lognormal treatment costs that
depend on the clinic department, outpatient visit rates that rise with age, commuter peaks
in bus boardings, summer and Golden-Week peaks at scenic sites, crop yields that depend on
irrigation and on drought years.

| dataset             | department        | level | privacy unit (max rows)  |
|---------------------|-------------------|-------|--------------------------|
| weather-daily       | weather-bureau    | L1    | station_id (366)         |
| farm-yields         | agriculture-dept  | L1    | farm_id (30)             |
| bus-trips           | transport-dept    | L2    | card_id (60)             |
| scenic-visits       | culture-tourism   | L2    | visitor_id (6)           |
| outpatient-visits   | health-commission | L3    | patient_id (10)          |

Every generated value lies within its registration's bounds and categories (values are
clipped after rounding), and every privacy unit contributes at most the declared number of
rows; tests check both. Generation is deterministic in ``(rows, seed)``: rows are made in
chunks of ``CHUNK_ROWS``, chunk *i* from its own seed sequence ``(seed, dataset, i)``, so
memory stays bounded and a longer dataset begins with the rows of a shorter one (up to the
last partial chunk). Identifiers are unique across chunks.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from yumen.errors import Code, YumenError

__all__ = [
    "DEMO_DATASETS",
    "REGIONS",
    "CHUNK_ROWS",
    "demo_registration",
    "demo_registrations",
    "demo_frame",
    "demo_batches",
    "generate",
]

logger = logging.getLogger(__name__)

CHUNK_ROWS = 1_000_000

# Gansu's 14 prefecture-level divisions, with invented-but-plausible climate and people:
# (annual mean temperature °C, seasonal half-range °C, annual precipitation mm,
#  daily wind Weibull scale m/s, population in millions)
_CITY = {
    "lanzhou": (10.3, 12.5, 320, 1.6, 4.4),
    "jiayuguan": (7.5, 14.0, 90, 3.2, 0.31),
    "jinchang": (5.0, 13.5, 140, 3.0, 0.44),
    "baiyin": (8.5, 13.0, 200, 2.6, 1.5),
    "tianshui": (11.5, 11.0, 500, 1.5, 3.0),
    "wuwei": (8.0, 13.5, 160, 2.3, 1.45),
    "zhangye": (7.0, 14.0, 130, 2.5, 1.1),
    "pingliang": (9.0, 11.0, 510, 2.2, 1.8),
    "jiuquan": (7.5, 14.0, 85, 2.8, 1.05),
    "qingyang": (9.5, 11.5, 500, 2.4, 2.2),
    "dingxi": (7.0, 11.0, 420, 2.3, 2.5),
    "longnan": (14.5, 9.5, 550, 1.5, 2.4),
    "linxia": (7.0, 10.5, 500, 1.8, 2.1),
    "gannan": (2.5, 9.5, 580, 2.2, 0.69),
}
REGIONS: tuple[str, ...] = tuple(_CITY)
_MEAN_T = np.array([v[0] for v in _CITY.values()])
_AMP_T = np.array([v[1] for v in _CITY.values()])
_PRECIP = np.array([v[2] for v in _CITY.values()], dtype=float)
_WIND = np.array([v[3] for v in _CITY.values()])
_POP = np.array([v[4] for v in _CITY.values()])
_POP_P = _POP / _POP.sum()

_YEAR = 2025
_JAN1 = dt.date(_YEAR, 1, 1)
_DOY = np.arange(365)
_WEEKDAY = (_DOY + _JAN1.weekday()) % 7  # 0 = Monday


def _date_col(days: np.ndarray, name: str, start: dt.date = _JAN1) -> pl.Series:
    epoch_days = (start - dt.date(1970, 1, 1)).days
    return pl.Series(name, days.astype(np.int32) + epoch_days, dtype=pl.Int32).cast(pl.Date)


def _ids(prefix: str, numbers: np.ndarray, name: str, width: int = 9) -> pl.Series:
    """``prefix`` + zero-padded number, built in polars (no per-row Python strings)."""
    digits = pl.Series(name, numbers, dtype=pl.Int64).cast(pl.String).str.zfill(width)
    return (prefix + digits).alias(name)


def _cat(codes: np.ndarray, categories: tuple[str, ...], name: str) -> pl.Series:
    return pl.Series(name, list(categories), dtype=pl.String).gather(codes.astype(np.int64))


def _units(
    n: int, draw: Callable[[int], tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut ``n`` rows into privacy units.

    ``draw(k)`` gives ``k`` units' row counts and one attribute per unit. Returns the unit
    index of each row, each row's rank within its unit, and the units' attributes. Only the
    last unit is cut short, so no unit exceeds the counts ``draw`` gives.
    """
    count_parts: list[np.ndarray] = []
    attr_parts: list[np.ndarray] = []
    total = 0
    while total < n:
        counts, attrs = draw(max(64, (n - total) // 2 + 64))
        count_parts.append(counts.astype(np.int64))
        attr_parts.append(attrs.astype(np.int64))
        total += int(count_parts[-1].sum())
    if n == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty
    counts = np.concatenate(count_parts)
    cum = np.cumsum(counts)
    units = int(np.searchsorted(cum, n, side="left")) + 1
    counts = counts[:units].copy()
    counts[-1] -= int(cum[units - 1]) - n
    unit = np.repeat(np.arange(units), counts)
    rank = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
    return unit, rank, np.concatenate(attr_parts)[:units]


# --- weather-daily ----------------------------------------------------------------------


def _weather(rng: np.random.Generator, n: int, offset: int) -> pl.DataFrame:
    station, doy = np.divmod(np.arange(n), 365)
    stations = int(station[-1]) + 1 if n else 0
    region_of = rng.choice(len(REGIONS), size=stations, p=np.full(len(REGIONS), 1 / len(REGIONS)))
    altitude_dT = rng.normal(0.0, 1.5, size=stations)  # altitude and siting differences
    r = region_of[station]
    season = -np.cos(2 * np.pi * (doy - 15) / 365)  # coldest mid-January
    week_anom = rng.normal(0.0, 2.2, size=(stations, 53))[station, doy // 7]
    temp = _MEAN_T[r] + altitude_dT[station] + _AMP_T[r] * season + week_anom + rng.normal(0.0, 1.4, n)
    # rain: wet-day probability peaks in late July; amounts gamma-distributed
    wet_days = np.clip(_PRECIP / 5.0, 15, 120)
    shape = 0.25 + np.exp(-(((doy - 205) / 50.0) ** 2))
    shape = shape / (0.25 + np.exp(-(((_DOY - 205) / 50.0) ** 2))).mean()
    p_wet = np.clip(wet_days[r] / 365 * shape, 0, 0.95)
    wet = rng.random(n) < p_wet
    amount = rng.gamma(0.7, (_PRECIP[r] / wet_days[r]) / 0.7)
    precip = np.where(wet, amount, 0.0)
    spring = 1.0 + 0.25 * ((doy >= 60) & (doy < 150))  # spring gales of the Hexi corridor
    wind = _WIND[r] * spring * rng.weibull(2.0, n)
    return pl.DataFrame(
        [
            _ids("ST", offset // 365 + station, "station_id", width=6),
            _date_col(doy, "date"),
            _cat(r, REGIONS, "region"),
            pl.Series("temp_mean_c", np.clip(np.round(temp, 1), -40.0, 45.0)),
            pl.Series("precip_mm", np.clip(np.round(precip, 1), 0.0, 300.0)),
            pl.Series("wind_ms", np.clip(np.round(wind, 1), 0.0, 40.0)),
        ]
    )


# --- outpatient-visits ------------------------------------------------------------------

AGE_BANDS = ("0-4", "5-14", "15-24", "25-34", "35-44", "45-54", "55-64", "65-74", "75+")
_AGE_SHARE = np.array([0.05, 0.12, 0.11, 0.15, 0.13, 0.16, 0.13, 0.10, 0.05])
_AGE_VISITS = np.array([4.0, 1.8, 1.2, 1.6, 1.8, 2.3, 3.0, 4.0, 4.8])  # mean visits a year
_AGE_MID = np.array([2, 10, 20, 30, 40, 50, 60, 70, 80], dtype=float)
SEXES = ("F", "M")
CLINICS = (
    "internal-medicine", "surgery", "pediatrics", "obstetrics-gynecology", "ophthalmology", "otolaryngology",
    "dermatology", "stomatology", "traditional-chinese-medicine", "emergency", "rehabilitation",
)  # fmt: skip
_CLINIC_MEDIAN = np.array([260, 420, 180, 320, 240, 210, 160, 380, 200, 650, 300], dtype=float)  # yuan
# department mix by patient group: child (<15), adult woman, adult man, elderly (55+)
_CLINIC_P = np.array(
    [
        [0.00, 0.04, 0.55, 0.00, 0.05, 0.08, 0.06, 0.07, 0.03, 0.10, 0.02],
        [0.25, 0.10, 0.00, 0.20, 0.06, 0.07, 0.07, 0.08, 0.08, 0.07, 0.02],
        [0.32, 0.15, 0.00, 0.00, 0.07, 0.09, 0.08, 0.09, 0.08, 0.09, 0.03],
        [0.42, 0.10, 0.00, 0.02, 0.10, 0.05, 0.03, 0.05, 0.12, 0.03, 0.08],
    ]
)
INSURANCE = ("urban-employee", "urban-rural-resident", "self-pay")
MAX_VISITS = 10


def _outpatient(rng: np.random.Generator, n: int, offset: int) -> pl.DataFrame:
    def counts(k: int) -> tuple[np.ndarray, np.ndarray]:
        age = rng.choice(len(AGE_BANDS), size=k, p=_AGE_SHARE)
        return np.clip(1 + rng.poisson(_AGE_VISITS[age] - 1.0), 1, MAX_VISITS), age

    unit, _, age_of = _units(n, counts)
    units = int(unit[-1]) + 1 if n else 0
    sex_of = rng.integers(0, 2, size=units)
    region_of = rng.choice(len(REGIONS), size=units, p=_POP_P)
    ins_of = rng.choice(len(INSURANCE), size=units, p=[0.28, 0.66, 0.06])
    age, sex = age_of[unit], sex_of[unit]
    group = np.where(age <= 1, 0, np.where(age >= 6, 3, np.where(sex == 0, 1, 2)))
    clinic = np.empty(n, dtype=np.int64)
    for g in range(4):
        idx = np.flatnonzero(group == g)
        clinic[idx] = rng.choice(len(CLINICS), size=idx.size, p=_CLINIC_P[g] / _CLINIC_P[g].sum())
    # respiratory season in winter and spring, fewer visits on Sundays
    w = (1.0 + 0.25 * np.cos(2 * np.pi * (_DOY - 20) / 365)) * np.where(_WEEKDAY == 6, 0.6, 1.0)
    day = rng.choice(365, size=n, p=w / w.sum())
    age_factor = np.clip(1.0 + 0.006 * (_AGE_MID[age] - 30.0), 0.8, 1.35)
    cost = _CLINIC_MEDIAN[clinic] * age_factor * rng.lognormal(0.0, 0.85, n)
    return pl.DataFrame(
        [
            _ids("P", offset + unit, "patient_id"),
            _date_col(day, "visit_date"),
            _cat(region_of[unit], REGIONS, "region"),
            _cat(age, AGE_BANDS, "age_band"),
            _cat(sex, SEXES, "sex"),
            _cat(clinic, CLINICS, "department"),
            _cat(ins_of[unit], INSURANCE, "insurance"),
            pl.Series("cost_yuan", np.clip(np.round(cost, 2), 0.0, 50_000.0)),
        ]
    )


# --- bus-trips --------------------------------------------------------------------------

BUS_LINES = (
    "1", "6", "7", "31", "34", "50", "51", "52", "53", "55", "58", "84", "101", "102", "105",
    "106", "110", "111", "112", "118", "120", "128", "129", "131", "137",
    "brt-b1", "brt-b2", "brt-b5", "brt-b6", "brt-b8",
)  # fmt: skip
CARD_TYPES = ("standard", "student", "senior", "staff")
_CARD_P = np.array([0.62, 0.16, 0.17, 0.05])
_CARD_DISCOUNT = np.array([0.9, 0.5, 0.0, 1.0])
MAX_TRIPS = 60
_TRIP_DAYS = 31  # March 2025


def _bus(rng: np.random.Generator, n: int, offset: int) -> pl.DataFrame:
    def counts(k: int) -> tuple[np.ndarray, np.ndarray]:
        commuter = rng.random(k) < 0.3
        c = np.where(commuter, rng.poisson(38, k), rng.geometric(0.25, k))
        kind = rng.choice(len(CARD_TYPES), size=k, p=_CARD_P)
        return np.clip(c, 1, MAX_TRIPS), kind

    unit, _, kind_of = _units(n, counts)
    units = int(unit[-1]) + 1 if n else 0
    popularity = 1.0 / np.arange(1, len(BUS_LINES) + 1) ** 0.8  # Zipf-like ridership
    line_rng = np.random.default_rng(7)  # line attributes are the same in every dataset
    order = line_rng.permutation(len(BUS_LINES))
    line_p = popularity[order] / popularity.sum()
    line_km = line_rng.uniform(2.5, 9.0, len(BUS_LINES))  # mean ride length per line
    line_fare = np.where(line_rng.random(len(BUS_LINES)) < 0.2, 2.0, 1.0)
    home_line = rng.choice(len(BUS_LINES), size=units, p=line_p)
    own = rng.random(n) < 0.7  # most trips on the card's usual line
    line = np.where(own, home_line[unit], rng.choice(len(BUS_LINES), size=n, p=line_p))
    mix = rng.random(n)
    hour = np.where(
        mix < 0.30,
        rng.normal(7.6, 0.9, n),
        np.where(mix < 0.58, rng.normal(17.8, 1.2, n), rng.uniform(6.0, 22.0, n)),
    )
    hour = np.clip(np.floor(hour), 6, 22).astype(np.int64)
    kind = kind_of[unit]
    fare = line_fare[line] * _CARD_DISCOUNT[kind]
    dist = rng.gamma(2.0, line_km[line] / 2.0)
    w = np.where(((np.arange(_TRIP_DAYS) + dt.date(_YEAR, 3, 1).weekday()) % 7) >= 5, 0.7, 1.0)
    day = rng.choice(_TRIP_DAYS, size=n, p=w / w.sum())
    return pl.DataFrame(
        [
            _ids("C", offset + unit, "card_id"),
            _date_col(day, "trip_date", dt.date(_YEAR, 3, 1)),
            _cat(line, BUS_LINES, "line"),
            pl.Series("boarding_hour", hour),
            _cat(kind, CARD_TYPES, "card_type"),
            pl.Series("fare_yuan", np.clip(np.round(fare, 2), 0.0, 5.0)),
            pl.Series("distance_km", np.clip(np.round(dist, 2), 0.3, 45.0)),
        ]
    )


# --- scenic-visits ----------------------------------------------------------------------

SITES = (
    "mogao-caves", "crescent-spring", "jiayuguan-pass", "zhangye-danxia", "maijishan-grottoes",
    "fuxi-temple", "labrang-monastery", "bingling-temple", "kongtong-mountain", "zhongshan-bridge",
)  # fmt: skip
_SITE_P = np.array([0.14, 0.16, 0.10, 0.13, 0.09, 0.06, 0.07, 0.04, 0.06, 0.15])
_SITE_TICKET = np.array([238, 110, 110, 75, 90, 40, 40, 50, 85, 0], dtype=float)
_MONTH_W = np.array([0.3, 0.45, 0.5, 0.8, 1.1, 1.2, 1.8, 2.0, 1.2, 1.5, 0.5, 0.3])
ORIGINS = ("gansu", "other-province", "hk-macao-taiwan", "overseas")
_ORIGIN_P = np.array([0.38, 0.55, 0.02, 0.05])
_ORIGIN_SPEND = np.array([0.7, 1.4, 1.8, 2.0])
TICKETS = ("full", "half", "free")
_TICKET_P = np.array([0.72, 0.18, 0.10])
_TICKET_MULT = np.array([1.0, 0.5, 0.0])
MAX_SITE_VISITS = 6


def _scenic(rng: np.random.Generator, n: int, offset: int) -> pl.DataFrame:
    def counts(k: int) -> tuple[np.ndarray, np.ndarray]:
        origin = rng.choice(len(ORIGINS), size=k, p=_ORIGIN_P)
        extra = rng.poisson(np.where(origin == 0, 0.6, 0.2))  # locals come back more often
        return np.clip(1 + extra, 1, MAX_SITE_VISITS), origin

    unit, _, origin_of = _units(n, counts)
    site = rng.choice(len(SITES), size=n, p=_SITE_P)
    month = rng.choice(12, size=n, p=_MONTH_W / _MONTH_W.sum()) + 1
    ticket = rng.choice(len(TICKETS), size=n, p=_TICKET_P)
    origin = origin_of[unit]
    spend = _SITE_TICKET[site] * _TICKET_MULT[ticket] + 150.0 * _ORIGIN_SPEND[origin] * rng.lognormal(
        0.0, 0.9, n
    )
    return pl.DataFrame(
        [
            _ids("V", offset + unit, "visitor_id"),
            _cat(site, SITES, "site"),
            pl.Series("visit_month", month.astype(np.int64)),
            _cat(origin, ORIGINS, "origin"),
            _cat(ticket, TICKETS, "ticket_type"),
            pl.Series("spend_yuan", np.clip(np.round(spend, 2), 0.0, 20_000.0)),
        ]
    )


# --- farm-yields ------------------------------------------------------------------------

# county -> zone: 0 Hexi oasis (irrigated), 1 Loess plateau (rain-fed), 2 Longnan hills, 3 highland
_COUNTY_ZONE = {
    "suzhou": 0, "yumen": 0, "dunhuang": 0, "guazhou": 0, "jinta": 0,
    "ganzhou": 0, "minle": 0, "linze": 0, "gaotai": 0, "shandan": 0,
    "liangzhou": 0, "minqin": 0, "gulang": 1, "yongchang": 0,
    "yuzhong": 1, "gaolan": 1, "anding": 1, "longxi": 1, "tongwei": 1, "weiyuan": 1,
    "huining": 1, "jingning": 1, "zhuanglang": 1, "xifeng": 1, "zhenyuan": 1,
    "qinan": 1, "gangu": 1, "dongxiang": 1,
    "wudu": 2, "chengxian": 2, "huixian": 2,
    "hezuo": 3, "xiahe": 3, "maqu": 3, "luqu": 3,
}  # fmt: skip
COUNTIES: tuple[str, ...] = tuple(_COUNTY_ZONE)
_ZONE = np.array(list(_COUNTY_ZONE.values()))
CROPS = ("wheat", "maize", "potato", "highland-barley", "rapeseed", "apple", "cotton")
_CROP_P = np.array(
    [
        [0.25, 0.38, 0.12, 0.00, 0.07, 0.05, 0.13],
        [0.25, 0.25, 0.35, 0.00, 0.03, 0.12, 0.00],
        [0.32, 0.33, 0.30, 0.00, 0.05, 0.00, 0.00],
        [0.05, 0.00, 0.20, 0.50, 0.25, 0.00, 0.00],
    ]
)
# median kg per mu: (irrigated, rain-fed); potato and apple fresh weight, cotton lint
_YIELD = np.array(
    [[450, 220], [750, 450], [2600, 1500], [260, 210], [230, 160], [2800, 2000], [130, 90]], dtype=float
)
_IRRIGATED_P = np.array([0.95, 0.2, 0.3, 0.05])
FARM_YEARS = tuple(range(2016, 2026))
MAX_FARM_ROWS = 3 * len(FARM_YEARS)


def _farm(rng: np.random.Generator, n: int, offset: int) -> pl.DataFrame:
    years = len(FARM_YEARS)

    def counts(k: int) -> tuple[np.ndarray, np.ndarray]:
        ncrops = rng.choice([1, 2, 3], size=k, p=[0.5, 0.35, 0.15])
        county = rng.integers(0, len(COUNTIES), size=k)
        return ncrops * years, county

    unit, rank, county_of = _units(n, counts)
    units = int(unit[-1]) + 1 if n else 0
    zone_of = _ZONE[county_of]
    # each farm grows up to three distinct crops, chosen by its zone's mix
    crop_choice = np.empty((units, 3), dtype=np.int64)
    for z in range(4):
        idx = np.flatnonzero(zone_of == z)
        keys = rng.random((idx.size, len(CROPS))) ** (1.0 / np.maximum(_CROP_P[z], 1e-12))
        keys[:, _CROP_P[z] == 0] = -1.0
        crop_choice[idx] = np.argsort(-keys, axis=1)[:, :3]
    irrigated_of = rng.random(units) < _IRRIGATED_P[zone_of]
    farm_effect = rng.lognormal(0.0, 0.15, units)
    area_of = (
        rng.lognormal(np.log(12.0), 1.0, (units, 3)) * np.where(rng.random(units) < 0.03, 30.0, 1.0)[:, None]
    )
    crop_slot, year_i = np.divmod(rank, years)
    crop = crop_choice[unit, crop_slot]
    zone = zone_of[unit]
    irrigated = irrigated_of[unit]
    shock_rng = np.random.default_rng(11)  # weather shocks are the same in every dataset
    shock = shock_rng.lognormal(0.0, np.array([0.06, 0.18, 0.12, 0.1])[:, None], (4, years))
    shock[1, [0, 5]] *= 0.7  # drought years 2016 and 2021 on the rain-fed plateau
    y = (
        _YIELD[crop, np.where(irrigated, 0, 1)]
        * shock[zone, year_i]
        * farm_effect[unit]
        * rng.lognormal(0.0, 0.12, n)
    )
    area = area_of[unit, crop_slot]
    return pl.DataFrame(
        [
            _ids("F", offset + unit, "farm_id"),
            pl.Series("year", np.asarray(FARM_YEARS, dtype=np.int64)[year_i]),
            _cat(county_of[unit], COUNTIES, "county"),
            _cat(crop, CROPS, "crop"),
            _cat(np.where(irrigated, 0, 1), ("irrigated", "rainfed"), "irrigation"),
            pl.Series("area_mu", np.clip(np.round(area, 1), 0.1, 5000.0)),
            pl.Series("yield_kg_per_mu", np.clip(np.round(y, 1), 0.0, 8000.0)),
        ]
    )


# --- registrations ----------------------------------------------------------------------


_GENERATORS: dict[str, tuple[Callable[[np.random.Generator, int, int], pl.DataFrame], int]] = {
    # chunk sizes: weather's is a multiple of 365 so that no station spans two chunks
    "weather-daily": (_weather, 365 * 2740),
    "outpatient-visits": (_outpatient, CHUNK_ROWS),
    "bus-trips": (_bus, CHUNK_ROWS),
    "scenic-visits": (_scenic, CHUNK_ROWS),
    "farm-yields": (_farm, CHUNK_ROWS),
}

DEMO_DATASETS: tuple[str, ...] = tuple(_GENERATORS)


def _known(dataset_id: str) -> None:
    if dataset_id not in _GENERATORS:
        raise YumenError(
            Code.NOT_FOUND,
            f"no demo dataset {dataset_id!r}",
            hint=f"demo datasets: {', '.join(DEMO_DATASETS)}",
        )


def demo_registration(dataset_id: str) -> dict[str, Any]:
    """The registration of a demo dataset, as a dict for ``DatasetRegistration.from_dict``."""
    from yumen.connectors._demoregistry import REGISTRATIONS

    _known(dataset_id)
    reg = REGISTRATIONS[dataset_id]
    return {**reg, "columns": [dict(c) for c in reg["columns"]], "privacy_unit": dict(reg["privacy_unit"])}


def demo_registrations() -> list[dict[str, Any]]:
    return [demo_registration(d) for d in DEMO_DATASETS]


def _check_args(dataset_id: str, rows: int, seed: int) -> None:
    _known(dataset_id)
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        raise YumenError(Code.INVALID_ARGUMENT, f"rows must be a non-negative integer, got {rows!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise YumenError(Code.INVALID_ARGUMENT, f"seed must be a non-negative integer, got {seed!r}")


def demo_batches(dataset_id: str, rows: int, seed: int) -> Iterator[pl.DataFrame]:
    """The rows of a demo dataset, chunk by chunk (at most ~1M rows in memory)."""
    _check_args(dataset_id, rows, seed)
    make, chunk = _GENERATORS[dataset_id]
    tag = int.from_bytes(hashlib.sha256(dataset_id.encode()).digest()[:4], "little")
    for i, start in enumerate(range(0, rows, chunk)):
        n = min(chunk, rows - start)
        rng = np.random.default_rng(np.random.SeedSequence([seed, tag, i]))
        yield make(rng, n, start)


def demo_frame(dataset_id: str, rows: int, seed: int) -> pl.DataFrame:
    """A whole demo dataset in memory (for tests and small demos)."""
    frames = list(demo_batches(dataset_id, rows, seed))
    if not frames:
        return _empty(dataset_id)
    return pl.concat(frames, rechunk=True)


def _empty(dataset_id: str) -> pl.DataFrame:
    make, _ = _GENERATORS[dataset_id]
    return make(np.random.default_rng(0), 0, 0)


def generate(dataset_id: str, rows: int, seed: int, out_path: Path | str, format: str = "parquet") -> Path:
    """Write a demo dataset to ``out_path`` as Parquet or CSV, streaming chunk by chunk.

    The file is written under a temporary name and renamed into place when complete.
    """
    import pyarrow.parquet as pq

    _check_args(dataset_id, rows, seed)
    if format not in ("parquet", "csv"):
        raise YumenError(Code.INVALID_ARGUMENT, f"format {format!r} is not 'parquet' or 'csv'")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        if format == "parquet":
            schema = _empty(dataset_id).to_arrow().schema
            with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
                for batch in demo_batches(dataset_id, rows, seed):
                    writer.write_table(batch.to_arrow().cast(schema), row_group_size=CHUNK_ROWS)
                if rows == 0:
                    writer.write_table(_empty(dataset_id).to_arrow())
        else:
            with open(tmp, "wb") as f:
                first = True
                for batch in demo_batches(dataset_id, rows, seed):
                    batch.write_csv(f, include_header=first)
                    first = False
                if first:
                    _empty(dataset_id).write_csv(f, include_header=True)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("demo dataset %s: %d rows written to %s", dataset_id, rows, out)
    return out
