"""``reader=``: our GGUF header parser and ``gguf.GGUFReader`` read every file alike.

Every file here is opened with both readers and everything a user sees is compared: the
header records, metadata (values and their Python types), value types, tensor infos, and
the bytes of every tensor. Bad files and bad ``reader=`` values give an ``MLMFError``
naming the file.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import gguf
import pytest
import torch
from attacks.gguf_bytes import gguf_bytes, k_blocks, kv, mixed_state
from test_gguf_bad_input import CASES

import mlmf_lab as ml
from mlmf_lab.errors import FormatError, UnsupportedError
from mlmf_lab.formats.gguf import GGUFFile
from mlmf_lab.formats.gguf_header import read_header
from mlmf_lab.formats.gguf_reader import read_header_with_gguf
from mlmf_lab.quant import QTensor

Q, V = gguf.GGMLQuantizationType, gguf.GGUFValueType
SIZES = {int(t): sizes for t, sizes in gguf.GGML_QUANT_SIZES.items()}  # type id -> block sizes

META = {
    "general.architecture": "llama",
    "general.name": "tiny",
    "llama.context_length": 2048,
    "llama.rope.freq_base": 10000.0,
    "eps": 1e-6,  # not exact in float32: stored as float64
    "offset": -3,
    "big": 2**40,
    "flag": True,
    "off": False,
    "tokens": ["<s>", "</s>", "héllo", ""],
    "token_types": [1, 3, -1],
    "wide": [2**40, 1],
    "scores": [0.5, -1.25],
    "nested": {"a": [1, 2], "b": None},  # through JSON
}


def assert_same(path: Path) -> None:
    """Both readers agree on everything a user of ``path`` can see."""
    ours, theirs = read_header(path, SIZES), read_header_with_gguf(path, SIZES)
    assert theirs == ours
    assert repr(theirs) == repr(ours)  # also the Python types: 1 vs 1.0 vs True
    with ml.open_weights(path) as a, ml.open_weights(path, reader="gguf") as b:
        assert (a.reader, b.reader) == ("mlmf", "gguf")
        assert repr(b.metadata) == repr(a.metadata) and b.value_types == a.value_types
        assert (b.version, b.alignment, b.aliases) == (a.version, a.alignment, a.aliases)
        assert list(b) == list(a)
        for name in a:
            assert b.info(name) == a.info(name), name  # shape, dtype, quant, nbytes, offset
            ta, tb = a.tensor(name), b.tensor(name)
            assert tb.dtype == ta.dtype and torch.equal(tb, ta), name
            ra, rb = a.raw(name), b.raw(name)
            if isinstance(ra, QTensor):
                assert isinstance(rb, QTensor) and (rb.scheme, rb.shape) == (ra.scheme, ra.shape)
                ra, rb = ra.data, rb.data
            assert isinstance(rb, torch.Tensor) and torch.equal(rb, ra), name


@pytest.mark.parametrize("quant", [None, "q8_0", "q4_k", "q6_k", "q4_0", "q5_1", "f16", "bf16"])
def test_readers_agree_on_our_files(tmp_path: Path, quant: str | None) -> None:
    path = tmp_path / "m.gguf"
    ml.save_state_dict(mixed_state(), path, metadata=META, quant=quant)
    assert_same(path)
    with ml.open_weights(path, reader="gguf") as wf:
        blocks = quant is not None and quant not in ("f16", "bf16")
        assert wf.metadata == META | ({"general.quantization_version": 2} if blocks else {})
        if quant == "q4_k":
            kinds = {n: wf.info(n).quant or wf.info(n).dtype for n in wf}
            assert kinds["tok_embd.weight"] == "Q4_K" and kinds["blk.0.attn_q.weight"] == "Q5_0"
            assert kinds["blk.0.attn_norm.weight"] == "float32"


def test_readers_agree_on_a_file_of_the_gguf_writer(tmp_path: Path) -> None:
    """Every value type, arrays of arrays, a custom alignment, raw K blocks, integer tensors."""
    path = tmp_path / "ref.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_custom_alignment(64)
    scalars = {
        V.UINT8: 200, V.INT8: -100, V.UINT16: 60000, V.INT16: -30000, V.UINT32: 4_000_000_000,
        V.INT32: -2_000_000_000, V.FLOAT32: 0.25, V.BOOL: True, V.STRING: "héllo",
        V.UINT64: 2**63 + 5, V.INT64: -(2**62), V.FLOAT64: 0.1,
    }
    for vtype, value in scalars.items():
        writer.add_key_value(f"s.{vtype.name}", value, vtype)
        writer.add_key_value(f"a.{vtype.name}", [value, value], V.ARRAY, vtype)
    writer.add_key_value("a.nested", [[1, 2], [3]], V.ARRAY, V.ARRAY)
    writer.add_key_value("a.nested_strings", [["a"], ["b", "cd"]], V.ARRAY, V.ARRAY)
    writer.add_key_value("a.deep", [[[1.5]], [[2.5, 3.5]]], V.ARRAY, V.ARRAY)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 256, generator=g).numpy()
    for qtype in (Q.Q8_0, Q.Q4_0, Q.Q5_1, Q.F16, Q.BF16):
        writer.add_tensor(qtype.name, gguf.quants.quantize(w, qtype), raw_dtype=qtype)
    for qtype in (Q.Q4_K, Q.Q6_K):
        writer.add_tensor(qtype.name, k_blocks(qtype, 4, g), raw_dtype=qtype)
    writer.add_tensor("f32", w)
    writer.add_tensor("i8", torch.arange(-4, 4, dtype=torch.int8).view(2, 4).numpy())
    writer.add_tensor("i64", torch.arange(6, dtype=torch.int64).numpy())
    writer.add_tensor("f64", torch.randn(3, generator=g, dtype=torch.float64).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    assert_same(path)
    with ml.open_weights(path, reader="gguf") as wf:
        assert wf.alignment == 64 and all(wf.info(n).offset % 64 == 0 for n in wf)
        assert wf.metadata["a.nested"] == [[1, 2], [3]]  # kept nested (contents() flattens)
        assert wf.metadata["a.nested_strings"] == [["a"], ["b", "cd"]]
        assert wf.metadata["a.deep"] == [[[1.5]], [[2.5, 3.5]]]
        assert wf.value_types["a.nested"] == V.ARRAY and wf.value_types["s.BOOL"] == V.BOOL


def test_readers_agree_on_empty_arrays(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.write_bytes(gguf_bytes([  # key/value pairs and no tensors: GGUFWriter refuses these
        kv("empty", V.ARRAY, struct.pack("<IQ", V.INT32, 0)),
        kv("empty_strings", V.ARRAY, struct.pack("<IQ", V.STRING, 0)),
        kv("empty_inner", V.ARRAY, struct.pack("<IQ", V.ARRAY, 2)
           + struct.pack("<IQ", V.UINT8, 0) + struct.pack("<IQ", V.UINT8, 1) + b"\x07"),
    ]))
    assert_same(path)
    with ml.open_weights(path, reader="gguf") as wf:
        assert wf.metadata == {"empty": [], "empty_strings": [], "empty_inner": [[], [7]]}


def test_default_is_our_parser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.gguf"
    ml.save_state_dict({"w": torch.ones(2, 32)}, path, metadata={"n": 1})

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("deep inside gguf")

    monkeypatch.setattr(gguf, "GGUFReader", broken)
    with ml.open_weights(path) as wf, GGUFFile(path) as direct:  # never calls GGUFReader
        assert wf.reader == direct.reader == "mlmf" and wf.metadata["n"] == 1
    with pytest.raises(FormatError) as caught:
        ml.open_weights(path, reader="gguf")
    assert str(caught.value) == (
        f"{path}: gguf.GGUFReader could not read the file (RuntimeError: deep inside gguf); "
        "open it with reader='mlmf' (the default) for a checked diagnosis"
    )


def test_every_truncation_is_a_format_error(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    full, cut = tmp_path / "full.gguf", tmp_path / "cut.gguf"
    ml.save_state_dict(mixed_state(), full, metadata=META, quant="q8_0")
    raw = full.read_bytes()
    data_start = read_header(full, SIZES).data_start
    lengths = [*range(0, data_start, 3), *range(data_start, len(raw), 499)]
    for n in lengths:
        cut.write_bytes(raw[:n])
        with pytest.raises(FormatError) as caught:
            read_header_with_gguf(cut, SIZES)
        assert str(caught.value).startswith(f"{cut}: gguf.GGUFReader could not read"), n
    monkeypatch.setattr(gguf, "GGUFReader", lambda *a, **k: pytest.fail("GGUFReader ran"))
    for n in lengths:
        cut.write_bytes(raw[:n])
        with pytest.raises(FormatError):  # our parser refuses it first
            GGUFFile(cut, reader="gguf")


@pytest.mark.parametrize(("case", "data", "error", "text"), CASES, ids=[c[0] for c in CASES])
def test_no_bad_file_reaches_gguf_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         case: str, data: bytes, error: type, text: str) -> None:
    """Our parser refuses every hostile file first (an array claiming 2**60 items would keep
    GGUFReader busy and fill the memory), with the same message as without reader=."""
    path = tmp_path / f"{case}.gguf"
    path.write_bytes(data)
    monkeypatch.setattr(gguf, "GGUFReader", lambda *a, **k: pytest.fail("GGUFReader ran"))
    with pytest.raises(error, match=re.escape(text)):
        GGUFFile(path, reader="gguf")


def test_bad_magic_and_big_endian(tmp_path: Path) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(b"GGUX" + gguf_bytes()[4:])
    with pytest.raises(FormatError, match=r"bad\.gguf: gguf\.GGUFReader could not read the file "
                                          r"\(ValueError: GGUF magic invalid\)"):
        read_header_with_gguf(path, SIZES)
    with pytest.raises(UnsupportedError, match="not a weight file"):
        ml.open_weights(path, reader="gguf")  # detection reads the magic before any reader
    path.write_bytes(gguf_bytes(version=struct.pack(">I", 3)))
    with pytest.raises(UnsupportedError, match=r"bad\.gguf: big-endian GGUF files are not"):
        read_header_with_gguf(path, SIZES)  # GGUFReader would read it; our map cannot
    with pytest.raises(UnsupportedError, match=r"bad\.gguf: .*big-endian"):
        GGUFFile(path, reader="gguf")


def test_bad_reader_values(tmp_path: Path) -> None:
    gg, st = tmp_path / "m.gguf", tmp_path / "m.safetensors"
    ml.save_state_dict({"w": torch.ones(2, 32)}, gg)
    ml.save_state_dict({"w": torch.ones(2, 32)}, st)
    with pytest.raises(UnsupportedError) as caught:
        ml.open_weights(gg, reader="bogus")
    assert str(caught.value) == (
        f"{gg}: unknown GGUF reader='bogus'; accepted: 'mlmf', 'gguf' (default 'mlmf')"
    )
    for reader in ("gguf", "mlmf", "bogus"):
        with pytest.raises(UnsupportedError) as caught:
            ml.open_weights(st, reader=reader)
        assert str(caught.value) == (
            f"{st}: reader={reader!r} chooses how a file is read where there is a choice "
            "(gguf: 'mlmf', 'gguf'), but this is a safetensors file; drop reader= to open it"
        )
    with ml.open_weights(st, reader=None) as wf:
        assert wf.format == "safetensors"
