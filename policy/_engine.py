"""Casbin-backed policy decisions with obligations, explanations and prices.

A decision goes through four gates, in this order, and the first that fails names itself
in the denial:

1. the **license** (registry record): status, validity period, purposes, levels;
2. the **classification level** defaults (``[levels.Lx]`` in the policy TOML): which tiers
   that level allows at all (L4 allows none);
3. **Casbin**: the model in ``model.conf`` over the ``p``/``g`` lines; ``enforce_ex`` names
   the matching line, whose last field is the rule id;
4. the **rule's obligations** (``[rules.<id>]`` over the level defaults): rule expiry and
   the largest ε one job may ask for.

Stateful limits (ε cap and runs per license per dataset per period, the dataset's total
cap) are checked by the broker's store when it reserves budget, atomically; the decision
only carries them as obligations.

A **policy version** is the SHA-256 over the model, the rules file and the TOML file;
every decision names it, so an auditor can re-evaluate the decision under the same text.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import threading
import tomllib
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any

import casbin
from casbin.model import Model
from casbin.util import key_match

from yumen.canonical import sha256_hex
from yumen.config import Table, unknown_key_error
from yumen.errors import Code, YumenError
from yumen.jobs import Purpose, Tier, format_epsilon, parse_epsilon
from yumen.sandboxes import BACKENDS, at_least

from yumen.licenses import License, format_time, parse_time

__all__ = [
    "Decision",
    "DecisionRequest",
    "Obligations",
    "PolicyBundle",
    "PolicyEngine",
    "default_policy_paths",
]

_TIERS = tuple(t.value for t in Tier)
_PURPOSES = tuple(p.value for p in Purpose)
_LEVELS = ("L1", "L2", "L3", "L4")
_MECHANISMS = ("dp", "he", "dp+he")


# One lock for every engine in the process. pycasbin's enforcer is not documented as
# thread-safe, and it compiles matchers with Python's ast module, whose compiler in CPython
# 3.11 fails ("AST constructor recursion depth mismatch") when two threads compile at once:
# two policy versions built concurrently (racing `policy set` calls) did exactly that.
_CASBIN_LOCK = threading.RLock()


def default_policy_paths() -> tuple[Path, Path, Path]:
    base = resources.files("yumen.policy")
    return Path(str(base / "model.conf")), Path(str(base / "default.csv")), Path(str(base / "default.toml"))


def _cfg(what: str) -> YumenError:
    return YumenError(Code.CONFIG, f"policy: {what}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicyBundle:
    """The three texts of one policy version."""

    model: str
    rules: str
    settings: str

    @property
    def version(self) -> str:
        h = sha256_hex(b"\0".join(t.encode() for t in (self.model, self.rules, self.settings)))
        return "sha256:" + h

    def to_dict(self) -> dict[str, str]:
        return {"model": self.model, "rules": self.rules, "settings": self.settings}

    @classmethod
    def from_files(cls, model: Path, rules: Path, settings: Path) -> "PolicyBundle":
        """Read the three files; the settings' keys are checked here, where the file is known, so
        a misspelt key is reported with the file's name (the engine checks them again)."""
        try:
            bundle = cls(model=Path(model).read_text(), rules=Path(rules).read_text(),
                         settings=Path(settings).read_text())
        except OSError as e:
            raise _cfg(f"cannot read {e.filename}: {e.strerror}") from None
        try:
            check_settings_keys(tomllib.loads(bundle.settings), source=f"policy settings {settings}")
        except tomllib.TOMLDecodeError as e:
            raise _cfg(f"{settings} is not valid TOML: {e}") from None
        return bundle

    @classmethod
    def default(cls) -> "PolicyBundle":
        return cls.from_files(*default_policy_paths())


