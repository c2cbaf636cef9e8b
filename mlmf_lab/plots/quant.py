"""Figures for quantization: size against error, error histograms, per-layer errors.

Each function takes ``QuantReport`` records (``ml.quant.report``), one per scheme, keyed by
the label to show.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from ..quant.report import QuantReport


def plot_bits_vs_error(reports: Mapping[str, QuantReport]) -> Figure:
    """Scatter of bits per weight (x) against relative L2 weight error (y, log), one point each."""
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    for label, rep in reports.items():
        x, y = rep.bits_per_weight, max(rep.rel_error, 1e-9)
        ax.scatter([x], [y], s=36, zorder=3)
        ax.annotate(label, (x, y), xytext=(5, 4), textcoords="offset points", fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (scales and zero points included)")
    ax.set_ylabel("relative L2 weight error")
    ax.set_title("Size against error, one point per scheme")
    ax.grid(True, which="both", lw=0.4, alpha=0.5)
    fig.tight_layout()
    return fig


def plot_error_histogram(reports: Mapping[str, QuantReport], bins: int = 81) -> Figure:
    """Histograms of per-weight errors, in units of each layer's weight RMS (log counts)."""
    fig = Figure(figsize=(6.5, 3.6))
    ax = fig.add_subplot()
    samples = {k: torch.cat(list(r.errors.values())) for k, r in reports.items() if r.errors}
    span = max((float(s.abs().max()) for s in samples.values()), default=1.0) or 1.0
    edges = torch.linspace(-span, span, bins + 1)
    for label, s in samples.items():
        counts = torch.histc(s.float(), bins=bins, min=-span, max=span)
        ax.stairs((counts / s.numel()).tolist(), edges.tolist(), label=label, lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("weight error / RMS of the layer's weights")
    ax.set_ylabel("fraction of weights")
    ax.set_title("Distribution of weight errors")
    ax.legend(fontsize=8, ncols=2)
    fig.tight_layout()
    return fig


def _short_names(names: list[str]) -> list[str]:
    """Drop the dotted prefix every name shares (``encoder.layer.``)."""
    if len(names) < 2:
        return names
    common = os.path.commonprefix(names)
    cut = common.rfind(".") + 1
    return [n[cut:] for n in names]


def plot_layer_errors(report: QuantReport) -> Figure:
    """Per layer: weight SNR in dB (bars), output drift and local drift (lines, right axis)."""
    names = _short_names([r.name for r in report.layers])
    fig = Figure(figsize=(max(6.0, 0.22 * len(names) + 2), 4.2))
    ax = fig.add_subplot()
    snr = [r.snr_db if math.isfinite(r.snr_db) else 0.0 for r in report.layers]
    ax.bar(range(len(names)), snr, color="#4c72b0")
    ax.set_ylabel("weight SNR (dB)", color="#4c72b0")
    ax.set_xticks(range(len(names)), names, rotation=80, fontsize=6)
    twin = ax.twinx()
    twin.plot(range(len(names)), [r.drift for r in report.layers], color="#c44e52", marker=".",
              label="output drift")
    twin.plot(range(len(names)), [r.local_drift for r in report.layers], color="#dd8452",
              ls="--", lw=1, label="local drift")
    twin.set_ylabel("drift (rel. L2)", color="#c44e52")
    twin.legend(fontsize=8, loc="upper left")
    ax.set_title(f"Per-layer error: {report.schemes}")
    fig.tight_layout()
    return fig
