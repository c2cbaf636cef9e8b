"""LoRA on a small hand-made model: forward formula, freezing, adapters, exact merge/unmerge."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import mlmf_lab as ml
from mlmf_lab import events
from mlmf_lab.errors import ConfigError, UnsupportedError


class Block(nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.q_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, 8, bias=False)
        self.up = nn.Linear(8, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.up(self.v_proj(torch.relu(self.q_proj(x)))))


def net(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(Block(), Block()).to(dtype).eval()


X = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1))


def nonzero(model: nn.Module, seed: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_forward_is_base_plus_scaled_low_rank_path() -> None:
    model = net()
    summary = ml.lora.inject(model, rank=2, alpha=6, targets=["q_proj", "v_proj"])
    assert summary.modules == ["0.q_proj", "0.v_proj", "1.q_proj", "1.v_proj"]
    nonzero(model)
    layer = ml.lora.lora_layers(model)["0.v_proj"]
    A, B = layer.lora_A["default"], layer.lora_B["default"]
    x = torch.randn(4, 16)
    want = layer.base_layer(x) + 3.0 * (x @ A.T) @ B.T
    torch.testing.assert_close(layer(x), want)


def test_injection_freezes_the_base_and_only_lora_gets_gradients() -> None:
    model = net()
    ml.lora.inject(model, rank=2, alpha=4, targets=["up"])
    nonzero(model)
    trainable, total = ml.lora.parameter_counts(model)
    assert trainable == 2 * (2 * 8 + 16 * 2)
    assert total == sum(p.numel() for p in net().parameters()) + trainable
    model(X).square().mean().backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (".lora_" in n), n


def test_target_errors_say_what_exists() -> None:
    model = net()
    with pytest.raises(ConfigError, match=r"matched no module; .* end in: q_proj, v_proj, up"):
        ml.lora.inject(model, rank=2, alpha=4, targets=["k_proj"])
    with pytest.raises(UnsupportedError,
                       match=r"'0.norm' is a LayerNorm.*supported: .*Conv1D.*, nn.Linear"):
        ml.lora.inject(model, rank=2, alpha=4, targets=["norm", "q_proj"])
    assert ml.lora.lora_layers(model) == {}  # nothing wrapped when one target is bad
    with pytest.raises(ConfigError, match="positive integer"):
        ml.lora.inject(model, rank=0, alpha=4, targets=["q_proj"])
    ml.lora.inject(model, rank=2, alpha=4, targets=["q_proj"])
    with pytest.raises(ConfigError, match="'default' already exists"):
        ml.lora.inject(model, rank=2, alpha=4, targets=["v_proj"])


def test_merge_unmerge_cycles_restore_the_base_exactly() -> None:
    model = net()
    before = copy.deepcopy(model.state_dict())
    ml.lora.inject(model, rank=4, alpha=8, targets=["q_proj", "v_proj", "up"])
    nonzero(model)
    with torch.no_grad():
        out = model(X)
    for _ in range(5):
        report = ml.lora.merge(model)
        assert len(report.modules) == 6 and report.max_store_error == 0.0
        with torch.no_grad():
            torch.testing.assert_close(model(X), out, atol=1e-5, rtol=0)
        assert ml.lora.summary(model).entries[0].merged
        ml.lora.unmerge(model)
    after = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items()
             if ".lora_" not in k}
    assert after.keys() == before.keys()
    assert max((after[k] - before[k]).abs().max().item() for k in before) <= 1e-6
    for k in before:  # in fact bit for bit: the original tensors come back
        assert torch.equal(after[k], before[k])


def test_half_precision_base_unmerges_bit_exactly_and_reports_rounding() -> None:
    model = net(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ml.lora.inject(model, rank=2, alpha=4, targets=["q_proj"])
    nonzero(model)
    report = ml.lora.merge(model)
    assert 0 < report.max_store_error < 0.05  # bf16 rounding of W + ΔW
    ml.lora.unmerge(model)
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k.replace("q_proj.", "q_proj.base_layer.")], v)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_safe_merge_refuses_nan_and_changes_nothing(bad: float) -> None:
    model = net()
    ml.lora.inject(model, rank=2, alpha=4, targets=["q_proj", "v_proj"])
    nonzero(model)
    with torch.no_grad():
        layer = ml.lora.lora_layers(model)["1.v_proj"]
        layer.lora_B["default"][0, :] = 0.0
        layer.lora_B["default"][0, 0] = bad  # row 0 of ΔW becomes ±Inf (or NaN)
        layer.lora_A["default"][0].abs_()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"'1.v_proj' gives NaN/Inf; no layer was changed"):
        ml.lora.merge(model, safe=True)
    assert not any(layer.merged for layer in ml.lora.lora_layers(model).values())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, base[k], rtol=0, atol=0, equal_nan=True, msg=k)


def test_several_adapters_combine_deltas_and_disable_enable() -> None:
    model = net()
    base_out = model(X).detach()
    ml.lora.inject(model, rank=2, alpha=4, targets=["q_proj"], name="a")
    ml.lora.inject(model, rank=3, alpha=3, targets=["q_proj", "up"], name="b")
    nonzero(model)
    assert ml.lora.active_adapters(model) == [("b", 1.0)]  # the newest is active
    ml.lora.set_active(model, ["a", "b"], weights=[0.5, 2.0])

    naive = net()
    with torch.no_grad():
        for path, layer in ml.lora.lora_layers(model).items():
            delta = sum(w * layer.delta(n) for n, w in [("a", 0.5), ("b", 2.0)] if n in layer.specs)
            naive.get_submodule(path).weight += delta
    torch.testing.assert_close(model(X), naive(X), atol=1e-5, rtol=0)

    ml.lora.disable(model)
    torch.testing.assert_close(model(X), base_out)
    ml.lora.enable(model)
    torch.testing.assert_close(model(X), naive(X), atol=1e-5, rtol=0)

    ml.lora.merge(model)
    torch.testing.assert_close(model(X), naive(X), atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="while adapters are merged; call ml.lora.unmerge"):
        ml.lora.set_active(model, ["a"])
    with pytest.raises(ConfigError, match="merged"):
        ml.lora.disable(model)
    ml.lora.unmerge(model)
    with pytest.raises(ConfigError, match=r"unknown adapter\(s\) \['c'\]; the model has \['a', 'b"):
        ml.lora.set_active(model, ["a", "c"])
    with pytest.raises(ConfigError, match="no merged adapter"):
        ml.lora.unmerge(model)


def test_summary_table_unload_and_delete() -> None:
    model = net()
    ml.lora.inject(model, rank=2, alpha=4, targets=["q_proj"], name="a")
    nonzero(model)
    s = ml.lora.summary(model)
    row = s.entries[0]
    layer = ml.lora.lora_layers(model)[row.module]
    assert row.delta_norm == pytest.approx(float(torch.linalg.norm(layer.delta("a"))), rel=1e-5)
    assert (row.rank, row.params, row.weight) == (2, 2 * 16 + 16 * 2, 1.0)
    html = s._repr_html_()
    assert "<table>" in html and "‖ΔW‖" in html and "0.q_proj" in html
    assert "2 rows, 2 modules, 128 LoRA parameters" in str(s)

    merged = ml.lora.unload(copy.deepcopy(model), merge_first=True)
    assert ml.lora.lora_layers(merged) == {}
    torch.testing.assert_close(merged(X), model(X), atol=1e-5, rtol=0)
    ml.lora.delete_adapter(model, "a")
    assert ml.lora.lora_layers(model) == {}
    torch.testing.assert_close(model(X), net()(X))


def test_operations_emit_events(tmp_path: object) -> None:
    seen: list[events.Event] = []
    events.LISTENERS.append(seen.append)
    try:
        model = net()
        ml.lora.inject(model, rank=2, alpha=4, targets=["q_proj"])
        ml.lora.merge(model)
        ml.lora.unmerge(model)
        ml.lora.save_peft_adapter(model, f"{tmp_path}/ad")
        ml.lora.load_peft_adapter(net(), f"{tmp_path}/ad")
    finally:
        events.LISTENERS.remove(seen.append)
    names = [e.activity for e in seen if e.activity != "load"]  # "load": the file read inside
    assert names == ["lora-inject", "merge", "unmerge", "lora-save", "lora-load"]
    assert seen[0].params["rank"] == 2 and seen[0].generated == [model]


def test_dropout_acts_on_the_adapter_input_in_training_only() -> None:
    model = net()
    ml.lora.inject(model, rank=2, alpha=4, targets=["q_proj"], dropout=0.5)
    nonzero(model)
    with torch.no_grad():
        torch.testing.assert_close(model(X), model(X))
        model.train()
        torch.manual_seed(0)
        a = model(X)
        b = model(X)
        ml.lora.disable(model)
        torch.testing.assert_close(model(X), net().train()(X))  # base has no dropout
    assert (a - b).abs().max() > 1e-3
    with pytest.raises(ConfigError, match=r"dropout must be in \[0, 1\), found 1.5"):
        ml.lora.inject(net(), rank=2, alpha=4, targets=["q_proj"], dropout=1.5)


@pytest.mark.parametrize("x_requires_grad", [False, True])
def test_gradients_match_the_formula(x_requires_grad: bool) -> None:
    model = net()
    ml.lora.inject(model, rank=3, alpha=6, targets=["q_proj"])
    nonzero(model)
    layer = ml.lora.lora_layers(model)["0.q_proj"]
    A, B = layer.lora_A["default"], layer.lora_B["default"]
    A2, B2 = A.detach().clone().requires_grad_(), B.detach().clone().requires_grad_()
    x = torch.randn(2, 4, 16, requires_grad=x_requires_grad)
    x2 = x.detach().clone().requires_grad_(x_requires_grad)
    w = torch.randn(2, 4, 16)
    (layer(x) * w).sum().backward()
    ((layer.base_layer(x2) + 2.0 * (x2 @ A2.T) @ B2.T) * w).sum().backward()
    torch.testing.assert_close(A.grad, A2.grad)
    torch.testing.assert_close(B.grad, B2.grad)
    if x_requires_grad:
        torch.testing.assert_close(x.grad, x2.grad)


class ScaledLinear(nn.Linear):
    """A Linear subclass that a user's own base kind handles."""


