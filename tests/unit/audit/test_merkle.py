"""The tree agrees with RFC 6962 (published vectors) and its proofs verify exactly when they should."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yumen.audit import EMPTY_ROOT, MerkleTree, leaf_hash, root_from_leaf_hashes, verify_consistency, verify_inclusion
from yumen.errors import Code, YumenError

# The 8 leaves, roots and proofs of certificate-transparency-go / transparency-dev/merkle's tests.
LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f",
)]
ROOTS = [bytes.fromhex(h) for h in (
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]
# (leaf index 0-based, tree size, proof)
INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (0, 1, []),
]
CONSISTENCY = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]


def _tree(leaves):
    t = MerkleTree()
    t.append_leaves(leaves)
    return t


def test_empty_root_is_sha256_of_nothing():
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert MerkleTree().root() == EMPTY_ROOT


def test_roots_match_rfc6962_vectors_for_every_size():
    tree = _tree(LEAVES)
    for n in range(1, 9):
        assert tree.root(n) == ROOTS[n - 1], f"size {n}"
        assert root_from_leaf_hashes([leaf_hash(x) for x in LEAVES[:n]]) == ROOTS[n - 1]


@pytest.mark.parametrize("index,size,proof", INCLUSION)
def test_inclusion_proofs_match_published_vectors_and_verify(index, size, proof):
    tree = _tree(LEAVES)
    expected = [bytes.fromhex(p) for p in proof]
    assert tree.inclusion_proof(index, size) == expected
    verify_inclusion(index=index, size=size, leaf_hash=leaf_hash(LEAVES[index]), proof=expected, root=ROOTS[size - 1])


@pytest.mark.parametrize("old,new,proof", CONSISTENCY)
def test_consistency_proofs_match_published_vectors_and_verify(old, new, proof):
    tree = _tree(LEAVES)
    expected = [bytes.fromhex(p) for p in proof]
    assert tree.consistency_proof(old, new) == expected
    verify_consistency(old_size=old, new_size=new, old_root=ROOTS[old - 1], new_root=ROOTS[new - 1], proof=expected)


def _inclusion_probes(index, size, proof, root, lh):
    some = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")
    probes = [
        (index - 1, size, lh, proof, root), (index + 1, size, lh, proof, root), (index ^ 2, size, lh, proof, root),
        (index, size * 2, lh, proof, root), (index, size // 2, lh, proof, root),
        (index, size, leaf_hash(b"WrongLeaf"), proof, root), (index, size, lh, proof, EMPTY_ROOT),
        (index, size, lh, proof, some), (index, size, lh, proof + [root], root), (index, size, lh, [root] + proof, root),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 8]) + bad[i][1:]
        probes.append((index, size, lh, bad, root))
    if proof:
        probes.append((index, size, lh, proof[:-1], root))
    if len(proof) > 1:
        probes.append((index, size, lh, [proof[0], some] + proof[1:], root))
    return probes


@pytest.mark.parametrize("index,size,proof", [v for v in INCLUSION if v[2]])
def test_corrupted_inclusion_proofs_fail(index, size, proof):
    proof = [bytes.fromhex(p) for p in proof]
    for i, (idx, sz, lh, pr, rt) in enumerate(_inclusion_probes(index, size, proof, ROOTS[size - 1], leaf_hash(LEAVES[index]))):
        with pytest.raises(YumenError) as e:
            verify_inclusion(index=idx, size=sz, leaf_hash=lh, proof=pr, root=rt)
        assert e.value.code is Code.VERIFICATION_FAILED, f"probe {i}"


@pytest.mark.parametrize("old,new,proof", [v for v in CONSISTENCY if v[2]])
def test_corrupted_consistency_proofs_fail(old, new, proof):
    proof = [bytes.fromhex(p) for p in proof]
    r1, r2 = ROOTS[old - 1], ROOTS[new - 1]
    probes = [
        (old - 1, new, r1, r2, proof), (old + 1, new, r1, r2, proof), (old ^ 2, new, r1, r2, proof),
        (old, new * 2, r1, r2, proof), (old, new // 2, r1, r2, proof), (old, new, r2, r1, proof),
        (old, new, leaf_hash(b"x"), r2, proof), (old, new, r1, leaf_hash(b"x"), proof), (old, new, r1, r2, []),
        (old, new, r1, r2, proof + [r1]), (old, new, r1, r2, [r2] + proof), (old, new, r1, r2, [proof[0]] + proof),
        (old, new, r1, r2, proof[:-1]),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 16]) + bad[i][1:]
        probes.append((old, new, r1, r2, bad))
    for i, (o, n, a, b, p) in enumerate(probes):
        with pytest.raises(YumenError) as e:
            verify_consistency(old_size=o, new_size=n, old_root=a, new_root=b, proof=p)
        assert e.value.code is Code.VERIFICATION_FAILED, f"probe {i}"


def test_trivial_consistency_cases_follow_the_rfc():
    verify_consistency(old_size=0, new_size=5, old_root=EMPTY_ROOT, new_root=ROOTS[4], proof=[])
    verify_consistency(old_size=3, new_size=3, old_root=ROOTS[2], new_root=ROOTS[2], proof=[])
    with pytest.raises(YumenError, match="split view"):
        verify_consistency(old_size=3, new_size=3, old_root=ROOTS[2], new_root=ROOTS[3], proof=[])
    with pytest.raises(YumenError, match="never shrinks"):
        verify_consistency(old_size=4, new_size=3, old_root=ROOTS[3], new_root=ROOTS[2], proof=[])


@settings(max_examples=60, deadline=None)
@given(size=st.integers(min_value=1, max_value=300), data=st.data())
def test_random_inclusion_proofs_verify_and_altered_ones_fail(size, data):
    leaves = [i.to_bytes(4, "big") for i in range(size)]
    tree = _tree(leaves)
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    root = root_from_leaf_hashes([leaf_hash(x) for x in leaves])
    assert tree.root() == root
    proof = tree.inclusion_proof(index, size)
    verify_inclusion(index=index, size=size, leaf_hash=leaf_hash(leaves[index]), proof=proof, root=root)
    with pytest.raises(YumenError):
        verify_inclusion(index=index, size=size, leaf_hash=leaf_hash(b"other"), proof=proof, root=root)
    if proof:
        k = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        bad = list(proof)
        bad[k] = bytes([bad[k][0] ^ 1]) + bad[k][1:]
        with pytest.raises(YumenError):
            verify_inclusion(index=index, size=size, leaf_hash=leaf_hash(leaves[index]), proof=bad, root=root)
    if size > 1:
        other = data.draw(st.integers(min_value=0, max_value=size - 1).filter(lambda i: i != index))
        with pytest.raises(YumenError):
            verify_inclusion(index=other, size=size, leaf_hash=leaf_hash(leaves[index]), proof=proof, root=root)


@settings(max_examples=60, deadline=None)
@given(new=st.integers(min_value=1, max_value=300), data=st.data())
def test_random_consistency_proofs_verify_and_altered_ones_fail(new, data):
    leaves = [i.to_bytes(4, "big") for i in range(new)]
    tree = _tree(leaves)
    old = data.draw(st.integers(min_value=1, max_value=new))
    proof = tree.consistency_proof(old, new)
    verify_consistency(old_size=old, new_size=new, old_root=tree.root(old), new_root=tree.root(new), proof=proof)
    # a different history of the same old size is not consistent
    forked = _tree(leaves[: old - 1] + [b"forged"] + leaves[old:])
    with pytest.raises(YumenError):
        verify_consistency(old_size=old, new_size=new, old_root=tree.root(old), new_root=forked.root(new), proof=proof)
    if proof:
        k = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        bad = list(proof)
        bad[k] = bytes([bad[k][0] ^ 1]) + bad[k][1:]
        with pytest.raises(YumenError):
            verify_consistency(old_size=old, new_size=new, old_root=tree.root(old), new_root=tree.root(new), proof=bad)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 8, 9, 31, 64, 100, 1025])
def test_a_tree_built_level_by_level_holds_the_same_nodes_as_one_built_leaf_by_leaf(n: int) -> None:
    hashes = [leaf_hash(b"entry %d" % i) for i in range(n)]
    incremental = MerkleTree()
    incremental.append_leaf_hashes(hashes)
    bulk = MerkleTree.from_leaf_hashes(b"".join(hashes))
    assert bulk.size == incremental.size == n
    assert bulk.root() == incremental.root() == root_from_leaf_hashes(hashes)
    for old in range(0, n + 1, max(1, n // 7)):
        assert bulk.root(old) == incremental.root(old)
        if 0 < old:
            assert bulk.consistency_proof(old, n) == incremental.consistency_proof(old, n)
    for index in range(0, n, max(1, n // 5)):
        assert bulk.inclusion_proof(index) == incremental.inclusion_proof(index)
    bulk.append_leaf_hashes([leaf_hash(b"one more")])  # and it goes on growing like any other
    incremental.append_leaf_hashes([leaf_hash(b"one more")])
    assert bulk.root() == incremental.root()


def test_leaf_hashes_that_are_not_whole_hashes_are_refused() -> None:
    with pytest.raises(YumenError):
        MerkleTree.from_leaf_hashes(b"\x00" * 33)
