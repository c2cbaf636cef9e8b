"""Quantized linears against the float reference; quantize_model, state dicts, load_into, report."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mlmf_lab as ml
from mlmf_lab import events
from mlmf_lab.errors import MLMFError, UnsupportedError
from mlmf_lab.quant import QuantLinear, native
from mlmf_lab.quant.kernels import KERNELS, int4pack_available, q4_0_from_parts, q4_0_parts


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def linear(n_in: int, n_out: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(64, 128)
        self.block = nn.ModuleDict({"a": nn.Linear(128, 128), "b": nn.Linear(128, 128)})
        self.attn = nn.MultiheadAttention(64, 4, batch_first=True)
        self.head = nn.Linear(128, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 64) -> (B, 32)
        a, _ = self.attn(x[:, None], x[:, None], x[:, None])
        h = F.gelu(self.up(x + a[:, 0]))
        h = h + self.block["b"](F.gelu(self.block["a"](h)))
        return self.head(h)


def net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net().eval()


# -- one layer, each kernel ---------------------------------------------------------------------
CASES = [  # scheme, options, kernel, tolerance against F.linear on the dequantized weight
    ("int8", {}, "int8-rowwise", 0.02),  # activations quantized per row (8 bits)
    ("int8", {}, "fbgemm-int8", 0.025),  # activations are quantized per call (7-bit range)
    ("int8", {}, "dequant", 1e-5),
    ("int8", {}, "int8pack-bf16", 0.01),  # bfloat16 activations and scales
    ("int4", {"group_size": 32}, "int4pack", 0.01),  # bfloat16 activations
    ("int4", {"group_size": 128}, "int4pack", 0.01),
    ("int4", {"group_size": 64}, "dequant", 1e-5),
    ("q4_0", {}, "q4_0-vnni", 0.01),  # activations quantized to q8_0 (int8 per 32)
    ("q4_0", {}, "int4pack", 0.01),  # plus q4_0's fp16 scales read as bfloat16
    ("q4_0", {}, "dequant", 1e-5),
    ("q8_0", {}, "dequant", 1e-5),
]


@pytest.mark.parametrize(("scheme", "options", "kernel", "tol"), CASES)
def test_quant_linear_matches_the_dequantized_reference(
    scheme: str, options: dict[str, int], kernel: str, tol: float
) -> None:
    if kernel == "int4pack" and not int4pack_available():
        pytest.skip("torch's int4 CPU kernel is not available here")
    if kernel in ("int8-rowwise", "q4_0-vnni") and not native.int8_vnni():
        pytest.skip("no AVX512-VNNI int8 kernel here")
    lin = linear(256, 96)
    qt = ml.quant.quantize(lin.weight.detach(), scheme, **options)
    layer = QuantLinear(dataclasses.replace(qt), lin.bias, kernel=kernel)  # held by no one
    assert layer.kernel == kernel and layer.scheme == scheme
    x = torch.randn(3, 5, 256)  # extra leading dims are kept
    y = layer(x)
    assert y.shape == (3, 5, 96) and y.dtype == torch.float32
    assert rel(y, F.linear(x, qt.dequantize(), lin.bias)) < tol
    # the kernel gives the very same quantized weights back (codes, scales, zero points)
    back = layer.qweight
    assert back.scheme == qt.scheme and back.shape == qt.shape and back.options == qt.options
    assert torch.equal(back.data, qt.data)
    assert qt.params.keys() == back.params.keys()
    assert all(torch.equal(back.params[k], qt.params[k]) for k in qt.params)
    # what the layer holds: the QTensor's bytes (int8pack-bf16 adds bf16 copies of the scales,
    # int8-rowwise int32 row sums)
    extra = {"int8pack-bf16": 2, "int8-rowwise": 4}.get(kernel, 0) * qt.shape[0]
    assert layer.weight_nbytes == qt.nbytes + extra


@pytest.mark.parametrize("kernel", ["int8-rowwise", "fbgemm-int8", "int8pack-bf16", "dequant"])
def test_bias_edits_reach_the_kernel(kernel: str) -> None:
    """In-place edits (also through ``.data``, which autograd does not version), a state-dict
    load and a new bias tensor must all reach every kernel."""
    if kernel == "int8-rowwise" and not native.int8_vnni():
        pytest.skip("no AVX512-VNNI int8 kernel here")
    lin = linear(128, 64)
    layer = QuantLinear(ml.quant.quantize(lin.weight.detach(), "int8"), lin.bias.clone(),
                        kernel=kernel)
    x = torch.randn(4, 128)
    with torch.no_grad():
        w = layer.qweight.dequantize()

        def expected() -> torch.Tensor:
            return F.linear(x, w, layer.bias)

        assert rel(layer(x), expected()) < 0.02
        layer.bias.add_(1.0)
        assert rel(layer(x), expected()) < 0.02
        layer.bias.data.add_(5.0)
        assert rel(layer(x), expected()) < 0.02
        layer.load_state_dict({"weight": w, "bias": torch.full((64,), -3.0)})
        assert torch.allclose(layer.bias, torch.tensor(-3.0)) and rel(layer(x), expected()) < 0.02
        without = layer(x) + 3.0
        layer.bias = nn.Parameter(torch.zeros(64), requires_grad=False)
        assert torch.allclose(layer(x), without, atol=1e-4)
        layer.bias = None
        assert torch.allclose(layer(x), without, atol=1e-4)


@pytest.mark.parametrize("rows", [16, 48, 80, 112, 384])
def test_int4pack_layout_round_trips_for_odd_row_counts(rows: int) -> None:
    if not int4pack_available():
        pytest.skip("torch's int4 CPU kernel is not available here")
    w = torch.randn(rows, 64)
    for scheme, options in (("q4_0", {}), ("int4", {"group_size": 32})):
        qt = ml.quant.quantize(w, scheme, **options)
        layer = QuantLinear(dataclasses.replace(qt), kernel="int4pack")  # from the packed layout
        assert layer.kernel == "int4pack" and layer.qweight is not qt
        assert torch.equal(layer.qweight.data, qt.data)
        x = torch.randn(2, 64)
        assert rel(layer(x), x @ qt.dequantize().T) < 0.01


def test_q4_0_parts_are_the_gguf_block_fields() -> None:
    qt = ml.quant.quantize(torch.randn(32, 64), "q4_0")
    codes, d = q4_0_parts(qt)
    blocks = qt.data.numpy().reshape(32, 2, 18)
    np.testing.assert_array_equal(d.numpy(), blocks[..., :2].copy().view(np.float16)[..., 0])
    qs = blocks[..., 2:]
    naive = np.concatenate([qs & 15, qs >> 4], axis=-1).reshape(32, 64)
    np.testing.assert_array_equal(codes.numpy(), naive)
    expect = (naive.reshape(32, 2, 32).astype(np.float32) - 8) * d.numpy()[..., None]
    np.testing.assert_array_equal(qt.dequantize().numpy(), expect.reshape(32, 64))
    assert torch.equal(q4_0_from_parts(codes, d).data, qt.data)


def test_int8_accuracy_goal_against_float32() -> None:
    lin = linear(512, 512)
    layer = QuantLinear(ml.quant.quantize(lin.weight.detach(), "int8"), lin.bias)
    for batch in (1, 32):
        x = torch.randn(batch, 512)
        assert rel(layer(x), lin(x)) <= 0.025


def test_unknown_kernel_and_kernel_that_does_not_fit() -> None:
    qt = ml.quant.quantize(torch.randn(32, 64), "q8_0")
    with pytest.raises(UnsupportedError, match="unknown linear kernel 'cuda'; supported: "
                       + ", ".join(k.name for k in KERNELS)):
        QuantLinear(qt, kernel="cuda")
    with pytest.raises(UnsupportedError, match="cannot run q8_0 .* kernels that can: dequant"):
        QuantLinear(qt, kernel="int4pack")


# -- quantize_model ---------------------------------------------------------------------------
def test_quantize_model_replaces_linears_and_outputs_stay_close() -> None:
    ref = net()
    x = torch.randn(8, 64)
    expected = ref(x)
    for scheme, options, tol in (("int8", {}, 0.04), ("int4", {"group_size": 32}, 0.15),
                                 ("q4_0", {}, 0.15), ("q8_0", {}, 0.01)):
        model = copy.deepcopy(ref)
        summary = ml.quant.quantize_model(model, scheme, **options)
        names = [c.name for c in summary.layers]
        assert names == ["up", "block.a", "block.b", "head"]
        assert all(isinstance(model.get_submodule(n), QuantLinear) for n in names)
        # nn.MultiheadAttention reads out_proj.weight directly: left alone
        assert type(model.attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
        assert summary.bytes_before == 4 * (64 * 128 + 2 * 128 * 128 + 128 * 32)
        assert summary.bytes_after == sum(model.get_submodule(n).weight_nbytes for n in names)
        assert 3.5 < summary.ratio < 8
        with torch.no_grad():
            assert rel(model(x), expected) < tol, scheme
        assert scheme in summary._repr_html_() and "block.a" in summary._repr_html_()


def test_quantize_model_skip_by_name_prefix_and_glob() -> None:
    model = net()
    summary = ml.quant.quantize_model(model, "int8", skip=["head", "block.*b"])
    assert summary.skipped == ("block.b", "head")
    assert type(model.head) is nn.Linear and type(model.block["b"]) is nn.Linear
    assert isinstance(model.block["a"], QuantLinear)
    model2 = net()
    summary2 = ml.quant.quantize_model(model2, "int8", skip="block")  # a parent skips children
    assert [c.name for c in summary2.layers] == ["up", "head"]


def test_quantize_model_unknown_scheme_leaves_the_model_alone() -> None:
    model = net()
    with pytest.raises(UnsupportedError) as e:
        ml.quant.quantize_model(model, "int2")
    assert "unknown quantization scheme 'int2'; supported:" in str(e.value)
    assert "int4" in str(e.value) and "q4_0" in str(e.value)
    assert not any(isinstance(m, QuantLinear) for m in model.modules())


def test_quantize_model_names_the_layer_that_does_not_fit() -> None:
    model = net()
    with pytest.raises(MLMFError, match=r"cannot quantize layer 'up' \[128, 64\] with q4_k: .*"
                       r"skip=\['up'\]"):
        ml.quant.quantize_model(model, "q4_k")


def test_quantize_model_records_an_event() -> None:
    seen: list[events.Event] = []
    events.LISTENERS.append(seen.append)
    try:
        model = net()
        ml.quant.quantize_model(model, "int4", group_size=64, skip=["head"])
    finally:
        events.LISTENERS.remove(seen.append)
    assert [e.activity for e in seen] == ["quantize"]
    assert seen[0].used == [model] and seen[0].generated == [model]
    assert seen[0].params == {"scheme": "int4", "skip": ["head"], "group_size": 64}


# -- state dicts and GGUF --------------------------------------------------------------------
def test_state_dict_gives_float_weights_and_loads_back() -> None:
    model = net()
    ml.quant.quantize_model(model, "q8_0")
    state = model.state_dict()
    assert state["up.weight"].dtype == torch.float32
    assert torch.equal(state["up.weight"], model.up.qweight.dequantize())
    assert isinstance(model.state_dict(keep_vars=True)["up.weight"], ml.quant.QTensor)
    twin = net(seed=1)
    twin.load_state_dict(state)  # a float twin: same outputs as the quantized model
    x = torch.randn(4, 64)
    with torch.no_grad():
        assert rel(twin(x), model(x)) < 1e-5
    # float weights into a quantized model are quantized with the layer's scheme
    other = net(seed=2)
    ml.quant.quantize_model(other, "q8_0")
    other.load_state_dict(net().state_dict())
    assert torch.equal(other.up.qweight.data, model.up.qweight.data)


def test_load_into_keep_quantized_from_gguf(tmp_path: Path) -> None:
    import gguf

    ref = net()
    path = tmp_path / "net.gguf"
    ml.save_state_dict(ref.state_dict(), path, quant="q4_0")
    with torch.device("meta"):
        model = Net()
    report = ml.load_into(model, path, keep_quantized=True)
    assert report.ok
    kept = {n for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    # the plain nn.Linear layers; attn.out_proj is a Linear subclass that MHA reads directly
    assert kept == {"up", "block.a", "block.b", "head"}
    assert model.attn.out_proj.weight.dtype == torch.float32
    reader = gguf.GGUFReader(path)
    stored = {t.name: t for t in reader.tensors}
    for name in kept:
        assert stored[f"{name}.weight"].tensor_type.name == "Q4_0"
        raw = np.asarray(stored[f"{name}.weight"].data).reshape(-1)
        assert np.array_equal(model.get_submodule(name).qweight.data.numpy().reshape(-1), raw)
    dense = net(seed=3)
    ml.load_into(dense, path)  # the same file, dequantized
    x = torch.randn(4, 64)
    with torch.no_grad():
        assert rel(model.eval()(x), dense.eval()(x)) < 0.01
        assert rel(model(x), ref(x)) < 0.2


# -- report -----------------------------------------------------------------------------------
def test_report_per_layer_errors() -> None:
    ref = net()
    model = copy.deepcopy(ref)
    ml.quant.quantize_model(model, "int4", group_size=32, skip=["up"])
    x = torch.randn(16, 64)
    rep = ml.quant.report(ref, model, x)
    assert [r.name for r in rep.layers] == ["block.a", "block.b", "head"]
    head = rep.layers[-1]
    w = ref.head.weight.detach()
    expect = float((model.head.qweight.dequantize() - w).norm() / w.norm())
    assert head.rel_error == pytest.approx(expect, rel=1e-6)
    assert head.snr_db == pytest.approx(-20 * math.log10(expect))
    assert head.bits_per_weight == pytest.approx(5.0)
    with torch.no_grad():
        assert head.drift == pytest.approx(rel(model(x), ref(x)), rel=1e-5)  # head is last
    assert rep.output_drift == pytest.approx(head.drift, rel=1e-5)
    assert 0 < head.local_drift < 0.2
    assert rep.bits_per_weight == pytest.approx(5.0)
    assert set(rep.errors) == {"block.a", "block.b", "head"}
    html = rep._repr_html_()
    assert "block.b" in html and "SNR" in html
    with pytest.raises(MLMFError, match="no QuantLinear layers"):
        ml.quant.report(ref, net(), x)


def test_quant_figures() -> None:
    ref = net()
    reports = {}
    for scheme in ("int8", "q4_0"):
        model = copy.deepcopy(ref)
        ml.quant.quantize_model(model, scheme)
        reports[scheme] = ml.quant.report(ref, model, torch.randn(4, 64))
    from matplotlib.figure import Figure

    fig = ml.plots.plot_bits_vs_error(reports)
    assert isinstance(fig, Figure) and len(fig.axes[0].collections) == 2
    assert isinstance(ml.plots.plot_error_histogram(reports), Figure)
    assert isinstance(ml.plots.plot_layer_errors(reports["q4_0"]), Figure)


def test_dequant_kernel_gradients_do_not_share_the_scratch_buffer() -> None:
    torch.manual_seed(0)
    a, b = nn.Linear(32, 32), nn.Linear(32, 32)
    qa = QuantLinear(ml.quant.quantize(a.weight.detach(), "q8_0"), kernel="dequant")
    qb = QuantLinear(ml.quant.quantize(b.weight.detach(), "q8_0"), kernel="dequant")
    x = torch.randn(4, 32, requires_grad=True)
    qb(qa(x)).sum().backward()
    wa, wb = qa.qweight.dequantize(), qb.qweight.dequantize()
    expected = (torch.ones(4, 32) @ wb) @ wa  # d/dx of sum(x @ wa.T @ wb.T)
    assert x.grad is not None and torch.allclose(x.grad, expected, atol=1e-5)


def test_kernels_for_lists_what_fits_the_default_first() -> None:
    vnni, int4 = native.int8_vnni(), int4pack_available()
    expected = {  # by what this machine has: AVX512-VNNI (ours), torch's fused int4 kernel
        "int8": ["int8-rowwise"] * vnni + ["fbgemm-int8", "int8pack-bf16", "dequant"],
        "q4_0": ["q4_0-vnni"] * vnni + ["int4pack"] * int4 + ["dequant"],
        "q8_0": ["dequant"],
        "int4": ["int4pack"] * int4 + ["dequant"],
    }
    for scheme, names in expected.items():
        qt = ml.quant.quantize(torch.randn(32, 256), scheme)
        assert ml.quant.kernels_for(qt) == names, scheme
        assert QuantLinear(qt).kernel == names[0]
