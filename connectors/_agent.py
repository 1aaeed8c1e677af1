"""The connector's link to the broker: one long-lived outbound mTLS stream.

The department opens no inbound port. The agent dials the broker, says Hello with its
registrations, and then receives tickets and sends receipts on the same stream. When the
broker goes away it reconnects with capped exponential backoff and jitter; receipts for
jobs finished while disconnected are re-sent when the broker re-delivers their tickets.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from concurrent import futures
from typing import Any, Iterator

import grpc
from cryptography import x509

from yumen import __version__
from yumen.identity import load_private_key
from yumen.rpc import secure_channel
from yumen.v1 import connector_pb2, connector_pb2_grpc
from yumen.wire import dataset_to_proto

from yumen.errors import YumenError

from yumen.connectors._config import ConnectorConfig
from yumen.connectors._executor import Executor

log = logging.getLogger(__name__)

__all__ = ["ConnectorAgent"]

_BACKOFF_START_S = 0.5
_BACKOFF_MAX_S = 30.0



QUERY_WORKERS = 16  # at least this many query workers (see ConnectorAgent.__init__)

class ConnectorAgent:
    def __init__(self, config: ConnectorConfig) -> None:
        self.config = config
        key = load_private_key(config.tls.key)
        try:
            broker_cert = x509.load_pem_x509_certificate(config.broker_certificate.read_bytes())
        except (OSError, ValueError) as e:
            from yumen.errors import Code, YumenError

            raise YumenError(Code.CONFIG, f"cannot read the pinned broker certificate {config.broker_certificate}: {e}") from None
        self.executor = Executor(config, key, broker_cert)
        # Queries and algorithms have their own workers. An algorithm job holds its worker until
        # its release time (connectors/_timing.py), so queued algorithm jobs start when earlier
        # ones reach their deadlines, not when their code happened to finish; queries never
        # wait behind algorithms.
        # Query workers mostly wait for the state's durable commits (claim, ledger charge,
        # receipt), which concurrent workers share (yumen.groupcommit); the data work is an
        # in-process Polars plan on the bounded frame. So queries get at least QUERY_WORKERS
        # workers whatever max_parallel_jobs says: that setting bounds sandboxes, which cost
        # a process, memory and CPU each.
        self._pool = futures.ThreadPoolExecutor(max_workers=max(config.max_parallel_jobs, QUERY_WORKERS),
                                                thread_name_prefix="query")
        self._held = futures.ThreadPoolExecutor(max_workers=config.max_parallel_jobs, thread_name_prefix="algorithm")
        self._stop = threading.Event()
        self.connected = threading.Event()
        # start requests waiting for the broker's answer: (job, dataset) -> [event, answer]
        self._answers: dict[tuple[str, str], list[Any]] = {}
        self._answers_lock = threading.Lock()

    def stop(self) -> None:
        self._stop.set()

    def _hello(self, outbox: "queue.Queue[connector_pb2.ConnectorMessage | None]") -> connector_pb2.ConnectorMessage:
        """The first message of a session: every dataset that can be served now, read in full.

        It is built here, in the caller's thread, before the stream opens (not inside the
        request iterator, which gRPC consumes on a thread of its own): a SIGTERM then stops
        the connector between two datasets, never while a thread it cannot join is still
        reading a source. One dataset whose source fails (a file that cannot be read, a
        value that does not fit its column's type, a database that does not answer) is left
        out of this session and reported; the others are served. It is tried again on the
        next session.
        """
        regs = []
        for d in self.executor.datasets.values():
            if self._stop.is_set():
                break
            try:
                regs.append(d.refresh())
            except YumenError as e:  # withheld by quality thresholds, or a source that fails
                log.warning("dataset %s not offered: %s", d.base.id, e.message)
            except Exception as e:  # noqa: BLE001 - one source's bug must not take the others down
                log.error("dataset %s not offered: reading its source failed (%s)", d.base.id, type(e).__name__)
        steward = self.executor.steward
        # statements made from now on (reports finished off the job path, destructions) go
        # out as soon as they are ready; any made before travel in the Hello or just after it
        steward.listener = lambda: self._announce(outbox)
        steward.drain()  # the reports of the versions offered now travel in the Hello itself
        reports = [steward.published_report(r.id, r.version) for r in regs]
        offers = steward.verifier(self.executor.datasets).offers()
        return connector_pb2.ConnectorMessage(hello=connector_pb2.Hello(
            connector_id=self.config.id, datasets=[dataset_to_proto(r) for r in regs], software_version=__version__,
            quality=[connector_pb2.Signed(payload=p, signature=s) for p, s in filter(None, reports)],
            verification_offers=[connector_pb2.Signed(payload=p, signature=s) for p, s in offers],
        ))

    def _messages(self, outbox: "queue.Queue[connector_pb2.ConnectorMessage | None]",
                  hello: connector_pb2.ConnectorMessage) -> Iterator[connector_pb2.ConnectorMessage]:
        steward = self.executor.steward
        yield hello
        for ident, payload, signature in steward.state.unsent_destructions():
            yield connector_pb2.ConnectorMessage(destroyed=connector_pb2.Signed(payload=payload, signature=signature))
            steward.state.mark_sent(ident)
        while not self._stop.is_set():
            try:
                msg = outbox.get(timeout=15)
            except queue.Empty:
                yield connector_pb2.ConnectorMessage(heartbeat=connector_pb2.Heartbeat(at_unix_ms=int(time.time() * 1000)))
                continue
            if msg is None:
                return
            yield msg

    def _start_gate(self, outbox: "queue.Queue[connector_pb2.ConnectorMessage | None]",
                    session_over: threading.Event) -> Any:
        """Ask the broker, on this session's stream, whether a ticket may start; wait for its answer.

        Returns "" (start), the broker's reason (do not start), or None when the session ended
        or no answer came within a minute (nothing was read; the ticket is asked about again
        when the broker redelivers it)."""

        def ask(ticket: Any, digest: str) -> str | None:
            key = (ticket.job_id, ticket.dataset)
            slot: list[Any] = [threading.Event(), None]
            with self._answers_lock:
                self._answers[key] = slot
            try:
                outbox.put(connector_pb2.ConnectorMessage(start=connector_pb2.JobStart(
                    job_id=ticket.job_id, dataset=ticket.dataset, ticket_digest=digest)))
                deadline = time.monotonic() + 60
                while not slot[0].wait(0.2):
                    if session_over.is_set() or self._stop.is_set() or time.monotonic() > deadline:
                        log.warning("job %s on %s: the broker did not answer the start request", *key)
                        return None
                return slot[1]
            finally:
                with self._answers_lock:
                    if self._answers.get(key) is slot:
                        del self._answers[key]

        return ask

    def _on_start_answer(self, a: connector_pb2.JobStartAnswer) -> None:
        with self._answers_lock:
            slot = self._answers.get((a.job_id, a.dataset))
        if slot is not None:
            slot[1] = "" if a.go else (a.reason or "the broker did not let the job start")
            slot[0].set()

    def _run_ticket(self, outbox: "queue.Queue[connector_pb2.ConnectorMessage | None]", t: connector_pb2.JobTicket,
                    session_over: threading.Event | None = None) -> None:
        try:
            out = self.executor.handle(t.ticket.payload, t.ticket.signature, t.algorithm_source, t.he_context,
                                       start=self._start_gate(outbox, session_over or threading.Event()))
        except Exception:  # noqa: BLE001
            log.exception("ticket handling failed")
            return
        self._announce(outbox)  # a new version's quality report goes before the receipt that names it
        if out is not None:
            payload, sig, ciphertext = out
            outbox.put(connector_pb2.ConnectorMessage(
                receipt=connector_pb2.Receipt(receipt=connector_pb2.Signed(payload=payload, signature=sig),
                                              ciphertext=ciphertext)
            ))

    def _pool_for(self, t: connector_pb2.JobTicket) -> futures.ThreadPoolExecutor:
        """The workers a ticket runs on: queries', or the held algorithm workers. Only routing:
        the executor verifies the ticket before anything else."""
        try:
            tier = json.loads(t.ticket.payload).get("tier")
        except (ValueError, AttributeError):
            tier = None
        return self._pool if tier == "query" else self._held

    def _announce(self, outbox: "queue.Queue[connector_pb2.ConnectorMessage | None]") -> None:
        steward = self.executor.steward
        for kind, payload, signature in steward.drain():
            signed = connector_pb2.Signed(payload=payload, signature=signature)
            outbox.put(connector_pb2.ConnectorMessage(**{kind: signed}))
            if kind == "destroyed":
                import json

                body = json.loads(payload)
                steward.state.mark_sent(f"{body['dataset']}/{body['version']}")

    def _run_verification(self, outbox: "queue.Queue[connector_pb2.ConnectorMessage | None]", v: connector_pb2.VerificationOrder) -> None:
        try:
            verifier = self.executor.steward.verifier(self.executor.datasets)
            payload, signature = verifier.answer(v.order.payload, v.order.signature, v.sealed, self.executor._broker_cert)
        except YumenError as e:
            log.warning("verification order rejected: %s", e.message)
            return
        except Exception:  # noqa: BLE001
            log.exception("verification failed")
            return
        self._announce(outbox)
        outbox.put(connector_pb2.ConnectorMessage(verified=connector_pb2.Signed(payload=payload, signature=signature)))

    def _take_feedback(self, f: connector_pb2.Signed) -> None:
        try:
            self.executor.steward.on_feedback(f.payload, f.signature, self.executor._broker_cert)
        except YumenError as e:
            log.warning("feedback rejected: %s", e.message)

    def _run_reexecution(self, outbox: "queue.Queue[connector_pb2.ConnectorMessage | None]", r: connector_pb2.Reexecution) -> None:
        try:
            out = self.executor.reexecute(r.ticket.payload, r.ticket.signature, r.algorithm_source)
        except Exception:  # noqa: BLE001
            log.exception("re-execution failed")
            return
        if out is not None:
            outbox.put(connector_pb2.ConnectorMessage(reexecuted=connector_pb2.Signed(payload=out[0], signature=out[1])))

    def session(self) -> None:
        """One connection, until the stream ends. Raises grpc.RpcError on failure."""
        outbox: "queue.Queue[connector_pb2.ConnectorMessage | None]" = queue.Queue()
        hello = self._hello(outbox)
        if self._stop.is_set():
            return
        session_over = threading.Event()
        channel = secure_channel(self.config.broker, self.config.tls)
        try:
            stub = connector_pb2_grpc.ConnectorServiceStub(channel)
            responses = stub.Connect(self._messages(outbox, hello))
            stopper = threading.Thread(target=lambda: (self._stop.wait(), responses.cancel()), daemon=True)
            stopper.start()
            for msg in responses:
                kind = msg.WhichOneof("kind")
                if kind == "welcome":
                    self.connected.set()
                    self.executor.metrics.connected.set(1)
                    self.executor.metrics.reconnects.inc()
                    log.info("connected to broker %s; serving %s", msg.welcome.broker_id, ", ".join(msg.welcome.accepted_datasets))
                    print(f"connector {self.config.id} connected to broker {msg.welcome.broker_id}; "
                          f"serving {', '.join(msg.welcome.accepted_datasets) or 'no datasets'}", flush=True)
                    for refusal in msg.welcome.refused_datasets:
                        log.error("the broker refused dataset %s: %s", refusal.dataset, refusal.reason)
                        print(f"connector {self.config.id}: the broker refused dataset {refusal.dataset}: "
                              f"{refusal.reason}", flush=True)
                elif kind == "ticket":
                    self._pool_for(msg.ticket).submit(self._run_ticket, outbox, msg.ticket, session_over)
                elif kind == "start_answer":
                    self._on_start_answer(msg.start_answer)
                elif kind == "stop":
                    self.executor.stop(msg.stop.job_id, msg.stop.reason)
                elif kind == "reexecute":
                    self._held.submit(self._run_reexecution, outbox, msg.reexecute)
                elif kind == "verify":
                    self._pool.submit(self._run_verification, outbox, msg.verify)
                elif kind == "feedback":
                    self._take_feedback(msg.feedback)
        finally:
            session_over.set()
            self.connected.clear()
            self.executor.metrics.connected.set(0)
            outbox.put(None)
            channel.close()

    def run_forever(self) -> None:
        if self.config.metrics_listen:
            self.executor.metrics.serve(self.config.metrics_listen)
        if self.config.health_listen:
            from yumen.health import HealthEndpoint

            HealthEndpoint(self.config.health_listen, self.connected.is_set).start()
        backoff = _BACKOFF_START_S
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.session()
            except grpc.RpcError as e:
                if self._stop.is_set():
                    break
                log.warning("broker stream ended: %s %s", e.code(), e.details())  # type: ignore[attr-defined]
            if time.monotonic() - started > 10:
                backoff = _BACKOFF_START_S  # the link was healthy for a while: start over
            delay = backoff * (0.5 + random.random())
            backoff = min(backoff * 2, _BACKOFF_MAX_S)
            log.info("reconnecting to the broker in %.1f s", delay)
            self._stop.wait(delay)
        self._pool.shutdown(wait=True, cancel_futures=False)
        self._held.shutdown(wait=True, cancel_futures=False)
