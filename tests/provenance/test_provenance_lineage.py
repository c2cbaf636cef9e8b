"""Lineage store: automatic recording, live-object linking, queries, PROV and networkx export."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import warnings

import networkx as nx
import pytest
import torch
from torch import nn

import mlmf_lab as ml
from mlmf_lab import events
from mlmf_lab.cli import main as cli_main
from mlmf_lab.convert import convert
from mlmf_lab.errors import MLMFError
from mlmf_lab.provenance.lineage import Lineage, active_lineages, export, query, read_prov
from mlmf_lab.provenance.lineage.db import Database
from mlmf_lab.runinfo import git_commit


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(8, 8)
        self.v_proj = nn.Linear(8, 4)


@pytest.fixture(autouse=True)
def _no_listeners():
    assert events.LISTENERS == [], "a store leaked from another test"
    yield
    assert events.LISTENERS == []


def _base(tmp_path, seed=0, name="base.safetensors"):
    torch.manual_seed(seed)
    path = tmp_path / name
    ml.save_state_dict(Tiny().state_dict(), path)
    return path


def _chain(tmp_path, lin):
    """base file -> load_into -> lora-inject -> (train) -> merge -> unload -> save -> convert."""
    base = _base(tmp_path)
    with lin:
        with torch.device("meta"):
            model = Tiny()
        ml.load_into(model, base)
        ml.lora.inject(model, rank=2, alpha=4, targets=["q_proj"])
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_()
        ml.lora.merge(model)
        ml.lora.unload(model)
        ml.save_state_dict(model.state_dict(), tmp_path / "merged.safetensors")
        convert(tmp_path / "merged.safetensors", tmp_path / "out")
    return base, model


def test_nothing_is_recorded_without_an_active_store(tmp_path):
    lin = Lineage(tmp_path / "lin.db")  # open but never activated
    base = _base(tmp_path)
    ml.save_state_dict(ml.load_state_dict(base), tmp_path / "copy.safetensors")
    with lin:
        pass
    ml.load_state_dict(base)  # after deactivation
    assert lin.activities() == [] and lin.entities() == []
    assert events.LISTENERS == []


def test_chain_through_live_objects_links_up(tmp_path):
    lin = Lineage(tmp_path / "lin.db")
    base, model = _chain(tmp_path, lin)
    hist = lin.history(tmp_path / "out")
    assert [a.name for a in hist.steps] == ["load", "lora-inject", "merge", "save", "convert"]
    # Each step consumes exactly what the previous one produced.
    for before, after in zip(hist.steps, hist.steps[1:], strict=False):
        assert {e.id for e in before.generated} & {e.id for e in after.used}
    assert [e.path for e in hist.origins] == [os.fspath(base.resolve())]
    assert hist.steps[1].params["rank"] == 2
    assert lin.entity(model).id == hist.steps[2].generated[0].id
    anc = {e.path for e in lin.ancestors(tmp_path / "out") if e.path}
    assert anc == {os.fspath((tmp_path / n).resolve()) for n in ("base.safetensors",
                                                                   "merged.safetensors")}
    desc = lin.descendants(base)
    assert desc[-1].path == os.fspath((tmp_path / "out").resolve())
    assert "How out@" in str(hist) and "lora-inject" in hist._repr_html_()
    agent = hist.steps[0].agent
    assert agent["versions"]["torch"] == torch.__version__ and agent["user"] and agent["host"]


def test_activate_and_deactivate(tmp_path):
    base = _base(tmp_path)
    lin = ml.Lineage.activate(tmp_path / "lin.db")
    try:
        assert lin.active and active_lineages() == [lin]
        ml.load_state_dict(base)
    finally:
        lin.deactivate()
    ml.load_state_dict(base)
    assert not lin.active and active_lineages() == []
    assert [a.name for a in lin.activities()] == ["load"]
    assert "1 activities" in repr(lin)


def test_nested_operations_are_one_activity(tmp_path):
    base = _base(tmp_path)
    with Lineage(tmp_path / "lin.db") as lin:
        convert(base, tmp_path / "folder")  # loads and saves inside
    assert [a.name for a in lin.activities()] == ["convert"]


def test_copy_made_outside_the_lab_is_linked_by_content(tmp_path):
    base = _base(tmp_path)
    with Lineage(tmp_path / "lin.db") as lin:
        ml.save_state_dict(ml.load_state_dict(base), tmp_path / "a.safetensors")
        (tmp_path / "moved").mkdir()
        shutil.copy(tmp_path / "a.safetensors", tmp_path / "moved" / "b.safetensors")
        ml.save_state_dict(ml.load_state_dict(tmp_path / "moved" / "b.safetensors"),
                           tmp_path / "c.safetensors")
    hist = lin.history(tmp_path / "c.safetensors")
    assert [e.path for e in hist.origins] == [os.fspath(base.resolve())]
    # The copy itself is no activity, but the content links b.safetensors to a.safetensors.
    assert [a.name for a in hist.steps] == ["load", "save", "load", "save"]
    g = lin.graph()
    assert any(d["relation"] == "same content" for _, _, d in g.edges(data=True))


def test_overwritten_file_is_a_new_entity(tmp_path):
    with Lineage(tmp_path / "lin.db") as lin:
        target = tmp_path / "w.safetensors"
        ml.save_state_dict({"x": torch.zeros(3)}, target)
        first = lin.entity(target)
        ml.save_state_dict({"x": torch.ones(3)}, target)
        second = lin.entity(target)
    assert first.id != second.id and first.sha256 != second.sha256
    assert lin.entity(first.id) == first


def test_diff_of_two_branches(tmp_path):
    base = _base(tmp_path)
    with Lineage(tmp_path / "lin.db") as lin:
        with torch.device("meta"):
            model = Tiny()
        ml.load_into(model, base)
        ml.save_state_dict(model.state_dict(), tmp_path / "plain.safetensors")
        ml.lora.inject(model, rank=2, alpha=2, targets=["v_proj"])
        ml.lora.merge(model)
        ml.save_state_dict(model.state_dict(), tmp_path / "tuned.safetensors")
    d = lin.diff(tmp_path / "plain.safetensors", tmp_path / "tuned.safetensors")
    assert [a.name for a in d.common] == ["load"]
    assert [a.name for a in d.only_a] == ["save"]
    assert [a.name for a in d.only_b] == ["lora-inject", "merge", "save"]
    assert "Shared history" in str(d)


def test_prov_json_round_trip(tmp_path):
    lin = Lineage(tmp_path / "lin.db")
    _chain(tmp_path, lin)
    with lin:  # unrelated to the chain: left out when focusing on it
        ml.save_state_dict({"x": torch.ones(2)}, tmp_path / "other.safetensors")
    out = lin.export_prov(tmp_path / "prov.json")
    doc = read_prov(out)
    assert doc == lin.to_prov()
    raw = json.loads(out.read_text())  # the W3C PROV-JSON layout, read without prov
    assert len(raw["entity"]) == len(lin.entities())
    assert len(raw["activity"]) == len(lin.activities())
    generated = {(r["prov:entity"], r["prov:activity"]) for r in raw["wasGeneratedBy"].values()}
    for a in lin.activities():
        for e in a.generated:
            assert (f"mlmf:e_{e.id}", f"mlmf:a_{a.id}") in generated
    derived = {(r["prov:generatedEntity"], r["prov:usedEntity"])
               for r in raw["wasDerivedFrom"].values()}
    merged = lin.entity(tmp_path / "merged.safetensors")
    out_e = lin.entity(tmp_path / "out")
    assert (f"mlmf:e_{out_e.id}", f"mlmf:e_{merged.id}") in derived
    focused = json.loads(lin.to_prov(focus=tmp_path / "merged.safetensors").serialize())
    other = lin.entity(tmp_path / "other.safetensors")
    assert f"mlmf:e_{other.id}" in raw["entity"]
    assert f"mlmf:e_{other.id}" not in focused["entity"]
    assert f"mlmf:e_{out_e.id}" in focused["entity"]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MLMFError, match="bad.json.*not a PROV-JSON"):
        read_prov(tmp_path / "bad.json")


def test_networkx_graph_agrees_with_queries(tmp_path):
    lin = Lineage(tmp_path / "lin.db")
    base, _ = _chain(tmp_path, lin)
    g = lin.graph()
    assert nx.is_directed_acyclic_graph(g)
    out = lin.entity(tmp_path / "out")
    entity_anc = {n for n in nx.ancestors(g, out.id) if g.nodes[n]["node"] == "entity"}
    assert entity_anc == {e.id for e in lin.ancestors(tmp_path / "out")}
    assert lin.entity(base).id in entity_anc
    sub = lin.graph(focus=tmp_path / "merged.safetensors")
    assert set(sub) == set(g)  # one linear chain: everything is related to the middle
    fig = ml.plots.plot_lineage(lin, focus=tmp_path / "out")
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"load", "merge", "convert"} <= {t.split("\n")[0] for t in texts}


def test_queries_and_exports_are_functions_of_the_database(tmp_path):
    """The database alone answers, through its own connection: no Lineage, no tracker."""
    lin = Lineage(tmp_path / "lin.db")
    _chain(tmp_path, lin)
    out = lin.entity(tmp_path / "out")
    db = Database(tmp_path / "lin.db")
    assert query.history(db, out) == lin.history(tmp_path / "out")
    assert query.related(db, out.id, up=True) == lin.ancestors(tmp_path / "out")
    assert query.entities(db, "weights") == lin.entities("weights")
    assert query.counts(db) == (len(lin.entities()), len(lin.activities()))
    g, whole = export.to_networkx(db, out), lin.graph(focus=tmp_path / "out")
    assert set(g.edges) == set(whole.edges) and dict(g.nodes(data="label")) == dict(
        whole.nodes(data="label"))
    assert [e.id for e in export.selection(db)[0]] == [e.id for e in lin.entities()]
    db.close()


def test_git_commit_matches_git(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    for cmd in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(["git", *cmd], cwd=repo, env=env, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert git_commit(repo / "sub") == head
    subprocess.run(["git", "pack-refs", "--all"], cwd=repo, env=env, check=True)
    assert git_commit(repo / "sub") == head
    assert git_commit(tmp_path) is None or git_commit(tmp_path) != head


def test_lookups_and_bad_stores(tmp_path):
    lin = Lineage(tmp_path / "lin.db")
    other = _base(tmp_path, name="never.safetensors")
    with pytest.raises(MLMFError, match="never.safetensors.*not recorded"):
        lin.history(other)
    with pytest.raises(MLMFError, match="never used or generated"):
        lin.entity(Tiny())
    (tmp_path / "notes.txt").write_text("hello, not SQLite" * 100)
    with pytest.raises(MLMFError, match="notes.txt"):
        Lineage(tmp_path / "notes.txt")
    with pytest.raises(MLMFError, match="folder"):
        Lineage(tmp_path)


def test_a_failing_store_warns_and_the_operation_succeeds(tmp_path, monkeypatch):
    base = _base(tmp_path)
    with Lineage(tmp_path / "lin.db") as lin:
        def broken():
            raise sqlite3.OperationalError("disk I/O error")
        monkeypatch.setattr(lin._db, "write", broken)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            state = ml.load_state_dict(base)
    assert len(state) == 4
    assert any("could not record 'load'" in str(w.message) for w in caught)


def test_cli_prints_the_chain(tmp_path, capsys, monkeypatch):
    lin = Lineage(tmp_path / "lin.db")
    _chain(tmp_path, lin)
    assert cli_main(["lineage", str(tmp_path / "out"), "--store", str(tmp_path / "lin.db"),
                     "--descendants"]) == 0
    text = capsys.readouterr().out
    assert "How out@" in text and "4. save" in text and "Origins: base.safetensors" in text
    monkeypatch.chdir(tmp_path)  # finds ./lineage.db? no: the store is called lin.db
    monkeypatch.delenv("MLMF_LINEAGE", raising=False)
    assert cli_main(["lineage", str(tmp_path / "out")]) == 1
    assert "no lineage store found" in capsys.readouterr().err
    monkeypatch.setenv("MLMF_LINEAGE", str(tmp_path / "lin.db"))
    assert cli_main(["lineage", str(tmp_path / "out"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in doc["steps"]][-1] == "convert"
    assert doc["target"]["path"] == str(tmp_path / "out") and doc["origins"][0]["sha256"]


class NoBias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(32, 32, bias=False)
        self.v_proj = nn.Linear(32, 32, bias=False)


def test_quantized_state_dict_shares_no_storage_but_links_by_keys(tmp_path):
    torch.manual_seed(5)
    ml.save_state_dict(NoBias().state_dict(), tmp_path / "base.safetensors")
    with Lineage(tmp_path / "lin.db") as lin:
        model = NoBias()
        ml.load_into(model, tmp_path / "base.safetensors")
        ml.quant.quantize_model(model, "int8")
        state = model.state_dict()  # dequantized afresh: no tensor shared with the model
        assert not {t.data_ptr() for t in state.values()} & {
            t.data_ptr() for t in model.parameters()}
        ml.save_state_dict(state, tmp_path / "q.safetensors")
        twin = NoBias()  # a second live model with the same keys makes the match ambiguous
        ml.load_into(twin, tmp_path / "base.safetensors")
        ml.save_state_dict(model.state_dict(), tmp_path / "q2.safetensors")
    hist = lin.history(tmp_path / "q.safetensors")
    assert [a.name for a in hist.steps] == ["load", "quantize", "save"]
    assert hist.steps[1].params["scheme"] == "int8"
    assert [a.name for a in lin.history(tmp_path / "q2.safetensors").steps] == ["save"]
    assert lin.history(tmp_path / "q2.safetensors").steps[0].used[0].kind == "state_dict"


def test_no_store_means_no_events_at_all(tmp_path, monkeypatch):
    def refuse(event):
        raise AssertionError(f"{event.activity} was emitted with no store active")

    monkeypatch.setattr(events, "emit", refuse)
    base = _base(tmp_path)
    model = Tiny()
    ml.load_into(model, base)
    ml.lora.inject(model, rank=2, alpha=2, targets=["q_proj"])
    ml.lora.merge(model)
    convert(base, tmp_path / "copy.safetensors")


def test_checkpoints_and_hashless_text(tmp_path):
    base = _base(tmp_path)
    with Lineage(tmp_path / "lin.db") as lin:
        model = Tiny()
        ml.load_into(model, base)
        ckpt = ml.CheckpointManager(tmp_path / "ckpts")
        rec = ckpt.save(model, step=3, metrics={"val_loss": 0.5})
        restored = Tiny()
        ckpt.load(restored, which="latest")
        ml.save_state_dict(restored.state_dict(), tmp_path / "restored.safetensors")
    hist = lin.history(tmp_path / "restored.safetensors")
    assert [a.name for a in hist.steps] == ["load", "checkpoint", "checkpoint-load", "save"]
    assert lin.entity(rec.path).kind == "checkpoint"
    assert hist.steps[1].params["step"] == 3
    text = hist.text(hashes=False)
    assert "@" not in text and "restored.safetensors" in text and "@" in str(hist)
    assert "@" not in lin.diff(base, tmp_path / "restored.safetensors").text(hashes=False)
