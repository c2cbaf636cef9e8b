"""Fusion strategies: the pure maths first, thin modules after.

Shapes: ``vectors`` (B, M, D) are the pooled outputs of M modalities, ``present`` (B, M)
bool says which modalities a sample has. A missing modality never contributes: every
combination below renormalises over the present ones.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import CrossModalAttentionConfig
from .encoders import Block


def fuse_mean(vectors: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """(B, M, D) -> (B, D): mean over the present modalities (zeros if none)."""
    w = present.to(vectors.dtype)
    return (vectors * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1.0)


def masked_softmax(scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis restricted to ``present``; all-missing rows give zeros."""
    s = scores.masked_fill(~present, float("-inf"))
    any_present = present.any(dim=-1, keepdim=True)
    s = torch.where(any_present, s, torch.zeros_like(s))
    return s.softmax(dim=-1) * any_present.to(s.dtype)


def fuse_weighted(vectors: torch.Tensor, present: torch.Tensor,
                  logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed learned weights: softmax(logits (M,)) over the present modalities.

    Returns (fused (B, D), weights (B, M)).
    """
    w = masked_softmax(logits.expand(present.shape), present)
    return (vectors * w[..., None]).sum(1), w


def fuse_gate(vectors: torch.Tensor, present: torch.Tensor,
              gates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample gates in (0, 1) (B, M), normalised over the present modalities.

    Returns (fused (B, D), weights (B, M)).
    """
    g = gates * present.to(gates.dtype)
    w = g / g.sum(dim=-1, keepdim=True).clamp_min(1e-6)
    return (vectors * w[..., None]).sum(1), w


def fuse_attention(vectors: torch.Tensor, present: torch.Tensor,
                   scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample softmax weights across modalities from ``scores`` (B, M).

    Returns (fused (B, D), weights (B, M)).
    """
    w = masked_softmax(scores, present)
    return (vectors * w[..., None]).sum(1), w


class LateFusion(nn.Module):
    """Combine pooled per-modality outputs: ``mean``, ``weighted`` (learned) or ``gate``."""

    def __init__(self, mode: str, num_modalities: int, dim: int) -> None:
        super().__init__()
        self.mode = mode
        self.logits = nn.Parameter(torch.zeros(num_modalities)) if mode == "weighted" else None
        self.gate = nn.Linear(num_modalities * dim, num_modalities) if mode == "gate" else None

    def forward(self, vectors: torch.Tensor,
                present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.logits is not None:
            return fuse_weighted(vectors, present, self.logits)
        if self.gate is not None:
            visible = vectors * present[..., None].to(vectors.dtype)
            return fuse_gate(vectors, present, torch.sigmoid(self.gate(visible.flatten(1))))
        w = present.to(vectors.dtype)
        w = w / w.sum(-1, keepdim=True).clamp_min(1.0)
        return fuse_mean(vectors, present), w


class AttentionFusion(nn.Module):
    """Learned softmax weights across modalities: a small scorer reads each pooled vector."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1))

    def forward(self, vectors: torch.Tensor,
                present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return fuse_attention(vectors, present, self.score(vectors).squeeze(-1))


class EarlyFusion(nn.Module):
    """One sequence: [CLS] + every modality's tokens (+ a modality-type embedding),
    through shared transformer blocks; the [CLS] output is the fused vector."""

    def __init__(self, num_modalities: int, cfg: CrossModalAttentionConfig, layers: int) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.types = nn.Parameter(torch.randn(num_modalities, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, tokens: list[torch.Tensor], masks: list[torch.Tensor],
                index: list[int]) -> torch.Tensor:
        """tokens[i] (B, Ni, D) of modality number index[i] -> fused (B, D)."""
        b = tokens[0].shape[0]
        seq = [self.cls.expand(b, 1, -1)] + [t + self.types[i] for t, i in zip(tokens, index,
                                                                             strict=True)]
        mask = [torch.ones(b, 1, dtype=torch.bool, device=tokens[0].device), *masks]
        x, m = torch.cat(seq, dim=1), torch.cat(mask, dim=1)
        for block in self.blocks:
            x, _ = block(x, m)
        return self.norm(x[:, 0])


class MiddleFusion(nn.Module):
    """Cross-attention blocks: after encoder layer ``l`` (one of ``layers``), every modality
    attends to the concatenated tokens of the other present modalities."""

    def __init__(self, names: tuple[str, ...], cfg: CrossModalAttentionConfig,
                 layers: tuple[int, ...]) -> None:
        super().__init__()
        self.layers = layers
        self.cross = nn.ModuleDict({
            f"l{layer}_{name}": Block(cfg.dim, cfg.heads, cfg.dropout, cross=True)
            for layer in layers for name in names})

    def block(self, layer: int, name: str) -> Block:
        return self.cross[f"l{layer}_{name}"]  # type: ignore[return-value]
