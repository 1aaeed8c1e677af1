"""Spark sources and the pushdown switch in a connector's configuration: what is accepted,
and what is refused with a message that says what to do."""

from __future__ import annotations

import pytest

from yumen.connectors._sources import SourceSpec
from yumen.errors import Code, YumenError


def _spec(**d):
    return SourceSpec.from_dict(d)


def test_parquet_table_and_jdbc_spark_sources_parse_with_master_and_settings():
    p = _spec(kind="spark", format="parquet", path="hdfs://nn/warehouse/trips", master="spark://m:7077",
              spark_conf={"spark.executor.memory": "4g", "spark.sql.ansi.enabled": True}, pushdown=True)
    assert p.master == "spark://m:7077" and dict(p.spark_conf) == {"spark.executor.memory": "4g",
                                                                    "spark.sql.ansi.enabled": "true"}
    assert p.pushdown and "spark Parquet hdfs://nn/warehouse/trips on spark://m:7077" == p.describe()
    t = _spec(kind="spark", format="table", table="agri.yields", order_by=["farm_id"])
    assert t.master == "local[*]" and t.order_by == ("farm_id",)
    j = _spec(kind="spark", format="jdbc", table="public.visits", dsn_env="HIS_JDBC_URL")
    assert j.dsn_env == "HIS_JDBC_URL"


@pytest.mark.parametrize("d,needle", [
    (dict(kind="spark", path="x"), "needs 'format'"),
    (dict(kind="spark", format="parquet", table="t"), "takes 'path' only"),
    (dict(kind="spark", format="table", path="x"), "takes 'table' and no 'path'"),
    (dict(kind="spark", format="table", table="a; DROP TABLE b"), "not a plain"),
    (dict(kind="spark", format="jdbc", table="t"), "needs 'dsn_env'"),
    (dict(kind="spark", format="table", table="t", dsn_env="X"), "takes no 'dsn'"),
    (dict(kind="spark", format="table", table="t", master="local[*] --conf x"), "not a master URL"),
    (dict(kind="spark", format="table", table="t", spark_conf={"hadoop.x": "1"}), "not a Spark setting"),
    (dict(kind="spark", format="table", table="t", spark_conf="spark.x=1"), "table of Spark settings"),
    (dict(kind="parquet", path="x", pushdown=True), "cannot push queries down"),
    (dict(kind="postgres", table="t", dsn_env="X", pushdown="yes"), "true or false"),
    (dict(kind="parquet", path="x", master="local[2]"), "takes no 'format'"),
])
def test_a_bad_spark_or_pushdown_source_is_refused_saying_what_to_fix(d, needle):
    with pytest.raises(YumenError) as e:
        _spec(**d)
    assert e.value.code is Code.CONFIG
    assert needle in e.value.message + " " + e.value.hint
