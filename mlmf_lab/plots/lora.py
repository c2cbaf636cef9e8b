"""Figures for LoRA adapters: training loss and the spectrum of each layer's ΔW."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from matplotlib import colormaps
from matplotlib.figure import Figure


def plot_lora_loss(losses: Sequence[float], title: str = "LoRA training loss") -> Figure:
    """Loss per step, with a 10-step running mean when there are enough steps."""
    fig = Figure(figsize=(6, 3))
    ax = fig.add_subplot()
    steps = range(1, len(losses) + 1)
    ax.plot(steps, losses, color="#4c72b0", lw=0.8, alpha=0.5, label="loss")
    if len(losses) >= 20:
        t = torch.tensor(list(losses), dtype=torch.float64)
        mean = t.unfold(0, 10, 1).mean(1).tolist()
        ax.plot(range(10, len(losses) + 1), mean, color="#c44e52", lw=1.5, label="10-step mean")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def plot_delta_spectra(
    spectra: Mapping[str, torch.Tensor | Sequence[float]], title: str = "Singular values of ΔW"
) -> Figure:
    """One line per layer: the singular values of its ``ΔW = s·B·A`` (log scale).

    Args:
        spectra: module path -> descending singular values (``ml.lora.delta_spectra``).
    """
    fig = Figure(figsize=(8.5, 3.4))
    ax = fig.add_subplot()
    cmap = colormaps["viridis"]
    n = max(len(spectra), 1)
    for i, (name, values) in enumerate(spectra.items()):
        v = torch.as_tensor(values, dtype=torch.float64).clamp_min(1e-12)
        ax.semilogy(range(1, len(v) + 1), v.tolist(), marker="o", ms=3, lw=1, color=cmap(i / n),
                    label=name)
    ax.set_xlabel("index i")
    ax.set_ylabel("σᵢ(ΔW)")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig
