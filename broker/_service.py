"""gRPC servicers of the broker: catalog, jobs, and the connectors' stream.

Thin: each method reads the caller's identity from its certificate, converts the
request with :mod:`yumen.wire`, calls :class:`~yumen.broker._core.Broker`, and converts
back. Errors are mapped by :func:`yumen.rpc.rpc_method`.
"""

from __future__ import annotations

import base64
import logging
import queue
import threading
from concurrent import futures
from typing import Any, Iterator

import grpc
from cryptography import x509

from yumen.errors import Code, YumenError, echo
from yumen.identity import Role
from yumen.rpc import abort, require_role, rpc_method, rpc_stream
from yumen.policy import PolicyBundle
from yumen.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    connector_pb2,
    connector_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
)
from yumen.wire import dataset_from_proto, dataset_to_proto, job_from_proto, license_from_proto, license_to_proto

from yumen.broker._admin import Administration
from yumen.broker._core import Broker, OutgoingControl
from yumen.broker._guard import Malformed
from yumen.broker._stewardship import OutgoingStewardship
from yumen.broker._store import JobRecord

log = logging.getLogger(__name__)


def _status(job: JobRecord) -> jobs_pb2.JobStatus:
    req = job.request
    return jobs_pb2.JobStatus(
        job_id=job.job_id, state=job.state.value, message=job.message, operator=job.operator,
        license=job.license, datasets=req["datasets"], tier=req["tier"], epsilon=req["epsilon"],
        created_unix_ms=job.created_ms, updated_unix_ms=job.updated_ms,
        matched_rule=job.decision.get("rule", ""), policy_version=job.decision.get("policy_version", ""),
        price_held=(job.decision.get("charge") or {}).get("amount", ""),
    )


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    @rpc_method
    def ListDatasets(self, request: catalog_pb2.ListDatasetsRequest, context: grpc.ServicerContext) -> catalog_pb2.ListDatasetsResponse:
        self.broker.identify(context)
        kw = request.keyword.lower()
        out = []
        for reg, online in self.broker.catalog():
            if request.department and reg.department != request.department:
                continue
            if request.level and reg.level.value != request.level:
                continue
            if kw and kw not in f"{reg.id} {reg.title} {reg.description}".lower():
                continue
            out.append(dataset_to_proto(reg, online=online))
        return catalog_pb2.ListDatasetsResponse(datasets=out)

    @rpc_method
    def GetDataset(self, request: catalog_pb2.GetDatasetRequest, context: grpc.ServicerContext) -> catalog_pb2.Dataset:
        self.broker.identify(context)
        reg, online = self.broker.dataset(request.id)
        return dataset_to_proto(reg, online=online)


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    @rpc_method
    def SubmitJob(self, request: jobs_pb2.SubmitJobRequest, context: grpc.ServicerContext) -> jobs_pb2.JobStatus:
        who = self.broker.identify(context)
        require_role(who, Role.OPERATOR)
        job = self.broker.submit(who, job_from_proto(request.job))
        return _status(job)

    @rpc_method
    def ExplainJob(self, request: jobs_pb2.SubmitJobRequest, context: grpc.ServicerContext) -> jobs_pb2.Explanation:
        out = self.broker.explain(self.broker.identify(context), job_from_proto(request.job))
        out["obligations"] = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in out["obligations"].items()}
        out["accounts"] = [jobs_pb2.BudgetAccount(**a) for a in out["accounts"]]
        quote = out.pop("quote", None) or {}
        out["price_lines"] = [jobs_pb2.PriceLine(**line) for line in quote.get("lines", [])]
        out["product"] = quote.get("product", "")
        return jobs_pb2.Explanation(**out)

    @rpc_method
    def GetJob(self, request: jobs_pb2.JobRef, context: grpc.ServicerContext) -> jobs_pb2.JobStatus:
        return _status(self.broker.get_job(self.broker.identify(context), request.job_id))

    @rpc_stream
    def WatchJob(self, request: jobs_pb2.JobRef, context: grpc.ServicerContext) -> Iterator[jobs_pb2.JobEvent]:
        stop = threading.Event()
        context.add_callback(stop.set)
        for ev in self.broker.watch(self.broker.identify(context), request.job_id, stop=stop):
            yield jobs_pb2.JobEvent(job_id=ev.job_id, state=ev.state.value, message=ev.message, at_unix_ms=ev.at_ms)

    @rpc_method
    def CancelJob(self, request: jobs_pb2.JobRef, context: grpc.ServicerContext) -> jobs_pb2.JobStatus:
        return _status(self.broker.cancel(self.broker.identify(context), request.job_id))

    @rpc_method
    def GetResult(self, request: jobs_pb2.JobRef, context: grpc.ServicerContext) -> jobs_pb2.Result:
        job = self.broker.result(self.broker.identify(context), request.job_id)
        r = job.result or {}
        return jobs_pb2.Result(
            job_id=job.job_id,
            values=[jobs_pb2.ReleasedValue(**v) for v in r.get("values", [])],
            mechanism=r.get("mechanism", ""), epsilon_spent=r.get("epsilon_spent", ""),
            result_digest=r.get("result_digest", ""),
            provenance=[jobs_pb2.Provenance(**p) for p in r.get("provenance", [])],
            log_index=int(r.get("log_index", 0)),
            ciphertext=base64.b64decode(r["ciphertext"]) if r.get("ciphertext") else b"",
            bill={k: str(v) for k, v in r.get("bill", {}).items()},
            suppressed_groups=r.get("suppressed_groups", []),
            loss={k: str(v) for k, v in r.get("loss", {}).items()},
        )


