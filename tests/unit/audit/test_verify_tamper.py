"""Export and offline verification: a clean export verifies; every tampering is caught and located."""

from __future__ import annotations

import json
import sqlite3

import pytest

from yumen.audit import (
    NoteSigner,
    PolicyChanged,
    SQLiteLogStorage,
    TransparencyLog,
    export,
    generate_log_key,
    verify_export,
)
from yumen.audit._verify import CHECKPOINT_FILE, ENTRIES_FILE, VKEY_FILE
from yumen.errors import Code, YumenError

from audit_samples import ORIGIN, T, digest, sample_entries


@pytest.fixture
def filled(log):
    log.append_many(sample_entries(4))  # 15 entries
    return log


def _lines(d):
    return (d / ENTRIES_FILE).read_text().splitlines(keepends=True)


def _write(d, lines):
    (d / ENTRIES_FILE).write_text("".join(lines))


def _fails(d, match, **kw):
    with pytest.raises(YumenError) as e:
        verify_export(d, **kw)
    assert e.value.code is Code.VERIFICATION_FAILED
    assert match in e.value.message, e.value.message
    return e.value.message


def test_clean_export_verifies_and_reports(filled, tmp_path):
    cp = export(filled, tmp_path / "x")
    assert {p.name for p in (tmp_path / "x").iterdir()} == {ENTRIES_FILE, CHECKPOINT_FILE, VKEY_FILE}
    report = verify_export(tmp_path / "x", filled.vkey)
    assert (report.size, report.root, report.entries_checked) == (15, cp.root, 15)
    assert report.entry_types["job_decided"] == 4 and report.key_pinned
    first = json.loads(_lines(tmp_path / "x")[0])
    assert first["index"] == 0 and first["entry"]["type"] == "dataset_registered"
    assert "size        15" in report.summary()


def test_export_of_an_empty_log_verifies(log, tmp_path):
    export(log, tmp_path / "e")
    assert verify_export(tmp_path / "e", log.vkey).size == 0


def test_flipped_byte_in_a_leaf_is_located(filled, tmp_path):
    d = tmp_path / "x"
    export(filled, d)
    lines = _lines(d)
    rec = json.loads(lines[7])
    rec["leaf"] = rec["leaf"][:10] + ("A" if rec["leaf"][10] != "A" else "B") + rec["leaf"][11:]
    lines[7] = json.dumps(rec) + "\n"
    _write(d, lines)
    _fails(d, "line 8 (entry 7)", vkey=filled.vkey)


def test_edited_entry_field_is_located(filled, tmp_path):
    d = tmp_path / "x"
    export(filled, d)
    lines = _lines(d)
    assert '"epsilon":"0.25"' in lines[3]
    lines[3] = lines[3].replace('"epsilon":"0.25"', '"epsilon":"0.01"', 1)
    _write(d, lines)
    _fails(d, "entry 3): the decoded entry does not match the leaf", vkey=filled.vkey)


def test_deleted_entry_is_located(filled, tmp_path):
    d = tmp_path / "x"
    export(filled, d)
    lines = _lines(d)
    del lines[5]
    _write(d, lines)
    _fails(d, "line 6: index 6 where 5 was expected", vkey=filled.vkey)


def test_reordered_entries_are_located(filled, tmp_path):
    d = tmp_path / "x"
    export(filled, d)
    lines = _lines(d)
    lines[3], lines[4] = lines[4], lines[3]
    _write(d, lines)
    _fails(d, "line 4: index 4 where 3 was expected", vkey=filled.vkey)


def test_truncated_export_is_caught(filled, tmp_path):
    d = tmp_path / "x"
    export(filled, d)
    _write(d, _lines(d)[:12])
    _fails(d, "ends after entry 11, but the checkpoint covers 15", vkey=filled.vkey)


def test_inserted_entry_is_caught(filled, tmp_path):
    d = tmp_path / "x"
    export(filled, d)
    lines = _lines(d)
    lines.insert(2, lines[1])
    _write(d, lines)
    _fails(d, "line 3: index 1 where 2 was expected", vkey=filled.vkey)
    # appended past the signed size, with a continuous index
    lines = _lines(d)
    del lines[2]
    extra = json.loads(lines[14])
    extra["index"] = 15
    _write(d, lines + [json.dumps(extra) + "\n"])
    _fails(d, "holds 16 entries, but the checkpoint covers only 15", vkey=filled.vkey)


def test_checkpoint_signed_by_another_key_or_altered_is_refused(filled, tmp_path):
    d = tmp_path / "x"
    export(filled, d)
    _fails(d, "checkpoint: the note carries no signature by the trusted key", vkey=NoteSigner(ORIGIN, generate_log_key()).verifier)
    note = (d / CHECKPOINT_FILE).read_text()
    (d / CHECKPOINT_FILE).write_text(note.replace("\n15\n", "\n14\n"))
    _fails(d, "checkpoint: the signature by", vkey=filled.vkey)


