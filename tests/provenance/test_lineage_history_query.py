"""``Lineage.history``/``ancestors``/``descendants`` as recursive SQL queries: the same
answers as walking the exported networkx graph, and a cycle in a changed store ends."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import networkx as nx
import torch

import mlmf_lab as ml
from mlmf_lab import events
from mlmf_lab.provenance.lineage import Lineage


def save(path: Path, value: float) -> Path:
    ml.save_state_dict({"x": torch.full((2,), value)}, path)
    return path


def diamond_and_chain(tmp_path: Path) -> tuple[Lineage, list[Path]]:
    """a -> b, a -> c, (b, c) -> d, then d -> e -> ... -> e9: a diamond below a chain."""
    lin = Lineage(tmp_path / "lineage.db")
    files = {n: save(tmp_path / f"{n}.safetensors", i) for i, n in enumerate("abcd")}
    lin.record(events.Event("convert", [files["a"]], [files["b"]], started=1.0))
    lin.record(events.Event("convert", [files["a"]], [files["c"]], started=2.0))
    lin.record(events.Event("merge", [files["b"], files["c"]], [files["d"]], started=3.0))
    prev, chain = files["d"], []
    for i in range(10):
        nxt = save(tmp_path / f"e{i}.safetensors", 10 + i)
        lin.record(events.Event("convert", [prev], [nxt], {"step": i}, started=4.0 + i))
        chain.append(nxt)
        prev = nxt
    return lin, [files["a"], files["b"], files["c"], files["d"], *chain]


def test_history_matches_the_graph(tmp_path: Path) -> None:
    lin, files = diamond_and_chain(tmp_path)
    g = lin.graph()
    last = lin.entity(files[-1])
    hist = lin.history(files[-1])
    expected = nx.ancestors(g, last.id)
    ancestors = lin.ancestors(files[-1])
    assert {e.id for e in ancestors} == expected & {e.id for e in lin.entities()}
    assert [e.path for e in ancestors][:2] == [str(files[-2].resolve()), str(files[-3].resolve())]
    assert [a.name for a in hist.steps][:4] == ["convert", "convert", "merge", "convert"]
    assert [a.params.get("step") for a in hist.steps][3:] == list(range(10))
    assert [e.path for e in hist.origins] == [str(files[0].resolve())]
    assert {e.id for e in lin.descendants(files[0])} == {lin.entity(f).id for f in files[1:]}
    lin.close()


def test_a_cycle_written_into_the_store_ends_the_walk(tmp_path: Path) -> None:
    lin, files = diamond_and_chain(tmp_path)
    first, last = lin.entity(files[0]).id, lin.entity(files[-1]).id
    with sqlite3.connect(tmp_path / "lineage.db") as c:  # another program edits the store
        c.execute("INSERT INTO derivations VALUES (?, ?, NULL, 'derived')", (first, last))
    lin.close()
    lin = Lineage(tmp_path / "lineage.db")
    hist = lin.history(files[-1])
    assert len(hist.steps) == 13 and not hist.origins  # everything derives from something
    assert len(lin.ancestors(files[0])) == len(files) - 1
    lin.close()
