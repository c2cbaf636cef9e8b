"""LoRA maths as pure functions, against the naive formulas and PEFT's own matching rules."""

from __future__ import annotations

import math

import pytest
import torch

from mlmf_lab.errors import ConfigError
from mlmf_lab.lora.math import (
    combine_deltas,
    delta_norm,
    delta_singular_values,
    lora_delta,
    lora_scaling,
    matches_target,
    pattern_value,
)


def factors(seed: int, r: int = 3, n_in: int = 7, n_out: int = 5) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(r, n_in, generator=g), torch.randn(n_out, r, generator=g)


@pytest.mark.parametrize(("alpha", "rank", "rslora", "want"), [
    (16, 8, False, 2.0), (16, 4, True, 8.0), (8, 2, False, 4.0), (1, 9, True, 1 / 3),
])
def test_scaling(alpha: float, rank: int, rslora: bool, want: float) -> None:
    assert lora_scaling(alpha, rank, rslora) == pytest.approx(want)


@pytest.mark.parametrize("rank", [0, -2, 2.5])
def test_scaling_rejects_bad_rank(rank: object) -> None:
    with pytest.raises(ConfigError, match="positive integer"):
        lora_scaling(8, rank)  # type: ignore[arg-type]


def test_delta_is_scaled_b_times_a_and_transposes_for_fan_in_fan_out() -> None:
    A, B = factors(0)
    naive = torch.zeros(5, 7)
    for i in range(5):
        for j in range(7):
            naive[i, j] = sum(B[i, k] * A[k, j] for k in range(3)) * (6 / 3)
    d = lora_delta(A, B, alpha=6, rank=3)
    assert d.shape == (5, 7) and d.dtype == torch.float32
    torch.testing.assert_close(d, naive, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(lora_delta(A, B, 6, 3, fan_in_fan_out=True), naive.T,
                               rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(lora_delta(A, B, 6, 3, rslora=True), naive * math.sqrt(3) / 1,
                               rtol=1e-6, atol=1e-5)


def test_delta_rejects_mismatched_factors() -> None:
    A, B = factors(0)
    with pytest.raises(ConfigError, match=r"A \(3, 7\), B \(5, 2\)"):
        lora_delta(A, B[:, :2], 1, 3)


def test_combination_adds_deltas_and_does_not_average_factors() -> None:
    (A1, B1), (A2, B2) = factors(1), factors(2)
    got = combine_deltas([(A1, B1, 2.0), (A2, B2, 0.5)], weights=[0.3, 0.7])
    want = 0.3 * 2.0 * B1 @ A1 + 0.7 * 0.5 * B2 @ A2
    torch.testing.assert_close(got, want)
    averaged = (0.3 * B1 + 0.7 * B2) @ (0.3 * A1 + 0.7 * A2)
    assert (got - averaged).abs().max() > 0.1
    with pytest.raises(ConfigError, match="expected 2 weights, found 1"):
        combine_deltas([(A1, B1, 1.0), (A2, B2, 1.0)], weights=[1.0])


def test_norm_and_singular_values_match_the_full_matrix() -> None:
    A, B = factors(3, r=4, n_in=40, n_out=30)
    full = 1.5 * B.double() @ A.double()
    assert delta_norm(A, B, 1.5) == pytest.approx(float(torch.linalg.norm(full)), rel=1e-9)
    sv = delta_singular_values(A, B, 1.5)
    torch.testing.assert_close(sv, torch.linalg.svdvals(full)[:4].float())


def test_target_matching_follows_peft() -> None:
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    names = ["model.layers.0.self_attn.q_proj", "model.layers.10.self_attn.q_proj",
             "model.layers.0.mlp.up_proj", "lm_head", "transformer.h.1.attn.c_attn",
             "xq_proj"]
    for targets in (["q_proj"], ["lm_head", "c_attn"], [r"layers.0.self_attn.q_proj"],
                    r".*layers\.0\..*proj", r"q_proj", ["proj"]):
        cfg = LoraConfig(target_modules=targets)
        for name in names:
            want = bool(check_target_module_exists(cfg, name))
            assert matches_target(name, targets) == want, (targets, name)


def test_pattern_value_follows_peft() -> None:
    from peft.utils.other import get_pattern_key

    patterns = {"q_proj": 8, r"layers\.1\..*v_proj": 2, "up": 5}
    for name in ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj",
                 "model.layers.0.self_attn.v_proj", "model.layers.0.mlp.up_proj",
                 "model.layers.0.mlp.up"]:
        key = get_pattern_key(list(patterns), name)
        assert pattern_value(patterns, name, 4) == patterns.get(key, 4), name
