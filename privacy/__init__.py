"""Differential privacy (OpenDP) and homomorphic encryption (TenSEAL) for Yumen.

Shared by the connector (which applies every mechanism next to the raw data), the broker
(which only adds ciphertexts) and the operator SDK (which makes keys and decrypts).
See docs/privacy.md for the mechanisms, sensitivities and the reasons behind them.
"""

from ._mechanisms import CONFIDENCE, GEOMETRIC, LAPLACE, NOISY_MAX
from ._he import (
    MAX_CIPHERTEXT_BYTES,
    MAX_CONTEXT_BYTES,
    SLOTS,
    he_check_public_context,
    he_decrypt,
    he_encrypt,
    he_keygen,
    he_sum,
)
from ._outputs import aggregate_blocks, release_outputs
from ._counts import release_counts
from ._partition import partition_blocks
from ._aggregate import MAX_ROWS, grouping
from ._plan import Plan
from ._bounding import BoundedFrame, bound_contributions
from ._engine import AggregateEngine, PolarsEngine
from ._query import AccuracyForecast, dp_accuracy, dp_queries, dp_query
from ._record import UNGROUPED, Component, DPRelease
from ._spec import Filter, FilterOp, QuerySpec, Statistic, validate as validate_query

__all__ = [
    "CONFIDENCE",
    "GEOMETRIC",
    "LAPLACE",
    "MAX_CIPHERTEXT_BYTES",
    "MAX_CONTEXT_BYTES",
    "MAX_ROWS",
    "NOISY_MAX",
    "SLOTS",
    "UNGROUPED",
    "AccuracyForecast",
    "AggregateEngine",
    "Plan",
    "PolarsEngine",
    "BoundedFrame",
    "Component",
    "DPRelease",
    "Filter",
    "FilterOp",
    "QuerySpec",
    "Statistic",
    "aggregate_blocks",
    "bound_contributions",
    "dp_accuracy",
    "dp_queries",
    "dp_query",
    "grouping",
    "he_decrypt",
    "he_encrypt",
    "he_check_public_context",
    "he_keygen",
    "he_sum",
    "partition_blocks",
    "release_counts",
    "release_outputs",
    "validate_query",
]
