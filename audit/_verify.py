"""Offline verification: export a log to files, and verify such an export without the broker.

An export directory holds three files:

``entries.jsonl``
    one line per entry, in index order: ``{"entry": {...}, "index": N, "leaf": "<base64>"}``
    where ``leaf`` is the exact leaf bytes and ``entry`` their decoding.
``checkpoint``
    the signed checkpoint note covering exactly those entries.
``log.vkey``
    the note verifier key of the log (``<name>+<id>+<key>``).

:func:`verify_export` recomputes the whole tree from the leaves and checks, in order, the
checkpoint signature, each line (index continuity, leaf decodes to an entry, ``entry`` is
that decoding), the entry count, and the root. With a *state directory* it also checks that
the export extends the last checkpoint it verified before: the consistency proof from that
size is computed from the export's own leaves and verified against the remembered root, so
a rewritten history, a rollback or a split view (two different trees for one origin) fails.
The state directory also keeps the leaf hashes it verified, so a rewritten history is
reported with the first entry that changed. It pins the verifier key on first use.

Every failure raises ``YumenError(VERIFICATION_FAILED)`` whose message starts with where:
``entries.jsonl line 7 (entry 6): …``, ``checkpoint: …``, ``state: …``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from yumen.errors import Code, YumenError

from ._entries import _canonical_str, _entry_type_of, _reject_float
from ._statements import Certificates, check_statements, collect_certificate
from ._merkle import EMPTY_ROOT, MerkleTree, leaf_hash, verify_consistency
from ._note import Checkpoint, NoteVerifier

_STATEMENT_TYPES = frozenset({"job_executed", "stewardship"})

__all__ = [
    "ENTRIES_FILE",
    "CHECKPOINT_FILE",
    "VKEY_FILE",
    "VerificationReport",
    "LogSource",
    "export",
    "verify_export",
    "verify_leaves",
    "VerifierState",
]

_log = logging.getLogger(__name__)

ENTRIES_FILE = "entries.jsonl"
CHECKPOINT_FILE = "checkpoint"
VKEY_FILE = "log.vkey"

# Exports above this many bytes are checked by several processes (one chunk each); the
# tree itself is always built in this process.
_PARALLEL_BYTES = 64 << 20


def _fail(message: str, hint: str = "") -> YumenError:
    return YumenError(Code.VERIFICATION_FAILED, message, hint=hint)


class LogSource(Protocol):
    """What :func:`export` needs: a :class:`~yumen.audit.TransparencyLog` or an online client."""

    @property
    def vkey(self) -> str: ...

    def checkpoint(self) -> str: ...

    def leaves(self, start: int, end: int) -> Iterator[tuple[int, bytes]]: ...


@dataclasses.dataclass(frozen=True, kw_only=True)
class VerificationReport:
    """What a successful verification established."""

    source: str
    origin: str
    size: int
    root: bytes
    key: str  # "<name>+<key id>"
    key_pinned: bool  # the key was given or pinned in the state dir, not taken from the export
    entries_checked: int
    entry_types: dict[str, int]
    previous_size: int | None  # the checkpoint remembered in the state dir, if any
    consistency: str

    def __post_init__(self) -> None:
        if self.entries_checked > self.size or self.size < 0:
            raise YumenError(Code.INTERNAL, "a report cannot cover more entries than the checkpoint")

    def summary(self) -> str:
        types = ", ".join(f"{k} {v}" for k, v in sorted(self.entry_types.items())) or "none"
        lines = [
            f"verified: {self.source}",
            f"  origin      {self.origin}",
            f"  size        {self.size}",
            f"  root        {base64.b64encode(self.root).decode()} ({self.root.hex()})",
            f"  key         {self.key}" + ("" if self.key_pinned else " (taken from the export itself: pin it with --vkey or --state)"),
            f"  entries     {self.entries_checked} checked ({types})",
            f"  consistency {self.consistency}",
        ]
        return "\n".join(lines)


# --------------------------------------------------------------------------- export


def _atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def export(log: LogSource, out_dir: str | Path) -> Checkpoint:
    """Write ``entries.jsonl``, ``checkpoint`` and ``log.vkey`` for the log's current checkpoint.

    The entries are exactly those the checkpoint covers. Refuses a directory that already
    holds an export. Returns the exported checkpoint.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in (ENTRIES_FILE, CHECKPOINT_FILE, VKEY_FILE):
        if (out / name).exists():
            raise YumenError(
                Code.ALREADY_EXISTS, f"{out / name} already exists", hint="export into a new or empty directory"
            )
    vkey = log.vkey
    verifier = NoteVerifier.parse(vkey)
    note = log.checkpoint()
    cp = Checkpoint.open(note, verifier)
    tmp = out / f".{ENTRIES_FILE}.partial"
    tree = MerkleTree()
    try:
        count = _write_entries(log, cp, tmp, tree)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if count != cp.size or tree.root() != cp.root:
        tmp.unlink()
        raise _fail(
            f"the log's entries 0..{cp.size - 1} do not hash to its own checkpoint root",
            "the log's storage is damaged; do not trust it, and report this to the administrator",
        )
    os.replace(tmp, out / ENTRIES_FILE)
    _atomic_write(out / CHECKPOINT_FILE, note.encode("utf-8"))
    _atomic_write(out / VKEY_FILE, (vkey + "\n").encode())
    _log.info("exported %d entries of %s to %s", cp.size, cp.origin, out)
    return cp


