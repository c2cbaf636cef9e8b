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
ENTITY_COLUMNS = ("id", "kind", "label", "path", "sha256", "hash_kind", "created", "attrs")
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
            except UnicodeDecodeError as e:  # damaged bytes where SQLite keeps text
                raise MLMFError(f"cannot read the lineage store: it holds text that is not "
                                f"UTF-8 ({e.reason}); the file is damaged", self.path) from None
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

    def activities(self, where: str = "", args: tuple[Any, ...] = (),
                   known: dict[str, Entity] | None = None) -> list[Activity]:
        """Activities matching ``where`` (SQL on table ``a``), oldest first, with their entities
        (those in ``known`` are not read again)."""
        rows = self.query(  # the columns _to_activity unpacks, in its order
            "SELECT a.id, a.name, a.started, a.ended, a.params, a.agent, a.pid, g.user, g.host, "
            f"g.versions, g.git_commit FROM activities a LEFT JOIN agents g ON g.id = a.agent "
            f"{where} ORDER BY a.started, a.id", args)
        if not rows:
            return []
        ids = [r[0] for r in rows]  # by position: sqlite3.Row finds a name in a linear search
        links: dict[str, dict[str, list[str]]] = {i: {"used": [], "generated": []} for i in ids}
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            for u in self.query(f"SELECT activity, entity, role FROM usages WHERE activity IN "
                                f"({marks}) ORDER BY rowid", tuple(part)):
                activity, entity, role = u
                roles = links.get(activity, {})
                if role not in roles:  # an index that disagrees with its table
                    raise self._bad(f"usage of activity {str(activity)[:40]!r}",
                                    "it names an activity or a role that is not stored")
                roles[role].append(entity)
        ents = dict(known or {})
        # ids sorted as text: a changed store may hold a blob among them
        ents.update(self.entities(sorted({e for d in links.values() for v in d.values()
                                          for e in v if e not in ents}, key=str)))
        agents: dict[Any, dict[str, Any]] = {}  # one agent records many activities
        return [self._to_activity(r, links[r["id"]], ents, agents) for r in rows]

    # -- rows checked as they become records ---------------------------------------------
    def _bad(self, what: str, problem: str) -> MLMFError:
        return MLMFError(f"{what}: {problem}; the store was changed outside mlmf_lab",
                         self.path)

    def _field(self, r: Any, column: str, what: str, kind: str) -> Any:
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

    def to_entity(self, r: sqlite3.Row | tuple[Any, ...]) -> Entity:
        """An ``entities`` row (or its columns in table order) as a record, every column
        checked."""
        row = tuple(r)  # by position: sqlite3.Row finds a name in a linear search
        if _plain_entity(row):  # what the store writes: checked in one pass
            attrs = _plain_json(row[7])
            if attrs is not None:
                return Entity(row[0], row[1], row[2], row[3], row[4], row[5], float(row[6]),
                              attrs)
        return self._checked_entity(r if isinstance(r, sqlite3.Row)
                                    else dict(zip(ENTITY_COLUMNS, row, strict=False)))

    def _checked_entity(self, r: Any) -> Entity:
        what = f"entity {str(r['id'])[:40]!r}"
        f = self._field
        return Entity(f(r, "id", what, "str"), f(r, "kind", what, "name"),
                      f(r, "label", what, "str"), f(r, "path", what, "str?"),
                      f(r, "sha256", what, "str?"), f(r, "hash_kind", what, "str?"),
                      f(r, "created", what, "time"), self._json(r["attrs"], f"{what}: attrs"))

    def _to_activity(self, r: sqlite3.Row, links: dict[str, list[str]],
                     ents: dict[str, Entity], agents: dict[Any, dict[str, Any]]) -> Activity:
        # sqlite3.Row finds a column by name in a linear search: read the row once, by position
        aid, name, started, ended, params, agent_id, pid, user, host, versions, commit = r
        missing = [e for e in links["used"] + links["generated"] if e not in ents]
        if missing:
            raise self._bad(f"activity {str(aid)[:40]!r}",
                            f"it names entity {repr(missing[0])[:40]}, which is not stored")
        key = (agent_id, user, host, versions, commit)
        if key not in agents:
            what = f"activity {str(aid)[:40]!r}"
            f = self._field
            agents[key] = {"user": f(r, "user", what, "str?"), "host": f(r, "host", what, "str?"),
                           "versions": self._json(versions, f"{what}: agent versions", True),
                           "git_commit": f(r, "git_commit", what, "str?")}
        agent = dict(agents[key])  # the versions inside are shared: records are read-only
        used = tuple([ents[e] for e in links["used"]])
        generated = tuple([ents[e] for e in links["generated"]])
        if _plain_activity(aid, name, started, ended, params, pid):  # as the store writes them
            value = _plain_json(params)
            if value is not None:
                return Activity(aid, name, float(started), float(ended), value, agent, used,
                                generated, pid or 0)
        what = f"activity {str(aid)[:40]!r}"
        f = self._field
        return Activity(
            f(r, "id", what, "str"), f(r, "name", what, "name"), f(r, "started", what, "time"),
            f(r, "ended", what, "time"), self._json(r["params"], f"{what}: params"), agent,
            used, generated, f(r, "pid", what, "int?") or 0)


def _plain_json(text: str) -> dict[str, Any] | None:
    """A JSON object, or None for anything else (then ``Database._json`` names the problem)."""
    if text == "{}":
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _plain_activity(aid: Any, name: Any, started: Any, ended: Any, params: Any,
                    pid: Any) -> bool:
    """The columns of an activity as the store writes them (else ``_field`` says what is
    wrong)."""
    return (type(aid) is str and type(name) is str and _NAME.fullmatch(name) is not None
            and type(started) in (int, float) and abs(started) < _TIME_LIMIT
            and type(ended) in (int, float) and abs(ended) < _TIME_LIMIT
            and type(params) is str and (pid is None or type(pid) is int))


def _plain_entity(row: tuple[Any, ...]) -> bool:
    """The columns of an entity as the store writes them (else ``_field`` says what is wrong)."""
    if len(row) != 8:
        return False
    eid, kind, label, path, sha, hkind, created, attrs = row
    return (type(eid) is str and type(kind) is str and _NAME.fullmatch(kind) is not None
            and type(label) is str and (path is None or type(path) is str)
            and (sha is None or type(sha) is str) and (hkind is None or type(hkind) is str)
            and type(created) in (int, float) and abs(created) < _TIME_LIMIT
            and type(attrs) is str)


def is_name(v: str) -> bool:
    """True for a kind or activity name that can be a PROV qualified name's local part."""
    return _NAME.fullmatch(v) is not None
