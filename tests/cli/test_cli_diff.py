"""``mlmf-lab compare`` (alias ``diff``) against the plain formulas, and CLI recording with
MLMF_LINEAGE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mlmf_lab as ml
from mlmf_lab.cli import main


@pytest.mark.parametrize("command", ["compare", "diff"])  # diff is compare's alias
def test_compare_two_files(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           command: str) -> None:
    a = {"w": torch.tensor([3.0, 4.0]), "same": torch.ones(2), "gone": torch.ones(1),
         "grow": torch.ones(2)}
    b = {"w": torch.tensor([3.0, 5.0]), "same": torch.ones(2), "new": torch.ones(1),
         "grow": torch.ones(3)}
    ml.save_state_dict(a, tmp_path / "a.safetensors")
    ml.save_state_dict(b, tmp_path / "b.safetensors")
    assert main([command, str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in doc["weights"]["tensors"]}
    assert set(rows) == {"w", "gone", "grow", "new"}  # identical tensors are left out
    assert rows["w"]["rel_change"] == pytest.approx(1 / 5)  # ||b - a|| / ||a||
    assert rows["w"]["cosine"] == pytest.approx((9 + 20) / (5 * 34**0.5))
    assert rows["w"]["sigma"] == pytest.approx(1 / (7 + 8))  # sum|b - a| / (sum|a| + sum|b|)
    assert rows["w"]["max_abs"] == 1.0 and rows["w"]["changed"] == 0.5
    assert (rows["gone"]["status"], rows["new"]["status"]) == ("only in a", "only in b")
    assert rows["grow"]["status"] == "reshaped" and rows["grow"]["shape_b"] == [3]
    assert doc["activations"] is None and doc["outputs"] is None
    assert main([command, str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].endswith("1 changed, 1 same, 1 only in a, 1 reshaped, 1 only in b, "
                            "relative change 0.192 overall, largest 0.2 in w")
    assert text[2].split() == ["w", "changed", "2", "2", "2.000e-01", "0.994692", "6.667e-02",
                               "50.0%", "1.000e+00"]
    assert [line.split()[:2] for line in text[3:6]] == [["gone", "only"], ["grow", "reshaped"],
                                                        ["new", "only"]]
    assert text[9].split()[:2] == ["other", "2"]  # the per-layer table


def test_compare_runs_both_models_on_inputs(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from hf_tiny import causal_lm

    causal_lm(tmp_path / "m", tokenizer=False)
    ml.convert(tmp_path / "m", tmp_path / "m.gguf", quant="q8_0")
    ids = torch.randint(0, 320, (2, 16), generator=torch.Generator().manual_seed(0))
    ml.save_state_dict({"input_ids": ids}, tmp_path / "ids.safetensors")
    assert main(["compare", str(tmp_path / "m"), str(tmp_path / "m.gguf"), "--json",
                 "--inputs", str(tmp_path / "ids.safetensors")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["outputs"]["kind"] == "tokens" and doc["outputs"]["tokens"] == 30
    assert 0 < doc["outputs"]["kl_mean"] < 0.01 and doc["outputs"]["same_top"] > 0.9
    assert len(doc["activations"]["cka"]) == 2
    ml.save_state_dict({"ids": ids}, tmp_path / "bad.safetensors")
    assert main(["compare", str(tmp_path / "m"), str(tmp_path / "m"), "--inputs",
                 str(tmp_path / "bad.safetensors")]) == 1
    assert "expected a tensor named input_ids; the file has ids" in capsys.readouterr().err


def test_cli_records_into_the_store_named_by_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src, dst, store = tmp_path / "a.safetensors", tmp_path / "b", tmp_path / "lineage.db"
    ml.save_state_dict({"w": torch.ones(4)}, src)
    monkeypatch.setenv("MLMF_LINEAGE", str(store))
    assert main(["convert", str(src), str(dst)]) == 0
    monkeypatch.delenv("MLMF_LINEAGE")
    capsys.readouterr()
    assert main(["lineage", str(dst / "model.safetensors"), "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "convert" in out and "a.safetensors" in out
