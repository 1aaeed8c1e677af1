"""Assemble and run a broker: store, policy, log, gRPC server with health and reflection."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from yumen.errors import Code, YumenError
from yumen.identity import Role, load_private_key
from yumen.policy import PolicyBundle, PolicyEngine
from yumen.rpc import MAX_MESSAGE_BYTES, require_role, server_credentials
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

from yumen.broker._audit import BrokerAudit, open_log
from yumen.broker._config import BrokerConfig
from yumen.broker._core import Broker
from yumen.broker._admin import Administration
from yumen.broker._service import AdminServicer, CatalogServicer, ConnectorServicer, JobServicer
from yumen.broker._guard import Guard
from yumen.broker._health import HealthServicer
from yumen.broker._store import SqliteStore, Store

log = logging.getLogger(__name__)

__all__ = ["BrokerServer", "build_broker", "release_free_memory"]


class _LazyGuard(grpc.ServerInterceptor):
    """The server is built (and its port bound) before the broker exists; calls arrive only
    after start(), by which time the guard is there."""

    def __init__(self, owner: "BrokerServer") -> None:
        self._owner = owner

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        guard = self._owner.guard
        if guard is None:
            return None
        return guard.intercept_service(continuation, details)


def release_free_memory() -> None:
    """Give memory that was freed back to the operating system (glibc's ``malloc_trim``).

    A flood of requests leaves the allocator's arenas (one per worker thread, up to eight per
    core) holding freed blocks; without a trim the process keeps them resident after the
    flood. Called by the sweeper; a no-op where glibc is not the C library.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def build_broker(config: BrokerConfig) -> Broker:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    store: Store
    log_storage: Any
    if config.store == "postgres":
        # Replicas share one PostgreSQL database for state and log; each needs the same log
        # key and origin. The DSN comes from the environment, never from the config file.
        from yumen.audit import PostgresLogStorage
        from yumen.broker._store_postgres import PostgresStore

        dsn = os.environ.get(config.postgres_dsn_env, "")
        if not dsn:
            raise YumenError(Code.CONFIG, f'[broker] store = "postgres" needs the DSN in ${config.postgres_dsn_env}',
                             hint=f"export {config.postgres_dsn_env}=postgresql://user@host:5432/db?connect_timeout=10")
        store = PostgresStore(dsn, schema=config.postgres_schema, max_connections=config.postgres_max_connections)
        log_storage = PostgresLogStorage(dsn, schema=config.postgres_schema)
    else:
        store, log_storage = SqliteStore(config.db_path), config.db_path
    tlog = open_log(log_storage, key_path=config.log_key, origin=config.log_origin)
    audit = BrokerAudit(tlog, config.id)
    from yumen.broker._steward_store import steward_store_for

    steward_store = steward_store_for(store, dsn=dsn if config.store == "postgres" else "",
                                      schema=config.postgres_schema)
    # Publish the log's note verifier key beside its signing key, for auditors to pin.
    (config.log_key.parent / "log.vkey").write_text(tlog.vkey + "\n")
    seed = PolicyBundle.from_files(config.policy_model, config.policy_rules, config.policy_settings)
    broker = Broker(
        broker_id=config.id, store=store, policy=PolicyEngine(seed), audit=audit,
        signing_key=load_private_key(config.tls.key), ticket_ttl_s=config.ticket_ttl_s,
        max_queued_per_license=config.limits.queued_jobs_per_license,
    )
    from yumen.broker._stewardship import BrokerStewardship

    broker.steward = BrokerStewardship(broker, steward_store)
    audit.quality_of = broker.steward.quality_of
    broker.recover(seed)  # under the log's write lock: never races a live replica
    from yumen.broker._billing import seed_catalogue

    broker.billing.seed(seed_catalogue(config.policy_prices))  # a first start only: afterwards the log holds the catalogue
    return broker


