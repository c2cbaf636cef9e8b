"""Fusion strategies: the pure maths first, thin modules after, then the ``FUSIONS`` registry.

Shapes: ``vectors`` (B, M, D) are the pooled outputs of M modalities, ``present`` (B, M)
bool says which modalities a sample has. A missing modality never contributes: every
combination below renormalises over the present ones.

A fusion module is called as ``fusion(tokens, masks, index, present)`` with the encoded
tokens (B, Ni, D) and masks (B, Ni) of the given inputs, in config order, ``index`` their
modality numbers, and returns ``(fused (B, D), modality weights (B, M) or None)``. A
fusion that also works inside the encoders (middle fusion) names the encoder layers in
``exchange_layers`` and gets ``exchange`` called after each of them. A new strategy is one
module and one entry in ``FUSIONS``; ``MultiModalModel`` asks the registry, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from ..errors import ConfigError, MLMFError
from .config import CrossModalAttentionConfig, FusionStrategy, MultiModalConfig
from .encoders import Block, masked_mean


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


def pooled(tokens: list[torch.Tensor], masks: list[torch.Tensor], index: list[int],
           present: torch.Tensor) -> torch.Tensor:
    """(B, M, D): each given modality's tokens averaged over its mask, zeros for the rest."""
    vectors = torch.zeros(*present.shape, tokens[0].shape[-1], device=present.device)
    for t, m, i in zip(tokens, masks, index, strict=True):
        vectors[:, i] = masked_mean(t, m)
    return vectors


class CrossAttentionMap(NamedTuple):
    """Weights of one middle-fusion cross-attention block, for the views.

    layer: encoder layer after which it runs. query: the modality whose tokens attend.
    keys: (modality, start, stop) spans of the key axis. weights: (B, H, Nq, Nk).
    """

    layer: int
    query: str
    keys: tuple[tuple[str, int, int], ...]
    weights: torch.Tensor

    def span(self, name: str) -> torch.Tensor:
        """The weights on one key modality's tokens: (B, H, Nq, N_name)."""
        for key, start, stop in self.keys:
            if key == name:
                return self.weights[..., start:stop]
        raise MLMFError(f"{self.query} did not attend to {name!r} here; keys: "
                        f"{', '.join(k for k, _, _ in self.keys)}")


Tokens = dict[str, torch.Tensor]
FusionOutput = tuple[torch.Tensor, torch.Tensor | None]


class Fusion(nn.Module):
    """What every fusion module offers the model (see the module docstring)."""

    exchange_layers: tuple[int, ...] = ()  # encoder layers after which ``exchange`` runs

    def exchange(self, layer: int, tokens: Tokens, masks: Tokens, need_weights: bool,
                 cross: list[CrossAttentionMap]) -> Tokens:
        """Mix the modalities' tokens after encoder ``layer`` (middle fusion only)."""
        raise NotImplementedError(f"{type(self).__name__} exchanges no tokens")


class MeanFusion(Fusion):
    """Late fusion: the plain mean of the pooled outputs."""

    def forward(self, tokens: list[torch.Tensor], masks: list[torch.Tensor], index: list[int],
                present: torch.Tensor) -> FusionOutput:
        vectors = pooled(tokens, masks, index, present)
        w = present.to(vectors.dtype)
        w = w / w.sum(-1, keepdim=True).clamp_min(1.0)
        return fuse_mean(vectors, present), w


class WeightedFusion(Fusion):
    """Late fusion: one learned weight per modality (a softmax over the present ones)."""

    def __init__(self, num_modalities: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_modalities))

    def forward(self, tokens: list[torch.Tensor], masks: list[torch.Tensor], index: list[int],
                present: torch.Tensor) -> FusionOutput:
        return fuse_weighted(pooled(tokens, masks, index, present), present, self.logits)


