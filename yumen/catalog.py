"""Dataset registration records: what a department declares about a public data resource.

The registration is the single source of truth for everything a privacy mechanism needs
(per-column bounds, category lists, the privacy unit). Operators never supply bounds; a
query or algorithm that names a column outside the registration is refused.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from yumen.canonical import digest_of
from yumen.errors import Code, YumenError, echo
from yumen.loss import Accounting

__all__ = [
    "Accounting",
    "ColumnType",
    "Level",
    "Column",
    "PrivacyUnit",
    "DatasetRegistration",
]

_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def _bad(field: str, what: str) -> YumenError:
    return YumenError(Code.INVALID_ARGUMENT, f"registration field {field!r}: {what}")


class ColumnType(enum.Enum):
    INT = "int"
    FLOAT = "float"
    CATEGORY = "category"
    STRING = "string"  # identifiers and free text: never aggregated, never released
    DATE = "date"


class Level(enum.Enum):
    """Classification and grading of public data (L1 open … L4 prohibited)."""

    L1 = "L1"  # open
    L2 = "L2"  # conditional
    L3 = "L3"  # restricted
    L4 = "L4"  # prohibited from authorized operation


@dataclasses.dataclass(frozen=True, kw_only=True)
class Column:
    name: str
    type: ColumnType
    unit: str = ""
    description: str = ""
    lower: float | None = None
    upper: float | None = None
    categories: tuple[str, ...] = ()
    # The department declares the column's values public (e.g. a station name or a calendar
    # date): its quality figures are released exact, without noise. Never about people.
    public: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.public, bool):
            raise _bad(f"columns.{self.name}.public", "must be true or false")
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", self.name):
            raise _bad("columns.name", f"{echo(self.name)} is not a plain identifier (letters, digits, _)")
        for bound in (self.lower, self.upper):
            if bound is not None and not math.isfinite(bound):
                raise _bad(f"columns.{self.name}", f"bound {bound} is not a finite number; DP clamps to finite bounds")
        if self.type in (ColumnType.INT, ColumnType.FLOAT):
            if self.lower is None or self.upper is None:
                raise _bad(
                    f"columns.{self.name}",
                    "numeric columns need 'lower' and 'upper' bounds; DP clamps to them",
                )
            if not self.lower < self.upper:
                raise _bad(f"columns.{self.name}", f"lower {self.lower} must be below upper {self.upper}")
        if self.type is ColumnType.CATEGORY:
            if not self.categories:
                raise _bad(f"columns.{self.name}", "category columns need their 'categories' listed")
            if len(set(self.categories)) != len(self.categories):
                raise _bad(f"columns.{self.name}", "categories repeat")

    @property
    def numeric(self) -> bool:
        return self.type in (ColumnType.INT, ColumnType.FLOAT)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "type": self.type.value}
        if self.unit:
            d["unit"] = self.unit
        if self.description:
            d["description"] = self.description
        if self.lower is not None:
            d["lower"] = self.lower
        if self.upper is not None:
            d["upper"] = self.upper
        if self.categories:
            d["categories"] = list(self.categories)
        if self.public:  # written only when set, so existing registrations keep their digests
            d["public"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Column":
        try:
            ctype = ColumnType(d.get("type", ""))
        except ValueError:
            raise _bad(
                f"columns.{d.get('name', '?')}.type",
                f"{d.get('type')!r} is not one of {[t.value for t in ColumnType]}",
            ) from None
        return cls(
            name=str(d.get("name", "")),
            type=ctype,
            unit=str(d.get("unit", "")),
            description=str(d.get("description", "")),
            lower=None if d.get("lower") is None else float(d["lower"]),
            upper=None if d.get("upper") is None else float(d["upper"]),
            categories=tuple(str(c) for c in d.get("categories", ())),
            public=d.get("public", False),
        )


def _fraction(field: str, value: Any) -> Fraction:
    """An exact positive number from a decimal string such as "1e-9" or "0.5" (not a float)."""
    if isinstance(value, float) or isinstance(value, bool):
        raise _bad(field, f"{value!r}: write it as a decimal string, e.g. \"1e-9\"")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise _bad(field, f"{value!r} is not a decimal number") from None
    if not d.is_finite() or d <= 0:
        raise _bad(field, f"{value!r} must be a positive number")
    return Fraction(d)


def _decimal_text(x: Fraction) -> str:
    return format(Decimal(x.numerator) / Decimal(x.denominator), "f") if x.denominator != 1 else str(x.numerator)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrivacyUnit:
    """Whom DP protects: rows sharing ``column`` belong to one person (or household, firm).

    ``max_contributions`` is the most rows one unit may add; the platform truncates to it.
    With ``column`` empty, each row is its own unit (``max_contributions`` must be 1).

    ``namespace`` names the set of people the unit ranges over. Datasets with the same
    namespace hold the same people, so the broker's ledger adds up what jobs spend on all of
    them (one person's loss is the sum, not the maximum). A namespace is the department's own
    unless ``shared`` says that other departments' datasets name the same people with it
    (e.g. a province-wide resident id). Without a namespace the dataset is its own.

    ``accounting`` is ``pure`` (ε-DP) or ``zcdp`` (ρ-zCDP at ``delta``, Gaussian noise).
    ``lifetime_epsilon``, when set, is the department's own lifetime cap on the namespace,
    below the policy's.
    """

    column: str = ""
    max_contributions: int = 1
    namespace: str = ""
    shared: bool = False
    accounting: Accounting = Accounting.PURE
    delta: Fraction = Fraction(0)
    lifetime_epsilon: Fraction | None = None

    def __post_init__(self) -> None:
        if self.max_contributions < 1:
            raise _bad("privacy_unit.max_contributions", "must be at least 1")
        if not self.column and self.max_contributions != 1:
            raise _bad("privacy_unit", "without an identifier column each row is one unit: max_contributions must be 1")
        if self.namespace and not _ID.match(self.namespace):
            raise _bad("privacy_unit.namespace", f"{self.namespace!r} must be a lowercase id")
        if self.shared and not self.namespace:
            raise _bad("privacy_unit.shared", "a shared privacy unit needs a namespace that names its people")
        if self.accounting is Accounting.ZCDP:
            if not Fraction(0) < self.delta <= Fraction(1, 10**4):
                raise _bad("privacy_unit.delta", "zCDP accounting needs a δ above 0 and at most 1e-4, e.g. \"1e-9\"")
        elif self.delta:
            raise _bad("privacy_unit.delta", "δ applies only to accounting = \"zcdp\"")
        if self.lifetime_epsilon is not None and self.lifetime_epsilon <= 0:
            raise _bad("privacy_unit.lifetime_epsilon", "must be positive")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"column": self.column, "max_contributions": self.max_contributions}
        if self.namespace:
            d["namespace"] = self.namespace
            d["shared"] = self.shared
        if self.accounting is not Accounting.PURE:
            d["accounting"] = self.accounting.value
            d["delta"] = _decimal_text(self.delta)
        if self.lifetime_epsilon is not None:
            d["lifetime_epsilon"] = _decimal_text(self.lifetime_epsilon)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PrivacyUnit":
        try:
            accounting = Accounting(d.get("accounting", "pure"))
        except ValueError:
            raise _bad("privacy_unit.accounting", f"{d.get('accounting')!r} is not one of pure, zcdp") from None
        return cls(
            column=str(d.get("column", "")),
            max_contributions=int(d.get("max_contributions", 1)),
            namespace=str(d.get("namespace", "")),
            shared=bool(d.get("shared", False)),
            accounting=accounting,
            delta=_fraction("privacy_unit.delta", d["delta"]) if d.get("delta") is not None else Fraction(0),
            lifetime_epsilon=(_fraction("privacy_unit.lifetime_epsilon", d["lifetime_epsilon"])
                              if d.get("lifetime_epsilon") is not None else None),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class DatasetRegistration:
    id: str
    title: str
    department: str
    level: Level
    columns: tuple[Column, ...]
    privacy_unit: PrivacyUnit = PrivacyUnit()
    description: str = ""
    update_frequency: str = ""
    source_system: str = ""
    price_class: str = "standard"
    version: str = ""  # content digest of the data version the connector serves

    def __post_init__(self) -> None:
        if not _ID.match(self.id):
            raise _bad("id", f"{echo(self.id)} must be lowercase letters, digits, '.', '_' or '-' (max 64)")
        if not self.title:
            raise _bad("title", "is empty")
        if not _ID.match(self.department):
            raise _bad("department", f"{echo(self.department)} must be a lowercase id")
        if not self.columns:
            raise _bad("columns", "a dataset needs at least one column")
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise _bad("columns", "column names repeat")
        if self.privacy_unit.column and self.privacy_unit.column not in names:
            raise _bad("privacy_unit.column", f"{echo(self.privacy_unit.column)} is not a declared column")

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise YumenError(
            Code.INVALID_ARGUMENT,
            f"dataset {echo(self.id)} has no column {echo(name)}",
            hint=f"declared columns: {', '.join(c.name for c in self.columns)}",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "department": self.department,
            "level": self.level.value,
            "columns": [c.to_dict() for c in self.columns],
            "privacy_unit": self.privacy_unit.to_dict(),
            "update_frequency": self.update_frequency,
            "source_system": self.source_system,
            "price_class": self.price_class,
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DatasetRegistration":
        try:
            level = Level(d.get("level", "L2"))
        except ValueError:
            raise _bad("level", f"{d.get('level')!r} is not one of L1, L2, L3, L4") from None
        pu = d.get("privacy_unit") or {}
        return cls(
            id=str(d.get("id", "")),
            title=str(d.get("title", "")),
            description=str(d.get("description", "")),
            department=str(d.get("department", "")),
            level=level,
            columns=tuple(Column.from_dict(c) for c in d.get("columns", ())),
            privacy_unit=PrivacyUnit.from_dict(pu),
            update_frequency=str(d.get("update_frequency", "")),
            source_system=str(d.get("source_system", "")),
            price_class=str(d.get("price_class", "standard")),
            version=str(d.get("version", "")),
        )

    def digest(self) -> str:
        return digest_of(self.to_dict())