def _write_entries(log: LogSource, cp: Checkpoint, path: Path, tree: MerkleTree) -> int:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        expected = 0
        for index, leaf in log.leaves(0, cp.size):
            if index != expected:
                raise YumenError(Code.INTERNAL, f"the log returned entry {index} where {expected} was expected")
            expected += 1
            tree.append_leaf_hashes([leaf_hash(leaf)])
            # the leaf is the canonical JSON of the entry, so it is embedded verbatim
            f.write(
                '{"entry":' + leaf.decode("utf-8") + ',"index":' + str(index)
                + ',"leaf":"' + base64.b64encode(leaf).decode() + '"}\n'
            )
        f.flush()
        os.fsync(f.fileno())
    return expected


# --------------------------------------------------------------------------- state


class VerifierState:
    """What a verifier remembers between runs, in one directory per log.

    ``checkpoint`` (the last verified note), ``leaf-hashes`` (the 32-byte leaf hashes it
    covered, concatenated) and ``log.vkey`` (the key pinned on first use).
    """

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)

    def pinned_vkey(self) -> NoteVerifier | None:
        path = self.dir / VKEY_FILE
        if not path.exists():
            return None
        return NoteVerifier.parse(path.read_text(encoding="utf-8"))

    def last(self, verifier: NoteVerifier, origin: str) -> tuple[Checkpoint, bytes] | None:
        path = self.dir / CHECKPOINT_FILE
        if not path.exists():
            return None
        try:
            cp = Checkpoint.open(path.read_bytes(), verifier)
        except YumenError as e:
            raise _fail(f"state: the remembered checkpoint in {path} no longer verifies: {e.message}") from None
        if cp.origin != origin:
            raise _fail(
                f"state: {self.dir} remembers log {cp.origin!r}, not {origin!r}",
                "use one state directory per log",
            )
        hashes_path = self.dir / "leaf-hashes"
        hashes = hashes_path.read_bytes() if hashes_path.exists() else b""
        if len(hashes) != 32 * cp.size:
            hashes = b""  # a light (proof-only) run remembered no leaves
        return cp, hashes

    def save(self, note: str, verifier: NoteVerifier, leaf_hashes: bytes | None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if leaf_hashes is not None:
            _atomic_write(self.dir / "leaf-hashes", leaf_hashes)
        else:
            try:
                (self.dir / "leaf-hashes").unlink()
            except FileNotFoundError:
                pass
        _atomic_write(self.dir / CHECKPOINT_FILE, note.encode("utf-8"))
        if not (self.dir / VKEY_FILE).exists():
            _atomic_write(self.dir / VKEY_FILE, (verifier.vkey + "\n").encode())


def _resolve_verifier(
    vkey: str | NoteVerifier | None, state: VerifierState | None, fallback: Callable[[], str] | None
) -> tuple[NoteVerifier, bool]:
    """The trusted key, and whether it came from the caller or the state (not the log itself)."""
    pinned = state.pinned_vkey() if state else None
    if vkey is not None:
        verifier = vkey if isinstance(vkey, NoteVerifier) else NoteVerifier.parse(vkey)
        if pinned is not None and pinned.vkey != verifier.vkey:
            raise _fail(
                f"state: the key given ({verifier.name}+{verifier.key_id.hex()}) is not the key pinned "
                f"in {state.dir} ({pinned.name}+{pinned.key_id.hex()})",  # type: ignore[union-attr]
                "a log's key does not change; if it was rotated on purpose, start a new state directory",
            )
        return verifier, True
    if pinned is not None:
        return pinned, True
    if fallback is None:
        raise YumenError(Code.INVALID_ARGUMENT, "no log verifier key given", hint="pass --vkey FILE")
    return NoteVerifier.parse(fallback()), False


def _first_difference(old: bytes, new: bytes) -> int:
    """Index of the first 32-byte hash that differs (len(old) <= len(new) assumed)."""
    lo, hi = 0, len(old) // 32
    # binary search over prefixes: bytes comparison is fast C, so this is O(n) memory reads
    while lo < hi:
        mid = (lo + hi) // 2
        if old[: (mid + 1) * 32] == new[: (mid + 1) * 32]:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _check_against_state(
    state: VerifierState | None,
    verifier: NoteVerifier,
    cp: Checkpoint,
    tree: MerkleTree | None,
    leaf_hashes: bytes | None,
    proof_from_server: Callable[[int, int], list[bytes]] | None = None,
) -> tuple[int | None, str]:
    """Check ``cp`` against the remembered checkpoint; returns (previous size, description)."""
    if state is None:
        return None, "not checked (no state directory: pass --state to detect rewrites and split views)"
    remembered = state.last(verifier, cp.origin)
    if remembered is None:
        return None, f"first verification: checkpoint of size {cp.size} remembered in {state.dir}"
    old, old_hashes = remembered
    if cp.size < old.size:
        raise _fail(
            f"state: the log now has size {cp.size}, smaller than the size {old.size} verified before (a rollback)",
            "the log's history was cut; report this checkpoint and the remembered one to the administrator",
        )
    if tree is not None:
        proof = tree.consistency_proof(old.size, cp.size)
    elif proof_from_server is not None:
        proof = proof_from_server(old.size, cp.size)
    else:  # pragma: no cover - callers pass one of the two
        raise YumenError(Code.INTERNAL, "no way to obtain a consistency proof")
    try:
        verify_consistency(old_size=old.size, new_size=cp.size, old_root=old.root, new_root=cp.root, proof=proof)
    except YumenError as e:
        where = ""
        if old_hashes and leaf_hashes is not None:
            i = _first_difference(old_hashes, leaf_hashes)
            if i < old.size:
                where = f" entry {i} differs from the entry {i} verified before;"
        raise _fail(
            f"state: the log does not extend the checkpoint of size {old.size} verified before:{where} {e.message}",
            "the history was rewritten or a different view was served; keep both checkpoints as evidence",
        ) from None
    return old.size, f"extends the checkpoint of size {old.size} verified before"


# --------------------------------------------------------------------------- line checks


def _loads(text: str | bytes) -> Any:
    return json.loads(text, parse_float=_reject_float, parse_constant=_reject_float)


_LINE_HEAD = b'{"entry":'
_LEAF_KEY = b',"leaf":"'


def _check_lines(lines: Iterable[tuple[int, bytes]], first_index: int | None,
                 certs: Certificates) -> tuple[int, int, bytes, Counter]:
    """Check export lines; returns (first index, count, concatenated leaf hashes, type counts).

    ``lines`` yields ``(line number, raw line)``. Continuity is checked within the lines,
    and against ``first_index`` when it is known.

    Hot path: lines as :func:`export` writes them embed the leaf verbatim as the entry
    (``{"entry":<leaf>,"index":N,"leaf":"<base64>"}``), so comparing bytes proves that the
    entry *is* the leaf and the index is N, without parsing the line. The leaf is then
    parsed once, validated, and re-encoded to prove it is canonical. Any other layout (an
    export written by other tooling, or an edited line) takes the general path, which
    parses the line and compares the entry with the leaf's decoding.
    """
    hashes = bytearray()
    types: Counter = Counter()
    expected = first_index
    start: int | None = None
    count = 0
    a2b = binascii.a2b_base64
    sha = hashlib.sha256
    decode = json.JSONDecoder(parse_float=_reject_float, parse_constant=_reject_float).decode
    for lineno, raw in lines:
        leaf = None
        k = raw.rfind(_LEAF_KEY)
        if k > 0 and raw.startswith(_LINE_HEAD) and raw.endswith(b'"}\n'):
            try:
                leaf = a2b(raw[k + 9 : -3], strict_mode=True)
            except (binascii.Error, ValueError):
                leaf = None
            if leaf is not None:
                tail = raw[9 + len(leaf) : k]
                if raw[9 : 9 + len(leaf)] != leaf or not tail.startswith(b',"index":'):
                    leaf = None
                else:
                    try:
                        index = int(tail[9:])
                    except ValueError:
                        leaf = None
                    else:
                        if b"%d" % index != tail[9:]:
                            leaf = None
        if leaf is None:
            index, leaf = _general_line(lineno, raw)
        if expected is None:
            expected = index
        if index != expected:
            what = "an entry is missing or entries were reordered" if index > expected else "an entry is repeated, inserted or reordered"
            raise _fail(f"{ENTRIES_FILE} line {lineno}: index {index} where {expected} was expected ({what})")
        if start is None:
            start = index
        expected += 1
        try:
            text = leaf.decode("utf-8")
            d = decode(text)
            entry_type = _entry_type_of(d)
            if _canonical_str(d) != text:
                raise _fail("the leaf is not in canonical encoding (sorted keys, no spaces, UTF-8)")
            if entry_type in _STATEMENT_TYPES:
                check_statements(entry_type, d, index, certs)  # signatures, destruction: see _statements
        except (UnicodeDecodeError, ValueError) as e:
            raise _fail(f"{ENTRIES_FILE} line {lineno} (entry {index}): the leaf is not UTF-8 JSON: {e}") from None
        except YumenError as e:
            raise _fail(f"{ENTRIES_FILE} line {lineno} (entry {index}): the leaf is not a valid entry: {e.message}") from None
        types[entry_type] += 1
        hashes += sha(b"\x00" + leaf).digest()
        count += 1
    return (start if start is not None else (first_index or 0)), count, bytes(hashes), types


def _general_line(lineno: int, raw: bytes) -> tuple[int, bytes]:
    """Parse one line of any JSON layout; returns (index, leaf) once the entry matches the leaf."""
    where = f"{ENTRIES_FILE} line {lineno}"
    try:
        rec = _loads(raw)
    except (ValueError, YumenError) as e:
        raise _fail(f"{where}: not a JSON object: {getattr(e, 'message', e)}") from None
    if type(rec) is not dict or rec.keys() != {"entry", "index", "leaf"}:
        raise _fail(f"{where}: a line holds exactly the keys entry, index, leaf")
    index = rec["index"]
    if type(index) is not int:
        raise _fail(f"{where}: index is not an integer")
    try:
        leaf = base64.b64decode(rec["leaf"], validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise _fail(f"{where} (entry {index}): leaf is not base64") from None
    try:
        leaf_value = _loads(leaf)
    except (ValueError, YumenError):
        leaf_value = None  # reported below as a mismatch or as an invalid leaf
    # compared as canonical text, so that 1 and true (equal in Python) still differ
    if leaf_value is None or _canonical_str(leaf_value) != _canonical_str(rec["entry"]):
        raise _fail(f"{where} (entry {index}): the decoded entry does not match the leaf bytes (one of them was altered)")
    return index, leaf


def _chunk_worker(path: str, begin: int, end: int, first_lineno: int, certs: Certificates) -> tuple[Any, ...]:
    """One process's share; a failure comes back as data (YumenError does not pickle)."""
    def numbered() -> Iterator[tuple[int, bytes]]:
        with open(path, "rb") as f:
            f.seek(begin)
            pos, lineno = begin, first_lineno
            for line in f:
                if pos >= end:
                    return
                yield lineno, line
                pos += len(line)
                lineno += 1

    try:
        return ("ok", *_check_lines(numbered(), None, certs))
    except YumenError as e:
        return ("failed", e.message, e.hint)


def _line_chunks(path: Path, parts: int) -> list[tuple[int, int, int]]:
    """Split the file at line boundaries into ``parts`` byte ranges with their first line numbers."""
    size = path.stat().st_size
    bounds = [0]
    with open(path, "rb") as f:
        for i in range(1, parts):
            f.seek(max(bounds[-1], size * i // parts))
            f.readline()
            bounds.append(f.tell())
        bounds.append(size)
        chunks = []
        lineno = 1
        for a, b in zip(bounds, bounds[1:]):
            if b <= a:
                continue
            chunks.append((a, b, lineno))
            f.seek(a)
            lineno += f.read(b - a).count(b"\n")
    return chunks


def _certificates(path: Path, ca_pem: bytes | None) -> Certificates:
    """The connector certificates the export carries, found by a byte search (few lines hold one)."""
    import mmap

    certs = Certificates(ca_pem)
    decode = json.JSONDecoder(parse_float=_reject_float, parse_constant=_reject_float).decode
    if path.stat().st_size == 0:
        return certs
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        pos = 0
        while True:
            hit = mm.find(b"BEGIN CERTIFICATE", pos)
            if hit < 0:
                return certs
            start = mm.rfind(b"\n", 0, hit) + 1
            end = mm.find(b"\n", hit)
            end = len(mm) if end < 0 else end + 1
            lineno = mm[:start].count(b"\n") + 1
            try:
                index, leaf = _general_line(lineno, mm[start:end])
                d = decode(leaf.decode("utf-8"))
                collect_certificate(_entry_type_of(d), d, index, certs)
            except (UnicodeDecodeError, ValueError):
                pass  # reported with its line by the full check
            except YumenError as e:
                raise _fail(f"{ENTRIES_FILE} line {lineno}: {e.message}") from None
            pos = end


def _check_file(path: Path, workers: int | None, ca_pem: bytes | None = None) -> tuple[int, bytes, Counter]:
    """All lines of an export file: (count, leaf hashes, type counts); continuity from index 0."""
    certs = _certificates(path, ca_pem)
    size = path.stat().st_size
    workers = workers if workers is not None else (os.cpu_count() or 1)
    # Processes are forked, and only from a single-threaded caller (the CLI): forking a
    # threaded server can copy a held lock into the child. "spawn" was tried and rejected:
    # it re-imports __main__, which fails for embedded or stdin-run callers.
    import multiprocessing
    import threading

    can_fork = "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1
    if workers > 1 and size >= _PARALLEL_BYTES and can_fork:
        chunks = _line_chunks(path, workers)
        with ProcessPoolExecutor(max_workers=len(chunks), mp_context=multiprocessing.get_context("fork")) as pool:
            results = list(pool.map(_chunk_worker, [str(path)] * len(chunks), *zip(*chunks), [certs] * len(chunks)))
        expected = 0
        parts = []
        types: Counter = Counter()
        for result in results:  # the first failure in file order is the one reported
            if result[0] == "failed":
                raise _fail(result[1], result[2])
        for (a, b, lineno), (_ok, start, count, hashes, t) in zip(chunks, results):
            if count and start != expected:
                what = "an entry is missing or entries were reordered" if start > expected else "an entry is repeated, inserted or reordered"
                raise _fail(f"{ENTRIES_FILE} line {lineno}: index {start} where {expected} was expected ({what})")
            expected += count
            parts.append(hashes)
            types.update(t)
        return expected, b"".join(parts), types

    def numbered() -> Iterator[tuple[int, bytes]]:
        with open(path, "rb") as f:
            yield from enumerate(f, start=1)

    _start, count, hashes, types = _check_lines(numbered(), 0, certs)
    return count, hashes, types


def _tree_from_hashes(hashes: bytes) -> MerkleTree:
    return MerkleTree.from_leaf_hashes(hashes)


def verify_leaves(
    *,
    source: str,
    note: str | bytes,
    verifier: NoteVerifier,
    key_pinned: bool,
    count: int,
    leaf_hashes: bytes,
    types: Counter,
    state_dir: str | Path | None,
) -> VerificationReport:
    """The checks shared by offline and online verification, once the entries were checked."""
    cp = Checkpoint.open(note, verifier)
    if count != cp.size:
        if count < cp.size:
            raise _fail(
                f"{ENTRIES_FILE}: ends after entry {count - 1}, but the checkpoint covers {cp.size} entries "
                f"(entries {count}..{cp.size - 1} are missing: truncated)"
            )
        raise _fail(
            f"{ENTRIES_FILE}: holds {count} entries, but the checkpoint covers only {cp.size} "
            f"(entries from {cp.size} on are not signed: inserted)"
        )
    tree = _tree_from_hashes(leaf_hashes)
    root = tree.root() if cp.size else EMPTY_ROOT
    if root != cp.root:
        raise _fail(
            f"root: the {cp.size} entries do not hash to the root the checkpoint signs "
            "(an entry was altered, inserted, removed or reordered)",
            "verify with --state against an earlier verification to find the entry, or verify online",
        )
    state = VerifierState(state_dir) if state_dir is not None else None
    note_text = note.decode("utf-8") if isinstance(note, bytes) else note
    previous, consistency = _check_against_state(state, verifier, cp, tree, leaf_hashes)
    if state is not None:
        state.save(note_text, verifier, leaf_hashes)
    return VerificationReport(
        source=source,
        origin=cp.origin,
        size=cp.size,
        root=cp.root,
        key=f"{verifier.name}+{verifier.key_id.hex()}",
        key_pinned=key_pinned,
        entries_checked=count,
        entry_types=dict(types),
        previous_size=previous,
        consistency=consistency,
    )


def verify_export(
    directory: str | Path,
    vkey: str | NoteVerifier | None = None,
    state_dir: str | Path | None = None,
    *,
    workers: int | None = None,
    ca_pem: bytes | None = None,
) -> VerificationReport:
    """Verify an export directory; raises ``VERIFICATION_FAILED`` saying where, else returns a report.

    ``vkey`` is the trusted verifier key (text or parsed). Without it the key pinned in
    ``state_dir`` is used, and failing that the export's own ``log.vkey`` (reported as
    unpinned: it proves integrity, not authorship).
    """
    d = Path(directory)
    for name in (ENTRIES_FILE, CHECKPOINT_FILE):
        if not (d / name).is_file():
            raise YumenError(Code.NOT_FOUND, f"{d / name} does not exist", hint="point --from at an export directory")
    state = VerifierState(state_dir) if state_dir is not None else None
    verifier, pinned = _resolve_verifier(vkey, state, lambda: (d / VKEY_FILE).read_text(encoding="utf-8"))
    note = (d / CHECKPOINT_FILE).read_bytes()
    try:
        Checkpoint.open(note, verifier)  # fail early on a bad signature, before reading entries
    except YumenError as e:
        raise _fail(f"checkpoint: {e.message}", e.hint) from None
    count, hashes, types = _check_file(d / ENTRIES_FILE, workers, ca_pem)
    return verify_leaves(
        source=str(d),
        note=note,
        verifier=verifier,
        key_pinned=pinned,
        count=count,
        leaf_hashes=hashes,
        types=types,
        state_dir=state_dir,
    )
