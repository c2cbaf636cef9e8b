"""The weights level of ``ml.compare``: every matched tensor, then every layer.

``compare_weights(a, b)`` reads one pair of tensors at a time (``sources.Side.read``),
keeps its ``Moments``, metrics, histograms and, for 2-D tensors, the ΔW spectrum, and
drops the tensors before reading the next pair. Layers are the sums of their tensors'
moments (``weights.Moments``), so a layer's relative change is ‖ΔW‖/‖W‖ over all its
tensors, not a mean of ratios; ``share`` is the layer's part of the total Σ|ΔW| (where in
the model the change went, mergekit's per-layer "difference share").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..formats.base import no_such_tensor
from ..progress import Progress, bar
from ..tables import Column, Table, fields_dict, fields_row
from .sources import Side
from .weights import Moments, TensorChange, histogram, layer_of, moments, spectrum

SPECTRUM_MAX = 1 << 26  # 2-D tensors up to this many elements get a ΔW spectrum


@dataclass(frozen=True)
class TensorComparison:
    """One matched tensor: its status and, when shapes agree, how b differs from a."""

    name: str
    layer: str
    status: str  # "changed" | "same" | "reshaped" | "only in a" | "only in b"
    shape_a: tuple[int, ...] | None
    shape_b: tuple[int, ...] | None
    rel_change: float = math.nan  # ‖ΔW‖ / ‖W_a‖
    cosine: float = math.nan
    max_abs: float = math.nan
    sigma: float = math.nan  # Σ|ΔW| / (Σ|W_a| + Σ|W_b|)
    changed: float = math.nan  # share of elements that differ
    singular_values: tuple[float, ...] = ()  # leading σ of a 2-D ΔW
    energy_rank: int | None = None  # fewest σ holding 99% of ‖ΔW‖²_F (None: more than kept)
    _moments: Moments = field(default_factory=Moments, repr=False, compare=False)
    _hist: tuple[tuple[list[int], float, float], ...] = field(default=(), repr=False,
                                                               compare=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON data (histograms left out; NaN and inf are None)."""
        return fields_dict(self)

    def rows(self) -> list[dict[str, Any]]:
        return [fields_row(self)]


@dataclass(frozen=True)
class LayerComparison:
    """The tensors of one layer taken together (see the module docstring)."""

    layer: str
    tensors: int
    numel: int
    rel_change: float
    cosine: float
    sigma: float
    changed: float
    share: float  # this layer's part of the whole model's Σ|ΔW|

    def as_dict(self) -> dict[str, Any]:
        return fields_dict(self)

    def rows(self) -> list[dict[str, Any]]:
        return [fields_row(self)]


def _layer_key(label: str) -> tuple[int, int, str]:
    """Blocks in numeric order, then the rest ("other")."""
    head, _, num = label.partition(" ")
    return (0, int(num), "") if head == "layer" and num.isdecimal() else (1, 0, label)


@dataclass(frozen=True)
class WeightComparison:
    """Every tensor matched by name, and the per-layer aggregates."""

    a: str
    b: str
    tensors: tuple[TensorComparison, ...]
    layers: tuple[LayerComparison, ...]
    total: TensorChange  # all compared tensors together

    def __getitem__(self, name: str) -> TensorComparison:
        """The row of tensor ``name``; an ``MLMFError`` naming the closest names if absent."""
        for t in self.tensors:
            if t.name == name:
                return t
        raise no_such_tensor(name, [t.name for t in self.tensors],
                             f"the comparison {self.a} -> {self.b}")

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t.status] = out.get(t.status, 0) + 1
        return out

    def summary(self) -> str:
        parts = [f"{n} {s}" for s, n in self.counts().items()]
        parts.append(f"relative change {self.total.rel_change:.3g} overall")
        compared = [t for t in self.tensors if t.status in ("changed", "same")]
        if compared:
            top = max(compared, key=lambda t: t.rel_change)
            parts.append(f"largest {top.rel_change:.3g} in {top.name}")
        return f"{self.a} -> {self.b}: " + ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "counts": self.counts(),
                "total": self.total.as_dict(), "layers": [x.as_dict() for x in self.layers],
                "tensors": [t.as_dict() for t in self.tensors]}

    def rows(self) -> list[dict[str, Any]]:
        """One row per tensor."""
        return [row for t in self.tensors for row in t.rows()]

    def table(self, max_rows: int | None = None) -> Table:
        return Table([Column("name", "tensor", code=True), Column("status"),
                      Column("shape_a", "shape a", "shape"), Column("shape_b", "shape b", "shape"),
                      Column("rel_change", "‖ΔW‖/‖W‖", ".3e"), Column("cosine", fmt=".6f"),
                      Column("sigma", "σ", ".3e"), Column("changed", "changed", ".1%"),
                      Column("max_abs", "max |Δ|", ".3e"),
                      Column("energy_rank", "ΔW rank 99%")],
                     self.rows(), title=self.summary(), max_rows=max_rows, noun="tensors")

    def layer_table(self) -> Table:
        return Table([Column("layer"), Column("tensors"), Column("rel_change", "‖ΔW‖/‖W‖", ".3e"),
                      Column("cosine", fmt=".6f"), Column("sigma", "σ", ".3e"),
                      Column("changed", "changed", ".1%"), Column("share", "share of Σ|ΔW|",
                                                                  ".1%")],
                     [x.rows()[0] for x in self.layers], title=f"per layer: {self.a} -> {self.b}")

    def _repr_html_(self) -> str:
        return self.table(max_rows=60).html()


