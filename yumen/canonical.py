"""Canonical JSON: the one byte encoding used for everything that is hashed or signed.

Keys sorted, no insignificant whitespace, UTF-8, no NaN or infinity. Exact numbers
(``Fraction``, ``Decimal``) must be converted to strings by the caller before
encoding, so that no float rounding ever enters a digest.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from yumen.errors import Code, YumenError, echo

__all__ = ["canonical_json", "sha256_hex", "digest_of", "parse_json", "MAX_JSON_DEPTH"]

#: How deeply JSON from outside may nest (objects and arrays); far above any real parameter.
MAX_JSON_DEPTH = 32


def canonical_json(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_of(value: Any) -> str:
    """``sha256:<hex>`` of the canonical JSON of ``value``."""
    return "sha256:" + sha256_hex(canonical_json(value))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is too large for a float")
    return value


def parse_json(text: str | bytes, *, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON that came from outside (a request, a connector's message), or refuse it with
    ``INVALID_ARGUMENT`` saying what is wrong: not JSON, nested deeper than ``max_depth``,
    NaN or infinities (including numbers such as 1e999 that overflow a float), integers
    longer than Python parses, or strings that are not valid Unicode (lone surrogates, which
    ``\\ud800`` escapes produce and which no digest or UTF-8 encoder accepts)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise YumenError(Code.INVALID_ARGUMENT, f"{what} is not UTF-8 text") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise YumenError(Code.INVALID_ARGUMENT, f"{what} is nested too deeply (the limit is {max_depth} levels)") from None
    except ValueError as e:  # JSONDecodeError, refused constants, int digit limits
        raise YumenError(Code.INVALID_ARGUMENT, f"{what} is not valid JSON: {echo(str(e), 120)}",
                         hint="send plain JSON: finite numbers, strings, lists, objects") from None
    stack = [(value, 1)]
    while stack:  # iterative: checking depth must not recurse either
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                raise YumenError(Code.INVALID_ARGUMENT, f"{what} is nested too deeply (the limit is {max_depth} levels)")
            children = list(item.items()) if isinstance(item, dict) else [(None, v) for v in item]
            for key, child in children:
                if key is not None:
                    stack.append((key, depth))
                stack.append((child, depth + 1))
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise YumenError(Code.INVALID_ARGUMENT, f"{what} holds a string that is not valid Unicode "
                                 "(a lone surrogate escape such as \\ud800)") from None
    return value
