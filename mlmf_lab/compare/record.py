"""``Comparison``: what ``ml.compare`` returns, one record for the three levels.

``rows()`` is one row per layer: the weights' change (relative ‖ΔW‖/‖W‖, σ, share of the
model's Σ|ΔW|) beside the activations' CKA and cosine when inputs were given. The tensors,
the activations and the outputs keep their own records and tables (``weights``,
``activations``, ``outputs``); the HTML shows the layer table, then the outputs' table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..tables import Column, Table
from .activations import ActivationStats
from .outputs import EmbeddingStats, TokenStats
from .tensors import WeightComparison


@dataclass(frozen=True)
class Comparison:
    """Model ``b`` against model ``a`` on weights, and on activations and outputs when
    ``ml.compare`` was given inputs.

    Attributes:
        a, b: labels of the two sides (paths, or class names of modules).
        weights: every tensor matched by name, and per-layer aggregates.
        activations: per-layer CKA, hidden-state cosine, logit lens (None without inputs).
        outputs: llama.cpp's KL / Δp / same-top statistics for language models, or the
            embeddings' agreement for sentence encoders (None without inputs).
    """

    a: str
    b: str
    weights: WeightComparison
    activations: ActivationStats | None = None
    outputs: TokenStats | EmbeddingStats | None = None

    def summary(self) -> str:
        w = self.weights
        parts = [f"{sum(t.status in ('changed', 'same') for t in w.tensors)} tensors compared",
                 f"relative change {w.total.rel_change:.3g}"]
        others = {s: n for s, n in w.counts().items() if s not in ("changed", "same")}
        parts += [f"{n} {s}" for s, n in others.items()]
        if self.activations is not None and self.activations.cka:
            low = min(range(len(self.activations.cka)), key=self.activations.cka.__getitem__)
            parts.append(f"lowest CKA {self.activations.cka[low]:.4f} at "
                         f"{self.activations.layers[low]}")
        if isinstance(self.outputs, TokenStats):
            o = self.outputs
            parts.append(f"mean KL {o.kl_mean:.4g}, same top p {100 * o.same_top:.2f}%, "
                         f"PPL ratio {o.ppl_ratio:.4f} ± {o.ppl_ratio_unc:.4f}")
        elif isinstance(self.outputs, EmbeddingStats):
            parts.append(f"embedding cosine {self.outputs.cosine_mean:.4f}, similarity ranks "
                         f"ρ {self.outputs.spearman:.4f}")
        return f"{self.a} -> {self.b}: " + ", ".join(parts)

    def __repr__(self) -> str:
        return f"<Comparison {self.summary()}>"

    def as_dict(self) -> dict[str, Any]:
        """JSON data: the labels and each level's record (None where not computed)."""
        kind = {TokenStats: "tokens", EmbeddingStats: "embeddings"}.get(type(self.outputs))
        return {"a": self.a, "b": self.b, "summary": self.summary(),
                "weights": self.weights.as_dict(),
                "activations": None if self.activations is None else self.activations.as_dict(),
                "outputs": None if self.outputs is None else
                {"kind": kind, **self.outputs.as_dict()}}

    def rows(self) -> list[dict[str, Any]]:
        """One row per layer: weights (rel_change, cosine, sigma, share) and, with inputs,
        activations (cka, hidden_cosine)."""
        acts = {r["layer"]: r for r in self.activations.rows()} if self.activations else {}
        out = []
        for layer in self.weights.layers:
            row = {"layer": layer.layer, "tensors": layer.tensors,
                   "rel_change": layer.rel_change, "cosine": layer.cosine,
                   "sigma": layer.sigma, "share": layer.share}
            if acts:
                got = acts.get(layer.layer, {})
                row |= {"cka": got.get("cka"), "hidden_cosine": got.get("cosine_mean")}
            out.append(row)
        return out

    def table(self) -> Table:
        cols = [Column("layer"), Column("tensors"), Column("rel_change", "‖ΔW‖/‖W‖", ".3e"),
                Column("cosine", "cos(W_a, W_b)", ".6f"), Column("sigma", "σ", ".3e"),
                Column("share", "share of Σ|ΔW|", ".1%")]
        if self.activations is not None:
            cols += [Column("cka", "CKA", ".4f"), Column("hidden_cosine", "cos(h_a, h_b)", ".4f")]
        return Table(cols, self.rows(), title=self.summary())

    def _repr_html_(self) -> str:
        parts = [self.table().html()]
        if self.outputs is not None:
            parts.append(self.outputs.table().html())
        return "".join(parts)


__all__ = ["Comparison"]
