"""LineageView: the lineage graph, left to right, with each node's record one click away.

>>> ml.views.LineageView(lineage, focus="minilm-tuned.gguf")   # doctest: +SKIP

The graph is ``Lineage.graph(focus)`` with repeated activities collapsed
(``graphdata.collapse_repeats``), placed by ``layout.layout_graph`` (the layout the static
figure draws), every node's record and relatives computed here once (``graphdata``). The
page draws the graph as SVG with pan and zoom; a click selects a node (synced as
``selected``), shows its record as text and highlights its ancestors and descendants.
"""

from __future__ import annotations

from typing import Any

import traitlets as t

from ..errors import MLMFError
from ..provenance.lineage.graphdata import collapse_repeats, node_records, relatives
from ..provenance.lineage.layout import layout_graph
from .base import View


def _label(data: dict[str, Any]) -> str:
    label = str(data.get("label") or data.get("name") or "?")
    count = int(data.get("count", 1))
    return f"{label} x{count}" if count > 1 else label


class LineageView(View):
    """The graph of an ``ml.Lineage`` (or of a networkx graph from ``Lineage.graph()``).

    Args:
        lineage: the store, or a graph (records then come from the graph's own data).
        focus: a path, entity or live object: draw it, its ancestors and descendants, and
            start with it selected.
        orientation: ``"horizontal"`` (left to right, the default), ``"vertical"`` or
            ``"auto"``, as in ``ml.plots.plot_lineage``.

    Raises:
        MLMFError: ``focus`` is not in the store, or ``focus`` is given with a bare graph.
    """

    view_name = "lineage"

    nodes = t.List(t.Dict()).tag(sync=True)  # {id, node, kind, label, x, y}
    edges = t.List(t.List()).tag(sync=True)  # [from, to, relation]
    vertical = t.Bool(False).tag(sync=True)
    selected = t.Unicode("").tag(sync=True)  # a node id, "" = none
    records = t.Dict().tag(sync=True)  # node id -> its record as text
    related = t.Dict().tag(sync=True)  # node id -> {"up": [...], "down": [...]}
    title = t.Unicode("lineage").tag(sync=True)

    def __init__(self, lineage: Any, focus: Any = None, *, orientation: str = "horizontal",
                 title: str = "lineage") -> None:
        import networkx as nx

        store = None if isinstance(lineage, nx.DiGraph) else lineage
        if store is None and focus is not None:
            raise MLMFError("focus needs the lineage store (ml.Lineage), not a bare graph")
        raw = lineage if store is None else store.graph(focus)
        graph = collapse_repeats(raw)
        layout = layout_graph(graph)
        vertical = layout.vertical(orientation)
        xy = layout.positions(vertical)
        nodes: list[dict[str, Any]] = [{"id": str(n), "node": str(d.get("node", "entity")),
                  "kind": str(d.get("kind", "object")), "label": _label(d),
                  "x": xy[n][0], "y": xy[n][1]} for n, d in graph.nodes(data=True)]
        nodes.sort(key=lambda n: (n["x"], -n["y"], n["id"]))
        edges = sorted([str(u), str(v), str(d.get("relation", ""))]
                       for u, v, d in graph.edges(data=True))
        selected = store.entity(focus).id if store is not None and focus is not None else ""
        self._graph = graph
        super().__init__(nodes=nodes, edges=edges, vertical=vertical, selected=selected,
                         records=node_records(graph, store), related=relatives(graph),
                         title=title)

    @t.validate("selected")
    def _known(self, proposal: dict[str, Any]) -> str:
        value = str(proposal["value"])
        if value and value not in self.records:
            raise MLMFError(f"no node {value!r} in this lineage graph")
        return value

    def record(self, node: str | None = None) -> str:
        """The record of ``node`` (default: the selected one) as the page shows it."""
        node = self.selected if node is None else node
        return self.records.get(node, "")

    def __repr__(self) -> str:
        n_e = sum(n["node"] == "entity" for n in self.nodes)
        n_a = len(self.nodes) - n_e
        chosen = next((n["label"] for n in self.nodes if n["id"] == self.selected), None)
        return (f"LineageView({n_e} entities, {n_a} activities"
                + (f"; selected {chosen}" if chosen else "") + ")")

    def _fallback_figure(self) -> Any:
        from ..plots.lineage import plot_lineage

        return plot_lineage(self._graph, title=self.title,
                            orientation="vertical" if self.vertical else "horizontal")


__all__ = ["LineageView"]
