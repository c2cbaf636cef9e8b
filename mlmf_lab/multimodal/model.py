"""``MultiModalModel``: encoders per modality, one fusion strategy, a classification head.

Inputs are a dict ``name -> input`` keyed by the modality names of the config. An input
is a tensor, a ``(tensor, mask)`` pair, or a preprocessing batch (``TextBatch``,
``ImageBatch``, ``AudioBatch``, ``VideoBatch``). A modality left out of the dict, or
whose mask is all False for a sample, is treated as missing: it is masked out of every
attention and every combination, never a crash.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from ..errors import MLMFError
from .config import FusionStrategy, MultiModalConfig
from .encoders import Encoder, build_encoder, masked_mean
from .fusion import AttentionFusion, EarlyFusion, LateFusion, MiddleFusion, fuse_mean
from .preprocess.audio import AudioBatch
from .preprocess.image import ImageBatch
from .preprocess.text import TextBatch
from .preprocess.video import VideoBatch


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


class MultiModalOutput(NamedTuple):
    """logits (B, C); fused (B, D); modality_weights (B, M) for late/attention fusion;
    cross: the cross-attention maps (middle fusion, ``need_weights=True``);
    present (B, M) bool: which modalities each sample had."""

    logits: torch.Tensor
    fused: torch.Tensor
    modality_weights: torch.Tensor | None
    cross: list[CrossAttentionMap]
    present: torch.Tensor


def as_input(value: Any, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A model input as (tensor, mask or None)."""
    if isinstance(value, TextBatch):
        return value.input_ids, value.attention_mask
    if isinstance(value, ImageBatch):
        return value.patches, None
    if isinstance(value, AudioBatch):
        return value.mel, value.mask
    if isinstance(value, VideoBatch):
        return value.patches, value.frame_mask
    if isinstance(value, torch.Tensor):
        return value, None
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], torch.Tensor):
        return value[0], value[1]
    raise MLMFError(f"input {name!r}: expected a tensor, a (tensor, mask) pair or a "
                    f"preprocessing batch, found {type(value).__name__}")


