"""GGUF reading and writing, checked against the ``gguf`` package's own reader and writer."""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
import psutil
import pytest
import torch
from attacks.gguf_bytes import k_blocks, mixed_state

import mlmf_lab as ml
from mlmf_lab.errors import MLMFError, UnsupportedError
from mlmf_lab.formats import gguf as gguf_format
from mlmf_lab.quant import QTensor

Q = gguf.GGMLQuantizationType


META = {
    "general.architecture": "llama",
    "general.name": "tiny",
    "llama.context_length": 2048,
    "llama.rope.freq_base": 10000.0,
    "eps": 1e-6,
    "offset": -3,
    "big": 2**40,
    "flag": True,
    "tokens": ["<s>", "</s>", "hello"],
    "token_types": [1, 3, -1],
    "scores": [0.5, -1.25],
    "nested": {"a": [1, 2], "b": None},
    "empty_list": [],
    "empty": "",
}


def fields(path: Path) -> dict[str, object]:
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def test_write_read_back_with_gguf_reader(tmp_path: Path) -> None:
    sd, path = mixed_state(), tmp_path / "m.gguf"
    ml.save_state_dict(sd, path, metadata=META, quant="q8_0")
    reader = gguf.GGUFReader(path)
    by_name = {t.name: t for t in reader.tensors}
    assert list(by_name) == list(sd)
    kinds = {n: t.tensor_type for n, t in by_name.items()}
    assert kinds == {
        "tok_embd.weight": Q.Q8_0, "blk.0.attn_norm.weight": Q.F32, "blk.0.ffn_up.weight": Q.Q8_0,
        "blk.0.ffn_down.weight": Q.Q8_0, "blk.0.attn_q.weight": Q.Q8_0, "odd.weight": Q.F32,
        "positions": Q.I32, "cube": Q.Q8_0,
    }
    for name, t in sd.items():
        rt = by_name[name]
        assert tuple(reversed(rt.shape.tolist())) == tuple(t.shape)  # GGUF stores dims reversed
        if rt.tensor_type == Q.I32:
            assert np.array_equal(rt.data, t.numpy())
            continue
        theirs = gguf.quants.dequantize(rt.data, rt.tensor_type)
        if rt.tensor_type == Q.Q8_0:
            ours = gguf.quants.quantize(t.float().numpy(), Q.Q8_0)
            assert np.array_equal(rt.data, ours)  # the exact bytes gguf would write
            assert np.abs(theirs.reshape(t.shape) - t.float().numpy()).max() < 0.05
        else:
            assert np.array_equal(np.asarray(theirs).reshape(t.shape), t.float().numpy())
    meta = fields(path)
    assert meta["general.architecture"] == "llama" and meta["general.quantization_version"] == 2
    types = {k: gguf.GGUFReader(path).fields[k].types for k in ("llama.context_length", "offset",
                                                                 "token_types", "eps")}
    assert types["llama.context_length"] == [gguf.GGUFValueType.UINT32]
    assert types["offset"] == [gguf.GGUFValueType.INT32]
    assert types["token_types"] == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32]
    assert types["eps"] == [gguf.GGUFValueType.FLOAT64]  # 1e-6 is not exact in float32


def test_metadata_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    ml.save_state_dict({"w": torch.ones(2, 32)}, path, metadata=META)
    with ml.open_weights(path) as wf:
        assert wf.format == "gguf"
        assert wf.metadata == META  # no quantized tensor: no quantization_version added


def test_unquantized_tensors_round_trip_exactly(tmp_path: Path) -> None:
    sd, path = mixed_state(), tmp_path / "m.gguf"
    ml.save_state_dict(sd, path)
    with ml.open_weights(path) as wf:
        for name, t in sd.items():
            got = wf.tensor(name)
            assert got.dtype == t.dtype and torch.equal(got, t), name
            assert wf.info(name).quant is None


