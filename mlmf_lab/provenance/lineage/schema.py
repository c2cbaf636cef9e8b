"""The lineage store's file: its schema, its mark, and the checks made before writing to it.

A store marks its SQLite file as its own: ``PRAGMA application_id`` is ``0x4D4C4D46``
("MLMF", the field SQLite reserves for this) and ``PRAGMA user_version`` the schema version.
An existing file is first opened **read-only** and checked; nothing is written to a file
that fails (not even the switch to WAL, which rewrites the header):

- not SQLite at all, or SQLite that cannot be read (a corrupted page: ``quick_check``);
- another program's SQLite file (another ``application_id``, or no mark and other tables);
- a store whose schema was changed (a table replaced, an index, view or trigger added).

An empty SQLite file, and a store of this schema written before stores marked themselves,
are adopted (marked under the write lock). Rows are checked again as they are read
(``db.py``): the checks here prove the shape of the file, not the values in it.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ...errors import MLMFError
from ...files import open_regular

APPLICATION_ID = 0x4D4C4D46  # b"MLMF"
SCHEMA_VERSION = 1
SQLITE_MAGIC = b"SQLite format 3\x00"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY, user TEXT, host TEXT, versions TEXT, git_commit TEXT);
CREATE TABLE IF NOT EXISTS entities (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, label TEXT NOT NULL, path TEXT,
    sha256 TEXT, hash_kind TEXT, created REAL NOT NULL, attrs TEXT NOT NULL DEFAULT '{}');
CREATE INDEX IF NOT EXISTS entities_path ON entities (path);
CREATE INDEX IF NOT EXISTS entities_sha ON entities (sha256);
CREATE TABLE IF NOT EXISTS activities (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, started REAL NOT NULL, ended REAL NOT NULL,
    params TEXT NOT NULL, agent TEXT REFERENCES agents (id), pid INTEGER);
CREATE TABLE IF NOT EXISTS usages (
    activity TEXT NOT NULL REFERENCES activities (id),
    entity TEXT NOT NULL REFERENCES entities (id),
    role TEXT NOT NULL CHECK (role IN ('used', 'generated')),
    PRIMARY KEY (activity, entity, role));
CREATE INDEX IF NOT EXISTS usages_entity ON usages (entity, role);
CREATE TABLE IF NOT EXISTS derivations (
    generated TEXT NOT NULL REFERENCES entities (id),
    used TEXT NOT NULL REFERENCES entities (id),
    activity TEXT REFERENCES activities (id),
    kind TEXT NOT NULL CHECK (kind IN ('derived', 'revision', 'alternate')));
CREATE INDEX IF NOT EXISTS derivations_gen ON derivations (generated);
CREATE INDEX IF NOT EXISTS derivations_used ON derivations (used);
CREATE TABLE IF NOT EXISTS file_hashes (
    path TEXT PRIMARY KEY, signature TEXT NOT NULL, sha256 TEXT NOT NULL, kind TEXT NOT NULL);
"""

Objects = dict[tuple[str, str], tuple[str, str | None]]  # (type, name) -> (table, sql)
_EXPECTED: Objects = {}


def expected_objects() -> Objects:
    """What ``sqlite_master`` of a store holds, as SQLite itself normalises ``SCHEMA``."""
    if not _EXPECTED:
        with sqlite3.connect(":memory:") as c:
            c.executescript(SCHEMA)
            _EXPECTED.update(objects(c))
        c.close()
    return _EXPECTED


def objects(c: sqlite3.Connection) -> Objects:
    rows = c.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    # ANALYZE's statistics tables are SQLite's own, not a change to the schema
    return {(t, n): (tb, sql) for t, n, tb, sql in rows if not str(n).startswith("sqlite_stat")}


def create(c: sqlite3.Connection) -> None:
    """Create the schema and mark the file; inside the caller's write transaction."""
    for stmt in SCHEMA.strip().split(";"):
        if stmt.strip():
            c.execute(stmt)
    c.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
    mark(c)


