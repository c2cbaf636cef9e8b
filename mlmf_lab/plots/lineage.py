"""The lineage graph as a static figure: data flows left to right, files, models, activities."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure
from matplotlib.patches import Patch

ENTITY_COLORS = {
    "weights": "#8fb3de", "adapter": "#b7d7a8", "checkpoint": "#f6d28b", "folder": "#d9d9d9",
    "file": "#d9d9d9", "model": "#e8a3a3", "state_dict": "#f2c4c4", "tensor": "#f2c4c4",
    "object": "#eeeeee",
}
ACTIVITY_COLOR = "#ffffff"


def _layers(g: Any) -> dict[str, tuple[int, int, int]]:
    """node -> (layer, index in layer, layer size), layers from the sources onwards.

    Within a layer, nodes sit in the mean order of their predecessors (the barycentre
    heuristic), which keeps the branches of a lineage from crossing.
    """
    import networkx as nx

    pos: dict[str, tuple[int, int, int]] = {}
    for depth, layer in enumerate(nx.topological_generations(g)):

        def key(n: str) -> tuple[float, str, str]:
            preds = [pos[p][1] - (pos[p][2] - 1) / 2 for p in g.predecessors(n) if p in pos]
            centre = sum(preds) / len(preds) if preds else 0.0
            return (centre, str(g.nodes[n].get("label", "")), str(n))

        ordered = sorted(layer, key=key)
        for i, n in enumerate(ordered):
            pos[n] = (depth, i, len(ordered))
    return pos


def _activity_text(data: dict[str, Any]) -> str:
    params = data.get("params") or {}
    shown = [f"{k}={v}" for k, v in params.items()
             if v is not None and k in ("scheme", "quant", "rank", "step", "format")][:2]
    return "\n".join([str(data.get("label", "?")), *shown])


def plot_lineage(source: Any, focus: Any = None, title: str | None = None,
                 orientation: str = "auto", highlight: Any = None) -> Figure:
    """Draw a lineage graph: boxes are entities (coloured by kind), white tags are activities.

    Args:
        source: an ``ml.Lineage`` (drawn whole, or around ``focus``) or the networkx graph
            from ``Lineage.graph()``.
        focus: a path, entity or live object: draw only it, its ancestors and descendants.
        title: figure title (default: "Lineage").
        orientation: ``"horizontal"`` (left to right), ``"vertical"`` (top to bottom), or
            ``"auto"``: vertical for long chains, which would be too wide.
        highlight: an entity to outline (default: ``focus``); needs an ``ml.Lineage``.

    Returns:
        A ``matplotlib.figure.Figure``.
    """
    import networkx as nx

    focus_id = None
    if isinstance(source, nx.DiGraph):
        g = source
    else:
        g = source.graph(focus)
        marked = highlight if highlight is not None else focus
        if marked is not None:
            focus_id = source.entity(marked).id
    pos = _layers(g) if g.number_of_nodes() else {}
    n_layers = max((p[0] for p in pos.values()), default=0) + 1
    tallest = max((p[2] for p in pos.values()), default=1)
    if orientation not in ("auto", "horizontal", "vertical"):
        raise ValueError(f"orientation must be auto, horizontal or vertical, not {orientation!r}")
    vertical = orientation == "vertical" or (orientation == "auto" and n_layers > 6)
    if vertical:
        fig = Figure(figsize=(max(5.0, 2.4 * tallest), max(2.4, 0.62 * n_layers + 1.0)))
        xy = {n: (((s - 1) / 2.0 - i) * -1.0, -float(d)) for n, (d, i, s) in pos.items()}
    else:
        fig = Figure(figsize=(max(6.0, 1.75 * n_layers), max(2.4, 0.85 * tallest + 1.0)))
        xy = {n: (float(d), (s - 1) / 2.0 - i) for n, (d, i, s) in pos.items()}
    ax = fig.add_subplot()
    for u, v, data in g.edges(data=True):
        dashed = data.get("relation") == "same content"
        ax.annotate("", xy=xy[v], xytext=xy[u], zorder=1,
                    arrowprops={"arrowstyle": "-|>", "color": "#555555", "lw": 1.0,
                                "shrinkA": 12 if vertical else 22,
                                "shrinkB": 12 if vertical else 22,
                                "linestyle": "--" if dashed else "-"})
    kinds: set[str] = set()
    for n, (x, y) in xy.items():
        data = g.nodes[n]
        if data.get("node") == "activity":
            ax.text(x, y, _activity_text(data), ha="center", va="center", fontsize=7.5,
                    style="italic", zorder=3,
                    bbox={"boxstyle": "round4,pad=0.35", "fc": ACTIVITY_COLOR, "ec": "#555555"})
            continue
        kind = str(data.get("kind", "object"))
        kinds.add(kind)
        label = str(data.get("label", n))
        label = label.replace("@", "  @", 1) if vertical else label.replace("@", "\n@", 1)
        ax.text(x, y, label, ha="center", va="center", fontsize=7.5, zorder=3,
                bbox={"boxstyle": "round,pad=0.4", "fc": ENTITY_COLORS.get(kind, "#eeeeee"),
                      "ec": "black" if n == focus_id else "#777777",
                      "lw": 2.2 if n == focus_id else 0.8})
    if vertical:
        ax.set_xlim(-tallest / 2.0, tallest / 2.0)
        ax.set_ylim(-n_layers + 0.5, 0.5)
    else:
        ax.set_xlim(-0.6, n_layers - 0.4)
        ax.set_ylim(-tallest / 2.0 - 0.2, tallest / 2.0 + 0.2)
    ax.axis("off")
    if kinds:
        handles = [Patch(fc=ENTITY_COLORS.get(k, "#eeeeee"), ec="#777777", label=k)
                   for k in sorted(kinds)]
        handles.append(Patch(fc=ACTIVITY_COLOR, ec="#555555", label="activity"))
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                  ncol=min(len(handles), 6), fontsize=7, frameon=False)
    ax.set_title(title or "Lineage", fontsize=10)
    fig.tight_layout()
    return fig
