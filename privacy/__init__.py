"""Differential privacy (OpenDP) and homomorphic encryption (TenSEAL) for Yumen.

Shared by the connector (which applies every mechanism next to the raw data), the broker
(which only adds ciphertexts) and the operator SDK (which makes keys and decrypts).
See docs/privacy.md for the mechanisms, sensitivities and the reasons behind them.
"""

from ._mechanisms import CONFIDENCE, GEOMETRIC, LAPLACE
from ._he import MAX_CIPHERTEXT_BYTES, MAX_CONTEXT_BYTES, SLOTS, he_decrypt, he_encrypt, he_keygen, he_sum
from ._outputs import aggregate_blocks, release_outputs
from ._partition import partition_blocks
from ._query import MAX_ROWS, AccuracyForecast, BoundedFrame, bound_contributions, dp_accuracy, dp_query
from ._record import UNGROUPED, Component, DPRelease
from ._spec import Filter, FilterOp, QuerySpec, Statistic

__all__ = [
    "CONFIDENCE",
    "GEOMETRIC",
    "LAPLACE",
    "MAX_CIPHERTEXT_BYTES",
    "MAX_CONTEXT_BYTES",
    "MAX_ROWS",
    "SLOTS",
    "UNGROUPED",
    "AccuracyForecast",
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
    "dp_query",
    "he_decrypt",
    "he_encrypt",
    "he_keygen",
    "he_sum",
    "partition_blocks",
    "release_outputs",
]
