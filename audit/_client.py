"""Online access to a broker's AuditService, and online verification with the same checks.

:class:`AuditClient` fetches checkpoints, entries and proofs over a gRPC channel (the CLI
builds an mTLS channel); it also serves as the source of :func:`~yumen.audit.export`.
:func:`verify_online` downloads the entries and runs the offline checks on them, plus the
server's own proofs: an inclusion proof of the newest entry, and, with a state directory, a
consistency proof from the last verified checkpoint. ``full=False`` skips the download and
checks only the signed checkpoint and the server's consistency proof (cheap, for frequent
polling).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc

from yumen.errors import YumenError
from yumen.v1 import audit_pb2_grpc

from . import _convert as cv
from ._statements import Certificates, check_statements, collect_certificate
from ._entries import decode_entry
from ._merkle import leaf_hash, verify_inclusion
from ._note import Checkpoint, NoteVerifier
from ._verify import VerificationReport, VerifierState, _check_against_state, _fail, _resolve_verifier, verify_leaves

__all__ = ["AuditClient", "verify_online"]

_log = logging.getLogger(__name__)

_PAGE = 50_000


def _translate(e: grpc.RpcError) -> YumenError:
    from yumen.rpc import error_of

    return error_of(e)


class AuditClient:
    """A thin client of the AuditService; every method raises ``YumenError`` on RPC failure."""

    def __init__(self, channel: grpc.Channel, *, timeout: float = 60.0) -> None:
        self._stub = audit_pb2_grpc.AuditServiceStub(channel)
        self._timeout = timeout
        self._last: cv.SignedCheckpoint | None = None

    def signed_checkpoint(self) -> cv.SignedCheckpoint:
        try:
            self._last = cv.checkpoint_from_proto(self._stub.GetCheckpoint(cv.checkpoint_request(), timeout=self._timeout))
        except grpc.RpcError as e:
            raise _translate(e) from None
        return self._last

    def checkpoint(self) -> str:
        return self.signed_checkpoint().note

    @property
    def vkey(self) -> str:
        """The key the server publishes (unauthenticated: pin your own copy for verification)."""
        return (self._last or self.signed_checkpoint()).vkey

    def leaves(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        for lo in range(start, end, _PAGE):
            hi = min(end, lo + _PAGE)
            try:
                for msg in self._stub.GetEntries(cv.entries_request(lo, hi), timeout=self._timeout * 10):
                    yield cv.entry_from_proto(msg)
            except grpc.RpcError as e:
                raise _translate(e) from None

    def inclusion_proof(self, index: int, size: int) -> cv.InclusionProof:
        try:
            return cv.inclusion_from_proto(self._stub.GetInclusionProof(cv.inclusion_request(index, size), timeout=self._timeout))
        except grpc.RpcError as e:
            raise _translate(e) from None

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        try:
            msg = self._stub.GetConsistencyProof(cv.consistency_request(old_size, new_size), timeout=self._timeout)
        except grpc.RpcError as e:
            raise _translate(e) from None
        proof = cv.consistency_from_proto(msg)
        if (proof.old_size, proof.new_size) != (old_size, new_size):
            raise _fail(f"server: asked for a consistency proof {old_size}->{new_size}, got {proof.old_size}->{proof.new_size}")
        return list(proof.hashes)


def verify_online(
    client: AuditClient,
    vkey: str | NoteVerifier | None = None,
    state_dir: str | Path | None = None,
    *,
    full: bool = True,
    source: str = "broker",
    ca_pem: bytes | None = None,
) -> VerificationReport:
    """Verify the log a broker serves; raises ``VERIFICATION_FAILED`` saying where."""
    state = VerifierState(state_dir) if state_dir is not None else None
    signed = client.signed_checkpoint()
    verifier, pinned = _resolve_verifier(vkey, state, lambda: signed.vkey)
    try:
        cp = Checkpoint.open(signed.note, verifier)
    except YumenError as e:
        raise _fail(f"checkpoint: {e.message}", e.hint) from None
    if cp.size:
        p = client.inclusion_proof(cp.size - 1, cp.size)
        try:
            verify_inclusion(index=cp.size - 1, size=cp.size, leaf_hash=leaf_hash(p.leaf), proof=p.hashes, root=cp.root)
        except YumenError as e:
            raise _fail(f"server: the inclusion proof of entry {cp.size - 1} fails: {e.message}") from None
    if not full:
        previous, consistency = _check_against_state(
            state, verifier, cp, None, None, proof_from_server=client.consistency_proof
        )
        if state is not None:
            state.save(signed.note, verifier, None)
        return VerificationReport(
            source=source, origin=cp.origin, size=cp.size, root=cp.root,
            key=f"{verifier.name}+{verifier.key_id.hex()}", key_pinned=pinned, entries_checked=0,
            entry_types={}, previous_size=previous, consistency=consistency,
        )
    hashes = bytearray()
    types: Counter = Counter()
    expected = 0
    certs = Certificates(ca_pem)  # connector certificates, in log order: each before what it signed
    for index, leaf in client.leaves(0, cp.size):
        if index != expected:
            raise _fail(f"server: sent entry {index} where {expected} was expected")
        try:
            entry = decode_entry(leaf)
            d = entry.to_dict()
            collect_certificate(entry.TYPE, d, index, certs)
            check_statements(entry.TYPE, d, index, certs)  # receipt signatures, destruction: as offline
            types[entry.TYPE] += 1
        except YumenError as e:
            raise _fail(f"entry {index}: {e.message}") from None
        hashes += leaf_hash(leaf)
        expected += 1
    if state is not None:
        # the server's own consistency proof must agree too, not only the recomputed one
        _check_against_state(state, verifier, cp, None, bytes(hashes), proof_from_server=client.consistency_proof)
    return verify_leaves(
        source=source, note=signed.note, verifier=verifier, key_pinned=pinned, count=expected,
        leaf_hashes=bytes(hashes), types=types, state_dir=state_dir,
    )
