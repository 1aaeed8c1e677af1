"""What every call must pass before a servicer sees it: identity, role, size, form and load.

One gRPC server interceptor, :class:`Guard`, applies a table of every method the broker
serves (:func:`method_rules`), in this order:

1. **Identity and role.** The caller's certificate (and the revocation registry) says who
   it is; a role the method is not for gets ``PERMISSION_DENIED`` whatever the payload
   carries, so a caller learns nothing about validation it may not reach.
2. **Form and size.** Requests are parsed by a deserializer that never raises: bytes over
   the method's limit become ``TOO_LARGE``, bytes that are not the method's message become
   ``INVALID_ARGUMENT``. (gRPC's own handling of a deserializer that raises answers
   ``INTERNAL`` and, in grpcio 1.76, keeps about 18 KB per such call for good; a flood of
   garbage grew the broker by hundreds of megabytes.)
3. **Load.** Unary calls in flight and long-lived streams are counted per certificate, and
   streams in total; past a limit the call gets ``LIMIT_EXCEEDED`` (``RESOURCE_EXHAUSTED``)
   at once instead of waiting for a worker thread. A stream holds one of the server's worker
   threads for as long as it lasts, so without these limits one certificate could hold them
   all and freeze every other caller.

Server-wide limits (connections, concurrent RPCs, the largest message gRPC accepts) are
gRPC options set by :class:`~yumen.broker.BrokerServer` from the same :class:`Limits`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from yumen.errors import Code, YumenError
from yumen.identity import Identity, Role
from yumen.rpc import abort

log = logging.getLogger(__name__)

__all__ = ["Guard", "Limits", "Malformed", "MethodRule", "method_rules"]

KiB, MiB = 1024, 1024 * 1024


@dataclasses.dataclass(frozen=True, kw_only=True)
class Limits:
    """The broker's limits on what callers may hold; every field has a safe default.

    Set them in the ``[limits]`` table of the broker's configuration (docs/broker-state.md).
    """

    request_bytes: int = 64 * KiB              # any request not named below
    job_request_bytes: int = 4 * MiB           # SubmitJob, ExplainJob: HE public context (≤ 2 MiB) + algorithm (≤ 256 KiB)
    connector_message_bytes: int = 4 * MiB     # each message of a connector's stream: receipt + ciphertext (≤ 1 MiB)
    policy_bytes: int = 1 * MiB                # SetPolicy: model, rules and settings texts
    calls_per_identity: int = 32               # unary calls in flight per certificate (half the worker threads)
    streams_per_identity: int = 8              # long-lived streams (job watches, log pages, health watches) per certificate
    health_watches_per_identity: int = 2       # grpc.health.v1.Health/Watch streams per certificate
    streams_total: int = 40                    # long-lived streams of all callers together
    worker_threads: int = 64                   # the server's thread pool
    concurrent_rpcs: int = 256                 # calls running or queued for a thread; more get RESOURCE_EXHAUSTED
    connections: int = 512                     # open client connections
    queued_jobs_per_license: int = 200         # jobs pending or running per license

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise YumenError(Code.CONFIG, f"[limits] {f.name} must be a positive whole number, got {value!r}")
        if self.streams_total >= self.worker_threads:
            raise YumenError(
                Code.CONFIG,
                f"[limits] streams_total ({self.streams_total}) must stay below worker_threads ({self.worker_threads})",
                hint="each stream holds a worker thread; leave some for ordinary calls",
            )

    @property
    def largest_request(self) -> int:
        return max(self.request_bytes, self.job_request_bytes, self.connector_message_bytes, self.policy_bytes)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MethodRule:
    roles: frozenset[Role]
    max_bytes: int
    stream: str = ""  # non-empty: a long-lived server stream, counted under this name
    # For request streams: the servicer reads Malformed messages itself (a connector's stream
    # goes on past one bad message); otherwise the first one ends the call.
    reads_malformed: bool = False


ANYONE = frozenset(Role)
_OPERATOR = frozenset({Role.OPERATOR})
_ADMIN = frozenset({Role.ADMIN})
_OVERSEERS = frozenset({Role.ADMIN, Role.AUDITOR})
_JOB_READERS = frozenset({Role.OPERATOR, Role.ADMIN, Role.AUDITOR})


def method_rules(limits: Limits) -> dict[str, MethodRule]:
    """Every method the broker serves: who may call it, how large a request may be, and
    whether it is a long-lived stream. A method missing here is refused."""
    small = limits.request_bytes
    rules = {
        "/yumen.v1.CatalogService/ListDatasets": MethodRule(roles=ANYONE, max_bytes=small),
        "/yumen.v1.CatalogService/GetDataset": MethodRule(roles=ANYONE, max_bytes=small),
        "/yumen.v1.JobService/SubmitJob": MethodRule(roles=_OPERATOR, max_bytes=limits.job_request_bytes),
        "/yumen.v1.JobService/ExplainJob": MethodRule(roles=_OPERATOR, max_bytes=limits.job_request_bytes),
        "/yumen.v1.JobService/GetJob": MethodRule(roles=_JOB_READERS, max_bytes=small),
        "/yumen.v1.JobService/GetResult": MethodRule(roles=_JOB_READERS, max_bytes=small),
        "/yumen.v1.JobService/WatchJob": MethodRule(roles=_JOB_READERS, max_bytes=small, stream="watch"),
        "/yumen.v1.JobService/CancelJob": MethodRule(roles=_OPERATOR, max_bytes=small),
        "/yumen.v1.ConnectorService/Connect": MethodRule(roles=frozenset({Role.CONNECTOR}),
                                                         max_bytes=limits.connector_message_bytes, stream="connector",
                                                         reads_malformed=True),
        "/yumen.v1.AdminService/IssueLicense": MethodRule(roles=_ADMIN, max_bytes=small),
        "/yumen.v1.AdminService/ChangeLicense": MethodRule(roles=_ADMIN, max_bytes=small),
        "/yumen.v1.AdminService/ListLicenses": MethodRule(roles=_OVERSEERS, max_bytes=small),
        "/yumen.v1.AdminService/RevokeCertificate": MethodRule(roles=_ADMIN, max_bytes=small),
        "/yumen.v1.AdminService/ListRevoked": MethodRule(roles=_OVERSEERS, max_bytes=small),
        "/yumen.v1.AdminService/ReexecuteJob": MethodRule(roles=_OVERSEERS, max_bytes=small),
        "/yumen.v1.AdminService/GetAccounts": MethodRule(roles=_OVERSEERS, max_bytes=small),
        "/yumen.v1.AdminService/GetPolicy": MethodRule(roles=_JOB_READERS, max_bytes=small),
        "/yumen.v1.AdminService/SetPolicy": MethodRule(roles=_ADMIN, max_bytes=limits.policy_bytes),
        "/yumen.v1.AuditService/GetCheckpoint": MethodRule(roles=_OVERSEERS, max_bytes=small),
        "/yumen.v1.AuditService/GetEntries": MethodRule(roles=_OVERSEERS, max_bytes=small, stream="entries"),
        "/yumen.v1.AuditService/GetInclusionProof": MethodRule(roles=_OVERSEERS, max_bytes=small),
        "/yumen.v1.AuditService/GetConsistencyProof": MethodRule(roles=_OVERSEERS, max_bytes=small),
        "/yumen.v1.StewardshipService/GetStewardship": MethodRule(roles=ANYONE, max_bytes=small),
        "/yumen.v1.StewardshipService/SubmitFeedback": MethodRule(roles=_OPERATOR, max_bytes=small),
        "/yumen.v1.StewardshipService/Verify": MethodRule(roles=_OPERATOR, max_bytes=small),
        # caps and revenue settings by the administrator, actual prices by the operating body
        # (the catalogue refuses a kind the caller's role may not change); prices are public
        "/yumen.v1.BillingService/ChangeCatalogue": MethodRule(roles=frozenset({Role.ADMIN, Role.OPERATING_BODY}),
                                                               max_bytes=small),
        "/yumen.v1.BillingService/GetCatalogue": MethodRule(roles=ANYONE, max_bytes=small),
        "/grpc.health.v1.Health/Check": MethodRule(roles=ANYONE, max_bytes=small),
        "/grpc.health.v1.Health/Watch": MethodRule(roles=ANYONE, max_bytes=small, stream="health"),
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": MethodRule(roles=ANYONE, max_bytes=small,
                                                                                     stream="reflection"),
    }
    return rules


class Malformed:
    """What a request that cannot be parsed becomes (never ``None``: gRPC reads ``None`` from a
    deserializer as failure and answers ``INTERNAL``)."""

    __slots__ = ("code", "reason")

    def __init__(self, code: Code, reason: str) -> None:
        self.code = code
        self.reason = reason

    def error(self) -> YumenError:
        return YumenError(self.code, self.reason, hint="send a well-formed request of the method's message type"
                          if self.code is Code.INVALID_ARGUMENT else "send less in one request")


def _safe_deserializer(parse: Callable[[bytes], Any] | None, max_bytes: int, method: str) -> Callable[[bytes], Any]:
    name = method.rsplit("/", 1)[-1]

    def deserialize(data: bytes) -> Any:
        if len(data) > max_bytes:
            return Malformed(Code.TOO_LARGE, f"the {name} request is {len(data)} bytes; the limit is {max_bytes}")
        if parse is None:
            return data
        try:
            return parse(data)
        except Exception:  # noqa: BLE001 - any parse failure is the caller's malformed input
            return Malformed(Code.INVALID_ARGUMENT, f"the {name} request is not a well-formed message of its type")

    return deserialize


class _Slot:
    """One admitted call's hold on the counters; released exactly once."""

    __slots__ = ("_guard", "_keys", "_released")

    def __init__(self, guard: "Guard", keys: list[tuple[str, str]]) -> None:
        self._guard = guard
        self._keys = keys
        self._released = False

    def release(self) -> None:
        with self._guard._lock:
            if self._released:
                return
            self._released = True
            for key in self._keys:
                left = self._guard._counts[key] - 1
                if left:
                    self._guard._counts[key] = left
                else:
                    del self._guard._counts[key]


