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
from operator import itemgetter
from pathlib import Path
from typing import Any

from ...errors import MLMFError
from . import schema
from .records import Activity, Entity, stored_activity, stored_entity

BUSY_TIMEOUT_MS = 60_000
# kinds and activity names become PROV qualified names (mlmf:<name>)
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
ENTITY_COLUMNS = ("id", "kind", "label", "path", "sha256", "hash_kind", "created", "attrs")
# An activity row as ``Database.to_activities`` reads it (by position), and its agent's.
ACTIVITY_COLUMNS = ("id", "name", "started", "ended", "params", "agent", "pid")
ACTIVITY_SELECT = ", ".join(f"a.{c}" for c in ACTIVITY_COLUMNS)
AGENT_COLUMNS = ("id", "user", "host", "versions", "git_commit")
_NO_AGENT = (None,) * len(AGENT_COLUMNS)
_ROLES = {"used": 0, "generated": 1}  # usages.role -> side of an activity
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
        """Rows that can be read by column name."""
        return self._fetch(sql, args, sqlite3.Row)

    def rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Plain tuples, read by position (what the record builders read: faster)."""
        return self._fetch(sql, args, None)

    def _fetch(self, sql: str, args: tuple[Any, ...], factory: Any) -> list[Any]:
        with self._lock:
            c = self.conn()
            c.row_factory = factory
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
        rows = self.rows(f"SELECT {ACTIVITY_SELECT} FROM activities a {where} "
                         "ORDER BY a.started, a.id", args)
        return self.to_activities(rows, self.usages([r[0] for r in rows]), known)

    def _in(self, sql: str, values: list[Any]) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` with its ``IN ({})`` filled with ``values``, 500 at a time."""
        out: list[tuple[Any, ...]] = []
        for start in range(0, len(values), 500):
            part = values[start : start + 500]
            out += self.rows(sql.format(",".join("?" * len(part))), tuple(part))
        return out

    def usages(self, activities: list[Any]) -> list[tuple[Any, ...]]:
        """The ``(activity, entity, role)`` usages of these activities, each activity's in
        recorded order."""
        return self._in("SELECT activity, entity, role FROM usages WHERE activity IN ({}) "
                        "ORDER BY rowid", activities)

    def to_activities(self, rows: list[tuple[Any, ...]], usages: list[tuple[Any, ...]],
                      known: dict[str, Entity] | None = None) -> list[Activity]:
        """Records from ``activities`` rows (``ACTIVITY_COLUMNS``, in the order wanted) and
        the ``(activity, entity, role)`` usages of all of them (in recorded order); their
        agents, and the entities not in ``known``, are read."""
        links: dict[Any, tuple[list[Any], list[Any]]] = {r[0]: ([], []) for r in rows}
        for activity, entity, role in usages:
            side = _ROLES.get(role)
            pair = links.get(activity)
            if side is None or pair is None:  # an index that disagrees with its table
                raise self._bad(f"usage of activity {str(activity)[:40]!r}",
                                "it names an activity or a role that is not stored")
            pair[side].append(entity)
        ents = dict(known or {})
        # ids sorted as text: a changed store may hold a blob among them
        ents.update(self.entities(sorted({e for pair in links.values() for side in pair
                                          for e in side if e not in ents}, key=str)))
        stored = {g[0]: g for g in self._in(f"SELECT {', '.join(AGENT_COLUMNS)} FROM agents "
                                            "WHERE id IN ({})", list({r[5] for r in rows}))}
        agents: dict[Any, dict[str, Any]] = {}  # one agent records many activities
        return [self._to_activity(r, links[r[0]], ents, stored, agents) for r in rows]

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
        return _plain_entity(row) or self._checked_entity(
            r if isinstance(r, sqlite3.Row) else dict(zip(ENTITY_COLUMNS, row, strict=False)))

    def _checked_entity(self, r: Any) -> Entity:
        what = f"entity {str(r['id'])[:40]!r}"
        f = self._field
        return Entity(f(r, "id", what, "str"), f(r, "kind", what, "name"),
                      f(r, "label", what, "str"), f(r, "path", what, "str?"),
                      f(r, "sha256", what, "str?"), f(r, "hash_kind", what, "str?"),
                      f(r, "created", what, "time"), self._json(r["attrs"], f"{what}: attrs"))

    def _to_activity(self, r: tuple[Any, ...], links: tuple[list[Any], list[Any]],
                     ents: dict[Any, Entity], stored: dict[Any, tuple[Any, ...]],
                     agents: dict[Any, dict[str, Any]]) -> Activity:
        aid, name, started, ended, params, agent_id, pid = r
        try:
            used = tuple(map(ents.__getitem__, links[0]))
            generated = tuple(map(ents.__getitem__, links[1]))
        except KeyError as e:
            raise self._bad(f"activity {str(aid)[:40]!r}", f"it names entity "
                            f"{repr(e.args[0])[:40]}, which is not stored") from None
        if agent_id not in agents:  # as a LEFT JOIN: an agent that is not stored has no facts
            g = dict(zip(AGENT_COLUMNS, stored.get(agent_id, _NO_AGENT), strict=True))
            what, f = f"activity {str(aid)[:40]!r}", self._field
            agents[agent_id] = {
                "user": f(g, "user", what, "str?"), "host": f(g, "host", what, "str?"),
                "versions": self._json(g.get("versions"), f"{what}: agent versions", True),
                "git_commit": f(g, "git_commit", what, "str?")}
        agent = dict(agents[agent_id])  # the versions inside are shared: records are read-only
        if _plain_activity(aid, name, started, ended, params, pid):  # as the store writes them
            value = _plain_json(params)
            if value is not None:
                return stored_activity(aid, name, float(started), float(ended), value, agent,
                                       used, generated, pid or 0)
        what = f"activity {str(aid)[:40]!r}"
        f, cols = self._field, dict(zip(ACTIVITY_COLUMNS, r, strict=True))
        return Activity(
            f(cols, "id", what, "str"), f(cols, "name", what, "name"),
            f(cols, "started", what, "time"), f(cols, "ended", what, "time"),
            self._json(params, f"{what}: params"), agent, used, generated,
            f(cols, "pid", what, "int?") or 0)


