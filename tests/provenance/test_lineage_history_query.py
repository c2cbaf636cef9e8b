"""``Lineage.history``/``ancestors``/``descendants`` as recursive SQL queries: the same
answers as walking the exported networkx graph, and a cycle in a changed store ends."""

from __future__ import annotations

import sqlite3
from dataclasses import fields
from pathlib import Path

import networkx as nx
import pytest
import torch

import mlmf_lab as ml
from mlmf_lab import events
from mlmf_lab.errors import MLMFError
from mlmf_lab.provenance.lineage import Lineage
from mlmf_lab.provenance.lineage.db import sql_order
from mlmf_lab.provenance.lineage.records import (
    Activity,
    Entity,
    stored_activity,
    stored_entity,
)


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


def test_history_is_the_records_the_store_reads_one_by_one(tmp_path: Path) -> None:
    """The one-query history builds the same records as reading each activity and entity."""
    lin, files = diamond_and_chain(tmp_path)
    db = lin._db
    hist = lin.history(files[-1])
    assert [a.id for a in hist.steps] == [a.id for a in sorted(hist.steps,
                                                               key=lambda a: (a.started, a.id))]
    for step in hist.steps:
        (alone,) = db.activities("WHERE a.id = ?", (step.id,))
        assert alone.as_dict() == step.as_dict()
        for e in step.used + step.generated:
            assert db.entity(e.id).as_dict() == e.as_dict()
    assert hist.steps[-1].params == {"step": 9} and hist.steps[-1].agent["user"]
    lin.close()


def test_an_activity_whose_agent_is_not_stored_has_no_agent_facts(tmp_path: Path) -> None:
    lin, files = diamond_and_chain(tmp_path)
    lin.close()
    with sqlite3.connect(tmp_path / "lineage.db") as c:  # another program edits the store
        c.execute("UPDATE activities SET agent = 'gone' WHERE rowid = 1")
    c.close()
    lin = Lineage(tmp_path / "lineage.db")
    first = lin.history(files[-1]).steps[0]
    assert first.agent == {"user": None, "host": None, "versions": {}, "git_commit": None}
    assert lin.history(files[-1]).steps[1].agent["versions"]  # the others keep theirs
    lin.close()


def test_activities_of_mixed_types_sort_as_sqlite_orders_them(tmp_path: Path) -> None:
    """``sql_order`` (the history sorts in Python) agrees with SQLite's ORDER BY even on
    values a changed store may hold: NULL, numbers, text, blobs."""
    values = [3.5, None, "b", 2, b"\x01", "a", -1.0, b"\x00", 2.0, "B"]
    rows = [(f"id{i}", v) for i, v in enumerate(values)]
    c = sqlite3.connect(":memory:")
    c.execute("CREATE TABLE t (id TEXT, v)")
    c.executemany("INSERT INTO t VALUES (?, ?)", rows)
    expected = c.execute("SELECT id, v FROM t ORDER BY v, id").fetchall()
    c.close()
    ordered = list(reversed(rows))
    sql_order(ordered, (1, 0))
    assert ordered == expected


def test_records_built_from_checked_rows_equal_the_constructors() -> None:
    """The store sets checked values straight into its records (``stored_entity``,
    ``stored_activity``): they must be what the dataclass constructors make."""
    e = Entity("e" * 32, "weights", "w.safetensors", "/w.safetensors", "0" * 64, "tensors", 1.5,
               {"tensors": 2})
    fast_e = stored_entity(*(getattr(e, f.name) for f in fields(Entity)))
    assert vars(fast_e) == vars(e) and fast_e == e and hash(fast_e) == hash(e)
    a = Activity("a" * 32, "convert", 1.0, 2.0, {"step": 1}, {"user": "u"}, (e,), (e,), 7)
    fast_a = stored_activity(*(getattr(a, f.name) for f in fields(Activity)))
    assert vars(fast_a) == vars(a) and fast_a == a and repr(fast_a) == repr(a)
    for record in (Entity, Activity):  # nothing the constructor would run is skipped
        assert not hasattr(record, "__post_init__")


def test_a_store_with_many_bad_rows_names_the_oldest_activity(tmp_path: Path) -> None:
    lin, files = diamond_and_chain(tmp_path)
    lin.close()
    with sqlite3.connect(tmp_path / "lineage.db") as c:  # another program edits the store
        oldest = c.execute("SELECT id FROM activities ORDER BY started, id LIMIT 1").fetchone()[0]
        c.execute("UPDATE activities SET params = '{'")
    c.close()
    lin = Lineage(tmp_path / "lineage.db")
    with pytest.raises(MLMFError, match=f"{tmp_path / 'lineage.db'}: activity '{oldest}': "
                       "params: not JSON"):
        lin.history(files[-1])
    lin.close()


def test_origins_come_nearest_first(tmp_path: Path) -> None:
    lin = Lineage(tmp_path / "lineage.db")
    a, b, o, m = (save(tmp_path / f"{n}.safetensors", i) for i, n in enumerate("abom"))
    lin.record(events.Event("convert", [a], [b], started=1.0))
    lin.record(events.Event("merge", [b, o], [m], started=2.0))
    assert [e.path for e in lin.history(m).origins] == [str(o.resolve()), str(a.resolve())]
    assert lin.history(a).origins == (lin.entity(a),) and not lin.history(a).steps
    lin.close()