def _layers(rows: list[TensorComparison]) -> tuple[tuple[LayerComparison, ...], TensorChange]:
    groups: dict[str, list[TensorComparison]] = {}
    for r in rows:
        if r.status in ("changed", "same"):
            groups.setdefault(r.layer, []).append(r)
    total_m = sum((r._moments for rs in groups.values() for r in rs), Moments())
    out = []
    for label in sorted(groups, key=_layer_key):
        m = sum((r._moments for r in groups[label]), Moments())
        ch = TensorChange.of(m)
        share = m.abs_d / total_m.abs_d if total_m.abs_d else 0.0
        out.append(LayerComparison(label, len(groups[label]), m.numel, ch.rel_change, ch.cosine,
                                   ch.sigma, ch.changed, share))
    return tuple(out), TensorChange.of(total_m)


def compare_weights(a: Side, b: Side, *, k: int = 16, bins: int = 48,
                    progress: Progress = False) -> WeightComparison:
    """Compare two matched sides (``sources.match``) tensor by tensor.

    Args:
        a: the reference side. b: the other side.
        k: leading singular values kept per 2-D ΔW (0: none).
        bins: histogram bins per tensor (a, b and ΔW; for the view).
        progress: True, False or a callable ``(done, total)``.

    Returns:
        A ``WeightComparison``: rows in ``a``'s order, then tensors only in ``b``.
    """
    rows: list[TensorComparison] = []
    for name in bar(a.names, progress=progress, desc="compare", unit="tensor"):
        sa = a.shapes[name]
        if name not in b.shapes:
            rows.append(TensorComparison(name, layer_of(name), "only in a", sa, None))
            continue
        sb = b.shapes[name]
        if sa != sb:
            rows.append(TensorComparison(name, layer_of(name), "reshaped", sa, sb))
            continue
        ta, tb = a.read(name), b.read(name)
        floating = ta.is_floating_point() or tb.is_floating_point()
        m = moments(ta, tb)
        ch = TensorChange.of(m)
        hist_a = histogram(ta, bins)
        hists = [hist_a, histogram(tb, bins) if m.changed else hist_a]
        # ΔW in float32 (bf16/f16 and integer tensors too), only when something changed
        delta = tb.to(torch.float32) - ta.to(torch.float32) if m.changed else None
        hists.append(histogram(delta, bins) if delta is not None else ([0] * bins, 0.0, 0.0))
        spec = None
        if delta is not None and k and delta.ndim == 2 and delta.numel() <= SPECTRUM_MAX:
            spec = spectrum(delta, k, frobenius_sq=m.sq_d)
        del ta, tb, delta
        rows.append(TensorComparison(
            name, layer_of(name), "changed" if m.changed else "same", sa, sb, *ch,
            singular_values=spec.values if spec else (),
            energy_rank=spec.energy_rank if spec else (0 if not m.changed else None),
            # integer buffers (position ids) are no weights: kept out of the layer sums,
            # where Σi² of 512 positions would outweigh every matrix
            _moments=m if floating else Moments(), _hist=tuple(hists)))
    rows.extend(TensorComparison(n, layer_of(n), "only in b", None, s)
                for n, s in b.shapes.items() if n not in a.shapes)
    layers, total = _layers(rows)
    return WeightComparison(a.label, b.label, tuple(rows), layers, total)


__all__ = ["LayerComparison", "TensorComparison", "WeightComparison", "compare_weights"]