def test_base_kinds_are_tried_by_priority_whatever_the_registration_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlmf_lab.lora import layer

    builtin = list(layer.BASE_KINDS)
    assert [k.name for k in builtin] == [
        "ml.quant.QuantLinear", "Conv1D (transformers, weight (in, out))", "nn.Linear"]
    dense = next(k for k in builtin if k.name == "nn.Linear")
    mine = dense._replace(name="ScaledLinear", matches=lambda m: isinstance(m, ScaledLinear),
                          priority=5)
    module = ScaledLinear(4, 4)
    for first_mine in (True, False):
        monkeypatch.setattr(layer, "BASE_KINDS", [])
        for kind in ([mine, *builtin] if first_mine else [*builtin, mine]):
            layer.register_base_kind(kind)
        assert layer.base_kind(module).name == "ScaledLinear"
        assert layer.base_kind(nn.Linear(4, 4)).name == "nn.Linear"
    layer.register_base_kind(mine._replace(priority=-1))  # below nn.Linear: it never wins
    assert layer.base_kind(module).name == "nn.Linear"
    assert [k.name for k in layer.BASE_KINDS][-1] == "ScaledLinear"
    with pytest.raises(UnsupportedError, match="'x' is a LayerNorm, which LoRA cannot wrap; "
                                               "supported: ml.quant.QuantLinear, Conv1D"):
        layer.base_kind(nn.LayerNorm(4), "x")
