"""Canonical JSON: the one byte encoding used for everything that is hashed or signed.

Keys sorted, no insignificant whitespace, UTF-8, no NaN or infinity. Exact numbers
(``Fraction``, ``Decimal``) must be converted to strings by the caller before
encoding, so that no float rounding ever enters a digest.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["canonical_json", "sha256_hex", "digest_of"]


def canonical_json(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_of(value: Any) -> str:
    """``sha256:<hex>`` of the canonical JSON of ``value``."""
    return "sha256:" + sha256_hex(canonical_json(value))
