"""Where the exact aggregates of a DP query are computed: an :class:`AggregateEngine`.

``dp_queries`` plans a query (bounds, grid, public keys, sensitivities, calibrated noise)
without touching data, asks an engine for the exact per-group integer aggregates of the
bounded rows, and adds noise to what comes back. The engine is where the rows are: the
connector's Polars process (:class:`PolarsEngine`, the default), or the department's own
database or warehouse (``yumen.connectors._pushdown``: PostgreSQL SQL, Apache Spark), so
that rows never leave it.

Every engine must return exactly what :func:`~yumen.privacy._aggregate.aggregate` and
:func:`~yumen.privacy._aggregate.candidate_counts` return on the same rows: the stability
step (each privacy unit's first ``k`` rows in the source's order; rows without a unit id
dropped), then the row filters, the clamping to registered bounds on the power-of-two grid
(rounding half to even), the declared public keys, and integer sums. A contract suite
(tests/unit/connectors/test_pushdown_contract.py) runs the same queries on Polars,
PostgreSQL and Spark and requires identical aggregates. The noise never depends on the
engine: it is added here, by OpenDP, from the plan.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import polars as pl

from yumen.catalog import DatasetRegistration

from ._aggregate import aggregate, candidate_counts
from ._plan import Plan

__all__ = ["AggregateEngine", "PolarsEngine"]


@runtime_checkable
class AggregateEngine(Protocol):
    """Exact, pre-noise aggregates of the contribution-bounded rows of one dataset version."""

    def aggregate(self, registration: DatasetRegistration, plans: list[Plan]) -> list[dict[str, list[int]]]:
        """Per plan, component name -> one integer per public key (in key order).

        All ``plans`` share one grouping and one set of filters (``_aggregate.grouping``).
        """
        ...

    def candidate_counts(self, registration: DatasetRegistration, plan: Plan) -> list[list[int]]:
        """For a quantile plan: per public key, how many rows round to each candidate."""
        ...


class PolarsEngine:
    """The connector's in-process engine over an already bounded LazyFrame."""

    def __init__(self, bounded: pl.LazyFrame) -> None:
        self.frame = bounded

    def aggregate(self, registration: DatasetRegistration, plans: list[Plan]) -> list[dict[str, list[int]]]:
        return aggregate(self.frame, registration, plans)

    def candidate_counts(self, registration: DatasetRegistration, plan: Plan) -> list[list[int]]:
        return candidate_counts(self.frame, registration, plan)
