"""Operator licenses, as the data authority issues them.

A license is not policy text: issuing or revoking one changes the license registry (and
the log), not the policy version. The policy speaks of license *groups*; a license names
its group, the purposes it may pursue, the classification levels it may touch, and its
validity period.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import re
from typing import Any

from yumen.canonical import digest_of
from yumen.catalog import Level
from yumen.errors import Code, YumenError
from yumen.jobs import Purpose

__all__ = ["License", "LicenseStatus"]

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class LicenseStatus(enum.Enum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"


def _bad(what: str, hint: str = "") -> YumenError:
    return YumenError(Code.INVALID_ARGUMENT, what, hint=hint)


def parse_time(text: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _bad(f"{text!r} is not an ISO 8601 date or time", "write e.g. 2027-12-31 or 2027-12-31T23:59:59Z") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def format_time(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass(frozen=True, kw_only=True)
class License:
    id: str
    organization: str
    group: str = "licensed"
    purposes: frozenset[Purpose] = frozenset(Purpose)
    levels: frozenset[Level] = frozenset({Level.L1, Level.L2})
    valid_from: dt.datetime
    valid_until: dt.datetime
    status: LicenseStatus = LicenseStatus.ACTIVE

    def __post_init__(self) -> None:
        if not _ID.match(self.id):
            raise _bad(f"license id {self.id!r} is not valid", "use letters, digits, '.', '_' or '-'")
        if not self.organization.strip():
            raise _bad("a license names the operator organization")
        if not _ID.match(self.group):
            raise _bad(f"license group {self.group!r} is not valid")
        if not self.purposes:
            raise _bad("a license allows at least one purpose")
        if Level.L4 in self.levels:
            raise _bad("no license may touch L4 data: it is prohibited from authorized operation")
        if not self.valid_from < self.valid_until:
            raise _bad("a license's validity must end after it begins")

    def refusal(self, *, purpose: str, level: str, at: dt.datetime) -> str:
        """Why this license does not cover the request, or ``""`` when it does."""
        if self.status is LicenseStatus.REVOKED:
            return f"license {self.id} is revoked; ask the data authority for a new license"
        if self.status is LicenseStatus.SUSPENDED:
            return f"license {self.id} is suspended; ask the data authority to reinstate it"
        if at < self.valid_from:
            return f"license {self.id} is valid only from {format_time(self.valid_from)}"
        if at >= self.valid_until:
            return f"license {self.id} expired on {format_time(self.valid_until)}; ask the data authority to renew it"
        if purpose not in {p.value for p in self.purposes}:
            allowed = ", ".join(sorted(p.value for p in self.purposes))
            return f"license {self.id} does not cover the purpose {purpose} (it covers: {allowed})"
        if level not in {lv.value for lv in self.levels}:
            allowed = ", ".join(sorted(lv.value for lv in self.levels))
            return f"license {self.id} does not cover {level} data (it covers: {allowed})"
        return ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "organization": self.organization,
            "group": self.group,
            "purposes": sorted(p.value for p in self.purposes),
            "levels": sorted(lv.value for lv in self.levels),
            "valid_from": format_time(self.valid_from),
            "valid_until": format_time(self.valid_until),
            "status": self.status.value,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "License":
        try:
            purposes = frozenset(Purpose(p) for p in d.get("purposes", [p.value for p in Purpose]))
            levels = frozenset(Level(lv) for lv in d.get("levels", ["L1", "L2"]))
            status = LicenseStatus(d.get("status", "active"))
        except ValueError as e:
            raise _bad(f"license {d.get('id')!r}: {e}") from None
        return cls(
            id=str(d.get("id", "")), organization=str(d.get("organization", "")),
            group=str(d.get("group", "licensed")), purposes=purposes, levels=levels,
            valid_from=parse_time(str(d["valid_from"])), valid_until=parse_time(str(d["valid_until"])),
            status=status,
        )

    def digest(self) -> str:
        return digest_of(self.to_dict())
