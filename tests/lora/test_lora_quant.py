"""LoRA merged into a quantized base (``ml.quant.quantize_model``): dequantize, add, requantize."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mlmf_lab as ml


def quantized_mlp(scheme: str, **options: object) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64))
    ml.quant.quantize_model(model, scheme, **options)
    return model


@pytest.mark.parametrize(("scheme", "options"), [("int8", {}), ("int4", {"group_size": 32}),
                                                 ("q8_0", {})])
def test_merge_requantizes_and_reports_the_error_it_introduced(
    scheme: str, options: dict[str, object]
) -> None:
    model = quantized_mlp(scheme, **options)
    report = ml.lora.inject(model, rank=4, alpha=8, targets=["0", "2"])
    assert report.modules == ["0", "2"]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    layers = ml.lora.lora_layers(model)
    originals = {p: layer.base_layer.qweight for p, layer in layers.items()}

    # the independent reference: dequantize, add s·B·A, quantize again with the same scheme
    want, want_err = {}, {}
    for path, layer in layers.items():
        qt = originals[path]
        target = ml.quant.dequantize(qt) + ml.lora.lora_delta(
            layer.lora_A["default"], layer.lora_B["default"], alpha=8, rank=4)
        ref = ml.quant.dequantize(ml.quant.quantize(target, qt.scheme, **qt.options))
        want[path], want_err[path] = ref, (ref - target).abs().max().item()

    merge = ml.lora.merge(model)
    assert merge.modules == ("0", "2")
    for path, err in zip(merge.modules, merge.store_errors, strict=True):
        assert err == pytest.approx(want_err[path], rel=1e-6)
        assert 0 < err
        merged = layers[path].base_layer
        assert merged.scheme == scheme
        assert torch.equal(ml.quant.dequantize(merged.qweight), want[path])

    for _ in range(3):
        ml.lora.unmerge(model)
        ml.lora.merge(model)
    ml.lora.unmerge(model)
    for path, layer in layers.items():  # the original codes and scales, bit for bit
        now, was = layer.base_layer.qweight, originals[path]
        assert torch.equal(now.data, was.data)
        assert now.params.keys() == was.params.keys()
        assert all(torch.equal(now.params[k], was.params[k]) for k in was.params)


def test_adapter_on_quantized_base_round_trips_through_peft_files(tmp_path: object) -> None:
    model = quantized_mlp("int8")
    ml.lora.inject(model, rank=2, alpha=2, targets=["2"])
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B" in n:
                p.fill_(0.05)
    ml.lora.save_peft_adapter(model, f"{tmp_path}/ad")
    again = quantized_mlp("int8")
    ml.lora.load_peft_adapter(again, f"{tmp_path}/ad")
    x = torch.randn(3, 64)
    torch.testing.assert_close(again(x), model(x))
    ml.lora.disable(again)
    assert (again(x) - model(x)).abs().max() > 1e-3


def test_quantizing_after_injection_switches_the_merge_path() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64))
    ml.lora.inject(model, rank=2, alpha=4, targets=["0"])
    ml.quant.quantize_model(model, "int8")
    layer = ml.lora.lora_layers(model)["0"]
    assert isinstance(layer.base_layer, ml.quant.QuantLinear)
    assert layer.kind.name == "ml.quant.QuantLinear"
    with torch.no_grad():
        layer.lora_B["default"].fill_(0.1)
    before = layer.base_layer.qweight
    report = ml.lora.merge(model)
    assert report.max_store_error > 0 and layer.base_layer.qweight.scheme == "int8"
    ml.lora.unmerge(model)
    assert torch.equal(layer.base_layer.qweight.data, before.data)
