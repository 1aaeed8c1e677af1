"""The AuditService servicer: read-only access to the log for auditors and administrators.

The broker constructs it with its :class:`~yumen.audit.TransparencyLog` and an
``authorize(context)`` callable that checks the caller's certificate role (auditor or
administrator) and raises ``YumenError(PERMISSION_DENIED)`` otherwise. Errors are mapped to
gRPC statuses through :data:`yumen.errors.ERROR_TABLE`, so the servicer behaves the same
with or without the broker's interceptor in front of it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from yumen.errors import Code, YumenError, grpc_status
from yumen.v1 import audit_pb2_grpc

from . import _convert as cv
from ._log import TransparencyLog

__all__ = ["AuditServicer", "add_audit_service", "MAX_ENTRIES_PER_CALL"]

_log = logging.getLogger(__name__)

#: The most entries one GetEntries call streams; clients page through larger ranges.
MAX_ENTRIES_PER_CALL = 100_000

Authorize = Callable[[grpc.ServicerContext], None]


def _abort(context: grpc.ServicerContext, e: Exception) -> None:
    if isinstance(e, YumenError):
        context.abort(grpc_status(e.code), e.message)
    _log.exception("AuditService internal error")
    context.abort(grpc.StatusCode.INTERNAL, "internal error")


def _unary(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: "AuditServicer", request: Any, context: grpc.ServicerContext) -> Any:
        try:
            self._authorize(context)
            return method(self, request, context)
        except Exception as e:  # noqa: BLE001 - mapped to a status, internals logged
            _abort(context, e)

    return wrapper


def _streaming(method: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    @functools.wraps(method)
    def wrapper(self: "AuditServicer", request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            self._authorize(context)
            yield from method(self, request, context)
        except Exception as e:  # noqa: BLE001
            _abort(context, e)

    return wrapper


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, log: TransparencyLog, authorize: Authorize) -> None:
        self._log = log
        self._authorize = authorize

    @_unary
    def GetCheckpoint(self, request, context):  # noqa: N802 - gRPC method name
        return cv.checkpoint_to_proto(self._log.checkpoint(), self._log.vkey)

    @_streaming
    def GetEntries(self, request, context):  # noqa: N802
        start, end = cv.entries_range(request)
        if end - start > MAX_ENTRIES_PER_CALL:
            raise YumenError(
                Code.INVALID_ARGUMENT,
                f"asked for {end - start} entries; one call streams at most {MAX_ENTRIES_PER_CALL}",
                hint="page through the range",
            )
        for index, leaf in self._log.leaves(start, end):
            yield cv.entry_to_proto(index, leaf)

    @_unary
    def GetInclusionProof(self, request, context):  # noqa: N802
        index, size = cv.inclusion_args(request)
        size = size if size is not None else self._log.size
        hashes = self._log.inclusion_proof(index, size)
        return cv.inclusion_to_proto(
            cv.InclusionProof(index=index, size=size, hashes=tuple(hashes), leaf=self._log.leaf(index))
        )

    @_unary
    def GetConsistencyProof(self, request, context):  # noqa: N802
        old, new = cv.consistency_args(request)
        new = new if new is not None else self._log.size
        hashes = self._log.consistency_proof(old, new)
        return cv.consistency_to_proto(cv.ConsistencyProof(old_size=old, new_size=new, hashes=tuple(hashes)))


def add_audit_service(server: grpc.Server, log: TransparencyLog, authorize: Authorize) -> AuditServicer:
    servicer = AuditServicer(log, authorize)
    audit_pb2_grpc.add_AuditServiceServicer_to_server(servicer, server)
    return servicer
