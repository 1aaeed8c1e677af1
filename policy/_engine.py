"""Casbin-backed policy decisions with obligations and explanations.

Casbin evaluates the request against the model in ``model.conf`` and the policy lines;
``enforce_ex`` names the line that allowed the request, and that line's trailing
fields are the obligations (mechanism, ε per job, ε cap). A denial is explained by
looking at the lines that apply to the caller's license group and dataset and saying
which condition none of them met, so the operator learns what would be allowed.

A policy version is the SHA-256 of the model and policy text together; every decision
names it, so an auditor can re-evaluate the decision under exactly that text.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from fractions import Fraction
from importlib import resources
from pathlib import Path

import casbin
from casbin.model import Model

from yumen.canonical import sha256_hex
from yumen.errors import Code, YumenError
from yumen.jobs import format_epsilon, parse_epsilon

_FIELDS = ("sub", "dom", "obj", "level", "tier", "purpose")


def default_policy_paths() -> tuple[Path, Path]:
    base = resources.files("yumen.policy")
    return Path(str(base / "model.conf")), Path(str(base / "default.csv"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecisionRequest:
    license: str
    department: str
    dataset: str
    level: str
    tier: str
    purpose: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Obligations:
    mechanism: str
    max_epsilon: Fraction
    epsilon_cap: Fraction

    def to_dict(self) -> dict[str, str]:
        return {
            "mechanism": self.mechanism,
            "max_epsilon": format_epsilon(self.max_epsilon),
            "epsilon_cap": format_epsilon(self.epsilon_cap),
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class Decision:
    allowed: bool
    policy_version: str
    rule: str = ""
    obligations: Obligations | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "allowed": self.allowed,
            "policy_version": self.policy_version,
            "rule": self.rule,
            "obligations": self.obligations.to_dict() if self.obligations else None,
            "reason": self.reason,
        }


def _strip_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))


class PolicyEngine:
    """One immutable policy version. Swap engines atomically to change policy."""

    def __init__(self, model_text: str, policy_text: str) -> None:
        self.model_text = model_text
        self.policy_text = policy_text
        self.version = "sha256:" + sha256_hex(model_text.encode() + b"\0" + policy_text.encode())
        model = Model()
        model.load_model_from_text(model_text)
        self._enforcer = casbin.Enforcer(model)
        self._lock = threading.Lock()  # pycasbin's enforcer is not documented as thread-safe
        for lineno, raw in enumerate(policy_text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = [p.strip() for p in line.split(",")]
            kind, fields = parts[0], parts[1:]
            if kind == "p":
                if len(fields) != 10:
                    raise YumenError(Code.CONFIG, f"policy line {lineno}: a p line has 10 fields, found {len(fields)}")
                for rx, name in ((fields[3], "level"), (fields[4], "tier"), (fields[5], "purpose")):
                    try:
                        re.compile(rx)
                    except re.error as e:
                        raise YumenError(Code.CONFIG, f"policy line {lineno}: bad {name} pattern {rx!r}: {e}") from None
                try:
                    parse_epsilon(fields[8])
                    parse_epsilon(fields[9])
                except YumenError as e:
                    raise YumenError(Code.CONFIG, f"policy line {lineno}: {e.message}") from None
                self._enforcer.add_policy(*fields)
            elif kind == "g":
                if len(fields) != 2:
                    raise YumenError(Code.CONFIG, f"policy line {lineno}: a g line has 2 fields")
                self._enforcer.add_grouping_policy(*fields)
            else:
                raise YumenError(Code.CONFIG, f"policy line {lineno}: unknown line kind {kind!r} (use p or g)")

    @classmethod
    def from_files(cls, model: Path, policy: Path) -> "PolicyEngine":
        try:
            return cls(Path(model).read_text(), Path(policy).read_text())
        except OSError as e:
            raise YumenError(Code.CONFIG, f"cannot read policy file: {e}") from None

    def decide(self, req: DecisionRequest) -> Decision:
        values = (req.license, req.department, req.dataset, req.level, req.tier, req.purpose)
        with self._lock:
            ok, explain = self._enforcer.enforce_ex(*values)
        if ok and explain:
            rule = list(explain)
            return Decision(
                allowed=True,
                policy_version=self.version,
                rule=rule[6],
                obligations=Obligations(
                    mechanism=rule[7],
                    max_epsilon=parse_epsilon(rule[8]),
                    epsilon_cap=parse_epsilon(rule[9]),
                ),
            )
        return Decision(allowed=False, policy_version=self.version, reason=self._explain_denial(req))

    def _explain_denial(self, req: DecisionRequest) -> str:
        with self._lock:
            groups = set(self._enforcer.get_roles_for_user(req.license))
            rules = [list(p) for p in self._enforcer.get_policy()]
        if not groups:
            return (
                f"license {req.license!r} is not registered with the data authority; "
                "ask the administrator to register or renew it"
            )
        from casbin.util import key_match

        applicable = [
            r for r in rules
            if r[0] in groups and key_match(req.department, r[1]) and key_match(req.dataset, r[2])
        ]
        at_level = [r for r in applicable if re.search(r[3], req.level)]
        if not at_level:
            return f"no rule lets license {req.license!r} use {req.level} data such as dataset {req.dataset!r}"
        for_tier = [r for r in at_level if re.search(r[4], req.tier)]
        if not for_tier:
            tiers = sorted({t for r in at_level for t in ("query", "approved-algorithm", "custom-algorithm") if re.search(r[4], t)})
            return (
                f"tier {req.tier!r} is not allowed on {req.level} dataset {req.dataset!r}; "
                f"allowed tiers: {', '.join(tiers) or 'none'}"
            )
        purposes = sorted({p for r in for_tier for p in ("public-interest", "research", "commercial") if re.search(r[5], p)})
        return (
            f"purpose {req.purpose!r} is not allowed for a {req.tier} job on {req.level} dataset {req.dataset!r}; "
            f"allowed purposes: {', '.join(purposes) or 'none'}"
        )
