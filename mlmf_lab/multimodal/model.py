"""``MultiModalModel``: encoders per modality, one fusion strategy, a classification head.

Inputs are a dict ``name -> input`` keyed by the modality names of the config. An input
is a tensor, a ``(tensor, mask)`` pair, or a preprocessing batch (``TextBatch``,
``ImageBatch``, ``AudioBatch``, ``VideoBatch``: their token strings, patch grid and frame
times label the attention maps). A modality left out of the dict, or whose mask is all
False for a sample, is treated as missing: it is masked out of every attention and every
combination, never a crash.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from ..errors import MLMFError
from ..tables import Column, Table
from .blocks import Encoder
from .config import FusionStrategy, MultiModalConfig
from .encoders import build_encoder
from .fusion import build_fusion
from .maps import AttentionMaps, TokenInfo


class MultiModalOutput(NamedTuple):
    """logits (B, C); fused (B, D); modality_weights (B, M) for late/attention fusion;
    attentions: with ``output_attentions=True``, an ``AttentionMaps`` record per part that
    computes attention, by source: ``"<input>"`` (an encoder's blocks), ``"<input>.backbone"``
    (a pretrained backbone), ``"<input>.frames"`` (inside video frames), ``"fusion"`` (early
    or attention fusion), ``"fusion.<input>"`` (middle fusion's cross-attention);
    present (B, M) bool: which modalities each sample had."""

    logits: torch.Tensor
    fused: torch.Tensor
    modality_weights: torch.Tensor | None
    attentions: dict[str, AttentionMaps]
    present: torch.Tensor


class MultiModalModel(nn.Module):
    """Built from a ``MultiModalConfig``.

    Example:
        >>> model = MultiModalModel(config)  # doctest: +SKIP
        >>> out = model({"caption": text, "image": image})  # doctest: +SKIP
        >>> out.logits.argmax(-1)  # doctest: +SKIP
        >>> maps = model(inputs, output_attentions=True).attentions  # doctest: +SKIP
    """

    def __init__(self, config: MultiModalConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.config = config
        d = config.attention.dim
        self.encoders = nn.ModuleDict({m.name: build_encoder(m, dropout)
                                       for m in config.modalities})
        self.proj = nn.ModuleDict({m.name: nn.Identity() if m.dim == d else nn.Linear(m.dim, d)
                                   for m in config.modalities})
        self.fusion = build_fusion(config)  # from the FUSIONS registry
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(),
                                  nn.Linear(d, config.num_classes))

    def _inputs(self, inputs: Mapping[str, Any]) -> dict[str, tuple[torch.Tensor, Any, Any]]:
        """name -> (tensor, mask or None, the value as given) on the model's device."""
        unknown = [k for k in inputs if k not in self.config.names]
        if unknown:
            raise MLMFError(f"unknown inputs {unknown}; this model reads: "
                            f"{', '.join(self.config.names)}")
        given = {k: (*self.encoder(k).prepare(v), v) for k, v in inputs.items() if v is not None}
        if not given:
            raise MLMFError(f"no input given; this model reads: {', '.join(self.config.names)}")
        sizes = {k: x.shape[0] for k, (x, _, _) in given.items()}
        if len(set(sizes.values())) != 1:
            raise MLMFError(f"inputs disagree on the batch size: {sizes}")
        device = next(self.parameters()).device
        return {k: (x.to(device), None if m is None else m.to(device), v)
                for k, (x, m, v) in given.items()}

    def forward(self, inputs: Mapping[str, Any],
                output_attentions: bool = False) -> MultiModalOutput:
        """Encode the given modalities, fuse, classify.

        Args:
            inputs: modality name -> input; missing names are masked out.
            output_attentions: return the attention maps of every encoder and fusion that
                computes attention (``MultiModalOutput.attentions``).

        Raises:
            MLMFError: unknown names, no input, batch sizes that disagree, bad shapes.
        """
        given = self._inputs(inputs)
        names = [n for n in self.config.names if n in given]
        index = [self.config.names.index(n) for n in names]
        infos = ({n: self.encoder(n).describe(given[n][2], given[n][0]) for n in names}
                 if output_attentions else None)
        maps: list[AttentionMaps] = []
        tokens, masks = self._encode(given, names, infos, maps)
        b = tokens[names[0]].shape[0]
        present = torch.zeros(b, len(self.config.names), dtype=torch.bool,
                              device=tokens[names[0]].device)
        for n, i in zip(names, index, strict=True):
            present[:, i] = masks[n].any(dim=1)
        fused, weights, fusion_maps = self.fusion(
            [tokens[n] for n in names], [masks[n] for n in names], index, present,
            None if infos is None else [infos[n] for n in names])
        maps += fusion_maps
        return MultiModalOutput(self.head(fused), fused, weights,
                                {m.source: m for m in maps}, present)

    def _encode(self, given: dict[str, tuple[torch.Tensor, Any, Any]], names: list[str],
                infos: dict[str, TokenInfo] | None, maps: list[AttentionMaps]
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Run the encoders layer by layer (``Encoder.forward``'s steps), letting the fusion
        exchange tokens after its ``exchange_layers``; project to the fusion width. Attention
        maps (when ``infos``) go to ``maps``."""
        want = infos is not None
        tokens, masks = {}, {}
        for n in names:
            tokens[n], masks[n], inner = self.encoder(n).embed(
                given[n][0], given[n][1], None if infos is None else infos[n])
            maps += inner
        depth = max(len(self.encoder(n).blocks) for n in names)
        own: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        cross: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        exchanged: list[int] = []
        for layer in range(depth):
            for n in names:
                blocks = self.encoder(n).blocks
                if layer < len(blocks):
                    tokens[n], w = blocks[layer](tokens[n], masks[n], output_attentions=want)
                    if w is not None:
                        own[n].append(w)
            if layer in self.fusion.exchange_layers and len(names) > 1:
                tokens, weights = self.fusion.exchange(layer, tokens, masks, want)
                exchanged.append(layer)
                for n, w in weights.items():
                    cross[n].append(w)
        if infos is not None:
            for n in names:
                if own[n]:
                    maps.append(AttentionMaps.build(n, own[n], infos[n], [infos[n]]))
            for n in names:
                if cross[n]:
                    maps.append(AttentionMaps.build(
                        f"fusion.{n}", cross[n], infos[n],
                        [infos[o] for o in names if o != n], layers=exchanged))
        out = {n: self.proj[n](self.encoder(n).norm(tokens[n])) for n in names}
        return out, masks

    def encoder(self, name: str) -> Encoder:
        """The encoder of input ``name``."""
        enc = self.encoders[name]
        assert isinstance(enc, Encoder)
        return enc

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def rows(self) -> list[dict[str, Any]]:
        """One row per input: its modality, encoder, width, depth and parameters."""
        return [{"input": m.name, "modality": m.modality.value, "encoder": m.encoder,
                 "dim": m.dim, "layers": m.layers,
                 "parameters": sum(p.numel() for p in self.encoders[m.name].parameters())}
                for m in self.config.modalities]

    def as_dict(self) -> dict[str, Any]:
        """The config, the parameter count and the inputs' rows (no weights)."""
        return {"config": self.config.as_dict(), "num_parameters": self.num_parameters(),
                "inputs": self.rows()}

    def table(self) -> Table:
        cfg = self.config
        layers = list(cfg.middle_layers)
        extra = {FusionStrategy.LATE: f" ({cfg.late_mode})",
                 FusionStrategy.MIDDLE: f" (cross-attention after layers {layers})",
                 FusionStrategy.EARLY: f" ({cfg.fusion_layers} shared layers)"}.get(cfg.fusion, "")
        return Table(["input", "modality", "encoder", "dim", "layers",
                      Column("parameters", fmt=",")], self.rows(),
                     title=f"MultiModalModel: {cfg.fusion.value} fusion{extra}, "
                           f"{cfg.num_classes} classes, {self.num_parameters():,} parameters")

    def _repr_html_(self) -> str:
        return self.table().html()
