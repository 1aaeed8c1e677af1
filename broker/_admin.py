"""The data authority's operations: licenses and policy versions.

Every change is validated completely, stored, logged, and only then takes effect. A
license that is suspended, revoked or expired stops new jobs at once (the decision reads
the registry on every request) and cancels its queued jobs that no connector has started;
their budget is given back because no data was touched.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from decimal import Decimal
from fractions import Fraction
from typing import Any

from yumen.errors import Code, YumenError, echo
from yumen.identity import Identity, Role
from yumen.jobs import JobState
from yumen.policy import License, LicenseStatus, PolicyBundle, parse_time

from yumen.broker._core import Broker

log = logging.getLogger(__name__)

__all__ = ["Administration", "LICENSE_ACTIONS"]

LICENSE_ACTIONS = ("suspend", "resume", "renew", "revoke")
_LOGGED_ACTION = {"issue": "issued", "suspend": "suspended", "resume": "updated", "renew": "updated", "revoke": "revoked"}


class Administration:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    @staticmethod
    def _admin(identity: Identity) -> None:
        if identity.role is not Role.ADMIN:
            raise YumenError(Code.PERMISSION_DENIED, "only administrator certificates may change licenses or policy")

    def issue_license(self, identity: Identity, lic: License) -> License:
        self._admin(identity)
        if self.broker.store.get_license(lic.id) is not None:
            raise YumenError(Code.ALREADY_EXISTS, f"license {lic.id} already exists",
                             hint="use `yumen admin license renew|suspend|resume|revoke`")
        lic = dataclasses.replace(lic, status=LicenseStatus.ACTIVE)
        self._store(lic, "issue", identity, "")
        return lic

    def change_license(self, identity: Identity, license_id: str, action: str, *, valid_until: str = "", reason: str = "") -> License:
        self._admin(identity)
        lic = self.broker.license(license_id)
        if lic is None:
            raise YumenError(Code.NOT_FOUND, f"no license {license_id}", hint="list them with `yumen admin license list`")
        if action not in LICENSE_ACTIONS:
            raise YumenError(Code.INVALID_ARGUMENT, f"unknown action {echo(action)}", hint=f"use one of {', '.join(LICENSE_ACTIONS)}")
        if lic.status is LicenseStatus.REVOKED:
            raise YumenError(Code.INVALID_ARGUMENT, f"license {license_id} is revoked; revocation is final",
                             hint="issue a new license")
        if action == "suspend":
            lic = dataclasses.replace(lic, status=LicenseStatus.SUSPENDED)
        elif action == "resume":
            lic = dataclasses.replace(lic, status=LicenseStatus.ACTIVE)
        elif action == "revoke":
            lic = dataclasses.replace(lic, status=LicenseStatus.REVOKED)
        else:
            if not valid_until:
                raise YumenError(Code.INVALID_ARGUMENT, "renew needs the new end of validity", hint="pass --until 2027-12-31")
            lic = dataclasses.replace(lic, valid_until=parse_time(valid_until))
        self._store(lic, action, identity, reason)
        if lic.status is not LicenseStatus.ACTIVE or lic.valid_until <= dt.datetime.now(dt.timezone.utc):
            what = f"license {lic.id} was {_LOGGED_ACTION[action]}" if action != "renew" else f"license {lic.id} has expired"
            self._cancel_queued(lic, f"{what}: {reason}" if reason else what)
        return lic

    def _store(self, lic: License, action: str, identity: Identity, reason: str) -> None:
        record = lic.to_dict()
        with self.broker.recorded():  # decisions read licenses: the change and its entry together
            if action == "issue" and self.broker.store.get_license(lic.id) is not None:
                raise YumenError(Code.ALREADY_EXISTS, f"license {lic.id} already exists",
                                 hint="use `yumen admin license renew|suspend|resume|revoke`")
            self.broker.store.put_license(record)
            self.broker.audit.license_changed(record, _LOGGED_ACTION[action], identity.name, reason)
        log.info("license %s: %s by %s", lic.id, action, identity.name)

    def _cancel_queued(self, lic: License, reason: str) -> None:
        for job in self.broker.store.jobs_in_state(JobState.PENDING):
            if job.license == lic.id:
                self.broker.cancel_unstarted(job, reason)

    def licenses(self, identity: Identity) -> list[License]:
        if identity.role not in (Role.ADMIN, Role.AUDITOR):
            raise YumenError(Code.PERMISSION_DENIED, "licenses are visible to administrators and auditors")
        return [License.from_dict(r) for r in self.broker.store.list_licenses()]

    def policy(self, identity: Identity, version: str = "") -> tuple[str, dict[str, str]]:
        if identity.role not in (Role.ADMIN, Role.AUDITOR, Role.OPERATOR):
            raise YumenError(Code.PERMISSION_DENIED, "policy text is visible to administrators, auditors and operators")
        if not version:
            return self.broker.policy.version, self.broker.policy.bundle.to_dict()
        bundle = self.broker.store.policy_version(version)
        if bundle is None:
            raise YumenError(Code.NOT_FOUND, f"no policy version {version}")
        return version, bundle

    def accounts(self, identity: Identity) -> tuple[list[tuple[str, str, str, Fraction, int]], list[tuple[str, str, Decimal, int]]]:
        """The ledger and the bill totals per operator (for replay to compare with the log)."""
        if identity.role not in (Role.ADMIN, Role.AUDITOR):
            raise YumenError(Code.PERMISSION_DENIED, "the books are visible to administrators and auditors")
        totals: dict[tuple[str, str], tuple[Decimal, int]] = {}
        for job in self.broker.store.jobs_in_state(JobState.SUCCEEDED):
            bill = (job.result or {}).get("bill") or {}
            key = (job.operator, str(bill.get("currency", "CNY")))
            amount, n = totals.get(key, (Decimal(0), 0))
            totals[key] = (amount + Decimal(str(bill.get("amount", "0"))), n + 1)
        bills = [(op, cur, amount, n) for (op, cur), (amount, n) in sorted(totals.items())]
        return self.broker.store.ledger(), bills

    def set_policy(self, identity: Identity, bundle: PolicyBundle, *, replaces: str) -> str:
        """Put ``bundle`` in force if ``replaces`` names the version in force (see
        :meth:`Broker.set_policy`). A policy that does not parse is the caller's bad input."""
        self._admin(identity)
        if not replaces:
            raise YumenError(Code.INVALID_ARGUMENT, "a policy change must name the version it replaces",
                             hint="`yumen admin policy set` does this for you; see `yumen admin policy show`")
        try:
            return self.broker.set_policy(bundle, changed_by=identity.name, replaces=replaces).version
        except YumenError as e:
            if e.code is Code.CONFIG:
                raise YumenError(Code.INVALID_ARGUMENT, f"the policy is not valid: {e.message}", hint=e.hint) from None
            raise


def license_from_fields(fields: dict[str, Any]) -> License:
    return License.from_dict(fields)
