"""The DataSource contract, run against every source kind (csv, parquet, sqlite, postgres)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from yumen.connectors._sources import (
    VERSION_CACHE,
    DataSource,
    SourceSpec,
    frame_digest,
    infer_schema,
    open_source,
    validate_against,
)

from yumen.catalog import DatasetRegistration
from yumen.errors import Code, YumenError

if TYPE_CHECKING:
    SourceFactory = Any  # the class lives in conftest.py, which is not importable by name
Frame = Callable[..., pl.DataFrame]

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def _registration(**column_overrides: dict) -> DatasetRegistration:
    columns = {
        "id": {"name": "id", "type": "string"},
        "region": {"name": "region", "type": "category", "categories": ["lanzhou", "wuwei", "gannan"]},
        "count": {"name": "count", "type": "int", "lower": -2, "upper": 8},
        "amount": {"name": "amount", "type": "float", "lower": -200, "upper": 400},
        "note": {"name": "note", "type": "string"},
        "day": {"name": "day", "type": "date"},
    }
    columns.update(column_overrides)
    return DatasetRegistration.from_dict(
        {
            "id": "contract",
            "title": "contract data",
            "department": "test-dept",
            "level": "L2",
            "columns": list(columns.values()),
            "privacy_unit": {"column": "id", "max_contributions": 1},
        }
    )


def test_every_kind_satisfies_the_protocol(source_factory: SourceFactory, make_frame: Frame) -> None:
    source = source_factory.store(make_frame())
    assert isinstance(source, DataSource)
    assert source.spec.kind == source_factory.kind


def test_scan_returns_the_stored_rows_in_order(source_factory: SourceFactory, make_frame: Frame) -> None:
    df = make_frame()
    got = source_factory.store(df).scan().collect()
    assert_frame_equal(got, df, check_dtypes=False)
    assert got.schema["note"] == pl.String
    assert got.schema["day"] == pl.Date
    assert isinstance(got.schema["at"], pl.Datetime)


def test_scan_is_lazy_and_pushes_projection_filter_and_limit(
    source_factory: SourceFactory, make_frame: Frame
) -> None:
    df = make_frame()
    lf = source_factory.store(df).scan()
    assert isinstance(lf, pl.LazyFrame)
    query = lambda f: f.filter(pl.col("count") > 2).select("id", "amount").head(5)  # noqa: E731
    assert_frame_equal(query(lf).collect(), query(df.lazy()).collect(), check_dtypes=False)
    total = lf.select(pl.col("amount").clip(-100, 100).sum()).collect().item()
    assert total == pytest.approx(df.select(pl.col("amount").clip(-100, 100).sum()).item())
    assert lf.select(pl.len()).collect().item() == df.height


def test_small_batches_give_the_same_rows_and_version(
    source_factory: SourceFactory, make_frame: Frame
) -> None:
    df = make_frame(100)
    source = source_factory.store(df, batch_rows=7)
    assert_frame_equal(source.scan().collect(), df, check_dtypes=False)
    assert source.version() == frame_digest(df)


def test_version_is_the_content_digest_of_the_rows(source_factory: SourceFactory, make_frame: Frame) -> None:
    df = make_frame()
    version = source_factory.store(df).version()
    assert DIGEST.match(version)
    # the digest is over values, so every kind holding these rows reports the same one
    assert version == frame_digest(df)


def test_version_is_stable_across_reopen_and_recompute(
    source_factory: SourceFactory, make_frame: Frame
) -> None:
    source = source_factory.store(make_frame())
    first = source.version()
    VERSION_CACHE.clear()
    assert open_source(source_factory.spec()).version() == first
    assert source.version() == first


def test_version_changes_when_one_row_changes(source_factory: SourceFactory, make_frame: Frame) -> None:
    source = source_factory.store(make_frame())
    before = source.version()
    changed = source_factory.set_amount(21, 9999.5)
    after = source.version()
    assert after != before
    assert after == frame_digest(changed)
    assert source.scan().filter(pl.col("id") == 21).select("amount").collect().item() == 9999.5


def test_version_comes_from_the_cache_while_data_is_unchanged(
    source_factory: SourceFactory, make_frame: Frame, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    if source_factory.kind == "postgres":
        # the WAL position is cluster-wide: only a cluster nothing else writes to stays quiet
        quiet = request.getfixturevalue("quiet_postgres_dsn")
        monkeypatch.setenv(source_factory.spec().dsn_env, quiet)
        source_factory = type(source_factory)("postgres", source_factory.tmp, quiet)
        request.addfinalizer(source_factory.drop)
    source = source_factory.store(make_frame())
    source.version()
    module = type(source).__module__
    monkeypatch.setattr(f"{module}.digest_batches", lambda *a: pytest.fail("recomputed although unchanged"))
    assert DIGEST.match(source.version())


def test_snapshot_round_trips_under_its_digest(
    source_factory: SourceFactory, make_frame: Frame, tmp_path: Path
) -> None:
    df = make_frame()
    source = source_factory.store(df)
    path = source.snapshot(tmp_path / "snapshots")
    version = source.version()
    assert path.name == version.removeprefix("sha256:") + ".parquet"
    assert_frame_equal(pl.read_parquet(path), df, check_dtypes=False)
    pinned = open_source(SourceSpec(kind="parquet", path=str(path)))
    assert pinned.version() == version
    assert source.snapshot(tmp_path / "snapshots") == path
    assert [p.name for p in (tmp_path / "snapshots").iterdir()] == [path.name]


def test_snapshot_of_an_empty_table_is_readable(
    source_factory: SourceFactory, make_frame: Frame, tmp_path: Path
) -> None:
    df = make_frame().head(0)
    source = source_factory.store(df)
    path = source.snapshot(tmp_path)
    assert pl.read_parquet(path).height == 0
    assert source.scan().collect().height == 0
    assert DIGEST.match(source.version())


def test_check_passes_for_a_good_source(source_factory: SourceFactory, make_frame: Frame) -> None:
    source_factory.store(make_frame()).check()


def test_check_says_the_file_or_table_is_missing(
    source_factory: SourceFactory, make_frame: Frame, tmp_path: Path
) -> None:
    source_factory.store(make_frame())
    if source_factory.kind == "postgres":
        spec = SourceSpec(kind="postgres", dsn_env=source_factory.spec().dsn_env, table="no_such_table")
        expected = "no table or view 'no_such_table'"
    elif source_factory.kind == "sqlite":
        spec = SourceSpec(kind="sqlite", path=str(source_factory.path), table="no_such_table")
        expected = "no table or view 'no_such_table'"
    else:
        spec = SourceSpec(kind=source_factory.kind, path=str(tmp_path / "gone" / "missing.dat"))
        expected = "does not exist"
    with pytest.raises(YumenError) as err:
        open_source(spec).check()
    assert err.value.code is Code.CONFIG
    assert expected in err.value.message
    if source_factory.kind == "sqlite":
        missing = SourceSpec(kind="sqlite", path=str(tmp_path / "missing.db"), table="t")
        with pytest.raises(YumenError, match="database file does not exist"):
            open_source(missing).check()
        assert not (tmp_path / "missing.db").exists()  # read-only open never creates it


def test_infer_schema_gives_the_real_columns(source_factory: SourceFactory, make_frame: Frame) -> None:
    df = make_frame()
    schema = dict(infer_schema(source_factory.store(df)))
    assert list(schema) == df.columns
    assert schema["id"].is_integer() and schema["count"].is_integer()
    assert schema["amount"].is_float()
    assert schema["note"] == pl.String and schema["region"] == pl.String
    assert schema["day"] == pl.Date
    assert schema["flag"] == pl.Boolean


def test_validate_against_accepts_a_matching_registration(
    source_factory: SourceFactory, make_frame: Frame
) -> None:
    validate_against(_registration(), source_factory.store(make_frame()), check_values=True)


def test_validate_against_names_the_column_with_the_wrong_type(
    source_factory: SourceFactory, make_frame: Frame
) -> None:
    source = source_factory.store(make_frame())
    bad = _registration(note={"name": "note", "type": "int", "lower": 0, "upper": 1})
    with pytest.raises(YumenError) as err:
        validate_against(bad, source)
    assert err.value.code is Code.CONFIG
    assert (
        "'note'" in err.value.message
        and "declared int" in err.value.message
        and "String" in err.value.message
    )


def test_validate_against_names_a_missing_column(source_factory: SourceFactory, make_frame: Frame) -> None:
    source = source_factory.store(make_frame())
    bad = _registration(extra={"name": "population", "type": "int", "lower": 0, "upper": 10})
    with pytest.raises(YumenError, match="column 'population' is declared but"):
        validate_against(bad, source)


def test_validate_values_names_out_of_bounds_and_unknown_categories(
    source_factory: SourceFactory, make_frame: Frame
) -> None:
    source = source_factory.store(make_frame())
    narrow = _registration(amount={"name": "amount", "type": "float", "lower": 0, "upper": 10})
    with pytest.raises(YumenError, match=r"value\(s\) of column 'amount' lie outside"):
        validate_against(narrow, source, check_values=True)
    fewer = _registration(region={"name": "region", "type": "category", "categories": ["lanzhou"]})
    with pytest.raises(YumenError, match=r"value\(s\) of column 'region' are not among"):
        validate_against(fewer, source, check_values=True)
