"""Apache Spark source: a Parquet dataset, a catalog (Hive) table, or a JDBC table, read by Spark.

``[[datasets]] source = { kind = "spark", format = "parquet" | "table" | "jdbc", … }``:

* ``format = "parquet"``, ``path``: a Parquet file or folder (``spark.read.parquet``), on any
  file system the cluster reads (``hdfs://``, ``s3a://`` with their Spark settings).
* ``format = "table"``, ``table``: a table of the session's catalog (``spark.table``): a Hive
  metastore table when ``spark_conf`` sets ``spark.sql.catalogImplementation = "hive"`` and
  the metastore's address.
* ``format = "jdbc"``, ``table``, ``dsn_env``: a table read over JDBC; the URL (with its
  credentials) is in the environment variable ``dsn_env`` names, and the JDBC driver's jar
  must be on Spark's class path (``spark.jars``).

``master`` is ``spark.master`` (``local[*]`` by default; ``spark://…``, ``yarn``, ``k8s://…``)
and ``spark_conf`` any other Spark settings. One SparkSession serves the connector process.

Order: ``order_by`` then every other column in schema order, ascending with nulls last
(Spark orders NaN above every number, as PostgreSQL does). Spark has no row order of its
own, so this is the order the snapshot is written in and the order truncation keeps a
unit's first rows by, in the Polars path and in pushdown alike (``_pushdown``).

Without ``pushdown`` the connector pulls the ordered rows (``scan``, ``snapshot``) and
queries them with Polars, like any source. With ``pushdown = true`` queries run in Spark
(``_pushdown_spark.SparkEngine``) and only per-group aggregates come back.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl

from yumen.errors import Code, YumenError

from ._sources import SourceSpec, config_error, digest_batches, write_snapshot

__all__ = ["SparkSource", "spark_session"]

log = logging.getLogger(__name__)

_lock = threading.Lock()


def spark_session(spec: SourceSpec) -> Any:
    """The process's SparkSession, built once from the first spark source's master and settings.

    Spark allows one active session per driver; a second source asking for another master is
    refused rather than silently given the first one's.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise config_error(f"{spec.describe()}: pyspark is not installed",
                           hint="install the connector with pyspark (pip install 'pyspark==4.0.1') and a Java 17 runtime") from None
    with _lock:
        active = SparkSession.getActiveSession()
        if active is not None:
            master = active.sparkContext.master
            if master != spec.master:
                raise config_error(f"{spec.describe()}: this connector's Spark session already runs on {master}",
                                   hint="give every spark source of one connector the same master")
            return active
        builder = SparkSession.builder.master(spec.master).appName("yumen-connector")
        defaults = {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
                    "spark.sql.session.timeZone": "UTC", "spark.sql.ansi.enabled": "true"}
        if spec.master.startswith("local"):
            defaults["spark.driver.host"] = "127.0.0.1"
            defaults["spark.driver.bindAddress"] = "127.0.0.1"
        for key, value in {**defaults, **dict(spec.spark_conf)}.items():
            builder = builder.config(key, value)
        try:
            session = builder.getOrCreate()
        except Exception as exc:  # noqa: BLE001 - the JVM's failure, in words a department can act on
            raise config_error(f"{spec.describe()}: Spark did not start ({type(exc).__name__})",
                               hint="check that Java 17+ is installed and the master is reachable") from None
        session.sparkContext.setLogLevel("ERROR")
        return session


class SparkSource:
    """A dataset Spark reads; queries pulled into Polars, or pushed down (``pushdown = true``)."""

    def __init__(self, spec: SourceSpec) -> None:
        if spec.kind != "spark":
            raise YumenError(Code.INTERNAL, f"SparkSource given a {spec.kind} spec")
        self.spec = spec

    @property
    def session(self) -> Any:
        return spark_session(self.spec)

    def frame(self) -> Any:
        """The Spark DataFrame of the dataset (lazy)."""
        spark = self.session
        try:
            if self.spec.format == "parquet":
                return spark.read.parquet(self.spec.path)
            if self.spec.format == "table":
                return spark.table(self.spec.table)
            url = os.environ.get(self.spec.dsn_env, "")
            if not url:
                raise config_error(f"{self.spec.describe()}: environment variable {self.spec.dsn_env} is not set",
                                   hint="set it to the JDBC URL, e.g. jdbc:postgresql://db:5432/health?user=reader&password=…")
            return spark.read.jdbc(url=url, table=self.spec.table)
        except YumenError:
            raise
        except Exception as exc:  # noqa: BLE001 - AnalysisException and friends; their text may name paths only
            raise config_error(f"{self.spec.describe()}: Spark cannot read it ({type(exc).__name__})",
                               hint="check the path or table name and the Spark settings") from None

    def order(self, df: Any) -> list[Any]:
        """The source's order: ``order_by`` then every other column, ascending, nulls last."""
        from pyspark.sql import functions as F

        names = list(df.columns)
        missing = [c for c in self.spec.order_by if c not in names]
        if missing:
            raise config_error(f"{self.spec.describe()}: order_by names column(s) it lacks: {', '.join(missing)}")
        keys = list(self.spec.order_by) + [c for c in names if c not in self.spec.order_by]
        return [F.col(c).asc_nulls_last() for c in keys]

    def _ordered_arrow(self) -> Any:
        df = self.frame()
        return df.orderBy(*self.order(df)).toArrow()

    # -- DataSource protocol
    def scan(self) -> pl.LazyFrame:
        return pl.from_arrow(self._ordered_arrow()).lazy()  # type: ignore[union-attr]

    def version(self) -> str:
        df = pl.from_arrow(self._ordered_arrow())
        return digest_batches(df.schema, [df])  # type: ignore[union-attr]

    def snapshot(self, dest_dir: Path) -> Path:
        df = pl.from_arrow(self._ordered_arrow())
        path, _ = write_snapshot(df.schema, [df], Path(dest_dir))  # type: ignore[union-attr]
        return path

    def check(self) -> None:
        df = self.frame()
        try:
            df.limit(1).collect()
        except Exception as exc:  # noqa: BLE001
            raise config_error(f"{self.spec.describe()}: reading a row failed ({type(exc).__name__})") from None

    @contextmanager
    def pushdown_engine(self) -> Iterator[Any]:
        """The engine that computes a query's aggregates in Spark (``_pushdown_spark``)."""
        from ._pushdown_spark import SparkEngine

        yield SparkEngine(self)