def test_reads_files_written_by_gguf_writer(tmp_path: Path) -> None:
    """An independent writer (gguf-py) and independent bytes (gguf.quants)."""
    path = tmp_path / "ref.gguf"
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 256, generator=g)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_uint8("u8", 7)
    writer.add_int16("i16", -5)
    writer.add_float64("f64", 0.1)
    writer.add_array("ints", [1, 2, 3])
    writer.add_array("names", ["a", "b"])
    expected = {}
    for qtype in (Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.BF16, Q.F16):
        data = gguf.quants.quantize(w.numpy(), qtype)
        writer.add_tensor(qtype.name, data, raw_dtype=qtype)
        expected[qtype.name] = torch.from_numpy(gguf.quants.dequantize(data, qtype))
    for qtype in (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K):
        data = k_blocks(qtype, 8, g)
        writer.add_tensor(qtype.name, data, raw_dtype=qtype)
        expected[qtype.name] = torch.from_numpy(gguf.quants.dequantize(data, qtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    with ml.open_weights(path) as wf:
        assert wf.metadata["u8"] == 7 and wf.metadata["i16"] == -5 and wf.metadata["f64"] == 0.1
        assert wf.metadata["ints"] == [1, 2, 3] and wf.metadata["names"] == ["a", "b"]
        for name, ref in expected.items():
            info = wf.info(name)
            assert info.shape == (8, 256)
            if name in ("F16", "BF16"):
                assert info.quant is None and info.dtype == name.lower().replace("f16", "float16")
                assert torch.equal(wf.tensor(name).float(), ref.float())
                continue
            bt = ml.quant.ggml.BLOCK_TYPES[name]
            assert (info.quant, info.dtype) == (name, "float32")
            row_bytes = 256 // bt.block_size * bt.type_size
            assert info.nbytes == 8 * row_bytes and info.bits_per_weight == bt.bits_per_weight
            assert torch.equal(wf.tensor(name), ref), name
            raw = wf.raw(name)
            assert isinstance(raw, QTensor) and raw.scheme == name.lower()
            assert raw.data.dtype == torch.uint8 and raw.data.shape == (8, row_bytes)
            assert torch.equal(raw.dequantize(), ref)
        assert wf.tensor("Q8_0", dtype=torch.float16).dtype == torch.float16


def test_unsupported_block_type_names_it(tmp_path: Path) -> None:
    path = tmp_path / "iq.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    size = gguf.GGML_QUANT_SIZES[Q.IQ2_XXS][1]
    writer.add_tensor("w", np.zeros((2, size), dtype=np.uint8), raw_dtype=Q.IQ2_XXS)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with ml.open_weights(path) as wf:
        assert wf.info("w").quant == "IQ2_XXS" and wf.info("w").shape == (2, 256)
        with pytest.raises(UnsupportedError) as info:
            wf.tensor("w")
    message = str(info.value)
    assert str(path) in message and "IQ2_XXS" in message and "Q4_K, Q5_K, Q6_K" in message


def test_k_quant_writing(tmp_path: Path) -> None:
    w = torch.randn(4, 512, generator=torch.Generator().manual_seed(2))
    for scheme in ("q4_k", "q6_k"):
        path = tmp_path / f"{scheme}.gguf"
        ml.save_state_dict({"w": w}, path, quant=scheme)
        rt = gguf.GGUFReader(path).tensors[0]
        assert rt.tensor_type == Q[scheme.upper()]
        theirs = torch.from_numpy(gguf.quants.dequantize(rt.data, rt.tensor_type))
        assert torch.equal(ml.load_state_dict(path)["w"], theirs)
        assert float((theirs - w).norm() / w.norm()) < 0.08


def test_memory_mapped_and_lazy(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    ml.save_state_dict({"w": torch.arange(64.0).view(2, 32)}, path)
    with ml.open_weights(path) as wf:
        a, b = wf.tensor("w"), wf.tensor("w")
        assert a.data_ptr() == b.data_ptr()  # views of one memory map, not copies
        a[0, 0] = 100.0  # copy-on-write: the file is never modified
    assert ml.load_state_dict(path)["w"][0, 0] == 0.0

    # a 2 GiB tensor in a sparse file: opening must not read (or allocate) it
    big = tmp_path / "big.gguf"
    header = gguf_header_bytes(name="huge", dims=(1 << 19, 1 << 10), type_id=0)
    with open(big, "wb") as f:
        f.write(header)
        f.truncate(len(header) + (1 << 31))
    rss = psutil.Process().memory_info().rss
    with ml.open_weights(big) as wf:
        assert wf.info("huge").shape == (1 << 10, 1 << 19) and wf.info("huge").nbytes == 1 << 31
    assert psutil.Process().memory_info().rss - rss < 64 << 20


def gguf_header_bytes(name: str, dims: tuple[int, ...], type_id: int) -> bytes:
    import struct

    raw = struct.pack("<4sIQQ", b"GGUF", 3, 1, 0)
    raw += struct.pack("<Q", len(name)) + name.encode() + struct.pack("<I", len(dims))
    raw += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", type_id, 0)
    return raw + b"\0" * (-len(raw) % 32)


def test_tied_weights_written_once(tmp_path: Path) -> None:
    emb = torch.randn(16, 32)
    path = tmp_path / "tied.gguf"
    ml.save_state_dict({"emb.weight": emb, "head.weight": emb}, path)
    assert [t.name for t in gguf.GGUFReader(path).tensors] == ["emb.weight"]
    loaded = ml.load_state_dict(path)
    assert torch.equal(loaded["head.weight"], emb) and set(loaded) == {"emb.weight", "head.weight"}


def test_write_errors(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    with pytest.raises(UnsupportedError, match=r"gguf cannot store quant='int8'; it takes f32, "
                                               r"f16, bf16, q8_0.*; int8 goes into .safetensors"):
        ml.save_state_dict({"w": torch.randn(4, 32)}, path, quant="int8")
    with pytest.raises(UnsupportedError, match="int4'; .*; int4 goes into .safetensors files"):
        ml.save_state_dict({"w": torch.randn(4, 32)}, path, quant="int4")
    with pytest.raises(UnsupportedError, match=r"safetensors cannot store quant='q4_k'; it takes "
                                               r"int8, int4; q4_k goes into .gguf files"):
        ml.save_state_dict({"w": torch.randn(4, 256)}, tmp_path / "x.safetensors", quant="q4_k")
    with pytest.raises(UnsupportedError, match=r"quant='q9'; it takes .*q6_k$"):  # nowhere
        ml.save_state_dict({"w": torch.randn(4, 32)}, path, quant="q9")
    with pytest.raises(MLMFError, match="max_shard_size applies to folder targets"):
        ml.save_state_dict({"w": torch.randn(4, 32)}, path, max_shard_size="1MB")
    with pytest.raises(MLMFError, match="dtype torch.bool, which GGUF cannot store; supported"):
        ml.save_state_dict({"m": torch.ones(3, dtype=torch.bool)}, path)
    with pytest.raises(MLMFError, match="5 dimensions; GGUF allows 4"):
        ml.save_state_dict({"w": torch.zeros(1, 1, 1, 1, 2)}, path)
    with pytest.raises(MLMFError, match="metadata 'x' cannot be stored"):
        ml.save_state_dict({"w": torch.zeros(2)}, path, metadata={"x": object()})
    assert not path.exists() and os.listdir(tmp_path) == []


def test_failed_write_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.gguf"
    ml.save_state_dict({"w": torch.ones(2, 32)}, path)
    before = path.read_bytes()

    def crash(self: gguf.GGUFWriter, **_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", crash)
    with pytest.raises(OSError, match="disk full"):
        ml.save_state_dict({"w": torch.zeros(2, 32)}, path, quant="q8_0")
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["x.gguf"]


def test_load_into_model_from_gguf(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.LayerNorm(32))
    path = tmp_path / "m.gguf"
    ml.save_state_dict(dict(model.state_dict()), path, quant="q8_0")
    with torch.device("meta"):
        copy = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.LayerNorm(32))
    ml.load_into(copy, path)
    assert torch.equal(copy[1].weight, model[1].weight)  # 1-D: F32, exact
    x = torch.randn(4, 64)
    assert torch.allclose(copy(x), model(x), atol=0.05)
    assert gguf_format.GGUFFile(path).info("0.weight").quant == "Q8_0"


def flatten(value: object) -> object:
    if isinstance(value, list) and value and isinstance(value[0], list):
        return [v for part in value for v in flatten(part)]  # type: ignore[union-attr]
    return value


def test_header_parser_agrees_with_gguf_reader(tmp_path: Path) -> None:
    path = tmp_path / "rich.gguf"
    V = gguf.GGUFValueType
    writer = gguf.GGUFWriter(path, "llama")
    scalars = {
        V.UINT8: 200, V.INT8: -100, V.UINT16: 60000, V.INT16: -30000, V.UINT32: 4_000_000_000,
        V.INT32: -2_000_000_000, V.FLOAT32: 0.25, V.BOOL: True, V.STRING: "héllo",
        V.UINT64: 2**63 + 5, V.INT64: -(2**62), V.FLOAT64: 0.1,
    }
    for vtype, value in scalars.items():
        writer.add_key_value(f"s.{vtype.name}", value, vtype)
        if vtype != V.STRING:
            writer.add_key_value(f"a.{vtype.name}", [value, value], V.ARRAY, vtype)
    writer.add_key_value("a.strings", ["", "b", "ccc"], V.ARRAY, V.STRING)
    writer.add_key_value("a.nested", [[1, 2], [3, 4]], V.ARRAY, V.ARRAY)
    g = torch.Generator().manual_seed(3)
    writer.add_tensor("f32", torch.randn(3, 5, generator=g).numpy())
    writer.add_tensor("i16", torch.arange(6, dtype=torch.int16).view(2, 3).numpy())
    q = gguf.quants.quantize(torch.randn(2, 64, generator=g).numpy(), Q.Q5_1)
    writer.add_tensor("q5", q, raw_dtype=Q.Q5_1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    reader = gguf.GGUFReader(path)
    wf = gguf_format.GGUFFile(path)
    theirs = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert list(wf.metadata) == list(theirs)
    for key, field in theirs.items():
        assert flatten(wf.metadata[key]) == field.contents(), key
        assert wf.value_types[key] == field.types[0], key
    assert wf.metadata["a.nested"] == [[1, 2], [3, 4]]  # kept nested (gguf-py flattens it)
    assert list(wf) == [t.name for t in reader.tensors]
    for rt in reader.tensors:
        info = wf.info(rt.name)
        assert info.shape == tuple(reversed(rt.shape.tolist()))
        assert info.offset == rt.data_offset and info.nbytes == rt.n_bytes
        assert (info.quant or rt.tensor_type.name) == rt.tensor_type.name
        stored = wf.raw(rt.name)
        stored = stored.data if isinstance(stored, QTensor) else stored
        assert np.array_equal(stored.numpy().view(np.uint8), rt.data.view(np.uint8))


def test_each_writer_keeps_only_its_own_markers(tmp_path: Path) -> None:
    """Re-saving without blocks drops the quantization version; safetensors' "format: pt"
    does not travel into GGUF, nor GGUF's quantization version into safetensors."""
    sd = {"w": torch.randn(4, 64)}
    q8, plain, back = tmp_path / "q.gguf", tmp_path / "plain.gguf", tmp_path / "b.safetensors"
    ml.save_state_dict(sd, q8, quant="q8_0")
    assert ml.open_weights(q8).metadata["general.quantization_version"] == 2
    for target in (plain, back):
        with ml.open_weights(q8) as wf:
            ml.save_state_dict(ml.load_state_dict(q8), target, metadata=dict(wf.metadata))
    assert "general.quantization_version" not in ml.open_weights(plain).metadata
    assert "general.quantization_version" not in ml.open_weights(back).metadata
    with ml.open_weights(back) as wf:
        ml.save_state_dict(sd, plain, metadata=dict(wf.metadata), quant="q4_0")
    fields = gguf.GGUFReader(plain).fields
    assert "format" not in fields and fields["general.quantization_version"].contents() == 2
