"""int8/int4 weights stored in safetensors: the parts on disk (read with the safetensors
package itself), the naive dequantization formulas, round trips, models and bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import mlmf_lab as ml
from mlmf_lab.cli import main
from mlmf_lab.errors import FormatError, MLMFError
from mlmf_lab.quant import QuantLinear


def state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(48, 256, generator=g) * 0.05,
        "a.bias": torch.randn(48, generator=g),
        "odd.weight": torch.randn(16, 100, generator=g),  # 100 columns: no int4 groups of 128
        "conv": torch.randn(8, 2, 128, generator=g).half(),  # N-D, float16
        "steps": torch.arange(6),  # integers are never quantized
    }


def test_int8_parts_on_disk_and_the_naive_formula(tmp_path: Path) -> None:
    sd, path = state(), tmp_path / "w.safetensors"
    ml.save_state_dict(sd, path, metadata={"note": "hi"}, quant="int8")
    disk = load_file(path)  # the safetensors package, not our reader
    assert {k: (v.dtype, tuple(v.shape)) for k, v in disk.items()} == {
        "a.weight": (torch.int8, (48, 256)), "a.weight_scale": (torch.float32, (48, 1)),
        "odd.weight": (torch.int8, (16, 100)), "odd.weight_scale": (torch.float32, (16, 1)),
        "conv": (torch.int8, (8, 256)), "conv_scale": (torch.float32, (8, 1)),
        "a.bias": (torch.float32, (48,)), "steps": (torch.int64, (6,)),
    }
    a = sd["a.weight"].numpy()
    scale = np.abs(a).max(axis=1, keepdims=True) / np.float32(127)
    np.testing.assert_array_equal(disk["a.weight_scale"].numpy(), scale)
    np.testing.assert_array_equal(disk["a.weight"].numpy(), np.clip(np.rint(a / scale), -127, 127))
    wf = ml.open_weights(path)
    assert wf.metadata == {"format": "pt", "note": "hi"}  # the layout listing stays hidden
    assert sorted(wf) == sorted(sd)
    info = wf.info("a.weight")
    assert (info.shape, info.dtype, info.quant) == ((48, 256), "float32", "int8")
    assert info.nbytes == 48 * 256 + 48 * 4
    for name in ("a.weight", "odd.weight", "conv"):
        codes, s = disk[name].double(), disk[f"{name}_scale"].double()
        expected = (codes * s).reshape(sd[name].shape)
        back = ml.quant.dequantize(wf.raw(name))  # float32
        torch.testing.assert_close(back.double(), expected, rtol=1e-7, atol=0)
        assert torch.equal(wf.tensor(name), back.to(sd[name].dtype))  # the dtype it was saved from
    assert wf.info("conv").dtype == "float16"
    assert torch.equal(wf.tensor("a.bias"), sd["a.bias"]) and torch.equal(wf.tensor("steps"),
                                                                          sd["steps"])
    qt = wf.raw("conv")
    ref = ml.quant.quantize(sd["conv"], "int8")
    assert qt.shape == (8, 2, 128) and torch.equal(qt.data, ref.data)
    assert torch.equal(qt.params["scale"], ref.params["scale"])


def test_int4_parts_on_disk_and_the_naive_formula(tmp_path: Path) -> None:
    sd, path = state(), tmp_path / "w.safetensors"
    ml.save_state_dict(sd, path, quant="int4")
    disk = load_file(path)
    assert disk["a.weight"].dtype == torch.uint8 and disk["a.weight"].shape == (48, 128)
    assert disk["a.weight_scale"].dtype == torch.bfloat16
    assert disk["a.weight_zero"].shape == (48, 2) and disk["conv_zero"].shape == (16, 1)
    assert disk["odd.weight"].dtype == torch.float32  # 100 columns stay float
    wf = ml.open_weights(path)
    assert wf.info("odd.weight").quant is None and wf.info("conv").quant == "int4"
    assert wf.info("a.weight").bits_per_weight == pytest.approx(4.25)
    for name in ("a.weight", "conv"):
        b = disk[name].numpy()
        codes = np.stack([b & 0x0F, b >> 4], axis=-1).reshape(b.shape[0], -1).astype(np.float64)
        s = disk[f"{name}_scale"].double().numpy().repeat(128, axis=1)
        z = disk[f"{name}_zero"].double().numpy().repeat(128, axis=1)
        expected = ((codes - 8) * s + z).reshape(sd[name].shape)
        back = ml.quant.dequantize(wf.raw(name))
        np.testing.assert_allclose(back.double().numpy(), expected, rtol=1e-6, atol=1e-7)
        ref = ml.quant.quantize(sd[name], "int4")
        assert torch.equal(wf.raw(name).data, ref.data)
        assert torch.equal(wf.tensor(name), ref.dequantize(sd[name].dtype))
    assert wf.raw("conv").options == {"group_size": 128}


def test_int8_parts_are_what_compressed_tensors_reads(tmp_path: Path) -> None:
    # a dev dependency, imported here: it imports transformers (seconds)
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import dequantize, quantize

    w, path = state()["a.weight"], tmp_path / "w.safetensors"
    ml.save_state_dict({"l.weight": w}, path, quant="int8")
    disk = load_file(path)
    args = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="channel")
    theirs = dequantize(x_q=disk["l.weight"], scale=disk["l.weight_scale"], args=args)
    assert torch.equal(theirs.float(), ml.open_weights(path).tensor("l.weight"))
    codes = quantize(x=w, scale=disk["l.weight_scale"], zero_point=torch.zeros(48, 1),
                     args=args, dtype=torch.int8)
    assert torch.equal(codes, disk["l.weight"])


def test_tied_weights_are_quantized_once(tmp_path: Path) -> None:
    emb = torch.randn(32, 128)
    path = tmp_path / "tied.safetensors"
    ml.save_state_dict({"emb.weight": emb, "head.weight": emb}, path, quant="int8")
    assert set(load_file(path)) == {"emb.weight", "emb.weight_scale"}
    loaded = ml.load_state_dict(path)
    assert torch.equal(loaded["head.weight"], loaded["emb.weight"])
    assert torch.equal(loaded["emb.weight"], ml.quant.quantize(emb, "int8").dequantize())


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 32))


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_load_into_keeps_the_weights_quantized(tmp_path: Path, scheme: str) -> None:
    ref = model()
    path = tmp_path / "m.safetensors"
    ml.save_state_dict(ref.state_dict(), path, quant=scheme)
    with torch.device("meta"):
        loaded = model()
    assert ml.load_into(loaded, path, keep_quantized=True).ok
    layers = [m for m in loaded.modules() if isinstance(m, QuantLinear)]
    assert [q.qweight.scheme for q in layers] == [scheme] * (2 if scheme == "int8" else 1)
    in_memory = model()  # int4: the 64-wide layer has no group of 128 and stays float
    ml.quant.quantize_model(in_memory, scheme, skip=[] if scheme == "int8" else ["2"])
    x = torch.randn(5, 128)
    with torch.no_grad():  # the same QTensors and kernels: the same outputs
        assert torch.equal(loaded(x), in_memory(x))


def test_saved_dtype_comes_back_and_bf16_models_run(tmp_path: Path) -> None:
    ref = model().bfloat16()
    path = tmp_path / "m.safetensors"
    ml.save_state_dict(ref.state_dict(), path, quant="int8")
    assert ml.open_weights(path).info("0.weight").dtype == "bfloat16"
    x = torch.randn(2, 128).bfloat16()
    in_memory = model().bfloat16()
    ml.quant.quantize_model(in_memory, "int8")
    for keep in (False, True):
        with torch.device("meta"):
            loaded = model().bfloat16()
        ml.load_into(loaded, path, keep_quantized=keep)
        assert loaded[0].bias.dtype == torch.bfloat16
        with torch.no_grad():
            y = loaded(x)
            if keep:  # the same codes and kernel as quantized in memory
                assert torch.equal(y, in_memory(x))
            else:  # bf16 weights dequantized from the file: the float path
                assert y.dtype == torch.bfloat16
                expected = in_memory[0].qweight.dequantize(torch.bfloat16)
                assert torch.equal(loaded[0].weight, expected)


class Tied(nn.Module):
    """A head tied to an embedding: the stored tensor is the linear's or the embedding's."""

    def __init__(self, head_first: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        if head_first:
            self.head = nn.Linear(128, 64, bias=False)
        self.emb = nn.Embedding(64, 128)
        if not head_first:
            self.head = nn.Linear(128, 64, bias=False)
        self.head.weight = self.emb.weight


@pytest.mark.parametrize("head_first", [True, False])
def test_keep_quantized_with_a_head_tied_to_an_embedding(tmp_path: Path,
                                                         head_first: bool) -> None:
    path = tmp_path / "tied.safetensors"
    ml.save_state_dict(Tied(head_first).state_dict(), path, quant="int8")
    with torch.device("meta"):
        loaded = Tied(head_first)
    assert ml.load_into(loaded, path, keep_quantized=True).ok
    expected = ml.quant.quantize(Tied(head_first).emb.weight, "int8")
    assert loaded.emb.weight.dtype == torch.float32  # an embedding gets floats
    assert isinstance(loaded.head, QuantLinear) == head_first  # stored under the head's name
    if head_first:
        assert torch.equal(loaded.head.qweight.data, expected.data)
    else:  # one float tensor, still tied: read once
        assert loaded.head.weight.data_ptr() == loaded.emb.weight.data_ptr()


def test_content_hash_covers_every_part(tmp_path: Path) -> None:
    from mlmf_lab.provenance.hashing import file_tensor_hash

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for scheme in ("int8", "int4"):
        ml.save_state_dict(state(), a, quant=scheme)
        # b differs from a in one scale only: same codes, different weights
        raw = load_file(a)
        raw["a.weight_scale"] = raw["a.weight_scale"] * 2
        meta = ml.formats.safetensors.read_header(a)[1]
        save_file(raw, b, metadata=meta)
        assert not torch.equal(ml.open_weights(a).tensor("a.weight"),
                               ml.open_weights(b).tensor("a.weight"))
        assert file_tensor_hash(a) != file_tensor_hash(b)
        described = ml.describe(a)
        assert described.num_tensors == len(state())
        assert described.content_hash == file_tensor_hash(a).sha256


def test_an_index_may_list_the_parts(tmp_path: Path) -> None:
    """HF indexes list every stored key: the scales too."""
    folder = tmp_path / "folder"
    folder.mkdir()
    ml.save_state_dict(model().state_dict(), folder / "model-1.safetensors", quant="int8")
    stored = load_file(folder / "model-1.safetensors")
    index = {"metadata": {}, "weight_map": dict.fromkeys(stored, "model-1.safetensors")}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    wf = ml.open_weights(folder)
    assert sorted(wf) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert wf.info("0.weight").quant == "int8" and isinstance(wf.raw("0.weight"),
                                                              ml.quant.QTensor)
    with torch.device("meta"):
        loaded = model()
    ml.load_into(loaded, folder, keep_quantized=True)
    assert isinstance(loaded[0], QuantLinear) and isinstance(loaded[2], QuantLinear)


def test_convert_cli_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, q4, back = tmp_path / "m.safetensors", tmp_path / "q.safetensors", tmp_path / "b.gguf"
    ml.save_state_dict(model().state_dict(), src)
    assert main(["convert", str(src), str(q4), "--quant", "int4"]) == 0
    assert main(["convert", str(q4), str(back), "--quant", "q8_0"]) == 0
    assert main(["inspect", str(q4)]) == 0
    out = capsys.readouterr().out
    assert "int4" in out and "4.25" in out
    expected = ml.quant.quantize(model().state_dict()["0.weight"], "int4").dequantize()
    assert torch.equal(ml.load_state_dict(q4)["0.weight"], expected)
    gguf_back = ml.open_weights(back)
    assert gguf_back.info("0.weight").quant == "Q8_0"


def test_write_errors_leave_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    ml.save_state_dict({"w": torch.ones(4, 4)}, path)
    before = path.read_bytes()
    with pytest.raises(MLMFError, match="'w_scale' for its scale, which another tensor has"):
        ml.save_state_dict({"w": torch.randn(4, 8), "w_scale": torch.ones(4)}, path,
                           quant="int8")
    bad = torch.randn(4, 8)
    bad[1, 2] = float("nan")
    with pytest.raises(MLMFError, match="tensor 'w': int8: the tensor holds inf or nan"):
        ml.save_state_dict({"w": bad}, path, quant="int8")
    with pytest.raises(MLMFError, match="metadata key 'mlmf.quant'"):
        ml.save_state_dict({"w": bad}, path, metadata={"mlmf.quant": "{}"})
    with pytest.raises(MLMFError, match="safetensors-sharded cannot store quant='q4_0'; it "
                                        "takes int8, int4; q4_0 goes into .gguf files"):
        ml.save_state_dict({"w": torch.randn(4, 32)}, tmp_path / "folder", quant="q4_0")
    assert path.read_bytes() == before


def damaged(tmp_path: Path, listing: object, **tensors: torch.Tensor) -> Path:
    path = tmp_path / "bad.safetensors"
    text = listing if isinstance(listing, str) else json.dumps(listing)
    save_file(tensors, path, metadata={"format": "pt", "mlmf.quant": text})
    return path


@pytest.mark.parametrize(("listing", "message"), [
    ("{not json", "mlmf.quant is not valid JSON"),
    ([1, 2], "must be a JSON object"),
    ({"w": {"scheme": "int3", "shape": [4, 8]}}, "scheme one of int8, int4"),
    ({"w": {"scheme": "int8", "shape": [4]}}, "is not a list of 2\\+ positive sizes"),
    ({"w": {"scheme": "int8", "shape": [4, 16]}},
     "'w' is int8 \\[4, 8\\], expected int8 \\[4, 16\\]"),
    ({"w": {"scheme": "int4", "shape": [4, 16], "group_size": 3}}, "group_size 3 must be even"),
    ({"w": {"scheme": "int8", "shape": [4, 8], "group_size": 4}}, "unknown keys .'group_size'."),
    ({"w": {"scheme": "int8", "shape": [4, 8], "dtype": "int8"}}, "dtype 'int8' is not one of"),
    ({"v": {"scheme": "int8", "shape": [4, 8]}}, "the tensor 'v' it needs is missing"),
])
def test_damaged_listing_gets_a_format_error(tmp_path: Path, listing: object,
                                             message: str) -> None:
    w = torch.zeros(4, 8, dtype=torch.int8)
    path = damaged(tmp_path, listing, w=w, w_scale=torch.ones(4, 1))
    with pytest.raises(FormatError, match=message) as err:
        ml.open_weights(path)
    assert str(path) in str(err.value)


def test_wrong_scale_dtype_gets_a_format_error(tmp_path: Path) -> None:
    path = damaged(tmp_path, {"w": {"scheme": "int8", "shape": [4, 8]}},
                   w=torch.zeros(4, 8, dtype=torch.int8), w_scale=torch.ones(4, 1).half())
    with pytest.raises(FormatError, match="'w_scale' is float16 \\[4, 1\\], expected float32"):
        ml.open_weights(path)


def test_quantized_tensor_refuses_lazy_slices(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    ml.save_state_dict({"w": torch.randn(4, 8)}, path, quant="int8")
    with pytest.raises(MLMFError, match="stored as int8; read it whole"):
        ml.open_weights(path).get_slice("w")
