"""Usage control: licenses, classification levels, Casbin rules, obligations, prices.

The broker is the policy decision point; each connector also enforces its department's
own policy before it touches data. See docs/policy.md.
"""

from yumen.policy._budget import (
    LIFETIME,
    Account,
    Charge,
    Limit,
    Reservation,
    describe_amount,
    limits_for,
    namespace_key,
    period_of,
    refusal,
    reservation_for,
)
from yumen.policy._engine import (
    Decision,
    DecisionRequest,
    Obligations,
    PolicyBundle,
    PolicyEngine,
    default_policy_paths,
)
from yumen.licenses import License, LicenseStatus, format_time, parse_time
from yumen.policy._prices import (
    FREE_PURPOSES,
    UNITS,
    Catalogue,
    CatalogueChange,
    metered_quantities,
    money,
    plain,
    price_lines,
    quoted_quantities,
    split_fen,
    total_of,
)

__all__ = [
    "FREE_PURPOSES",
    "UNITS",
    "Catalogue",
    "CatalogueChange",
    "metered_quantities",
    "money",
    "plain",
    "price_lines",
    "quoted_quantities",
    "split_fen",
    "total_of",
    "LIFETIME",
    "Account",
    "Charge",
    "Limit",
    "Reservation",
    "describe_amount",
    "limits_for",
    "namespace_key",
    "period_of",
    "refusal",
    "reservation_for",
    "Decision",
    "DecisionRequest",
    "License",
    "LicenseStatus",
    "Obligations",
    "PolicyBundle",
    "PolicyEngine",
    "default_policy_paths",
    "format_time",
    "parse_time",
]
