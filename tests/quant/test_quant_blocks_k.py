"""K-quant quantization (Q4_K, Q6_K): format, bits per weight, error profile, search quality.

llama.cpp's reference quantizers are not reproduced to the bit (see ``blocks_k_quant``), so
these tests check what must hold for any correct implementation of the published algorithm:
the bytes decode (through the independent ``gguf`` decoder) to the values we report, the
sizes are 4.5 and 6.5625 bits/weight, the error sits where the format's precision puts it
and between its neighbours', and the scale search improves on a plain min/max fit.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

import mlmf_lab as ml
from mlmf_lab.quant import blocks_k, blocks_k_quant, ggml, native


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def weights() -> torch.Tensor:
    return torch.randn(16, 1024, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def errors(weights: torch.Tensor) -> dict[str, float]:
    return {s: rel_err(ml.quant.quantize(weights, s).dequantize(), weights)
            for s in ["q4_0", "q4_1", "q4_k", "q5_0", "q5_1", "q6_k", "q8_0"]}


@pytest.mark.parametrize("scheme,bpw", [("q4_k", 4.5), ("q6_k", 6.5625)])
def test_bits_per_weight_and_gguf_decodes_our_bytes(weights: torch.Tensor, scheme: str,
                                                      bpw: float) -> None:
    qt = ml.quant.quantize(weights, scheme)
    assert qt.bits_per_weight == bpw
    assert qt.data.shape == (16, 1024 // 256 * int(bpw * 32))
    ref = gguf.quants.dequantize(qt.data.numpy(), gguf.GGMLQuantizationType[scheme.upper()])
    assert torch.equal(qt.dequantize(), torch.from_numpy(np.ascontiguousarray(ref)))


def test_error_profile(errors: dict[str, float]) -> None:
    # Gaussian weights: published llama.cpp profile puts Q4_K between Q4_1 and Q5_0,
    # and Q6_K between Q5_1 and Q8_0.
    assert 0.060 < errors["q4_k"] < 0.075
    assert errors["q4_k"] < errors["q4_1"] < errors["q4_0"]
    assert errors["q4_k"] > errors["q5_0"]
    assert 0.014 < errors["q6_k"] < 0.020
    assert errors["q8_0"] < errors["q6_k"] < errors["q5_1"]


def test_scale_search_beats_min_max(weights: torch.Tensor) -> None:
    x = weights[:4].reshape(-1, 32)
    w = (x.square().mean(dim=1, keepdim=True)).sqrt() + x.abs()

    def weighted_error(nstep: int) -> float:
        scale, mins, codes = blocks_k_quant.fit_asymmetric(x, w, 15, nstep=nstep)
        back = scale.unsqueeze(1) * codes.float() - mins.unsqueeze(1)
        return float((w * (back - x).square()).sum())

    plain, searched = weighted_error(0), weighted_error(20)
    assert searched < 0.9 * plain


def test_symmetric_fit_is_optimal_among_candidates() -> None:
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(2))
    scale, codes = blocks_k_quant.fit_symmetric(x, 32)
    w = x * x
    best = (w * (scale.unsqueeze(1) * (codes.float() - 32) - x).square()).sum(dim=1)
    peak = torch.gather(x, 1, x.abs().argmax(dim=1, keepdim=True))
    for k in range(-9, 10):
        l_k = torch.round(-(32 + 0.1 * k) / peak * x).clamp(-32, 31)
        s_k = (w * x * l_k).sum(dim=1) / (w * l_k * l_k).sum(dim=1)
        err_k = (w * (s_k.unsqueeze(1) * l_k - x).square()).sum(dim=1)
        assert (best <= err_k * (1 + 1e-5)).all()


def test_special_blocks() -> None:
    x = torch.zeros(3, 256)
    x[1] = 2.5  # constant positive: min clamps to 0, so the scale alone must carry it
    x[2, :16] = torch.linspace(-1, 1, 16)  # one live sub-block, the rest zero
    for scheme in ("q4_k", "q6_k"):
        qt = ml.quant.quantize(x, scheme)
        back = qt.dequantize()
        assert torch.isfinite(back).all()
        assert torch.equal(back[0], torch.zeros(256))
        assert rel_err(back[1], x[1]) < 1e-4  # up to the fp16 rounding of the scale
        assert rel_err(back[2], x[2]) < (0.1 if scheme == "q4_k" else 0.03)
    q6 = ml.quant.quantize(x[:1], "q6_k").data
    assert not q6.any()  # an all-zero super-block is stored as zero bytes, as llama.cpp does


def test_scale_min_packing_round_trips() -> None:
    g = torch.Generator().manual_seed(3)
    sc = torch.randint(0, 64, (50, 8), dtype=torch.uint8, generator=g)
    mn = torch.randint(0, 64, (50, 8), dtype=torch.uint8, generator=g)
    packed = blocks_k.pack_scale_min_k4(sc, mn)
    assert packed.shape == (50, 12)
    got = blocks_k.scale_min_k4(packed)
    assert torch.equal(got[:, 0], sc) and torch.equal(got[:, 1], mn)


# -- the C quantizer (native/kquant.c): the bytes of the torch functions above -----------------
needs_native = pytest.mark.skipif(native.compiler() is None or not native.enabled(),
                                  reason="needs a C compiler")


def hard_rows(seed: int) -> torch.Tensor:
    """Gaussian rows at many scales, and rows that reach the corners of the search."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 512, generator=g) * torch.exp(torch.randn(96, 1, generator=g) * 6)
    x[0] = 0.0
    x[1] = -0.0
    x[2, ::3] = -0.0
    x[3] = 7.0
    x[4, 256:] = -1.5
    x[5] = x[5].abs()
    x[5, ::4] = 0.0
    x[6] = -x[6].abs()
    x[7] = torch.randint(-8, 8, (512,), generator=g).float() / 4
    x[8, :40] = 0.0
    x[9] *= 1e-30
    return x


