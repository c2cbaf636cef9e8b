"""Hostile lineage stores: refused with an MLMFError naming the file, and never written to."""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
from pathlib import Path

import pytest
import torch

import mlmf_lab as ml
from mlmf_lab.errors import MLMFError
from mlmf_lab.provenance.lineage import Lineage
from mlmf_lab.provenance.lineage.schema import APPLICATION_ID, SCHEMA_VERSION


def _store(tmp_path: Path) -> tuple[Path, Path]:
    """A store that recorded one save; closed, so everything is in the main file."""
    db, out = tmp_path / "lin.db", tmp_path / "w.safetensors"
    lin = Lineage(db)
    with lin:
        ml.save_state_dict({"w": torch.ones(4)}, out)
    lin.close()
    return db, out


def _sql(db: Path, *statements: str) -> None:
    c = sqlite3.connect(db, isolation_level=None)
    for s in statements:
        c.execute(s)
    c.close()


def _fingerprint(p: Path) -> tuple[str, int, int]:
    st = p.stat()
    return hashlib.sha256(p.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns


def _pragma(db: Path, name: str) -> int:
    c = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        return int(c.execute(f"PRAGMA {name}").fetchone()[0])
    finally:
        c.close()


def test_a_new_store_marks_itself(tmp_path: Path) -> None:
    db, _ = _store(tmp_path)
    assert _pragma(db, "application_id") == APPLICATION_ID == 0x4D4C4D46
    assert _pragma(db, "user_version") == SCHEMA_VERSION


@pytest.mark.parametrize(("make", "needle"), [
    (("CREATE TABLE notes (body TEXT)", "INSERT INTO notes VALUES ('mine')"),
     "a SQLite file that is not a lineage store (no lineage-store mark; tables: notes)"),
    (("PRAGMA application_id = 252006674", "CREATE TABLE blob (rid INTEGER)"),
     "another program's SQLite file (application_id 0x0f055112; a lineage store has "
     "0x4d4c4d46)"),
    (("PRAGMA user_version = 7", "PRAGMA application_id = 0"),
     "a SQLite file that is not a lineage store (no lineage-store mark; tables: none)"),
])
def test_another_programs_sqlite_file_is_refused_untouched(tmp_path: Path, make: tuple[str, ...],
                                                           needle: str) -> None:
    db = tmp_path / "theirs.sqlite"
    _sql(db, *make)
    before = _fingerprint(db)
    with pytest.raises(MLMFError, match=re.escape(f"{db}: {needle}; nothing was written to it")):
        Lineage(db)
    assert _fingerprint(db) == before
    assert _pragma(db, "application_id") in (0, 0x0F055112)


def test_a_corrupted_page_is_refused_untouched(tmp_path: Path) -> None:
    db, _ = _store(tmp_path)
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) >= 4 * page
    data[2 * page: 3 * page] = bytes(range(256)) * 16  # page 3: a b-tree page turned to junk
    db.write_bytes(bytes(data))
    before = _fingerprint(db)
    with pytest.raises(MLMFError, match=re.escape(str(db)) + ": the file is corrupted"):
        Lineage(db)
    assert _fingerprint(db) == before


def test_garbage_after_the_sqlite_magic_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "fake.db"
    db.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    with pytest.raises(MLMFError, match=re.escape(str(db)) + ": the file is corrupted or not "
                       "SQLite .*nothing was written to it"):
        Lineage(db)
    assert db.read_bytes() == b"SQLite format 3\x00" + b"\xff" * 200


def test_a_replaced_table_or_an_added_trigger_is_refused(tmp_path: Path) -> None:
    db, _ = _store(tmp_path)
    _sql(db, "DROP TABLE entities", "CREATE TABLE entities (id TEXT, evil TEXT)")
    before = _fingerprint(db)
    with pytest.raises(MLMFError, match=re.escape(
            f"{db}: the store's schema was changed outside mlmf_lab (changed: table "
            "'entities'; missing: index 'entities_path', index 'entities_sha', index "
            "'sqlite_autoindex_entities_1'); nothing was written to it")):
        Lineage(db)
    assert _fingerprint(db) == before
    (tmp_path / "two").mkdir()
    db2, _ = _store(tmp_path / "two")
    _sql(db2, "CREATE TRIGGER wipe AFTER INSERT ON activities BEGIN DELETE FROM entities; END")
    with pytest.raises(MLMFError, match=r"changed outside mlmf_lab \(added: trigger 'wipe'\)"):
        Lineage(db2)


@pytest.mark.parametrize(("statement", "needle"), [
    ("UPDATE entities SET attrs = 'not json'", "attrs: not JSON (JSONDecodeError"),
    ("UPDATE entities SET attrs = '[1, 2]'", "attrs: a JSON list, expected an object"),
    ("UPDATE entities SET attrs = '" + "[" * 50_000 + "'", "attrs: not JSON (RecursionError"),
    ("UPDATE activities SET params = '{'", "params: not JSON (JSONDecodeError"),
    ("UPDATE activities SET started = 'yesterday'",
     "started holds str 'yesterday', expected time"),
    ("UPDATE activities SET ended = 1e300", "ended holds float '1e+300', expected time"),
    ("UPDATE entities SET kind = 'a b'", "kind 'a b' is not a name"),
    ("UPDATE usages SET entity = 'gone' WHERE role = 'used'",
     "it names entity 'gone', which is not stored"),
])
def test_rows_that_are_not_what_the_store_wrote(tmp_path: Path, statement: str,
                                                needle: str) -> None:
    db, out = _store(tmp_path)
    _sql(db, statement)
    lin = Lineage(db)  # the file itself is sound: the values are checked as they are read
    for ask in (lambda: lin.history(out), lambda: lin.to_prov(), lambda: lin.graph()):
        with pytest.raises(MLMFError) as caught:
            ask()
        message = str(caught.value)
        assert message.startswith(f"{db}: ") and needle in message, message
        assert message.endswith("the store was changed outside mlmf_lab"), message
    lin.close()


def test_an_unmarked_store_of_this_schema_and_an_empty_file_are_adopted(tmp_path: Path) -> None:
    db, out = _store(tmp_path)
    _sql(db, "PRAGMA application_id = 0", "PRAGMA user_version = 0")  # written before marks
    lin = Lineage(db)
    assert [a.name for a in lin.history(out).steps] == ["save"]
    lin.close()
    assert _pragma(db, "application_id") == APPLICATION_ID
    empty = tmp_path / "empty.db"
    _sql(empty, "PRAGMA page_size = 4096", "VACUUM")
    Lineage(empty).close()
    assert _pragma(empty, "application_id") == APPLICATION_ID
    zero = tmp_path / "zero.db"
    zero.touch()
    Lineage(zero).close()
    assert _pragma(zero, "user_version") == SCHEMA_VERSION


def test_tampered_hash_cache_rows_are_recomputed(tmp_path: Path) -> None:
    db, out = _store(tmp_path)
    lin = Lineage(db)
    good = lin.file_hash(out)
    _sql(db, "UPDATE file_hashes SET sha256 = 'x', kind = 42")
    assert lin.file_hash(out) == good
    lin.close()
    assert os.path.exists(db)