@dataclasses.dataclass(frozen=True, kw_only=True)
class Obligations:
    mechanism: str
    max_epsilon: Fraction
    epsilon_cap: Fraction
    period_days: int
    max_runs: int
    min_group_size: int
    sandbox: str
    approval: bool
    dataset_epsilon_cap: Fraction
    dataset_period_days: int = 30
    lifetime_epsilon_cap: Fraction = Fraction(0)
    expires: dt.datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "mechanism": self.mechanism,
            "max_epsilon": format_epsilon(self.max_epsilon),
            "epsilon_cap": format_epsilon(self.epsilon_cap),
            "period_days": self.period_days,
            "max_runs": self.max_runs,
            "min_group_size": self.min_group_size,
            "sandbox": self.sandbox,
            "approval": self.approval,
            "dataset_epsilon_cap": format_epsilon(self.dataset_epsilon_cap) if self.dataset_epsilon_cap else "0",
            "dataset_period_days": self.dataset_period_days,
            "lifetime_epsilon_cap": format_epsilon(self.lifetime_epsilon_cap) if self.lifetime_epsilon_cap else "0",
            "expires": format_time(self.expires) if self.expires else "",
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecisionRequest:
    license: str
    department: str
    dataset: str
    level: str
    tier: str
    purpose: str
    epsilon: Fraction
    price_class: str = "standard"
    encrypted: bool = False  # the job carries the operator's public key for homomorphic delivery
    at: dt.datetime = dataclasses.field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Decision:
    allowed: bool
    policy_version: str
    rule: str = ""
    obligations: Obligations | None = None
    reason: str = ""
    gate: str = ""  # license | level | rule | obligation: which gate denied
    price: Decimal = Decimal(0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "policy_version": self.policy_version,
            "rule": self.rule,
            "obligations": self.obligations.to_dict() if self.obligations else None,
            "reason": self.reason,
            "gate": self.gate,
            "price": str(self.price),
        }


# The keys of the settings file (policy.toml). Anything else is an error naming the closest
# known key: a misspelt obligation must never fall back to a laxer default.
_TOP_TABLES = ("levels", "rules", "pricing")
_LEVEL_KEYS = ("tiers", "mechanism", "min_group_size", "sandbox", "approval", "dataset_epsilon_cap",
               "dataset_period_days", "lifetime_epsilon_cap")
_RULE_KEYS = ("max_epsilon", "epsilon_cap", "period_days", "max_runs", "expires", "mechanism", "sandbox",
              "min_group_size", "approval")
_PRICE_KEYS = ("base", "per_epsilon")


def check_settings_keys(doc: dict[str, Any], *, source: str = "policy settings") -> None:
    """Reject unknown tables and keys (and tables that are not tables) in a parsed policy.toml."""
    top = Table(doc, _TOP_TABLES, where="", source=source)
    levels = top.get("levels", "table", {})
    for name in levels:
        if name not in _LEVELS:
            raise unknown_key_error(name, _LEVELS, where="[levels]", source=source)
        Table(levels[name], _LEVEL_KEYS, where=f"[levels.{name}]", source=source)
    for name, rule in top.get("rules", "table", {}).items():
        Table(rule, _RULE_KEYS, where=f"[rules.{name}]", source=source)
    for cls_name, by_purpose in top.get("pricing", "table", {}).items():
        t = Table(by_purpose, _PURPOSES, where=f"[pricing.{cls_name}]", source=source)
        for purpose in t.raw:
            Table(t.raw[purpose], _PRICE_KEYS, where=f"[pricing.{cls_name}] {purpose}", source=source)


def _decimal(value: Any, where: str) -> Decimal:
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise _cfg(f"{where}: {value!r} is not a decimal number") from None
    if d < 0 or not d.is_finite():
        raise _cfg(f"{where}: {value!r} must be a non-negative number")
    return d


def _eps(value: Any, where: str, *, zero_ok: bool = False) -> Fraction:
    if zero_ok and str(value) == "0":
        return Fraction(0)
    try:
        return parse_epsilon(str(value))
    except YumenError as e:
        raise _cfg(f"{where}: {e.message}") from None


