"""The maths of LoRA as pure functions: scaling, deltas, their norms and spectra.

Shapes follow PEFT's convention for every layer type: ``A`` is ``(r, in)``, ``B`` is
``(out, r)``, so ``ΔW = s·B·A`` is ``(out, in)``. A layer that stores its weight
transposed (GPT-2 ``Conv1D``, weight ``(in, out)``) gets ``ΔWᵀ`` (``fan_in_fan_out``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch

from ..errors import ConfigError


def lora_scaling(alpha: float, rank: int, rslora: bool = False) -> float:
    """The factor ``s`` in ``ΔW = s·B·A``: ``alpha / r``, or ``alpha / sqrt(r)`` for rsLoRA.

    Args:
        alpha: ``lora_alpha``.
        rank: ``r`` (> 0).
        rslora: rank-stabilised scaling (Kalajdzievski 2023).

    Returns:
        The scaling factor.

    Raises:
        ConfigError: a rank that is not a positive integer.
    """
    if not isinstance(rank, int) or rank <= 0:
        raise ConfigError(f"LoRA rank must be a positive integer, found {rank!r}")
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def lora_delta(
    A: torch.Tensor,
    B: torch.Tensor,
    alpha: float,
    rank: int,
    rslora: bool = False,
    fan_in_fan_out: bool = False,
) -> torch.Tensor:
    """``ΔW = s·B·A`` in float32, in the layout of the base weight.

    Args:
        A: ``(r, in)``.
        B: ``(out, r)``.
        alpha, rank, rslora: see ``lora_scaling``.
        fan_in_fan_out: the base stores its weight as ``(in, out)``; return ``ΔWᵀ``.

    Returns:
        ``(out, in)`` (or ``(in, out)`` with ``fan_in_fan_out``), float32.

    Example:
        >>> lora_delta(torch.ones(2, 3), torch.ones(4, 2), alpha=4, rank=2).shape
        torch.Size([4, 3])
    """
    return scaled_delta(A, B, lora_scaling(alpha, rank, rslora), fan_in_fan_out)


def scaled_delta(
    A: torch.Tensor, B: torch.Tensor, scaling: float, fan_in_fan_out: bool = False
) -> torch.Tensor:
    """``scaling·B·A`` in float32 (transposed with ``fan_in_fan_out``); shapes as ``lora_delta``."""
    if A.dim() != 2 or B.dim() != 2 or B.shape[1] != A.shape[0]:
        raise ConfigError(
            f"LoRA factors must be A (r, in) and B (out, r); found A {tuple(A.shape)}, "
            f"B {tuple(B.shape)}"
        )
    delta = (B.detach().float() @ A.detach().float()) * scaling
    return delta.T if fan_in_fan_out else delta


def combine_deltas(
    factors: Sequence[tuple[torch.Tensor, torch.Tensor, float]],
    weights: Sequence[float] | None = None,
    fan_in_fan_out: bool = False,
) -> torch.Tensor:
    """Weighted sum of several adapters' deltas: ``Σ wᵢ·sᵢ·Bᵢ·Aᵢ`` (never averages A or B).

    Args:
        factors: ``(A, B, scaling)`` per adapter, all for the same layer.
        weights: one weight per adapter (default 1.0 each).
        fan_in_fan_out: return the transposed sum (base weight stored ``(in, out)``).

    Returns:
        The combined delta, float32.

    Raises:
        ConfigError: no factors, or a weights list of another length.
    """
    if not factors:
        raise ConfigError("combine_deltas needs at least one (A, B, scaling) triple")
    ws = [1.0] * len(factors) if weights is None else list(weights)
    if len(ws) != len(factors):
        raise ConfigError(f"expected {len(factors)} weights, found {len(ws)}")
    total = torch.zeros_like(scaled_delta(*factors[0][:2], 0.0))
    for (A, B, s), w in zip(factors, ws, strict=True):
        total += scaled_delta(A, B, s * w)
    return total.T if fan_in_fan_out else total


def delta_norm(A: torch.Tensor, B: torch.Tensor, scaling: float) -> float:
    """Frobenius norm ``‖s·B·A‖`` from two ``r×r`` Gram matrices, without forming ``ΔW``.

    ``‖BA‖² = trace(AᵀBᵀBA) = Σ (BᵀB) ⊙ (AAᵀ)``, so the cost is ``O(r²·(in + out))``.
    """
    a, b = A.detach().double(), B.detach().double()
    sq = float(((b.T @ b) * (a @ a.T)).sum())
    return abs(scaling) * math.sqrt(max(sq, 0.0))


def delta_singular_values(A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    """Singular values of ``s·B·A`` (descending, length ``r``) through two thin QRs.

    ``B = Q_B R_B`` and ``Aᵀ = Q_A R_A`` give ``BA = Q_B (R_B R_Aᵀ) Q_Aᵀ``; the orthonormal
    factors do not change singular values, so only an ``r×r`` matrix is decomposed.
    """
    _, rb = torch.linalg.qr(B.detach().double())
    _, ra = torch.linalg.qr(A.detach().double().T)
    return (torch.linalg.svdvals(rb @ ra.T) * abs(scaling)).float()


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b|`` in float64 (0.0 for empty tensors)."""
    if a.numel() == 0:
        return 0.0
    return float((a.detach().double() - b.detach().double()).abs().max())


def matches_target(name: str, targets: str | Sequence[str]) -> bool:
    """Whether a module path is targeted, with PEFT's rules.

    A string is a regular expression that must match the whole path; a list matches a
    path equal to an entry or ending in ``"." + entry``.

    Example:
        >>> matches_target("model.layers.0.self_attn.q_proj", ["q_proj"])
        True
    """
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def pattern_value(patterns: Mapping[str, int | float], name: str, default: float) -> float:
    """The value of the first pattern whose regex matches the end of ``name`` (PEFT's
    ``rank_pattern``/``alpha_pattern`` rule: ``(.*\\.)?(pattern)$``), else ``default``."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", name):
            return value
    return default
