"""The department's stewardship of its data versions, at the connector.

* :class:`QualityGate` measures each new version (:mod:`._quality`), charges the report's
  privacy loss to the department's own ledger, signs the report, and publishes or withholds
  the version by the department's ``[quality]`` thresholds.
* Expired retained snapshots are destroyed, checked and confirmed (:mod:`._destruction`).
* Feedback operators send about a dataset arrives here, signed by the broker, and is kept
  for the department (``yumen connector feedback``).
* Verification orders are answered by :class:`yumen.connectors._verification.Verifier`.

Signed statements for the broker (quality reports, destruction confirmations) wait in
:attr:`Stewardship.outbox` and the connector's stream sends them before anything that
depends on them (a report before the first receipt naming its version).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from yumen.canonical import canonical_json
from yumen.errors import Code, YumenError
from yumen.identity import sign_payload, verify_payload
from yumen.loss import Accounting, rho_of_epsilon

from yumen.connectors._destruction import SNAPSHOT_MECHANISM, destroy_snapshot
from yumen.connectors._quality import REPORT_PURPOSE, QualityReport, build_report, check_schema, measure, report_loss
from yumen.connectors._steward_state import StewardState

log = logging.getLogger(__name__)

__all__ = ["DESTRUCTION_PURPOSE", "FEEDBACK_PURPOSE", "QualityGate", "Stewardship"]

DESTRUCTION_PURPOSE = "destruction"  # signature domain of an expired version's confirmation
FEEDBACK_PURPOSE = "quality-feedback"  # the broker's signature over feedback it forwards


class QualityGate:
    """Reports every new version once, and says whether the department publishes it."""

    def __init__(self, steward: "Stewardship") -> None:
        self._steward = steward

    def admit(self, pinned: Any) -> bool:
        """Whether to publish ``pinned``; its report is made once per version, remembered across restarts.

        When the department gates publication (``[quality] refuse`` or any threshold set),
        the report is made here, before the version can be published, and decides it.
        Otherwise the version is published at once and its report is made off the job path,
        on the stewardship worker, and sent when it is ready: measuring a large version takes
        seconds that a connector's start and a job's first pin need not wait for.
        """
        st = self._steward
        reg = pinned.registration
        stored = st.state.report(reg.id, reg.version)
        if stored is not None:
            if stored[2]:
                st.send("quality", stored[0], stored[1])
            return stored[2]
        if not st.config.quality.gates:
            st.in_background(f"quality {reg.id} {reg.version}", lambda: self.report(pinned))
            return True
        return self.report(pinned)

    def report(self, pinned: Any) -> bool:
        """Measure ``pinned``, release, judge, sign and keep its report; True when it is published."""
        st = self._steward
        reg = pinned.registration
        stored = st.state.report(reg.id, reg.version)
        if stored is not None:
            return stored[2]
        config = st.config.quality
        first_seen_ms = int(time.time() * 1000)
        previous_row = st.state.latest_published(reg.id)
        previous = QualityReport.from_payload(previous_row[0]) if previous_row else None
        import polars as pl

        schema = check_schema(pl.scan_parquet(pinned.snapshot), reg)
        try:
            bounded = pinned.frame()
            counts: dict[str, int] | None = measure(bounded.frame, reg, bins=config.bins,
                                                    rows_without_unit=bounded.rows_without_unit)
        except YumenError as e:
            log.warning("quality of %s %s not measured: %s", reg.id, reg.version[:19], e.message)
            counts = None
        accounting, loss = report_loss(config, reg)
        charged: Fraction | None = loss if counts is not None and st.charge(reg, accounting, loss) else None
        report = build_report(reg=reg, counts=counts, schema_problems=schema, config=config, loss=charged,
                              accounting=accounting, previous=previous, first_seen_ms=first_seen_ms)
        payload = report.payload()
        signature = sign_payload(st.key, REPORT_PURPOSE, payload)
        published = report.passed or not config.refuse
        st.state.put_report(reg.id, reg.version, payload, signature, published=published, first_seen_ms=first_seen_ms)
        if published:
            st.send("quality", payload, signature)
            log.info("version %s of %s published; quality %s", reg.version[:19], reg.id,
                     "passes" if report.passed else "fails: " + "; ".join(report.body["failures"]))
        else:
            log.warning("version %s of %s withheld: it fails the department's quality thresholds: %s",
                        reg.version[:19], reg.id, "; ".join(report.body["failures"]))
        return published

    def discard_snapshot(self, path: Path) -> None:
        """A withheld version's snapshot is never served: remove it."""
        if not destroy_snapshot(path):
            log.error("the snapshot %s of a withheld version could not be removed", path)

    def expire_snapshot(self, dataset: str, path: Path) -> dict[str, Any]:
        """Destroy an expired retained snapshot, check it is gone, and sign the confirmation."""
        st = self._steward
        gone = destroy_snapshot(path)
        if not gone:
            log.error("expired snapshot %s could not be destroyed", path)
        body = {
            "v": 1, "kind": "version-destroyed", "dataset": dataset, "department": st.config.department,
            "connector": st.config.id, "version": "sha256:" + path.stem,
            "items": [{"kind": "snapshot", "count": 1}], "mechanism": SNAPSHOT_MECHANISM,
            # the time the retention period ran out at this connector: a property of the
            # version's age and the department's setting, not of the data
            "at_ms": int(time.time() * 1000), "verified": gone,
        }
        payload = canonical_json(body)
        signature = sign_payload(st.key, DESTRUCTION_PURPOSE, payload)
        ident = f"{dataset}/{body['version']}"
        st.state.put_destruction(ident, payload, signature)
        st.send("destroyed", payload, signature)
        return body


