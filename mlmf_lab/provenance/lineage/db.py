"""The SQLite layer of the lineage store: schema, connection, rows <-> records.

One file, WAL journal, every write in one ``BEGIN IMMEDIATE`` transaction, so several
processes can record into the same store at once without losing anything (SQLite
serialises the writers; ``busy_timeout`` makes them wait instead of failing).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ...errors import MLMFError
from .records import Activity, Entity

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 60_000

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


class Database:
    """A connection per process (reopened after ``fork``), guarded by a lock per thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._pid = -1
        self._conn: sqlite3.Connection | None = None
        with self.write() as c:
            for stmt in SCHEMA.strip().split(";"):
                if stmt.strip():
                    c.execute(stmt)
            row = c.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                c.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif row[0] != str(SCHEMA_VERSION):
                raise MLMFError(
                    f"lineage store schema version {row[0]}, this mlmf_lab reads version "
                    f"{SCHEMA_VERSION}", path)

    def conn(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            try:
                conn = sqlite3.connect(os.fspath(self.path), timeout=BUSY_TIMEOUT_MS / 1000,
                                       isolation_level=None, check_same_thread=False)
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
            except sqlite3.DatabaseError as e:
                raise MLMFError(f"not a usable lineage store (SQLite: {e})", self.path) from None
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back when the body raises."""
        with self._lock:
            c = self.conn()
            try:
                c.execute("BEGIN IMMEDIATE")
            except sqlite3.DatabaseError as e:
                raise MLMFError(f"cannot write the lineage store (SQLite: {e})",
                                self.path) from None
            try:
                yield c
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            c = self.conn()
            c.row_factory = sqlite3.Row
            try:
                return c.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as e:
                raise MLMFError(f"cannot read the lineage store (SQLite: {e})",
                                self.path) from None
            finally:
                c.row_factory = None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    # -- rows -> records ---------------------------------------------------------------
    def entity(self, entity_id: str) -> Entity:
        rows = self.query("SELECT * FROM entities WHERE id = ?", (entity_id,))
        if not rows:
            raise MLMFError(f"no entity with id {entity_id!r} in the lineage store", self.path)
        return entity_from_row(rows[0])

    def entities(self, ids: list[str]) -> dict[str, Entity]:
        out: dict[str, Entity] = {}
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            for r in self.query(f"SELECT * FROM entities WHERE id IN ({marks})", tuple(part)):
                out[r["id"]] = entity_from_row(r)
        return out

    def activities(self, where: str = "", args: tuple[Any, ...] = ()) -> list[Activity]:
        """Activities matching ``where`` (SQL on table ``a``), oldest first, with their entities."""
        rows = self.query(
            "SELECT a.*, g.user, g.host, g.versions, g.git_commit FROM activities a "
            f"LEFT JOIN agents g ON g.id = a.agent {where} ORDER BY a.started, a.id", args)
        if not rows:
            return []
        ids = [r["id"] for r in rows]
        links: dict[str, dict[str, list[str]]] = {i: {"used": [], "generated": []} for i in ids}
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            for u in self.query(f"SELECT activity, entity, role FROM usages WHERE activity IN "
                                f"({marks}) ORDER BY rowid", tuple(part)):
                links[u["activity"]][u["role"]].append(u["entity"])
        ents = self.entities(sorted({e for d in links.values() for v in d.values() for e in v}))
        out = []
        for r in rows:
            agent = {"user": r["user"], "host": r["host"],
                     "versions": json.loads(r["versions"] or "{}"), "git_commit": r["git_commit"]}
            out.append(Activity(
                r["id"], r["name"], r["started"], r["ended"], json.loads(r["params"]), agent,
                tuple(ents[e] for e in links[r["id"]]["used"]),
                tuple(ents[e] for e in links[r["id"]]["generated"]), r["pid"] or 0))
        return out


def entity_from_row(r: sqlite3.Row) -> Entity:
    return Entity(r["id"], r["kind"], r["label"], r["path"], r["sha256"], r["hash_kind"],
                  r["created"], json.loads(r["attrs"]))
