"""Fusion strategies: the pure maths first, thin modules after, then the ``FUSIONS`` registry.

Shapes: ``vectors`` (B, M, D) are the pooled outputs of M modalities, ``present`` (B, M)
bool says which modalities a sample has. A missing modality never contributes: every
combination below renormalises over the present ones.

A fusion module is called as ``fusion(tokens, masks, index, present, infos)`` with the
encoded tokens (B, Ni, D) and masks (B, Ni) of the given inputs, in config order, ``index``
their modality numbers, and ``infos`` what their tokens are (``TokenInfo``, given when
attention maps are wanted); it returns ``(fused (B, D), modality weights (B, M) or None,
attention maps)``. A fusion that also works inside the encoders (middle fusion) names the
encoder layers in ``exchange_layers`` and gets ``exchange`` called after each of them. A new
strategy is one module and one entry in ``FUSIONS``; ``MultiModalModel`` asks the registry,
nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .blocks import Block, masked_mean
from .config import CrossModalAttentionConfig, FusionStrategy, MultiModalConfig
from .maps import AttentionMaps, TokenInfo


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


Tokens = dict[str, torch.Tensor]
Infos = Sequence[TokenInfo] | None
FusionOutput = tuple[torch.Tensor, torch.Tensor | None, list[AttentionMaps]]


class Fusion(nn.Module):
    """What every fusion module offers the model (see the module docstring)."""

    exchange_layers: tuple[int, ...] = ()  # encoder layers after which ``exchange`` runs

    def exchange(self, layer: int, tokens: Tokens, masks: Tokens, output_attentions: bool
                 ) -> tuple[Tokens, dict[str, torch.Tensor]]:
        """Mix the modalities' tokens after encoder ``layer`` (middle fusion only); with
        ``output_attentions`` also each modality's weights over the others' tokens."""
        raise NotImplementedError(f"{type(self).__name__} exchanges no tokens")


class MeanFusion(Fusion):
    """Late fusion: the plain mean of the pooled outputs."""

    def forward(self, tokens: list[torch.Tensor], masks: list[torch.Tensor], index: list[int],
                present: torch.Tensor, infos: Infos = None) -> FusionOutput:
        vectors = pooled(tokens, masks, index, present)
        w = present.to(vectors.dtype)
        w = w / w.sum(-1, keepdim=True).clamp_min(1.0)
        return fuse_mean(vectors, present), w, []


class WeightedFusion(Fusion):
    """Late fusion: one learned weight per modality (a softmax over the present ones)."""

    def __init__(self, num_modalities: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_modalities))

    def forward(self, tokens: list[torch.Tensor], masks: list[torch.Tensor], index: list[int],
                present: torch.Tensor, infos: Infos = None) -> FusionOutput:
        return (*fuse_weighted(pooled(tokens, masks, index, present), present, self.logits), [])


class GateFusion(Fusion):
    """Late fusion: a learned gate reads every pooled output and weighs each sample's."""

    def __init__(self, num_modalities: int, dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(num_modalities * dim, num_modalities)

    def forward(self, tokens: list[torch.Tensor], masks: list[torch.Tensor], index: list[int],
                present: torch.Tensor, infos: Infos = None) -> FusionOutput:
        vectors = pooled(tokens, masks, index, present)
        visible = vectors * present[..., None].to(vectors.dtype)
        gates = torch.sigmoid(self.gate(visible.flatten(1)))
        return (*fuse_gate(vectors, present, gates), [])


class AttentionFusion(Fusion):
    """Learned softmax weights across modalities: a small scorer reads each pooled vector.

    Its attention map: one query (the fused vector) over one key per modality of the
    config (a missing one gets weight 0)."""

    def __init__(self, names: tuple[str, ...], dim: int) -> None:
        super().__init__()
        self.names = names
        self.score = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1))

    def forward(self, tokens: list[torch.Tensor], masks: list[torch.Tensor], index: list[int],
                present: torch.Tensor, infos: Infos = None) -> FusionOutput:
        vectors = pooled(tokens, masks, index, present)
        fused, w = fuse_attention(vectors, present, self.score(vectors).squeeze(-1))
        maps = []
        if infos is not None:
            b = w.shape[0]
            query = TokenInfo.uniform("fusion", ["fused"], b)
            keys = [TokenInfo.uniform(n, [n], b) for n in self.names]
            maps.append(AttentionMaps.build("fusion", [w[:, None, None, :]], query, keys))
        return fused, w, maps


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
                present: torch.Tensor, infos: Infos = None) -> FusionOutput:
        """tokens[i] (B, Ni, D) of modality number index[i] -> fused (B, D); the attention
        map ``"fusion"`` has the whole sequence ([CLS] then every input) on both axes."""
        b = tokens[0].shape[0]
        seq = [self.cls.expand(b, 1, -1)] + [t + self.types[i] for t, i in zip(tokens, index,
                                                                             strict=True)]
        mask = [torch.ones(b, 1, dtype=torch.bool, device=tokens[0].device), *masks]
        x, m = torch.cat(seq, dim=1), torch.cat(mask, dim=1)
        weights = []
        for block in self.blocks:
            x, w = block(x, m, output_attentions=infos is not None)
            weights.append(w)
        maps = []
        if infos is not None and weights:
            query = TokenInfo("fusion", tuple(("[CLS]",) + tuple(x for info in infos
                                                                 for x in info.labels[i])
                                              for i in range(b)))
            maps.append(AttentionMaps.build("fusion", weights, query, infos, prefix=("[CLS]",)))
        return self.norm(x[:, 0]), None, maps


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

    def exchange(self, layer: int, tokens: Tokens, masks: Tokens, output_attentions: bool
                 ) -> tuple[Tokens, dict[str, torch.Tensor]]:
        """Each modality attends to the others' tokens (concatenated in input order)."""
        updated, weights = {}, {}
        for n in tokens:
            others = [o for o in tokens if o != n]
            ctx = torch.cat([tokens[o] for o in others], dim=1)
            ctx_mask = torch.cat([masks[o] for o in others], dim=1)
            updated[n], w = self.block(layer, n)(tokens[n], masks[n], ctx, ctx_mask,
                                                 output_attentions)
            if w is not None:
                weights[n] = w
        return updated, weights

    def forward(self, tokens: list[torch.Tensor], masks: list[torch.Tensor], index: list[int],
                present: torch.Tensor, infos: Infos = None) -> FusionOutput:
        return fuse_mean(pooled(tokens, masks, index, present), present), None, []


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
    FusionStrategy.ATTENTION: lambda c: AttentionFusion(c.names, c.attention.dim),
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
