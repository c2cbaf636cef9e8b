"""Figures for memory-mapped loading."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure


def plot_memory_trace(
    steps: Sequence[str], rss_mib: Sequence[float], file_mib: float | None = None
) -> Figure:
    """Bar chart of resident memory (MiB) after each step, with the file size for scale."""
    fig = Figure(figsize=(7, 3.2))
    ax = fig.add_subplot()
    bars = ax.bar(range(len(steps)), rss_mib, color="#4c72b0")
    ax.bar_label(bars, labels=[f"{v:+.0f}" for v in rss_mib], padding=2, fontsize=8)
    ax.set_xticks(range(len(steps)), steps, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("RSS above start (MiB)")
    if file_mib is not None:
        ax.axhline(file_mib, color="#c44e52", ls="--", lw=1)
        ax.text(len(steps) - 0.5, file_mib, f" file size {file_mib:.0f} MiB", va="bottom",
                ha="right", color="#c44e52", fontsize=8)
    ax.set_title("Resident memory while loading lazily")
    fig.tight_layout()
    return fig
