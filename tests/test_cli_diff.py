"""``mlmf-lab diff`` against the plain formulas, and CLI recording with MLMF_LINEAGE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mlmf_lab as ml
from mlmf_lab.cli import main


def test_diff_two_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = {"w": torch.tensor([3.0, 4.0]), "same": torch.ones(2), "gone": torch.ones(1),
         "grow": torch.ones(2)}
    b = {"w": torch.tensor([3.0, 5.0]), "same": torch.ones(2), "new": torch.ones(1),
         "grow": torch.ones(3)}
    ml.save_state_dict(a, tmp_path / "a.safetensors")
    ml.save_state_dict(b, tmp_path / "b.safetensors")
    assert main(["diff", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in doc["tensors"]}
    assert set(rows) == {"w", "gone", "grow", "new"}  # identical tensors are left out
    assert rows["w"]["rel_change"] == pytest.approx(1 / 5)  # ||b - a|| / ||a||
    assert rows["w"]["cosine"] == pytest.approx((9 + 20) / (5 * 34**0.5))
    assert rows["w"]["max_abs"] == 1.0
    assert (rows["gone"]["status"], rows["new"]["status"]) == ("removed", "added")
    assert rows["grow"]["status"] == "reshaped" and rows["grow"]["shape_b"] == [3]
    assert main(["diff", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].endswith("1 changed, 1 same, 1 added, 1 removed, 1 reshaped, "
                            "largest relative change 0.2 in w")
    assert text[1].split() == ["tensor", "status", "shape", "a", "shape", "b", "relative",
                               "change", "cosine", "max", "|Δ|"]
    assert text[2].split() == ["w", "changed", "2", "2", "2.000e-01", "0.994692", "1.000e+00"]
    assert [line.split()[:2] for line in text[3:]] == [["gone", "removed"], ["grow", "reshaped"],
                                                       ["new", "added"]]


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
