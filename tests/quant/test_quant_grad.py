"""Gradients flow through quantized linears, so LoRA can train on a quantized base."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mlmf_lab as ml


@pytest.mark.parametrize("scheme", ["int8", "q8_0", "int4"])
def test_lora_trains_on_a_quantized_base(scheme: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                          nn.Linear(128, 8))
    ml.quant.quantize_model(model, scheme)
    # The reference: the same network with the dequantized weights as plain float linears.
    ref = nn.Sequential(*[
        nn.Linear(m.in_features, m.out_features) if hasattr(m, "qweight") else m for m in model
    ])
    for r, m in zip(ref, model, strict=True):
        if hasattr(m, "qweight"):
            r.weight.data = m.qweight.dequantize().clone()
            r.bias.data = m.bias.detach().clone()
    ml.lora.inject(model, rank=4, alpha=8, targets=["0", "2"])
    ml.lora.inject(ref, rank=4, alpha=8, targets=["0", "2"])
    with torch.no_grad():
        for (_, p), (_, q) in zip(
            sorted((n, p) for n, p in model.named_parameters() if "lora" in n),
            sorted((n, p) for n, p in ref.named_parameters() if "lora" in n),
            strict=True,
        ):
            p.copy_(torch.randn_like(p) * 0.1)
            q.copy_(p)
    x = torch.randn(16, 128, requires_grad=True)  # every layer on its differentiable path
    model(x).square().mean().backward()
    ref(x.detach().requires_grad_()).square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    ref_grads = {n: p.grad for n, p in ref.named_parameters() if p.requires_grad}
    assert grads.keys() == ref_grads.keys() and len(grads) == 4
    for name, g in grads.items():
        assert g is not None, f"no gradient reached {name}"
        assert torch.allclose(g, ref_grads[name], rtol=1e-4, atol=1e-7), name
    # With a plain input the first layer keeps its fused kernel; training still works.
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = model(x.detach()).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("scheme", ["int8", "int4", "q4_0"])
def test_the_autograd_path_follows_new_weights(scheme: str) -> None:
    """The autograd path keeps the weights it rebuilt; loading new ones must replace them."""
    layer = ml.quant.QuantLinear(ml.quant.quantize(torch.randn(32, 256), scheme))
    x = torch.randn(3, 256, requires_grad=True)
    first = layer(x)
    new = torch.randn(32, 256)
    layer.load_state_dict({"weight": new}, strict=False)
    expect = nn.functional.linear(x, layer.qweight.dequantize())
    assert not torch.allclose(first, expect)
    assert torch.allclose(layer(x), expect, atol=1e-5)


@pytest.mark.parametrize("scheme", ["int8", "q4_0", "int4"])
def test_a_trainable_bias_gets_its_gradient(scheme: str) -> None:
    """Every kernel, ours included: the bias learns even when the input needs no gradient."""
    qt = ml.quant.quantize(torch.randn(32, 256), scheme)
    for kernel in ml.quant.kernels_for(qt):
        layer = ml.quant.QuantLinear(qt, torch.zeros(32), kernel=kernel)
        assert layer.bias is not None
        layer.bias.requires_grad_(True)
        layer(torch.randn(3, 256)).sum().backward()
        assert layer.bias.grad is not None and torch.equal(layer.bias.grad, torch.full((32,), 3.0))


def test_the_autograd_copy_is_counted_and_only_made_when_needed() -> None:
    qt = ml.quant.quantize(torch.randn(32, 256), "int4", group_size=32)
    layer = ml.quant.QuantLinear(qt, kernel="int4pack")
    before = layer.weight_nbytes
    layer(torch.randn(2, 256, requires_grad=True))  # qt is alive: used as it is
    assert layer.weight_nbytes == before
    del qt
    layer(torch.randn(2, 256, requires_grad=True))  # unpacked from the kernel once, and kept
    assert layer.weight_nbytes == before + layer.qweight.nbytes
