"""The AuditService servicer: read-only access to the log for auditors and administrators.

The broker constructs it with its :class:`~yumen.audit.TransparencyLog` and an
``authorize(context)`` callable that checks the caller's certificate role (auditor or
administrator) and raises ``YumenError(PERMISSION_DENIED)`` otherwise. Errors are mapped to
gRPC statuses by the project's one pair of decorators, :func:`yumen.rpc.rpc_method` and
:func:`yumen.rpc.rpc_stream`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from yumen.errors import Code, YumenError
from yumen.rpc import rpc_method, rpc_stream
from yumen.v1 import audit_pb2_grpc

from . import _convert as cv
from ._log import TransparencyLog

__all__ = ["AuditServicer", "add_audit_service", "MAX_ENTRIES_PER_CALL"]

_log = logging.getLogger(__name__)

#: The most entries one GetEntries call streams; clients page through larger ranges.
MAX_ENTRIES_PER_CALL = 100_000

Authorize = Callable[[grpc.ServicerContext], None]


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, log: TransparencyLog, authorize: Authorize) -> None:
        self._log = log
        self._authorize = authorize

    @rpc_method
    def GetCheckpoint(self, request, context):  # noqa: N802 - gRPC method name
        self._authorize(context)
        return cv.checkpoint_to_proto(self._log.checkpoint(), self._log.vkey)

    @rpc_stream
    def GetEntries(self, request, context):  # noqa: N802
        self._authorize(context)
        start, end = cv.entries_range(request)
        if end - start > MAX_ENTRIES_PER_CALL:
            raise YumenError(
                Code.INVALID_ARGUMENT,
                f"asked for {end - start} entries; one call streams at most {MAX_ENTRIES_PER_CALL}",
                hint="page through the range",
            )
        for index, leaf in self._log.leaves(start, end):
            yield cv.entry_to_proto(index, leaf)

    @rpc_method
    def GetInclusionProof(self, request, context):  # noqa: N802
        self._authorize(context)
        index, size = cv.inclusion_args(request)
        size = size if size is not None else self._log.size
        hashes = self._log.inclusion_proof(index, size)
        return cv.inclusion_to_proto(
            cv.InclusionProof(index=index, size=size, hashes=tuple(hashes), leaf=self._log.leaf(index))
        )

    @rpc_method
    def GetConsistencyProof(self, request, context):  # noqa: N802
        self._authorize(context)
        old, new = cv.consistency_args(request)
        new = new if new is not None else self._log.size
        hashes = self._log.consistency_proof(old, new)
        return cv.consistency_to_proto(cv.ConsistencyProof(old_size=old, new_size=new, hashes=tuple(hashes)))


def add_audit_service(server: grpc.Server, log: TransparencyLog, authorize: Authorize) -> AuditServicer:
    servicer = AuditServicer(log, authorize)
    audit_pb2_grpc.add_AuditServiceServicer_to_server(servicer, server)
    return servicer
