"""Demo datasets: each respects its registration, is deterministic by seed, and looks real."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import yumen.connectors._demodata as demodata
from yumen.connectors._demodata import (
    DEMO_DATASETS,
    REGIONS,
    demo_frame,
    demo_registration,
    demo_registrations,
    generate,
)
from yumen.connectors._sources import SourceSpec, frame_digest, open_source, validate_against

from yumen.catalog import DatasetRegistration, Level
from yumen.errors import Code, YumenError

ROWS = 30_000

DEPARTMENTS = {
    "weather-daily": "weather-bureau",
    "outpatient-visits": "health-commission",
    "bus-trips": "transport-dept",
    "scenic-visits": "culture-tourism",
    "farm-yields": "agriculture-dept",
}


@pytest.fixture(scope="module")
def frames() -> dict[str, pl.DataFrame]:
    return {d: demo_frame(d, ROWS, seed=7) for d in DEMO_DATASETS}


def test_five_priority_fields_with_their_departments_and_a_mix_of_levels() -> None:
    regs = [DatasetRegistration.from_dict(r) for r in demo_registrations()]
    assert {r.id: r.department for r in regs} == DEPARTMENTS
    assert {r.level for r in regs} == {Level.L1, Level.L2, Level.L3}
    for r in regs:
        assert r.privacy_unit.column and r.privacy_unit.max_contributions >= 1
        assert r.update_frequency and r.source_system and r.price_class
        assert all(c.unit for c in r.columns if c.numeric)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
@pytest.mark.parametrize("dataset", DEMO_DATASETS)
def test_generated_file_passes_validation_against_its_registration(
    dataset: str, fmt: str, tmp_path: Path
) -> None:
    path = generate(dataset, 5_000, seed=1, out_path=tmp_path / f"d.{fmt}", format=fmt)
    source = open_source(SourceSpec(kind=fmt, path=str(path)))
    source.check()
    validate_against(DatasetRegistration.from_dict(demo_registration(dataset)), source, check_values=True)
    assert source.scan().select(pl.len()).collect().item() == 5_000


@pytest.mark.parametrize("dataset", DEMO_DATASETS)
def test_values_lie_within_bounds_and_declared_categories(
    dataset: str, frames: dict[str, pl.DataFrame]
) -> None:
    df = frames[dataset]
    reg = DatasetRegistration.from_dict(demo_registration(dataset))
    assert df.columns == [c.name for c in reg.columns]
    for col in reg.columns:
        s = df.get_column(col.name)
        assert s.null_count() == 0, col.name
        if col.numeric:
            assert col.lower <= s.min() and s.max() <= col.upper, col.name
            assert s.n_unique() > 1, f"{col.name} is constant"
        if col.categories:
            assert set(s.unique()) <= set(col.categories), col.name


@pytest.mark.parametrize("dataset", DEMO_DATASETS)
def test_no_privacy_unit_exceeds_its_declared_contributions(
    dataset: str, frames: dict[str, pl.DataFrame]
) -> None:
    pu = DatasetRegistration.from_dict(demo_registration(dataset)).privacy_unit
    per_unit = frames[dataset].group_by(pu.column).len()
    assert per_unit.get_column("len").max() <= pu.max_contributions
    assert per_unit.height > 1


@pytest.mark.parametrize("dataset", DEMO_DATASETS)
def test_same_seed_same_rows_other_seed_other_rows(dataset: str, frames: dict[str, pl.DataFrame]) -> None:
    again = demo_frame(dataset, ROWS, seed=7)
    assert frame_digest(again) == frame_digest(frames[dataset])
    assert frame_digest(demo_frame(dataset, ROWS, seed=8)) != frame_digest(frames[dataset])


def test_chunks_keep_units_apart_and_prefixes_stable(monkeypatch: pytest.MonkeyPatch) -> None:
    # small chunks so that the test crosses many chunk boundaries quickly
    chunk = {d: 365 * 4 if d == "weather-daily" else 997 for d in DEMO_DATASETS}
    for dataset, (make, _) in list(demodata._GENERATORS.items()):
        monkeypatch.setitem(demodata._GENERATORS, dataset, (make, chunk[dataset]))
    for dataset in DEMO_DATASETS:
        pu = DatasetRegistration.from_dict(demo_registration(dataset)).privacy_unit
        df = demo_frame(dataset, 10_000, seed=3)
        assert df.height == 10_000
        assert df.group_by(pu.column).len().get_column("len").max() <= pu.max_contributions
        whole_chunks = (5_000 // chunk[dataset]) * chunk[dataset]
        assert demo_frame(dataset, 5_000, seed=3).head(whole_chunks).equals(df.head(whole_chunks))


def test_weather_is_seasonal_and_regional(frames: dict[str, pl.DataFrame]) -> None:
    df = demo_frame("weather-daily", 365 * 300, seed=2)
    by_month = df.group_by(pl.col("date").dt.month().alias("m")).agg(pl.col("temp_mean_c").mean()).sort("m")
    temps = dict(by_month.iter_rows())
    assert temps[7] - temps[1] > 15  # July is far warmer than January
    rain = df.group_by("region").agg(pl.col("precip_mm").sum() / pl.col("station_id").n_unique())
    rain = dict(rain.iter_rows())
    assert rain["longnan"] > 3 * rain["jiuquan"]  # the south-east is wet, the Hexi corridor dry
    assert set(df.get_column("region").unique()) <= set(REGIONS)


def test_outpatient_costs_and_visit_rates_look_clinical(frames: dict[str, pl.DataFrame]) -> None:
    df = frames["outpatient-visits"]
    med = dict(df.group_by("department").agg(pl.col("cost_yuan").median()).iter_rows())
    assert med["emergency"] > 2 * med["dermatology"]
    assert df.filter(pl.col("department") == "pediatrics").get_column("age_band").is_in(["0-4", "5-14"]).all()
    visits = df.group_by("patient_id", "age_band").len().group_by("age_band").agg(pl.col("len").mean())
    visits = dict(visits.iter_rows())
    assert visits["75+"] > visits["15-24"]
    assert df.get_column("cost_yuan").skew() > 1  # lognormal: a long right tail


def test_bus_boardings_peak_at_commuting_hours(frames: dict[str, pl.DataFrame]) -> None:
    hours = dict(frames["bus-trips"].group_by("boarding_hour").len().iter_rows())
    assert hours[7] > 2 * hours[11] and hours[17] > 1.5 * hours[11]
    seniors = frames["bus-trips"].filter(pl.col("card_type") == "senior")
    assert seniors.get_column("fare_yuan").max() == 0.0


def test_scenic_visits_peak_in_summer_and_farm_yields_depend_on_water(
    frames: dict[str, pl.DataFrame],
) -> None:
    months = dict(frames["scenic-visits"].group_by("visit_month").len().iter_rows())
    assert months[8] > 3 * months[1]
    wheat = frames["farm-yields"].filter(pl.col("crop") == "wheat")
    by_water = dict(wheat.group_by("irrigation").agg(pl.col("yield_kg_per_mu").median()).iter_rows())
    assert by_water["irrigated"] > 1.5 * by_water["rainfed"]


def test_generate_refuses_unknown_datasets_formats_and_sizes(tmp_path: Path) -> None:
    with pytest.raises(YumenError) as err:
        generate("tax-returns", 10, 1, tmp_path / "x.parquet")
    assert err.value.code is Code.NOT_FOUND and "weather-daily" in err.value.hint
    with pytest.raises(YumenError, match="format"):
        generate("bus-trips", 10, 1, tmp_path / "x.xlsx", format="xlsx")
    with pytest.raises(YumenError, match="rows"):
        generate("bus-trips", -1, 1, tmp_path / "x.parquet")
    assert not list(tmp_path.iterdir())


def test_zero_rows_write_a_valid_empty_file(tmp_path: Path) -> None:
    path = generate("farm-yields", 0, 1, tmp_path / "empty.parquet")
    df = pl.read_parquet(path)
    assert df.height == 0 and df.columns == [c["name"] for c in demo_registration("farm-yields")["columns"]]


def test_registration_copies_are_independent() -> None:
    reg = demo_registration("bus-trips")
    reg["columns"][0]["name"] = "changed"
    assert demo_registration("bus-trips")["columns"][0]["name"] == "card_id"
