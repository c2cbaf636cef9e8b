"""The ``int8-rowwise`` and ``q4_0-vnni`` kernels (native/int8.c, q4_0.c) against the naive
formulas, and their work split (native/pool.c)."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mlmf_lab as ml
from mlmf_lab.quant import QuantLinear, kernels_int8, native


def cpu_has_vnni() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and "avx512_vnni" in line.split() for line in f)
    except OSError:
        return False


pytestmark = pytest.mark.skipif(
    native.compiler() is None or not cpu_has_vnni() or not native.enabled(),
    reason="needs a C compiler and an AVX512-VNNI CPU")


def weights(n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    qt = ml.quant.quantize(torch.randn(n, k, generator=g), "int8")
    codes, scale = qt.data.contiguous(), qt.params["scale"].float().contiguous()
    return codes, scale, torch.randn(n, generator=g)


def naive_asymmetric(x: np.ndarray, codes: np.ndarray, scale: np.ndarray,
                     bias: np.ndarray) -> np.ndarray:
    """Few rows: uint8 per row with a zero point, as written in int8.c's header, in numpy."""
    out = []
    for row in x:
        lo, hi = np.float32(min(row.min(), 0)), np.float32(max(row.max(), 0))
        s = hi / np.float32(255) - lo / np.float32(255) if hi > lo else np.float32(1)
        inv = np.float32(1) / s
        zp = int(np.clip(np.rint(-lo * inv), 0, 255))
        q = np.clip(np.rint(row * inv).astype(np.int64) + zp, 0, 255)
        dot = codes.astype(np.int64) @ q - zp * codes.astype(np.int64).sum(1)
        out.append(dot.astype(np.float32) * (s * scale) + bias)
    return np.stack(out)


def naive_symmetric(x: np.ndarray, codes: np.ndarray, scale: np.ndarray,
                    bias: np.ndarray) -> np.ndarray:
    """Many rows: int8 per row, step = max|x| / 127."""
    amax = np.abs(x).max(1)
    step = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    q = np.rint(x * (np.float32(1) / step)[:, None]).astype(np.int64)
    acc = (q @ codes.astype(np.int64).T).astype(np.float32)
    return acc * (step[:, None] * scale) + bias


@pytest.mark.parametrize(("m", "k", "n"), [(1, 256, 64), (3, 100, 7), (8, 4096, 130),
                                           (9, 100, 7), (33, 384, 96), (9, 1, 5), (4, 1, 3)])
