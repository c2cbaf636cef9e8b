"""int8 / int4 schemes against the naive formulas (numpy, float64), exact packing, sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mlmf_lab as ml
from mlmf_lab.errors import MLMFError, UnsupportedError
from mlmf_lab.quant.intx import pack_pairs, unpack_pairs


def weights(rows: int = 48, cols: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[3] = 0.0  # an all-zero row
    w[5, 7] = 0.9  # an outlier
    w[6] += 0.4  # a row far from zero
    return w


# -- int8 -------------------------------------------------------------------------------------
def test_int8_codes_and_scales_equal_the_naive_formula() -> None:
    w = weights()
    qt = ml.quant.quantize(w, "int8")
    a = w.numpy()
    scale = np.abs(a).max(axis=1) / np.float32(127)  # float32, as stored
    inv = np.where(scale == 0, np.float32(0), np.float32(1) / np.where(scale == 0, 1, scale))
    codes = np.clip(np.rint(a * inv[:, None]), -127, 127).astype(np.int8)
    assert qt.scheme == "int8" and qt.shape == (48, 256)
    np.testing.assert_array_equal(qt.params["scale"].numpy(), scale)
    np.testing.assert_array_equal(qt.data.numpy(), codes)
    deq = ml.quant.dequantize(qt).numpy().astype(np.float64)
    np.testing.assert_allclose(deq, codes.astype(np.float64) * scale[:, None], rtol=1e-6)
    # rounding to nearest: every weight within half a step of its row's grid
    assert (np.abs(deq - a) <= scale[:, None] / 2 * (1 + 1e-5) + 1e-12).all()
    assert not deq[3].any()


def test_int8_sizes_and_nd_shapes() -> None:
    qt = ml.quant.quantize(weights(), "int8")
    assert qt.nbytes == 48 * 256 + 4 * 48
    assert qt.bits_per_weight == pytest.approx(8 * (48 * 256 + 4 * 48) / (48 * 256))
    conv = torch.randn(8, 3, 3, 3)
    q4d = ml.quant.quantize(conv, "int8")
    assert q4d.shape == (8, 3, 3, 3) and q4d.data.shape == (8, 27)
    back = q4d.dequantize()
    assert back.shape == conv.shape
    assert (back - conv).abs().max() <= conv.abs().amax() / 127


# -- int4 -------------------------------------------------------------------------------------
def test_pack_pairs_bytes_and_round_trip() -> None:
    codes = torch.randint(0, 16, (5, 64), generator=torch.Generator().manual_seed(1))
    packed = pack_pairs(codes)
    c = codes.numpy().astype(np.uint8)
    np.testing.assert_array_equal(packed.numpy(), c[:, 0::2] | (c[:, 1::2] << 4))
    assert torch.equal(unpack_pairs(packed), codes.to(torch.uint8))


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_against_the_naive_formula(group_size: int) -> None:
    w = weights()
    qt = ml.quant.quantize(w, "int4", group_size=group_size)
    rows, cols, groups = 48, 256, 256 // group_size
    assert qt.options == {"group_size": group_size}
    assert qt.data.shape == (rows, cols // 2) and qt.data.dtype == torch.uint8
    assert qt.params["scale"].shape == (rows, groups) and qt.params["scale"].dtype == torch.bfloat16
    # sizes: 4 bits per code + a bf16 scale and a bf16 zero per group
    assert qt.nbytes == rows * cols // 2 + 2 * 2 * rows * groups
    assert qt.bits_per_weight == pytest.approx(4 + 32 / group_size)

    a = w.numpy().astype(np.float64).reshape(rows, groups, group_size)
    s = qt.params["scale"].float().numpy().astype(np.float64)[..., None]
    z = qt.params["zero"].float().numpy().astype(np.float64)[..., None]
    p = qt.data.numpy()
    codes = np.stack([p & 15, p >> 4], axis=-1).reshape(rows, groups, group_size).astype(np.int64)
    # the stored scale covers the group's range, and the zero is the value of code 8
    lo, hi = a.min(axis=-1, keepdims=True), a.max(axis=-1, keepdims=True)
    assert (s >= (hi - lo) / 15 * (1 - 1e-6)).all()
    np.testing.assert_allclose(z, lo + 8 * s, rtol=2**-8, atol=1e-12)
    # codes are the nearest ones for the stored scale and zero (ties may go either way)
    exact = (a - z) / np.where(s == 0, 1, s) + 8
    naive = np.clip(np.rint(exact), 0, 15)
    tie = np.abs(np.abs(exact - np.floor(exact)) - 0.5) < 1e-4
    assert ((codes == naive) | tie).all()
    # dequantization is (q - 8) * scale + zero
    deq = ml.quant.dequantize(qt).numpy().astype(np.float64).reshape(rows, groups, group_size)
    np.testing.assert_allclose(deq, (codes - 8) * s + z, rtol=1e-6, atol=1e-9)
    # error bound: half a step, plus the bf16 rounding of the zero point
    assert (np.abs(deq - a) <= s / 2 + np.abs(z) * 2**-8 + 1e-7).all()


def test_int4_smaller_groups_are_more_accurate() -> None:
    w = weights(64, 512)
    errs = [(ml.quant.quantize(w, "int4", group_size=g).dequantize() - w).norm() / w.norm()
            for g in (32, 64, 128)]
    assert errs[0] < errs[1] < errs[2] < 0.15


def test_dequantize_into_a_reused_buffer() -> None:
    for scheme in ("int8", "int4"):
        qt = ml.quant.quantize(weights(), scheme)
        buf = torch.full((48, 256), float("nan"))
        out = ml.quant.dequantize(qt, out=buf)
        assert out.data_ptr() == buf.data_ptr()
        assert torch.equal(buf, ml.quant.dequantize(qt))
        flat = torch.empty(48 * 256)  # any contiguous float32 buffer of the right size
        assert torch.equal(ml.quant.dequantize(qt, out=flat), buf)
        with pytest.raises(MLMFError, match=r"of 12288 elements \(shape \[48, 256\]\), found"):
            ml.quant.dequantize(qt, out=torch.empty(48, 255))
        with pytest.raises(MLMFError, match=r"\(not contiguous\)"):
            ml.quant.dequantize(qt, out=torch.empty(256, 48).t())


# -- bad input --------------------------------------------------------------------------------
def test_int4_bad_group_sizes() -> None:
    w = torch.randn(4, 96)
    with pytest.raises(MLMFError, match=r"dimension \(96\) must be a multiple of group_size 64"):
        ml.quant.quantize(w, "int4", group_size=64)
    with pytest.raises(MLMFError, match="positive even integer"):
        ml.quant.quantize(w, "int4", group_size=3)
    with pytest.raises(MLMFError, match=r"unknown options \['bits'\]; supported: group_size"):
        ml.quant.quantize(w, "int4", bits=3)
    with pytest.raises(MLMFError, match="int8: takes no options"):
        ml.quant.quantize(w, "int8", group_size=32)


def test_bad_tensors_are_refused() -> None:
    with pytest.raises(MLMFError, match="inf or nan"):
        ml.quant.quantize(torch.tensor([[1.0, float("inf")]]), "int8")
    with pytest.raises(MLMFError, match="expected a floating-point tensor, found torch.int64"):
        ml.quant.quantize(torch.ones(2, 32, dtype=torch.long), "int4", group_size=32)
    with pytest.raises(MLMFError, match="non-empty"):
        ml.quant.quantize(torch.empty(0, 4), "int8")


def test_unknown_scheme_lists_the_supported_ones() -> None:
    with pytest.raises(UnsupportedError) as e:
        ml.quant.quantize(torch.randn(4, 32), "int3")
    message = str(e.value)
    for name in ("int8", "int4", "q4_0", "q8_0"):
        assert name in message


def test_int4_parts_that_do_not_fit_the_shape_are_refused() -> None:
    qt = ml.quant.quantize(weights(), "int4", group_size=32)
    half = ml.quant.QTensor("int4", (96, 256), qt.data, qt.params, qt.options)  # rows missing
    with pytest.raises(MLMFError, match=r"needs 12288 code bytes and 768 scales and zeros; "
                                        r"found 6144 bytes, 384 scales, 384 zeros"):
        ml.quant.dequantize(half)


def test_int4_float32_and_strided_parameters_still_dequantize() -> None:
    qt = ml.quant.quantize(weights(), "int4", group_size=32)
    expected = qt.dequantize()
    wide = {k: v.float() for k, v in qt.params.items()}  # float32: the torch path
    assert torch.equal(ml.quant.QTensor("int4", qt.shape, qt.data, wide, qt.options)
                       .dequantize(), expected)
    one = ml.quant.quantize(weights()[:, :32], "int4", group_size=32)  # one group per row
    strided = {k: torch.cat([v, v], dim=1)[:, :1] for k, v in one.params.items()}
    assert not strided["scale"].is_contiguous()
    assert torch.equal(ml.quant.QTensor("int4", one.shape, one.data, strided, one.options)
                       .dequantize(), one.dequantize())
