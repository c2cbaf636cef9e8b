"""The lineage graph as a static figure: data flows left to right, files, models, activities."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..provenance.lineage.layout import layout_graph

ENTITY_COLORS = {
    "weights": "#8fb3de", "adapter": "#b7d7a8", "checkpoint": "#f6d28b", "folder": "#d9d9d9",
    "file": "#d9d9d9", "model": "#e8a3a3", "state_dict": "#f2c4c4", "tensor": "#f2c4c4",
    "object": "#eeeeee",
}
ACTIVITY_COLOR = "#ffffff"


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
            ``"auto"``: vertical for long chains, which would be too wide. The layout is
            ``mlmf_lab.provenance.lineage.layout.layout_graph``, as in the interactive view.
        highlight: an entity to outline (default: ``focus``); needs an ``ml.Lineage``.

    Returns:
        A ``matplotlib.figure.Figure``.

    Raises:
        ConfigError: an unknown ``orientation``.
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
    layout = layout_graph(g)
    n_layers, tallest = max(layout.depth, 1), layout.width
    vertical = layout.vertical(orientation)
    xy = layout.positions(vertical)
    if vertical:
        fig = Figure(figsize=(max(5.0, 2.4 * tallest), max(2.4, 0.62 * n_layers + 1.0)))
    else:
        fig = Figure(figsize=(max(6.0, 1.75 * n_layers), max(2.4, 0.85 * tallest + 1.0)))
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
