"""int8/int4 weights in a Hugging Face sharded folder: shards read back with the safetensors
package itself, the index checked against them, sizes, models, the CLI and refused saves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

import mlmf_lab as ml
from mlmf_lab.cli import main
from mlmf_lab.errors import MLMFError
from mlmf_lab.formats.sharded import INDEX_NAME
from mlmf_lab.quant import QuantLinear


def model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 256), nn.ReLU(),
                         nn.Linear(256, 128), nn.LayerNorm(128))


def shards(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Every shard's tensors, as the safetensors package reads them."""
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            out[path.name] = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return out


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_each_shard_holds_whole_weights_and_the_index_lists_every_part(
    tmp_path: Path, scheme: str
) -> None:
    sd, folder = model().state_dict(), tmp_path / "q"
    limit = 40_000  # each float weight alone would overflow it
    ml.save_state_dict(sd, folder, quant=scheme, max_shard_size=limit)
    disk = shards(folder)
    assert len(disk) == {"int8": 3, "int4": 2}[scheme]
    index = json.loads((folder / INDEX_NAME).read_text())
    where = {k: name for name, tensors in disk.items() for k in tensors}
    assert index["weight_map"] == where  # every stored name, scales and zeros too
    stored = [sum(t.numel() * t.element_size() for t in ts.values()) for ts in disk.values()]
    assert index["metadata"]["total_size"] == sum(stored)
    assert all(n <= limit for n in stored)  # sized by what is stored, not the float size
    parts = ("_scale", "_zero") if scheme == "int4" else ("_scale",)
    for name in ("0.weight", "2.weight", "4.weight"):
        assert all(where[name + p] == where[name] for p in parts)  # a weight stays whole
    wf = ml.open_weights(folder)
    assert sorted(wf) == sorted(sd)
    for name, t in sd.items():
        want = ml.quant.quantize(t, scheme).dequantize() if t.dim() == 2 else t
        assert torch.equal(wf.tensor(name), want), name
        assert wf.info(name).quant == (scheme if t.dim() == 2 else None)


def test_a_quantized_folder_loads_kept_quantized(tmp_path: Path) -> None:
    ref, folder = model(), tmp_path / "q"
    ml.save_state_dict(ref.state_dict(), folder, quant="int8", max_shard_size=40_000)
    in_memory = model()
    ml.quant.quantize_model(in_memory, "int8")
    with torch.device("meta"):
        loaded = model()
    ml.load_into(loaded, folder, keep_quantized=True)
    assert all(isinstance(loaded[i], QuantLinear) for i in (0, 2, 4))
    x = torch.randn(3, 128)
    assert torch.equal(loaded(x), in_memory(x))


def test_one_shard_is_a_single_file_without_index(tmp_path: Path) -> None:
    folder = tmp_path / "q"
    ml.save_state_dict(model().state_dict(), folder, quant="int4")
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors"]
    assert ml.open_weights(folder).info("2.weight").quant == "int4"


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, 64)
        self.head = nn.Linear(64, 32, bias=False)
        self.head.weight = self.embed.weight


def test_tied_weights_in_a_quantized_folder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref, folder = Tied(), tmp_path / "q"
    sd = {**ref.state_dict(), "norm": torch.ones(600)}
    ml.save_state_dict(sd, folder, quant="int8", max_shard_size=2_600)
    stored = {k for tensors in shards(folder).values() for k in tensors}
    assert stored == {"embed.weight", "embed.weight_scale", "norm"}  # the head is not stored
    assert "head.weight" not in json.loads((folder / INDEX_NAME).read_text())["weight_map"]
    back = ml.load_state_dict(folder)
    want = ml.quant.quantize(ref.embed.weight.detach(), "int8").dequantize()
    assert torch.equal(back["embed.weight"], want) and torch.equal(back["head.weight"], want)
    with torch.device("meta"):
        loaded = Tied()
    report = ml.load_into(loaded, folder, keep_quantized=True, strict=False)
    assert (report.missing, report.unexpected) == ([], ["norm"])  # norm: only there for size
    assert torch.equal(loaded.embed.weight, want)  # stored under the embedding's name: floats,
    assert loaded.head.weight.data_ptr() == loaded.embed.weight.data_ptr()  # still tied


def test_refused_saves_leave_the_old_folder(tmp_path: Path) -> None:
    folder = tmp_path / "q"
    ml.save_state_dict(model().state_dict(), folder, quant="int8", max_shard_size=20_000)
    before = {name: p.read_bytes() for name, p in ((p.name, p) for p in folder.iterdir())}
    clash = {"a.weight": torch.randn(8, 64), "z": torch.ones(1000),
             "a.weight_scale": torch.ones(8)}  # the clash is in another shard
    with pytest.raises(MLMFError, match="'a.weight_scale' for its scale, which another tensor"):
        ml.save_state_dict(clash, folder, quant="int8", max_shard_size=1_000)
    w = torch.randn(8, 64)
    with pytest.raises(MLMFError, match="'x_scale' for its scale, which another tensor"):
        ml.save_state_dict({"x": w, "y": w[:, :1], "x_scale": w[:, :1]}, folder,
                           quant="int8")  # x_scale is a tied name, not a stored one
    bad = torch.randn(8, 64)
    bad[3, 3] = float("inf")
    with pytest.raises(MLMFError, match="tensor 'late' holds inf or nan") as e:  # last shard
        ml.save_state_dict({"early": torch.randn(8, 64), "late": bad}, folder, quant="int8",
                           max_shard_size=600)
    assert e.value.path == str(folder)  # the folder the user named, not a temporary one
    with pytest.raises(MLMFError, match="'c' has dtype torch.complex64") as e:
        ml.save_state_dict({"early": torch.randn(8, 64), "c": torch.zeros(2, 2).to(
            torch.complex64)}, folder, max_shard_size=600)
    assert e.value.path == str(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_convert_cli_into_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, out = tmp_path / "m.safetensors", tmp_path / "int4"
    ml.save_state_dict(model().state_dict(), src)
    assert main(["convert", str(src), str(out), "--quant", "int4"]) == 0
    assert main(["inspect", str(out)]) == 0
    assert "int4" in capsys.readouterr().out
    assert ml.open_weights(out).info("2.weight").quant == "int4"