class Stewardship:
    """The connector's stewardship services; one per connector."""

    def __init__(self, config: Any, key: ec.EllipticCurvePrivateKey, ledger: Any = None) -> None:
        self.config = config
        self.key = key
        self.ledger = ledger
        self.state = StewardState(config.state_dir / "steward.db")
        self.outbox: "queue.Queue[tuple[str, bytes, bytes]]" = queue.Queue()
        self.gate = QualityGate(self)
        self._verifier: Any = None
        # called when something waits in the outbox (the connected stream sends it at once)
        self.listener: Callable[[], None] | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="yumen-steward")
        self._inflight: dict[str, Future[Any]] = {}
        self._inflight_lock = threading.Lock()

    # -- signed statements for the broker -------------------------------------------------
    def send(self, kind: str, payload: bytes, signature: bytes) -> None:
        self.outbox.put((kind, payload, signature))
        listener = self.listener
        if listener is not None:
            try:
                listener()
            except Exception:  # noqa: BLE001 - the stream sends it on its next message instead
                log.exception("could not hand a %s statement to the stream", kind)

    def in_background(self, key: str, work: Callable[[], Any]) -> None:
        """Run ``work`` once on the stewardship worker (a second request for ``key`` joins the first)."""
        with self._inflight_lock:
            if key in self._inflight:
                return

            def run() -> Any:
                try:
                    return work()
                except Exception:  # noqa: BLE001 - a report that failed is made again on the next pin
                    log.exception("%s failed", key)
                    return None
                finally:
                    with self._inflight_lock:
                        self._inflight.pop(key, None)

            self._inflight[key] = self._worker.submit(run)

    def wait_idle(self, timeout: float | None = None) -> None:
        """Wait until the background work started so far has finished (tests, benchmarks, shutdown)."""
        with self._inflight_lock:
            pending = list(self._inflight.values())
        for f in pending:
            f.result(timeout=timeout)

    # -- the department's ledger -----------------------------------------------------
    def charge(self, reg: Any, accounting: Accounting, loss: Fraction) -> bool:
        """Charge a report's loss to the department's own ledger for the dataset; False when it has no room."""
        if self.ledger is None:
            return True
        lp = self.config.local_policy
        day = int(time.time() // 86400)
        period = f"{lp.period_days}d:{day // lp.period_days}"
        if accounting is Accounting.PURE:
            left = self.ledger.charge(reg.id, period, loss, lp.dataset_epsilon_cap)
        else:
            left = self.ledger.charge(reg.id, period + "/rho", loss,
                                      rho_of_epsilon(lp.dataset_epsilon_cap, reg.privacy_unit.delta))
        if left is not None:
            log.warning("the quality report of %s %s releases no noisy figures: the department's budget has no room",
                        reg.id, reg.version[:19])
            return False
        return True

    # -- what the connector's stream sends -----------------------------------------------
    def published_report(self, dataset: str, version: str) -> tuple[bytes, bytes] | None:
        stored = self.state.report(dataset, version)
        return (stored[0], stored[1]) if stored is not None and stored[2] else None

    def drain(self) -> list[tuple[str, bytes, bytes]]:
        out = []
        while True:
            try:
                out.append(self.outbox.get_nowait())
            except queue.Empty:
                return out

    # -- feedback ----------------------------------------------------------------------
    def on_feedback(self, payload: bytes, signature: bytes, broker: x509.Certificate) -> dict[str, Any]:
        """Keep feedback the broker forwarded (it signs it, so it is known to come from the broker)."""
        verify_payload(broker, FEEDBACK_PURPOSE, payload, signature)
        try:
            doc = json.loads(payload)
            ident, dataset = str(doc["id"]), str(doc["dataset"])
        except (ValueError, KeyError, TypeError):
            raise YumenError(Code.INVALID_ARGUMENT, "the feedback payload is malformed") from None
        if self.state.put_feedback(ident, dataset, payload):
            log.warning("quality feedback on %s from %s (%s): %s", dataset, doc.get("operator"), doc.get("category"),
                        str(doc.get("message", ""))[:200])
        return doc

    # -- verification ------------------------------------------------------------------
    def verifier(self, datasets: dict[str, Any]) -> Any:
        if self._verifier is None:
            from yumen.connectors._verification import Verifier

            self._verifier = Verifier(self.config, self.key, self.state, datasets)
        return self._verifier