def test_matches_the_naive_formula(m: int, k: int, n: int) -> None:
    codes, scale, bias = weights(n, k)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(1)) * 3
    y = kernels_int8.Int8Rowwise(ml.quant.QTensor("int8", (n, k), codes, {"scale": scale}))(
        x, bias)
    gemv = m <= kernels_int8.GEMV_ROWS or k < kernels_int8.MATMUL_MIN_IN
    naive = naive_asymmetric if gemv else naive_symmetric
    expect = naive(x.numpy(), codes.numpy(), scale.numpy(), bias.numpy())
    np.testing.assert_allclose(y.numpy(), expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m", [1, 3, 9])
def test_extreme_but_finite_inputs_stay_close_to_float32(m: int) -> None:
    """Rows near FLT_MAX (their range overflows float32) or so small that the step is
    subnormal: the kernels give what float32 gives, not inf, NaN or zeros."""
    for scheme in ("int8", "q4_0"):
        qt = ml.quant.quantize(torch.randn(16, 64), scheme)
        layer = QuantLinear(qt)
        assert layer.kernel in ("int8-rowwise", "q4_0-vnni")
        for big in (2e36, 1e-38):
            x = torch.randn(m, 64, generator=torch.Generator().manual_seed(3)) * big
            x[0, 0], x[0, 1] = 3 * big, -3 * big
            y, ref = layer(x).double(), F.linear(x.double(), qt.dequantize().double())
            assert torch.isfinite(y).all()
            assert float((y - ref).norm() / ref.norm()) < 0.03


@pytest.mark.parametrize(("scheme", "m"), [("int8", 2), ("int8", 20), ("q4_0", 3)])
def test_a_bias_of_the_wrong_size_is_refused(scheme: str, m: int) -> None:
    layer = QuantLinear(ml.quant.quantize(torch.randn(64, 128), scheme), torch.zeros(64))
    layer.bias = torch.nn.Parameter(torch.ones(1), requires_grad=False)
    with pytest.raises(ValueError, match="bias must be 64 contiguous float32 values"):
        layer(torch.randn(m, 128))
    with pytest.raises(ml.errors.MLMFError, match=r"bias must have shape \[64\], found \[1\]"):
        QuantLinear(ml.quant.quantize(torch.randn(64, 128), scheme), torch.ones(1))


@pytest.mark.parametrize("m", [2, 20])
def test_same_result_on_one_and_two_threads(m: int) -> None:
    codes, scale, bias = weights(256, 512)
    x = torch.randn(m, 512)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native.int8_linear(x, codes, scale, codes.sum(1, dtype=torch.int32), bias)
        many = native.int8_matmul(x, codes, scale, codes.sum(1, dtype=torch.int32), bias)
        torch.set_num_threads(2)
        assert torch.equal(one, native.int8_linear(x, codes, scale,
                                                   codes.sum(1, dtype=torch.int32), bias))
        assert torch.equal(many, native.int8_matmul(x, codes, scale,
                                                    codes.sum(1, dtype=torch.int32), bias))
        q4 = QuantLinear(ml.quant.quantize(codes.float(), "q4_0"), bias)
        torch.set_num_threads(1)
        one_q4 = q4(x)
        torch.set_num_threads(2)
        assert torch.equal(one_q4, q4(x))
    finally:
        torch.set_num_threads(before)


def test_concurrent_callers_and_more_threads_than_cores_give_the_same_bits() -> None:
    """One caller at a time uses the helpers; a concurrent one runs alone: same results."""
    layers = [QuantLinear(ml.quant.quantize(torch.randn(300, 256), s)) for s in ("int8", "q4_0")]
    inputs = [torch.randn(m, 256) for m in (1, 3, 20)]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        expect = [[lay(x) for x in inputs] for lay in layers]
        torch.set_num_threads(2 * (os.cpu_count() or 1) + 1)
        results: list[bool] = []

        def run() -> None:
            for _ in range(20):
                results.append(all(
                    torch.equal(lay(x), e) for lay, ex in zip(layers, expect, strict=True)
                    for x, e in zip(inputs, ex, strict=True)))

        threads = [threading.Thread(target=run) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 60 and all(results)
    finally:
        torch.set_num_threads(before)


def test_the_same_bits_on_torchs_team_and_on_the_librarys_own_threads() -> None:
    """pool.c runs chunks on torch's OpenMP team, or on its own helpers after a stall."""
    layers = [QuantLinear(ml.quant.quantize(torch.randn(320, 256), s)) for s in ("int8", "q4_0")]
    inputs = [torch.randn(m, 256) for m in (1, 3, 40)]
    lib = native.library("int8")
    assert lib is not None
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        team = [lay(x) for lay in layers for x in inputs]
        lib.mlmf_pool_openmp(0)
        own = [lay(x) for lay in layers for x in inputs]
    finally:
        lib.mlmf_pool_openmp(len(native.openmp_runtimes()) == 1)
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(team, own, strict=True))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
def test_a_forked_child_makes_its_own_helpers() -> None:
    layer = QuantLinear(ml.quant.quantize(torch.randn(512, 256), "int8"))
    x = torch.randn(20, 256)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expect = layer(x)  # the parent's helpers exist now
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its first call must start helpers, not wait for the parent's
            ok = all(torch.equal(layer(x), expect) for _ in range(5))
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
        os.close(write)
        answer = os.read(read, 1)
        os.waitpid(pid, 0)
        assert answer == b"1"
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("m", [1, 4, 12])
def test_nan_and_inf_propagate_as_in_float32(m: int) -> None:
    codes, scale, bias = weights(32, 64)
    x = torch.randn(m, 64)
    x[0, 3] = float("nan")
    x[-1, 5] = float("inf")
    layer = QuantLinear(ml.quant.QTensor("int8", (32, 64), codes, {"scale": scale}), bias)
    y, ref = layer(x), F.linear(x, codes.float() * scale[:, None], bias)
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(torch.isinf(y), torch.isinf(ref))


def test_zero_rows_empty_batches_and_zero_scales() -> None:
    codes, scale, bias = weights(16, 64)
    scale[3] = 0.0
    codes[3] = 0
    layer = QuantLinear(ml.quant.QTensor("int8", (16, 64), codes, {"scale": scale}), bias)
    assert torch.equal(layer(torch.zeros(2, 64)), bias.expand(2, 16))
    assert torch.equal(layer(torch.zeros(20, 64)), bias.expand(20, 16))
    assert layer(torch.zeros(0, 64)).shape == (0, 16)
    assert torch.all(layer(torch.randn(3, 64))[:, 3] == bias[3])


def test_one_outlier_token_does_not_coarsen_the_others() -> None:
    """Per-row activation scales: a row 1000x larger than the rest costs them nothing, where
    one scale for the whole input (fbgemm's dynamic linear) rounds the small rows away."""
    lin = torch.nn.Linear(256, 64)
    qt = ml.quant.quantize(lin.weight.detach(), "int8")
    for m in (4, 24):  # both paths
        x = torch.randn(m, 256)
        x[0] *= 1000
        ref = F.linear(x, qt.dequantize(), lin.bias)
        errors = {}
        for kernel in ("int8-rowwise", "fbgemm-int8"):
            y = QuantLinear(qt, lin.bias, kernel=kernel)(x).detach()
            errors[kernel] = ((y - ref).norm(dim=1) / ref.norm(dim=1))[1:]  # the small rows
        assert errors["int8-rowwise"].max() < 0.02
        # one scale for the whole input: every small row is worse than ours at its worst
        assert errors["int8-rowwise"].max() * 10 < errors["fbgemm-int8"].min()


def test_is_the_default_and_shares_torchs_openmp_runtime() -> None:
    layer = QuantLinear(ml.quant.quantize(torch.randn(64, 128), "int8"))
    assert layer.kernel == "int8-rowwise"
    assert native.int8_vnni()
    runtimes = native.openmp_runtimes()
    assert len(runtimes) == 1, runtimes  # ours did not load a second one beside torch's
    torch_lib = os.path.dirname(torch.__file__)
    if any(name.startswith("libgomp") for name in os.listdir(os.path.join(torch_lib, "lib"))):
        assert next(iter(runtimes)).startswith(torch_lib)


def test_switched_off_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLMF_NATIVE", "0")
    layer = QuantLinear(ml.quant.quantize(torch.randn(64, 128), "int8"))
    assert layer.kernel != "int8-rowwise"
    assert QuantLinear(ml.quant.quantize(torch.randn(64, 128), "q4_0")).kernel != "q4_0-vnni"


def test_the_int8_library_is_built_beside_the_dequant_one() -> None:
    lib = native.library("int8")
    assert lib is not None and os.path.basename(lib._name).startswith("int8-")
    assert os.path.dirname(lib._name) == str(native.kernel_dir())


# -- q4_0 blocks against q8_0 activations ------------------------------------------------------
def naive_q4_0(x: np.ndarray, blocks: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """llama.cpp's q4_0 x q8_0 dot, block by block, in numpy (float64 sums)."""
    n, nb = blocks.shape[0], blocks.shape[1] // 18
    b = blocks.reshape(n, nb, 18)
    dw = b[..., :2].copy().view(np.float16)[..., 0].astype(np.float64)  # (n, nb)
    codes = np.concatenate([b[..., 2:] & 15, b[..., 2:] >> 4], axis=-1).astype(np.int64) - 8
    xb = x.reshape(x.shape[0], nb, 32)
    d = np.abs(xb).max(-1) / np.float32(127)  # float32, as the kernel
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), np.float32(0)).astype(np.float32)
    q = np.rint(xb * inv[..., None]).astype(np.int64)  # (m, nb, 32)
    dots = np.einsum("mbi,nbi->mnb", q, codes)  # exact integers
    return (dots * d.astype(np.float64)[:, None, :] * dw[None]).sum(-1) + bias


