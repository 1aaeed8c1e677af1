"""CSV and Parquet specifics beyond the contract: parse errors, options, damaged files, races."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest
import yumen.connectors._source_files as files
from yumen.connectors._sources import (
    VERSION_CACHE,
    SourceSpec,
    frame_digest,
    open_source,
)
from yumen.errors import Code, YumenError


def _csv(path: Path, text: str, **options: object):
    path.write_text(text)
    return open_source(SourceSpec(kind="csv", path=str(path), **options))  # type: ignore[arg-type]


def test_a_bad_value_below_the_inferred_rows_names_the_column_not_the_value(tmp_path: Path) -> None:
    rows = "".join(f"{i},{i * 2}\n" for i in range(50)) + "50,secret-value\n"
    source = _csv(tmp_path / "a.csv", "id,visits\n" + rows, infer_rows=10)
    source.check()  # the schema of the first rows is fine
    with pytest.raises(YumenError) as err:
        source.version()
    assert err.value.code is Code.CONFIG
    assert "column 'visits'" in err.value.message
    assert "secret-value" not in str(err.value)
    assert "infer_rows" in err.value.hint


def test_null_values_and_separator_options_are_honoured(tmp_path: Path) -> None:
    source = _csv(tmp_path / "a.csv", "id;visits\n1;3\n2;NA\n3;5\n", separator=";", null_values=("NA",))
    got = source.scan().collect()
    assert got.get_column("visits").to_list() == [3, None, 5]
    assert got.schema["visits"].is_integer()


def test_a_headerless_csv_gets_positional_names(tmp_path: Path) -> None:
    source = _csv(tmp_path / "a.csv", "1,x\n2,y\n", has_header=False)
    assert source.scan().collect().columns == ["column_1", "column_2"]


def test_a_truncated_parquet_file_is_reported_as_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    pl.DataFrame({"x": list(range(1000))}).write_parquet(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(YumenError, match="could not be read as parquet"):
        open_source(SourceSpec(kind="parquet", path=str(path))).check()


def test_an_empty_file_and_a_directory_are_named(tmp_path: Path) -> None:
    with pytest.raises(YumenError, match="is empty"):
        _csv(tmp_path / "empty.csv", "").check()
    with pytest.raises(YumenError, match="not a regular file"):
        open_source(SourceSpec(kind="parquet", path=str(tmp_path))).check()


def test_an_unreadable_file_is_reported_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _csv(tmp_path / "a.csv", "x\n1\n")
    (tmp_path / "a.csv").chmod(0)
    if os.geteuid() == 0:  # root may read anything; ask the kernel's answer for other users
        monkeypatch.setattr(files.os, "access", lambda path, mode: False)
    with pytest.raises(YumenError, match="not readable by this process"):
        source.check()


def test_a_file_rewritten_while_hashed_is_hashed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "a.parquet"
    first = pl.DataFrame({"x": [1, 2, 3]})
    second = pl.DataFrame({"x": [1, 2, 4]})
    first.write_parquet(path)
    source = open_source(SourceSpec(kind="parquet", path=str(path)))
    real = files.digest_batches
    calls = []

    def racing(schema, batches):  # the writer replaces the file during the first read
        calls.append(1)
        digest = real(schema, batches)
        if len(calls) == 1:
            tmp = tmp_path / "new.parquet"
            second.write_parquet(tmp)
            os.replace(tmp, path)
        return digest

    monkeypatch.setattr(files, "digest_batches", racing)
    VERSION_CACHE.clear()
    assert source.version() == frame_digest(second)
    assert len(calls) == 2


def test_the_same_rows_in_csv_and_parquet_have_one_version(tmp_path: Path) -> None:
    df = pl.DataFrame({"id": [1, 2], "city": ["lanzhou", "wuwei"], "t": [1.5, -3.25]})
    df.write_csv(tmp_path / "a.csv")
    df.write_parquet(tmp_path / "a.parquet", compression="snappy")
    df.write_parquet(tmp_path / "b.parquet", compression="zstd", row_group_size=1)
    versions = {
        open_source(SourceSpec(kind=k, path=str(tmp_path / n))).version()
        for k, n in (("csv", "a.csv"), ("parquet", "a.parquet"), ("parquet", "b.parquet"))
    }
    assert versions == {frame_digest(df)}


def test_stream_batches_keeps_order_and_releases_its_worker_when_abandoned() -> None:
    import threading

    lf = pl.LazyFrame({"i": range(200_000)})
    got = pl.concat(list(files.stream_batches(lf, 10_000)))
    assert got.get_column("i").to_list() == list(range(200_000))
    before = threading.active_count()
    stream = files.stream_batches(lf, 1_000)
    assert next(stream).height > 0
    stream.close()
    assert threading.active_count() <= before
