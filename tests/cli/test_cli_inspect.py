"""``mlmf-lab inspect`` on the real MiniLM file, as text and JSON, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import mlmf_lab as ml
from mlmf_lab.cli import main


def test_inspect_minilm_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(ml.examples.minilm_path()), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == "safetensors" and doc["num_tensors"] == 104
    assert doc["num_parameters"] == 22_713_728
    word = next(t for t in doc["tensors"] if t["name"] == "embeddings.word_embeddings.weight")
    assert word["shape"] == [30522, 384] and word["dtype"] == "float32"


def test_inspect_text_through_the_console_script() -> None:
    exe = Path(sys.executable).with_name("mlmf-lab")
    out = subprocess.run(
        [str(exe), "inspect", str(ml.examples.minilm_dir())],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "format: safetensors" in out
    assert "embeddings.word_embeddings.weight" in out and "30522×384" in out
    assert "total: 104 tensors, 22,713,728 parameters" in out


def test_inspect_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.safetensors").write_bytes(b"")
    assert main(["inspect", str(tmp_path / "x.safetensors")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mlmf-lab: error: ") and "the file is empty" in err