@needs_native
@pytest.mark.parametrize("scheme", ["q4_k", "q6_k"])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_c_quantizer_gives_the_bytes_of_the_torch_one(
        scheme: str, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    x = hard_rows(seed)
    bt = ggml.block_type(scheme)
    assert ggml._native_quantizer(bt) is not None  # built, and it passed its own probe
    fast = ml.quant.quantize(x, scheme)
    monkeypatch.setenv("MLMF_NATIVE", "0")
    assert ggml._native_quantizer(bt) is None
    assert torch.equal(fast.data, ml.quant.quantize(x, scheme).data)


@needs_native
@pytest.mark.parametrize("scheme", ["q4_k", "q6_k"])
def test_rows_with_nan_or_inf_take_the_torch_path(scheme: str) -> None:
    bt = ggml.block_type(scheme)
    x = torch.randn(3, 256)
    x[1, 5] = float("nan")
    x[2, 9] = float("inf")
    fast = ggml._native_quantizer(bt)
    assert fast is not None
    out = torch.zeros(3, bt.type_size, dtype=torch.uint8)
    assert fast(x, out) is False and not out.any()  # declined, nothing written
    expect = torch.empty_like(out)
    bt.quantize_blocks(x, expect)
    assert torch.equal(ml.quant.quantize(x, scheme).data.view(3, -1), expect)


@needs_native
def test_a_c_quantizer_that_differs_from_the_reference_is_not_used(
        caplog: pytest.LogCaptureFixture) -> None:
    def other(x: torch.Tensor, out: torch.Tensor) -> None:
        blocks_k_quant.quantize_q6_k(x, out)
        out[:, 0] ^= 1  # one bit off

    with caplog.at_level("WARNING"):
        assert native.quantizer("q6_k", 210, other) is None
    assert "C q6_k quantizer differs from torch's" in caplog.text
