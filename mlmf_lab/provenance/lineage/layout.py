"""Where each node of a lineage graph goes: layers and positions as plain data.

The static figure (``ml.plots.plot_lineage``) and the interactive view draw the same
layout, so it is computed here, away from any drawing code.

Layers follow the data: a node sits one layer after its furthest predecessor, so every
edge points to a later layer (the topological generations of the graph). Within a layer,
nodes sit in the mean order of their predecessors (the barycentre heuristic), which keeps
the branches of a lineage from crossing; ties go by label, then by id, so the layout
does not depend on the order the store returned the nodes in.

>>> import networkx as nx
>>> g = nx.DiGraph([("base", "quantize"), ("quantize", "q8"), ("base", "lora"), ("lora", "a")])
>>> layout_graph(g).layers
(('base',), ('lora', 'quantize'), ('a', 'q8'))
>>> layout_graph(g).positions()["q8"]
(2.0, -0.5)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from ...errors import ConfigError

if TYPE_CHECKING:
    import networkx as nx

ORIENTATIONS = ("auto", "horizontal", "vertical")
AUTO_VERTICAL_LAYERS = 6  # "auto" turns a chain longer than this on its side: too wide otherwise


class Placement(NamedTuple):
    """One node's slot: its layer, its place in the layer (0 = first) and the layer's size."""

    layer: int
    order: int
    size: int


@dataclass(frozen=True)
class LineageLayout:
    """Layers of node ids, sources first, each in drawing order.

    ``positions()`` turns them into coordinates: one unit between layers and between
    neighbours in a layer, each layer centred on the axis.
    """

    layers: tuple[tuple[str, ...], ...]

    @property
    def depth(self) -> int:
        """Number of layers."""
        return len(self.layers)

    @property
    def width(self) -> int:
        """Size of the largest layer (at least 1, so an empty graph still has a size)."""
        return max((len(layer) for layer in self.layers), default=1)

    def placements(self) -> dict[str, Placement]:
        """node -> (layer, order in the layer, layer size)."""
        return {n: Placement(d, i, len(layer))
                for d, layer in enumerate(self.layers) for i, n in enumerate(layer)}

    def vertical(self, orientation: str = "auto") -> bool:
        """Whether to draw top to bottom; ``"auto"`` does for more than six layers.

        Raises:
            ConfigError: an orientation other than auto, horizontal or vertical.
        """
        if orientation not in ORIENTATIONS:
            raise ConfigError(f"unknown orientation {orientation!r}; supported: "
                              f"{', '.join(ORIENTATIONS)}")
        return orientation == "vertical" or (
            orientation == "auto" and self.depth > AUTO_VERTICAL_LAYERS)

    def positions(self, vertical: bool = False) -> dict[str, tuple[float, float]]:
        """node -> (x, y): layers left to right (or top to bottom), first node on top
        (or on the left), each layer centred on zero."""
        out: dict[str, tuple[float, float]] = {}
        for n, (d, i, s) in self.placements().items():
            across = (s - 1) / 2.0 - i  # +half .. -half: the first node highest
            out[n] = (-across, -float(d)) if vertical else (float(d), across)
        return out

    def as_dict(self, orientation: str = "auto") -> dict[str, Any]:
        """JSON-ready: the layers, the orientation chosen and every node's position."""
        vertical = self.vertical(orientation)
        return {"layers": [list(layer) for layer in self.layers],
                "vertical": vertical,
                "positions": {n: list(xy) for n, xy in self.positions(vertical).items()}}


def layout_graph(g: nx.DiGraph) -> LineageLayout:
    """Layer a lineage graph (``Lineage.graph()``) and order each layer by barycentre.

    Nodes are sorted by (mean centred index of their predecessors, ``label`` attribute, id).

    Raises:
        networkx.NetworkXUnfeasible: the graph has a cycle (a lineage never does).
    """
    import networkx as nx

    layers: list[tuple[str, ...]] = []
    centred: dict[str, float] = {}  # placed node -> its index measured from the layer's centre
    for generation in nx.topological_generations(g):

        def key(n: str) -> tuple[float, str, str]:
            preds = [centred[p] for p in g.predecessors(n) if p in centred]
            centre = sum(preds) / len(preds) if preds else 0.0
            return (centre, str(g.nodes[n].get("label", "")), str(n))

        ordered = tuple(sorted(generation, key=key))
        for i, n in enumerate(ordered):
            centred[n] = i - (len(ordered) - 1) / 2
        layers.append(ordered)
    return LineageLayout(tuple(layers))


__all__ = ["LineageLayout", "Placement", "layout_graph"]