def test_flipped_byte_in_the_stored_database_is_caught(filled, tmp_path):
    # The broker's storage is edited directly: the leaf changes but the stored tree does not.
    db = tmp_path / "log.db"
    conn = sqlite3.connect(db)
    (leaf,) = conn.execute("SELECT leaf FROM log_entries WHERE idx = 9").fetchone()
    conn.execute("UPDATE log_entries SET leaf = ? WHERE idx = 9", (leaf.replace(b"0.25", b"0.35"),))
    conn.commit()
    conn.close()
    d = tmp_path / "x"
    with pytest.raises(YumenError) as e:
        export(filled, d)  # the exporter already notices its own log does not add up
    assert e.value.code is Code.VERIFICATION_FAILED


def _rebuilt_log(tmp_path, name, key, entries):
    """An attacker holding the log key rebuilds the log with a different history and re-signs."""
    lg = TransparencyLog(SQLiteLogStorage(tmp_path / f"{name}.db"), origin=ORIGIN, signing_key=key)
    lg.append_many(entries)
    return lg


@pytest.mark.parametrize(
    "rewrite,where",
    [
        (lambda es: es[:6] + [es[7], es[6]] + es[8:], "entry 6 differs"),  # reordered
        (lambda es: es[:9] + es[10:] + [es[9]], "entry 9 differs"),  # moved (deleted, re-appended)
        (lambda es: es[:1] + [PolicyChanged(time=T, policy_version=digest("evil"), changed_by="admin-1")] + es[2:], "entry 1 differs"),
        (lambda es: es[:2] + [es[0]] + es[2:], "entry 2 differs"),  # inserted in the past
    ],
    ids=["reorder", "delete-and-append", "swap-policy-version", "insert"],
)
def test_rewritten_history_is_caught_by_the_state_dir_and_located(tmp_path, key, rewrite, where):
    entries = sample_entries(4)
    honest = _rebuilt_log(tmp_path, "honest", key, entries[:12])
    state = tmp_path / "state"
    export(honest, tmp_path / "before")
    verify_export(tmp_path / "before", honest.vkey, state)
    forged = _rebuilt_log(tmp_path, "forged", key, rewrite(entries))
    export(forged, tmp_path / "after")
    verify_export(tmp_path / "after", honest.vkey)  # self-consistent and properly signed ...
    msg = _fails(tmp_path / "after", "state: the log does not extend the checkpoint of size 12", vkey=honest.vkey, state_dir=state)
    assert where in msg  # ... but not an extension of what this auditor saw


def test_split_view_and_rollback_are_caught(tmp_path, key):
    entries = sample_entries(4)
    state = tmp_path / "state"
    a = _rebuilt_log(tmp_path, "a", key, entries)
    export(a, tmp_path / "a-x")
    verify_export(tmp_path / "a-x", a.vkey, state)
    # same size, different content, validly signed: a split view
    b = _rebuilt_log(tmp_path, "b", key, entries[:-1] + [entries[3]])
    export(b, tmp_path / "b-x")
    _fails(tmp_path / "b-x", "split view", vkey=a.vkey, state_dir=state)
    # a smaller, older checkpoint: a rollback
    c = _rebuilt_log(tmp_path, "c", key, entries[:10])
    export(c, tmp_path / "c-x")
    _fails(tmp_path / "c-x", "rollback", vkey=a.vkey, state_dir=state)


def test_state_dir_accepts_honest_growth_and_pins_the_key(filled, tmp_path):
    state = tmp_path / "state"
    export(filled, tmp_path / "one")
    r1 = verify_export(tmp_path / "one", filled.vkey, state)
    assert r1.previous_size is None
    filled.append_many(sample_entries(1)[3:])
    export(filled, tmp_path / "two")
    r2 = verify_export(tmp_path / "two", None, state)  # key pinned by the first run
    assert (r2.previous_size, r2.size, r2.key_pinned) == (15, 18, True)
    other = NoteSigner(ORIGIN, generate_log_key()).verifier
    _fails(tmp_path / "two", "is not the key pinned", vkey=other, state_dir=state)


def test_without_a_key_the_exports_own_key_is_used_and_reported_unpinned(filled, tmp_path):
    export(filled, tmp_path / "x")
    report = verify_export(tmp_path / "x")
    assert not report.key_pinned and "pin it" in report.summary()


def test_parallel_chunked_check_locates_like_the_sequential_one(filled, tmp_path, monkeypatch):
    import yumen.audit._verify as v

    d = tmp_path / "x"
    export(filled, d)
    monkeypatch.setattr(v, "_PARALLEL_BYTES", 0)
    assert verify_export(d, filled.vkey, workers=3).size == 15
    lines = _lines(d)
    del lines[11]
    _write(d, lines)
    _fails(d, "index 12 where 11 was expected", vkey=filled.vkey, workers=3)


def test_lines_in_another_json_layout_verify_but_a_display_only_change_does_not(filled, tmp_path):
    d = tmp_path / "x"
    export(filled, d)
    relaid = [json.dumps(json.loads(line), indent=None, sort_keys=False) + "\n" for line in _lines(d)]
    relaid = [json.dumps({"leaf": r["leaf"], "index": r["index"], "entry": r["entry"]}) + "\n" for r in map(json.loads, relaid)]
    _write(d, relaid)
    assert verify_export(d, filled.vkey).size == 15
    rec = json.loads(relaid[3])
    rec["entry"]["allowed"] = 1  # equal to true in Python, but not the same JSON
    relaid[3] = json.dumps(rec) + "\n"
    _write(d, relaid)
    _fails(d, "line 4 (entry 3): the decoded entry does not match", vkey=filled.vkey)
