"""SourceSpec: parsing the [[datasets]] source keys and refusing unsafe or unclear settings."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yumen.connectors._source_digest import TableHasher
from yumen.connectors._sources import SourceSpec, frame_digest, open_source

from yumen.errors import Code, YumenError


def _config_error(**kwargs: object) -> YumenError:
    with pytest.raises(YumenError) as err:
        SourceSpec(**kwargs)  # type: ignore[arg-type]
    assert err.value.code is Code.CONFIG
    return err.value


def test_from_dict_resolves_a_relative_path_against_the_config_dir(tmp_path: Path) -> None:
    spec = SourceSpec.from_dict({"kind": "csv", "path": "data/w.csv", "separator": ";"}, base_dir=tmp_path)
    assert spec.path == str(tmp_path / "data" / "w.csv")
    assert spec.separator == ";"
    absolute = SourceSpec.from_dict({"kind": "parquet", "path": "/srv/w.parquet"}, base_dir=tmp_path)
    assert absolute.path == "/srv/w.parquet"


def test_from_dict_names_unknown_and_mistyped_keys() -> None:
    with pytest.raises(YumenError, match="source has no key .sep."):
        SourceSpec.from_dict({"kind": "csv", "path": "a.csv", "sep": ";"})
    with pytest.raises(YumenError, match="'has_header' must be true or false"):
        SourceSpec.from_dict({"kind": "csv", "path": "a.csv", "has_header": "yes"})
    with pytest.raises(YumenError, match="'order_by' must be a list"):
        SourceSpec.from_dict({"kind": "sqlite", "path": "a.db", "table": "t", "order_by": "id"})
    with pytest.raises(YumenError, match="has no 'kind'"):
        SourceSpec.from_dict({"path": "a.csv"})


def test_from_dict_reads_lists_and_integers() -> None:
    spec = SourceSpec.from_dict(
        {"kind": "sqlite", "path": "/d/a.db", "table": "visits", "order_by": ["id"], "batch_rows": 1000}
    )
    assert spec.order_by == ("id",) and spec.batch_rows == 1000


def test_unknown_kind_is_refused_with_the_known_ones() -> None:
    err = _config_error(kind="excel", path="a.xlsx")
    assert "csv, parquet, sqlite, postgres" in err.hint


def test_each_kind_requires_its_location() -> None:
    assert "needs 'path'" in _config_error(kind="csv").message
    assert "needs 'table'" in _config_error(kind="sqlite", path="a.db").message
    assert "exactly one of 'dsn' and 'dsn_env'" in _config_error(kind="postgres", table="t").message
    assert "takes no 'path'" in _config_error(kind="postgres", table="t", dsn_env="X", path="a").message
    assert "takes no 'table'" in _config_error(kind="csv", path="a.csv", table="t").message


@pytest.mark.parametrize("table", ["t; DROP TABLE x", 'a"b', "1abc", "a.b.c", ""])
def test_table_names_must_be_plain_identifiers(table: str) -> None:
    _config_error(kind="postgres", table=table, dsn_env="X")


def test_postgres_accepts_schema_qualified_tables_sqlite_does_not() -> None:
    assert SourceSpec(kind="postgres", table="health.visits", dsn_env="X").table == "health.visits"
    _config_error(kind="sqlite", path="a.db", table="main.visits")


def test_a_literal_dsn_must_not_hold_a_password() -> None:
    err = _config_error(kind="postgres", table="t", dsn="host=db user=reader password=hunter2 dbname=h")
    assert "contains a password" in err.message
    assert "hunter2" not in err.message + err.hint
    _config_error(kind="postgres", table="t", dsn="postgresql://reader:hunter2@db/h")
    ok = SourceSpec(kind="postgres", table="t", dsn="host=db user=reader dbname=h")
    assert ok.describe() == "postgres table 't' at db:5432/h"


def test_describe_never_shows_the_dsn_variable_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTH_DSN", "postgresql://reader:secret@db/h")
    spec = SourceSpec(kind="postgres", table="t", dsn_env="HEALTH_DSN")
    assert "secret" not in spec.describe() and "$HEALTH_DSN" in spec.describe()
    assert "secret" not in repr(spec)


def test_a_missing_dsn_variable_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("YUMEN_NO_SUCH_DSN", raising=False)
    with pytest.raises(YumenError, match="environment variable YUMEN_NO_SUCH_DSN is not set"):
        open_source(SourceSpec(kind="postgres", table="t", dsn_env="YUMEN_NO_SUCH_DSN")).check()


def test_options_are_range_checked() -> None:
    _config_error(kind="csv", path="a.csv", separator=";;")
    _config_error(kind="csv", path="a.csv", infer_rows=0)
    _config_error(kind="sqlite", path="a.db", table="t", batch_rows=0)
    _config_error(kind="csv", path="a.csv", order_by=("id",))
    _config_error(kind="sqlite", path="a.db", table="t", order_by=("id; --",))


def test_spec_is_frozen() -> None:
    spec = SourceSpec(kind="csv", path="a.csv")
    with pytest.raises(AttributeError):
        spec.path = "b.csv"  # type: ignore[misc]


def test_digest_does_not_depend_on_batch_boundaries_or_int_width() -> None:
    df = pl.DataFrame(
        {"n": [1, None, 3, 4, 5], "s": ["a", "", None, "dd", "é"], "x": [0.0, -0.0, 1.5, None, 2.0]}
    )
    hasher = TableHasher(df.schema)
    for i in range(df.height):
        hasher.update(df.slice(i, 1))
    assert hasher.digest() == frame_digest(df)
    assert frame_digest(df.with_columns(pl.col("n").cast(pl.Int32))) == frame_digest(df)


def test_digest_sees_nulls_order_names_and_string_boundaries() -> None:
    base = pl.DataFrame({"s": ["ab", "c"], "n": [1, 2]})
    variants = [
        pl.DataFrame({"s": ["a", "bc"], "n": [1, 2]}),  # same bytes, other boundaries
        pl.DataFrame({"s": ["ab", "c"], "n": [2, 1]}),  # reordered values
        pl.DataFrame({"s": ["ab", "c"], "m": [1, 2]}),  # renamed column
        pl.DataFrame({"s": ["ab", "c"], "n": [1, None]}),  # a null
        pl.DataFrame({"s": ["ab", "c"], "n": [1.0, 2.0]}),  # another type class
        base.head(1),
    ]
    digests = {frame_digest(v) for v in variants}
    assert frame_digest(base) not in digests and len(digests) == len(variants)


def test_digest_refuses_nested_types_naming_the_column() -> None:
    df = pl.DataFrame({"tags": [["a"], ["b"]]})
    with pytest.raises(YumenError, match="column 'tags' has type"):
        frame_digest(df)


@settings(max_examples=60, deadline=None)
@given(
    ints=st.lists(st.one_of(st.none(), st.integers(-(2**62), 2**62)), min_size=1, max_size=40),
    texts=st.lists(st.one_of(st.none(), st.text(max_size=6)), min_size=40, max_size=40),
    cuts=st.lists(st.integers(0, 40), max_size=5),
)
def test_digest_is_the_same_for_any_batching(ints: list[int | None], texts: list[str | None], cuts: list[int]) -> None:
    df = pl.DataFrame(
        {"n": pl.Series(ints, dtype=pl.Int64), "s": texts[: len(ints)], "x": [None if i is None else i / 3 for i in ints]},
        schema_overrides={"s": pl.String, "x": pl.Float64},
    )
    bounds = sorted({0, df.height, *(min(c, df.height) for c in cuts)})
    hasher = TableHasher(df.schema)
    for lo, hi in zip(bounds, bounds[1:]):
        hasher.update(df.slice(lo, hi - lo))
    assert hasher.digest() == frame_digest(df)
    assert hasher.rows == df.height
