"""A lineage graph as data for a view: repeats collapsed, relatives and records per node.

``Lineage.graph()`` has one node per recorded activity, so a notebook that loads the same
file ten times draws ten identical ``load`` tags. ``collapse_repeats`` merges activities
with the same name, parameters, inputs and outputs into one node with a ``count``.
``relatives`` gives each node's ancestors and descendants (what a click highlights), and
``node_records`` each node's record as plain text: path, sha256, size, parameters, time,
agent, and how to reproduce it (the history that made it). The interactive view and the
CLI read these; the layout itself is ``layout.layout_graph``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import TYPE_CHECKING, Any

from ...units import human_bytes
from .records import Activity, Entity

if TYPE_CHECKING:
    import networkx as nx

    from .store import Lineage


def collapse_repeats(g: nx.DiGraph) -> nx.DiGraph:
    """A copy of ``g`` where repeated activities are one node with ``count`` and ``members``.

    Two activity nodes repeat each other when they have the same name, parameters,
    predecessors and successors, where a successor that is a dead end made only by that
    activity (the state dict each ``load`` of a file returns) counts by its kind and label,
    not its id: ten loads of one file are one ``load x10``. The kept node is the first
    (by ``started``, then id); the others and their dead-end outputs go. Every activity
    node gets ``count`` (1 when alone) and ``members`` (the merged ids).

    Example:
        >>> import networkx as nx
        >>> g = nx.DiGraph()
        >>> g.add_node("f", node="entity")
        >>> for a in ("a1", "a2"):
        ...     g.add_node(a, node="activity", name="load", params={}, started=float(a[1]))
        ...     g.add_edge("f", a)
        >>> h = collapse_repeats(g)
        >>> sorted(h.nodes), h.nodes["a1"]["count"], h.nodes["a1"]["members"]
        (['a1', 'f'], 2, ['a1', 'a2'])
    """
    out = g.copy()
    groups: dict[tuple[Any, ...], list[str]] = {}
    acts = [n for n, d in g.nodes(data=True) if d.get("node") == "activity"]
    acts.sort(key=lambda n: (g.nodes[n].get("started", 0.0), str(n)))
    def dead_end(s: str) -> bool:
        return g.out_degree(s) == 0 and g.in_degree(s) == 1 and not g.nodes[s].get("path")

    for n in acts:
        d = g.nodes[n]
        outputs = frozenset(("output", str(g.nodes[s].get("kind")), str(g.nodes[s].get("label")))
                            if dead_end(s) else ("node", s) for s in g.successors(n))
        key = (d.get("name"), json.dumps(d.get("params") or {}, sort_keys=True, default=str),
               frozenset(g.predecessors(n)), outputs)
        groups.setdefault(key, []).append(n)
    for members in groups.values():
        keep, *rest = members
        out.nodes[keep]["count"] = len(members)
        out.nodes[keep]["members"] = list(members)
        for n in rest:
            out.remove_nodes_from([s for s in g.successors(n) if dead_end(s)])
        out.remove_nodes_from(rest)
    return out


def relatives(g: nx.DiGraph) -> dict[str, dict[str, list[str]]]:
    """node -> ``{"up": ancestors, "down": descendants}``, each sorted."""
    import networkx as nx

    return {str(n): {"up": sorted(map(str, nx.ancestors(g, n))),
                     "down": sorted(map(str, nx.descendants(g, n)))} for n in g.nodes}


def _when(t: float | None) -> str:
    if not t:
        return "unknown"
    return dt.datetime.fromtimestamp(t, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _agent(agent: dict[str, Any]) -> str:
    who = f"{agent.get('user') or '?'}@{agent.get('host') or '?'}"
    versions = agent.get("versions") or {}  # a dict: the store validates it when read
    shown = ", ".join(f"{k} {v}" for k, v in sorted(versions.items())[:6])
    commit = agent.get("git_commit")
    return who + (f" ({shown})" if shown else "") + (f", git {commit[:12]}" if commit else "")


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items() if v is not None) or "none"


def entity_record(e: Entity, made_by: list[Activity], history: str | None) -> str:
    """An entity's record: path, sha256, size, time, the activity that made it, and how."""
    size = None
    if e.path and os.path.isfile(e.path):
        size = os.path.getsize(e.path)
    elif isinstance(e.attrs.get("bytes"), int):
        size = e.attrs["bytes"]
    lines = [f"{e.label}  ({e.kind})",
             f"path:      {e.path or '(in memory)'}",
             f"sha256:    {e.sha256 or '(none)'}" + (f"  [{e.hash_kind}]" if e.hash_kind else ""),
             f"size:      {human_bytes(size) if size is not None else 'unknown'}",
             f"recorded:  {_when(e.created)}"]
    for a in made_by:
        lines += [f"made by:   {a.name}({_params(a.params)}) at {_when(a.started)}",
                  f"agent:     {_agent(a.agent)}"]
    if not made_by:
        lines.append("made by:   no recorded activity (an original input)")
    if history:
        lines += ["how to reproduce:", *("  " + line for line in history.splitlines()[1:])]
    return "\n".join(lines)


def activity_record(a: Activity, count: int = 1) -> str:
    """An activity's record: parameters, time, agent, what it used and generated."""
    times = f" (x{count}; the first shown)" if count > 1 else ""
    return "\n".join([
        f"{a.name}  (activity){times}",
        f"parameters: {_params(a.params)}",
        f"time:       {_when(a.started)}, {max(a.ended - a.started, 0.0) * 1e3:.1f} ms",
        f"agent:      {_agent(a.agent)}",
        f"used:       {', '.join(e.short() for e in a.used) or 'nothing'}",
        f"generated:  {', '.join(e.short() for e in a.generated) or 'nothing'}",
        f"reproduce:  {a.describe()}",
    ])


def node_records(g: nx.DiGraph, lineage: Lineage | None = None) -> dict[str, str]:
    """node -> its record as text; from the store when given, else from the graph's data."""
    acts = {a.id: a for a in lineage.activities()} if lineage is not None else {}
    made: dict[str, list[Activity]] = {}
    for a in acts.values():
        for e in a.generated:
            made.setdefault(e.id, []).append(a)
    out: dict[str, str] = {}
    for n, d in g.nodes(data=True):
        if d.get("node") == "activity" and n in acts:
            out[str(n)] = activity_record(acts[n], int(d.get("count", 1)))
        elif d.get("node") == "entity" and lineage is not None:
            e = lineage.entity(n)
            out[str(n)] = entity_record(e, made.get(e.id, []), lineage.history(e).text())
        else:
            shown = {k: v for k, v in d.items() if k not in ("members",) and v is not None}
            out[str(n)] = "\n".join(f"{k}: {v}" for k, v in shown.items())
    return out


__all__ = ["activity_record", "collapse_repeats", "entity_record", "node_records", "relatives"]
