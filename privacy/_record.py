"""The records a DP release produces: what may leave the connector, and what may not."""

from __future__ import annotations

import dataclasses
import math
import types
from fractions import Fraction
from typing import Any, Mapping

from yumen.errors import Code, YumenError

from ._mechanisms import CONFIDENCE, MECHANISMS, PURE, ZCDP

# Key of the single value of an ungrouped release.
UNGROUPED = "*"


def _frozen_map(m: Mapping[str, float]) -> Mapping[str, float]:
    return types.MappingProxyType(dict(m))


def _internal(what: str) -> YumenError:
    return YumenError(Code.INTERNAL, f"DP release record: {what}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Component:
    """One OpenDP measurement inside a release (one noisy vector), for the audit trail."""

    name: str  # "count", "sum", "centered_sum", "centered_square_sum", "output:NAME", ...
    mechanism: str
    sensitivity: float  # L1 (pure) or L2 (zCDP) sensitivity in value units, add/remove one unit
    scale: float  # noise scale in value units
    epsilon: Fraction  # the loss certified by OpenDP's privacy map: ε (pure) or ρ (zcdp)
    measure: str = PURE

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise _internal(f"unknown mechanism {self.mechanism!r}")
        if self.measure not in (PURE, ZCDP):
            raise _internal(f"unknown privacy measure {self.measure!r}")
        if not (isinstance(self.epsilon, Fraction) and self.epsilon > 0):
            raise _internal(f"component {self.name!r} ε must be a positive Fraction")
        if not (self.sensitivity > 0 and self.scale > 0):
            raise _internal(f"component {self.name!r} needs positive sensitivity and scale")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mechanism": self.mechanism,
            "sensitivity": self.sensitivity,
            "scale": self.scale,
            ("epsilon" if self.measure == PURE else "rho"): f"{self.epsilon.numerator}/{self.epsilon.denominator}",
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPRelease:
    """A differentially private result.

    ``values``, ``noise_scale`` and ``accuracy`` share their keys: group labels in the
    registration's declared order, ``UNGROUPED`` ("*") for a single value, or output names
    for algorithm outputs. ``noise_scale`` is the Laplace scale of the noise in the value's
    units (for a mean: the sum's noise scale divided by the released noisy count).
    ``accuracy`` is the half-width of a ``confidence`` (95 %) interval around the true
    truncated-and-clamped value; for derived statistics (mean, variance) it is a
    conservative union bound over the components, computed from released values only. For
    quantiles (``accuracy_unit == "rank"``) both ``accuracy`` and ``noise_scale`` are in rows
    of rank: the released candidate's rank misses the target rank by at most ``accuracy``
    rows (up to ties at the candidate) with 95 % probability.

    ``exact`` holds the pre-noise values. It exists only so the connector can compute a
    salted commitment locally; it NEVER leaves the connector: it is excluded from
    ``to_dict()``, from ``repr`` and from equality, and the connector must send only
    ``to_dict()`` (plus the commitment).
    """

    values: Mapping[str, float]
    noise_scale: Mapping[str, float]
    accuracy: Mapping[str, float]
    mechanism: str
    epsilon: Fraction  # the total loss in ``accounting``: ε (pure) or ρ (zcdp)
    components: tuple[Component, ...]
    statistic: str
    confidence: Fraction = CONFIDENCE
    accuracy_unit: str = "value"  # "rank" for quantiles: rows of rank error, not value units
    exact: Mapping[str, float] = dataclasses.field(repr=False, compare=False)
    # The noisy row count of each key where the release measured one (count and histogram:
    # the values themselves; mean and variance: their count component). Releasing it is
    # post-processing of the same measurement and costs nothing more; the broker uses it to
    # suppress groups below a minimum size.
    counts: Mapping[str, float] = dataclasses.field(default_factory=dict)
    count_accuracy: float = 0.0  # 95 % half-width of each of ``counts``
    accounting: str = PURE  # "pure" (``epsilon`` is ε) or "zcdp" (``epsilon`` is ρ)

    def __post_init__(self) -> None:
        for name in ("values", "noise_scale", "accuracy", "exact", "counts"):
            object.__setattr__(self, name, _frozen_map(getattr(self, name)))
        keys = list(self.values)
        if not keys:
            raise _internal("a release needs at least one value")
        for name in ("noise_scale", "accuracy", "exact"):
            if list(getattr(self, name)) != keys:
                raise _internal(f"{name} keys differ from the value keys")
        if self.counts and list(self.counts) != keys:
            raise _internal("count keys differ from the value keys")
        for k in keys:
            if not math.isfinite(self.values[k]):
                raise _internal("a released value is not finite")
            if not (self.noise_scale[k] >= 0 and self.accuracy[k] >= 0):
                raise _internal("noise scale and accuracy must be non-negative")
        if self.mechanism not in MECHANISMS:
            raise _internal(f"unknown mechanism {self.mechanism!r}")
        if self.accuracy_unit not in ("value", "rank"):
            raise _internal(f"unknown accuracy unit {self.accuracy_unit!r}")
        if not self.components:
            raise _internal("a release records at least one measurement")
        if not (isinstance(self.epsilon, Fraction) and self.epsilon == sum(c.epsilon for c in self.components)):
            raise _internal("ε spent must equal the exact sum of the components' ε")
        if self.accounting not in (PURE, ZCDP) or any(c.measure != self.accounting for c in self.components):
            raise _internal("every component's loss must be in the release's accounting")

    @property
    def value(self) -> float:
        """The single value of an ungrouped release."""
        if list(self.values) != [UNGROUPED]:
            raise YumenError(Code.INVALID_ARGUMENT, "this release has several values", hint="read .values[key]")
        return self.values[UNGROUPED]

    def to_dict(self) -> dict[str, Any]:
        """What may leave the connector: everything except ``exact``."""
        return {
            "statistic": self.statistic,
            "values": dict(self.values),
            "noise_scale": dict(self.noise_scale),
            "accuracy": dict(self.accuracy),
            "confidence": f"{self.confidence.numerator}/{self.confidence.denominator}",
            "accuracy_unit": self.accuracy_unit,
            "mechanism": self.mechanism,
            "accounting": self.accounting,
            ("epsilon" if self.accounting == PURE else "rho"): f"{self.epsilon.numerator}/{self.epsilon.denominator}",
            "components": [c.to_dict() for c in self.components],
            "counts": dict(self.counts),
            "count_accuracy": self.count_accuracy,
        }
