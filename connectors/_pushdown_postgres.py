"""PostgreSQL pushdown: a DP query's bounded exact aggregates as one parameterized SQL statement.

See ``_pushdown`` for the rules each step follows. The statement, for a grouped mean:

.. code-block:: sql

    WITH b AS (SELECT "region", "cost" FROM (
                 SELECT "region", "cost",
                        row_number() OVER (PARTITION BY "pid" ORDER BY <source order>) AS "__rn"
                 FROM "his"."visits" WHERE "pid" IS NOT NULL) s
               WHERE "__rn" <= $k),
         f AS (SELECT * FROM b WHERE <filters, values as parameters>),
         q AS (SELECT "region"::text AS "__g",
                      CASE WHEN x IS NULL THEN NULL
                           ELSE round(least(greatest(x * $inv, $lo), $hi))::int8 END AS "__q0"
               FROM f, LATERAL (SELECT NULLIF("cost"::float8, 'NaN') AS x) v)
    SELECT "__g", count("__q0"), sum("__q0" - $mid) FROM q GROUP BY "__g"

All passes of one job run in one ``REPEATABLE READ, READ ONLY`` transaction, so they see the
same rows, and the engine's fingerprint of the table (``fingerprint``) is taken in the same
snapshot: the version a receipt names is the version its aggregates were computed on.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from yumen.catalog import DatasetRegistration
from yumen.errors import Code, YumenError
from yumen.privacy import Plan

from ._pushdown import (
    NUMERIC_OPS,
    Component,
    KeySpec,
    assemble,
    assemble_candidates,
    check_present,
    describe_pass,
    describe_quantile,
    needed_columns,
)

__all__ = ["PostgresEngine"]

log = logging.getLogger(__name__)


class PostgresEngine:
    """Aggregates computed by PostgreSQL inside one read-only snapshot (use :meth:`open`)."""

    def __init__(self, source: Any, conn: Any, layout: Any) -> None:
        self.source = source
        self.conn = conn
        self.layout = layout
        self.statements = 0

    @classmethod
    @contextmanager
    def open(cls, source: Any) -> Iterator["PostgresEngine"]:
        import psycopg

        layout = source._layout()
        conn = source._connect()
        try:
            conn.autocommit = False
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            with conn.transaction():
                yield cls(source, conn, layout)
        finally:
            conn.close()

    # -- building blocks ----------------------------------------------------------------
    def _table(self) -> Any:
        from psycopg import sql

        return sql.SQL(".").join(sql.Identifier(p) for p in self.source.spec.table.split("."))

    def _type(self, name: str) -> str:
        return next(c.typname for c in self.layout.columns if c.name == name)

    def _bounded(self, registration: DatasetRegistration, columns: list[str]) -> tuple[Any, list[Any]]:
        """The bounded rows as a subquery over ``columns``, and its parameters."""
        from psycopg import sql

        check_present(registration, [c.name for c in self.layout.columns], columns)
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        unit = registration.privacy_unit.column
        if not unit:
            return sql.SQL("SELECT {cols} FROM {t}").format(cols=cols, t=self._table()), []
        u = sql.Identifier(unit)
        present = sql.SQL("{u} IS NOT NULL").format(u=u)
        if self._type(unit) in ("float4", "float8", "numeric"):
            present = sql.SQL("{u} IS NOT NULL AND {u} <> 'NaN'").format(u=u)
        # the source's own order: the order its snapshot (and so the Polars path) has
        order = sql.SQL(", ").join(sql.SQL(t) for t in self.layout.order) if self.layout.order else sql.SQL("1")
        q = sql.SQL(
            "SELECT {cols} FROM (SELECT {cols}, row_number() OVER (PARTITION BY {u} ORDER BY {order}) AS \"__rn\" "
            "FROM {t} WHERE {present}) s WHERE \"__rn\" <= %s"
        ).format(cols=cols, u=u, order=order, t=self._table(), present=present)
        return q, [registration.privacy_unit.max_contributions]

    @staticmethod
    def _value(name: str) -> Any:
        from psycopg import sql

        return sql.SQL("NULLIF({c}::float8, 'NaN')").format(c=sql.Identifier(name))

    def _filters(self, registration: DatasetRegistration, filters: tuple[Any, ...]) -> tuple[Any, list[Any]]:
        from psycopg import sql

        from yumen.privacy import FilterOp

        parts, params = [], []
        for f in filters:
            col = registration.column(f.column)
            if col.numeric:
                parts.append(sql.SQL("{x} " + NUMERIC_OPS[f.op] + " %s::float8").format(x=self._value(f.column)))
                params.append(float(f.value))
            elif f.op is FilterOp.IN:
                parts.append(sql.SQL("{c}::text = ANY(%s::text[])").format(c=sql.Identifier(f.column)))
                params.append(list(f.value))
            else:
                op = "=" if f.op is FilterOp.EQ else "<>"
                parts.append(sql.SQL("{c}::text " + op + " %s::text").format(c=sql.Identifier(f.column)))
                params.append(str(f.value))
        if not parts:
            return sql.SQL("TRUE"), []
        return sql.SQL(" AND ").join(parts), params

    def _key(self, key: KeySpec) -> tuple[Any, list[Any]]:
        from psycopg import sql

        if key.kind == "none":
            return sql.SQL("NULL::text"), []
        if key.kind == "label":
            return sql.SQL("{c}::text").format(c=sql.Identifier(key.column)), []
        # floor((clamp(x) - lo) / (hi - lo) * bins), clamped to [0, bins - 1]; the operations of Polars, in its order
        x = self._value(key.column)
        idx = sql.SQL(
            "least(greatest(floor((least(greatest({x}, %s::float8), %s::float8) - %s::float8) / %s::float8 * %s::float8), 0), %s)"
        ).format(x=x)
        return sql.SQL("CASE WHEN {x} IS NULL THEN NULL ELSE ({idx})::int8 END").format(x=x, idx=idx), [
            key.lo, key.hi, key.lo, key.width, float(key.bins), float(key.bins - 1)]

    def _component(self, c: Component, i: int) -> tuple[Any, Any, list[Any], list[Any]]:
        """(per-row expression, aggregate, parameters of each)."""
        from psycopg import sql

        if c.kind == "count_rows":
            return sql.SQL("1"), sql.SQL("count(*)"), [], []
        name = sql.Identifier(f"__v{i}")
        if c.kind == "count_present":
            expr = self._value(c.column) if c.numeric else sql.Identifier(c.column)
            return expr, sql.SQL("count({n})").format(n=name), [], []
        x = self._value(c.column)
        expr = sql.SQL("CASE WHEN {x} IS NULL THEN NULL ELSE round(least(greatest({x} * %s::float8, %s::float8), %s::float8))::int8 END").format(x=x)
        row_params: list[Any] = [c.inv, c.lo, c.hi]
        if c.kind == "count":
            agg, agg_params = sql.SQL("count({n})").format(n=name), []
        elif c.kind == "sum":
            agg, agg_params = sql.SQL("sum({n})").format(n=name), []
        elif c.kind == "centered_sum":
            agg, agg_params = sql.SQL("sum({n} - %s::int8)").format(n=name), [c.mid]
        elif c.kind == "centered_square_sum":
            agg = sql.SQL("sum((({n} - %s::int8) * ({n} - %s::int8)) / %s::int8)").format(n=name)
            agg_params = [c.mid, c.mid, 2**c.shift]
        else:
            raise YumenError(Code.INTERNAL, f"unknown aggregate component {c.kind!r}")
        return expr, agg, row_params, agg_params

    def _run(self, query: Any, params: list[Any]) -> list[tuple[Any, ...]]:
        import psycopg

        self.statements += 1
        try:
            return self.conn.execute(query, params).fetchall()
        except psycopg.Error as exc:
            # the server's message may quote values of the data: it stays in the department's log
            log.warning("pushdown statement on %s failed: %s", self.source.spec.describe(), exc)
            raise YumenError(Code.JOB_FAILED, f"{self.source.spec.describe()}: the pushed-down query failed "
                             f"({type(exc).__name__})", hint="the department's log has the server's message") from None

    # -- AggregateEngine ----------------------------------------------------------------
    def aggregate(self, registration: DatasetRegistration, plans: list[Plan]) -> list[dict[str, list[int]]]:
        from psycopg import sql

        p = describe_pass(registration, plans)
        bounded, b_params = self._bounded(registration, needed_columns(registration, plans))
        where, f_params = self._filters(registration, p.filters)
        key, k_params = self._key(p.key)
        row_exprs, aggs, r_params, a_params = [], [], [], []
        for i, c in enumerate(p.components):
            expr, agg, rp, ap = self._component(c, i)
            row_exprs.append(sql.SQL("{e} AS {n}").format(e=expr, n=sql.Identifier(f"__v{i}")))
            r_params += rp
            aggs.append(agg)
            a_params += ap
        query = sql.SQL(
            "WITH b AS ({bounded}), f AS (SELECT * FROM b WHERE {where}), "
            "q AS (SELECT {key} AS \"__g\", {rows} FROM f) "
            "SELECT \"__g\", {aggs} FROM q GROUP BY \"__g\""
        ).format(bounded=bounded, where=where, key=key, rows=sql.SQL(", ").join(row_exprs),
                 aggs=sql.SQL(", ").join(aggs))
        rows = self._run(query, [*b_params, *f_params, *k_params, *r_params, *a_params])
        return assemble(registration, plans, p, rows)

    def candidate_counts(self, registration: DatasetRegistration, plan: Plan) -> list[list[int]]:
        from psycopg import sql

        key, lo, hi, last = describe_quantile(registration, plan)
        bounded, b_params = self._bounded(registration, needed_columns(registration, [plan]))
        where, f_params = self._filters(registration, plan.spec.filters)
        g, k_params = self._key(key)
        x = self._value(plan.spec.column)
        idx = sql.SQL(
            "CASE WHEN {x} IS NULL THEN NULL ELSE least(greatest(round((least(greatest({x}, %s::float8), %s::float8) "
            "- %s::float8) / %s::float8 * %s::float8), 0), %s)::int8 END").format(x=x)
        query = sql.SQL(
            "WITH b AS ({bounded}), f AS (SELECT * FROM b WHERE {where}) "
            "SELECT {g} AS \"__g\", {idx} AS \"__c\", count(*) FROM f GROUP BY 1, 2"
        ).format(bounded=bounded, where=where, g=g, idx=idx)
        rows = self._run(query, [*b_params, *f_params, *k_params, lo, hi, lo, hi - lo, float(last), float(last)])
        return assemble_candidates(plan, key, rows)

    def fingerprint(self) -> str:
        """The table's content in this snapshot, computed in the engine, as ``sha256:<hex>``.

        Two 64-bit hashes of each row's text summed over all rows (order-independent), with
        the row count, the table and the column types. Cheaper than the connector's ordered
        content digest (no row leaves the server) and a different thing: the SHA-256 of
        "pg-rows|table|columns|count|sum1|sum2", in the ``sha256:<hex>`` form the broker and
        the log require of a version; it names a version for receipts and audits and is not
        the digest of a snapshot file.
        """
        from psycopg import sql

        from ._sources import VERSION_CACHE

        # As the source's own version: cached under the cluster's WAL insert position, read in
        # this transaction's snapshot, only when no transaction was in flight (see
        # _source_postgres); a busy cluster pays one full scan per job, always correctly.
        lsn, quiet = self.source._wal_state(self.conn, self.layout)
        key = ("pushdown-fingerprint", self.source.spec, self.source._conninfo_identity(), self.layout.relid)
        if lsn is not None:
            cached = VERSION_CACHE.get((key, lsn))
            if cached is not None:
                return cached
        cols = sql.SQL(", ").join(sql.Identifier(c.name) for c in self.layout.columns)
        row = self._run(sql.SQL(
            "SELECT count(*), coalesce(sum(hashtextextended(r::text, 0)::numeric), 0), "
            "coalesce(sum(hashtextextended(r::text, 1)::numeric), 0) FROM (SELECT ROW({cols}) AS r FROM {t}) s"
        ).format(cols=cols, t=self._table()), [])[0]
        shape = ",".join(f"{c.name}:{c.typname}" for c in self.layout.columns)
        text = f"pg-rows|{self.source.spec.table}|{shape}|{row[0]}|{row[1]}|{row[2]}"
        digest = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
        if quiet and lsn is not None:
            VERSION_CACHE.put((key, lsn), digest)
        return digest