def mark(c: sqlite3.Connection) -> None:
    c.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def verdict(c: sqlite3.Connection) -> str:
    """``"ours"``, ``"empty"`` (adopt: create), ``"unmarked"`` (adopt: mark), or why not.

    A reason starts with ``"refused: "``; the caller raises it naming the file.
    """
    app = c.execute("PRAGMA application_id").fetchone()[0]
    version = c.execute("PRAGMA user_version").fetchone()[0]
    found = objects(c)
    if app not in (0, APPLICATION_ID):
        return (f"refused: another program's SQLite file (application_id {app:#010x}; a "
                f"lineage store has {APPLICATION_ID:#010x})")
    if app == 0:
        if not found and version == 0:
            return "empty"
        if found != expected_objects() or version != 0:
            tables = ", ".join(sorted(n for t, n in found if t == "table")) or "none"
            return (f"refused: a SQLite file that is not a lineage store (no lineage-store mark; "
                    f"tables: {tables})")
        return "unmarked"
    if version != SCHEMA_VERSION:
        return (f"refused: lineage store schema version {version}, this mlmf_lab reads version "
                f"{SCHEMA_VERSION}")
    if found != expected_objects():
        return "refused: " + schema_difference(found)
    return "ours"


def schema_difference(found: Objects) -> str:
    want = expected_objects()
    extra = sorted(f"{t} {n!r}" for t, n in found.keys() - want.keys())
    missing = sorted(f"{t} {n!r}" for t, n in want.keys() - found.keys())
    changed = sorted(f"{t} {n!r}" for (t, n) in want.keys() & found.keys()
                     if want[(t, n)] != found[(t, n)])
    parts = [f"{label}: {', '.join(items)}" for label, items in
             (("changed", changed), ("added", extra), ("missing", missing)) if items]
    return "the store's schema was changed outside mlmf_lab (" + "; ".join(parts) + ")"


def inspect(path: Path) -> str:
    """Check an existing file read-only: ``"new"``, ``"ours"``, ``"empty"`` or ``"unmarked"``.

    Raises:
        MLMFError: naming the file, for anything a store must not write to.
    """
    try:
        os.stat(path)
    except FileNotFoundError:
        return "new"
    except OSError as e:
        raise MLMFError(f"cannot read the lineage store ({e.strerror})", path) from None
    with open_regular(path, "the lineage store") as f:  # a FIFO would block open()
        head = f.read(len(SQLITE_MAGIC))
    if not head:
        return "new"
    if head != SQLITE_MAGIC:
        raise MLMFError(f"not a lineage store: not a SQLite file (it starts with {head[:8]!r}, "
                        f"expected {SQLITE_MAGIC[:15]!r}); nothing was written to it", path)
    try:
        c = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.DatabaseError as e:
        raise MLMFError(f"cannot open the lineage store (SQLite: {e})", path) from None
    try:
        c.execute("BEGIN")  # one snapshot for every check below
        result = verdict(c)
        if not result.startswith("refused: "):
            problems = [r[0] for r in c.execute("PRAGMA quick_check(5)").fetchall()]
            if problems != ["ok"]:
                result = ("refused: the file is corrupted (SQLite's quick_check: "
                          f"{'; '.join(map(str, problems))})")
    except sqlite3.DatabaseError as e:
        result = f"refused: the file is corrupted or not SQLite (SQLite: {e})"
    except UnicodeDecodeError as e:  # damaged bytes where SQLite keeps text
        result = f"refused: the file is corrupted (text that is not UTF-8: {e.reason})"
    finally:
        c.close()
    if result.startswith("refused: "):
        raise MLMFError(f"{result.removeprefix('refused: ')}; nothing was written to it", path)
    return result


__all__ = ["APPLICATION_ID", "SCHEMA", "SCHEMA_VERSION", "create", "inspect", "mark",
           "verdict"]