@pytest.mark.parametrize(("m", "k", "n"), [(1, 4096, 64), (3, 96, 7), (5, 192, 33), (16, 384, 48)])
def test_q4_0_matches_llama_cpps_formula(m: int, k: int, n: int) -> None:
    g = torch.Generator().manual_seed(2)
    qt = ml.quant.quantize(torch.randn(n, k, generator=g), "q4_0")
    x, bias = torch.randn(m, k, generator=g) * 2, torch.randn(n, generator=g)
    x[0, :32] = 0.0  # an all-zero activation block
    layer = QuantLinear(qt, bias, kernel="q4_0-vnni")
    y = layer(x).detach().numpy()
    expect = naive_q4_0(x.numpy(), qt.data.numpy(), bias.numpy())
    np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-4)
    assert rel_err(y, F.linear(x, qt.dequantize(), bias).numpy()) < 0.01
    assert layer.weight_nbytes == qt.nbytes  # 4.5 bits per weight, as in the file
    assert torch.equal(layer._kernel.qtensor().data, qt.data)  # the blocks, byte for byte


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_q4_0_is_the_default_and_propagates_nan() -> None:
    qt = ml.quant.quantize(torch.randn(16, 64), "q4_0")
    layer = QuantLinear(qt)
    assert layer.kernel == "q4_0-vnni"
    x = torch.randn(2, 64)
    x[1, 7] = float("nan")
    y, ref = layer(x), F.linear(x, qt.dequantize())
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert layer(torch.zeros(0, 64)).shape == (0, 16)
