"""``TransparencyLog``: the broker's one handle on the log.

Appends encode entries, hash them, compute every subtree the append completes, and commit
leaves and nodes together through the :class:`~yumen.audit.LogStorage`; the call returns
after the commit is durable. The in-memory state is only the *frontier* (the complete
subtrees tiling the current size, at most log2(n) hashes), rebuilt from storage on open,
so the log's memory does not grow with its size. Proofs for any size read O(log n) stored
nodes in one batch.

Thread safety: appends from many threads are group-committed (one transaction and one
fsync for whatever queued while the previous commit ran); one lock serialises the frontier.
Reads take no lock beyond a snapshot of the size, because stored nodes never change.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from yumen.errors import Code, YumenError

from ._entries import Entry, decode_entry, encode_entry
from ._merkle import (
    EMPTY_ROOT,
    NodeKey,
    consistency_node_keys,
    consistency_proof_from_nodes,
    inclusion_node_keys,
    inclusion_proof_from_nodes,
    leaf_hash,
    node_hash,
    range_node_keys,
    root_from_nodes,
)
from ._note import Checkpoint, NoteSigner, NoteVerifier
from ._storage import LogStorage, StoredNode

__all__ = ["TransparencyLog"]

_log = logging.getLogger(__name__)

# How often an append is retried after another writer got in first (see _commit).
_APPEND_ATTEMPTS = 50

# Reads of leaves are chunked so that a caller iterating a huge range holds bounded memory.
_READ_CHUNK = 10_000


class _Pending:
    """One caller's leaves waiting for a group commit, and what became of them."""

    __slots__ = ("leaves", "done", "indices", "error")

    def __init__(self, leaves: list[bytes]) -> None:
        self.leaves = leaves
        self.done = False
        self.indices: list[int] = []
        self.error: BaseException | None = None

    def outcome(self) -> list[int]:
        if self.error is not None:
            raise self.error
        return self.indices


def _extend(frontier: Sequence[tuple[int, bytes]], start: int, leaves: Sequence[bytes]) -> tuple[list[StoredNode], list[tuple[int, bytes]]]:
    """The nodes that appending ``leaves`` at ``start`` stores, and the frontier after it."""
    frontier = list(frontier)
    nodes: list[StoredNode] = []
    n = start
    for leaf in leaves:
        h = leaf_hash(leaf)
        nodes.append((0, n, h))
        level = 0
        n += 1
        m = n
        while m & 1 == 0:  # the new leaf completed a subtree one level up
            _, left = frontier.pop()
            h = node_hash(left, h)
            level += 1
            m >>= 1
            nodes.append((level, m - 1, h))
        frontier.append((level, h))
    return nodes, frontier