class MultiModalModel(nn.Module):
    """Built from a ``MultiModalConfig``.

    Example:
        >>> model = MultiModalModel(config)  # doctest: +SKIP
        >>> out = model({"caption": text_batch, "image": image_batch})  # audio missing: fine
        >>> out.logits.argmax(-1)  # doctest: +SKIP
    """

    def __init__(self, config: MultiModalConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.config = config
        d = config.attention.dim
        names = config.names
        self.encoders = nn.ModuleDict({m.name: build_encoder(m, dropout)
                                       for m in config.modalities})
        self.proj = nn.ModuleDict({m.name: nn.Identity() if m.dim == d else nn.Linear(m.dim, d)
                                   for m in config.modalities})
        self.early = self.middle = self.late = self.attn = None
        if config.fusion is FusionStrategy.EARLY:
            self.early = EarlyFusion(len(names), config.attention, config.fusion_layers)
        elif config.fusion is FusionStrategy.MIDDLE:
            self.middle = MiddleFusion(names, config.attention, config.middle_layers)
        elif config.fusion is FusionStrategy.LATE:
            self.late = LateFusion(config.late_mode, len(names), d)
        else:
            self.attn = AttentionFusion(d)
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(),
                                  nn.Linear(d, config.num_classes))

    def _inputs(self, inputs: Mapping[str, Any]) -> dict[str, tuple[torch.Tensor, Any]]:
        unknown = [k for k in inputs if k not in self.config.names]
        if unknown:
            raise MLMFError(f"unknown inputs {unknown}; this model reads: "
                            f"{', '.join(self.config.names)}")
        given = {k: as_input(v, k) for k, v in inputs.items() if v is not None}
        if not given:
            raise MLMFError(f"no input given; this model reads: {', '.join(self.config.names)}")
        sizes = {k: x.shape[0] for k, (x, _) in given.items()}
        if len(set(sizes.values())) != 1:
            raise MLMFError(f"inputs disagree on the batch size: {sizes}")
        device = next(self.parameters()).device
        return {k: (x.to(device), None if m is None else m.to(device))
                for k, (x, m) in given.items()}

    def forward(self, inputs: Mapping[str, Any], need_weights: bool = False) -> MultiModalOutput:
        """Encode the given modalities, fuse, classify.

        Args:
            inputs: modality name -> input; missing names are masked out.
            need_weights: collect the cross-attention maps (middle fusion).

        Raises:
            MLMFError: unknown names, no input, batch sizes that disagree, bad shapes.
        """
        given = self._inputs(inputs)
        names = [n for n in self.config.names if n in given]
        index = [self.config.names.index(n) for n in names]
        cross: list[CrossAttentionMap] = []
        weights = None
        if self.middle is not None:
            tokens, masks = self._middle(given, names, need_weights, cross)
        else:
            tokens, masks = {}, {}
            for n in names:
                t, m = self.encoder(n)(*given[n])
                tokens[n], masks[n] = self.proj[n](t), m
        b = next(iter(tokens.values())).shape[0]
        present = torch.zeros(b, len(self.config.names), dtype=torch.bool,
                              device=tokens[names[0]].device)
        for n, i in zip(names, index, strict=True):
            present[:, i] = masks[n].any(dim=1)
        if self.early is not None:
            fused = self.early([tokens[n] for n in names], [masks[n] for n in names], index)
        else:
            d = self.config.attention.dim
            vectors = torch.zeros(b, len(self.config.names), d, device=present.device)
            for n, i in zip(names, index, strict=True):
                vectors[:, i] = masked_mean(tokens[n], masks[n])
            if self.middle is not None:
                fused = fuse_mean(vectors, present)
            else:
                fusion = self.late if self.late is not None else self.attn
                assert fusion is not None
                fused, weights = fusion(vectors, present)
        return MultiModalOutput(self.head(fused), fused, weights, cross, present)

    def _middle(self, given: dict[str, tuple[torch.Tensor, Any]], names: list[str],
                need_weights: bool, cross: list[CrossAttentionMap]
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Run the encoders layer by layer, exchanging tokens after the middle layers."""
        assert self.middle is not None
        tokens, masks = {}, {}
        for n in names:
            tokens[n], masks[n] = self.encoder(n).embed(*given[n])
        depth = max(len(self.encoder(n).blocks) for n in names)
        for layer in range(depth):
            for n in names:
                blocks = self.encoder(n).blocks
                if layer < len(blocks):
                    tokens[n], _ = blocks[layer](tokens[n], masks[n])
            if layer not in self.middle.layers or len(names) < 2:
                continue
            updated = {}
            for n in names:
                others = [o for o in names if o != n]
                ctx = torch.cat([tokens[o] for o in others], dim=1)
                ctx_mask = torch.cat([masks[o] for o in others], dim=1)
                updated[n], w = self.middle.block(layer, n)(
                    tokens[n], masks[n], ctx, ctx_mask, need_weights)
                if w is not None:
                    spans, start = [], 0
                    for o in others:
                        spans.append((o, start, start + tokens[o].shape[1]))
                        start += tokens[o].shape[1]
                    cross.append(CrossAttentionMap(layer, n, tuple(spans), w))
            tokens = updated
        out = {}
        for n in names:
            out[n] = self.proj[n](self.encoder(n).norm(tokens[n]))
        return out, masks

    def encoder(self, name: str) -> Encoder:
        """The encoder of input ``name``."""
        enc = self.encoders[name]
        assert isinstance(enc, Encoder)
        return enc

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(m.name)}</td><td>{m.modality.value}</td>"
            f"<td>{html.escape(m.encoder)}</td><td>{m.dim}</td><td>{m.layers}</td>"
            f"<td>{sum(p.numel() for p in self.encoders[m.name].parameters()):,}</td></tr>"
            for m in self.config.modalities)
        cfg = self.config
        layers = list(cfg.middle_layers)
        extra = {FusionStrategy.LATE: f" ({cfg.late_mode})",
                 FusionStrategy.MIDDLE: f" (cross-attention after layers {layers})",
                 FusionStrategy.EARLY: f" ({cfg.fusion_layers} shared layers)"}.get(cfg.fusion, "")
        return (f"<b>MultiModalModel</b>: {cfg.fusion.value} fusion{html.escape(extra)}, "
                f"{cfg.num_classes} classes, {self.num_parameters():,} parameters"
                "<table><tr><th>input</th><th>modality</th><th>encoder</th><th>dim</th>"
                f"<th>layers</th><th>parameters</th></tr>{rows}</table>")
