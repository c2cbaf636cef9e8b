"""Questions asked of a lineage store: ancestors, descendants, histories and their differences.

Derivations point from a generated entity to what it was derived from, so ancestors
are reached by walking ``generated -> used`` and descendants the other way. Alternate
links (the same content found at another path) count as derivations from the older copy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .records import Activity, Entity, History, HistoryDiff

if TYPE_CHECKING:
    from .store import Lineage


def walk(lin: Lineage, start: str, up: bool) -> dict[str, int]:
    """Entity id -> distance from ``start`` (excluded), following derivations up or down."""
    src, dst = ("generated", "used") if up else ("used", "generated")
    depth = {start: 0}
    frontier = [start]
    while frontier:
        nxt: list[str] = []
        for i in range(0, len(frontier), 500):
            part = frontier[i : i + 500]
            marks = ",".join("?" * len(part))
            rows = lin._db.query(
                f"SELECT {src} AS f, {dst} AS t FROM derivations WHERE {src} IN ({marks}) "
                f"ORDER BY rowid", tuple(part))
            for r in rows:
                if r["t"] not in depth:
                    depth[r["t"]] = depth[r["f"]] + 1
                    nxt.append(r["t"])
        frontier = nxt
    del depth[start]
    return depth


def related(lin: Lineage, start: str, up: bool) -> list[Entity]:
    depth = walk(lin, start, up)
    ents = lin._db.entities(list(depth))
    return sorted(ents.values(), key=lambda e: (depth[e.id], e.created, e.id))


def generating(lin: Lineage, ids: list[str]) -> list[Activity]:
    """The activities that generated any of ``ids``, oldest first."""
    acts: set[str] = set()
    for i in range(0, len(ids), 500):
        part = ids[i : i + 500]
        marks = ",".join("?" * len(part))
        rows = lin._db.query(f"SELECT DISTINCT activity FROM usages WHERE role = 'generated' "
                             f"AND entity IN ({marks})", tuple(part))
        acts.update(r["activity"] for r in rows)
    out: list[Activity] = []
    ordered = sorted(acts)
    for i in range(0, len(ordered), 500):
        part = ordered[i : i + 500]
        marks = ",".join("?" * len(part))
        out += lin._db.activities(f"WHERE a.id IN ({marks})", tuple(part))
    return sorted(out, key=lambda a: (a.started, a.id))


def history(lin: Lineage, target: Entity) -> History:
    """Every activity behind ``target`` and the origins that nothing recorded generated."""
    ancestors = related(lin, target.id, up=True)
    ids = [target.id] + [e.id for e in ancestors]
    steps = generating(lin, ids)
    made = {e.id for a in steps for e in a.generated}
    parents = {r["generated"] for i in range(0, len(ids), 500) for r in lin._db.query(
        f"SELECT DISTINCT generated FROM derivations WHERE generated IN "
        f"({','.join('?' * len(ids[i:i + 500]))})", tuple(ids[i:i + 500]))}
    origins = tuple(e for e in [target, *ancestors] if e.id not in made and e.id not in parents)
    return History(target, tuple(steps), origins)


def diff(lin: Lineage, a: Entity, b: Entity) -> HistoryDiff:
    """Shared steps of two histories, then the steps only one of them has."""
    ha, hb = history(lin, a).steps, history(lin, b).steps
    ia, ib = {x.id for x in ha}, {x.id for x in hb}
    return HistoryDiff(a, b, tuple(x for x in ha if x.id in ib),
                       tuple(x for x in ha if x.id not in ib),
                       tuple(x for x in hb if x.id not in ia))
