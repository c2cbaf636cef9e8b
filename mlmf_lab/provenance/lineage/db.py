"""The SQLite layer of the lineage store: connection, transactions, rows <-> records.

One file, WAL journal, every write in one ``BEGIN IMMEDIATE`` transaction, so several
processes can record into the same store at once without losing anything (SQLite
serialises the writers; ``busy_timeout`` makes them wait instead of failing).

The file is checked read-only before the first write (``schema.inspect``: the store's mark,
its schema, ``quick_check``), and every row is checked as it becomes a record: a store is a
file like any other, and one edited by hand or by another program gives an ``MLMFError``
naming it, never a raw ``sqlite3``/``json`` error.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ...errors import MLMFError
from . import schema
from .records import Activity, Entity

BUSY_TIMEOUT_MS = 60_000
# kinds and activity names become PROV qualified names (mlmf:<name>)
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_TIME_LIMIT = 1e11  # seconds since the epoch (year 5138): what datetime can hold, with room


class Database:
    """A connection per process (reopened after ``fork``), guarded by a lock per thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._pid = -1
        self._conn: sqlite3.Connection | None = None
        if schema.inspect(path) == "ours":  # read-only: refuses before anything is written
            return
        with self.write() as c:  # a new or empty file, or an unmarked store: under the lock
            state = schema.verdict(c)  # another process may have created it meanwhile
            if state == "empty":
                schema.create(c)
            elif state == "unmarked":
                schema.mark(c)
            elif state != "ours":
                raise MLMFError(state.removeprefix("refused: "), path)

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
                c.execute("COMMIT")
            except BaseException as e:
                try:
                    c.execute("ROLLBACK")
                except sqlite3.DatabaseError:
                    pass  # SQLite rolled back already (the COMMIT failed, or the file did)
                if isinstance(e, sqlite3.DatabaseError):
                    raise MLMFError(f"cannot write the lineage store (SQLite: {e})",
                                    self.path) from None
                raise

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
        return self.to_entity(rows[0])

    def entities(self, ids: list[str]) -> dict[str, Entity]:
        out: dict[str, Entity] = {}
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            for r in self.query(f"SELECT * FROM entities WHERE id IN ({marks})", tuple(part)):
                out[r["id"]] = self.to_entity(r)
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
        return [self._to_activity(r, links[r["id"]], ents) for r in rows]

    # -- rows checked as they become records ---------------------------------------------
    def _bad(self, what: str, problem: str) -> MLMFError:
        return MLMFError(f"{what}: {problem}; the store was changed outside mlmf_lab",
                         self.path)

    def _field(self, r: sqlite3.Row, column: str, what: str, kind: str) -> Any:
        """``r[column]`` checked: ``str``, ``str?`` (or NULL), ``name``, ``time``, ``int?``."""
        v = r[column]
        if kind == "name" and isinstance(v, str) and not is_name(v):
            raise self._bad(what, f"{column} {v[:40]!r} is not a name (letters, digits, '_', "
                            "'.', '-')")
        if (kind in ("str?", "int?") and v is None) or (kind in ("str", "str?", "name")
                                                       and isinstance(v, str)):
            return v
        if kind == "time" and isinstance(v, int | float) and abs(v) < _TIME_LIMIT:
            return float(v)  # abs(NaN) < x is False: NaN is refused too
        if kind == "int?" and isinstance(v, int):
            return v
        raise self._bad(what, f"{column} holds {type(v).__name__} {str(v)[:40]!r}, expected "
                        f"{kind.rstrip('?')}")

    def _json(self, text: Any, what: str, null_ok: bool = False) -> dict[str, Any]:
        if text is None and null_ok:
            return {}
        try:
            value = json.loads(text)
        except (TypeError, ValueError, RecursionError) as e:
            raise self._bad(what, f"not JSON ({type(e).__name__}: {str(e)[:80]})") from None
        if not isinstance(value, dict):
            raise self._bad(what, f"a JSON {type(value).__name__}, expected an object")
        return value

    def to_entity(self, r: sqlite3.Row) -> Entity:
        """An ``entities`` row as a record, every column checked."""
        what = f"entity {str(r['id'])[:40]!r}"
        f = self._field
        return Entity(f(r, "id", what, "str"), f(r, "kind", what, "name"),
                      f(r, "label", what, "str"), f(r, "path", what, "str?"),
                      f(r, "sha256", what, "str?"), f(r, "hash_kind", what, "str?"),
                      f(r, "created", what, "time"), self._json(r["attrs"], f"{what}: attrs"))

    def _to_activity(self, r: sqlite3.Row, links: dict[str, list[str]],
                     ents: dict[str, Entity]) -> Activity:
        what = f"activity {str(r['id'])[:40]!r}"
        f = self._field
        missing = [e for role in links.values() for e in role if e not in ents]
        if missing:
            raise self._bad(what, f"it names entity {missing[0][:40]!r}, which is not stored")
        agent = {"user": f(r, "user", what, "str?"), "host": f(r, "host", what, "str?"),
                 "versions": self._json(r["versions"], f"{what}: agent versions", True),
                 "git_commit": f(r, "git_commit", what, "str?")}
        return Activity(
            f(r, "id", what, "str"), f(r, "name", what, "name"), f(r, "started", what, "time"),
            f(r, "ended", what, "time"), self._json(r["params"], f"{what}: params"), agent,
            tuple(ents[e] for e in links["used"]), tuple(ents[e] for e in links["generated"]),
            f(r, "pid", what, "int?") or 0)


def is_name(v: str) -> bool:
    """True for a kind or activity name that can be a PROV qualified name's local part."""
    return _NAME.fullmatch(v) is not None