class BrokerServer:
    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        limits = config.limits
        # Bind first: a broker that cannot have its address must not touch the shared state.
        self.guard: Guard | None = None
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=limits.worker_threads, thread_name_prefix="rpc"),
            interceptors=[_LazyGuard(self)],
            options=[
                # gRPC turns SO_REUSEPORT on by default: a second broker on the same address
                # would then share the port silently and take half the calls.
                ("grpc.so_reuseport", 0),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", limits.largest_request),
                ("grpc.max_metadata_size", 16 * 1024),
                ("grpc.max_allowed_incoming_connections", limits.connections),
                ("grpc.max_concurrent_streams", limits.concurrent_rpcs),
                ("grpc.server_handshake_timeout_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                ("grpc.http2.max_ping_strikes", 0),
            ],
            maximum_concurrent_rpcs=limits.concurrent_rpcs,
        )
        try:
            self.port = self.server.add_secure_port(config.listen, server_credentials(config.tls))
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise YumenError(Code.CONFIG, f"cannot listen on {config.listen}: the address is in use or not available here",
                             hint="is another broker (or another program) listening there? choose another [broker] listen")
        self.broker = build_broker(config)
        self.guard = Guard(limits, self.broker.identify)
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server(CatalogServicer(self.broker), self.server)
        jobs_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(self.broker), self.server)
        connector_pb2_grpc.add_ConnectorServiceServicer_to_server(ConnectorServicer(self.broker), self.server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(Administration(self.broker)), self.server)
        from yumen.broker._steward_service import StewardshipServicer
        from yumen.v1 import stewardship_pb2, stewardship_pb2_grpc

        stewardship_pb2_grpc.add_StewardshipServiceServicer_to_server(StewardshipServicer(self.broker), self.server)
        from yumen.broker._billing_service import BillingServicer
        from yumen.v1 import billing_pb2, billing_pb2_grpc

        billing_pb2_grpc.add_BillingServiceServicer_to_server(BillingServicer(self.broker), self.server)
        self._add_audit_service()
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [
            catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"].full_name,
            jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
            connector_pb2.DESCRIPTOR.services_by_name["ConnectorService"].full_name,
            admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
            stewardship_pb2.DESCRIPTOR.services_by_name["StewardshipService"].full_name,
            billing_pb2.DESCRIPTOR.services_by_name["BillingService"].full_name,
            "yumen.v1.AuditService",
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        reflection.enable_server_reflection(names, self.server)

    def _add_audit_service(self) -> None:
        """AuditService, for auditor and administrator certificates only."""
        from yumen.audit import add_audit_service

        def authorize(context: grpc.ServicerContext) -> None:
            require_role(self.broker.identify(context), Role.AUDITOR, Role.ADMIN)

        add_audit_service(self.server, self.broker.audit.tlog, authorize)

    def _sweep(self) -> None:
        while not self._stopping.wait(self.config.sweep_interval_s):
            try:
                self.broker.sweep_queued()
                self.broker.complete_stalled()
                self.broker.expire_tickets()
            except Exception:  # noqa: BLE001 - the sweeper must outlive a transient store error
                log.exception("sweeping queued jobs failed")
            release_free_memory()

    def start(self) -> None:
        self._stopping = threading.Event()
        threading.Thread(target=self._sweep, name="sweeper", daemon=True).start()
        self.server.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.probes = None
        if self.config.health_listen:
            from yumen.health import HealthEndpoint

            self.probes = HealthEndpoint(self.config.health_listen, self.health.serving)
            self.probes.start()
        log.info("broker %s listening on %s", self.config.id, self.config.listen)

    def stop(self, grace: float = 2.0) -> None:
        self._stopping.set()
        self.health.enter_graceful_shutdown()
        if getattr(self, "probes", None) is not None:
            self.probes.stop()
        self.server.stop(grace).wait()

    def serve_forever(self) -> None:
        self.start()
        done = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        print(f"broker {self.config.id} listening on {self.config.listen}", flush=True)
        done.wait()
        self.stop()