class TransparencyLog:
    """An append-only RFC 6962 log of :class:`~yumen.audit.Entry` records with signed checkpoints.

    ``origin`` names the log in checkpoints (e.g. ``yumen.example.gov/log``); the signing
    key's note name defaults to the origin.
    """

    def __init__(
        self,
        storage: LogStorage,
        *,
        origin: str,
        signing_key: Ed25519PrivateKey,
        key_name: str | None = None,
    ) -> None:
        self._storage = storage
        self._signer = NoteSigner(key_name or origin, signing_key)
        Checkpoint(origin=origin, size=0, root=EMPTY_ROOT)  # validates the origin
        self._origin = origin
        self._lock = threading.Lock()  # guards the frontier and size
        self._queue = threading.Condition()  # guards the group-commit queue below
        self._pending: list[_Pending] = []
        self._leader_active = False
        self._size = 0
        self._frontier: list[tuple[int, bytes]] = []  # (level, hash), largest subtree first
        self._reload()

    # ------------------------------------------------------------------ state

    def _reload(self) -> None:
        size = self._storage.size()
        keys = range_node_keys(0, size)
        nodes = self._storage.nodes(keys) if keys else {}
        self._frontier = [(level, nodes[(level, idx)]) for level, idx in keys]
        self._size = size
        _log.debug("log %s opened at size %d", self._origin, size)

    @property
    def origin(self) -> str:
        return self._origin

    @property
    def verifier(self) -> NoteVerifier:
        return self._signer.verifier

    @property
    def vkey(self) -> str:
        """The note verifier key auditors need (``<name>+<id>+<key>``)."""
        return self._signer.verifier.vkey

    @property
    def size(self) -> int:
        return self._size

    # ------------------------------------------------------------------ appends

    def append(self, entry: Entry) -> int:
        """Append one entry durably; returns its index."""
        return self.append_many([entry])[0]

    def append_many(self, entries: Sequence[Entry]) -> list[int]:
        """Append entries in one durable transaction; returns their indices, in order."""
        return self._append_encoded([encode_entry(e) for e in entries])

    def append_leaves(self, leaves: Sequence[bytes]) -> list[int]:
        """Append already-encoded leaves; each must be the exact encoding of an entry (checked)."""
        leaves = [bytes(leaf) for leaf in leaves]
        for leaf in leaves:
            decode_entry(leaf)
        return self._append_encoded(leaves)

    def _append_encoded(self, leaves: list[bytes]) -> list[int]:
        """Group commit: concurrent callers share one transaction (one fsync).

        The first caller to find no commit in flight becomes the leader: it takes every
        request queued so far, commits them in one transaction, and hands each caller its
        indices. Callers that arrive meanwhile queue up for the next leader. Each caller
        still returns only after its own leaves are durable; under load the fsync cost is
        shared instead of paid per entry (the broker appends from many gRPC threads).
        """
        if not leaves:
            return []
        mine = _Pending(leaves)
        with self._queue:
            self._pending.append(mine)
            while not mine.done and self._leader_active:
                self._queue.wait()
            if mine.done:
                return mine.outcome()
            self._leader_active = True
            batch, self._pending = self._pending, []
        try:
            start = self._commit([leaf for p in batch for leaf in p.leaves])[0]
            for p in batch:
                p.indices = list(range(start, start + len(p.leaves)))
                start += len(p.leaves)
        except BaseException as e:  # every caller in the batch learns why
            for p in batch:
                p.error = e
        finally:
            with self._queue:
                for p in batch:
                    p.done = True
                self._leader_active = False
                self._queue.notify_all()
        return mine.outcome()

    def append_within(self, conn: object, entries: Sequence[Entry]) -> list[int]:
        """Append inside the caller's open transaction on ``conn``, a connection to the database
        that holds this log's storage; returns the indices the entries get if it commits.

        This is how the broker records a change of its own state (a budget reservation, a
        policy version) and the entry that logs it in one transaction: both commit or neither
        does, and entries land in the order the state saw the changes. The storage's write
        lock is taken inside that transaction. The in-memory frontier is not touched (the
        transaction may still roll back): call :meth:`refresh` after the commit. Deliberately
        no in-process lock is taken here, so a thread holding the database's write lock never
        waits for one held by a thread that waits for the database.
        """
        leaves = [encode_entry(e) for e in entries]
        if not leaves:
            return []
        view = self._storage.within(conn)  # type: ignore[attr-defined]
        start = view.size()
        keys = range_node_keys(0, start)
        stored = view.nodes(keys) if keys else {}
        nodes, _ = _extend([(level, stored[(level, idx)]) for level, idx in keys], start, leaves)
        view.append(start=start, leaves=leaves, nodes=nodes)
        return list(range(start, start + len(leaves)))

    def _commit(self, leaves: list[bytes]) -> list[int]:
        # Another writer (a broker replica on the same PostgreSQL log) may append between our
        # reload and our append; the storage then refuses and we reload and retry, backing off
        # a little with jitter so two busy replicas do not keep colliding.
        with self._lock:
            for attempt in range(_APPEND_ATTEMPTS):
                start = self._size
                nodes, frontier = _extend(self._frontier, start, leaves)
                n = start + len(leaves)
                try:
                    self._storage.append(start=start, leaves=leaves, nodes=nodes)
                except YumenError as e:
                    if e.code is not Code.ALREADY_EXISTS or attempt == _APPEND_ATTEMPTS - 1:
                        raise
                    _log.info("log %s moved under us (another writer); reloading", self._origin)
                    time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
                    self._reload()
                    continue
                self._frontier = frontier
                self._size = n
                return list(range(start, n))
        raise YumenError(Code.INTERNAL, "unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ reads

    def refresh(self) -> int:
        """Catch up with appends made by other writers on the same storage; returns the size."""
        with self._lock:
            if self._storage.size() != self._size:
                self._reload()
            return self._size

    def _check_size(self, size: int | None) -> int:
        current = self._size
        if size is not None and isinstance(size, int) and size > current:
            current = self.refresh()
        if size is None:
            return current
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= current:
            raise YumenError(
                Code.INVALID_ARGUMENT,
                f"tree size {size} is outside 0..{current}",
                hint=f"ask for a size up to the current size {current}",
            )
        return size

    def _nodes(self, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
        return self._storage.nodes(keys) if keys else {}

    def root(self, size: int | None = None) -> bytes:
        """The tree head (MTH) at ``size`` (default: now)."""
        with self._lock:
            if size is None or size == self._size:
                frontier = list(self._frontier)
                if not frontier:
                    return EMPTY_ROOT
                h = frontier[-1][1]
                for _, left in reversed(frontier[:-1]):
                    h = node_hash(left, h)
                return h
        size = self._check_size(size)
        return root_from_nodes(size, self._nodes(range_node_keys(0, size)))

    def checkpoint(self) -> str:
        """A signed checkpoint note of the current size and root."""
        size = self.refresh()
        cp = Checkpoint(origin=self._origin, size=size, root=self.root(size))
        return cp.sign(self._signer)

    def leaf(self, index: int) -> bytes:
        self._check_index(index)
        return self._storage.leaves(index, index + 1)[0]

    def _check_index(self, index: int) -> None:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self._size:
            raise YumenError(
                Code.NOT_FOUND, f"no log entry {index} (size {self._size})", hint=f"ask for 0..{self._size - 1}"
            )

    def leaves(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        """``(index, leaf)`` for ``[start, end)``, read in chunks."""
        end = self._check_range(start, end)
        for lo in range(start, end, _READ_CHUNK):
            hi = min(end, lo + _READ_CHUNK)
            yield from zip(range(lo, hi), self._storage.leaves(lo, hi))

    def entries(self, start: int, end: int) -> Iterator[tuple[int, Entry]]:
        """``(index, decoded entry)`` for ``[start, end)``."""
        for index, leaf in self.leaves(start, end):
            yield index, decode_entry(leaf)

    def stored_entries(self, start: int, end: int) -> Iterator[tuple[int, Entry]]:
        """Like :meth:`entries`, for a caller that knows ``end`` from the storage itself (e.g.
        :meth:`size_within` under the write lock) and may be ahead of this process's view."""
        for lo in range(start, end, _READ_CHUNK):
            hi = min(end, lo + _READ_CHUNK)
            for index, leaf in zip(range(lo, hi), self._storage.leaves(lo, hi)):
                yield index, decode_entry(leaf)

    def stored_size(self) -> int:
        """The size the storage has committed, read now (other replicas' appends included)."""
        return self._storage.size()

    def entries_within(self, conn: object, start: int, end: int) -> Iterator[tuple[int, Entry]]:
        """``(index, decoded entry)`` for ``[start, end)`` read on ``conn`` inside the caller's
        transaction, so entries it appended and has not committed yet are seen too."""
        within = self._storage.within(conn)  # type: ignore[attr-defined]
        for lo in range(start, end, _READ_CHUNK):
            hi = min(end, lo + _READ_CHUNK)
            for index, leaf in zip(range(lo, hi), within.leaves(lo, hi)):
                yield index, decode_entry(leaf)

    def size_within(self, conn: object) -> int:
        """The stored size, read on ``conn`` inside the caller's transaction (see :meth:`append_within`)."""
        return self._storage.within(conn).size()  # type: ignore[attr-defined]

    def _check_range(self, start: int, end: int) -> int:
        size = self._size
        if not (isinstance(start, int) and isinstance(end, int)) or not 0 <= start <= end or end > size:
            raise YumenError(
                Code.INVALID_ARGUMENT,
                f"entry range {start}..{end} is outside the log (size {size})",
                hint="ask for 0 <= start <= end <= size",
            )
        return end

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Audit path of entry ``index`` in the tree of ``size`` (default: now)."""
        size = self._check_size(size)
        if not 0 <= index < size:
            raise YumenError(Code.INVALID_ARGUMENT, f"entry {index} is not in a tree of size {size}")
        return inclusion_proof_from_nodes(index, size, self._nodes(inclusion_node_keys(index, size)))

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        """Proof that the tree of ``new`` (default: now) extends the tree of ``old``."""
        new = self._check_size(new)
        if not 0 <= old <= new:
            raise YumenError(Code.INVALID_ARGUMENT, f"no consistency proof from {old} to {new}")
        return consistency_proof_from_nodes(old, new, self._nodes(consistency_node_keys(old, new)))

    def leaf_hash(self, index: int) -> bytes:
        self._check_index(index)
        return self._storage.nodes([(0, index)])[(0, index)]

    def close(self) -> None:
        self._storage.close()

    def __repr__(self) -> str:
        return f"TransparencyLog(origin={self._origin!r}, size={self._size}, storage={self._storage!r})"
