"""LineageView without a browser: collapsed repeats, layout, records, relatives, selection."""

from __future__ import annotations

import networkx as nx
import pytest
import torch

import mlmf_lab as ml
from mlmf_lab.provenance.lineage.graphdata import collapse_repeats, relatives


@pytest.fixture()
def story(tmp_path):
    lineage = ml.Lineage(tmp_path / "lineage.db")
    with lineage:
        ml.save_state_dict({"w": torch.arange(16.0).reshape(4, 4)}, tmp_path / "a.safetensors")
        for _ in range(3):
            ml.load_state_dict(tmp_path / "a.safetensors")
        ml.convert(tmp_path / "a.safetensors", tmp_path / "b.gguf", quant="q8_0")
    yield lineage, tmp_path
    lineage.close()


def test_repeated_loads_collapse_into_one_node(story) -> None:
    lineage, _ = story
    raw = lineage.graph()
    assert sum(d.get("name") == "load" for _, d in raw.nodes(data=True)) == 3
    g = collapse_repeats(raw)
    loads = [n for n, d in g.nodes(data=True) if d.get("name") == "load"]
    assert len(loads) == 1 and g.nodes[loads[0]]["count"] == 3
    assert g.number_of_nodes() == raw.number_of_nodes() - 4  # two loads, two state dicts


def test_relatives_are_ancestors_and_descendants() -> None:
    g = nx.DiGraph([("a", "b"), ("b", "c"), ("x", "c")])
    assert relatives(g)["b"] == {"up": ["a"], "down": ["c"]}
    assert relatives(g)["c"]["up"] == ["a", "b", "x"]


def test_view_nodes_edges_records_and_selection(story) -> None:
    lineage, folder = story
    view = ml.views.LineageView(lineage)
    labels = [n["label"] for n in view.nodes]
    assert "load x3" in labels and len(view.nodes) == 7
    ids = {n["id"] for n in view.nodes}
    assert all(u in ids and v in ids for u, v, _ in view.edges)
    assert ids == set(view.records) == set(view.related)
    gguf = lineage.entity(folder / "b.gguf")
    xs = {n["id"]: n["x"] for n in view.nodes}
    assert xs[gguf.id] == max(xs.values())  # left to right: the last product on the right
    record = view.record(gguf.id)
    assert f"path:      {folder / 'b.gguf'}" in record
    assert f"sha256:    {gguf.sha256}" in record
    made_by = next(line for line in record.splitlines() if line.startswith("made by:"))
    assert made_by.startswith("made by:   convert(") and "quant=q8_0" in made_by
    assert "agent:" in record and "how to reproduce:" in record and "2. convert(" in record
    view.selected = gguf.id
    assert view.record() == record
    with pytest.raises(ml.MLMFError, match="no node 'nope' in this lineage graph"):
        view.selected = "nope"


def test_focus_starts_from_one_file(story) -> None:
    lineage, folder = story
    view = ml.views.LineageView(lineage, focus=folder / "b.gguf")
    assert view.selected == lineage.entity(folder / "b.gguf").id
    assert repr(view) == f"LineageView(3 entities, 2 activities; selected " \
                         f"{lineage.entity(folder / 'b.gguf').short()})"
    with pytest.raises(ml.MLMFError, match="focus needs the lineage store"):
        ml.views.LineageView(lineage.graph(), focus=folder / "b.gguf")


def test_a_bare_graph_works_with_records_from_its_data(story) -> None:
    lineage, _ = story
    view = ml.views.LineageView(lineage.graph())
    assert all(view.records.values())
    data, _ = view._repr_mimebundle_()
    assert data["image/png"].startswith("iVBOR")