class ConnectorServicer(connector_pb2_grpc.ConnectorServiceServicer):
    """The long-lived stream a connector dials out on: tickets down, receipts up."""

    # Receipts of different jobs are independent: they are handled on a pool so that their
    # durable commits are shared (yumen.groupcommit) instead of one fsync after another on the
    # stream's reader thread. Everything else a connector sends is handled in stream order.
    RECEIPT_WORKERS = 16

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._receipts = futures.ThreadPoolExecutor(max_workers=self.RECEIPT_WORKERS, thread_name_prefix="receipt")

    def Connect(self, request_iterator: Iterator[connector_pb2.ConnectorMessage], context: grpc.ServicerContext) -> Iterator[connector_pb2.BrokerMessage]:
        try:
            who = self.broker.identify(context)
            require_role(who, Role.CONNECTOR)
            first = next(request_iterator, None)
            if isinstance(first, Malformed):
                raise first.error()
            if first is None or first.WhichOneof("kind") != "hello":
                raise YumenError(Code.INVALID_ARGUMENT, "a connector stream must start with Hello")
            if first.hello.connector_id != who.name:
                raise YumenError(Code.PERMISSION_DENIED,
                                 f"Hello names {echo(first.hello.connector_id)} but the certificate is {who.name!r}")
            regs, refused = [], []
            for d in first.hello.datasets:  # one bad registration does not take the others down
                try:
                    regs.append(dataset_from_proto(d))
                except YumenError as e:
                    log.warning("connector %s: registration of %s refused: %s", who.name, echo(d.id), e)
                    refused.append((d.id[:200], e.message))
            cert = x509.load_pem_x509_certificate(context.auth_context()["x509_pem_cert"][0])
            if self.broker.steward is not None:  # reports first: the registrations' log entries name them
                self.broker.steward.accept_hello(
                    who, cert, {r.id for r in regs}, [(q.payload, q.signature) for q in first.hello.quality],
                    [(o.payload, o.signature) for o in first.hello.verification_offers])
            link, accepted = self.broker.connect(who, cert, regs, refused)
        except YumenError as e:
            abort(context, e)
            return

        def read_receipts() -> None:
            # At most RECEIPT_WORKERS receipts of this stream in flight; any other message waits
            # for those before it (a quality report or a destruction is handled after every
            # receipt that came before it, as the connector sent them).
            slots = threading.BoundedSemaphore(self.RECEIPT_WORKERS)
            pending: set[futures.Future[None]] = set()

            def drain() -> None:
                futures.wait(list(pending))
                pending.clear()

            def handled(msg: connector_pb2.ConnectorMessage) -> None:
                try:
                    self._on_message(link, msg)
                finally:
                    slots.release()

            try:
                for msg in request_iterator:
                    if isinstance(msg, Malformed):
                        log.warning("unreadable message from connector %s ignored: %s", who.name, msg.reason)
                        continue
                    if msg.WhichOneof("kind") == "receipt":
                        slots.acquire()
                        pending.add(self._receipts.submit(handled, msg))
                        pending = {f for f in pending if not f.done()}
                        continue
                    drain()
                    self._on_message(link, msg)
            except grpc.RpcError:
                pass
            except Exception:  # noqa: BLE001 - the stream ends, the broker does not
                log.exception("the stream of connector %s failed", who.name)
            finally:
                drain()
                self.broker.disconnect(link)

        reader = threading.Thread(target=read_receipts, name=f"receipts-{who.name}", daemon=True)
        reader.start()
        context.add_callback(lambda: self.broker.disconnect(link))
        yield connector_pb2.BrokerMessage(welcome=connector_pb2.Welcome(
            broker_id=self.broker.id, accepted_datasets=accepted,
            refused_datasets=[connector_pb2.DatasetRefusal(dataset=d, reason=r) for d, r in refused]))
        while not link.closed.is_set():
            try:
                item = link.outbox.get(timeout=15)
            except queue.Empty:
                yield connector_pb2.BrokerMessage(heartbeat=connector_pb2.Heartbeat())
                continue
            if item is None:
                break
            if isinstance(item, OutgoingStewardship):
                signed = connector_pb2.Signed(payload=item.payload, signature=item.signature)
                if item.kind == "verify":
                    yield connector_pb2.BrokerMessage(verify=connector_pb2.VerificationOrder(order=signed, sealed=item.sealed))
                else:
                    yield connector_pb2.BrokerMessage(feedback=signed)
                continue
            if isinstance(item, OutgoingControl):
                if item.kind == "start":
                    yield connector_pb2.BrokerMessage(start_answer=connector_pb2.JobStartAnswer(
                        job_id=item.job_id, dataset=item.dataset, go=item.go, reason=item.reason))
                else:
                    yield connector_pb2.BrokerMessage(stop=connector_pb2.JobStop(job_id=item.job_id, reason=item.reason))
                continue
            if item.reexecution:
                yield connector_pb2.BrokerMessage(reexecute=connector_pb2.Reexecution(
                    ticket=connector_pb2.Signed(payload=item.payload, signature=item.signature),
                    algorithm_source=item.algorithm_source,
                ))
                continue
            yield connector_pb2.BrokerMessage(ticket=connector_pb2.JobTicket(
                ticket=connector_pb2.Signed(payload=item.payload, signature=item.signature),
                algorithm_source=item.algorithm_source, he_context=item.he_context,
            ))


    def _on_message(self, link: Any, msg: connector_pb2.ConnectorMessage) -> None:
        """One message from a connector. Whatever it carries is input: a message that cannot be
        read or verified is logged and dropped, and the stream goes on."""
        who = link.identity.name
        kind = msg.WhichOneof("kind")
        try:
            if kind == "reexecuted":
                self.broker.on_reexecuted(link, msg.reexecuted.payload, msg.reexecuted.signature)
            elif kind == "start":
                self.broker.on_start(link, msg.start.job_id, msg.start.dataset)
            elif kind == "receipt":
                self.broker.on_receipt(link, msg.receipt.receipt.payload, msg.receipt.receipt.signature,
                                       msg.receipt.ciphertext)
            elif kind in ("quality", "verified", "destroyed") and self.broker.steward is not None:
                self._stewardship_message(link, kind, getattr(msg, kind))
        except YumenError as e:
            log.warning("%s from %s rejected: %s", kind, who, e)
        except Exception:  # noqa: BLE001 - a bad message must not kill the stream
            log.exception("%s from %s failed", kind, who)

    def _stewardship_message(self, link: Any, kind: str, signed: connector_pb2.Signed) -> None:
        steward = self.broker.steward
        if kind == "quality":
            steward.accept_quality(link.identity, link.certificate, signed.payload, signed.signature)
        elif kind == "verified":
            steward.on_verified(link, signed.payload, signed.signature)
        else:
            steward.on_destroyed(link, signed.payload, signed.signature)


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """The data authority's RPCs: licenses and policy versions (administrator certificates)."""

    def __init__(self, admin: Administration) -> None:
        self.admin = admin

    @rpc_method
    def IssueLicense(self, request: admin_pb2.License, context: grpc.ServicerContext) -> admin_pb2.License:
        return license_to_proto(self.admin.issue_license(self.admin.broker.identify(context), license_from_proto(request)))

    @rpc_method
    def ChangeLicense(self, request: admin_pb2.LicenseChange, context: grpc.ServicerContext) -> admin_pb2.License:
        lic = self.admin.change_license(self.admin.broker.identify(context), request.id, request.action,
                                       valid_until=request.valid_until, reason=request.reason)
        return license_to_proto(lic)

    @rpc_method
    def ListLicenses(self, request: admin_pb2.ListLicensesRequest, context: grpc.ServicerContext) -> admin_pb2.ListLicensesResponse:
        return admin_pb2.ListLicensesResponse(licenses=[license_to_proto(x) for x in self.admin.licenses(self.admin.broker.identify(context))])

    @rpc_method
    def ReexecuteJob(self, request: admin_pb2.ReexecuteRequest, context: grpc.ServicerContext) -> admin_pb2.ReexecutionReport:
        results = self.admin.broker.reexecute(self.admin.broker.identify(context), request.job_id)
        return admin_pb2.ReexecutionReport(job_id=request.job_id, datasets=[
            admin_pb2.DatasetReexecution(
                dataset=r.get("dataset", ""), department=r.get("department", ""),
                dataset_version=r.get("dataset_version", ""), logged_commitment=r.get("logged_commitment", ""),
                recomputed_commitment=r.get("recomputed_commitment", ""), matches=bool(r.get("matches")),
                error=r.get("error", ""), report=r.get("report", b""), signature=r.get("signature", b""),
            ) for r in results
        ])

    @rpc_method
    def RevokeCertificate(self, request: admin_pb2.RevokeCertificateRequest, context: grpc.ServicerContext) -> admin_pb2.RevokedCertificate:
        r = self.admin.broker.revoke_certificate(self.admin.broker.identify(context), request.fingerprint.lower(),
                                                 name=request.name, reason=request.reason)
        return admin_pb2.RevokedCertificate(fingerprint=r["fingerprint"], name=r["name"], reason=r["reason"],
                                            revoked_by=r["revoked_by"], at_unix_ms=r["at_ms"])

    @rpc_method
    def ListRevoked(self, request: admin_pb2.ListRevokedRequest, context: grpc.ServicerContext) -> admin_pb2.ListRevokedResponse:
        who = self.admin.broker.identify(context)
        require_role(who, Role.ADMIN, Role.AUDITOR)
        return admin_pb2.ListRevokedResponse(certificates=[
            admin_pb2.RevokedCertificate(fingerprint=r["fingerprint"], name=r["name"], reason=r["reason"],
                                         revoked_by=r["revoked_by"], at_unix_ms=r["at_ms"])
            for r in self.admin.broker.store.list_revoked()
        ])

    @rpc_method
    def GetAccounts(self, request: admin_pb2.GetAccountsRequest, context: grpc.ServicerContext) -> admin_pb2.Accounts:
        ledger, bills = self.admin.accounts(self.admin.broker.identify(context))
        return admin_pb2.Accounts(
            ledger=[admin_pb2.LedgerRow(license=lic, dataset=ds, period=p, spent=f"{spent.numerator}/{spent.denominator}",
                                        runs=runs) for lic, ds, p, spent, runs in ledger],
            bills=[admin_pb2.BillTotal(operator=op, currency=cur, amount=str(amount), jobs=n) for op, cur, amount, n in bills],
        )

    @rpc_method
    def GetPolicy(self, request: admin_pb2.GetPolicyRequest, context: grpc.ServicerContext) -> admin_pb2.Policy:
        version, bundle = self.admin.policy(self.admin.broker.identify(context), request.version)
        return admin_pb2.Policy(version=version, **bundle)

    @rpc_method
    def SetPolicy(self, request: admin_pb2.Policy, context: grpc.ServicerContext) -> admin_pb2.Policy:
        bundle = PolicyBundle(model=request.model, rules=request.rules, settings=request.settings)
        version = self.admin.set_policy(self.admin.broker.identify(context), bundle, replaces=request.replaces)
        return admin_pb2.Policy(version=version, **bundle.to_dict())
