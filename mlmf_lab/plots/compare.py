"""Figures of a ``Comparison``: per-layer change, the CKA heatmap, the KL distribution, and
one tensor's histograms and ΔW spectrum (what ``CompareView`` shows, as static figures)."""

from __future__ import annotations

from matplotlib.figure import Figure

from ..compare import Comparison, TokenStats
from ..compare.tensors import TensorComparison

METRICS = {"rel_change": "‖ΔW‖ / ‖W‖", "sigma": "σ = Σ|ΔW| / (Σ|A| + Σ|B|)",
           "share": "share of Σ|ΔW|", "changed": "share of elements changed",
           "cosine": "cos(W_a, W_b)"}


def plot_comparison(c: Comparison, metric: str = "rel_change") -> Figure:
    """Per-layer bars of ``metric`` (a key of ``METRICS``); beside them the CKA heatmap
    (with inputs) and the per-token KL distribution (language models).

    Raises:
        KeyError: an unknown metric (the message lists the choices).
    """
    if metric not in METRICS:
        raise KeyError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    panels = 1 + (c.activations is not None) + isinstance(c.outputs, TokenStats)
    fig = Figure(figsize=(4.2 * panels + 1, 3.4), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    layers = c.weights.layers
    ax = axes[0]
    ax.bar(range(len(layers)), [getattr(x, metric) for x in layers], color="#4c78a8")
    ax.set_xticks(range(len(layers)), [x.layer.replace("layer ", "") for x in layers],
                  fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel(METRICS[metric])
    ax.set_title(f"{c.b} vs {c.a}"[-60:], fontsize=8)
    i = 1
    if c.activations is not None:
        ax = axes[i]
        im = ax.imshow(c.activations.cka_matrix, vmin=0, vmax=1, cmap="viridis", origin="lower")
        ax.set_xlabel("layer of b")
        ax.set_ylabel("layer of a")
        ax.set_title("linear CKA", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
        i += 1
    if isinstance(c.outputs, TokenStats):
        ax = axes[i]
        kl = c.outputs.kl_values.clamp(min=1e-12).log10().numpy()
        ax.hist(kl, bins=40, color="#e45756")
        ax.set_xlabel("log10 KL(a ‖ b) per token")
        ax.set_ylabel("tokens")
        ax.set_title(f"mean KL {c.outputs.kl_mean:.3g}, same top {100 * c.outputs.same_top:.1f}%",
                     fontsize=9)
    return fig


def plot_tensor_change(t: TensorComparison) -> Figure:
    """Histograms of tensor a, tensor b and ΔW, and the leading singular values of ΔW."""
    fig = Figure(figsize=(10, 2.8), layout="constrained")
    axes = fig.subplots(1, 4)
    for ax, (counts, lo, hi), title in zip(axes[:3], t._hist, ("a", "b", "ΔW = b - a"),
                                           strict=False):
        width = (hi - lo) / len(counts) if hi > lo else 1.0
        ax.bar([lo + (k + 0.5) * width for k in range(len(counts))], counts, width=width,
               color="#4c78a8" if title != "ΔW = b - a" else "#e45756")
        ax.set_title(title, fontsize=9)
        ax.set_yscale("log")
    ax = axes[3]
    if t.singular_values:
        ax.plot(range(1, len(t.singular_values) + 1), t.singular_values, "o-")
        ax.set_yscale("log")
    ax.set_title(f"ΔW spectrum (rank 99%: {t.energy_rank if t.energy_rank is not None else '>'})",
                 fontsize=9)
    ax.set_xlabel("i")
    fig.suptitle(t.name, fontsize=9)
    return fig


__all__ = ["METRICS", "plot_comparison", "plot_tensor_change"]
