"""The lineage graph layout (``provenance/lineage/layout.py``) against naive references: layers
by longest path from a source, each layer ordered by its predecessors' mean position, branches
that do not cross. Plain data only: no figure is drawn here."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import networkx as nx
import pytest
import torch

import mlmf_lab as ml
from mlmf_lab.errors import ConfigError
from mlmf_lab.provenance.lineage import Lineage
from mlmf_lab.provenance.lineage.layout import LineageLayout, layout_graph


def lineage_like() -> nx.DiGraph:
    """base -> two activities -> their outputs, labelled so that sorting by label alone
    would cross the branches; plus a second source and a copy found elsewhere."""
    g = nx.DiGraph()
    for n, label in [("base", "base"), ("q", "z-quantize"), ("l", "a-lora"),
                     ("q8", "b-out"), ("ad", "y-out"), ("cfg", "config"), ("m", "merge"),
                     ("merged", "merged"), ("copy", "merged copy")]:
        g.add_node(n, label=label)
    g.add_edges_from([("base", "q"), ("base", "l"), ("q", "q8"), ("l", "ad"), ("ad", "m"),
                      ("cfg", "m"), ("m", "merged"), ("merged", "copy")])
    return g


def naive_layer(g: nx.DiGraph) -> dict[str, int]:
    """Longest path from any source, by plain recursion."""

    @cache
    def depth(n: str) -> int:
        return max((depth(p) + 1 for p in g.predecessors(n)), default=0)

    return {n: depth(n) for n in g}


def crossings(layout: LineageLayout, g: nx.DiGraph) -> int:
    """Pairs of edges between the same two adjacent layers whose ends swap order."""
    ys = layout.positions()
    place = layout.placements()
    edges = [(u, v) for u, v in g.edges if place[v].layer == place[u].layer + 1]
    count = 0
    for i, (u1, v1) in enumerate(edges):
        for u2, v2 in edges[i + 1:]:
            if place[u1].layer == place[u2].layer:
                du, dv = ys[u1][1] - ys[u2][1], ys[v1][1] - ys[v2][1]
                count += du * dv < 0
    return count


def test_layers_are_the_longest_path_from_a_source() -> None:
    g = lineage_like()
    layout = layout_graph(g)
    place = layout.placements()
    assert {n: p.layer for n, p in place.items()} == naive_layer(g)
    assert all(place[u].layer < place[v].layer for u, v in g.edges)
    assert sorted(n for layer in layout.layers for n in layer) == sorted(g)
    assert (layout.depth, layout.width) == (6, 2)
    assert layout.layers[0] == ("base", "cfg")  # two sources: by label


def test_each_layer_is_ordered_by_the_mean_position_of_its_predecessors() -> None:
    g = lineage_like()
    layout = layout_graph(g)
    pos = layout.positions()
    for layer in layout.layers[1:]:
        def key(n: str) -> tuple[float, str, str]:
            preds = [-pos[p][1] for p in g.predecessors(n)]  # y is +half .. -half: negate
            return (sum(preds) / len(preds) if preds else 0.0, g.nodes[n]["label"], n)
        assert list(layer) == sorted(layer, key=key)
    assert layout.layers[1] == ("l", "q")  # same predecessor: by label (a-lora, z-quantize)
    assert layout.layers[2] == ("ad", "q8")  # each under its parent, against the labels
    # the branches do not cross, where sorting each layer by label alone would
    by_label = LineageLayout(tuple(tuple(sorted(layer, key=lambda n: g.nodes[n]["label"]))
                                   for layer in layout.layers))
    assert crossings(layout, g) == 0 and crossings(by_label, g) == 1


def test_the_layout_does_not_depend_on_insertion_order() -> None:
    g = lineage_like()
    shuffled = nx.DiGraph()
    shuffled.add_nodes_from(reversed(list(g.nodes(data=True))))
    shuffled.add_edges_from(reversed(list(g.edges)))
    assert layout_graph(shuffled) == layout_graph(g)


def test_positions_one_unit_apart_each_layer_centred() -> None:
    layout = LineageLayout((("a",), ("b", "c", "d"), ("e", "f")))
    assert layout.positions() == {"a": (0.0, 0.0), "b": (1.0, 1.0), "c": (1.0, 0.0),
                                  "d": (1.0, -1.0), "e": (2.0, 0.5), "f": (2.0, -0.5)}
    vertical = layout.positions(vertical=True)
    assert vertical == {n: (-y, -x) for n, (x, y) in layout.positions().items()}
    assert layout.placements()["f"] == (2, 1, 2)


def test_orientation_and_json() -> None:
    chain = LineageLayout(tuple((f"n{i}",) for i in range(7)))
    assert chain.vertical("auto") and not chain.vertical("horizontal")
    assert not LineageLayout(tuple((f"n{i}",) for i in range(6))).vertical("auto")
    with pytest.raises(ConfigError, match="unknown orientation 'diagonal'; supported: auto, "
                                          "horizontal, vertical"):
        chain.vertical("diagonal")
    data = json.loads(json.dumps(chain.as_dict()))
    assert data["vertical"] is True and data["layers"][6] == ["n6"]
    assert data["positions"]["n6"] == [0.0, -6.0]
    empty = layout_graph(nx.DiGraph())
    assert (empty.layers, empty.depth, empty.width, empty.positions()) == ((), 0, 1, {})


def test_a_recorded_lineage_is_laid_out_node_for_node(tmp_path: Path) -> None:
    with Lineage(tmp_path / "lin.db") as lin:
        ml.save_state_dict({"w": torch.ones(2, 2)}, tmp_path / "a.safetensors")
        sd = ml.load_state_dict(tmp_path / "a.safetensors")
        ml.save_state_dict(sd, tmp_path / "b.safetensors")
    g = lin.graph()
    layout = layout_graph(g)
    assert set(layout.placements()) == set(g) and len(g) >= 3
    place = layout.placements()
    assert all(place[u].layer < place[v].layer for u, v in g.edges)
    b = lin.entity(tmp_path / "b.safetensors").id
    assert place[b].layer == layout.depth - 1  # the last file made is the last layer
