"""Start-up recovery: bring the log level with the store, give back what cancelled jobs still
hold, finish jobs whose every dataset answered but whose result was never assembled, and
settle the policy in force.

:class:`Recovery` is mixed into :class:`~yumen.broker._core.Broker`; it runs under the log's
write lock (one ``recorded()`` transaction), so a replica starting up never races a live one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from yumen.jobs import JobState
from yumen.policy import PolicyBundle, PolicyEngine

from yumen.broker._store import now_ms

if TYPE_CHECKING:
    from yumen.broker._audit import BrokerAudit, LogSummary
    from yumen.broker._store import Store

log = logging.getLogger("yumen.broker._core")  # one logger for the broker's job path

__all__ = ["Recovery"]


class Recovery:
    """Start-up recovery and the completion of stalled jobs (a mixin of the broker)."""

    id: str
    store: Store
    audit: BrokerAudit
    _policy: PolicyEngine

    def complete_stalled(self, *, older_than_ms: int = 30_000) -> int:
        """Release jobs whose every dataset answered but whose result was never assembled (a
        broker died between the two). Jobs changed in the last ``older_than_ms`` are left
        alone: another replica may be assembling them right now."""
        done = 0
        for job in self.store.jobs_in_state(JobState.PENDING, JobState.RUNNING):
            if now_ms() - job.updated_ms < older_than_ms:
                continue
            partials = self.store.partials(job.job_id)
            if partials and set(partials) == set(job.request["datasets"]):
                with self._lock_for(job.job_id):
                    self._release(job.job_id, 0)
                done += 1
        return done

    def recover(self, seed: PolicyBundle | None = None) -> "LogSummary":
        """Bring the log level with the store at start-up (see module docstring).

        Since every change and its entry commit together, a store written by this version
        never lacks an entry; this repairs stores written before that, or by hand. It runs
        under the log's write lock (one :meth:`recorded` transaction), so a replica starting
        up never races a live one: live replicas wait, and whatever they committed before is
        in the log it scans. Jobs whose every dataset answered but whose result was never
        assembled are left to :meth:`complete_stalled`, which skips recent ones.

        ``seed``: the policy of the configuration files, put in force if the state has none
        yet (a first start); otherwise the version in force stays, whatever the files say.
        """
        with self.recorded() as conn:
            summary = self.audit.scan(self.audit.tlog.size_within(conn))
            self.audit.recover(self.store, summary)
            for job in self.store.jobs_in_state(JobState.CANCELLED):
                # idempotent: released rows are skipped; started ones keep their charge
                self.store.release_reservation(job.job_id, keep_started=True)
            complete = []
            for job, receipt, index in self.audit.recover_receipts(self.store, summary):
                current = self.store.get_job(job.job_id)
                if current is not None and self._advance(current, receipt):
                    complete.append((job.job_id, index))
            self._settle_policy(summary.latest_policy, seed)
        for job_id, index in complete:  # logged just now, under the lock: no other replica has them
            with self._lock_for(job_id):
                self._release(job_id, index)
        self.complete_stalled()
        return summary

    def _settle_policy(self, logged: str, seed: PolicyBundle | None) -> None:
        """At start-up, under the log's write lock: the version in force (or the seed on a first
        start) is this process's engine, and the log's last ``policy_changed`` names it."""
        current = self.store.current_policy_version()
        stored = self.store.policy_version(current) if current else None
        if stored is None:
            if seed is None:
                return
            bundle = seed
            self.store.put_policy_version(seed.version, seed.to_dict(), current=True)
        else:
            bundle = PolicyBundle(**stored)
            if seed is not None and seed.version != current:
                log.warning("policy files differ from the current policy version %s, which stays in force; "
                            "change policy with `yumen admin policy set`", current)
        engine = bundle.version == self._policy.version and self._policy or PolicyEngine(bundle)
        if logged != engine.version:
            self.audit.policy_changed(engine, previous=logged, changed_by=self.id)
        self._policy = engine