_DECODER = json.JSONDecoder()


def _plain_json(text: str) -> dict[str, Any] | None:
    """A JSON object as the store writes it (no surrounding blanks), or None for anything
    else (then ``Database._json`` reads it or names the problem)."""
    if text == "{}":
        return {}
    try:  # ``raw_decode``: ``json.loads`` without its wrapper, a third of the time
        value, end = _DECODER.raw_decode(text)
    except (ValueError, RecursionError):
        return None
    return value if end == len(text) and isinstance(value, dict) else None


def _plain_activity(aid: Any, name: Any, started: Any, ended: Any, params: Any,
                    pid: Any) -> bool:
    """The columns of an activity as the store writes them (else ``_field`` says what is
    wrong)."""
    return (type(aid) is str and type(name) is str and _NAME.fullmatch(name) is not None
            and type(started) in (int, float) and abs(started) < _TIME_LIMIT
            and type(ended) in (int, float) and abs(ended) < _TIME_LIMIT
            and type(params) is str and (pid is None or type(pid) is int))


def _plain_entity(row: tuple[Any, ...]) -> Entity | None:
    """The record of an entity row as the store writes it, checked in one pass; None for
    anything else (then ``_field`` says what is wrong)."""
    if len(row) != 8:
        return None
    eid, kind, label, path, sha, hkind, created, attrs = row
    if (type(eid) is str and type(kind) is str and _NAME.fullmatch(kind) is not None
            and type(label) is str and (path is None or type(path) is str)
            and (sha is None or type(sha) is str) and (hkind is None or type(hkind) is str)
            and type(created) in (int, float) and abs(created) < _TIME_LIMIT
            and type(attrs) is str):
        value = _plain_json(attrs)
        if value is not None:
            return stored_entity(eid, kind, label, path, sha, hkind, float(created), value)
    return None


def sql_order(rows: list[tuple[Any, ...]], columns: tuple[int, ...]) -> None:
    """Sort ``rows`` by these columns in place, as SQLite's ``ORDER BY`` would: the values a
    changed store may hold there, of different types, in SQLite's order of types."""
    try:
        rows.sort(key=itemgetter(*columns))
    except TypeError:  # NULL < numbers < text < blobs; each compares as in SQLite
        rows.sort(key=lambda r: tuple(_sql_key(r[i]) for i in columns))


def _sql_key(v: Any) -> tuple[int, Any]:
    if v is None:
        return (0, 0)
    return (1 if isinstance(v, int | float) else 2 if isinstance(v, str) else 3, v)


def is_name(v: str) -> bool:
    """True for a kind or activity name that can be a PROV qualified name's local part."""
    return _NAME.fullmatch(v) is not None
