"""Questions asked of a lineage database: ancestors, descendants, histories and their differences.

Every function takes the store's ``Database`` (``db.py``) and returns records; ``Lineage``
resolves paths and live objects to entities, then calls these.

Derivations point from a generated entity to what it was derived from, so ancestors
are reached by walking ``generated -> used`` and descendants the other way. Alternate
links (the same content found at another path) count as derivations from the older copy.
"""

from __future__ import annotations

from operator import itemgetter

from .db import ACTIVITY_SELECT, Database, sql_order
from .records import Activity, Entity, History, HistoryDiff


def entities(db: Database, kind: str | None = None) -> list[Entity]:
    """Every entity (of one ``kind``), oldest first."""
    where, args = ("WHERE kind = ?", (kind,)) if kind else ("", ())
    rows = db.query(f"SELECT * FROM entities {where} ORDER BY created, id", args)
    return [db.to_entity(r) for r in rows]


def activities(db: Database, name: str | None = None) -> list[Activity]:
    """Every recorded activity (named ``name``), oldest first."""
    return db.activities("WHERE a.name = ?", (name,)) if name else db.activities()


def derivations(db: Database) -> list[tuple[str, str, str]]:
    """Every (generated, used, kind) derivation, in the order they were recorded."""
    rows = db.query("SELECT generated, used, kind FROM derivations ORDER BY rowid")
    return [(r["generated"], r["used"], r["kind"]) for r in rows]


def counts(db: Database) -> tuple[int, int]:
    """(entities, activities) in the store."""
    n_e = db.query("SELECT COUNT(*) AS n FROM entities")[0]["n"]
    n_a = db.query("SELECT COUNT(*) AS n FROM activities")[0]["n"]
    return int(n_e), int(n_a)


def _walk(up: bool) -> str:
    """A recursive query of the derivations reachable from entity ``?1`` along derivations
    (up: from what was generated to what it used): ``walk(generated, used, rid)``, to put in
    a ``WITH RECURSIVE``. It carries the derivations themselves, so they are not looked up a
    second time; ``UNION`` (not ``UNION ALL``) keeps each row once, so a cycle in a changed
    store ends the recursion."""
    src, dst = ("generated", "used") if up else ("used", "generated")
    return (f"walk(generated, used, rid) AS (SELECT generated, used, rowid FROM derivations "
            f"WHERE {src} = ?1 UNION SELECT d.generated, d.used, d.rowid FROM walk w "
            f"JOIN derivations d ON d.{src} = w.{dst})")


def _edges(db: Database, start: str, up: bool) -> list[tuple[str, str]]:
    """The derivations (from, to) among everything reachable from ``start``, in one query."""
    src, dst = ("generated", "used") if up else ("used", "generated")
    return [(r[0], r[1]) for r in db.rows(f"WITH RECURSIVE {_walk(up)} SELECT {src}, {dst} "
                                          "FROM walk ORDER BY rid", (start,))]


def walk(db: Database, start: str, up: bool) -> dict[str, int]:
    """Entity id -> distance from ``start`` (excluded), following derivations up or down."""
    return _depths(start, _edges(db, start, up))


def _depths(start: str, edges: list[tuple[str, str]]) -> dict[str, int]:
    """Breadth-first distances from ``start``; among equals, derivations in recorded order."""
    nexts: dict[str, list[str]] = {}
    for f, t in edges:
        nexts.setdefault(f, []).append(t)
    depth = {start: 0}
    frontier = [start]
    while frontier:
        nxt: list[str] = []
        for f in frontier:
            for t in nexts.get(f, ()):
                if t not in depth:
                    depth[t] = depth[f] + 1
                    nxt.append(t)
        frontier = nxt
    del depth[start]
    return depth


def related(db: Database, start: str, up: bool) -> list[Entity]:
    """Ancestors (``up``) or descendants of entity ``start``, nearest first."""
    depth = walk(db, start, up)
    ents = db.entities(list(depth))
    return sorted(ents.values(), key=lambda e: (depth[e.id], e.created, e.id))


# What ``history`` reads in one recursive query: the derivations among the ancestors of ``?1``
# (part 0: generated, used, rowid, then the record of the entity used) and the activities
# that generated ``?1`` or an ancestor (part 1: ``ACTIVITY_SELECT``, padded to the 12
# columns of part 0). Sorted in Python (``sql_order``): a sort in SQLite costs more.
HISTORY = (
    f"WITH RECURSIVE {_walk(True)} "
    "SELECT 0, w.*, e.* FROM walk w LEFT JOIN entities e ON e.id = w.used "
    f"UNION ALL SELECT 1, {ACTIVITY_SELECT}, NULL, NULL, NULL, NULL FROM activities a "
    "WHERE a.id IN (SELECT activity FROM usages "
    "WHERE role = 'generated' AND entity IN (SELECT ?1 UNION SELECT used FROM walk))")


def history(db: Database, target: Entity) -> History:
    """Every activity behind ``target`` and the origins that nothing recorded generated.

    One recursive query whatever the length of the chain (``HISTORY``), then the usages and
    agents of the activities found, by id (and the entities they name beyond the ancestors,
    if any).
    """
    rows = db.rows(HISTORY, (target.id,))
    derived = sorted((r for r in rows if not r[0]), key=itemgetter(3))  # in recorded order
    acts = [r[1:8] for r in rows if r[0]]
    sql_order(acts, (2, 0))  # oldest first, as ``ORDER BY a.started, a.id``
    known = {r[2]: db.to_entity(r[4:]) for r in derived if r[4] is not None}
    known[target.id] = target
    steps = db.to_activities(acts, db.usages([r[0] for r in acts]), known)
    # origins: the target, then its ancestors, that nothing recorded generated or derived
    made = {e.id for a in steps for e in a.generated}
    parents = {r[1] for r in derived}
    first = [] if target.id in made or target.id in parents else [target]
    below = [known[i] for i in {r[2] for r in derived} - made - parents - {target.id}
             if i in known]
    if len(below) > 1:  # nearest first
        depth = _depths(target.id, [(r[1], r[2]) for r in derived])
        below.sort(key=lambda e: (depth[e.id], e.created, e.id))
    return History(target, tuple(steps), (*first, *below))


def diff(db: Database, a: Entity, b: Entity) -> HistoryDiff:
    """Shared steps of two histories, then the steps only one of them has."""
    ha, hb = history(db, a).steps, history(db, b).steps
    ia, ib = {x.id for x in ha}, {x.id for x in hb}
    return HistoryDiff(a, b, tuple(x for x in ha if x.id in ib),
                       tuple(x for x in ha if x.id not in ib),
                       tuple(x for x in hb if x.id not in ia))