class PolicyEngine:
    """One immutable policy version. The broker swaps engines atomically to change policy."""

    def __init__(self, bundle: PolicyBundle) -> None:
        self.bundle = bundle
        self.version = bundle.version
        try:
            settings = tomllib.loads(bundle.settings)
        except tomllib.TOMLDecodeError as e:
            raise _cfg(f"the TOML file is not valid: {e}") from None
        check_settings_keys(settings)
        try:
            self._levels = self._parse_levels(settings.get("levels", {}))
            self._rules = self._parse_rules(settings.get("rules", {}))
            self._pricing = self._parse_pricing(settings.get("pricing", {}))
        except (TypeError, ValueError, AttributeError, KeyError) as e:  # a value of the wrong shape
            raise _cfg(f"the settings do not have the expected shape: {type(e).__name__}: {str(e)[:200]}") from None
        self._lock = _CASBIN_LOCK
        self._p: list[list[str]] = []
        with self._lock:
            self._build(bundle)

    def _build(self, bundle: PolicyBundle) -> None:
        model = Model()
        try:
            model.load_model_from_text(bundle.model)
        except Exception as e:  # noqa: BLE001 - pycasbin raises bare exceptions on bad models
            raise _cfg(f"the Casbin model is not valid: {e}") from None
        try:
            self._enforcer = casbin.Enforcer(model)
            self._load_rules(bundle.rules)
            # A model of another shape loads but fails on the first request: try one now.
            self._enforcer.enforce_ex("licensed", "department", "dataset", "L1", "query", "research")
        except YumenError:
            raise
        except Exception as e:  # noqa: BLE001 - pycasbin raises bare TypeErrors, KeyErrors, ...
            raise _cfg("the Casbin model does not fit Yumen's requests (sub, department, dataset, level, tier, "
                       f"purpose) and 7-field p lines: {type(e).__name__}: {str(e)[:200]}") from None

    def _load_rules(self, rules: str) -> None:
        for lineno, raw in enumerate(rules.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = [p.strip() for p in line.split(",")]
            kind, fields = parts[0], parts[1:]
            if kind == "p":
                if len(fields) != 7:
                    raise _cfg(f"rules line {lineno}: a p line has 7 fields, found {len(fields)}")
                for rx, name in ((fields[3], "level"), (fields[4], "tier"), (fields[5], "purpose")):
                    try:
                        re.compile(rx)
                    except re.error as e:
                        raise _cfg(f"rules line {lineno}: bad {name} pattern {rx!r}: {e}") from None
                if fields[6] not in self._rules:
                    raise _cfg(f"rules line {lineno}: rule {fields[6]!r} has no [rules.{fields[6]}] obligations")
                self._enforcer.add_policy(*fields)
                self._p.append(fields)
            elif kind == "g":
                if len(fields) != 2:
                    raise _cfg(f"rules line {lineno}: a g line has 2 fields")
                self._enforcer.add_grouping_policy(*fields)
            else:
                raise _cfg(f"rules line {lineno}: unknown line kind {kind!r} (use p or g)")

    @classmethod
    def default(cls) -> "PolicyEngine":
        return cls(PolicyBundle.default())

    # -- parsing -------------------------------------------------------------------
    @staticmethod
    def _parse_levels(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
        levels = {}
        for name in _LEVELS:
            if not isinstance(raw.get(name), dict):
                raise _cfg(f"[levels.{name}] is missing: every classification level needs its defaults")
        for name in _LEVELS:
            d = raw[name]
            where = f"[levels.{name}]"
            tiers = d.get("tiers", [])
            if any(t not in _TIERS for t in tiers):
                raise _cfg(f"{where} tiers: use only {', '.join(_TIERS)}")
            if d.get("mechanism", "dp") not in _MECHANISMS:
                raise _cfg(f"{where} mechanism: use one of {', '.join(_MECHANISMS)}")
            if d.get("sandbox", "bwrap") not in BACKENDS:
                raise _cfg(f"{where} sandbox: use one of {', '.join(BACKENDS)}")
            levels[name] = {
                "tiers": frozenset(tiers),
                "mechanism": d.get("mechanism", "dp"),
                "min_group_size": int(d.get("min_group_size", 0)),
                "sandbox": d.get("sandbox", "bwrap"),
                "approval": bool(d.get("approval", False)),
                "dataset_epsilon_cap": _eps(d.get("dataset_epsilon_cap", "0"), f"{where} dataset_epsilon_cap", zero_ok=True),
                "dataset_period_days": int(d.get("dataset_period_days", 30)),
                "lifetime_epsilon_cap": _eps(d.get("lifetime_epsilon_cap", "0"), f"{where} lifetime_epsilon_cap",
                                             zero_ok=True),
            }
            if levels[name]["dataset_period_days"] < 1:
                raise _cfg(f"{where} dataset_period_days must be at least 1")
            if tiers and not levels[name]["lifetime_epsilon_cap"]:
                raise _cfg(f"{where} lifetime_epsilon_cap is missing: a level that allows jobs needs a lifetime cap, "
                           "which no period, rule or refund can exceed")
        return levels

    @staticmethod
    def _parse_rules(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
        rules = {}
        for name, d in raw.items():
            where = f"[rules.{name}]"
            r: dict[str, Any] = {
                "max_epsilon": _eps(d.get("max_epsilon", ""), f"{where} max_epsilon"),
                "epsilon_cap": _eps(d.get("epsilon_cap", ""), f"{where} epsilon_cap"),
                "period_days": int(d.get("period_days", 30)),
                "max_runs": int(d.get("max_runs", 100)),
                "expires": parse_time(str(d["expires"])) if d.get("expires") else None,
            }
            if r["period_days"] < 1 or r["max_runs"] < 1:
                raise _cfg(f"{where}: period_days and max_runs must be at least 1")
            for opt in ("mechanism", "sandbox", "min_group_size", "approval"):
                if opt in d:
                    r[opt] = d[opt]
            if r.get("mechanism", "dp") not in _MECHANISMS:
                raise _cfg(f"{where} mechanism: use one of {', '.join(_MECHANISMS)}")
            if r.get("sandbox", "bwrap") not in BACKENDS:
                raise _cfg(f"{where} sandbox: use one of {', '.join(BACKENDS)}")
            rules[name] = r
        return rules

    @staticmethod
    def _parse_pricing(raw: dict[str, Any]) -> dict[str, dict[str, tuple[Decimal, Decimal]]]:
        pricing = {}
        for cls_name, by_purpose in raw.items():
            pricing[cls_name] = {}
            for purpose in _PURPOSES:
                d = by_purpose.get(purpose)
                if not isinstance(d, dict):
                    raise _cfg(f"[pricing.{cls_name}] has no price for {purpose}")
                pricing[cls_name][purpose] = (
                    _decimal(d.get("base", "0"), f"[pricing.{cls_name}] {purpose} base"),
                    _decimal(d.get("per_epsilon", "0"), f"[pricing.{cls_name}] {purpose} per_epsilon"),
                )
            if pricing[cls_name]["public-interest"] != (Decimal(0), Decimal(0)):
                raise _cfg(f"[pricing.{cls_name}]: public-interest use is free")
        return pricing

    # -- decisions -------------------------------------------------------------------
    def price(self, price_class: str, purpose: str, epsilon: Fraction) -> Decimal:
        """The government-guided price of one job in yuan, rounded up to the fen."""
        table = self._pricing.get(price_class) or self._pricing.get("standard")
        if table is None:
            return Decimal("0.00")
        base, per = table[purpose]
        exact = Fraction(base) + Fraction(per) * epsilon
        fen = -(-exact.numerator * 100 // exact.denominator)  # ceiling
        return (Decimal(fen) / 100).quantize(Decimal("0.01"))

    def obligations(self, level: str, rule: str) -> Obligations:
        lv, r = self._levels[level], self._rules[rule]
        merged = {**lv, **{k: v for k, v in r.items() if k in lv}}
        sandbox = merged["sandbox"]
        if not at_least(r.get("sandbox", sandbox), lv["sandbox"]):
            sandbox = lv["sandbox"]  # a rule may ask for a stronger sandbox, never a weaker one
        return Obligations(
            mechanism=merged["mechanism"], max_epsilon=r["max_epsilon"], epsilon_cap=r["epsilon_cap"],
            period_days=r["period_days"], max_runs=r["max_runs"],
            min_group_size=max(int(merged["min_group_size"]), lv["min_group_size"]),
            sandbox=sandbox, approval=bool(merged["approval"]) or lv["approval"],
            dataset_epsilon_cap=lv["dataset_epsilon_cap"], dataset_period_days=lv["dataset_period_days"],
            lifetime_epsilon_cap=lv["lifetime_epsilon_cap"], expires=r["expires"],
        )

    def decide(self, req: DecisionRequest, license: License | None) -> Decision:
        def deny(gate: str, reason: str, **kw: Any) -> Decision:
            return Decision(allowed=False, policy_version=self.version, gate=gate, reason=reason, **kw)

        if license is None:
            return deny("license", f"license {req.license!r} is not registered with the data authority; "
                                   "ask the administrator to issue one")
        why = license.refusal(purpose=req.purpose, level=req.level, at=req.at)
        if why:
            return deny("license", why)
        level = self._levels.get(req.level)
        if level is None:
            return deny("level", f"classification level {req.level!r} is unknown")
        if req.tier not in level["tiers"]:
            if not level["tiers"]:
                return deny("level", f"{req.level} data is prohibited from authorized operation")
            return deny("level", f"{req.level} data does not allow {req.tier} jobs; allowed tiers: "
                                 f"{', '.join(t for t in _TIERS if t in level['tiers'])}")
        values = (license.group, req.department, req.dataset, req.level, req.tier, req.purpose)
        with self._lock:
            ok, explain = self._enforcer.enforce_ex(*values)
        if not (ok and explain):
            return deny("rule", self._explain_denial(req, license.group))
        rule = list(explain)[6]
        ob = self.obligations(req.level, rule)
        price = self.price(req.price_class, req.purpose, req.epsilon)
        if ob.expires is not None and req.at >= ob.expires:
            return deny("obligation", f"rule {rule} expired on {format_time(ob.expires)}", rule=rule, obligations=ob)
        if "he" in ob.mechanism and not req.encrypted:
            return deny("obligation",
                        f"rule {rule} requires homomorphic delivery on dataset {req.dataset}; "
                        "attach a public CKKS context (yumen submit … --he)", rule=rule, obligations=ob, price=price)
        if req.epsilon > ob.max_epsilon:
            return deny("obligation",
                        f"ε {format_epsilon(req.epsilon)} is above the {format_epsilon(ob.max_epsilon)} allowed per job "
                        f"on dataset {req.dataset} by rule {rule}; ask for ε ≤ {format_epsilon(ob.max_epsilon)}",
                        rule=rule, obligations=ob, price=price)
        return Decision(allowed=True, policy_version=self.version, rule=rule, obligations=ob, price=price)

    def _explain_denial(self, req: DecisionRequest, group: str) -> str:
        with self._lock:
            groups = {group, *self._enforcer.get_implicit_roles_for_user(group)}
        applicable = [r for r in self._p if r[0] in groups and key_match(req.department, r[1]) and key_match(req.dataset, r[2])]
        at_level = [r for r in applicable if re.search(r[3], req.level)]
        if not at_level:
            return f"no rule lets license group {group!r} use {req.level} data such as dataset {req.dataset!r}"
        for_tier = [r for r in at_level if re.search(r[4], req.tier)]
        if not for_tier:
            tiers = [t for t in _TIERS if any(re.search(r[4], t) for r in at_level)]
            return (f"tier {req.tier!r} is not allowed on {req.level} dataset {req.dataset!r}; "
                    f"allowed tiers: {', '.join(tiers) or 'none'}")
        purposes = [p for p in _PURPOSES if any(re.search(r[5], p) for r in for_tier)]
        return (f"purpose {req.purpose!r} is not allowed for a {req.tier} job on {req.level} dataset {req.dataset!r}; "
                f"allowed purposes: {', '.join(purposes) or 'none'}")
