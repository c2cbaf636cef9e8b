"""A lineage database as a networkx graph and as a W3C PROV document (through ``prov``).

Functions over the store's ``Database``; ``Lineage.graph``/``to_prov`` resolve the focus and
call them.

The networkx graph follows the data: ``entity -> activity`` (used) and
``activity -> entity`` (generated), plus ``older copy -> newer copy`` for content
found again at another path. PROV keeps its own direction (``wasGeneratedBy`` points
from the entity back to the activity); that is how the W3C model is defined.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import MLMFError
from . import query
from .agent import agent_id
from .records import Activity, Entity

if TYPE_CHECKING:
    import networkx as nx
    from prov.model import ProvDocument

    from .db import Database

NAMESPACE = ("mlmf", "urn:mlmf-lab:")


def selection(db: Database, focus: Entity | None = None) -> tuple[
        list[Entity], list[Activity], list[tuple[str, str, str]]]:
    """Entities, activities and (generated, used, kind) derivations, around ``focus`` if given.

    With a focus, the entities are the focus, its ancestors and its descendants, and the
    activities are those that generated one of them.
    """
    if focus is None:
        ents = query.entities(db)
        acts = query.activities(db)
    else:
        ents = [focus, *query.related(db, focus.id, True), *query.related(db, focus.id, False)]
        keep = {e.id for e in ents}
        acts = [a for a in query.activities(db) if any(e.id in keep for e in a.generated)]
    keep = {e.id for e in ents}
    ders = [d for d in query.derivations(db) if d[0] in keep and d[1] in keep]
    return ents, acts, ders


def to_networkx(db: Database, focus: Entity | None = None) -> nx.DiGraph:
    """Nodes: entity and activity ids with ``node`` ("entity"/"activity"), ``kind``,
    ``label`` (with the short hash) and ``name`` (without); edges carry ``relation``."""
    import networkx as nx

    ents, acts, ders = selection(db, focus)
    g = nx.DiGraph()
    for e in ents:
        g.add_node(e.id, node="entity", kind=e.kind, label=e.short(), name=e.label,
                   path=e.path, sha256=e.sha256)
    keep = {e.id for e in ents}
    for a in acts:
        g.add_node(a.id, node="activity", kind=a.name, label=a.name, name=a.name, params=a.params,
                   started=a.started)
        for e in a.used:
            if e.id in keep:
                g.add_edge(e.id, a.id, relation="used")
        for e in a.generated:
            if e.id in keep:
                g.add_edge(a.id, e.id, relation="generated")
    for new, old, kind in ders:
        if kind == "alternate":
            g.add_edge(old, new, relation="same content")
    return g


def _time(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, tz=dt.UTC)


def _value(v: Any) -> Any:
    return v if isinstance(v, (str, int, float, bool)) else json.dumps(v, sort_keys=True)


def to_prov(db: Database, focus: Entity | None = None) -> ProvDocument:
    """The store (or the part around ``focus``) as a ``prov.model.ProvDocument``.

    Types are qualified names (``prov:SoftwareAgent``, ``mlmf:weights``, ``mlmf:save``),
    which PROV-JSON writes as ``{"$": ..., "type": "xsd:QName"}``: a string would be a
    literal that PROV tools do not read as a type.
    """
    from prov.model import PROV, ProvDocument

    ents, acts, ders = selection(db, focus)
    doc = ProvDocument()
    mlmf = doc.add_namespace(*NAMESPACE)
    for e in ents:
        attrs: dict[str, Any] = {"prov:label": e.short(), "prov:type": mlmf[e.kind]}
        attrs.update({f"mlmf:{k}": v for k, v in (("path", e.path), ("sha256", e.sha256),
                                                  ("hash_kind", e.hash_kind)) if v})
        attrs.update({f"mlmf:attr_{k}": _value(v) for k, v in e.attrs.items() if v is not None})
        doc.entity(f"mlmf:e_{e.id}", attrs)
    agents: set[str] = set()
    for a in acts:
        attrs = {"prov:label": a.name, "prov:type": mlmf[a.name], "mlmf:pid": a.pid}
        attrs.update({f"mlmf:param_{k}": _value(v) for k, v in a.params.items() if v is not None})
        act = doc.activity(f"mlmf:a_{a.id}", _time(a.started), _time(a.ended), attrs)
        ag = f"mlmf:agent_{agent_id(a.agent)}"
        if ag not in agents:
            agents.add(ag)
            doc.agent(ag, {"prov:type": PROV["SoftwareAgent"], "mlmf:user": a.agent["user"] or "",
                           "mlmf:host": a.agent["host"] or "",
                           "mlmf:versions": json.dumps(a.agent["versions"], sort_keys=True),
                           "mlmf:git_commit": a.agent["git_commit"] or ""})
        doc.wasAssociatedWith(act, ag)
        for e in a.used:
            doc.used(act, f"mlmf:e_{e.id}")
        for e in a.generated:
            doc.wasGeneratedBy(f"mlmf:e_{e.id}", act)
    by_pair = {(e.id, g.id): a.id for a in acts for e in a.generated for g in a.used}
    for new, old, kind in ders:
        n, o = f"mlmf:e_{new}", f"mlmf:e_{old}"
        if kind == "alternate":
            doc.alternateOf(n, o)
        elif kind == "revision":
            doc.wasRevisionOf(n, o)
        else:
            act_id = by_pair.get((new, old))
            doc.wasDerivedFrom(n, o, f"mlmf:a_{act_id}" if act_id else None)
    return doc


def write_prov(doc: ProvDocument, path: str | os.PathLike[str], fmt: str = "json") -> Path:
    """Serialize ``doc`` as PROV-JSON (default) or PROV-N (``fmt="provn"``, write-only)."""
    if fmt not in ("json", "provn"):
        raise MLMFError(f"unknown PROV format {fmt!r}; supported: json, provn", path)
    p = Path(path)
    text = doc.serialize(format=fmt, indent=2) if fmt == "json" else doc.serialize(format=fmt)
    p.write_text(str(text), encoding="utf-8")
    return p


def read_prov(path: str | os.PathLike[str], fmt: str = "json") -> ProvDocument:
    """Read a PROV document back with the ``prov`` package.

    Raises:
        MLMFError: the file is missing or not a PROV document in ``fmt``.
    """
    import prov

    p = Path(path)
    if not p.is_file():
        raise MLMFError("no such PROV file", p)
    try:
        doc = prov.read(os.fspath(p), format=fmt)
    except Exception as e:  # noqa: BLE001 - prov raises many unrelated types
        raise MLMFError(f"not a PROV-{fmt.upper()} document ({type(e).__name__}: {e})",
                        p) from None
    if doc is None:
        raise MLMFError(f"not a PROV-{fmt.upper()} document", p)
    return doc
