"""Mock data: the registered shape, only the registered values, and nothing of the real data."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import polars as pl
import pytest

from yumen.catalog import Column, ColumnType, DatasetRegistration, Level, PrivacyUnit
from yumen.connectors import DEMO_DATASETS, demo_frame, demo_registration, demo_registrations
from yumen.connectors._sources import SourceSpec, open_source, validate_against
from yumen.errors import Code, YumenError
from yumen.mock import MAX_ROWS, MOCK_DATE_RANGE, MOCK_ID_PREFIX, mock_frame, schema_digest, write_mock

_DTYPES = {
    ColumnType.INT: pl.Int64,
    ColumnType.FLOAT: pl.Float64,
    ColumnType.CATEGORY: pl.String,
    ColumnType.STRING: pl.String,
    ColumnType.DATE: pl.Date,
}


def reg(dataset_id: str) -> DatasetRegistration:
    return DatasetRegistration.from_dict(demo_registration(dataset_id))


def small(columns: tuple[Column, ...], unit: PrivacyUnit = PrivacyUnit()) -> DatasetRegistration:
    return DatasetRegistration(
        id="tiny", title="tiny", department="dept", level=Level.L1, columns=columns, privacy_unit=unit
    )


@pytest.mark.parametrize("dataset_id", DEMO_DATASETS)
def test_mock_has_exactly_the_registered_columns_types_bounds_and_categories(dataset_id):
    registration = reg(dataset_id)
    frame = mock_frame(registration, rows=3000, seed=7)
    assert frame.height == 3000
    assert frame.columns == [c.name for c in registration.columns]
    assert frame.null_count().row(0) == (0,) * frame.width
    for col in registration.columns:
        s = frame[col.name]
        assert s.dtype == _DTYPES[col.type], col.name
        if col.numeric:
            assert col.lower <= s.min() and s.max() <= col.upper, col.name
            # uniform over the bounds: both halves of the range are used
            mid = (col.lower + col.upper) / 2
            assert (s < mid).any() and (s > mid).any(), col.name
        elif col.type is ColumnType.CATEGORY:
            assert set(s.unique()) <= set(col.categories), col.name
            if len(col.categories) <= 30:
                assert set(s.unique()) == set(col.categories), col.name
        elif col.type is ColumnType.DATE:
            assert MOCK_DATE_RANGE[0] <= s.min() and s.max() <= MOCK_DATE_RANGE[1]
        else:
            assert s.str.starts_with(MOCK_ID_PREFIX).all(), col.name


def test_connector_validation_accepts_a_written_mock_for_every_demo_registration(tmp_path):
    for d in demo_registrations():
        registration = DatasetRegistration.from_dict(d)
        path = write_mock(registration, tmp_path / f"{registration.id}.parquet", rows=500, seed=1)
        # the same check a department runs on its real source, including the value check
        validate_against(registration, open_source(SourceSpec(kind="parquet", path=str(path))), check_values=True)


@pytest.mark.parametrize("dataset_id", DEMO_DATASETS)
def test_every_privacy_unit_contributes_between_one_and_max_rows(dataset_id):
    registration = reg(dataset_id)
    pu = registration.privacy_unit
    frame = mock_frame(registration, rows=5000, seed=3)
    counts = frame.group_by(pu.column).len()["len"]
    assert counts.min() >= 1 and counts.max() <= pu.max_contributions
    if pu.max_contributions > 1:
        assert counts.max() > 1  # units repeat, so grouping by the unit is meaningful


def test_units_with_a_small_limit_never_exceed_it_and_are_numbered_in_order():
    registration = small(
        (Column(name="person", type=ColumnType.STRING), Column(name="x", type=ColumnType.FLOAT, lower=0, upper=1)),
        PrivacyUnit(column="person", max_contributions=2),
    )
    frame = mock_frame(registration, rows=10_001, seed=0)
    counts = frame.group_by("person").len()
    assert set(counts["len"].unique()) == {1, 2}
    ids = frame["person"].unique(maintain_order=True).to_list()
    assert ids[:3] == ["mock-000000", "mock-000001", "mock-000002"]
    assert len(ids) == counts.height and 10_001 / 2 <= len(ids) <= 10_001


def test_without_a_unit_column_each_string_column_holds_distinct_per_row_ids():
    registration = small((Column(name="note", type=ColumnType.STRING), Column(name="code", type=ColumnType.STRING)))
    frame = mock_frame(registration, rows=200)
    assert frame["note"].n_unique() == 200 and frame["code"].n_unique() == 200
    assert frame["note"][0] == "mock-note-000000"
    assert not set(frame["note"]) & set(frame["code"])


def test_same_inputs_give_the_same_mock_and_other_seeds_or_schemas_differ():
    registration = reg("outpatient-visits")
    a = mock_frame(registration, rows=800, seed=11)
    assert a.equals(mock_frame(registration, rows=800, seed=11))
    assert not a.equals(mock_frame(registration, rows=800, seed=12))
    renamed = dataclasses.replace(registration, id="outpatient-visits-copy")
    assert not a.equals(mock_frame(renamed, rows=800, seed=11))


def test_mock_ignores_the_data_version_and_prose_so_no_content_digest_reaches_it():
    registration = reg("bus-trips")
    edited = dataclasses.replace(
        registration, version="sha256:" + "ab" * 32, title="another title", description="edited", price_class="free"
    )
    assert schema_digest(edited) == schema_digest(registration)
    assert mock_frame(edited, rows=300, seed=5).equals(mock_frame(registration, rows=300, seed=5))


@pytest.mark.parametrize("dataset_id", DEMO_DATASETS)
def test_mock_shares_no_identifier_and_not_the_row_count_with_the_real_data(dataset_id):
    registration = reg(dataset_id)
    real = demo_frame(dataset_id, 4000, 0)
    mock = mock_frame(registration, rows=1234, seed=0)
    assert mock.height == 1234 != real.height
    unit = registration.privacy_unit.column
    assert not set(mock[unit].to_list()) & set(real[unit].to_list())
    # no real row reappears in the mock, whatever the column types
    assert mock.join(real, on=mock.columns, how="semi").height == 0


def test_float_bounds_near_the_float_limit_give_finite_values_within_them():
    registration = small((Column(name="v", type=ColumnType.FLOAT, lower=-1e308, upper=1e308),))
    values = mock_frame(registration, rows=1000)["v"].to_numpy()
    assert np.isfinite(values).all() and (values >= -1e308).all() and (values <= 1e308).all()
    assert (values < 0).any() and (values > 0).any()


def test_int_column_uses_only_integers_inside_fractional_bounds():
    registration = small((Column(name="k", type=ColumnType.INT, lower=0.5, upper=3.5),))
    assert set(mock_frame(registration, rows=500)["k"].unique()) == {1, 2, 3}


def test_int_column_whose_bounds_hold_no_integer_is_refused_with_a_reason():
    registration = small((Column(name="k", type=ColumnType.INT, lower=0.2, upper=0.8),))
    with pytest.raises(YumenError) as e:
        mock_frame(registration)
    assert e.value.code is Code.INVALID_ARGUMENT and "'k'" in e.value.message


@pytest.mark.parametrize("rows", [0, -1, MAX_ROWS + 1, True, 1.5, "10"])
def test_rows_outside_one_to_ten_million_are_refused(rows):
    with pytest.raises(YumenError) as e:
        mock_frame(reg("farm-yields"), rows=rows)
    assert e.value.code is Code.INVALID_ARGUMENT and "rows" in e.value.message and e.value.hint


def test_one_row_is_enough_and_a_negative_seed_or_a_plain_dict_is_refused():
    assert mock_frame(reg("scenic-visits"), rows=1).height == 1
    with pytest.raises(YumenError) as e:
        mock_frame(reg("scenic-visits"), seed=-1)
    assert e.value.code is Code.INVALID_ARGUMENT
    with pytest.raises(YumenError) as e:
        mock_frame(demo_registration("scenic-visits"))  # type: ignore[arg-type]
    assert "DatasetRegistration" in e.value.message


def test_write_mock_round_trips_parquet_and_csv_and_leaves_no_temporary_file(tmp_path):
    registration = reg("weather-daily")
    expected = mock_frame(registration, rows=250, seed=9)
    pq = write_mock(registration, tmp_path / "sub" / "w.parquet", rows=250, seed=9)
    assert pl.read_parquet(pq).equals(expected)
    csv = write_mock(registration, tmp_path / "w.csv", rows=250, seed=9, format="csv")
    back = pl.read_csv(csv, try_parse_dates=True)
    assert back["station_id"].equals(expected["station_id"]) and back["date"].equals(expected["date"])
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["w.csv", "w.parquet"]


def test_write_mock_refuses_an_unknown_format_and_an_unwritable_path(tmp_path):
    with pytest.raises(YumenError) as e:
        write_mock(reg("weather-daily"), tmp_path / "w.json", format="json")
    assert e.value.code is Code.INVALID_ARGUMENT and "json" in e.value.message
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(YumenError) as e:
        write_mock(reg("weather-daily"), blocker / "w.parquet")
    assert e.value.code is Code.INVALID_ARGUMENT and "cannot write" in e.value.message


def test_dates_cover_the_public_range_not_the_real_one():
    # bus-trips' real data is March 2025 only; the mock spreads over the whole public year
    months = mock_frame(reg("bus-trips"), rows=3000)["trip_date"].dt.month()
    assert set(months.unique()) == set(range(1, 13))
    assert MOCK_DATE_RANGE == (dt.date(2025, 1, 1), dt.date(2025, 12, 31))
