"""Records serialize themselves: ``as_dict()`` is JSON, ``rows()`` feeds the one table helper,
and ``_repr_html_`` shows exactly those rows."""

from __future__ import annotations

import ast
import html
import importlib
import inspect
import json
import math
import pkgutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import mlmf_lab as ml
from mlmf_lab.compare import diff_state_dicts, embedding_stats, tensor_change
from mlmf_lab.distributed import load_shard, plan
from mlmf_lab.loading import compare_keys
from mlmf_lab.multimodal import FusionStrategy, MultiModalModel
from mlmf_lab.multimodal.demo import demo_config
from mlmf_lab.multimodal.train import AttentionMass, FusionReport, FusionResult
from mlmf_lab.provenance import Lineage
from mlmf_lab.provenance.hashing import file_tensor_hash
from mlmf_lab.tables import Column, Table, cell, plain

PACKAGE = Path(ml.__file__).parent


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(16, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.q_proj(x)))


class TinyLM(nn.Module):
    """Two blocks and a head whose output has ``logits``, like a transformers causal LM."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(16, 8)
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))
        self.head = nn.Linear(8, 16)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        x = self.embed(input_ids)
        for block in self.blocks:
            x = torch.tanh(block(x))
        return type("Out", (), {"logits": self.head(x)})()


def _records(tmp: Path) -> dict[str, Any]:
    """One small instance of every public record (and live object shown as a table)."""
    torch.manual_seed(0)
    out: dict[str, Any] = {}
    path = tmp / "tiny.safetensors"
    model = Tiny()
    ml.save_state_dict(model.state_dict(), path, metadata={"note": "<b>escaped</b>"})
    wf = ml.open_weights(path)
    out |= {"WeightFile": wf, "TensorInfo": wf.info("q_proj.weight")}
    out["LoadReport"] = compare_keys(nn.Linear(16, 3), {"weight": torch.ones(3, 8),
                                                        "extra": torch.ones(1)})

    a = {"w": torch.tensor([3.0, 4.0]), "zero": torch.zeros(2), "gone": torch.ones(1),
         "grow": torch.ones(2)}
    b = {"w": torch.tensor([3.0, 5.0]), "zero": torch.ones(2), "new": torch.ones(1),
         "grow": torch.ones(3)}
    diff = diff_state_dicts(a, b, ("a <1>", "b"))  # "zero": inf relative change, NaN cosine
    out |= {"CheckpointDiff": diff, "TensorDiff": diff["zero"],
            "TensorChange": tensor_change(a["zero"], b["zero"])}
    ids = torch.randint(0, 16, (2, 12), generator=torch.Generator().manual_seed(0))
    lm, other = TinyLM(), TinyLM()
    with torch.no_grad():
        other.head.weight.mul_(1.1)
    c = ml.compare(lm, other, ids)
    w = c.weights
    out |= {"Comparison": c, "WeightComparison": w, "TensorComparison": w["head.weight"],
            "LayerComparison": w.layers[0], "TokenStats": c.outputs,
            "ActivationStats": c.activations,
            "EmbeddingStats": embedding_stats(torch.randn(4, 3), torch.randn(4, 3))}

    cm = ml.CheckpointManager(tmp / "run", keep_last=3)
    for step, loss in [(1, 0.5), (2, 0.25)]:
        cm.save(model, step, metrics={"val_loss": loss, "epoch": step})
    out |= {"CheckpointList": cm.list(), "CheckpointRecord": cm.best(), "CheckpointManager": cm}

    cache = ml.ModelCache("1MiB")
    cache.get_or_load(path)
    cache.get_or_load(path)
    cache.put("pinned", {"w": torch.ones(4)}, pin=True)
    stats = cache.stats()
    out |= {"ModelCache": cache, "CacheStats": stats, "CacheEvent": stats.events[0],
            "Footprint": ml.cache.measure({"w": torch.ones(4)})}
    disk = ml.cache.DiskCache(tmp / "disk")
    disk.put_tensors("merged-1", {"w": torch.ones(2)}, meta={"operation": "merge"})
    out |= {"DiskCache": disk, "DiskEntry": disk.ls()[0],
            "PruneReport": disk.prune(max_bytes="1B", dry_run=True)}

    lora = Tiny()
    ml.lora.inject(lora, rank=2, alpha=4, targets=["q_proj"])
    summary = ml.lora.summary(lora)
    out |= {"LoraSummary": summary, "AdapterRow": summary.entries[0],
            "MergeReport": ml.lora.merge(lora)}

    qmodel = Tiny()
    done = ml.quant.quantize_model(qmodel, "int8")
    report = ml.quant.report(model, qmodel, torch.randn(2, 16))
    out |= {"QuantizeSummary": done, "LayerChange": done.layers[0], "QuantReport": report,
            "LayerReport": report.layers[0]}

    shard_plan = plan(path, "tensor", world_size=2, rules=[(r"q_proj\.weight$", "column")])
    shard = load_shard(path, shard_plan, rank=1, world_size=2, progress=False)
    out |= {"ShardPlan": shard_plan, "Piece": shard_plan.pieces[0], "Shard": shard}

    desc = ml.describe(path, stats=True)
    out |= {"ModelDescription": desc, "TensorStats": desc.stats[0],
            "ContentHash": file_tensor_hash(path)}
    lin = Lineage(tmp / "lin.db")
    with lin:
        ml.save_state_dict(ml.load_state_dict(path), tmp / "copy.safetensors")
    history = lin.history(tmp / "copy.safetensors")
    out |= {"History": history, "Activity": history.steps[0], "Entity": history.target,
            "HistoryDiff": lin.diff(path, tmp / "copy.safetensors")}
    lin.close()

    results = [FusionResult("early", 0.9, 0.95, 0.85, 0.1), FusionResult("late", 0.8, math.nan,
                                                                          0.7, 0.2)]
    out |= {"FusionReport": FusionReport(results, 1 / 3, 0.5, {}, {"early": [1.0, 0.5]}),
            "FusionResult": results[0], "AttentionMass": AttentionMass(0.5, 0.1, 0.125),
            "MultiModalModel": MultiModalModel(demo_config(FusionStrategy.MIDDLE, dim=8)),
            "MultiModalConfig": demo_config(FusionStrategy.LATE, dim=8)}
    return out


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _records(tmp_path_factory.mktemp("records"))


def assert_plain(value: Any, where: str) -> None:
    """Only str/int/float/bool/None, lists, and dicts with str keys; no NaN or inf."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert isinstance(k, str), f"{where}: key {k!r}"
            assert_plain(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            assert_plain(v, f"{where}[{i}]")
    else:
        assert value is None or type(value) in (str, int, float, bool), f"{where}: {value!r}"
        assert not isinstance(value, float) or math.isfinite(value), f"{where}: {value!r}"


NO_ROWS = {"MultiModalConfig"}  # a config: JSON for files, no table


def test_every_record_is_json_and_rows(records: dict[str, Any]) -> None:
    for name, rec in records.items():
        doc = rec.as_dict()
        assert isinstance(doc, dict), name
        assert_plain(doc, name)
        assert json.loads(json.dumps(doc, allow_nan=False)) == doc, name
        if name not in NO_ROWS:
            rows = rec.rows()
            assert isinstance(rows, list) and all(isinstance(r, dict) for r in rows), name
            assert all(isinstance(k, str) for r in rows for k in r), name


def test_the_html_shows_the_rows(records: dict[str, Any]) -> None:
    """Each shown row's cells, formatted once by the table helper, appear in the HTML."""
    shown = 0
    for name, rec in records.items():
        if not hasattr(rec, "_repr_html_"):
            continue
        page = rec._repr_html_()
        table = getattr(rec, "table", None)
        if table is None:  # CheckpointRecord and CheckpointManager show their list's table
            table = ml.checkpoint.CheckpointList([rec] if name == "CheckpointRecord"
                                                 else rec.list()).table
        t = table()
        if name not in ("CheckpointRecord", "CheckpointManager"):
            assert t.rows == rec.rows(), name
        assert t.rows, name
        assert html.escape(t.title) in page, name
        for row in t.rows:
            for col in t.cols:
                text = cell(row.get(col.key), col.fmt)
                assert html.escape(text) in page, (name, col.key, text)
        shown += 1
    assert shown >= 17


def test_values_are_escaped_and_raw_in_rows(records: dict[str, Any]) -> None:
    diff = records["CheckpointDiff"]
    assert "a &lt;1&gt; -&gt; b" in diff._repr_html_() and "<1>" not in diff._repr_html_()
    zero = diff["zero"]
    assert zero.rows()[0]["rel_change"] == math.inf and math.isnan(zero.rows()[0]["cosine"])
    assert zero.as_dict()["rel_change"] is None and zero.as_dict()["cosine"] is None
    wf = records["WeightFile"]
    assert wf.as_dict()["metadata"]["note"] == "<b>escaped</b>"
    assert [r["name"] for r in wf.rows()] == list(wf)
    assert records["ShardPlan"].as_dict()["bytes_per_rank"] == records["ShardPlan"].bytes_per_rank()


def test_cli_json_is_the_records_as_dict(records: dict[str, Any],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from mlmf_lab.cli import main

    wf, disk = records["WeightFile"], records["DiskCache"]
    assert main(["inspect", str(wf.path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == wf.as_dict()
    assert main(["cache", "ls", "--root", str(disk.root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == disk.as_dict()
    assert main(["cache", "ls", "--root", str(disk.root)]) == 0
    assert capsys.readouterr().out.strip() == disk.table().text()


def _library_modules() -> list[Any]:
    names = [m.name for m in pkgutil.walk_packages([str(PACKAGE)], "mlmf_lab.")
             if ".cli.__main__" not in m.name]
    return [importlib.import_module(n) for n in names]


def test_every_class_with_a_table_has_as_dict_and_rows() -> None:
    found = []
    for module in _library_modules():
        for cls in vars(module).values():
            if (inspect.isclass(cls) and cls.__module__ == module.__name__
                    and "_repr_html_" in vars(cls) and cls is not Table
                    and not module.__name__.startswith("mlmf_lab.views")):
                found.append(cls.__name__)
                assert callable(getattr(cls, "as_dict", None)), cls
                assert callable(getattr(cls, "rows", None)), cls
    assert len(found) >= 17


def test_no_table_is_built_by_hand() -> None:
    """HTML tables come from ``mlmf_lab.tables`` only."""
    for path in PACKAGE.rglob("*.py"):
        if path.name == "tables.py" and path.parent == PACKAGE:
            continue
        text = path.read_text(encoding="utf-8")
        for tag in ("<table", "<tr", "<td", "<th"):
            assert tag not in text, f"{path.relative_to(PACKAGE)} writes {tag}> by hand"


def test_progress_parameters_take_the_one_type() -> None:
    """Every ``progress`` parameter is annotated ``Progress`` (bool or a callable)."""
    seen = 0
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for arg in node.args.args + node.args.kwonlyargs:
                    if arg.arg == "progress":
                        seen += 1
                        assert arg.annotation is not None and "Progress" in ast.unparse(
                            arg.annotation), f"{path.name}:{node.lineno} {node.name}"
    assert seen >= 8


# -- the table helper itself ----------------------------------------------------------------

def test_plain_turns_records_into_json_and_refuses_tensors() -> None:
    assert plain({"p": Path("/x"), "t": (1, 2.5), "s": {"b", "a"}, "n": math.inf,
                  "e": FusionStrategy.LATE}) == {"p": "/x", "t": [1, 2.5], "s": ["a", "b"],
                                                  "n": None, "e": "late"}
    with pytest.raises(TypeError, match="torch.Tensor has no plain JSON form"):
        plain({"w": torch.ones(1)})


def test_table_text_html_and_markdown() -> None:
    t = Table([Column("name", code=True), Column("nbytes", "size", "bytes"),
               Column("loss", fmt=".2f"), "note"],
              [{"name": "a|b", "nbytes": 2048, "loss": 0.5, "note": "<x>"},
               {"name": "c", "nbytes": 1, "loss": math.nan},
               {"name": "d", "nbytes": 3, "loss": 1.0}],
              title="t", notes=["done"], max_rows=2, noun="tensors")
    assert t.text().splitlines() == [
        "t",
        "name     size  loss  note",
        "a|b   2.0 KiB  0.50  <x>",
        "c         1 B",
        "… 1 more tensors",
        "done",
    ]
    page = t.html()
    assert "<td style='text-align:left'><code>a|b</code></td><td>2.0 KiB</td>" in page
    assert "&lt;x&gt;" in page and "<x>" not in page
    assert "<td colspan=4>… 1 more tensors</td>" in page and "<small>done</small>" in page
    assert t.markdown().splitlines()[:4] == [
        "**t**", "", "| name | size | loss | note |", "|---|---|---|---|"]
    assert "| `a\\|b` | 2.0 KiB | 0.50 | <x> |" in t.markdown()


def test_headless_tables_have_no_heading_row() -> None:
    t = Table([Column("k", ""), Column("v", "")], [{"k": "held", "v": "1 B"}])
    assert t.text() == "held  1 B" and "<thead>" not in t.html()
