"""GGUF block maths against the ``gguf`` package's numpy reference (itself bit-exact with ggml).

Every dequantization test runs twice: on the fused C kernels (``quant.native``) and on the
torch block functions they replace when no compiler is available.

Dequantization: random bytes (which include inf/nan/subnormal fp16 scales) and hand-built
edge blocks; bitwise for the simple types, within float32 rounding for the K-quants (NaN
positions must agree; a NaN's payload bits may differ). Quantization: byte-identical output.
"""

from __future__ import annotations

import warnings

import gguf
import numpy as np
import pytest
import torch

import mlmf_lab as ml
from mlmf_lab.errors import MLMFError, UnsupportedError
from mlmf_lab.quant import ggml, native

SIMPLE = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
K_QUANTS = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
# +0, -0, smallest and largest subnormal, smallest normal, largest finite, +inf, -inf,
# quiet NaN, signalling NaN, 1.0
F16_SPECIAL = [
    0x0000, 0x8000, 0x0001, 0x03FF, 0x0400, 0x7BFF, 0x7C00, 0xFC00, 0x7E00, 0x7C01, 0x3C00,
]


@pytest.fixture(params=["native", "torch"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which dequantization path the test exercises; the native one must really be used."""
    if request.param == "torch":
        monkeypatch.setenv("MLMF_NATIVE", "0")
        assert native.dequantizer("q4_0") is None
    elif native.compiler() is None:
        pytest.skip("no C compiler on this machine")
    else:  # with a compiler the kernels must build and be the ones in use
        assert native.dequantizer("q4_0") is not None
    return str(request.param)


def reference_dequant(raw: torch.Tensor, name: str) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy warns about inf * 0 in nan-scale blocks
        out = gguf.quants.dequantize(raw.numpy(), gguf.GGMLQuantizationType[name])
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).reshape(-1)


def mine_dequant(raw: torch.Tensor, name: str) -> torch.Tensor:
    bt = ggml.BLOCK_TYPES[name]
    n_weights = raw.numel() // bt.type_size * bt.block_size
    return ml.quant.dequantize(ml.quant.QTensor(bt.scheme, (n_weights,), raw.reshape(-1)))


def assert_same(mine: torch.Tensor, ref: torch.Tensor, exact: bool) -> None:
    assert torch.equal(mine.isnan(), ref.isnan())
    ok = ~ref.isnan()
    if exact:
        assert torch.equal(mine[ok].view(torch.int32), ref[ok].view(torch.int32))
    else:
        torch.testing.assert_close(mine[ok], ref[ok], rtol=2e-7, atol=0, equal_nan=True)


def edge_blocks(name: str) -> torch.Tensor:
    """Blocks whose fp16 fields take every special value, with all-0, all-1 and random codes."""
    bt = ggml.BLOCK_TYPES[name]
    g = torch.Generator().manual_seed(7)
    rows = []
    for fill in (0x00, 0xFF, None):
        for special in F16_SPECIAL:
            block = torch.full((bt.type_size,), fill or 0, dtype=torch.uint8)
            if fill is None:
                block = torch.randint(0, 256, (bt.type_size,), dtype=torch.uint8, generator=g)
            # put the special value into every 2-byte slot: scales and mins wherever they are
            pair = torch.tensor([special & 0xFF, special >> 8], dtype=torch.uint8)
            for start in range(0, bt.type_size - 1, 2):
                if fill is not None or start in (0, 2, bt.type_size - 2, bt.type_size - 4):
                    block[start : start + 2] = pair
            rows.append(block)
    return torch.stack(rows)


@pytest.mark.parametrize("name", SIMPLE + K_QUANTS)
def test_dequantize_random_bytes(name: str, backend: str) -> None:
    bt = ggml.BLOCK_TYPES[name]
    g = torch.Generator().manual_seed(bt.type_id)
    n_blocks = 61 if bt.block_size == 256 else 257  # a few thousand weights: stay single-threaded
    raw = torch.randint(0, 256, (n_blocks, bt.type_size), dtype=torch.uint8, generator=g)
    assert_same(mine_dequant(raw, name), reference_dequant(raw, name), exact=name in SIMPLE)


@pytest.mark.parametrize("name", SIMPLE + K_QUANTS)
def test_dequantize_edge_blocks(name: str, backend: str) -> None:
    raw = edge_blocks(name)
    mine, ref = mine_dequant(raw, name), reference_dequant(raw, name)
    assert (ref.isnan().any() and (ref == 0).any()) or name in ("F32", "BF16")
    assert_same(mine, ref, exact=name in SIMPLE)


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0", "Q4_K", "Q6_K"])
def test_dequantize_valid_blocks_bitwise(name: str, backend: str) -> None:
    """On blocks produced by a quantizer (finite scales) even the K-quants agree to the bit."""
    x = torch.randn(16, 512, generator=torch.Generator().manual_seed(1))
    qt = ml.quant.quantize(x, name.lower())
    ref = reference_dequant(qt.data, name)
    assert torch.equal(ml.quant.dequantize(qt).reshape(-1), ref)


@pytest.mark.parametrize("name", ["Q8_0", "Q4_1", "Q5_0", "Q3_K", "Q6_K"])
def test_dequantize_into_reused_buffer(name: str, backend: str) -> None:
    bt = ggml.BLOCK_TYPES[name]
    rows, cols = 24, 2 * bt.block_size  # more blocks than one chunk when CHUNK is small
    raw = torch.randint(0, 256, (rows, cols // bt.block_size * bt.type_size), dtype=torch.uint8,
                        generator=torch.Generator().manual_seed(3))
    qt = ml.quant.QTensor(bt.scheme, (rows, cols), raw)
    buf = torch.full((rows * cols,), 123.0)
    out = ml.quant.dequantize(qt, out=buf)
    assert out.data_ptr() == buf.data_ptr() and out.shape == (rows, cols)
    assert_same(out.reshape(-1), reference_dequant(raw, name), exact=name in SIMPLE)


def test_chunked_driver_matches_single_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(8, 1024, generator=torch.Generator().manual_seed(4))
    whole = ml.quant.quantize(x, "q4_k")
    monkeypatch.setattr(ggml, "CHUNK_WEIGHTS", 256)  # one super-block per chunk
    chunked = ml.quant.quantize(x, "q4_k")
    assert torch.equal(whole.data, chunked.data)
    assert torch.equal(ml.quant.dequantize(whole), ml.quant.dequantize(chunked))


def quantize_inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 256, generator=g) * torch.logspace(-4, 4, 48).unsqueeze(1)
    x[0] = 0.0  # all-zero blocks: d = 0
    x[1, :32] = 3.0  # constant block
    x[2, :32] = torch.tensor([1.0, -1.0] * 16)  # ties for the largest magnitude
    x[3, :32] = torch.arange(32) / 2 - 8  # values on rounding boundaries
    x[4, :32] = 1e-40  # subnormal inputs
    x[5, :32] = 7e4  # beyond fp16 range: the scale overflows
    x[6, 0] = 1e30
    x[7] = -x[7].abs()
    return x


@pytest.mark.parametrize("name", SIMPLE)
def test_quantize_bytes_identical(name: str) -> None:
    x = quantize_inputs()
    mine = ml.quant.quantize(x, name.lower())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = gguf.quants.quantize(x.numpy(), gguf.GGMLQuantizationType[name])
    assert mine.data.shape == ref.shape[:-1] + (ref.view(np.uint8).shape[-1],)
    assert torch.equal(mine.data, torch.from_numpy(np.ascontiguousarray(ref).view(np.uint8)))


def test_bf16_nan_payloads_and_overflow_like_ggml() -> None:
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(8)) * 3e38
    bits = x.view(-1).view(torch.int32)
    bits[::7] = 0x7F800001  # signalling NaN
    bits[::11] = -0x7EDCBA  # negative NaN with a payload (0xFF812346)
    bits[::13] = 0x7FC00000  # quiet NaN
    bits[::17] = 0x7F7FFFFF  # largest float: rounds up to inf
    mine = ml.quant.quantize(x, "bf16").data
    ref = gguf.quants.quantize(x.numpy(), gguf.GGMLQuantizationType.BF16)
    assert torch.equal(mine, torch.from_numpy(ref.view(np.uint8)))


def test_round_trip_and_sizes() -> None:
    x = torch.randn(4, 256, generator=torch.Generator().manual_seed(5))
    for name, bpw, bound in [("q8_0", 8.5, 0.01), ("q5_1", 6.0, 0.05), ("q4_0", 4.5, 0.12)]:
        qt = ml.quant.quantize(x, name)
        assert qt.bits_per_weight == bpw and qt.nbytes == x.numel() * bpw / 8
        err = (qt.dequantize() - x).norm() / x.norm()
        assert 0 < err < bound


def test_unsupported_scheme_lists_supported() -> None:
    with pytest.raises(UnsupportedError) as info:
        ml.quant.quantize(torch.randn(32), "q3_0")
    assert "'q3_0'" in str(info.value)
    for scheme in ("q8_0", "q4_k", "f16", "bf16"):
        assert scheme in str(info.value)
    with pytest.raises(UnsupportedError, match=r"q5_k.*read.*quantizable: .*q4_k"):
        ml.quant.quantize(torch.randn(256), "q5_k")


def test_bad_shapes_and_buffers() -> None:
    with pytest.raises(MLMFError, match="multiple of 32 weights; the last dimension of shape"):
        ml.quant.quantize(torch.randn(4, 33), "q8_0")
    with pytest.raises(MLMFError, match="scalar"):
        ml.quant.quantize(torch.tensor(1.0), "q8_0")
    with pytest.raises(MLMFError, match="floating-point"):
        ml.quant.quantize(torch.ones(32, dtype=torch.int32), "q8_0")
    qt = ml.quant.quantize(torch.randn(2, 64), "q8_0")
    with pytest.raises(MLMFError, match="contiguous float32 tensor of 128 elements"):
        ml.quant.dequantize(qt, out=torch.empty(64))
    with pytest.raises(MLMFError, match="needs 136 uint8 bytes, found 100"):
        ml.quant.dequantize(ml.quant.QTensor("q8_0", (2, 64), qt.data.reshape(-1)[:100]))


def test_table_agrees_with_gguf() -> None:
    for bt in ggml.BLOCK_TYPES.values():
        qtype = gguf.GGMLQuantizationType[bt.name]
        assert int(qtype) == bt.type_id
        assert gguf.GGML_QUANT_SIZES[qtype] == (bt.block_size, bt.type_size)


def test_chunks_run_on_workers_in_the_callers_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from mlmf_lab.quant import chunks

    monkeypatch.setattr(ggml, "CHUNK_WEIGHTS", 64)  # many chunks: the helpers take part
    x = torch.randn(16, 256, generator=torch.Generator().manual_seed(6))
    qt = ml.quant.quantize(x, "q8_0")
    expected = reference_dequant(qt.data, "Q8_0").view(16, 256)
    with torch.inference_mode():
        buf = torch.empty(16 * 256)  # an inference tensor: only writable in inference mode
        assert torch.equal(ml.quant.dequantize(qt, out=buf), expected)
    threads = torch.get_num_threads()
    done: list[int] = []

    def fail_on_third(start: int, stop: int) -> None:
        done.append(start)
        if start == 2:
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        chunks.run_chunks(fail_on_third, 50, 1)
    assert 2 in done and len(done) < 50  # stopped early
    assert torch.get_num_threads() == threads  # the caller keeps its thread count
    seen: list[int] = []
    later = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    later.start()
    later.join()
    assert seen == [threads]  # and so do threads started afterwards
