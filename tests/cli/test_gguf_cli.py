"""``mlmf-lab inspect`` and ``mlmf-lab convert`` on GGUF files."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
import torch

import mlmf_lab as ml
from mlmf_lab.cli import main


@pytest.fixture()
def checkpoint(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    sd = {"w": torch.randn(64, 256, generator=g), "norm": torch.randn(256, generator=g)}
    path = tmp_path / "model.safetensors"
    ml.save_state_dict(sd, path, metadata={"general.architecture": "llama", "layers": 2})
    return path, sd


def test_convert_to_gguf_with_quant_and_inspect(
    tmp_path: Path, checkpoint: tuple[Path, dict[str, torch.Tensor]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    src, sd = checkpoint
    dst = tmp_path / "model.gguf"
    assert main(["convert", str(src), str(dst), "--quant", "q4_k"]) == 0
    reader = gguf.GGUFReader(dst)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types == {"w": "Q4_K", "norm": "F32"}
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["layers"].contents() == 2
    capsys.readouterr()

    assert main(["inspect", str(dst)]) == 0
    out = capsys.readouterr().out
    assert "format: gguf" in out
    assert [line.split() for line in out.splitlines() if line.startswith("w ")] == [
        ["w", "64×256", "Q4_K", "4.5", "9.0", "KiB"]
    ]
    assert "(float32 1.0 KiB, Q4_K 9.0 KiB)" in out or "(Q4_K 9.0 KiB, float32 1.0 KiB)" in out

    assert main(["inspect", str(dst), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    w = next(t for t in doc["tensors"] if t["name"] == "w")
    got = (w["quant"], w["bits_per_weight"], w["nbytes"], w["dtype"])
    assert got == ("Q4_K", 4.5, 9216, "float32")


@pytest.mark.parametrize(("quant", "fallback"), [("q4_k", "Q5_0"), ("q6_k", "Q8_0")])
def test_k_quant_rows_that_do_not_divide_fall_back_like_llama_cpp(
        tmp_path: Path, quant: str, fallback: str) -> None:
    sd = {"wide": torch.randn(8, 512), "narrow": torch.randn(8, 384), "odd": torch.randn(8, 40)}
    path = tmp_path / "m.gguf"
    ml.save_state_dict(sd, path, quant=quant)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types == {"wide": quant.upper(), "narrow": fallback, "odd": "F32"}
    back = ml.open_weights(path).tensor("narrow")
    assert torch.equal(back, ml.quant.quantize(sd["narrow"], fallback.lower()).dequantize())


def test_convert_to_gguf_takes_the_architecture_from_config_json(tmp_path: Path) -> None:
    """A model type with no llama.cpp layout here: the tensors as they are, and a warning."""
    src = tmp_path / "model.safetensors"
    ml.save_state_dict({"w": torch.ones(4, 32)}, src)
    assert ml.open_weights(src).metadata.get("format") == "pt"  # safetensors' marker
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.warns(UserWarning, match="model_type 'vit' has no llama.cpp layout in this lab "
                      r"\(supported: bert, gpt2, llama, mistral, qwen2\)"):
        assert main(["convert", str(src), str(tmp_path / "m.gguf")]) == 0
    fields = gguf.GGUFReader(tmp_path / "m.gguf").fields
    assert fields["general.architecture"].contents() == "vit"
    assert "format" not in fields
    (tmp_path / "config.json").write_text("{not json")
    assert main(["convert", str(src), str(tmp_path / "n.gguf")]) == 0
    assert gguf.GGUFReader(tmp_path / "n.gguf").fields["general.architecture"].contents() == \
        "unknown"


@pytest.mark.parametrize("scheme", ["q8_0", "q5_1", "f16"])
def test_convert_round_trip_through_gguf(
    tmp_path: Path, checkpoint: tuple[Path, dict[str, torch.Tensor]], scheme: str
) -> None:
    src, sd = checkpoint
    mid, back = tmp_path / "m.gguf", tmp_path / "back.safetensors"
    assert main(["convert", str(src), str(mid), "--quant", scheme]) == 0
    assert main(["convert", str(mid), str(back)]) == 0
    with ml.open_weights(back) as wf:
        assert wf.format == "safetensors"
        assert wf.metadata["general.architecture"] == "llama" and wf.metadata["layers"] == 2
        assert torch.equal(wf.tensor("norm"), sd["norm"])  # 1-D stays F32
        expected = ml.quant.quantize(sd["w"], scheme).dequantize()
        assert torch.equal(wf.tensor("w"), expected)


def test_convert_unknown_scheme_is_one_line_error(
    tmp_path: Path, checkpoint: tuple[Path, dict[str, torch.Tensor]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    src, _ = checkpoint
    assert main(["convert", str(src), str(tmp_path / "x.gguf"), "--quant", "q7_0"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "q7_0" in err and "q4_k" in err