class Guard(grpc.ServerInterceptor):
    """The interceptor of the module docstring. ``identify(context)`` returns the caller's
    :class:`Identity` or raises ``YumenError`` (``UNAUTHENTICATED`` for a revoked certificate)."""

    def __init__(self, limits: Limits, identify: Callable[[grpc.ServicerContext], Identity]) -> None:
        self.limits = limits
        self._rules = method_rules(limits)
        self._identify = identify
        self._lock = threading.Lock()  # guards _counts only; never held while calling gRPC
        self._counts: dict[tuple[str, str], int] = {}

    def in_flight(self) -> dict[tuple[str, str], int]:
        """A copy of the counters: ``(certificate fingerprint or "*", kind)`` → calls held."""
        with self._lock:
            return dict(self._counts)

    # -- admission -----------------------------------------------------------------------
    @staticmethod
    def _authorize(who: Identity, rule: MethodRule) -> None:
        if who.role not in rule.roles:
            wanted = " or ".join(sorted(r.value for r in rule.roles)) or "no"
            raise YumenError(Code.PERMISSION_DENIED,
                             f"this call is for {wanted} certificates; you called as {who.role.value} {who.name!r}")

    def _admit(self, who: Identity, rule: MethodRule) -> _Slot:
        lim = self.limits
        if rule.stream:
            wanted_keys = [((who.fingerprint, "streams"), lim.streams_per_identity), (("*", "streams"), lim.streams_total)]
            if rule.stream == "health":
                wanted_keys.append(((who.fingerprint, "health"), lim.health_watches_per_identity))
        else:
            wanted_keys = [((who.fingerprint, "calls"), lim.calls_per_identity)]
        with self._lock:
            for key, limit in wanted_keys:
                if self._counts.get(key, 0) >= limit:
                    whose = "all callers together" if key[0] == "*" else f"certificate {who.name!r}"
                    what = "calls in flight" if key[1] == "calls" else ("health watches" if key[1] == "health" else "open streams")
                    raise YumenError(Code.LIMIT_EXCEEDED, f"too many {what} for {whose} (the limit is {limit})",
                                     hint="close streams you no longer read, or retry in a moment")
            for key, _ in wanted_keys:
                self._counts[key] = self._counts.get(key, 0) + 1
        return _Slot(self, [key for key, _ in wanted_keys])

    # -- wrapping ------------------------------------------------------------------------
    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None  # gRPC answers UNIMPLEMENTED
        rule = self._rules.get(details.method)
        if rule is None:
            log.error("method %s is served but has no rule in the guard's table; refused", details.method)
            rule = MethodRule(roles=frozenset(), max_bytes=self.limits.request_bytes)
        deserializer = _safe_deserializer(handler.request_deserializer, rule.max_bytes, details.method)
        if handler.unary_unary is not None:
            return handler._replace(request_deserializer=deserializer, unary_unary=self._unary(handler.unary_unary, rule))
        if handler.unary_stream is not None:
            return handler._replace(request_deserializer=deserializer,
                                    unary_stream=self._server_stream(handler.unary_stream, rule))
        if handler.stream_stream is not None:
            return handler._replace(request_deserializer=deserializer,
                                    stream_stream=self._server_stream(handler.stream_stream, rule))
        if handler.stream_unary is not None:
            return handler._replace(request_deserializer=deserializer,
                                    stream_unary=self._unary(handler.stream_unary, rule))
        return handler

    def _enter(self, request: Any, context: grpc.ServicerContext, rule: MethodRule) -> _Slot:
        """Admit the call or end it (authorization first, then form, then load)."""
        try:
            who = self._identify(context)
            self._authorize(who, rule)
            if isinstance(request, Malformed):
                raise request.error()
            slot = self._admit(who, rule)
        except YumenError as e:
            abort(context, e)
            raise  # unreachable: abort raises
        context.add_callback(slot.release)
        return slot

    def _unary(self, inner: Callable[..., Any], rule: MethodRule) -> Callable[..., Any]:
        def behavior(request: Any, context: grpc.ServicerContext) -> Any:
            slot = self._enter(request, context, rule)
            try:
                if hasattr(request, "__next__") and not rule.reads_malformed:  # a request stream
                    request = _well_formed(request, context)
                return inner(request, context)
            finally:
                slot.release()

        return behavior

    def _server_stream(self, inner: Callable[..., Any], rule: MethodRule) -> Callable[..., Any]:
        def behavior(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            slot = self._enter(request, context, rule)
            try:
                if hasattr(request, "__next__") and not rule.reads_malformed:
                    request = _well_formed(request, context)
                yield from inner(request, context)
            finally:
                slot.release()

        return behavior


def _well_formed(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
    """A request stream that ends the call at its first message that does not parse."""
    for item in requests:
        if isinstance(item, Malformed):
            abort(context, item.error())
        yield item
