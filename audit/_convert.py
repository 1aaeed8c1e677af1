"""Proto ↔ record conversion for the AuditService: the only module that imports ``audit_pb2``."""

from __future__ import annotations

import dataclasses

from yumen.errors import Code, YumenError
from yumen.v1 import audit_pb2 as pb

from ._merkle import HASH_SIZE
from ._note import Checkpoint

__all__ = [
    "InclusionProof",
    "ConsistencyProof",
    "SignedCheckpoint",
    "checkpoint_to_proto",
    "checkpoint_from_proto",
    "entry_to_proto",
    "entry_from_proto",
    "inclusion_to_proto",
    "inclusion_from_proto",
    "consistency_to_proto",
    "consistency_from_proto",
    "checkpoint_request",
    "entries_request",
    "inclusion_request",
    "consistency_request",
]


def _hashes(values) -> tuple[bytes, ...]:
    out = tuple(bytes(v) for v in values)
    if any(len(h) != HASH_SIZE for h in out):
        raise YumenError(Code.VERIFICATION_FAILED, "a proof element is not a 32-byte hash")
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class InclusionProof:
    index: int
    size: int
    hashes: tuple[bytes, ...]
    leaf: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.size:
            raise YumenError(Code.INVALID_ARGUMENT, f"inclusion proof for entry {self.index} in size {self.size}")
        object.__setattr__(self, "hashes", _hashes(self.hashes))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConsistencyProof:
    old_size: int
    new_size: int
    hashes: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not 0 <= self.old_size <= self.new_size:
            raise YumenError(Code.INVALID_ARGUMENT, f"consistency proof from {self.old_size} to {self.new_size}")
        object.__setattr__(self, "hashes", _hashes(self.hashes))


@dataclasses.dataclass(frozen=True, kw_only=True)
class SignedCheckpoint:
    """A checkpoint as served: the signed note (authoritative) and the key the server publishes."""

    note: str
    vkey: str

    def __post_init__(self) -> None:
        if not self.note:
            raise YumenError(Code.VERIFICATION_FAILED, "the server sent an empty checkpoint")


def checkpoint_to_proto(note: str, vkey: str) -> pb.Checkpoint:
    body = note[: note.rfind("\n\n") + 1]
    cp = Checkpoint.parse_body(body)
    return pb.Checkpoint(note=note, origin=cp.origin, size=cp.size, root=cp.root, vkey=vkey)


def checkpoint_from_proto(msg: pb.Checkpoint) -> SignedCheckpoint:
    return SignedCheckpoint(note=msg.note, vkey=msg.vkey)


def entry_to_proto(index: int, leaf: bytes) -> pb.LogEntry:
    return pb.LogEntry(index=index, leaf=leaf)


def entry_from_proto(msg: pb.LogEntry) -> tuple[int, bytes]:
    return int(msg.index), bytes(msg.leaf)


def inclusion_to_proto(p: InclusionProof) -> pb.InclusionProof:
    return pb.InclusionProof(index=p.index, size=p.size, hashes=list(p.hashes), leaf=p.leaf)


def inclusion_from_proto(msg: pb.InclusionProof) -> InclusionProof:
    return InclusionProof(index=msg.index, size=msg.size, hashes=tuple(msg.hashes), leaf=bytes(msg.leaf))


def consistency_to_proto(p: ConsistencyProof) -> pb.ConsistencyProof:
    return pb.ConsistencyProof(old_size=p.old_size, new_size=p.new_size, hashes=list(p.hashes))


def consistency_from_proto(msg: pb.ConsistencyProof) -> ConsistencyProof:
    return ConsistencyProof(old_size=msg.old_size, new_size=msg.new_size, hashes=tuple(msg.hashes))


def checkpoint_request() -> pb.GetCheckpointRequest:
    return pb.GetCheckpointRequest()


def entries_request(start: int, end: int) -> pb.GetEntriesRequest:
    return pb.GetEntriesRequest(start=start, end=end)


def inclusion_request(index: int, size: int) -> pb.GetInclusionProofRequest:
    return pb.GetInclusionProofRequest(index=index, size=size)


def consistency_request(old_size: int, new_size: int) -> pb.GetConsistencyProofRequest:
    return pb.GetConsistencyProofRequest(old_size=old_size, new_size=new_size)


def entries_range(msg: pb.GetEntriesRequest) -> tuple[int, int]:
    return int(msg.start), int(msg.end)


def inclusion_args(msg: pb.GetInclusionProofRequest) -> tuple[int, int | None]:
    return int(msg.index), (int(msg.size) or None)


def consistency_args(msg: pb.GetConsistencyProofRequest) -> tuple[int, int | None]:
    return int(msg.old_size), (int(msg.new_size) or None)