class GateFusion(Fusion):
    """Late fusion: a learned gate reads every pooled output and weighs each sample's."""

    def __init__(self, num_modalities: int, dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(num_modalities * dim, num_modalities)

    def forward(self, tokens: list[torch.Tensor], masks: list[torch.Tensor], index: list[int],
                present: torch.Tensor) -> FusionOutput:
        vectors = pooled(tokens, masks, index, present)
        visible = vectors * present[..., None].to(vectors.dtype)
        return fuse_gate(vectors, present, torch.sigmoid(self.gate(visible.flatten(1))))


class AttentionFusion(Fusion):
    """Learned softmax weights across modalities: a small scorer reads each pooled vector."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1))

    def forward(self, tokens: list[torch.Tensor], masks: list[torch.Tensor], index: list[int],
                present: torch.Tensor) -> FusionOutput:
        vectors = pooled(tokens, masks, index, present)
        return fuse_attention(vectors, present, self.score(vectors).squeeze(-1))


class EarlyFusion(Fusion):
    """One sequence: [CLS] + every modality's tokens (+ a modality-type embedding),
    through shared transformer blocks; the [CLS] output is the fused vector."""

    def __init__(self, num_modalities: int, cfg: CrossModalAttentionConfig, layers: int) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.types = nn.Parameter(torch.randn(num_modalities, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, tokens: list[torch.Tensor], masks: list[torch.Tensor], index: list[int],
                present: torch.Tensor) -> FusionOutput:
        """tokens[i] (B, Ni, D) of modality number index[i] -> fused (B, D)."""
        b = tokens[0].shape[0]
        seq = [self.cls.expand(b, 1, -1)] + [t + self.types[i] for t, i in zip(tokens, index,
                                                                             strict=True)]
        mask = [torch.ones(b, 1, dtype=torch.bool, device=tokens[0].device), *masks]
        x, m = torch.cat(seq, dim=1), torch.cat(mask, dim=1)
        for block in self.blocks:
            x, _ = block(x, m)
        return self.norm(x[:, 0]), None


class MiddleFusion(Fusion):
    """Cross-attention blocks: after encoder layer ``l`` (one of ``layers``), every modality
    attends to the concatenated tokens of the other present modalities; the fused vector
    is the mean of the pooled outputs."""

    def __init__(self, names: tuple[str, ...], cfg: CrossModalAttentionConfig,
                 layers: tuple[int, ...]) -> None:
        super().__init__()
        self.exchange_layers = layers
        self.cross = nn.ModuleDict({
            f"l{layer}_{name}": Block(cfg.dim, cfg.heads, cfg.dropout, cross=True)
            for layer in layers for name in names})

    def block(self, layer: int, name: str) -> Block:
        return self.cross[f"l{layer}_{name}"]  # type: ignore[return-value]

    def exchange(self, layer: int, tokens: Tokens, masks: Tokens, need_weights: bool,
                 cross: list[CrossAttentionMap]) -> Tokens:
        """Each modality attends to the others' tokens; the maps go to ``cross``."""
        updated = {}
        for n in tokens:
            others = [o for o in tokens if o != n]
            ctx = torch.cat([tokens[o] for o in others], dim=1)
            ctx_mask = torch.cat([masks[o] for o in others], dim=1)
            updated[n], w = self.block(layer, n)(tokens[n], masks[n], ctx, ctx_mask,
                                                 need_weights)
            if w is not None:
                spans, start = [], 0
                for o in others:
                    spans.append((o, start, start + tokens[o].shape[1]))
                    start += tokens[o].shape[1]
                cross.append(CrossAttentionMap(layer, n, tuple(spans), w))
        return updated

    def forward(self, tokens: list[torch.Tensor], masks: list[torch.Tensor], index: list[int],
                present: torch.Tensor) -> FusionOutput:
        return fuse_mean(pooled(tokens, masks, index, present), present), None


# -- the registries ------------------------------------------------------------------------
LATE_FUSIONS: dict[str, Callable[[int, int], Fusion]] = {
    "mean": lambda m, d: MeanFusion(),
    "weighted": lambda m, d: WeightedFusion(m),
    "gate": GateFusion,
}

FUSIONS: dict[str, Callable[[MultiModalConfig], Fusion]] = {
    FusionStrategy.EARLY: lambda c: EarlyFusion(len(c.names), c.attention, c.fusion_layers),
    FusionStrategy.MIDDLE: lambda c: MiddleFusion(c.names, c.attention, c.middle_layers),
    FusionStrategy.LATE: lambda c: _lookup(LATE_FUSIONS, c.late_mode, "late fusion mode")(
        len(c.names), c.attention.dim),
    FusionStrategy.ATTENTION: lambda c: AttentionFusion(c.attention.dim),
}


def _lookup(registry: dict[str, Callable[..., Fusion]], name: str,
            what: str) -> Callable[..., Fusion]:
    try:
        return registry[name]
    except KeyError:
        raise ConfigError(f"unknown {what} {str(name)!r}; supported: "
                          f"{', '.join(map(str, registry))}") from None


def build_fusion(config: MultiModalConfig) -> Fusion:
    """The fusion module of ``config.fusion`` (and ``late_mode``), from ``FUSIONS``.

    Raises:
        ConfigError: a strategy or late mode with no registered implementation, listing
            the ones there are.
    """
    return _lookup(FUSIONS, config.fusion, "fusion strategy")(config)
