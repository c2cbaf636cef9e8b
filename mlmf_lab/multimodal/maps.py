"""``AttentionMaps``: the one record of attention weights that every encoder and every fusion
of a multi-modal model returns (``model(inputs, output_attentions=True).attentions``), and
what ``ml.views.AttentionView`` shows (``AttentionView(**maps.view_args())``).

A record holds the weights of several layers of one part of a model over one batch,
``(batch, layers, heads, queries, keys)``, and says what the axes are: a label per query and
per key for each sample (the text's tokens, ``"r2c5"`` for an image patch, ``"0.42s"`` for
an audio or video frame), which input each stretch of keys comes from (``KeySpan``, with the
patch grid of an image) and the time of each key where it has one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ..errors import MLMFError
from .preprocess.text import TextBatch

Labels = tuple[tuple[str, ...], ...]  # per sample, one label per token


class KeySpan(NamedTuple):
    """The keys ``[start, stop)`` come from input ``name``; an image's patches form ``grid``
    (rows, columns) after ``patch_offset`` other tokens of that input (a CLS token)."""

    name: str
    start: int
    stop: int
    grid: tuple[int, int] | None = None
    patch_offset: int = 0


class TokenInfo(NamedTuple):
    """What the tokens of one encoded input are: labels (B, N), patch grid, times (B, N)."""

    name: str
    labels: Labels
    grid: tuple[int, int] | None = None
    patch_offset: int = 0
    times: torch.Tensor | None = None  # seconds, float32 (B, N)

    @property
    def size(self) -> int:
        return len(self.labels[0]) if self.labels else 0

    @classmethod
    def uniform(cls, name: str, labels: Sequence[str], batch: int, **kw: Any) -> TokenInfo:
        """The same labels for every sample of a batch."""
        row = tuple(labels)
        return cls(name, (row,) * batch, **kw)


def patch_labels(grid: tuple[int, int], cls_tokens: int = 0) -> list[str]:
    """``["[CLS]"] * cls_tokens`` then ``"r{row}c{col}"`` for each patch, row by row."""
    return ["[CLS]"] * cls_tokens + [f"r{r}c{c}" for r in range(grid[0]) for c in range(grid[1])]


def token_labels(value: Any, ids: torch.Tensor) -> Labels:
    """A text input's labels: a ``TextBatch``'s tokens, otherwise the ids (B, L) as text."""
    if isinstance(value, TextBatch):
        return tuple(tuple(t) for t in value.tokens)
    return tuple(tuple(str(int(i)) for i in row) for row in ids)


def time_labels(times: torch.Tensor) -> Labels:
    """(B, N) seconds -> ``"0.42s"`` labels."""
    return tuple(tuple(f"{float(t):.2f}s" for t in row) for row in times)


@dataclass(frozen=True)
class AttentionMaps:
    """Attention weights of one part of a model over one batch, with what the axes are.

    source: the part: ``"<input>"`` an encoder's own blocks, ``"<input>.backbone"`` its
        pretrained backbone, ``"<input>.frames"`` a video encoder's attention inside each
        frame (batch = clips x frames), ``"fusion"`` early or attention fusion,
        ``"fusion.<input>"`` that input's cross-attention in middle fusion.
    weights: (B, L, H, Q, K) float32. tokens: per sample, a label per query. key_tokens:
        per sample, a label per key. spans: which input the keys come from (they cover the
        key axis in order). layers: the layer of each of the L maps. key_times: (B, K)
        seconds of each key (NaN where a key has no time), or None.
    """

    source: str
    weights: torch.Tensor
    tokens: Labels
    key_tokens: Labels
    spans: tuple[KeySpan, ...]
    layers: tuple[int, ...]
    key_times: torch.Tensor | None = None

    def __post_init__(self) -> None:
        w = self.weights
        if w.dim() != 5:
            raise MLMFError(f"{self.source}: attention weights must be (batch, layers, heads, "
                            f"queries, keys), found shape {tuple(w.shape)}")
        b, n_layers, _, q, k = w.shape
        if len(self.tokens) != b or any(len(t) != q for t in self.tokens):
            raise MLMFError(f"{self.source}: expected {b} x {q} query labels")
        if len(self.key_tokens) != b or any(len(t) != k for t in self.key_tokens):
            raise MLMFError(f"{self.source}: expected {b} x {k} key labels")
        if len(self.layers) != n_layers:
            raise MLMFError(f"{self.source}: {len(self.layers)} layer numbers for "
                            f"{n_layers} maps")
        edges = [0] + [s.stop for s in self.spans]
        if [s.start for s in self.spans] != edges[:-1] or edges[-1] != k:
            raise MLMFError(f"{self.source}: key spans {list(self.spans)} do not cover the "
                            f"{k} keys in order")
        if self.key_times is not None and tuple(self.key_times.shape) != (b, k):
            raise MLMFError(f"{self.source}: key_times must be ({b}, {k})")

    @classmethod
    def build(cls, source: str, weights: Sequence[torch.Tensor], queries: TokenInfo,
              keys: Sequence[TokenInfo], layers: Sequence[int] | None = None,
              prefix: Sequence[str] = ()) -> AttentionMaps:
        """A record from per-layer ``(B, H, Q, K)`` maps (detached, float32).

        ``keys`` are the inputs along the key axis in order; ``prefix`` labels keys that
        come before them and belong to no input (early fusion's ``[CLS]``).
        """
        stacked = torch.stack([w.detach().float() for w in weights], dim=1)
        b = stacked.shape[0]
        spans, start = [], len(prefix)
        if prefix:
            spans.append(KeySpan("fusion", 0, start))
        for info in keys:
            spans.append(KeySpan(info.name, start, start + info.size, info.grid,
                                 info.patch_offset))
            start += info.size
        labels = tuple(tuple(prefix) + tuple(x for info in keys for x in info.labels[i])
                       for i in range(b))
        times = None
        if any(info.times is not None for info in keys):
            parts = [torch.full((b, len(prefix)), math.nan)] + [
                info.times.float() if info.times is not None
                else torch.full((b, info.size), math.nan) for info in keys]
            times = torch.cat(parts, dim=1)
        return cls(source, stacked, queries.labels, labels, tuple(spans),
                   tuple(layers) if layers is not None else tuple(range(stacked.shape[1])),
                   times)

    @property
    def shape(self) -> tuple[int, ...]:
        """(batch, layers, heads, queries, keys)."""
        return tuple(self.weights.shape)

    @property
    def grid(self) -> tuple[int, int] | None:
        """Patch grid of the first image among the keys, or None."""
        image = next((s for s in self.spans if s.grid is not None), None)
        return None if image is None else image.grid

    @property
    def patch_offset(self) -> int:
        """Keys before the first patch of that image."""
        image = next((s for s in self.spans if s.grid is not None), None)
        return 0 if image is None else image.start + image.patch_offset

    def stack(self, batch: int = 0) -> torch.Tensor:
        """One sample's maps, ``(layers, heads, queries, keys)``."""
        if not 0 <= batch < self.weights.shape[0]:
            raise MLMFError(f"{self.source}: batch index {batch} out of range for a batch of "
                            f"{self.weights.shape[0]}")
        return self.weights[batch]

    def span(self, name: str) -> AttentionMaps:
        """The same maps restricted to the keys of input ``name``."""
        found = next((s for s in self.spans if s.name == name), None)
        if found is None:
            raise MLMFError(f"{self.source} attends to no {name!r}; its keys come from: "
                            f"{', '.join(s.name for s in self.spans)}")
        a, z = found.start, found.stop
        times = None if self.key_times is None else self.key_times[:, a:z]
        return AttentionMaps(self.source, self.weights[..., a:z], self.tokens,
                             tuple(t[a:z] for t in self.key_tokens),
                             (found._replace(start=0, stop=z - a),), self.layers, times)

    def view_args(self, batch: int = 0) -> dict[str, Any]:
        """Keyword arguments of ``ml.views.AttentionView`` for one sample (add ``image=``
        to draw the attention over the picture)."""
        args: dict[str, Any] = {"attentions": self.stack(batch),
                                "tokens": list(self.tokens[batch]),
                                "key_tokens": list(self.key_tokens[batch]), "title": self.source}
        if self.grid is not None:
            args |= {"grid": self.grid, "patch_offset": self.patch_offset}
        return args

    def as_dict(self) -> dict[str, Any]:
        """Shape, layers, key spans and labels (not the weights)."""
        return {"source": self.source, "shape": list(self.shape), "layers": list(self.layers),
                "spans": [s._asdict() | {"grid": list(s.grid) if s.grid else None}
                          for s in self.spans],
                "tokens": [list(t) for t in self.tokens],
                "key_tokens": [list(t) for t in self.key_tokens]}

    def rows(self) -> list[dict[str, Any]]:
        """One row per layer: its number, heads, queries, keys, and the largest weight."""
        _, _, heads, q, k = self.shape
        return [{"source": self.source, "layer": layer, "heads": heads, "queries": q, "keys": k,
                 "max_weight": float(self.weights[:, i].max())}
                for i, layer in enumerate(self.layers)]

    def __repr__(self) -> str:
        b, n_layers, heads, q, k = self.shape
        keys = ", ".join(f"{s.name}[{s.start}:{s.stop}]" for s in self.spans)
        return (f"AttentionMaps({self.source!r}: {b} samples x {n_layers} layers x {heads} "
                f"heads x {q} queries x {k} keys; keys: {keys})")


__all__ = ["AttentionMaps", "KeySpan", "Labels", "TokenInfo", "patch_labels", "time_labels"]
