"""partition_blocks: disjoint, complete, one block per unit, keyed by a per-job secret."""

from __future__ import annotations

import polars as pl
import pytest

from yumen.errors import YumenError
from yumen.privacy import partition_blocks

SEED = b"0123456789abcdef-job-secret"


def frame(units: int = 300, rows_each: int = 3) -> pl.LazyFrame:
    pid = [f"p{u}" for u in range(units) for _ in range(rows_each)]
    return pl.LazyFrame({"pid": pid, "cat": "a", "v": [float(i) for i in range(len(pid))], "n": 1, "t": 0.0})


def test_blocks_are_disjoint_complete_and_keep_each_unit_together(registration):
    blocks = partition_blocks(frame(), registration, 7, SEED)
    assert len(blocks) == 7
    assert sum(b.height for b in blocks) == 900
    seen: dict[str, int] = {}
    for i, b in enumerate(blocks):
        for pid in b.get_column("pid").to_list():
            assert seen.setdefault(pid, i) == i  # never in two blocks
    assert len(seen) == 300
    assert all(set(b.columns) == {"pid", "cat", "v", "n", "t"} for b in blocks)


def test_blocks_are_balanced_roughly(registration):
    sizes = [b.height for b in partition_blocks(frame(units=3000, rows_each=1), registration, 10, SEED)]
    assert all(200 <= s <= 400 for s in sizes)  # mean 300, sd about 16


def test_the_same_secret_gives_the_same_blocks_and_another_secret_does_not(registration):
    a = partition_blocks(frame(), registration, 5, SEED)
    b = partition_blocks(frame(), registration, 5, SEED)
    c = partition_blocks(frame(), registration, 5, b"another-secret-of-16+bytes")
    assert all(x.equals(y) for x, y in zip(a, b))
    assert not all(x.equals(y) for x, y in zip(a, c))


def test_adding_a_unit_moves_no_other_unit(registration):
    before = partition_blocks(frame(), registration, 5, SEED)
    extra = pl.LazyFrame({"pid": ["newcomer"] * 2, "cat": "a", "v": [0.0, 0.0], "n": 1, "t": 0.0})
    after = partition_blocks(pl.concat([extra, frame()]), registration, 5, SEED)
    for x, y in zip(before, after):
        assert y.filter(pl.col("pid") != "newcomer").equals(x)


def test_without_a_unit_column_rows_are_placed_by_content_not_position(make_reg):
    reg = make_reg(unit=False)
    rows = pl.LazyFrame({"cat": "a", "v": [float(i) for i in range(500)], "n": 1, "t": 0.0})
    shifted = pl.concat([pl.LazyFrame({"cat": "a", "v": [-1.0], "n": 1, "t": 0.0}), rows])
    before = partition_blocks(rows, reg, 4, SEED)
    after = partition_blocks(shifted, reg, 4, SEED)
    for x, y in zip(before, after):
        assert y.filter(pl.col("v") != -1.0).equals(x)


@pytest.mark.parametrize("k, seed", [(0, SEED), (10_001, SEED), (3, b"short")])
def test_bad_block_counts_and_short_secrets_are_refused(registration, k, seed):
    with pytest.raises(YumenError):
        partition_blocks(frame(), registration, k, seed)
