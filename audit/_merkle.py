"""The RFC 6962 / RFC 9162 Merkle tree: hashes, proofs and their verification.

Leaf hash ``SHA-256(0x00 ‖ leaf)``, interior node ``SHA-256(0x01 ‖ left ‖ right)``, the root
of ``n`` leaves split at the largest power of two smaller than ``n`` (RFC 9162 §2.1.1).

Proofs are generated from *complete subtree* hashes only. A node ``(level, k)`` is the hash
of the complete subtree over leaves ``[k·2^level, (k+1)·2^level)``; once written it never
changes, so a log can store every node as it appends and answer any proof for any past
size by reading O(log n) nodes instead of rehashing leaves. The RFC recursion only ever asks
for the root of ranges ``[lo, hi)`` where ``lo`` is aligned to a power of two at least as
large as the range; such a range is the right-folded chain of the complete subtrees of
its binary decomposition. This module turns a proof request into the set of node keys it
needs (:func:`inclusion_node_keys`, :func:`consistency_node_keys`), and the caller fetches
them in one batch (one SQL query for the SQLite store, array reads for :class:`MerkleTree`).

Verification follows RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency) step by
step, and raises :class:`~yumen.errors.YumenError` with ``Code.VERIFICATION_FAILED``; it
never returns ``False``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence

from yumen.errors import Code, YumenError

__all__ = [
    "HASH_SIZE",
    "EMPTY_ROOT",
    "NodeKey",
    "leaf_hash",
    "node_hash",
    "root_from_leaf_hashes",
    "range_node_keys",
    "inclusion_node_keys",
    "consistency_node_keys",
    "inclusion_proof_from_nodes",
    "consistency_proof_from_nodes",
    "root_from_nodes",
    "verify_inclusion",
    "verify_consistency",
    "MerkleTree",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

#: ``(level, index)`` of a complete subtree: leaves ``[index·2^level, (index+1)·2^level)``.
NodeKey = tuple[int, int]

_sha256 = hashlib.sha256


def leaf_hash(leaf: bytes) -> bytes:
    return _sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def _fail(message: str, hint: str = "") -> YumenError:
    return YumenError(Code.VERIFICATION_FAILED, message, hint=hint)


def _largest_power_of_two_below(n: int) -> int:
    """k with k < n <= 2k (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH straight from the RFC definition (recursive); the reference the stored tree is tested against."""
    n = len(hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return hashes[0]
    k = _largest_power_of_two_below(n)
    return node_hash(root_from_leaf_hashes(hashes[:k]), root_from_leaf_hashes(hashes[k:]))


# --------------------------------------------------------------------------- node keys


def range_node_keys(lo: int, hi: int) -> list[NodeKey]:
    """The complete subtrees that tile ``[lo, hi)``, left to right (largest first for RFC ranges)."""
    keys: list[NodeKey] = []
    while lo < hi:
        # the largest block that starts at lo, is aligned there and fits in the range
        level = (hi - lo).bit_length() - 1
        if lo:
            level = min(level, (lo & -lo).bit_length() - 1)
        keys.append((level, lo >> level))
        lo += 1 << level
    return keys


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """PATH(m, D[0:n]) (RFC 9162 §2.1.3.1) as the ranges whose roots form the path, leaf first."""
    ranges: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _largest_power_of_two_below(hi - lo)
        if index - lo < k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo = lo + k
    ranges.reverse()
    return ranges


def _consistency_ranges(old: int, new: int) -> list[tuple[int, int]]:
    """PROOF(m, D[0:n]) = SUBPROOF(m, D[0:n], true) (RFC 9162 §2.1.4.1) as ranges, in proof order."""
    ranges: list[tuple[int, int]] = []
    lo, hi, m, complete = 0, new, old, True
    while True:
        n = hi - lo
        if m == n:
            if not complete:
                ranges.append((lo, hi))
            break
        k = _largest_power_of_two_below(n)
        if m <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    ranges.reverse()
    return ranges


def _check_inclusion_args(index: int, size: int) -> None:
    if not 0 <= index < size:
        raise YumenError(
            Code.INVALID_ARGUMENT,
            f"no entry {index} in a tree of size {size}",
            hint=f"ask for an index below {size}",
        )


def _check_consistency_args(old: int, new: int) -> None:
    if not 0 <= old <= new:
        raise YumenError(
            Code.INVALID_ARGUMENT,
            f"no consistency proof from size {old} to size {new}",
            hint="the old size must be between 0 and the new size",
        )


def inclusion_node_keys(index: int, size: int) -> list[NodeKey]:
    _check_inclusion_args(index, size)
    keys = [(0, index)]
    for lo, hi in _inclusion_ranges(index, size):
        keys.extend(range_node_keys(lo, hi))
    return keys


def consistency_node_keys(old: int, new: int) -> list[NodeKey]:
    _check_consistency_args(old, new)
    if old == 0 or old == new:
        return []
    keys: list[NodeKey] = []
    for lo, hi in _consistency_ranges(old, new):
        keys.extend(range_node_keys(lo, hi))
    return keys


def _fold(keys: Sequence[NodeKey], nodes: dict[NodeKey, bytes]) -> bytes:
    h = nodes[keys[-1]]
    for key in reversed(keys[:-1]):
        h = node_hash(nodes[key], h)
    return h


def root_from_nodes(size: int, nodes: dict[NodeKey, bytes]) -> bytes:
    if size == 0:
        return EMPTY_ROOT
    return _fold(range_node_keys(0, size), nodes)


def inclusion_proof_from_nodes(index: int, size: int, nodes: dict[NodeKey, bytes]) -> list[bytes]:
    """The inclusion proof, given ``nodes`` holding at least :func:`inclusion_node_keys`."""
    _check_inclusion_args(index, size)
    return [_fold(range_node_keys(lo, hi), nodes) for lo, hi in _inclusion_ranges(index, size)]


def consistency_proof_from_nodes(old: int, new: int, nodes: dict[NodeKey, bytes]) -> list[bytes]:
    """The consistency proof, given ``nodes`` holding at least :func:`consistency_node_keys`."""
    _check_consistency_args(old, new)
    if old == 0 or old == new:
        return []
    return [_fold(range_node_keys(lo, hi), nodes) for lo, hi in _consistency_ranges(old, new)]


# --------------------------------------------------------------------------- verification


def _check_hash(value: bytes, what: str) -> None:
    if not isinstance(value, (bytes, bytearray)) or len(value) != HASH_SIZE:
        raise _fail(f"{what} is not a {HASH_SIZE}-byte SHA-256 hash")


def verify_inclusion(
    *, index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 §2.1.3.2. Raises ``VERIFICATION_FAILED`` unless the leaf is at ``index`` under ``root``."""
    if not 0 <= index < size:
        raise _fail(f"inclusion: index {index} is outside a tree of size {size}")
    _check_hash(leaf_hash, "inclusion: the leaf hash")
    _check_hash(root, "inclusion: the root")
    for i, p in enumerate(proof):
        _check_hash(p, f"inclusion: proof element {i}")
    fn, sn = index, size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            raise _fail(f"inclusion: proof for entry {index} in size {size} has too many elements ({len(proof)})")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise _fail(f"inclusion: proof for entry {index} in size {size} has too few elements ({len(proof)})")
    if not hmac.compare_digest(r, root):
        raise _fail(f"inclusion: entry {index} does not lead to the root of size {size}")


def verify_consistency(
    *, old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 §2.1.4.2. Raises ``VERIFICATION_FAILED`` unless ``new`` extends ``old`` append-only.

    The trivial cases follow the RFC's intent (and the reference implementations): from size
    0 every tree is consistent (empty proof); equal sizes need equal roots and an empty proof.
    """
    _check_hash(old_root, "consistency: the old root")
    _check_hash(new_root, "consistency: the new root")
    for i, p in enumerate(proof):
        _check_hash(p, f"consistency: proof element {i}")
    if not 0 <= old_size <= new_size:
        raise _fail(f"consistency: size went from {old_size} to {new_size}; a log never shrinks")
    if old_size == new_size:
        if proof:
            raise _fail(f"consistency: equal sizes {old_size} need an empty proof")
        if not hmac.compare_digest(old_root, new_root):
            raise _fail(
                f"consistency: two different roots for the same size {old_size} (a split view)"
            )
        return
    if old_size == 0:
        if proof:
            raise _fail("consistency: a proof from the empty tree must be empty")
        return
    if not proof:
        raise _fail(f"consistency: empty proof from size {old_size} to {new_size}")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is the first node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise _fail(f"consistency: proof from {old_size} to {new_size} has too many elements")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise _fail(f"consistency: proof from {old_size} to {new_size} has too few elements")
    if not hmac.compare_digest(fr, old_root):
        raise _fail(f"consistency: the proof does not lead to the old root of size {old_size}")
    if not hmac.compare_digest(sr, new_root):
        raise _fail(f"consistency: the proof does not lead to the new root of size {new_size}")


# --------------------------------------------------------------------------- in-memory tree


class MerkleTree:
    """An in-memory tree holding every complete subtree hash, level by level.

    Used by offline verification (an export is rebuilt here from its leaves) and as the
    reference the stored tree is tested against. Each level is one ``bytearray`` of
    concatenated 32-byte hashes, so a million leaves cost about 64 MB and no per-node
    Python objects.
    """

    def __init__(self) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def append_leaf_hashes(self, hashes: Iterable[bytes]) -> None:
        """Append leaf hashes, computing each newly completed subtree once."""
        levels = self._levels
        sha = _sha256
        for h in hashes:
            levels[0] += h
            self._size += 1
            n = self._size
            level = 0
            while n & 1 == 0:
                below = levels[level]
                pair = bytes(below[-64:])
                level += 1
                if level == len(levels):
                    levels.append(bytearray())
                levels[level] += sha(b"\x01" + pair).digest()
                n >>= 1

    def append_leaves(self, leaves: Iterable[bytes]) -> None:
        self.append_leaf_hashes(leaf_hash(x) for x in leaves)

    @classmethod
    def from_leaf_hashes(cls, hashes: bytes) -> "MerkleTree":
        """The tree over ``hashes`` (concatenated 32-byte leaf hashes), built level by level.

        The same nodes :meth:`append_leaf_hashes` stores (every complete subtree), made with
        one pass per level over a contiguous buffer instead of a loop step per leaf: about
        half the CPU time for a million leaves (offline verification builds its tree this way).
        """
        if len(hashes) % HASH_SIZE:
            raise _fail(f"leaf hashes must be a multiple of {HASH_SIZE} bytes, got {len(hashes)}")
        tree = cls()
        level = bytes(hashes)
        tree._levels = [bytearray(level)]
        tree._size = len(level) // HASH_SIZE
        sha = _sha256
        while len(level) >= 2 * HASH_SIZE:
            view = memoryview(level)
            level = b"".join([sha(b"\x01" + view[i : i + 2 * HASH_SIZE]).digest()
                              for i in range(0, len(level) - 2 * HASH_SIZE + 1, 2 * HASH_SIZE)])
            tree._levels.append(bytearray(level))
        return tree

    def node(self, key: NodeKey) -> bytes:
        level, index = key
        return bytes(self._levels[level][index * 32 : index * 32 + 32])

    def nodes(self, keys: Iterable[NodeKey]) -> dict[NodeKey, bytes]:
        return {k: self.node(k) for k in keys}

    def leaf_hash(self, index: int) -> bytes:
        _check_inclusion_args(index, self._size)
        return self.node((0, index))

    def root(self, size: int | None = None) -> bytes:
        size = self._size if size is None else size
        if not 0 <= size <= self._size:
            raise YumenError(Code.INVALID_ARGUMENT, f"no size {size} in a tree of size {self._size}")
        return root_from_nodes(size, self.nodes(range_node_keys(0, size)))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        size = self._size if size is None else size
        if size > self._size:
            raise YumenError(Code.INVALID_ARGUMENT, f"no size {size} in a tree of size {self._size}")
        return inclusion_proof_from_nodes(index, size, self.nodes(inclusion_node_keys(index, size)))

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        new = self._size if new is None else new
        if new > self._size:
            raise YumenError(Code.INVALID_ARGUMENT, f"no size {new} in a tree of size {self._size}")
        return consistency_proof_from_nodes(old, new, self.nodes(consistency_node_keys(old, new)))


NodeFetcher = Callable[[Sequence[NodeKey]], dict[NodeKey, bytes]]
