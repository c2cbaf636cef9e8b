"""Figures for multi-modal models: the preprocessed inputs, the fusion comparison, and
attention maps (cross-modal over an image, token-to-token over a sentence)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle


def plot_patch_grid(image: np.ndarray, grid: tuple[int, int], title: str = "",
                    highlight: Sequence[int] = ()) -> Figure:
    """An image (H, W, 3) in [0, 1] with its ViT patch grid; ``highlight`` outlines patches."""
    fig = Figure(figsize=(3.6, 3.6))
    ax = fig.add_subplot()
    ax.imshow(image)
    h, w = image.shape[:2]
    gh, gw = grid
    for r in range(1, gh):
        ax.axhline(r * h / gh - 0.5, color="white", lw=0.6, alpha=0.7)
    for c in range(1, gw):
        ax.axvline(c * w / gw - 0.5, color="white", lw=0.6, alpha=0.7)
    for i in highlight:
        r, c = divmod(int(i), gw)
        ax.add_patch(Rectangle((c * w / gw - 0.5, r * h / gh - 0.5), w / gw, h / gh,
                               fill=False, ec="yellow", lw=2))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"{gh} x {gw} patches", fontsize=9)
    fig.tight_layout()
    return fig


def plot_mel(mel: np.ndarray, sample_rate: int, hop: int, title: str = "log-mel") -> Figure:
    """A (n_mels, T) spectrogram with time in seconds."""
    fig = Figure(figsize=(5, 2.6))
    ax = fig.add_subplot()
    t_end = mel.shape[1] * hop / sample_rate
    im = ax.imshow(mel, origin="lower", aspect="auto", extent=(0, t_end, 0, mel.shape[0]),
                   cmap="magma")
    fig.colorbar(im, ax=ax, pad=0.02)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mel band")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_frame_strip(frames: np.ndarray, times: Sequence[float] | None = None,
                     title: str = "") -> Figure:
    """A row of video frames (T, H, W, 3) in [0, 1], labelled with their times."""
    n = len(frames)
    fig = Figure(figsize=(1.4 * n, 1.8))
    for i, f in enumerate(frames):
        ax = fig.add_subplot(1, n, i + 1)
        ax.imshow(f)
        ax.set_xticks([])
        ax.set_yticks([])
        if times is not None:
            ax.set_title(f"{float(times[i]):.2f} s", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_fusion_accuracy(labels: Sequence[str], accuracy: Sequence[float], chance: float,
                         title: str = "Held-out accuracy per fusion strategy") -> Figure:
    """Bar chart of accuracy per strategy with the chance level."""
    fig = Figure(figsize=(6.5, 3))
    ax = fig.add_subplot()
    bars = ax.bar(range(len(labels)), accuracy, color="#4c72b0")
    ax.bar_label(bars, labels=[f"{a:.2f}" for a in accuracy], padding=2, fontsize=8)
    ax.axhline(chance, color="#c44e52", ls="--", lw=1)
    ax.text(len(labels) - 0.5, chance, f" chance {chance:.2f}", va="bottom", ha="right",
            color="#c44e52", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=15, ha="right", fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_losses(losses: Mapping[str, Sequence[float]], smooth: int = 20) -> Figure:
    """Training loss curves (moving average over ``smooth`` steps)."""
    fig = Figure(figsize=(6, 2.8))
    ax = fig.add_subplot()
    for name, values in losses.items():
        v = np.asarray(values, dtype=float)
        k = max(1, min(smooth, len(v)))
        ax.plot(np.convolve(v, np.ones(k) / k, mode="valid"), label=name, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot_attention_overlay(images: Sequence[np.ndarray], maps: Sequence[np.ndarray],
                           titles: Sequence[str] = (), targets: Sequence[int] = ()) -> Figure:
    """Attention over patches (gh, gw) laid over each image; ``targets`` outlines a patch."""
    n = len(images)
    fig = Figure(figsize=(2.4 * n, 2.7))
    for i, (img, m) in enumerate(zip(images, maps, strict=True)):
        ax = fig.add_subplot(1, n, i + 1)
        h, w = img.shape[:2]
        ax.imshow(img)
        ax.imshow(m, cmap="inferno", alpha=0.55, extent=(-0.5, w - 0.5, h - 0.5, -0.5),
                  interpolation="nearest", vmin=0)
        if i < len(targets):
            gh, gw = m.shape
            r, c = divmod(int(targets[i]), gw)
            ax.add_patch(Rectangle((c * w / gw - 0.5, r * h / gh - 0.5), w / gw, h / gh,
                                   fill=False, ec="cyan", lw=1.5))
        ax.set_xticks([])
        ax.set_yticks([])
        if i < len(titles):
            ax.set_title(titles[i], fontsize=8)
    fig.tight_layout()
    return fig


def plot_token_attention(tokens: Sequence[str], weights: np.ndarray,
                         title: str = "attention") -> Figure:
    """A (L, L) attention matrix between the tokens of a sentence (rows attend to columns)."""
    n = len(tokens)
    fig = Figure(figsize=(0.45 * n + 1.8, 0.45 * n + 1.2))
    ax = fig.add_subplot()
    im = ax.imshow(weights, cmap="viridis", vmin=0)
    ax.set_xticks(range(n), tokens, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), tokens, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
