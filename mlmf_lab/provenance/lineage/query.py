"""Questions asked of a lineage database: ancestors, descendants, histories and their differences.

Every function takes the store's ``Database`` (``db.py``) and returns records; ``Lineage``
resolves paths and live objects to entities, then calls these.

Derivations point from a generated entity to what it was derived from, so ancestors
are reached by walking ``generated -> used`` and descendants the other way. Alternate
links (the same content found at another path) count as derivations from the older copy.
"""

from __future__ import annotations

from collections.abc import Iterator

from .db import Database
from .records import Activity, Entity, History, HistoryDiff

BATCH = 500  # ids per ``IN (...)``: well under SQLite's limit on bound parameters


def _batches(ids: list[str]) -> Iterator[tuple[list[str], str]]:
    """``ids`` in slices, each with its ``?,?,...`` placeholder list."""
    for i in range(0, len(ids), BATCH):
        part = ids[i : i + BATCH]
        yield part, ",".join("?" * len(part))


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


def _closure(up: bool) -> str:
    """A recursive query of every entity reachable from ``?`` along derivations, ``?``
    included: ``reach(id)``, to put in a ``WITH RECURSIVE``. ``UNION`` (not ``UNION ALL``)
    keeps each id once, so a cycle in a changed store ends the recursion."""
    src, dst = ("generated", "used") if up else ("used", "generated")
    return (f"reach(id) AS (SELECT ? UNION SELECT d.{dst} FROM derivations d "
            f"JOIN reach r ON d.{src} = r.id)")


def _edges(db: Database, start: str, up: bool) -> list[tuple[str, str]]:
    """The derivations (from, to) among everything reachable from ``start``, in one query."""
    src, dst = ("generated", "used") if up else ("used", "generated")
    rows = db.query(f"WITH RECURSIVE {_closure(up)} SELECT d.{src} AS f, d.{dst} AS t "
                    f"FROM derivations d WHERE d.{src} IN (SELECT id FROM reach) "
                    f"ORDER BY d.rowid", (start,))
    return [(r["f"], r["t"]) for r in rows]


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


def history(db: Database, target: Entity) -> History:
    """Every activity behind ``target`` and the origins that nothing recorded generated.

    A handful of queries whatever the length of the chain: the ancestors and their
    derivations in one recursive query, their records in one, the activities that generated
    any of them in one more, with their usages (entities already read are not read again).
    """
    # the derivations among the ancestors, each with the record of the entity it leads to
    rows = db.query(f"WITH RECURSIVE {_closure(True)} SELECT d.generated, d.used, e.* "
                    "FROM derivations d LEFT JOIN entities e ON e.id = d.used "
                    "WHERE d.generated IN (SELECT id FROM reach) ORDER BY d.rowid", (target.id,))
    edges = [(r[0], r[1]) for r in rows]
    depth = _depths(target.id, edges)
    known = {r[1]: db.to_entity(r[2:]) for r in rows if r[2] is not None}
    known[target.id] = target
    ancestors = sorted((known[i] for i in depth if i in known),
                       key=lambda e: (depth[e.id], e.created, e.id))
    found: dict[str, Activity] = {}
    for part, marks in _batches([target.id, *depth]):
        for a in db.activities(f"WHERE a.id IN (SELECT activity FROM usages WHERE role = "
                               f"'generated' AND entity IN ({marks}))", tuple(part), known):
            found[a.id] = a
    steps = sorted(found.values(), key=lambda a: (a.started, a.id))
    made = {e.id for a in steps for e in a.generated}
    parents = {f for f, _ in edges}
    origins = tuple(e for e in [target, *ancestors] if e.id not in made and e.id not in parents)
    return History(target, tuple(steps), origins)


def diff(db: Database, a: Entity, b: Entity) -> HistoryDiff:
    """Shared steps of two histories, then the steps only one of them has."""
    ha, hb = history(db, a).steps, history(db, b).steps
    ia, ib = {x.id for x in ha}, {x.id for x in hb}
    return HistoryDiff(a, b, tuple(x for x in ha if x.id in ib),
                       tuple(x for x in ha if x.id not in ib),
                       tuple(x for x in hb if x.id not in ia))
